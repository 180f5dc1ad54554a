//! The wire format: [`Frame`]s and the length-delimited [`FrameCodec`].
//!
//! `docs/PROTOCOL.md` is the normative description of this format; this
//! module is its implementation and the two must agree.
//!
//! Every frame is a big-endian `u32` length followed by that many bytes: a
//! ten-byte header and a kind-specific body.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +---------------------------------------------------------------+
//! |                  length (u32, bytes that follow)              |
//! +---------------+---------------+-------------------------------+
//! |     kind      |     flags     |                               |
//! +---------------+---------------+                               +
//! |                        id (u64)                               |
//! +                               +-------------------------------+
//! |                               |  body (kind-specific) ...     |
//! +-------------------------------+-------------------------------+
//! ```
//!
//! | kind | name       | body                                                              |
//! |------|------------|-------------------------------------------------------------------|
//! | 0x01 | `REQUEST`  | [`timeout_us: u64` if flag `DEADLINE` 0x01] `attempt: u32`, [`trace_id: u128`, `span_id: u64` if flag `TRACE` 0x02] `method_len: u16`, method (UTF-8), payload |
//! | 0x02 | `RESPONSE` | payload                                                           |
//! | 0x03 | `STATUS`   | `code: u32`, `message_len: u32`, message (UTF-8), details         |
//! | 0x04 | `CANCEL`   | empty                                                             |
//! | 0x05 | `SHUTDOWN` | empty; id is 0                                                    |
//! | 0x06 | `ITEM`     | payload: one message of a stream                                  |
//! | 0x07 | `END`      | empty: the host's request stream is complete                      |
//! | 0x08 | `CREDIT`   | `count: u32`, `bytes: u32`: the receiver allows `count` more items and `bytes` more payload bytes (id 0: events) |
//! | 0x09 | `EVENT`    | `method_len: u16`, method (UTF-8), payload; id is 0               |
//!
//! A payload is one protobuf-encoded message and runs to the end of the frame.
//! Payloads are never copied on decode: they are slices of the read buffer.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::error::{Code, FrameError, Status};
use crate::name::MethodName;
use crate::schema::MethodKind;
use crate::trace::TraceContext;

/// The default maximum frame length: 16 MiB.
pub const DEFAULT_MAX_FRAME_LENGTH: usize = 16 * 1024 * 1024;

/// Bytes of the fixed header after the length prefix: kind, flags, id.
pub const HEADER_LEN: usize = 1 + 1 + 8;

/// The smallest maximum frame length a channel or worker accepts: room for
/// any status the runtime itself produces about an oversized frame.
pub const MIN_FRAME_LENGTH: usize = 256;

/// The longest method name a `REQUEST` frame can carry.
pub const MAX_METHOD_LEN: usize = 1024;

const KIND_REQUEST: u8 = 0x01;
const KIND_RESPONSE: u8 = 0x02;
const KIND_STATUS: u8 = 0x03;
const KIND_CANCEL: u8 = 0x04;
const KIND_SHUTDOWN: u8 = 0x05;
const KIND_ITEM: u8 = 0x06;
const KIND_END: u8 = 0x07;
const KIND_CREDIT: u8 = 0x08;
const KIND_EVENT: u8 = 0x09;

/// How many `ITEM`s a stream's sender may send before it has any `CREDIT`.
pub const STREAM_WINDOW: u32 = 32;

/// `REQUEST` flag: a `timeout_us` field follows the header.
const FLAG_DEADLINE: u8 = 0x01;
/// `REQUEST` flag: a trace context (`trace_id: u128`, `span_id: u64`)
/// follows `attempt`.
const FLAG_TRACE: u8 = 0x02;
/// `REQUEST` flag: the host's request is a stream of `ITEM`s and an `END`
/// (the payload is empty).
const FLAG_STREAM_REQUEST: u8 = 0x04;
/// `REQUEST` flag: the host expects a stream of `ITEM`s back before the
/// final `RESPONSE` or `STATUS`.
const FLAG_STREAM_RESPONSE: u8 = 0x08;
/// `REQUEST` flag: a one-way message; the worker sends no answer.
const FLAG_ONE_WAY: u8 = 0x10;

