//! [`RestartPolicy`] and its parts: when, how fast and how often a
//! supervised worker is restarted, and how its health is checked.

use std::time::Duration;

use crate::backoff::Backoff;

/// When a worker that ended is started again (Erlang/OTP's restart types).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Restart {
    /// Always: whatever the reason it ended.
    #[default]
    Permanent,
    /// Only if it ended abnormally: a non-zero exit code, a signal, a panic,
    /// a kill. A worker that exits with code 0 (or a thread worker that
    /// stops) stays down.
    Transient,
    /// Never.
    Temporary,
}

/// How a group of workers reacts when one of them must be restarted
/// (Erlang/OTP's strategies).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Strategy {
    /// Restart only that worker.
    #[default]
    OneForOne,
    /// Stop every other worker (in reverse start order) and restart them all
    /// (in start order): for workers that depend on each other's state.
    OneForAll,
    /// Stop the workers started after it (in reverse order) and restart it
    /// and them (in order): for workers that depend on those before them.
    RestForOne,
}

/// The default cap on calls waiting for a supervised worker to restart
/// ([`RestartPolicy::max_waiting_calls`]).
pub const DEFAULT_MAX_WAITING_CALLS: usize = 10_000;

/// What calls to a worker do while it is being restarted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum WhileRestarting {
    /// Wait for the new worker, each within its own timeout.
    #[default]
    Wait,
    /// Fail at once with [`Error::Unavailable`](crate::Error::Unavailable).
    FailFast,
}

/// Periodic health checks of a worker, answered by its runtime (not by a
/// handler): resident memory, processed calls, uptime, and calls stuck past
/// their deadline.
///
/// A worker that misses `max_missed` checks in a row, or has a call stuck
/// past its deadline (a handler in a busy loop), is killed and restarted; a
/// worker past a threshold is replaced gracefully: the new worker takes new
/// calls while the old one finishes its own, so no call is lost.
///
/// Every [`RestartPolicy`] checks its worker with
/// [`HealthCheck::default()`] unless told otherwise: every second, each check
/// waiting a second, so a worker that answers no check for about three
/// seconds (stopped by a signal, or a handler blocking its only thread) is
/// replaced. [`RestartPolicy::health_check`] sets another check, and
/// [`RestartPolicy::without_health_check`] turns checking off.
///
/// The plan this library grew from restarts its embedder above 300 MB or
/// after 200 embeddings:
///
/// ```
/// use std::time::Duration;
/// use workerbus::HealthCheck;
///
/// let check = HealthCheck::every(Duration::from_secs(10))
///     .timeout(Duration::from_secs(5))
///     .recycle_above_memory(300_000_000)
///     .recycle_after_processed(200);
/// # let _ = check;
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
    pub(crate) max_missed: u32,
    pub(crate) max_memory: Option<u64>,
    pub(crate) max_processed: Option<u64>,
}

impl HealthCheck {
    /// Checks every `interval`, each check waiting up to `interval` for its
    /// answer; three missed checks in a row mean the worker is wedged.
    pub fn every(interval: Duration) -> HealthCheck {
        HealthCheck {
            interval,
            timeout: interval,
            max_missed: 3,
            max_memory: None,
            max_processed: None,
        }
    }

    /// How long a check waits for its answer.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> HealthCheck {
        self.timeout = timeout;
        self
    }

    /// How many checks in a row may go unanswered before the worker is
    /// killed and restarted (at least 1).
    #[must_use]
    pub fn max_missed(mut self, missed: u32) -> HealthCheck {
        self.max_missed = missed.max(1);
        self
    }

    /// Replaces the worker gracefully once its resident memory exceeds
    /// `bytes`. (A thread worker reports its whole process's memory.)
    #[must_use]
    pub fn recycle_above_memory(mut self, bytes: u64) -> HealthCheck {
        self.max_memory = Some(bytes);
        self
    }

    /// Replaces the worker gracefully once it has processed `calls` calls.
    #[must_use]
    pub fn recycle_after_processed(mut self, calls: u64) -> HealthCheck {
        self.max_processed = Some(calls);
        self
    }
}

