//! Supervision at its edges: recycling on demand, workers that outlast their
//! shutdown timeout, starts that fail (the first, a restart, a recycle's,
//! every one of a worker that never starts, a program gone), a start that
//! hangs while other workers need restarting, restarts falling out of the
//! intensity period, and a supervisor that is gone (shut down, or every
//! handle dropped).

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, broadcast};
use workerbus::{
    Backoff, CallOptions, Error, ExitReason, ProcessDriver, ProcessWorker, RestartPolicy, Spawn,
    Strategy, SupervisedWorker, Supervisor, SupervisorEvent, ThreadDriver,
};
use workerbus_tests::EchoWorker;
use workerbus_tests::pb::echo::{
    EchoClient, EchoRequest, EchoServer, ObserveRequest, SleepRequest, SleepState,
};
use workerbus_tests::support::{expect, sigkill};

const ECHO_WORKER: &str = env!("CARGO_BIN_EXE_echo-worker");

fn thread_spawner() -> impl Spawn {
    ThreadDriver::new().spawner(|| EchoServer::new(EchoWorker::new()))
}

/// Restarts at once, at most `max` times within `within`.
fn policy(max: u32, within: Duration) -> RestartPolicy {
    RestartPolicy::new()
        .backoff(Backoff::constant(Duration::ZERO))
        .intensity(max, within)
}

/// The delay and attempt of the next restart.
async fn restarting(events: &mut broadcast::Receiver<SupervisorEvent>) -> (Duration, u32) {
    expect(events, "Restarting", |event| match event {
        SupervisorEvent::Restarting { delay, attempt, .. } => Some((*delay, *attempt)),
        _ => None,
    })
    .await
}

async fn started(events: &mut broadcast::Receiver<SupervisorEvent>) -> u32 {
    expect(events, "Started", |event| match event {
        SupervisorEvent::Started { restarts, .. } => Some(*restarts),
        _ => None,
    })
    .await
}

async fn echo(client: &EchoClient) -> Result<String, Error> {
    let request = EchoRequest {
        text: "ping".into(),
        ..EchoRequest::default()
    };
    client.echo(request).await.map(|reply| reply.text)
}

/// A sleep of `ms` on the worker behind `client`, once it has started there.
async fn sleeping(
    client: &EchoClient,
    tag: &str,
    ms: u64,
) -> impl Future<Output = Result<(), Error>> + use<> {
    let sleep = SleepRequest {
        tag: tag.into(),
        ms,
        blocking: false,
    };
    let client_for_sleep = client.clone();
    let mut call = Box::pin(async move { client_for_sleep.sleep(sleep).await });
    let started = ObserveRequest {
        tag: tag.into(),
        state: SleepState::Started.into(),
    };
    tokio::select! {
        biased; // the sleep is sent first
        result = &mut call => panic!("the sleep ended before it was observed: {result:?}"),
        result = client.observe(started) => result.expect("the sleep started"),
    }
    call
}

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
    assert_eq!(started(&mut events).await, 0);
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
        restarts = started(&mut events) => assert_eq!(restarts, 1),
        result = &mut call => panic!("the call ended before the replacement started: {result:?}"),
    }
    let new = worker.pid().unwrap();
    assert_ne!(new, old, "a new process took over");
    assert_eq!(echo(&client).await.unwrap(), "ping");
    // The old worker finished the call it had before it stopped.
    call.await.expect("the call in flight was not failed");
    assert_eq!(worker.restarts(), 1);
    assert!(worker.is_running());
    supervisor.shutdown().await;
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
    started(&mut events).await;
    let client = EchoClient::new(worker.channel());
    let call = sleeping(&client, "stubborn", 60_000).await;
    (supervisor, events, worker, client, call)
}

