//! [`ThreadDriver`]: a worker on its own OS thread with its own tokio runtime.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, oneshot, watch};

use std::future::Future;

use super::{DEFAULT_SHUTDOWN_GRACE, Spawn, Worker};
use crate::client::{Channel, ChannelOptions, CloseReason, ExitWatch};
use crate::error::{Error, ExitReason};
use crate::frame::Frame;
use crate::panic::panic_message;
use crate::server::{Dispatch, ServeOptions, serve_transport};
use crate::transport::MemoryTransport;

/// Runs a worker on its own OS thread, with its own tokio runtime, in this
/// process.
///
/// Frames move between host and worker as values: nothing is serialized but
/// the protobuf messages themselves. The worker's runtime is single-threaded
/// by default, which gives the lowest latency; a handler that blocks that
/// thread stalls only this worker.
///
/// ```no_run
/// # use workerbus::{Dispatch, ThreadDriver};
/// # async fn example(server: impl Dispatch) -> Result<(), workerbus::Error> {
/// let worker = ThreadDriver::new().name("embedder").spawn(server).await?;
/// let channel = worker.channel(); // give it to a generated client
/// # drop(channel);
/// worker.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct ThreadDriver {
    name: Option<String>,
    worker_threads: usize,
    serve: ServeOptions,
    channel: ChannelOptions,
    shutdown_grace: Duration,
}

impl ThreadDriver {
    /// A driver with the defaults: one runtime thread, default serve and
    /// channel options, a [5 s](DEFAULT_SHUTDOWN_GRACE) shutdown grace.
    pub fn new() -> ThreadDriver {
        ThreadDriver {
            name: None,
            worker_threads: 1,
            serve: ServeOptions::default(),
            channel: ChannelOptions::default(),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }

    /// Names the worker (and its thread); defaults to the service's name.
    pub fn name(mut self, name: impl Into<String>) -> ThreadDriver {
        self.name = Some(name.into());
        self
    }

    /// Runs the worker on a multi-threaded runtime with `threads` threads
    /// instead of the default single-threaded one.
    pub fn worker_threads(mut self, threads: usize) -> ThreadDriver {
        self.worker_threads = threads.max(1);
        self
    }

    /// Options of the worker's serve loop (concurrency, frame size).
    pub fn serve_options(mut self, options: ServeOptions) -> ThreadDriver {
        self.serve = options;
        self
    }

    /// Options of the host's channel to the worker.
    pub fn channel_options(mut self, options: ChannelOptions) -> ThreadDriver {
        self.channel = options;
        self
    }

    /// How long [`ThreadWorker::shutdown`] lets in-flight calls finish
    /// before it stops the worker anyway.
    pub fn shutdown_grace(mut self, grace: Duration) -> ThreadDriver {
        self.shutdown_grace = grace;
        self
    }

    /// Starts a thread serving `service` and connects to it.
    ///
    /// Call it within a tokio runtime: the host's side of the connection runs
    /// there. Fails with [`Error::Spawn`] if the thread or its runtime cannot
    /// be started.
    pub async fn spawn<S: Dispatch>(self, service: S) -> Result<ThreadWorker, Error> {
        let name = self
            .name
            .clone()
            .unwrap_or_else(|| service.schema().name().to_owned());
        let (host_end, worker_end) = MemoryTransport::pair();
        let (ready_tx, ready_rx) = oneshot::channel();
        let (exit_tx, exit_rx) = watch::channel(None);
        let kill = Arc::new(Notify::new());
        let spawn_error = |reason: String, source| Error::Spawn {
            worker: name.clone(),
            reason,
            source,
        };

        let body = {
            let kill = Arc::clone(&kill);
            let worker_threads = self.worker_threads;
            let serve = self.serve.clone().driver("thread");
            move || {
                let run =
                    || run_worker(worker_threads, worker_end, service, serve, &kill, ready_tx);
                let reason = std::panic::catch_unwind(AssertUnwindSafe(run))
                    .unwrap_or_else(|panic| ExitReason::Panicked(panic_message(&*panic)));
                exit_tx.send_replace(Some(reason));
            }
        };
        // The thread is detached: a worker that will not stop never keeps the
        // process from exiting.
        std::thread::Builder::new()
            .name(name.clone())
            .spawn(body)
            .map_err(|error| spawn_error("could not start its thread".into(), Some(error)))?;

        match ready_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                return Err(spawn_error(
                    "could not build its tokio runtime".into(),
                    Some(error),
                ));
            }
            Err(_) => {
                let mut exit = exit_rx.clone();
                let reason = exit
                    .wait_for(Option::is_some)
                    .await
                    .ok()
                    .and_then(|reason| reason.clone())
                    .unwrap_or(ExitReason::Unknown);
                return Err(spawn_error(
                    format!("its thread ended while starting: it {reason}"),
                    None,
                ));
            }
        }
        let channel = Channel::connect(host_end, self.channel, Some(exit_rx.clone()), "thread");
        tracing::debug!(worker = %name, "thread worker started");
        Ok(ThreadWorker {
            name,
            channel,
            exit: exit_rx,
            kill,
            shutdown_grace: self.shutdown_grace,
        })
    }
}

