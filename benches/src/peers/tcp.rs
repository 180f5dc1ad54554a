//! gRPC over TCP loopback, where it runs in production: workerbus's gRPC
//! bridge and driver (`workerbus-grpc`) beside plain tonic, each server in a
//! child process on a current-thread runtime, each client on one HTTP/2
//! connection.
//!
//! A TCP server binds `127.0.0.1:0` and writes the address it was given to
//! the file its role was started with (the path a Unix-socket server would
//! listen on), so that no port is chosen by guess.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Endpoint, Server};
use workerbus::Worker;
use workerbus_grpc::{GrpcDriver, GrpcServer, GrpcWorker};
use workerbus_tests::EchoWorker;
use workerbus_tests::pb::echo::{EchoClient, EchoServer};

use super::tonic::echo_server::EchoServer as TonicEchoServer;
use super::{BoxError, MAX_MESSAGE, ServerProcess, TonicEcho};
use crate::subjects::WorkerbusEcho;

/// The role of a child process serving the tonic echo service over TCP.
pub const TONIC_TCP_SERVER: &str = "tonic-tcp-server";
/// The role of a child process serving workerbus's Echo test service over
/// gRPC ([`GrpcServer`]) on TCP.
pub const WORKERBUS_GRPC_SERVER: &str = "workerbus-grpc-server";

/// The HTTP/2 connections each client keeps: the same for both, and tonic's
/// `Channel` keeps one.
pub const CONNECTIONS: usize = 1;

/// Runs the TCP server of `role`, writing its address to `address_file`;
/// false for other roles.
pub(super) fn serve_role(role: &str, address_file: &Path) -> Option<Result<(), BoxError>> {
    match role {
        TONIC_TCP_SERVER => Some(super::block_on(serve_tonic(address_file))),
        WORKERBUS_GRPC_SERVER => Some(super::block_on(serve_workerbus(address_file))),
        _ => None,
    }
}

/// Binds loopback and publishes the address: written to a temporary file
/// first and renamed, so that a reader never sees half of it.
async fn listen(address_file: &Path) -> Result<TcpListener, BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let written = address_file.with_extension("tmp");
    std::fs::write(&written, listener.local_addr()?.to_string())?;
    std::fs::rename(&written, address_file)?;
    Ok(listener)
}

async fn serve_tonic(address_file: &Path) -> Result<(), BoxError> {
    let listener = listen(address_file).await?;
    let service = TonicEchoServer::new(super::tonic::EchoService)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    Server::builder()
        .add_service(service)
        .serve_with_incoming(TcpListenerStream::new(listener))
        .await?;
    Ok(())
}

async fn serve_workerbus(address_file: &Path) -> Result<(), BoxError> {
    let listener = listen(address_file).await?;
    GrpcServer::new()
        .add_service(EchoServer::new(EchoWorker::in_process()))
        .serve(listener)
        .await;
    Ok(())
}

/// Waits for the address a server writes to `file`, for up to 10 s.
///
/// # Panics
///
/// If `exited` reports the server gone first, or no address comes in time.
fn address(file: &Path, mut exited: impl FnMut() -> Option<ExitStatus>) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(text) = std::fs::read_to_string(file) {
            return text
                .parse()
                .unwrap_or_else(|error| panic!("the address {text:?}: {error}"));
        }
        if let Some(status) = exited() {
            panic!("a TCP server exited ({status}) before it listened");
        }
        assert!(
            Instant::now() < deadline,
            "a TCP server did not listen within 10 s"
        );
        // The interval between looks, not a guess at the start-up time.
        std::thread::sleep(Duration::from_millis(1));
    }
}

async fn connect_tonic(address: SocketAddr) -> TonicEcho {
    let channel = Endpoint::from_shared(format!("http://{address}"))
        .expect("a loopback URI")
        .connect()
        .await
        .unwrap_or_else(|error| panic!("connecting to tonic at {address}: {error}"));
    TonicEcho::new(channel)
}

async fn connect_workerbus(address: SocketAddr) -> (WorkerbusEcho, GrpcWorker) {
    let worker = GrpcDriver::new(format!("http://{address}"))
        .serves(&EchoClient::SCHEMA)
        .connections_per_endpoint(CONNECTIONS)
        .connect()
        .await
        .unwrap_or_else(|error| panic!("connecting to workerbus at {address}: {error}"));
    (WorkerbusEcho::new(worker.channel()), worker)
}

/// tonic's generated client and server over TCP loopback, one connection.
///
/// # Panics
///
/// If the server does not start or the client cannot connect.
pub async fn tonic_tcp() -> (TonicEcho, ServerProcess) {
    let mut server = ServerProcess::spawn(TONIC_TCP_SERVER);
    let file = server.socket().to_owned();
    let address = address(&file, || server.exit_status());
    (connect_tonic(address).await, server)
}

/// workerbus's generated client over [`GrpcDriver`] (one connection) to a
/// [`GrpcServer`] over TCP loopback.
///
/// # Panics
///
/// If the server does not start or the driver cannot connect.
pub async fn workerbus_grpc() -> (WorkerbusEcho, GrpcWorker, ServerProcess) {
    let mut server = ServerProcess::spawn(WORKERBUS_GRPC_SERVER);
    let file = server.socket().to_owned();
    let address = address(&file, || server.exit_status());
    let (echo, worker) = connect_workerbus(address).await;
    (echo, worker, server)
}

#[cfg(test)]
mod tests {
    //! Each TCP subject answers a small, a large and 64 concurrent calls,
    //! its server on a thread here (the test binary does not dispatch
    //! roles).

    use super::*;
    use crate::peers::ServerThread;
    use crate::peers::tests::{check, socket};

    #[tokio::test(flavor = "current_thread")]
    async fn tonic_over_tcp() {
        let file = socket("tonic-tcp");
        let path = file.clone();
        let server = ServerThread::spawn("tonic-tcp", move || async move {
            serve_tonic(&path).await.unwrap();
        });
        check(connect_tonic(address(&file, || None)).await).await;
        drop(server);
        let _ = std::fs::remove_file(&file);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn workerbus_over_grpc() {
        let file = socket("workerbus-grpc");
        let path = file.clone();
        let server = ServerThread::spawn("workerbus-grpc", move || async move {
            serve_workerbus(&path).await.unwrap();
        });
        let (echo, worker) = connect_workerbus(address(&file, || None)).await;
        check(echo).await;
        worker.shutdown().await;
        drop(server);
        let _ = std::fs::remove_file(&file);
    }
}
