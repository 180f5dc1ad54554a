//! Peers that have not greeted a process worker yet: where each connection
//! stands with its greeting, and the cap and deadline on the connections of
//! the named socket that wait to greet; and when the accept loop pauses.
//!
//! Anyone running as the worker's user can connect to its named socket; only
//! a peer that knows the secret gets past the greeting. Until then a
//! connection is read with a small frame limit and no memory reserved ahead
//! of its bytes (`SocketTransport::until_greeted`), it must greet within
//! [`ServeOptions::greeting_timeout`](crate::ServeOptions::greeting_timeout),
//! and at most
//! [`ServeOptions::max_ungreeted_connections`](crate::ServeOptions::max_ungreeted_connections)
//! may wait at once: a new connection beyond that closes the oldest. A host
//! greets in its first frame, as soon as it connects, so peers that connect
//! and say nothing can neither hold the worker's descriptors nor keep a host
//! out; they can only push each other out.
//!
//! ```text
//!             accept ──▶ waiting (in order of arrival) ──greeting accepted──▶ served
//!                          │            │
//!     the timeout passes ──┘            └── more than the cap wait: the oldest
//!          (closed)                             (closed)
//! ```
//!
//! When accepting itself fails for want of descriptors or memory, the accept
//! loop pauses ([`ACCEPT_BACKOFF`]): retrying at once would spin, since the
//! connection that could not be accepted keeps the socket ready.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::sync::lock;

/// The pause after accepting on the named socket fails (out of descriptors
/// or memory: `EMFILE`, `ENFILE`, `ENOMEM`, `ENOBUFS`, or anything else
/// wrong with the listening socket itself): 100 ms, doubling at each failure
/// in a row up to 1 s.
pub(crate) const ACCEPT_BACKOFF: Backoff =
    Backoff::exponential(Duration::from_millis(100)).max_delay(Duration::from_secs(1));

/// How long to pause before accepting again after accepting failed for the
/// `failures`-th time in a row (from 1); `None` if the failure was the
/// connection's own (it went away before it was accepted), after which the
/// next may be accepted at once.
pub(crate) fn accept_pause(error: &io::Error, failures: u32) -> Option<Duration> {
    match error.kind() {
        io::ErrorKind::ConnectionAborted
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::Interrupted => None,
        _ => Some(ACCEPT_BACKOFF.nominal(failures)),
    }
}

/// The connections of a named socket that have not greeted, oldest first,
/// and the limits they wait under.
#[derive(Debug)]
pub(crate) struct Admission {
    max: usize,
    timeout: Duration,
    waiting: Mutex<Waiting>,
}

#[derive(Debug, Default)]
struct Waiting {
    /// The place the next connection gets: places only grow, so the first
    /// entry is the oldest.
    next: u64,
    /// The signal that closes each waiting connection, by place.
    connections: BTreeMap<u64, Arc<Notify>>,
}

impl Admission {
    /// At most `max` (at least 1) connections wait to greet, each for at
    /// most `timeout`.
    pub(crate) fn new(max: usize, timeout: Duration) -> Arc<Admission> {
        Arc::new(Admission {
            max: max.max(1),
            timeout,
            waiting: Mutex::new(Waiting::default()),
        })
    }

    /// Admits a new connection, which must greet within the timeout. If
    /// more than the cap would then wait, the oldest are told to close.
    pub(crate) fn admit(self: &Arc<Admission>) -> Arc<Greeting> {
        let close = Arc::new(Notify::new());
        let deadline = Instant::now().checked_add(self.timeout);
        let mut waiting = lock(&self.waiting);
        let place = waiting.next;
        waiting.next += 1;
        waiting.connections.insert(place, Arc::clone(&close));
        while waiting.connections.len() > self.max {
            if let Some((_, oldest)) = waiting.connections.pop_first() {
                // Stored if its connection is not waiting for it yet.
                oldest.notify_one();
            }
        }
        drop(waiting);
        Arc::new(Greeting {
            greeted: AtomicBool::new(false),
            place: Some(Place {
                admission: Arc::clone(self),
                place,
                close,
                deadline,
            }),
        })
    }

