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
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::task::AbortHandle;

use crate::error::{FrameError, Status};
use crate::frame::{DEFAULT_MAX_FRAME_LENGTH, Frame, HEADER_LEN, MIN_FRAME_LENGTH};
use crate::idmap::IdMap;
use crate::name::MethodName;
use crate::schema::ServiceSchema;
use crate::transport::{FrameWriter, Transport};

/// A service a worker can serve. Generated `<Service>Server` types implement
/// it; you pass them to a driver or to [`serve_transport`].
pub trait Dispatch: Send + Sync + 'static {
    /// The schema of the service, as generated from its `.proto`.
    fn schema(&self) -> &'static ServiceSchema;

    /// Runs one call: decodes the request, calls the handler and encodes its
    /// response. The future owns what it needs, so it can run as a task.
    fn dispatch(&self, call: Call) -> impl Future<Output = Result<Bytes, Status>> + Send + 'static;
}

/// An incoming call as handed to [`Dispatch::dispatch`]: the encoded request
/// and its [`Context`].
#[derive(Debug)]
pub struct Call {
    payload: Bytes,
    context: Context,
}

impl Call {
    /// A call of `context.method()` with an encoded request.
    pub fn new(payload: Bytes, context: Context) -> Call {
        Call { payload, context }
    }

    /// The encoded request and the call's context.
    pub fn into_parts(self) -> (Bytes, Context) {
        (self.payload, self.context)
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

    /// The time left before the deadline, if there is one.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|deadline| deadline.saturating_duration_since(tokio::time::Instant::now()))
    }

    /// Which attempt this is: 1 for the first, 2 for the first retry...
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

/// The default cap on calls a worker runs at once.
pub const DEFAULT_MAX_CONCURRENT_CALLS: usize = 1024;

/// The default cap on calls waiting for a free slot.
pub const DEFAULT_MAX_QUEUED_CALLS: usize = 1024;

/// Options of a worker's serve loop.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    max_concurrent_calls: usize,
    max_queued_calls: usize,
    max_frame_length: usize,
}

impl ServeOptions {
    /// The defaults: [1024](DEFAULT_MAX_CONCURRENT_CALLS) concurrent calls,
    /// [1024](DEFAULT_MAX_QUEUED_CALLS) waiting, and a
    /// [16 MiB](DEFAULT_MAX_FRAME_LENGTH) maximum frame length.
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
}

impl Default for ServeOptions {
    fn default() -> ServeOptions {
        ServeOptions {
            max_concurrent_calls: DEFAULT_MAX_CONCURRENT_CALLS,
            max_queued_calls: DEFAULT_MAX_QUEUED_CALLS,
            max_frame_length: DEFAULT_MAX_FRAME_LENGTH,
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
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        max_frame_length: options.max_frame_length,
    });
    let mut server = Server {
        service,
        shared,
        transport,
        backlog: VecDeque::new(),
        writer: FrameWriter::default(),
        shutting_down: false,
        max_concurrent: options.max_concurrent_calls,
        max_queued: options.max_queued_calls,
    };
    let result = poll_fn(|cx| server.poll(cx)).await;
    server.abort_all();
    result
}

struct Shared {
    state: Mutex<State>,
    max_frame_length: usize,
}

#[derive(Default)]
struct State {
    outbox: VecDeque<Frame>,
    /// The serve loop's waker, present while it waits for work.
    link: Option<Waker>,
    /// Calls running as tasks. A task answers only if it can remove its own
    /// entry; a `CANCEL` that removes it first means no answer is sent.
    running: IdMap<AbortHandle>,
}

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared.state.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Server<S, T> {
    service: S,
    shared: Arc<Shared>,
    transport: T,
    /// Requests waiting for a free slot, in arrival order.
    backlog: VecDeque<(u64, Call)>,
    writer: FrameWriter,
    shutting_down: bool,
    max_concurrent: usize,
    max_queued: usize,
}

const READ_BATCH: usize = 128;

impl<S: Dispatch, T: Transport> Server<S, T> {
    fn poll(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), FrameError>> {
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
                    Poll::Ready(None) => return Poll::Ready(Ok(())),
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
        if self.shutting_down && self.backlog.is_empty() && self.writer.is_idle() {
            let state = lock(&self.shared);
            if state.running.is_empty() && state.outbox.is_empty() {
                drop(state);
                return Pin::new(&mut self.transport).poll_close(cx);
            }
        }
        Poll::Pending
    }

