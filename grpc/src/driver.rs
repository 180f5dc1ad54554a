//! [`GrpcDriver`]: a worker on another machine, reached over gRPC, whose
//! handle gives a [`Channel`] the generated clients use unchanged.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use workerbus::{Channel, ChannelOptions, Error, ExitReason, ServiceSchema, Spawn, Worker};

use crate::client::{GrpcTransport, Shared, describe, routes, subscribe};
use crate::pool::{ConnectConfig, Pool, parse_address};
use crate::server::DEFAULT_MAX_MESSAGE_SIZE;
use crate::tls::ClientTls;

/// The default number of HTTP/2 connections to each endpoint: one
/// connection's frames are read and written by one task at a time, so a
/// busy client spreads its calls over two.
pub const DEFAULT_CONNECTIONS_PER_ENDPOINT: usize = 2;

/// The default time a connection attempt may take (TCP and HTTP/2).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The default interval of the HTTP/2 pings that keep a connection, idle or
/// not, known to be alive.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// The default time a ping may go unanswered before its connection is
/// taken for dead.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The default first delay before an endpoint that could not be reached is
/// tried again; it doubles at each failure in a row.
pub const DEFAULT_RECONNECT_BACKOFF: Duration = Duration::from_secs(1);

/// The default longest delay between two tries of an unreachable endpoint.
pub const DEFAULT_MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(120);

/// How a client compresses its messages (see [`GrpcDriver::compression`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Compression {
    /// gzip: understood by every gRPC implementation.
    Gzip,
    /// zstd: faster, and smaller output, where the peer has it.
    Zstd,
}

impl Compression {
    pub(crate) fn encoding(self) -> tonic::codec::CompressionEncoding {
        match self {
            Compression::Gzip => tonic::codec::CompressionEncoding::Gzip,
            Compression::Zstd => tonic::codec::CompressionEncoding::Zstd,
        }
    }
}

/// Starts clients of workers served over gRPC (by
/// [`GrpcServer`](crate::GrpcServer), or any gRPC server of the same
/// `.proto`): the same generated clients, calls and options as over the
/// thread and process drivers.
///
/// It keeps [`connections_per_endpoint`](Self::connections_per_endpoint)
/// HTTP/2 connections to each endpoint and sends each call on the least
/// busy connection of an endpoint that is up. A connection that ends is
/// replaced at once; an endpoint that cannot be reached is ejected and
/// tried again after a backoff (1 s, doubling up to 2 min). A call whose
/// connection fails under it ends `UNAVAILABLE`, so an idempotent call is
/// retried by its retry policy, on another endpoint; a call the server
/// refused before seeing it (`REFUSED_STREAM`, or after a `GOAWAY`) is sent
/// again at once, idempotent or not.
///
/// ```no_run
/// # async fn run(schema: &'static workerbus::ServiceSchema) -> Result<(), workerbus::Error> {
/// use workerbus_grpc::GrpcDriver;
/// use workerbus::Worker;
///
/// // e.g. EmbedderClient::SCHEMA
/// let remote = GrpcDriver::new("http://10.0.0.7:50051")
///     .endpoint("http://10.0.0.8:50051")
///     .serves(schema)
///     .connect()
///     .await?;
/// let channel = remote.channel(); // EmbedderClient::new(channel)
/// # drop(channel);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct GrpcDriver {
    endpoints: Vec<String>,
    schemas: Vec<&'static ServiceSchema>,
    events: Vec<&'static ServiceSchema>,
    require_schema_check: bool,
    token: Option<String>,
    compression: Option<Compression>,
    config: ConnectConfig,
    max_message_size: usize,
    channel_options: ChannelOptions,
}

