//! Entry points for the fuzz targets in `fuzz/`: the handshake's parsers,
//! which are crate-private.
//!
//! This module exists only when the crate is compiled with `--cfg fuzzing`,
//! as `cargo fuzz` compiles it; no other build has it. It is not API: it
//! carries no stability promise and may change with the fuzz targets.
//!
//! Each function runs the code the real handshake runs, not a copy of it:
//! [`worker_reads_hello`] the worker's check of a greeting
//! (`handshake::check_hello`, which `ConnectionControl::hello` calls),
//! [`host_reads_welcome`] the host's reading of the answer
//! (`handshake::read_welcome`, which `ProcessWorker::handshake` calls),
//! [`serve_named_peer`] what a worker's accept loop runs for each connection
//! to its named socket (the greeting's frame limit and timeout, then the serve
//! loop), and [`greeting_codec`] the decoder of a peer that has not greeted.

#[cfg(feature = "process")]
use bytes::Bytes;
#[cfg(feature = "process")]
use prost::Message;

use crate::FrameCodec;
#[cfg(feature = "process")]
use crate::control::PROTOCOL_VERSION;
#[cfg(feature = "process")]
use crate::driver::process::handshake::{self, Hello};
#[cfg(feature = "process")]
use crate::{Dispatch, Secret, ServeOptions, ServiceSchema, Status};

/// Writes each of `writes` (bytes, with descriptors riding on the first of
/// them) to one end of a Unix socket pair, and reads the other end with
/// the process driver's transport, as a connection that takes payloads in
/// sealed memory files reads its peer (frames of at most `max` bytes): the
/// frames read, then the error that ended the reading (`None`: the writes
/// ended cleanly). The descriptors are closed once sent.
#[cfg(all(feature = "process", target_os = "linux"))]
pub fn read_with_descriptors(
    writes: Vec<(Vec<u8>, Vec<std::os::fd::OwnedFd>)>,
    max: usize,
) -> (Vec<crate::Frame>, Option<String>) {
    crate::driver::process::read_with_descriptors(writes, max)
}

/// A memory file holding `bytes`, sealed as a sender seals one; `None` if
/// none could be made.
#[cfg(all(feature = "process", target_os = "linux"))]
pub fn sealed_memory_file(bytes: &[u8]) -> Option<std::os::fd::OwnedFd> {
    crate::driver::process::sealed_memory_file(bytes.len(), &mut [std::io::IoSlice::new(bytes)])
        .ok()
}

/// A memory file of `len` bytes, not sealed.
#[cfg(all(feature = "process", target_os = "linux"))]
pub fn unsealed_memory_file(len: usize) -> std::os::fd::OwnedFd {
    crate::driver::process::unsealed_for_fuzzing(len)
}

/// The bytes of a `SHARED` frame announcing a payload of `len` bytes for
/// the frame with `id` that follows it.
#[cfg(feature = "process")]
pub fn shared_frame(id: u64, len: u32) -> Vec<u8> {
    let mut bytes = bytes::BytesMut::new();
    crate::frame::encode_shared(&mut bytes, id, len);
    bytes.to_vec()
}

/// The decoder a process worker reads a peer with until its greeting
/// succeeds: frames of at most `max` bytes, and no room reserved ahead of
/// the bytes that arrive (the buffer grows only as its reader brings them
/// in).
pub fn greeting_codec(max: usize) -> FrameCodec {
    FrameCodec::new()
        .max_frame_length(max)
        .growing_with_arrivals()
}

#[cfg(feature = "process")]
pub use crate::driver::process::PeerEnd;

/// Serves `io` as a process worker whose secret is `secret` serves a peer of
/// its named socket, under `options` (among them the greeting's frame limit
/// and timeout): the code its accept loop runs for each connection, a
/// transport over `io` included. A `$workerbus.detach` is refused: no socket
/// is made.
#[cfg(feature = "process")]
pub async fn serve_named_peer<S>(
    io: tokio::io::DuplexStream,
    service: S,
    options: ServeOptions,
    secret: Secret,
) -> PeerEnd
where
    S: Dispatch,
{
    crate::driver::process::serve_fuzzed_peer(io, service, options, secret).await
}

/// The worker's handling of `payload` as the body of a `$workerbus.hello`
/// request: decodes the host's `Hello` as the serve loop does, then checks it
/// against the secret `known` on this worker.
///
/// `inherited` says whether the greeting came on the socket the host gave the
/// worker at birth; there, the first greeting sets `known`. The error is the
/// status the worker answers with, refusing the peer.
#[cfg(feature = "process")]
pub fn worker_reads_hello(
    payload: &[u8],
    known: &mut Option<Secret>,
    inherited: bool,
) -> Result<(), Status> {
    // The serve loop's decoding of a `$workerbus.hello` payload.
    let hello = Hello::decode(Bytes::copy_from_slice(payload))
        .map_err(|error| Status::invalid_argument(format!("{}: {error}", handshake::HELLO)))?;
    handshake::check_hello(&hello, known, inherited)
}

/// The host's handling of `answer` as a worker's response to its
/// `$workerbus.hello`: decodes the `Welcome`, checks its protocol version and
/// that the worker serves each schema in `serves` unchanged. The error is the
/// reason the handshake fails.
#[cfg(feature = "process")]
pub fn host_reads_welcome(answer: &[u8], serves: &[ServiceSchema]) -> Result<(), String> {
    handshake::read_welcome(Bytes::copy_from_slice(answer), serves).map(drop)
}

/// The bytes a worker serving `served` answers a greeting with: a valid
/// `Welcome` of this protocol version, for seeds and round-trip checks.
#[cfg(feature = "process")]
pub fn welcome_for(served: &[ServiceSchema], pid: u32) -> Vec<u8> {
    handshake::Welcome {
        protocol: PROTOCOL_VERSION,
        pid,
        services: served
            .iter()
            .map(crate::description::ServiceInfo::from)
            .collect(),
        shared_memory: false,
    }
    .encode_to_vec()
}

/// The bytes of a host's greeting presenting `secret` with `protocol`, for
/// seeds and round-trip checks.
#[cfg(feature = "process")]
pub fn hello_for(protocol: u32, secret: &[u8]) -> Vec<u8> {
    Hello {
        protocol,
        secret: Bytes::copy_from_slice(secret),
        shared_memory: false,
    }
    .encode_to_vec()
}