#[tokio::test]
async fn a_recycled_worker_that_outlasts_its_shutdown_timeout_is_killed() {
    let (supervisor, mut events, worker, client, call) = stubborn().await;
    worker.recycle();
    assert_eq!(started(&mut events).await, 1);
    let result = tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .expect("the old worker is killed within 20 s");
    match result {
        Err(Error::WorkerExited { exit, .. }) => assert_eq!(exit, ExitReason::Signal(9)),
        other => panic!("expected the old worker's death, got {other:?}"),
    }
    assert_eq!(echo(&client).await.unwrap(), "ping");
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
async fn a_worker_whose_first_start_fails_is_not_supervised() {
    let supervisor = Supervisor::new();
    let error = supervisor
        .supervise(
            "missing",
            ProcessDriver::new("/nonexistent/worker"),
            RestartPolicy::new(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "failed to spawn worker /nonexistent/worker: the program does not exist: \
         No such file or directory (os error 2)"
    );
    // The supervisor goes on supervising others.
    let worker = supervisor
        .supervise("present", thread_spawner(), RestartPolicy::new())
        .await
        .unwrap();
    assert_eq!(
        echo(&EchoClient::new(worker.channel())).await.unwrap(),
        "ping"
    );
    supervisor.shutdown().await;
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
    let error = echo(&EchoClient::new(worker.channel())).await.unwrap_err();
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
    let error = echo(&EchoClient::new(channel)).await.unwrap_err();
    assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
}

/// Starts workers with `inner` as long as `allowed` says, then fails.
struct Limited<S> {
    inner: S,
    starts: Arc<AtomicU32>,
    allowed: u32,
}

impl<S: Spawn> Spawn for Limited<S> {
    type Worker = S::Worker;

    fn spawn(&self) -> impl Future<Output = Result<S::Worker, Error>> + Send {
        let start = self.starts.fetch_add(1, Ordering::SeqCst);
        let spawn = (start < self.allowed).then(|| self.inner.spawn());
        async move {
            match spawn {
                Some(spawn) => spawn.await,
                None => Err(Error::Spawn {
                    worker: "limited".into(),
                    reason: format!("start {} is not allowed", start + 1),
                    source: None,
                }),
            }
        }
    }
}

fn limited(allowed: u32) -> (Limited<impl Spawn>, Arc<AtomicU32>) {
    let starts = Arc::new(AtomicU32::new(0));
    let spawn = Limited {
        inner: thread_spawner(),
        starts: Arc::clone(&starts),
        allowed,
    };
    (spawn, starts)
}

#[tokio::test]
async fn failed_restarts_count_against_the_intensity_until_the_supervisor_gives_up() {
    let supervisor = Supervisor::new();
    let mut events = supervisor.subscribe();
    let (spawn, starts) = limited(1);
    let worker = supervisor
        .supervise("limited", spawn, policy(2, Duration::from_secs(60)))
        .await
        .unwrap();
    worker.kill();
    let mut failures = Vec::new();
    let restarts = loop {
        match expect(&mut events, "StartFailed or GaveUp", |event| match event {
            SupervisorEvent::StartFailed { error, .. } => Some(Err(error.clone())),
            SupervisorEvent::GaveUp { restarts, .. } => Some(Ok(*restarts)),
            _ => None,
        })
        .await
        {
            Err(error) => failures.push(error),
            Ok(restarts) => break restarts,
        }
    };
    assert_eq!(
        failures,
        [
            "failed to spawn worker limited: start 2 is not allowed",
            "failed to spawn worker limited: start 3 is not allowed",
        ]
    );
    assert_eq!(restarts, 2);
    assert_eq!(starts.load(Ordering::SeqCst), 3);
    assert!(worker.is_down());
    let error = echo(&EchoClient::new(worker.channel())).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "echo.echo failed: worker limited is unavailable: its supervisor gave up after 2 \
         restarts within 60s; its last start failed: failed to spawn worker limited: start 3 is \
         not allowed"
    );
}

/// Starts its first worker with `first` and every later one with `then`,
/// telling `later` as each later start begins.
struct FirstThen {
    first: ProcessDriver,
    then: ProcessDriver,
    starts: AtomicU32,
    later: Arc<Notify>,
}

impl Spawn for FirstThen {
    type Worker = ProcessWorker;

    fn spawn(&self) -> impl Future<Output = Result<ProcessWorker, Error>> + Send {
        let first = self.starts.fetch_add(1, Ordering::SeqCst) == 0;
        if !first {
            self.later.notify_one();
        }
        if first { &self.first } else { &self.then }.spawn()
    }
}

/// A worker process that starts the first time, and whose later starts
/// hang in start-up until `startup_timeout` fails them (killing the process).
fn hangs_after_its_first_start(
    name: &str,
    later: &Arc<Notify>,
    startup_timeout: Duration,
) -> FirstThen {
    FirstThen {
        first: ProcessDriver::new(ECHO_WORKER).name(name),
        then: ProcessDriver::new(ECHO_WORKER)
            .name(name)
            .arg("--delay-start-ms=60000")
            .startup_timeout(startup_timeout),
        starts: AtomicU32::new(0),
        later: Arc::clone(later),
    }
}

#[tokio::test]
async fn a_worker_hanging_in_start_up_holds_up_no_other_worker() {
    let supervisor = Supervisor::new();
    let a = supervisor
        .supervise("a", ProcessDriver::new(ECHO_WORKER), RestartPolicy::new())
        .await
        .unwrap();
    let b_starts = Arc::new(Notify::new());
    let b = supervisor
        .supervise(
            "b",
            hangs_after_its_first_start("b", &b_starts, Duration::from_secs(3)),
            RestartPolicy::new(),
        )
        .await
        .unwrap();
    let client = EchoClient::new(a.channel());
    assert_eq!(echo(&client).await.unwrap(), "ping");
    sigkill(b.pid().expect("a process worker has a pid"));
    b_starts.notified().await; // b's restart has begun, and hangs for 3 s

    let a_pid = a.pid().expect("a process worker has a pid");
    // Sent to the killed worker before its death is seen, the call runs
    // again on the new one.
    let request = EchoRequest {
        text: "again".into(),
        ..EchoRequest::default()
    };
    let options = CallOptions::new().idempotent(true);
    sigkill(a_pid);
    let killed = Instant::now();
    let reply = client.echo_with(request, options).await;
    let recovery = killed.elapsed();
    assert_eq!(reply.unwrap().text, "again");
    assert!(
        recovery < Duration::from_millis(100),
        "a answered {recovery:?} after its SIGKILL, while b hung in start-up"
    );
    assert_ne!(a.pid(), Some(a_pid));
    assert!(!b.is_running(), "b is still starting");
    supervisor.shutdown().await;
}

#[tokio::test]
async fn a_worker_that_never_starts_is_given_up_after_the_intensitys_number_of_failed_starts() {
    let supervisor = Supervisor::new();
    let mut events = supervisor.subscribe();
    // Each failed start takes the whole period: counted by time alone, no
    // two restarts would ever fall within it.
    let within = Duration::from_millis(300);
    let starts = Arc::new(Notify::new());
    let worker = supervisor
        .supervise(
            "stuck",
            hangs_after_its_first_start("stuck", &starts, within),
            policy(3, within),
        )
        .await
        .unwrap();
    sigkill(worker.pid().expect("a process worker has a pid"));
    let mut failures = Vec::new();
    let (restarts, reason) = loop {
        let found = expect(&mut events, "StartFailed or GaveUp", |event| match event {
            SupervisorEvent::StartFailed { error, .. } => Some(Err(error.clone())),
            SupervisorEvent::GaveUp {
                restarts, reason, ..
            } => Some(Ok((*restarts, reason.clone()))),
            _ => None,
        })
        .await;
        match found {
            Ok(gave_up) => break gave_up,
            Err(error) => failures.push(error),
        }
        assert!(
            failures.len() <= 3,
            "still restarting after {} failed starts: {failures:#?}",
            failures.len()
        );
    };
    let timed_out = "worker stuck did not complete its handshake within 300ms; it was killed";
    assert_eq!(failures, [timed_out; 3]);
    assert_eq!(restarts, 3);
    assert_eq!(
        reason,
        format!(
            "its supervisor gave up after 3 failed starts in a row; its last start failed: \
             {timed_out}"
        )
    );
    assert!(worker.is_down());
    let error = echo(&EchoClient::new(worker.channel())).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("echo.echo failed: worker stuck is unavailable: {reason}")
    );
}

