//! tonic as a subject of the comparison: gRPC unary calls (HTTP/2,
//! protobuf) over a Unix socket, through the client and server code that
//! tonic-build generates (see `benches/build.rs`).

use std::path::Path;

use bytes::Bytes;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Request, Response, Status};

use self::generated::echo_client::EchoClient;
pub(super) use self::generated::echo_server;
use self::generated::echo_server::EchoServer;
use super::{BoxError, MAX_MESSAGE};
use crate::{Echo, MakeVectors};

/// The service code tonic-build generates, left as it is (its modules are
/// `pub`, in a private module).
#[allow(unreachable_pub)]
pub(super) mod generated {
    include!(concat!(env!("OUT_DIR"), "/workerbus.bench.Echo.rs"));
}

/// The request and the response of `/workerbus.bench.Echo/Echo`: what
/// prost-build makes of `message EchoMessage { bytes payload = 1; }` when
/// told to use `Bytes` for `bytes` fields.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct EchoMessage {
    /// The payload, sent back as it came.
    #[prost(bytes = "bytes", tag = "1")]
    pub(crate) payload: Bytes,
}

/// The request of `/workerbus.bench.Echo/Make`, as prost-build makes
/// `message MakeRequest { uint32 count = 1; }`.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub(crate) struct MakeRequest {
    /// How many floats to make.
    #[prost(uint32, tag = "1")]
    pub(crate) count: u32,
}

/// Its response, as prost-build makes
/// `message MakeReply { repeated float values = 1; }` (packed, as proto3's
/// repeated scalars are).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct MakeReply {
    /// The floats, made for the call.
    #[prost(float, repeated, tag = "1")]
    pub(crate) values: Vec<f32>,
}

/// A tonic client of the echo service.
#[derive(Clone, Debug)]
pub struct TonicEcho {
    client: EchoClient<Channel>,
}

impl TonicEcho {
    /// A client over `channel`, accepting messages of up to 16 MiB.
    pub(super) fn new(channel: Channel) -> TonicEcho {
        let client = EchoClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        TonicEcho { client }
    }
}

impl Echo for TonicEcho {
    async fn echo(&self, payload: Bytes) -> Bytes {
        // A tonic call takes `&mut self`: concurrent calls each use a clone
        // of the client, which shares its channel (as tonic's docs advise).
        let mut client = self.client.clone();
        match client.echo(EchoMessage { payload }).await {
            Ok(reply) => reply.into_inner().payload,
            Err(status) => panic!("tonic echo: {status}"),
        }
    }
}

impl MakeVectors for TonicEcho {
    async fn make(&self, count: u32) -> Vec<f32> {
        let mut client = self.client.clone();
        match client.make(MakeRequest { count }).await {
            Ok(reply) => reply.into_inner().values,
            Err(status) => panic!("tonic make: {status}"),
        }
    }
}

/// Connects to the echo server on `socket` (tonic's own Unix-socket
/// connector, named by a `unix:` URI).
pub(super) async fn connect(socket: &Path) -> Result<TonicEcho, tonic::transport::Error> {
    let path = socket.to_str().expect("a UTF-8 socket path");
    let channel = Endpoint::from_shared(format!("unix:{path}"))?
        .connect()
        .await?;
    Ok(TonicEcho::new(channel))
}

/// Serves the echo service on `socket` until the task is dropped.
pub(super) async fn serve(socket: &Path) -> Result<(), BoxError> {
    let listener = UnixListener::bind(socket)?;
    let service = EchoServer::new(EchoService)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    Server::builder()
        .add_service(service)
        .serve_with_incoming(UnixListenerStream::new(listener))
        .await?;
    Ok(())
}

/// The echo service: the request's payload is the response's.
#[derive(Clone, Copy, Debug)]
pub(super) struct EchoService;

#[tonic::async_trait]
impl generated::echo_server::Echo for EchoService {
    async fn echo(&self, request: Request<EchoMessage>) -> Result<Response<EchoMessage>, Status> {
        Ok(Response::new(request.into_inner()))
    }

    async fn make(&self, request: Request<MakeRequest>) -> Result<Response<MakeReply>, Status> {
        let values = crate::fresh_vectors(request.into_inner().count);
        Ok(Response::new(MakeReply { values }))
    }
}
