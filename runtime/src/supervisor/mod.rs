//! [`Supervisor`]: restarts workers that end, checks their health, and keeps
//! one [`Channel`] per worker valid across every restart.
//!
//! One task per supervisor makes every decision, in the order things happen
//! (`central/`). It never waits: whatever takes time runs in a task of its
//! own and reports back. A watcher per worker (`watch.rs`) waits for its
//! exit, for its connection to end under a worker that lives on, and for
//! failed health checks, and names the worker's generation in its reports,
//! so a report about a worker already replaced is ignored; each start, stop
//! and backoff is a task too:
//!
//! ```text
//!  watcher ──Exited, ConnectionLost,──▶ ┌────────────────┐ ──Restarting, Started, GaveUp…──▶ events
//!           Unhealthy, Recycle          │                │
//!  start   ──Started(worker | error)──▶ │ supervisor task│ ──launches──▶ starts, stops, backoffs
//!  stop    ──Stopped(exit)────────────▶ │   (decides)    │ ──kill──▶ workers
//!  backoff ──Due──────────────────────▶ └────────────────┘ ──Up(channel) / Starting / Down──▶ worker slots
//! ```
//!
//! A caller holds a channel to the worker's slot, not to one worker: while
//! the slot is being refilled its calls wait (or fail fast), and an
//! idempotent call cut short by a crash runs again on the replacement.

mod central;
mod policy;
pub(crate) mod slot;
mod watch;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot};

use self::central::{Child, Command};
pub use self::policy::{
    DEFAULT_CONNECTION_LOST_GRACE, DEFAULT_HEALTH_CHECK_INTERVAL, DEFAULT_MAX_WAITING_CALLS,
    HealthCheck, Restart, RestartPolicy, Strategy, WhileRestarting,
};
use crate::client::Channel;
use crate::control::HealthReport;
use crate::driver::{Spawn, Worker};
use crate::error::{Error, ExitReason};
use crate::supervisor::slot::WorkerSlot;
use crate::sync::lock;

/// How many events a subscriber may fall behind before it misses some.
const EVENT_CAPACITY: usize = 1024;

/// What happened to a supervised worker, as reported to
/// [`Supervisor::subscribe`] (and logged through `tracing`).
///
/// The events about one worker process (or thread) starting or ending,
/// `Started`, `Exited` and `ConnectionLost`, carry its `pid`, so that the
/// events of one restart can be told from those of the next:
///
/// ```no_run
/// use workerbus::{ProcessDriver, RestartPolicy, Supervisor, SupervisorEvent};
///
/// # async fn example() -> Result<(), workerbus::Error> {
/// let supervisor = Supervisor::new();
/// let mut events = supervisor.subscribe();
/// let embedder = supervisor
///     .supervise("embedder", ProcessDriver::new("target/debug/embedder"), RestartPolicy::new())
///     .await?;
/// while let Ok(event) = events.recv().await {
///     match event {
///         SupervisorEvent::Started { worker, pid, .. } => println!("{worker} started as {pid:?}"),
///         SupervisorEvent::Exited { worker, exit, pid } => println!("{worker} ({pid:?}) {exit}"),
///         _ => {}
///     }
/// }
/// # drop(embedder);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum SupervisorEvent {
    /// A worker started (the first time, or again).
    Started {
        /// The worker's name.
        worker: String,
        /// How many times it has been restarted so far.
        restarts: u32,
        /// The process id of the worker that started, as its handle's
        /// `pid()` gives it: `None` for a thread worker.
        pid: Option<u32>,
    },
    /// A worker ended.
    Exited {
        /// The worker's name.
        worker: String,
        /// How.
        exit: ExitReason,
        /// The process id of the worker that ended (the one its `Started`
        /// named): `None` for a thread worker.
        pid: Option<u32>,
    },
    /// A worker will be restarted after `delay`.
    Restarting {
        /// The worker's name.
        worker: String,
        /// The backoff before the restart.
        delay: Duration,
        /// Which restart of the current run this is (1 for the first).
        attempt: u32,
    },
    /// Starting a worker again (or its replacement, when recycling) failed;
    /// a restart is retried within the policy's intensity.
    StartFailed {
        /// The worker's name.
        worker: String,
        /// The error, with its causes.
        error: String,
    },
    /// The worker was restarted too often, or failed to start too many times
    /// in a row; it stays down and its calls fail with
    /// [`Error::Unavailable`].
    GaveUp {
        /// The worker's name.
        worker: String,
        /// The restarts counted: within the period, or the failed starts in
        /// a row.
        restarts: u32,
        /// The intensity period.
        within: Duration,
        /// Why, as calls see it: the rule the worker broke, and how it last
        /// ended or the error of its last start.
        reason: String,
    },
    /// A worker answered a health check.
    Health {
        /// The worker's name.
        worker: String,
        /// What it reported.
        report: HealthReport,
    },
    /// A worker's connection ended while the worker lived on, and it did not
    /// end within the policy's
    /// [`connection_lost_grace`](RestartPolicy::connection_lost_grace): it
    /// is killed, then restarted like any worker that ends.
    ConnectionLost {
        /// The worker's name.
        worker: String,
        /// The process id of the worker killed: `None` for a thread worker.
        pid: Option<u32>,
    },
    /// A worker missed a health check, or has a call stuck past its deadline.
    Unresponsive {
        /// The worker's name.
        worker: String,
        /// Checks missed in a row (0 when a stuck call was reported).
        missed: u32,
    },
    /// A worker is replaced gracefully: the new one takes new calls while
    /// the old one finishes its own.
    Recycling {
        /// The worker's name.
        worker: String,
        /// Why, e.g. the threshold it passed.
        reason: String,
    },
    /// A worker was stopped and will not be restarted: its policy does not
    /// restart it after that exit, or the supervisor shut down.
    Stopped {
        /// The worker's name.
        worker: String,
    },
}

