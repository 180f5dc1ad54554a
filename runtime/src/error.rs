//! Errors: the wire [`Status`] a handler returns, and the caller-side [`Error`].
//!
//! A [`Status`] crosses the boundary: a handler returns one, the worker sends it
//! in a `STATUS` frame, and the caller receives it inside [`Error::Remote`] with
//! its code and message intact. An [`Error`] is what a call, a spawn or a
//! shutdown reports on the caller's side; every variant of a failed call names
//! the message (`worker.search`) it belongs to.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::name::MethodName;

/// The closed set of status codes carried by a [`Status`].
///
/// The numbering is gRPC's, so the codes read the same to anyone who knows it.
/// On the wire a code travels as its number; a number outside this set decodes
/// as [`Code::Unknown`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Code {
    /// The operation was cancelled, typically by the caller.
    Cancelled = 1,
    /// An error that fits no other code.
    Unknown = 2,
    /// The request was malformed: it did not decode, or a field is invalid.
    InvalidArgument = 3,
    /// The deadline passed before the operation completed.
    DeadlineExceeded = 4,
    /// A requested entity was not found.
    NotFound = 5,
    /// The entity a caller tried to create already exists.
    AlreadyExists = 6,
    /// The caller may not perform this operation.
    PermissionDenied = 7,
    /// A resource (memory, a quota, a frame size limit) is exhausted.
    ResourceExhausted = 8,
    /// The system is not in a state the operation requires.
    FailedPrecondition = 9,
    /// The operation was aborted, typically by a concurrency conflict.
    Aborted = 10,
    /// The operation went past a valid range.
    OutOfRange = 11,
    /// The worker does not implement the method.
    Unimplemented = 12,
    /// An invariant was broken inside the worker, e.g. a handler panicked.
    Internal = 13,
    /// The worker cannot take the call now (e.g. it is shutting down); retrying
    /// later may succeed.
    Unavailable = 14,
    /// Unrecoverable data loss or corruption.
    DataLoss = 15,
    /// The caller is not authenticated.
    Unauthenticated = 16,
}

impl Code {
    /// The code's number on the wire.
    pub const fn as_u32(self) -> u32 {
        self as u32
    }

    /// The code for a wire number; numbers outside the set map to [`Code::Unknown`].
    pub const fn from_u32(value: u32) -> Code {
        match value {
            1 => Code::Cancelled,
            3 => Code::InvalidArgument,
            4 => Code::DeadlineExceeded,
            5 => Code::NotFound,
            6 => Code::AlreadyExists,
            7 => Code::PermissionDenied,
            8 => Code::ResourceExhausted,
            9 => Code::FailedPrecondition,
            10 => Code::Aborted,
            11 => Code::OutOfRange,
            12 => Code::Unimplemented,
            13 => Code::Internal,
            14 => Code::Unavailable,
            15 => Code::DataLoss,
            16 => Code::Unauthenticated,
            _ => Code::Unknown,
        }
    }

