//! Who can reach a worker, and where its secret and socket can be found:
//! another user cannot connect to a worker's named socket, the secret is in
//! no command line, environment or log, and a worker that stops leaves no
//! socket or directory behind. (Its own test binary: it installs the
//! process's global `tracing` subscriber.)

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::{Layer, Registry};
use workerbus::{DetachedWorker, ExitReason, ProcessDriver, ProcessWorker, Stdio};
use workerbus_tests::cases;
use workerbus_tests::support::{KillOnDrop, secret_bytes};

const ECHO_WORKER: &str = env!("CARGO_BIN_EXE_echo-worker");
const CONNECT_PROBE: &str = env!("CARGO_BIN_EXE_connect-probe");

/// The uid and gid of `nobody` on Debian and most Linux systems.
const NOBODY: u32 = 65534;

/// Every `tracing` event of this process, as text.
fn logs() -> &'static Arc<Mutex<String>> {
    static LOGS: OnceLock<Arc<Mutex<String>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(String::new()));
        let subscriber = Registry::default().with(Recorder(Arc::clone(&logs)));
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        logs
    })
}

struct Recorder(Arc<Mutex<String>>);

struct Line<'a>(&'a mut String);

impl Visit for Line<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={value:?}", field.name()));
    }
}

impl<S: tracing::Subscriber> Layer<S> for Recorder {
    fn on_event(&self, event: &tracing::Event<'_>, _cx: Context<'_, S>) {
        let mut line = String::new();
        event.record(&mut Line(&mut line));
        let mut logs = self.0.lock().unwrap();
        logs.push_str(&line);
        logs.push('\n');
    }
}

/// A worker detached to a named socket, the address of that socket, and a
/// guard that kills the worker if the test fails before stopping it.
async fn detached(driver: ProcessDriver) -> (DetachedWorker, PathBuf, KillOnDrop) {
    let worker = driver.spawn().await.expect("spawn");
    let detached = worker.detach().await.expect("detach");
    let address = detached.address().to_owned();
    let guard = KillOnDrop(detached.pid().unwrap());
    (detached, address, guard)
}

