//! The worker's halves of streaming calls: [`StreamSender`] for a response
//! stream, [`Incoming`] for a request stream, and their state in the serve
//! loop.

use std::fmt;
use std::future::poll_fn;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use futures_core::Stream;
use prost::Message;

use crate::error::Status;
use crate::frame::{Frame, HEADER_LEN};
use crate::log::{self, Direction};
use crate::name::MethodName;
use crate::schema::MethodKind;

use super::state::{SEND_OVERHEAD, Shared, lock};
use crate::context::Context;

/// The streams of a call, if it streams: what generated servers hand to
/// handlers as a [`StreamSender`] or an [`Incoming`] stream.
#[derive(Debug)]
pub struct CallStreams {
    pub(super) stream: Option<StreamHandle>,
}

#[derive(Clone)]
pub(super) struct StreamHandle {
    pub(super) shared: Arc<Shared>,
    pub(super) id: u64,
    pub(super) generation: u64,
    pub(super) kind: MethodKind,
}

impl fmt::Debug for StreamHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamHandle")
            .field("id", &self.id)
            .field("request", &self.kind.streams_requests())
            .field("response", &self.kind.streams_responses())
            .finish_non_exhaustive()
    }
}

impl CallStreams {
    /// The sender of the call's response stream.
    pub fn sender<T: Message>(&self, cx: &Context) -> Result<StreamSender<T>, Status> {
        match &self.stream {
            Some(handle) if handle.kind.streams_responses() => Ok(StreamSender {
                handle: handle.clone(),
                method: cx.method.clone(),
                _message: PhantomData,
            }),
            _ => Err(Status::failed_precondition(format!(
                "{} streams its response, but its caller did not ask for a stream",
                cx.method
            ))),
        }
    }

    /// The call's request stream, decoding each message as `request_type`.
    pub fn incoming<T: Message + Default>(
        &self,
        cx: &Context,
        request_type: &'static str,
    ) -> Result<Incoming<T>, Status> {
        match &self.stream {
            Some(handle) if handle.kind.streams_requests() => Ok(Incoming {
                handle: handle.clone(),
                method: cx.method.clone(),
                request_type,
                done: false,
                _message: PhantomData,
            }),
            _ => Err(Status::failed_precondition(format!(
                "{} takes a stream of requests, but its caller did not send one",
                cx.method
            ))),
        }
    }
}

/// Sends a handler's response stream: each [`send`](StreamSender::send)
/// waits until the caller has room for the message, so a slow consumer
/// slows the handler down instead of filling memory.
pub struct StreamSender<T> {
    pub(super) handle: StreamHandle,
    pub(super) method: MethodName,
    pub(super) _message: PhantomData<fn(T)>,
}

impl<T> fmt::Debug for StreamSender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamSender")
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

impl<T: Message> StreamSender<T> {
    /// Sends one message of the stream, once the caller has room for it.
    ///
    /// Fails with `Cancelled` once the caller stops listening (the call was
    /// cancelled or timed out): a handler should then stop.
    pub async fn send(&self, message: T) -> Result<(), Status> {
        let payload = crate::message::encode(&message);
        let handle = &self.handle;
        let size = HEADER_LEN + payload.len();
        if size > handle.shared.max_frame_length {
            return Err(Status::resource_exhausted(format!(
                "a message of {} is {size} bytes, over the maximum frame length of {} bytes",
                self.method, handle.shared.max_frame_length
            )));
        }
        let mut payload = Some(payload);
        let waker = poll_fn(|cx| {
            let mut state = lock(&handle.shared);
            if !state.ended && state.sends_full(cx) {
                return Poll::Pending;
            }
            let Some(stream) = state
                .streams
                .get_mut(&handle.id)
                .filter(|stream| stream.generation == handle.generation)
            else {
                return Poll::Ready(Err(Status::cancelled(format!(
                    "the caller of {} no longer listens",
                    self.method
                ))));
            };
            if !stream.send.ready() {
                stream.sender = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let payload = payload.take().unwrap_or_default();
            stream.send.spend(payload.len());
            state.sent_bytes += payload.len() + SEND_OVERHEAD;
            let item = Frame::Item {
                id: handle.id,
                payload,
            };
            log::frame(Direction::WorkerOut, &item, Some(&self.method));
            state.outbox.push_send(item, handle.id);
            Poll::Ready(Ok(state.link.take()))
        })
        .await?;
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }
}

/// A handler's request stream: the messages its caller sends, in order.
/// Taking them grants the caller room for more.
pub struct Incoming<T> {
    pub(super) handle: StreamHandle,
    pub(super) method: MethodName,
    pub(super) request_type: &'static str,
    pub(super) done: bool,
    pub(super) _message: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for Incoming<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming")
            .field("method", &self.method)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<T: Message + Default> Incoming<T> {
    /// The next message, or `None` once the caller's stream has ended.
    pub async fn message(&mut self) -> Result<Option<T>, Status> {
        poll_fn(|cx| Pin::new(&mut *self).poll_next(cx))
            .await
            .transpose()
    }
}

impl<T: Message + Default> Stream for Incoming<T> {
    type Item = Result<T, Status>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let handle = &self.handle;
        let (item, waker) = {
            let mut state = lock(&handle.shared);
            let Some(stream) = state
                .streams
                .get_mut(&handle.id)
                .filter(|stream| stream.generation == handle.generation)
            else {
                let cancelled = state.cancelled_streams.contains_key(&handle.generation);
                drop(state);
                self.done = true;
                if cancelled {
                    return Poll::Ready(Some(Err(Status::cancelled(format!(
                        "{} was cancelled before its request stream ended",
                        self.method
                    )))));
                }
                return Poll::Ready(None);
            };
            match stream.inbound.pop_front() {
                Some(item) => {
                    // Room is granted in batches of half a window.
                    let credit = stream.receive.take(item.len());
                    let waker = credit.and_then(|(count, bytes)| {
                        let frame = Frame::Credit {
                            id: handle.id,
                            count,
                            bytes,
                        };
                        log::frame(Direction::WorkerOut, &frame, Some(&self.method));
                        state.outbox.push(frame);
                        state.link.take()
                    });
                    (item, waker)
                }
                None if stream.ended => {
                    drop(state);
                    self.done = true;
                    return Poll::Ready(None);
                }
                None => {
                    stream.receiver = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        let message = T::decode(item).map_err(|error| {
            Status::invalid_argument(format!(
                "a message of {}'s request stream did not decode as {}: {error}",
                self.method, self.request_type
            ))
        });
        Poll::Ready(Some(message))
    }
}

/// Forgets the streams of call `id` (of `generation`, if given), waking a
/// handler that waits to send or to receive.
pub(super) fn close_stream(shared: &Shared, id: u64, generation: Option<u64>) {
    let removed = {
        let mut state = lock(shared);
        match state.streams.get(&id) {
            Some(stream) if generation.is_none_or(|g| g == stream.generation) => {
                state.streams.remove(&id)
            }
            _ => None,
        }
    };
    if let Some(stream) = removed {
        for waker in [stream.sender, stream.receiver].into_iter().flatten() {
            waker.wake();
        }
    }
}