/// Restarts workers that end, per their [`RestartPolicy`], and checks their
/// health; made with a [`Strategy`] for the group.
///
/// ```no_run
/// use workerbus::{ProcessDriver, RestartPolicy, Supervisor};
///
/// # async fn example() -> Result<(), workerbus::Error> {
/// let supervisor = Supervisor::new();
/// let embedder = supervisor
///     .supervise("embedder", ProcessDriver::new("target/debug/embedder"), RestartPolicy::new())
///     .await?;
/// let channel = embedder.channel(); // stays valid across restarts
/// # drop(channel);
/// supervisor.shutdown().await;
/// # Ok(()) }
/// ```
///
/// Workers start in the order they are added and stop in reverse order.
/// Dropping every handle to the supervisor shuts its workers down.
#[derive(Clone)]
pub struct Supervisor {
    commands: mpsc::UnboundedSender<Command>,
    events: broadcast::Sender<SupervisorEvent>,
}

impl fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Supervisor").finish_non_exhaustive()
    }
}

impl Supervisor {
    /// A one-for-one supervisor. Call it within a tokio runtime.
    pub fn new() -> Supervisor {
        Supervisor::with_strategy(Strategy::OneForOne)
    }

    /// A supervisor of a group with `strategy`. Call it within a tokio
    /// runtime.
    pub fn with_strategy(strategy: Strategy) -> Supervisor {
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let commands = central::spawn(strategy, events.clone());
        Supervisor { commands, events }
    }

    /// Starts a worker with `spawn` and supervises it under `policy`.
    ///
    /// Fails, and supervises nothing, if the first start fails: a
    /// misconfigured worker is reported, not restarted in a loop. The start
    /// runs apart from the supervisor's other work: workers already
    /// supervised are restarted meanwhile as they need. Workers supervised
    /// at once (not one `supervise` after another) start side by side, and
    /// take their place in the start order as they come up.
    pub async fn supervise<S: Spawn>(
        &self,
        name: impl Into<String>,
        spawn: S,
        policy: RestartPolicy,
    ) -> Result<SupervisedWorker, Error> {
        let name = name.into();
        let slot = WorkerSlot::new(
            name.clone(),
            policy.while_restarting == WhileRestarting::FailFast,
            policy.max_waiting_calls,
        );
        let stats = Arc::new(Stats::default());
        let (reply, started) = oneshot::channel();
        let child = Child::new(
            name.clone(),
            Arc::new(spawn),
            policy,
            Arc::clone(&slot),
            Arc::clone(&stats),
        );
        self.commands
            .send(Command::Add {
                child: Box::new(child),
                reply,
            })
            .map_err(|_| gone(&name))?;
        let index = started.await.map_err(|_| gone(&name))??;
        Ok(SupervisedWorker {
            name,
            index,
            slot,
            stats,
            commands: self.commands.downgrade(),
        })
    }

    /// The supervisor's events, from now on. A subscriber that falls more
    /// than 1024 events behind misses the oldest (`RecvError::Lagged`).
    pub fn subscribe(&self) -> broadcast::Receiver<SupervisorEvent> {
        self.events.subscribe()
    }