/// One unit of the protocol.
///
/// The thread driver moves `Frame` values between threads as they are;
/// byte-stream transports encode them with [`FrameCodec`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Frame {
    /// A call from host to worker.
    #[non_exhaustive]
    Request {
        /// The request id, unique among the sender's calls in flight.
        id: u64,
        /// The message name, e.g. `worker.search`.
        method: MethodName,
        /// The time the caller still waits for an answer; the worker cancels
        /// the handler when it runs out.
        timeout: Option<Duration>,
        /// Which attempt this is: 1 for the first, 2 for the first retry...
        attempt: u32,
        /// The trace the call belongs to and the span that made it, if the
        /// caller traces.
        trace: Option<TraceContext>,
        /// The call's shape: whether the request streams (`ITEM`s and an
        /// `END` follow), the response streams, or nothing is answered (a
        /// one-way message).
        kind: MethodKind,
        /// The protobuf-encoded request message (empty for a request stream).
        payload: Bytes,
    },
    /// A successful answer to the request with the same id.
    Response {
        /// The id of the request answered.
        id: u64,
        /// The protobuf-encoded response message.
        payload: Bytes,
    },
    /// A failed answer to the request with the same id.
    Status {
        /// The id of the request answered.
        id: u64,
        /// The error status.
        status: Status,
    },
    /// The caller no longer waits for the request with this id; the worker
    /// drops its handler and sends no answer.
    Cancel {
        /// The id of the request to cancel.
        id: u64,
    },
    /// The host asks the worker to finish the calls it has and then stop.
    Shutdown,
    /// One message of a stream: of the worker's response stream, or of the
    /// host's request stream.
    Item {
        /// The id of the streaming call.
        id: u64,
        /// The protobuf-encoded message.
        payload: Bytes,
    },
    /// The host's request stream has ended.
    End {
        /// The id of the streaming call.
        id: u64,
    },
    /// The receiver of a stream allows `count` more `ITEM`s and `bytes` more
    /// bytes of their payloads (with id 0: the host allows more `EVENT`s).
    Credit {
        /// The id of the streaming call, or 0 for events.
        id: u64,
        /// How many more items may be sent.
        count: u32,
        /// How many more payload bytes may be sent.
        bytes: u32,
    },
    /// An event the worker sends its host, unasked. Its id is 0.
    Event {
        /// The event's message name, e.g. `indexer.progress`.
        method: MethodName,
        /// The protobuf-encoded event message.
        payload: Bytes,
    },
}

impl Frame {
    /// A `REQUEST` frame.
    pub fn request(
        id: u64,
        method: MethodName,
        timeout: Option<Duration>,
        attempt: u32,
        payload: Bytes,
    ) -> Frame {
        Frame::Request {
            id,
            method,
            timeout,
            attempt,
            trace: None,
            kind: MethodKind::Unary,
            payload,
        }
    }

    /// This `REQUEST` as a call of `kind` (unary by default); other frames
    /// unchanged.
    #[must_use]
    pub fn with_kind(mut self, kind: MethodKind) -> Frame {
        if let Frame::Request { kind: of, .. } = &mut self {
            *of = kind;
        }
        self
    }

    /// This `REQUEST` with a trace context; other frames unchanged.
    #[must_use]
    pub fn with_trace(mut self, context: Option<TraceContext>) -> Frame {
        if let Frame::Request { trace, .. } = &mut self {
            *trace = context;
        }
        self
    }

