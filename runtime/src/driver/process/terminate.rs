//! SIGTERM ends a worker process as a host's `SHUTDOWN` does: each of its
//! connections reads a `SHUTDOWN` of the worker's own after the frames
//! already received, so the serve loop refuses new calls, lets the calls in
//! flight finish and ends the connection, exactly as for a host's.
//!
//! ```text
//!  SIGTERM ──▶ Stop::request ──wakes──▶ each Stoppable transport ──SHUTDOWN──▶ its serve loop
//! ```
//!
//! A connection that has not completed the handshake ends at once instead
//! (a `SHUTDOWN` before the greeting is refused like any other frame).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use futures_core::Stream;
use futures_sink::Sink;

use crate::error::FrameError;
use crate::frame::Frame;
use crate::sync::lock;

/// Whether the worker was told to stop, and the connections to tell.
#[derive(Debug, Default)]
pub(super) struct Stop {
    requested: AtomicBool,
    /// The waker of each connection waiting for frames, by connection.
    waiting: Mutex<HashMap<u64, Waker>>,
    next: AtomicU64,
}

impl Stop {
    /// Tells every connection, now and later, to stop.
    pub(super) fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
        let waiting = std::mem::take(&mut *self.waiting());
        for waker in waiting.into_values() {
            waker.wake();
        }
    }

    #[inline]
    pub(super) fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waker>> {
        lock(&self.waiting)
    }
}

/// A connection's transport that yields a `SHUTDOWN` once its worker is
/// told to stop. Reading costs one atomic load; a waker is registered only
/// when the transport has nothing to read, and only when it changes.
pub(super) struct Stoppable<T> {
    inner: T,
    stop: Arc<Stop>,
    id: u64,
    registered: Option<Waker>,
    delivered: bool,
}

impl<T> Stoppable<T> {
    pub(super) fn new(inner: T, stop: Arc<Stop>) -> Stoppable<T> {
        Stoppable {
            inner,
            id: stop.next.fetch_add(1, Ordering::Relaxed),
            stop,
            registered: None,
            delivered: false,
        }
    }
}

impl<T> Drop for Stoppable<T> {
    fn drop(&mut self) {
        if self.registered.is_some() {
            self.stop.waiting().remove(&self.id);
        }
    }
}

impl<T> Stream for Stoppable<T>
where
    T: Stream<Item = Result<Frame, FrameError>> + Unpin,
{
    type Item = Result<Frame, FrameError>;

    // Inlined into the serve loop: a frame returned through a call of its
    // own would be copied once more (about 50 instructions a call).
    #[inline]
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.delivered {
            return Pin::new(&mut this.inner).poll_next(cx);
        }
        if this.stop.is_requested() {
            this.delivered = true;
            return Poll::Ready(Some(Ok(Frame::Shutdown)));
        }
        let polled = Pin::new(&mut this.inner).poll_next(cx);
        if polled.is_pending()
            && !this
                .registered
                .as_ref()
                .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            this.stop.waiting().insert(this.id, cx.waker().clone());
            this.registered = Some(cx.waker().clone());
            // Requested between the check above and the registration.
            if this.stop.is_requested() {
                cx.waker().wake_by_ref();
            }
        }
        polled
    }
}

impl<T> Sink<Frame> for Stoppable<T>
where
    T: Sink<Frame, Error = FrameError> + Unpin,
{
    type Error = FrameError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), FrameError>> {
        Pin::new(&mut self.inner).poll_ready(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, frame: Frame) -> Result<(), FrameError> {
        Pin::new(&mut self.inner).start_send(frame)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), FrameError>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), FrameError>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::MemoryTransport;
    use futures_util::{SinkExt, StreamExt};

    #[tokio::test]
    async fn a_stop_is_read_after_the_frames_already_received_and_wakes_a_waiting_reader() {
        let stop = Arc::new(Stop::default());
        let (mut host, worker) = MemoryTransport::pair();
        let mut worker = Stoppable::new(worker, Arc::clone(&stop));
        host.send(Frame::Cancel { id: 1 }).await.unwrap();
        assert_eq!(
            worker.next().await.unwrap().unwrap(),
            Frame::Cancel { id: 1 }
        );
        let reading = async {
            let first = worker.next().await.unwrap().unwrap();
            // Then the connection goes on as before.
            host.send(Frame::Cancel { id: 2 }).await.unwrap();
            let second = worker.next().await.unwrap().unwrap();
            (first, second)
        };
        let stopping = async {
            tokio::task::yield_now().await;
            stop.request();
        };
        let ((first, second), ()) = tokio::join!(reading, stopping);
        assert_eq!(first, Frame::Shutdown);
        assert_eq!(second, Frame::Cancel { id: 2 });
        assert!(stop.waiting().is_empty());
    }

    #[tokio::test]
    async fn a_connection_made_after_the_stop_reads_it_first_and_leaves_no_waker() {
        let stop = Arc::new(Stop::default());
        stop.request();
        let (_host, worker) = MemoryTransport::pair();
        let mut worker = Stoppable::new(worker, Arc::clone(&stop));
        assert_eq!(worker.next().await.unwrap().unwrap(), Frame::Shutdown);
        let (_host, other) = MemoryTransport::pair();
        let mut other = Stoppable::new(other, Arc::clone(&stop));
        assert_eq!(other.next().await.unwrap().unwrap(), Frame::Shutdown);
        drop((worker, other));
        assert!(stop.waiting().is_empty());
    }
}
