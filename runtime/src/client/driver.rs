//! What the drivers do with a channel they made: end it when they know the
//! worker is gone, queue a control frame (`SHUTDOWN`), and watch it close
//! without keeping it open.

use super::channel::Channel;
use super::link::close;
use super::pending::{CloseReason, lock};
use crate::frame::Frame;
use crate::log::{self, Direction};

impl Channel {
    /// Ends the connection now: every pending call and every later call fails
    /// with `reason`. The link task still runs until the transport ends.
    pub(crate) fn terminate(&self, reason: CloseReason) {
        if let Some(shared) = self.direct() {
            close(shared, reason);
        }
    }

    /// Queues a control frame (e.g. `SHUTDOWN`) behind the calls already sent.
    pub(crate) fn send_control(&self, frame: Frame) -> bool {
        let Some(shared) = self.direct() else {
            return false;
        };
        let waker = {
            let mut state = lock(shared);
            if state.closed.is_some() || state.closing {
                return false;
            }
            log::frame(Direction::HostOut, &frame, None);
            state.outbox.push_back(frame);
            state.link.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        true
    }

    /// Watches this channel's connection without keeping it open (it holds
    /// the shared state, not a `Handle`, whose drop would close it).
    #[cfg(feature = "process")]
    pub(crate) fn watch_closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        use std::sync::Arc;

        use super::channel::{Inner, wait_closed};
        use super::source::SourceFuture;

        let closed: SourceFuture<'static, ()> = match &self.inner {
            Inner::Direct(handle) => {
                let shared = Arc::clone(&handle.shared);
                Box::pin(async move { wait_closed(&shared).await })
            }
            Inner::Source(source) => Arc::clone(source).closed(),
        };
        closed
    }
}
