//! End-to-end tests of the process driver with real child processes: the
//! shared cases, every start-up failure, deaths, shutdown, detach and
//! reconnect, schema mismatch and hostile peers.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio_util::codec::Framed;
use workerbus::{
    Code, Error, ExitReason, Frame, FrameCodec, MethodName, ProcessDriver, ProcessWorker, Secret,
    Stdio,
};
use workerbus_tests::cases;
use workerbus_tests::pb::echo::{
    AnnounceRequest, CountRequest, EchoClient, EchoEvents, EchoRequest, ExitRequest, SleepRequest,
    SleepState,
};
use workerbus_tests::support::{
    KillOnDrop, fill_pipe, secret_bytes, sigkill, sigterm, with_few_files,
};

use crate::ECHO_WORKER;

fn driver() -> ProcessDriver {
    ProcessDriver::new(ECHO_WORKER).serves(EchoClient::SCHEMA)
}

async fn spawn() -> ProcessWorker {
    driver().spawn().await.expect("spawn the echo worker")
}

fn sleep_request(tag: &str, ms: u64) -> SleepRequest {
    SleepRequest {
        tag: tag.into(),
        ms,
        blocking: false,
    }
}

#[tokio::test]
async fn every_shared_case_passes_over_the_process_driver() {
    let worker = spawn().await;
    assert_eq!(worker.name(), "echo-worker");
    cases::all(&worker.channel()).await;
    assert_eq!(worker.shutdown().await, ExitReason::Code(0));
}

#[tokio::test]
async fn a_request_stream_with_nothing_to_send_ends_with_its_process_worker() {
    let worker = spawn().await;
    cases::a_request_stream_with_nothing_to_send_ends_with_its_worker(&worker.channel(), || {
        worker.kill()
    })
    .await;
}

#[tokio::test]
async fn every_metadata_case_passes_over_the_process_driver() {
    let worker = spawn().await;
    cases::metadata(&worker.channel()).await;
    assert_eq!(worker.shutdown().await, ExitReason::Code(0));
}

#[tokio::test]
async fn every_streaming_case_passes_over_the_process_driver() {
    let worker = spawn().await;
    cases::streams(&worker.channel()).await;
    assert_eq!(worker.shutdown().await, ExitReason::Code(0));
}

#[tokio::test]
async fn a_stream_whose_worker_exits_ends_with_the_exit_after_what_arrived() {
    let worker = spawn().await;
    let client = EchoClient::new(worker.channel());
    let request = CountRequest {
        tag: "exit mid-stream".into(),
        count: u32::MAX,
        ..CountRequest::default()
    };
    let mut stream = client.count(request).await.unwrap();
    assert_eq!(stream.message().await.unwrap().unwrap().value, 0);
    let exit = client.exit(ExitRequest { code: 3 }).await.unwrap_err();
    assert!(matches!(exit, Error::WorkerExited { .. }), "{exit:?}");
    // What arrived before the exit is delivered, in order, then the exit.
    let mut next = 1;
    let error = loop {
        match stream.message().await {
            Ok(Some(reply)) => {
                assert_eq!(reply.value, next);
                next += 1;
            }
            Ok(None) => panic!("the stream ended as if the worker had finished it"),
            Err(error) => break error,
        }
    };
    assert!(
        next <= u64::from(workerbus::STREAM_WINDOW),
        "{next} messages"
    );
    match error {
        Error::WorkerExited { method, exit } => {
            assert_eq!(method, "echo.count");
            assert_eq!(exit, ExitReason::Code(3));
        }
        other => panic!("expected the worker's exit, got {other:?}"),
    }
    assert!(stream.message().await.unwrap().is_none());
}

#[tokio::test]
async fn every_one_way_and_event_case_passes_over_the_process_driver() {
    let worker = spawn().await;
    cases::one_way_and_events(&worker.channel()).await;
    assert_eq!(worker.shutdown().await, ExitReason::Code(0));
}

