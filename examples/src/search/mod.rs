//! The flagship application: semantic search over text files, split the way
//! the message-bus plan splits it.
//!
//! ```text
//! host (CLI) <-> search worker (thread driver) <-> embedder (child process, supervised)
//!                 worker.init / search / index / stats    embedder.embed / health
//!                                                          model.check / download
//! ```
//!
//! - [`model`]: the embedder process (a stand-in model behind the
//!   `Embedder` and `Model` services);
//! - [`index`]: passages, vectors and the stored index;
//! - [`worker`]: the `Worker` service, run on a thread of the host;
//! - [`data`]: the data directory's lock, and files written whole;
//! - [`recall`]: search quality, measured over queries about this
//!   repository;
//! - this module: [`SearchApp`], which starts and wires the two workers,
//!   and [`Chaos`], the plan of the `--chaos` run.
//!
//! `examples/search.rs` is the command line; `examples/tests/search.rs` runs
//! the same pieces end to end.

pub mod data;
pub mod index;
pub mod model;
pub mod node;
pub mod recall;
pub mod worker;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;
use workerbus::{
    Error, HealthCheck, Metrics, ProcessDriver, RestartPolicy, SupervisedWorker, Supervisor,
    SupervisorEvent, ThreadDriver, ThreadWorker,
};

use workerbus_grpc::GrpcDriver;

use crate::embedder::EmbedderClient;
use crate::model::ModelClient;
use crate::worker::{InitRequest, InitResponse, WorkerClient, WorkerServer};

pub use self::data::DataLock;
pub use self::model::{MODEL_PATH_ENV, ModelKind, serve_embedder};
pub use self::worker::SearchWorker;

/// The supervised embedder's name.
pub const EMBEDDER: &str = "embedder";

/// When an embedder is replaced gracefully, as in the plan: when its
/// resident memory passes `memory` bytes, or after it has embedded `texts`
/// texts. Its health is checked every 500 ms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recycling {
    /// Resident memory, in bytes.
    pub memory: u64,
    /// Texts embedded.
    pub texts: u64,
}

/// The real model's embedder is recycled above this much resident memory:
/// inside its working range as measured on one machine (94 MiB once
/// loaded, 99 to 106 MiB while it works), so that an index run of this
/// repository sees it recycled.
pub const MINILM_RECYCLE_ABOVE: u64 = 102 << 20;

impl Recycling {
    /// The thresholds for an embedder running `model`.
    ///
    /// - The stand-in: above 300 MiB or after 200 texts (its memory never
    ///   grows, so the count is what recycles it).
    /// - The real model: above [`MINILM_RECYCLE_ABOVE`], or after 10,000
    ///   texts.
    pub fn of(model: ModelKind) -> Recycling {
        match model {
            ModelKind::Ngram => Recycling {
                memory: 300 << 20,
                texts: 200,
            },
            ModelKind::MiniLm => Recycling {
                memory: MINILM_RECYCLE_ABOVE,
                texts: 10_000,
            },
        }
    }

    /// The supervisor's health check that applies them.
    pub fn health_check(self) -> HealthCheck {
        HealthCheck::every(Duration::from_millis(500))
            .recycle_above_memory(self.memory)
            .recycle_after_processed(self.texts)
    }
}

impl std::fmt::Display for Recycling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "above {} MiB of memory or after {} texts",
            self.memory >> 20,
            self.texts
        )
    }
}

/// How the application is started.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SearchOptions {
    /// The embedder's program (a binary that calls [`serve_embedder`]).
    pub embedder: PathBuf,
    /// Where the model and the index are kept.
    pub data_dir: PathBuf,
    /// The model the embedder runs.
    pub model: ModelKind,
    /// How the embedder's health is watched.
    pub health_check: HealthCheck,
    /// The gRPC address of a node serving the embedder
    /// ([`node::serve_node`]), instead of a local embedder process.
    pub remote: Option<String>,
}

impl SearchOptions {
    /// Runs `embedder` as the embedder process, keeping files in
    /// `data_dir`, with the model [`ModelKind::default_for_build`] and its
    /// [`Recycling`].
    pub fn new(embedder: impl Into<PathBuf>, data_dir: impl Into<PathBuf>) -> SearchOptions {
        let model = ModelKind::default_for_build();
        SearchOptions {
            embedder: embedder.into(),
            data_dir: data_dir.into(),
            model,
            health_check: Recycling::of(model).health_check(),
            remote: None,
        }
    }

