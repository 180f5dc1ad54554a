//! Supervision: the embedder runs in a supervised worker process that is
//! killed (and restarted), then replaced every 50 embeddings (as the plan
//! this library grew from does at 200, or above 300 MB); the same client
//! works throughout. The program is its own worker, as in `hello_process`.
//!
//! Run it with `cargo run --example supervised`.

use std::error::Error;
use std::process::Command;
use std::time::{Duration, Instant};

use workerbus::{HealthCheck, ProcessDriver, RestartPolicy, Supervisor, SupervisorEvent};
use workerbus_examples::TrigramEmbedder;
use workerbus_examples::embedder::{EmbedRequest, EmbedderClient, EmbedderServer};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    if workerbus::startup_data().is_some() {
        workerbus::serve(EmbedderServer::new(TrigramEmbedder::default())).await?;
        return Ok(());
    }

    let supervisor = Supervisor::new();
    let mut events = supervisor.subscribe();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            match event {
                SupervisorEvent::Health { .. } => {}
                event => println!("  supervisor: {event:?}"),
            }
        }
    });
    let policy = RestartPolicy::new()
        .health_check(HealthCheck::every(Duration::from_millis(100)).recycle_after_processed(50));
    let driver = ProcessDriver::new(std::env::current_exe()?).serves(EmbedderClient::SCHEMA);
    let embedder = supervisor.supervise("embedder", driver, policy).await?;
    // One client, made once, for the whole run.
    let client = EmbedderClient::new(embedder.channel());
    let request = |text: &str| EmbedRequest {
        texts: vec![text.to_owned()],
        is_query: false,
    };
    client.embed(request("warm up")).await?;

    // A crash: the worker is killed from outside, as the OOM killer would.
    let pid = embedder.pid().expect("a process worker");
    println!("killing the embedder (pid {pid}) with SIGKILL");
    let killed = Instant::now();
    Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()?;
    // `embedder.embed` is idempotent in its schema: the call waits for the
    // restart, or runs again on the new worker if the crash cut it short.
    client.embed(request("after the crash")).await?;
    println!(
        "the next call succeeded {:.1?} after the kill, on pid {}",
        killed.elapsed(),
        embedder.pid().unwrap_or_default()
    );

    // Thresholds: every 50 embeddings the worker is replaced gracefully.
    for i in 0..120 {
        client.embed(request(&format!("text {i}"))).await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "120 more embeddings, none failed; {} restarts in all; the last crash: {:?}",
        embedder.restarts(),
        embedder.last_exit()
    );
    supervisor.shutdown().await;
    Ok(())
}
