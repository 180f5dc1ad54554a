//! The pending table: a connection's shared state, a call's slot in it from
//! the moment it is sent until its caller takes the outcome or gives up, and
//! what withdraws a call the caller gave up on.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::{Error, ExitReason, FrameError, Status};
use crate::event::EventHub;
use crate::frame::Frame;
use crate::idmap::SeqIdMap;
use crate::log::{self, Direction};
use crate::metadata::{Metadata, ResponseMetadata};
use crate::name::MethodName;
use crate::payload::Payload;
use crate::schema::MethodKind;
use crate::trace::TraceContext;
use crate::window::{ReceiveWindow, SendCredit, Window};

use super::deadline::{Deadlines, due_at};

pub(super) struct Shared {
    pub(super) state: Mutex<State>,
    /// This connection, for the credit of the events it delivers.
    pub(super) this: std::sync::Weak<Shared>,
    /// The driver behind the connection, as middleware sees it.
    pub(super) driver: &'static str,
    pub(super) max_frame_length: usize,
    /// Metadata sent with every call, before the call's own.
    pub(super) metadata: Metadata,
    pub(super) max_in_flight: usize,
    pub(super) max_queued_bytes: usize,
    /// What the host grants each response stream and the events.
    pub(super) window: Window,
    /// Notified when the connection closes, and when room frees up for
    /// callers that wait for it.
    pub(super) changed: Notify,
}

pub(super) struct State {
    pub(super) next_id: u64,
    pub(super) calls: SeqIdMap<Slot>,
    pub(super) outbox: std::collections::VecDeque<Frame>,
    /// Payload bytes in `outbox`: what the link has not taken yet.
    pub(super) queued_bytes: usize,
    /// Some caller waits for room (in-flight or queued bytes).
    pub(super) waiting: bool,
    /// The link task's waker, present while it waits for work.
    pub(super) link: Option<Waker>,
    /// The connection ended and the link waits to learn how: new calls wait
    /// for the reason rather than queue into a dead connection.
    pub(super) closing: bool,
    pub(super) closed: Option<CloseReason>,
    /// Every `Channel` is gone: the link flushes what is queued and closes.
    pub(super) detached: bool,
    /// Where the worker's events go: the connection's own hub, or its
    /// supervised slot's.
    pub(super) hub: Arc<EventHub>,
    /// Whether `hub` is the connection's own, to be closed with it.
    pub(super) hub_owned: bool,
    /// When each call sent is due. The link's one timer stands for them
    /// all: an entry whose call ended is dropped when it comes up, or swept
    /// once such entries outnumber the calls in flight.
    pub(super) deadlines: Deadlines,
    /// When the link's timer fires; a call due earlier wakes the link.
    pub(super) timer_at: Option<Instant>,
    /// The link task's waker, for a call due before `timer_at`.
    pub(super) timer_waker: Option<Waker>,
    /// The worker's events: received, taken, and credited back in batches.
    pub(super) events: ReceiveWindow,
    /// Requests the transport handed back unwritten when the connection
    /// broke: their calls end as never sent when it closes.
    pub(super) unwritten: Vec<(u64, Payload)>,
}

impl State {
    /// Wakes callers waiting for room, if any.
    pub(super) fn room_freed(&mut self, shared: &Shared) {
        if self.waiting {
            self.waiting = false;
            shared.changed.notify_waiters();
        }
    }
}

/// The outcome of trying to send a call.
pub(super) enum Start<'a> {
    Sent(PendingCall<'a>),
    /// No room (or the connection is closing): wait for `changed`.
    Wait,
    Closed(CloseReason),
}

pub(super) struct Slot {
    pub(super) method: MethodName,
    /// The call's timeout, for its error when the link times it out.
    pub(super) timeout: Option<Duration>,
    pub(super) waker: Option<Waker>,
    /// The call's outcome once it has one; a failure boxed, so that the
    /// slot is small enough to be moved without a call to `memcpy` when a
    /// call is sent (most calls succeed).
    pub(super) outcome: Option<Result<Payload, Box<Failure>>>,
    /// Where the caller wants the handler's response metadata, if it does.
    pub(super) response_metadata: Option<ResponseMetadata>,
    /// The streams of a streaming call.
    pub(super) stream: Option<Box<SlotStream>>,
}

// A slot is moved into the table as each call is sent: at 128 bytes or
// fewer that move is a few instructions rather than a call to `memcpy`.
const _: () = assert!(std::mem::size_of::<Slot>() <= 128);

impl Slot {
    /// Settles the call and takes whoever waits on it: its reader and, for
    /// a request stream, its sender (which must stop sending). Always
    /// inlined: every answer settles its call, and the call around it cost
    /// as much as what it does.
    #[inline(always)]
    pub(super) fn settle(&mut self, outcome: Result<Payload, Failure>) -> [Option<Waker>; 2] {
        self.outcome = Some(outcome.map_err(Box::new));
        let sender = self.stream.as_mut().and_then(|stream| stream.sender.take());
        [self.waker.take(), sender]
    }

    /// Takes the call's outcome, if it has one.
    #[inline]
    pub(super) fn take_outcome(&mut self) -> Option<Result<Payload, Failure>> {
        self.outcome
            .take()
            .map(|outcome| outcome.map_err(|failure| *failure))
    }

    /// The call's outcome, if it has one, for [`worker_runs`].
    pub(super) fn outcome(&self) -> Option<Result<&Payload, &Failure>> {
        self.outcome
            .as_ref()
            .map(|outcome| outcome.as_ref().map_err(|failure| &**failure))
    }
}

