//! [`ProcessDriver`]: a worker in a child process, connected at birth.
//!
//! ```text
//!  host                                          child (worker)
//!  socketpair() ──end B at fd 3, WORKERBUS_WORKER=1;3;<host pid>;<name>──▶ exec
//!  end A ══════════ REQUEST $workerbus.hello {version, secret} ══════════▶ serve()
//!        ◀═════════ RESPONSE {version, pid, services + fingerprints} ═════
//!        ══════════ calls ════════════════════════════════════════════════▶
//! ```
//!
//! There is no "spawn, listen, wait for the child to connect" dance: the
//! child is born connected, so start-up cannot race. A named socket exists
//! only for a worker that is detached or disconnected, in a private
//! directory, and serves only peers of the same user that know the secret.

mod admission;
pub(crate) mod handshake;
mod socket;
mod sys;
mod terminate;
mod worker;

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fmt;
use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, ChildStderr, ChildStdout};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

pub use self::handshake::Secret;
use self::handshake::{DETACH as DETACH_NAME, Detached, HELLO as HELLO_NAME, Hello, Welcome};
#[cfg(fuzzing)]
pub(crate) use self::worker::serve_fuzzed_peer;
pub use self::worker::{serve, serve_with_options};
use super::{Spawn, Worker};
use crate::backoff::Backoff;
use crate::client::{Channel, ChannelOptions, ExitWatch, Resolved};
use crate::control::PROTOCOL_VERSION;
use crate::error::{Error, ExitReason};
use crate::frame::{Frame, FrameCodec};
use crate::name::MethodName;
use crate::schema::ServiceSchema;
use crate::startup::{SOCKET_DIR_ENV, SOCKET_FD, STARTUP_ENV, StartupData};
use crate::sync::lock;

/// The default time a worker has to start and complete its handshake.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// How many lines of a worker's stderr the host keeps for error messages.
const STDERR_TAIL_LINES: usize = 20;
/// How long a line of stderr may be in an error message.
const STDERR_LINE_MAX: usize = 500;

static HELLO: MethodName = MethodName::from_static(HELLO_NAME);
static DETACH: MethodName = MethodName::from_static(DETACH_NAME);

/// What to do with a worker's standard output or error stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stdio {
    /// Share the host's stream (the default for stdout).
    Inherit,
    /// Discard it.
    Null,
    /// Pipe it to the host, which reads it from the worker handle
    /// ([`ProcessWorker::take_stdout`], [`ProcessWorker::take_stderr`]).
    Capture,
    /// Copy it to the host's stderr line by line, prefixed with the worker's
    /// name, keeping the last lines for error messages (the default for
    /// stderr: so a worker that dies while starting says why).
    Forward,
}

/// Starts workers in child processes.
///
/// ```no_run
/// use std::time::Duration;
/// use workerbus::ProcessDriver;
///
/// # async fn example() -> Result<(), workerbus::Error> {
/// let driver = ProcessDriver::new("target/debug/embedder")
///     .arg("--model=small")
///     .env("RUST_LOG", "info")
///     .startup_timeout(Duration::from_secs(5));
/// let worker = driver.spawn().await?;
/// let channel = worker.channel(); // give it to a generated client
/// # drop(channel);
/// worker.shutdown().await;
/// # Ok(()) }
/// ```
///
/// The driver is reusable: each `spawn` starts a new worker with the same
/// settings.
#[derive(Clone, Debug)]
#[must_use]
pub struct ProcessDriver {
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, Option<OsString>)>,
    env_clear: bool,
    current_dir: Option<PathBuf>,
    socket_dir: Option<PathBuf>,
    stdout: Stdio,
    stderr: Stdio,
    name: Option<String>,
    startup_timeout: Duration,
    shutdown_grace: Duration,
    serves: Vec<ServiceSchema>,
    channel: ChannelOptions,
}

