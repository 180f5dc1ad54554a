//! The supervisor's task: every decision about a supervisor's workers, made
//! in one place, in the order the reports arrive. It never waits for a
//! start, a stop or a backoff: each runs in a task of its own and reports
//! back, so one worker slow to start holds up no other. What takes several
//! steps (a group's restart, a shutdown) is a plan (`plan.rs`).
//!
//! A worker's states: `Up` (running a worker), `Idle` (none running: ended,
//! stopped or failed to start, and to be started by the plan about it) and
//! `Down` (not coming back), each with at most one start or stop under way.
//!
//! A restart counts against the worker's intensity when it is decided: after
//! the worker ended, or after a start failed. Past the intensity (too many
//! restarts within the period, or too many failed starts in a row) the
//! worker is given up, and the reason names how it last ended or the error
//! of its last start.

mod plan;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use self::plan::{Plan, Step, hand_over};
use super::watch::{self, Watch};
use super::{
    AnySpawn, AnyWorker, Restart, RestartPolicy, Stats, Strategy, SupervisorEvent, full_text, gone,
};
use crate::error::{Error, ExitReason};
use crate::supervisor::slot::{SlotState, WorkerSlot};
use crate::sync::lock;

/// What a supervisor's handles ask of its task.
pub(super) enum Command {
    /// Start a worker and supervise it.
    Add {
        child: Box<Child>,
        reply: oneshot::Sender<Result<usize, Error>>,
    },
    /// Kill the current worker (it is then restarted like any that ends).
    Kill {
        index: usize,
    },
    /// Replace the current worker gracefully.
    Recycle {
        index: usize,
        reason: String,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// What the tasks a supervisor's task launched report back.
pub(super) enum Report {
    /// A worker ended (its watcher saw it).
    Exited {
        index: usize,
        generation: u64,
        exit: ExitReason,
    },
    /// A worker's connection ended and the worker did not, within its grace.
    ConnectionLost { index: usize, generation: u64 },
    /// A worker missed its health checks, or has a call stuck.
    Unhealthy {
        index: usize,
        generation: u64,
        missed: u32,
    },
    /// A worker passed a health threshold.
    Recycle {
        index: usize,
        generation: u64,
        reason: String,
    },
    /// A worker's first start ended.
    Admitted {
        child: Box<Child>,
        reply: oneshot::Sender<Result<usize, Error>>,
        result: Result<Arc<dyn AnyWorker>, Error>,
    },
    /// A start of child `index` ended: a restart, or a recycle's replacement
    /// (as the child's `busy` says).
    Started {
        index: usize,
        result: Result<Arc<dyn AnyWorker>, Error>,
    },
    /// A stop of child `index`'s worker (of process id `pid`) ended.
    Stopped {
        index: usize,
        exit: ExitReason,
        pid: Option<u32>,
    },
    /// A worker no longer wanted (replaced by a recycle, or started during a
    /// shutdown) has been stopped.
    Disposed,
    /// A plan's backoff has passed.
    Due { plan: u64 },
}

/// One supervised worker, as its supervisor's task keeps it.
pub(super) struct Child {
    name: String,
    spawn: Arc<dyn AnySpawn>,
    policy: RestartPolicy,
    slot: Arc<WorkerSlot>,
    stats: Arc<Stats>,
    state: State,
    /// A start or stop of this child running apart.
    busy: Option<Busy>,
    /// Bumped whenever a worker is installed or stopped on purpose, so that
    /// reports about an older worker are recognised and ignored.
    generation: u64,
    /// When the restarts within the intensity period happened.
    restart_times: VecDeque<Instant>,
    /// Restarts in a row, for the backoff.
    streak: u32,
    /// Starts that failed in a row, for the intensity.
    failed_starts: u32,
    /// The current worker was killed on purpose: its connection ending before
    /// it does is no news.
    killed: bool,
    started_at: Instant,
    /// The current worker's watcher.
    watch: Option<AbortHandle>,
}

impl Child {
    pub(super) fn new(
        name: String,
        spawn: Arc<dyn AnySpawn>,
        policy: RestartPolicy,
        slot: Arc<WorkerSlot>,
        stats: Arc<Stats>,
    ) -> Child {
        Child {
            name,
            spawn,
            policy,
            slot,
            stats,
            state: State::Idle,
            busy: None,
            generation: 0,
            restart_times: VecDeque::new(),
            streak: 0,
            failed_starts: 0,
            killed: false,
            started_at: Instant::now(),
            watch: None,
        }
    }

    fn stop_watching(&mut self) {
        if let Some(watch) = self.watch.take() {
            watch.abort();
        }
    }

    fn is_down(&self) -> bool {
        matches!(self.state, State::Down)
    }
}

enum State {
    Up(Arc<dyn AnyWorker>),
    Idle,
    Down,
}

#[derive(Clone, Copy)]
enum Busy {
    /// A restart's start.
    Starting,
    /// A recycle's start; the current worker runs meanwhile.
    Recycling,
    Stopping,
}

/// What a restart follows: how the worker ended, or a failed start.
enum Cause {
    Exit(ExitReason),
    FailedStart(String),
}

impl Cause {
    fn describe(&self) -> String {
        match self {
            Cause::Exit(exit) => format!("it last {exit}"),
            Cause::FailedStart(error) => format!("its last start failed: {error}"),
        }
    }
}

/// Starts a supervisor's task; returns where its handles send commands.
pub(super) fn spawn(
    strategy: Strategy,
    events: broadcast::Sender<SupervisorEvent>,
) -> mpsc::UnboundedSender<Command> {
    let (commands, command_receiver) = mpsc::unbounded_channel();
    let (reports, report_receiver) = mpsc::unbounded_channel();
    let central = Central {
        strategy,
        children: Vec::new(),
        plans: Vec::new(),
        next_plan: 0,
        reports,
        events,
        shutting_down: false,
        shutdown_replies: Vec::new(),
        stragglers: 0,
    };
    tokio::spawn(central.run(command_receiver, report_receiver));
    commands
}

struct Central {
    strategy: Strategy,
    children: Vec<Child>,
    plans: Vec<Plan>,
    next_plan: u64,
    /// Handed to every task this one launches. This task holds a sender
    /// too, so reports never end; commands end when every handle to the
    /// supervisor is gone.
    reports: mpsc::UnboundedSender<Report>,
    events: broadcast::Sender<SupervisorEvent>,
    /// Nothing starts any more.
    shutting_down: bool,
    shutdown_replies: Vec<oneshot::Sender<()>>,
    /// First starts, and stops of workers no longer wanted, under way: a
    /// shutdown ends after them.
    stragglers: usize,
}

impl Central {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut reports: mpsc::UnboundedReceiver<Report>,
    ) {
        let mut handles = true;
        loop {
            tokio::select! {
                biased;
                Some(report) = reports.recv() => self.report(report),
                command = commands.recv(), if handles => match command {
                    Some(command) => self.command(command),
                    None => {
                        // Every handle to the supervisor is gone.
                        handles = false;
                        self.begin_shutdown();
                    }
                },
            }
            if self.shutting_down && self.plans.is_empty() && self.stragglers == 0 {
                for reply in self.shutdown_replies.drain(..) {
                    let _ = reply.send(());
                }
                return;
            }
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Add { child, reply } => {
                if self.shutting_down {
                    let _ = reply.send(Err(gone(&child.name)));
                    return;
                }
                self.stragglers += 1;
                let spawn = Arc::clone(&child.spawn);
                let reports = self.reports.clone();
                tokio::spawn(async move {
                    let result = spawn.spawn().await;
                    hand_over(
                        &reports,
                        Report::Admitted {
                            child,
                            reply,
                            result,
                        },
                    );
                });
            }
            Command::Kill { index } => {
                let child = &mut self.children[index];
                if let State::Up(worker) = &child.state {
                    worker.kill();
                    child.killed = true;
                }
            }
            Command::Recycle { index, reason } => self.recycle(index, None, reason),
            Command::Shutdown { reply } => {
                self.shutdown_replies.push(reply);
                self.begin_shutdown();
            }
        }
    }

    fn report(&mut self, report: Report) {
        match report {
            Report::Exited {
                index,
                generation,
                exit,
            } => self.exited(index, generation, exit),
            Report::ConnectionLost { index, generation } => {
                if let Some(worker) = self.current(index, generation)
                    && !self.children[index].killed
                {
                    worker.kill();
                    self.children[index].killed = true;
                    let pid = worker.pid();
                    let worker = self.children[index].name.clone();
                    self.emit(SupervisorEvent::ConnectionLost { worker, pid });
                }
            }
            Report::Unhealthy {
                index,
                generation,
                missed,
            } => {
                if let Some(worker) = self.current(index, generation) {
                    let name = &self.children[index].name;
                    tracing::warn!(worker = %name, missed, "killing an unresponsive worker");
                    worker.kill();
                    self.children[index].killed = true;
                }
            }
            Report::Recycle {
                index,
                generation,
                reason,
            } => self.recycle(index, Some(generation), reason),
            Report::Admitted {
                child,
                reply,
                result,
            } => self.admitted(child, reply, result),
            Report::Started { index, result } => {
                match self.children[index].busy.take() {
                    Some(Busy::Recycling) => self.recycled(index, result),
                    _ => self.restarted(index, result),
                }
                self.resume(index);
            }
            Report::Stopped { index, exit, pid } => {
                self.stopped(index, exit, pid);
                self.resume(index);
            }
            Report::Disposed => self.stragglers -= 1,
            Report::Due { plan } => self.advance(plan),
        }
    }

    /// Child `index`'s worker, if it is up and of `generation`.
    fn current(&self, index: usize, generation: u64) -> Option<Arc<dyn AnyWorker>> {
        let child = &self.children[index];
        match &child.state {
            State::Up(worker) if child.generation == generation => Some(Arc::clone(worker)),
            _ => None,
        }
    }

    fn admitted(
        &mut self,
        child: Box<Child>,
        reply: oneshot::Sender<Result<usize, Error>>,
        result: Result<Arc<dyn AnyWorker>, Error>,
    ) {
        self.stragglers -= 1;
        match result {
            Ok(worker) if self.shutting_down => {
                self.dispose(worker, child.policy.shutdown_timeout);
                let _ = reply.send(Err(gone(&child.name)));
            }
            Ok(worker) => {
                self.children.push(*child);
                let index = self.children.len() - 1;
                self.install(index, worker);
                let _ = reply.send(Ok(index));
            }
            Err(error) => {
                let _ = reply.send(Err(error));
            }
        }
    }

    /// Makes `worker` child `index`'s current worker. Its pid and state are
    /// recorded before its slot takes calls to it.
    fn install(&mut self, index: usize, worker: Arc<dyn AnyWorker>) {
        let child = &mut self.children[index];
        child.generation += 1;
        child.started_at = Instant::now();
        child.failed_starts = 0;
        child.killed = false;
        let pid = worker.pid();
        child.stats.pid.store(pid.unwrap_or(0), Ordering::Release);
        child.stop_watching();
        child.watch = Some(watch::spawn(
            worker.as_ref(),
            Watch {
                index,
                generation: child.generation,
                name: child.name.clone(),
                check: child.policy.health.clone(),
                grace: child.policy.connection_lost_grace,
                reports: self.reports.clone(),
                events: self.events.clone(),
            },
        ));
        child.slot.set(SlotState::Up(worker.channel()));
        child.state = State::Up(worker);
        let event = SupervisorEvent::Started {
            worker: child.name.clone(),
            restarts: child.stats.restarts.load(Ordering::Relaxed),
            pid,
        };
        self.emit(event);
    }

    fn exited(&mut self, index: usize, generation: u64, exit: ExitReason) {
        let Some(worker) = self.current(index, generation) else {
            return; // a worker stopped on purpose, or already replaced
        };
        let pid = worker.pid();
        let child = &mut self.children[index];
        child.state = State::Idle;
        child.stop_watching();
        *lock(&child.stats.last_exit) = Some(exit.clone());
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
            pid,
        });
        if self.shutting_down {
            return; // the shutdown's plan stops it for good
        }
        if !restart {
            let child = &mut self.children[index];
            child.state = State::Down;
            child.slot.set(SlotState::Down(format!(
                "it {exit} and its policy does not restart it"
            )));
            child.stats.ended();
            self.emit(SupervisorEvent::Stopped { worker: name });
            return;
        }
        let members = match self.strategy {
            Strategy::OneForOne => index..index + 1,
            Strategy::OneForAll => 0..self.children.len(),
            Strategy::RestForOne => index..self.children.len(),
        };
        let group: Vec<usize> = members
            .filter(|&j| j == index || !self.children[j].is_down())
            .collect();
        let delay = self.count_restart(index, &Cause::Exit(exit));
        // The others stop first, in reverse start order; then all start, in
        // start order (the failed worker too, unless given up on).
        let mut steps: VecDeque<Step> = group
            .iter()
            .rev()
            .filter(|&&j| j != index)
            .map(|&j| Step::Stop(j))
            .collect();
        steps.push_back(Step::Wait(delay.unwrap_or_default()));
        steps.extend(
            group
                .iter()
                .filter(|&&j| j != index || delay.is_some())
                .map(|&j| Step::Start(j)),
        );
        self.run_plan(steps);
    }

    /// Counts a restart of child `index` after `cause` against its
    /// intensity: the delay before it, or `None` (and the child down) if
    /// that is one too many within the period, or one failed start too many
    /// in a row.
    fn count_restart(&mut self, index: usize, cause: &Cause) -> Option<Duration> {
        let now = Instant::now();
        let child = &mut self.children[index];
        let (max, within) = (child.policy.max_restarts, child.policy.within);
        while child
            .restart_times
            .front()
            .is_some_and(|&at| now.duration_since(at) >= within)
        {
            child.restart_times.pop_front();
        }
        let failed_start = matches!(cause, Cause::FailedStart(_));
        if failed_start {
            child.failed_starts += 1;
        }
        let broken = if child.restart_times.len() >= max as usize {
            let restarts = child.restart_times.len() as u32;
            Some((restarts, format!("{restarts} restarts within {within:?}")))
        } else if failed_start && child.failed_starts >= max {
            let failed = child.failed_starts;
            Some((failed, format!("{failed} failed starts in a row")))
        } else {
            None
        };
        if let Some((restarts, rule)) = broken {
            let reason = format!("its supervisor gave up after {rule}; {}", cause.describe());
            child.state = State::Down;
            child.slot.set(SlotState::Down(reason.clone()));
            child.stats.ended();
            let event = SupervisorEvent::GaveUp {
                worker: child.name.clone(),
                restarts,
                within,
                reason,
            };
            self.emit(event);
            return None;
        }
        child.restart_times.push_back(now);
        // A run of restarts ends once a worker has stayed up longer than the
        // period; failed starts continue it.
        if !failed_start && child.started_at.elapsed() > within {
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

    fn restarted(&mut self, index: usize, result: Result<Arc<dyn AnyWorker>, Error>) {
        match result {
            Ok(worker) => match self.children[index].state {
                State::Idle => self.install(index, worker),
                // Neither happens: nothing else changes a child being started.
                State::Up(_) | State::Down => {
                    let timeout = self.children[index].policy.shutdown_timeout;
                    self.dispose(worker, timeout);
                }
            },
            Err(error) => {
                let error = full_text(&error);
                let worker = self.children[index].name.clone();
                self.emit(SupervisorEvent::StartFailed {
                    worker,
                    error: error.clone(),
                });
                if self.shutting_down || self.children[index].is_down() {
                    return;
                }
                if let Some(delay) = self.count_restart(index, &Cause::FailedStart(error)) {
                    self.run_plan(VecDeque::from([Step::Wait(delay), Step::Start(index)]));
                }
            }
        }
    }

    /// Replaces child `index`'s worker gracefully, if it is up (and of
    /// `generation`, if given) and nothing else is under way for it: a new
    /// worker is started apart, and takes over once it runs.
    fn recycle(&mut self, index: usize, generation: Option<u64>, reason: String) {
        let child = &mut self.children[index];
        let up = matches!(child.state, State::Up(_));
        if self.shutting_down
            || !up
            || child.busy.is_some()
            || generation.is_some_and(|g| g != child.generation)
        {
            return;
        }
        child.stats.restarts.fetch_add(1, Ordering::Relaxed);
        child.busy = Some(Busy::Recycling);
        self.launch_start(index);
        let worker = self.children[index].name.clone();
        self.emit(SupervisorEvent::Recycling { worker, reason });
    }

    fn recycled(&mut self, index: usize, result: Result<Arc<dyn AnyWorker>, Error>) {
        let child = &mut self.children[index];
        match result {
            Ok(worker) => match std::mem::replace(&mut child.state, State::Idle) {
                State::Up(old) => {
                    let timeout = child.policy.shutdown_timeout;
                    self.install(index, worker);
                    self.dispose(old, timeout);
                }
                // The old worker ended meanwhile, and a restart is planned:
                // the new one takes over as that restart.
                State::Idle => {
                    child.stats.restarts.fetch_sub(1, Ordering::Relaxed);
                    self.install(index, worker);
                }
                State::Down => {
                    child.state = State::Down;
                    let timeout = child.policy.shutdown_timeout;
                    self.dispose(worker, timeout);
                }
            },
            Err(error) => {
                child.stats.restarts.fetch_sub(1, Ordering::Relaxed);
                let worker = child.name.clone();
                self.emit(SupervisorEvent::StartFailed {
                    worker,
                    error: full_text(&error),
                });
            }
        }
    }

    fn stopped(&mut self, index: usize, exit: ExitReason, pid: Option<u32>) {
        let child = &mut self.children[index];
        child.busy = None;
        *lock(&child.stats.last_exit) = Some(exit.clone());
        let worker = child.name.clone();
        let down = child.is_down();
        if down {
            child.stats.ended();
        }
        self.emit(SupervisorEvent::Exited {
            worker: worker.clone(),
            exit,
            pid,
        });
        if down {
            self.emit(SupervisorEvent::Stopped { worker });
        }
    }

    fn emit(&self, event: SupervisorEvent) {
        match &event {
            SupervisorEvent::Started {
                worker,
                restarts,
                pid,
            } => {
                tracing::info!(%worker, restarts, ?pid, "worker started");
            }
            SupervisorEvent::Exited { worker, exit, pid } => {
                tracing::warn!(%worker, %exit, ?pid, "worker ended")
            }
            SupervisorEvent::Restarting {
                worker,
                delay,
                attempt,
            } => tracing::info!(%worker, ?delay, attempt, "restarting worker"),
            SupervisorEvent::StartFailed { worker, error } => {
                tracing::error!(%worker, %error, "starting worker failed");
            }
            SupervisorEvent::GaveUp {
                worker,
                restarts,
                within,
                reason,
            } => tracing::error!(%worker, restarts, ?within, %reason, "gave up restarting worker"),
            SupervisorEvent::Health { worker, report } => {
                tracing::debug!(%worker, ?report, "worker health")
            }
            SupervisorEvent::ConnectionLost { worker, pid } => {
                tracing::warn!(%worker, ?pid, "killing a worker whose connection ended");
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
}
