//! Transports: a connected duplex of [`Frame`]s, and the in-memory pair.
//!
//! A transport is anything that is a [`Stream`] of received frames and a
//! [`Sink`] of frames to send. Drivers only produce transports; the client
//! ([`Channel`](crate::Channel)) and the server
//! ([`serve_transport`](crate::serve_transport)) run on any of them. A byte
//! stream becomes one with [`FrameCodec`](crate::FrameCodec):
//!
//! ```
//! use tokio_util::codec::Framed;
//! use workerbus::{FrameCodec, Transport};
//!
//! fn assert_transport<T: Transport>(_: T) {}
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let (a, _b) = tokio::io::duplex(64 * 1024);
//! assert_transport(Framed::new(a, FrameCodec::new()));
//! # }
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use futures_core::Stream;
use futures_sink::Sink;

use crate::error::FrameError;
use crate::frame::Frame;

/// A connected duplex of frames: a [`Stream`] of received frames and a
/// [`Sink`] of frames to send.
///
/// Implemented for every type with those capabilities, e.g.
/// `tokio_util::codec::Framed<S, FrameCodec>` over a socket, and
/// [`MemoryTransport`]. A stream that ends means the peer closed its end.
pub trait Transport:
    Stream<Item = Result<Frame, FrameError>> + Sink<Frame, Error = FrameError> + Send + Unpin + 'static
{
}

impl<T> Transport for T where
    T: Stream<Item = Result<Frame, FrameError>>
        + Sink<Frame, Error = FrameError>
        + Send
        + Unpin
        + 'static
{
}

/// The default number of frames an in-memory transport buffers per direction
/// before its sender waits.
pub const DEFAULT_MEMORY_CAPACITY: usize = 1024;

/// One end of an in-memory transport: frames move between the two ends (and
/// threads) as values, never encoded.
///
/// Each direction buffers up to its capacity; a sender whose peer stops
/// reading waits rather than buffering without bound. Dropping an end closes
/// both directions: the peer's stream ends and its sends fail with
/// [`FrameError::Closed`].
///
/// ```
/// use futures_util::{SinkExt, StreamExt};
/// use workerbus::{Frame, MemoryTransport};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let (mut host, mut worker) = MemoryTransport::pair();
/// host.send(Frame::Cancel { id: 7 }).await.unwrap();
/// assert_eq!(worker.next().await.unwrap().unwrap(), Frame::Cancel { id: 7 });
/// drop(host);
/// assert!(worker.next().await.is_none());
/// # }
/// ```
pub struct MemoryTransport {
    send: Arc<Pipe>,
    recv: Arc<Pipe>,
    /// Frames taken from `recv` in one batch, handed out one by one.
    inbox: VecDeque<Frame>,
    /// Frames accepted by `start_send`, moved to `send` on flush.
    outbox: VecDeque<Frame>,
    capacity: usize,
}

struct Pipe {
    state: Mutex<PipeState>,
}

#[derive(Default)]
struct PipeState {
    frames: VecDeque<Frame>,
    reader: Option<Waker>,
    writer: Option<Waker>,
    writer_closed: bool,
    reader_closed: bool,
}