impl ProcessDriver {
    /// A driver for the worker executable at `program`.
    pub fn new(program: impl AsRef<Path>) -> ProcessDriver {
        ProcessDriver {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            env_clear: false,
            current_dir: None,
            socket_dir: None,
            stdout: Stdio::Inherit,
            stderr: Stdio::Forward,
            name: None,
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
            shutdown_grace: crate::DEFAULT_SHUTDOWN_GRACE,
            serves: Vec::new(),
            channel: ChannelOptions::default(),
        }
    }

    /// Adds a command-line argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> ProcessDriver {
        self.args.push(arg.into());
        self
    }

    /// Adds command-line arguments.
    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> ProcessDriver {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable for the worker.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> ProcessDriver {
        self.env.push((key.into(), Some(value.into())));
        self
    }

    /// Removes an environment variable from the worker's environment.
    pub fn env_remove(mut self, key: impl Into<OsString>) -> ProcessDriver {
        self.env.push((key.into(), None));
        self
    }

    /// Starts the worker with no environment but what [`env`](Self::env) sets
    /// (and the variable that marks it as a worker).
    pub fn env_clear(mut self) -> ProcessDriver {
        self.env_clear = true;
        self.env.clear();
        self
    }

    /// The worker's working directory.
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> ProcessDriver {
        self.current_dir = Some(dir.as_ref().to_owned());
        self
    }

    /// The directory in which the worker makes its named socket, once
    /// [detached](ProcessWorker::detach) or
    /// [disconnected](ProcessWorker::disconnect): in a directory of its own
    /// there, `<name>-<pid>/socket`. It must belong to the worker's user and
    /// have mode 0700, and is made so if it does not exist (a relative path
    /// is taken from this process's working directory). Passed to the worker
    /// in [`SOCKET_DIR_ENV`](crate::SOCKET_DIR_ENV).
    ///
    /// By default the directory is `$XDG_RUNTIME_DIR/workerbus`, or, without
    /// `XDG_RUNTIME_DIR`, `<temporary directory>/workerbus-<uid>`, a name
    /// anyone can predict: another user of a shared temporary directory who
    /// makes it first keeps every worker of this user from detaching (the
    /// worker refuses a directory that is not its user's alone, so it is
    /// never exposed). Name a private directory here to get around that.
    ///
    /// ```no_run
    /// use workerbus::ProcessDriver;
    ///
    /// let driver = ProcessDriver::new("target/debug/embedder")
    ///     .socket_dir("/home/me/.cache/embedder/sockets");
    /// # drop(driver);
    /// ```
    pub fn socket_dir(mut self, dir: impl AsRef<Path>) -> ProcessDriver {
        let dir = dir.as_ref();
        self.socket_dir = Some(std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned()));
        self
    }

    /// What to do with the worker's stdout (default [`Stdio::Inherit`]).
    pub fn stdout(mut self, stdio: Stdio) -> ProcessDriver {
        self.stdout = stdio;
        self
    }

    /// What to do with the worker's stderr (default [`Stdio::Forward`]).
    pub fn stderr(mut self, stdio: Stdio) -> ProcessDriver {
        self.stderr = stdio;
        self
    }

    /// Names the worker (in errors, logs and its stderr prefix); defaults to
    /// the program's file name.
    pub fn name(mut self, name: impl Into<String>) -> ProcessDriver {
        self.name = Some(name.into());
        self
    }

    /// How long the worker has, from spawn to the end of the handshake
    /// (default [10 s](DEFAULT_STARTUP_TIMEOUT)). A worker past it is killed.
    pub fn startup_timeout(mut self, timeout: Duration) -> ProcessDriver {
        self.startup_timeout = timeout;
        self
    }

    /// How long [`ProcessWorker::shutdown`] lets calls in flight finish
    /// before it kills the worker (default 5 s).
    pub fn shutdown_grace(mut self, grace: Duration) -> ProcessDriver {
        self.shutdown_grace = grace;
        self
    }

    /// Requires the worker to serve this service, built from the same schema:
    /// the handshake fails, naming the service and what differs, if it does
    /// not. Pass a generated client's schema: `.serves(EmbedderClient::SCHEMA)`.
    pub fn serves(mut self, schema: ServiceSchema) -> ProcessDriver {
        self.serves.push(schema);
        self
    }

    /// Options of the host's channel to the worker (e.g. the maximum frame
    /// length, which should match the worker's `ServeOptions`).
    pub fn channel_options(mut self, options: ChannelOptions) -> ProcessDriver {
        self.channel = options;
        self
    }

    fn worker_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            self.program.file_name().map_or_else(
                || self.program.display().to_string(),
                |name| name.to_string_lossy().into_owned(),
            )
        })
    }

    /// Starts a worker process and completes the handshake with it.
    ///
    /// Fails with [`Error::Spawn`] naming the program if it cannot be started
    /// (missing, not executable), [`Error::ExitedDuringStartup`] with its
    /// exit status and last lines of stderr if it ends before the handshake,
    /// [`Error::StartupTimeout`] if the handshake does not complete within the
    /// startup timeout, and [`Error::Handshake`] if the worker serves a
    /// different schema than [`serves`](Self::serves) requires. In each case
    /// the process is gone when the error is returned.
    pub async fn spawn(&self) -> Result<ProcessWorker, Error> {
        let deadline = Instant::now() + self.startup_timeout;
        let name = self.worker_name();
        let spawn_error = |reason: String, source: Option<io::Error>| Error::Spawn {
            worker: self.program.display().to_string(),
            reason,
            source,
        };
        let secret = Secret::generate()
            .map_err(|error| spawn_error("cannot make a secret".into(), Some(error)))?;
        let (host_end, child_end) = std::os::unix::net::UnixStream::pair()
            .map_err(|error| spawn_error("cannot create a socket pair".into(), Some(error)))?;

        let mut command = tokio::process::Command::new(&self.program);
        command.args(&self.args);
        if self.env_clear {
            command.env_clear();
        }
        for (key, value) in &self.env {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        if let Some(dir) = &self.current_dir {
            command.current_dir(dir);
        }
        if let Some(dir) = &self.socket_dir {
            command.env(SOCKET_DIR_ENV, dir);
        }
        command.env(
            STARTUP_ENV,
            StartupData::new(SOCKET_FD, std::process::id(), name.clone()).encode(),
        );
        command.stdin(std::process::Stdio::null());
        command.stdout(std_stdio(self.stdout));
        command.stderr(std_stdio(self.stderr));
        // The host decides when its workers stop: a Ctrl-C meant for the
        // host's terminal does not reach them; they follow the host out.
        command.process_group(0);
        sys::inherit_at(&mut command, child_end.as_raw_fd(), SOCKET_FD);
        let mut child = command.spawn().map_err(|error| {
            let reason = match error.kind() {
                io::ErrorKind::NotFound => "the program does not exist".to_owned(),
                io::ErrorKind::PermissionDenied => "the program is not executable".to_owned(),
                _ => "the program could not be started".to_owned(),
            };
            spawn_error(reason, Some(error))
        })?;
        drop(child_end);
        let pid = child.id().unwrap_or_default();

        let stdout = child.stdout.take();
        let stderr_pipe = child.stderr.take();
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let (stderr, forwarding) = match (self.stderr, stderr_pipe) {
            (Stdio::Forward, Some(pipe)) => (
                None,
                Some(forward_stderr(pipe, name.clone(), Arc::clone(&tail))),
            ),
            (_, pipe) => (pipe, None),
        };
        let (exit_tx, exit_rx) = watch::channel(None);
        let kill = Arc::new(Notify::new());
        let address: NamedSocket = Arc::default();
        tokio::spawn(reap(
            child,
            Arc::clone(&kill),
            exit_tx,
            name.clone(),
            Arc::clone(&address),
        ));

        let connected = connect_transport(host_end, &self.channel).map(|transport| {
            Channel::connect(
                transport,
                self.channel.clone(),
                Some(exit_rx.clone()),
                "process",
            )
        });
        let channel = match connected {
            Ok(channel) => channel,
            Err(error) => {
                kill.notify_one();
                return Err(spawn_error(
                    "cannot use the socket pair".into(),
                    Some(error),
                ));
            }
        };
        let worker = ProcessWorker {
            name: name.clone(),
            pid,
            channel,
            exit: exit_rx,
            process: Process::Child(kill),
            shutdown_grace: self.shutdown_grace,
            stdout,
            stderr,
            stderr_tail: tail,
            secret,
            address,
            driver: self.clone(),
        };
        match tokio::time::timeout_at(deadline, worker.handshake(&self.serves)).await {
            Ok(Ok(_)) => Ok(worker),
            Ok(Err(Error::WorkerExited { exit, .. })) => {
                if let Some(forwarding) = forwarding {
                    // The pipe closes when the process ends; a grandchild
                    // holding it open must not stall the error.
                    let _ = tokio::time::timeout(Duration::from_millis(500), forwarding).await;
                }
                let stderr = lock(&worker.stderr_tail).iter().cloned().collect();
                Err(Error::ExitedDuringStartup {
                    worker: name,
                    exit,
                    stderr,
                })
            }
            Ok(Err(error)) => {
                worker.kill();
                worker.exited().await;
                Err(error)
            }
            Err(_) => {
                worker.kill();
                worker.exited().await;
                Err(Error::StartupTimeout {
                    worker: name,
                    after: self.startup_timeout,
                })
            }
        }
    }

    /// Connects to a worker that listens on a named socket (after
    /// [`ProcessWorker::detach`] or [`ProcessWorker::disconnect`]), possibly
    /// from another host process, and completes the handshake with the
    /// worker's secret. The program path of this driver is not used.
    ///
    /// Only a socket owned by this process's user is accepted. The worker is
    /// not this process's child: its exit status cannot be known, so its
    /// end is reported as [`ExitReason::Unknown`]. Connecting, and then the
    /// handshake, must each finish within the startup timeout, or the
    /// result is [`Error::Connect`] or [`Error::Handshake`] (the worker is
    /// left as it is).
    pub async fn connect(
        &self,
        address: impl AsRef<Path>,
        secret: &Secret,
    ) -> Result<ProcessWorker, Error> {
        let address = address.as_ref();
        // A worker reached by its address is not ours to kill: running out
        // of time is a failure to connect or to greet, not a startup timeout.
        let (channel, exit, peer) =
            tokio::time::timeout(self.startup_timeout, connect_named(address, &self.channel))
                .await
                .map_err(|_| Error::Connect {
                    address: address.to_owned(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no connection within {:?}", self.startup_timeout),
                    ),
                })??;
        let worker = ProcessWorker {
            name: self.worker_name(),
            pid: peer.pid,
            channel,
            exit,
            process: Process::Connected(peer.handle),
            shutdown_grace: self.shutdown_grace,
            stdout: None,
            stderr: None,
            stderr_tail: Arc::default(),
            secret: secret.clone(),
            address: Arc::new(Mutex::new(Some(address.to_owned()))),
            driver: self.clone(),
        };
        let deadline = Instant::now() + self.startup_timeout;
        // The pid the worker's welcome claims is not taken: the kernel's is.
        match tokio::time::timeout_at(deadline, worker.handshake(&self.serves)).await {
            Ok(Ok(_)) => Ok(worker),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(Error::Handshake {
                worker: worker.name.clone(),
                reason: format!(
                    "no answer to the handshake within {:?}",
                    self.startup_timeout
                ),
            }),
        }
    }
}

