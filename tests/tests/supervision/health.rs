//! Workers that live on and serve nothing: stopped, wedged in a blocking
//! handler, stuck past a call's deadline, or whose connection broke. Health
//! checks and the connection's end find them; each is killed and replaced.

use std::time::Duration;

use workerbus::{
    CallOptions, Error, ExitReason, HealthCheck, RestartPolicy, Supervisor, SupervisorEvent,
    ThreadDriver,
};
use workerbus_tests::EchoWorker;
use workerbus_tests::pb::echo::{EchoClient, EchoServer, SleepRequest};
use workerbus_tests::support::{KillOnDrop, expect, signal};

use crate::{echo, echo_ok, process_driver, started};

#[tokio::test]
async fn a_stopped_worker_is_replaced_with_default_settings() {
    let supervisor = Supervisor::new();
    let mut events = supervisor.subscribe();
    let worker = supervisor
        .supervise("frozen", process_driver(), RestartPolicy::new())
        .await
        .unwrap();
    let client = EchoClient::new(worker.channel());
    echo_ok(&worker).await;
    let old = worker.pid().expect("a process worker has a pid");
    let guard = KillOnDrop(old);
    signal(old, "STOP");
    // The default check misses three answers in a row, then kills it.
    let mut missed = Vec::new();
    let exit = expect(&mut events, "Exited", |event| match event {
        SupervisorEvent::Unresponsive { missed: n, .. } => {
            missed.push(*n);
            None
        }
        SupervisorEvent::Exited { exit, .. } => Some(exit.clone()),
        _ => None,
    })
    .await;
    assert!(missed.ends_with(&[1, 2, 3]), "{missed:?}");
    assert_eq!(exit, ExitReason::Signal(9));
    guard.disarm();
    assert_eq!(started(&mut events, "frozen").await, 1);
    assert_eq!(client.echo(echo("thawed")).await.unwrap().text, "thawed");
    assert_ne!(worker.pid(), Some(old));
    supervisor.shutdown().await;
}

#[tokio::test]
async fn a_worker_wedged_in_a_blocking_handler_is_killed_and_replaced() {
    let supervisor = Supervisor::new();
    let mut events = supervisor.subscribe();
    let check = HealthCheck::every(Duration::from_millis(50)).max_missed(2);
    let policy = RestartPolicy::new().health_check(check);
    let worker = supervisor
        .supervise("wedged", process_driver(), policy)
        .await
        .unwrap();
    started(&mut events, "wedged").await;
    let client = EchoClient::new(worker.channel());
    // The worker's only thread blocks: it cannot answer a health check.
    let wedge = client.sleep(SleepRequest {
        tag: "wedge".into(),
        ms: 60_000,
        blocking: true,
    });
    let (wedged, missed) = tokio::join!(wedge, async {
        expect(&mut events, "Unresponsive", |event| match event {
            SupervisorEvent::Unresponsive { missed: 2, .. } => Some(2),
            _ => None,
        })
        .await
    });
    assert_eq!(missed, 2);
    assert!(
        matches!(
            wedged,
            Err(Error::WorkerExited {
                exit: ExitReason::Signal(9),
                ..
            })
        ),
        "{wedged:?}"
    );
    assert_eq!(started(&mut events, "wedged").await, 1);
    echo_ok(&worker).await;
    supervisor.shutdown().await;
}

#[tokio::test]
async fn a_call_stuck_past_its_deadline_on_a_busy_runtime_marks_the_worker_wedged() {
    // Two runtime threads: one is stuck in a handler, the other still
    // answers health checks, which report the stuck call.
    let spawner = ThreadDriver::new()
        .worker_threads(2)
        .spawner(|| EchoServer::new(EchoWorker::new()));
    let supervisor = Supervisor::new();
    let mut events = supervisor.subscribe();
    let policy = RestartPolicy::new().health_check(HealthCheck::every(Duration::from_millis(100)));
    let worker = supervisor
        .supervise("stuck", spawner, policy)
        .await
        .unwrap();
    started(&mut events, "stuck").await;
    let client = EchoClient::new(worker.channel());
    let stuck = client.sleep_with(
        SleepRequest {
            tag: "stuck".into(),
            ms: 3_000,
            blocking: true,
        },
        CallOptions::new().timeout(Duration::from_millis(100)),
    );
    assert!(matches!(stuck.await, Err(Error::Timeout { .. })));
    expect(&mut events, "Unresponsive", |event| match event {
        SupervisorEvent::Unresponsive { missed: 0, .. } => Some(()),
        _ => None,
    })
    .await;
    assert_eq!(started(&mut events, "stuck").await, 1);
    echo_ok(&worker).await;
    supervisor.shutdown().await;
}

#[tokio::test]
async fn a_worker_whose_connection_broke_while_its_process_lives_is_replaced() {
    let supervisor = Supervisor::new();
    let mut events = supervisor.subscribe();
    let driver = process_driver().arg("--close-socket-on-sigusr1");
    let worker = supervisor
        .supervise("severed", driver, RestartPolicy::new())
        .await
        .unwrap();
    let client = EchoClient::new(worker.channel());
    assert_eq!(client.echo(echo("before")).await.unwrap().text, "before");
    let old = worker.pid().expect("a process worker has a pid");
    let guard = KillOnDrop(old);
    signal(old, "USR1"); // the worker shuts its socket down and lives on
    let lost = expect(&mut events, "ConnectionLost", |event| match event {
        SupervisorEvent::ConnectionLost { worker, pid } if worker == "severed" => Some(*pid),
        _ => None,
    })
    .await;
    assert_eq!(lost, Some(old), "the event names the process killed");
    let (exit, pid) = expect(&mut events, "Exited", |event| match event {
        SupervisorEvent::Exited { exit, pid, .. } => Some((exit.clone(), *pid)),
        _ => None,
    })
    .await;
    assert_eq!(exit, ExitReason::Signal(9), "the supervisor killed it");
    assert_eq!(pid, Some(old));
    guard.disarm();
    assert_eq!(started(&mut events, "severed").await, 1);
    assert_eq!(client.echo(echo("after")).await.unwrap().text, "after");
    assert_ne!(worker.pid(), Some(old));
    supervisor.shutdown().await;
}