impl Pipe {
    fn new() -> Arc<Pipe> {
        Arc::new(Pipe {
            state: Mutex::new(PipeState::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, PipeState> {
        crate::sync::lock(&self.state)
    }
}

impl MemoryTransport {
    /// Two connected ends with the [default capacity](DEFAULT_MEMORY_CAPACITY).
    pub fn pair() -> (MemoryTransport, MemoryTransport) {
        MemoryTransport::pair_with_capacity(DEFAULT_MEMORY_CAPACITY)
    }

    /// Two connected ends, each direction buffering up to `capacity` frames
    /// (at least 1) before the sender waits.
    pub fn pair_with_capacity(capacity: usize) -> (MemoryTransport, MemoryTransport) {
        let capacity = capacity.max(1);
        let a_to_b = Pipe::new();
        let b_to_a = Pipe::new();
        let end = |send: &Arc<Pipe>, recv: &Arc<Pipe>| MemoryTransport {
            send: Arc::clone(send),
            recv: Arc::clone(recv),
            inbox: VecDeque::new(),
            outbox: VecDeque::new(),
            capacity,
        };
        (end(&a_to_b, &b_to_a), end(&b_to_a, &a_to_b))
    }
}

impl Stream for MemoryTransport {
    type Item = Result<Frame, FrameError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(frame) = this.inbox.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        let mut state = this.recv.lock();
        if state.frames.is_empty() {
            if state.writer_closed {
                return Poll::Ready(None);
            }
            if !state
                .reader
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                state.reader = Some(cx.waker().clone());
            }
            return Poll::Pending;
        }
        // Take the whole batch: one lock per batch, not per frame. The swap
        // hands the empty inbox (and its capacity) back to the pipe.
        std::mem::swap(&mut state.frames, &mut this.inbox);
        let writer = state.writer.take();
        drop(state);
        if let Some(writer) = writer {
            writer.wake();
        }
        Poll::Ready(this.inbox.pop_front().map(Ok))
    }
}

impl Sink<Frame> for MemoryTransport {
    type Error = FrameError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), FrameError>> {
        if self.outbox.len() < self.capacity {
            return Poll::Ready(Ok(()));
        }
        self.as_mut().poll_flush(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, frame: Frame) -> Result<(), FrameError> {
        self.outbox.push_back(frame);
        Ok(())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), FrameError>> {
        let this = &mut *self;
        if this.outbox.is_empty() {
            return Poll::Ready(Ok(()));
        }
        let mut state = this.send.lock();
        if state.reader_closed {
            this.outbox.clear();
            return Poll::Ready(Err(FrameError::Closed));
        }
        // The pipe takes the whole batch only if it stays within capacity
        // (a batch is at most `capacity` frames, by `poll_ready`).
        if !state.frames.is_empty() && state.frames.len() + this.outbox.len() > this.capacity {
            state.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        if state.frames.is_empty() {
            std::mem::swap(&mut state.frames, &mut this.outbox);
        } else {
            state.frames.extend(this.outbox.drain(..));
        }
        let reader = state.reader.take();
        drop(state);
        if let Some(reader) = reader {
            reader.wake();
        }
        Poll::Ready(Ok(()))
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), FrameError>> {
        match self.as_mut().poll_flush(cx) {
            Poll::Ready(Ok(())) | Poll::Ready(Err(FrameError::Closed)) => {}
            other => return other,
        }
        let reader = {
            let mut state = self.send.lock();
            state.writer_closed = true;
            state.reader.take()
        };
        if let Some(reader) = reader {
            reader.wake();
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for MemoryTransport {
    fn drop(&mut self) {
        let reader = {
            let mut state = self.send.lock();
            state.writer_closed = true;
            state.reader.take()
        };
        let writer = {
            let mut state = self.recv.lock();
            state.reader_closed = true;
            state.frames.clear();
            state.writer.take()
        };
        for waker in [reader, writer].into_iter().flatten() {
            waker.wake();
        }
    }
}

/// How many batches a writer takes from its queue in one poll.
const MAX_BATCHES_PER_POLL: usize = 4;

/// Writes frames to a transport in batches: everything queued since the last
/// turn goes out with one flush. Used by both ends of a connection.
#[derive(Debug, Default)]
pub(crate) struct FrameWriter {
    /// Frames taken from the owner's queue and not yet accepted by the sink.
    sending: VecDeque<Frame>,
    unflushed: bool,
}

impl FrameWriter {
    /// Sends what `refill` provides (it swaps the owner's queue into the
    /// buffer it is given, and may register the task's waker with the
    /// owner; it is called whenever that buffer runs empty) and
    /// flushes. `Ready(Ok)` once everything is written and flushed; `Pending`
    /// while the transport cannot take more, having arranged to be woken.
    pub(crate) fn poll_write<T: Transport>(
        &mut self,
        transport: &mut T,
        cx: &mut Context<'_>,
        mut refill: impl FnMut(&mut VecDeque<Frame>, &Context<'_>),
    ) -> Poll<Result<(), FrameError>> {
        // Callers on other threads may refill the queue as fast as it is
        // written; a bounded number of batches per turn keeps reading (and
        // everyone else on this thread) from starving.
        let mut batches = 0;
        'write: loop {
            if self.sending.is_empty() {
                if batches == MAX_BATCHES_PER_POLL {
                    cx.waker().wake_by_ref();
                    break 'write;
                }
                batches += 1;
                refill(&mut self.sending, cx);
                if self.sending.is_empty() {
                    break 'write;
                }
            }
            while !self.sending.is_empty() {
                match Pin::new(&mut *transport).poll_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        if let Some(frame) = self.sending.pop_front() {
                            Pin::new(&mut *transport).start_send(frame)?;
                            self.unflushed = true;
                        }
                    }
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                    Poll::Pending => break 'write,
                }
            }
        }
        if self.unflushed {
            match Pin::new(&mut *transport).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if self.sending.is_empty() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    /// The frames taken from the owner's queue and never handed to the
    /// transport, in order.
    pub(crate) fn take_unsent(&mut self) -> VecDeque<Frame> {
        std::mem::take(&mut self.sending)
    }

    /// Whether everything handed to the writer has been written and flushed.
    pub(crate) fn is_idle(&self) -> bool {
        self.sending.is_empty() && !self.unflushed
    }
}

impl fmt::Debug for MemoryTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryTransport")
            .field("capacity", &self.capacity)
            .field("unsent", &self.outbox.len())
            .field("unread", &self.inbox.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    fn cancel(id: u64) -> Frame {
        Frame::Cancel { id }
    }

    async fn send(t: &mut MemoryTransport, frame: Frame) -> Result<(), FrameError> {
        poll_fn(|cx| Pin::new(&mut *t).poll_ready(cx)).await?;
        Pin::new(&mut *t).start_send(frame)?;
        poll_fn(|cx| Pin::new(&mut *t).poll_flush(cx)).await
    }

    async fn recv(t: &mut MemoryTransport) -> Option<Frame> {
        poll_fn(|cx| Pin::new(&mut *t).poll_next(cx))
            .await
            .map(Result::unwrap)
    }

    #[tokio::test]
    async fn frames_arrive_in_order_in_both_directions() {
        let (mut a, mut b) = MemoryTransport::pair();
        for id in 0..100 {
            send(&mut a, cancel(id)).await.unwrap();
        }
        send(&mut b, cancel(1000)).await.unwrap();
        for id in 0..100 {
            assert_eq!(recv(&mut b).await, Some(cancel(id)));
        }
        assert_eq!(recv(&mut a).await, Some(cancel(1000)));
    }

    #[tokio::test]
    async fn a_full_pipe_makes_the_sender_wait_until_the_reader_reads() {
        let (mut a, mut b) = MemoryTransport::pair_with_capacity(2);
        send(&mut a, cancel(1)).await.unwrap();
        send(&mut a, cancel(2)).await.unwrap();
        // The pipe holds 2 frames: the third flush cannot complete.
        Pin::new(&mut a).start_send(cancel(3)).unwrap();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut a).poll_flush(&mut cx).is_pending());
        assert_eq!(recv(&mut b).await, Some(cancel(1)));
        assert!(Pin::new(&mut a).poll_flush(&mut cx).is_ready());
        assert_eq!(recv(&mut b).await, Some(cancel(2)));
        assert_eq!(recv(&mut b).await, Some(cancel(3)));
    }

    #[tokio::test]
    async fn dropping_one_end_closes_both_directions() {
        let (mut a, b) = MemoryTransport::pair();
        drop(b);
        assert_eq!(recv(&mut a).await, None);
        assert!(matches!(
            send(&mut a, cancel(1)).await,
            Err(FrameError::Closed)
        ));
    }

    #[tokio::test]
    async fn frames_sent_before_close_are_still_delivered() {
        let (mut a, mut b) = MemoryTransport::pair();
        send(&mut a, cancel(1)).await.unwrap();
        poll_fn(|cx| Pin::new(&mut a).poll_close(cx)).await.unwrap();
        assert_eq!(recv(&mut b).await, Some(cancel(1)));
        assert_eq!(recv(&mut b).await, None);
    }
}
