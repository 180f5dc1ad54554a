//! A call's life in the worker once it has started: its task, bounded by
//! its deadline and guarded against panics, and its answer.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use crate::error::Status;
use crate::frame::{Frame, HEADER_LEN};
use crate::log::{self, Direction};
use crate::metadata::{MAX_METADATA_LEN, Metadata};
use crate::name::MethodName;
use crate::panic::{CatchUnwind, panic_message};
use crate::payload::Payload;
use crate::schema::MethodKind;

use super::state::{Shared, State, lock};
use super::stream::close_stream;

/// Passed to a call's task (not created inside it), so that it runs
/// however the task ends: finished, aborted, or dropped before it first ran.
pub(super) struct TaskEnd {
    pub(super) shared: Arc<Shared>,
    pub(super) id: u64,
    pub(super) generation: u64,
    /// The generation of the call's streams, if it streams.
    pub(super) stream: Option<u64>,
    /// The call's kind: nobody awaits a one-way message's answer.
    pub(super) kind: MethodKind,
}

impl Drop for TaskEnd {
    fn drop(&mut self) {
        let abandoned = {
            let mut state = lock(&self.shared);
            if let Some(generation) = self.stream {
                state.cancelled_streams.remove(&generation);
            }
            if state.aborted.remove(&self.generation).is_none() {
                // Dropped without answering (e.g. its runtime shut down):
                // the call is given up, and the work it handed off with it.
                state.finish(self.id, self.generation)
            } else {
                None
            }
        };
        if let Some(entry) = abandoned {
            entry.fire();
        }
        if let Some(generation) = self.stream {
            close_stream(&self.shared, self.id, Some(generation));
        }
    }
}

pub(super) async fn run_call<F>(
    end: TaskEnd,
    method: MethodName,
    deadline: Option<tokio::time::Instant>,
    future: F,
) where
    F: Future<Output = Result<Payload, Status>> + Send + 'static,
{
    let (shared, id, generation) = (Arc::clone(&end.shared), end.id, end.generation);
    let kind = end.kind;
    let guarded = CatchUnwind::new(future);
    let outcome = match deadline {
        Some(deadline) => match tokio::time::timeout_at(deadline, guarded).await {
            // A handler that ended by itself once the deadline had passed
            // (e.g. when its cancellation fired) ends as one dropped there.
            Ok(outcome) if tokio::time::Instant::now() < deadline => outcome,
            _ => {
                // The caller set this deadline and its own timer ends the
                // call there; an answer could only race that timer. Drop the
                // handler (cancelling it) and answer nothing, as for CANCEL.
                // Its cancellation token, if it has one, fires by itself:
                // it knows the deadline.
                if kind.is_one_way() {
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
    let frame = answer_of(&shared, id, &method, kind, outcome);
    let waker = {
        let mut state = lock(&shared);
        let reply = state.take_reply(id);
        // Answered: its cancellation token, if any, is dropped unfired.
        if state.finish(id, generation).is_none() {
            return; // cancelled: the caller no longer waits
        }
        if !kind.is_one_way() {
            queue_answer(&mut state, &shared, &method, reply, frame);
        }
        // The slot is free: a waiting call may start.
        state.link.take()
    };
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// Queues a call's answer, after its response metadata if its handler set
/// some. Inlined: most calls have none, and their answer is one push.
#[inline(always)]
pub(super) fn queue_answer(
    state: &mut State,
    shared: &Shared,
    method: &MethodName,
    reply: Option<Metadata>,
    frame: Frame,
) {
    match reply {
        None => {
            log::frame(Direction::WorkerOut, &frame, Some(method));
            state.outbox.push(frame);
        }
        Some(metadata) => queue_with_metadata(state, shared, method, metadata, frame),
    }
}

/// Queues a call's answer after its response metadata; an answer whose
/// metadata the host could not take becomes a `ResourceExhausted` status
/// instead.
fn queue_with_metadata(
    state: &mut State,
    shared: &Shared,
    method: &MethodName,
    metadata: Metadata,
    frame: Frame,
) {
    let id = frame.id();
    let size = HEADER_LEN + metadata.encoded_len();
    let max = shared.max_frame_length.min(HEADER_LEN + MAX_METADATA_LEN);
    if size > max {
        tracing::error!(%method, id, size, "response metadata too large to send");
        let status = Status::resource_exhausted(format!(
            "the response metadata of {method} is {} bytes, over the {} bytes the connection takes",
            metadata.encoded_len(),
            max - HEADER_LEN
        ));
        let frame = Frame::Status { id, status };
        log::frame(Direction::WorkerOut, &frame, Some(method));
        state.outbox.push(frame);
        return;
    }
    let metadata = Frame::Metadata { id, metadata };
    log::frame(Direction::WorkerOut, &metadata, Some(method));
    state.outbox.push(metadata);
    log::frame(Direction::WorkerOut, &frame, Some(method));
    state.outbox.push(frame);
}

/// How a handler ended: its answer, or the payload of its panic.
pub(super) type Outcome = Result<Result<Payload, Status>, Box<dyn Any + Send>>;

/// The frame that answers call `id` from its handler's outcome (counted as
/// processed); a one-way message's failure is logged here, as nobody hears
/// its answer.
pub(super) fn answer_of(
    shared: &Shared,
    id: u64,
    method: &MethodName,
    kind: MethodKind,
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
    if kind.is_one_way()
        && let Frame::Status { status, .. } = &frame
    {
        // Nobody hears the answer of a one-way message; its failure is
        // logged here instead.
        tracing::warn!(%method, id, %status, "one-way message failed");
    }
    frame
}

/// A handler that did not answer at its first poll in the serve loop, in
/// the place it was polled in, to go on in a task.
pub(super) struct Started<F> {
    pub(super) place: Pin<Box<Option<F>>>,
}

impl<F: Future<Output = Result<Payload, Status>>> Future for Started<F> {
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
/// Inlined, so that a response (every call that succeeds) passes through
/// without being moved into and out of a call.
#[inline]
pub(super) fn fit(frame: Frame, max: usize) -> Frame {
    // Responses are checked where they are made; only a status is measured.
    if !matches!(frame, Frame::Status { .. }) {
        return frame;
    }
    fit_status(frame, max)
}

/// [`fit`] for a status.
fn fit_status(frame: Frame, max: usize) -> Frame {
    let size = frame.encoded_len();
    if size <= max {
        return frame;
    }
    let Frame::Status { id, status } = frame else {
        return frame;
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
