//! Stopping: a supervisor's shutdown, in reverse start order; workers that
//! outlast their shutdown timeout, at a shutdown or a recycle; and a
//! supervisor that is gone (shut down, or every handle dropped).

use std::future::Future;
use std::time::Duration;

use tokio::sync::broadcast;
use workerbus::{
    Error, ExitReason, ProcessDriver, RestartPolicy, SupervisedWorker, Supervisor, SupervisorEvent,
};
use workerbus_tests::pb::echo::EchoClient;
use workerbus_tests::support::expect;

use crate::{ECHO_WORKER, any_started, echo, ping, process_driver, sleeping, thread_spawner};

#[tokio::test]
async fn shutdown_stops_workers_in_reverse_start_order() {
    let supervisor = Supervisor::new();
    let mut events = supervisor.subscribe();
    let workers = [
        supervisor
            .supervise("first", thread_spawner(), RestartPolicy::new())
            .await
            .unwrap(),
        supervisor
            .supervise("second", process_driver(), RestartPolicy::new())
            .await
            .unwrap(),
        supervisor
            .supervise("third", thread_spawner(), RestartPolicy::new())
            .await
            .unwrap(),
    ];
    supervisor.shutdown().await;
    let mut order = Vec::new();
    while order.len() < 3 {
        let name = expect(&mut events, "Stopped", |event| match event {
            SupervisorEvent::Stopped { worker } => Some(worker.clone()),
            _ => None,
        })
        .await;
        order.push(name);
    }
    assert_eq!(order, ["third", "second", "first"]);
    for worker in &workers {
        assert!(worker.is_down());
        let error = EchoClient::new(worker.channel())
            .echo(echo("x"))
            .await
            .unwrap_err();
        assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
    }
}

/// A supervised process worker with a short shutdown timeout, started, and
/// a call it is running that would outlast that timeout.
async fn stubborn() -> (
    Supervisor,
    broadcast::Receiver<SupervisorEvent>,
    SupervisedWorker,
    EchoClient,
    impl Future<Output = Result<(), Error>>,
) {
    let supervisor = Supervisor::new();
    let mut events = supervisor.subscribe();
    let worker = supervisor
        .supervise(
            "stubborn",
            ProcessDriver::new(ECHO_WORKER),
            RestartPolicy::new().shutdown_timeout(Duration::from_millis(200)),
        )
        .await
        .unwrap();
    any_started(&mut events).await;
    let client = EchoClient::new(worker.channel());
    let call = sleeping(&client, "stubborn", 60_000).await;
    (supervisor, events, worker, client, call)
}

#[tokio::test]
async fn a_recycled_worker_that_outlasts_its_shutdown_timeout_is_killed() {
    let (supervisor, mut events, worker, client, call) = stubborn().await;
    worker.recycle();
    assert_eq!(any_started(&mut events).await, 1);
    let result = tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .expect("the old worker is killed within 20 s");
    match result {
        Err(Error::WorkerExited { exit, .. }) => assert_eq!(exit, ExitReason::Signal(9)),
        other => panic!("expected the old worker's death, got {other:?}"),
    }
    assert_eq!(ping(&client).await.unwrap(), "ping");
    supervisor.shutdown().await;
}

#[tokio::test]
async fn a_shutdown_kills_a_worker_that_outlasts_its_shutdown_timeout() {
    let (supervisor, mut events, worker, _client, call) = stubborn().await;
    tokio::time::timeout(Duration::from_secs(20), supervisor.shutdown())
        .await
        .expect("the shutdown ends within 20 s");
    let exit = expect(&mut events, "Exited", |event| match event {
        SupervisorEvent::Exited { exit, .. } => Some(exit.clone()),
        _ => None,
    })
    .await;
    assert_eq!(exit, ExitReason::Signal(9));
    let result = call.await;
    assert!(
        matches!(
            &result,
            Err(Error::WorkerExited {
                exit: ExitReason::Signal(9),
                ..
            })
        ),
        "{result:?}"
    );
    assert!(worker.is_down());
}

#[tokio::test]
async fn a_supervisor_that_shut_down_supervises_nothing_more() {
    let supervisor = Supervisor::new();
    let worker = supervisor
        .supervise("early", thread_spawner(), RestartPolicy::new())
        .await
        .unwrap();
    supervisor.shutdown().await;
    let error = supervisor
        .supervise("late", thread_spawner(), RestartPolicy::new())
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Spawn { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        "failed to spawn worker late: its supervisor has shut down"
    );
    // Asking a worker of a gone supervisor for anything does nothing.
    worker.kill();
    worker.recycle();
    assert!(worker.is_down());
    let error = ping(&EchoClient::new(worker.channel())).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "echo.echo failed: worker early is unavailable: its supervisor shut it down"
    );
}

#[tokio::test]
async fn dropping_every_handle_to_a_supervisor_stops_its_workers() {
    let supervisor = Supervisor::new();
    let worker = supervisor
        .supervise("orphan", thread_spawner(), RestartPolicy::new())
        .await
        .unwrap();
    let channel = worker.channel();
    drop(supervisor);
    tokio::time::timeout(Duration::from_secs(20), channel.closed())
        .await
        .expect("the worker is stopped within 20 s");
    assert!(worker.is_down());
    let error = ping(&EchoClient::new(channel)).await.unwrap_err();
    assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
}
