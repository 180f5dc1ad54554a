//! The worker's side: [`Dispatch`] (implemented by generated servers),
//! [`Context`], and the serve loop that runs calls concurrently.
//!
//! The serve loop owns the transport. Each `REQUEST` becomes a task running
//! the generated dispatch future; the task puts its answer in a shared outbox
//! and wakes the loop, which flushes answers in batches:
//!
//! | frame in   | state of the call         | what the loop does                           |
//! |------------|---------------------------|----------------------------------------------|
//! | `REQUEST`  | below the concurrency cap | spawns it                                    |
//! | `REQUEST`  | at the cap                | queues it, or answers `Unavailable` if the queue is full |
//! | `REQUEST`  | after `SHUTDOWN`          | answers `Unavailable`                        |
//! | `CANCEL`   | running / queued          | aborts the task / drops it; no answer is sent|
//! | (deadline) | running                   | drops the handler; no answer is sent         |
//! | `SHUTDOWN` | —                         | finishes running and queued calls, then ends |
//! | end of stream | —                      | aborts every call (nobody awaits them), ends |
//!
//! The loop stops reading only while answers cannot be written (the host is
//! not reading them), so its memory stays bounded whatever the host sends.
//!
//! A handler that panics is answered with [`Code::Internal`](crate::Code) and
//! the worker keeps serving. One that outlives its caller's deadline is
//! dropped, which cancels it, and answered with nothing: the caller, whose
//! timeout set the deadline, has already ended the call with
//! [`Error::Timeout`](crate::Error::Timeout).

use std::any::Any;
use std::collections::VecDeque;
use std::fmt;
use std::future::{Future, poll_fn};
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_core::Stream;
use prost::Message;
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use crate::control::{self, Detached, Health, Hello, Welcome};
use crate::error::{FrameError, Status};
use crate::frame::{DEFAULT_MAX_FRAME_LENGTH, Frame, HEADER_LEN, MIN_FRAME_LENGTH};
use crate::idmap::IdMap;
use crate::log::{self, Direction};
use crate::middleware::{
    CallInfo, Chain, DynServerMiddleware, ServerMiddleware, ServerNext, append,
};
use crate::name::MethodName;
use crate::schema::ServiceSchema;
use crate::trace::TraceContext;
use crate::transport::{FrameWriter, Transport};
use crate::window::{ReceiveWindow, SendCredit, Window};

/// A service a worker can serve. Generated `<Service>Server` types implement
/// it; you pass them to a driver or to [`serve_transport`].
///
/// A pair of services is a service too: `(EmbedderServer::new(e),
/// ModelServer::new(m))` serves both from one worker, a call going to the
/// one that has its message name. Nest pairs for more.
pub trait Dispatch: Send + Sync + 'static {
    /// The schema of the service, as generated from its `.proto` (of the
    /// first service, for a pair).
    fn schema(&self) -> &'static ServiceSchema;

    /// Every service served, as the handshake announces them: `schema()`
    /// alone, unless this combines several.
    fn schemas(&self) -> Vec<&'static ServiceSchema> {
        vec![self.schema()]
    }

    /// Whether a call of `method` is one of these services'.
    fn serves(&self, method: &str) -> bool {
        self.schema().method(method).is_some()
    }

    /// Runs one call: decodes the request, calls the handler and encodes its
    /// response. The future owns what it needs and borrows nothing from
    /// `self` (`use<Self>`), so it can run as a task, and the serve loop can
    /// keep one allocation for every call's future.
    fn dispatch(
        &self,
        call: Call,
    ) -> impl Future<Output = Result<Bytes, Status>> + Send + 'static + use<Self>;
}

impl<A: Dispatch, B: Dispatch> Dispatch for (A, B) {
    fn schema(&self) -> &'static ServiceSchema {
        self.0.schema()
    }

    fn schemas(&self) -> Vec<&'static ServiceSchema> {
        let mut schemas = self.0.schemas();
        schemas.extend(self.1.schemas());
        schemas
    }

    fn serves(&self, method: &str) -> bool {
        self.0.serves(method) || self.1.serves(method)
    }

    fn dispatch(
        &self,
        call: Call,
    ) -> impl Future<Output = Result<Bytes, Status>> + Send + 'static + use<A, B> {
        let method = call.context.method();
        if self.0.serves(method) {
            Either::First {
                future: self.0.dispatch(call),
            }
        } else if self.1.serves(method) {
            Either::Second {
                future: self.1.dispatch(call),
            }
        } else {
            let services: Vec<String> = self
                .schemas()
                .iter()
                .map(|schema| {
                    let methods: Vec<&str> = schema.methods().iter().map(|m| m.name()).collect();
                    format!("{} ({})", schema.name(), methods.join(", "))
                })
                .collect();
            let status = Status::unimplemented(format!(
                "{method} is not a method of any service this worker serves: {}",
                services.join("; ")
            ));
            Either::Neither {
                status: Some(status),
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The dispatch future of a pair of services.
    #[project = EitherProjection]
    enum Either<A, B> {
        First { #[pin] future: A },
        Second { #[pin] future: B },
        Neither { status: Option<Status> },
    }
}

impl<A, B> Future for Either<A, B>
where
    A: Future<Output = Result<Bytes, Status>>,
    B: Future<Output = Result<Bytes, Status>>,
{
    type Output = Result<Bytes, Status>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            EitherProjection::First { future } => future.poll(cx),
            EitherProjection::Second { future } => future.poll(cx),
            EitherProjection::Neither { status } => Poll::Ready(Err(status
                .take()
                .unwrap_or_else(|| Status::internal("polled after completion")))),
        }
    }
}

/// An incoming call as handed to [`Dispatch::dispatch`]: the encoded request
/// and its [`Context`].
#[derive(Debug)]
pub struct Call {
    payload: Bytes,
    context: Context,
    streams: CallStreams,
    one_way: bool,
}

impl Call {
    /// A unary call of `context.method()` with an encoded request.
    pub fn new(payload: Bytes, context: Context) -> Call {
        Call {
            payload,
            context,
            streams: CallStreams { stream: None },
            one_way: false,
        }
    }

    /// The encoded request, the call's context, and its streams.
    pub fn into_parts(self) -> (Bytes, Context, CallStreams) {
        (self.payload, self.context, self.streams)
    }
}

/// The streams of a call, if it streams: what generated servers hand to
/// handlers as a [`StreamSender`] or an [`Incoming`] stream.
#[derive(Debug)]
pub struct CallStreams {
    stream: Option<StreamHandle>,
}

#[derive(Clone)]
struct StreamHandle {
    shared: Arc<Shared>,
    id: u64,
    generation: u64,
    request: bool,
    response: bool,
}

impl fmt::Debug for StreamHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamHandle")
            .field("id", &self.id)
            .field("request", &self.request)
            .field("response", &self.response)
            .finish_non_exhaustive()
    }
}

