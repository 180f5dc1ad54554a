//! Worker events on the host: where `EVENT` frames go once they arrive.
//!
//! An [`EventHub`] holds the subscriptions to a worker's events; each
//! subscription takes the events of one events service (its schema's
//! message names). A plain channel has a hub per connection; a supervised
//! channel's hub belongs to its worker slot, so subscriptions outlive
//! restarts.
//!
//! Every event that arrives carries a [`Credit`]: when the last copy of the
//! event is taken (or dropped: nobody subscribed, or a subscription ended),
//! the credit goes back to the connection, which returns it to the worker in
//! batches. A subscriber that does not read thus holds its worker's events
//! back, with at most the window's worth buffered here.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

use crate::name::MethodName;
use crate::schema::ServiceSchema;
use crate::sync::lock;

/// Returns one event's credit to its connection when dropped.
pub(crate) struct Credit(Option<Box<dyn FnOnce() + Send + Sync>>);

impl Credit {
    pub(crate) fn new(give_back: impl FnOnce() + Send + Sync + 'static) -> Credit {
        Credit(Some(Box::new(give_back)))
    }
}

impl Drop for Credit {
    fn drop(&mut self) {
        if let Some(give_back) = self.0.take() {
            give_back();
        }
    }
}

/// One event, shared by the subscriptions it was delivered to.
struct Delivered {
    method: MethodName,
    payload: Bytes,
    _credit: Arc<Credit>,
}

/// The subscriptions to a worker's events.
#[derive(Default)]
pub(crate) struct EventHub {
    state: Mutex<HubState>,
}

#[derive(Default)]
struct HubState {
    subscribers: Vec<Arc<Subscriber>>,
    /// The worker is gone for good: subscriptions end once drained.
    closed: bool,
}

struct Subscriber {
    schema: &'static ServiceSchema,
    queue: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    events: VecDeque<Delivered>,
    waker: Option<Waker>,
    ended: bool,
}

impl EventHub {
    pub(crate) fn new() -> Arc<EventHub> {
        Arc::default()
    }

    /// Hands an event to every subscription of its service. Without one,
    /// the event is dropped here, and its credit returned at once.
    pub(crate) fn deliver(&self, method: MethodName, payload: Bytes, credit: Credit) {
        let subscribers: Vec<Arc<Subscriber>> = lock(&self.state)
            .subscribers
            .iter()
            .filter(|subscriber| subscriber.schema.method(&method).is_some())
            .cloned()
            .collect();
        if subscribers.is_empty() {
            tracing::debug!(%method, "event dropped: nobody subscribed to it");
            return;
        }
        let credit = Arc::new(credit);
        for subscriber in subscribers {
            let waker = {
                let mut queue = lock(&subscriber.queue);
                queue.events.push_back(Delivered {
                    method: method.clone(),
                    payload: payload.clone(),
                    _credit: Arc::clone(&credit),
                });
                queue.waker.take()
            };
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }

    /// Ends every subscription once it has been read to the end.
    pub(crate) fn close(&self) {
        let subscribers = {
            let mut state = lock(&self.state);
            state.closed = true;
            std::mem::take(&mut state.subscribers)
        };
        for subscriber in subscribers {
            let waker = {
                let mut queue = lock(&subscriber.queue);
                queue.ended = true;
                queue.waker.take()
            };
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }

    /// Accepts subscriptions again (a supervised worker came back).
    pub(crate) fn reopen(&self) {
        lock(&self.state).closed = false;
    }

    /// A subscription to the events of `schema`'s service.
    pub(crate) fn subscribe(self: &Arc<EventHub>, schema: &'static ServiceSchema) -> Subscription {
        let subscriber = Arc::new(Subscriber {
            schema,
            queue: Mutex::new(Queue::default()),
        });
        let mut state = lock(&self.state);
        if state.closed {
            lock(&subscriber.queue).ended = true;
        } else {
            state.subscribers.push(Arc::clone(&subscriber));
        }
        Subscription {
            hub: Arc::clone(self),
            subscriber,
        }
    }
}

impl fmt::Debug for EventHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = lock(&self.state);
        f.debug_struct("EventHub")
            .field("subscribers", &state.subscribers.len())
            .field("closed", &state.closed)
            .finish()
    }
}

/// A subscription to one service's events, as generated event streams use
/// it: each event's message name and encoded message, in arrival order.
///
/// Dropping it unsubscribes, and gives back the credit of the events it
/// had not read.
pub struct Subscription {
    hub: Arc<EventHub>,
    subscriber: Arc<Subscriber>,
}

impl Subscription {
    /// The next event, `None` once the worker is gone for good (a plain
    /// channel's connection closed; a supervised worker was given up).
    pub fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<(MethodName, Bytes)>> {
        let mut queue = lock(&self.subscriber.queue);
        match queue.events.pop_front() {
            Some(event) => {
                drop(queue);
                // The credit goes back as `event` drops, if this was its
                // last copy.
                Poll::Ready(Some((event.method, event.payload)))
            }
            None if queue.ended => Poll::Ready(None),
            None => {
                queue.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// The schema of the service subscribed to.
    pub fn schema(&self) -> &'static ServiceSchema {
        self.subscriber.schema
    }
}

impl futures_core::Stream for Subscription {
    type Item = (MethodName, Bytes);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_event(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        lock(&self.hub.state)
            .subscribers
            .retain(|subscriber| !Arc::ptr_eq(subscriber, &self.subscriber));
        // Unread events give their credit back as they drop, outside the
        // hub's lock.
        let unread = std::mem::take(&mut lock(&self.subscriber.queue).events);
        drop(unread);
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let queue = lock(&self.subscriber.queue);
        f.debug_struct("Subscription")
            .field("service", &self.subscriber.schema.name())
            .field("unread", &queue.events.len())
            .field("ended", &queue.ended)
            .finish()
    }
}
