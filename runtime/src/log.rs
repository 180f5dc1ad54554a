//! Frame logging: with `WORKERBUS_LOG` set (to anything but `0`), every
//! frame in and out is written to stderr with its kind, request id, message
//! name and size.
//!
//! Stderr, not `tracing`, so that it works without a subscriber, and so that
//! a process worker's lines reach the host's terminal through its forwarded
//! stderr: one request can be followed from host to worker to sub-worker.
//! The lines go through [`crate::stderr`], so a stderr that is gone or full
//! (a detached worker's, once its host has exited) never panics or blocks
//! the connection that logs.

use std::sync::OnceLock;

use crate::frame::Frame;
use crate::name::MethodName;

/// The variable that turns frame logging on.
pub const LOG_ENV: &str = "WORKERBUS_LOG";

/// Whether frames are logged; read once per process.
pub(crate) fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| {
        std::env::var_os(LOG_ENV).is_some_and(|value| !value.is_empty() && value != "0")
    })
}

/// Which way a frame goes, seen from where it is logged.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Direction {
    /// The host sends it.
    HostOut,
    /// The host receives it.
    HostIn,
    /// The worker sends it.
    WorkerOut,
    /// The worker receives it.
    WorkerIn,
}

/// Logs a frame if logging is on. `method` names the call when the frame
/// does not (answers, cancellations).
#[inline]
pub(crate) fn frame(direction: Direction, frame: &Frame, method: Option<&MethodName>) {
    if enabled() {
        write_frame(direction, frame, method);
    }
}

/// [`frame`]'s line, written: out of the way of every frame's path.
#[cold]
#[inline(never)]
fn write_frame(direction: Direction, frame: &Frame, method: Option<&MethodName>) {
    let arrow = match direction {
        Direction::HostOut => "host -> worker",
        Direction::HostIn => "host <- worker",
        Direction::WorkerOut => "worker -> host",
        Direction::WorkerIn => "worker <- host",
    };
    let method = match frame {
        Frame::Request { method, .. } => Some(method),
        _ => method,
    };
    crate::stderr::line(format!(
        "workerbus[{}] {arrow} {} #{} {} {} B",
        std::process::id(),
        frame.kind_name(),
        frame.id(),
        method.map_or("-", |method| method.as_str()),
        frame.encoded_len() + 4,
    ));
}
