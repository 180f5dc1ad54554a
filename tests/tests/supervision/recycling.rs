//! Graceful recycling, on demand and past a threshold of calls processed or
//! of memory: a new worker takes over without a call failing.

use std::time::Duration;

use workerbus::{HealthCheck, ProcessDriver, RestartPolicy, Supervisor, SupervisorEvent};
use workerbus_tests::pb::echo::{EchoClient, EchoRequest};
use workerbus_tests::support::expect;

use crate::{ECHO_WORKER, any_started, echo_ok, ping, process_driver, sleeping, started};

#[tokio::test]
async fn recycling_on_demand_replaces_the_worker_without_failing_its_calls() {
    let supervisor = Supervisor::default();
    let mut events = supervisor.subscribe();
    let worker = supervisor
        .supervise(
            "recycled",
            ProcessDriver::new(ECHO_WORKER),
            RestartPolicy::new(),
        )
        .await
        .unwrap();
    assert_eq!(worker.name(), "recycled");
    assert_eq!(any_started(&mut events).await, 0);
    let old = worker.pid().expect("a process worker has a pid");
    let client = EchoClient::new(worker.channel());
    let call = sleeping(&client, "in flight", 2_000).await;
    tokio::pin!(call);

    worker.recycle();
    let reason = expect(&mut events, "Recycling", |event| match event {
        SupervisorEvent::Recycling { reason, .. } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert_eq!(reason, "asked to");
    tokio::select! {
        biased;
        restarts = any_started(&mut events) => assert_eq!(restarts, 1),
        result = &mut call => panic!("the call ended before the replacement started: {result:?}"),
    }
    let new = worker.pid().unwrap();
    assert_ne!(new, old, "a new process took over");
    assert_eq!(ping(&client).await.unwrap(), "ping");
    // The old worker finished the call it had before it stopped.
    call.await.expect("the call in flight was not failed");
    assert_eq!(worker.restarts(), 1);
    assert!(worker.is_running());
    supervisor.shutdown().await;
}

#[tokio::test]
async fn past_a_processed_threshold_a_worker_is_replaced_without_failing_a_call() {
    let supervisor = Supervisor::new();
    let mut events = supervisor.subscribe();
    let check = HealthCheck::every(Duration::from_millis(20)).recycle_after_processed(50);
    let policy = RestartPolicy::new().health_check(check);
    let worker = supervisor
        .supervise("recycled", process_driver(), policy)
        .await
        .unwrap();
    let first_pid = worker.pid();
    let client = EchoClient::new(worker.channel());
    // Calls keep flowing, several at a time, across the replacements.
    let mut calls = 0;
    while worker.restarts() < 2 {
        let batch = (0..8).map(|i| {
            let client = client.clone();
            async move {
                let request = EchoRequest {
                    text: format!("call {i}"),
                    delay_ms: 5,
                    ..EchoRequest::default()
                };
                client.echo(request).await
            }
        });
        for result in futures_util::future::join_all(batch).await {
            result.expect("no call fails while workers are replaced");
            calls += 1;
        }
        assert!(calls < 100_000, "never recycled");
    }
    let reason = expect(&mut events, "Recycling", |event| match event {
        SupervisorEvent::Recycling { reason, .. } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert!(reason.starts_with("it has processed "), "{reason}");
    assert!(reason.ends_with(" calls (threshold 50)"), "{reason}");
    assert_ne!(worker.pid(), first_pid);
    assert!(calls >= 100, "only {calls} calls");
    supervisor.shutdown().await;
}

#[tokio::test]
async fn past_a_memory_threshold_a_worker_is_replaced() {
    let supervisor = Supervisor::new();
    let mut events = supervisor.subscribe();
    // The plan this library grew from recycles at 300 MB; any resident
    // process is above one byte.
    let check = HealthCheck::every(Duration::from_millis(20)).recycle_above_memory(1);
    let policy = RestartPolicy::new().health_check(check);
    let worker = supervisor
        .supervise("hungry", process_driver(), policy)
        .await
        .unwrap();
    let reason = expect(&mut events, "Recycling", |event| match event {
        SupervisorEvent::Recycling { reason, .. } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert!(reason.starts_with("its resident memory, "), "{reason}");
    assert!(reason.ends_with(" bytes, is above 1"), "{reason}");
    started(&mut events, "hungry").await;
    echo_ok(&worker).await;
    supervisor.shutdown().await;
}