/// The check every [`RestartPolicy`] starts with: every second, each check
/// waiting a second for its answer, three missed in a row and the worker is
/// wedged; no recycling thresholds.
impl Default for HealthCheck {
    fn default() -> HealthCheck {
        HealthCheck::every(DEFAULT_HEALTH_CHECK_INTERVAL)
    }
}

/// The interval of [`HealthCheck::default()`], which is also each check's
/// timeout.
pub const DEFAULT_HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The default of [`RestartPolicy::connection_lost_grace`].
pub const DEFAULT_CONNECTION_LOST_GRACE: Duration = Duration::from_secs(1);

/// How a [`Supervisor`](crate::Supervisor) treats one worker.
///
/// The defaults: [`Restart::Permanent`]; the first restart in a row at
/// once, then a [`Backoff`] from 10 ms doubling to 2 s with 20 % jitter;
/// more than 5 restarts within 10 s, or 5 failed starts in a row, and the
/// supervisor gives up on the worker; the [default health
/// check](HealthCheck::default) (a worker that answers none for about three
/// seconds is replaced); a worker whose connection ended is killed if it has
/// not ended itself within 1 s; calls wait during a restart, at most 10,000
/// at a time; 5 s for a graceful shutdown before a kill.
///
/// ```
/// use std::time::Duration;
/// use workerbus::{Backoff, HealthCheck, Restart, RestartPolicy};
///
/// let policy = RestartPolicy::new()
///     .restart(Restart::Transient)
///     .intensity(3, Duration::from_secs(60))
///     .backoff(Backoff::exponential(Duration::from_millis(50)).max_delay(Duration::from_secs(5)))
///     .health_check(HealthCheck::every(Duration::from_secs(10)).recycle_after_processed(200));
/// assert_eq!(policy.restart_delay(1), Duration::ZERO);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct RestartPolicy {
    pub(crate) restart: Restart,
    pub(crate) backoff: Backoff,
    pub(crate) max_restarts: u32,
    pub(crate) within: Duration,
    pub(crate) health: Option<HealthCheck>,
    pub(crate) connection_lost_grace: Duration,
    pub(crate) while_restarting: WhileRestarting,
    pub(crate) max_waiting_calls: usize,
    pub(crate) shutdown_timeout: Duration,
}

impl RestartPolicy {
    /// The default policy.
    pub fn new() -> RestartPolicy {
        RestartPolicy::default()
    }

    /// When the worker is restarted.
    #[must_use]
    pub fn restart(mut self, restart: Restart) -> RestartPolicy {
        self.restart = restart;
        self
    }

    /// The delays between restarts in a row (the first is immediate).
    #[must_use]
    pub fn backoff(mut self, backoff: Backoff) -> RestartPolicy {
        self.backoff = backoff;
        self
    }

    /// Gives up on the worker (reports it, stops restarting it) when it would
    /// be restarted more than `max_restarts` times within `within`, or when
    /// `max_restarts` starts in a row have failed, however long they took: a
    /// worker that never starts is given up after that many attempts, even if
    /// each takes longer than the period (a start that times out).
    ///
    /// A failed start counts as a restart within the period, and in the run
    /// of failed starts; a start that succeeds ends the run.
    #[must_use]
    pub fn intensity(mut self, max_restarts: u32, within: Duration) -> RestartPolicy {
        self.max_restarts = max_restarts;
        self.within = within;
        self
    }

    /// Checks the worker's health with `check` instead of
    /// [`HealthCheck::default()`].
    #[must_use]
    pub fn health_check(mut self, check: HealthCheck) -> RestartPolicy {
        self.health = Some(check);
        self
    }

