//! The gRPC driver against the gRPC server on loopback: the behaviour
//! suite every driver passes (`workerbus_tests::cases`), then what only a
//! network driver has (endpoints, connections, reconnection).

use workerbus::{Channel, Worker};
use workerbus_grpc::{GrpcDriver, GrpcServer, GrpcWorker};
use workerbus_tests::EchoWorker;
use workerbus_tests::cases::{self, Differences};
use workerbus_tests::pb::echo::{EchoClient, EchoServer, MissingClient};

/// A server of the Echo service on a loopback port; its address.
async fn serve() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = GrpcServer::new().add_service(EchoServer::new(EchoWorker::new()));
    tokio::spawn(server.serve(listener));
    format!("http://{address}")
}

async fn connect(address: &str) -> GrpcWorker {
    GrpcDriver::new(address)
        .serves(&EchoClient::SCHEMA)
        .serves(&MissingClient::SCHEMA)
        .connect()
        .await
        .unwrap()
}

/// What gRPC does differently, as the README's driver table says: HTTP/2
/// windows and send buffers count bytes (with hyper's defaults, at most a
/// 2 MiB receive window and a 1 MiB send buffer each way: 3 MiB, and a
/// little of the codec's), header blocks keep the order of each key's
/// entries only, and the server answers a path it does not route.
const GRPC: Differences = Differences {
    transport_bytes: 3 << 20,
    metadata_order_across_keys: false,
    worker_answers_unknown_methods: false,
};

async fn fresh() -> (GrpcWorker, Channel) {
    let worker = connect(&serve().await).await;
    let channel = worker.channel();
    (worker, channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_calls_cases_pass() {
    let (_worker, channel) = fresh().await;
    cases::all_with(&channel, &GRPC).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_cases_pass() {
    let (_worker, channel) = fresh().await;
    cases::streams_with(&channel, &GRPC).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metadata_cases_pass() {
    let (_worker, channel) = fresh().await;
    cases::metadata_goes_both_ways_with(&channel, &GRPC).await;
    // Each attempt crosses as grpc-previous-rpc-attempts.
    cases::metadata_is_kept_across_retries(&channel).await;
    cases::metadata_over_its_limit_fails_the_call_naming_the_key(&channel).await;
}

