//! Supervision: restarts after crashes (real processes, SIGKILL), the pid
//! of each new worker, intensity, backoff, graceful recycling past
//! thresholds, wedged and stopped workers, workers whose connection broke,
//! group strategies, shutdown order.

use std::time::{Duration, Instant};

use tokio::sync::broadcast;
use workerbus::{
    Backoff, CallOptions, Error, ExitReason, HealthCheck, ProcessDriver, Restart, RestartPolicy,
    Strategy, SupervisedWorker, Supervisor, SupervisorEvent, ThreadDriver, WhileRestarting,
};
use workerbus_tests::pb::echo::{EchoClient, EchoRequest, EchoServer, ExitRequest, SleepRequest};
use workerbus_tests::support::{KillOnDrop, expect, sigkill, signal};
use workerbus_tests::{EchoWorker, cases};

const ECHO_WORKER: &str = env!("CARGO_BIN_EXE_echo-worker");

fn process_driver() -> ProcessDriver {
    ProcessDriver::new(ECHO_WORKER)
}

fn thread_spawner() -> workerbus::ThreadSpawner<impl Fn() -> EchoServer<EchoWorker> + Send + Sync> {
    ThreadDriver::new().spawner(|| EchoServer::new(EchoWorker::new()))
}

async fn started(events: &mut broadcast::Receiver<SupervisorEvent>, name: &str) -> u32 {
    expect(events, "Started", |event| match event {
        SupervisorEvent::Started { worker, restarts } if worker == name => Some(*restarts),
        _ => None,
    })
    .await
}

fn echo(text: &str) -> EchoRequest {
    EchoRequest {
        text: text.into(),
        ..EchoRequest::default()
    }
}

async fn echo_ok(worker: &SupervisedWorker) {
    let reply = EchoClient::new(worker.channel())
        .echo(echo("ping"))
        .await
        .unwrap();
    assert_eq!(reply.text, "ping");
}

#[tokio::test]
async fn a_killed_process_worker_is_restarted_and_the_same_client_keeps_working() {
    let supervisor = Supervisor::new();
    let mut events = supervisor.subscribe();
    let worker = supervisor
        .supervise("echo", process_driver(), RestartPolicy::new())
        .await
        .unwrap();
    let client = EchoClient::new(worker.channel());
    assert_eq!(client.echo(echo("before")).await.unwrap().text, "before");
    let first_pid = worker.pid().expect("a process worker has a pid");

    // An idempotent call in flight when the worker dies runs again on the
    // new worker; a call that is not idempotent fails with the exit.
    let sleep = |tag: &str| SleepRequest {
        tag: tag.into(),
        ms: 300,
        blocking: false,
    };
    let idempotent = client.sleep_with(sleep("idempotent"), CallOptions::new().idempotent(true));
    let plain = client.sleep(sleep("plain"));
    let crash = async {
        cases::observe(
            &worker.channel(),
            "plain",
            workerbus_tests::pb::echo::SleepState::Started,
        )
        .await;
        cases::observe(
            &worker.channel(),
            "idempotent",
            workerbus_tests::pb::echo::SleepState::Started,
        )
        .await;
        sigkill(first_pid);
    };
    let (idempotent, plain, ()) = tokio::join!(idempotent, plain, crash);
    idempotent.expect("the idempotent call ran again on the new worker");
    assert!(
        matches!(
            plain,
            Err(Error::WorkerExited {
                exit: ExitReason::Signal(9),
                ..
            })
        ),
        "{plain:?}"
    );

    let exit = expect(&mut events, "Exited", |event| match event {
        SupervisorEvent::Exited { exit, .. } => Some(exit.clone()),
        _ => None,
    })
    .await;
    assert_eq!(exit, ExitReason::Signal(9));
    let delay = expect(&mut events, "Restarting", |event| match event {
        SupervisorEvent::Restarting {
            delay, attempt: 1, ..
        } => Some(*delay),
        _ => None,
    })
    .await;
    assert_eq!(delay, Duration::ZERO, "the first restart is immediate");
    assert_eq!(started(&mut events, "echo").await, 1);
    assert_eq!(client.echo(echo("after")).await.unwrap().text, "after");
    assert_eq!(worker.restarts(), 1);
    assert_eq!(worker.last_exit(), Some(ExitReason::Signal(9)));
    assert_ne!(worker.pid(), Some(first_pid));
    supervisor.shutdown().await;
}

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
    expect(&mut events, "ConnectionLost", |event| match event {
        SupervisorEvent::ConnectionLost { worker } if worker == "severed" => Some(()),
        _ => None,
    })
    .await;
    let exit = expect(&mut events, "Exited", |event| match event {
        SupervisorEvent::Exited { exit, .. } => Some(exit.clone()),
        _ => None,
    })
    .await;
    assert_eq!(exit, ExitReason::Signal(9), "the supervisor killed it");
    guard.disarm();
    assert_eq!(started(&mut events, "severed").await, 1);
    assert_eq!(client.echo(echo("after")).await.unwrap().text, "after");
    assert_ne!(worker.pid(), Some(old));
    supervisor.shutdown().await;
}

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
async fn past_its_intensity_a_worker_is_given_up_with_a_clear_error() {
    let supervisor = Supervisor::new();
    let mut events = supervisor.subscribe();
    let policy = RestartPolicy::new()
        .intensity(2, Duration::from_secs(60))
        .backoff(Backoff::constant(Duration::from_millis(1)));
    let worker = supervisor
        .supervise("flaky", process_driver(), policy)
        .await
        .unwrap();
    for _ in 0..3 {
        echo_ok(&worker).await;
        sigkill(worker.pid().unwrap());
        expect(&mut events, "Exited", |event| {
            matches!(event, SupervisorEvent::Exited { .. }).then_some(())
        })
        .await;
    }
    let (restarts, within) = expect(&mut events, "GaveUp", |event| match event {
        SupervisorEvent::GaveUp {
            restarts, within, ..
        } => Some((*restarts, *within)),
        _ => None,
    })
    .await;
    assert_eq!((restarts, within), (2, Duration::from_secs(60)));
    assert!(worker.is_down());
    let error = EchoClient::new(worker.channel())
        .echo(echo("x"))
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "echo.echo failed: worker flaky is unavailable: its supervisor gave up after 2 restarts \
         within 60s; it last was killed by signal 9 (SIGKILL)"
    );
    assert!(worker.channel().is_closed());
}

