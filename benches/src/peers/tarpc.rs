//! tarpc as a subject of the comparison: its serde transport with bincode
//! over a Unix socket, and its in-process channel transport, which moves
//! requests and responses without serializing them.

use std::path::Path;
use std::pin::pin;

use bytes::Bytes;
use tarpc::server::{BaseChannel, Channel as _};
use tarpc::tokio_serde::formats::Bincode;
use tarpc::{ClientMessage, Response, Transport, client, context, serde_transport};
use tokio_stream::StreamExt as _;

use super::{BoxError, MAX_MESSAGE, ServerThread};
use crate::{Echo, MakeVectors};

/// The echo service.
#[tarpc::service]
trait EchoService {
    /// Returns `payload`.
    async fn echo(payload: Bytes) -> Bytes;
    /// Returns `count` floats, made for this call.
    async fn make(count: u32) -> Vec<f32>;
}

/// The echo service's implementation: the payload comes back as it came.
#[derive(Clone, Copy, Debug)]
struct EchoServer;

impl EchoService for EchoServer {
    async fn echo(self, _: context::Context, payload: Bytes) -> Bytes {
        payload
    }

    async fn make(self, _: context::Context, count: u32) -> Vec<f32> {
        crate::fresh_vectors(count)
    }
}

/// A tarpc client of the echo service, on either transport.
#[derive(Clone, Debug)]
pub struct TarpcEcho {
    client: EchoServiceClient,
}

impl Echo for TarpcEcho {
    async fn echo(&self, payload: Bytes) -> Bytes {
        match self.client.echo(context::current(), payload).await {
            Ok(payload) => payload,
            Err(error) => panic!("tarpc echo: {error}"),
        }
    }
}

impl MakeVectors for TarpcEcho {
    async fn make(&self, count: u32) -> Vec<f32> {
        match self.client.make(context::current(), count).await {
            Ok(values) => values,
            Err(error) => panic!("tarpc make: {error}"),
        }
    }
}

/// Connects to the echo server on `socket`.
pub(super) async fn connect(socket: &Path) -> std::io::Result<TarpcEcho> {
    let mut connect = serde_transport::unix::connect(socket, Bincode::default);
    connect.config_mut().max_frame_length(MAX_MESSAGE);
    let client = EchoServiceClient::new(client::Config::default(), connect.await?).spawn();
    Ok(TarpcEcho { client })
}

/// Serves the echo service on `socket` until the task is dropped.
pub(super) async fn serve(socket: &Path) -> Result<(), BoxError> {
    let mut incoming = serde_transport::unix::listen(socket, Bincode::default).await?;
    incoming.config_mut().max_frame_length(MAX_MESSAGE);
    while let Some(transport) = incoming.next().await {
        tokio::spawn(serve_connection(transport?));
    }
    Ok(())
}

/// A client and a server connected by tarpc's in-process channel, the
/// server on its own thread.
pub(super) fn channel() -> (TarpcEcho, ServerThread) {
    let (client_transport, server_transport) = tarpc::transport::channel::unbounded();
    let server = ServerThread::spawn("tarpc-channel-server", move || {
        serve_connection(server_transport)
    });
    let client = EchoServiceClient::new(client::Config::default(), client_transport).spawn();
    (TarpcEcho { client }, server)
}

/// Answers the requests of one connection, each in its own task (tarpc's
/// way of handling them concurrently), until the client goes away.
async fn serve_connection<T>(transport: T)
where
    T: Transport<Response<EchoServiceResponse>, ClientMessage<EchoServiceRequest>> + Send + 'static,
{
    let mut responses = pin!(BaseChannel::with_defaults(transport).execute(EchoServer.serve()));
    while let Some(response) = responses.next().await {
        tokio::spawn(response);
    }
}
