//! The search application's embedder as a program of its own, for hosts
//! that are not themselves the embedder (the integration tests). It serves
//! the `Embedder` and `Model` services to the host that started it.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    workerbus_examples::search::serve_embedder().await
}