#[tokio::test]
async fn a_subscription_ends_after_what_arrived_when_its_worker_dies() {
    let worker = spawn().await;
    let channel = worker.channel();
    let mut events = EchoEvents::subscribe(&channel);
    let client = EchoClient::new(channel.clone());
    let call = tokio::spawn(async move {
        client
            .announce(AnnounceRequest {
                tag: "killed".into(),
                count: u32::MAX,
                padding: 0,
            })
            .await
    });
    // The worker has filled the window and waits for room.
    cases::progress(&channel, "killed", u64::from(workerbus::STREAM_WINDOW)).await;
    worker.kill();
    let mut received = 0;
    while let Some(event) = events.next_event().await {
        event.unwrap();
        received += 1;
    }
    assert_eq!(received, workerbus::STREAM_WINDOW);
    let error = call.await.unwrap().unwrap_err();
    assert!(matches!(error, Error::WorkerExited { .. }), "{error:?}");
}

#[tokio::test]
async fn a_missing_program_is_a_spawn_error_naming_the_path() {
    let error = ProcessDriver::new("/nonexistent/echo-worker")
        .spawn()
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "failed to spawn worker /nonexistent/echo-worker: the program does not exist: \
         No such file or directory (os error 2)"
    );
}

#[tokio::test]
async fn a_program_that_is_not_executable_is_a_spawn_error_naming_the_path() {
    let dir = std::env::temp_dir().join(format!("workerbus-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("not-executable");
    std::fs::write(&path, "#!/bin/sh\n").unwrap();
    let error = ProcessDriver::new(&path).spawn().await.unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "failed to spawn worker {}: the program is not executable: \
             Permission denied (os error 13)",
            path.display()
        )
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_spawn_short_of_file_descriptors_is_a_spawn_error_naming_the_os_error() {
    // In a process of its own, which holds every descriptor it may open.
    let said = with_few_files(env!("CARGO_BIN_EXE_fd-starved"), &["process", ECHO_WORKER]);
    assert_eq!(
        said,
        format!(
            "failed to spawn worker {ECHO_WORKER}: cannot create a socket pair: \
             Too many open files (os error 24)"
        )
    );
}

#[tokio::test]
async fn a_worker_that_exits_before_the_handshake_reports_its_code_and_stderr() {
    let error = driver()
        .arg("--exit-before-handshake=3")
        .spawn()
        .await
        .unwrap_err();
    match &error {
        Error::ExitedDuringStartup {
            worker,
            exit,
            stderr,
        } => {
            assert_eq!(worker, "echo-worker");
            assert_eq!(*exit, ExitReason::Code(3));
            assert_eq!(
                stderr,
                &[
                    "echo-worker: loading the model failed on purpose",
                    "echo-worker: giving up with code 3"
                ]
            );
        }
        other => panic!("expected ExitedDuringStartup, got {other:?}"),
    }
    assert_eq!(
        error.to_string(),
        "worker echo-worker exited with code 3 before completing its handshake; its stderr ended with:\n\
         echo-worker: loading the model failed on purpose\n\
         echo-worker: giving up with code 3"
    );
}

#[tokio::test]
async fn a_slow_worker_within_the_startup_deadline_starts() {
    let worker = driver()
        .arg("--delay-start-ms=300")
        .startup_timeout(Duration::from_secs(10))
        .spawn()
        .await
        .expect("a slow start within the deadline succeeds");
    cases::unary_round_trip(&worker.channel()).await;
}

#[tokio::test]
async fn a_worker_past_the_startup_deadline_is_killed_and_reported() {
    let started = Instant::now();
    let error = driver()
        .arg("--delay-start-ms=60000")
        .startup_timeout(Duration::from_millis(300))
        .spawn()
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "worker echo-worker did not complete its handshake within 300ms; it was killed"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn sigkill_fails_every_call_in_flight_with_the_signal_promptly() {
    let worker = spawn().await;
    let channel = worker.channel();
    let client = EchoClient::new(channel.clone());
    let calls = futures_util::future::join_all(
        (0..20).map(|i| client.sleep(sleep_request(&format!("killed {i}"), 60_000))),
    );
    let kill = async {
        for i in 0..20 {
            cases::observe(&channel, &format!("killed {i}"), SleepState::Started).await;
        }
        sigkill(worker.pid().unwrap());
        Instant::now()
    };
    let (results, killed_at) = tokio::join!(calls, kill);
    let reported_after = killed_at.elapsed();
    for result in results {
        assert!(
            matches!(&result, Err(Error::WorkerExited { method, exit: ExitReason::Signal(9) }) if method == "echo.sleep"),
            "{result:?}"
        );
    }
    assert!(
        reported_after < Duration::from_millis(100),
        "calls learned of the death {reported_after:?} after it"
    );
    assert_eq!(channel.in_flight(), 0);
    assert_eq!(worker.exit_reason(), Some(ExitReason::Signal(9)));
    let error = EchoClient::new(channel.clone())
        .echo(EchoRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "echo.echo failed: the worker was killed by signal 9 (SIGKILL)"
    );
}

#[tokio::test]
async fn kill_is_immediate_and_reported_with_the_signal() {
    let worker = spawn().await;
    let client = EchoClient::new(worker.channel());
    let call = client.sleep(sleep_request("kill", 60_000));
    let kill = async {
        cases::observe(&worker.channel(), "kill", SleepState::Started).await;
        worker.kill();
    };
    let (result, ()) = tokio::join!(call, kill);
    assert!(
        matches!(
            result,
            Err(Error::WorkerExited {
                exit: ExitReason::Signal(9),
                ..
            })
        ),
        "{result:?}"
    );
    assert_eq!(worker.exited().await, ExitReason::Signal(9));
}

#[tokio::test]
async fn shutdown_drains_calls_in_flight_and_the_worker_exits_cleanly() {
    let worker = spawn().await;
    let channel = worker.channel();
    let client = EchoClient::new(channel.clone());
    let call = client.sleep(sleep_request("draining", 200));
    let shutdown = async {
        cases::observe(&channel, "draining", SleepState::Started).await;
        worker.shutdown().await
    };
    let (result, exit) = tokio::join!(call, shutdown);
    result.expect("the call in flight finishes");
    assert_eq!(exit, ExitReason::Code(0));
    cases::calls_after_exit_fail_fast(&channel, &ExitReason::Code(0)).await;
}

#[tokio::test]
async fn shutdown_kills_a_worker_that_outlasts_the_grace_period() {
    let worker = driver()
        .shutdown_grace(Duration::from_millis(200))
        .spawn()
        .await
        .unwrap();
    let client = EchoClient::new(worker.channel());
    let call = client.sleep(sleep_request("too slow", 60_000));
    let shutdown = async {
        cases::observe(&worker.channel(), "too slow", SleepState::Started).await;
        worker.shutdown().await
    };
    let (result, exit) = tokio::join!(call, shutdown);
    assert_eq!(exit, ExitReason::Signal(9));
    assert!(
        matches!(
            result,
            Err(Error::WorkerExited {
                exit: ExitReason::Signal(9),
                ..
            })
        ),
        "{result:?}"
    );
}

#[tokio::test]
async fn dropping_every_handle_ends_the_worker_and_reaps_it() {
    let worker = spawn().await;
    let pid = worker.pid().expect("a spawned worker has a process id");
    let channel = worker.channel();
    cases::unary_round_trip(&channel).await;
    let exit = worker.watch_exit();
    drop(worker);
    drop(channel);
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), exit).await,
        Ok(ExitReason::Code(0)),
        "the worker exits when its host closes the connection"
    );
    // Reported only after it was reaped: no zombie is left behind.
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "process {pid} is still there"
    );
}

