//! [`Cancellation`]: a call's cancellation, for the work its handler hands
//! off, and [`Cancelled`], the future that waits for it.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Tells the work a handler hands off (to `tokio::spawn`, to
/// `spawn_blocking`, to a thread) that its call was given up on, so that it
/// stops; given by [`Context::cancelled`](crate::Context::cancelled).
///
/// A handler needs none of this for itself: its own future is dropped when
/// its call is cancelled. Work it started runs on until it looks here.
///
/// It fires (once, for good) when the call's deadline passes, or, before
/// that, when the worker gives the call up: the host sent `CANCEL` (its
/// caller dropped the call or its stream), the connection ended with the
/// call running (the host disconnected or exited, the worker was killed or
/// its serve loop dropped), or the runtime running the call shut down. It
/// does not fire because the handler answered: work that outlives its
/// handler's answer runs on until the deadline, if the call has one. A
/// one-way message has no `CANCEL`; its token fires at its deadline or when
/// the connection ends with it running.
///
/// Cloning is cheap (a reference count) and every clone fires together;
/// it is `Send + Sync + 'static`, to move into the work. Check it with
/// [`is_cancelled`](Cancellation::is_cancelled) in a blocking loop, or
/// await it (or [`cancelled`](Cancellation::cancelled), in a `select!`) in
/// async code. A token with a deadline is awaited on a Tokio runtime with
/// its time driver enabled, as any timer.
///
/// ```
/// use std::time::{Duration, Instant};
/// use workerbus::Context;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// // In a handler called directly, as in its unit tests, the token fires
/// // at the context's deadline.
/// let cx = Context::new("indexer.index").with_deadline(Instant::now() + Duration::from_millis(20));
/// let cancellation = cx.cancelled();
/// let work = tokio::task::spawn_blocking(move || {
///     let mut chunks = 0;
///     while !cancellation.is_cancelled() {
///         chunks += 1; // one chunk of work between checks
///         std::thread::sleep(Duration::from_millis(1));
///     }
///     chunks
/// });
/// cx.cancelled().await;
/// assert!(work.await.unwrap() > 0);
/// # }
/// ```
#[derive(Clone)]
pub struct Cancellation {
    /// Fired by the serve loop; none for a context made outside a worker,
    /// or asked for once its call had ended.
    token: Option<CancellationToken>,
    deadline: Option<Instant>,
}

impl Cancellation {
    pub(crate) fn new(token: Option<CancellationToken>, deadline: Option<Instant>) -> Cancellation {
        Cancellation { token, deadline }
    }

    /// Whether the call was given up on: a cheap check (an atomic load and,
    /// if the call has a deadline, a look at the clock) for a loop to make
    /// between chunks of work.
    ///
    /// ```
    /// use workerbus::Context;
    ///
    /// // No deadline, and no worker to cancel it: it never fires.
    /// let cancellation = Context::new("indexer.index").cancelled();
    /// assert!(!cancellation.is_cancelled());
    /// ```
    pub fn is_cancelled(&self) -> bool {
        self.token
            .as_ref()
            .is_some_and(CancellationToken::is_cancelled)
            || self
                .deadline
                .is_some_and(|deadline| deadline <= Instant::now())
    }

    /// A future that completes when the call is given up on (at once if it
    /// already was). It owns what it needs, so it can be kept, moved into a
    /// task, or raced against the work in a `select!`; awaiting the
    /// `Cancellation` itself does the same.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use workerbus::Context;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let cx = Context::new("indexer.index").with_deadline(Instant::now() + Duration::from_millis(10));
    /// let cancellation = cx.cancelled();
    /// let work = tokio::spawn(async move {
    ///     tokio::select! {
    ///         () = cancellation.cancelled() => "stopped",
    ///         () = std::future::pending::<()>() => "finished",
    ///     }
    /// });
    /// assert_eq!(work.await.unwrap(), "stopped");
    /// # }
    /// ```
    pub fn cancelled(&self) -> Cancelled {
        Cancelled {
            fired: self.token.clone().map(CancellationToken::cancelled_owned),
            deadline: self.deadline,
            timer: None,
        }
    }
}

