//! Frames to bytes and back: the header, the flags that carry a call's
//! kind, and each kind's body, as `docs/PROTOCOL.md` lays them out. Bits
//! exist only here.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::{Code, FrameError, Status};
use crate::metadata::Metadata;
use crate::name::MethodName;
use crate::payload::Payload;
use crate::schema::MethodKind;
use crate::trace::TraceContext;

use super::{Frame, HEADER_LEN, MAX_METHOD_LEN};

const KIND_REQUEST: u8 = 0x01;
const KIND_RESPONSE: u8 = 0x02;
const KIND_STATUS: u8 = 0x03;
const KIND_CANCEL: u8 = 0x04;
const KIND_SHUTDOWN: u8 = 0x05;
const KIND_ITEM: u8 = 0x06;
const KIND_END: u8 = 0x07;
const KIND_CREDIT: u8 = 0x08;
const KIND_EVENT: u8 = 0x09;
const KIND_METADATA: u8 = 0x0a;
/// Announces that the payload of the frame after it is in a sealed memory
/// file whose descriptor came with the bytes (PROTOCOL.md 5.13): read and
/// written only by the process driver's transport, on a connection whose
/// handshake agreed to it.
pub(crate) const KIND_SHARED: u8 = 0x0b;
/// The length of a `SHARED` frame after its prefix: its header and
/// `len: u32`.
#[cfg(feature = "process")]
pub(crate) const SHARED_LEN: usize = HEADER_LEN + 4;

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
/// `REQUEST` flag: metadata (`metadata_len: u16`, entries) follows the
/// trace context.
const FLAG_METADATA: u8 = 0x20;

/// What a frame carries after its head: bytes (a status's details, a
/// stream item's or an event's message), or a request's or response's
/// message, which may still be a value to encode.
pub(crate) enum Tail<'a> {
    Bytes(&'a Bytes),
    Message(&'a Payload),
}

impl<'a> Tail<'a> {
    pub(crate) fn len(&self) -> usize {
        match self {
            Tail::Bytes(bytes) => bytes.len(),
            Tail::Message(payload) => payload.len(),
        }
    }

    /// Appends the tail to `dst`, encoding a message value there.
    pub(crate) fn encode_into(&self, dst: &mut BytesMut) {
        dst.reserve(self.len());
        match self {
            Tail::Bytes(bytes) => dst.put_slice(bytes),
            Tail::Message(payload) => payload.encode_into(dst),
        }
    }

    /// Appends the tail to a connection's write buffer, but for a message
    /// value's large `bytes` fields, which `dst` notes to be written from
    /// their own buffers.
    #[cfg(feature = "process")]
    pub(crate) fn encode_split(&self, dst: &mut crate::payload::SplitEncoder<'_>) {
        match self {
            Tail::Bytes(bytes) => dst.put_slice(bytes),
            Tail::Message(payload) => payload.encode_split(dst),
        }
    }

    /// The tail's bytes, unless it is a message value still to encode.
    #[cfg(feature = "process")]
    pub(crate) fn encoded(&self) -> Option<&'a Bytes> {
        match self {
            Tail::Bytes(bytes) => Some(bytes),
            Tail::Message(payload) => payload.as_encoded(),
        }
    }
}

impl Frame {
    /// The number of bytes the frame takes after its length prefix.
    #[inline]
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN
            + match self {
                Frame::Request {
                    method,
                    timeout,
                    trace,
                    metadata,
                    payload,
                    ..
                } => {
                    timeout.map_or(0, |_| 8)
                        + 4
                        + trace.map_or(0, |_| 24)
                        + metadata_field_len(metadata)
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
                Frame::Metadata { metadata, .. } => metadata.encoded_len(),
            }
    }

    /// Appends the frame, length prefix included, to `dst`.
    ///
    /// The caller checks the length and the method name first, as
    /// [`FrameCodec`] does.
    pub(crate) fn encode(&self, dst: &mut BytesMut) {
        dst.reserve(4 + self.encoded_len());
        if let Some(tail) = self.encode_head(dst) {
            tail.encode_into(dst);
        }
    }