impl CallStreams {
    /// The sender of the call's response stream.
    pub fn sender<T: Message>(&self, cx: &Context) -> Result<StreamSender<T>, Status> {
        match &self.stream {
            Some(handle) if handle.response => Ok(StreamSender {
                handle: handle.clone(),
                method: cx.method.clone(),
                _message: PhantomData,
            }),
            _ => Err(Status::failed_precondition(format!(
                "{} streams its response, but its caller did not ask for a stream",
                cx.method
            ))),
        }
    }

    /// The call's request stream, decoding each message as `request_type`.
    pub fn incoming<T: Message + Default>(
        &self,
        cx: &Context,
        request_type: &'static str,
    ) -> Result<Incoming<T>, Status> {
        match &self.stream {
            Some(handle) if handle.request => Ok(Incoming {
                handle: handle.clone(),
                method: cx.method.clone(),
                request_type,
                done: false,
                _message: PhantomData,
            }),
            _ => Err(Status::failed_precondition(format!(
                "{} takes a stream of requests, but its caller did not send one",
                cx.method
            ))),
        }
    }
}

/// The state of one call's streams, in the serve loop.
struct StreamState {
    generation: u64,
    /// What the handler may still send.
    send: SendCredit,
    /// The handler, waiting for credit.
    sender: Option<Waker>,
    /// The host's `ITEM`s not yet taken by the handler.
    inbound: VecDeque<Bytes>,
    /// The host's request stream has ended.
    ended: bool,
    /// The request stream's window: items received, taken, credited back.
    receive: ReceiveWindow,
    /// The handler, waiting for an item.
    receiver: Option<Waker>,
}

/// Sends a handler's response stream: each [`send`](StreamSender::send)
/// waits until the caller has room for the message, so a slow consumer
/// slows the handler down instead of filling memory.
pub struct StreamSender<T> {
    handle: StreamHandle,
    method: MethodName,
    _message: PhantomData<fn(T)>,
}

impl<T> fmt::Debug for StreamSender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamSender")
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

impl<T: Message> StreamSender<T> {
    /// Sends one message of the stream, once the caller has room for it.
    ///
    /// Fails with `Cancelled` once the caller stops listening (the call was
    /// cancelled or timed out): a handler should then stop.
    pub async fn send(&self, message: T) -> Result<(), Status> {
        let payload = crate::__codegen::encode(&message);
        let handle = &self.handle;
        let size = HEADER_LEN + payload.len();
        if size > handle.shared.max_frame_length {
            return Err(Status::resource_exhausted(format!(
                "a message of {} is {size} bytes, over the maximum frame length of {} bytes",
                self.method, handle.shared.max_frame_length
            )));
        }
        let mut payload = Some(payload);
        let waker = poll_fn(|cx| {
            let mut state = lock(&handle.shared);
            if !state.ended && state.sends_full(cx) {
                return Poll::Pending;
            }
            let Some(stream) = state
                .streams
                .get_mut(&handle.id)
                .filter(|stream| stream.generation == handle.generation)
            else {
                return Poll::Ready(Err(Status::cancelled(format!(
                    "the caller of {} no longer listens",
                    self.method
                ))));
            };
            if !stream.send.ready() {
                stream.sender = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let payload = payload.take().unwrap_or_default();
            stream.send.spend(payload.len());
            state.sent_bytes += payload.len() + SEND_OVERHEAD;
            let item = Frame::Item {
                id: handle.id,
                payload,
            };
            log::frame(Direction::WorkerOut, &item, Some(&self.method));
            state.outbox.push_send(item, handle.id);
            Poll::Ready(Ok(state.link.take()))
        })
        .await?;
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }
}

/// A handler's request stream: the messages its caller sends, in order.
/// Taking them grants the caller room for more.
pub struct Incoming<T> {
    handle: StreamHandle,
    method: MethodName,
    request_type: &'static str,
    done: bool,
    _message: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for Incoming<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming")
            .field("method", &self.method)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<T: Message + Default> Incoming<T> {
    /// The next message, or `None` once the caller's stream has ended.
    pub async fn message(&mut self) -> Result<Option<T>, Status> {
        poll_fn(|cx| Pin::new(&mut *self).poll_next(cx))
            .await
            .transpose()
    }
}

impl<T: Message + Default> Stream for Incoming<T> {
    type Item = Result<T, Status>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let handle = &self.handle;
        let (item, waker) = {
            let mut state = lock(&handle.shared);
            let Some(stream) = state
                .streams
                .get_mut(&handle.id)
                .filter(|stream| stream.generation == handle.generation)
            else {
                drop(state);
                self.done = true;
                return Poll::Ready(None);
            };
            match stream.inbound.pop_front() {
                Some(item) => {
                    // Room is granted in batches of half a window.
                    let credit = stream.receive.take(item.len());
                    let waker = credit.and_then(|(count, bytes)| {
                        let frame = Frame::Credit {
                            id: handle.id,
                            count,
                            bytes,
                        };
                        log::frame(Direction::WorkerOut, &frame, Some(&self.method));
                        state.outbox.push(frame);
                        state.link.take()
                    });
                    (item, waker)
                }
                None if stream.ended => {
                    drop(state);
                    self.done = true;
                    return Poll::Ready(None);
                }
                None => {
                    stream.receiver = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        let message = T::decode(item).map_err(|error| {
            Status::invalid_argument(format!(
                "a message of {}'s request stream did not decode as {}: {error}",
                self.method, self.request_type
            ))
        });
        Poll::Ready(Some(message))
    }
}

/// What a handler knows about the call it is serving.
///
/// ```
/// use workerbus::Context;
///
/// let cx = Context::new("embedder.embed");
/// assert_eq!(cx.method(), "embedder.embed");
/// assert_eq!(cx.attempt(), 1);
/// assert!(cx.deadline().is_none());
/// ```
#[derive(Clone, Debug)]
pub struct Context {
    id: u64,
    method: MethodName,
    deadline: Option<tokio::time::Instant>,
    attempt: u32,
    trace: Option<TraceContext>,
    /// The connection the call came on, for the events its handler sends.
    connection: Option<Weak<Shared>>,
}

impl Context {
    /// A context for calling a handler directly, e.g. in its unit tests:
    /// request id 0, first attempt, no deadline.
    pub fn new(method: impl Into<MethodName>) -> Context {
        Context {
            id: 0,
            method: method.into(),
            deadline: None,
            attempt: 1,
            trace: None,
            connection: None,
        }
    }

    /// Sets the deadline.
    #[must_use]
    pub fn with_deadline(mut self, deadline: Instant) -> Context {
        self.deadline = Some(deadline.into());
        self
    }

    /// The message name of the call, e.g. `embedder.embed`.
    pub fn method(&self) -> &str {
        self.method.as_str()
    }

    /// The message name as a [`MethodName`].
    pub fn method_name(&self) -> &MethodName {
        &self.method
    }

    /// The request id, unique among the calls in flight on this connection.
    pub fn request_id(&self) -> u64 {
        self.id
    }

    /// When the caller stops waiting. The handler is dropped at this instant;
    /// work that runs outside it (e.g. in `spawn_blocking`) can check it.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline.map(tokio::time::Instant::into_std)
    }

    pub(crate) fn tokio_deadline(&self) -> Option<tokio::time::Instant> {
        self.deadline
    }

    /// The time left before the deadline, if there is one.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|deadline| deadline.saturating_duration_since(tokio::time::Instant::now()))
    }

