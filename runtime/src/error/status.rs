//! [`Status`]: what crosses the boundary when a call fails, with its [`Code`].

use std::fmt;

use bytes::Bytes;

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
}
