//! What the serve loop shares with the calls it runs: the outbox, the
//! running table, the streams, and the event credit.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::task::{Poll, Waker};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use crate::context::Connection;
use crate::event::{Gone, Outlet};
use crate::frame::Frame;
use crate::idmap::IdMap;
use crate::log::{self, Direction};
use crate::metadata::Metadata;
use crate::name::MethodName;
use crate::window::{ReceiveWindow, SendCredit};

pub(super) struct Shared {
    pub(super) state: Mutex<State>,
    /// Notified when the host returns event credit, and when serving ends.
    pub(super) event_room: Notify,
    pub(super) max_frame_length: usize,
    /// Calls whose handler ran to the end (answered, or replaced by a status).
    pub(super) processed: std::sync::atomic::AtomicU64,
    /// The request id of the call the serve loop is dispatching (and, on a
    /// current-thread runtime, polling for the first time), 0 for none: it
    /// is in hand before it has an entry in `running`, for a handler that
    /// asks for its cancellation at once. Written and read only on the
    /// serve loop's thread while it matters; a plain store costs the calls
    /// that never ask nothing to speak of.
    pub(super) dispatching: AtomicU64,
}

/// Handlers' sends (stream items, events) wait once about this many bytes
/// of them are queued for the host and not yet taken by the writer: a host
/// that grants credit without reading holds the handler back, not the
/// worker's memory.
pub(super) const SENDS_HIGH_WATER: usize = 1 << 20;

/// What a queued item or event counts for besides its payload, so that many
/// small ones also reach [`SENDS_HIGH_WATER`].
pub(super) const SEND_OVERHEAD: usize = 64;

/// Frames queued for the host, in the order the writer takes them: answers
/// (and credit) first, then handlers' sends (stream items, events), so that
/// a flood of large events or items does not hold up every call's answer.
/// A call's answer still goes behind the sends of its own handler queued
/// before it: a stream's items precede its end, and events a handler sent
/// before answering arrive before its answer.
#[derive(Default)]
pub(super) struct Outbox {
    pub(super) answers: VecDeque<Frame>,
    pub(super) sends: VecDeque<Frame>,
    /// The calls with frames in `sends`: their answers queue there too.
    pub(super) senders: IdMap<()>,
}

impl Outbox {
    /// Queues an answer, a credit or a status.
    #[inline]
    pub(super) fn push(&mut self, frame: Frame) {
        if !self.senders.is_empty() && self.senders.contains_key(&frame.id()) {
            self.sends.push_back(frame);
        } else {
            self.answers.push_back(frame);
        }
    }

    /// Queues a stream item or an event sent by the handler of `call`.
    pub(super) fn push_send(&mut self, frame: Frame, call: u64) {
        self.senders.insert(call, ());
        self.sends.push_back(frame);
    }

    /// Moves everything queued to the writer's empty buffer, answers first.
    pub(super) fn take_into(&mut self, sending: &mut VecDeque<Frame>) {
        std::mem::swap(&mut self.answers, sending);
        if !self.sends.is_empty() {
            sending.extend(self.sends.drain(..));
            self.senders.clear();
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.answers.is_empty() && self.sends.is_empty()
    }
}

#[derive(Default)]
pub(super) struct State {
    pub(super) outbox: Outbox,
    /// Bytes of handlers' sends in `outbox` (see [`SENDS_HIGH_WATER`]).
    pub(super) sent_bytes: usize,
    /// Handlers waiting for the writer to take the outbox.
    pub(super) send_waiters: Vec<Waker>,
    /// The serve loop's waker, present while it waits for work.
    pub(super) link: Option<Waker>,
    /// Calls running as tasks. A task answers only if it can remove its own
    /// entry; a `CANCEL` that removes it first means no answer is sent. The
    /// generation tells a task's entry from a later call reusing its id.
    pub(super) running: IdMap<Running>,
    /// Response metadata set by handlers of calls in flight, by request id.
    pub(super) replies: IdMap<Metadata>,
    /// The streams of streaming calls, by request id.
    pub(super) streams: IdMap<StreamState>,
    pub(super) next_stream: u64,
    /// Tasks aborted (cancelled) that have not ended yet, by generation, with
    /// when they were aborted: a handler blocking its thread cannot be
    /// stopped, and this is how a health check still sees it.
    pub(super) aborted: IdMap<tokio::time::Instant>,
    /// The streams of calls cancelled whose task has not ended yet, by
    /// stream generation: a read there finds the call cancelled, not its
    /// request stream ended.
    pub(super) cancelled_streams: IdMap<()>,
    /// Calls taken from the backlog and being dispatched, not yet running.
    pub(super) starting: usize,
    pub(super) next_generation: u64,
    /// What the worker may still send of its events.
    pub(super) event_credit: SendCredit,
    /// Serving has ended: events can no longer be sent.
    pub(super) ended: bool,
    /// The cancellation token of the call being dispatched, if its handler
    /// asked for one: it moves to the call's entry in `running` when the
    /// call goes on in a task, and is dropped when it answered at once.
    pub(super) dispatched: Option<CancellationToken>,
}

pub(super) struct Running {
    pub(super) generation: u64,
    pub(super) task: AbortHandle,
    pub(super) deadline: Option<tokio::time::Instant>,
    pub(super) method: MethodName,
    /// The call's cancellation token, once its handler asked for one:
    /// fired when the call is given up (`CANCEL`, the connection ending,
    /// its task dropped unanswered), dropped unfired when it answered.
    pub(super) cancel: Option<CancellationToken>,
}

impl Running {
    /// Fires the call's cancellation token, if it has one (outside the
    /// lock: the work waiting on it wakes).
    pub(super) fn fire(self) {
        if let Some(token) = self.cancel {
            token.cancel();
        }
    }
}

impl State {
    /// Whether a handler's send must wait for the writer to take the
    /// outbox; if so, it is woken when it has.
    pub(super) fn sends_full(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        if self.sent_bytes < SENDS_HIGH_WATER {
            return false;
        }
        if !self.send_waiters.iter().any(|w| w.will_wake(cx.waker())) {
            self.send_waiters.push(cx.waker().clone());
        }
        true
    }