/// A token already fired: for a call whose connection has ended.
pub(crate) fn fired() -> CancellationToken {
    let token = CancellationToken::new();
    token.cancel();
    token
}

impl IntoFuture for Cancellation {
    type Output = ();
    type IntoFuture = Cancelled;

    /// Awaiting a `Cancellation` waits for it to fire, as
    /// [`cancelled`](Cancellation::cancelled) does.
    fn into_future(self) -> Cancelled {
        Cancelled {
            fired: self.token.map(CancellationToken::cancelled_owned),
            deadline: self.deadline,
            timer: None,
        }
    }
}

impl fmt::Debug for Cancellation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cancellation")
            .field("cancelled", &self.is_cancelled())
            .field("deadline", &self.deadline.map(Instant::into_std))
            .finish()
    }
}

pin_project_lite::pin_project! {
    /// Completes when its [`Cancellation`] fires; made by
    /// [`Cancellation::cancelled`], or by awaiting a `Cancellation`.
    ///
    /// ```
    /// use workerbus::{Cancelled, Context};
    ///
    /// let cx = Context::new("indexer.index");
    /// let cancelled: Cancelled = cx.cancelled().cancelled();
    /// // A future like any other, to await or race against the work.
    /// drop(cancelled);
    /// ```
    #[must_use = "futures do nothing unless polled"]
    pub struct Cancelled {
        #[pin]
        fired: Option<WaitForCancellationFutureOwned>,
        deadline: Option<Instant>,
        // Made at the first poll, so that the future can be made outside a
        // runtime.
        #[pin]
        timer: Option<Sleep>,
    }
}

impl Future for Cancelled {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        if let Some(fired) = this.fired.as_pin_mut()
            && fired.poll(cx).is_ready()
        {
            return Poll::Ready(());
        }
        let Some(deadline) = *this.deadline else {
            return Poll::Pending;
        };
        if this.timer.is_none() {
            this.timer.set(Some(tokio::time::sleep_until(deadline)));
        }
        match this.timer.as_pin_mut() {
            Some(timer) => timer.poll(cx),
            None => Poll::Pending,
        }
    }
}

impl fmt::Debug for Cancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cancelled")
            .field("deadline", &self.deadline.map(Instant::into_std))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn without_a_token_or_deadline_it_never_fires() {
        let cancellation = Cancellation::new(None, None);
        assert!(!cancellation.is_cancelled());
        let mut cancelled = std::pin::pin!(cancellation.cancelled());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(cancelled.as_mut().poll(&mut cx).is_pending());
    }

    #[tokio::test]
    async fn every_clone_fires_with_its_token() {
        let token = CancellationToken::new();
        let cancellation = Cancellation::new(Some(token.clone()), None);
        let clone = cancellation.clone();
        let waiting = tokio::spawn(clone.cancelled());
        let awaited = tokio::spawn(cancellation.clone().into_future());
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished() && !awaited.is_finished());
        assert!(!cancellation.is_cancelled());
        token.cancel();
        assert!(cancellation.is_cancelled() && clone.is_cancelled());
        waiting.await.unwrap();
        awaited.await.unwrap();
        // A future made after it fired completes at once.
        cancellation.cancelled().await;
    }

    #[tokio::test(start_paused = true)]
    async fn it_fires_at_its_deadline_and_not_before() {
        let deadline = Instant::now() + Duration::from_secs(5);
        let cancellation = Cancellation::new(Some(CancellationToken::new()), Some(deadline));
        let waiting = tokio::spawn(cancellation.cancelled());
        tokio::time::sleep_until(deadline - Duration::from_millis(1)).await;
        assert!(!cancellation.is_cancelled());
        assert!(!waiting.is_finished());
        tokio::time::sleep_until(deadline).await;
        assert!(cancellation.is_cancelled());
        waiting.await.unwrap();
        assert_eq!(Instant::now(), deadline);
    }

    #[test]
    fn a_fired_token_is_cancelled_and_debug_says_so() {
        let cancellation = Cancellation::new(Some(fired()), None);
        assert!(cancellation.is_cancelled());
        assert_eq!(
            format!("{cancellation:?}"),
            "Cancellation { cancelled: true, deadline: None }"
        );
    }
}