    /// Runs `model` instead, with its [`Recycling`] (call
    /// [`health_check`](SearchOptions::health_check) after this to change
    /// it). A remote embedder runs the model its node chose.
    pub fn model(mut self, model: ModelKind) -> SearchOptions {
        self.model = model;
        if self.remote.is_none() {
            self.health_check = Recycling::of(model).health_check();
        }
        self
    }

    /// Uses the embedder a node serves over gRPC at `address` (e.g.
    /// `http://10.0.0.7:50051`): the node supervises and recycles its own
    /// embedder process; this side watches its health and reconnects.
    pub fn remote(mut self, address: impl Into<String>) -> SearchOptions {
        self.remote = Some(address.into());
        self.health_check = HealthCheck::every(Duration::from_millis(500));
        self
    }

    /// Watches the embedder with `check` instead.
    pub fn health_check(mut self, check: HealthCheck) -> SearchOptions {
        self.health_check = check;
        self
    }

    /// The model file: where the embedder looks for it (its name says
    /// which model it is).
    pub fn model_path(&self) -> PathBuf {
        self.model.path_in(&self.data_dir)
    }

    /// The directory of the index.
    pub fn index_dir(&self) -> PathBuf {
        self.data_dir.join("index")
    }
}

/// The running application: a supervised embedder process and the search
/// worker's thread, with one [`Metrics`] middleware on both channels. It
/// holds its data directory's [`DataLock`] while it runs.
#[derive(Debug)]
pub struct SearchApp {
    options: SearchOptions,
    lock: DataLock,
    supervisor: Supervisor,
    embedder: SupervisedWorker,
    worker: ThreadWorker,
    client: WorkerClient,
    metrics: Metrics,
    recoveries: watch::Receiver<Vec<Duration>>,
}

impl SearchApp {
    /// Takes the data directory (waiting while another run has it), then
    /// starts the embedder under a supervisor and the search worker on a
    /// thread, connected to it.
    pub async fn start(options: SearchOptions) -> Result<SearchApp, Error> {
        let lock = DataLock::acquire(&options.data_dir)
            .await
            .map_err(|error| Error::Spawn {
                worker: "search".into(),
                reason: format!(
                    "cannot lock the data directory {}",
                    options.data_dir.display()
                ),
                source: Some(error),
            })?;
        let supervisor = Supervisor::new();
        let (recovered, recoveries) = watch::channel(Vec::new());
        tokio::spawn(time_recoveries(supervisor.subscribe(), recovered));
        // The handshake checks that the program serves both services, built
        // from the same schemas as these clients.
        let policy = RestartPolicy::new().health_check(options.health_check.clone());
        let embedder = match &options.remote {
            None => {
                let driver = ProcessDriver::new(&options.embedder)
                    .name(EMBEDDER)
                    .env(MODEL_PATH_ENV, options.model_path())
                    .serves(EmbedderClient::SCHEMA)
                    .serves(ModelClient::SCHEMA);
                supervisor.supervise(EMBEDDER, driver, policy).await?
            }
            // The same clients, over gRPC; a restart is a reconnection.
            Some(address) => {
                let driver = GrpcDriver::new(address)
                    .serves(&EmbedderClient::SCHEMA)
                    .serves(&ModelClient::SCHEMA);
                supervisor.supervise(EMBEDDER, driver, policy).await?
            }
        };

        let metrics = Metrics::new();
        // The supervised channel follows the embedder through its restarts.
        let to_embedder = embedder.channel().with_middleware(metrics.clone());
        let worker = ThreadDriver::new()
            .name("search")
            .spawn(WorkerServer::new(SearchWorker::new(to_embedder)))
            .await?;
        let client = WorkerClient::new(worker.channel().with_middleware(metrics.clone()));
        Ok(SearchApp {
            options,
            lock,
            supervisor,
            embedder,
            worker,
            client,
            metrics,
            recoveries,
        })
    }

    /// Opens the index (and fetches the model if it is missing).
    pub async fn init(&self) -> Result<InitResponse, Error> {
        self.client
            .init(InitRequest {
                db_dir: self.options.index_dir().display().to_string(),
                user_data_path: self.options.data_dir.display().to_string(),
            })
            .await
    }

    /// The search worker's client.
    pub fn client(&self) -> &WorkerClient {
        &self.client
    }

    /// The supervised embedder.
    pub fn embedder(&self) -> &SupervisedWorker {
        &self.embedder
    }

    /// The supervisor, for its events.
    pub fn supervisor(&self) -> &Supervisor {
        &self.supervisor
    }

    /// Calls seen by the host (`worker.*`) and by the search worker
    /// (`embedder.*`, `model.*`).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// How long each crash of the embedder took to recover from: from the
    /// supervisor seeing the exit to the new process serving.
    pub fn recoveries(&self) -> Vec<Duration> {
        self.recoveries.borrow().clone()
    }

