//! `ProcessDriver`'s options, each seen by a real worker process: its
//! command line, environment and working directory (read back from
//! `/proc/<pid>`), its name (in its startup data and its named socket's
//! directory), its forwarded stderr; and the handle's operations that depend
//! on how it was started: reconnecting without a named socket, killing a
//! worker reached by its address, where its named socket goes,
//! connecting to a socket that never
//! completes the handshake, a program that cannot be started; and a
//! worker binary run by hand, whose startup variable decides whether it
//! serves.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use workerbus::{Error, ExitReason, ProcessDriver, ProcessWorker, Stdio};
use workerbus_tests::cases;
use workerbus_tests::pb::echo::{
    EchoClient, EchoRequest, ObserveRequest, SleepRequest, SleepState,
};

use crate::ECHO_WORKER;

/// What `/proc` says of a process.
struct Proc {
    args: Vec<String>,
    env: BTreeMap<String, String>,
    cwd: PathBuf,
}

fn proc_of(pid: u32) -> Proc {
    let dir = PathBuf::from(format!("/proc/{pid}"));
    let split = |file: &str| -> Vec<String> {
        let bytes = std::fs::read(dir.join(file)).unwrap_or_else(|e| panic!("read {file}: {e}"));
        bytes
            .split(|&b| b == 0)
            .filter(|part| !part.is_empty())
            .map(|part| String::from_utf8_lossy(part).into_owned())
            .collect()
    };
    let env = split("environ")
        .into_iter()
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            Some((key.to_owned(), value.to_owned()))
        })
        .collect();
    Proc {
        args: split("cmdline"),
        env,
        cwd: std::fs::read_link(dir.join("cwd")).expect("read cwd"),
    }
}

/// A directory of this test's own, outside the repository.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("process-options-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    dir.canonicalize().unwrap()
}

#[tokio::test]
async fn arguments_environment_and_working_directory_reach_the_worker() {
    assert!(
        std::env::var_os("PATH").is_some(),
        "the test needs PATH set, to see it removed"
    );
    let dir = scratch("cwd");
    let worker = ProcessDriver::new(ECHO_WORKER)
        .arg("--first")
        .args(["--second", "third"])
        .args([OsString::from_vec(b"--fourth".to_vec())])
        .env("WORKERBUS_TEST_SET", "set by the host")
        .env_remove("PATH")
        .current_dir(&dir)
        .spawn()
        .await
        .expect("spawn");
    let seen = proc_of(worker.pid().unwrap());
    assert_eq!(
        seen.args[1..],
        ["--first", "--second", "third", "--fourth"],
        "{:?}",
        seen.args
    );
    assert_eq!(seen.env["WORKERBUS_TEST_SET"], "set by the host");
    assert!(!seen.env.contains_key("PATH"), "PATH was not removed");
    assert_eq!(seen.cwd, dir);
    // The rest of the host's environment is inherited.
    assert!(seen.env.contains_key("HOME") == std::env::var_os("HOME").is_some());
    cases::unary_round_trip(&worker.channel()).await;
    assert_eq!(worker.shutdown().await, ExitReason::Code(0));
}

#[tokio::test]
async fn a_cleared_environment_holds_only_what_the_driver_sets() {
    // No LLVM_PROFILE_FILE or the like either: a tool writing files in the
    // worker's directory writes them here.
    let dir = scratch("clear");
    let worker = ProcessDriver::new(ECHO_WORKER)
        .env("DROPPED_BY_CLEAR", "1")
        .env_clear()
        .env("KEPT", "after the clear")
        .current_dir(&dir)
        .spawn()
        .await
        .expect("spawn");
    let seen = proc_of(worker.pid().unwrap());
    let keys: Vec<&str> = seen.env.keys().map(String::as_str).collect();
    assert_eq!(keys, ["KEPT", workerbus::STARTUP_ENV]);
    assert_eq!(seen.env["KEPT"], "after the clear");
    cases::unary_round_trip(&worker.channel()).await;
    assert_eq!(worker.shutdown().await, ExitReason::Code(0));
}