/// Where an orphaned worker's stderr goes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum OrphanStderr {
    /// The host's, which this test reads to its end.
    Inherited,
    /// Copied by the host to its own (the driver's default): once the host
    /// is killed, a write to it fails.
    Forwarded,
    /// Forwarded, with the frame log on (`WORKERBUS_LOG=1`) in both.
    ForwardedAndLogged,
    /// The host's, a pipe this test fills and then never reads: a write to
    /// it waits for good.
    Unread,
}

/// Runs orphan-host, waits until its worker is up (and, if `busy`, wedged
/// in a blocking handler), SIGKILLs the host, and returns how long the
/// worker took to notice: the worker shares the host's stdout, which
/// reaches end of file only when the worker has exited too.
fn orphan_worker_lifetime(busy: bool, stderr: OrphanStderr) -> Duration {
    let mut command = Command::new(env!("CARGO_BIN_EXE_orphan-host"));
    command
        .arg(ECHO_WORKER)
        .args(busy.then_some("--busy"))
        .stdout(std::process::Stdio::piped());
    if stderr != OrphanStderr::Inherited && stderr != OrphanStderr::Unread {
        command.arg("--stderr=forward");
    }
    if stderr == OrphanStderr::ForwardedAndLogged {
        command.env(workerbus::LOG_ENV, "1");
    }
    let (reader, writer) = std::io::pipe().expect("a pipe");
    let filler = writer.try_clone().expect("dup the pipe's end");
    command.stderr(writer);
    let mut host = command.spawn().expect("start orphan-host");
    drop(command);
    let mut pid = String::new();
    let mut stdout = BufReader::new(host.stdout.take().unwrap());
    stdout.read_line(&mut pid).unwrap();
    let worker_pid: u32 = pid.trim().parse().expect("the worker's pid");
    let guard = KillOnDrop(worker_pid);
    let mut stderr_lines = BufReader::new(reader);
    if busy {
        let mut line = String::new();
        while !line.contains("blocks its thread") {
            line.clear();
            let read = stderr_lines.read_line(&mut line).unwrap();
            assert!(
                read > 0,
                "the host's stderr ended before the worker was busy"
            );
        }
    }
    if stderr == OrphanStderr::Unread {
        // Only the wedged handler's thread has written, and it sleeps.
        fill_pipe(&filler);
    }
    drop(filler);
    sigkill(host.id());
    host.wait().unwrap();
    let killed = Instant::now();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = stdout.read_to_string(&mut rest);
        let _ = done.send(killed.elapsed());
    });
    let lifetime = finished
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("worker {worker_pid} outlived its host by 20 s"));
    // Gone: its pid may name another process by now.
    std::mem::forget(guard);
    if busy && stderr == OrphanStderr::Inherited {
        let mut rest = String::new();
        stderr_lines.read_to_string(&mut rest).unwrap();
        assert!(rest.contains("the host went away"), "{rest:?}");
    }
    lifetime
}