fn std_stdio(stdio: Stdio) -> std::process::Stdio {
    match stdio {
        Stdio::Inherit => std::process::Stdio::inherit(),
        Stdio::Null => std::process::Stdio::null(),
        Stdio::Capture | Stdio::Forward => std::process::Stdio::piped(),
    }
}

type SocketTransport = socket::SocketTransport<tokio::net::UnixStream>;

fn connect_transport(
    socket: std::os::unix::net::UnixStream,
    options: &ChannelOptions,
) -> io::Result<SocketTransport> {
    socket.set_nonblocking(true)?;
    let socket = tokio::net::UnixStream::from_std(socket)?;
    Ok(SocketTransport::unix(
        socket,
        FrameCodec::new().max_frame_length(options.max_frame_length_value()),
    ))
}

/// The process serving a named socket, as the kernel names it.
struct NamedPeer {
    /// Its process id in this host's pid namespace (0 if it has none here).
    pid: u32,
    /// Its pidfd, if this system has them.
    handle: Option<sys::ProcessHandle>,
}

/// Connects to a named socket, after checking it belongs to our user; the
/// exit watch reports [`ExitReason::Unknown`] once the connection ends.
async fn connect_named(
    address: &Path,
    options: &ChannelOptions,
) -> Result<(Channel, ExitWatch, NamedPeer), Error> {
    let connect_error = |source: io::Error| Error::Connect {
        address: address.to_owned(),
        source,
    };
    let socket = tokio::net::UnixStream::connect(address)
        .await
        .map_err(connect_error)?;
    let peer = socket.peer_cred().map_err(connect_error)?;
    if peer.uid() != sys::user_id() {
        return Err(connect_error(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("the socket is served by uid {}, not this user", peer.uid()),
        )));
    }
    let pid = peer
        .pid()
        .and_then(|pid| u32::try_from(pid).ok())
        .unwrap_or(0);
    let handle = match sys::peer_process(socket.as_raw_fd(), pid) {
        Ok(handle) => Some(handle),
        Err(error) => {
            tracing::debug!(address = %address.display(), pid, %error, "no pidfd for the worker: it cannot be killed from here");
            None
        }
    };
    let socket = socket.into_std().map_err(connect_error)?;
    let transport = connect_transport(socket, options).map_err(connect_error)?;
    let (exit_tx, exit_rx) = watch::channel(None);
    let channel = Channel::connect(transport, options.clone(), None, "process");
    let closed = channel.watch_closed();
    tokio::spawn(async move {
        closed.await;
        exit_tx.send_replace(Some(ExitReason::Unknown));
    });
    Ok((channel, exit_rx, NamedPeer { pid, handle }))
}