impl GrpcDriver {
    /// A driver for the worker at `endpoint`, e.g. `http://10.0.0.7:50051`.
    /// The address is checked by [`connect`](Self::connect).
    pub fn new(endpoint: impl Into<String>) -> GrpcDriver {
        GrpcDriver {
            endpoints: vec![endpoint.into()],
            schemas: Vec::new(),
            events: Vec::new(),
            require_schema_check: false,
            token: None,
            compression: None,
            config: ConnectConfig {
                connections: DEFAULT_CONNECTIONS_PER_ENDPOINT,
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
                keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
                backoff_first: DEFAULT_RECONNECT_BACKOFF,
                backoff_max: DEFAULT_MAX_RECONNECT_BACKOFF,
                tls: None,
                authorization: None,
            },
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            channel_options: ChannelOptions::new(),
        }
    }

    /// Another endpoint serving the same services; calls are spread over
    /// every endpoint that is up.
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> GrpcDriver {
        self.endpoints.push(endpoint.into());
        self
    }

    /// A service the channel calls, by its generated schema (e.g.
    /// `EmbedderClient::SCHEMA`): the driver learns its methods' gRPC
    /// paths and call shapes. A call of a method of no such service fails
    /// with `UNIMPLEMENTED`.
    pub fn serves(mut self, schema: &'static ServiceSchema) -> GrpcDriver {
        self.schemas.push(schema);
        self
    }

    /// Subscribes to the events of `schema`'s service (an events service,
    /// e.g. `indexer_events_service::SCHEMA`) on every endpoint, from
    /// connection on, so that the channel's event streams
    /// (`IndexerEvents::subscribe(&channel)`) get them. The server must
    /// publish them ([`GrpcServer::add_events`](crate::GrpcServer::add_events)).
    /// A subscription whose connection ends is made again on the next one;
    /// events sent in between are lost, as events nobody subscribed to are.
    pub fn events(mut self, schema: &'static ServiceSchema) -> GrpcDriver {
        self.events.push(schema);
        self
    }

    /// Refuses a server that cannot describe what it serves. By default,
    /// [`connect`](Self::connect) compares the schema fingerprints a
    /// workerbus server describes with those of [`serves`](Self::serves),
    /// and accepts a plain gRPC server, which cannot describe them, with a
    /// warning that the schemas were not checked.
    pub fn require_schema_check(mut self) -> GrpcDriver {
        self.require_schema_check = true;
        self
    }

    /// How many HTTP/2 connections to keep open to each endpoint (default
    /// [`DEFAULT_CONNECTIONS_PER_ENDPOINT`], at least 1).
    pub fn connections_per_endpoint(mut self, connections: usize) -> GrpcDriver {
        self.config.connections = connections.max(1);
        self
    }

    /// How long one connection attempt may take (default
    /// [`DEFAULT_CONNECT_TIMEOUT`]).
    pub fn connect_timeout(mut self, timeout: Duration) -> GrpcDriver {
        self.config.connect_timeout = timeout;
        self
    }

    /// The HTTP/2 pings that tell a dead connection from a quiet one: one
    /// every `interval`, and a connection whose ping is not answered within
    /// `timeout` is closed and replaced (defaults
    /// [`DEFAULT_KEEPALIVE_INTERVAL`], [`DEFAULT_KEEPALIVE_TIMEOUT`]).
    pub fn keepalive(mut self, interval: Duration, timeout: Duration) -> GrpcDriver {
        self.config.keepalive_interval = interval;
        self.config.keepalive_timeout = timeout;
        self
    }

    /// The delay before an unreachable endpoint is tried again: `first`,
    /// doubling at each failure in a row up to `max` (defaults
    /// [`DEFAULT_RECONNECT_BACKOFF`], [`DEFAULT_MAX_RECONNECT_BACKOFF`]).
    pub fn reconnect_backoff(mut self, first: Duration, max: Duration) -> GrpcDriver {
        self.config.backoff_first = first;
        self.config.backoff_max = max.max(first);
        self
    }

    /// The largest message sent or received, in bytes (default
    /// [`DEFAULT_MAX_MESSAGE_SIZE`], 16 MiB); a larger one fails its call
    /// with `RESOURCE_EXHAUSTED`.
    pub fn max_message_size(mut self, max: usize) -> GrpcDriver {
        self.max_message_size = max;
        self
    }

