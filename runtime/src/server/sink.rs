//! [`EventSink`]: a handler's events, to the host of its connection.

use std::fmt;
use std::future::poll_fn;
use std::sync::Weak;
use std::task::Poll;

use bytes::Bytes;

use crate::error::Status;
use crate::frame::{Frame, HEADER_LEN};
use crate::log::{self, Direction};
use crate::name::MethodName;

use super::state::{SEND_OVERHEAD, Shared, lock};

/// Sends events to the host of a connection; see [`Context::events`](crate::Context::events).
///
/// Each event waits until the host has room for it: the host holds at most
/// its [`Window`](crate::Window) of unread events per connection ([`STREAM_WINDOW`](crate::STREAM_WINDOW)
/// events, and [`STREAM_WINDOW_BYTES`](crate::STREAM_WINDOW_BYTES) plus one
/// event, by default), so a host that does not read slows its worker's
/// events down, never fills memory. Events with nobody subscribed on the host are dropped there.
#[derive(Clone)]
pub struct EventSink {
    pub(super) connection: Option<Weak<Shared>>,
    /// The call whose handler made the sink: its answer is written after
    /// the events it sent.
    pub(super) call: u64,
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
        let Some(shared) = self.connection.as_ref().and_then(Weak::upgrade) else {
            return Err(gone());
        };
        let size = HEADER_LEN + 2 + method.len() + payload.len();
        if size > shared.max_frame_length {
            return Err(Status::resource_exhausted(format!(
                "event {method} is {size} bytes, over the maximum frame length of {} bytes",
                shared.max_frame_length
            )));
        }
        // Behind the sends already queued, if too many are.
        poll_fn(|cx| {
            let mut state = lock(&shared);
            if !state.ended && state.sends_full(cx) {
                return Poll::Pending;
            }
            Poll::Ready(())
        })
        .await;
        loop {
            let room = shared.event_room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            let waker = {
                let mut state = lock(&shared);
                if state.ended {
                    return Err(gone());
                }
                if state.event_credit.ready() {
                    state.event_credit.spend(payload.len());
                    state.sent_bytes += payload.len() + SEND_OVERHEAD;
                    let event = Frame::Event {
                        method: method.clone(),
                        payload: std::mem::take(&mut payload),
                    };
                    log::frame(Direction::WorkerOut, &event, Some(method));
                    state.outbox.push_send(event, self.call);
                    Some(state.link.take())
                } else {
                    None
                }
            };
            match waker {
                Some(waker) => {
                    if let Some(waker) = waker {
                        waker.wake();
                    }
                    return Ok(());
                }
                None => room.await,
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
            .is_some_and(|shared| !lock(&shared).ended);
        f.debug_struct("EventSink")
            .field("connected", &connected)
            .finish()
    }
}