    /// Waits until the embedder has recovered from `crashes` crashes in all
    /// (a kill is seen, and recovered from, a little after it is made).
    pub async fn recovered(&self, crashes: usize) {
        let mut recoveries = self.recoveries.clone();
        // The recording task ends only with the supervisor, which `self` holds.
        let _ = recoveries.wait_for(|done| done.len() >= crashes).await;
    }

    /// The options it was started with.
    pub fn options(&self) -> &SearchOptions {
        &self.options
    }

    /// The lock it holds on its data directory.
    pub fn data_lock(&self) -> &DataLock {
        &self.lock
    }

    /// Stops the search worker, then the embedder.
    pub async fn shutdown(self) {
        self.worker.shutdown().await;
        self.supervisor.shutdown().await;
    }
}

/// Records, for each exit of the embedder, the time until it was serving
/// again.
async fn time_recoveries(
    mut events: tokio::sync::broadcast::Receiver<SupervisorEvent>,
    recoveries: watch::Sender<Vec<Duration>>,
) {
    let mut exited = None;
    loop {
        match events.recv().await {
            Ok(SupervisorEvent::Exited { worker, .. }) if worker == EMBEDDER => {
                exited = Some(Instant::now());
            }
            Ok(SupervisorEvent::Started { worker, .. }) if worker == EMBEDDER => {
                if let Some(exited) = exited.take() {
                    recoveries.send_modify(|done| done.push(exited.elapsed()));
                }
            }
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
    }
}

/// The plan of a chaos run: the embedder is killed as indexing passes each
/// of a few points, chosen at random.
#[derive(Clone, Debug)]
pub struct Chaos {
    /// Files done at which to kill, ascending.
    kill_at: Vec<u32>,
}

impl Chaos {
    /// `kills` kill points (fewer if there are not as many files) among
    /// `1..total`, drawn with `seed`.
    pub fn plan(total: u32, kills: u32, seed: u64) -> Chaos {
        let mut random = seed | 1;
        let mut next = move || {
            // xorshift64: enough randomness for a demonstration.
            random ^= random << 13;
            random ^= random >> 7;
            random ^= random << 17;
            random
        };
        let mut kill_at: Vec<u32> = Vec::new();
        let candidates = total.saturating_sub(1);
        while (kill_at.len() as u32) < kills.min(candidates) {
            let point = 1 + (next() % u64::from(candidates)) as u32;
            if !kill_at.contains(&point) {
                kill_at.push(point);
            }
        }
        kill_at.sort_unstable();
        Chaos { kill_at }
    }

    /// The files-done counts at which the embedder will be killed.
    pub fn points(&self) -> &[u32] {
        &self.kill_at
    }

    /// Whether to kill the embedder now that `done` files are done. A point
    /// passed while the embedder is still coming back from the last kill
    /// waits for it to be running.
    pub fn strike(&mut self, done: u32, running: bool) -> bool {
        let due = self.kill_at.first().is_some_and(|point| *point <= done);
        if due && running {
            self.kill_at.remove(0);
        }
        due && running
    }

    /// Whether every kill has happened.
    pub fn is_done(&self) -> bool {
        self.kill_at.is_empty()
    }
}

/// Locks `mutex`, whether or not a panic poisoned it (the data it guards
/// stays consistent between statements).
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A path shown relative to `base` when it lies under it.
pub fn display_path(path: &str, base: &Path) -> String {
    Path::new(path).strip_prefix(base).map_or_else(
        |_| path.to_owned(),
        |relative| relative.display().to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chaos_picks_distinct_points_inside_the_run() {
        for seed in 0..50 {
            let chaos = Chaos::plan(10, 3, seed);
            let points = chaos.points();
            assert_eq!(points.len(), 3);
            assert!(
                points.windows(2).all(|pair| pair[0] < pair[1]),
                "{points:?}"
            );
            assert!(
                points.iter().all(|point| (1..10).contains(point)),
                "{points:?}"
            );
        }
        assert_eq!(Chaos::plan(3, 5, 1).points(), [1, 2]);
        assert!(Chaos::plan(1, 3, 1).is_done());
    }

    #[test]
    fn a_strike_waits_for_the_embedder_to_run() {
        let mut chaos = Chaos::plan(3, 2, 7);
        assert!(!chaos.strike(0, true));
        assert!(!chaos.strike(1, false));
        assert!(chaos.strike(1, true));
        assert!(chaos.strike(2, true));
        assert!(chaos.is_done());
        assert!(!chaos.strike(3, true));
    }
}
