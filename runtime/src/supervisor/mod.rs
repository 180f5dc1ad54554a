//! [`Supervisor`]: restarts workers that end, checks their health, and keeps
//! one [`Channel`] per worker valid across every restart.
//!
//! One task per supervisor makes every decision, in the order things happen;
//! small tasks per worker only watch (for its exit, for its health) and
//! report to it:
//!
//! ```text
//!  exit watcher ──Exited──▶ ┌────────────────┐ ──Restarting, Started──▶ events
//!  health check ──Recycle──▶│ supervisor task│ ──spawn / shutdown / kill──▶ workers
//!               ─Unhealthy─▶└────────────────┘ ──Up(channel) / Down──▶ worker slots
//! ```
//!
//! A caller holds a channel to the worker's slot, not to one worker: while
//! the slot is being refilled its calls wait (or fail fast), and an
//! idempotent call cut short by a crash runs again on the replacement.

mod policy;

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio::time::Instant;

pub use self::policy::{
    DEFAULT_MAX_WAITING_CALLS, HealthCheck, Restart, RestartPolicy, Strategy, WhileRestarting,
};
use crate::client::{Channel, SlotState, WorkerSlot};
use crate::control::HealthReport;
use crate::driver::{Spawn, Worker};
use crate::error::{Error, ExitReason};

/// How many events a subscriber may fall behind before it misses some.
const EVENT_CAPACITY: usize = 1024;