/// Detaches a worker started by `driver` and returns its socket's directory
/// name, after stopping it.
async fn detached_directory(driver: ProcessDriver, name: &str) -> String {
    let worker = driver.spawn().await.expect("spawn");
    assert_eq!(worker.name(), name);
    let pid = worker.pid().expect("a spawned worker has a process id");
    let startup = &proc_of(pid).env[workerbus::STARTUP_ENV];
    assert!(
        startup.ends_with(&format!(";{name}")),
        "{startup:?} does not carry the name {name:?}"
    );
    let detached = worker.detach().await.expect("detach");
    assert_eq!(detached.name(), name);
    assert_eq!(detached.pid(), Some(pid));
    let directory = detached
        .address()
        .parent()
        .and_then(Path::file_name)
        .expect("the socket is in a directory of its own")
        .to_string_lossy()
        .into_owned();
    let host = ProcessDriver::new(ECHO_WORKER)
        .connect(detached.address(), detached.secret())
        .await
        .expect("connect");
    assert_eq!(host.shutdown().await, ExitReason::Unknown);
    directory
}

#[tokio::test]
async fn a_workers_name_reaches_it_and_names_its_socket_as_a_file_can() {
    let driver = ProcessDriver::new(ECHO_WORKER).stderr(Stdio::Null);
    let named = detached_directory(driver.clone().name("my worker/1"), "my worker/1").await;
    assert!(named.starts_with("my_worker_1-"), "{named}");
    let unnamed = detached_directory(driver.clone().name(""), "").await;
    assert!(unnamed.starts_with("worker-"), "{unnamed}");
    let default = detached_directory(driver, "echo-worker").await;
    assert!(default.starts_with("echo-worker-"), "{default}");
}

/// This process's real user id, from `/proc/self/status`.
fn user_id() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("Uid:"))
        .unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_socket_directory_taken_by_another_is_refused_and_socket_dir_names_another() {
    // In the system's temporary directory, not the build's: a socket's path
    // must fit in 108 bytes, which a checkout's build directory may not.
    let temp = std::env::temp_dir().join(format!("wb-socket-dir-{}", std::process::id()));
    std::fs::create_dir_all(&temp).expect("create a scratch directory");
    let temp = temp.canonicalize().unwrap();
    // Without XDG_RUNTIME_DIR, the worker's sockets go in
    // <temp>/workerbus-<uid>: a name anyone can predict, here made first
    // and left open to all, as another user could.
    let taken = temp.join(format!("workerbus-{}", user_id()));
    std::fs::create_dir(&taken).unwrap();
    std::fs::set_permissions(&taken, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let driver = ProcessDriver::new(ECHO_WORKER)
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove(workerbus::SOCKET_DIR_ENV)
        .env("TMPDIR", &temp)
        .stderr(Stdio::Null);
    let worker = driver.clone().spawn().await.expect("spawn");
    let error = worker.detach().await.unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains(&format!(
            "{} must be a directory owned by uid {} with mode 0700",
            taken.display(),
            user_id()
        )) && message.contains("mode 777")
            && message.contains("ProcessDriver::socket_dir"),
        "{message}"
    );
    assert!(
        std::fs::read_dir(&taken).unwrap().next().is_none(),
        "the worker used a directory open to all"
    );

    // A directory of the host's choosing, made private by the worker.
    let chosen = temp.join("mine").join("sockets");
    let worker = driver.socket_dir(&chosen).spawn().await.expect("spawn");
    let detached = worker.detach().await.expect("detach");
    assert_eq!(
        detached.address().parent().unwrap().parent(),
        Some(&*chosen)
    );
    let mode = |path: &Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(path).unwrap().permissions())
            & 0o777
    };
    assert_eq!(mode(&chosen), 0o700);
    let host = ProcessDriver::new(ECHO_WORKER)
        .connect(detached.address(), detached.secret())
        .await
        .expect("connect");
    assert_eq!(host.shutdown().await, ExitReason::Unknown);
    std::fs::remove_dir_all(&temp).unwrap();
}

