//! The client's transport: the frames a [`Channel`](workerbus::Channel)
//! sends become gRPC calls, and what the calls answer becomes frames. A
//! `REQUEST` opens a call on a connection the pool chooses, `ITEM`s and
//! `END` are its request body, `CANCEL` resets it, and `CREDIT` lets the
//! call read its next response messages, so a slow reader holds back the
//! server through HTTP/2's flow control.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_core::Stream;
use futures_sink::Sink;
use prost::Message;
use tokio::sync::{Notify, mpsc};
use tokio::task::AbortHandle;
use workerbus::{Frame, FrameError, MethodKind, MethodName, ServiceSchema, Status};

use self::call::{Call, ResponseCredit};
pub(crate) use self::worker_service::{describe, subscribe};
use crate::pool::Pool;
use crate::worker::{self, HealthRequest};

mod call;
mod worker_service;

/// What the transport knows of each method it can call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Route {
    pub(crate) path: &'static str,
    pub(crate) kind: MethodKind,
}

/// Every method of the services a client serves, by message name.
pub(crate) fn routes(schemas: &[&'static ServiceSchema]) -> HashMap<MethodName, Route> {
    schemas
        .iter()
        .flat_map(|schema| schema.methods())
        .map(|method| {
            (
                MethodName::from_static(method.name()),
                Route {
                    path: method.grpc_path(),
                    kind: method.kind(),
                },
            )
        })
        .collect()
}

/// The transport of a gRPC client's channel.
pub(crate) struct GrpcTransport {
    shared: Arc<Shared>,
    inbox: mpsc::UnboundedReceiver<Frame>,
}

/// What the transport and its calls share.
pub(crate) struct Shared {
    pool: Arc<Pool>,
    routes: HashMap<MethodName, Route>,
    max_message_size: usize,
    /// Frames for the channel: answers, items, metadata, credit.
    outbox: mpsc::UnboundedSender<Frame>,
    state: Mutex<State>,
    /// Rung when the last call in flight ends.
    idle: Notify,
    /// The channel's credit for events (`CREDIT` with id 0).
    events: ResponseCredit,
    /// The service whose worker's health the channel's `health()` reports.
    health_of: String,
    /// How calls' messages are compressed, if they are.
    compression: Option<tonic::codec::CompressionEncoding>,
}

#[derive(Default)]
struct State {
    calls: HashMap<u64, CallHandle>,
    /// The channel asked to finish: new calls are refused, and the stream
    /// ends once the calls in flight have.
    draining: bool,
    /// No more frames: the stream ends now.
    ended: bool,
    /// The channel's reader, woken when the stream ends.
    reader: Option<Waker>,
}

/// What the transport keeps of a call in flight.
struct CallHandle {
    /// Its request stream's next messages; dropped at `END`.
    requests: Option<mpsc::UnboundedSender<Bytes>>,
    credit: Arc<ResponseCredit>,
    task: AbortHandle,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        crate::lock(&self.state)
    }

    fn send(&self, frame: Frame) {
        // The receiver is the transport itself; once it is gone, nobody
        // awaits the frame.
        let _ = self.outbox.send(frame);
    }

    /// A call ended: forget it, and end the stream if it was the last one
    /// of a drain.
    fn finished(&self, id: u64) {
        let (idle, waker) = {
            let mut state = self.lock();
            state.calls.remove(&id);
            // Only a drain waits for the last call to end.
            let idle = state.calls.is_empty() && state.draining;
            if idle {
                state.ended = true;
                (idle, state.reader.take())
            } else {
                (idle, None)
            }
        };
        if idle {
            self.idle.notify_waiters();
        }
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Refuses new calls, and waits until the calls in flight have ended.
    pub(crate) async fn drain(&self) {
        loop {
            let idle = self.idle.notified();
            {
                let mut state = self.lock();
                state.draining = true;
                if state.calls.is_empty() {
                    return;
                }
            }
            idle.await;
        }
    }

    /// Ends the transport now: every call is dropped (its HTTP/2 stream
    /// reset), the connections close, and the channel's stream ends.
    pub(crate) fn end(&self) {
        self.pool.close();
        let (calls, waker) = {
            let mut state = self.lock();
            state.ended = true;
            (std::mem::take(&mut state.calls), state.reader.take())
        };
        for call in calls.into_values() {
            call.task.abort();
        }
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// How many calls are in flight.
    pub(crate) fn in_flight(&self) -> usize {
        self.lock().calls.len()
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcTransport")
            .field("calls", &self.in_flight())
            .finish_non_exhaustive()
    }
}

impl GrpcTransport {
    pub(crate) fn new(
        pool: Arc<Pool>,
        routes: HashMap<MethodName, Route>,
        max_message_size: usize,
        health_of: String,
        compression: Option<tonic::codec::CompressionEncoding>,
    ) -> GrpcTransport {
        let (outbox, inbox) = mpsc::unbounded_channel();
        GrpcTransport {
            shared: Arc::new(Shared {
                pool,
                routes,
                max_message_size,
                outbox,
                state: Mutex::new(State::default()),
                idle: Notify::new(),
                events: ResponseCredit::new(),
                health_of,
                compression,
            }),
            inbox,
        }
    }

    pub(crate) fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    fn take(&mut self, frame: Frame) {
        match frame {
            Frame::Request {
                id,
                method,
                timeout,
                attempt,
                trace,
                kind,
                metadata,
                payload,
                ..
            } => self.open(Call {
                id,
                method,
                timeout,
                attempt,
                trace,
                kind,
                metadata,
                // Encoded where bytes are needed: into tonic's buffer; kept
                // shared, since a call refused before it was read is sent
                // again.
                payload: payload.into_shared(),
            }),
            Frame::Item { id, payload } => {
                if let Some(requests) = self
                    .shared
                    .lock()
                    .calls
                    .get(&id)
                    .and_then(|call| call.requests.as_ref())
                {
                    let _ = requests.send(payload);
                }
            }
            Frame::End { id } => {
                if let Some(call) = self.shared.lock().calls.get_mut(&id) {
                    call.requests = None;
                }
            }
            Frame::Cancel { id } => {
                let call = self.shared.lock().calls.remove(&id);
                if let Some(call) = call {
                    call.task.abort();
                }
                self.shared.finished(id);
            }
            Frame::Credit {
                id: 0,
                count,
                bytes,
            } => self.shared.events.grant(count, bytes),
            Frame::Credit { id, count, bytes } => {
                let credit = self
                    .shared
                    .lock()
                    .calls
                    .get(&id)
                    .map(|call| Arc::clone(&call.credit));
                if let Some(credit) = credit {
                    credit.grant(count, bytes);
                }
            }
            Frame::Shutdown => {
                let waker = {
                    let mut state = self.shared.lock();
                    state.draining = true;
                    if state.calls.is_empty() {
                        state.ended = true;
                    }
                    state.reader.take()
                };
                if let Some(waker) = waker {
                    waker.wake();
                }
            }
            // A host never sends answers or events; nothing to do with them.
            _ => {}
        }
    }

    /// Ends a call that is not sent with `status` (a one-way message, which
    /// nobody waits for, with nothing).
    fn refuse(&self, call: &Call, status: Status) {
        if call.kind != MethodKind::OneWay {
            self.shared.send(Frame::Status {
                id: call.id,
                status,
            });
        }
    }

    fn open(&mut self, mut call: Call) {
        let id = call.id;
        let route = if call.method == worker::CORE_HEALTH {
            // The channel's health(): the serving node's report of the
            // worker behind the first service.
            call.payload = HealthRequest {
                service: self.shared.health_of.clone(),
            }
            .encode_to_vec()
            .into();
            Some(Route {
                path: worker::HEALTH,
                kind: MethodKind::Unary,
            })
        } else {
            self.shared.routes.get(&call.method).copied()
        };
        let Some(route) = route else {
            let status = Status::unimplemented(format!(
                "{} is not a method of the services this gRPC client serves",
                call.method
            ));
            return self.refuse(&call, status);
        };
        if self.shared.lock().draining {
            let status =
                Status::unavailable(format!("{}: the gRPC client is shutting down", call.method));
            return self.refuse(&call, status);
        }
        let streams_request = matches!(
            route.kind,
            MethodKind::ClientStreaming | MethodKind::BidiStreaming
        );
        let (requests, received) = if streams_request {
            let (sender, receiver) = mpsc::unbounded_channel();
            (Some(sender), Some(receiver))
        } else {
            (None, None)
        };
        let credit = Arc::new(ResponseCredit::new());
        let shared = Arc::clone(&self.shared);
        let task_credit = Arc::clone(&credit);
        // The task is registered before it can finish and unregister itself.
        let mut state = self.shared.lock();
        let task = call::spawn(shared, call, route, received, task_credit);
        state.calls.insert(
            id,
            CallHandle {
                requests,
                credit,
                task,
            },
        );
    }
}

impl Drop for GrpcTransport {
    fn drop(&mut self) {
        self.shared.end();
    }
}

impl Stream for GrpcTransport {
    type Item = Result<Frame, FrameError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Poll::Ready(Some(frame)) = self.inbox.poll_recv(cx) {
            return Poll::Ready(Some(Ok(frame)));
        }
        let mut state = self.shared.lock();
        if state.ended {
            return Poll::Ready(None);
        }
        state.reader = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Sink<Frame> for GrpcTransport {
    type Error = FrameError;

    fn poll_ready(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), FrameError>> {
        Poll::Ready(Ok(()))
    }

    fn start_send(mut self: Pin<&mut Self>, frame: Frame) -> Result<(), FrameError> {
        self.take(frame);
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), FrameError>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), FrameError>> {
        self.shared.end();
        Poll::Ready(Ok(()))
    }
}