    /// The frame's kind as written in `docs/PROTOCOL.md`, e.g. `"REQUEST"`.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Frame::Request { .. } => "REQUEST",
            Frame::Response { .. } => "RESPONSE",
            Frame::Status { .. } => "STATUS",
            Frame::Cancel { .. } => "CANCEL",
            Frame::Shutdown => "SHUTDOWN",
            Frame::Item { .. } => "ITEM",
            Frame::End { .. } => "END",
            Frame::Credit { .. } => "CREDIT",
            Frame::Event { .. } => "EVENT",
        }
    }

    /// The request id the frame refers to (0 for `SHUTDOWN` and `EVENT`).
    pub fn id(&self) -> u64 {
        match self {
            Frame::Request { id, .. }
            | Frame::Response { id, .. }
            | Frame::Status { id, .. }
            | Frame::Cancel { id }
            | Frame::Item { id, .. }
            | Frame::End { id }
            | Frame::Credit { id, .. } => *id,
            Frame::Shutdown | Frame::Event { .. } => 0,
        }
    }

    /// The number of bytes the frame takes after its length prefix.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN
            + match self {
                Frame::Request {
                    method,
                    timeout,
                    trace,
                    payload,
                    ..
                } => {
                    timeout.map_or(0, |_| 8)
                        + 4
                        + trace.map_or(0, |_| 24)
                        + 2
                        + method.len()
                        + payload.len()
                }
                Frame::Response { payload, .. } => payload.len(),
                Frame::Status { status, .. } => {
                    4 + 4 + status.message().len() + status.details().len()
                }
                Frame::Item { payload, .. } => payload.len(),
                Frame::Credit { .. } => 8,
                Frame::Cancel { .. } | Frame::End { .. } | Frame::Shutdown => 0,
                Frame::Event { method, payload } => 2 + method.len() + payload.len(),
            }
    }

    /// Appends the frame, length prefix included, to `dst`.
    ///
    /// The caller checks the length and the method name first, as
    /// [`FrameCodec`] does.
    pub(crate) fn encode(&self, dst: &mut BytesMut) {
        dst.reserve(4 + self.encoded_len());
        if let Some(payload) = self.encode_head(dst) {
            dst.put_slice(payload);
        }
    }

    /// Appends the frame, length prefix included, to `dst`, except for a
    /// payload at its end, which it returns for the caller to write after
    /// (every frame that carries a payload carries it last). The prefix
    /// counts the payload.
    pub(crate) fn encode_head(&self, dst: &mut BytesMut) -> Option<&Bytes> {
        let len = self.encoded_len();
        // Lengths above u32::MAX are refused by every codec long before here.
        dst.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
        match self {
            Frame::Request {
                id,
                method,
                timeout,
                attempt,
                trace,
                kind,
                payload,
            } => {
                dst.put_u8(KIND_REQUEST);
                let mut flags = kind_flags(*kind);
                if timeout.is_some() {
                    flags |= FLAG_DEADLINE;
                }
                if trace.is_some() {
                    flags |= FLAG_TRACE;
                }
                dst.put_u8(flags);
                dst.put_u64(*id);
                if let Some(timeout) = timeout {
                    dst.put_u64(u64::try_from(timeout.as_micros()).unwrap_or(u64::MAX));
                }
                dst.put_u32(*attempt);
                if let Some(trace) = trace {
                    dst.put_u128(trace.trace_id());
                    dst.put_u64(trace.span_id());
                }
                dst.put_u16(method.len() as u16);
                dst.put_slice(method.as_bytes());
                Some(payload)
            }
            Frame::Response { id, payload } => {
                put_header(dst, KIND_RESPONSE, *id);
                Some(payload)
            }
            Frame::Status { id, status } => {
                put_header(dst, KIND_STATUS, *id);
                dst.put_u32(status.code().as_u32());
                dst.put_u32(status.message().len() as u32);
                dst.put_slice(status.message().as_bytes());
                Some(status.details())
            }
            Frame::Cancel { id } => {
                put_header(dst, KIND_CANCEL, *id);
                None
            }
            Frame::Shutdown => {
                put_header(dst, KIND_SHUTDOWN, 0);
                None
            }
            Frame::Item { id, payload } => {
                put_header(dst, KIND_ITEM, *id);
                Some(payload)
            }
            Frame::End { id } => {
                put_header(dst, KIND_END, *id);
                None
            }
            Frame::Credit { id, count, bytes } => {
                put_header(dst, KIND_CREDIT, *id);
                dst.put_u32(*count);
                dst.put_u32(*bytes);
                None
            }
            Frame::Event { method, payload } => {
                put_header(dst, KIND_EVENT, 0);
                dst.put_u16(method.len() as u16);
                dst.put_slice(method.as_bytes());
                Some(payload)
            }
        }
    }

    /// Parses a frame body: everything after the length prefix.
    pub(crate) fn decode(mut body: Bytes) -> Result<Frame, FrameError> {
        if body.len() < HEADER_LEN {
            return Err(FrameError::TooShort { len: body.len() });
        }
        let kind = body.get_u8();
        let flags = body.get_u8();
        let id = body.get_u64();
        let name = match kind {
            KIND_REQUEST => "REQUEST",
            KIND_RESPONSE => "RESPONSE",
            KIND_STATUS => "STATUS",
            KIND_CANCEL => "CANCEL",
            KIND_SHUTDOWN => "SHUTDOWN",
            KIND_ITEM => "ITEM",
            KIND_END => "END",
            KIND_CREDIT => "CREDIT",
            KIND_EVENT => "EVENT",
            _ => return Err(FrameError::UnknownKind { kind }),
        };
        // Id 0 is reserved for frames about no call: `SHUTDOWN`, `EVENT`,
        // and the `CREDIT` for events.
        if id == 0 && !matches!(kind, KIND_SHUTDOWN | KIND_EVENT | KIND_CREDIT) {
            return Err(malformed(name, "id 0 is reserved".into()));
        }
        let allowed = if kind == KIND_REQUEST {
            FLAG_DEADLINE | FLAG_TRACE | FLAG_STREAM_REQUEST | FLAG_STREAM_RESPONSE | FLAG_ONE_WAY
        } else {
            0
        };
        if flags & !allowed != 0 {
            return Err(malformed(name, format!("unknown flags 0x{flags:02x}")));
        }
        let mut body = Reader {
            kind: name,
            buf: body,
        };
        let frame = match kind {
            KIND_REQUEST => {
                if flags & FLAG_ONE_WAY != 0
                    && flags & (FLAG_STREAM_REQUEST | FLAG_STREAM_RESPONSE) != 0
                {
                    return Err(malformed(
                        name,
                        format!("flags 0x{flags:02x}: a one-way message cannot stream"),
                    ));
                }
                let timeout = if flags & FLAG_DEADLINE != 0 {
                    Some(Duration::from_micros(body.u64("timeout")?))
                } else {
                    None
                };
                let attempt = body.u32("attempt")?;
                let trace = if flags & FLAG_TRACE != 0 {
                    let trace_id = body.u128("trace id")?;
                    Some(TraceContext::from_parts(trace_id, body.u64("span id")?))
                } else {
                    None
                };
                let method = body.method()?;
                Frame::Request {
                    id,
                    method,
                    timeout,
                    attempt,
                    trace,
                    kind: flags_kind(flags),
                    payload: body.rest(),
                }
            }
            KIND_RESPONSE => Frame::Response {
                id,
                payload: body.rest(),
            },
            KIND_STATUS => {
                let code = Code::from_u32(body.u32("code")?);
                let message_len = body.u32("message length")? as usize;
                let message = body.bytes(message_len, "message")?;
                let message = String::from_utf8(message.to_vec())
                    .map_err(|_| malformed(name, "message is not UTF-8".into()))?;
                Frame::Status {
                    id,
                    status: Status::new(code, message).with_details(body.rest()),
                }
            }
            KIND_CANCEL => {
                body.end()?;
                Frame::Cancel { id }
            }
            KIND_ITEM => Frame::Item {
                id,
                payload: body.rest(),
            },
            KIND_END => {
                body.end()?;
                Frame::End { id }
            }
            KIND_CREDIT => {
                let count = body.u32("count")?;
                let bytes = body.u32("bytes")?;
                body.end()?;
                Frame::Credit { id, count, bytes }
            }
            KIND_EVENT => {
                if id != 0 {
                    return Err(malformed(name, format!("id {id} (must be 0)")));
                }
                Frame::Event {
                    method: body.method()?,
                    payload: body.rest(),
                }
            }
            _ => {
                body.end()?;
                if id != 0 {
                    return Err(malformed(name, format!("id {id} (must be 0)")));
                }
                Frame::Shutdown
            }
        };
        Ok(frame)
    }
}

