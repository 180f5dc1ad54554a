//! The `frame_decoder` target: arbitrary bytes through [`FrameCodec`], whole
//! and in pieces.
//!
//! An input is `[limit, split, stream...]`: `limit` picks the codec's maximum
//! frame length (its two lowest bits) and whether it is the decoder a worker
//! reads a peer with until its greeting succeeds, which reserves nothing
//! ahead of the bytes that arrive (bit 2); `split` seeds how `stream` is cut
//! into the pieces a socket might deliver (0: one byte at a time), and
//! `stream` is what arrives.
//!
//! Checked, for every input:
//!
//! - decoding never panics;
//! - `Ok(None)` (incomplete) consumes nothing;
//! - the greeting's decoder never grows the buffer, whatever length a
//!   prefix announces: it grows only as bytes are put in;
//! - the frames and the final outcome (the first error, or a clean or
//!   truncated end) are the same whole and in pieces: a decoder that waits
//!   for more bytes must not decide differently once they come;
//! - every frame decoded is one the encoder accepts under the same limit, it
//!   re-encodes to the bytes it was read from (a `STATUS` with a code this
//!   version does not know re-encodes as `Unknown`, so only its length is
//!   compared), and decoding that encoding gives the frame back.

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};
use workerbus::fuzzing::greeting_codec;
use workerbus::{DEFAULT_MAX_FRAME_LENGTH, Frame, FrameCodec, MIN_FRAME_LENGTH};

/// The maximum frame lengths an input's first byte chooses from. None is
/// above the default: a larger limit lets a peer make the decoder reserve
/// that much, as configured, which is not a finding.
const LIMITS: [usize; 4] = [DEFAULT_MAX_FRAME_LENGTH, MIN_FRAME_LENGTH, 1024, 64 * 1024];

/// How decoding a stream ended.
#[derive(Debug, PartialEq)]
enum End {
    /// Every byte was part of a frame.
    Clean,
    /// The decoder refused the input, or the stream ended inside a frame:
    /// the error's message.
    Error(String),
}

/// Runs the `frame_decoder` checks on one input.
pub fn check(data: &[u8]) {
    let [limit, split, stream @ ..] = data else {
        return;
    };
    let greeting = limit & 0b100 != 0;
    let limit = LIMITS[usize::from(limit & 0b11)];
    let codec = if greeting {
        greeting_codec(limit)
    } else {
        FrameCodec::new().max_frame_length(limit)
    };
    let room = if greeting { Room::Arrived } else { Room::Any };

    let (whole, whole_end) = decode(&codec, room, [stream]);
    let (pieces, pieces_end) = decode(&codec, room, Pieces::new(stream, *split));
    assert_eq!(whole, pieces, "the frames differ when the input is split");
    assert_eq!(
        whole_end, pieces_end,
        "the outcome differs when the input is split"
    );

    let mut offset = 0;
    for frame in whole {
        let mut encoded = BytesMut::new();
        let mut encoder = FrameCodec::new().max_frame_length(limit);
        encoder
            .encode(frame.clone(), &mut encoded)
            .unwrap_or_else(|error| panic!("a decoded frame does not encode: {error}: {frame:?}"));
        let original = &stream[offset..offset + encoded.len()];
        offset += encoded.len();
        if !matches!(frame, Frame::Status { .. }) {
            assert_eq!(&encoded[..], original, "{frame:?} re-encodes differently");
        }
        let again = encoder
            .decode(&mut encoded)
            .expect("a re-encoded frame decodes");
        assert_eq!(
            again.as_ref(),
            Some(&frame),
            "decode(encode(frame)) != frame"
        );
        assert!(
            encoded.is_empty(),
            "re-decoding left {} bytes",
            encoded.len()
        );
    }
}

/// The room a decoder may make in its buffer.
#[derive(Clone, Copy)]
enum Room {
    /// Any (within the maximum frame length, as configured).
    Any,
    /// None beyond what the bytes put in took.
    Arrived,
}

/// Decodes the pieces in order as they arrive, as a framed reader does;
/// stops at the first error.
fn decode<'a>(
    codec: &FrameCodec,
    room: Room,
    pieces: impl IntoIterator<Item = &'a [u8]>,
) -> (Vec<Frame>, End) {
    let mut codec = codec.clone();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            let capacity = buf.capacity();
            let decoded = codec.decode(&mut buf);
            if let Room::Arrived = room {
                assert!(
                    buf.capacity() <= capacity,
                    "the greeting's decoder grew its buffer from {capacity} to {} bytes",
                    buf.capacity()
                );
            }
            match decoded {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => {
                    assert_eq!(buf.len(), before, "an incomplete frame consumed bytes");
                    break;
                }
                // An error ends the connection: nothing after it is read.
                Err(error) => return (frames, End::Error(error.to_string())),
            }
        }
    }
    let end = match codec.decode_eof(&mut buf) {
        Ok(None) => End::Clean,
        Ok(Some(frame)) => panic!("decode_eof found a frame decode did not: {frame:?}"),
        Err(error) => End::Error(error.to_string()),
    };
    (frames, end)
}

/// Cuts a stream into pieces of 1 to 64 bytes, from a seed (seed 0: one
/// byte at a time).
struct Pieces<'a> {
    rest: &'a [u8],
    state: u32,
}

impl<'a> Pieces<'a> {
    fn new(stream: &'a [u8], seed: u8) -> Pieces<'a> {
        Pieces {
            rest: stream,
            state: u32::from(seed),
        }
    }
}

impl<'a> Iterator for Pieces<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        let len = if self.state == 0 {
            1
        } else {
            // xorshift32: cheap, and the same cuts for the same seed.
            self.state ^= self.state << 13;
            self.state ^= self.state >> 17;
            self.state ^= self.state << 5;
            1 + (self.state % 64) as usize
        };
        let (piece, rest) = self.rest.split_at(len.min(self.rest.len()));
        self.rest = rest;
        Some(piece)
    }
}