    /// Which attempt this is: 1 for the first, 2 for the first retry...
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The trace the call belongs to, and the caller's span in it, if the
    /// caller sent one (its channel has the [`Logging`](crate::Logging)
    /// middleware).
    pub fn trace(&self) -> Option<TraceContext> {
        self.trace
    }

    /// Where the handler sends events to its host: the connection this call
    /// came on. Generated emitters (`<Service>Emitter::from_context`) wrap
    /// it; it may be kept and used after the call, for as long as the host
    /// stays connected.
    pub fn events(&self) -> EventSink {
        EventSink {
            connection: self.connection.clone(),
            call: self.id,
        }
    }
}

/// Sends events to the host of a connection; see [`Context::events`].
///
/// Each event waits until the host has room for it: the host holds at most
/// its [`Window`] of unread events per connection ([`STREAM_WINDOW`](crate::STREAM_WINDOW)
/// events, and [`STREAM_WINDOW_BYTES`](crate::STREAM_WINDOW_BYTES) plus one
/// event, by default), so a host that does not read slows its worker's
/// events down, never fills memory. Events with nobody subscribed on the host are dropped there.
#[derive(Clone)]
pub struct EventSink {
    connection: Option<Weak<Shared>>,
    /// The call whose handler made the sink: its answer is written after
    /// the events it sent.
    call: u64,
}

impl EventSink {
    /// Sends one event, once the host has room for it. Fails with
    /// `Unavailable` once the host is gone (or for a [`Context::new`] made
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

/// The default cap on calls a worker runs at once.
pub const DEFAULT_MAX_CONCURRENT_CALLS: usize = 1024;

/// The default cap on calls waiting for a free slot.
pub const DEFAULT_MAX_QUEUED_CALLS: usize = 1024;

/// The default limit on the frames a process worker reads from a peer that
/// has not completed the handshake: 4 KiB, room for any greeting (a host's
/// is about 100 bytes).
pub const DEFAULT_MAX_GREETING_FRAME_LENGTH: usize = 4 * 1024;

/// The default time a peer of a process worker's named socket has to
/// complete the handshake before the worker closes its connection.
pub const DEFAULT_GREETING_TIMEOUT: Duration = Duration::from_secs(10);

/// The default number of connections to a process worker's named socket
/// that may wait, at once, to complete the handshake.
pub const DEFAULT_MAX_UNGREETED_CONNECTIONS: usize = 64;

/// Options of a worker's serve loop.
///
/// Besides the serve loop's own limits, a process worker applies three to
/// peers that have not yet completed the handshake (proved that they know
/// the worker's secret): the largest frame it reads from them, and, on its
/// named socket, how long and how many of them may wait.
///
/// ```no_run
/// use std::time::Duration;
/// use workerbus::{Dispatch, ServeOptions};
///
/// async fn worker_main(server: impl Dispatch) -> Result<(), workerbus::Error> {
///     let options = ServeOptions::new()
///         .max_concurrent_calls(64)
///         .max_greeting_frame_length(1024)
///         .greeting_timeout(Duration::from_secs(2))
///         .max_ungreeted_connections(16);
///     workerbus::serve_with_options(server, options).await
/// }
/// ```
#[derive(Clone)]
pub struct ServeOptions {
    max_concurrent_calls: usize,
    max_queued_calls: usize,
    max_frame_length: usize,
    window: Window,
    max_greeting_frame_length: usize,
    greeting_timeout: Duration,
    max_ungreeted_connections: usize,
    middleware: Chain<dyn DynServerMiddleware>,
    /// The driver serving, as middleware sees it.
    driver: &'static str,
}

impl fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServeOptions")
            .field("max_concurrent_calls", &self.max_concurrent_calls)
            .field("max_queued_calls", &self.max_queued_calls)
            .field("max_frame_length", &self.max_frame_length)
            .field("window", &self.window)
            .field("max_greeting_frame_length", &self.max_greeting_frame_length)
            .field("greeting_timeout", &self.greeting_timeout)
            .field("max_ungreeted_connections", &self.max_ungreeted_connections)
            .field(
                "middleware",
                &self.middleware.as_ref().map_or(0, |chain| chain.len()),
            )
            .finish()
    }
}

impl ServeOptions {
    /// The defaults: [1024](DEFAULT_MAX_CONCURRENT_CALLS) concurrent calls,
    /// [1024](DEFAULT_MAX_QUEUED_CALLS) waiting, a
    /// [16 MiB](DEFAULT_MAX_FRAME_LENGTH) maximum frame length; before the
    /// handshake, frames of at most [4 KiB](DEFAULT_MAX_GREETING_FRAME_LENGTH),
    /// [10 s](DEFAULT_GREETING_TIMEOUT) to greet and
    /// [64](DEFAULT_MAX_UNGREETED_CONNECTIONS) connections waiting to.
    pub fn new() -> ServeOptions {
        ServeOptions::default()
    }

    /// How many calls run at once (at least 1). Further requests wait for a
    /// free slot in arrival order; see
    /// [`max_queued_calls`](ServeOptions::max_queued_calls).
    #[must_use]
    pub fn max_concurrent_calls(mut self, max: usize) -> ServeOptions {
        self.max_concurrent_calls = max.max(1);
        self
    }

    /// How many calls may wait for a free slot. A request beyond that is
    /// answered at once with `Unavailable` ("the worker is busy"), which an
    /// idempotent call retries after its backoff; so a flood is shed instead
    /// of filling the worker's memory, and cancellations are still read.
    #[must_use]
    pub fn max_queued_calls(mut self, max: usize) -> ServeOptions {
        self.max_queued_calls = max;
        self
    }

    /// The largest frame the worker sends (at least
    /// [`MIN_FRAME_LENGTH`](crate::MIN_FRAME_LENGTH)); a larger response or
    /// status is replaced by a `ResourceExhausted` status that says so.
    #[must_use]
    pub fn max_frame_length(mut self, max: usize) -> ServeOptions {
        self.max_frame_length = max.max(MIN_FRAME_LENGTH);
        self
    }

    /// The window the worker grants each request stream (default
    /// [`Window::DEFAULT`]: 32 messages and 4 MiB): what it holds at most,
    /// unread by the handler, plus one message.
    #[must_use]
    pub fn window(mut self, window: Window) -> ServeOptions {
        self.window = window;
        self
    }

    /// The largest frame a process worker reads from a peer that has not
    /// completed the handshake (at least
    /// [`MIN_FRAME_LENGTH`](crate::MIN_FRAME_LENGTH), at most the
    /// [maximum frame length](ServeOptions::max_frame_length)). Such a peer
    /// may send nothing but its greeting, and until it has been accepted the
    /// worker reserves no memory ahead of the bytes that arrive: a peer that
    /// has not proved it knows the secret cannot make the worker allocate
    /// what it announces. A longer frame closes the connection with
    /// [`FrameError::GreetingTooLong`].
    #[must_use]
    pub fn max_greeting_frame_length(mut self, max: usize) -> ServeOptions {
        self.max_greeting_frame_length = max.max(MIN_FRAME_LENGTH);
        self
    }