/// The flags that carry a call's kind.
fn kind_flags(kind: MethodKind) -> u8 {
    match kind {
        MethodKind::Unary => 0,
        MethodKind::ServerStreaming => FLAG_STREAM_RESPONSE,
        MethodKind::ClientStreaming => FLAG_STREAM_REQUEST,
        MethodKind::BidiStreaming => FLAG_STREAM_REQUEST | FLAG_STREAM_RESPONSE,
        MethodKind::OneWay => FLAG_ONE_WAY,
    }
}

/// The call's kind its flags carry (a one-way message that streams is
/// refused before this).
fn flags_kind(flags: u8) -> MethodKind {
    match (
        flags & FLAG_ONE_WAY != 0,
        flags & FLAG_STREAM_REQUEST != 0,
        flags & FLAG_STREAM_RESPONSE != 0,
    ) {
        (true, _, _) => MethodKind::OneWay,
        (false, false, false) => MethodKind::Unary,
        (false, false, true) => MethodKind::ServerStreaming,
        (false, true, false) => MethodKind::ClientStreaming,
        (false, true, true) => MethodKind::BidiStreaming,
    }
}

fn put_header(dst: &mut BytesMut, kind: u8, id: u64) {
    dst.put_u8(kind);
    dst.put_u8(0);
    dst.put_u64(id);
}