#[tokio::test]
async fn a_worker_whose_program_is_gone_is_given_up_naming_why() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("program-gone-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let program = dir.join("echo-worker");
    let _ = std::fs::remove_file(&program);
    std::os::unix::fs::symlink(ECHO_WORKER, &program).unwrap();

    let supervisor = Supervisor::new();
    let mut events = supervisor.subscribe();
    let worker = supervisor
        .supervise(
            "gone",
            ProcessDriver::new(&program),
            policy(2, Duration::from_secs(60)),
        )
        .await
        .unwrap();
    std::fs::remove_file(&program).unwrap();
    std::fs::remove_dir(&dir).unwrap();
    sigkill(worker.pid().expect("a process worker has a pid"));

    let failed = expect(&mut events, "StartFailed", |event| match event {
        SupervisorEvent::StartFailed { error, .. } => Some(error.clone()),
        _ => None,
    })
    .await;
    let cause = format!(
        "failed to spawn worker {}: the program does not exist",
        program.display()
    );
    assert!(failed.starts_with(&cause), "{failed}");
    assert!(
        failed.contains("No such file or directory"),
        "StartFailed names the OS error: {failed}"
    );
    let reason = expect(&mut events, "GaveUp", |event| match event {
        SupervisorEvent::GaveUp { reason, .. } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        reason,
        format!(
            "its supervisor gave up after 2 restarts within 60s; its last start failed: {failed}"
        )
    );
    let error = echo(&EchoClient::new(worker.channel())).await.unwrap_err();
    assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!("echo.echo failed: worker gone is unavailable: {reason}")
    );
}