#[test]
fn a_worker_exits_when_its_host_is_killed() {
    let lifetime = orphan_worker_lifetime(false, OrphanStderr::Inherited);
    assert!(lifetime < Duration::from_secs(5), "{lifetime:?}");
}

#[test]
fn a_worker_wedged_in_a_handler_still_exits_when_its_host_is_killed() {
    let lifetime = orphan_worker_lifetime(true, OrphanStderr::Inherited);
    assert!(lifetime < Duration::from_secs(2), "{lifetime:?}");
}

#[test]
fn a_wedged_worker_whose_stderr_was_forwarded_by_its_killed_host_still_exits() {
    let lifetime = orphan_worker_lifetime(true, OrphanStderr::Forwarded);
    assert!(lifetime < Duration::from_secs(2), "{lifetime:?}");
}

#[test]
fn a_wedged_worker_logging_frames_to_its_killed_hosts_stderr_still_exits() {
    let lifetime = orphan_worker_lifetime(true, OrphanStderr::ForwardedAndLogged);
    assert!(lifetime < Duration::from_secs(2), "{lifetime:?}");
}

#[test]
fn a_wedged_worker_whose_stderr_is_a_full_pipe_nobody_reads_still_exits() {
    let lifetime = orphan_worker_lifetime(true, OrphanStderr::Unread);
    assert!(lifetime < Duration::from_secs(2), "{lifetime:?}");
}

#[tokio::test]
async fn a_worker_built_from_another_schema_fails_at_spawn_naming_what_differs() {
    let error = ProcessDriver::new(env!("CARGO_BIN_EXE_echo-worker-v2"))
        .serves(EchoClient::SCHEMA)
        .spawn()
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "worker echo-worker-v2: schema mismatch: echo.Echo differs: \
         echo.echo: the request type echo.EchoRequest has a different structure; \
         echo.chat: the request type echo.EchoRequest has a different structure"
    );
}

#[tokio::test]
async fn a_worker_serving_another_service_fails_at_spawn() {
    let error = driver()
        .serves(workerbus_tests::pb::echo::MissingClient::SCHEMA)
        .spawn()
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "worker echo-worker: schema mismatch: the worker does not serve echo.Missing (it serves: echo.Echo)"
    );
}