fn malformed(kind: &'static str, reason: String) -> FrameError {
    FrameError::Malformed { kind, reason }
}

/// Bounds-checked reads from a frame body, naming the field that is short.
struct Reader {
    kind: &'static str,
    buf: Bytes,
}

impl Reader {
    fn need(&self, n: usize, field: &str) -> Result<(), FrameError> {
        if self.buf.remaining() < n {
            return Err(malformed(
                self.kind,
                format!(
                    "truncated {field}: needs {n} bytes, {} left",
                    self.buf.remaining()
                ),
            ));
        }
        Ok(())
    }

    fn u16(&mut self, field: &str) -> Result<u16, FrameError> {
        self.need(2, field)?;
        Ok(self.buf.get_u16())
    }

    fn u32(&mut self, field: &str) -> Result<u32, FrameError> {
        self.need(4, field)?;
        Ok(self.buf.get_u32())
    }

    fn u64(&mut self, field: &str) -> Result<u64, FrameError> {
        self.need(8, field)?;
        Ok(self.buf.get_u64())
    }

    fn u128(&mut self, field: &str) -> Result<u128, FrameError> {
        self.need(16, field)?;
        Ok(self.buf.get_u128())
    }

    fn bytes(&mut self, n: usize, field: &str) -> Result<Bytes, FrameError> {
        self.need(n, field)?;
        Ok(self.buf.split_to(n))
    }

    fn rest(self) -> Bytes {
        self.buf
    }

