//! The few system calls the process driver needs that the standard library
//! does not offer safely: giving a child its socket at a fixed descriptor,
//! adopting that descriptor in the child, waiting for a peer to hang up
//! without reading, the process's user id, a pidfd for a socket's peer and
//! killing it through that, ending the process at once, and a socket's send
//! buffer.
//!
//! This is the only module of the crate with `unsafe` code.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};

/// Arranges for the child spawned by `command` to find `fd` at `target`,
/// open across `exec`, whatever number `fd` has in the host.
pub(crate) fn inherit_at(command: &mut tokio::process::Command, fd: RawFd, target: RawFd) {
    let hook = move || -> io::Result<()> {
        // SAFETY (for both calls): dup2 and fcntl are async-signal-safe and
        // act only on descriptors; `fd` is open in the child, inherited from
        // the host, which keeps it open until the spawn returns.
        if fd == target {
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) } < 0
            {
                return Err(io::Error::last_os_error());
            }
        } else if unsafe { libc::dup2(fd, target) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the hook runs in the child between fork and exec; it calls
    // only async-signal-safe functions, allocates nothing (the io::Error it
    // may build is an OS error code, not a heap value) and takes no lock.
    unsafe {
        command.pre_exec(hook);
    }
}

/// Set once the inherited socket is adopted: it may be adopted only once.
static ADOPTED: AtomicBool = AtomicBool::new(false);

/// Takes ownership of the socket a host left at `fd`, after checking that it
/// is one, and marks it close-on-exec so the worker's own children do not
/// inherit it.
pub(crate) fn adopt_socket(fd: RawFd) -> io::Result<UnixStream> {
    // SAFETY: `stat` is plain data for which all-zero bytes are valid.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes only into `stat`, which outlives the call; an
    // invalid descriptor makes it fail with EBADF, nothing more.
    if unsafe { libc::fstat(fd, &mut stat) } < 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("descriptor {fd}, where the host leaves the worker's socket, is not open"),
        ));
    }
    if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("descriptor {fd}, where the host leaves the worker's socket, is not a socket"),
        ));
    }
    if ADOPTED.swap(true, Ordering::SeqCst) {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "this process already serves on the socket its host gave it",
        ));
    }
    // SAFETY: the descriptor is open and a socket (checked above); the host
    // put it there for this process, nothing else in the process owns it,
    // and ADOPTED guarantees it is taken at most once.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: fcntl on a descriptor we now own.
    let flags = unsafe { libc::fcntl(owned.as_raw_fd(), libc::F_GETFD) };
    if flags < 0
        || unsafe { libc::fcntl(owned.as_raw_fd(), libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}

/// Blocks until the peer of `socket` closes its end. Data waiting to be read
/// does not wake it, so it never competes with the reader for it.
pub(crate) fn wait_for_hangup(socket: &UnixStream) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    const EVENTS: libc::c_short = libc::POLLRDHUP;
    #[cfg(not(target_os = "linux"))]
    const EVENTS: libc::c_short = 0; // POLLHUP is always reported
    let mut poll = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: EVENTS,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd, for the duration of the call.
        let ready = unsafe { libc::poll(&mut poll, 1, -1) };
        if ready < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        if poll.revents & (EVENTS | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
            return Ok(());
        }
    }
}

/// Ends the process at once with `code`, running nothing first: no
/// `atexit` handler, no flush of the standard streams (a full stdout or
/// stderr pipe would wait for good), no destructor.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions; it ends the process without
    // returning, and the kernel releases everything the process holds.
    unsafe { libc::_exit(code) }
}

/// The real user id of this process.
pub(crate) fn user_id() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// A process that is not this host's child (a worker it connected to by
/// its address), held by a pidfd: a signal sent through it reaches that
/// process, or none once it has ended, never a process given its id later.
/// Only Linux has pidfds; elsewhere there is no handle, and such a worker
/// cannot be signalled.
#[derive(Debug)]
pub(crate) struct ProcessHandle {
    #[cfg(target_os = "linux")]
    pidfd: OwnedFd,
}

