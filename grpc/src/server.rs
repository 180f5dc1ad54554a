//! [`GrpcServer`]: workerbus services served over gRPC.
//!
//! The server is a host that forwards: each gRPC call becomes one call on a
//! [`Channel`] (to handlers served in this process over a memory transport,
//! or to an existing worker's channel, such as a supervised process
//! worker's), its request bytes passed undecoded, so deadlines, limits,
//! middleware, cancellation and panic isolation are the core's. Routing is
//! by the standard path, `/<package>.<Service>/<Rpc>`, which every
//! generated schema records; a path no service has is `UNIMPLEMENTED`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_core::Stream;
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::executor::BoxingExecutor;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use prost::Message;
use tokio::net::TcpListener;
use tonic::codec::CompressionEncoding;
use tonic::server::Grpc;
use tonic::{Request, Response, Streaming};
use tower::Service;
use tower::util::BoxCloneSyncService;
use workerbus::{
    ByteStream, CallOptions, Channel, Dispatch, MemoryTransport, MethodKind, MethodName,
    MethodSchema, ResponseMetadata, ServeOptions, ServiceSchema, SupervisedWorker, serve_transport,
};

use crate::codec::BytesCodec;
use crate::latch::Latch;
use crate::map::{
    decode_timeout, decode_traceparent, error_to_tonic, metadata_from, metadata_into, names,
    oversize, too_large,
};
use crate::tls::ServerTls;
use crate::worker::{self, Event, HealthReport, HealthRequest, SubscribeRequest};

/// The largest message the server reads or writes unless told otherwise:
/// the core's largest frame ([`workerbus::DEFAULT_MAX_FRAME_LENGTH`], 16 MiB),
/// rather than the 4 MiB tonic and grpcio default to.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = workerbus::DEFAULT_MAX_FRAME_LENGTH;

/// A gRPC server for workerbus services.
///
/// ```no_run
/// # async fn run(
/// #     server: impl workerbus::Dispatch,
/// #     supervised: workerbus::Channel,
/// #     schema: &'static workerbus::ServiceSchema,
/// # ) -> Result<(), Box<dyn std::error::Error>> {
/// use workerbus_grpc::GrpcServer;
///
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:50051").await?;
/// GrpcServer::new()
///     .add_service(server)                // handlers in this process
///     .add_channel(schema, supervised)    // or a worker's channel
///     .serve(listener)
///     .await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct GrpcServer {
    routes: HashMap<&'static str, Route>,
    services: Vec<&'static ServiceSchema>,
    /// The channel of each service, by its full name.
    channels: HashMap<&'static str, Channel>,
    /// Every distinct channel served, whose workers' events are published.
    workers: Vec<Channel>,
    /// The events services published.
    events: Vec<&'static ServiceSchema>,
    /// Services of supervised workers, whose health follows the worker's.
    supervised: Vec<(&'static str, SupervisedWorker)>,
    serve_options: ServeOptions,
    max_message_size: usize,
    descriptors: Vec<&'static [u8]>,
    tls: Option<Arc<rustls::ServerConfig>>,
    handshake_timeout: std::time::Duration,
    token: Option<Arc<str>>,
    limits: Limits,
}

/// The listener's limits.
#[derive(Clone, Copy, Debug)]
struct Limits {
    max_connections: usize,
    max_concurrent_streams: u32,
    max_header_list_size: u32,
    max_pending_resets: usize,
}

/// Where one method's calls go.
#[derive(Clone, Debug)]
struct Route {
    method: &'static MethodSchema,
    name: MethodName,
    channel: Channel,
}

impl Default for GrpcServer {
    fn default() -> GrpcServer {
        GrpcServer::new()
    }
}

impl GrpcServer {
    /// A server with no services yet.
    pub fn new() -> GrpcServer {
        GrpcServer {
            routes: HashMap::new(),
            services: Vec::new(),
            channels: HashMap::new(),
            workers: Vec::new(),
            events: Vec::new(),
            supervised: Vec::new(),
            serve_options: ServeOptions::new(),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            descriptors: Vec::new(),
            tls: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            token: None,
            limits: Limits {
                max_connections: DEFAULT_MAX_CONNECTIONS,
                max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
                max_header_list_size: DEFAULT_MAX_HEADER_LIST_SIZE,
                max_pending_resets: DEFAULT_MAX_PENDING_RESETS,
            },
        }
    }