    /// A short lower-case description, as used in messages ("not found").
    pub const fn description(self) -> &'static str {
        match self {
            Code::Cancelled => "cancelled",
            Code::Unknown => "unknown error",
            Code::InvalidArgument => "invalid argument",
            Code::DeadlineExceeded => "deadline exceeded",
            Code::NotFound => "not found",
            Code::AlreadyExists => "already exists",
            Code::PermissionDenied => "permission denied",
            Code::ResourceExhausted => "resource exhausted",
            Code::FailedPrecondition => "failed precondition",
            Code::Aborted => "aborted",
            Code::OutOfRange => "out of range",
            Code::Unimplemented => "unimplemented",
            Code::Internal => "internal error",
            Code::Unavailable => "unavailable",
            Code::DataLoss => "data loss",
            Code::Unauthenticated => "unauthenticated",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

/// An error status returned by a handler and carried to the caller unchanged.
///
/// ```
/// use workerbus::{Code, Status};
///
/// let status = Status::not_found("no document 42");
/// assert_eq!(status.code(), Code::NotFound);
/// assert_eq!(status.to_string(), "not found: no document 42");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    code: Code,
    message: String,
    details: Bytes,
}

macro_rules! constructors {
    ($($(#[$doc:meta])* $name:ident => $code:ident,)*) => {
        $(
            $(#[$doc])*
            pub fn $name(message: impl Into<String>) -> Status {
                Status::new(Code::$code, message)
            }
        )*
    };
}

impl Status {
    /// A status with a code and a message.
    pub fn new(code: Code, message: impl Into<String>) -> Status {
        Status {
            code,
            message: message.into(),
            details: Bytes::new(),
        }
    }

    /// Attaches opaque details (for example an encoded protobuf message) that
    /// travel to the caller with the status.
    #[must_use]
    pub fn with_details(mut self, details: impl Into<Bytes>) -> Status {
        self.details = details.into();
        self
    }

    constructors! {
        /// A [`Code::Cancelled`] status.
        cancelled => Cancelled,
        /// A [`Code::Unknown`] status.
        unknown => Unknown,
        /// A [`Code::InvalidArgument`] status.
        invalid_argument => InvalidArgument,
        /// A [`Code::DeadlineExceeded`] status.
        deadline_exceeded => DeadlineExceeded,
        /// A [`Code::NotFound`] status.
        not_found => NotFound,
        /// A [`Code::AlreadyExists`] status.
        already_exists => AlreadyExists,
        /// A [`Code::PermissionDenied`] status.
        permission_denied => PermissionDenied,
        /// A [`Code::ResourceExhausted`] status.
        resource_exhausted => ResourceExhausted,
        /// A [`Code::FailedPrecondition`] status.
        failed_precondition => FailedPrecondition,
        /// A [`Code::Aborted`] status.
        aborted => Aborted,
        /// A [`Code::OutOfRange`] status.
        out_of_range => OutOfRange,
        /// A [`Code::Unimplemented`] status.
        unimplemented => Unimplemented,
        /// A [`Code::Internal`] status.
        internal => Internal,
        /// A [`Code::Unavailable`] status.
        unavailable => Unavailable,
        /// A [`Code::DataLoss`] status.
        data_loss => DataLoss,
        /// A [`Code::Unauthenticated`] status.
        unauthenticated => Unauthenticated,
    }

    /// The status code.
    pub fn code(&self) -> Code {
        self.code
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The opaque details attached with [`Status::with_details`], empty if none.
    pub fn details(&self) -> &Bytes {
        &self.details
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            write!(f, "{}", self.code)
        } else {
            write!(f, "{}: {}", self.code, self.message)
        }
    }
}

impl std::error::Error for Status {}

/// How a worker ended, as carried by [`Error::WorkerExited`] and a worker's
/// `exited()`.
///
/// It displays as a phrase that follows "the worker": "exited with code 3",
/// "was killed by signal 9 (SIGKILL)".
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExitReason {
    /// A worker process exited with this code.
    Code(i32),
    /// A worker process was killed by this signal number.
    Signal(i32),
    /// A worker thread panicked outside any handler (handler panics are
    /// answered with [`Code::Internal`] and do not stop the worker).
    Panicked(String),
    /// A worker thread stopped serving: after a shutdown, or because every
    /// handle to it was dropped.
    Stopped,
    /// A worker thread was stopped by `kill()` without finishing its calls.
    Killed,
    /// The worker is gone but how it ended could not be determined.
    Unknown,
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Code(code) => write!(f, "exited with code {code}"),
            ExitReason::Signal(signal) => match signal_name(*signal) {
                Some(name) => write!(f, "was killed by signal {signal} ({name})"),
                None => write!(f, "was killed by signal {signal}"),
            },
            ExitReason::Panicked(message) => write!(f, "panicked: {message}"),
            ExitReason::Stopped => f.write_str("stopped"),
            ExitReason::Killed => f.write_str("was killed"),
            ExitReason::Unknown => f.write_str("ended (exit status unknown)"),
        }
    }
}

fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        _ => return None,
    })
}