/// The path of a worker's named socket, once it has one: shared by its
/// handle and its reaper.
type NamedSocket = Arc<Mutex<Option<PathBuf>>>;

/// Owns the child: waits for it to end (killing it when asked) and reports
/// how, so that no worker is left a zombie and every death has a status.
/// A worker that had a named socket and could not remove it (killed by a
/// signal) has it removed before its death is reported.
async fn reap(
    mut child: Child,
    kill: Arc<Notify>,
    exit: watch::Sender<Option<ExitReason>>,
    name: String,
    address: NamedSocket,
) {
    let pid = child.id();
    let status = tokio::select! {
        status = child.wait() => status,
        () = kill.notified() => {
            let _ = child.start_kill();
            child.wait().await
        }
    };
    let reason = match status {
        Ok(status) => match (status.signal(), status.code()) {
            (Some(signal), _) => ExitReason::Signal(signal),
            (None, Some(code)) => ExitReason::Code(code),
            (None, None) => ExitReason::Unknown,
        },
        Err(error) => {
            tracing::warn!(worker = %name, %error, "could not learn how a worker process ended");
            ExitReason::Unknown
        }
    };
    tracing::debug!(worker = %name, exit = %reason, "worker process ended");
    let address = lock(&address).take();
    if let (Some(address), Some(pid)) = (address, pid) {
        remove_dead_socket(&address, pid).await;
    }
    exit.send_replace(Some(reason));
}