    /// Connects to `https://` endpoints over TLS (mutual TLS if `tls` has
    /// an identity). Every endpoint must then be `https://`.
    pub fn tls(mut self, tls: ClientTls) -> GrpcDriver {
        self.config.tls = Some(tls);
        self
    }

    /// Sends `authorization: Bearer <token>` with every call, for a server
    /// that [requires a token](crate::GrpcServer::require_token). A token
    /// that is not a valid header value is refused by
    /// [`connect`](Self::connect).
    pub fn token(mut self, token: &str) -> GrpcDriver {
        self.token = Some(token.to_owned());
        self
    }

    /// Compresses every request message with `compression`, and asks the
    /// server to compress its responses the same way (a workerbus server
    /// does; any gRPC server may). Off by default: messages of embeddings
    /// and other numbers gain little, and it costs time on both ends.
    pub fn compression(mut self, compression: Compression) -> GrpcDriver {
        self.compression = Some(compression);
        self
    }

    /// The options of the channels it makes (limits, window, metadata).
    pub fn channel_options(mut self, options: ChannelOptions) -> GrpcDriver {
        self.channel_options = options;
        self
    }

    /// The worker's name, for errors and a supervisor: its endpoints.
    fn name(&self) -> String {
        format!("grpc {}", self.endpoints.join(","))
    }

    /// Connects: opens the connections to every endpoint and returns once
    /// one of them is up, its schemas checked and its event subscriptions
    /// in place. Fails with [`Error::Spawn`] if an address is not
    /// `http://host:port`, if no service was given, or if no endpoint could
    /// be reached (naming each and why); with [`Error::Handshake`] if the
    /// server serves the services differently (naming the methods that
    /// differ), speaks another protocol version, or (with
    /// [`require_schema_check`](Self::require_schema_check)) cannot say.
    pub async fn connect(&self) -> Result<GrpcWorker, Error> {
        let name = self.name();
        let refuse = |reason: String| Error::Spawn {
            worker: name.clone(),
            reason,
            source: None,
        };
        if self.schemas.is_empty() {
            return Err(refuse(
                "it serves no service: name one with serves(<Svc>Client::SCHEMA)".to_owned(),
            ));
        }
        let mut endpoints = Vec::new();
        for address in &self.endpoints {
            let parsed = parse_address(address).map_err(&refuse)?;
            match (parsed.secure, self.config.tls.is_some()) {
                (true, false) => {
                    return Err(refuse(format!(
                        "{address} is https://, and the driver has no TLS: give it .tls(ClientTls::new(ca)?)"
                    )));
                }
                (false, true) => {
                    return Err(refuse(format!(
                        "{address} is http://, and the driver has TLS: name it https://"
                    )));
                }
                _ => {}
            }
            endpoints.push((address.clone(), parsed));
        }
        let mut config = self.config.clone();
        if let Some(token) = &self.token {
            let mut value =
                http::HeaderValue::try_from(format!("Bearer {token}")).map_err(|_| {
                    refuse("the token is not a valid header value (printable ASCII)".to_owned())
                })?;
            value.set_sensitive(true);
            config.authorization = Some(value);
        }
        let pool = Pool::start(endpoints, config);
        if let Err(error) = pool.ready().await {
            pool.close();
            return Err(refuse(error.0));
        }
        if let Err(error) = self.check_schemas(&pool, &name).await {
            pool.close();
            return Err(error);
        }
        let transport = GrpcTransport::new(
            Arc::clone(&pool),
            routes(&self.schemas),
            self.max_message_size,
            self.schemas[0].name().to_owned(),
            self.compression.map(Compression::encoding),
        );
        let shared = transport.shared();
        let mut subscribed = Vec::new();
        for index in 0..pool.endpoints() {
            for schema in &self.events {
                let (done, first) = tokio::sync::oneshot::channel();
                tokio::spawn(subscribe(Arc::clone(&shared), index, schema, done));
                subscribed.push(first);
            }
        }
        let channel = Channel::with_options(transport, self.channel_options.clone());
        // An endpoint still connecting subscribes when it comes up; one up
        // now is subscribed before the first call.
        for first in subscribed {
            let waited = tokio::time::timeout(self.config.connect_timeout, first).await;
            if let Ok(Ok(Err(why))) = waited {
                shared.end();
                return Err(Error::Handshake {
                    worker: name,
                    reason: why,
                });
            }
        }
        let (exit, exited) = watch::channel(None);
        Ok(GrpcWorker {
            name,
            channel,
            pool,
            shared,
            exit: Arc::new(exit),
            exited,
        })
    }
}