    /// How many connections wait to greet now.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        lock(&self.waiting).connections.len()
    }

    fn leave(&self, place: u64) {
        lock(&self.waiting).connections.remove(&place);
    }
}

/// Where one connection stands with its greeting: whether its peer has been
/// accepted (proved that it knows the secret), and, on the named socket, its
/// place among the connections waiting to be. Shared by the connection's
/// transport (which reads with the greeting's limit until then), its control
/// exchanges (which accept the greeting) and the task serving it.
#[derive(Debug)]
pub(crate) struct Greeting {
    greeted: AtomicBool,
    /// `None` for the connection the worker was born with: its peer is the
    /// host that started it, which neither waits in line nor runs out of time.
    place: Option<Place>,
}

#[derive(Debug)]
struct Place {
    admission: Arc<Admission>,
    place: u64,
    /// Notified when newer connections push this one out.
    close: Arc<Notify>,
    /// `None` if the timeout is too long to be a time.
    deadline: Option<Instant>,
}

/// Why the worker closed a connection whose peer had not greeted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ungreeted {
    /// The greeting timeout passed.
    TimedOut(Duration),
    /// More connections than the cap waited to greet, and this was the
    /// oldest.
    Displaced(usize),
}

impl fmt::Display for Ungreeted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ungreeted::TimedOut(timeout) => {
                write!(
                    f,
                    "the peer did not complete the handshake within {timeout:?}"
                )
            }
            Ungreeted::Displaced(max) => write!(
                f,
                "the peer had not completed the handshake when a newer connection came and \
                 {max} were already waiting to (the oldest is closed)"
            ),
        }
    }
}

impl Greeting {
    /// The greeting of the connection the worker was born with.
    pub(crate) fn inherited() -> Arc<Greeting> {
        Arc::new(Greeting {
            greeted: AtomicBool::new(false),
            place: None,
        })
    }

    /// Whether the peer's greeting has been accepted.
    pub(crate) fn is_done(&self) -> bool {
        self.greeted.load(Ordering::Acquire)
    }

    /// The peer's greeting was accepted: from now on it is read with the
    /// full frame limit, has no deadline, and no longer counts against the
    /// cap.
    pub(crate) fn done(&self) {
        if !self.greeted.swap(true, Ordering::AcqRel)
            && let Some(place) = &self.place
        {
            place.admission.leave(place.place);
        }
    }

    /// Resolves when the connection must be closed because its peer has not
    /// greeted: its time ran out, or newer connections pushed it out. Never,
    /// once the peer has greeted, nor on the connection the worker was born
    /// with.
    ///
    /// The task serving the connection polls this after the connection's
    /// serve loop, which is where a greeting is accepted: a greeting read in
    /// the same turn as the deadline passes still counts.
    pub(crate) async fn unwelcome(&self) -> Ungreeted {
        let Some(place) = &self.place else {
            return std::future::pending().await;
        };
        let displaced = Ungreeted::Displaced(place.admission.max);
        let why = match place.deadline {
            Some(deadline) => tokio::select! {
                () = tokio::time::sleep_until(deadline) => Ungreeted::TimedOut(place.admission.timeout),
                () = place.close.notified() => displaced,
            },
            None => {
                place.close.notified().await;
                displaced
            }
        };
        if self.is_done() {
            return std::future::pending().await;
        }
        why
    }
}