    /// How long a peer of a process worker's named socket has, from the
    /// moment the worker accepts its connection, to complete the handshake;
    /// the worker then closes a connection that has not. (The host that
    /// started the worker, on the socket it was born with, has no such
    /// limit.)
    #[must_use]
    pub fn greeting_timeout(mut self, timeout: Duration) -> ServeOptions {
        self.greeting_timeout = timeout;
        self
    }

    /// How many connections to a process worker's named socket may wait to
    /// complete the handshake at once (at least 1). A connection beyond that
    /// closes the oldest that waits, so that peers holding connections open
    /// without greeting cannot keep a host out: a host greets as soon as it
    /// connects.
    #[must_use]
    pub fn max_ungreeted_connections(mut self, max: usize) -> ServeOptions {
        self.max_ungreeted_connections = max.max(1);
        self
    }
}

#[cfg(feature = "process")]
impl ServeOptions {
    pub(crate) fn max_frame_length_value(&self) -> usize {
        self.max_frame_length
    }

    /// The largest frame read from a peer before its greeting is accepted.
    pub(crate) fn greeting_frame_length_value(&self) -> usize {
        self.max_greeting_frame_length.min(self.max_frame_length)
    }

    pub(crate) fn greeting_timeout_value(&self) -> Duration {
        self.greeting_timeout
    }

    pub(crate) fn max_ungreeted_connections_value(&self) -> usize {
        self.max_ungreeted_connections
    }
}

impl ServeOptions {
    /// Adds a middleware around every handler; the first added is the
    /// outermost.
    #[must_use]
    pub fn middleware(mut self, middleware: impl ServerMiddleware) -> ServeOptions {
        self.middleware = append(&self.middleware, Arc::new(middleware));
        self
    }

    #[cfg(any(feature = "thread", feature = "process"))]
    pub(crate) fn driver(mut self, driver: &'static str) -> ServeOptions {
        self.driver = driver;
        self
    }
}

impl Default for ServeOptions {
    fn default() -> ServeOptions {
        ServeOptions {
            max_concurrent_calls: DEFAULT_MAX_CONCURRENT_CALLS,
            max_queued_calls: DEFAULT_MAX_QUEUED_CALLS,
            max_frame_length: DEFAULT_MAX_FRAME_LENGTH,
            window: Window::DEFAULT,
            max_greeting_frame_length: DEFAULT_MAX_GREETING_FRAME_LENGTH,
            greeting_timeout: DEFAULT_GREETING_TIMEOUT,
            max_ungreeted_connections: DEFAULT_MAX_UNGREETED_CONNECTIONS,
            middleware: None,
            driver: "transport",
        }
    }
}

/// Serves `service` on `transport` until the host closes the connection or
/// asks the worker to shut down. Drivers call this for you; call it yourself
/// to serve a custom transport.
///
/// Returns an error only when the connection breaks: an I/O error, or a frame
/// the host must not send. Calls still running then are cancelled.
///
/// ```no_run
/// use workerbus::{Dispatch, MemoryTransport, ServeOptions, serve_transport};
///
/// async fn serve_in_memory(service: impl Dispatch, worker_end: MemoryTransport) {
///     serve_transport(worker_end, service, ServeOptions::new()).await.unwrap();
/// }
/// ```
pub async fn serve_transport<T: Transport, S: Dispatch>(
    transport: T,
    service: S,
    options: ServeOptions,
) -> Result<(), FrameError> {
    serve_connection(transport, Arc::new(service), &options, None)
        .await
        .map(|_| ())
}

/// How a served connection ended without error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    /// The host asked for a shutdown and every call was answered.
    Shutdown,
    /// The host closed the connection.
    Closed,
}

/// Answers the control exchanges (`$workerbus.*`) of one connection.
pub(crate) trait Control: Send + Sync {
    /// Whether the peer must complete `$workerbus.hello` before anything else.
    fn requires_hello(&self) -> bool;
    /// The handshake; an error refuses the peer, and the connection closes
    /// once the refusal is written.
    fn hello(&self, hello: Hello) -> Result<Welcome, Status>;
    /// Switches the worker to a named socket.
    fn detach(&self) -> Result<Detached, Status>;

    /// The peer asked the worker to shut down: stop accepting new peers now,
    /// before the calls in flight finish.
    fn shutting_down(&self) {}
}

/// Serves one connection: [`serve_transport`] with control exchanges.
pub(crate) async fn serve_connection<T: Transport, S: Dispatch>(
    transport: T,
    service: Arc<S>,
    options: &ServeOptions,
    control: Option<&dyn Control>,
) -> Result<Ending, FrameError> {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        event_room: Notify::new(),
        max_frame_length: options.max_frame_length,
        processed: std::sync::atomic::AtomicU64::new(0),
    });
    // A handler on a current-thread runtime gets its first poll in the serve
    // loop: most answer at once and need no task. On a multi-thread runtime
    // each call is a task, so that handlers run in parallel.
    let inline = tokio::runtime::Handle::try_current().is_ok_and(|runtime| {
        runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread
    });
    let mut server = Server {
        service,
        dispatch: S::dispatch,
        spare: None,
        inline,
        shared,
        transport,
        backlog: VecDeque::new(),
        writer: FrameWriter::default(),
        shutting_down: false,
        max_concurrent: options.max_concurrent_calls,
        max_queued: options.max_queued_calls,
        window: options.window,
        middleware: options.middleware.clone(),
        driver: options.driver,
        greeted: !control.is_some_and(Control::requires_hello),
        refused: None,
        control,
        started: tokio::time::Instant::now(),
    };
    // Dropping the server (here, or with this future) aborts every call.
    poll_fn(|cx| server.poll(cx)).await
}

struct Shared {
    state: Mutex<State>,
    /// Notified when the host returns event credit, and when serving ends.
    event_room: Notify,
    max_frame_length: usize,
    /// Calls whose handler ran to the end (answered, or replaced by a status).
    processed: std::sync::atomic::AtomicU64,
}

/// How long past its deadline a running call must be to count as stalled:
/// its task has not yielded since, so the deadline could not drop it.
const STALL_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// This process's resident memory, on systems that say (Linux's
/// `/proc/self/status`).
fn resident_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kilobytes: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kilobytes * 1024)
}

/// Handlers' sends (stream items, events) wait once about this many bytes
/// of them are queued for the host and not yet taken by the writer: a host
/// that grants credit without reading holds the handler back, not the
/// worker's memory.
const SENDS_HIGH_WATER: usize = 1 << 20;

/// What a queued item or event counts for besides its payload, so that many
/// small ones also reach [`SENDS_HIGH_WATER`].
const SEND_OVERHEAD: usize = 64;

/// Frames queued for the host, in the order the writer takes them: answers
/// (and credit) first, then handlers' sends (stream items, events), so that
/// a flood of large events or items does not hold up every call's answer.
/// A call's answer still goes behind the sends of its own handler queued
/// before it: a stream's items precede its end, and events a handler sent
/// before answering arrive before its answer.
#[derive(Default)]
struct Outbox {
    answers: VecDeque<Frame>,
    sends: VecDeque<Frame>,
    /// The calls with frames in `sends`: their answers queue there too.
    senders: IdMap<()>,
}

