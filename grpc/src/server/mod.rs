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
use std::future::Future;
use std::sync::Arc;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::util::BoxCloneSyncService;
use workerbus::{
    Channel, Dispatch, MemoryTransport, MethodName, MethodSchema, ServeOptions, ServiceSchema,
    SupervisedWorker, serve_transport,
};

use self::router::{HEALTH, REFLECTION_V1, REFLECTION_V1ALPHA, Router, StandardService};
use self::worker_service::WorkerService;
use crate::executor::BoxingExecutor;
use crate::tls::ServerTls;

mod calls;
mod router;
mod worker_service;

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
    max_error_resets: usize,
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
                max_error_resets: DEFAULT_MAX_ERROR_RESETS,
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

    /// How many streams a client may have reset, at one time, before the
    /// server has accepted them (default [`DEFAULT_MAX_PENDING_RESETS`]):
    /// past it, the connection is closed with `GOAWAY` `ENHANCE_YOUR_CALM`,
    /// the bound on HTTP/2's rapid-reset attack. Streams the server has
    /// begun serving do not count.
    pub fn max_pending_resets(mut self, streams: usize) -> GrpcServer {
        self.limits.max_pending_resets = streams;
        self
    }

    /// How many streams the server may reset for the client's protocol
    /// errors on them (invalid frames, say), over a connection's life,
    /// before it closes the connection with `ENHANCE_YOUR_CALM` (default
    /// [`DEFAULT_MAX_ERROR_RESETS`]): the bound on a client that provokes
    /// resets instead of sending them.
    pub fn max_error_resets(mut self, streams: usize) -> GrpcServer {
        self.limits.max_error_resets = streams;
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
            .max_local_error_reset_streams(self.limits.max_error_resets);
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

/// The default cap on connections served at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// The default cap on the calls one connection has open at once.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 256;

/// The default largest header block of a call: 16 KiB (gRPC's metadata is
/// at most 8 KiB, `workerbus::MAX_METADATA_LEN`).
pub const DEFAULT_MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;

/// Streams a client may have reset, at one time, before the server has
/// accepted them, per connection, before the connection is closed: the
/// HTTP/2 rapid-reset attack's bound.
pub const DEFAULT_MAX_PENDING_RESETS: usize = 20;

/// Streams the server may reset for the client's protocol errors on them,
/// over a connection's life, before the connection is closed.
pub const DEFAULT_MAX_ERROR_RESETS: usize = 1000;

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
