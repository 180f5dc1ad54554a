//! [`WorkerSlot`]: where a supervisor keeps the connection to a worker it
//! may replace. A channel made from the slot takes the slot's connection at
//! each call ([`Source`]), so it follows every replacement: while the slot
//! is being refilled its calls wait (or fail fast), and once the supervisor
//! gives up they fail with the reason.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::client::{Channel, Source, SourceFuture};
use crate::error::Error;
use crate::event::{EventHub, Subscription};
use crate::name::MethodName;
use crate::schema::ServiceSchema;
use crate::sync::{lock, wait_for, wait_until};

/// Where a supervisor keeps the connection to a worker it may replace:
/// channels made from the slot follow every replacement.
pub(crate) struct WorkerSlot {
    name: String,
    /// Subscriptions to the events of whichever worker is current.
    hub: Arc<EventHub>,
    state: Mutex<SlotState>,
    changed: Notify,
    fail_fast: bool,
    max_waiting: usize,
    waiting: AtomicUsize,
}

/// The worker behind a [`WorkerSlot`].
#[derive(Clone, Debug)]
pub(crate) enum SlotState {
    /// Being started (or restarted): calls wait for it, unless failing fast.
    Starting,
    /// Running, at the end of this channel.
    Up(Channel),
    /// Not coming back: calls fail with this reason.
    Down(String),
}

impl WorkerSlot {
    /// An empty slot for worker `name`: calls wait for its first worker,
    /// unless `fail_fast`, at most `max_waiting` of them.
    pub(crate) fn new(name: String, fail_fast: bool, max_waiting: usize) -> Arc<WorkerSlot> {
        Arc::new(WorkerSlot {
            name,
            hub: EventHub::new(),
            state: Mutex::new(SlotState::Starting),
            changed: Notify::new(),
            fail_fast,
            max_waiting,
            waiting: AtomicUsize::new(0),
        })
    }

    /// A channel that follows this slot.
    pub(crate) fn channel(self: &Arc<WorkerSlot>) -> Channel {
        Channel::from_source(Arc::clone(self) as Arc<dyn Source>)
    }

    /// Puts a worker in the slot (with its connection), empties it while a
    /// worker is being started, or closes it for good.
    pub(crate) fn set(&self, state: SlotState) {
        match &state {
            SlotState::Up(channel) => {
                self.hub.reopen();
                channel.use_event_hub(&self.hub);
            }
            SlotState::Down(_) => self.hub.close(),
            SlotState::Starting => {}
        }
        *lock(&self.state) = state;
        self.changed.notify_waiters();
    }

    /// The current worker's connection, if there is one.
    pub(crate) fn up(&self) -> Option<Channel> {
        match &*lock(&self.state) {
            SlotState::Up(channel) => Some(channel.clone()),
            _ => None,
        }
    }

    /// Whether the slot is closed for good.
    pub(crate) fn is_down(&self) -> bool {
        matches!(&*lock(&self.state), SlotState::Down(_))
    }

    /// How many calls wait for the worker to come back.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// The worker's current connection, other than `dead`: waits while the
    /// worker is being (re)started, unless the policy fails fast.
    async fn wait_current(
        &self,
        method: &MethodName,
        dead: Option<&Channel>,
    ) -> Result<Channel, Error> {
        let unavailable = |reason: String| Error::Unavailable {
            method: method.clone(),
            worker: self.name.clone(),
            reason,
        };
        let mut counted = WaitingGuard(None);
        wait_for(&self.changed, || {
            match &*lock(&self.state) {
                SlotState::Up(channel)
                    if !dead.is_some_and(|dead| dead.same(channel)) && !channel.is_closed() =>
                {
                    return Some(Ok(channel.clone()));
                }
                SlotState::Down(reason) => return Some(Err(unavailable(reason.clone()))),
                _ if self.fail_fast => return Some(Err(unavailable("it is restarting".into()))),
                _ => {}
            }
            if counted.0.is_none() {
                let waiting = self.waiting.fetch_add(1, Ordering::Relaxed);
                counted.0 = Some(&self.waiting);
                if waiting >= self.max_waiting {
                    return Some(Err(unavailable(format!(
                        "{waiting} calls already wait for it to restart"
                    ))));
                }
            }
            None
        })
        .await
    }
}

impl Source for WorkerSlot {
    fn ready(&self) -> Option<Channel> {
        self.up()
    }

    fn current<'a>(
        &'a self,
        method: &'a MethodName,
        dead: Option<&'a Channel>,
    ) -> SourceFuture<'a, Result<Channel, Error>> {
        Box::pin(self.wait_current(method, dead))
    }

    fn is_closed(&self) -> bool {
        self.is_down()
    }

    fn closed(self: Arc<Self>) -> SourceFuture<'static, ()> {
        Box::pin(async move { wait_until(&self.changed, || self.is_down()).await })
    }

    fn subscribe(&self, schema: &'static ServiceSchema) -> Subscription {
        self.hub.subscribe(schema)
    }

    fn driver(&self) -> &'static str {
        self.up().map_or("supervised", |channel| channel.driver())
    }

    fn describe(&self, f: &mut fmt::DebugStruct<'_, '_>) {
        f.field("worker", &self.name)
            .field("state", &*lock(&self.state));
    }
}

/// Counts a call among those waiting for a restart, while it waits.
struct WaitingGuard<'a>(Option<&'a AtomicUsize>);

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        if let Some(waiting) = self.0 {
            waiting.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
