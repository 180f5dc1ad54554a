//! Generates the example services from the repository's `proto/`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    workerbus_build::compile_protos(
        &[
            "../proto/embedder.proto",
            "../proto/worker.proto",
            "../proto/model.proto",
        ],
        &["../proto"],
    )?;
    Ok(())
}
