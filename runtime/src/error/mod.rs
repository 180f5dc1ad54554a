//! Errors: the wire [`Status`] a handler returns, and the caller-side [`Error`].
//!
//! A [`Status`] crosses the boundary: a handler returns one, the worker sends it
//! in a `STATUS` frame, and the caller receives it inside [`Error::Remote`] with
//! its code and message intact. An [`Error`] is what a call, a spawn or a
//! shutdown reports on the caller's side; every variant of a failed call names
//! the message (`worker.search`) it belongs to.
//!
//! The status and its codes live in `status.rs`, how a worker ended in
//! `exit.rs`, a connection's frame errors in `frame_error.rs`; this module
//! holds [`Error`] and how it becomes a status.

mod exit;
mod frame_error;
mod status;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

pub use self::exit::ExitReason;
pub use self::frame_error::FrameError;
pub use self::status::{Code, Status};
use crate::name::MethodName;

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
    /// length, or the call's metadata larger than
    /// [`MAX_METADATA_LEN`](crate::MAX_METADATA_LEN).
    #[error("{method} failed: {}", too_large(.what, *.size, *.max, .key.as_deref()))]
    TooLarge {
        /// The message name.
        method: MethodName,
        /// `"request"`, `"response"`, `"request stream item"`, or
        /// `"metadata"` (the call's metadata passed
        /// [`MAX_METADATA_LEN`](crate::MAX_METADATA_LEN)).
        what: &'static str,
        /// The encoded size.
        size: usize,
        /// The configured maximum.
        max: usize,
        /// For metadata, the key of the entry that passed the maximum.
        key: Option<String>,
    },

    /// A metadata key or value breaks gRPC's rules (see
    /// [`Metadata`](crate::Metadata)).
    #[error("invalid metadata key {key:?}: {reason}")]
    InvalidMetadata {
        /// The key.
        key: String,
        /// What is wrong, e.g. `keys starting with grpc- are reserved for gRPC`.
        reason: &'static str,
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

    /// A [`Middleware`](crate::Middleware) of the channel panicked while it
    /// ran around the call. The panic ends the call, not the caller's task:
    /// the attempt under the middleware, if it had started, is withdrawn as
    /// for any failure, and the call is not retried (a panic is a bug, not a
    /// passing failure). A worker's middleware that panics is answered with
    /// an [`Internal`](Code::Internal) status naming it the same way.
    #[error("{method} failed: the middleware {middleware} panicked: {message}")]
    Middleware {
        /// The message name.
        method: MethodName,
        /// The middleware's type, as [`std::any::type_name`] gives it
        /// (e.g. `my_app::Auth`).
        middleware: &'static str,
        /// The panic's message: the `&str` or `String` given to `panic!`.
        message: String,
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

fn too_large(what: &str, size: usize, max: usize, key: Option<&str>) -> String {
    match key {
        Some(key) => format!(
            "{what} of {size} bytes exceeds the maximum of {max} bytes per call, at key {key:?}"
        ),
        None => format!("{what} of {size} bytes exceeds the maximum frame length of {max} bytes"),
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
/// disconnected or could not start is [`Code::Unavailable`], a middleware
/// that panicked is [`Code::Internal`], a request, response or metadata too
/// large is [`Code::ResourceExhausted`], invalid metadata (e.g. from
/// [`Metadata::with`](crate::Metadata::with) in a handler) is
/// [`Code::InvalidArgument`]) and its message names the call (if any) and
/// the cause.
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
            Error::InvalidMethodName { .. } | Error::InvalidMetadata { .. } => {
                (Code::InvalidArgument, Bytes::new())
            }
            Error::Decode { .. } | Error::Middleware { .. } => (Code::Internal, Bytes::new()),
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
            | Error::Middleware { method, .. }
            | Error::Unavailable { method, .. } => Some(method),
            Error::Spawn { .. }
            | Error::InvalidMetadata { .. }
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
                    key: None,
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
                Error::Middleware {
                    method: method(),
                    middleware: "my_app::Auth",
                    message: "no token".into(),
                },
                Code::Internal,
                Some("embedder.embed"),
            ),
            (
                Error::InvalidMetadata {
                    key: "Tenant".into(),
                    reason: "a key has only the characters 0-9 a-z - _ .",
                },
                Code::InvalidArgument,
                None,
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
                "embedder.embed failed: the middleware my_app::Auth panicked: no token",
                "invalid metadata key \"Tenant\": a key has only the characters 0-9 a-z - _ .",
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
}
