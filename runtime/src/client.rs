//! The caller's side: [`Channel`], its pending-request table and link task,
//! and per-call [`CallOptions`].
//!
//! A `Channel` is a cheap handle. Behind it, one mutex guards the pending
//! table and an outbox of frames; one link task (spawned on the caller's
//! runtime) owns the [`Transport`], flushes the outbox in batches and routes
//! answers to their callers:
//!
//! ```text
//!  caller ──lock: insert slot, push REQUEST──▶ outbox ──link task──▶ transport
//!  caller ◀──wake── slot ◀──lock: store answer── link task ◀── transport
//! ```
//!
//! A call is a slot in the table from the moment it is sent until its future
//! takes the answer or is dropped, whichever comes first; dropping it early
//! queues a `CANCEL` frame. So every call ends exactly once (answer, remote
//! status, timeout, cancellation, or the worker's exit) and the table holds
//! only calls that someone still awaits.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, Sleep};

use crate::backoff::Backoff;
use crate::control::{self, Health, HealthReport};
use crate::error::{Error, ExitReason, FrameError, Status};
use crate::event::{Credit, EventHub, Subscription};
use crate::frame::{DEFAULT_MAX_FRAME_LENGTH, Frame, HEADER_LEN, MAX_METHOD_LEN, MIN_FRAME_LENGTH};
use crate::idmap::IdMap;
use crate::log::{self, Direction};
use crate::middleware::{CallInfo, Chain, DynMiddleware, Middleware, Next, append};
use crate::name::MethodName;
use crate::trace::TraceContext;
use crate::transport::{FrameWriter, Transport};
use crate::window::{ReceiveWindow, SendCredit, Window};

/// The timeout of a call when neither the caller nor the schema sets one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the link waits, after the connection ends, for the driver to
/// report how the worker ended, before it calls the loss a disconnection.
const EXIT_REPORT_WAIT: Duration = Duration::from_secs(1);

/// How many received frames the link routes before it gives writes a turn.
const READ_BATCH: usize = 128;

/// Receives the worker's exit reason from its driver once the worker is gone.
pub(crate) type ExitWatch = watch::Receiver<Option<ExitReason>>;

/// Options for one call, a client, or every call through a client.
///
/// Unset fields fall back, in order, to the client's options, the method's
/// defaults from the schema (`timeout_ms`, `retries`, `idempotent` in
/// `workerbus/options.proto`), and the library defaults: a
/// [30 s timeout](DEFAULT_TIMEOUT), no retries, [`Backoff::default`].
///
/// Retries apply only to idempotent methods, and only to errors for which
/// [`Error::is_retryable`] holds. The timeout applies to each attempt.
///
/// ```
/// use std::time::Duration;
/// use workerbus::CallOptions;
///
/// let options = CallOptions::new()
///     .timeout(Duration::from_secs(2))
///     .retries(3);
/// assert_eq!(options.get_timeout(), Some(Duration::from_secs(2)));
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CallOptions {
    timeout: Option<Duration>,
    retries: Option<u32>,
    backoff: Option<Backoff>,
    idempotent: Option<bool>,
}

impl CallOptions {
    /// Options that set nothing: every field falls back.
    pub fn new() -> CallOptions {
        CallOptions::default()
    }

    /// How long to wait for each attempt's answer.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> CallOptions {
        self.timeout = Some(timeout);
        self
    }

    /// Wait for the answer however long it takes. The call still ends if the
    /// worker exits or the connection is lost.
    #[must_use]
    pub fn no_timeout(mut self) -> CallOptions {
        self.timeout = Some(Duration::MAX);
        self
    }

    /// How many times to retry after the first attempt (idempotent methods only).
    #[must_use]
    pub fn retries(mut self, retries: u32) -> CallOptions {
        self.retries = Some(retries);
        self
    }

    /// The delays between attempts.
    #[must_use]
    pub fn backoff(mut self, backoff: Backoff) -> CallOptions {
        self.backoff = Some(backoff);
        self
    }

    /// Declares that calling the method more than once is safe, overriding the
    /// schema's `idempotent` option, so that retries apply.
    #[must_use]
    pub fn idempotent(mut self, idempotent: bool) -> CallOptions {
        self.idempotent = Some(idempotent);
        self
    }

    /// The timeout set here, if any (`Duration::MAX` means none).
    pub fn get_timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The retry count set here, if any.
    pub fn get_retries(&self) -> Option<u32> {
        self.retries
    }

    /// The backoff set here, if any.
    pub fn get_backoff(&self) -> Option<Backoff> {
        self.backoff
    }

    /// The idempotency override set here, if any.
    pub fn get_idempotent(&self) -> Option<bool> {
        self.idempotent
    }

    /// The per-call settings after falling back through `layers` (most
    /// specific first) to the method's schema defaults and the library's.
    pub(crate) fn resolve(layers: [Option<&CallOptions>; 2], method: &MethodDefaults) -> Resolved {
        let pick =
            |f: fn(&CallOptions) -> Option<Duration>| layers.iter().flatten().find_map(|o| f(o));
        let timeout = pick(|o| o.timeout)
            .or(method.timeout)
            .unwrap_or(DEFAULT_TIMEOUT);
        let idempotent = layers
            .iter()
            .flatten()
            .find_map(|o| o.idempotent)
            .unwrap_or(method.idempotent);
        let retries = layers
            .iter()
            .flatten()
            .find_map(|o| o.retries)
            .or(method.retries)
            .unwrap_or(0);
        let backoff = layers
            .iter()
            .flatten()
            .find_map(|o| o.backoff)
            .unwrap_or_default();
        Resolved {
            timeout: (timeout != Duration::MAX).then_some(timeout),
            retries: if idempotent { retries } else { 0 },
            backoff,
            idempotent,
        }
    }
}

/// A method's call defaults, as declared in its schema.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct MethodDefaults {
    pub(crate) timeout: Option<Duration>,
    pub(crate) retries: Option<u32>,
    pub(crate) idempotent: bool,
}

/// Call settings with every fallback applied.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Resolved {
    pub(crate) timeout: Option<Duration>,
    pub(crate) retries: u32,
    pub(crate) backoff: Backoff,
    /// Whether running the call twice is safe: then a call interrupted by a
    /// supervised worker's crash runs again on its replacement.
    pub(crate) idempotent: bool,
}

/// Options of a [`Channel`].
#[derive(Clone, Debug)]
pub struct ChannelOptions {
    max_frame_length: usize,
    max_in_flight: usize,
    max_queued_bytes: usize,
    window: Window,
}

/// The default cap on calls in flight on one channel.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 10_000;

/// The default cap on request bytes queued for a worker that is not reading.
pub const DEFAULT_MAX_QUEUED_BYTES: usize = 64 * 1024 * 1024;

impl ChannelOptions {
    /// The defaults: a [16 MiB](DEFAULT_MAX_FRAME_LENGTH) maximum frame
    /// length, [10,000](DEFAULT_MAX_IN_FLIGHT) calls in flight and
    /// [64 MiB](DEFAULT_MAX_QUEUED_BYTES) of requests queued.
    pub fn new() -> ChannelOptions {
        ChannelOptions::default()
    }

    /// The largest frame the channel sends (at least
    /// [`MIN_FRAME_LENGTH`]); a larger request fails with
    /// [`Error::TooLarge`] before anything is sent. Match the worker's limit.
    #[must_use]
    pub fn max_frame_length(mut self, max: usize) -> ChannelOptions {
        self.max_frame_length = max.max(MIN_FRAME_LENGTH);
        self
    }
}

impl ChannelOptions {
    /// How many calls may be in flight at once (at least 1). A call beyond
    /// that waits, within its timeout, for one to end.
    #[must_use]
    pub fn max_in_flight(mut self, max: usize) -> ChannelOptions {
        self.max_in_flight = max.max(1);
        self
    }

    /// How many bytes of requests may wait for a worker that is slow to read
    /// them. A call beyond that waits, within its timeout, for the worker to
    /// catch up: the host never buffers without bound. A single request
    /// larger than this is still sent, alone.
    #[must_use]
    pub fn max_queued_bytes(mut self, max: usize) -> ChannelOptions {
        self.max_queued_bytes = max;
        self
    }

    /// The window the host grants each response stream, and the worker's
    /// events on this connection (default [`Window::DEFAULT`]: 32 messages
    /// and 4 MiB): what the host holds at most, unread, of each, plus one
    /// message.
    #[must_use]
    pub fn window(mut self, window: Window) -> ChannelOptions {
        self.window = window;
        self
    }

    #[cfg(feature = "process")]
    pub(crate) fn max_frame_length_value(&self) -> usize {
        self.max_frame_length
    }
}

impl Default for ChannelOptions {
    fn default() -> ChannelOptions {
        ChannelOptions {
            max_frame_length: DEFAULT_MAX_FRAME_LENGTH,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
            window: Window::DEFAULT,
        }
    }
}

/// A connection to a worker, shared by every client made from it.
///
/// Cloning is cheap and clones share the connection. Generated clients wrap
/// a channel: `EmbedderClient::new(worker.channel())`. The connection stays
/// open while any clone (or the worker handle that made it) is alive; when
/// the last is dropped the connection closes and a worker that was serving
/// only it stops.
#[derive(Clone)]
pub struct Channel {
    inner: Inner,
    middleware: Chain<dyn DynMiddleware>,
}

#[derive(Clone)]
enum Inner {
    /// One connection.
    Direct(Arc<Handle>),
    /// Whatever connection a supervisor currently holds for a worker.
    Supervised(Arc<WorkerSlot>),
}

/// Closes the connection when the last `Channel` clone goes.
struct Handle {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// This connection, for the credit of the events it delivers.
    this: std::sync::Weak<Shared>,
    /// The driver behind the connection, as middleware sees it.
    driver: &'static str,
    max_frame_length: usize,
    max_in_flight: usize,
    max_queued_bytes: usize,
    /// What the host grants each response stream and the events.
    window: Window,
    /// Notified when the connection closes, and when room frees up for
    /// callers that wait for it.
    changed: Notify,
}

struct State {
    next_id: u64,
    calls: IdMap<Slot>,
    outbox: std::collections::VecDeque<Frame>,
    /// Payload bytes in `outbox`: what the link has not taken yet.
    queued_bytes: usize,
    /// Some caller waits for room (in-flight or queued bytes).
    waiting: bool,
    /// The link task's waker, present while it waits for work.
    link: Option<Waker>,
    /// The connection ended and the link waits to learn how: new calls wait
    /// for the reason rather than queue into a dead connection.
    closing: bool,
    closed: Option<CloseReason>,
    /// Every `Channel` is gone: the link flushes what is queued and closes.
    detached: bool,
    /// Where the worker's events go: the connection's own hub, or its
    /// supervised slot's.
    hub: Arc<EventHub>,
    /// Whether `hub` is the connection's own, to be closed with it.
    hub_owned: bool,
    /// When each call sent is due. The link's one timer stands for them
    /// all: an entry whose call ended is dropped when it comes up, or swept
    /// once such entries outnumber the calls in flight.
    deadlines: Deadlines,
    /// When the link's timer fires; a call due earlier wakes the link.
    timer_at: Option<Instant>,
    /// The link task's waker, for a call due before `timer_at`.
    timer_waker: Option<Waker>,
    /// The worker's events: received, taken, and credited back in batches.
    events: ReceiveWindow,
    /// Requests the transport handed back unwritten when the connection
    /// broke: their calls end as never sent when it closes.
    unwritten: Vec<(u64, Bytes)>,
}

