//! Large payloads in sealed memory files, and the descriptors that carry
//! them over a Unix socket (PROTOCOL.md 5.13).
//!
//! The sender makes a fresh memory file per payload (`memfd_create`),
//! writes the payload into it through a mapping it then drops, and seals
//! it against writing, shrinking and growing: from then on nobody, the
//! sender included, can change what the receiver reads. The descriptor
//! rides with the frame bytes (`SCM_RIGHTS`). The receiver takes every
//! descriptor close-on-exec (`MSG_CMSG_CLOEXEC`), checks the seals and the
//! size (`fstat`) before it maps the file read-only, and hands the mapping
//! out as the payload's `Bytes`: a `bytes` field decoded from it points
//! into the shared pages, uncopied.
//!
//! This module and `sys.rs` hold the process driver's `unsafe` code.
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

use bytes::{BufMut, Bytes};

/// The most descriptors one write carries, and so the most one read takes:
/// a peer that sends more with one write breaks the connection.
pub(crate) const DESCRIPTORS_PER_WRITE: usize = 8;

/// The seals a payload's memory file must have: its bytes and its size are
/// fixed.
#[cfg(target_os = "linux")]
const SEALS: libc::c_int = libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;

/// Whether this system has sealed memory files: where it has not, a
/// connection passes every payload through the socket, and says so in the
/// handshake.
pub(crate) const SUPPORTED: bool = cfg!(target_os = "linux");

/// Room for a control message of up to [`CONTROL_ROOM`] descriptors
/// (`CMSG_SPACE(12 * 4)` is 64 bytes on Linux), aligned as a `cmsghdr`.
#[repr(C, align(8))]
struct Control([u8; 64]);

/// The most descriptors [`send`] writes at once: more than a peer takes
/// ([`DESCRIPTORS_PER_WRITE`]), so that tests can send too many.
const CONTROL_ROOM: usize = 12;

/// The length of a control message carrying `count` descriptors, and the
/// room it takes.
fn control_len(count: usize) -> (usize, usize) {
    let data = (count * size_of::<libc::c_int>()) as libc::c_uint;
    // SAFETY: CMSG_LEN and CMSG_SPACE are arithmetic on their argument.
    unsafe {
        (
            libc::CMSG_LEN(data) as usize,
            libc::CMSG_SPACE(data) as usize,
        )
    }
}

/// A fresh memory file holding the bytes of `parts` (`len` in all, at
/// least 1), sealed against writing, shrinking, growing and further
/// sealing. The bytes are written, not mapped: the kernel fills the file's
/// pages as it makes them, where a mapping would have them zeroed first.
#[cfg(target_os = "linux")]
pub(crate) fn sealed(len: usize, parts: &mut [IoSlice<'_>]) -> io::Result<OwnedFd> {
    // SAFETY: the name is a NUL-terminated string that outlives the call.
    let fd = unsafe {
        libc::memfd_create(
            c"workerbus".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a descriptor that nothing else owns.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut parts = &mut parts[..];
    let mut written = 0;
    while !parts.is_empty() {
        match io::Write::write_vectored(&mut file, parts) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                written += n;
                IoSlice::advance_slices(&mut parts, n);
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    if written != len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{written} bytes written for a payload of {len}"),
        ));
    }
    // SAFETY: fcntl acts only on the descriptor.
    if unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, SEALS | libc::F_SEAL_SEAL) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file.into())
}