#[tokio::test]
async fn restarts_in_a_row_wait_for_the_backoff() {
    let supervisor = Supervisor::new();
    let mut events = supervisor.subscribe();
    let backoff = Backoff::exponential(Duration::from_millis(40)).jitter(0.0);
    let policy = RestartPolicy::new()
        .backoff(backoff)
        .intensity(10, Duration::from_secs(60));
    let worker = supervisor
        .supervise("backoff", thread_spawner(), policy)
        .await
        .unwrap();
    started(&mut events, "backoff").await;
    let mut delays = Vec::new();
    for _ in 0..4 {
        let killed = Instant::now();
        worker.kill();
        let delay = expect(&mut events, "Restarting", |event| match event {
            SupervisorEvent::Restarting { delay, .. } => Some(*delay),
            _ => None,
        })
        .await;
        started(&mut events, "backoff").await;
        assert!(
            killed.elapsed() >= delay,
            "restarted after {:?}, before its delay {delay:?}",
            killed.elapsed()
        );
        delays.push(delay);
        echo_ok(&worker).await;
    }
    assert_eq!(
        delays,
        [0, 40, 80, 160].map(Duration::from_millis),
        "immediate, then the backoff doubling"
    );
    assert_eq!(worker.restarts(), 4);
    assert_eq!(worker.last_exit(), Some(ExitReason::Killed));
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
async fn one_for_all_restarts_the_whole_group_in_order() {
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
    let c = supervisor
        .supervise("c", thread_spawner(), RestartPolicy::new())
        .await
        .unwrap();
    for name in ["a", "b", "c"] {
        started(&mut events, name).await;
    }
    b.kill();
    let mut order = Vec::new();
    while order.len() < 3 {
        let name = expect(&mut events, "Started", |event| match event {
            SupervisorEvent::Started { worker, .. } => Some(worker.clone()),
            _ => None,
        })
        .await;
        order.push(name);
    }
    assert_eq!(order, ["a", "b", "c"], "restarted in start order");
    assert_eq!((a.restarts(), b.restarts(), c.restarts()), (1, 1, 1));
    for worker in [&a, &b, &c] {
        echo_ok(worker).await;
    }
    supervisor.shutdown().await;
}

#[tokio::test]
async fn rest_for_one_restarts_the_worker_and_those_started_after_it() {
    let supervisor = Supervisor::with_strategy(Strategy::RestForOne);
    let mut events = supervisor.subscribe();
    let a = supervisor
        .supervise("a", thread_spawner(), RestartPolicy::new())
        .await
        .unwrap();
    let b = supervisor
        .supervise("b", thread_spawner(), RestartPolicy::new())
        .await
        .unwrap();
    let c = supervisor
        .supervise("c", thread_spawner(), RestartPolicy::new())
        .await
        .unwrap();
    for name in ["a", "b", "c"] {
        started(&mut events, name).await;
    }
    b.kill();
    assert_eq!(started(&mut events, "b").await, 1);
    assert_eq!(started(&mut events, "c").await, 1);
    assert_eq!((a.restarts(), b.restarts(), c.restarts()), (0, 1, 1));
    for worker in [&a, &b, &c] {
        echo_ok(worker).await;
    }
    supervisor.shutdown().await;
}

#[tokio::test]
async fn a_transient_worker_that_exits_cleanly_stays_down() {
    let supervisor = Supervisor::new();
    let mut events = supervisor.subscribe();
    let policy = RestartPolicy::new().restart(Restart::Transient);
    let worker = supervisor
        .supervise("transient", process_driver(), policy)
        .await
        .unwrap();
    let _ = EchoClient::new(worker.channel())
        .exit(ExitRequest { code: 0 })
        .await;
    expect(&mut events, "Stopped", |event| {
        matches!(event, SupervisorEvent::Stopped { .. }).then_some(())
    })
    .await;
    assert!(worker.is_down());
    assert_eq!(worker.last_exit(), Some(ExitReason::Code(0)));
    let error = EchoClient::new(worker.channel())
        .echo(echo("x"))
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "echo.echo failed: worker transient is unavailable: it exited with code 0 and its policy \
         does not restart it"
    );
}

