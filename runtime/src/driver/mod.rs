//! Drivers: how a worker is started and connected.
//!
//! A driver only spawns a worker and produces a connected
//! [`Transport`](crate::Transport); everything above it (pending calls,
//! timeouts, retries, cancellation) lives once, in [`Channel`](crate::Channel)
//! and [`serve_transport`](crate::serve_transport). Each driver has its own
//! options type and its own worker handle, so an operation only one driver
//! can do exists only on that driver's handle.

#[cfg(feature = "thread")]
pub(crate) mod thread;
