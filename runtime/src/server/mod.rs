//! The worker's side: [`Dispatch`] (implemented by generated servers), and
//! the serve loop that runs calls concurrently, each with its
//! [`Context`](crate::Context).
//!
//! The serve loop owns the transport. Each `REQUEST` becomes a task running
//! the generated dispatch future; the task puts its answer in a shared outbox
//! and wakes the loop, which flushes answers in batches:
//!
//! | frame in   | state of the call         | what the loop does                           |
//! |------------|---------------------------|----------------------------------------------|
//! | `REQUEST`  | below the concurrency cap | spawns it                                    |
//! | `REQUEST`  | at the cap                | queues it, or answers `Unavailable` if the queue is full |
//! | `REQUEST`  | after `SHUTDOWN`          | answers `Unavailable`                        |
//! | `CANCEL`   | running / queued          | aborts the task / drops it; no answer is sent|
//! | (deadline) | running                   | drops the handler; no answer is sent         |
//! | `SHUTDOWN` | —                         | finishes running and queued calls, then ends |
//! | end of stream | —                      | aborts every call (nobody awaits them), ends |
//!
//! A call whose handler asked for its [`Cancellation`](crate::Cancellation)
//! has it fired whenever the loop drops the call unanswered (`CANCEL`, the
//! end of stream, its task dropped); at the deadline the token fires by
//! itself. An answer never fires it.
//!
//! The loop stops reading only while answers cannot be written (the host is
//! not reading them), so its memory stays bounded whatever the host sends.
//!
//! A handler that panics is answered with [`Code::Internal`](crate::Code) and
//! the worker keeps serving. One that outlives its caller's deadline is
//! dropped, which cancels it, and answered with nothing: the caller, whose
//! timeout set the deadline, has already ended the call with

mod call;
mod dispatch;
mod exchange;
mod options;
mod receive;
mod serve;
mod state;
mod stream;

pub use self::dispatch::{Call, Dispatch, Services};
pub use self::options::{
    DEFAULT_GREETING_TIMEOUT, DEFAULT_MAX_CONCURRENT_CALLS, DEFAULT_MAX_GREETING_FRAME_LENGTH,
    DEFAULT_MAX_QUEUED_CALLS, DEFAULT_MAX_UNGREETED_CONNECTIONS, ServeOptions,
};
pub use self::serve::serve_transport;
#[cfg(feature = "process")]
pub(crate) use self::serve::{Ending, serve_connection};
pub use self::stream::{CallStreams, Incoming, StreamSender};
