//! The smallest complete workerbus program: an embedder declared in
//! `proto/embedder.proto`, served on a worker thread, called through its
//! generated client.
//!
//! Run it with `cargo run --example hello`.

use std::error::Error;
use std::time::Duration;

use workerbus::{CallOptions, ThreadDriver};
// `workerbus::include_proto!("embedder")` and a toy `EmbedderHandler`, in
// this crate's library.
use workerbus_examples::TrigramEmbedder;
use workerbus_examples::embedder::{EmbedRequest, EmbedderClient, EmbedderServer, HealthRequest};

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    // The worker runs on its own thread with its own runtime.
    let worker = ThreadDriver::new()
        .spawn(EmbedderServer::new(TrigramEmbedder::default()))
        .await?;
    let embedder = EmbedderClient::new(worker.channel());

    let texts = [
        "the quick brown fox",
        "a quick brown dog",
        "protocol buffers",
    ];
    let response = embedder
        .embed(EmbedRequest {
            texts: texts.iter().map(|t| t.to_string()).collect(),
            is_query: false,
        })
        .await?;
    let query = &response.vectors[0].values;
    println!("similarity to {:?}:", texts[0]);
    for (text, vector) in texts.iter().zip(&response.vectors).skip(1) {
        println!("  {:>5.3}  {text:?}", cosine(query, &vector.values));
    }

    // A handler's error reaches the caller with its code, naming the message.
    let error = embedder.embed(EmbedRequest::default()).await.unwrap_err();
    println!("an empty batch: {error}");

    // Per-call options override the schema's defaults (here 60 s, 2 retries).
    let options = CallOptions::new().timeout(Duration::from_millis(500));
    let health = embedder.health_with(HealthRequest {}, options).await?;
    println!("the worker has embedded {} texts", health.processed_count);

    // Finish the calls in flight, then stop the worker thread.
    let exit = worker.shutdown().await;
    println!("worker {exit}");
    Ok(())
}