impl Outbox {
    /// Queues an answer, a credit or a status.
    fn push(&mut self, frame: Frame) {
        if !self.senders.is_empty() && self.senders.contains_key(&frame.id()) {
            self.sends.push_back(frame);
        } else {
            self.answers.push_back(frame);
        }
    }

    /// Queues a stream item or an event sent by the handler of `call`.
    fn push_send(&mut self, frame: Frame, call: u64) {
        self.senders.insert(call, ());
        self.sends.push_back(frame);
    }

    /// Moves everything queued to the writer's empty buffer, answers first.
    fn take_into(&mut self, sending: &mut VecDeque<Frame>) {
        std::mem::swap(&mut self.answers, sending);
        if !self.sends.is_empty() {
            sending.extend(self.sends.drain(..));
            self.senders.clear();
        }
    }

    fn is_empty(&self) -> bool {
        self.answers.is_empty() && self.sends.is_empty()
    }
}

#[derive(Default)]
struct State {
    outbox: Outbox,
    /// Bytes of handlers' sends in `outbox` (see [`SENDS_HIGH_WATER`]).
    sent_bytes: usize,
    /// Handlers waiting for the writer to take the outbox.
    send_waiters: Vec<Waker>,
    /// The serve loop's waker, present while it waits for work.
    link: Option<Waker>,
    /// Calls running as tasks. A task answers only if it can remove its own
    /// entry; a `CANCEL` that removes it first means no answer is sent. The
    /// generation tells a task's entry from a later call reusing its id.
    running: IdMap<Running>,
    /// The streams of streaming calls, by request id.
    streams: IdMap<StreamState>,
    next_stream: u64,
    /// Tasks aborted (cancelled) that have not ended yet, by generation, with
    /// when they were aborted: a handler blocking its thread cannot be
    /// stopped, and this is how a health check still sees it.
    aborted: IdMap<tokio::time::Instant>,
    /// Calls taken from the backlog and being dispatched, not yet running.
    starting: usize,
    next_generation: u64,
    /// What the worker may still send of its events.
    event_credit: SendCredit,
    /// Serving has ended: events can no longer be sent.
    ended: bool,
}

struct Running {
    generation: u64,
    task: AbortHandle,
    deadline: Option<tokio::time::Instant>,
    method: MethodName,
}

impl State {
    /// Whether a handler's send must wait for the writer to take the
    /// outbox; if so, it is woken when it has.
    fn sends_full(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        if self.sent_bytes < SENDS_HIGH_WATER {
            return false;
        }
        if !self.send_waiters.iter().any(|w| w.will_wake(cx.waker())) {
            self.send_waiters.push(cx.waker().clone());
        }
        true
    }

    /// Removes the entry of the task of `generation`, if it is still there;
    /// wakes the serve loop, which may start a waiting call in its place.
    fn finish(&mut self, id: u64, generation: u64) -> bool {
        match self.running.get(&id) {
            Some(entry) if entry.generation == generation => {
                self.running.remove(&id);
                true
            }
            _ => false,
        }
    }

    /// Takes a running call out to be aborted (by the caller, outside the
    /// lock: its task's end takes the lock too); it stays counted until its
    /// task really ends.
    fn abort(&mut self, id: u64) -> Option<AbortHandle> {
        let entry = self.running.remove(&id)?;
        self.aborted
            .insert(entry.generation, tokio::time::Instant::now());
        Some(entry.task)
    }
}

/// Passed to a call's task (not created inside it), so that it runs
/// however the task ends: finished, aborted, or dropped before it first ran.
struct TaskEnd {
    shared: Arc<Shared>,
    id: u64,
    generation: u64,
    /// The generation of the call's streams, if it streams.
    stream: Option<u64>,
    /// A one-way message: nobody awaits an answer.
    one_way: bool,
}

impl Drop for TaskEnd {
    fn drop(&mut self) {
        let stream = {
            let mut state = lock(&self.shared);
            if state.aborted.remove(&self.generation).is_none() {
                // Dropped without answering (e.g. its runtime shut down).
                state.finish(self.id, self.generation);
            }
            self.stream
        };
        if let Some(generation) = stream {
            close_stream(&self.shared, self.id, Some(generation));
        }
    }
}

/// Forgets the streams of call `id` (of `generation`, if given), waking a
/// handler that waits to send or to receive.
fn close_stream(shared: &Shared, id: u64, generation: Option<u64>) {
    let removed = {
        let mut state = lock(shared);
        match state.streams.get(&id) {
            Some(stream) if generation.is_none_or(|g| g == stream.generation) => {
                state.streams.remove(&id)
            }
            _ => None,
        }
    };
    if let Some(stream) = removed {
        for waker in [stream.sender, stream.receiver].into_iter().flatten() {
            waker.wake();
        }
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    crate::sync::lock(&shared.state)
}

struct Server<'c, S, T, F> {
    service: Arc<S>,
    /// `S::dispatch`, through which the type of its futures is known.
    dispatch: fn(&S, Call) -> F,
    /// The place of a call's future while the serve loop polls it, kept for
    /// the next call when the handler answered at once.
    spare: Option<Pin<Box<Option<F>>>>,
    /// Whether handlers get their first poll in the serve loop.
    inline: bool,
    shared: Arc<Shared>,
    transport: T,
    /// Requests waiting for a free slot, in arrival order.
    backlog: VecDeque<(u64, Call)>,
    writer: FrameWriter,
    shutting_down: bool,
    max_concurrent: usize,
    max_queued: usize,
    /// What the worker grants each request stream.
    window: Window,
    middleware: Chain<dyn DynServerMiddleware>,
    driver: &'static str,
    control: Option<&'c dyn Control>,
    /// Whether the handshake is done (or not required).
    greeted: bool,
    /// Why the peer was refused: the connection closes once that is written.
    refused: Option<String>,
    started: tokio::time::Instant,
}

const READ_BATCH: usize = 128;