/// What happened to a supervised worker, as reported to
/// [`Supervisor::subscribe`] (and logged through `tracing`).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum SupervisorEvent {
    /// A worker started (the first time, or again).
    Started {
        /// The worker's name.
        worker: String,
        /// How many times it has been restarted so far.
        restarts: u32,
    },
    /// A worker ended.
    Exited {
        /// The worker's name.
        worker: String,
        /// How.
        exit: ExitReason,
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
    /// Starting a worker again failed; it will be retried within the
    /// policy's intensity.
    StartFailed {
        /// The worker's name.
        worker: String,
        /// The error.
        error: String,
    },
    /// The worker was restarted too often; it stays down and its calls fail
    /// with [`Error::Unavailable`].
    GaveUp {
        /// The worker's name.
        worker: String,
        /// The restarts in the period.
        restarts: u32,
        /// The intensity period.
        within: Duration,
    },
    /// A worker answered a health check.
    Health {
        /// The worker's name.
        worker: String,
        /// What it reported.
        report: HealthReport,
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
        let (commands, receiver) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let central = Central {
            strategy,
            children: Vec::new(),
            commands: commands.downgrade(),
            events: events.clone(),
        };
        tokio::spawn(central.run(receiver));
        Supervisor { commands, events }
    }

    /// Starts a worker with `spawn` and supervises it under `policy`.
    ///
    /// Fails, and supervises nothing, if the first start fails: a
    /// misconfigured worker is reported, not restarted in a loop.
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
        let child = Child {
            name: name.clone(),
            spawn: Box::new(spawn),
            policy,
            slot: Arc::clone(&slot),
            stats: Arc::clone(&stats),
            worker: None,
            generation: 0,
            restart_times: VecDeque::new(),
            streak: 0,
            started_at: Instant::now(),
            health: None,
            pending: false,
            down: false,
        };
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
    /// [`Error::Unavailable`].
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

    /// How the worker last ended, if it has.
    pub fn last_exit(&self) -> Option<ExitReason> {
        self.stats
            .last_exit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The current worker's process id, if it runs in a process of its own
    /// (the last one's, between restarts).
    pub fn pid(&self) -> Option<u32> {
        Some(self.stats.pid.load(Ordering::Relaxed)).filter(|&pid| pid != 0)
    }

    /// Whether a worker is running now (not between restarts, not down).
    pub fn is_running(&self) -> bool {
        self.slot.up().is_some()
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
                generation: None,
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

#[derive(Default)]
struct Stats {
    restarts: AtomicU32,
    last_exit: Mutex<Option<ExitReason>>,
    /// The current worker's process id; 0 if none or not a process.
    pid: AtomicU32,
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

enum Command {
    Add {
        child: Box<Child>,
        reply: oneshot::Sender<Result<usize, Error>>,
    },
    Exited {
        index: usize,
        generation: u64,
        exit: ExitReason,
    },
    /// Restart these children, in this order (their delay has passed).
    Restart {
        indices: Vec<usize>,
    },
    Unhealthy {
        index: usize,
        generation: u64,
        missed: u32,
    },
    Recycle {
        index: usize,
        /// `None`: whatever worker is current.
        generation: Option<u64>,
        reason: String,
    },
    Kill {
        index: usize,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

struct Child {
    name: String,
    spawn: Box<dyn AnySpawn>,
    policy: RestartPolicy,
    slot: Arc<WorkerSlot>,
    stats: Arc<Stats>,
    worker: Option<Arc<dyn AnyWorker>>,
    /// Bumped whenever a worker is installed or stopped on purpose, so that
    /// reports about an older worker are recognised and ignored.
    generation: u64,
    /// When the restarts within the intensity period happened.
    restart_times: VecDeque<Instant>,
    /// Restarts in a row, for the backoff.
    streak: u32,
    started_at: Instant,
    health: Option<AbortHandle>,
    /// A restart is scheduled.
    pending: bool,
    /// Not coming back.
    down: bool,
}

struct Central {
    strategy: Strategy,
    children: Vec<Child>,
    commands: mpsc::WeakUnboundedSender<Command>,
    events: broadcast::Sender<SupervisorEvent>,
}

impl Central {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        while let Some(command) = commands.recv().await {
            match command {
                Command::Add { child, reply } => {
                    self.children.push(*child);
                    let index = self.children.len() - 1;
                    match self.start(index).await {
                        Ok(()) => {
                            let _ = reply.send(Ok(index));
                        }
                        Err(error) => {
                            self.children.pop();
                            let _ = reply.send(Err(error));
                        }
                    }
                }
                Command::Exited {
                    index,
                    generation,
                    exit,
                } => self.exited(index, generation, exit).await,
                Command::Restart { indices } => {
                    for index in indices {
                        if self.children[index].pending && !self.children[index].down {
                            self.restart_now(index).await;
                        }
                    }
                }
                Command::Unhealthy {
                    index,
                    generation,
                    missed,
                } => {
                    let child = &self.children[index];
                    if child.generation == generation
                        && let Some(worker) = &child.worker
                    {
                        tracing::warn!(worker = %child.name, missed, "killing an unresponsive worker");
                        worker.kill();
                    }
                }
                Command::Recycle {
                    index,
                    generation,
                    reason,
                } => {
                    let child = &self.children[index];
                    if child.worker.is_some() && generation.is_none_or(|g| g == child.generation) {
                        self.recycle(index, reason).await;
                    }
                }
                Command::Kill { index } => {
                    if let Some(worker) = &self.children[index].worker {
                        worker.kill();
                    }
                }
                Command::Shutdown { reply } => {
                    self.shutdown_all().await;
                    let _ = reply.send(());
                    return;
                }
            }
        }
        // Every handle to the supervisor is gone.
        self.shutdown_all().await;
    }

    fn emit(&self, event: SupervisorEvent) {
        match &event {
            SupervisorEvent::Started { worker, restarts } => {
                tracing::info!(%worker, restarts, "worker started");
            }
            SupervisorEvent::Exited { worker, exit } => {
                tracing::warn!(%worker, %exit, "worker ended")
            }
            SupervisorEvent::Restarting {
                worker,
                delay,
                attempt,
            } => tracing::info!(%worker, ?delay, attempt, "restarting worker"),
            SupervisorEvent::StartFailed { worker, error } => {
                tracing::error!(%worker, %error, "restarting worker failed");
            }
            SupervisorEvent::GaveUp {
                worker,
                restarts,
                within,
            } => tracing::error!(%worker, restarts, ?within, "gave up restarting worker"),
            SupervisorEvent::Health { worker, report } => {
                tracing::debug!(%worker, ?report, "worker health")
            }
            SupervisorEvent::Unresponsive { worker, missed } => {
                tracing::warn!(%worker, missed, "worker unresponsive");
            }
            SupervisorEvent::Recycling { worker, reason } => {
                tracing::info!(%worker, %reason, "replacing worker gracefully");
            }
            SupervisorEvent::Stopped { worker } => {
                tracing::info!(%worker, "worker stopped for good")
            }
        }
        let _ = self.events.send(event);
    }

    /// Spawns a worker for child `index` and installs it; leaves everything
    /// as it was if the spawn fails.
    async fn start(&mut self, index: usize) -> Result<(), Error> {
        let worker = self.children[index].spawn.spawn().await?;
        let child = &mut self.children[index];
        child.generation += 1;
        child.pending = false;
        child.started_at = Instant::now();
        child.slot.set(SlotState::Up(worker.channel()));
        child
            .stats
            .pid
            .store(worker.pid().unwrap_or(0), Ordering::Relaxed);
        let generation = child.generation;
        let exit = worker.watch_exit();
        let commands = self.commands.clone();
        tokio::spawn(async move {
            let exit = exit.await;
            if let Some(commands) = commands.upgrade() {
                let _ = commands.send(Command::Exited {
                    index,
                    generation,
                    exit,
                });
            }
        });
        if let Some(check) = child.policy.health.clone() {
            let task = tokio::spawn(check_health(
                worker.channel(),
                check,
                index,
                generation,
                child.name.clone(),
                self.commands.clone(),
                self.events.clone(),
            ));
            if let Some(previous) = child.health.replace(task.abort_handle()) {
                previous.abort();
            }
        }
        child.worker = Some(worker);
        let event = SupervisorEvent::Started {
            worker: child.name.clone(),
            restarts: child.stats.restarts.load(Ordering::Relaxed),
        };
        self.emit(event);
        Ok(())
    }

    async fn exited(&mut self, index: usize, generation: u64, exit: ExitReason) {
        let child = &mut self.children[index];
        if child.generation != generation {
            return; // a worker stopped on purpose, already replaced
        }
        child.worker = None;
        if let Some(health) = child.health.take() {
            health.abort();
        }
        *child
            .stats
            .last_exit
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(exit.clone());
        let abnormal = !matches!(exit, ExitReason::Code(0) | ExitReason::Stopped);
        let restart = match child.policy.restart {
            Restart::Permanent => true,
            Restart::Transient => abnormal,
            Restart::Temporary => false,
        };
        let name = child.name.clone();
        self.emit(SupervisorEvent::Exited {
            worker: name.clone(),
            exit: exit.clone(),
        });
        if !restart {
            let child = &mut self.children[index];
            child.down = true;
            child.slot.set(SlotState::Down(format!(
                "it {exit} and its policy does not restart it"
            )));
            self.emit(SupervisorEvent::Stopped { worker: name });
            return;
        }
        let group: Vec<usize> = match self.strategy {
            Strategy::OneForOne => vec![index],
            Strategy::OneForAll => (0..self.children.len()).collect(),
            Strategy::RestForOne => (index..self.children.len()).collect(),
        };
        let group: Vec<usize> = group
            .into_iter()
            .filter(|&j| j == index || !self.children[j].down)
            .collect();
        // The others stop first, in reverse start order.
        for &j in group.iter().rev().filter(|&&j| j != index) {
            self.stop(j, SlotState::Starting).await;
            self.children[j].pending = true;
            self.children[j]
                .stats
                .restarts
                .fetch_add(1, Ordering::Relaxed);
        }
        let Some(delay) = self.count_restart(index, &exit) else {
            // Gave up on the failed worker; the others start again anyway.
            let others: Vec<usize> = group.into_iter().filter(|&j| j != index).collect();
            self.schedule(others, Duration::ZERO);
            return;
        };
        self.children[index].pending = true;
        self.schedule(group, delay);
    }

    /// Records a restart of child `index` against its intensity: the delay
    /// before it, or `None` (and the child down) if that is one too many.
    fn count_restart(&mut self, index: usize, exit: &ExitReason) -> Option<Duration> {
        let now = Instant::now();
        let child = &mut self.children[index];
        let within = child.policy.within;
        while child
            .restart_times
            .front()
            .is_some_and(|&at| now.duration_since(at) >= within)
        {
            child.restart_times.pop_front();
        }
        if child.restart_times.len() >= child.policy.max_restarts as usize {
            child.down = true;
            child.pending = false;
            let restarts = child.restart_times.len() as u32;
            child.slot.set(SlotState::Down(format!(
                "its supervisor gave up after {restarts} restarts within {within:?}; it last {exit}"
            )));
            let event = SupervisorEvent::GaveUp {
                worker: child.name.clone(),
                restarts,
                within,
            };
            self.emit(event);
            return None;
        }
        child.restart_times.push_back(now);
        if child.started_at.elapsed() > within {
            child.streak = 0;
        }
        child.streak += 1;
        child.stats.restarts.fetch_add(1, Ordering::Relaxed);
        child.slot.set(SlotState::Starting);
        let delay = child.policy.restart_delay(child.streak);
        let event = SupervisorEvent::Restarting {
            worker: child.name.clone(),
            delay,
            attempt: child.streak,
        };
        self.emit(event);
        Some(delay)
    }

    /// Restarts `indices`, in order, after `delay`, without holding up the
    /// supervisor meanwhile.
    fn schedule(&self, indices: Vec<usize>, delay: Duration) {
        if indices.is_empty() {
            return;
        }
        let commands = self.commands.clone();
        tokio::spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if let Some(commands) = commands.upgrade() {
                let _ = commands.send(Command::Restart { indices });
            }
        });
    }

    /// Starts child `index` again; a failed start counts as another restart.
    async fn restart_now(&mut self, index: usize) {
        if let Err(error) = self.start(index).await {
            let name = self.children[index].name.clone();
            self.emit(SupervisorEvent::StartFailed {
                worker: name,
                error: error.to_string(),
            });
            let exit = ExitReason::Unknown;
            if let Some(delay) = self.count_restart(index, &exit) {
                self.schedule(vec![index], delay);
            }
        }
    }

    /// Replaces child `index` gracefully: the new worker is installed before
    /// the old one is asked to finish its calls and stop.
    async fn recycle(&mut self, index: usize, reason: String) {
        let name = self.children[index].name.clone();
        self.emit(SupervisorEvent::Recycling {
            worker: name.clone(),
            reason,
        });
        let old = self.children[index].worker.take();
        let stats = Arc::clone(&self.children[index].stats);
        stats.restarts.fetch_add(1, Ordering::Relaxed);
        if let Err(error) = self.start(index).await {
            stats.restarts.fetch_sub(1, Ordering::Relaxed);
            self.children[index].worker = old;
            self.emit(SupervisorEvent::StartFailed {
                worker: name,
                error: error.to_string(),
            });
            return;
        }
        if let Some(old) = old {
            let timeout = self.children[index].policy.shutdown_timeout;
            tokio::spawn(async move {
                if tokio::time::timeout(timeout, old.shutdown()).await.is_err() {
                    old.kill();
                }
            });
        }
    }

    /// Stops child `index` on purpose (gracefully within its shutdown
    /// timeout), leaving its slot in `state`.
    async fn stop(&mut self, index: usize, state: SlotState) {
        let child = &mut self.children[index];
        child.generation += 1;
        if let Some(health) = child.health.take() {
            health.abort();
        }
        child.slot.set(state);
        let Some(worker) = child.worker.take() else {
            return;
        };
        let exit =
            match tokio::time::timeout(child.policy.shutdown_timeout, worker.shutdown()).await {
                Ok(exit) => exit,
                Err(_) => {
                    worker.kill();
                    tokio::time::timeout(Duration::from_secs(1), worker.watch_exit())
                        .await
                        .unwrap_or(ExitReason::Unknown)
                }
            };
        let name = child.name.clone();
        self.emit(SupervisorEvent::Exited { worker: name, exit });
    }

    async fn shutdown_all(&mut self) {
        for index in (0..self.children.len()).rev() {
            if self.children[index].down {
                continue;
            }
            self.children[index].down = true;
            self.stop(index, SlotState::Down("its supervisor shut it down".into()))
                .await;
            let name = self.children[index].name.clone();
            self.emit(SupervisorEvent::Stopped { worker: name });
        }
    }
}

/// Checks one worker's health until it fails a check or passes a threshold,
/// and reports that to the supervisor.
async fn check_health(
    channel: Channel,
    check: HealthCheck,
    index: usize,
    generation: u64,
    name: String,
    commands: mpsc::WeakUnboundedSender<Command>,
    events: broadcast::Sender<SupervisorEvent>,
) {
    let send = |command: Command| {
        if let Some(commands) = commands.upgrade() {
            let _ = commands.send(command);
        }
    };
    let mut missed = 0;
    let mut ticks = tokio::time::interval_at(Instant::now() + check.interval, check.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match channel.health(check.timeout).await {
            Ok(report) => {
                missed = 0;
                let _ = events.send(SupervisorEvent::Health {
                    worker: name.clone(),
                    report: report.clone(),
                });
                if report.stalled > 0 {
                    let _ = events.send(SupervisorEvent::Unresponsive {
                        worker: name.clone(),
                        missed: 0,
                    });
                    send(Command::Unhealthy {
                        index,
                        generation,
                        missed,
                    });
                    return;
                }
                let passed = match (check.max_memory, check.max_processed) {
                    (Some(max), _) if report.memory_bytes > max => Some(format!(
                        "its resident memory, {} bytes, is above {max}",
                        report.memory_bytes
                    )),
                    (_, Some(max)) if report.processed >= max => Some(format!(
                        "it has processed {} calls (threshold {max})",
                        report.processed
                    )),
                    _ => None,
                };
                if let Some(reason) = passed {
                    send(Command::Recycle {
                        index,
                        generation: Some(generation),
                        reason,
                    });
                    return;
                }
            }
            Err(error) => {
                missed += 1;
                tracing::warn!(worker = %name, missed, %error, "health check missed");
                let _ = events.send(SupervisorEvent::Unresponsive {
                    worker: name.clone(),
                    missed,
                });
                if missed >= check.max_missed {
                    send(Command::Unhealthy {
                        index,
                        generation,
                        missed,
                    });
                    return;
                }
            }
        }
    }
}