/// Waits until the worker's forwarded stderr holds a line with `text`.
/// (The host forwards it from a task of its own that nothing can await, so
/// this looks again every 10 ms, for 20 s at most.)
async fn stderr_line(worker: &ProcessWorker, text: &str) -> String {
    let look = async {
        loop {
            if let Some(line) = worker.stderr_tail().into_iter().find(|l| l.contains(text)) {
                return line;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), look)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no line with {text:?} in the worker's stderr: {:?}",
                worker.stderr_tail()
            )
        })
}

#[tokio::test]
async fn the_tail_of_a_forwarded_stderr_holds_what_the_worker_logged() {
    let worker = ProcessDriver::new(ECHO_WORKER)
        .name("logged")
        .env(workerbus::LOG_ENV, "1")
        .spawn()
        .await
        .expect("spawn");
    let client = EchoClient::new(worker.channel());
    let sleep = SleepRequest {
        tag: "cut short".into(),
        ms: 60_000,
        blocking: false,
    };
    let mut cut = Box::pin(client.sleep(sleep));
    let started = ObserveRequest {
        tag: "cut short".into(),
        state: SleepState::Started.into(),
    };
    tokio::select! {
        biased; // the sleep is sent first
        result = &mut cut => panic!("the sleep ended: {result:?}"),
        result = client.observe(started) => result.expect("the sleep started"),
    }
    // Dropping the call cancels it while the worker runs it. The worker
    // names the call a CANCEL is for, though the frame does not. (Request 1
    // was the handshake, 3 the observer.)
    drop(cut);
    let line = stderr_line(&worker, "worker <- host CANCEL #2").await;
    assert!(line.ends_with(" echo.sleep 14 B"), "{line}");
    client
        .echo(EchoRequest::default())
        .await
        .expect("the worker still serves");
    let line = stderr_line(&worker, "worker -> host RESPONSE #4").await;
    assert!(line.contains(" echo.echo "), "{line}");
    assert!(
        worker.stderr_tail().len() <= 20,
        "only the last lines are kept"
    );
    assert_eq!(worker.shutdown().await, ExitReason::Code(0));
}