    /// Describes the services served to reflection clients (`grpcurl list`,
    /// `grpcurl describe`), from an encoded `FileDescriptorSet`: the one
    /// `workerbus-build` writes, `workerbus::include_descriptor_set!()`.
    /// Only the services this server serves are listed. Fails if the bytes
    /// are not a descriptor set.
    ///
    /// ```ignore
    /// // Needs a build script's OUT_DIR.
    /// let server = GrpcServer::new()
    ///     .add_service(EmbedderServer::new(MyEmbedder))
    ///     .add_descriptors(workerbus::include_descriptor_set!())?;
    /// ```
    pub fn add_descriptors(
        mut self,
        descriptors: &'static [u8],
    ) -> Result<GrpcServer, tonic_reflection::server::Error> {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(descriptors)
            .build_v1()?;
        self.descriptors.push(descriptors);
        Ok(self)
    }

    /// Serves over TLS (and, with [`ServerTls::client_ca`], mutual TLS):
    /// clients connect to `https://` endpoints.
    pub fn tls(mut self, tls: ServerTls) -> GrpcServer {
        // Checked when the ServerTls was made.
        self.tls = tls.config().ok();
        self
    }

    /// How many connections are served at once (default
    /// [`DEFAULT_MAX_CONNECTIONS`]); one more is closed as soon as it is
    /// accepted, until another ends.
    pub fn max_connections(mut self, connections: usize) -> GrpcServer {
        self.limits.max_connections = connections.max(1);
        self
    }