#[tokio::test]
async fn a_recycle_whose_start_fails_keeps_the_current_worker() {
    let supervisor = Supervisor::new();
    let mut events = supervisor.subscribe();
    let (spawn, starts) = limited(1);
    let worker = supervisor
        .supervise("kept", spawn, RestartPolicy::new())
        .await
        .unwrap();
    let client = EchoClient::new(worker.channel());
    worker.recycle();
    let error = expect(&mut events, "StartFailed", |event| match event {
        SupervisorEvent::StartFailed { error, .. } => Some(error.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        error,
        "failed to spawn worker limited: start 2 is not allowed"
    );
    assert_eq!(starts.load(Ordering::SeqCst), 2);
    assert_eq!(worker.restarts(), 0, "a failed recycle is not a restart");
    assert!(worker.is_running());
    assert_eq!(echo(&client).await.unwrap(), "ping");
    supervisor.shutdown().await;
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
    started(&mut events).await;
    worker.kill();
    assert_eq!(restarting(&mut events).await, (Duration::ZERO, 1));
    assert_eq!(started(&mut events).await, 1);
    // Time must pass for the restart to fall out of the period (and for the
    // worker to have stayed up longer than it).
    tokio::time::sleep(within + Duration::from_millis(100)).await;
    worker.kill();
    // Within the intensity again, and a new run of restarts: no backoff.
    assert_eq!(restarting(&mut events).await, (Duration::ZERO, 1));
    assert_eq!(started(&mut events).await, 2);
    assert_eq!(
        echo(&EchoClient::new(worker.channel())).await.unwrap(),
        "ping"
    );
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
    started(&mut events).await;
    started(&mut events).await;
    let busy = sleeping(&EchoClient::new(b.channel()), "busy", 1_000).await;
    a.kill();
    expect(&mut events, "Exited", |event| match event {
        SupervisorEvent::Exited { worker, .. } if worker == "a" => Some(()),
        _ => None,
    })
    .await;
    // Not idempotent, so not run again after a crash: it must not be sent
    // on the dead connection either.
    let reply = echo(&EchoClient::new(a.channel())).await;
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
        echo(&client).await.unwrap();
        let pid = worker.pid().expect("a process worker has a pid");
        workerbus_tests::support::sigkill(pid);
        dead(pid).await;
        let answer = echo(&client).await;
        assert_eq!(
            answer.as_deref().map_err(ToString::to_string),
            Ok("ping"),
            "round {round}: a call that never reached the killed worker failed"
        );
        assert_eq!(started(&mut events).await, round);
    }
    supervisor.shutdown().await;
}
