//! The test suite's Echo service served over gRPC, for peers written in
//! other languages (`grpc/interop/`): prints `listening on ADDRESS`, then
//! serves until killed.
//!
//! ```text
//! cargo run -p workerbus-grpc --example echo_server -- 127.0.0.1:50051
//! ```

use std::io::Write;

use workerbus_grpc::GrpcServer;
use workerbus_tests::EchoWorker;
use workerbus_tests::pb::echo::{EchoServer, echo_events_service};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let listener = tokio::net::TcpListener::bind(&address).await?;
    let server = GrpcServer::new()
        .add_service(EchoServer::new(EchoWorker::new()))
        .add_events(&echo_events_service::SCHEMA)
        .add_descriptors(workerbus_tests::DESCRIPTORS)?;
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    server.serve(listener).await;
    Ok(())
}
