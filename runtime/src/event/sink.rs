//! [`EventSink`]: a handler's events, to the host of its connection.

use std::fmt;
use std::future::poll_fn;
use std::sync::Weak;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::error::Status;
use crate::frame::HEADER_LEN;
use crate::name::MethodName;

/// Where an [`EventSink`] writes: the connection a call came on. The serve
/// loop's connection implements it; events know nothing else of the server.
/// A [`Context`](crate::Context) also asks it for its call's cancellation.
pub(crate) trait Outlet: Send + Sync {
    /// The largest frame the connection may send.
    fn max_frame_length(&self) -> usize;

    /// Ready once the connection's queue of handlers' sends has room (or the
    /// connection has ended); otherwise wakes `cx` when it has.
    fn poll_queue_room(&self, cx: &mut Context<'_>) -> Poll<()>;

    /// Notified when the host returns event credit, and when serving ends.
    fn event_room(&self) -> &Notify;

    /// Queues the event if the host has credit for it (taking `payload`),
    /// behind the sends of `call`; `Ok(false)` if it has none yet.
    fn try_send_event(
        &self,
        call: u64,
        method: &MethodName,
        payload: &mut Bytes,
    ) -> Result<bool, Gone>;

    /// Whether the connection still serves.
    fn is_connected(&self) -> bool;

    /// The token the connection fires when it gives call `call` up, made at
    /// the first ask; `None` if the call is no longer in hand (it ended), and
    /// a token already fired once the connection has ended.
    fn cancellation(&self, call: u64) -> Option<tokio_util::sync::CancellationToken>;
}

/// The connection an event was for has ended.
#[derive(Debug)]
pub(crate) struct Gone;

/// Sends events to the host of a connection; see [`Context::events`](crate::Context::events).
///
/// Each event waits until the host has room for it: the host holds at most
/// its [`Window`](crate::Window) of unread events per connection ([`STREAM_WINDOW`](crate::STREAM_WINDOW)
/// events, and [`STREAM_WINDOW_BYTES`](crate::STREAM_WINDOW_BYTES) plus one
/// event, by default), so a host that does not read slows its worker's
/// events down, never fills memory. Events with nobody subscribed on the host are dropped there.
#[derive(Clone)]
pub struct EventSink {
    pub(crate) connection: Option<Weak<dyn Outlet>>,
    /// The call whose handler made the sink: its answer is written after
    /// the events it sent.
    pub(crate) call: u64,
}

impl EventSink {
    /// Sends one event, once the host has room for it. Fails with
    /// `Unavailable` once the host is gone (or for a [`Context::new`](crate::Context::new) made
    /// outside a worker), and with `ResourceExhausted` if the event is over
    /// the maximum frame length. Generated emitters call it with their
    /// event's message name and encoded message.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use workerbus::{Code, Context, MethodName};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// // A handler called directly, as in its unit tests, has no host.
    /// let cx = Context::new("indexer.index");
    /// let progress = MethodName::from_static("indexer.progress");
    /// let error = cx.events().send(&progress, Bytes::new()).await.unwrap_err();
    /// assert_eq!(error.code(), Code::Unavailable);
    /// assert_eq!(error.message(), "event indexer.progress not sent: the worker's host is gone");
    /// # }
    /// ```
    pub async fn send(&self, method: &MethodName, mut payload: Bytes) -> Result<(), Status> {
        let gone = || {
            Status::unavailable(format!(
                "event {method} not sent: the worker's host is gone"
            ))
        };
        let Some(outlet) = self.connection.as_ref().and_then(Weak::upgrade) else {
            return Err(gone());
        };
        let size = HEADER_LEN + 2 + method.len() + payload.len();
        let max = outlet.max_frame_length();
        if size > max {
            return Err(Status::resource_exhausted(format!(
                "event {method} is {size} bytes, over the maximum frame length of {max} bytes"
            )));
        }
        // Behind the sends already queued, if too many are.
        poll_fn(|cx| outlet.poll_queue_room(cx)).await;
        loop {
            let room = outlet.event_room().notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match outlet.try_send_event(self.call, method, &mut payload) {
                Ok(true) => return Ok(()),
                Ok(false) => room.await,
                Err(Gone) => return Err(gone()),
            }
        }
    }
}

impl fmt::Debug for EventSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let connected = self
            .connection
            .as_ref()
            .and_then(Weak::upgrade)
            .is_some_and(|outlet| outlet.is_connected());
        f.debug_struct("EventSink")
            .field("connected", &connected)
            .finish()
    }
}