impl State {
    /// Wakes callers waiting for room, if any.
    fn room_freed(&mut self, shared: &Shared) {
        if self.waiting {
            self.waiting = false;
            shared.changed.notify_waiters();
        }
    }
}

/// The outcome of trying to send a call.
enum Start<'a> {
    Sent(PendingCall<'a>),
    /// No room (or the connection is closing): wait for `changed`.
    Wait,
    Closed(CloseReason),
}

struct Slot {
    method: MethodName,
    /// The call's timeout, for its error when the link times it out.
    timeout: Option<Duration>,
    waker: Option<Waker>,
    outcome: Option<Result<Bytes, Failure>>,
    /// The streams of a streaming call.
    stream: Option<Box<SlotStream>>,
}

impl Slot {
    /// Settles the call and takes whoever waits on it: its reader and, for
    /// a request stream, its sender (which must stop sending).
    fn settle(&mut self, outcome: Result<Bytes, Failure>) -> [Option<Waker>; 2] {
        self.outcome = Some(outcome);
        let sender = self.stream.as_mut().and_then(|stream| stream.sender.take());
        [self.waker.take(), sender]
    }
}

/// A streaming call's state on the host.
struct SlotStream {
    /// The worker's `ITEM`s not yet taken.
    items: std::collections::VecDeque<Bytes>,
    /// The response stream's window: items received, taken, credited back.
    receive: ReceiveWindow,
    /// What the host may still send of its request stream.
    send: SendCredit,
    /// The sending half, waiting for credit.
    sender: Option<Waker>,
}

/// Why a connection is closed; shared by every call it fails.
#[derive(Clone, Debug)]
pub(crate) enum CloseReason {
    Exited(ExitReason),
    Lost(Option<Arc<FrameError>>),
}

#[derive(Debug)]
enum Failure {
    Remote(Status),
    Closed(CloseReason),
    /// The connection closed before the request was handed to the
    /// transport: the worker never received it. Its payload comes back, so
    /// that a supervised call can send it to the next worker.
    Undelivered {
        reason: CloseReason,
        payload: Bytes,
    },
    /// An item of the request stream was over the maximum frame length.
    ItemTooLarge {
        size: usize,
        max: usize,
    },
    /// The call's deadline passed (its timeout, for the error).
    TimedOut(Duration),
}

impl Failure {
    fn into_error(self, method: &MethodName) -> Error {
        match self {
            Failure::Remote(status) => Error::Remote {
                method: method.clone(),
                status,
            },
            Failure::Closed(reason) | Failure::Undelivered { reason, .. } => {
                reason.into_error(method)
            }
            Failure::ItemTooLarge { size, max } => Error::TooLarge {
                method: method.clone(),
                what: "request stream item",
                size,
                max,
            },
            Failure::TimedOut(after) => Error::Timeout {
                method: method.clone(),
                after,
            },
        }
    }
}

impl CloseReason {
    fn into_error(self, method: &MethodName) -> Error {
        match self {
            CloseReason::Exited(exit) => Error::WorkerExited {
                method: method.clone(),
                exit,
            },
            CloseReason::Lost(cause) => Error::Disconnected {
                method: method.clone(),
                cause,
            },
        }
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared.state.lock().unwrap_or_else(PoisonError::into_inner)
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
                calls: IdMap::default(),
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

    /// Subscribes to the worker's events of `schema`'s service: on a
    /// supervised channel, to those of every worker the supervisor starts.
    pub(crate) fn subscribe(&self, schema: &'static crate::schema::ServiceSchema) -> Subscription {
        match &self.inner {
            Inner::Direct(handle) => {
                let hub = Arc::clone(&lock(&handle.shared).hub);
                hub.subscribe(schema)
            }
            Inner::Supervised(slot) => slot.hub.subscribe(schema),
        }
    }

    /// Routes this connection's events to `hub` (a supervised slot's).
    fn use_event_hub(&self, hub: &Arc<EventHub>) {
        if let Some(shared) = self.direct() {
            let mut state = lock(shared);
            state.hub = Arc::clone(hub);
            state.hub_owned = false;
        }
    }

    /// The connection of a direct channel.
    fn direct(&self) -> Option<&Arc<Shared>> {
        match &self.inner {
            Inner::Direct(handle) => Some(&handle.shared),
            Inner::Supervised(_) => None,
        }
    }

    /// Whether two channels are clones of each other.
    pub(crate) fn same(&self, other: &Channel) -> bool {
        match (&self.inner, &other.inner) {
            (Inner::Direct(a), Inner::Direct(b)) => Arc::ptr_eq(a, b),
            (Inner::Supervised(a), Inner::Supervised(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// The number of calls sent and not yet ended: the size of the pending
    /// table (of the current worker, for a supervised channel).
    pub fn in_flight(&self) -> usize {
        match &self.inner {
            Inner::Direct(handle) => lock(&handle.shared).calls.len(),
            Inner::Supervised(slot) => slot.up().map_or(0, |channel| channel.in_flight()),
        }
    }

    /// Whether the connection has ended for good; every call on a closed
    /// channel fails at once with the reason it closed. A supervised channel
    /// closes only when its supervisor stops restarting the worker.
    pub fn is_closed(&self) -> bool {
        match &self.inner {
            Inner::Direct(handle) => lock(&handle.shared).closed.is_some(),
            Inner::Supervised(slot) => slot.is_down(),
        }
    }

    #[cfg(any(feature = "thread", feature = "process"))]
    /// Ends the connection now: every pending call and every later call fails
    /// with `reason`. The link task still runs until the transport ends.
    pub(crate) fn terminate(&self, reason: CloseReason) {
        if let Some(shared) = self.direct() {
            close(shared, reason);
        }
    }

    #[cfg(any(feature = "thread", feature = "process"))]
    /// Queues a control frame (e.g. `SHUTDOWN`) behind the calls already sent.
    pub(crate) fn send_control(&self, frame: Frame) -> bool {
        let Some(shared) = self.direct() else {
            return false;
        };
        let waker = {
            let mut state = lock(shared);
            if state.closed.is_some() || state.closing {
                return false;
            }
            log::frame(Direction::HostOut, &frame, None);
            state.outbox.push_back(frame);
            state.link.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        true
    }

    /// Sends `method` as a one-way message: returns once it is queued for
    /// the worker, which answers nothing. Host middleware sees it as a call
    /// answered with an empty response.
    pub(crate) async fn post(
        &self,
        method: &MethodName,
        payload: Bytes,
        options: &Resolved,
    ) -> Result<(), Error> {
        check_method_name(method)?;
        let result = match &self.middleware {
            None => self.post_once(method, &payload, options, None).await,
            Some(chain) => {
                let info = CallInfo::host(method, 1, options.timeout, self.driver(), payload.len());
                let queued = self.post_once(method, &payload, options, Some(&info));
                Next::new(chain, &info, Box::pin(queued)).run().await
            }
        };
        result.map(drop)
    }

    /// Queues a one-way message, bounded by its timeout.
    async fn post_once(
        &self,
        method: &MethodName,
        payload: &Bytes,
        options: &Resolved,
        info: Option<&CallInfo>,
    ) -> Result<Bytes, Error> {
        // Read when this runs: after the middleware set it.
        let trace = info.and_then(CallInfo::trace);
        let queued = async {
            let channel = match &self.inner {
                Inner::Direct(_) => self.clone(),
                Inner::Supervised(slot) => slot.current(method, None).await?,
            };
            match channel.direct() {
                Some(shared) => post(shared, method, payload, options.timeout, trace).await,
                None => Err(Error::Disconnected {
                    method: method.clone(),
                    cause: None,
                }),
            }
        };
        until(method, options.timeout, due(options.timeout), queued)
            .await
            .map(|()| Bytes::new())
    }

    /// Calls `method` with an encoded request, retrying per `options`, and
    /// returns the encoded response.
    pub(crate) fn call<'a>(
        &'a self,
        method: &'a MethodName,
        payload: Bytes,
        options: &'a Resolved,
    ) -> CallFuture<'a> {
        CallFuture {
            state: CallState::Unstarted {
                channel: self,
                method,
                payload,
                options,
            },
        }
    }

    /// The first step of a call: most calls are one attempt without
    /// middleware that finds room at once (on a direct channel, or on a
    /// supervised channel's current connection when a crash would not run
    /// the call again), and then wait as nothing more than their slot in the
    /// pending table, woken through `waker`. Every other call (retries,
    /// middleware, a restart to wait for, no room) runs in full.
    fn begin<'a>(
        &'a self,
        method: &'a MethodName,
        payload: Bytes,
        options: &'a Resolved,
        waker: &Waker,
    ) -> Result<CallState<'a>, Error> {
        let full = |payload| {
            Ok(CallState::Full(Box::pin(
                self.call_full(method, payload, options),
            )))
        };
        if self.middleware.is_some() || options.retries > 0 {
            return full(payload);
        }
        let mut payload = payload;
        match &self.inner {
            Inner::Direct(handle) => {
                match send_once(&handle.shared, method, &mut payload, options, waker)? {
                    Start::Sent(call) => Ok(CallState::Sent { call, method }),
                    Start::Wait => full(payload),
                    Start::Closed(reason) => Err(reason.into_error(method)),
                }
            }
            // A call that a crash would run again runs in full, and so does
            // one that must wait for a restart.
            Inner::Supervised(_) if options.idempotent => full(payload),
            Inner::Supervised(slot) => {
                let Some(connection) = slot
                    .up()
                    .filter(|up| up.direct().is_some() && !up.is_closed())
                else {
                    return full(payload);
                };
                let shared = connection.direct().expect("checked above");
                let id = match send_once(shared, method, &mut payload, options, waker)? {
                    Start::Sent(call) => call.into_id(),
                    // A connection that closed before the supervisor
                    // noticed: the full path waits for its replacement.
                    Start::Wait | Start::Closed(_) => return full(payload),
                };
                Ok(CallState::SentOn {
                    connection,
                    id,
                    method,
                    channel: self,
                    options,
                })
            }
        }
    }

    /// [`call`](Channel::call), every step of it.
    async fn call_full(
        &self,
        method: &MethodName,
        payload: Bytes,
        options: &Resolved,
    ) -> Result<Bytes, Error> {
        check_method_name(method)?;
        let mut payload = payload;
        // A call that runs once gives its payload to that attempt instead of
        // keeping a copy for the next one: a clone of a freshly encoded
        // buffer costs an allocation.
        let once = options.retries == 0
            && !(options.idempotent && matches!(self.inner, Inner::Supervised(_)));
        let mut attempt = 1;
        // The connection that died under the previous attempt: a supervised
        // retry waits for its replacement.
        let mut dead: Option<Channel> = None;
        let mut crash_retries = 0;
        loop {
            let this = if once {
                std::mem::take(&mut payload)
            } else {
                payload.clone()
            };
            let result = match &self.middleware {
                None => {
                    self.attempt(method, this, options, attempt, None, &mut dead)
                        .await
                }
                Some(chain) => {
                    let info =
                        CallInfo::host(method, attempt, options.timeout, self.driver(), this.len());
                    let endpoint =
                        self.attempt(method, this, options, attempt, Some(&info), &mut dead);
                    Next::new(chain, &info, Box::pin(endpoint)).run().await
                }
            };
            match result {
                // A supervised worker died under an idempotent call: run it on
                // the replacement (bounded; the supervisor's intensity limits
                // restarts anyway).
                Err(Error::WorkerExited { .. } | Error::Disconnected { .. })
                    if matches!(self.inner, Inner::Supervised(_))
                        && options.idempotent
                        && crash_retries < MAX_CRASH_RETRIES
                        && !self.is_closed() =>
                {
                    crash_retries += 1;
                    attempt += 1;
                    tracing::debug!(%method, attempt, "retrying on the restarted worker");
                }
                Err(error)
                    if attempt <= options.retries && error.is_retryable() && !self.is_closed() =>
                {
                    tracing::debug!(%method, attempt, %error, "retrying");
                    tokio::time::sleep(options.backoff.delay(attempt)).await;
                    attempt += 1;
                    dead = None;
                }
                other => return other,
            }
        }
    }

    /// One attempt, bounded by its timeout; `dead` learns which connection
    /// it ran on.
    async fn attempt(
        &self,
        method: &MethodName,
        payload: Bytes,
        options: &Resolved,
        attempt: u32,
        info: Option<&CallInfo>,
        dead: &mut Option<Channel>,
    ) -> Result<Bytes, Error> {
        // Read when the attempt runs: after the middleware set it.
        let trace = info.and_then(CallInfo::trace);
        let due = due(options.timeout);
        let slot = match &self.inner {
            Inner::Direct(handle) => {
                let sent = send(
                    &handle.shared,
                    method,
                    payload,
                    options.timeout,
                    due,
                    attempt,
                    trace,
                );
                return sent.await.map_err(|error| match error {
                    SendError::Undelivered { reason, .. } => reason.into_error(method),
                    SendError::Failed(error) => error,
                });
            }
            Inner::Supervised(slot) => slot,
        };
        // A request that never reached a worker goes to the next one, within
        // the attempt's deadline, however idempotent its method.
        let mut payload = payload;
        loop {
            let channel = until(
                method,
                options.timeout,
                due,
                slot.current(method, dead.as_ref()),
            )
            .await?;
            // The connection this attempt runs on, held while it runs.
            let Some(shared) = channel.direct().map(Arc::clone) else {
                // A supervisor only ever holds direct channels.
                return Err(Error::Disconnected {
                    method: method.clone(),
                    cause: None,
                });
            };
            *dead = Some(channel);
            let sent = send(
                &shared,
                method,
                payload,
                options.timeout,
                due,
                attempt,
                trace,
            );
            match sent.await {
                Ok(answer) => return Ok(answer),
                Err(SendError::Failed(error)) => return Err(error),
                Err(SendError::Undelivered { payload: back, .. }) => {
                    tracing::debug!(%method, "the worker ended before the request left; sending it to the next");
                    payload = back;
                }
            }
        }
    }

    /// The driver behind the channel, as middleware sees it.
    fn driver(&self) -> &'static str {
        match &self.inner {
            Inner::Direct(handle) => handle.shared.driver,
            Inner::Supervised(slot) => slot.up().map_or("supervised", |channel| channel.driver()),
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
            Inner::Supervised(slot) => slot.wait_down().await,
        }
    }

    /// Watches this channel's connection without keeping it open (it holds
    /// the shared state, not a `Handle`, whose drop would close it).
    #[cfg(feature = "process")]
    pub(crate) fn watch_closed(&self) -> impl Future<Output = ()> + Send + 'static {
        let shared = self.direct().map(Arc::clone);
        let slot = match &self.inner {
            Inner::Supervised(slot) => Some(Arc::clone(slot)),
            Inner::Direct(_) => None,
        };
        async move {
            match (shared, slot) {
                (Some(shared), _) => wait_closed(&shared).await,
                (None, Some(slot)) => slot.wait_down().await,
                (None, None) => {}
            }
        }
    }
}

