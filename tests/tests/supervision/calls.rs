//! What calls see of a supervised worker: the process that answers after
//! each restart, calls made while or right after a worker dies, and an
//! event subscription across restarts. (A supervised channel's own paths
//! are in `calls/client/supervised.rs`.)

use std::time::Duration;

use workerbus::{
    Backoff, CallOptions, ProcessDriver, RestartPolicy, Strategy, Supervisor, SupervisorEvent,
};
use workerbus_tests::pb::echo::EchoClient;
use workerbus_tests::support::{expect, sigkill};

use crate::{
    ECHO_WORKER, any_started, ping, policy, process_driver, sleeping, started, thread_spawner,
};

/// On a multi-thread runtime, so that the supervisor's task and the calls
/// run in parallel: a call that reached the new worker while the
/// supervisor had yet to record its pid would see the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pid_names_the_process_that_answers_from_the_first_call_after_each_restart() {
    let supervisor = Supervisor::new();
    let policy = RestartPolicy::new()
        .intensity(1_000, Duration::from_secs(60))
        .backoff(Backoff::constant(Duration::ZERO));
    let worker = supervisor
        .supervise("pid", process_driver(), policy)
        .await
        .unwrap();
    let client = EchoClient::new(worker.channel());
    // Sent to the killed worker before its death is seen, a call runs again
    // on the new one.
    let idempotent = CallOptions::new().idempotent(true);
    let mut pid = client.stats(()).await.unwrap().pid;
    assert_eq!(worker.pid(), Some(pid));
    for round in 0..50 {
        sigkill(pid);
        let answered_by = client.stats_with((), idempotent.clone()).await.unwrap().pid;
        let recorded = worker.pid();
        assert_ne!(
            answered_by, pid,
            "round {round}: the killed process answered"
        );
        assert_eq!(
            recorded,
            Some(answered_by),
            "round {round}: pid() names another process than the one answering"
        );
        pid = answered_by;
    }
    assert_eq!(worker.restarts(), 50);
    supervisor.shutdown().await;
}

#[tokio::test]
async fn a_call_made_while_a_dead_worker_still_looks_up_waits_for_its_restart() {
    // One for all: a's restart waits for b's graceful stop, and b is busy,
    // so for a while a's slot still holds its closed connection.
    let supervisor = Supervisor::with_strategy(Strategy::OneForAll);
    let mut events = supervisor.subscribe();
    let a = supervisor
        .supervise("a", thread_spawner(), RestartPolicy::new())
        .await
        .unwrap();
    let b = supervisor
        .supervise("b", thread_spawner(), RestartPolicy::new())
        .await
        .unwrap();
    any_started(&mut events).await;
    any_started(&mut events).await;
    let busy = sleeping(&EchoClient::new(b.channel()), "busy", 1_000).await;
    a.kill();
    expect(&mut events, "Exited", |event| match event {
        SupervisorEvent::Exited { worker, .. } if worker == "a" => Some(()),
        _ => None,
    })
    .await;
    // Not idempotent, so not run again after a crash: it must not be sent
    // on the dead connection either.
    let reply = ping(&EchoClient::new(a.channel())).await;
    assert_eq!(reply.expect("the call waited for the restart"), "ping");
    busy.await.expect("b finished its call before stopping");
    supervisor.shutdown().await;
}

/// Waits until process `pid` has died: every thread of it has ended, so its
/// descriptors are closed (its main thread may linger as a zombie until its
/// parent reaps it). No event tells a process other than the parent, so
/// `/proc` is read until it says so.
async fn dead(pid: u32) {
    let gone = || {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return true;
        };
        // The state follows the command name, which is in parentheses.
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']));
        let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, Iterator::count);
        zombie && threads <= 1
    };
    let died = async {
        while !gone() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), died)
        .await
        .unwrap_or_else(|_| panic!("process {pid} still runs 20 s after SIGKILL"));
}

#[tokio::test]
async fn a_call_made_right_after_a_kill_waits_for_the_restart_whatever_its_idempotency() {
    // `echo.echo` is not idempotent: had its request reached the killed
    // worker, it would fail. Made after the kill and before the host has
    // replaced the worker, it never reached one, and goes to the next.
    let supervisor = Supervisor::new();
    let worker = supervisor
        .supervise(
            "echo",
            ProcessDriver::new(ECHO_WORKER),
            policy(100, Duration::from_secs(60)),
        )
        .await
        .unwrap();
    let client = EchoClient::new(worker.channel());
    let mut events = supervisor.subscribe();
    for round in 1..=30 {
        ping(&client).await.unwrap();
        let pid = worker.pid().expect("a process worker has a pid");
        sigkill(pid);
        dead(pid).await;
        let answer = ping(&client).await;
        assert_eq!(
            answer.as_deref().map_err(ToString::to_string),
            Ok("ping"),
            "round {round}: a call that never reached the killed worker failed"
        );
        assert_eq!(any_started(&mut events).await, round);
    }
    supervisor.shutdown().await;
}

#[tokio::test]
async fn an_event_subscription_follows_its_worker_through_restarts() {
    use workerbus_tests::pb::echo::{AnnounceRequest, EchoEvent, EchoEvents, TickEvent};

    let supervisor = Supervisor::new();
    let mut supervisor_events = supervisor.subscribe();
    let worker = supervisor
        .supervise("echo", process_driver(), RestartPolicy::new())
        .await
        .unwrap();
    let mut events = EchoEvents::subscribe(&worker.channel());
    let client = EchoClient::new(worker.channel());
    let announce = |tag: &str| AnnounceRequest {
        tag: tag.into(),
        count: 1,
        padding: 0,
    };
    let tick = |tag: &str| {
        EchoEvent::Tick(TickEvent {
            tag: tag.into(),
            value: 0,
            padding: Default::default(),
        })
    };

    client.announce(announce("first worker")).await.unwrap();
    let event = events.next_event().await.unwrap().unwrap();
    assert_eq!(event, tick("first worker"));

    sigkill(worker.pid().expect("a process worker has a pid"));
    while started(&mut supervisor_events, "echo").await < 1 {}
    client.announce(announce("second worker")).await.unwrap();
    let event = events.next_event().await.unwrap().unwrap();
    assert_eq!(event, tick("second worker"));

    // The subscription ends when the supervisor gives the worker up.
    supervisor.shutdown().await;
    assert!(events.next_event().await.is_none());
}
