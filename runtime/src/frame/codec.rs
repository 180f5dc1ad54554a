//! [`FrameCodec`]: frames on a byte stream, each behind its length, with a
//! maximum frame length and the decoder's room for frames still arriving.

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::error::FrameError;

use super::{DEFAULT_MAX_FRAME_LENGTH, Frame, MAX_METHOD_LEN};

/// Frames of at least this many bytes make the decoder reserve room for
/// [`LARGE_READ`] bytes when they have not fully arrived.
pub(crate) const LARGE_FRAME: usize = 16 * 1024;

/// The least room reserved for a large frame that has not fully arrived
/// (when the buffer lacks room for it, and the maximum frame length allows
/// as much), by a codec that reserves room at all: not one growing with
/// arrivals, which reads peers that have not greeted. Each decoded frame keeps the buffer it was read into (its
/// payload is not copied out), so a buffer that fits one frame exactly is
/// never reused: the next frame needs a new allocation, and its first bytes
/// a copy. With room for several, the frames that follow arrive in the same
/// allocation: fewer allocations, fewer copies, and fewer fresh pages to
/// fault in (half as many, with 64 KiB frames). The price: a frame kept long
/// keeps the whole allocation it shares, up to this size, alive.
const LARGE_READ: usize = 256 * 1024;

/// Encodes and decodes [`Frame`]s on a byte stream, with an explicit maximum
/// frame length.
///
/// The decoder tells *incomplete* input (it returns `Ok(None)` and waits for
/// more bytes) from *invalid* input (an error, after which the connection is
/// closed). A length prefix above the maximum is refused before anything of
/// that size is allocated.
///
/// ```
/// use bytes::{Bytes, BytesMut};
/// use tokio_util::codec::{Decoder, Encoder};
/// use workerbus::{Frame, FrameCodec, MethodName};
///
/// let mut codec = FrameCodec::new().max_frame_length(1024);
/// let mut buf = BytesMut::new();
/// let frame = Frame::request(7, MethodName::from_static("worker.search"), None, 1, Bytes::from_static(b"\x08\x01"));
/// codec.encode(frame.clone(), &mut buf).unwrap();
/// assert_eq!(codec.decode(&mut buf).unwrap(), Some(frame));
/// ```
#[derive(Clone, Debug)]
pub struct FrameCodec {
    max_frame_length: usize,
    room: Room,
}

/// How the decoder makes room for a frame that has not fully arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Room {
    /// Room for the whole frame at once (and for [`LARGE_READ`] bytes if it
    /// is large), so that it is read into place: for a peer that may send
    /// frames up to the maximum anyway.
    Frame,
    /// None: the buffer grows only as its reader brings bytes in, so a
    /// length prefix alone allocates nothing. For a peer that has not proved
    /// who it is.
    Arrived,
    /// As `Frame`, but none for a frame of a size the buffer pool serves
    /// (from [`LARGE_FRAME`] to 128 KiB): its reader reads such a frame
    /// into a pooled buffer of its own.
    Pooled,
}

impl FrameCodec {
    /// A codec with the [default maximum frame length](DEFAULT_MAX_FRAME_LENGTH).
    pub fn new() -> FrameCodec {
        FrameCodec {
            max_frame_length: DEFAULT_MAX_FRAME_LENGTH,
            room: Room::Frame,
        }
    }

    /// This codec, reserving nothing ahead of the bytes that arrive: the
    /// process driver reads a peer that has not greeted the worker with it.
    #[cfg_attr(not(any(feature = "process", fuzzing)), allow(dead_code))]
    pub(crate) fn growing_with_arrivals(mut self) -> FrameCodec {
        self.room = Room::Arrived;
        self
    }

    /// This codec, reserving no room for a frame of a pooled size (see
    /// [`is_pooled`]): the process driver's transport reads those itself.
    #[cfg_attr(not(feature = "process"), allow(dead_code))]
    pub(crate) fn leaving_pooled_frames(mut self) -> FrameCodec {
        if self.room == Room::Frame {
            self.room = Room::Pooled;
        }
        self
    }

    /// Sets the largest frame (in bytes after the length prefix) the codec
    /// reads or writes. Values above `u32::MAX` are capped.
    #[must_use]
    pub fn max_frame_length(mut self, max: usize) -> FrameCodec {
        self.max_frame_length = max.min(u32::MAX as usize);
        self
    }

    /// The maximum frame length in force.
    pub fn max_len(&self) -> usize {
        self.max_frame_length
    }
}