/// No sealed memory files here: [`SUPPORTED`] is false, and nothing asks.
#[cfg(not(target_os = "linux"))]
pub(crate) fn sealed(_len: usize, _parts: &mut [IoSlice<'_>]) -> io::Result<OwnedFd> {
    Err(io::ErrorKind::Unsupported.into())
}

/// The content of a memory file a peer sent, said to hold `len` bytes, as
/// `Bytes` that map it read-only; or why it is refused: it is not a memory
/// file sealed against writing, shrinking and growing, or not of `len`
/// bytes. The descriptor is closed either way.
#[cfg(target_os = "linux")]
pub(crate) fn map_sealed(file: OwnedFd, len: usize) -> Result<Bytes, String> {
    match check_sealed(&file, len) {
        // The mapping keeps the file; its descriptor, a memory file's,
        // closes at once.
        Ok(()) => Mapping::new(&file, len)
            .map(Bytes::from_owner)
            .map_err(|error| format!("cannot map the memory file of {len} bytes ({error})")),
        Err(reason) => {
            close_elsewhere([file]);
            Err(reason)
        }
    }
}

/// Why the descriptor `file` is not a memory file sealed against writing,
/// shrinking and growing, of `len` bytes, if it is not.
#[cfg(target_os = "linux")]
fn check_sealed(file: &OwnedFd, len: usize) -> Result<(), String> {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl acts only on the descriptor; on one that is not a
    // memory file it fails with EINVAL.
    let seals = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
    if seals < 0 {
        return Err(format!(
            "the descriptor is not a sealed memory file ({})",
            io::Error::last_os_error()
        ));
    }
    if seals & SEALS != SEALS {
        return Err(format!(
            "the memory file is not sealed against writing, shrinking and growing (seals 0x{seals:x})"
        ));
    }
    // SAFETY: `stat` is plain data for which all-zero bytes are valid.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes only into `stat`, which outlives the call.
    if unsafe { libc::fstat(fd, &mut stat) } < 0 {
        return Err(format!(
            "cannot stat the memory file ({})",
            io::Error::last_os_error()
        ));
    }
    if stat.st_mode & libc::S_IFMT != libc::S_IFREG || u64::try_from(stat.st_size) != Ok(len as u64)
    {
        return Err(format!(
            "the memory file holds {} bytes, its frame says {len}",
            stat.st_size
        ));
    }
    Ok(())
}

/// No sealed memory files here: nothing is accepted.
#[cfg(not(target_os = "linux"))]
pub(crate) fn map_sealed(_file: OwnedFd, _len: usize) -> Result<Bytes, String> {
    Err("this system has no sealed memory files".into())
}

/// A read-only mapping of a whole sealed memory file, unmapped when
/// dropped.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
impl Mapping {
    /// Maps the `len` bytes (at least 1) of `file`. Its pages are mapped
    /// as they are first read, several at a time (the kernel's fault-around):
    /// asking for all of them at once (`MAP_POPULATE`) costs more.
    fn new(file: &OwnedFd, len: usize) -> io::Result<Mapping> {
        // SAFETY: a new mapping the kernel places; it aliases no memory of
        // ours, and the file, sealed at `len` bytes, backs all of it.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast()).ok_or(io::ErrorKind::InvalidData)?;
        Ok(Mapping { ptr, len })
    }
}

// SAFETY: a read-only mapping of a file sealed against writing is memory
// that nobody changes, shared between threads as any `&[u8]` is.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `len` mapped bytes, alive as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping `new` made, unmapped once; no slice of it
        // outlives `self`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Closes descriptors a peer sent that were refused or never taken, on a
/// thread of the runtime's blocking pool if there is a runtime: closing a
/// peer's descriptor may block (the last reference to a lingering TCP
/// socket waits for its data to go), and the thread that reads the
/// connection must not.
pub(crate) fn close_elsewhere(descriptors: impl IntoIterator<Item = OwnedFd>) {
    let descriptors: Vec<OwnedFd> = descriptors.into_iter().collect();
    if descriptors.is_empty() {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(move || drop(descriptors))),
        Err(_) => drop(descriptors),
    }
}

