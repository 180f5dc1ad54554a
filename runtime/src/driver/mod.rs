//! Drivers: how a worker is started and connected.
//!
//! A driver only spawns a worker and produces a connected
//! [`Transport`](crate::Transport); everything above it (pending calls,
//! timeouts, retries, cancellation) lives once, in [`Channel`](crate::Channel)
//! and [`serve_transport`](crate::serve_transport). Each driver has its own
//! options type and its own worker handle, so an operation only one driver
//! can do exists only on that driver's handle.

use std::future::Future;
use std::time::Duration;

use crate::client::Channel;
use crate::error::{Error, ExitReason};

/// The default time a worker's `shutdown()` lets calls in flight finish
/// before it stops the worker anyway.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[cfg(feature = "thread")]
pub(crate) mod thread;

#[cfg(feature = "process")]
pub(crate) mod process;

/// Something that starts workers, as often as asked: what a
/// [`Supervisor`](crate::Supervisor) needs of a driver.
///
/// [`ProcessDriver`](crate::ProcessDriver) implements it, and
/// [`ThreadDriver::spawner`](crate::ThreadDriver::spawner) makes one for
/// thread workers from a function that builds the server.
pub trait Spawn: Send + Sync + 'static {
    /// The handle of a started worker.
    type Worker: Worker;

    /// Starts one worker.
    fn spawn(&self) -> impl Future<Output = Result<Self::Worker, Error>> + Send;
}

/// What a supervisor needs of a running worker; implemented by every
/// driver's worker handle.
pub trait Worker: Send + Sync + 'static {
    /// The worker's name.
    fn name(&self) -> &str;

    /// A channel to the worker.
    fn channel(&self) -> Channel;

    /// Waits until the worker has ended and says how, as a future that does
    /// not borrow the handle: it can be awaited after the handle (and so the
    /// worker) is dropped.
    fn watch_exit(&self) -> impl Future<Output = ExitReason> + Send + 'static;

    /// Stops the worker gracefully (calls in flight finish within the
    /// driver's grace period).
    fn shutdown(&self) -> impl Future<Output = ExitReason> + Send;

    /// Stops the worker now.
    fn kill(&self);

    /// The worker's process id, if it runs in a process of its own: `None`
    /// for a thread worker (the default), or for a process without an id in
    /// this host's pid namespace.
    fn pid(&self) -> Option<u32> {
        None
    }
}

/// How the worker whose end `exit` reports ended, once it has: a future
/// that borrows nothing, so it can be awaited after the worker's handle is
/// dropped. Every handle's `watch_exit`, the supervised worker's too.
pub(crate) fn watch_exit(
    exit: &crate::client::ExitWatch,
) -> impl Future<Output = ExitReason> + Send + 'static + use<> {
    let mut exit = exit.clone();
    async move {
        let reason = exit.wait_for(Option::is_some).await;
        reason
            .ok()
            .and_then(|reason| reason.clone())
            .unwrap_or(ExitReason::Unknown)
    }
}
