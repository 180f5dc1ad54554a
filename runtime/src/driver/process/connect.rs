//! The host's end of a connection to a worker process: on the socket the
//! worker was born with, or on its named socket, whose peer the kernel
//! names (never the peer itself).

use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::watch;

use crate::client::{Channel, ChannelOptions, ExitWatch};
use crate::error::{Error, ExitReason};
use crate::frame::FrameCodec;

use super::passing::Passing;
use super::{socket, sys};

pub(super) type SocketTransport = socket::SocketTransport<tokio::net::UnixStream>;

/// The host's transport over `socket`, and the switch through which its
/// handshake settles whether payloads cross in memory files.
pub(super) fn connect_transport(
    socket: std::os::unix::net::UnixStream,
    options: &ChannelOptions,
) -> io::Result<(SocketTransport, Arc<Passing>)> {
    socket.set_nonblocking(true)?;
    let socket = tokio::net::UnixStream::from_std(socket)?;
    let transport = SocketTransport::unix(
        socket,
        FrameCodec::new().max_frame_length(options.max_frame_length_value()),
    )
    .sharing_from(options.shared_memory_from_value());
    let passing = transport.passing();
    // Before the connection's reader runs: a worker may send a memory file
    // right after its welcome, which the reader may read with it.
    passing.offer(options.shared_memory_from_value());
    Ok((transport, passing))
}

/// The process serving a named socket, as the kernel names it.
pub(super) struct NamedPeer {
    /// Its process id in this host's pid namespace (0 if it has none here).
    pub(super) pid: u32,
    /// Its pidfd, if this system has them.
    pub(super) handle: Option<sys::ProcessHandle>,
    /// Whether payloads cross in memory files on the connection to it.
    pub(super) passing: Arc<Passing>,
}

/// Connects to a named socket, after checking it belongs to our user; the
/// exit watch reports [`ExitReason::Unknown`] once the connection ends.
pub(super) async fn connect_named(
    address: &Path,
    options: &ChannelOptions,
) -> Result<(Channel, ExitWatch, NamedPeer), Error> {
    let connect_error = |source: io::Error| Error::Connect {
        address: address.to_owned(),
        source,
    };
    let socket = tokio::net::UnixStream::connect(address)
        .await
        .map_err(connect_error)?;
    let peer = socket.peer_cred().map_err(connect_error)?;
    if peer.uid() != sys::user_id() {
        return Err(connect_error(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("the socket is served by uid {}, not this user", peer.uid()),
        )));
    }
    let pid = peer
        .pid()
        .and_then(|pid| u32::try_from(pid).ok())
        .unwrap_or(0);
    let handle = match sys::peer_process(socket.as_raw_fd(), pid) {
        Ok(handle) => Some(handle),
        Err(error) => {
            tracing::debug!(address = %address.display(), pid, %error, "no pidfd for the worker: it cannot be killed from here");
            None
        }
    };
    let socket = socket.into_std().map_err(connect_error)?;
    let (transport, passing) = connect_transport(socket, options).map_err(connect_error)?;
    let (exit_tx, exit_rx) = watch::channel(None);
    let channel = Channel::connect(transport, options.clone(), None, "process");
    let closed = channel.watch_closed();
    tokio::spawn(async move {
        closed.await;
        exit_tx.send_replace(Some(ExitReason::Unknown));
    });
    Ok((
        channel,
        exit_rx,
        NamedPeer {
            pid,
            handle,
            passing,
        },
    ))
}
