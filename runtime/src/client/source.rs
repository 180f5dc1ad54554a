//! The seam between a [`Channel`] and whatever gives it its connections when
//! it is not bound to one: a supervisor's worker slot, refilled as workers
//! come and go. The client asks "the connection now, waiting if need be";
//! the source answers.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::channel::Channel;
use crate::error::Error;
use crate::event::Subscription;
use crate::name::MethodName;
use crate::schema::ServiceSchema;

/// A future a [`Source`] returns.
pub(crate) type SourceFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where a channel gets the connection for each call. The connections it
/// gives are direct channels; a call that finds its connection dead asks
/// for the next, so an idempotent call cut short by a worker's death runs
/// again, and one whose request never left is sent again.
pub(crate) trait Source: Send + Sync + 'static {
    /// The connection to use now, if one is open: the small call path
    /// takes it without waiting.
    fn ready(&self) -> Option<Channel>;

    /// The connection to use, other than `dead` (one that failed under a
    /// previous attempt), waiting while there is none; an error naming
    /// `method` once none will come, or when the source will not wait.
    fn current<'a>(
        &'a self,
        method: &'a MethodName,
        dead: Option<&'a Channel>,
    ) -> SourceFuture<'a, Result<Channel, Error>>;

    /// Whether no connection will come again.
    fn is_closed(&self) -> bool;

    /// Waits until no connection will come again.
    fn closed(self: Arc<Self>) -> SourceFuture<'static, ()>;

    /// Subscribes to the events of `schema`'s service, from every
    /// connection it gives.
    fn subscribe(&self, schema: &'static ServiceSchema) -> Subscription;

    /// The driver of the connection it gives now, as middleware sees it.
    fn driver(&self) -> &'static str;

    /// Its fields, for `Channel`'s `Debug`.
    fn describe(&self, f: &mut fmt::DebugStruct<'_, '_>);
}
