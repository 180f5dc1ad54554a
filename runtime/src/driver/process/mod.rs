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
//!
//! The host's side: this module holds the driver's options, `spawn.rs`
//! starts a worker (or reaches a named one) and reaps it, `connect.rs`
//! makes the host's end of either connection, `handle.rs` is
//! the [`ProcessWorker`] handle, `handshake.rs` the greeting both sides
//! check. The worker's side: `worker.rs` serves the connection it was born
//! with, `admission.rs` holds the peers of its named socket to their
//! greeting, and `terminate.rs` makes SIGTERM end it as a shutdown does. `socket.rs` carries frames over a Unix
//! socket, `passing.rs` the descriptors that ride on it, and `memfd.rs` the
//! sealed memory files its large payloads may cross in; `sys.rs` holds the other system calls.

mod admission;
mod connect;
mod handle;
pub(crate) mod handshake;
mod memfd;
mod passing;
mod socket;
mod spawn;
mod sys;
mod terminate;
mod worker;

use std::ffi::OsString;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use self::handle::{DetachedWorker, ProcessWorker};
pub use self::handshake::Secret;
#[cfg(fuzzing)]
pub(crate) use self::memfd::{sealed as sealed_memory_file, unsealed_for_fuzzing};
#[cfg(fuzzing)]
pub(crate) use self::socket::read_with_descriptors;
#[cfg(fuzzing)]
pub use self::worker::PeerEnd;
#[cfg(fuzzing)]
pub(crate) use self::worker::serve_fuzzed_peer;
pub use self::worker::{serve, serve_with_options};
use super::{Spawn, Worker};
use crate::client::ChannelOptions;
use crate::error::Error;
use crate::schema::ServiceSchema;

/// The default time a worker has to start and complete its handshake.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

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
            shutdown_grace: super::DEFAULT_SHUTDOWN_GRACE,
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
}

impl Spawn for ProcessDriver {
    type Worker = ProcessWorker;

    fn spawn(&self) -> impl Future<Output = Result<ProcessWorker, Error>> + Send {
        ProcessDriver::spawn(self)
    }
}
