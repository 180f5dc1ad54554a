//! The link task: owns the transport, writes what callers queued, routes
//! what the worker sends to the calls (answers, stream items, credit) and
//! the event hub, and closes the connection when it ends.

use std::fmt;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use crate::error::{ExitReason, FrameError};
use crate::event::Credit;
use crate::frame::Frame;
use crate::log::{self, Direction};
use crate::metadata::Metadata;
use crate::name::MethodName;
use crate::transport::{FrameWriter, Transport};

use super::deadline::Timer;
use super::pending::{CloseReason, Failure, Shared, lock};

/// How long the link waits, after the connection ends, for the driver to
/// report how the worker ended, before it calls the loss a disconnection.
pub(super) const EXIT_REPORT_WAIT: Duration = Duration::from_secs(1);

/// How many received frames the link routes before it gives writes a turn.
pub(super) const READ_BATCH: usize = 128;

/// Receives the worker's exit reason from its driver once the worker is gone.
pub(crate) type ExitWatch = watch::Receiver<Option<ExitReason>>;

/// How the link's connection ended.
pub(super) enum LinkEnd {
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
pub(super) struct CloseOnDrop(pub(super) Arc<Shared>);

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
pub(super) async fn run_link<T: Transport>(
    guard: CloseOnDrop,
    mut transport: T,
    exit: Option<ExitWatch>,
) {
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
pub(super) async fn exit_or_lost(
    exit: Option<ExitWatch>,
    cause: Option<Arc<FrameError>>,
) -> CloseReason {
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

pub(super) fn close(shared: &Shared, reason: CloseReason) {
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

pub(super) fn poll_link<T: Transport>(
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

/// Hands the response metadata of call `id` to its caller, if it asked for
/// it; metadata for a call that ended is dropped, as its answer will be.
fn route_metadata(shared: &Shared, id: u64, metadata: Metadata) -> Result<(), FrameError> {
    let mut state = lock(shared);
    let next_id = state.next_id;
    match state.calls.get_mut(&id) {
        Some(slot) => {
            if let Some(into) = &slot.response_metadata {
                into.set(metadata);
            }
        }
        None => never_sent("METADATA", id, next_id)?,
    }
    Ok(())
}

/// Hands an answer to the call waiting for it. Answers to ids nobody waits
/// for (the call timed out or was cancelled) are dropped; a frame for an id
/// never sent breaks the connection.
pub(super) fn route(shared: &Shared, frame: Frame) -> Result<(), FrameError> {
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
        Frame::Metadata { id, metadata } => return route_metadata(shared, id, metadata),
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
pub(super) fn never_sent(kind: &'static str, id: u64, next_id: u64) -> Result<(), FrameError> {
    if id >= next_id {
        return Err(FrameError::NeverSent { kind, id });
    }
    Ok(())
}

/// Hands an event to the subscriptions of its service, holding one credit
/// until they have taken it.
pub(super) fn route_event(
    shared: &Shared,
    method: MethodName,
    payload: Bytes,
) -> Result<(), FrameError> {
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
pub(super) fn event_taken(shared: &Shared, size: usize) {
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
pub(super) fn route_item(shared: &Shared, id: u64, payload: Bytes) -> Result<(), FrameError> {
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
