//! The serve loop: reads frames, starts calls (at once, or in order once a
//! slot frees), writes their answers, and ends on `SHUTDOWN` or the host's
//! end of stream.

use std::collections::VecDeque;
use std::fmt;
use std::future::{Future, poll_fn};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Poll, Waker};

use tokio::sync::Notify;

use crate::context::Connection;
use crate::control::Control;
use crate::error::{FrameError, Status};
use crate::frame::Frame;
use crate::log::{self, Direction};
use crate::middleware::{CallInfo, ServerNext, WorkerChain};
use crate::panic::panic_message;
use crate::payload::Payload;
use crate::schema::MethodKind;
use crate::transport::{FrameWriter, Transport};
use crate::window::Window;

use super::call::{Outcome, Started, TaskEnd, answer_of, fit, queue_answer, run_call};
use super::dispatch::Either;
use super::dispatch::{Call, Dispatch};
use super::options::ServeOptions;
use super::state::{Running, Shared, State, lock};

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
        dispatching: std::sync::atomic::AtomicU64::new(0),
    });
    // A handler on a current-thread runtime gets its first poll in the serve
    // loop: most answer at once and need no task. On a multi-thread runtime
    // each call is a task, so that handlers run in parallel.
    let inline = tokio::runtime::Handle::try_current().is_ok_and(|runtime| {
        runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread
    });
    let mut server = Server {
        service,
        // A closure, not a function pointer: its call is direct, so a
        // handler's future is made where it goes rather than moved there.
        dispatch: |service: &S, call: Call| service.dispatch(call),
        spare: None,
        inline,
        outlet: Arc::downgrade(&shared) as Weak<dyn Connection>,
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
        greeted: control.and_then(|control| control.greeting()).is_none(),
        refused: None,
        control,
        started: tokio::time::Instant::now(),
    };
    // Dropping the server (here, or with this future) aborts every call.
    poll_fn(|cx| server.poll(cx)).await
}

pub(super) struct Server<'c, S, T, F, D> {
    pub(super) service: Arc<S>,
    /// `S::dispatch`, through which the type of its futures is known.
    pub(super) dispatch: D,
    /// The place of a call's future while the serve loop polls it, kept for
    /// the next call when the handler answered at once.
    pub(super) spare: Option<Pin<Box<Option<F>>>>,
    /// Whether handlers get their first poll in the serve loop.
    pub(super) inline: bool,
    pub(super) shared: Arc<Shared>,
    /// `shared`, as the connection a call's events go to: cloned for each
    /// call's context (cheaper than a downgrade each time).
    pub(super) outlet: Weak<dyn Connection>,
    pub(super) transport: T,
    /// Requests waiting for a free slot, in arrival order.
    pub(super) backlog: VecDeque<(u64, Call)>,
    pub(super) writer: FrameWriter,
    pub(super) shutting_down: bool,
    pub(super) max_concurrent: usize,
    pub(super) max_queued: usize,
    /// What the worker grants each request stream.
    pub(super) window: Window,
    pub(super) middleware: WorkerChain,
    pub(super) driver: &'static str,
    pub(super) control: Option<&'c dyn Control>,
    /// Whether the handshake is done (or not required).
    pub(super) greeted: bool,
    /// Why the peer was refused: the connection closes once that is written.
    pub(super) refused: Option<String>,
    pub(super) started: tokio::time::Instant,
}

pub(super) const READ_BATCH: usize = 128;

impl<S, T, F, D> Drop for Server<'_, S, T, F, D> {
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

impl<S, T, F, D> fmt::Debug for Server<'_, S, T, F, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("queued", &self.backlog.len())
            .field("shutting_down", &self.shutting_down)
            .finish_non_exhaustive()
    }
}