/// A connection-level error: a frame that could not be read or written.
///
/// Decoders tell *incomplete* input (wait for more bytes) from *invalid*
/// input; only the latter is an error, and it closes the connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A frame announced a length above the maximum. Nothing of that size
    /// was allocated.
    #[error("frame of {len} bytes exceeds the maximum frame length of {max} bytes")]
    TooLong {
        /// The announced length.
        len: usize,
        /// The maximum frame length in force.
        max: usize,
    },
    /// A frame announced a length above what a worker reads from a peer
    /// that has not completed the handshake (the greeting's limit,
    /// `ServeOptions::max_greeting_frame_length`). Nothing of that size was
    /// allocated.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes before the handshake")]
    GreetingTooLong {
        /// The announced length.
        len: usize,
        /// The limit before the handshake.
        max: usize,
    },
    /// A frame too short to hold the fixed header.
    #[error("frame of {len} bytes is shorter than the 10-byte header")]
    TooShort {
        /// The frame's length.
        len: usize,
    },
    /// A frame's header is inconsistent with its kind.
    #[error("malformed {kind} frame: {reason}")]
    Malformed {
        /// The frame kind, e.g. `"REQUEST"`.
        kind: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A frame kind this version does not know.
    #[error("unknown frame kind 0x{kind:02x}")]
    UnknownKind {
        /// The kind byte.
        kind: u8,
    },
    /// A well-formed frame that this side of the connection must never
    /// receive (e.g. a `REQUEST` arriving at the host).
    #[error("unexpected {kind} frame from the {peer}")]
    Unexpected {
        /// The frame kind.
        kind: &'static str,
        /// Who sent it: `"worker"` or `"host"`.
        peer: &'static str,
    },
    /// The connection ended in the middle of a frame.
    #[error("the connection closed in the middle of a frame ({buffered} bytes received)")]
    Truncated {
        /// How many bytes of the partial frame had arrived, length prefix
        /// included.
        buffered: usize,
    },
    /// A request reused the id of a request still in flight, which would make
    /// the answers ambiguous.
    #[error("request id {id} is already in flight")]
    DuplicateId {
        /// The reused id.
        id: u64,
    },
    /// An answer, stream item or credit for a request id the host never
    /// sent. The Rust host numbers its requests 1, 2, 3… and never reuses
    /// an id, so such a frame is a broken or hostile worker, not a late
    /// answer.
    #[error("a {kind} frame refers to request {id}, which was never sent")]
    NeverSent {
        /// The frame kind.
        kind: &'static str,
        /// The id no request had.
        id: u64,
    },
    /// A frame other than the handshake arrived before the handshake.
    #[error("a {kind} frame arrived before the handshake")]
    BeforeHandshake {
        /// The frame kind.
        kind: &'static str,
    },
    /// The peer failed the handshake (a wrong secret or protocol version)
    /// and was told why before the connection closed.
    #[error("the peer was refused: {reason}")]
    Refused {
        /// What was wrong, as sent to the peer.
        reason: String,
    },
    /// The other side has closed its end.
    #[error("the connection is closed")]
    Closed,
    /// Reading or writing the underlying socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// Writing to the connection failed before these requests were
    /// written, so the peer never received them. A transport that knows
    /// which of the `REQUEST`s it was given it did not write hands them back
    /// this way (the process driver's does): the host then treats those
    /// calls as never sent, and a supervised channel sends them to the
    /// worker's replacement.
    #[error("i/o error: {source}")]
    Unwritten {
        /// Why the write failed.
        #[source]
        source: std::io::Error,
        /// The id and payload of each `REQUEST` not written, in the order
        /// they were given.
        requests: Vec<(u64, bytes::Bytes)>,
    },
}

