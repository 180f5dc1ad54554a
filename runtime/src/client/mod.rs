//! The caller's side: [`Channel`], its pending-request table and link task,
//! and per-call [`CallOptions`].
//!
//! A `Channel` is a cheap handle. Behind it, one mutex guards the pending
//! table and an outbox of frames; one link task (spawned on the caller's
//! runtime) owns the [`Transport`], flushes the outbox in batches and routes
//! answers to their callers:
//!
//! ```text
//!  caller ──lock: insert slot, push REQUEST──▶ outbox ──link task──▶ transport
//!  caller ◀──wake── slot ◀──lock: store answer── link task ◀── transport
//! ```
//!
//! A call is a slot in the table from the moment it is sent until its future
//! takes the answer or is dropped, whichever comes first; dropping it early
//! queues a `CANCEL` frame. So every call ends exactly once (answer, remote
//! status, timeout, cancellation, or the worker's exit) and the table holds
//! only calls that someone still awaits.

mod bytes;
mod call;
mod channel;
mod deadline;
#[cfg(any(feature = "thread", feature = "process"))]
mod driver;
mod link;
mod one_way;
mod options;
mod pending;
mod retry;
mod source;
mod stream;
#[cfg(test)]
mod tests;

pub use self::channel::Channel;
pub(crate) use self::link::ExitWatch;
pub(crate) use self::options::MethodDefaults;
pub(crate) use self::options::Resolved;
pub use self::options::{
    CallOptions, ChannelOptions, DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_QUEUED_BYTES, DEFAULT_TIMEOUT,
};
#[cfg(any(feature = "thread", feature = "process"))]
pub(crate) use self::pending::CloseReason;
pub(crate) use self::source::{Source, SourceFuture};
pub use self::stream::{ByteStream, Streaming};