/// Whether a frame of `len` bytes (after its prefix) is of a size the
/// buffer pool serves: large, but not too large to keep.
pub(crate) fn is_pooled(len: usize) -> bool {
    (LARGE_FRAME..=crate::buffers::POOLED_UP_TO).contains(&len)
}

impl Default for FrameCodec {
    fn default() -> FrameCodec {
        FrameCodec::new()
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.decode_body(src)? {
            Some(body) => Frame::decode(body).map(Some),
            None => Ok(None),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(FrameError::Truncated {
                buffered: src.len(),
            }),
        }
    }
}

impl FrameCodec {
    /// The body (after its prefix) of the frame `src` starts with, if it
    /// has all arrived; as [`decode`](Decoder::decode), but undecoded.
    // Always inlined: a call of its own costs each frame about 40
    // instructions (callgrind, the process driver's worker).
    #[inline(always)]
    pub(crate) fn decode_body(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        let Some(prefix) = src.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        if len > self.max_frame_length {
            return Err(FrameError::TooLong {
                len,
                max: self.max_frame_length,
            });
        }
        if src.len() < 4 + len {
            // Room for the whole frame at once, so that a large frame is
            // read into place rather than copied each time the buffer
            // grows. It is within the maximum frame length, checked above:
            // a peer that announces a large frame and sends nothing makes
            // us allocate at most that (or `LARGE_READ`, if the maximum
            // allows it). A codec growing with arrivals reserves nothing:
            // its peer has proved nothing, and what it announces is no
            // reason to allocate.
            let need = 4 + len - src.len();
            let room = match self.room {
                Room::Frame => true,
                Room::Pooled => !is_pooled(len),
                Room::Arrived => false,
            };
            if room && src.capacity() - src.len() < need {
                let room = if len >= LARGE_FRAME {
                    need.max(LARGE_READ.min(4 + self.max_frame_length))
                } else {
                    need
                };
                src.reserve(room);
            }
            return Ok(None);
        }
        src.advance(4);
        Ok(Some(src.split_to(len).freeze()))
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.check(&frame)?;
        frame.encode(dst);
        Ok(())
    }
}