    fn receive(&mut self, frame: Frame) -> Result<(), FrameError> {
        match frame {
            Frame::Request {
                id,
                method,
                timeout,
                attempt,
                payload,
            } => {
                let deadline =
                    timeout.and_then(|timeout| tokio::time::Instant::now().checked_add(timeout));
                let context = Context {
                    id,
                    method,
                    deadline,
                    attempt,
                };
                if self.is_in_flight(id) {
                    return Err(FrameError::DuplicateId { id });
                }
                if self.shutting_down {
                    let status = Status::unavailable(format!(
                        "{} was not started: the worker is shutting down",
                        context.method
                    ));
                    self.answer(Frame::Status { id, status });
                    return Ok(());
                }
                self.backlog.push_back((id, Call::new(payload, context)));
                // Start it now if a slot is free: only calls that really wait
                // count against the queue.
                self.start_backlog();
                if self.backlog.len() > self.max_queued
                    && let Some((id, call)) = self.backlog.pop_back()
                {
                    let status = Status::unavailable(format!(
                        "{} was not started: the worker is busy ({} calls running, {} waiting)",
                        call.context.method, self.max_concurrent, self.max_queued
                    ));
                    self.answer(Frame::Status { id, status });
                }
            }
            Frame::Cancel { id } => {
                let running = lock(&self.shared).running.remove(&id);
                match running {
                    Some(task) => task.abort(),
                    None => self.backlog.retain(|(queued, _)| *queued != id),
                }
            }
            Frame::Shutdown => self.shutting_down = true,
            other => {
                return Err(FrameError::Unexpected {
                    kind: other.kind_name(),
                    peer: "host",
                });
            }
        }
        Ok(())
    }

    fn answer(&self, frame: Frame) {
        let frame = fit(frame, self.shared.max_frame_length);
        lock(&self.shared).outbox.push_back(frame);
    }

    /// Whether a request with this id is running or waiting. A second
    /// request with the id of one in flight would make its answer ambiguous.
    fn is_in_flight(&self, id: u64) -> bool {
        self.backlog.iter().any(|(queued, _)| *queued == id)
            || lock(&self.shared).running.contains_key(&id)
    }

    fn start_backlog(&mut self) {
        if self.backlog.is_empty() {
            return;
        }
        let mut state = lock(&self.shared);
        while state.running.len() < self.max_concurrent {
            let Some((id, call)) = self.backlog.pop_front() else {
                break;
            };
            let method = call.context.method.clone();
            let deadline = call.context.deadline;
            if deadline.is_some_and(|deadline| deadline <= tokio::time::Instant::now()) {
                // Its caller gave up while it waited; answer nothing, as at
                // any deadline.
                tracing::debug!(%method, id, "dropped unstarted: its deadline passed while it waited");
                continue;
            }
            let future = self.service.dispatch(call);
            // Spawned under the lock, so the task cannot finish and look for
            // its entry before the entry exists.
            let task = tokio::spawn(run_call(
                Arc::clone(&self.shared),
                id,
                method,
                deadline,
                future,
            ));
            state.running.insert(id, task.abort_handle());
        }
    }

    /// Writes and flushes queued answers; `Pending` while some cannot be
    /// written yet (the transport will wake us).
    fn poll_write(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), FrameError>> {
        let shared = &self.shared;
        self.writer
            .poll_write(&mut self.transport, cx, |sending, _| {
                std::mem::swap(&mut lock(shared).outbox, sending);
            })
    }

    fn abort_all(&mut self) {
        self.backlog.clear();
        let running: Vec<AbortHandle> = lock(&self.shared)
            .running
            .drain()
            .map(|(_, task)| task)
            .collect();
        for task in running {
            task.abort();
        }
    }
}

async fn run_call<F>(
    shared: Arc<Shared>,
    id: u64,
    method: MethodName,
    deadline: Option<tokio::time::Instant>,
    future: F,
) where
    F: Future<Output = Result<Bytes, Status>> + Send + 'static,
{
    let guarded = CatchUnwind { future };
    let outcome = match deadline {
        Some(deadline) => match tokio::time::timeout_at(deadline, guarded).await {
            Ok(outcome) => outcome,
            Err(_) => {
                // The caller set this deadline and its own timer ends the
                // call there; an answer could only race that timer. Drop the
                // handler (cancelling it) and answer nothing, as for CANCEL.
                tracing::debug!(%method, id, "cancelled at its deadline");
                lock(&shared).running.remove(&id);
                return;
            }
        },
        None => guarded.await,
    };
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
    let frame = fit(frame, shared.max_frame_length);
    let waker = {
        let mut state = lock(&shared);
        if state.running.remove(&id).is_none() {
            return; // cancelled: the caller no longer waits
        }
        state.outbox.push_back(frame);
        state.link.take()
    };
    if let Some(waker) = waker {
        waker.wake();
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

impl<S, T> fmt::Debug for Server<S, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("queued", &self.backlog.len())
            .field("shutting_down", &self.shutting_down)
            .finish_non_exhaustive()
    }
}