    /// How many calls a connection may have open at once (HTTP/2's
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`; default
    /// [`DEFAULT_MAX_CONCURRENT_STREAMS`]): a client waits for a free one
    /// before it opens another.
    pub fn max_concurrent_streams(mut self, streams: u32) -> GrpcServer {
        self.limits.max_concurrent_streams = streams.max(1);
        self
    }

    /// The largest header block a call may send, in bytes (HTTP/2's
    /// `SETTINGS_MAX_HEADER_LIST_SIZE`; default
    /// [`DEFAULT_MAX_HEADER_LIST_SIZE`]); a larger one is refused.
    pub fn max_header_list_size(mut self, bytes: u32) -> GrpcServer {
        self.limits.max_header_list_size = bytes;
        self
    }

    /// How long a connection may take to send HTTP/2's preface (or, over
    /// TLS, to complete its handshake) (default
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`]); one that takes longer, or sends
    /// something else, is closed.
    pub fn handshake_timeout(mut self, timeout: std::time::Duration) -> GrpcServer {
        self.handshake_timeout = timeout;
        self
    }

    /// Requires every call (but health checks, which probes make without
    /// credentials) to carry `authorization: Bearer <token>`: for
    /// deployments without mutual TLS. A call without it, or with another
    /// token, is answered `UNAUTHENTICATED` (compared in constant time);
    /// the header does not reach the handlers' metadata.
    pub fn require_token(mut self, token: &str) -> GrpcServer {
        self.token = Some(Arc::from(token));
        self
    }

    /// The options of the serve loops [`add_service`](Self::add_service)
    /// starts after this (concurrency caps, worker middleware...).
    pub fn serve_options(mut self, options: ServeOptions) -> GrpcServer {
        self.serve_options = options;
        self
    }

    /// The largest message read or written, in bytes (default
    /// [`DEFAULT_MAX_MESSAGE_SIZE`]); a larger one fails its call with
    /// `RESOURCE_EXHAUSTED`.
    pub fn max_message_size(mut self, max: usize) -> GrpcServer {
        self.max_message_size = max;
        self
    }

    /// Serves `service`'s methods (a generated `<Svc>Server`, or several in
    /// `workerbus::Services`) from handlers in this process, behind a serve
    /// loop of its own over a memory transport. Must be called within a
    /// Tokio runtime, which runs that loop.
    pub fn add_service<S: Dispatch>(self, service: S) -> GrpcServer {
        let schemas = service.schemas();
        let (host, worker) = MemoryTransport::pair();
        let options = self.serve_options.clone();
        tokio::spawn(async move {
            if let Err(error) = serve_transport(worker, service, options).await {
                tracing::warn!(%error, "workerbus-grpc: an in-process serve loop failed");
            }
        });
        let channel = Channel::new(host);
        schemas.into_iter().fold(self, |server, schema| {
            server.add_channel(schema, channel.clone())
        })
    }

    /// Serves `schema`'s methods by calling them on `channel`: a worker's
    /// channel, e.g. a supervised process worker's, which this node keeps
    /// supervising; the channel's middleware (`Metrics`, `Logging`) sees
    /// every call.
    pub fn add_channel(mut self, schema: &'static ServiceSchema, channel: Channel) -> GrpcServer {
        for method in schema.methods() {
            self.routes.insert(
                method.grpc_path(),
                Route {
                    method,
                    name: MethodName::from_static(method.name()),
                    channel: channel.clone(),
                },
            );
        }
        self.services.push(schema);
        self.channels.insert(schema.name(), channel.clone());
        if !self.workers.iter().any(|worker| worker.is_same(&channel)) {
            self.workers.push(channel);
        }
        self
    }

    /// Serves `schema`'s methods on a supervised worker's channel, as
    /// [`add_channel`](Self::add_channel) does, and makes the service's
    /// `grpc.health.v1` status follow the worker: `SERVING` while it runs,
    /// `NOT_SERVING` while it restarts and once it is given up (checked
    /// every 100 ms), so a load balancer's probes send calls elsewhere
    /// meanwhile.
    pub fn add_supervised(
        mut self,
        schema: &'static ServiceSchema,
        worker: &SupervisedWorker,
    ) -> GrpcServer {
        self.supervised.push((schema.name(), worker.clone()));
        self.add_channel(schema, worker.channel())
    }

    /// Publishes the events of `schema`'s service (an events service, e.g.
    /// `indexer_events_service::SCHEMA`) that the workers behind this
    /// server send, to gRPC clients that subscribe
    /// (`workerbus.v1.Worker/Subscribe`, `docs/PROTOCOL.md` 10.5), such as
    /// a [`GrpcDriver`](crate::GrpcDriver) given the same schema with
    /// [`events`](crate::GrpcDriver::events).
    pub fn add_events(mut self, schema: &'static ServiceSchema) -> GrpcServer {
        self.events.push(schema);
        self
    }

    /// Serves on `listener` until the process ends.
    pub async fn serve(self, listener: TcpListener) {
        self.serve_with_shutdown(listener, std::future::pending())
            .await;
    }

    /// Serves on `listener` until `signal` completes, then stops taking
    /// connections and calls, and returns once the calls in flight have
    /// ended.
    ///
    /// Connections are served by hyper, the HTTP/2 implementation tonic
    /// runs on, rather than by tonic's server: tonic's server ends a call
    /// whose `grpc-timeout` passes with `CANCELLED` by itself, where gRPC
    /// (and workerbus) say `DEADLINE_EXCEEDED`; here the call's deadline is
    /// the core's alone.
    pub async fn serve_with_shutdown(
        self,
        listener: TcpListener,
        signal: impl Future<Output = ()>,
    ) {
        let (health, health_server) = tonic_health::server::health_reporter();
        health
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        for service in &self.services {
            health
                .set_service_status(service.name(), tonic_health::ServingStatus::Serving)
                .await;
        }
        let mut watchers = tokio::task::JoinSet::new();
        for (service, worker) in &self.supervised {
            watchers.spawn(follow_health(health.clone(), service, worker.clone()));
        }
        let mut standard: Vec<(&'static str, StandardService)> =
            vec![(HEALTH, BoxCloneSyncService::new(health_server))];
        if !self.descriptors.is_empty() {
            let reflection = |itself: &str| {
                let builder =
                    tonic_reflection::server::Builder::configure().with_service_name(itself);
                let builder = self
                    .descriptors
                    .iter()
                    .fold(builder, |builder, set| {
                        builder.register_encoded_file_descriptor_set(set)
                    })
                    .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                    .with_service_name("grpc.health.v1.Health");
                self.services.iter().fold(builder, |builder, service| {
                    builder.with_service_name(service.name())
                })
            };
            // Checked when the descriptors were added.
            if let (Ok(v1), Ok(v1alpha)) = (
                reflection("grpc.reflection.v1.ServerReflection").build_v1(),
                reflection("grpc.reflection.v1alpha.ServerReflection").build_v1alpha(),
            ) {
                standard.push((REFLECTION_V1, BoxCloneSyncService::new(v1)));
                standard.push((REFLECTION_V1ALPHA, BoxCloneSyncService::new(v1alpha)));
            }
        }
        let router = Router {
            worker: Arc::new(WorkerService {
                services: self.services.clone(),
                channels: self.channels,
                workers: self.workers,
                events: self.events,
            }),
            routes: Arc::new(self.routes),
            standard: Arc::new(standard),
            max_message_size: self.max_message_size,
            token: self.token.clone(),
        };
        let acceptor = self.tls.clone().map(tokio_rustls::TlsAcceptor::from);
        let mut http2 = hyper::server::conn::http2::Builder::new(BoxingExecutor);
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.limits.max_concurrent_streams)
            .max_header_list_size(self.limits.max_header_list_size)
            .max_pending_accept_reset_streams(self.limits.max_pending_resets)
            .max_local_error_reset_streams(DEFAULT_MAX_PENDING_RESETS * 50);
        let connections = Arc::new(tokio::sync::Semaphore::new(self.limits.max_connections));
        let graceful = GracefulShutdown::new();
        let mut signal = std::pin::pin!(signal);
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = &mut signal => break,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of descriptors or memory: pause rather than spin.
                    tracing::warn!(%error, "workerbus-grpc: accepting a connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
                tracing::warn!(
                    max = self.limits.max_connections,
                    "workerbus-grpc: closing a connection over the server's cap"
                );
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let service = TowerToHyperService::new(router.clone());
            let watcher = graceful.watcher();
            let http2 = http2.clone();
            let acceptor = acceptor.clone();
            let handshake_timeout = self.handshake_timeout;
            tokio::spawn(async move {
                let _permit = permit;
                let ended = match acceptor {
                    None => {
                        if let Err(why) = preface(&stream, handshake_timeout).await {
                            tracing::debug!("workerbus-grpc: closing a connection: {why}");
                            return;
                        }
                        let connection = http2.serve_connection(TokioIo::new(stream), service);
                        watcher.watch(connection).await
                    }
                    Some(acceptor) => {
                        let stream = match tokio::time::timeout(
                            handshake_timeout,
                            acceptor.accept(stream),
                        )
                        .await
                        {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(error)) => {
                                tracing::debug!(%error, "workerbus-grpc: a TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!("workerbus-grpc: a TLS handshake took too long");
                                return;
                            }
                        };
                        let connection = http2.serve_connection(TokioIo::new(stream), service);
                        watcher.watch(connection).await
                    }
                };
                if let Err(error) = ended {
                    tracing::debug!(%error, "workerbus-grpc: a connection ended with an error");
                }
            });
        }
        drop(listener);
        graceful.shutdown().await;
    }
}