    /// A `method_len: u16` and the message name it announces.
    fn method(&mut self) -> Result<MethodName, FrameError> {
        let method_len = usize::from(self.u16("method length")?);
        if method_len == 0 || method_len > MAX_METHOD_LEN {
            return Err(malformed(
                self.kind,
                format!("method name of {method_len} bytes (must be 1 to {MAX_METHOD_LEN})"),
            ));
        }
        MethodName::from_utf8(self.bytes(method_len, "method name")?)
            .map_err(|_| malformed(self.kind, "method name is not UTF-8".into()))
    }

    fn end(&self) -> Result<(), FrameError> {
        if self.buf.has_remaining() {
            return Err(malformed(
                self.kind,
                format!("{} unexpected bytes after the header", self.buf.remaining()),
            ));
        }
        Ok(())
    }
}

/// Frames of at least this many bytes make the decoder reserve room for
/// [`LARGE_READ`] bytes when they have not fully arrived.
const LARGE_FRAME: usize = 16 * 1024;

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

impl Default for FrameCodec {
    fn default() -> FrameCodec {
        FrameCodec::new()
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
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
            if self.room == Room::Frame && src.capacity() - src.len() < need {
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
        Frame::decode(src.split_to(len).freeze()).map(Some)
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
            return Err(malformed(
                "REQUEST",
                format!(
                    "method name of {} bytes (must be 1 to {MAX_METHOD_LEN})",
                    method.len()
                ),
            ));
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
    use proptest::prelude::*;

    fn round_trip(frame: Frame) -> Frame {
        let mut codec = FrameCodec::new();
        let mut buf = BytesMut::new();
        codec.encode(frame, &mut buf).unwrap();
        let decoded = codec.decode(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty(), "decoder left {} bytes", buf.len());
        decoded
    }

    #[test]
    fn request_layout_matches_protocol_doc() {
        // The byte-for-byte example of docs/PROTOCOL.md, section 4.
        let frame = Frame::request(
            1,
            MethodName::from_static("worker.stats"),
            Some(Duration::from_millis(250)),
            1,
            Bytes::from_static(&[0x08, 0x01]),
        );
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        let expected: &[u8] = &[
            0x00, 0x00, 0x00, 0x26, // length 38
            0x01, // kind REQUEST
            0x01, // flags DEADLINE
            0, 0, 0, 0, 0, 0, 0, 0x01, // id 1
            0, 0, 0, 0, 0, 0x03, 0xd0, 0x90, // timeout_us 250000
            0, 0, 0, 0x01, // attempt 1
            0x00, 0x0c, // method_len 12
            b'w', b'o', b'r', b'k', b'e', b'r', b'.', b's', b't', b'a', b't', b's', //
            0x08, 0x01, // payload
        ];
        assert_eq!(&buf[..], expected);
        assert_eq!(round_trip(frame.clone()), frame);
    }

    #[test]
    fn other_examples_match_protocol_doc() {
        let bytes = |frame: Frame| {
            let mut buf = BytesMut::new();
            frame.encode(&mut buf);
            buf.to_vec()
        };
        let status = Frame::Status {
            id: 1,
            status: Status::not_found("gone"),
        };
        assert_eq!(
            bytes(status),
            [
                0, 0, 0, 0x16, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 5, 0, 0, 0, 4, b'g', b'o',
                b'n', b'e'
            ]
        );
        let response = Frame::Response {
            id: 1,
            payload: Bytes::from_static(&[0x08, 0x01]),
        };
        assert_eq!(
            bytes(response),
            [0, 0, 0, 0x0c, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x08, 0x01]
        );
        assert_eq!(
            bytes(Frame::Cancel { id: 1 }),
            [0, 0, 0, 0x0a, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 1]
        );
        assert_eq!(
            bytes(Frame::Shutdown),
            [0, 0, 0, 0x0a, 0x05, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        let item = Frame::Item {
            id: 7,
            payload: Bytes::from_static(&[0x08, 0x2a]),
        };
        assert_eq!(
            bytes(item),
            [0, 0, 0, 0x0c, 0x06, 0, 0, 0, 0, 0, 0, 0, 0, 7, 0x08, 0x2a]
        );
        assert_eq!(
            bytes(Frame::End { id: 7 }),
            [0, 0, 0, 0x0a, 0x07, 0, 0, 0, 0, 0, 0, 0, 0, 7]
        );
        assert_eq!(
            bytes(Frame::Credit {
                id: 7,
                count: 16,
                bytes: 0x0020_0000
            }),
            [
                0, 0, 0, 0x12, 0x08, 0, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0x10, 0, 0x20, 0, 0
            ]
        );
        let event = Frame::Event {
            method: MethodName::from_static("w.e"),
            payload: Bytes::from_static(&[0x08, 0x01]),
        };
        assert_eq!(
            bytes(event),
            [
                0, 0, 0, 0x11, 0x09, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, b'w', b'.', b'e', 0x08, 0x01
            ]
        );
        let one_way = Frame::request(1, MethodName::from_static("w.n"), None, 1, Bytes::new())
            .with_kind(MethodKind::OneWay);
        assert_eq!(
            bytes(one_way),
            [
                0, 0, 0, 0x13, 0x01, 0x10, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 3, b'w', b'.',
                b'n'
            ]
        );
    }

    #[test]
    fn incomplete_input_waits_for_more() {
        let mut buf = BytesMut::new();
        Frame::Response {
            id: 3,
            payload: Bytes::from_static(b"hello"),
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
                .encode(Frame::Response { id: 1, payload }, &mut encoded)
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
        let frame = Frame::Response { id: 1, payload };
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
            .encode(Frame::Response { id: 1, payload }, &mut encoded)
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
            payload: Bytes::from(vec![0; 7]),
        };
        let mut buf = BytesMut::new();
        assert!(matches!(
            codec.encode(frame, &mut buf),
            Err(FrameError::TooLong { len: 17, max: 16 })
        ));
        assert!(buf.is_empty());
    }

    #[test]
    fn invalid_frames_are_named_errors() {
        let cases: &[(&[u8], &str)] = &[
            (
                &[0x2a, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                "unknown frame kind 0x2a",
            ),
            (
                &[0x01],
                "frame of 1 bytes is shorter than the 10-byte header",
            ),
            (
                &[0x02, 0x80, 0, 0, 0, 0, 0, 0, 0, 1],
                "malformed RESPONSE frame: unknown flags 0x80",
            ),
            (
                &[0x01, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0],
                "malformed REQUEST frame: method name of 0 bytes (must be 1 to 1024)",
            ),
            (
                &[0x01, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 5, b'a'],
                "malformed REQUEST frame: truncated method name: needs 5 bytes, 1 left",
            ),
            (
                &[0x01, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 1, 0xff],
                "malformed REQUEST frame: method name is not UTF-8",
            ),
            (
                &[0x04, 0, 0, 0, 0, 0, 0, 0, 0, 1, 9],
                "malformed CANCEL frame: 1 unexpected bytes after the header",
            ),
            (
                &[0x05, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                "malformed SHUTDOWN frame: id 1 (must be 0)",
            ),
            (
                &[0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                "malformed RESPONSE frame: id 0 is reserved",
            ),
            (
                &[0x01, 0x14, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 1, b'a'],
                "malformed REQUEST frame: flags 0x14: a one-way message cannot stream",
            ),
            (
                &[0x09, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 1, b'a'],
                "malformed EVENT frame: id 3 (must be 0)",
            ),
            (
                &[0x09, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                "malformed EVENT frame: method name of 0 bytes (must be 1 to 1024)",
            ),
            (
                &[0x07, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                "malformed END frame: id 0 is reserved",
            ),
            (
                &[
                    0x03, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 5, 0, 0, 0, 9, b'x',
                ],
                "malformed STATUS frame: truncated message: needs 9 bytes, 1 left",
            ),
        ];
        for (body, message) in cases {
            let err = Frame::decode(Bytes::from_static(body)).unwrap_err();
            assert_eq!(err.to_string(), *message);
        }
    }

    #[test]
    fn unknown_status_codes_decode_as_unknown() {
        let frame = Frame::Status {
            id: 9,
            status: Status::new(Code::NotFound, "gone"),
        };
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        buf[4 + HEADER_LEN + 3] = 99; // code 5 -> 99
        let decoded = FrameCodec::new().decode(&mut buf).unwrap().unwrap();
        assert_eq!(
            decoded,
            Frame::Status {
                id: 9,
                status: Status::new(Code::Unknown, "gone"),
            }
        );
    }

    fn arb_status() -> impl Strategy<Value = Status> {
        (
            1u32..=16,
            ".{0,40}",
            proptest::collection::vec(any::<u8>(), 0..32),
        )
            .prop_map(|(code, message, details)| {
                Status::new(Code::from_u32(code), message).with_details(details)
            })
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        let payload = proptest::collection::vec(any::<u8>(), 0..512).prop_map(Bytes::from);
        prop_oneof![
            (
                1..=u64::MAX,
                "[a-z_.]{1,40}",
                proptest::option::of(0u64..u64::MAX / 2),
                any::<u32>(),
                payload.clone()
            )
                .prop_map(|(id, method, timeout, attempt, payload)| {
                    // Half the requests carry a trace, from their ids.
                    let trace = (attempt % 2 == 0)
                        .then(|| TraceContext::from_parts(u128::from(id) << 7, u64::from(attempt)));
                    Frame::request(
                        id,
                        MethodName::from(method),
                        timeout.map(Duration::from_micros),
                        attempt,
                        payload,
                    )
                    .with_trace(trace)
                    .with_kind(
                        [
                            MethodKind::Unary,
                            MethodKind::ServerStreaming,
                            MethodKind::ClientStreaming,
                            MethodKind::BidiStreaming,
                            MethodKind::OneWay,
                        ][attempt as usize % 5],
                    )
                }),
            (1..=u64::MAX, payload).prop_map(|(id, payload)| Frame::Response { id, payload }),
            (1..=u64::MAX, arb_status()).prop_map(|(id, status)| Frame::Status { id, status }),
            (1..=u64::MAX).prop_map(|id| Frame::Cancel { id }),
            (1..=u64::MAX, proptest::collection::vec(any::<u8>(), 0..64)).prop_map(
                |(id, payload)| Frame::Item {
                    id,
                    payload: Bytes::from(payload)
                }
            ),
            (1..=u64::MAX).prop_map(|id| Frame::End { id }),
            (0..=u64::MAX, any::<u32>(), any::<u32>())
                .prop_map(|(id, count, bytes)| Frame::Credit { id, count, bytes }),
            (
                "[a-z_.]{1,40}",
                proptest::collection::vec(any::<u8>(), 0..64)
            )
                .prop_map(|(method, payload)| Frame::Event {
                    method: MethodName::from(method),
                    payload: Bytes::from(payload),
                }),
            Just(Frame::Shutdown),
        ]
    }

    proptest! {
        #[test]
        fn frames_round_trip(frames in proptest::collection::vec(arb_frame(), 1..8)) {
            let mut codec = FrameCodec::new();
            let mut buf = BytesMut::new();
            for frame in &frames {
                prop_assert_eq!(frame.encoded_len() + 4, {
                    let before = buf.len();
                    codec.encode(frame.clone(), &mut buf).unwrap();
                    buf.len() - before
                });
            }
            for frame in &frames {
                prop_assert_eq!(codec.decode(&mut buf).unwrap(), Some(frame.clone()));
            }
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut codec = FrameCodec::new().max_frame_length(128);
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = codec.decode(&mut buf) {}
        }
    }
}
