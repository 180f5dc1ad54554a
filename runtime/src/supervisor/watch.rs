//! The watcher of one supervised worker: reports to the supervisor's task
//! when the worker ends, when its connection ends and the worker does not,
//! and when it fails its health checks or passes a threshold.
//!
//! A worker that crashes ends with its connection, and its exit (reaped, so
//! it carries its status) comes within moments; a worker whose connection
//! broke while it lives on can serve nothing. So an ended connection is
//! reported only if the worker has not ended within the policy's grace, and
//! the supervisor then kills it: its exit, reported next, restarts it.

use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::central::Report;
use super::{AnyWorker, HealthCheck, SupervisorEvent};
use crate::client::Channel;

/// What a watcher needs besides the worker.
pub(super) struct Watch {
    pub(super) index: usize,
    /// The worker's generation, carried by every report.
    pub(super) generation: u64,
    pub(super) name: String,
    pub(super) check: Option<HealthCheck>,
    /// How long a worker whose connection ended may take to end too.
    pub(super) grace: Duration,
    pub(super) reports: mpsc::UnboundedSender<Report>,
    pub(super) events: broadcast::Sender<SupervisorEvent>,
}

/// Watches `worker` until it ends; the supervisor aborts the watcher when it
/// stops or replaces the worker.
pub(super) fn spawn(worker: &dyn AnyWorker, watch: Watch) -> AbortHandle {
    let exit = worker.watch_exit();
    let channel = worker.channel();
    tokio::spawn(async move {
        let (index, generation) = (watch.index, watch.generation);
        let lost = async {
            channel.closed().await;
            tokio::time::sleep(watch.grace).await;
        };
        let health = async {
            if let Some(check) = &watch.check {
                check_health(&channel, check, &watch).await;
            }
            std::future::pending::<()>().await;
        };
        tokio::pin!(exit);
        tokio::select! {
            biased; // an exit that has come is reported, not a lost connection
            exit = &mut exit => {
                let _ = watch.reports.send(Report::Exited { index, generation, exit });
                return;
            }
            () = lost => {
                let _ = watch.reports.send(Report::ConnectionLost { index, generation });
            }
            () = health => {}
        }
        let exit = exit.await;
        let _ = watch.reports.send(Report::Exited {
            index,
            generation,
            exit,
        });
    })
    .abort_handle()
}

/// Checks one worker's health until it fails a check or passes a threshold,
/// and reports that; returns then, or when the connection has ended (which
/// the watcher reports itself).
async fn check_health(channel: &Channel, check: &HealthCheck, watch: &Watch) {
    let (index, generation, name) = (watch.index, watch.generation, &watch.name);
    let report = |report: Report| {
        let _ = watch.reports.send(report);
    };
    let mut missed = 0;
    let mut ticks = tokio::time::interval_at(Instant::now() + check.interval, check.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match channel.health(check.timeout).await {
            Ok(health) => {
                missed = 0;
                let _ = watch.events.send(SupervisorEvent::Health {
                    worker: name.clone(),
                    report: health.clone(),
                });
                if health.stalled > 0 {
                    let _ = watch.events.send(SupervisorEvent::Unresponsive {
                        worker: name.clone(),
                        missed: 0,
                    });
                    report(Report::Unhealthy {
                        index,
                        generation,
                        missed,
                    });
                    return;
                }
                let passed = match (check.max_memory, check.max_processed) {
                    (Some(max), _) if health.memory_bytes > max => Some(format!(
                        "its resident memory, {} bytes, is above {max}",
                        health.memory_bytes
                    )),
                    (_, Some(max)) if health.processed >= max => Some(format!(
                        "it has processed {} calls (threshold {max})",
                        health.processed
                    )),
                    _ => None,
                };
                if let Some(reason) = passed {
                    report(Report::Recycle {
                        index,
                        generation,
                        reason,
                    });
                    return;
                }
            }
            // Not a missed check: the worker's connection is gone.
            Err(_) if channel.is_closed() => return,
            Err(error) => {
                missed += 1;
                tracing::warn!(worker = %name, missed, %error, "health check missed");
                let _ = watch.events.send(SupervisorEvent::Unresponsive {
                    worker: name.clone(),
                    missed,
                });
                if missed >= check.max_missed {
                    report(Report::Unhealthy {
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