/// What went wrong on the caller's side: a failed call, spawn or shutdown.
///
/// Errors of a call name the message (`embedder.embed`) and say what
/// happened; where there is an underlying cause it is the
/// [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The call got no answer within its timeout. The worker was told to
    /// cancel it.
    #[error("{method} timed out after {after:?}")]
    Timeout {
        /// The message name.
        method: MethodName,
        /// The timeout that elapsed (per attempt).
        after: Duration,
    },

    /// The call was cancelled before it could complete. The runtime does
    /// not produce it (a killed worker's calls end with
    /// [`WorkerExited`](Error::WorkerExited)); it is for middleware that
    /// gives up on a call on purpose.
    #[error("{method} was cancelled")]
    Cancelled {
        /// The message name.
        method: MethodName,
    },

    /// The worker ended before it answered.
    #[error("{method} failed: the worker {exit}")]
    WorkerExited {
        /// The message name.
        method: MethodName,
        /// How the worker ended.
        exit: ExitReason,
    },

    /// The connection to the worker was lost while the worker may still be
    /// running, or broke with a protocol or I/O error.
    #[error("{method} failed: disconnected from the worker{}", cause_suffix(.cause))]
    Disconnected {
        /// The message name.
        method: MethodName,
        /// What broke the connection, if anything did.
        #[source]
        cause: Option<Arc<FrameError>>,
    },

    /// The call's worker is supervised and not available: it is restarting
    /// and the policy fails fast, or its supervisor gave up on it.
    #[error("{method} failed: worker {worker} is unavailable: {reason}")]
    Unavailable {
        /// The message name.
        method: MethodName,
        /// The supervised worker's name.
        worker: String,
        /// Why.
        reason: String,
    },

    /// The worker answered with an error status.
    #[error("{method} failed: {status}")]
    Remote {
        /// The message name.
        method: MethodName,
        /// The status the handler (or the worker's runtime) returned.
        #[source]
        status: Status,
    },

    /// The request or response is larger than the channel's maximum frame
    /// length.
    #[error(
        "{method} failed: {what} of {size} bytes exceeds the maximum frame length of {max} bytes"
    )]
    TooLarge {
        /// The message name.
        method: MethodName,
        /// `"request"` or `"response"`.
        what: &'static str,
        /// The encoded size.
        size: usize,
        /// The configured maximum.
        max: usize,
    },

    /// The message name cannot be sent: a name has 1 to
    /// [`MAX_METHOD_LEN`](crate::MAX_METHOD_LEN) bytes. Generated clients
    /// never make such a call.
    #[error("{method:?} cannot be sent: a message name has 1 to {max} bytes, this one has {len}")]
    InvalidMethodName {
        /// The name.
        method: MethodName,
        /// Its length in bytes.
        len: usize,
        /// The longest name a frame carries.
        max: usize,
    },

    /// A message from the worker (a response, a stream item, an event) did
    /// not decode as the expected message type.
    #[error("{method} failed: the {what} did not decode as {message}")]
    Decode {
        /// The message name.
        method: MethodName,
        /// What did not decode: `"response"`, `"response stream item"` or
        /// `"event"`.
        what: &'static str,
        /// The protobuf message type that was expected.
        message: &'static str,
        /// The decoder's error.
        #[source]
        source: prost::DecodeError,
    },

    /// This process cannot serve as a worker (see `workerbus::serve`). The
    /// message ends with the operating system's error, if there is one.
    #[error("cannot serve as a worker: {reason}{}", io_suffix(.source))]
    Worker {
        /// What is wrong.
        reason: String,
        /// The underlying error, if any.
        #[source]
        source: Option<std::io::Error>,
    },

    /// A worker did not complete its handshake within its startup deadline;
    /// it was killed.
    #[error("worker {worker} did not complete its handshake within {after:?}; it was killed")]
    StartupTimeout {
        /// The worker's name.
        worker: String,
        /// The startup deadline.
        after: Duration,
    },

    /// A worker process ended before completing its handshake.
    #[error("worker {worker} {exit} before completing its handshake{}", stderr_suffix(.stderr))]
    ExitedDuringStartup {
        /// The worker's name.
        worker: String,
        /// How it ended.
        exit: ExitReason,
        /// The last lines it wrote to its stderr, if the host captured them.
        stderr: Vec<String>,
    },

    /// The handshake with a worker failed: it refused the host, speaks
    /// another protocol version, or serves a different schema.
    #[error("worker {worker}: {reason}")]
    Handshake {
        /// The worker's name.
        worker: String,
        /// What failed, e.g. which service and method differ.
        reason: String,
    },

    /// A worker's named socket could not be reached.
    #[error("cannot connect to the worker at {}: {source}", .address.display())]
    Connect {
        /// The socket's path.
        address: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },

    /// A worker could not be started. The message ends with the operating
    /// system's error, if there is one (e.g. `Too many open files (os error
    /// 24)`).
    #[error("failed to spawn worker {worker}: {reason}{}", io_suffix(.source))]
    Spawn {
        /// The worker's name (a thread name or an executable path).
        worker: String,
        /// What failed.
        reason: String,
        /// The underlying error, if any.
        #[source]
        source: Option<std::io::Error>,
    },
}