/// Reads what `socket` has into the next chunk of `buf` (at least one
/// byte of room), without waiting, and takes the descriptors that come with
/// the bytes into `descriptors`, close-on-exec. A read that brings more
/// descriptors than [`DESCRIPTORS_PER_WRITE`] is an error; those it
/// brought are closed.
pub(crate) fn receive(
    socket: RawFd,
    buf: &mut impl BufMut,
    descriptors: &mut VecDeque<OwnedFd>,
) -> io::Result<usize> {
    let spare = buf.chunk_mut();
    let mut iov = libc::iovec {
        iov_base: spare.as_mut_ptr().cast(),
        iov_len: spare.len(),
    };
    let mut control = Control([0; 64]);
    // SAFETY: `msghdr` is plain data for which all-zero bytes are valid.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &raw mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.0.as_mut_ptr().cast();
    message.msg_controllen = control_len(DESCRIPTORS_PER_WRITE).1 as _;
    // SAFETY: the message points at the spare room of `buf` and at
    // `control`, both of the lengths given, both outliving the call.
    let read = unsafe {
        libc::recvmsg(
            socket,
            &raw mut message,
            libc::MSG_DONTWAIT | cmsg_cloexec(),
        )
    };
    if read < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut received = 0;
    // SAFETY: the kernel filled `control` with whole control messages up
    // to `msg_controllen`; CMSG_FIRSTHDR and CMSG_NXTHDR stay within it.
    let mut header = unsafe { libc::CMSG_FIRSTHDR(&raw const message) };
    while !header.is_null() {
        // SAFETY: a control message header within `control`, aligned.
        let cmsg = unsafe { &*header };
        if cmsg.cmsg_level == libc::SOL_SOCKET && cmsg.cmsg_type == libc::SCM_RIGHTS {
            let count = (cmsg.cmsg_len as usize).saturating_sub(control_len(0).0)
                / size_of::<libc::c_int>();
            // SAFETY: the message's data is `count` descriptors.
            let data = unsafe { libc::CMSG_DATA(header) }.cast::<libc::c_int>();
            for i in 0..count {
                // SAFETY: within the message's data; each descriptor is new
                // in this process, and ours alone.
                let fd = unsafe { data.add(i).read_unaligned() };
                descriptors.push_back(unsafe { OwnedFd::from_raw_fd(fd) });
                received += 1;
            }
        }
        // SAFETY: as for CMSG_FIRSTHDR.
        header = unsafe { libc::CMSG_NXTHDR(&raw const message, header) };
    }
    if message.msg_flags & libc::MSG_CTRUNC != 0 {
        // The kernel closed those that did not fit; the rest go too.
        let split = descriptors.len() - received;
        close_elsewhere(descriptors.split_off(split));
        // With room left, the kernel cut them short for want of
        // descriptors in this process, not for their number.
        let reason = if received >= DESCRIPTORS_PER_WRITE {
            format!("the peer sent more than {DESCRIPTORS_PER_WRITE} descriptors with one write")
        } else {
            "the descriptors that came with the peer's bytes were cut short: this process may be out of descriptors".to_owned()
        };
        return Err(io::Error::new(io::ErrorKind::InvalidData, reason));
    }
    let read = read as usize;
    // SAFETY: the kernel wrote `read` bytes into the buffer's next chunk.
    unsafe { buf.advance_mut(read) };
    Ok(read)
}

#[cfg(target_os = "linux")]
fn cmsg_cloexec() -> libc::c_int {
    libc::MSG_CMSG_CLOEXEC
}

#[cfg(not(target_os = "linux"))]
fn cmsg_cloexec() -> libc::c_int {
    0
}