/// Removes the named socket of the worker that had process id `pid`, and
/// its directory, if the path is laid out as `docs/PROTOCOL.md` 9.4 says
/// (`<name>-<pid>/socket`: nothing else the worker named is touched) and
/// the socket is still there and refuses connections: the worker is gone,
/// and no other has taken the path since.
async fn remove_dead_socket(address: &Path, pid: u32) {
    use std::os::unix::fs::FileTypeExt;

    let laid_out = address.file_name() == Some(worker::SOCKET_NAME.as_ref())
        && address
            .parent()
            .and_then(Path::file_name)
            .and_then(|dir| dir.to_str())
            .and_then(|dir| dir.rsplit_once('-'))
            .is_some_and(|(_, of)| of == pid.to_string());
    let is_socket = laid_out
        && std::fs::symlink_metadata(address).is_ok_and(|meta| meta.file_type().is_socket());
    if !is_socket {
        return;
    }
    match tokio::net::UnixStream::connect(address).await {
        Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::debug!(socket = %address.display(), "removing the socket of a worker that is gone");
            worker::remove_socket(address);
        }
        _ => {}
    }
}

/// Copies a worker's stderr to the host's, line by line, keeping the last
/// lines for error messages. A line longer than [`FORWARDED_LINE_MAX`] is
/// passed on in pieces of that size, so a worker writing without newlines
/// cannot make the host buffer without bound. The lines go through
/// [`crate::stderr`]: a host's stderr that is closed or not read never
/// panics or blocks the host.
fn forward_stderr(
    stderr: ChildStderr,
    name: String,
    tail: Arc<Mutex<VecDeque<String>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut reader = tokio::io::BufReader::new(stderr);
        let mut line = Vec::new();
        loop {
            let read = match reader.fill_buf().await {
                Ok([]) | Err(_) => break,
                Ok(read) => read,
            };
            let room = FORWARDED_LINE_MAX - line.len();
            let (taken, ended) = match read.iter().take(room).position(|&byte| byte == b'\n') {
                Some(newline) => (newline + 1, true),
                None => {
                    let taken = read.len().min(room);
                    (taken, line.len() + taken == FORWARDED_LINE_MAX)
                }
            };
            line.extend_from_slice(&read[..taken]);
            reader.consume(taken);
            if ended {
                forward_line(&line, &name, &tail);
                line.clear();
            }
        }
        if !line.is_empty() {
            forward_line(&line, &name, &tail);
        }
    })
}