impl Drop for Greeting {
    fn drop(&mut self) {
        if let Some(place) = &self.place {
            place.admission.leave(place.place);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::pin::pin;
    use std::task::{Context, Poll};

    /// Polls `future` once: whether it has resolved, and to what.
    fn poll_once<F: Future>(future: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        future.poll(&mut Context::from_waker(std::task::Waker::noop()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_does_not_greet_in_time_is_closed() {
        let admission = Admission::new(4, Duration::from_secs(10));
        let greeting = admission.admit();
        let started = Instant::now();
        assert_eq!(
            greeting.unwelcome().await,
            Ungreeted::TimedOut(Duration::from_secs(10))
        );
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        drop(greeting);
        assert_eq!(admission.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_greets_has_no_deadline_and_leaves_the_line() {
        let admission = Admission::new(4, Duration::from_secs(10));
        let greeting = admission.admit();
        assert_eq!(admission.waiting(), 1);
        greeting.done();
        assert!(greeting.is_done());
        assert_eq!(admission.waiting(), 0);
        let unwelcome = tokio::time::timeout(Duration::from_secs(3600), greeting.unwelcome());
        assert!(unwelcome.await.is_err(), "a greeted connection was closed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_greeting_in_the_turn_the_deadline_passes_still_counts() {
        let admission = Admission::new(4, Duration::from_secs(1));
        let greeting = admission.admit();
        tokio::time::advance(Duration::from_secs(2)).await;
        greeting.done();
        let mut unwelcome = pin!(greeting.unwelcome());
        assert!(poll_once(unwelcome.as_mut()).is_pending());
    }

    #[tokio::test(start_paused = true)]
    async fn beyond_the_cap_the_oldest_connections_are_pushed_out() {
        let admission = Admission::new(2, Duration::from_secs(10));
        let first = admission.admit();
        let greeted = admission.admit();
        greeted.done();
        // The greeted one left the line: two wait, nobody is pushed out.
        let second = admission.admit();
        let mut unwelcome = pin!(first.unwelcome());
        assert!(poll_once(unwelcome.as_mut()).is_pending());
        let third = admission.admit();
        assert_eq!(unwelcome.await, Ungreeted::Displaced(2));
        assert_eq!(admission.waiting(), 2);
        let mut unwelcome = pin!(second.unwelcome());
        assert!(poll_once(unwelcome.as_mut()).is_pending());
        // A connection that ends leaves the line too.
        drop(third);
        assert_eq!(admission.waiting(), 1);
        let _fourth = admission.admit();
        assert!(poll_once(unwelcome.as_mut()).is_pending());
        let mut greeted_stays = pin!(greeted.unwelcome());
        let _fifth = admission.admit();
        assert!(poll_once(greeted_stays.as_mut()).is_pending());
        assert_eq!(unwelcome.await, Ungreeted::Displaced(2));
    }

    #[tokio::test(start_paused = true)]
    async fn the_inherited_connection_never_times_out() {
        let greeting = Greeting::inherited();
        let unwelcome = tokio::time::timeout(Duration::from_secs(3600), greeting.unwelcome());
        assert!(unwelcome.await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_too_long_for_a_clock_is_no_deadline() {
        let admission = Admission::new(1, Duration::MAX);
        let greeting = admission.admit();
        let unwelcome = tokio::time::timeout(Duration::from_secs(3600), greeting.unwelcome());
        assert!(unwelcome.await.is_err());
        let _newer = admission.admit();
        assert_eq!(greeting.unwelcome().await, Ungreeted::Displaced(1));
    }

    #[test]
    fn accepting_pauses_unless_the_failure_was_the_connections_own() {
        let out_of = |errno| io::Error::from_raw_os_error(errno);
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOMEM, libc::ENOBUFS] {
            let pauses: Vec<_> = (1..=6)
                .map(|failures| accept_pause(&out_of(errno), failures))
                .collect();
            let ms = |ms| Some(Duration::from_millis(ms));
            assert_eq!(
                pauses,
                [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)],
                "errno {errno}"
            );
        }
        // Something wrong with the listening socket itself: no spinning
        // either.
        assert!(accept_pause(&out_of(libc::EBADF), 1).is_some());
        for errno in [libc::ECONNABORTED, libc::ECONNRESET, libc::EINTR] {
            assert_eq!(accept_pause(&out_of(errno), 1), None, "errno {errno}");
        }
    }

    #[test]
    fn reasons_say_what_happened() {
        assert_eq!(
            Ungreeted::TimedOut(Duration::from_secs(10)).to_string(),
            "the peer did not complete the handshake within 10s"
        );
        assert_eq!(
            Ungreeted::Displaced(64).to_string(),
            "the peer had not completed the handshake when a newer connection came and 64 were \
             already waiting to (the oldest is closed)"
        );
    }
}