/// The process at the other end of the connected Unix socket `socket`,
/// whose id the kernel gave as `pid` (`SO_PEERCRED`).
///
/// Linux 6.5 and later give its pidfd (`SO_PEERPIDFD`). Before, a pidfd is
/// opened by the id, and kept only if the peer still holds its end of the
/// socket after that: a process that holds it has not ended, so its id
/// cannot have gone to another.
pub(crate) fn peer_process(socket: RawFd, pid: u32) -> io::Result<ProcessHandle> {
    #[cfg(target_os = "linux")]
    {
        let mut fd: libc::c_int = -1;
        let mut len = SOCKLEN_OF_INT;
        // SAFETY: `fd` and `len` outlive the call, and `len` is `fd`'s size.
        let got = unsafe {
            libc::getsockopt(
                socket,
                libc::SOL_SOCKET,
                libc::SO_PEERPIDFD,
                (&raw mut fd).cast(),
                &raw mut len,
            )
        };
        if got == 0 && fd >= 0 {
            // SAFETY: the kernel opened this descriptor for us just now;
            // nothing else owns it.
            let pidfd = unsafe { OwnedFd::from_raw_fd(fd) };
            return Ok(ProcessHandle { pidfd });
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::ENOPROTOOPT) {
            return Err(error);
        }
        let pid = libc::pid_t::try_from(pid)
            .ok()
            .filter(|pid| *pid > 0)
            .ok_or_else(|| {
                io::Error::other(format!("the peer has no usable process id ({pid})"))
            })?;
        // SAFETY: pidfd_open takes a process id and flags, and returns a new
        // descriptor or -1; it touches no memory of ours.
        let opened = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if opened < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = RawFd::try_from(opened).map_err(io::Error::other)?;
        // SAFETY: pidfd_open opened this descriptor for us just now; nothing
        // else owns it.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd) };
        if hung_up(socket)? {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the peer closed its end of the socket",
            ));
        }
        Ok(ProcessHandle { pidfd })
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (socket, pid);
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this system has no pidfds",
        ))
    }
}

/// Whether the peer of `socket` has closed its end, now, without waiting.
#[cfg(target_os = "linux")]
fn hung_up(socket: RawFd) -> io::Result<bool> {
    let mut poll = libc::pollfd {
        fd: socket,
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for the duration of the call, which does not
    // wait (timeout 0).
    if unsafe { libc::poll(&mut poll, 1, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(poll.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0)
}

impl ProcessHandle {
    /// Sends SIGKILL to the process; one that has already ended is not an
    /// error.
    pub(crate) fn kill(&self) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            // SAFETY: pidfd_send_signal takes a pidfd we own, a signal, a null
            // siginfo (the kernel fills in the usual one) and flags 0.
            let sent = unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    self.pidfd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
            if sent < 0 {
                let error = io::Error::last_os_error();
                if error.raw_os_error() != Some(libc::ESRCH) {
                    return Err(error);
                }
            }
            Ok(())
        }
        #[cfg(not(target_os = "linux"))]
        {
            Err(io::Error::from(io::ErrorKind::Unsupported))
        }
    }
}

/// Asks for a send buffer of `bytes` on a socket. The kernel may cap it
/// (Linux at `net.core.wmem_max`, and doubles what it grants, for its
/// bookkeeping).
pub(crate) fn set_send_buffer(socket: RawFd, bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: `value` is a c_int that outlives the call, and the length
    // given is its size.
    let set = unsafe {
        libc::setsockopt(
            socket,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&raw const value).cast(),
            SOCKLEN_OF_INT,
        )
    };
    if set < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The send buffer the kernel granted a socket.
#[cfg(test)]
pub(crate) fn send_buffer(socket: RawFd) -> io::Result<usize> {
    let mut value: libc::c_int = 0;
    let mut len = SOCKLEN_OF_INT;
    // SAFETY: `value` and `len` outlive the call, and `len` is `value`'s size.
    let got = unsafe {
        libc::getsockopt(
            socket,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&raw mut value).cast(),
            &raw mut len,
        )
    };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(value).unwrap_or(0))
}

/// The size of a `c_int` option, as socket calls take it (4, which fits).
const SOCKLEN_OF_INT: libc::socklen_t = size_of::<libc::c_int>() as libc::socklen_t;

/// Whether a process with this id exists (signal 0 checks without sending
/// anything). Ids that cannot name one process, such as 0, which would name
/// our process group, count as existing, so that nothing is done about them.
pub(crate) fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return true;
    };
    if pid <= 0 {
        return true;
    }
    // SAFETY: kill has no memory-safety preconditions; signal 0 is not sent.
    if unsafe { libc::kill(pid, 0) } == 0 {
        return true;
    }
    // EPERM: it exists, as another user's.
    io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}