impl Channel {
    /// Asks the worker's runtime (not a handler) how it is: memory,
    /// processed calls, uptime, running and stalled calls. Both drivers'
    /// workers answer; a worker too busy to answer within `timeout` fails
    /// with [`Error::Timeout`].
    pub async fn health(&self, timeout: Duration) -> Result<HealthReport, Error> {
        static HEALTH: MethodName = MethodName::from_static(control::HEALTH);
        let options = Resolved {
            timeout: Some(timeout),
            retries: 0,
            backoff: Backoff::default(),
            idempotent: false,
        };
        let answer = self.call(&HEALTH, Bytes::new(), &options).await?;
        let health = Health::decode(answer).map_err(|source| Error::Decode {
            method: HEALTH.clone(),
            what: "response",
            message: "workerbus.Health",
            source,
        })?;
        Ok(health.into())
    }
}

/// Refuses a message name no `REQUEST` can carry.
fn check_method_name(method: &MethodName) -> Result<(), Error> {
    if method.is_empty() || method.len() > MAX_METHOD_LEN {
        return Err(Error::InvalidMethodName {
            method: method.clone(),
            len: method.len(),
            max: MAX_METHOD_LEN,
        });
    }
    Ok(())
}

/// How many times an idempotent call is run again on a restarted worker.
const MAX_CRASH_RETRIES: u32 = 5;

/// Bounds a wait by a call's deadline: `timeout` after its attempt began.
async fn until<T>(
    method: &MethodName,
    timeout: Option<Duration>,
    due: Option<Instant>,
    wait: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    match (timeout, due) {
        (Some(after), Some(due)) => {
            tokio::time::timeout_at(due, wait)
                .await
                .map_err(|_| Error::Timeout {
                    method: method.clone(),
                    after,
                })?
        }
        _ => wait.await,
    }
}

/// When a call with `timeout` that starts now is due.
fn due(timeout: Option<Duration>) -> Option<Instant> {
    timeout.and_then(|timeout| Instant::now().checked_add(timeout))
}

/// Why an attempt on one connection failed.
enum SendError {
    /// The connection closed before the request left: the worker never
    /// received it. Here is the payload back.
    Undelivered { reason: CloseReason, payload: Bytes },
    /// Anything else.
    Failed(Error),
}

impl From<Error> for SendError {
    fn from(error: Error) -> SendError {
        SendError::Failed(error)
    }
}

/// One attempt on one connection: waits for room (until `due`), sends, and
/// awaits the answer, which the link times out when `due`.
async fn send(
    shared: &Shared,
    method: &MethodName,
    payload: Bytes,
    timeout: Option<Duration>,
    due: Option<Instant>,
    attempt: u32,
    trace: Option<TraceContext>,
) -> Result<Bytes, SendError> {
    check_request_size(shared, method, &payload, timeout, trace)?;
    let mut payload = payload;
    let kind = Kind::Unary { due };
    let sent = Attempt {
        method,
        timeout,
        number: attempt,
        trace,
        kind,
    };
    let mut try_start = || start(shared, &sent, &mut payload, None);
    // Usually there is room at once; only a caller that must wait listens
    // for room freeing up (and tries again once listening, not to miss it).
    let mut started = try_start();
    let call = loop {
        match started {
            Start::Sent(call) => break call,
            Start::Closed(reason) => return Err(SendError::Undelivered { reason, payload }),
            Start::Wait => {
                let changed = shared.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                started = try_start();
                if matches!(started, Start::Wait) {
                    let room = async {
                        changed.await;
                        Ok(())
                    };
                    until(method, timeout, due, room).await?;
                    started = try_start();
                }
            }
        }
    };
    call.await.map_err(|failure| match failure {
        Failure::Undelivered { reason, payload } => SendError::Undelivered { reason, payload },
        failure => SendError::Failed(failure.into_error(method)),
    })
}

/// Sends a one-attempt unary call if there is room, its slot woken through
/// `waker`; the payload is taken only then (as by [`start`]), so a caller
/// that must wait still has it.
fn send_once<'s>(
    shared: &'s Shared,
    method: &MethodName,
    payload: &mut Bytes,
    options: &Resolved,
    waker: &Waker,
) -> Result<Start<'s>, Error> {
    check_method_name(method)?;
    check_request_size(shared, method, payload, options.timeout, None)?;
    let kind = Kind::Unary {
        due: due(options.timeout),
    };
    let attempt = Attempt {
        method,
        timeout: options.timeout,
        number: 1,
        trace: None,
        kind,
    };
    Ok(start(shared, &attempt, payload, Some(waker)))
}

/// Refuses a `REQUEST` longer than the connection's maximum frame length.
fn check_request_size(
    shared: &Shared,
    method: &MethodName,
    payload: &Bytes,
    timeout: Option<Duration>,
    trace: Option<TraceContext>,
) -> Result<(), Error> {
    let deadline_field = if timeout.is_some() { 8 } else { 0 };
    let trace_field = if trace.is_some() { 24 } else { 0 };
    let size = HEADER_LEN + deadline_field + 4 + trace_field + 2 + method.len() + payload.len();
    if size > shared.max_frame_length {
        return Err(Error::TooLarge {
            method: method.clone(),
            what: "request",
            size,
            max: shared.max_frame_length,
        });
    }
    Ok(())
}

/// Queues a one-way message on one connection, once there is room for it.
async fn post(
    shared: &Shared,
    method: &MethodName,
    payload: &Bytes,
    timeout: Option<Duration>,
    trace: Option<TraceContext>,
) -> Result<(), Error> {
    check_request_size(shared, method, payload, timeout, trace)?;
    loop {
        let changed = shared.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let waker = {
            let mut state = lock(shared);
            if let Some(reason) = &state.closed {
                return Err(reason.clone().into_error(method));
            }
            // A one-way message holds no slot in the pending table; it only
            // waits for room in the outbox.
            let full = state.queued_bytes > 0
                && state.queued_bytes + payload.len() > shared.max_queued_bytes;
            if state.closing || full {
                state.waiting = true;
                None
            } else {
                let id = state.next_id;
                state.next_id += 1;
                state.queued_bytes += payload.len();
                let request = Frame::request(id, method.clone(), timeout, 1, payload.clone())
                    .with_trace(trace)
                    .with_one_way(true);
                log::frame(Direction::HostOut, &request, None);
                state.outbox.push_back(request);
                Some(state.link.take())
            }
        };
        match waker {
            Some(waker) => {
                if let Some(waker) = waker {
                    waker.wake();
                }
                return Ok(());
            }
            None => changed.await,
        }
    }
}