/// A streaming call's state on the host.
pub(super) struct SlotStream {
    /// The worker's `ITEM`s not yet taken.
    pub(super) items: std::collections::VecDeque<Bytes>,
    /// The response stream's window: items received, taken, credited back.
    pub(super) receive: ReceiveWindow,
    /// What the host may still send of its request stream.
    pub(super) send: SendCredit,
    /// The sending half, waiting for credit.
    pub(super) sender: Option<Waker>,
}

/// Why a connection is closed; shared by every call it fails.
#[derive(Clone, Debug)]
pub(crate) enum CloseReason {
    Exited(ExitReason),
    Lost(Option<Arc<FrameError>>),
}

#[derive(Debug)]
pub(super) enum Failure {
    Remote(Status),
    Closed(CloseReason),
    /// The connection closed before the request was handed to the
    /// transport: the worker never received it. Its payload comes back, so
    /// that a supervised call can send it to the next worker.
    Undelivered {
        reason: CloseReason,
        payload: Payload,
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
    pub(super) fn into_error(self, method: &MethodName) -> Error {
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
                key: None,
            },
            Failure::TimedOut(after) => super::deadline::timed_out(method, after),
        }
    }
}

impl CloseReason {
    pub(super) fn into_error(self, method: &MethodName) -> Error {
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

impl Shared {
    /// The metadata a call sends on this connection: the channel's entries,
    /// then the call's own (control exchanges carry only their own).
    #[inline]
    pub(super) fn metadata_of(&self, method: &MethodName, own: &Metadata) -> Metadata {
        if self.metadata.is_empty() || method.starts_with(crate::control::PREFIX) {
            return own.clone();
        }
        self.metadata.joined(own)
    }
}

pub(crate) fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    crate::sync::lock(&shared.state)
}

/// What kind of call `start` sends.
#[derive(Clone, Copy)]
pub(super) enum Kind {
    /// One request, one answer, which the link times out when `due`.
    Unary { due: Option<Instant> },
    /// A streaming call of this kind. Its halves keep its deadline.
    Stream(MethodKind),
}

/// One attempt of a call, as [`start`] sends it (all but the payload, which
/// it takes only when it sends).
#[derive(Clone, Copy)]
pub(super) struct Attempt<'m> {
    pub(super) method: &'m MethodName,
    pub(super) timeout: Option<Duration>,
    /// 1 for the first attempt.
    pub(super) number: u32,
    pub(super) trace: Option<TraceContext>,
    pub(super) kind: Kind,
    /// The metadata sent (by `send`: with the connection's first).
    pub(super) metadata: &'m Metadata,
    /// Where the handler's response metadata goes.
    pub(super) response_metadata: Option<&'m ResponseMetadata>,
}

/// Sends a call if there is room; the payload is taken only then. `waker`,
/// if given, is woken when the call is answered (else its first poll
/// registers one).
pub(super) fn start<'a>(
    shared: &'a Shared,
    attempt: &Attempt<'_>,
    payload: &mut Payload,
    waker: Option<&Waker>,
) -> Start<'a> {
    let Attempt {
        method,
        timeout,
        number,
        trace,
        kind,
        metadata,
        response_metadata,
    } = *attempt;
    let shape = match kind {
        Kind::Unary { .. } => MethodKind::Unary,
        Kind::Stream(shape) => shape,
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
                response_metadata: response_metadata.cloned(),
                stream: shape.streams().then(|| {
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
        // Built whole: each builder step would move the frame.
        let request = Frame::Request {
            id,
            method: method.clone(),
            timeout,
            attempt: number,
            trace,
            kind: shape,
            metadata: metadata.clone(),
            payload,
        };
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

/// One attempt of a call: a slot in the pending table until it resolves or is
/// dropped.
pub(super) struct PendingCall<'a> {
    pub(super) shared: &'a Shared,
    pub(super) id: u64,
    pub(super) done: bool,
}

impl PendingCall<'_> {
    /// The call's id, now that its caller waits for it some other way.
    pub(super) fn into_id(mut self) -> u64 {
        self.done = true;
        self.id
    }
}

impl Future for PendingCall<'_> {
    type Output = Result<Payload, Failure>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let answer = poll_answer(self.shared, self.id, cx);
        self.done = answer.is_ready();
        answer
    }
}

/// Takes call `id`'s answer and its slot once it has one.
pub(super) fn poll_answer(
    shared: &Shared,
    id: u64,
    cx: &mut Context<'_>,
) -> Poll<Result<Payload, Failure>> {
    let mut state = lock(shared);
    let Some(slot) = state.calls.get_mut(&id) else {
        // Only the caller removes its slot; reaching here is a bug, and a
        // lost connection is the honest report of it.
        return Poll::Ready(Err(Failure::Closed(CloseReason::Lost(None))));
    };
    if let Some(outcome) = slot.take_outcome() {
        state.calls.discard(id);
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
pub(super) fn abandon(shared: &Shared, id: u64) {
    release(shared, id, None);
}

/// Removes call `id`'s slot, withdrawing the call from the worker if the
/// worker still runs it: as `running` says when the caller took the outcome
/// and knows, else as the slot's outcome says.
pub(super) fn release(shared: &Shared, id: u64, running: Option<bool>) {
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
            Some(slot) if running.unwrap_or_else(|| worker_runs(slot.outcome())) => {
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
pub(super) fn worker_runs(outcome: Option<Result<&Payload, &Failure>>) -> bool {
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
pub(super) fn withdraw(state: &mut State, id: u64, method: &MethodName) -> Option<Waker> {
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