impl<S, T, F> Server<'_, S, T, F>
where
    S: Dispatch,
    T: Transport,
    F: Future<Output = Result<Bytes, Status>> + Send + 'static,
{
    fn poll(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<Ending, FrameError>> {
        // Register first, so a task finishing while we work wakes us again.
        {
            let mut state = lock(&self.shared);
            if !state.link.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                state.link = Some(cx.waker().clone());
            }
        }
        // Answers that cannot go out mean the host is not reading: take no
        // more requests until they do, so nothing here grows without bound.
        // Busy handlers never stop reading, or a CANCEL queued behind
        // requests could not reach the calls it is meant for.
        if self.refused.is_some() {
            return self.poll_refusal(cx);
        }
        if self.poll_write(cx)?.is_ready() {
            for read in 0.. {
                if read == READ_BATCH {
                    cx.waker().wake_by_ref();
                    break;
                }
                match Pin::new(&mut self.transport).poll_next(cx) {
                    Poll::Ready(Some(Ok(frame))) => self.receive(frame)?,
                    Poll::Ready(Some(Err(error))) => return Poll::Ready(Err(error)),
                    // The host is gone: nobody is left to answer.
                    Poll::Ready(None) => return Poll::Ready(Ok(Ending::Closed)),
                    Poll::Pending => break,
                }
            }
            let _ = self.poll_write(cx)?;
        }
        // Slots freed by finished calls go to waiting ones, even while the
        // host is slow to read.
        if !self.backlog.is_empty() {
            self.start_backlog();
            let _ = self.poll_write(cx)?;
        }
        if self.refused.is_some() {
            // Refused while reading just now: nothing will wake us for it.
            return self.poll_refusal(cx);
        }
        if self.shutting_down && self.backlog.is_empty() && self.writer.is_idle() {
            let state = lock(&self.shared);
            if state.running.is_empty() && state.outbox.is_empty() {
                drop(state);
                return Pin::new(&mut self.transport)
                    .poll_close(cx)
                    .map_ok(|()| Ending::Shutdown);
            }
        }
        Poll::Pending
    }

    fn receive(&mut self, frame: Frame) -> Result<(), FrameError> {
        if log::enabled() {
            let method = match &frame {
                Frame::Cancel { id } => lock(&self.shared)
                    .running
                    .get(id)
                    .map(|entry| entry.method.clone()),
                _ => None,
            };
            log::frame(Direction::WorkerIn, &frame, method.as_ref());
        }
        if !self.greeted
            && !matches!(&frame, Frame::Request { method, .. } if *method == control::HELLO)
        {
            return Err(FrameError::BeforeHandshake {
                kind: frame.kind_name(),
            });
        }
        match frame {
            Frame::Request {
                id,
                method,
                payload,
                ..
            } if method.starts_with(control::PREFIX) => {
                if self.is_in_flight(id) {
                    return Err(FrameError::DuplicateId { id });
                }
                let answer = self.control_exchange(id, &method, payload);
                log::frame(Direction::WorkerOut, &answer, Some(&method));
                self.queue(answer);
            }
            Frame::Request {
                id,
                method,
                timeout,
                attempt,
                trace,
                request_stream,
                response_stream,
                one_way,
                payload,
            } => {
                let deadline =
                    timeout.and_then(|timeout| tokio::time::Instant::now().checked_add(timeout));
                let context = Context {
                    id,
                    method,
                    deadline,
                    attempt,
                    trace,
                    connection: Some(Arc::downgrade(&self.shared)),
                };
                if self.is_in_flight(id) {
                    return Err(FrameError::DuplicateId { id });
                }
                if self.shutting_down {
                    let status = Status::unavailable(format!(
                        "{} was not started: the worker is shutting down",
                        context.method
                    ));
                    self.refuse(id, one_way, status);
                    return Ok(());
                }
                let mut call = Call::new(payload, context);
                call.one_way = one_way;
                if request_stream || response_stream {
                    call.streams.stream =
                        Some(self.open_stream(id, request_stream, response_stream));
                }
                // Start it now if a slot is free: only calls that really wait
                // count against the queue.
                if self.backlog.is_empty() && self.reserve_slot() {
                    self.start(id, call);
                    return Ok(());
                }
                self.backlog.push_back((id, call));
                self.start_backlog();
                if self.backlog.len() > self.max_queued
                    && let Some((id, call)) = self.backlog.pop_back()
                {
                    let status = Status::unavailable(format!(
                        "{} was not started: the worker is busy ({} calls running, {} waiting)",
                        call.context.method, self.max_concurrent, self.max_queued
                    ));
                    self.close_stream(id);
                    self.refuse(id, call.one_way, status);
                }
            }
            Frame::Cancel { id } => {
                let task = lock(&self.shared).abort(id);
                match task {
                    Some(task) => task.abort(),
                    None => self.backlog.retain(|(queued, _)| *queued != id),
                }
                self.close_stream(id);
            }
            Frame::Item { id, payload } => {
                let mut state = lock(&self.shared);
                // Items for a call that ended (or was cancelled) are late,
                // not wrong.
                if let Some(stream) = state.streams.get_mut(&id) {
                    if stream.ended {
                        return Err(FrameError::Malformed {
                            kind: "ITEM",
                            reason: format!("an item for request {id} after its END"),
                        });
                    }
                    // Items buffered never exceed the window, unless the host
                    // ignored its credit.
                    if let Err(overrun) = stream.receive.receive(payload.len()) {
                        return Err(FrameError::Malformed {
                            kind: "ITEM",
                            reason: format!(
                                "more {} for request {id} than its credit allows",
                                overrun.of("items")
                            ),
                        });
                    }
                    stream.inbound.push_back(payload);
                    if let Some(waker) = stream.receiver.take() {
                        waker.wake();
                    }
                }
            }
            Frame::End { id } => {
                if let Some(stream) = lock(&self.shared).streams.get_mut(&id) {
                    stream.ended = true;
                    if let Some(waker) = stream.receiver.take() {
                        waker.wake();
                    }
                }
            }
            Frame::Credit {
                id: 0,
                count,
                bytes,
            } => {
                lock(&self.shared).event_credit.grant(count, bytes);
                self.shared.event_room.notify_waiters();
            }
            Frame::Credit { id, count, bytes } => {
                if let Some(stream) = lock(&self.shared).streams.get_mut(&id) {
                    stream.send.grant(count, bytes);
                    if let Some(waker) = stream.sender.take() {
                        waker.wake();
                    }
                }
            }
            Frame::Shutdown => {
                self.shutting_down = true;
                if let Some(control) = self.control {
                    control.shutting_down();
                }
            }
            other => {
                return Err(FrameError::Unexpected {
                    kind: other.kind_name(),
                    peer: "host",
                });
            }
        }
        Ok(())
    }

    /// Registers the streams of a streaming call.
    fn open_stream(&self, id: u64, request: bool, response: bool) -> StreamHandle {
        let mut state = lock(&self.shared);
        let generation = state.next_stream;
        state.next_stream += 1;
        state.streams.insert(
            id,
            StreamState {
                generation,
                send: SendCredit::new(),
                sender: None,
                inbound: VecDeque::new(),
                ended: !request,
                receive: ReceiveWindow::new(self.window),
                receiver: None,
            },
        );
        StreamHandle {
            shared: Arc::clone(&self.shared),
            id,
            generation,
            request,
            response,
        }
    }

    /// Forgets a call's streams: its handler's sends fail, its reads end.
    fn close_stream(&self, id: u64) {
        close_stream(&self.shared, id, None);
    }

    /// What a health check reports: see [`HealthReport`](crate::HealthReport).
    fn health(&self) -> Health {
        let now = tokio::time::Instant::now();
        let state = lock(&self.shared);
        let stalled = state
            .running
            .values()
            .filter(|entry| {
                entry
                    .deadline
                    .is_some_and(|deadline| now > deadline + STALL_GRACE)
            })
            .count()
            + state
                .aborted
                .values()
                .filter(|&&since| now > since + STALL_GRACE)
                .count();
        Health {
            memory_bytes: resident_memory().unwrap_or(0),
            processed: self
                .shared
                .processed
                .load(std::sync::atomic::Ordering::Relaxed),
            uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            running: u32::try_from(state.running.len()).unwrap_or(u32::MAX),
            stalled: u32::try_from(stalled).unwrap_or(u32::MAX),
        }
    }

    /// Writes the refusal of a peer that failed the handshake, then ends the
    /// connection: nothing else from that peer is read.
    fn poll_refusal(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Result<Ending, FrameError>> {
        match self.poll_write(cx)? {
            Poll::Ready(()) => Poll::Ready(Err(FrameError::Refused {
                reason: self.refused.take().unwrap_or_default(),
            })),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Answers a control exchange at once, from the runtime.
    fn control_exchange(&mut self, id: u64, method: &MethodName, payload: Bytes) -> Frame {
        if method == control::HEALTH {
            // Every worker, thread or process, answers a health check.
            return Frame::Response {
                id,
                payload: Bytes::from(self.health().encode_to_vec()),
            };
        }
        let Some(control) = self.control else {
            return Frame::Status {
                id,
                status: Status::unimplemented(format!(
                    "{method}: this worker has no control exchanges"
                )),
            };
        };
        let outcome = match method.as_str() {
            // A greeting that does not decode is refused like a wrong one:
            // the peer is answered, then disconnected (PROTOCOL.md 9.2).
            control::HELLO => {
                let greeted = Hello::decode(payload)
                    .map_err(|error| Status::invalid_argument(format!("{method}: {error}")))
                    .and_then(|hello| control.hello(hello));
                match greeted {
                    Ok(welcome) => {
                        self.greeted = true;
                        Ok(welcome.encode_to_vec())
                    }
                    Err(status) => {
                        self.refused = Some(status.to_string());
                        Err(status)
                    }
                }
            }
            control::DETACH => control.detach().map(|detached| detached.encode_to_vec()),
            _ => Err(Status::unimplemented(format!(
                "{method} is not a control exchange this worker knows"
            ))),
        };
        match outcome {
            Ok(payload) => Frame::Response {
                id,
                payload: Bytes::from(payload),
            },
            Err(status) => Frame::Status { id, status },
        }
    }

    fn answer(&self, frame: Frame) {
        log::frame(Direction::WorkerOut, &frame, None);
        self.queue(frame);
    }

    /// Answers a call that was not started with `status`; a one-way message
    /// gets no answer, so its loss is logged instead.
    fn refuse(&self, id: u64, one_way: bool, status: Status) {
        if one_way {
            tracing::warn!(id, %status, "one-way message dropped");
        } else {
            self.answer(Frame::Status { id, status });
        }
    }

    fn queue(&self, frame: Frame) {
        let frame = fit(frame, self.shared.max_frame_length);
        lock(&self.shared).outbox.push(frame);
    }

    /// Whether a request with this id is running or waiting. A second
    /// request with the id of one in flight would make its answer ambiguous.
    fn is_in_flight(&self, id: u64) -> bool {
        self.backlog.iter().any(|(queued, _)| *queued == id)
            || lock(&self.shared).running.contains_key(&id)
    }

    fn start_backlog(&mut self) {
        while !self.backlog.is_empty() {
            if !self.reserve_slot() {
                return;
            }
            let Some((id, call)) = self.backlog.pop_front() else {
                lock(&self.shared).starting -= 1;
                return;
            };
            self.start(id, call);
        }
    }

    /// Takes a slot for a call about to start, if one is free: counted as
    /// `starting` until the call runs or has answered.
    fn reserve_slot(&mut self) -> bool {
        let mut state = lock(&self.shared);
        if state.running.len() + state.starting >= self.max_concurrent {
            return false;
        }
        state.starting += 1;
        true
    }

    /// Starts a call whose slot is reserved: answers it at once if its
    /// handler does, else runs it as a task.
    fn start(&mut self, id: u64, call: Call) {
        let method = call.context.method.clone();
        let deadline = call.context.deadline;
        let stream_generation = call.streams.stream.as_ref().map(|handle| handle.generation);
        let one_way = call.one_way;
        let info = self
            .middleware
            .as_ref()
            .map(|_| CallInfo::worker(&call.context, self.driver, call.payload.len()));
        if deadline.is_some_and(|deadline| deadline <= tokio::time::Instant::now()) {
            // Its caller gave up while it waited; answer nothing, as at
            // any deadline.
            tracing::debug!(%method, id, "dropped unstarted: its deadline passed while it waited");
            lock(&self.shared).starting -= 1;
            self.close_stream(id);
            return;
        }
        // Outside the lock: a hand-written `Dispatch` is user code, and a
        // panic here is answered like a handler's.
        let inline = self.inline && self.middleware.is_none() && stream_generation.is_none();
        let future = if inline {
            match self.poll_inline(call) {
                Ok(outcome) => {
                    let frame = answer_of(&self.shared, id, &method, one_way, outcome);
                    let mut state = lock(&self.shared);
                    state.starting -= 1;
                    if !one_way {
                        log::frame(Direction::WorkerOut, &frame, Some(&method));
                        state.outbox.push(frame);
                    }
                    return;
                }
                Err(started) => Either::First { future: started },
            }
        } else {
            let dispatch = self.dispatch;
            let dispatched =
                std::panic::catch_unwind(AssertUnwindSafe(|| dispatch(&self.service, call)));
            match dispatched {
                Ok(future) => Either::Second { future },
                Err(panic) => {
                    lock(&self.shared).starting -= 1;
                    let message = panic_message(&*panic);
                    tracing::error!(%method, id, panic = %message, "dispatch panicked");
                    let status =
                        Status::internal(format!("the handler for {method} panicked: {message}"));
                    // As for a handler's panic: its streams end, and a one-way
                    // message is not answered.
                    self.close_stream(id);
                    self.refuse(id, one_way, status);
                    return;
                }
            }
        };
        let mut state = lock(&self.shared);
        state.starting -= 1;
        let generation = state.next_generation;
        state.next_generation += 1;
        // Spawned under the lock, so the task cannot finish and look for
        // its entry before the entry exists.
        let end = TaskEnd {
            shared: Arc::clone(&self.shared),
            id,
            generation,
            stream: stream_generation,
            one_way,
        };
        let info_method = method.clone();
        let task = match (&self.middleware, info) {
            (Some(chain), Some(info)) => {
                let chain = Arc::clone(chain);
                let handled =
                    async move { ServerNext::new(&chain, &info, Box::pin(future)).run().await };
                tokio::spawn(run_call(end, method, deadline, handled))
            }
            _ => tokio::spawn(run_call(end, method, deadline, future)),
        };
        state.running.insert(
            id,
            Running {
                generation,
                task: task.abort_handle(),
                deadline,
                method: info_method,
            },
        );
    }

    /// Dispatches a call and polls its handler once, in a reused place: its
    /// outcome if it answered at once (or panicked), else the handler, to go
    /// on in a task.
    fn poll_inline(&mut self, call: Call) -> Result<Outcome, Started<F>> {
        let mut place = self.spare.take().unwrap_or_else(|| Box::pin(None));
        let (dispatch, service) = (self.dispatch, &self.service);
        // The waker of this first poll is never woken for anything: a
        // handler that waits is polled again at once by its task.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        // Unwind safety: after a panic the future is dropped, not polled.
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| {
            // Made in its place: a handler's future may be large.
            place.set(Some(dispatch(service, call)));
            match place.as_mut().as_pin_mut() {
                Some(future) => future.poll(&mut cx),
                None => Poll::Pending,
            }
        }));
        let outcome = match polled {
            Ok(Poll::Pending) => return Err(Started { place }),
            Ok(Poll::Ready(outcome)) => Ok(outcome),
            Err(panic) => Err(panic),
        };
        place.set(None);
        self.spare = Some(place);
        Ok(outcome)
    }

    /// Writes and flushes queued answers; `Pending` while some cannot be
    /// written yet (the transport will wake us).
    fn poll_write(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), FrameError>> {
        let shared = &self.shared;
        self.writer
            .poll_write(&mut self.transport, cx, |sending, _| {
                let waiters = {
                    let mut state = lock(shared);
                    state.outbox.take_into(sending);
                    state.sent_bytes = 0;
                    std::mem::take(&mut state.send_waiters)
                };
                waiters.into_iter().for_each(Waker::wake);
            })
    }
}

async fn run_call<F>(
    end: TaskEnd,
    method: MethodName,
    deadline: Option<tokio::time::Instant>,
    future: F,
) where
    F: Future<Output = Result<Bytes, Status>> + Send + 'static,
{
    let (shared, id, generation) = (Arc::clone(&end.shared), end.id, end.generation);
    let one_way = end.one_way;
    let guarded = CatchUnwind { future };
    let outcome = match deadline {
        Some(deadline) => match tokio::time::timeout_at(deadline, guarded).await {
            Ok(outcome) => outcome,
            Err(_) => {
                // The caller set this deadline and its own timer ends the
                // call there; an answer could only race that timer. Drop the
                // handler (cancelling it) and answer nothing, as for CANCEL.
                if one_way {
                    tracing::warn!(%method, id, "one-way message cancelled at its deadline");
                } else {
                    tracing::debug!(%method, id, "cancelled at its deadline");
                }
                let waker = {
                    let mut state = lock(&shared);
                    state.finish(id, generation);
                    state.link.take()
                };
                // A waiting call can take the slot, or a shutdown complete.
                if let Some(waker) = waker {
                    waker.wake();
                }
                return;
            }
        },
        None => guarded.await,
    };
    let frame = answer_of(&shared, id, &method, one_way, outcome);
    let waker = {
        let mut state = lock(&shared);
        if !state.finish(id, generation) {
            return; // cancelled: the caller no longer waits
        }
        if one_way {
            // No answer, but the slot is free: a waiting call may start.
            state.link.take()
        } else {
            log::frame(Direction::WorkerOut, &frame, Some(&method));
            state.outbox.push(frame);
            state.link.take()
        }
    };
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// How a handler ended: its answer, or the payload of its panic.
type Outcome = Result<Result<Bytes, Status>, Box<dyn Any + Send>>;

/// The frame that answers call `id` from its handler's outcome (counted as
/// processed); a one-way message's failure is logged here, as nobody hears
/// its answer.
fn answer_of(
    shared: &Shared,
    id: u64,
    method: &MethodName,
    one_way: bool,
    outcome: Outcome,
) -> Frame {
    let frame = match outcome {
        Ok(Ok(payload)) => {
            let size = HEADER_LEN + payload.len();
            if size > shared.max_frame_length {
                Frame::Status {
                    id,
                    status: Status::resource_exhausted(format!(
                        "the response to {method} is {size} bytes, over the maximum frame length of {} bytes",
                        shared.max_frame_length
                    )),
                }
            } else {
                Frame::Response { id, payload }
            }
        }
        Ok(Err(status)) => Frame::Status { id, status },
        Err(panic) => {
            let message = panic_message(&*panic);
            tracing::error!(%method, id, panic = %message, "handler panicked");
            Frame::Status {
                id,
                status: Status::internal(format!("the handler for {method} panicked: {message}")),
            }
        }
    };
    shared
        .processed
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let frame = fit(frame, shared.max_frame_length);
    if one_way && let Frame::Status { status, .. } = &frame {
        // Nobody hears the answer of a one-way message; its failure is
        // logged here instead.
        tracing::warn!(%method, id, %status, "one-way message failed");
    }
    frame
}

/// A handler that did not answer at its first poll in the serve loop, in
/// the place it was polled in, to go on in a task.
struct Started<F> {
    place: Pin<Box<Option<F>>>,
}

impl<F: Future<Output = Result<Bytes, Status>>> Future for Started<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
        match self.place.as_mut().as_pin_mut() {
            Some(future) => future.poll(cx),
            // Only a started handler is ever put here.
            None => Poll::Ready(Err(Status::internal("the call's handler was lost"))),
        }
    }
}