fn stderr_suffix(stderr: &[String]) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!("; its stderr ended with:\n{}", stderr.join("\n"))
    }
}

fn io_suffix(source: &Option<std::io::Error>) -> String {
    match source {
        Some(source) => format!(": {source}"),
        None => String::new(),
    }
}

fn cause_suffix(cause: &Option<Arc<FrameError>>) -> String {
    match cause {
        Some(cause) => format!(": {cause}"),
        None => String::new(),
    }
}

/// A handler that calls another worker passes a failed call on with `?`:
/// the status keeps the remote code (or takes the code closest to what
/// happened: a timeout is [`Code::DeadlineExceeded`], a worker that exited,
/// disconnected or could not start is [`Code::Unavailable`]) and its message
/// names the call and the cause.
///
/// ```
/// use std::time::Duration;
/// use workerbus::{Code, Error, Status};
///
/// let error = Error::Timeout {
///     method: "embedder.embed".into(),
///     after: Duration::from_secs(1),
/// };
/// let status = Status::from(error);
/// assert_eq!(status.code(), Code::DeadlineExceeded);
/// assert_eq!(status.message(), "embedder.embed timed out after 1s");
/// ```
impl From<Error> for Status {
    fn from(error: Error) -> Status {
        let (code, details) = match &error {
            Error::Remote { status, .. } => (status.code(), status.details().clone()),
            Error::Timeout { .. } => (Code::DeadlineExceeded, Bytes::new()),
            Error::Cancelled { .. } => (Code::Cancelled, Bytes::new()),
            Error::TooLarge { .. } => (Code::ResourceExhausted, Bytes::new()),
            Error::InvalidMethodName { .. } => (Code::InvalidArgument, Bytes::new()),
            Error::Decode { .. } => (Code::Internal, Bytes::new()),
            Error::Handshake { .. } => (Code::FailedPrecondition, Bytes::new()),
            _ => (Code::Unavailable, Bytes::new()),
        };
        Status::new(code, error.to_string()).with_details(details)
    }
}

impl Error {
    /// The message name of the call this error belongs to, if it belongs to a call.
    pub fn method(&self) -> Option<&str> {
        match self {
            Error::Timeout { method, .. }
            | Error::Cancelled { method }
            | Error::WorkerExited { method, .. }
            | Error::Disconnected { method, .. }
            | Error::Remote { method, .. }
            | Error::TooLarge { method, .. }
            | Error::InvalidMethodName { method, .. }
            | Error::Decode { method, .. }
            | Error::Unavailable { method, .. } => Some(method),
            Error::Spawn { .. }
            | Error::Worker { .. }
            | Error::StartupTimeout { .. }
            | Error::ExitedDuringStartup { .. }
            | Error::Handshake { .. }
            | Error::Connect { .. } => None,
        }
    }

    /// The remote status, if the worker answered with one.
    pub fn status(&self) -> Option<&Status> {
        match self {
            Error::Remote { status, .. } => Some(status),
            _ => None,
        }
    }