/// The longest line of a worker's stderr the host copies whole.
const FORWARDED_LINE_MAX: usize = 64 * 1024;

fn forward_line(line: &[u8], name: &str, tail: &Mutex<VecDeque<String>>) {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches(['\n', '\r']);
    crate::stderr::line(format!("[{name}] {text}"));
    let mut tail = lock(tail);
    if tail.len() == STDERR_TAIL_LINES {
        tail.pop_front();
    }
    tail.push_back(text.chars().take(STDERR_LINE_MAX).collect());
}

/// How the host holds the worker's process.
enum Process {
    /// Our child: the reaper kills it when notified (it cannot have been
    /// reaped, and its pid reused, before).
    Child(Arc<Notify>),
    /// A worker we connected to by its address: its pidfd, if the system
    /// gave one. Never its pid alone, which another process may have by
    /// the time it is used.
    Connected(Option<sys::ProcessHandle>),
}

/// A worker running in another process, started by [`ProcessDriver::spawn`]
/// or reached by [`ProcessDriver::connect`].
///
/// The worker runs while this handle or any [`Channel`] to it is alive; when
/// the last is dropped, the connection closes and the worker (unless
/// detached or disconnected) exits, and the host reaps it: no zombie is left.
pub struct ProcessWorker {
    name: String,
    pid: u32,
    channel: Channel,
    exit: ExitWatch,
    process: Process,
    shutdown_grace: Duration,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    secret: Secret,
    /// The worker's named socket, once it has one.
    address: NamedSocket,
    driver: ProcessDriver,
}

impl ProcessWorker {
    /// Greets the worker with the secret and checks what it serves.
    async fn handshake(&self, serves: &[ServiceSchema]) -> Result<Welcome, Error> {
        let hello = Hello {
            protocol: PROTOCOL_VERSION,
            secret: self.secret.to_bytes(),
        };
        let answer = self
            .channel
            .call(&HELLO, Bytes::from(hello.encode_to_vec()), &control_call())
            .await
            .map_err(|error| match error {
                Error::Remote { status, .. } => Error::Handshake {
                    worker: self.name.clone(),
                    reason: format!("the worker refused the handshake: {status}"),
                },
                other => other,
            })?;
        handshake::read_welcome(answer, serves).map_err(|reason| Error::Handshake {
            worker: self.name.clone(),
            reason,
        })
    }

