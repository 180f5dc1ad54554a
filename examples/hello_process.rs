//! The same embedder as `hello`, in a worker process: the program starts a
//! copy of itself as the worker, and `workerbus::startup_data()` tells each
//! copy which role it plays.
//!
//! Run it with `cargo run --example hello_process`.

use std::error::Error;

use workerbus::ProcessDriver;
use workerbus_examples::TrigramEmbedder;
use workerbus_examples::embedder::{EmbedRequest, EmbedderClient, EmbedderServer, HealthRequest};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    if workerbus::startup_data().is_some() {
        // Started by a host: be the worker.
        workerbus::serve(EmbedderServer::new(TrigramEmbedder::default())).await?;
        return Ok(());
    }

    // Started by a person: be the host, with this same binary as the worker.
    let worker = ProcessDriver::new(std::env::current_exe()?)
        .name("embedder")
        .serves(EmbedderClient::SCHEMA)
        .spawn()
        .await?;
    let pid = worker.pid().expect("a spawned worker has a process id");
    println!("worker process {pid} started");
    let embedder = EmbedderClient::new(worker.channel());

    let response = embedder
        .embed(EmbedRequest {
            texts: vec!["a worker in its own process".into()],
            is_query: true,
        })
        .await?;
    println!(
        "one vector of {} dimensions, from process {pid}",
        response.vectors[0].values.len(),
    );
    let health = embedder.health(HealthRequest {}).await?;
    println!("the worker has embedded {} texts", health.processed_count);

    // If the worker dies, calls say how.
    worker.kill();
    let error = embedder.health(HealthRequest {}).await.unwrap_err();
    println!("after kill(): {error}");
    Ok(())
}