#[tokio::test]
async fn reconnecting_a_worker_that_has_no_named_socket_is_refused() {
    let mut worker = ProcessDriver::new(ECHO_WORKER)
        .spawn()
        .await
        .expect("spawn");
    let error = worker.reconnect().await.unwrap_err();
    assert!(matches!(error, Error::Handshake { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        "worker echo-worker: the worker has no named socket to reconnect to: disconnect or \
         detach it first"
    );
    // The handle still works as before.
    cases::unary_round_trip(&worker.channel()).await;
    assert_eq!(worker.shutdown().await, ExitReason::Code(0));
}

#[tokio::test]
async fn a_reconnected_worker_detaches_on_the_socket_it_already_has() {
    let mut worker = ProcessDriver::new(ECHO_WORKER)
        .stderr(Stdio::Null)
        .spawn()
        .await
        .expect("spawn");
    let pid = worker.pid().expect("a spawned worker has a process id");
    worker.disconnect().await.expect("disconnect");
    worker.reconnect().await.expect("reconnect");
    let detached = worker.detach().await.expect("detach");
    assert_eq!(detached.pid(), Some(pid));
    let host = ProcessDriver::new(ECHO_WORKER)
        .connect(detached.address(), detached.secret())
        .await
        .expect("connect");
    assert_eq!(host.pid(), Some(pid), "the same worker, on the same socket");
    cases::unary_round_trip(&host.channel()).await;
    assert_eq!(host.shutdown().await, ExitReason::Unknown);
}

#[tokio::test]
async fn killing_a_worker_reached_by_its_address_ends_it() {
    let spawned = ProcessDriver::new(ECHO_WORKER)
        .stderr(Stdio::Null)
        .spawn()
        .await
        .expect("spawn");
    let exited = spawned.watch_exit();
    let detached = spawned.detach().await.expect("detach");
    let host = ProcessDriver::new(ECHO_WORKER)
        .connect(detached.address(), detached.secret())
        .await
        .expect("connect");
    host.kill();
    assert_eq!(host.exited().await, ExitReason::Unknown);
    // This process spawned it, so its reaper learns the signal.
    let exit = tokio::time::timeout(Duration::from_secs(20), exited)
        .await
        .expect("the worker ends");
    assert_eq!(exit, ExitReason::Signal(9));
}

#[tokio::test]
async fn programs_that_cannot_be_started_are_spawn_errors_naming_them() {
    // A directory: not executable. Its path has no file name, so it names
    // the worker too.
    let error = ProcessDriver::new("/").spawn().await.unwrap_err();
    assert!(matches!(error, Error::Spawn { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        "failed to spawn worker /: the program is not executable: \
         Permission denied (os error 13)"
    );
    // A path too long for the system.
    let long = format!("/{}", "a".repeat(5000));
    let error = ProcessDriver::new(&long).spawn().await.unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "failed to spawn worker {long}: the program could not be started: \
             File name too long (os error 36)"
        )
    );
    assert!(
        std::error::Error::source(&error).is_some(),
        "the OS error is the source"
    );
}

/// Runs the worker binary by hand with `WORKERBUS_WORKER` set to `startup`:
/// its exit code and what it printed.
async fn by_hand(startup: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let output = tokio::process::Command::new(ECHO_WORKER)
        .args(args)
        .env(workerbus::STARTUP_ENV, startup)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("run the worker binary");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    )
}

#[tokio::test]
async fn a_worker_started_by_hand_serves_only_what_its_startup_variable_allows() {
    let here = std::process::id();
    // Marked as a worker of this process, but without the socket a host
    // leaves it: it says so and fails.
    let (code, _, stderr) = by_hand(&format!("1;3;{here};by hand"), &[]).await;
    assert_eq!(code, Some(1), "{stderr}");
    // Descriptor 3 is not open, or is whatever this test process left there.
    assert!(
        stderr.starts_with(
            "echo-worker: cannot serve as a worker: cannot take the socket from the host: \
             descriptor 3, where the host leaves the worker's socket, is not "
        ),
        "{stderr}"
    );
    // Marked as the worker of another process (a descendant of a worker
    // inherits the variable): not a worker, so the binary is a CLI.
    let (code, stdout, _) = by_hand("1;3;1;inherited", &[]).await;
    assert_eq!(code, Some(0));
    assert_eq!(
        stdout,
        "echo-worker: not started by a workerbus host; nothing to serve"
    );
    // Asked to serve anyway, it says why it cannot.
    let (code, _, stderr) = by_hand("1;3;1;inherited", &["--serve-anyway"]).await;
    assert_eq!(code, Some(1));
    assert_eq!(
        stderr,
        "echo-worker: cannot serve as a worker: this program was not started by a workerbus \
         host (WORKERBUS_WORKER is not set for it)"
    );
    let (code, _, stderr) = by_hand("garbage", &["--serve-anyway"]).await;
    assert_eq!(code, Some(1));
    assert_eq!(
        stderr,
        "echo-worker: cannot serve as a worker: WORKERBUS_WORKER=\"garbage\" has startup \
         format version garbage, this program reads version 1"
    );
}

/// A socket of this user that accepts connections and never answers: a
/// worker that hangs before its handshake.
fn silent_socket(name: &str) -> (PathBuf, tokio::task::JoinHandle<()>) {
    let path = scratch(name).join("socket");
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).expect("bind");
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (path, silent)
}

#[tokio::test]
async fn connecting_to_a_socket_that_never_completes_the_handshake_times_out() {
    let (path, silent) = silent_socket("silent");
    let secret = workerbus::Secret::generate().unwrap();
    let error = ProcessDriver::new(ECHO_WORKER)
        .name("silent")
        .startup_timeout(Duration::from_millis(200))
        .connect(&path, &secret)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::Handshake { worker, .. } if worker == "silent"),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "worker silent: no answer to the handshake within 200ms"
    );
    silent.abort();
}

#[tokio::test]
async fn a_connect_that_times_out_does_not_claim_the_worker_was_killed() {
    let (path, silent) = silent_socket("silent-message");
    let secret = workerbus::Secret::generate().unwrap();
    let error = ProcessDriver::new(ECHO_WORKER)
        .startup_timeout(Duration::from_millis(200))
        .connect(&path, &secret)
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(!message.contains("killed"), "{message}");
    silent.abort();
}