    /// Whether another attempt of an idempotent call could succeed: the call
    /// timed out, its worker exited or disconnected, or the worker said it
    /// was [`Unavailable`](Code::Unavailable).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Timeout { .. } | Error::WorkerExited { .. } | Error::Disconnected { .. } => true,
            Error::Remote { status, .. } => status.code() == Code::Unavailable,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_CODES: [Code; 16] = [
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    fn method() -> MethodName {
        MethodName::from_static("embedder.embed")
    }

    fn decode_error() -> prost::DecodeError {
        // A length-delimited field announcing 5 bytes and carrying none.
        <String as prost::Message>::decode(&[0x0a, 0x05][..]).unwrap_err()
    }

    fn io_error() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::NotFound, "no such file")
    }

    /// One error of every variant, with the code its status takes and the
    /// message name it belongs to.
    fn every_error() -> Vec<(Error, Code, Option<&'static str>)> {
        vec![
            (
                Error::Timeout {
                    method: method(),
                    after: Duration::from_millis(1500),
                },
                Code::DeadlineExceeded,
                Some("embedder.embed"),
            ),
            (
                Error::Cancelled { method: method() },
                Code::Cancelled,
                Some("embedder.embed"),
            ),
            (
                Error::WorkerExited {
                    method: method(),
                    exit: ExitReason::Signal(9),
                },
                Code::Unavailable,
                Some("embedder.embed"),
            ),
            (
                Error::Disconnected {
                    method: method(),
                    cause: Some(Arc::new(FrameError::Closed)),
                },
                Code::Unavailable,
                Some("embedder.embed"),
            ),
            (
                Error::Unavailable {
                    method: method(),
                    worker: "embedder".into(),
                    reason: "it is restarting".into(),
                },
                Code::Unavailable,
                Some("embedder.embed"),
            ),
            (
                Error::Remote {
                    method: method(),
                    status: Status::not_found("no document 42"),
                },
                Code::NotFound,
                Some("embedder.embed"),
            ),
            (
                Error::TooLarge {
                    method: method(),
                    what: "request",
                    size: 5000,
                    max: 4096,
                },
                Code::ResourceExhausted,
                Some("embedder.embed"),
            ),
            (
                Error::InvalidMethodName {
                    method: MethodName::from_static(""),
                    len: 0,
                    max: 1024,
                },
                Code::InvalidArgument,
                Some(""),
            ),
            (
                Error::Decode {
                    method: method(),
                    what: "response",
                    message: "embedder.Vector",
                    source: decode_error(),
                },
                Code::Internal,
                Some("embedder.embed"),
            ),
            (
                Error::Worker {
                    reason: "not started by a workerbus host".into(),
                    source: None,
                },
                Code::Unavailable,
                None,
            ),
            (
                Error::StartupTimeout {
                    worker: "embedder".into(),
                    after: Duration::from_secs(10),
                },
                Code::Unavailable,
                None,
            ),
            (
                Error::ExitedDuringStartup {
                    worker: "embedder".into(),
                    exit: ExitReason::Code(3),
                    stderr: vec!["loading the model failed".into()],
                },
                Code::Unavailable,
                None,
            ),
            (
                Error::Handshake {
                    worker: "embedder".into(),
                    reason: "it serves another schema".into(),
                },
                Code::FailedPrecondition,
                None,
            ),
            (
                Error::Connect {
                    address: "/run/embedder/socket".into(),
                    source: io_error(),
                },
                Code::Unavailable,
                None,
            ),
            (
                Error::Spawn {
                    worker: "target/debug/embedder".into(),
                    reason: "the program does not exist".into(),
                    source: Some(io_error()),
                },
                Code::Unavailable,
                None,
            ),
        ]
    }

    #[test]
    fn every_code_round_trips_through_its_wire_number() {
        for (index, code) in ALL_CODES.into_iter().enumerate() {
            assert_eq!(code.as_u32(), index as u32 + 1, "{code:?}");
            assert_eq!(Code::from_u32(code.as_u32()), code);
        }
        for unknown in [0, 17, 99, u32::MAX] {
            assert_eq!(Code::from_u32(unknown), Code::Unknown, "{unknown}");
        }
    }

    #[test]
    fn every_code_has_its_own_lower_case_description() {
        let expected = [
            "cancelled",
            "unknown error",
            "invalid argument",
            "deadline exceeded",
            "not found",
            "already exists",
            "permission denied",
            "resource exhausted",
            "failed precondition",
            "aborted",
            "out of range",
            "unimplemented",
            "internal error",
            "unavailable",
            "data loss",
            "unauthenticated",
        ];
        for (code, description) in ALL_CODES.into_iter().zip(expected) {
            assert_eq!(code.description(), description);
            assert_eq!(code.to_string(), description);
        }
    }

    #[test]
    fn each_constructor_makes_a_status_of_its_code() {
        let made = [
            Status::cancelled("m"),
            Status::unknown("m"),
            Status::invalid_argument("m"),
            Status::deadline_exceeded("m"),
            Status::not_found("m"),
            Status::already_exists("m"),
            Status::permission_denied("m"),
            Status::resource_exhausted("m"),
            Status::failed_precondition("m"),
            Status::aborted("m"),
            Status::out_of_range("m"),
            Status::unimplemented("m"),
            Status::internal("m"),
            Status::unavailable("m"),
            Status::data_loss("m"),
            Status::unauthenticated("m"),
        ];
        for (status, code) in made.iter().zip(ALL_CODES) {
            assert_eq!(status.code(), code);
            assert_eq!(status.message(), "m");
            assert!(status.details().is_empty());
        }
    }

    #[test]
    fn a_status_without_a_message_displays_its_code_alone() {
        assert_eq!(Status::new(Code::Aborted, "").to_string(), "aborted");
        assert_eq!(
            Status::aborted("a conflicting write").to_string(),
            "aborted: a conflicting write"
        );
    }

    #[test]
    fn every_error_becomes_the_status_of_its_code_with_its_message() {
        for (error, code, _) in every_error() {
            let message = error.to_string();
            let status = Status::from(error);
            assert_eq!(status.code(), code, "{message}");
            assert_eq!(status.message(), message);
            assert!(status.details().is_empty(), "{message}");
        }
    }

    #[test]
    fn a_remote_error_keeps_the_details_of_its_status() {
        let error = Error::Remote {
            method: method(),
            status: Status::aborted("conflict").with_details(&b"\x08\x01"[..]),
        };
        let status = Status::from(error);
        assert_eq!(status.code(), Code::Aborted);
        assert_eq!(status.message(), "embedder.embed failed: aborted: conflict");
        assert_eq!(status.details().as_ref(), b"\x08\x01");
    }

    #[test]
    fn only_errors_of_a_call_name_its_method() {
        for (error, _, method) in every_error() {
            assert_eq!(error.method(), method, "{error}");
        }
    }

    #[test]
    fn only_a_remote_error_has_a_status() {
        for (error, _, _) in every_error() {
            match &error {
                Error::Remote { status, .. } => {
                    assert_eq!(error.status(), Some(status));
                }
                _ => assert_eq!(error.status(), None, "{error}"),
            }
        }
    }

    #[test]
    fn timeouts_exits_disconnections_and_unavailable_workers_are_retryable() {
        for (error, _, _) in every_error() {
            let expected = matches!(
                error,
                Error::Timeout { .. } | Error::WorkerExited { .. } | Error::Disconnected { .. }
            );
            assert_eq!(error.is_retryable(), expected, "{error}");
        }
        let unavailable = Error::Remote {
            method: method(),
            status: Status::unavailable("shutting down"),
        };
        assert!(unavailable.is_retryable());
        let cancelled = Error::Remote {
            method: method(),
            status: Status::cancelled("by the handler"),
        };
        assert!(!cancelled.is_retryable());
    }

    #[test]
    fn error_messages_name_the_call_and_the_cause() {
        let messages: Vec<String> = every_error()
            .into_iter()
            .map(|(error, _, _)| error.to_string())
            .collect();
        assert_eq!(
            messages,
            [
                "embedder.embed timed out after 1.5s",
                "embedder.embed was cancelled",
                "embedder.embed failed: the worker was killed by signal 9 (SIGKILL)",
                "embedder.embed failed: disconnected from the worker: the connection is closed",
                "embedder.embed failed: worker embedder is unavailable: it is restarting",
                "embedder.embed failed: not found: no document 42",
                "embedder.embed failed: request of 5000 bytes exceeds the maximum frame length of 4096 bytes",
                "\"\" cannot be sent: a message name has 1 to 1024 bytes, this one has 0",
                "embedder.embed failed: the response did not decode as embedder.Vector",
                "cannot serve as a worker: not started by a workerbus host",
                "worker embedder did not complete its handshake within 10s; it was killed",
                "worker embedder exited with code 3 before completing its handshake; its stderr ended with:\nloading the model failed",
                "worker embedder: it serves another schema",
                "cannot connect to the worker at /run/embedder/socket: no such file",
                "failed to spawn worker target/debug/embedder: the program does not exist: no such file",
            ]
        );
    }

    #[test]
    fn an_exit_during_startup_without_stderr_adds_nothing() {
        let error = Error::ExitedDuringStartup {
            worker: "embedder".into(),
            exit: ExitReason::Signal(6),
            stderr: Vec::new(),
        };
        assert_eq!(
            error.to_string(),
            "worker embedder was killed by signal 6 (SIGABRT) before completing its handshake"
        );
    }

    #[test]
    fn a_disconnection_without_a_cause_says_only_that() {
        let error = Error::Disconnected {
            method: method(),
            cause: None,
        };
        assert_eq!(
            error.to_string(),
            "embedder.embed failed: disconnected from the worker"
        );
        assert!(std::error::Error::source(&error).is_none());
    }

    #[test]
    fn every_exit_reason_reads_after_the_worker() {
        let named = [
            (1, "SIGHUP"),
            (2, "SIGINT"),
            (3, "SIGQUIT"),
            (4, "SIGILL"),
            (6, "SIGABRT"),
            (7, "SIGBUS"),
            (8, "SIGFPE"),
            (9, "SIGKILL"),
            (11, "SIGSEGV"),
            (13, "SIGPIPE"),
            (14, "SIGALRM"),
            (15, "SIGTERM"),
        ];
        for (signal, name) in named {
            assert_eq!(
                ExitReason::Signal(signal).to_string(),
                format!("was killed by signal {signal} ({name})")
            );
        }
        for unnamed in [5, 10, 12, 64] {
            assert_eq!(
                ExitReason::Signal(unnamed).to_string(),
                format!("was killed by signal {unnamed}")
            );
        }
        assert_eq!(ExitReason::Code(0).to_string(), "exited with code 0");
        assert_eq!(
            ExitReason::Panicked("index out of bounds".into()).to_string(),
            "panicked: index out of bounds"
        );
        assert_eq!(ExitReason::Stopped.to_string(), "stopped");
        assert_eq!(ExitReason::Killed.to_string(), "was killed");
        assert_eq!(
            ExitReason::Unknown.to_string(),
            "ended (exit status unknown)"
        );
    }

    #[test]
    fn frame_errors_say_what_was_wrong() {
        let cases = [
            (
                FrameError::TooLong {
                    len: 5000,
                    max: 4096,
                },
                "frame of 5000 bytes exceeds the maximum frame length of 4096 bytes",
            ),
            (
                FrameError::GreetingTooLong {
                    len: 16_777_216,
                    max: 4096,
                },
                "frame of 16777216 bytes exceeds the maximum of 4096 bytes before the handshake",
            ),
            (
                FrameError::TooShort { len: 3 },
                "frame of 3 bytes is shorter than the 10-byte header",
            ),
            (
                FrameError::Malformed {
                    kind: "ITEM",
                    reason: "no payload".into(),
                },
                "malformed ITEM frame: no payload",
            ),
            (
                FrameError::UnknownKind { kind: 0x2a },
                "unknown frame kind 0x2a",
            ),
            (
                FrameError::Unexpected {
                    kind: "REQUEST",
                    peer: "worker",
                },
                "unexpected REQUEST frame from the worker",
            ),
            (
                FrameError::Truncated { buffered: 7 },
                "the connection closed in the middle of a frame (7 bytes received)",
            ),
            (
                FrameError::DuplicateId { id: 5 },
                "request id 5 is already in flight",
            ),
            (
                FrameError::NeverSent {
                    kind: "CREDIT",
                    id: 9,
                },
                "a CREDIT frame refers to request 9, which was never sent",
            ),
            (
                FrameError::BeforeHandshake { kind: "CANCEL" },
                "a CANCEL frame arrived before the handshake",
            ),
            (
                FrameError::Refused {
                    reason: "wrong secret".into(),
                },
                "the peer was refused: wrong secret",
            ),
            (FrameError::Closed, "the connection is closed"),
            (FrameError::from(io_error()), "i/o error: no such file"),
        ];
        for (error, message) in cases {
            assert_eq!(error.to_string(), message);
        }
    }
}