    /// A channel to the worker, for generated clients.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The worker's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The worker's process id, as the kernel gives it: the child's, or,
    /// for a worker reached by [`connect`](ProcessDriver::connect), the
    /// process serving the socket (`SO_PEERCRED`), never the id its
    /// greeting claims. 0 if that process has no id in this host's pid
    /// namespace.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// How the worker ended, or `None` while it runs.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.exit.borrow().clone()
    }

    /// Waits until the worker has ended and says how.
    pub async fn exited(&self) -> ExitReason {
        self.watch_exit().await
    }

    /// [`exited`](Self::exited) as a future that does not borrow the handle:
    /// it can be awaited after the handle (and so the worker) is dropped.
    pub fn watch_exit(&self) -> impl Future<Output = ExitReason> + Send + 'static {
        let mut exit = self.exit.clone();
        async move {
            let reason = exit.wait_for(Option::is_some).await;
            reason
                .ok()
                .and_then(|reason| reason.clone())
                .unwrap_or(ExitReason::Unknown)
        }
    }

    /// The path of the worker's named socket, once it has one: after
    /// [`disconnect`](Self::disconnect) or [`detach`](Self::detach), or the
    /// address it was [reached at](ProcessDriver::connect).
    pub fn address(&self) -> Option<PathBuf> {
        lock(&self.address).clone()
    }

    /// The last lines the worker wrote to its stderr, if it is
    /// [forwarded](Stdio::Forward).
    pub fn stderr_tail(&self) -> Vec<String> {
        lock(&self.stderr_tail).iter().cloned().collect()
    }

    /// The worker's stdout, if it is [captured](Stdio::Capture).
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.stdout.take()
    }

    /// The worker's stderr, if it is [captured](Stdio::Capture).
    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.stderr.take()
    }

    /// Stops the worker gracefully: it finishes the calls it has (new ones
    /// are refused with `Unavailable`) and exits; if it has not within the
    /// grace period, it is killed. Returns how it ended.
    pub async fn shutdown(&self) -> ExitReason {
        if self.channel.send_control(Frame::Shutdown) {
            if let Ok(reason) = tokio::time::timeout(self.shutdown_grace, self.exited()).await {
                return reason;
            }
            tracing::warn!(worker = %self.name, grace = ?self.shutdown_grace, "shutdown grace elapsed; killing the worker");
        }
        self.kill();
        self.exited().await
    }

    /// Kills the worker now (SIGKILL). Calls in flight fail with
    /// [`Error::WorkerExited`] carrying the signal.
    ///
    /// A signal can never reach another process given the worker's id: a
    /// child is signalled before it is reaped, and a worker reached by
    /// [`connect`](ProcessDriver::connect) through the pidfd of the process
    /// serving its socket, taken when connecting (Linux). Without a pidfd
    /// (other systems), or if that process's id is 0 or 1, such a worker is
    /// not killed, and a warning is logged.
    pub fn kill(&self) {
        match &self.process {
            Process::Child(kill) => kill.notify_one(),
            // Pid 0 (a process this host cannot see) and 1 (init) are never
            // signalled, even through a pidfd.
            Process::Connected(Some(handle)) if self.pid > 1 => {
                if let Err(error) = handle.kill() {
                    tracing::warn!(worker = %self.name, pid = self.pid, %error, "could not kill the worker");
                }
            }
            Process::Connected(_) => {
                tracing::warn!(worker = %self.name, pid = self.pid, "not killing a worker this host did not start and holds no pidfd for");
            }
        }
    }

    /// Lets the worker outlive this host: it keeps running, listening on a
    /// named socket in a private directory, and any host process of the same
    /// user holding the [`DetachedWorker`]'s address and secret can
    /// [`connect`](ProcessDriver::connect) to it. Channels already made keep
    /// working until dropped.
    ///
    /// The worker keeps the standard streams it was started with. Streams the
    /// host [forwards](Stdio::Forward) or [captures](Stdio::Capture) end with
    /// the host, so start a worker you will detach with [`Stdio::Null`], or
    /// [`Stdio::Inherit`] from a terminal or file that outlives the host.
    pub async fn detach(self) -> Result<DetachedWorker, Error> {
        let address = self.listen().await?;
        *lock(&self.address) = Some(address.clone());
        Ok(DetachedWorker {
            name: self.name.clone(),
            pid: self.pid,
            address,
            secret: self.secret.clone(),
        })
    }

    /// Closes the connection but keeps the worker running, listening on a
    /// named socket, until [`reconnect`](Self::reconnect). Calls in flight
    /// and later calls on the old channel fail with [`Error::Disconnected`].
    /// While disconnected, the worker does not exit when this host does.
    pub async fn disconnect(&mut self) -> Result<(), Error> {
        let address = self.listen().await?;
        *lock(&self.address) = Some(address);
        self.channel
            .terminate(crate::client::CloseReason::Lost(None));
        Ok(())
    }

    /// Connects again to a worker that was [disconnected](Self::disconnect),
    /// replacing the channel: [`channel`](Self::channel) returns the new one.
    pub async fn reconnect(&mut self) -> Result<(), Error> {
        let Some(address) = self.address() else {
            return Err(Error::Handshake {
                worker: self.name.clone(),
                reason:
                    "the worker has no named socket to reconnect to: disconnect or detach it first"
                        .into(),
            });
        };
        let (channel, _, peer) = connect_named(&address, &self.driver.channel).await?;
        let previous = std::mem::replace(&mut self.channel, channel);
        let serves = self.driver.serves.clone();
        if let Err(error) = self.handshake(&serves).await {
            self.channel = previous;
            return Err(error);
        }
        // A worker this host did not start is whatever process serves the
        // address now.
        if let Process::Connected(handle) = &mut self.process {
            self.pid = peer.pid;
            *handle = peer.handle;
        }
        Ok(())
    }

    /// Asks the worker for its named socket.
    async fn listen(&self) -> Result<PathBuf, Error> {
        if let Some(address) = self.address() {
            return Ok(address);
        }
        let answer = self
            .channel
            .call(&DETACH, Bytes::new(), &control_call())
            .await?;
        let detached = Detached::decode(answer).map_err(|error| Error::Handshake {
            worker: self.name.clone(),
            reason: format!("the worker's answer to detach did not decode: {error}"),
        })?;
        Ok(PathBuf::from(detached.address))
    }
}