/// Waits, within `deadline`, until `stream` has sent HTTP/2's preface
/// (without taking it: hyper reads it).
async fn preface(
    stream: &tokio::net::TcpStream,
    deadline: std::time::Duration,
) -> Result<(), String> {
    let mut buffer = [0u8; PREFACE.len()];
    let waited = tokio::time::timeout(deadline, async {
        loop {
            let seen = stream.peek(&mut buffer).await?;
            if seen == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the peer closed",
                ));
            }
            if seen >= PREFACE.len() || buffer[..seen] != PREFACE[..seen] {
                return Ok(seen);
            }
            // Part of the preface: the rest is on its way (a peer that
            // trickles it is bounded by the deadline).
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    match waited {
        Err(_) => Err(format!(
            "no HTTP/2 preface within {} ms",
            deadline.as_millis()
        )),
        Ok(Err(error)) => Err(format!("reading the preface: {error}")),
        Ok(Ok(seen)) if buffer[..seen] == PREFACE[..seen] && seen == PREFACE.len() => Ok(()),
        Ok(Ok(_)) => Err("the peer did not send HTTP/2's preface".to_owned()),
    }
}

/// Whether `presented` is `Bearer <token>`, compared in constant time (for
/// a given length).
fn bearer_matches(presented: Option<&http::HeaderValue>, token: &str) -> bool {
    let Some(presented) = presented else {
        return false;
    };
    let expected = format!("Bearer {token}");
    let (a, b) = (presented.as_bytes(), expected.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// The default cap on connections served at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// The default cap on the calls one connection has open at once.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 256;

/// The default largest header block of a call: 16 KiB (gRPC's metadata is
/// at most 8 KiB, `workerbus::MAX_METADATA_LEN`).
pub const DEFAULT_MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;

/// Streams a client may reset before the server has accepted them, per
/// connection, before the connection is closed: the HTTP/2 rapid-reset
/// attack's bound.
pub const DEFAULT_MAX_PENDING_RESETS: usize = 20;

/// HTTP/2's client connection preface (RFC 9113, 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The default time a connection may take to send its preface or complete
/// its TLS handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How often a supervised worker's state is read for its health status.
const HEALTH_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Keeps `service`'s health status at the supervised `worker`'s state until
/// the worker is down for good (then `NOT_SERVING`).
async fn follow_health(
    reporter: tonic_health::server::HealthReporter,
    service: &'static str,
    worker: SupervisedWorker,
) {
    let mut reported = None;
    loop {
        let down = worker.is_down();
        let status = if worker.is_running() && !down {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        if reported != Some(status) {
            reporter.set_service_status(service, status).await;
            reported = Some(status);
        }
        if down {
            return;
        }
        tokio::time::sleep(HEALTH_POLL).await;
    }
}

/// The path prefixes of the standard services the server adds.
const HEALTH: &str = "/grpc.health.v1.Health/";
const REFLECTION_V1: &str = "/grpc.reflection.v1.ServerReflection/";
const REFLECTION_V1ALPHA: &str = "/grpc.reflection.v1alpha.ServerReflection/";

/// A standard service (health, reflection), as tonic generates them.
type StandardService = BoxCloneSyncService<
    http::Request<hyper::body::Incoming>,
    http::Response<tonic::body::Body>,
    Infallible,
>;

/// The tower service that routes every gRPC call by its path.
#[derive(Clone)]
struct Router {
    worker: Arc<WorkerService>,
    routes: Arc<HashMap<&'static str, Route>>,
    /// Health and reflection, by path prefix.
    standard: Arc<Vec<(&'static str, StandardService)>>,
    max_message_size: usize,
    /// The bearer token every call but health checks must carry, if any.
    token: Option<Arc<str>>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
type ItemStream = Pin<Box<dyn Stream<Item = Result<Bytes, tonic::Status>> + Send + 'static>>;

impl Service<http::Request<hyper::body::Incoming>> for Router {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<hyper::body::Incoming>) -> Self::Future {
        if let Some(token) = &self.token
            && !request.uri().path().starts_with(HEALTH)
        {
            let presented = request.headers_mut().remove(http::header::AUTHORIZATION);
            if !bearer_matches(presented.as_ref(), token) {
                return Box::pin(async {
                    let status = tonic::Status::unauthenticated(
                        "this server requires a valid bearer token (authorization: Bearer ...)",
                    );
                    Ok(status.into_http())
                });
            }
        }
        let path = request.uri().path();
        if let Some((_, service)) = self
            .standard
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix))
        {
            let mut service = service.clone();
            return Box::pin(async move { service.call(request).await });
        }
        if path.starts_with(worker::PREFIX) {
            let worker = Arc::clone(&self.worker);
            return Box::pin(async move { Ok(worker.call(request).await) });
        }
        let Some(route) = self.routes.get(path).cloned() else {
            let path = request.uri().path().to_owned();
            return Box::pin(async move {
                let status = tonic::Status::unimplemented(format!("no service serves {path}"));
                Ok(status.into_http())
            });
        };
        // tonic's decoder takes a request body that fails with `CANCEL` (the
        // caller's reset) for one that ended: it must not reach the worker
        // as `END`.
        let request = request.map(Unended);
        // Compressed when the caller asks, with gzip or zstd; never else.
        let mut grpc = Grpc::new(BytesCodec)
            .max_decoding_message_size(self.max_message_size)
            .max_encoding_message_size(self.max_message_size)
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Zstd)
            .send_compressed(CompressionEncoding::Gzip)
            .send_compressed(CompressionEncoding::Zstd);
        // A future per call shape, each boxed at its own size: one future
        // for all five would be as large as the largest, and moved in full
        // on every call.
        let route = Arc::new(route);
        let method = route.name.clone();
        match route.method.kind() {
            MethodKind::Unary => Box::pin(async move {
                let call = tower::service_fn(move |request| unary(Arc::clone(&route), request));
                Ok(resource_exhausted(grpc.unary(call, request).await, &method))
            }),
            MethodKind::OneWay => Box::pin(async move {
                let call = tower::service_fn(move |request| one_way(Arc::clone(&route), request));
                Ok(resource_exhausted(grpc.unary(call, request).await, &method))
            }),
            MethodKind::ServerStreaming => Box::pin(async move {
                let call =
                    tower::service_fn(move |request| server_stream(Arc::clone(&route), request));
                let response = grpc.server_streaming(call, request).await;
                Ok(resource_exhausted(response, &method))
            }),
            MethodKind::ClientStreaming => Box::pin(async move {
                let call =
                    tower::service_fn(move |request| client_stream(Arc::clone(&route), request));
                let response = grpc.client_streaming(call, request).await;
                Ok(resource_exhausted(response, &method))
            }),
            MethodKind::BidiStreaming => Box::pin(async move {
                let call =
                    tower::service_fn(move |request| bidi_stream(Arc::clone(&route), request));
                Ok(resource_exhausted(
                    grpc.streaming(call, request).await,
                    &method,
                ))
            }),
            _ => {
                let status = tonic::Status::unimplemented(format!(
                    "{method} is of a kind this server cannot serve"
                ));
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

/// A gRPC call's options as the core takes them: the remaining
/// `grpc-timeout` (none without it: gRPC's calls wait as long as their
/// caller does), its metadata and trace, its attempt number (one more than
/// `grpc-previous-rpc-attempts`), and no retry.
fn call_options<T>(
    request: &Request<T>,
    answered: &ResponseMetadata,
) -> Result<CallOptions, tonic::Status> {
    let headers = request.metadata();
    let mut options = CallOptions::new()
        .retries(0)
        .response_metadata(answered)
        .metadata(metadata_from(headers).map_err(error_to_tonic)?);
    let http_headers: &http::HeaderMap = headers.as_ref();
    options = match http_headers.get(names::GRPC_TIMEOUT) {
        None => options.no_timeout(),
        Some(value) => {
            let timeout = value
                .to_str()
                .ok()
                .and_then(decode_timeout)
                .ok_or_else(|| tonic::Status::invalid_argument("grpc-timeout is malformed"))?;
            options.timeout(timeout)
        }
    };
    // Advisory, as in gRPC: a malformed count is ignored.
    let previous = http_headers
        .get(names::GRPC_PREVIOUS_ATTEMPTS)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u32>().ok());
    if let Some(previous) = previous {
        options = options.attempt(previous.saturating_add(1));
    }
    let trace = http_headers
        .get(names::TRACEPARENT)
        .and_then(|value| value.to_str().ok())
        .and_then(decode_traceparent);
    if let Some(trace) = trace {
        options = options.trace(trace);
    }
    Ok(options)
}

/// A call's end as gRPC's: the response with the handler's response
/// metadata (as headers), or the status of its failure with them (as
/// trailers).
fn reply<T>(
    outcome: Result<T, workerbus::Error>,
    answered: &ResponseMetadata,
) -> Result<Response<T>, tonic::Status> {
    match outcome {
        Ok(message) => {
            let mut response = Response::new(message);
            metadata_into(&answered.get(), response.metadata_mut());
            Ok(response)
        }
        Err(error) => Err(failure(error, answered)),
    }
}

/// A failed call's status, with the handler's response metadata.
fn failure(error: workerbus::Error, answered: &ResponseMetadata) -> tonic::Status {
    let mut status = error_to_tonic(error);
    metadata_into(&answered.get(), status.metadata_mut());
    status
}

/// A worker's response stream as the body of a gRPC response: the handler's
/// response metadata, which arrives with its answer, goes in the trailers.
fn item_stream(items: ByteStream, answered: &ResponseMetadata) -> ItemStream {
    Box::pin(Items::new(items, answered.clone()))
}

async fn unary(
    route: Arc<Route>,
    request: Request<Bytes>,
) -> Result<Response<Bytes>, tonic::Status> {
    let answered = ResponseMetadata::new();
    let options = call_options(&request, &answered)?;
    let outcome = (route.channel)
        .call_bytes(&route.name, request.into_inner(), &options)
        .await;
    reply(outcome, &answered)
}

/// A one-way message is answered `OK` (an empty message) once the worker
/// has it queued; its handler runs detached from the gRPC call.
async fn one_way(
    route: Arc<Route>,
    request: Request<Bytes>,
) -> Result<Response<Bytes>, tonic::Status> {
    let answered = ResponseMetadata::new();
    let options = call_options(&request, &answered)?;
    match (route.channel)
        .post_bytes(&route.name, request.into_inner(), &options)
        .await
    {
        Ok(()) => Ok(Response::new(Bytes::new())),
        Err(error) => Err(error_to_tonic(error)),
    }
}

async fn server_stream(
    route: Arc<Route>,
    request: Request<Bytes>,
) -> Result<Response<ItemStream>, tonic::Status> {
    let answered = ResponseMetadata::new();
    let options = call_options(&request, &answered)?;
    let outcome = (route.channel)
        .server_stream_bytes(&route.name, request.into_inner(), &options)
        .await
        .map(|items| item_stream(items, &answered));
    reply(outcome, &answered)
}

async fn client_stream(
    route: Arc<Route>,
    request: Request<Streaming<Bytes>>,
) -> Result<Response<Bytes>, tonic::Status> {
    let answered = ResponseMetadata::new();
    let options = call_options(&request, &answered)?;
    let refusal = Arc::new(Latch::new());
    let requests = Requests {
        messages: request.into_inner(),
        refusal: Arc::clone(&refusal),
    };
    let call = (route.channel).client_stream_bytes(&route.name, requests, &options);
    tokio::select! {
        outcome = call => reply(outcome, &answered),
        refused = refused(refusal, route.name.clone()) => Err(refused),
    }
}

async fn bidi_stream(
    route: Arc<Route>,
    request: Request<Streaming<Bytes>>,
) -> Result<Response<ItemStream>, tonic::Status> {
    let answered = ResponseMetadata::new();
    let options = call_options(&request, &answered)?;
    let refusal = Arc::new(Latch::new());
    let requests = Requests {
        messages: request.into_inner(),
        refusal: Arc::clone(&refusal),
    };
    let opening = (route.channel).bidi_stream_bytes(&route.name, requests, &options);
    let outcome = tokio::select! {
        opened = opening => opened,
        refused = refused(Arc::clone(&refusal), route.name.clone()) => return Err(refused),
    };
    let refused = Box::pin(refused(refusal, route.name.clone()));
    let outcome = outcome.map(|items| -> ItemStream {
        Box::pin(Items {
            refused: Some(refused),
            ..Items::new(items, answered.clone())
        })
    });
    reply(outcome, &answered)
}

/// A gRPC request stream as the core's: each message's bytes, and its end.
/// A stream that fails (the caller reset it) never ends: its call is
/// cancelled when the caller's reset drops it, so the handler never takes
/// a truncated stream for a whole one. A message over the size limit is
/// reported to `refusal`, which ends the call `RESOURCE_EXHAUSTED`.
struct Requests {
    messages: Streaming<Bytes>,
    refusal: Arc<Latch<(u64, u64)>>,
}

impl Stream for Requests {
    type Item = Bytes;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        match Pin::new(&mut self.messages).poll_next(cx) {
            Poll::Ready(Some(Ok(message))) => Poll::Ready(Some(message)),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(status))) => {
                if let Some(sizes) = oversize(&status) {
                    self.refusal.set(sizes);
                }
                Poll::Pending
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// How a request stream's message over the size limit ends its call.
async fn refused(refusal: Arc<Latch<(u64, u64)>>, method: MethodName) -> tonic::Status {
    let (size, limit) = refusal.wait().await;
    too_large(
        &format!("a request stream message of {method}"),
        size,
        limit,
        "this server",
    )
}

/// A response whose status is tonic's for a message over the size limit
/// (`OUT_OF_RANGE`, in its headers or its trailers), answered
/// `RESOURCE_EXHAUSTED` naming the message and both sizes, as gRPC says.
fn resource_exhausted(
    response: http::Response<tonic::body::Body>,
    method: &MethodName,
) -> http::Response<tonic::body::Body> {
    let (mut parts, body) = response.into_parts();
    rewrite_oversize(&mut parts.headers, "a request message", method);
    let body = tonic::body::Body::new(Oversize {
        body,
        method: method.clone(),
    });
    http::Response::from_parts(parts, body)
}

/// Rewrites a status over the size limit in `headers` (the headers of a
/// trailers-only response, or trailers) as `RESOURCE_EXHAUSTED`.
fn rewrite_oversize(headers: &mut http::HeaderMap, what: &str, method: &MethodName) {
    if headers
        .get(names::GRPC_STATUS)
        .is_none_or(|code| code != "11")
    {
        return;
    }
    let Some(status) = tonic::Status::from_header_map(headers) else {
        return;
    };
    let Some((size, limit)) = oversize(&status) else {
        return;
    };
    let what = format!("{what} of {method}");
    let _ = too_large(&what, size, limit, "this server").add_header(headers);
}

/// A response body whose trailers are checked for a response message over
/// the size limit.
struct Oversize {
    body: tonic::body::Body,
    method: MethodName,
}

impl http_body::Body for Oversize {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, tonic::Status>>> {
        let frame = std::task::ready!(Pin::new(&mut self.body).poll_frame(cx));
        let method = self.method.clone();
        Poll::Ready(frame.map(|frame| {
            frame.map(|frame| match frame.into_trailers() {
                Ok(mut trailers) => {
                    rewrite_oversize(&mut trailers, "a response message", &method);
                    http_body::Frame::trailers(trailers)
                }
                Err(frame) => frame,
            })
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A request body whose failure (the caller's reset, the connection's loss)
/// is not an end: it stays pending, and hyper drops the call as it sees the
/// reset, so the worker gets `CANCEL`, never `END`.
struct Unended(hyper::body::Incoming);

impl http_body::Body for Unended {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        match Pin::new(&mut self.0).poll_frame(cx) {
            Poll::Ready(Some(Err(_))) => Poll::Pending,
            polled => polled,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.0.size_hint()
    }
}

/// A worker's response stream as gRPC's: each item, then the end with the
/// handler's response metadata as trailers, or the call's status.
struct Items {
    items: ByteStream,
    answered: Option<ResponseMetadata>,
    /// Ends the stream if a request stream message passes the size limit.
    refused: Option<Pin<Box<dyn Future<Output = tonic::Status> + Send>>>,
}

impl Items {
    fn new(items: ByteStream, answered: ResponseMetadata) -> Items {
        Items {
            items,
            answered: Some(answered),
            refused: None,
        }
    }
}

impl Stream for Items {
    type Item = Result<Bytes, tonic::Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Some(answered) = &this.answered else {
            return Poll::Ready(None);
        };
        if let Some(refused) = &mut this.refused
            && let Poll::Ready(status) = refused.as_mut().poll(cx)
        {
            this.answered = None;
            return Poll::Ready(Some(Err(status)));
        }
        match std::task::ready!(Pin::new(&mut this.items).poll_next(cx)) {
            Some(Ok(item)) => Poll::Ready(Some(Ok(item))),
            Some(Err(error)) => {
                let status = failure(error, answered);
                this.answered = None;
                Poll::Ready(Some(Err(status)))
            }
            None => {
                let metadata = answered.get();
                this.answered = None;
                if metadata.is_empty() {
                    return Poll::Ready(None);
                }
                // tonic ends a stream with trailers from an `OK` status.
                let mut end = tonic::Status::new(tonic::Code::Ok, "");
                metadata_into(&metadata, end.metadata_mut());
                Poll::Ready(Some(Err(end)))
            }
        }
    }
}

/// `workerbus.v1.Worker`: what the server serves, its workers' events and
/// health (`docs/PROTOCOL.md` 10.5).
struct WorkerService {
    services: Vec<&'static ServiceSchema>,
    channels: HashMap<&'static str, Channel>,
    workers: Vec<Channel>,
    events: Vec<&'static ServiceSchema>,
}

impl WorkerService {
    async fn call(
        self: Arc<Self>,
        request: http::Request<hyper::body::Incoming>,
    ) -> http::Response<tonic::body::Body> {
        let mut grpc = Grpc::new(BytesCodec);
        match request.uri().path() {
            worker::DESCRIBE => {
                let call = tower::service_fn(move |_: Request<Bytes>| {
                    let description = workerbus::describe_services(&self.services);
                    async move { Ok(Response::new(description)) }
                });
                grpc.unary(call, request).await
            }
            worker::HEALTH => {
                let call = tower::service_fn(move |request: Request<Bytes>| {
                    let this = Arc::clone(&self);
                    async move { this.health(request).await }
                });
                grpc.unary(call, request).await
            }
            worker::SUBSCRIBE => {
                let call = tower::service_fn(move |request: Request<Bytes>| {
                    let subscribed = self.subscribe(&request);
                    async move { subscribed }
                });
                grpc.server_streaming(call, request).await
            }
            path => tonic::Status::unimplemented(format!("no service serves {path}")).into_http(),
        }
    }

    async fn health(&self, request: Request<Bytes>) -> Result<Response<Bytes>, tonic::Status> {
        let asked = HealthRequest::decode(request.get_ref().clone())
            .map_err(|error| tonic::Status::invalid_argument(format!("HealthRequest: {error}")))?;
        let Some(channel) = self.channels.get(asked.service.as_str()) else {
            return Err(tonic::Status::not_found(format!(
                "this server does not serve {}",
                asked.service
            )));
        };
        let headers: &http::HeaderMap = request.metadata().as_ref();
        let timeout = headers
            .get(names::GRPC_TIMEOUT)
            .and_then(|value| value.to_str().ok())
            .and_then(decode_timeout)
            .unwrap_or(HEALTH_TIMEOUT);
        let report = channel.health(timeout).await.map_err(error_to_tonic)?;
        Ok(Response::new(
            HealthReport::from(report).encode_to_vec().into(),
        ))
    }

    fn subscribe(&self, request: &Request<Bytes>) -> Result<Response<ItemStream>, tonic::Status> {
        let asked = SubscribeRequest::decode(request.get_ref().clone()).map_err(|error| {
            tonic::Status::invalid_argument(format!("SubscribeRequest: {error}"))
        })?;
        let Some(schema) = self.events.iter().find(|s| s.name() == asked.service) else {
            return Err(tonic::Status::not_found(format!(
                "this server does not publish the events of {}",
                asked.service
            )));
        };
        let subscriptions = self
            .workers
            .iter()
            .map(|worker| worker.subscribe_bytes(schema))
            .collect();
        Ok(Response::new(Box::pin(Events {
            subscriptions,
            next: 0,
        })))
    }
}

/// How long a health report may take when the caller set no deadline.
const HEALTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The events of every worker's subscription, as `Event` messages: each
/// worker's in order, taken in turns.
struct Events {
    subscriptions: Vec<workerbus::Subscription>,
    next: usize,
}

impl Stream for Events {
    type Item = Result<Bytes, tonic::Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let count = this.subscriptions.len();
        let mut ended = 0;
        for offset in 0..count {
            let index = (this.next + offset) % count;
            match this.subscriptions[index].poll_event(cx) {
                Poll::Ready(Some((name, payload))) => {
                    this.next = index + 1;
                    let event = Event {
                        name: name.to_string(),
                        payload,
                    };
                    return Poll::Ready(Some(Ok(event.encode_to_vec().into())));
                }
                Poll::Ready(None) => ended += 1,
                Poll::Pending => {}
            }
        }
        if ended == count {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}
