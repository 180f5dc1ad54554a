//! A serving node: the embedder, supervised on this machine, served over
//! gRPC to search hosts on others (`search-embedder --listen ADDR`), and,
//! with `--chaos`, killed at random to show that remote hosts do not lose
//! a call.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use workerbus::{ProcessDriver, RestartPolicy, SupervisedWorker, Supervisor};
use workerbus_grpc::GrpcServer;

use crate::embedder::EmbedderClient;
use crate::model::ModelClient;

use super::worker::ensure_model;
use super::{EMBEDDER, MODEL_PATH_ENV, ModelKind, Recycling};

/// How a node serves.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// Where to listen for gRPC clients.
    pub listen: SocketAddr,
    /// The embedder's program (a binary that calls
    /// [`serve_embedder`](super::serve_embedder) when started as a worker).
    pub embedder: PathBuf,
    /// Where the model is kept.
    pub data_dir: PathBuf,
    /// The model the embedder runs.
    pub model: ModelKind,
    /// Kill the embedder process at random, every 0.1 to 0.5 s.
    pub chaos: bool,
}

/// A running node: its supervised embedder, served over gRPC.
#[derive(Debug)]
pub struct Node {
    address: SocketAddr,
    embedder: SupervisedWorker,
    _supervisor: Supervisor,
    serving: tokio::task::JoinHandle<()>,
}

impl Node {
    /// Supervises the embedder process (recycled as in a local run:
    /// [`Recycling`]), has it download its model if it is
    /// missing, and serves its `Embedder` and `Model` services over gRPC on
    /// `options.listen`; with `options.chaos`, kills it at random.
    pub async fn start(options: NodeOptions) -> Result<Node, Box<dyn std::error::Error>> {
        let supervisor = Supervisor::new();
        let driver = ProcessDriver::new(&options.embedder)
            .name(EMBEDDER)
            .env(
                MODEL_PATH_ENV,
                options
                    .data_dir
                    .join("model")
                    .join(options.model.file_name()),
            )
            .serves(EmbedderClient::SCHEMA)
            .serves(ModelClient::SCHEMA);
        let policy = RestartPolicy::new().health_check(Recycling::of(options.model).health_check());
        let embedder = supervisor.supervise(EMBEDDER, driver, policy).await?;
        // Ready to embed once it serves: any gRPC client can call Embed
        // without asking for the model first.
        ensure_model(&ModelClient::new(embedder.channel())).await?;
        let listener = tokio::net::TcpListener::bind(options.listen).await?;
        let address = listener.local_addr()?;
        // Health probes see the embedder's restarts.
        let server = GrpcServer::new()
            .add_supervised(&EmbedderClient::SCHEMA, &embedder)
            .add_supervised(&ModelClient::SCHEMA, &embedder)
            // For reflection clients (grpcurl list, describe).
            .add_descriptors(workerbus::include_descriptor_set!())?;
        if options.chaos {
            tokio::spawn(chaos(embedder.clone()));
        }
        Ok(Node {
            address,
            embedder,
            _supervisor: supervisor,
            serving: tokio::spawn(server.serve(listener)),
        })
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Its supervised embedder.
    pub fn embedder(&self) -> &SupervisedWorker {
        &self.embedder
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.serving.abort();
    }
}

/// Kills `embedder` every 0.1 to 0.5 s, at random, while it runs.
async fn chaos(embedder: SupervisedWorker) {
    let mut random = u64::from(std::process::id()) | 1;
    let mut kills = 0u32;
    loop {
        // xorshift64: enough randomness for a demonstration.
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        tokio::time::sleep(Duration::from_millis(100 + random % 400)).await;
        if embedder.is_running() {
            kills += 1;
            println!(
                "search-embedder: chaos: killing the embedder (process {}), kill {kills}",
                embedder.pid().unwrap_or_default()
            );
            embedder.kill();
        }
    }
}

/// Starts a [`Node`] and serves until the process ends.
pub async fn serve_node(options: NodeOptions) -> Result<(), Box<dyn std::error::Error>> {
    let node = Node::start(options).await?;
    println!(
        "search-embedder: serving the embedder (process {}) over gRPC on {}",
        node.embedder().pid().unwrap_or_default(),
        node.address()
    );
    std::future::pending::<()>().await;
    Ok(())
}
