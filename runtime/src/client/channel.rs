//! [`Channel`]: the handle every client holds, to one connection or to
//! whatever connection a supervisor currently holds for a worker.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::control::{self, Health, HealthReport};
use crate::error::Error;
use crate::event::{EventHub, Subscription};
use crate::frame::MAX_METHOD_LEN;
use crate::idmap::SeqIdMap;
use crate::middleware::{HostChain, Middleware, append};
use crate::name::MethodName;
use crate::payload::Payload;
use crate::transport::Transport;
use crate::window::ReceiveWindow;

use super::deadline::Deadlines;
use super::link::{CloseOnDrop, ExitWatch, run_link};
use super::options::{ChannelOptions, Resolved};
use super::pending::{Shared, State, lock};
use super::source::Source;
use crate::sync::wait_until;

/// A connection to a worker, shared by every client made from it.
///
/// Cloning is cheap and clones share the connection. Generated clients wrap
/// a channel: `EmbedderClient::new(worker.channel())`. The connection stays
/// open while any clone (or the worker handle that made it) is alive; when
/// the last is dropped the connection closes and a worker that was serving
/// only it stops.
#[derive(Clone)]
pub struct Channel {
    pub(super) inner: Inner,
    pub(super) middleware: HostChain,
}

#[derive(Clone)]
pub(super) enum Inner {
    /// One connection.
    Direct(Arc<Handle>),
    /// Whatever connection a source gives at each call (a supervisor's
    /// worker slot).
    Source(Arc<dyn Source>),
}

/// Closes the connection when the last `Channel` clone goes.
pub(super) struct Handle {
    pub(super) shared: Arc<Shared>,
}

/// Refuses a message name no `REQUEST` can carry.
pub(super) fn check_method_name(method: &MethodName) -> Result<(), Error> {
    if method.is_empty() || method.len() > MAX_METHOD_LEN {
        return Err(Error::InvalidMethodName {
            method: method.clone(),
            len: method.len(),
            max: MAX_METHOD_LEN,
        });
    }
    Ok(())
}