impl FrameCodec {
    /// Checks that `frame` may be written (its method name, its length) and
    /// returns its length after the prefix.
    pub(crate) fn check(&self, frame: &Frame) -> Result<usize, FrameError> {
        if let Frame::Request { method, .. } = frame
            && (method.is_empty() || method.len() > MAX_METHOD_LEN)
        {
            return Err(FrameError::Malformed {
                kind: "REQUEST",
                reason: format!(
                    "method name of {} bytes (must be 1 to {MAX_METHOD_LEN})",
                    method.len()
                ),
            });
        }
        let len = frame.encoded_len();
        if len > self.max_frame_length {
            return Err(FrameError::TooLong {
                len,
                max: self.max_frame_length,
            });
        }
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    use crate::name::MethodName;

    #[test]
    fn incomplete_input_waits_for_more() {
        let mut buf = BytesMut::new();
        Frame::Response {
            id: 3,
            payload: Bytes::from_static(b"hello").into(),
        }
        .encode(&mut buf);
        let full = buf.clone();
        let mut codec = FrameCodec::new();
        for cut in 0..full.len() {
            let mut partial = BytesMut::from(&full[..cut]);
            assert_eq!(codec.decode(&mut partial).unwrap(), None, "cut at {cut}");
        }
        let mut partial = BytesMut::from(&full[..full.len() - 1]);
        assert!(matches!(
            codec.decode_eof(&mut partial),
            Err(FrameError::Truncated { buffered }) if buffered == full.len() - 1
        ));
    }

    #[test]
    fn a_large_frame_not_yet_arrived_gets_room_for_the_frames_after_it() {
        let mut codec = FrameCodec::new();
        let head_of = |size: usize| {
            let mut encoded = BytesMut::new();
            let payload = Bytes::from(vec![7; size]);
            FrameCodec::new()
                .encode(
                    Frame::Response {
                        id: 1,
                        payload: payload.into(),
                    },
                    &mut encoded,
                )
                .unwrap();
            BytesMut::from(&encoded[..100])
        };
        let mut large = head_of(64 * 1024);
        assert_eq!(codec.decode(&mut large).unwrap(), None);
        assert!(large.capacity() >= LARGE_READ, "{}", large.capacity());
        // A small frame gets the room it needs, no more.
        let mut small = head_of(1000);
        assert_eq!(codec.decode(&mut small).unwrap(), None);
        assert!(small.capacity() < 4 * 1024, "{}", small.capacity());
        // Nor more than the maximum frame length allows.
        let mut limited = FrameCodec::new().max_frame_length(32 * 1024);
        let mut capped = head_of(20 * 1024);
        assert_eq!(limited.decode(&mut capped).unwrap(), None);
        assert!(capped.capacity() < 40 * 1024, "{}", capped.capacity());
    }

    #[test]
    fn a_codec_growing_with_arrivals_reserves_nothing_ahead_of_the_bytes() {
        let mut codec = FrameCodec::new().growing_with_arrivals();
        for announced in [DEFAULT_MAX_FRAME_LENGTH, LARGE_READ, 64 * 1024, 1000] {
            let mut buf = BytesMut::with_capacity(64);
            buf.extend_from_slice(&u32::try_from(announced).unwrap().to_be_bytes());
            buf.extend_from_slice(&[2, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
            assert_eq!(codec.decode(&mut buf).unwrap(), None);
            assert_eq!(buf.capacity(), 64, "announcing {announced} bytes");
        }
        // It decodes what arrives all the same, piece by piece.
        let mut encoded = BytesMut::new();
        let payload = Bytes::from(vec![7; 100 * 1024]);
        let frame = Frame::Response {
            id: 1,
            payload: payload.into(),
        };
        FrameCodec::new()
            .encode(frame.clone(), &mut encoded)
            .unwrap();
        let mut buf = BytesMut::new();
        let mut pieces = encoded.chunks(1000);
        let decoded = loop {
            if let Some(frame) = codec.decode(&mut buf).unwrap() {
                break frame;
            }
            buf.extend_from_slice(pieces.next().expect("a frame before the end"));
            assert!(
                buf.capacity() <= 2 * buf.len().max(1000),
                "{}",
                buf.capacity()
            );
        };
        assert_eq!(decoded, frame);
    }

    /// Read as a socket delivers it, in pieces into the room the decoder
    /// made, a frame of 1 MiB takes one buffer of its size, grown once.
    #[test]
    fn a_large_frame_arriving_in_pieces_is_read_into_one_buffer_of_its_size() {
        let mut encoded = BytesMut::new();
        let payload = Bytes::from(vec![7; 1024 * 1024]);
        FrameCodec::new()
            .encode(
                Frame::Response {
                    id: 1,
                    payload: payload.into(),
                },
                &mut encoded,
            )
            .unwrap();
        let mut codec = FrameCodec::new();
        let mut buf = BytesMut::new();
        let (mut read, mut largest) = (0, 0);
        let frame = loop {
            if let Some(frame) = codec.decode(&mut buf).unwrap() {
                break frame;
            }
            if buf.capacity() == buf.len() {
                buf.reserve(16 * 1024);
            }
            let piece = (buf.capacity() - buf.len())
                .min(16 * 1024)
                .min(encoded.len() - read);
            buf.extend_from_slice(&encoded[read..read + piece]);
            read += piece;
            largest = largest.max(buf.capacity());
        };
        assert!(matches!(frame, Frame::Response { id: 1, .. }));
        assert!(
            largest < 1024 * 1024 + 64 * 1024,
            "the buffer grew to {largest} bytes"
        );
    }

    #[test]
    fn oversized_length_is_refused_without_allocating() {
        let mut codec = FrameCodec::new().max_frame_length(1024);
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 0x01][..]);
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(matches!(
            err,
            FrameError::TooLong {
                len: 0xffff_ffff,
                max: 1024
            }
        ));
        assert!(
            buf.capacity() < 1024,
            "decoder reserved {} bytes",
            buf.capacity()
        );
        assert_eq!(
            err.to_string(),
            "frame of 4294967295 bytes exceeds the maximum frame length of 1024 bytes"
        );
    }

    #[test]
    fn encoder_refuses_method_names_a_decoder_would_refuse() {
        let frame = Frame::request(1, MethodName::from("x".repeat(1025)), None, 1, Bytes::new());
        let error = FrameCodec::new()
            .encode(frame, &mut BytesMut::new())
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "malformed REQUEST frame: method name of 1025 bytes (must be 1 to 1024)"
        );
    }

    #[test]
    fn encoder_refuses_frames_over_the_maximum() {
        let mut codec = FrameCodec::new().max_frame_length(16);
        let frame = Frame::Response {
            id: 1,
            payload: Bytes::from(vec![0; 7]).into(),
        };
        let mut buf = BytesMut::new();
        assert!(matches!(
            codec.encode(frame, &mut buf),
            Err(FrameError::TooLong { len: 17, max: 16 })
        ));
        assert!(buf.is_empty());
    }
}