/// A status too large for a frame (a huge message or details) would break
/// the connection on a byte stream; replace it by one that says so, and by a
/// bare code if even that does not fit.
fn fit(frame: Frame, max: usize) -> Frame {
    let size = frame.encoded_len();
    if size <= max {
        return frame;
    }
    let Frame::Status { id, status } = frame else {
        return frame; // responses are checked where they are made
    };
    let replacement = Frame::Status {
        id,
        status: Status::resource_exhausted(format!(
            "a {} status of {size} bytes was replaced: over the maximum frame length of {max} bytes",
            status.code()
        )),
    };
    if replacement.encoded_len() <= max {
        return replacement;
    }
    Frame::Status {
        id,
        status: Status::new(crate::error::Code::ResourceExhausted, ""),
    }
}

/// The text of a panic payload: the `&str` or `String` given to `panic!`.
pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(message) = panic.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message.clone()
    } else {
        "a non-string panic payload".to_owned()
    }
}

pin_project_lite::pin_project! {
    /// Turns a panic inside `future` into an `Err` with the panic's payload.
    struct CatchUnwind<F> {
        #[pin]
        future: F,
    }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let future = self.project().future;
        // Unwind safety: after a panic the future is never polled again; it
        // is dropped with the task.
        match std::panic::catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

impl<S, T, F> Server<'_, S, T, F> {
    fn abort_all(&mut self) {
        self.backlog.clear();
        let running: Vec<AbortHandle> = lock(&self.shared)
            .running
            .drain()
            .map(|(_, entry)| entry.task)
            .collect();
        for task in running {
            task.abort();
        }
    }
}

impl<S, T, F> Drop for Server<'_, S, T, F> {
    /// Whether the loop ended or its future was dropped, no call outlives it.
    fn drop(&mut self) {
        let waiters = {
            let mut state = lock(&self.shared);
            state.ended = true;
            std::mem::take(&mut state.send_waiters)
        };
        waiters.into_iter().for_each(Waker::wake);
        self.shared.event_room.notify_waiters();
        self.abort_all();
    }
}

impl<S, T, F> fmt::Debug for Server<'_, S, T, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("queued", &self.backlog.len())
            .field("shutting_down", &self.shutting_down)
            .finish_non_exhaustive()
    }
}