#[tokio::test]
async fn a_transient_worker_that_fails_is_restarted_and_a_temporary_one_is_not() {
    let supervisor = Supervisor::new();
    let mut events = supervisor.subscribe();
    let transient = supervisor
        .supervise(
            "transient",
            process_driver(),
            RestartPolicy::new().restart(Restart::Transient),
        )
        .await
        .unwrap();
    let temporary = supervisor
        .supervise(
            "temporary",
            process_driver(),
            RestartPolicy::new().restart(Restart::Temporary),
        )
        .await
        .unwrap();
    let _ = EchoClient::new(transient.channel())
        .exit(ExitRequest { code: 3 })
        .await;
    expect(&mut events, "Started", |event| match event {
        SupervisorEvent::Started {
            worker,
            restarts: 1,
        } if worker == "transient" => Some(()),
        _ => None,
    })
    .await;
    echo_ok(&transient).await;
    let _ = EchoClient::new(temporary.channel())
        .exit(ExitRequest { code: 3 })
        .await;
    expect(&mut events, "Stopped", |event| match event {
        SupervisorEvent::Stopped { worker } if worker == "temporary" => Some(()),
        _ => None,
    })
    .await;
    assert!(temporary.is_down());
    supervisor.shutdown().await;
}

#[tokio::test]
async fn failing_fast_while_restarting_says_so() {
    let supervisor = Supervisor::new();
    let mut events = supervisor.subscribe();
    let policy = RestartPolicy::new()
        .while_restarting(WhileRestarting::FailFast)
        .backoff(Backoff::constant(Duration::from_secs(60)))
        .intensity(10, Duration::from_secs(60));
    let worker = supervisor
        .supervise("fast", thread_spawner(), policy)
        .await
        .unwrap();
    started(&mut events, "fast").await;
    // The first restart is immediate; the second waits a minute.
    worker.kill();
    started(&mut events, "fast").await;
    worker.kill();
    expect(&mut events, "Restarting", |event| match event {
        SupervisorEvent::Restarting { attempt: 2, .. } => Some(()),
        _ => None,
    })
    .await;
    let error = EchoClient::new(worker.channel())
        .echo(echo("x"))
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "echo.echo failed: worker fast is unavailable: it is restarting"
    );
    supervisor.shutdown().await;
}

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
