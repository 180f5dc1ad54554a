//! Drivers: how a worker is started and connected.
//!
//! A driver only spawns a worker and produces a connected
//! [`Transport`](crate::Transport); everything above it (pending calls,
//! timeouts, retries, cancellation) lives once, in [`Channel`](crate::Channel)
//! and [`serve_transport`](crate::serve_transport). Each driver has its own
//! options type and its own worker handle, so an operation only one driver
//! can do exists only on that driver's handle.

use std::time::Duration;

/// The default time a worker's `shutdown()` lets calls in flight finish
/// before it stops the worker anyway.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[cfg(feature = "thread")]
pub(crate) mod thread;

#[cfg(feature = "process")]
pub(crate) mod process;