impl ThreadDriver {
    /// A [`Spawn`] that starts a thread worker serving what `make` returns,
    /// each time it is asked: how a [`Supervisor`](crate::Supervisor)
    /// restarts thread workers.
    ///
    /// ```no_run
    /// use workerbus::{Dispatch, ThreadDriver};
    ///
    /// // `make` is e.g. `|| EmbedderServer::new(MyEmbedder::default())`.
    /// fn embedder<S: Dispatch>(make: impl Fn() -> S + Send + Sync + 'static) {
    ///     let spawner = ThreadDriver::new().name("embedder").spawner(make);
    ///     # drop(spawner);
    /// }
    /// ```
    pub fn spawner<S, F>(self, make: F) -> ThreadSpawner<F>
    where
        S: Dispatch,
        F: Fn() -> S + Send + Sync + 'static,
    {
        ThreadSpawner { driver: self, make }
    }
}

/// Starts thread workers from a function that builds their server; made by
/// [`ThreadDriver::spawner`].
pub struct ThreadSpawner<F> {
    driver: ThreadDriver,
    make: F,
}

impl<F> fmt::Debug for ThreadSpawner<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadSpawner")
            .field("driver", &self.driver)
            .finish_non_exhaustive()
    }
}

impl<S, F> Spawn for ThreadSpawner<F>
where
    S: Dispatch,
    F: Fn() -> S + Send + Sync + 'static,
{
    type Worker = ThreadWorker;

    fn spawn(&self) -> impl Future<Output = Result<ThreadWorker, Error>> + Send {
        self.driver.clone().spawn((self.make)())
    }
}

impl Worker for ThreadWorker {
    fn name(&self) -> &str {
        ThreadWorker::name(self)
    }

    fn channel(&self) -> Channel {
        ThreadWorker::channel(self)
    }

    fn watch_exit(&self) -> impl Future<Output = ExitReason> + Send + 'static {
        ThreadWorker::watch_exit(self)
    }

    fn shutdown(&self) -> impl Future<Output = ExitReason> + Send {
        ThreadWorker::shutdown(self)
    }

    fn kill(&self) {
        ThreadWorker::kill(self);
    }

    fn pid(&self) -> Option<u32> {
        ThreadWorker::pid(self)
    }
}

impl Default for ThreadDriver {
    fn default() -> ThreadDriver {
        ThreadDriver::new()
    }
}