/// Waits until the connection has closed.
pub(super) async fn wait_closed(shared: &Shared) {
    wait_until(&shared.changed, || lock(shared).closed.is_some()).await;
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Inner::Direct(handle) => {
                let state = lock(&handle.shared);
                f.debug_struct("Channel")
                    .field("in_flight", &state.calls.len())
                    .field("closed", &state.closed)
                    .finish_non_exhaustive()
            }
            Inner::Source(source) => {
                let mut f = f.debug_struct("Channel");
                source.describe(&mut f);
                f.finish_non_exhaustive()
            }
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let waker = {
            let mut state = lock(&self.shared);
            state.detached = true;
            state.link.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Channel {
    /// A channel over `transport`, with default options.
    ///
    /// Spawns the channel's link task, so it must be called within a tokio
    /// runtime. Drivers call this for you; use it directly for a custom
    /// transport or an in-memory worker in tests:
    ///
    /// ```
    /// use workerbus::{Channel, MemoryTransport};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let (host, _worker) = MemoryTransport::pair();
    /// let channel = Channel::new(host);
    /// assert_eq!(channel.in_flight(), 0);
    /// # }
    /// ```
    pub fn new<T: Transport>(transport: T) -> Channel {
        Channel::with_options(transport, ChannelOptions::default())
    }

    /// A channel over `transport` with `options`.
    pub fn with_options<T: Transport>(transport: T, options: ChannelOptions) -> Channel {
        Channel::connect(transport, options, None, "transport")
    }

    /// A channel whose failures carry the worker's exit reason, as reported
    /// through `exit` by the driver that started it.
    pub(crate) fn connect<T: Transport>(
        transport: T,
        options: ChannelOptions,
        exit: Option<ExitWatch>,
        driver: &'static str,
    ) -> Channel {
        let shared = Arc::new_cyclic(|this| Shared {
            this: this.clone(),
            driver,
            state: Mutex::new(State {
                next_id: 1,
                calls: SeqIdMap::default(),
                outbox: std::collections::VecDeque::new(),
                queued_bytes: 0,
                waiting: false,
                link: None,
                closing: false,
                closed: None,
                detached: false,
                hub: EventHub::new(),
                hub_owned: true,
                deadlines: Deadlines::default(),
                timer_at: None,
                timer_waker: None,
                events: ReceiveWindow::new(options.window),
                unwritten: Vec::new(),
            }),
            max_frame_length: options.max_frame_length,
            metadata: options.metadata,
            max_in_flight: options.max_in_flight,
            max_queued_bytes: options.max_queued_bytes,
            window: options.window,
            changed: Notify::new(),
        });
        tokio::spawn(run_link(CloseOnDrop(Arc::clone(&shared)), transport, exit));
        Channel {
            inner: Inner::Direct(Arc::new(Handle { shared })),
            middleware: None,
        }
    }

    /// A channel that takes its connection from `source` at each call.
    pub(crate) fn from_source(source: Arc<dyn Source>) -> Channel {
        Channel {
            inner: Inner::Source(source),
            middleware: None,
        }
    }

    /// Subscribes to the worker's events of `schema`'s service: on a
    /// supervised channel, to those of every worker the supervisor starts.
    pub(crate) fn subscribe(&self, schema: &'static crate::schema::ServiceSchema) -> Subscription {
        match &self.inner {
            Inner::Direct(handle) => {
                let hub = Arc::clone(&lock(&handle.shared).hub);
                hub.subscribe(schema)
            }
            Inner::Source(source) => source.subscribe(schema),
        }
    }

    /// Routes this connection's events to `hub` (a supervised slot's).
    pub(crate) fn use_event_hub(&self, hub: &Arc<EventHub>) {
        if let Some(shared) = self.direct() {
            let mut state = lock(shared);
            state.hub = Arc::clone(hub);
            state.hub_owned = false;
        }
    }

    /// The connection of a direct channel.
    pub(super) fn direct(&self) -> Option<&Arc<Shared>> {
        match &self.inner {
            Inner::Direct(handle) => Some(&handle.shared),
            Inner::Source(_) => None,
        }
    }

    /// Whether two channels are clones of each other.
    /// Whether `other` is a clone of this channel: the same connection, or
    /// the same supervised worker, whatever middleware each has. For a
    /// program that holds channels given to it and must not use one twice
    /// (a gateway subscribing to each worker's events once).
    ///
    /// ```
    /// use workerbus::{Channel, MemoryTransport};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let (host, _worker) = MemoryTransport::pair();
    /// let channel = Channel::new(host);
    /// assert!(channel.is_same(&channel.clone()));
    /// let (other, _its_worker) = MemoryTransport::pair();
    /// assert!(!channel.is_same(&Channel::new(other)));
    /// # }
    /// ```
    pub fn is_same(&self, other: &Channel) -> bool {
        self.same(other)
    }

    pub(crate) fn same(&self, other: &Channel) -> bool {
        match (&self.inner, &other.inner) {
            (Inner::Direct(a), Inner::Direct(b)) => Arc::ptr_eq(a, b),
            (Inner::Source(a), Inner::Source(b)) => {
                std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
            }
            _ => false,
        }
    }

    /// The number of calls sent and not yet ended: the size of the pending
    /// table (of the current worker, for a supervised channel).
    pub fn in_flight(&self) -> usize {
        match &self.inner {
            Inner::Direct(handle) => lock(&handle.shared).calls.len(),
            Inner::Source(source) => source.ready().map_or(0, |channel| channel.in_flight()),
        }
    }

    /// Whether the connection has ended for good; every call on a closed
    /// channel fails at once with the reason it closed. A supervised channel
    /// closes only when its supervisor stops restarting the worker.
    pub fn is_closed(&self) -> bool {
        match &self.inner {
            Inner::Direct(handle) => lock(&handle.shared).closed.is_some(),
            Inner::Source(source) => source.is_closed(),
        }
    }

    /// The driver behind the channel, as middleware sees it.
    pub(crate) fn driver(&self) -> &'static str {
        match &self.inner {
            Inner::Direct(handle) => handle.shared.driver,
            Inner::Source(source) => source.driver(),
        }
    }

    /// This channel with `middleware` added around each attempt of every
    /// call made through it (or through a client made from it). The channel
    /// it was made from, and its other clones, are unchanged: a channel per
    /// middleware stack, one connection. The first added is the outermost.
    ///
    /// ```no_run
    /// # use workerbus::{Channel, ConcurrencyLimit, Logging, Metrics};
    /// # fn setup(channel: Channel, metrics: Metrics) {
    /// let channel = channel
    ///     .with_middleware(Logging::new())
    ///     .with_middleware(metrics.clone())
    ///     .with_middleware(ConcurrencyLimit::new(16));
    /// # let _ = channel;
    /// # }
    /// ```
    #[must_use]
    pub fn with_middleware(mut self, middleware: impl Middleware) -> Channel {
        self.middleware = append(&self.middleware, Arc::new(middleware));
        self
    }

    /// Waits until the connection has ended for good (the worker exited or
    /// disconnected, or it was shut down or killed; for a supervised channel,
    /// the supervisor stopped restarting it).
    pub async fn closed(&self) {
        match &self.inner {
            Inner::Direct(handle) => wait_closed(&handle.shared).await,
            Inner::Source(source) => Arc::clone(source).closed().await,
        }
    }

    /// Asks the worker's runtime (not a handler) how it is: memory,
    /// processed calls, uptime, running and stalled calls. Both drivers'
    /// workers answer; a worker too busy to answer within `timeout` fails
    /// with [`Error::Timeout`].
    pub async fn health(&self, timeout: Duration) -> Result<HealthReport, Error> {
        static HEALTH: MethodName = MethodName::from_static(control::HEALTH);
        let options = Resolved::control(timeout);
        let answer = self.call(&HEALTH, Payload::new(), &options).await?;
        let health: Health =
            crate::message::decode(&HEALTH, answer.into_bytes(), "response", "workerbus.Health")?;
        Ok(health.into())
    }
}