impl GrpcDriver {
    /// Asks the server what it serves (`workerbus.v1.Worker/Describe`) and
    /// compares it with the schemas this client was built with.
    async fn check_schemas(&self, pool: &Pool, name: &str) -> Result<(), Error> {
        let handshake = |reason: String| Error::Handshake {
            worker: name.to_owned(),
            reason,
        };
        let described = describe(pool, self.config.connect_timeout)
            .await
            .map_err(&handshake)?;
        match described {
            Some(description) => workerbus::check_description(&description, &self.schemas)
                .map_err(&handshake),
            None if self.require_schema_check => Err(handshake(
                "the server cannot describe what it serves (it answers no workerbus.v1.Worker/Describe), and this client requires a schema check".to_owned(),
            )),
            None => {
                tracing::warn!(worker = name, "workerbus-grpc: the server cannot describe what it serves; its schemas were not checked");
                Ok(())
            }
        }
    }
}

impl Spawn for GrpcDriver {
    type Worker = GrpcWorker;

    /// Connects, as [`connect`](GrpcDriver::connect): a supervisor's restart
    /// of a remote worker is a reconnection.
    async fn spawn(&self) -> Result<GrpcWorker, Error> {
        self.connect().await
    }
}

/// A connected remote worker (see [`GrpcDriver`]).
///
/// It stays connected while its endpoints come and go (a call finds no
/// endpoint up fails `UNAVAILABLE`); it ends only at [`kill`](Worker::kill)
/// or [`shutdown`](Worker::shutdown), or when the last clone of its
/// channel is dropped. Dropping the handle leaves its channel working.
#[derive(Debug)]
pub struct GrpcWorker {
    name: String,
    channel: Channel,
    pool: Arc<Pool>,
    shared: Arc<Shared>,
    exit: Arc<watch::Sender<Option<ExitReason>>>,
    exited: watch::Receiver<Option<ExitReason>>,
}

impl GrpcWorker {
    /// How many HTTP/2 connections are open now, to each endpoint in the
    /// order they were given.
    pub fn open_connections(&self) -> Vec<usize> {
        self.pool.open_connections()
    }

    fn end(&self, reason: ExitReason) {
        self.exit.send_if_modified(|exit| {
            if exit.is_some() {
                return false;
            }
            *exit = Some(reason);
            true
        });
        self.shared.end();
        self.pool.close();
    }
}

impl Worker for GrpcWorker {
    fn name(&self) -> &str {
        &self.name
    }

    fn channel(&self) -> Channel {
        self.channel.clone()
    }

    fn watch_exit(&self) -> impl std::future::Future<Output = ExitReason> + Send + 'static {
        let mut exited = self.exited.clone();
        async move {
            let reason = exited.wait_for(Option::is_some).await;
            reason
                .ok()
                .and_then(|reason| reason.clone())
                .unwrap_or(ExitReason::Unknown)
        }
    }

    /// Stops sending calls and lets those in flight finish (within the
    /// calls' own deadlines), then closes the connections. Nothing stops on
    /// the serving node.
    async fn shutdown(&self) -> ExitReason {
        self.shared.drain().await;
        self.end(ExitReason::Stopped);
        ExitReason::Stopped
    }

    /// Resets every call in flight and closes the connections.
    fn kill(&self) {
        self.end(ExitReason::Killed);
    }
}