#[tokio::test]
async fn a_detached_worker_outlives_its_host_and_another_host_reconnects() {
    let output = Command::new(env!("CARGO_BIN_EXE_detach-host"))
        .arg(ECHO_WORKER)
        .output()
        .expect("run detach-host");
    assert!(output.status.success(), "detach-host failed: {output:?}");
    let line = String::from_utf8(output.stdout).unwrap();
    let mut fields = line.split_whitespace();
    let (address, secret, pid) = (
        fields.next().unwrap().to_owned(),
        Secret::from_hex(fields.next().unwrap()).unwrap(),
        fields.next().unwrap().parse::<u32>().unwrap(),
    );
    // The host that started it has exited; the worker has not.
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "the detached worker is gone"
    );
    // Only this user can reach the socket.
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(Path::new(&address)), 0o600, "socket mode");
    assert_eq!(
        mode(Path::new(&address).parent().unwrap()),
        0o700,
        "directory mode"
    );
    let worker = driver()
        .connect(&address, &secret)
        .await
        .expect("reconnect");
    assert_eq!(worker.pid(), Some(pid));
    cases::unary_round_trip(&worker.channel()).await;
    cases::remote_status_is_intact(&worker.channel()).await;

    // Peers without the secret are refused; garbage is refused; the worker
    // serves on regardless.
    let wrong = Secret::generate().unwrap();
    let error = driver().connect(&address, &wrong).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "worker echo-worker: the worker refused the handshake: permission denied: wrong secret"
    );
    hostile_peers(Path::new(&address), &secret).await;
    cases::unary_round_trip(&worker.channel()).await;

    // A detached worker stops when a host asks it to; its socket goes too.
    assert_eq!(worker.shutdown().await, ExitReason::Unknown);
    assert!(!Path::new(&address).exists(), "the socket is left behind");
}

/// A worker detached by a detach-host that has exited: how to reach it,
/// and the rest of the host's stdout, which the worker holds if started
/// with `--stdout=inherit`.
struct Orphaned {
    address: String,
    secret: Secret,
    pid: u32,
    stdout: std::process::ChildStdout,
}

/// Runs detach-host with `args` and `env`, whose stderr is `stderr`, until
/// it has detached its worker and exited.
fn run_detach_host(args: &[&str], env: &[(&str, &str)], stderr: std::process::Stdio) -> Orphaned {
    let mut host = Command::new(env!("CARGO_BIN_EXE_detach-host"))
        .arg(ECHO_WORKER)
        .args(args)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("run detach-host");
    let mut stdout = BufReader::new(host.stdout.take().unwrap());
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = stdout.read_line(&mut line);
        let _ = done.send((line, stdout));
    });
    let Ok((line, stdout)) = finished.recv_timeout(Duration::from_secs(20)) else {
        let _ = host.kill();
        panic!("detach-host did not detach its worker within 20 s");
    };
    let status = host.wait().unwrap();
    assert!(status.success(), "detach-host failed: {status}");
    let mut fields = line.split_whitespace();
    Orphaned {
        address: fields.next().expect("an address").to_owned(),
        secret: Secret::from_hex(fields.next().expect("a secret")).unwrap(),
        pid: fields.next().expect("a pid").parse::<u32>().unwrap(),
        stdout: stdout.into_inner(),
    }
}

#[tokio::test]
async fn a_detached_worker_logging_frames_serves_the_hosts_after_the_one_it_logged_to() {
    // The worker's stderr is forwarded by the first host, which exits: the
    // worker's frame log then writes to a pipe nobody will read again.
    let worker = run_detach_host(
        &["--stderr=forward"],
        &[(workerbus::LOG_ENV, "1")],
        std::process::Stdio::null(),
    );
    let (address, secret) = (worker.address, worker.secret);
    let _kill = KillOnDrop(worker.pid);
    for _ in 0..2 {
        let host = driver()
            .connect(&address, &secret)
            .await
            .expect("a later host connects");
        cases::unary_round_trip(&host.channel()).await;
    }
    let host = driver().connect(&address, &secret).await.expect("connect");
    assert_eq!(host.shutdown().await, ExitReason::Unknown);
}

#[tokio::test]
async fn a_host_whose_stderr_is_full_still_serves_its_calls_and_forwards_without_blocking() {
    // The host logs frames and forwards its worker's log into a pipe that
    // is full before it starts, and that nobody reads.
    let (reader, writer) = std::io::pipe().expect("a pipe");
    fill_pipe(&writer);
    let worker = run_detach_host(
        &["--stderr=forward"],
        &[(workerbus::LOG_ENV, "1")],
        writer.into(),
    );
    let _kill = KillOnDrop(worker.pid);
    let host = driver()
        .connect(&worker.address, &worker.secret)
        .await
        .expect("connect");
    assert_eq!(host.shutdown().await, ExitReason::Unknown);
    drop(reader);
}

