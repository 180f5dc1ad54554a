//! [`FrameError`]: a frame that could not be read or written.

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
        requests: Vec<(u64, crate::payload::Payload)>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io_error() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::NotFound, "no such file")
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