fn run_worker<S: Dispatch>(
    worker_threads: usize,
    transport: MemoryTransport,
    service: S,
    options: ServeOptions,
    kill: &Notify,
    ready: oneshot::Sender<std::io::Result<()>>,
) -> ExitReason {
    let built = if worker_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(worker_threads)
            .enable_all()
            .build()
    };
    let runtime = match built {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = ready.send(Err(error));
            return ExitReason::Unknown;
        }
    };
    let _ = ready.send(Ok(()));
    // Only the serve loop runs inside the unwinding boundary: the runtime is
    // shut down below whatever happens, never dropped during unwinding
    // (dropping it would wait for blocking tasks without a limit).
    let served = std::panic::catch_unwind(AssertUnwindSafe(|| {
        runtime.block_on(async {
            tokio::select! {
                biased;
                () = kill.notified() => ExitReason::Killed,
                result = serve_transport(transport, service, options) => {
                    if let Err(error) = result {
                        tracing::warn!(%error, "thread worker stopped: its connection broke");
                    }
                    ExitReason::Stopped
                }
            }
        })
    }));
    // Drops every task still running (their handlers see cancellation); a
    // handler stuck in blocking code is left behind rather than waited for.
    runtime.shutdown_timeout(Duration::from_millis(100));
    served.unwrap_or_else(|panic| ExitReason::Panicked(panic_message(&*panic)))
}

/// A worker running on a thread, started by [`ThreadDriver::spawn`].
///
/// The worker runs while this handle or any [`Channel`] to it is alive;
/// when the last of them is dropped its connection closes and the worker
/// stops. [`shutdown`](ThreadWorker::shutdown) stops it explicitly, letting
/// calls in flight finish.
///
/// A thread worker cannot be detached or reconnected: those exist only on
/// workers of drivers that can do them.
pub struct ThreadWorker {
    name: String,
    channel: Channel,
    exit: ExitWatch,
    kill: Arc<Notify>,
    shutdown_grace: Duration,
}

impl ThreadWorker {
    /// A channel to the worker, for generated clients.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The worker's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The worker's process id: always `None`, for a thread worker runs in
    /// the host's process. Every worker handle has it, with this type.
    pub fn pid(&self) -> Option<u32> {
        None
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
        super::watch_exit(&self.exit)
    }

    /// Stops the worker gracefully: it finishes the calls it has (new ones
    /// are refused with `Unavailable`), then stops, and returns
    /// [`ExitReason::Stopped`]. If calls are still running when the grace
    /// period ends, the worker is killed as by [`kill`](Self::kill): those
    /// calls fail with [`Error::WorkerExited`](crate::Error::WorkerExited),
    /// their handlers' [`Context::cancelled`](crate::Context::cancelled)
    /// tokens fire, and it returns [`ExitReason::Killed`].
    pub async fn shutdown(&self) -> ExitReason {
        if self.channel.send_control(Frame::Shutdown) {
            if let Ok(reason) = tokio::time::timeout(self.shutdown_grace, self.exited()).await {
                return reason;
            }
            tracing::warn!(worker = %self.name, grace = ?self.shutdown_grace, "shutdown grace elapsed; stopping the worker");
        }
        self.kill();
        // A handler stuck in blocking code may keep the thread from ever
        // reporting; the worker is stopped as far as callers are concerned.
        tokio::time::timeout(Duration::from_secs(1), self.exited())
            .await
            .unwrap_or(ExitReason::Killed)
    }

    /// Stops the worker now: calls in flight fail with
    /// [`Error::WorkerExited`] ([`ExitReason::Killed`]) at once, and its
    /// handlers are dropped as soon as its thread regains control.
    ///
    /// A handler stuck in blocking code keeps its thread busy until it
    /// returns; the process driver isolates such workers completely.
    pub fn kill(&self) {
        self.kill.notify_one();
        self.channel
            .terminate(CloseReason::Exited(ExitReason::Killed));
    }
}

impl fmt::Debug for ThreadWorker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadWorker")
            .field("name", &self.name)
            .field("exit", &*self.exit.borrow())
            .field("channel", &self.channel)
            .finish()
    }
}