#[tokio::test]
async fn sigterm_ends_a_worker_as_a_shutdown_does() {
    let worker = spawn().await;
    let channel = worker.channel();
    let client = EchoClient::new(channel.clone());
    let call = client.sleep(sleep_request("terminated", 200));
    let terminate = async {
        cases::observe(&channel, "terminated", SleepState::Started).await;
        sigterm(worker.pid().unwrap());
        tokio::time::timeout(Duration::from_secs(20), worker.exited())
            .await
            .expect("the worker ends within 20 s of SIGTERM")
    };
    let (result, exit) = tokio::join!(call, terminate);
    result.expect("the call in flight finishes");
    assert_eq!(exit, ExitReason::Code(0));
}

#[test]
fn sigterm_ends_a_detached_worker_and_removes_its_socket_and_directory() {
    let mut worker = run_detach_host(&["--stdout=inherit"], &[], std::process::Stdio::inherit());
    let guard = KillOnDrop(worker.pid);
    let address = Path::new(&worker.address).to_owned();
    assert!(address.exists());
    sigterm(worker.pid);
    // The worker shares the stdout its host had, which ends when it does.
    let (done, ended) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut rest = Vec::new();
        let _ = worker.stdout.read_to_end(&mut rest);
        let _ = done.send(());
    });
    ended
        .recv_timeout(Duration::from_secs(20))
        .expect("the worker ends within 20 s of SIGTERM");
    std::mem::forget(guard);
    assert!(!address.exists(), "{} is left behind", address.display());
    assert!(
        !address.parent().unwrap().exists(),
        "its directory is left behind"
    );
}

#[tokio::test]
async fn a_disconnected_worker_killed_by_its_host_leaves_no_socket_behind() {
    let mut worker = spawn().await;
    worker.disconnect().await.expect("disconnect");
    let address = worker.address().expect("a named socket");
    assert!(address.exists());
    worker.kill();
    // Reported once the host has removed what the worker could not.
    assert_eq!(worker.exited().await, ExitReason::Signal(9));
    assert!(!address.exists(), "{} is left behind", address.display());
    assert!(
        !address.parent().unwrap().exists(),
        "its directory is left behind"
    );
}

#[tokio::test]
async fn a_worker_making_its_named_socket_removes_those_of_workers_that_are_gone() {
    let first = spawn().await.detach().await.expect("detach");
    let _first_guard = KillOnDrop(first.pid().unwrap());
    let private = first.address().parent().unwrap().parent().unwrap();
    // What a worker killed by a signal leaves: its socket, bound and never
    // removed, in a directory named after its pid, which no process has now.
    let mut exited = Command::new("true").spawn().expect("run true");
    let gone = exited.id();
    exited.wait().unwrap();
    // Made under a name no sweep reads (workers of other tests sweep too),
    // then moved into place.
    let left = private.join(format!("killed-{gone}"));
    let making = private.join(format!("killed-{gone}.making"));
    std::fs::create_dir(&making).unwrap();
    drop(std::os::unix::net::UnixListener::bind(making.join("socket")).unwrap());
    std::fs::rename(&making, &left).unwrap();
    // A directory of a process that runs (this one) stays.
    let running = private.join(format!("running-{}", std::process::id()));
    std::fs::create_dir(&running).unwrap();
    drop(std::os::unix::net::UnixListener::bind(running.join("socket")).unwrap());
    // So does a `socket` that is not one, whoever made it.
    let not_a_socket = private.join(format!("file-{gone}"));
    std::fs::create_dir(&not_a_socket).unwrap();
    std::fs::write(not_a_socket.join("socket"), b"").unwrap();

    let second = spawn().await.detach().await.expect("detach");
    let _second_guard = KillOnDrop(second.pid().unwrap());

    assert!(!left.exists(), "{} is left behind", left.display());
    assert!(
        running.join("socket").exists(),
        "a running process's socket was removed"
    );
    assert!(
        not_a_socket.join("socket").exists(),
        "a file that is not a socket was removed"
    );
    assert!(
        first.address().exists(),
        "a live worker's socket was removed"
    );
    std::fs::remove_dir_all(&running).unwrap();
    std::fs::remove_dir_all(&not_a_socket).unwrap();
    for detached in [first, second] {
        let worker = driver()
            .connect(detached.address(), detached.secret())
            .await
            .expect("reconnect");
        worker.shutdown().await;
    }
}