/// What kind of call `start` sends.
#[derive(Clone, Copy)]
enum Kind {
    /// One request, one answer, which the link times out when `due`.
    Unary { due: Option<Instant> },
    /// A streaming call: whether the request and the response stream. Its
    /// halves keep its deadline.
    Stream(bool, bool),
}

/// Enters call `id`'s deadline; returns the link's waker if the link must
/// set its timer earlier for it.
fn due_at(state: &mut State, id: u64, due: Instant) -> Option<Waker> {
    let state = &mut *state;
    state.deadlines.push((due, id));
    // Most calls end long before they are due: sweep their entries once they
    // outnumber the calls in flight, so the heap stays the table's size.
    if state.deadlines.len() > 2 * state.calls.len() + 1024 {
        let calls = &state.calls;
        state.deadlines.retain(|(_, id)| awaits_answer(calls, *id));
    }
    if state.timer_at.is_none_or(|armed| due < armed) {
        // Set it here, so that the calls behind this one wake the link only
        // if due earlier still.
        state.timer_at = Some(due);
        return state.timer_waker.clone();
    }
    None
}

/// Whether call `id` is in flight and unanswered: its deadline still counts.
fn awaits_answer(calls: &IdMap<Slot>, id: u64) -> bool {
    calls.get(&id).is_some_and(|slot| slot.outcome.is_none())
}

/// One attempt of a call, as [`start`] sends it (all but the payload, which
/// it takes only when it sends).
struct Attempt<'m> {
    method: &'m MethodName,
    timeout: Option<Duration>,
    /// 1 for the first attempt.
    number: u32,
    trace: Option<TraceContext>,
    kind: Kind,
}

/// Sends a call if there is room; the payload is taken only then. `waker`,
/// if given, is woken when the call is answered (else its first poll
/// registers one).
fn start<'a>(
    shared: &'a Shared,
    attempt: &Attempt<'_>,
    payload: &mut Bytes,
    waker: Option<&Waker>,
) -> Start<'a> {
    let Attempt {
        method,
        timeout,
        number,
        trace,
        kind,
    } = *attempt;
    let streams = match kind {
        Kind::Unary { .. } => (false, false),
        Kind::Stream(request, response) => (request, response),
    };
    let (id, waker, timer) = {
        let mut state = lock(shared);
        if let Some(reason) = &state.closed {
            return Start::Closed(reason.clone());
        }
        let full = state.calls.len() >= shared.max_in_flight
            || (state.queued_bytes > 0
                && state.queued_bytes + payload.len() > shared.max_queued_bytes);
        if state.closing || full {
            state.waiting = true;
            return Start::Wait;
        }
        let id = state.next_id;
        state.next_id += 1;
        state.calls.insert(
            id,
            Slot {
                method: method.clone(),
                timeout,
                waker: waker.cloned(),
                outcome: None,
                stream: (streams.0 || streams.1).then(|| {
                    Box::new(SlotStream {
                        items: std::collections::VecDeque::new(),
                        receive: ReceiveWindow::new(shared.window),
                        send: SendCredit::new(),
                        sender: None,
                    })
                }),
            },
        );
        state.queued_bytes += payload.len();
        let payload = std::mem::take(payload);
        let request = Frame::request(id, method.clone(), timeout, number, payload)
            .with_trace(trace)
            .with_streams(streams.0, streams.1);
        log::frame(Direction::HostOut, &request, None);
        state.outbox.push_back(request);
        let timer = match kind {
            Kind::Unary { due: Some(due) } => due_at(&mut state, id, due),
            _ => None,
        };
        (id, state.link.take(), timer)
    };
    // Only the first caller after the link went idle wakes it; the ones
    // behind it ride along in the same flush.
    if let Some(waker) = waker {
        waker.wake();
    }
    if let Some(timer) = timer {
        timer.wake();
    }
    Start::Sent(PendingCall {
        shared,
        id,
        done: false,
    })
}

async fn wait_closed(shared: &Shared) {
    loop {
        let changed = shared.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if lock(shared).closed.is_some() {
            return;
        }
        changed.await;
    }
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
            Inner::Supervised(slot) => f
                .debug_struct("Channel")
                .field("worker", &slot.name)
                .field("state", &*slot.lock())
                .finish_non_exhaustive(),
        }
    }
}

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
    waiting: std::sync::atomic::AtomicUsize,
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
    pub(crate) fn new(name: String, fail_fast: bool, max_waiting: usize) -> Arc<WorkerSlot> {
        Arc::new(WorkerSlot {
            name,
            hub: EventHub::new(),
            state: Mutex::new(SlotState::Starting),
            changed: Notify::new(),
            fail_fast,
            max_waiting,
            waiting: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A channel that follows this slot.
    pub(crate) fn channel(self: &Arc<WorkerSlot>) -> Channel {
        Channel {
            inner: Inner::Supervised(Arc::clone(self)),
            middleware: None,
        }
    }

    pub(crate) fn set(&self, state: SlotState) {
        match &state {
            SlotState::Up(channel) => {
                self.hub.reopen();
                channel.use_event_hub(&self.hub);
            }
            SlotState::Down(_) => self.hub.close(),
            SlotState::Starting => {}
        }
        *self.lock() = state;
        self.changed.notify_waiters();
    }

    pub(crate) fn up(&self) -> Option<Channel> {
        match &*self.lock() {
            SlotState::Up(channel) => Some(channel.clone()),
            _ => None,
        }
    }

    pub(crate) fn is_down(&self) -> bool {
        matches!(&*self.lock(), SlotState::Down(_))
    }

    /// How many calls wait for the worker to come back.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn wait_down(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.is_down() {
                return;
            }
            changed.await;
        }
    }

    /// The worker's current connection, other than `dead`: waits while the
    /// worker is being (re)started, unless the policy fails fast.
    async fn current(&self, method: &MethodName, dead: Option<&Channel>) -> Result<Channel, Error> {
        let unavailable = |reason: String| Error::Unavailable {
            method: method.clone(),
            worker: self.name.clone(),
            reason,
        };
        let mut counted = WaitingGuard(None);
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match &*self.lock() {
                SlotState::Up(channel)
                    if !dead.is_some_and(|dead| dead.same(channel)) && !channel.is_closed() =>
                {
                    return Ok(channel.clone());
                }
                SlotState::Down(reason) => return Err(unavailable(reason.clone())),
                _ if self.fail_fast => return Err(unavailable("it is restarting".into())),
                _ => {}
            }
            if counted.0.is_none() {
                let waiting = self
                    .waiting
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                counted.0 = Some(&self.waiting);
                if waiting >= self.max_waiting {
                    return Err(unavailable(format!(
                        "{waiting} calls already wait for it to restart"
                    )));
                }
            }
            changed.await;
        }
    }
}

/// Counts a call among those waiting for a restart, while it waits.
struct WaitingGuard<'a>(Option<&'a std::sync::atomic::AtomicUsize>);

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        if let Some(waiting) = self.0 {
            waiting.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
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

/// A call made with [`Channel::call`]. It starts when first polled, like
/// the `async fn` it stands for; it is not one because most calls need only
/// a small part of what a call can do, and a future as large as everything
/// a call can do costs a copy of itself at each step of the caller's.
pub(crate) struct CallFuture<'a> {
    state: CallState<'a>,
}

enum CallState<'a> {
    Unstarted {
        channel: &'a Channel,
        method: &'a MethodName,
        payload: Bytes,
        options: &'a Resolved,
    },
    /// One attempt, sent: waiting for its answer.
    Sent {
        call: PendingCall<'a>,
        method: &'a MethodName,
    },
    /// One attempt, sent on a supervised channel's current connection,
    /// which this holds while it waits.
    SentOn {
        connection: Channel,
        id: u64,
        method: &'a MethodName,
        /// For a request the connection never delivered: sent again in full.
        channel: &'a Channel,
        options: &'a Resolved,
    },
    /// Everything else: retries, middleware, supervision, waiting for room.
    Full(Pin<Box<dyn Future<Output = Result<Bytes, Error>> + Send + 'a>>),
    Done,
}

impl Future for CallFuture<'_> {
    type Output = Result<Bytes, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let CallState::Unstarted { .. } = this.state {
            let CallState::Unstarted {
                channel,
                method,
                payload,
                options,
            } = std::mem::replace(&mut this.state, CallState::Done)
            else {
                unreachable!()
            };
            match channel.begin(method, payload, options, cx.waker()) {
                // Sent with this task's waker in its slot: nothing to poll
                // until the answer wakes it.
                Ok(state @ (CallState::Sent { .. } | CallState::SentOn { .. })) => {
                    this.state = state;
                    return Poll::Pending;
                }
                Ok(state) => this.state = state,
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
        let outcome = loop {
            match &mut this.state {
                CallState::Sent { call, method } => {
                    let outcome = std::task::ready!(Pin::new(call).poll(cx));
                    break outcome.map_err(|failure| failure.into_error(method));
                }
                CallState::SentOn {
                    connection,
                    id,
                    method,
                    channel,
                    options,
                } => {
                    let shared = connection
                        .direct()
                        .expect("a supervised connection is direct");
                    match std::task::ready!(poll_answer(shared, *id, cx)) {
                        // The worker ended before the request left: it goes
                        // to the next worker, as a call that waited for it.
                        Err(Failure::Undelivered { payload, .. }) => {
                            let (channel, method, options) = (*channel, *method, *options);
                            this.state = CallState::Full(Box::pin(
                                channel.call_full(method, payload, options),
                            ));
                        }
                        outcome => break outcome.map_err(|failure| failure.into_error(method)),
                    }
                }
                CallState::Full(call) => break std::task::ready!(call.as_mut().poll(cx)),
                CallState::Unstarted { .. } | CallState::Done => {
                    panic!("a call polled after it completed")
                }
            }
        };
        this.state = CallState::Done;
        Poll::Ready(outcome)
    }
}

impl Drop for CallFuture<'_> {
    fn drop(&mut self) {
        if let CallState::SentOn { connection, id, .. } = &self.state
            && let Some(shared) = connection.direct()
        {
            abandon(shared, *id);
        }
    }
}

/// One attempt of a call: a slot in the pending table until it resolves or is
/// dropped.
struct PendingCall<'a> {
    shared: &'a Shared,
    id: u64,
    done: bool,
}

impl PendingCall<'_> {
    /// The call's id, now that its caller waits for it some other way.
    fn into_id(mut self) -> u64 {
        self.done = true;
        self.id
    }
}

impl Future for PendingCall<'_> {
    type Output = Result<Bytes, Failure>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let answer = poll_answer(self.shared, self.id, cx);
        self.done = answer.is_ready();
        answer
    }
}

