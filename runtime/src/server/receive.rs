//! What the serve loop does with each frame the host sends, by kind: a
//! `REQUEST` starts a call (or a control exchange), a `CANCEL` stops one,
//! `ITEM` and `END` feed a request stream, `CREDIT` lets a response stream
//! or the events go on, `SHUTDOWN` lets the calls in hand finish.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Weak};

use bytes::Bytes;

use crate::control;
use crate::error::{FrameError, Status};
use crate::frame::Frame;
use crate::log::{self, Direction};
use crate::payload::Payload;
use crate::schema::MethodKind;
use crate::transport::Transport;
use crate::window::{ReceiveWindow, SendCredit};

use super::dispatch::{Call, Dispatch};
use super::serve::Server;
use super::state::{StreamState, lock};
use super::stream::{CallStreams, StreamHandle, close_stream};
use crate::context::Context;

impl<S, T, F, D> Server<'_, S, T, F, D>
where
    S: Dispatch,
    T: Transport,
    F: Future<Output = Result<Payload, Status>> + Send + 'static,
    D: Fn(&S, Call) -> F + Copy,
{
    /// Takes one frame from the host.
    pub(super) fn receive(&mut self, frame: Frame) -> Result<(), FrameError> {
        if log::enabled() {
            self.log_received(&frame);
        }
        if !self.greeted && !self.is_greeting(&frame) {
            return Err(FrameError::BeforeHandshake {
                kind: frame.kind_name(),
            });
        }
        match frame {
            request @ Frame::Request { .. } => self.receive_request(request)?,
            Frame::Cancel { id } => self.receive_cancel(id),
            Frame::Item { id, payload } => self.receive_item(id, payload)?,
            Frame::End { id } => self.receive_end(id),
            Frame::Credit { id, count, bytes } => self.receive_credit(id, count, bytes),
            Frame::Shutdown => self.receive_shutdown(),
            other => {
                return Err(FrameError::Unexpected {
                    kind: other.kind_name(),
                    peer: "host",
                });
            }
        }
        Ok(())
    }

    /// Logs a frame received, naming the call a `CANCEL` is for.
    fn log_received(&self, frame: &Frame) {
        let method = match frame {
            Frame::Cancel { id } => lock(&self.shared)
                .running
                .get(id)
                .map(|entry| entry.method.clone()),
            _ => None,
        };
        log::frame(Direction::WorkerIn, frame, method.as_ref());
    }

    /// Whether `frame` is the greeting the connection's control expects.
    fn is_greeting(&self, frame: &Frame) -> bool {
        let greeting = self.control.and_then(|control| control.greeting());
        matches!(frame, Frame::Request { method, .. } if greeting == Some(method.as_str()))
    }

    /// A `REQUEST`: a control exchange answered at once, or a call started
    /// now, queued for a free slot, or refused.
    fn receive_request(&mut self, request: Frame) -> Result<(), FrameError> {
        let Frame::Request {
            id,
            method,
            timeout,
            attempt,
            trace,
            kind,
            metadata,
            payload,
        } = request
        else {
            return Ok(());
        };
        let Some(reserved) = self.admit(id) else {
            return Err(FrameError::DuplicateId { id });
        };
        if method.starts_with(control::PREFIX) {
            // Not a call: it takes no slot.
            if reserved {
                self.release_slot();
            }
            let answer = self.control_exchange(id, &method, payload.into_bytes());
            log::frame(Direction::WorkerOut, &answer, Some(&method));
            self.queue(answer);
            return Ok(());
        }
        if self.shutting_down {
            if reserved {
                self.release_slot();
            }
            let status = Status::unavailable(format!(
                "{method} was not started: the worker is shutting down"
            ));
            self.refuse(id, kind, status);
            return Ok(());
        }
        let now = timeout.map(|_| tokio::time::Instant::now());
        let deadline = now
            .zip(timeout)
            .and_then(|(now, timeout)| now.checked_add(timeout));
        // Built whole, in one expression: a context built first would be
        // copied into the call.
        let call = Call {
            payload,
            context: Context {
                id,
                method,
                deadline,
                attempt,
                trace,
                metadata,
                connection: Some(Weak::clone(&self.outlet)),
                local: None,
            },
            streams: CallStreams {
                stream: kind.streams().then(|| self.open_stream(id, kind)),
            },
            kind,
        };
        // Start it now if a slot is free: only calls that really wait count
        // against the queue.
        if reserved {
            self.start(id, call, now);
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
            self.refuse(id, call.kind, status);
        }
        Ok(())
    }

    /// A `CANCEL`: the call stops, running or waiting, and is not answered;
    /// the work its handler handed off is told through its cancellation.
    fn receive_cancel(&mut self, id: u64) {
        let running = {
            let mut state = lock(&self.shared);
            let running = state.abort(id);
            // A task being polled right now outlives its abort: its next
            // read must not take the stream's loss for its end.
            if running.is_some()
                && let Some(generation) = state.streams.get(&id).map(|s| s.generation)
            {
                state.cancelled_streams.insert(generation, ());
            }
            running
        };
        if running.is_none() {
            self.backlog.retain(|(queued, _)| *queued != id);
        }
        // The stream is closed before the handler's work is told: once the
        // cancellation has fired, a read finds the call cancelled.
        self.close_stream(id);
        if let Some(entry) = running {
            entry.task.abort();
            entry.fire();
        }
    }

    /// An `ITEM` of a request stream, within the credit the worker granted.
    /// Items for a call that ended (or was cancelled) are late, not wrong.
    fn receive_item(&mut self, id: u64, payload: Bytes) -> Result<(), FrameError> {
        let mut state = lock(&self.shared);
        let Some(stream) = state.streams.get_mut(&id) else {
            return Ok(());
        };
        if stream.ended {
            return Err(FrameError::Malformed {
                kind: "ITEM",
                reason: format!("an item for request {id} after its END"),
            });
        }
        // Items buffered never exceed the window, unless the host ignored
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
        stream.inbound.push_back(payload);
        if let Some(waker) = stream.receiver.take() {
            waker.wake();
        }
        Ok(())
    }

    /// The `END` of a request stream.
    fn receive_end(&mut self, id: u64) {
        if let Some(stream) = lock(&self.shared).streams.get_mut(&id) {
            stream.ended = true;
            if let Some(waker) = stream.receiver.take() {
                waker.wake();
            }
        }
    }

    /// `CREDIT` for a response stream, or (id 0) for the events.
    fn receive_credit(&mut self, id: u64, count: u32, bytes: u32) {
        if id == 0 {
            lock(&self.shared).event_credit.grant(count, bytes);
            self.shared.event_room.notify_waiters();
            return;
        }
        if let Some(stream) = lock(&self.shared).streams.get_mut(&id) {
            stream.send.grant(count, bytes);
            if let Some(waker) = stream.sender.take() {
                waker.wake();
            }
        }
    }

    /// `SHUTDOWN`: new calls are refused; the serve loop ends once those in
    /// hand are answered.
    fn receive_shutdown(&mut self) {
        self.shutting_down = true;
        if let Some(control) = self.control {
            control.shutting_down();
        }
    }

    /// Registers the streams of a streaming call of `kind`.
    fn open_stream(&self, id: u64, kind: MethodKind) -> StreamHandle {
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
                ended: !kind.streams_requests(),
                receive: ReceiveWindow::new(self.window),
                receiver: None,
            },
        );
        StreamHandle {
            shared: Arc::clone(&self.shared),
            id,
            generation,
            kind,
        }
    }

    /// Forgets a call's streams: its handler's sends fail, its reads end.
    pub(super) fn close_stream(&self, id: u64) {
        close_stream(&self.shared, id, None);
    }
}