/// Connects to a detached worker and stops it.
async fn stop(detached: &DetachedWorker) -> ProcessWorker {
    let worker = ProcessDriver::new(ECHO_WORKER)
        .connect(detached.address(), detached.secret())
        .await
        .expect("reconnect");
    assert_eq!(worker.shutdown().await, ExitReason::Unknown);
    worker
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Runs the connect probe (a copy of it in `dir`, which every user can
/// reach, unlike the build directory) on `address`, as `uid` when given.
fn probe(dir: &Path, address: &Path, uid: Option<u32>) -> (Option<i32>, String) {
    let program = dir.join("connect-probe");
    if !program.exists() {
        std::fs::copy(CONNECT_PROBE, &program).expect("copy connect-probe");
        set_mode(&program, 0o755);
    }
    let mut command = Command::new(&program);
    command.arg(address);
    if let Some(uid) = uid {
        command.uid(uid).gid(uid);
    }
    // A child forked by another test while the copy was open for writing
    // holds that descriptor until it execs, and the kernel refuses to run a
    // file open for writing ("text file busy"): that passes in moments.
    let mut busy = 0;
    let output = loop {
        match command.output() {
            Err(error) if error.kind() == std::io::ErrorKind::ExecutableFileBusy && busy < 100 => {
                busy += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            result => break result.expect("run connect-probe"),
        }
    };
    let said = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    (output.status.code(), said)
}

#[tokio::test]
async fn another_user_cannot_connect_to_a_named_socket() {
    if effective_uid() != 0 {
        println!(
            "skipped: running a child as another user needs root (these tests run as uid {})",
            effective_uid()
        );
        return;
    }
    // A runtime directory of this test's own, since it opens the user's
    // directory up for a moment, which must not disturb other workers.
    let runtime_dir =
        std::env::temp_dir().join(format!("workerbus-security-{}", std::process::id()));
    std::fs::create_dir_all(&runtime_dir).unwrap();
    set_mode(&runtime_dir, 0o755);
    if let Some(closed) = runtime_dir.ancestors().find(|dir| mode(dir) & 0o001 == 0) {
        println!(
            "skipped: another user cannot reach {} (no search permission for others)",
            closed.display()
        );
        std::fs::remove_dir_all(&runtime_dir).unwrap();
        return;
    }
    let driver = ProcessDriver::new(ECHO_WORKER).env("XDG_RUNTIME_DIR", &runtime_dir);
    let (detached, address, _kill) = detached(driver).await;
    let worker_dir = address.parent().unwrap().to_owned();
    let user_dir = worker_dir.parent().unwrap().to_owned();
    assert_eq!(user_dir, runtime_dir.join("workerbus"));
    assert_eq!(mode(&user_dir), 0o700, "{}", user_dir.display());
    assert_eq!(mode(&worker_dir), 0o700, "{}", worker_dir.display());
    assert_eq!(mode(&address), 0o600, "{}", address.display());

    // The probe itself works: our own user reaches the socket.
    assert_eq!(
        probe(&runtime_dir, &address, None),
        (Some(0), "connected".into())
    );

    // The file system keeps another user out.
    let (code, said) = probe(&runtime_dir, &address, Some(NOBODY));
    assert_eq!(code, Some(13), "{said}");
    assert!(said.contains("Permission denied"), "{said}");

    // With the files opened to everyone, the worker itself still turns the
    // other user away: it closes the connection before reading a byte.
    set_mode(&user_dir, 0o711);
    set_mode(&worker_dir, 0o711);
    set_mode(&address, 0o666);
    let (code, said) = probe(&runtime_dir, &address, Some(NOBODY));
    set_mode(&user_dir, 0o700);
    set_mode(&worker_dir, 0o700);
    set_mode(&address, 0o600);
    assert_eq!((code, said.as_str()), (Some(3), "closed by the worker"));

    stop(&detached).await;
    std::fs::remove_dir_all(&runtime_dir).unwrap();
}

/// The effective uid, from `/proc/self/status` (no `unsafe` libc call).
fn effective_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("Uid:"))
        .unwrap();
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

#[tokio::test]
async fn the_secret_is_in_no_command_line_environment_or_log() {
    let logs = logs();
    let driver = ProcessDriver::new(ECHO_WORKER)
        .arg("--logging")
        .env(workerbus::LOG_ENV, "1")
        .stderr(Stdio::Capture);
    let mut worker = driver.spawn().await.expect("spawn");
    let mut stderr = worker.take_stderr().expect("captured stderr");
    let pid = worker.pid().expect("a spawned worker has a process id");
    cases::unary_round_trip(&worker.channel()).await;
    let detached = worker.detach().await.expect("detach");
    let _kill = KillOnDrop(detached.pid().unwrap());
    let secret = detached.secret().to_hex();
    let secret_bytes = secret_bytes(detached.secret());

    let read = |path: String| std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let places = [
        (
            "the worker's command line",
            read(format!("/proc/{pid}/cmdline")),
        ),
        (
            "the worker's environment",
            read(format!("/proc/{pid}/environ")),
        ),
        ("the host's command line", read("/proc/self/cmdline".into())),
        ("the host's environment", read("/proc/self/environ".into())),
    ];
    for (place, content) in &places {
        assert_absent(place, content, &secret, &secret_bytes);
    }

    // A second host presents the secret to the named socket, calls, and
    // stops the worker: all of it logged on both sides.
    let worker = stop(&detached).await;
    drop(worker);
    let mut worker_log = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut stderr, &mut worker_log)
        .await
        .expect("read the worker's stderr");
    let worker_log = String::from_utf8_lossy(&worker_log).into_owned();
    assert!(
        worker_log.contains("$workerbus.hello"),
        "the worker logged no frames: {worker_log}"
    );
    assert_absent(
        "the worker's log",
        worker_log.as_bytes(),
        &secret,
        &secret_bytes,
    );
    let host_log = logs.lock().unwrap().clone();
    assert_absent(
        "the host's log",
        host_log.as_bytes(),
        &secret,
        &secret_bytes,
    );
}

fn assert_absent(place: &str, content: &[u8], hex: &str, raw: &[u8]) {
    let text = String::from_utf8_lossy(content).to_lowercase();
    assert!(!text.contains(hex), "the secret is in {place} (hex)");
    assert!(
        !content.windows(raw.len()).any(|window| window == raw),
        "the secret is in {place} (raw bytes)"
    );
}

#[tokio::test]
async fn a_worker_that_stops_removes_its_socket_and_directory() {
    let (detached, address, _kill) = detached(ProcessDriver::new(ECHO_WORKER)).await;
    let worker_dir = address.parent().unwrap().to_owned();
    assert!(address.exists(), "{} is missing", address.display());
    let worker = stop(&detached).await;
    drop(worker);
    assert!(!address.exists(), "{} is left behind", address.display());
    assert!(
        !worker_dir.exists(),
        "{} is left behind",
        worker_dir.display()
    );
    // The user's directory stays for other workers; it is private.
    assert_eq!(mode(worker_dir.parent().unwrap()), 0o700);
}
