//! The `shared_memory` target: a peer of a connection that takes payloads
//! in sealed memory files (PROTOCOL.md 5.13), writing `SHARED` frames, the
//! frames they announce and raw bytes, with descriptors of every kind riding
//! on its writes: sealed memory files of the right size or not, unsealed
//! ones, pipes, sockets, `/dev/null`, too many at once.
//!
//! An input is `[limit, op...]`: `limit` picks the reader's maximum frame
//! length (the default, 64 KiB or 8 KiB), and each op is one write:
//!
//! - `0, n, bytes[n]`: `n` raw bytes, no descriptor;
//! - `1, id, size: u16`: a well-formed announcement: a `SHARED` frame, a
//!   `RESPONSE` with that id and no payload of its own, and a sealed memory
//!   file of 4 KiB + `size` bytes riding on them;
//! - `2, kind, len: u16, n, bytes[n]`: a `SHARED` frame announcing `len`
//!   bytes, then `n` raw bytes, with one descriptor of `kind`: a sealed
//!   memory file of `len` bytes, one of another size, an unsealed one, a
//!   pipe, a socket, `/dev/null`, or none;
//! - `3, count`: one raw byte with 1 to 12 sealed memory files on it.
//!
//! Checked, for every input:
//!
//! - nothing panics, and the reading ends (the writes end, then the
//!   connection);
//! - no descriptor is left open: every one a peer sent is closed, whether
//!   the transport took it, refused it or never reached it;
//! - an input of well-formed announcements only is read whole and without
//!   error: each `RESPONSE` with its memory file's bytes as its payload, in
//!   order.

use std::os::fd::OwnedFd;

use bytes::{Bytes, BytesMut};
use workerbus::fuzzing::{
    read_with_descriptors, sealed_memory_file, shared_frame, unsealed_memory_file,
};
use workerbus::{DEFAULT_MAX_FRAME_LENGTH, Frame};

/// The maximum frame lengths an input's first byte chooses from.
const LIMITS: [usize; 3] = [DEFAULT_MAX_FRAME_LENGTH, 64 * 1024, 8 * 1024];

/// The bytes of a payload of `len` bytes, from a seed.
fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

/// The descriptors open in this process.
fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("list /proc/self/fd")
        .count()
}

/// A `RESPONSE` for `id` with no payload, encoded.
fn empty_response(id: u64) -> Vec<u8> {
    let frame = Frame::Response {
        id,
        payload: Bytes::new().into(),
    };
    let mut bytes = BytesMut::new();
    tokio_util::codec::Encoder::encode(&mut workerbus::FrameCodec::new(), frame, &mut bytes)
        .expect("an empty response encodes");
    bytes.to_vec()
}

/// A descriptor of the kind an input names, for a `SHARED` frame that
/// announces `len` bytes.
fn descriptor(kind: u8, len: usize) -> Option<OwnedFd> {
    match kind % 7 {
        0 => sealed_memory_file(&content(len.max(1), kind)),
        1 => sealed_memory_file(&content(len + 1, kind)),
        2 => Some(unsealed_memory_file(len)),
        3 => std::io::pipe().ok().map(|(reader, _)| reader.into()),
        4 => std::os::unix::net::UnixStream::pair()
            .ok()
            .map(|(a, _)| a.into()),
        5 => std::fs::File::open("/dev/null").ok().map(Into::into),
        _ => None,
    }
}

/// Runs the `shared_memory` checks on one input.
pub fn check(data: &[u8]) {
    let [limit, ops @ ..] = data else {
        return;
    };
    let max = LIMITS[usize::from(*limit) % LIMITS.len()];
    let mut input = ops;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (taken, rest) = input.split_at_checked(n)?;
        input = rest;
        Some(taken)
    };
    // What the first reading opens for good (the runtime's own globals)
    // is open before the count, which is taken before the writes' own
    // descriptors are made.
    static WARM: std::sync::Once = std::sync::Once::new();
    WARM.call_once(|| drop(read_with_descriptors(Vec::new(), max)));
    let before = open_descriptors();
    let mut writes: Vec<(Vec<u8>, Vec<OwnedFd>)> = Vec::new();
    let mut expected = Vec::new();
    let mut well_formed_only = true;
    while let Some(&[op]) = take(1) {
        match op % 4 {
            0 => {
                let Some(&[n]) = take(1) else { break };
                let Some(bytes) = take(usize::from(n)) else {
                    break;
                };
                well_formed_only = false;
                if !bytes.is_empty() {
                    writes.push((bytes.to_vec(), Vec::new()));
                }
            }
            1 => {
                let Some(&[id, high, low]) = take(3) else {
                    break;
                };
                let id = u64::from(id) + 1;
                let len = 4096 + usize::from(u16::from_be_bytes([high, low]));
                let payload = content(len, id as u8);
                let Some(file) = sealed_memory_file(&payload) else {
                    return;
                };
                let mut bytes = shared_frame(id, len as u32);
                bytes.extend_from_slice(&empty_response(id));
                writes.push((bytes, vec![file]));
                expected.push(Frame::Response {
                    id,
                    payload: Bytes::from(payload).into(),
                });
            }
            2 => {
                let Some(&[kind, high, low, n]) = take(4) else {
                    break;
                };
                let Some(raw) = take(usize::from(n)) else {
                    break;
                };
                let len = usize::from(u16::from_be_bytes([high, low]));
                let mut bytes = shared_frame(1, len as u32);
                bytes.extend_from_slice(raw);
                well_formed_only = false;
                writes.push((bytes, descriptor(kind, len).into_iter().collect()));
            }
            _ => {
                let Some(&[count]) = take(1) else { break };
                let files: Vec<OwnedFd> = (0..usize::from(count) % 12 + 1)
                    .filter_map(|i| sealed_memory_file(&[i as u8]))
                    .collect();
                well_formed_only = false;
                writes.push((vec![0], files));
            }
        }
    }
    let (frames, error) = read_with_descriptors(writes, max);
    let after = open_descriptors();
    assert_eq!(
        before, after,
        "descriptors left open: {before} before, {after} after (frames {}, error {error:?})",
        frames.len()
    );
    if well_formed_only && expected.iter().all(|frame| frame.encoded_len() <= max) {
        assert_eq!(error, None, "well-formed announcements were refused");
        assert_eq!(frames, expected, "well-formed announcements arrived changed");
    }
}