impl<S, T, F, D> Server<'_, S, T, F, D>
where
    S: Dispatch,
    T: Transport,
    F: Future<Output = Result<Payload, Status>> + Send + 'static,
    D: Fn(&S, Call) -> F + Copy,
{
    pub(super) fn poll(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Result<Ending, FrameError>> {
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

    pub(super) fn answer(&self, frame: Frame) {
        log::frame(Direction::WorkerOut, &frame, None);
        self.queue(frame);
    }

    /// Answers a call that was not started with `status`; a one-way message
    /// gets no answer, so its loss is logged instead.
    pub(super) fn refuse(&self, id: u64, kind: MethodKind, status: Status) {
        if kind.is_one_way() {
            tracing::warn!(id, %status, "one-way message dropped");
        } else {
            self.answer(Frame::Status { id, status });
        }
    }

    pub(super) fn queue(&self, frame: Frame) {
        let frame = fit(frame, self.shared.max_frame_length);
        lock(&self.shared).outbox.push(frame);
    }

    /// Admits a request with this id, under one lock: `None` if one with
    /// the id is running or waiting (a second would make its answer
    /// ambiguous), else whether a slot was reserved for it, which is done
    /// when one is free and no call waits before it.
    pub(super) fn admit(&self, id: u64) -> Option<bool> {
        if self.backlog.iter().any(|(queued, _)| *queued == id) {
            return None;
        }
        let mut state = lock(&self.shared);
        if state.running.contains_key(&id) {
            return None;
        }
        let free =
            self.backlog.is_empty() && state.running.len() + state.starting < self.max_concurrent;
        if free {
            state.starting += 1;
        }
        Some(free)
    }

    /// Gives back a slot reserved for a call that will not start.
    pub(super) fn release_slot(&self) {
        lock(&self.shared).starting -= 1;
    }

    pub(super) fn start_backlog(&mut self) {
        while !self.backlog.is_empty() {
            if !self.reserve_slot() {
                return;
            }
            let Some((id, call)) = self.backlog.pop_front() else {
                lock(&self.shared).starting -= 1;
                return;
            };
            self.start(id, call, None);
        }
    }

    /// Takes a slot for a call about to start, if one is free: counted as
    /// `starting` until the call runs or has answered.
    pub(super) fn reserve_slot(&mut self) -> bool {
        let mut state = lock(&self.shared);
        if state.running.len() + state.starting >= self.max_concurrent {
            return false;
        }
        state.starting += 1;
        true
    }

    /// Starts a call whose slot is reserved: answers it at once if its
    /// handler does, else runs it as a task. `now` is the time its deadline
    /// was reckoned from, if it starts as it arrives.
    pub(super) fn start(&mut self, id: u64, call: Call, now: Option<tokio::time::Instant>) {
        let method = call.context.method.clone();
        let deadline = call.context.deadline;
        let stream_generation = call.streams.stream.as_ref().map(|handle| handle.generation);
        let kind = call.kind;
        let info = self
            .middleware
            .as_ref()
            .map(|_| CallInfo::worker(&call.context, self.driver, call.payload.len()));
        if deadline
            .is_some_and(|deadline| deadline <= now.unwrap_or_else(tokio::time::Instant::now))
        {
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
        // In hand from here: a handler may ask for its cancellation at once.
        self.shared.dispatching.store(id, Ordering::Relaxed);
        let future = if inline {
            match self.poll_inline(call) {
                Ok(outcome) => {
                    self.shared.dispatching.store(0, Ordering::Relaxed);
                    let frame = answer_of(&self.shared, id, &method, kind, outcome);
                    let mut state = lock(&self.shared);
                    state.starting -= 1;
                    let reply = state.take_reply(id);
                    // Answered: a token it asked for never fires.
                    state.dispatched = None;
                    if !kind.is_one_way() {
                        queue_answer(&mut state, &self.shared, &method, reply, frame);
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
                    self.shared.dispatching.store(0, Ordering::Relaxed);
                    {
                        let mut state = lock(&self.shared);
                        state.starting -= 1;
                        // Answered (as a handler's panic is): a token asked
                        // for never fires.
                        state.dispatched = None;
                    }
                    let message = panic_message(&*panic);
                    tracing::error!(%method, id, panic = %message, "dispatch panicked");
                    let status =
                        Status::internal(format!("the handler for {method} panicked: {message}"));
                    // As for a handler's panic: its streams end, and a one-way
                    // message is not answered.
                    self.close_stream(id);
                    self.refuse(id, kind, status);
                    return;
                }
            }
        };
        self.shared.dispatching.store(0, Ordering::Relaxed);
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
            kind,
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
        let cancel = state.dispatched.take();
        state.running.insert(
            id,
            Running {
                generation,
                task: task.abort_handle(),
                deadline,
                method: info_method,
                cancel,
            },
        );
    }

    /// Dispatches a call and polls its handler once, in a reused place: its
    /// outcome if it answered at once (or panicked), else the handler, to go
    /// on in a task.
    pub(super) fn poll_inline(&mut self, call: Call) -> Result<Outcome, Started<F>> {
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
    pub(super) fn poll_write(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Result<(), FrameError>> {
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

impl<S, T, F, D> Server<'_, S, T, F, D> {
    /// Aborts every call, and fires the cancellation of those whose handler
    /// asked for one: nobody is left to answer.
    pub(super) fn abort_all(&mut self) {
        self.backlog.clear();
        let running: Vec<Running> = lock(&self.shared)
            .running
            .drain()
            .map(|(_, entry)| entry)
            .collect();
        for entry in running {
            entry.task.abort();
            entry.fire();
        }
    }
}