/// Writes `slices` to `socket` without waiting, with `descriptors` (at
/// least one; a peer takes at most [`DESCRIPTORS_PER_WRITE`]) riding on the
/// first byte written: if any byte is written, they are all sent. Past 12,
/// the rest are not.
pub(crate) fn send(
    socket: RawFd,
    slices: &[IoSlice<'_>],
    descriptors: &[RawFd],
) -> io::Result<usize> {
    let count = descriptors.len().min(CONTROL_ROOM);
    let (len, space) = control_len(count);
    let mut control = Control([0; 64]);
    // SAFETY: `msghdr` is plain data for which all-zero bytes are valid.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    // `IoSlice` is ABI-compatible with `iovec` on Unix; sendmsg only reads.
    message.msg_iov = slices.as_ptr().cast_mut().cast();
    message.msg_iovlen = slices.len() as _;
    message.msg_control = control.0.as_mut_ptr().cast();
    message.msg_controllen = space as _;
    // SAFETY: `control` has room for a header and `count` descriptors
    // (`space` is at most its 64 bytes); CMSG_FIRSTHDR gives its start,
    // aligned.
    unsafe {
        let header = libc::CMSG_FIRSTHDR(&raw const message);
        (*header).cmsg_level = libc::SOL_SOCKET;
        (*header).cmsg_type = libc::SCM_RIGHTS;
        (*header).cmsg_len = len as _;
        let data = libc::CMSG_DATA(header).cast::<libc::c_int>();
        for (i, fd) in descriptors[..count].iter().enumerate() {
            data.add(i).write_unaligned(*fd);
        }
    }
    // SAFETY: the message points at `slices` and `control`, which outlive
    // the call.
    let sent = unsafe {
        libc::sendmsg(
            socket,
            &raw const message,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}

/// A memory file of `len` bytes, unsealed: what a careless or hostile peer
/// might send.
#[cfg(all(any(test, fuzzing), target_os = "linux"))]
pub(crate) fn unsealed(len: usize) -> OwnedFd {
    // SAFETY (test): a new memory file that nothing else owns.
    let file = unsafe {
        OwnedFd::from_raw_fd(libc::memfd_create(
            c"workerbus".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        ))
    };
    let mut file = std::fs::File::from(file);
    std::io::Write::write_all(&mut file, &vec![7; len]).unwrap();
    file.into()
}

#[cfg(all(fuzzing, target_os = "linux"))]
pub(crate) use self::unsealed as unsealed_for_fuzzing;

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    use bytes::BytesMut;

    fn pair() -> (
        std::os::unix::net::UnixStream,
        std::os::unix::net::UnixStream,
    ) {
        std::os::unix::net::UnixStream::pair().unwrap()
    }

    #[test]
    fn a_sealed_file_maps_back_as_its_bytes_and_cannot_be_changed() {
        let file = sealed(5, &mut [IoSlice::new(b"hel"), IoSlice::new(b"lo")]).unwrap();
        // Neither written nor resized, by anyone holding the descriptor.
        let raw = file.as_raw_fd();
        // SAFETY (test): writes from a valid buffer to an open descriptor.
        let wrote = unsafe { libc::write(raw, b"x".as_ptr().cast(), 1) };
        assert_eq!(wrote, -1);
        assert_eq!(io::Error::last_os_error().raw_os_error(), Some(libc::EPERM));
        // SAFETY (test): acts only on the descriptor.
        assert_eq!(unsafe { libc::ftruncate(raw, 1) }, -1);
        let bytes = map_sealed(file, 5).unwrap();
        assert_eq!(&bytes[..], b"hello");
        let half = bytes.slice(1..3);
        drop(bytes);
        assert_eq!(&half[..], b"el");
    }

    #[test]
    fn a_file_of_another_size_unsealed_or_not_a_memory_file_is_refused() {
        let file = sealed(5, &mut [IoSlice::new(b"hello")]).unwrap();
        assert_eq!(
            map_sealed(file, 6).unwrap_err(),
            "the memory file holds 5 bytes, its frame says 6"
        );
        assert!(
            map_sealed(unsealed(0), 0)
                .unwrap_err()
                .starts_with("the memory file is not sealed against writing")
        );
        let (socket, _) = pair();
        assert!(
            map_sealed(socket.into(), 1)
                .unwrap_err()
                .starts_with("the descriptor is not a sealed memory file (")
        );
    }

    #[test]
    fn descriptors_ride_with_the_bytes_and_arrive_close_on_exec() {
        let (a, b) = pair();
        let file = sealed(3, &mut [IoSlice::new(b"abc")]).unwrap();
        let sent = send(
            a.as_raw_fd(),
            &[IoSlice::new(b"frame")],
            &[file.as_raw_fd()],
        )
        .unwrap();
        assert_eq!(sent, 5);
        drop(file);
        let mut buf = BytesMut::with_capacity(64);
        let mut descriptors = VecDeque::new();
        assert_eq!(
            receive(b.as_raw_fd(), &mut buf, &mut descriptors).unwrap(),
            5
        );
        assert_eq!(&buf[..], b"frame");
        assert_eq!(descriptors.len(), 1);
        // SAFETY (test): acts only on the descriptor.
        let flags = unsafe { libc::fcntl(descriptors[0].as_raw_fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        let bytes = map_sealed(descriptors.pop_front().unwrap(), 3).unwrap();
        assert_eq!(&bytes[..], b"abc");
    }

    #[test]
    fn more_descriptors_with_one_write_than_allowed_is_an_error() {
        let (a, b) = pair();
        let files: Vec<OwnedFd> = (0..DESCRIPTORS_PER_WRITE + 1)
            .map(|_| sealed(1, &mut [IoSlice::new(b"x")]).unwrap())
            .collect();
        let raw: Vec<RawFd> = files.iter().map(AsRawFd::as_raw_fd).collect();
        assert_eq!(send(a.as_raw_fd(), &[IoSlice::new(b"x")], &raw).unwrap(), 1);
        let mut buf = BytesMut::with_capacity(64);
        let mut descriptors = VecDeque::new();
        let error = receive(b.as_raw_fd(), &mut buf, &mut descriptors).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the peer sent more than 8 descriptors with one write"
        );
        assert!(descriptors.is_empty());
    }
}
