//! Plans: the steps of a restart or a shutdown, run one at a time as the
//! tasks they launch report back, and those tasks (starts, stops, backoffs).
//!
//! A step about a worker that has a start or stop under way waits for it to
//! end, then applies to what that left:
//!
//! | step | applies when the worker is | does |
//! | --- | --- | --- |
//! | `Stop` | up | stops it gracefully; it is then idle |
//! | `Wait` | (any) | sleeps the backoff |
//! | `Start` | idle, and the supervisor not shutting down | starts it |
//! | `Shutdown` | not down | stops it if up; it is then down |
//!
//! Plans about different workers run side by side; two plans about one
//! worker (two restarts of a group, overlapping) take turns on it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::{AnyWorker, Busy, Central, Report, State};
use crate::error::ExitReason;
use crate::supervisor::SupervisorEvent;
use crate::supervisor::slot::SlotState;

/// One step of a plan (see the table above).
#[derive(Clone, Copy)]
pub(super) enum Step {
    Stop(usize),
    Wait(Duration),
    Start(usize),
    Shutdown(usize),
}

/// The steps left of a restart or a shutdown.
pub(super) struct Plan {
    id: u64,
    steps: VecDeque<Step>,
    /// The child whose start or stop this plan waits for.
    waiting: Option<usize>,
    /// The backoff this plan sleeps, if it does: a plan dropped by a
    /// shutdown leaves no timer behind.
    timer: Option<AbortHandle>,
}

impl Drop for Plan {
    fn drop(&mut self) {
        if let Some(timer) = self.timer.take() {
            timer.abort();
        }
    }
}