/// Control exchanges: one attempt, bounded by the caller (the startup
/// deadline) or the default timeout.
fn control_call() -> Resolved {
    Resolved {
        timeout: Some(crate::client::DEFAULT_TIMEOUT),
        retries: 0,
        backoff: Backoff::default(),
        idempotent: false,
    }
}

impl fmt::Debug for ProcessWorker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessWorker")
            .field("name", &self.name)
            .field("pid", &self.pid)
            .field("exit", &*self.exit.borrow())
            .field("address", &self.address())
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl Spawn for ProcessDriver {
    type Worker = ProcessWorker;

    fn spawn(&self) -> impl Future<Output = Result<ProcessWorker, Error>> + Send {
        ProcessDriver::spawn(self)
    }
}

impl Worker for ProcessWorker {
    fn name(&self) -> &str {
        ProcessWorker::name(self)
    }

    fn channel(&self) -> Channel {
        ProcessWorker::channel(self)
    }

    fn watch_exit(&self) -> impl Future<Output = ExitReason> + Send + 'static {
        ProcessWorker::watch_exit(self)
    }

    fn shutdown(&self) -> impl Future<Output = ExitReason> + Send {
        ProcessWorker::shutdown(self)
    }

    fn kill(&self) {
        ProcessWorker::kill(self);
    }

    fn pid(&self) -> Option<u32> {
        Some(ProcessWorker::pid(self))
    }
}

/// A worker that outlives the host that detached it: what another host needs
/// to [connect](ProcessDriver::connect) to it.
#[derive(Clone, Debug)]
pub struct DetachedWorker {
    name: String,
    pid: u32,
    address: PathBuf,
    secret: Secret,
}

impl DetachedWorker {
    /// The worker's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The worker's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The path of the worker's socket.
    pub fn address(&self) -> &Path {
        &self.address
    }

    /// The secret a host must present. Keep it out of logs and command lines.
    pub fn secret(&self) -> &Secret {
        &self.secret
    }
}