    /// Stops every worker, in reverse start order, each gracefully within its
    /// policy's shutdown timeout; their channels then fail with
    /// [`Error::Unavailable`]. A worker being started is waited for (within
    /// its driver's startup timeout) and then stopped in its turn, so that no
    /// worker outlives the shutdown.
    pub async fn shutdown(&self) {
        let (reply, done) = oneshot::channel();
        if self.commands.send(Command::Shutdown { reply }).is_ok() {
            let _ = done.await;
        }
    }
}

impl Default for Supervisor {
    fn default() -> Supervisor {
        Supervisor::new()
    }
}

/// The error of a supervisor that is no longer there.
fn gone(name: &str) -> Error {
    Error::Spawn {
        worker: name.to_owned(),
        reason: "its supervisor has shut down".into(),
        source: None,
    }
}

/// A worker under a [`Supervisor`].
#[derive(Clone)]
pub struct SupervisedWorker {
    name: String,
    index: usize,
    slot: Arc<WorkerSlot>,
    stats: Arc<Stats>,
    commands: mpsc::WeakUnboundedSender<Command>,
}

impl SupervisedWorker {
    /// A channel to the worker that stays valid across its restarts: make
    /// generated clients from it once.
    pub fn channel(&self) -> Channel {
        self.slot.channel()
    }

    /// The worker's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many times the worker has been restarted (after crashes, missed
    /// health checks, or gracefully past a threshold).
    pub fn restarts(&self) -> u32 {
        self.stats.restarts.load(Ordering::Relaxed)
    }

    /// How the last worker process (or thread) ended, if one has: unlike
    /// [`exit_reason`](Self::exit_reason), set at each of its ends, while
    /// the supervisor restarts it.
    pub fn last_exit(&self) -> Option<ExitReason> {
        lock(&self.stats.last_exit).clone()
    }

    /// How the worker ended, or `None` while it runs.
    ///
    /// A supervised worker has ended when it is [down](Self::is_down) for
    /// good (its supervisor gave up on it, its policy does not restart it,
    /// or the supervisor shut down), not when one of its processes ends and
    /// is replaced: it then says how its last process (or thread) ended,
    /// [`ExitReason::Unknown`] if none ever did.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.stats.ended.borrow().clone()
    }

    /// Waits until the worker has ended and says how (see
    /// [`exit_reason`](Self::exit_reason) for when a supervised worker
    /// ends).
    ///
    /// ```no_run
    /// use workerbus::{ProcessDriver, Restart, RestartPolicy, Supervisor};
    ///
    /// # async fn example() -> Result<(), workerbus::Error> {
    /// let supervisor = Supervisor::new();
    /// let job = supervisor
    ///     .supervise(
    ///         "job",
    ///         ProcessDriver::new("target/debug/job"),
    ///         RestartPolicy::new().restart(Restart::Transient),
    ///     )
    ///     .await?;
    /// let exit = job.exited().await; // after its last restart
    /// println!("job {exit}");
    /// # Ok(()) }
    /// ```
    pub async fn exited(&self) -> ExitReason {
        self.watch_exit().await
    }

    /// [`exited`](Self::exited) as a future that does not borrow the handle:
    /// it can be awaited after the handle is dropped.
    pub fn watch_exit(&self) -> impl Future<Output = ExitReason> + Send + 'static {
        crate::driver::watch_exit(&self.stats.ended.subscribe())
    }

    /// The current worker's process id, if it runs in a process of its own
    /// (the last one's, between restarts). A new worker's id is recorded
    /// before the worker takes its first call.
    ///
    /// ```no_run
    /// use workerbus::{ProcessDriver, RestartPolicy, Supervisor};
    ///
    /// # async fn example() -> Result<(), workerbus::Error> {
    /// let supervisor = Supervisor::new();
    /// let embedder = supervisor
    ///     .supervise("embedder", ProcessDriver::new("target/debug/embedder"), RestartPolicy::new())
    ///     .await?;
    /// let before = embedder.pid();
    /// embedder.kill(); // restarted: a new process, a new id
    /// # drop(before);
    /// # Ok(()) }
    /// ```
    pub fn pid(&self) -> Option<u32> {
        Some(self.stats.pid.load(Ordering::Acquire)).filter(|&pid| pid != 0)
    }

    /// Whether a worker is running now (not between restarts, not down, and
    /// its connection open).
    pub fn is_running(&self) -> bool {
        self.slot.up().is_some_and(|channel| !channel.is_closed())
    }

    /// Whether the worker is down for good: its supervisor gave up on it,
    /// its policy does not restart it, or the supervisor shut down.
    pub fn is_down(&self) -> bool {
        self.slot.is_down()
    }

    /// How many calls are waiting for the worker to come back.
    pub fn calls_waiting(&self) -> usize {
        self.slot.waiting()
    }

    /// Kills the current worker now; its supervisor then treats it like a
    /// crash (a restart that counts against the intensity).
    pub fn kill(&self) {
        if let Some(commands) = self.commands.upgrade() {
            let _ = commands.send(Command::Kill { index: self.index });
        }
    }

    /// Replaces the worker gracefully now: a new worker takes new calls, the
    /// current one finishes the calls it has, then stops.
    pub fn recycle(&self) {
        if let Some(commands) = self.commands.upgrade() {
            let _ = commands.send(Command::Recycle {
                index: self.index,
                reason: "asked to".into(),
            });
        }
    }
}

