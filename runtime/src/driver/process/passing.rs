//! Descriptors over the process driver's socket: whether a connection's
//! payloads cross in sealed memory files each way (`Passing`, as the
//! handshake settles it), which byte streams can carry descriptors at all
//! (`Descriptors`), and reading and writing with them, kept in order and
//! bounded (PROTOCOL.md 5.13). `socket.rs` decides which frames go in
//! memory files and reads the `SHARED` frames; `memfd.rs` makes, checks
//! and maps the files and makes the system calls.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use bytes::BufMut;
use tokio::io::{AsyncRead, Interest};

use super::memfd::{self, DESCRIPTORS_PER_WRITE};
use crate::error::FrameError;

/// The most descriptors a connection holds that arrived ahead of the
/// `SHARED` frames that take them: a peer that sends more breaks it.
pub(super) const MAX_WAITING_DESCRIPTORS: usize = 16;

/// Whether a connection's payloads cross in sealed memory files, each way,
/// as its handshake settled (PROTOCOL.md 9.2): until then, neither.
#[derive(Debug, Default)]
pub(crate) struct Passing {
    /// The peer takes them: this side sends its large payloads so.
    send: AtomicBool,
    /// This side takes them: it reads descriptors with the bytes.
    receive: AtomicBool,
}

impl Passing {
    /// This side takes payloads in memory files from now on if it passes
    /// any (`from`) and the system has them; says whether it does.
    pub(crate) fn offer(&self, from: Option<usize>) -> bool {
        let takes = from.is_some() && memfd::SUPPORTED;
        self.receive.store(takes, Ordering::Release);
        takes
    }

    /// Whether the peer takes them, as its greeting said (never where
    /// this system has none to send).
    pub(crate) fn peer_takes(&self, takes: bool) {
        self.send
            .store(takes && memfd::SUPPORTED, Ordering::Release);
    }

    pub(super) fn sends(&self) -> bool {
        self.send.load(Ordering::Acquire)
    }

    /// Whether this side takes them, as it offered.
    pub(crate) fn receives(&self) -> bool {
        self.receive.load(Ordering::Acquire)
    }
}

/// The Unix socket under a byte stream, through which descriptors pass;
/// other streams have none, and carry every payload in their bytes.
pub(crate) trait Descriptors {
    fn unix(&self) -> Option<&tokio::net::UnixStream> {
        None
    }
}

impl Descriptors for tokio::net::UnixStream {
    fn unix(&self) -> Option<&tokio::net::UnixStream> {
        Some(self)
    }
}

#[cfg(fuzzing)]
impl Descriptors for tokio::io::DuplexStream {}

pub(super) fn shared_error(reason: String) -> FrameError {
    FrameError::Malformed {
        kind: "SHARED",
        reason,
    }
}

/// Reads from `io` into `buf`; on a connection that takes payloads in
/// memory files, with the descriptors that come with the bytes, kept in
/// `arrived`. (Otherwise a descriptor never enters this process: a plain
/// read leaves the kernel to close it.)
pub(super) fn poll_read_into<T: AsyncRead + Descriptors + Unpin>(
    io: &mut T,
    cx: &mut Context<'_>,
    buf: &mut impl BufMut,
    passing: &Passing,
    arrived: &mut VecDeque<OwnedFd>,
) -> Poll<io::Result<usize>> {
    let Some(stream) = io.unix().filter(|_| passing.receives()) else {
        return tokio_util::io::poll_read_buf(Pin::new(io), cx, buf);
    };
    let socket = stream.as_raw_fd();
    loop {
        ready!(stream.poll_read_ready(cx))?;
        match stream.try_io(Interest::READABLE, || memfd::receive(socket, buf, arrived)) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            Ok(_) if arrived.len() > MAX_WAITING_DESCRIPTORS => {
                memfd::close_elsewhere(arrived.drain(..));
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the peer sent more than {MAX_WAITING_DESCRIPTORS} descriptors ahead of the frames that take them"
                    ),
                )));
            }
            result => return Poll::Ready(result),
        }
    }
}

/// Writes `slices` to `io`'s socket with the descriptors of `files` (as
/// many as one write carries) riding on the first byte written.
pub(super) fn poll_send_with<T: Descriptors>(
    io: &T,
    cx: &mut Context<'_>,
    slices: &[IoSlice<'_>],
    files: &VecDeque<OwnedFd>,
) -> Poll<io::Result<usize>> {
    let Some(stream) = io.unix() else {
        return Poll::Ready(Err(io::Error::other(
            "a memory file queued on a stream that cannot pass descriptors",
        )));
    };
    let socket = stream.as_raw_fd();
    let mut descriptors = [0 as RawFd; DESCRIPTORS_PER_WRITE];
    let count = files.len().min(DESCRIPTORS_PER_WRITE);
    for (slot, file) in descriptors.iter_mut().zip(files) {
        *slot = file.as_raw_fd();
    }
    loop {
        ready!(stream.poll_write_ready(cx))?;
        match stream.try_io(Interest::WRITABLE, || {
            memfd::send(socket, slices, &descriptors[..count])
        }) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            result => return Poll::Ready(result),
        }
    }
}
