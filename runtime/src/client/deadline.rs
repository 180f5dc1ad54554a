//! Deadlines: the link's one timer over every call in flight, the waits a
//! call's deadline bounds, and the one place that builds `Error::Timeout`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Waker};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::error::Error;
use crate::idmap::SeqIdMap;
use crate::name::MethodName;

use super::pending::{Failure, Shared, Slot, State, lock, withdraw};

/// Bounds a wait by a call's deadline: `timeout` after its attempt began.
pub(super) async fn until<T>(
    method: &MethodName,
    timeout: Option<Duration>,
    due: Option<Instant>,
    wait: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    match (timeout, due) {
        (Some(after), Some(due)) => tokio::time::timeout_at(due, wait)
            .await
            .map_err(|_| timed_out(method, after))?,
        _ => wait.await,
    }
}

/// The error of a call whose deadline passed `after` it began.
pub(super) fn timed_out(method: &MethodName, after: Duration) -> Error {
    Error::Timeout {
        method: method.clone(),
        after,
    }
}

/// When a call with `timeout` that starts now is due.
pub(super) fn due(timeout: Option<Duration>) -> Option<Instant> {
    timeout.and_then(|timeout| Instant::now().checked_add(timeout))
}

/// Enters call `id`'s deadline; returns the link's waker if the link must
/// set its timer earlier for it.
pub(super) fn due_at(state: &mut State, id: u64, due: Instant) -> Option<Waker> {
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
pub(super) fn awaits_answer(calls: &SeqIdMap<Slot>, id: u64) -> bool {
    calls.get(&id).is_some_and(|slot| slot.outcome.is_none())
}

/// The link's one timer, set for the earliest deadline of the calls in
/// flight (or earlier: it is moved forward, never back, so that calls ending
/// in order cost it nothing).
pub(super) struct Timer {
    pub(super) sleep: Pin<Box<Sleep>>,
    pub(super) armed: Option<Instant>,
}

impl Timer {
    pub(super) fn new() -> Timer {
        Timer {
            sleep: Box::pin(tokio::time::sleep_until(Instant::now())),
            armed: None,
        }
    }

    /// Fails the calls that are due with a timeout (withdrawing them from
    /// the worker), and sets the timer for the next.
    pub(super) fn poll(&mut self, shared: &Shared, cx: &mut Context<'_>) {
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
pub(super) struct Deadlines {
    pub(super) queue: VecDeque<(Instant, u64)>,
    pub(super) heap: BinaryHeap<Reverse<(Instant, u64)>>,
}

impl Deadlines {
    pub(super) fn push(&mut self, entry: (Instant, u64)) {
        if self.queue.back().is_none_or(|last| *last <= entry) {
            self.queue.push_back(entry);
        } else {
            self.heap.push(Reverse(entry));
        }
    }

    /// The earliest entry.
    pub(super) fn peek(&self) -> Option<(Instant, u64)> {
        match (self.queue.front(), self.heap.peek()) {
            (Some(queued), Some(Reverse(heaped))) => Some(*queued.min(heaped)),
            (Some(queued), None) => Some(*queued),
            (None, Some(Reverse(heaped))) => Some(*heaped),
            (None, None) => None,
        }
    }

    /// Removes the earliest entry.
    pub(super) fn pop(&mut self) {
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

    pub(super) fn len(&self) -> usize {
        self.queue.len() + self.heap.len()
    }

    pub(super) fn retain(&mut self, mut keep: impl FnMut(&(Instant, u64)) -> bool) {
        self.queue.retain(&mut keep);
        self.heap.retain(|Reverse(entry)| keep(entry));
    }

    pub(super) fn clear(&mut self) {
        self.queue.clear();
        self.heap.clear();
    }
}