/// Takes call `id`'s answer and its slot once it has one.
fn poll_answer(shared: &Shared, id: u64, cx: &mut Context<'_>) -> Poll<Result<Bytes, Failure>> {
    let mut state = lock(shared);
    let Some(slot) = state.calls.get_mut(&id) else {
        // Only the caller removes its slot; reaching here is a bug, and a
        // lost connection is the honest report of it.
        return Poll::Ready(Err(Failure::Closed(CloseReason::Lost(None))));
    };
    if let Some(outcome) = slot.outcome.take() {
        state.calls.remove(&id);
        state.room_freed(shared);
        return Poll::Ready(outcome);
    }
    if !slot.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
        slot.waker = Some(cx.waker().clone());
    }
    Poll::Pending
}

impl Drop for PendingCall<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        abandon(self.shared, self.id);
    }
}

/// Ends the caller's interest in call `id`: its slot goes, and if it is not
/// answered yet its request is withdrawn (with its stream items) when it has
/// not left, or cancelled when it has.
fn abandon(shared: &Shared, id: u64) {
    release(shared, id, None);
}

/// Removes call `id`'s slot, withdrawing the call from the worker if the
/// worker still runs it: as `running` says when the caller took the outcome
/// and knows, else as the slot's outcome says.
fn release(shared: &Shared, id: u64, running: Option<bool>) {
    let (waker, sender) = {
        let mut state = lock(shared);
        let mut removed = state.calls.remove(&id);
        state.room_freed(shared);
        // A request stream's sender waiting for credit must learn that the
        // call is over.
        let sender = removed
            .as_mut()
            .and_then(|slot| slot.stream.as_mut())
            .and_then(|stream| stream.sender.take());
        let waker = match removed {
            Some(slot) if running.unwrap_or_else(|| worker_runs(slot.outcome.as_ref())) => {
                withdraw(&mut state, id, &slot.method)
            }
            _ => None,
        };
        (waker, sender)
    };
    waker.into_iter().chain(sender).for_each(Waker::wake);
}

/// Whether the worker still runs a call with this outcome: it has not
/// answered, the call was not failed by the worker's side, and the link did
/// not withdraw it at its deadline.
fn worker_runs(outcome: Option<&Result<Bytes, Failure>>) -> bool {
    match outcome {
        None | Some(Err(Failure::ItemTooLarge { .. })) => true,
        Some(Ok(_))
        | Some(Err(
            Failure::Remote(_)
            | Failure::Closed(_)
            | Failure::Undelivered { .. }
            | Failure::TimedOut(_),
        )) => false,
    }
}

/// Withdraws call `id` from the worker: its request (with its stream items)
/// if it has not left, else a `CANCEL`. Returns the link's waker if it must
/// wake to send that.
fn withdraw(state: &mut State, id: u64, method: &MethodName) -> Option<Waker> {
    if state.closed.is_some() {
        return None;
    }
    let unsent = state
        .outbox
        .iter()
        .position(|frame| matches!(frame, Frame::Request { id: queued, .. } if *queued == id));
    match unsent.and_then(|index| state.outbox.remove(index)) {
        Some(Frame::Request { payload, .. }) => {
            state.queued_bytes -= payload.len();
            state.outbox.retain(|frame| frame.id() != id);
            None
        }
        _ => {
            let cancel = Frame::Cancel { id };
            log::frame(Direction::HostOut, &cancel, Some(method));
            state.outbox.push_back(cancel);
            state.link.take()
        }
    }
}

/// The link's one timer, set for the earliest deadline of the calls in
/// flight (or earlier: it is moved forward, never back, so that calls ending
/// in order cost it nothing).
struct Timer {
    sleep: Pin<Box<Sleep>>,
    armed: Option<Instant>,
}

impl Timer {
    fn new() -> Timer {
        Timer {
            sleep: Box::pin(tokio::time::sleep_until(Instant::now())),
            armed: None,
        }
    }

    /// Fails the calls that are due with a timeout (withdrawing them from
    /// the worker), and sets the timer for the next.
    fn poll(&mut self, shared: &Shared, cx: &mut Context<'_>) {
        let mut wakers = Vec::new();
        loop {
            let mut state = lock(shared);
            let state = &mut *state;
            if !state
                .timer_waker
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                state.timer_waker = Some(cx.waker().clone());
            }
            // Entries of calls that ended go as they come up.
            let next = loop {
                match state.deadlines.peek() {
                    Some((due, id)) => {
                        if awaits_answer(&state.calls, id) {
                            break Some(due);
                        }
                        state.deadlines.pop();
                    }
                    None => break None,
                }
            };
            let Some(next) = next else {
                state.timer_at = self.armed;
                break;
            };
            if self.armed.is_none_or(|armed| next < armed) {
                self.sleep.as_mut().reset(next);
                self.armed = Some(next);
            }
            state.timer_at = self.armed;
            if self.sleep.as_mut().poll(cx).is_pending() {
                break;
            }
            // The timer fired: fail what is due, then set it again.
            self.armed = None;
            let now = Instant::now();
            while let Some((due, id)) = state.deadlines.peek() {
                if due > now {
                    break;
                }
                state.deadlines.pop();
                let Some(slot) = state
                    .calls
                    .get_mut(&id)
                    .filter(|slot| slot.outcome.is_none())
                else {
                    continue;
                };
                let failure = Failure::TimedOut(slot.timeout.unwrap_or_default());
                let method = slot.method.clone();
                wakers.extend(slot.settle(Err(failure)).into_iter().flatten());
                tracing::debug!(%method, id, "timed out");
                // The link is running: it sends the withdrawal on this turn.
                withdraw(state, id, &method);
            }
        }
        wakers.into_iter().for_each(Waker::wake);
    }
}

/// The deadlines of the calls in flight as (deadline, id), earliest first.
///
/// Calls made with one timeout come due in the order they were made, so
/// most entries go on the end of a sorted queue and leave from its front,
/// in constant time; an entry due before the queue's last goes into a heap
/// beside it.
#[derive(Default)]
struct Deadlines {
    queue: VecDeque<(Instant, u64)>,
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
}

impl Deadlines {
    fn push(&mut self, entry: (Instant, u64)) {
        if self.queue.back().is_none_or(|last| *last <= entry) {
            self.queue.push_back(entry);
        } else {
            self.heap.push(Reverse(entry));
        }
    }

    /// The earliest entry.
    fn peek(&self) -> Option<(Instant, u64)> {
        match (self.queue.front(), self.heap.peek()) {
            (Some(queued), Some(Reverse(heaped))) => Some(*queued.min(heaped)),
            (Some(queued), None) => Some(*queued),
            (None, Some(Reverse(heaped))) => Some(*heaped),
            (None, None) => None,
        }
    }

    /// Removes the earliest entry.
    fn pop(&mut self) {
        let from_heap = match (self.queue.front(), self.heap.peek()) {
            (Some(queued), Some(Reverse(heaped))) => heaped < queued,
            (None, _) => true,
            (Some(_), None) => false,
        };
        if from_heap {
            self.heap.pop();
        } else {
            self.queue.pop_front();
        }
    }

    fn len(&self) -> usize {
        self.queue.len() + self.heap.len()
    }

    fn retain(&mut self, mut keep: impl FnMut(&(Instant, u64)) -> bool) {
        self.queue.retain(&mut keep);
        self.heap.retain(|Reverse(entry)| keep(entry));
    }

    fn clear(&mut self) {
        self.queue.clear();
        self.heap.clear();
    }
}

/// How the link's connection ended.
enum LinkEnd {
    /// Every channel was dropped; the link closed the transport itself.
    Detached,
    /// The worker closed its end.
    Eof,
    /// The connection broke.
    Broken(FrameError),
    /// The worker sent something it must not.
    Protocol(FrameError),
}

/// Fails every call if the link task ends without closing the connection:
/// e.g. when the runtime it was spawned on shuts down.
struct CloseOnDrop(Arc<Shared>);

impl fmt::Debug for CloseOnDrop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CloseOnDrop")
    }
}

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        close(&self.0, CloseReason::Lost(None));
    }
}

/// The link task. The guard is an argument, not a local, so that it also
/// fires if the task is dropped before it first runs.
async fn run_link<T: Transport>(guard: CloseOnDrop, mut transport: T, exit: Option<ExitWatch>) {
    let shared = Arc::clone(&guard.0);
    let mut writer = FrameWriter::default();
    let mut timer = Timer::new();
    let end = poll_fn(|cx| {
        // Calls that are due fail first; their withdrawals go out below.
        timer.poll(&shared, cx);
        poll_link(&shared, &mut transport, &mut writer, cx)
    })
    .await;
    // The requests the transport could not write, and the frames the
    // writer never handed it, provably never reached the worker.
    let (end, unwritten) = match end {
        LinkEnd::Broken(FrameError::Unwritten { source, requests }) => {
            (LinkEnd::Broken(FrameError::Io(source)), requests)
        }
        end => (end, Vec::new()),
    };
    if !matches!(end, LinkEnd::Detached) {
        // Until the reason is known, new calls wait instead of queueing into
        // a dead connection.
        let unsent = writer.take_unsent();
        let mut state = lock(&shared);
        state.closing = true;
        state.unwritten = unwritten;
        for frame in unsent.into_iter().rev() {
            // Counted again as queued: a caller that gives up meanwhile
            // withdraws its request from the queue, uncounting it.
            if let Frame::Request { payload, .. } = &frame {
                state.queued_bytes += payload.len();
            }
            state.outbox.push_front(frame);
        }
    }
    let reason = match end {
        LinkEnd::Detached => {
            let _ = poll_fn(|cx| Pin::new(&mut transport).poll_close(cx)).await;
            return;
        }
        LinkEnd::Protocol(error) => {
            tracing::warn!(%error, "closing the connection to a worker that broke the protocol");
            CloseReason::Lost(Some(Arc::new(error)))
        }
        LinkEnd::Eof => exit_or_lost(exit, None).await,
        LinkEnd::Broken(error) => exit_or_lost(exit, Some(Arc::new(error))).await,
    };
    drop(transport);
    close(&shared, reason);
}

/// When the connection ends, the worker has usually died: wait briefly for its
/// driver to say how, so that callers learn the exit status, not just the loss.
async fn exit_or_lost(exit: Option<ExitWatch>, cause: Option<Arc<FrameError>>) -> CloseReason {
    if let Some(mut exit) = exit {
        let reported = tokio::time::timeout(EXIT_REPORT_WAIT, exit.wait_for(Option::is_some)).await;
        if let Ok(Ok(reason)) = reported
            && let Some(reason) = reason.clone()
        {
            return CloseReason::Exited(reason);
        }
    }
    CloseReason::Lost(cause)
}

