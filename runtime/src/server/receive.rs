//! What the serve loop does with each frame the host sends, by kind.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;

use crate::control::{self};
use crate::error::{FrameError, Status};
use crate::frame::Frame;
use crate::log::{self, Direction};
use crate::transport::Transport;
use crate::window::{ReceiveWindow, SendCredit};

use super::context::Context;
use super::dispatch::{Call, Dispatch};
use super::serve::Server;
use super::state::lock;
use super::stream::{StreamHandle, StreamState, close_stream};

impl<S, T, F> Server<'_, S, T, F>
where
    S: Dispatch,
    T: Transport,
    F: Future<Output = Result<Bytes, Status>> + Send + 'static,
{
    pub(super) fn receive(&mut self, frame: Frame) -> Result<(), FrameError> {
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
    pub(super) fn open_stream(&self, id: u64, request: bool, response: bool) -> StreamHandle {
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
    pub(super) fn close_stream(&self, id: u64) {
        close_stream(&self.shared, id, None);
    }
}