    /// Appends the frame, length prefix included, to `dst`, except for a
    /// payload at its end, which it returns for the caller to write after
    /// (every frame that carries a payload carries it last). The prefix
    /// counts the payload.
    #[inline]
    pub(crate) fn encode_head(&self, dst: &mut BytesMut) -> Option<Tail<'_>> {
        self.encode_head_counting(dst, self.encoded_len())
    }

    /// As [`encode_head`](Frame::encode_head), but the prefix leaves out the
    /// payload (of `payload_len` bytes), which travels apart: in a sealed
    /// memory file, announced by the `SHARED` frame before this one.
    #[cfg(feature = "process")]
    pub(crate) fn encode_head_apart(
        &self,
        dst: &mut BytesMut,
        payload_len: usize,
    ) -> Option<Tail<'_>> {
        self.encode_head_counting(dst, self.encoded_len() - payload_len)
    }

    /// The payload of a frame that may carry it apart (PROTOCOL.md 5.13):
    /// a `REQUEST`'s, a `RESPONSE`'s, an `ITEM`'s or an `EVENT`'s.
    #[cfg(feature = "process")]
    pub(crate) fn payload_apart(&self) -> Option<Tail<'_>> {
        match self {
            Frame::Request { payload, .. } | Frame::Response { payload, .. } => {
                Some(Tail::Message(payload))
            }
            Frame::Item { payload, .. } | Frame::Event { payload, .. } => {
                Some(Tail::Bytes(payload))
            }
            _ => None,
        }
    }

    /// This frame, read without its payload after a `SHARED` frame, with
    /// the payload that came apart; the error if it may carry none apart or
    /// carried some of its own.
    #[cfg(feature = "process")]
    pub(crate) fn with_payload_apart(mut self, apart: Bytes) -> Result<Frame, FrameError> {
        let kind = self.kind_name();
        let empty = match &mut self {
            Frame::Request { kind, .. } if kind.streams_requests() => {
                return Err(malformed(
                    "SHARED",
                    "it is followed by a REQUEST that opens a request stream, which carries no payload"
                        .into(),
                ));
            }
            Frame::Request { payload, .. } | Frame::Response { payload, .. } => {
                let empty = payload.is_empty();
                *payload = apart.into();
                empty
            }
            Frame::Item { payload, .. } | Frame::Event { payload, .. } => {
                let empty = payload.is_empty();
                *payload = apart;
                empty
            }
            _ => {
                return Err(malformed(
                    "SHARED",
                    format!("it is followed by a {kind} frame, which carries no payload"),
                ));
            }
        };
        if !empty {
            return Err(malformed(
                "SHARED",
                format!("the {kind} frame after it carries a payload of its own"),
            ));
        }
        Ok(self)
    }

    #[inline]
    fn encode_head_counting(&self, dst: &mut BytesMut, len: usize) -> Option<Tail<'_>> {
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
                metadata,
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
                if !metadata.is_empty() {
                    flags |= FLAG_METADATA;
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
                if !metadata.is_empty() {
                    // At most MAX_METADATA_LEN: checked before any is sent.
                    dst.put_u16(metadata.encoded_len() as u16);
                    dst.put_slice(metadata.block());
                }
                dst.put_u16(method.len() as u16);
                dst.put_slice(method.as_bytes());
                Some(Tail::Message(payload))
            }
            Frame::Response { id, payload } => {
                put_header(dst, KIND_RESPONSE, *id);
                Some(Tail::Message(payload))
            }
            Frame::Status { id, status } => {
                put_header(dst, KIND_STATUS, *id);
                dst.put_u32(status.code().as_u32());
                dst.put_u32(status.message().len() as u32);
                dst.put_slice(status.message().as_bytes());
                Some(Tail::Bytes(status.details()))
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
                Some(Tail::Bytes(payload))
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
                Some(Tail::Bytes(payload))
            }
            Frame::Metadata { id, metadata } => {
                put_header(dst, KIND_METADATA, *id);
                dst.put_slice(metadata.block());
                None
            }
        }
    }

    /// Parses a frame body: everything after the length prefix.
    // Inlined into the codec's decoder, as when the two shared a file: a
    // call of its own costs each frame about 45 instructions.
    #[inline]
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
            KIND_METADATA => "METADATA",
            // Only the transport of a connection that agreed to them reads
            // `SHARED` frames, before they get here.
            KIND_SHARED => {
                return Err(malformed(
                    "SHARED",
                    "this connection takes no payloads in shared memory".into(),
                ));
            }
            _ => return Err(FrameError::UnknownKind { kind }),
        };
        // Id 0 is reserved for frames about no call: `SHUTDOWN`, `EVENT`,
        // and the `CREDIT` for events.
        if id == 0 && !matches!(kind, KIND_SHUTDOWN | KIND_EVENT | KIND_CREDIT) {
            return Err(malformed(name, "id 0 is reserved".into()));
        }
        let allowed = if kind == KIND_REQUEST {
            FLAG_DEADLINE
                | FLAG_TRACE
                | FLAG_STREAM_REQUEST
                | FLAG_STREAM_RESPONSE
                | FLAG_ONE_WAY
                | FLAG_METADATA
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
                    let trace = TraceContext::from_parts(trace_id, body.u64("span id")?);
                    // Span id 0 is invalid, as in W3C trace context.
                    Some(trace.ok_or_else(|| malformed(name, "span id 0".into()))?)
                } else {
                    None
                };
                let metadata = if flags & FLAG_METADATA != 0 {
                    let len = usize::from(body.u16("metadata length")?);
                    if len == 0 {
                        // The flag announces at least one entry.
                        return Err(malformed(name, "metadata of 0 bytes".into()));
                    }
                    body.metadata(len)?
                } else {
                    Metadata::new()
                };
                let method = body.method()?;
                Frame::Request {
                    id,
                    method,
                    timeout,
                    attempt,
                    trace,
                    kind: flags_kind(flags),
                    metadata,
                    payload: body.rest().into(),
                }
            }
            KIND_RESPONSE => Frame::Response {
                id,
                payload: body.rest().into(),
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
            KIND_METADATA => {
                let len = body.buf.len();
                Frame::Metadata {
                    id,
                    metadata: body.metadata(len)?,
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

/// Appends a `SHARED` frame: the payload of the frame with `id` that
/// follows, `len` bytes, is in the next memory file (PROTOCOL.md 5.13).
#[cfg(feature = "process")]
pub(crate) fn encode_shared(dst: &mut BytesMut, id: u64, len: u32) {
    dst.put_u32(SHARED_LEN as u32);
    put_header(dst, KIND_SHARED, id);
    dst.put_u32(len);
}

/// Whether a frame body (after its prefix) is a `SHARED` frame's.
#[cfg(feature = "process")]
pub(crate) fn is_shared(body: &[u8]) -> bool {
    body.first() == Some(&KIND_SHARED)
}

/// Reads a `SHARED` frame's body: the id of the frame it announces a
/// payload for, and the payload's length (at least 1).
#[cfg(feature = "process")]
pub(crate) fn decode_shared(body: &[u8]) -> Result<(u64, usize), FrameError> {
    if body.len() != SHARED_LEN {
        return Err(malformed(
            "SHARED",
            format!("{} bytes (must be {SHARED_LEN})", body.len()),
        ));
    }
    let mut body = body;
    let _kind = body.get_u8();
    let flags = body.get_u8();
    if flags != 0 {
        return Err(malformed("SHARED", format!("unknown flags 0x{flags:02x}")));
    }
    let id = body.get_u64();
    let len = body.get_u32() as usize;
    if len == 0 {
        return Err(malformed("SHARED", "a payload of 0 bytes".into()));
    }
    Ok((id, len))
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

/// What a `REQUEST`'s metadata takes: none if it has none, else its
/// length and its entries.
pub(crate) fn metadata_field_len(metadata: &Metadata) -> usize {
    if metadata.is_empty() {
        0
    } else {
        2 + metadata.encoded_len()
    }
}

#[inline]
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

    /// `len` bytes of metadata entries, checked.
    fn metadata(&mut self, len: usize) -> Result<Metadata, FrameError> {
        let block = self.bytes(len, "metadata")?;
        Metadata::from_block(block).map_err(|reason| malformed(self.kind, reason))
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::codec::{Decoder, Encoder};

    use crate::frame::FrameCodec;
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
    fn request_with_metadata_matches_protocol_doc() {
        // The metadata example of docs/PROTOCOL.md, section 4.
        let frame = Frame::request(2, MethodName::from_static("w.s"), None, 1, Bytes::new())
            .with_metadata(Metadata::new().with("t", "ab").unwrap());
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        let expected: &[u8] = &[
            0x00, 0x00, 0x00, 0x1c, // length 28
            0x01, // kind REQUEST
            0x20, // flags METADATA
            0, 0, 0, 0, 0, 0, 0, 0x02, // id 2
            0, 0, 0, 0x01, // attempt 1
            0x00, 0x07, // metadata_len 7
            0x00, 0x01, b't', 0x00, 0x02, b'a', b'b', // "t": "ab"
            0x00, 0x03, b'w', b'.', b's', // method
        ];
        assert_eq!(&buf[..], expected);
        assert_eq!(round_trip(frame.clone()), frame);
        let answer = Frame::Metadata {
            id: 2,
            metadata: Metadata::new().with("t", "ab").unwrap(),
        };
        let mut buf = BytesMut::new();
        answer.encode(&mut buf);
        let expected: &[u8] = &[
            0x00, 0x00, 0x00, 0x11, // length 17
            0x0a, 0x00, // kind METADATA, no flags
            0, 0, 0, 0, 0, 0, 0, 0x02, // id 2
            0x00, 0x01, b't', 0x00, 0x02, b'a', b'b', // "t": "ab"
        ];
        assert_eq!(&buf[..], expected);
        assert_eq!(round_trip(answer.clone()), answer);
    }

    #[test]
    fn metadata_that_breaks_the_rules_is_malformed() {
        let decode = |body: &[u8]| Frame::decode(Bytes::copy_from_slice(body)).unwrap_err();
        let request = |metadata: &[u8]| {
            let mut body = vec![0x01, 0x20, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1];
            body.extend_from_slice(&(metadata.len() as u16).to_be_bytes());
            body.extend_from_slice(metadata);
            body.extend_from_slice(&[0, 1, b'm']);
            decode(&body).to_string()
        };
        assert_eq!(
            request(&[0, 5, b'g', b'r', b'p', b'c', b'-', 0, 0]),
            "malformed REQUEST frame: metadata key \"grpc-\": keys starting with grpc- are reserved for gRPC"
        );
        assert_eq!(
            request(&[0, 1, b'k', 0, 9, b'v']),
            "malformed REQUEST frame: truncated metadata value"
        );
        let over = vec![0u8; MAX_METADATA_LEN_FOR_TEST + 1];
        assert!(request(&over).contains("metadata of 8193 bytes (at most 8192)"));
        let answer = [0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, b'K', 0, 0];
        assert_eq!(
            decode(&answer).to_string(),
            "malformed METADATA frame: metadata key \"K\": a key has only the characters 0-9 a-z - _ ."
        );
        // A METADATA frame is about a call.
        let answer = [0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(decode(&answer).to_string().contains("id 0 is reserved"));
    }

    #[test]
    fn a_trace_with_span_id_zero_and_empty_metadata_are_malformed() {
        let mut body = vec![0x01, 0x02, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1];
        body.extend_from_slice(&7u128.to_be_bytes());
        body.extend_from_slice(&0u64.to_be_bytes());
        body.extend_from_slice(&[0, 1, b'm']);
        assert_eq!(
            Frame::decode(Bytes::from(body.clone()))
                .unwrap_err()
                .to_string(),
            "malformed REQUEST frame: span id 0"
        );
        body[37] = 3; // span id 3
        match Frame::decode(Bytes::from(body)).unwrap() {
            Frame::Request { trace, .. } => {
                assert_eq!(trace, TraceContext::from_parts(7, 3));
                assert!(trace.is_some());
            }
            other => panic!("expected a request, got {other:?}"),
        }
        // The METADATA flag with no entries.
        let body = [
            0x01, 0x20, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, b'm',
        ];
        assert_eq!(
            Frame::decode(Bytes::copy_from_slice(&body))
                .unwrap_err()
                .to_string(),
            "malformed REQUEST frame: metadata of 0 bytes"
        );
    }

    const MAX_METADATA_LEN_FOR_TEST: usize = crate::MAX_METADATA_LEN;

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
            payload: Bytes::from_static(&[0x08, 0x01]).into(),
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

    fn arb_metadata() -> impl Strategy<Value = Metadata> {
        proptest::collection::vec(("[0-9a-z_.-]{1,12}", "[ -~]{0,20}", any::<bool>()), 0..4)
            .prop_map(|entries| {
                entries
                    .into_iter()
                    .fold(Metadata::new(), |metadata, (key, value, binary)| {
                        let key = if key.starts_with("grpc-") {
                            format!("x{key}")
                        } else {
                            key
                        };
                        match binary {
                            true => metadata.with(&format!("{key}-bin"), [0xff, 0]),
                            false => metadata.with(&key, value),
                        }
                        .unwrap()
                    })
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
                payload.clone(),
                arb_metadata(),
            )
                .prop_map(|(id, method, timeout, attempt, payload, metadata)| {
                    // Half the requests carry a trace, from their ids.
                    let trace = (attempt % 2 == 0)
                        .then(|| TraceContext::from_parts(u128::from(id) << 7, u64::from(attempt)))
                        .flatten();
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
                    .with_metadata(metadata)
                }),
            (
                1..=u64::MAX,
                arb_metadata().prop_filter("not empty", |m| !m.is_empty())
            )
                .prop_map(|(id, metadata)| Frame::Metadata { id, metadata }),
            (1..=u64::MAX, payload).prop_map(|(id, payload)| Frame::Response {
                id,
                payload: payload.into()
            }),
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