    /// Checks nothing of the worker's health: a worker that stops answering
    /// (stopped by a signal, or wedged in a handler) is not replaced until it
    /// ends.
    ///
    /// ```
    /// use workerbus::RestartPolicy;
    ///
    /// let policy = RestartPolicy::new().without_health_check();
    /// # let _ = policy;
    /// ```
    #[must_use]
    pub fn without_health_check(mut self) -> RestartPolicy {
        self.health = None;
        self
    }

    /// How long a worker whose connection ended may take to end by itself
    /// before it is killed (and then restarted like any worker that ends):
    /// [1 s](DEFAULT_CONNECTION_LOST_GRACE) by default. A worker that
    /// crashes ends with its connection, and is restarted at once, whatever
    /// this grace; it is for a worker whose connection broke while it lives
    /// on, which can serve no call.
    #[must_use]
    pub fn connection_lost_grace(mut self, grace: Duration) -> RestartPolicy {
        self.connection_lost_grace = grace;
        self
    }

    /// What calls do while the worker restarts.
    #[must_use]
    pub fn while_restarting(mut self, behaviour: WhileRestarting) -> RestartPolicy {
        self.while_restarting = behaviour;
        self
    }

    /// How many calls may wait for a restart at once
    /// ([10,000](DEFAULT_MAX_WAITING_CALLS) by default); more fail at once
    /// with [`Error::Unavailable`](crate::Error::Unavailable).
    #[must_use]
    pub fn max_waiting_calls(mut self, calls: usize) -> RestartPolicy {
        self.max_waiting_calls = calls;
        self
    }

    /// How long a graceful stop (a group restart, a supervisor shutdown)
    /// waits before it kills the worker.
    #[must_use]
    pub fn shutdown_timeout(mut self, timeout: Duration) -> RestartPolicy {
        self.shutdown_timeout = timeout;
        self
    }

    /// The delay before restart number `n` of a run of restarts (1 for the
    /// first): none for the first, then [`Backoff::delay`] of `n - 1`. A run
    /// ends when a worker has stayed up longer than the intensity period.
    pub fn restart_delay(&self, n: u32) -> Duration {
        if n <= 1 {
            Duration::ZERO
        } else {
            self.backoff.delay(n - 1)
        }
    }
}

impl Default for RestartPolicy {
    fn default() -> RestartPolicy {
        RestartPolicy {
            restart: Restart::Permanent,
            backoff: Backoff::exponential(Duration::from_millis(10))
                .max_delay(Duration::from_secs(2))
                .jitter(0.2),
            max_restarts: 5,
            within: Duration::from_secs(10),
            health: Some(HealthCheck::default()),
            connection_lost_grace: DEFAULT_CONNECTION_LOST_GRACE,
            while_restarting: WhileRestarting::Wait,
            max_waiting_calls: DEFAULT_MAX_WAITING_CALLS,
            shutdown_timeout: Duration::from_secs(5),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Restart delays grow by the backoff's factor until its cap: the
        /// growth is really exponential.
        #[test]
        fn restart_delays_grow_exponentially(initial_ms in 1u64..200, factor in 1.5f64..3.0, n in 2u32..30) {
            let policy = RestartPolicy::new().backoff(
                Backoff::exponential(Duration::from_millis(initial_ms))
                    .multiplier(factor)
                    .max_delay(Duration::from_secs(3600)),
            );
            let (this, next) = (policy.restart_delay(n), policy.restart_delay(n + 1));
            prop_assert!(next >= this);
            if next < Duration::from_secs(3600) {
                let ratio = next.as_secs_f64() / this.as_secs_f64();
                prop_assert!((ratio - factor).abs() < 1e-6, "ratio {} vs {}", ratio, factor);
            }
            prop_assert_eq!(policy.restart_delay(1), Duration::ZERO);
            prop_assert_eq!(policy.restart_delay(2), Duration::from_millis(initial_ms));
        }
    }
}
