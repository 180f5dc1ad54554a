//! Starts that fail: the first (the worker is not supervised), a restart's
//! (counted against the intensity), a recycle's (the current worker is
//! kept), every one of a worker that never starts, a program gone; and a
//! start that hangs while other workers need restarting.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use workerbus::{
    CallOptions, Error, ProcessDriver, ProcessWorker, RestartPolicy, Spawn, Supervisor,
    SupervisorEvent,
};
use workerbus_tests::pb::echo::{EchoClient, EchoRequest};
use workerbus_tests::support::{expect, sigkill};

use crate::{ECHO_WORKER, ping, policy, thread_spawner};

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
        ping(&EchoClient::new(worker.channel())).await.unwrap(),
        "ping"
    );
    supervisor.shutdown().await;
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
    let error = ping(&EchoClient::new(worker.channel())).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "echo.echo failed: worker limited is unavailable: its supervisor gave up after 2 \
         restarts within 60s; its last start failed: failed to spawn worker limited: start 3 is \
         not allowed"
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
    assert_eq!(ping(&client).await.unwrap(), "ping");
    supervisor.shutdown().await;
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
    assert_eq!(ping(&client).await.unwrap(), "ping");
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
    let error = ping(&EchoClient::new(worker.channel())).await.unwrap_err();
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
    let error = ping(&EchoClient::new(worker.channel())).await.unwrap_err();
    assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!("echo.echo failed: worker gone is unavailable: {reason}")
    );
}
