//! Restarts after a worker ends: at once, then after the backoff; as its
//! policy says (permanent, transient, temporary); calls failing fast while
//! it restarts; and the intensity, past which a worker is given up, and out
//! of whose period old restarts fall.

use std::time::{Duration, Instant};

use tokio::sync::broadcast;
use workerbus::{
    Backoff, CallOptions, Error, ExitReason, Restart, RestartPolicy, Supervisor, SupervisorEvent,
    WhileRestarting,
};
use workerbus_tests::cases;
use workerbus_tests::pb::echo::{EchoClient, ExitRequest, SleepRequest};
use workerbus_tests::support::{expect, sigkill};

use crate::{any_started, echo, echo_ok, ping, process_driver, started, thread_spawner};

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
            ..
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

/// The delay and attempt of the next restart.
async fn restarting(events: &mut broadcast::Receiver<SupervisorEvent>) -> (Duration, u32) {
    expect(events, "Restarting", |event| match event {
        SupervisorEvent::Restarting { delay, attempt, .. } => Some((*delay, *attempt)),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn restarts_older_than_the_intensity_period_no_longer_count() {
    let supervisor = Supervisor::new();
    let mut events = supervisor.subscribe();
    let within = Duration::from_millis(300);
    let worker = supervisor
        .supervise(
            "steady",
            thread_spawner(),
            RestartPolicy::new()
                .backoff(Backoff::constant(Duration::from_secs(3600)))
                .intensity(1, within),
        )
        .await
        .unwrap();
    any_started(&mut events).await;
    worker.kill();
    assert_eq!(restarting(&mut events).await, (Duration::ZERO, 1));
    assert_eq!(any_started(&mut events).await, 1);
    // Time must pass for the restart to fall out of the period (and for the
    // worker to have stayed up longer than it).
    tokio::time::sleep(within + Duration::from_millis(100)).await;
    worker.kill();
    // Within the intensity again, and a new run of restarts: no backoff.
    assert_eq!(restarting(&mut events).await, (Duration::ZERO, 1));
    assert_eq!(any_started(&mut events).await, 2);
    assert_eq!(
        ping(&EchoClient::new(worker.channel())).await.unwrap(),
        "ping"
    );
    supervisor.shutdown().await;
}
