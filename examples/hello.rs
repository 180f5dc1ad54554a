//! The smallest complete workerbus program: an embedder declared in
//! `proto/embedder.proto`, served on a worker thread, called through its
//! generated client.
//!
//! Run it with `cargo run --example hello`.

use std::error::Error;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use workerbus::{CallOptions, Context, Status, ThreadDriver};

// `workerbus::include_proto!("embedder")`, in this crate's library.
use workerbus_examples::embedder::{
    EmbedRequest, EmbedResponse, EmbedderClient, EmbedderHandler, EmbedderServer, HealthRequest,
    HealthResponse, Vector,
};

/// A stand-in model: hashed character trigrams, L2-normalised. Texts that
/// share trigrams get similar vectors.
#[derive(Default)]
struct TrigramEmbedder {
    processed: AtomicU64,
}

const DIMENSIONS: usize = 256;

fn embed_text(text: &str) -> Vec<f32> {
    let mut vector = vec![0.0f32; DIMENSIONS];
    let chars: Vec<char> = format!("  {}  ", text.to_lowercase()).chars().collect();
    for trigram in chars.windows(3) {
        let hash = trigram.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, c| {
            (h ^ *c as u64).wrapping_mul(0x100_0000_01b3)
        });
        vector[(hash % DIMENSIONS as u64) as usize] += 1.0;
    }
    let norm = vector
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    vector.iter_mut().for_each(|x| *x /= norm);
    vector
}

impl EmbedderHandler for TrigramEmbedder {
    async fn embed(&self, request: EmbedRequest, _cx: &Context) -> Result<EmbedResponse, Status> {
        if request.texts.is_empty() {
            return Err(Status::invalid_argument("no texts to embed"));
        }
        self.processed
            .fetch_add(request.texts.len() as u64, Ordering::Relaxed);
        let vectors = request
            .texts
            .iter()
            .map(|text| Vector {
                values: embed_text(text),
            })
            .collect();
        Ok(EmbedResponse { vectors })
    }

    async fn health(
        &self,
        _request: HealthRequest,
        _cx: &Context,
    ) -> Result<HealthResponse, Status> {
        Ok(HealthResponse {
            memory: 0,
            processed_count: self.processed.load(Ordering::Relaxed),
        })
    }
}

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