fn close(shared: &Shared, reason: CloseReason) {
    let (reason, wakers): (CloseReason, Vec<Waker>) = {
        let mut state = lock(shared);
        // The first reason wins: a kill is not relabelled by the end of
        // stream that follows it.
        let reason = state.closed.get_or_insert(reason).clone();
        state.closing = false;
        let outbox = std::mem::take(&mut state.outbox);
        state.queued_bytes = 0;
        state.deadlines.clear();
        if state.hub_owned {
            state.hub.close();
        }
        let mut wakers: Vec<Waker> = Vec::new();
        // Requests still queued, or handed back unwritten, never reached the
        // worker: their calls learn so, and get their payloads back. (A
        // stream's request is not sent again, whatever its fate: its items
        // are gone.)
        let queued = outbox.into_iter().filter_map(|frame| match frame {
            Frame::Request { id, payload, .. } => Some((id, payload)),
            _ => None,
        });
        let unwritten = std::mem::take(&mut state.unwritten);
        for (id, payload) in unwritten.into_iter().chain(queued) {
            if let Some(slot) = state.calls.get_mut(&id)
                && slot.outcome.is_none()
                && slot.stream.is_none()
            {
                let undelivered = Failure::Undelivered {
                    reason: reason.clone(),
                    payload,
                };
                wakers.extend(slot.settle(Err(undelivered)).into_iter().flatten());
            }
        }
        wakers.extend(
            state
                .calls
                .values_mut()
                .filter(|slot| slot.outcome.is_none())
                .flat_map(|slot| slot.settle(Err(Failure::Closed(reason.clone()))))
                .flatten(),
        );
        (reason, wakers)
    };
    shared.changed.notify_waiters();
    tracing::debug!(
        ?reason,
        failed = wakers.len(),
        "connection to worker closed"
    );
    for waker in wakers {
        waker.wake();
    }
}

fn poll_link<T: Transport>(
    shared: &Shared,
    transport: &mut T,
    writer: &mut FrameWriter,
    cx: &mut Context<'_>,
) -> Poll<LinkEnd> {
    // Route what has arrived, a batch at a time so that writes get a turn.
    for read in 0.. {
        if read == READ_BATCH {
            // More may be buffered, and nothing will wake us for it.
            cx.waker().wake_by_ref();
            break;
        }
        match Pin::new(&mut *transport).poll_next(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Err(error) = route(shared, frame) {
                    return Poll::Ready(LinkEnd::Protocol(error));
                }
            }
            Poll::Ready(Some(Err(error))) => return Poll::Ready(LinkEnd::Broken(error)),
            Poll::Ready(None) => return Poll::Ready(LinkEnd::Eof),
            Poll::Pending => break,
        }
    }

    // Send what callers queued: everything queued since the last turn goes
    // out in one flush.
    let mut detached = false;
    let written = writer.poll_write(transport, cx, |sending, cx| {
        let mut state = lock(shared);
        std::mem::swap(&mut state.outbox, sending);
        if !sending.is_empty() {
            state.queued_bytes = 0;
            state.room_freed(shared);
        } else {
            if !state.link.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                state.link = Some(cx.waker().clone());
            }
            detached = state.detached;
        }
    });
    match written {
        Poll::Ready(Err(error)) => Poll::Ready(LinkEnd::Broken(error)),
        Poll::Ready(Ok(())) if detached => Poll::Ready(LinkEnd::Detached),
        _ => Poll::Pending,
    }
}

/// Hands an answer to the call waiting for it. Answers to ids nobody waits
/// for (the call timed out or was cancelled) are dropped; a frame for an id
/// never sent breaks the connection.
fn route(shared: &Shared, frame: Frame) -> Result<(), FrameError> {
    if log::enabled() {
        let method = lock(shared)
            .calls
            .get(&frame.id())
            .map(|slot| slot.method.clone());
        log::frame(Direction::HostIn, &frame, method.as_ref());
    }
    let (kind, id, outcome) = match frame {
        Frame::Response { id, payload } => ("RESPONSE", id, Ok(payload)),
        Frame::Status { id, status } => ("STATUS", id, Err(Failure::Remote(status))),
        Frame::Item { id, payload } => return route_item(shared, id, payload),
        Frame::Event { method, payload } => return route_event(shared, method, payload),
        Frame::Credit { id, count, bytes } => {
            let waker = {
                let mut state = lock(shared);
                let next_id = state.next_id;
                match state.calls.get_mut(&id) {
                    Some(slot) => slot.stream.as_mut().and_then(|stream| {
                        stream.send.grant(count, bytes);
                        stream.sender.take()
                    }),
                    None => {
                        never_sent("CREDIT", id, next_id)?;
                        None
                    }
                }
            };
            if let Some(waker) = waker {
                waker.wake();
            }
            return Ok(());
        }
        other => {
            return Err(FrameError::Unexpected {
                kind: other.kind_name(),
                peer: "worker",
            });
        }
    };
    let wakers = {
        let mut state = lock(shared);
        let next_id = state.next_id;
        match state.calls.get_mut(&id) {
            Some(slot) if slot.outcome.is_none() => slot.settle(outcome),
            Some(slot) => {
                tracing::warn!(
                    id,
                    method = %slot.method,
                    "the worker answered one request twice; the second answer is dropped"
                );
                [None, None]
            }
            None => {
                never_sent(kind, id, next_id)?;
                tracing::trace!(
                    id,
                    "dropping an answer nobody awaits (timed out or cancelled)"
                );
                [None, None]
            }
        }
    };
    wakers.into_iter().flatten().for_each(Waker::wake);
    Ok(())
}

/// A frame for `id`, which no call awaits, is late unless the id was never
/// given to a request (ids count up from 1 and are never reused).
fn never_sent(kind: &'static str, id: u64, next_id: u64) -> Result<(), FrameError> {
    if id >= next_id {
        return Err(FrameError::NeverSent { kind, id });
    }
    Ok(())
}

/// Hands an event to the subscriptions of its service, holding one credit
/// until they have taken it.
fn route_event(shared: &Shared, method: MethodName, payload: Bytes) -> Result<(), FrameError> {
    let size = payload.len();
    let hub = {
        let mut state = lock(shared);
        if let Err(overrun) = state.events.receive(size) {
            return Err(FrameError::Malformed {
                kind: "EVENT",
                reason: format!(
                    "more {} than the host's credit allows",
                    overrun.of("events")
                ),
            });
        }
        Arc::clone(&state.hub)
    };
    let this = shared.this.clone();
    let credit = Credit::new(move || {
        if let Some(shared) = this.upgrade() {
            event_taken(&shared, size);
        }
    });
    hub.deliver(method, payload, credit);
    Ok(())
}

/// Counts one event of `size` bytes taken on the host; returns credit to
/// the worker half a window at a time.
fn event_taken(shared: &Shared, size: usize) {
    let waker = {
        let mut state = lock(shared);
        let credit = state.events.take(size);
        let Some((count, bytes)) = credit.filter(|_| state.closed.is_none()) else {
            return;
        };
        let credit = Frame::Credit {
            id: 0,
            count,
            bytes,
        };
        log::frame(Direction::HostOut, &credit, None);
        state.outbox.push_back(credit);
        state.link.take()
    };
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// Hands a response-stream item to the call waiting for it.
fn route_item(shared: &Shared, id: u64, payload: Bytes) -> Result<(), FrameError> {
    let waker = {
        let mut state = lock(shared);
        let next_id = state.next_id;
        let Some(slot) = state.calls.get_mut(&id) else {
            // Late, the caller stopped listening; or never sent.
            return never_sent("ITEM", id, next_id);
        };
        let Some(stream) = slot.stream.as_mut() else {
            return Err(FrameError::Malformed {
                kind: "ITEM",
                reason: format!("request {id} is not a streaming call"),
            });
        };
        // Items buffered never exceed the window, unless the worker ignored
        // its credit.
        if let Err(overrun) = stream.receive.receive(payload.len()) {
            return Err(FrameError::Malformed {
                kind: "ITEM",
                reason: format!(
                    "more {} for request {id} than its credit allows",
                    overrun.of("items")
                ),
            });
        }
        stream.items.push_back(payload);
        slot.waker.take()
    };
    if let Some(waker) = waker {
        waker.wake();
    }
    Ok(())
}

impl Channel {
    /// Starts a streaming call: sends its `REQUEST` (with `payload`, or
    /// empty for a request stream) and returns both halves. Host middleware
    /// wraps the opening, up to the request being queued.
    pub(crate) async fn open_stream(
        &self,
        method: &MethodName,
        payload: Bytes,
        options: &Resolved,
        streams: (bool, bool),
    ) -> Result<Opened, Error> {
        check_method_name(method)?;
        // The timeout covers the whole call, from here.
        let deadline = options
            .timeout
            .and_then(|timeout| tokio::time::Instant::now().checked_add(timeout));
        let Some(chain) = &self.middleware else {
            return self
                .open_stream_once(method, &payload, options, streams, deadline, None)
                .await
                .map(|(call, send)| Opened::Stream(call, send));
        };
        let info = CallInfo::host(method, 1, options.timeout, self.driver(), payload.len());
        let mut opened = None;
        let endpoint = async {
            let halves = self
                .open_stream_once(method, &payload, options, streams, deadline, Some(&info))
                .await?;
            opened = Some(halves);
            Ok(Bytes::new())
        };
        let answer = Next::new(chain, &info, Box::pin(endpoint)).run().await?;
        Ok(match opened {
            Some((call, send)) => Opened::Stream(call, send),
            None => Opened::Answered(answer),
        })
    }

    async fn open_stream_once(
        &self,
        method: &MethodName,
        payload: &Bytes,
        options: &Resolved,
        streams: (bool, bool),
        deadline: Option<tokio::time::Instant>,
        info: Option<&CallInfo>,
    ) -> Result<(StreamCall, StreamSendHalf), Error> {
        // Read when this runs: after the middleware set it.
        let trace = info.and_then(CallInfo::trace);
        let open = async {
            let channel = match &self.inner {
                Inner::Direct(_) => self.clone(),
                Inner::Supervised(slot) => slot.current(method, None).await?,
            };
            let Some(shared) = channel.direct().map(Arc::clone) else {
                return Err(Error::Disconnected {
                    method: method.clone(),
                    cause: None,
                });
            };
            check_request_size(&shared, method, payload, options.timeout, trace)?;
            let mut payload = payload.clone();
            let id = loop {
                let changed = shared.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                let attempt = Attempt {
                    method,
                    timeout: options.timeout,
                    number: 1,
                    trace,
                    kind: Kind::Stream(streams.0, streams.1),
                };
                match start(&shared, &attempt, &mut payload, None) {
                    Start::Sent(mut call) => {
                        // The stream halves take over the slot from here.
                        call.done = true;
                        break call.id;
                    }
                    Start::Closed(reason) => return Err(reason.into_error(method)),
                    Start::Wait => changed.await,
                }
            };
            Ok((channel, shared, id))
        };
        let (channel, shared, id) =
            until(method, options.timeout, due(options.timeout), open).await?;
        let deadline = deadline.map(|deadline| Box::pin(tokio::time::sleep_until(deadline)));
        let send = StreamSendHalf {
            shared: Arc::clone(&shared),
            id,
            method: method.clone(),
        };
        let call = StreamCall {
            channel,
            shared,
            id,
            method: method.clone(),
            deadline,
            timeout: options.timeout,
            done: false,
            worker_runs: false,
        };
        Ok((call, send))
    }
}

/// A streaming call, once its opening went through the host's middleware.
pub(crate) enum Opened {
    /// The call is open: its two halves.
    Stream(StreamCall, StreamSendHalf),
    /// A middleware answered without opening it: for a request stream, this
    /// is the response; a response stream is empty.
    Answered(Bytes),
}

/// The receiving half of a streaming call on the host: the worker's items,
/// then its answer. Dropping it before the end cancels the call.
pub(crate) struct StreamCall {
    /// Keeps the connection open while the stream is read.
    channel: Channel,
    shared: Arc<Shared>,
    id: u64,
    method: MethodName,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    timeout: Option<Duration>,
    done: bool,
    /// Whether the worker still runs the call, judged from the outcome this
    /// stream took: a request item too large to send fails the call here
    /// while the worker runs it, and ending the call must then cancel it.
    worker_runs: bool,
}

impl StreamCall {
    /// Ends the call by its deadline.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<Error> {
        let Some(deadline) = &mut self.deadline else {
            return Poll::Pending;
        };
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Error::Timeout {
                method: self.method.clone(),
                after: self.timeout.unwrap_or_default(),
            }),
            Poll::Pending => Poll::Pending,
        }
    }

    fn finish(&mut self) {
        self.done = true;
        abandon(&self.shared, self.id);
    }

    /// Ends a call whose outcome this stream took: answered, it ends
    /// without a word; failed here while the worker runs it, it is
    /// cancelled.
    fn ended(&mut self) {
        self.done = true;
        release(&self.shared, self.id, Some(self.worker_runs));
    }

    /// The next item of the worker's stream; `Ok(None)` once it ended with
    /// a `RESPONSE`, an error if it ended otherwise.
    pub(crate) fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let (polled, waker) = {
            let mut state = lock(&self.shared);
            let id = self.id;
            let Some(slot) = state.calls.get_mut(&id) else {
                drop(state);
                self.done = true;
                return Poll::Ready(Some(Err(Error::Disconnected {
                    method: self.method.clone(),
                    cause: None,
                })));
            };
            let item = slot.stream.as_mut().and_then(|stream| {
                let item = stream.items.pop_front()?;
                let credit = stream.receive.take(item.len());
                Some((item, credit))
            });
            match item {
                Some((item, credit)) => {
                    let waker = credit.and_then(|(count, bytes)| {
                        let frame = Frame::Credit { id, count, bytes };
                        log::frame(Direction::HostOut, &frame, Some(&self.method));
                        state.outbox.push_back(frame);
                        state.link.take()
                    });
                    (Poll::Ready(Some(Ok(item))), waker)
                }
                None => {
                    let outcome = slot.outcome.take();
                    self.worker_runs = worker_runs(outcome.as_ref());
                    match outcome {
                        Some(Ok(_)) => (Poll::Ready(None), None),
                        Some(Err(failure)) => (
                            Poll::Ready(Some(Err(failure.into_error(&self.method)))),
                            None,
                        ),
                        None => {
                            slot.waker = Some(cx.waker().clone());
                            (Poll::Pending, None)
                        }
                    }
                }
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        match polled {
            Poll::Pending => match self.poll_deadline(cx) {
                Poll::Ready(error) => {
                    self.finish();
                    Poll::Ready(Some(Err(error)))
                }
                Poll::Pending => Poll::Pending,
            },
            Poll::Ready(Some(Ok(item))) => Poll::Ready(Some(Ok(item))),
            // The worker's answer (or a failure here) ended the stream.
            end => {
                self.ended();
                end
            }
        }
    }

    /// The worker's answer to a call whose request streamed.
    pub(crate) async fn response(mut self) -> Result<Bytes, Error> {
        poll_fn(|cx| {
            let outcome = {
                let mut state = lock(&self.shared);
                match state.calls.get_mut(&self.id) {
                    None => Some(Err(Error::Disconnected {
                        method: self.method.clone(),
                        cause: None,
                    })),
                    Some(slot) => match slot.outcome.take() {
                        Some(outcome) => {
                            self.worker_runs = worker_runs(Some(&outcome));
                            Some(outcome.map_err(|failure| failure.into_error(&self.method)))
                        }
                        None => {
                            slot.waker = Some(cx.waker().clone());
                            None
                        }
                    },
                }
            };
            match outcome {
                Some(outcome) => {
                    self.ended();
                    Poll::Ready(outcome)
                }
                None => match self.poll_deadline(cx) {
                    Poll::Ready(error) => {
                        self.finish();
                        Poll::Ready(Err(error))
                    }
                    Poll::Pending => Poll::Pending,
                },
            }
        })
        .await
    }
}