    /// Removes and returns the entry of the task of `generation`, if it is
    /// still there (not cancelled); the serve loop, once woken, may start a
    /// waiting call in its place.
    pub(super) fn finish(&mut self, id: u64, generation: u64) -> Option<Running> {
        match self.running.get(&id) {
            Some(entry) if entry.generation == generation => {
                self.take_reply(id);
                self.running.remove(&id)
            }
            _ => None,
        }
    }

    /// Takes a running call out to be aborted and its cancellation fired (by
    /// the caller, outside the lock: its task's end takes the lock too); it
    /// stays counted until its task really ends.
    pub(super) fn abort(&mut self, id: u64) -> Option<Running> {
        let entry = self.running.remove(&id)?;
        self.take_reply(id);
        self.aborted
            .insert(entry.generation, tokio::time::Instant::now());
        Some(entry)
    }
}

impl State {
    /// Takes the response metadata of call `id`, if its handler set some.
    pub(super) fn take_reply(&mut self, id: u64) -> Option<Metadata> {
        if self.replies.is_empty() {
            return None;
        }
        self.replies.remove(&id)
    }
}

// Inlined: taken a few times by every call, and the call around the lock
// cost about as much as the lock.
#[inline]
pub(super) fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    crate::sync::lock(&shared.state)
}

impl Outlet for Shared {
    fn max_frame_length(&self) -> usize {
        self.max_frame_length
    }

    fn poll_queue_room(&self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let mut state = lock(self);
        if !state.ended && state.sends_full(cx) {
            return Poll::Pending;
        }
        Poll::Ready(())
    }

    fn event_room(&self) -> &Notify {
        &self.event_room
    }

    fn try_send_event(
        &self,
        call: u64,
        method: &MethodName,
        payload: &mut Bytes,
    ) -> Result<bool, Gone> {
        let waker = {
            let mut state = lock(self);
            if state.ended {
                return Err(Gone);
            }
            if !state.event_credit.ready() {
                return Ok(false);
            }
            state.event_credit.spend(payload.len());
            state.sent_bytes += payload.len() + SEND_OVERHEAD;
            let event = Frame::Event {
                method: method.clone(),
                payload: std::mem::take(payload),
            };
            log::frame(Direction::WorkerOut, &event, Some(method));
            state.outbox.push_send(event, call);
            state.link.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(true)
    }

    fn is_connected(&self) -> bool {
        !lock(self).ended
    }
}

impl Connection for Shared {
    fn cancellation(&self, call: u64) -> Option<CancellationToken> {
        let mut state = lock(self);
        let state = &mut *state;
        if state.ended {
            return Some(crate::cancellation::fired());
        }
        // A request id names one call in hand at a time: the host never
        // reuses the id of a call it still awaits.
        let slot = match state.running.get_mut(&call) {
            Some(entry) => &mut entry.cancel,
            None if self.dispatching.load(Ordering::Relaxed) == call => &mut state.dispatched,
            None => return None,
        };
        Some(slot.get_or_insert_with(CancellationToken::new).clone())
    }

    fn set_response_metadata(&self, call: u64, metadata: Metadata) {
        let mut state = lock(self);
        if state.running.contains_key(&call) || self.dispatching.load(Ordering::Relaxed) == call {
            if metadata.is_empty() {
                state.replies.remove(&call);
            } else {
                state.replies.insert(call, metadata);
            }
        }
    }

    fn response_metadata(&self, call: u64) -> Metadata {
        lock(self).replies.get(&call).cloned().unwrap_or_default()
    }
}

/// The state of one call's streams, in the serve loop.
pub(super) struct StreamState {
    pub(super) generation: u64,
    /// What the handler may still send.
    pub(super) send: SendCredit,
    /// The handler, waiting for credit.
    pub(super) sender: Option<Waker>,
    /// The host's `ITEM`s not yet taken by the handler.
    pub(super) inbound: VecDeque<Bytes>,
    /// The host's request stream has ended.
    pub(super) ended: bool,
    /// The request stream's window: items received, taken, credited back.
    pub(super) receive: ReceiveWindow,
    /// The handler, waiting for an item.
    pub(super) receiver: Option<Waker>,
}
