//! [`ProcessWorker`]: the host's handle on a worker process, and the
//! [`DetachedWorker`] it becomes when the host lets go of it.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tokio::process::{ChildStderr, ChildStdout};
use tokio::sync::Notify;

use crate::client::{Channel, ExitWatch, Resolved};
use crate::control::PROTOCOL_VERSION;
use crate::error::{Error, ExitReason};
use crate::frame::Frame;
use crate::name::MethodName;
use crate::payload::Payload;
use crate::schema::ServiceSchema;
use crate::sync::lock;

use super::connect::connect_named;
use super::handshake::{
    self, DETACH as DETACH_NAME, Detached, HELLO as HELLO_NAME, Hello, Secret, Welcome,
};
use super::passing::Passing;
use super::{ProcessDriver, Worker, sys};

static HELLO: MethodName = MethodName::from_static(HELLO_NAME);
static DETACH: MethodName = MethodName::from_static(DETACH_NAME);

/// The path of a worker's named socket, once it has one: shared by its
/// handle and its reaper.
pub(super) type NamedSocket = Arc<Mutex<Option<PathBuf>>>;

/// How the host holds the worker's process.
pub(super) enum Process {
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
    pub(super) name: String,
    /// 0 if the process has no id in this host's pid namespace.
    pub(super) pid: u32,
    pub(super) channel: Channel,
    /// Whether payloads cross in memory files on the channel's connection.
    pub(super) passing: Arc<Passing>,
    pub(super) exit: ExitWatch,
    pub(super) process: Process,
    pub(super) shutdown_grace: Duration,
    pub(super) stdout: Option<ChildStdout>,
    pub(super) stderr: Option<ChildStderr>,
    pub(super) stderr_tail: Arc<Mutex<VecDeque<String>>>,
    pub(super) secret: Secret,
    /// The worker's named socket, once it has one.
    pub(super) address: NamedSocket,
    pub(super) driver: ProcessDriver,
}

impl ProcessWorker {
    /// Greets the worker with the secret and checks what it serves.
    pub(super) async fn handshake(&self, serves: &[ServiceSchema]) -> Result<Welcome, Error> {
        let hello = Hello {
            protocol: PROTOCOL_VERSION,
            secret: self.secret.to_bytes(),
            // Taken from the connection's start (`connect_transport`).
            shared_memory: self.passing.receives(),
        };
        let answer = self
            .channel
            .call(
                &HELLO,
                Bytes::from(hello.encode_to_vec()).into(),
                &control_call(),
            )
            .await
            .map_err(|error| match error {
                Error::Remote { status, .. } => Error::Handshake {
                    worker: self.name.clone(),
                    reason: format!("the worker refused the handshake: {status}"),
                },
                other => other,
            })?;
        let welcome = handshake::read_welcome(answer.into_bytes(), serves).map_err(|reason| {
            Error::Handshake {
                worker: self.name.clone(),
                reason,
            }
        })?;
        self.passing.peer_takes(welcome.shared_memory);
        Ok(welcome)
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
    /// greeting claims. `None` if that process has no id in this host's pid
    /// namespace.
    ///
    /// Every worker handle has it, with this type: a
    /// [`ThreadWorker`](crate::ThreadWorker)'s is always `None`.
    ///
    /// ```no_run
    /// # use workerbus::ProcessDriver;
    /// # async fn example() -> Result<(), workerbus::Error> {
    /// let worker = ProcessDriver::new("target/debug/embedder").spawn().await?;
    /// if let Some(pid) = worker.pid() {
    ///     println!("embedder runs as process {pid}");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn pid(&self) -> Option<u32> {
        Some(self.pid).filter(|&pid| pid != 0)
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
        crate::driver::watch_exit(&self.exit)
    }

    /// The path of the worker's named socket, once it has one: after
    /// [`disconnect`](Self::disconnect) or [`detach`](Self::detach), or the
    /// address it was [reached at](ProcessDriver::connect).
    pub fn address(&self) -> Option<PathBuf> {
        lock(&self.address).clone()
    }

    /// The last lines the worker wrote to its stderr, if it is
    /// [forwarded](crate::Stdio::Forward).
    pub fn stderr_tail(&self) -> Vec<String> {
        lock(&self.stderr_tail).iter().cloned().collect()
    }

    /// The worker's stdout, if it is [captured](crate::Stdio::Capture).
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.stdout.take()
    }

    /// The worker's stderr, if it is [captured](crate::Stdio::Capture).
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
    /// host [forwards](crate::Stdio::Forward) or [captures](crate::Stdio::Capture) end with
    /// the host, so start a worker you will detach with [`Stdio::Null`](crate::Stdio::Null), or
    /// [`Stdio::Inherit`](crate::Stdio::Inherit) from a terminal or file that outlives the host.
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
        let previous_passing = std::mem::replace(&mut self.passing, Arc::clone(&peer.passing));
        let serves = self.driver.serves.clone();
        if let Err(error) = self.handshake(&serves).await {
            self.channel = previous;
            self.passing = previous_passing;
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
            .call(&DETACH, Payload::new(), &control_call())
            .await?;
        let detached = Detached::decode(answer.into_bytes()).map_err(|error| Error::Handshake {
            worker: self.name.clone(),
            reason: format!("the worker's answer to detach did not decode: {error}"),
        })?;
        Ok(PathBuf::from(detached.address))
    }
}

/// Control exchanges: one attempt, bounded by the caller (the startup
/// deadline) or the default timeout.
fn control_call() -> Resolved {
    Resolved::control(crate::client::DEFAULT_TIMEOUT)
}

impl fmt::Debug for ProcessWorker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessWorker")
            .field("name", &self.name)
            .field("pid", &self.pid())
            .field("exit", &*self.exit.borrow())
            .field("address", &self.address())
            .field("channel", &self.channel)
            .finish_non_exhaustive()
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
        ProcessWorker::pid(self)
    }
}

/// A worker that outlives the host that detached it: what another host needs
/// to [connect](ProcessDriver::connect) to it.
#[derive(Clone, Debug)]
pub struct DetachedWorker {
    pub(super) name: String,
    pub(super) pid: u32,
    pub(super) address: PathBuf,
    pub(super) secret: Secret,
}

impl DetachedWorker {
    /// The worker's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The worker's process id, as the [`ProcessWorker`] it was detached
    /// from had it: `None` if that process had no id in the detaching
    /// host's pid namespace.
    pub fn pid(&self) -> Option<u32> {
        Some(self.pid).filter(|&pid| pid != 0)
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