impl Central {
    /// Starts the shutdown's plan (once): every worker goes down for good,
    /// in reverse start order, each stopped gracefully if it runs.
    pub(super) fn begin_shutdown(&mut self) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        // Plans under way end here; the starts and stops they launched still
        // report, and the shutdown's steps wait for them.
        self.plans.clear();
        let steps = (0..self.children.len()).rev().map(Step::Shutdown).collect();
        self.run_plan(steps);
    }

    /// Runs `steps` as a plan of their own, from now.
    pub(super) fn run_plan(&mut self, steps: VecDeque<Step>) {
        let id = self.next_plan;
        self.next_plan += 1;
        self.plans.push(Plan {
            id,
            steps,
            waiting: None,
            timer: None,
        });
        self.advance(id);
    }

    /// Runs plan `id`'s steps until one must wait for a task, or none is
    /// left.
    pub(super) fn advance(&mut self, id: u64) {
        loop {
            let Some(position) = self.plans.iter().position(|plan| plan.id == id) else {
                return; // done, or dropped by a shutdown
            };
            let plan = &mut self.plans[position];
            let Some(&step) = plan.steps.front() else {
                self.plans.swap_remove(position);
                return;
            };
            let index = match step {
                Step::Wait(delay) => {
                    plan.steps.pop_front();
                    if !delay.is_zero() {
                        let reports = self.reports.clone();
                        let timer = tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            let _ = reports.send(Report::Due { plan: id });
                        });
                        plan.timer = Some(timer.abort_handle());
                        return;
                    }
                    continue;
                }
                Step::Stop(index) | Step::Start(index) | Step::Shutdown(index) => index,
            };
            if self.children[index].busy.is_some() {
                plan.waiting = Some(index);
                return;
            }
            plan.steps.pop_front();
            plan.waiting = None;
            let launched = match step {
                Step::Stop(index) => self.stop(index),
                Step::Start(index) => self.start(index),
                Step::Shutdown(index) => self.shut_down(index),
                Step::Wait(_) => false,
            };
            if launched {
                self.plans[position].waiting = Some(index);
                return;
            }
        }
    }

    /// Goes on with the plans waiting for child `index`'s start or stop,
    /// which has ended.
    pub(super) fn resume(&mut self, index: usize) {
        let waiting: Vec<u64> = self
            .plans
            .iter()
            .filter(|plan| plan.waiting == Some(index))
            .map(|plan| plan.id)
            .collect();
        for id in waiting {
            self.advance(id);
        }
    }

    /// A plan's `Stop`: stops child `index` gracefully if it is up.
    fn stop(&mut self, index: usize) -> bool {
        let child = &mut self.children[index];
        let worker = match std::mem::replace(&mut child.state, State::Idle) {
            State::Up(worker) => worker,
            other => {
                child.state = other;
                return false;
            }
        };
        child.generation += 1;
        child.stop_watching();
        child.slot.set(SlotState::Starting);
        child.stats.restarts.fetch_add(1, Ordering::Relaxed);
        self.launch_stop(index, worker);
        true
    }

    /// A plan's `Start`: starts child `index` if it is idle and the
    /// supervisor is not shutting down.
    fn start(&mut self, index: usize) -> bool {
        if self.shutting_down || !matches!(self.children[index].state, State::Idle) {
            return false;
        }
        self.children[index].busy = Some(Busy::Starting);
        self.launch_start(index);
        true
    }

    /// A shutdown's step: child `index` goes down for good, stopped
    /// gracefully if it is up.
    fn shut_down(&mut self, index: usize) -> bool {
        let child = &mut self.children[index];
        if child.is_down() {
            return false;
        }
        let state = std::mem::replace(&mut child.state, State::Down);
        child.generation += 1;
        child.stop_watching();
        child
            .slot
            .set(SlotState::Down("its supervisor shut it down".into()));
        if let State::Up(worker) = state {
            self.launch_stop(index, worker);
            return true;
        }
        child.stats.ended();
        let worker = child.name.clone();
        self.emit(SupervisorEvent::Stopped { worker });
        false
    }

    /// Starts a worker for child `index` apart: a restart, or a recycle's
    /// replacement (the caller has said which in the child's `busy`).
    pub(super) fn launch_start(&mut self, index: usize) {
        let spawn = Arc::clone(&self.children[index].spawn);
        let reports = self.reports.clone();
        tokio::spawn(async move {
            let result = spawn.spawn().await;
            hand_over(&reports, Report::Started { index, result });
        });
    }

    fn launch_stop(&mut self, index: usize, worker: Arc<dyn AnyWorker>) {
        let child = &mut self.children[index];
        child.busy = Some(Busy::Stopping);
        let timeout = child.policy.shutdown_timeout;
        let reports = self.reports.clone();
        tokio::spawn(async move {
            let pid = worker.pid();
            let exit = stop(worker, timeout).await;
            let _ = reports.send(Report::Stopped { index, exit, pid });
        });
    }

    /// Stops a worker nobody needs any more (the one a recycle replaced, one
    /// started as the supervisor shut down) gracefully, apart.
    pub(super) fn dispose(&mut self, worker: Arc<dyn AnyWorker>, timeout: Duration) {
        self.stragglers += 1;
        let reports = self.reports.clone();
        tokio::spawn(async move {
            stop(worker, timeout).await;
            let _ = reports.send(Report::Disposed);
        });
    }
}

/// Stops `worker` gracefully within `timeout`, then kills it.
async fn stop(worker: Arc<dyn AnyWorker>, timeout: Duration) -> ExitReason {
    match tokio::time::timeout(timeout, worker.shutdown()).await {
        Ok(exit) => exit,
        Err(_) => {
            worker.kill();
            tokio::time::timeout(Duration::from_secs(1), worker.watch_exit())
                .await
                .unwrap_or(ExitReason::Unknown)
        }
    }
}

/// Sends a start's report; a worker started for a supervisor that is gone
/// (its runtime shutting down) is killed instead.
pub(super) fn hand_over(reports: &mpsc::UnboundedSender<Report>, report: Report) {
    if let Err(mpsc::error::SendError(
        Report::Admitted {
            result: Ok(worker), ..
        }
        | Report::Started {
            result: Ok(worker), ..
        },
    )) = reports.send(report)
    {
        worker.kill();
    }
}