impl fmt::Debug for SupervisedWorker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SupervisedWorker")
            .field("name", &self.name)
            .field("restarts", &self.restarts())
            .field("last_exit", &self.last_exit())
            .field("running", &self.is_running())
            .finish_non_exhaustive()
    }
}

struct Stats {
    restarts: AtomicU32,
    last_exit: Mutex<Option<ExitReason>>,
    /// The current worker's process id; 0 if none or not a process.
    pid: AtomicU32,
    /// How the worker ended, once it is down for good.
    ended: tokio::sync::watch::Sender<Option<ExitReason>>,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats {
            restarts: AtomicU32::new(0),
            last_exit: Mutex::new(None),
            pid: AtomicU32::new(0),
            ended: tokio::sync::watch::Sender::new(None),
        }
    }
}

impl Stats {
    /// Records that the worker is down for good, ended as its last process
    /// (or thread) did.
    fn ended(&self) {
        let exit = lock(&self.last_exit).clone().unwrap_or(ExitReason::Unknown);
        self.ended.send_replace(Some(exit));
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A [`Worker`] behind a pointer: a supervisor holds workers of any driver.
trait AnyWorker: Send + Sync {
    fn channel(&self) -> Channel;
    fn watch_exit(&self) -> BoxFuture<'static, ExitReason>;
    fn shutdown(&self) -> BoxFuture<'_, ExitReason>;
    fn kill(&self);
    fn pid(&self) -> Option<u32>;
}

impl<W: Worker> AnyWorker for W {
    fn channel(&self) -> Channel {
        Worker::channel(self)
    }

    fn watch_exit(&self) -> BoxFuture<'static, ExitReason> {
        Box::pin(Worker::watch_exit(self))
    }

    fn shutdown(&self) -> BoxFuture<'_, ExitReason> {
        Box::pin(Worker::shutdown(self))
    }

    fn kill(&self) {
        Worker::kill(self);
    }

    fn pid(&self) -> Option<u32> {
        Worker::pid(self)
    }
}

/// A [`Spawn`] behind a pointer.
trait AnySpawn: Send + Sync {
    fn spawn(&self) -> BoxFuture<'_, Result<Arc<dyn AnyWorker>, Error>>;
}

impl<S: Spawn> AnySpawn for S {
    fn spawn(&self) -> BoxFuture<'_, Result<Arc<dyn AnyWorker>, Error>> {
        Box::pin(async move {
            let worker = Spawn::spawn(self).await?;
            Ok(Arc::new(worker) as Arc<dyn AnyWorker>)
        })
    }
}

/// An error's text followed by each of its causes that the text does not
/// already name: what the supervisor reports of a failed start, so that the
/// cause (an OS error, say) reaches events and give-up reasons.
fn full_text(error: &Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spawn_error(reason: &str) -> Error {
        Error::Spawn {
            worker: "/bin/worker".into(),
            reason: reason.into(),
            source: Some(std::io::Error::from_raw_os_error(2)),
        }
    }

    #[test]
    fn a_failed_start_is_reported_with_its_cause() {
        let os_error = std::io::Error::from_raw_os_error(2).to_string();
        assert_eq!(
            full_text(&spawn_error("the program does not exist")),
            format!("failed to spawn worker /bin/worker: the program does not exist: {os_error}")
        );
        // Named once, should the error's own text already name its cause.
        let named = spawn_error(&format!("the program does not exist ({os_error})"));
        assert_eq!(full_text(&named), named.to_string());
    }
}