impl Drop for StreamCall {
    fn drop(&mut self) {
        if !self.done {
            abandon(&self.shared, self.id);
        }
        let _ = &self.channel;
    }
}

/// The sending half of a streaming call on the host.
pub(crate) struct StreamSendHalf {
    shared: Arc<Shared>,
    id: u64,
    method: MethodName,
}

impl StreamSendHalf {
    /// Sends one item of the request stream, once the worker has room.
    /// Fails once the call has ended (the worker answered or the caller
    /// stopped listening); an item over the maximum frame length ends the
    /// call with [`Error::TooLarge`].
    pub(crate) async fn send(&self, payload: Bytes) -> Result<(), ()> {
        let size = HEADER_LEN + payload.len();
        let mut payload = Some(payload);
        let waker = poll_fn(|cx| {
            let mut state = lock(&self.shared);
            if state.closed.is_some() {
                return Poll::Ready(Err(()));
            }
            let max = self.shared.max_frame_length;
            let Some(slot) = state.calls.get_mut(&self.id) else {
                return Poll::Ready(Err(()));
            };
            if slot.outcome.is_some() {
                return Poll::Ready(Err(()));
            }
            if size > max {
                // Fail the call; its reader cancels it in the worker.
                slot.settle(Err(Failure::ItemTooLarge { size, max }))
                    .into_iter()
                    .flatten()
                    .for_each(Waker::wake);
                return Poll::Ready(Err(()));
            }
            let Some(stream) = slot.stream.as_mut() else {
                return Poll::Ready(Err(()));
            };
            if !stream.send.ready() {
                stream.sender = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let payload = payload.take().unwrap_or_default();
            stream.send.spend(payload.len());
            let item = Frame::Item {
                id: self.id,
                payload,
            };
            log::frame(Direction::HostOut, &item, Some(&self.method));
            state.outbox.push_back(item);
            Poll::Ready(Ok(state.link.take()))
        })
        .await?;
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Ends the request stream.
    pub(crate) fn end(&self) {
        let waker = {
            let mut state = lock(&self.shared);
            if state.closed.is_some() || !state.calls.contains_key(&self.id) {
                return;
            }
            let end = Frame::End { id: self.id };
            log::frame(Direction::HostOut, &end, Some(&self.method));
            state.outbox.push_back(end);
            state.link.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// A stream of messages from a worker: the response of a method declared
/// `returns (stream T)`.
///
/// It yields each message as it arrives, and ends after the last one
/// (`None`), or with an error if the call failed (the worker's status, its
/// exit, the call's timeout). Reading it grants the worker room for more, so
/// a slow reader slows the worker down instead of filling memory; dropping
/// it cancels the call.
pub struct Streaming<T> {
    /// The call, until it ends (`None` from the start if a middleware
    /// answered without opening it).
    call: Option<StreamCall>,
    method: MethodName,
    message_type: &'static str,
    _message: std::marker::PhantomData<fn() -> T>,
}

impl<T> Streaming<T> {
    pub(crate) fn new(
        method: &MethodName,
        call: Option<StreamCall>,
        message_type: &'static str,
    ) -> Streaming<T> {
        Streaming {
            call,
            method: method.clone(),
            message_type,
            _message: std::marker::PhantomData,
        }
    }
}

impl<T: prost::Message + Default> Streaming<T> {
    /// The next message, `None` once the stream has ended.
    pub async fn message(&mut self) -> Result<Option<T>, Error> {
        poll_fn(|cx| futures_core::Stream::poll_next(Pin::new(&mut *self), cx))
            .await
            .transpose()
    }
}

impl<T: prost::Message + Default> futures_core::Stream for Streaming<T> {
    type Item = Result<T, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Some(call) = &mut this.call else {
            return Poll::Ready(None);
        };
        let item = std::task::ready!(call.poll_item(cx));
        if item.is_none() {
            this.call = None;
        }
        Poll::Ready(item.map(|item| {
            item.and_then(|bytes| {
                T::decode(bytes).map_err(|source| Error::Decode {
                    method: this.method.clone(),
                    what: "response stream item",
                    message: this.message_type,
                    source,
                })
            })
        }))
    }
}

impl<T> fmt::Debug for Streaming<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Streaming")
            .field("method", &self.method)
            .field("ended", &self.call.as_ref().is_none_or(|call| call.done))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::MemoryTransport;
    use futures_util::{SinkExt, StreamExt};

    static ECHO: MethodName = MethodName::from_static("test.echo");

    fn resolved(timeout: Option<Duration>, retries: u32) -> Resolved {
        Resolved {
            timeout,
            retries,
            backoff: Backoff::constant(Duration::from_millis(10)),
            idempotent: true,
        }
    }

    async fn next_request(worker: &mut MemoryTransport) -> (u64, u32, Bytes) {
        match worker.next().await.unwrap().unwrap() {
            Frame::Request {
                id,
                attempt,
                payload,
                ..
            } => (id, attempt, payload),
            other => panic!("expected a request, got {other:?}"),
        }
    }

    /// A transport whose writes all fail, handing back as unwritten the
    /// requests it was given; it never receives anything.
    #[derive(Default)]
    struct Refusing {
        given: Vec<Frame>,
    }

    impl futures_core::Stream for Refusing {
        type Item = Result<Frame, FrameError>;

        fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            Poll::Pending
        }
    }

    impl futures_sink::Sink<Frame> for Refusing {
        type Error = FrameError;

        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), FrameError>> {
            Poll::Ready(Ok(()))
        }

        fn start_send(mut self: Pin<&mut Self>, frame: Frame) -> Result<(), FrameError> {
            self.given.push(frame);
            Ok(())
        }

        fn poll_flush(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Result<(), FrameError>> {
            let requests: Vec<(u64, Bytes)> = std::mem::take(&mut self.given)
                .into_iter()
                .filter_map(|frame| match frame {
                    Frame::Request { id, payload, .. } => Some((id, payload)),
                    _ => None,
                })
                .collect();
            if requests.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let source = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
            Poll::Ready(Err(FrameError::Unwritten { source, requests }))
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), FrameError>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_handed_back_unwritten_ends_as_never_sent_or_given_up_meanwhile() {
        // The exit is never reported: the link waits a second to learn it,
        // holding the requests it could not write meanwhile.
        let (_exit, watch) = watch::channel(None);
        let channel = Channel::connect(
            Refusing::default(),
            ChannelOptions::new(),
            Some(watch),
            "test",
        );
        let shared = Arc::clone(channel.direct().unwrap());
        let options = resolved(Some(Duration::from_secs(10)), 0);
        let payload = Bytes::from_static(b"never written");
        let kept = channel.call(&ECHO, payload.clone(), &options);
        tokio::pin!(kept);
        {
            let given_up = channel.call(&ECHO, payload.clone(), &options);
            tokio::pin!(given_up);
            for mut call in [kept.as_mut(), given_up.as_mut()] {
                let polled = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
                assert!(polled.is_pending());
            }
            // The link writes, fails, and learns which requests were not
            // written.
            while !lock(&shared).closing {
                tokio::task::yield_now().await;
            }
            assert_eq!(lock(&shared).unwritten.len(), 2);
            assert_eq!(lock(&shared).queued_bytes, 0);
        }
        // The one given up meanwhile is gone; the other ends with the
        // connection, as never sent: its payload comes back.
        wait_closed(&shared).await;
        let outcome = match &lock(&shared).calls.get(&1).expect("the call kept").outcome {
            Some(Err(Failure::Undelivered { payload, .. })) => payload.clone(),
            other => panic!("expected the request back, got {other:?}"),
        };
        assert_eq!(outcome, payload);
        assert_eq!(lock(&shared).calls.len(), 1);
        assert_eq!(lock(&shared).queued_bytes, 0);
        let error = kept.await.unwrap_err();
        assert!(matches!(error, Error::Disconnected { .. }), "{error:?}");
    }

    #[tokio::test]
    async fn answers_reach_their_own_callers_out_of_order() {
        let (host, mut worker) = MemoryTransport::pair();
        let channel = Channel::new(host);
        let opts = resolved(None, 0);
        let a = channel.call(&ECHO, Bytes::from_static(b"a"), &opts);
        let b = channel.call(&ECHO, Bytes::from_static(b"b"), &opts);
        let answer = async {
            let first = next_request(&mut worker).await;
            let second = next_request(&mut worker).await;
            for (id, _, payload) in [second, first] {
                worker.send(Frame::Response { id, payload }).await.unwrap();
            }
        };
        let (a, b, ()) = tokio::join!(a, b, answer);
        assert_eq!(a.unwrap(), "a");
        assert_eq!(b.unwrap(), "b");
        assert_eq!(channel.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_timed_out_call_sends_cancel_and_leaves_no_slot() {
        let (host, mut worker) = MemoryTransport::pair();
        let channel = Channel::new(host);
        let result = channel
            .call(
                &ECHO,
                Bytes::new(),
                &resolved(Some(Duration::from_secs(2)), 0),
            )
            .await;
        assert!(
            matches!(&result, Err(Error::Timeout { method, after }) if *method == "test.echo" && *after == Duration::from_secs(2)),
            "{result:?}"
        );
        assert_eq!(channel.in_flight(), 0);
        let (id, _, _) = next_request(&mut worker).await;
        assert_eq!(worker.next().await.unwrap().unwrap(), Frame::Cancel { id });
        // A late answer is dropped, not delivered to anyone.
        worker
            .send(Frame::Response {
                id,
                payload: Bytes::new(),
            })
            .await
            .unwrap();
        let opts = resolved(None, 0);
        let again = channel.call(&ECHO, Bytes::from_static(b"x"), &opts);
        let serve = async {
            let (id, _, payload) = next_request(&mut worker).await;
            worker.send(Frame::Response { id, payload }).await.unwrap();
        };
        let (again, ()) = tokio::join!(again, serve);
        assert_eq!(again.unwrap(), "x");
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_due_sooner_than_the_others_times_out_on_time() {
        let (host, mut worker) = MemoryTransport::pair();
        let channel = Channel::new(host);
        // A slow call sets the link's timer for a minute from now...
        let minute = resolved(Some(Duration::from_secs(60)), 0);
        let slow = channel.call(&ECHO, Bytes::new(), &minute);
        tokio::pin!(slow);
        let slow_id = tokio::select! {
            _ = &mut slow => panic!("the slow call ended unanswered"),
            (id, _, _) = next_request(&mut worker) => id,
        };
        // ...and one due in 50 ms must move it forward.
        let started = Instant::now();
        let quick = channel
            .call(
                &ECHO,
                Bytes::new(),
                &resolved(Some(Duration::from_millis(50)), 0),
            )
            .await;
        assert!(matches!(quick, Err(Error::Timeout { .. })), "{quick:?}");
        assert_eq!(started.elapsed(), Duration::from_millis(50));
        let (quick_id, _, _) = next_request(&mut worker).await;
        assert_eq!(
            worker.next().await.unwrap().unwrap(),
            Frame::Cancel { id: quick_id }
        );
        // The slow call still waits for its answer, and gets it.
        worker
            .send(Frame::Response {
                id: slow_id,
                payload: Bytes::from_static(b"late"),
            })
            .await
            .unwrap();
        assert_eq!(slow.await.unwrap(), "late");
        assert_eq!(channel.in_flight(), 0);
    }

    proptest::proptest! {
        #[test]
        fn deadlines_leave_earliest_first_whatever_order_they_came_in(
            steps in proptest::collection::vec((0u64..50, proptest::bool::weighted(0.3)), 0..200),
        ) {
            let start = Instant::now();
            let mut deadlines = Deadlines::default();
            let mut model: Vec<(Instant, u64)> = Vec::new();
            for (id, (offset, pop)) in (0u64..).zip(steps) {
                if pop {
                    model.sort_unstable();
                    let earliest = (!model.is_empty()).then(|| model.remove(0));
                    proptest::prop_assert_eq!(deadlines.peek(), earliest);
                    deadlines.pop();
                } else {
                    let entry = (start + Duration::from_millis(offset), id);
                    deadlines.push(entry);
                    model.push(entry);
                }
                proptest::prop_assert_eq!(deadlines.len(), model.len());
            }
        }
    }

    #[tokio::test]
    async fn deadlines_of_answered_calls_do_not_pile_up() {
        let (host, mut worker) = MemoryTransport::pair();
        let channel = Channel::new(host);
        let opts = resolved(Some(Duration::from_secs(3600)), 0);
        let serve = async move {
            while let Some(Ok(Frame::Request { id, payload, .. })) = worker.next().await {
                worker.send(Frame::Response { id, payload }).await.unwrap();
            }
        };
        let calls = async {
            for _ in 0..5_000 {
                channel.call(&ECHO, Bytes::new(), &opts).await.unwrap();
            }
        };
        tokio::select! {
            () = calls => {}
            () = serve => panic!("the worker end closed"),
        }
        let shared = channel.direct().unwrap();
        // Every call is answered and due in an hour: the entries left are
        // at most those of one sweep's worth.
        let pending = lock(shared).deadlines.len();
        assert!(
            pending <= 1024 + 2,
            "{pending} deadline entries kept for 5000 answered calls"
        );
    }

    #[tokio::test]
    async fn worker_end_fails_every_pending_call_and_later_calls() {
        let (host, mut worker) = MemoryTransport::pair();
        let channel = Channel::new(host);
        let opts = resolved(None, 0);
        let calls = futures_util::future::join_all(
            (0..10).map(|_| channel.call(&ECHO, Bytes::new(), &opts)),
        );
        let kill = async {
            for _ in 0..10 {
                next_request(&mut worker).await;
            }
            drop(worker);
        };
        let (results, ()) = tokio::join!(calls, kill);
        for result in results {
            assert!(
                matches!(result, Err(Error::Disconnected { cause: None, .. })),
                "{result:?}"
            );
        }
        assert_eq!(channel.in_flight(), 0);
        assert!(channel.is_closed());
        let after = channel.call(&ECHO, Bytes::new(), &opts).await;
        assert!(
            matches!(after, Err(Error::Disconnected { .. })),
            "{after:?}"
        );
    }

    #[tokio::test]
    async fn a_frame_only_a_worker_may_receive_closes_the_connection() {
        let (host, mut worker) = MemoryTransport::pair();
        let channel = Channel::new(host);
        let opts = resolved(None, 0);
        let call = channel.call(&ECHO, Bytes::new(), &opts);
        let misbehave = async {
            next_request(&mut worker).await;
            worker.send(Frame::Cancel { id: 1 }).await.unwrap();
        };
        let (result, ()) = tokio::join!(call, misbehave);
        let error = result.unwrap_err();
        assert_eq!(
            error.to_string(),
            "test.echo failed: disconnected from the worker: unexpected CANCEL frame from the worker"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retries_resend_with_a_new_id_and_attempt_number() {
        let (host, mut worker) = MemoryTransport::pair();
        let channel = Channel::new(host);
        let opts = resolved(None, 2);
        let call = channel.call(&ECHO, Bytes::from_static(b"p"), &opts);
        let serve = async {
            let mut seen = Vec::new();
            for _ in 0..2 {
                let (id, attempt, _) = next_request(&mut worker).await;
                seen.push((id, attempt));
                worker
                    .send(Frame::Status {
                        id,
                        status: Status::unavailable("busy"),
                    })
                    .await
                    .unwrap();
            }
            let (id, attempt, payload) = next_request(&mut worker).await;
            seen.push((id, attempt));
            worker.send(Frame::Response { id, payload }).await.unwrap();
            seen
        };
        let (result, seen) = tokio::join!(call, serve);
        assert_eq!(result.unwrap(), "p");
        assert_eq!(seen, [(1, 1), (2, 2), (3, 3)]);
    }

    #[tokio::test]
    async fn dropping_every_channel_closes_the_transport() {
        let (host, mut worker) = MemoryTransport::pair();
        let channel = Channel::new(host);
        let clone = channel.clone();
        drop(channel);
        drop(clone);
        assert!(worker.next().await.is_none());
    }

    #[test]
    fn options_fall_back_call_then_client_then_schema_then_library() {
        let schema = MethodDefaults {
            timeout: Some(Duration::from_secs(5)),
            retries: Some(2),
            idempotent: true,
        };
        let none = CallOptions::new();
        let client = CallOptions::new().timeout(Duration::from_secs(9));
        let call = CallOptions::new().retries(7);
        let r = CallOptions::resolve([Some(&call), Some(&client)], &schema);
        assert_eq!((r.timeout, r.retries), (Some(Duration::from_secs(9)), 7));
        let r = CallOptions::resolve([Some(&none), None], &schema);
        assert_eq!((r.timeout, r.retries), (Some(Duration::from_secs(5)), 2));
        let r = CallOptions::resolve([None, None], &MethodDefaults::default());
        assert_eq!((r.timeout, r.retries), (Some(DEFAULT_TIMEOUT), 0));
        let forever = CallOptions::new().no_timeout();
        assert_eq!(
            CallOptions::resolve([Some(&forever), None], &schema).timeout,
            None
        );
    }

    #[test]
    fn retries_apply_only_to_idempotent_methods() {
        let schema = MethodDefaults {
            retries: Some(3),
            ..MethodDefaults::default()
        };
        assert_eq!(CallOptions::resolve([None, None], &schema).retries, 0);
        let asserted = CallOptions::new().idempotent(true);
        assert_eq!(
            CallOptions::resolve([Some(&asserted), None], &schema).retries,
            3
        );
    }
}
