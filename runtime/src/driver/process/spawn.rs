//! Starting a worker process and reaching a named one: the child's birth
//! with its end of the socket, the handshake, the reaper, and the copy of
//! the child's stderr.

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, ChildStderr};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::client::Channel;
use crate::error::{Error, ExitReason};
use crate::startup::{SOCKET_DIR_ENV, SOCKET_FD, STARTUP_ENV, StartupData};
use crate::sync::lock;

use super::connect::{connect_named, connect_transport};
use super::handle::{NamedSocket, Process};
use super::handshake::Secret;
use super::{ProcessDriver, ProcessWorker, Stdio, sys, worker};

/// How many lines of a worker's stderr the host keeps for error messages.
const STDERR_TAIL_LINES: usize = 20;
/// How long a line of stderr may be in an error message.
const STDERR_LINE_MAX: usize = 500;

impl ProcessDriver {
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

        let connected = connect_transport(host_end, &self.channel).map(|(transport, passing)| {
            let channel = Channel::connect(
                transport,
                self.channel.clone(),
                Some(exit_rx.clone()),
                "process",
            );
            (channel, passing)
        });
        let (channel, passing) = match connected {
            Ok(connected) => connected,
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
            passing,
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
            passing: peer.passing,
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

pub(super) fn std_stdio(stdio: Stdio) -> std::process::Stdio {
    match stdio {
        Stdio::Inherit => std::process::Stdio::inherit(),
        Stdio::Null => std::process::Stdio::null(),
        Stdio::Capture | Stdio::Forward => std::process::Stdio::piped(),
    }
}

/// Owns the child: waits for it to end (killing it when asked) and reports
/// how, so that no worker is left a zombie and every death has a status.
/// A worker that had a named socket and could not remove it (killed by a
/// signal) has it removed before its death is reported.
pub(super) async fn reap(
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
pub(super) async fn remove_dead_socket(address: &Path, pid: u32) {
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
pub(super) fn forward_stderr(
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
pub(super) const FORWARDED_LINE_MAX: usize = 64 * 1024;

pub(super) fn forward_line(line: &[u8], name: &str, tail: &Mutex<VecDeque<String>>) {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches(['\n', '\r']);
    crate::stderr::line(format!("[{name}] {text}"));
    let mut tail = lock(tail);
    if tail.len() == STDERR_TAIL_LINES {
        tail.pop_front();
    }
    tail.push_back(text.chars().take(STDERR_LINE_MAX).collect());
}
