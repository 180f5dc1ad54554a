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
//! | 0x01 | `REQUEST`  | [`timeout_us: u64` if flag `DEADLINE` 0x01] `attempt: u32`, [`trace_id: u128`, `span_id: u64` if flag `TRACE` 0x02] [`metadata_len: u16`, entries if flag `METADATA` 0x20] `method_len: u16`, method (UTF-8), payload |
//! | 0x02 | `RESPONSE` | payload                                                           |
//! | 0x03 | `STATUS`   | `code: u32`, `message_len: u32`, message (UTF-8), details         |
//! | 0x04 | `CANCEL`   | empty                                                             |
//! | 0x05 | `SHUTDOWN` | empty; id is 0                                                    |
//! | 0x06 | `ITEM`     | payload: one message of a stream                                  |
//! | 0x07 | `END`      | empty: the host's request stream is complete                      |
//! | 0x08 | `CREDIT`   | `count: u32`, `bytes: u32`: the receiver allows `count` more items and `bytes` more payload bytes (id 0: events) |
//! | 0x09 | `EVENT`    | `method_len: u16`, method (UTF-8), payload; id is 0               |
//! | 0x0a | `METADATA` | metadata entries: the handler's response metadata, before its `RESPONSE` or `STATUS` |
//!
//! A payload is one protobuf-encoded message and runs to the end of the frame.
//! Metadata entries are each `key_len: u16`, key, `value_len: u16`, value.
//! Payloads are never copied on decode: they are slices of the read buffer.
//!
//! This module holds the frame as a value; `wire.rs` turns it into bytes and
//! back (the header, the flags, each kind's body), and `codec.rs` delimits
//! frames on a byte stream ([`FrameCodec`]).

mod codec;
mod wire;

use std::time::Duration;

use bytes::Bytes;

pub use self::codec::FrameCodec;
#[cfg(feature = "process")]
pub(crate) use self::codec::is_pooled;
#[cfg(feature = "process")]
pub(crate) use self::wire::Tail;
pub(crate) use self::wire::metadata_field_len;
#[cfg(feature = "process")]
pub(crate) use self::wire::{KIND_SHARED, SHARED_LEN, decode_shared, encode_shared, is_shared};
use crate::error::Status;
use crate::metadata::Metadata;
use crate::name::MethodName;
use crate::payload::Payload;
use crate::schema::MethodKind;
use crate::trace::TraceContext;

/// The default maximum frame length: 16 MiB.
pub const DEFAULT_MAX_FRAME_LENGTH: usize = 16 * 1024 * 1024;

/// Bytes of the fixed header after the length prefix: kind, flags, id.
pub const HEADER_LEN: usize = 1 + 1 + 8;

/// The smallest maximum frame length a channel or worker accepts: room for
/// any status the runtime itself produces about an oversized frame.
pub const MIN_FRAME_LENGTH: usize = 256;

/// The smallest payload that may cross a process worker's socket in a
/// sealed memory file (one page, 4 KiB), where both ends turn that on
/// (`shared_memory_from`, `docs/PROTOCOL.md` 5.13): below it, making the
/// file costs more than copying the bytes.
pub const MIN_SHARED_MEMORY_FROM: usize = 4096;

/// The longest method name a `REQUEST` frame can carry.
pub const MAX_METHOD_LEN: usize = 1024;

/// How many `ITEM`s a stream's sender may send before it has any `CREDIT`.
pub const STREAM_WINDOW: u32 = 32;

/// One unit of the protocol.
///
/// The thread driver moves `Frame` values between threads as they are, a
/// request's and a response's message with them as values; byte-stream
/// transports encode them with [`FrameCodec`].
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
        /// The call's metadata (empty if it has none).
        metadata: Metadata,
        /// The request message (empty for a request stream): encoded, or
        /// between threads the message itself.
        payload: Payload,
    },
    /// A successful answer to the request with the same id.
    Response {
        /// The id of the request answered.
        id: u64,
        /// The response message: encoded, or between threads the message
        /// itself.
        payload: Payload,
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
    /// The metadata a handler answers with, sent just before the call's
    /// `RESPONSE` or `STATUS`.
    Metadata {
        /// The id of the request answered.
        id: u64,
        /// The handler's response metadata (never empty).
        metadata: Metadata,
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
        payload: impl Into<Payload>,
    ) -> Frame {
        Frame::Request {
            id,
            method,
            timeout,
            attempt,
            trace: None,
            kind: MethodKind::Unary,
            metadata: Metadata::new(),
            payload: payload.into(),
        }
    }

    /// This `REQUEST` with metadata; other frames unchanged.
    #[must_use]
    pub fn with_metadata(mut self, entries: Metadata) -> Frame {
        if let Frame::Request { metadata, .. } = &mut self {
            *metadata = entries;
        }
        self
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
            Frame::Metadata { .. } => "METADATA",
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
            | Frame::Credit { id, .. }
            | Frame::Metadata { id, .. } => *id,
            Frame::Shutdown | Frame::Event { .. } => 0,
        }
    }
}