/// Peers that speak the protocol wrong get a clear refusal and are
/// disconnected.
async fn hostile_peers(address: &Path, secret: &Secret) {
    let connect = || async {
        let socket = tokio::net::UnixStream::connect(address).await.unwrap();
        Framed::new(socket, FrameCodec::new())
    };
    let hello = |protocol: u8, secret: &[u8]| {
        let mut payload = vec![0x08, protocol, 0x12, secret.len() as u8];
        payload.extend_from_slice(secret);
        Frame::request(
            1,
            MethodName::from_static("$workerbus.hello"),
            None,
            1,
            Bytes::from(payload),
        )
    };
    let secret_bytes = secret_bytes(secret);

    // Another protocol version: refused with a status that says why.
    let mut peer = connect().await;
    let ours = workerbus::PROTOCOL_VERSION as u8;
    peer.send(hello(ours + 1, &secret_bytes)).await.unwrap();
    match peer.next().await {
        Some(Ok(Frame::Status { id: 1, status })) => {
            assert_eq!(status.code(), Code::FailedPrecondition);
            assert_eq!(
                status.message(),
                format!(
                    "the host speaks protocol version {}, this worker speaks version {ours}",
                    ours + 1
                )
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(
        peer.next().await.is_none(),
        "the refused peer stays connected"
    );

    // A call before the handshake: disconnected.
    let mut peer = connect().await;
    peer.send(Frame::request(
        1,
        MethodName::from_static("echo.echo"),
        None,
        1,
        Bytes::new(),
    ))
    .await
    .unwrap();
    assert!(peer.next().await.is_none());

    // Garbage: disconnected.
    let mut socket = tokio::net::UnixStream::connect(address).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut socket, &[0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3])
        .await
        .unwrap();
    let mut rest = Vec::new();
    let read = tokio::io::AsyncReadExt::read_to_end(&mut socket, &mut rest).await;
    assert!(read.is_ok() && rest.is_empty(), "{read:?} {rest:?}");
}

#[tokio::test]
async fn disconnect_and_reconnect_keep_the_same_worker() {
    let mut worker = spawn().await;
    let pid = worker.pid().expect("a spawned worker has a process id");
    let old = worker.channel();
    cases::unary_round_trip(&old).await;
    worker.disconnect().await.expect("disconnect");
    let error = EchoClient::new(old.clone())
        .echo(EchoRequest::default())
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Disconnected { .. }), "{error:?}");
    assert_eq!(worker.exit_reason(), None, "the worker still runs");
    worker.reconnect().await.expect("reconnect");
    assert_eq!(worker.pid(), Some(pid));
    cases::unary_round_trip(&worker.channel()).await;
    assert_eq!(worker.shutdown().await, ExitReason::Code(0));
}

#[test]
fn one_binary_is_a_cli_when_not_started_by_a_host() {
    let output = Command::new(ECHO_WORKER).output().unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "echo-worker: not started by a workerbus host; nothing to serve\n"
    );
    let output = Command::new(ECHO_WORKER)
        .arg("--serve-anyway")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "echo-worker: cannot serve as a worker: this program was not started by a workerbus host \
         (WORKERBUS_WORKER is not set for it)\n"
    );
}

#[tokio::test]
async fn captured_stdio_is_handed_to_the_host() {
    let mut worker = driver()
        .stdout(Stdio::Capture)
        .stderr(Stdio::Capture)
        .spawn()
        .await
        .unwrap();
    assert!(worker.take_stdout().is_some());
    assert!(worker.take_stderr().is_some());
    assert!(worker.take_stdout().is_none());
    cases::unary_round_trip(&worker.channel()).await;
}

#[tokio::test]
async fn a_process_worker_reports_its_own_memory_and_calls() {
    let worker = spawn().await;
    cases::unary_round_trip(&worker.channel()).await;
    let report = worker
        .channel()
        .health(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(report.processed, 1);
    if cfg!(target_os = "linux") {
        // The worker's resident memory, not the host's.
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", worker.pid().unwrap())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        let reported_kb = report.memory_bytes / 1024;
        assert!(
            reported_kb.abs_diff(kb) < kb / 2 + 1024,
            "reported {reported_kb} kB, /proc says {kb} kB"
        );
    }
}
