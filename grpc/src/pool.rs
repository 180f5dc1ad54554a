//! The client's connections: a few HTTP/2 connections to each endpoint, kept
//! open by one task per endpoint, which reconnects a connection that ends
//! and ejects an endpoint it cannot reach, with backoff; and the choice of
//! a connection for each call.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue, Uri};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::executor::BoxingExecutor;
use crate::trailers::RewriteTrailers;
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};

use crate::tls::ClientTls;

/// How a client connects: what every endpoint's connections share.
#[derive(Clone, Debug)]
pub(crate) struct ConnectConfig {
    pub(crate) connections: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) keepalive_interval: Duration,
    pub(crate) keepalive_timeout: Duration,
    pub(crate) backoff_first: Duration,
    pub(crate) backoff_max: Duration,
    /// TLS for `https://` endpoints.
    pub(crate) tls: Option<ClientTls>,
    /// `Bearer <token>`, if the client has one.
    pub(crate) authorization: Option<HeaderValue>,
}

/// Every endpoint of one client, and how it chooses between them.
pub(crate) struct Pool {
    endpoints: Vec<Arc<Endpoint>>,
    /// Where the next choice starts, so that ties rotate.
    next: AtomicUsize,
    /// Rung whenever an endpoint gains a connection or is ejected.
    changed: Arc<Notify>,
    /// Set once the pool is closed: every endpoint's task stops, and every
    /// connection closes.
    closed: watch::Sender<bool>,
}

/// One server address.
pub(crate) struct Endpoint {
    /// As the user wrote it, for errors.
    pub(crate) address: String,
    /// `scheme://authority`, which every request's URI starts with.
    pub(crate) origin: Uri,
    /// `host:port`, to connect to.
    authority: String,
    /// The host, the name a TLS server's certificate must carry.
    host: String,
    state: Mutex<EndpointState>,
    /// Rung when one of its connections ends.
    lost: Notify,
}

#[derive(Default)]
struct EndpointState {
    connections: Vec<Connection>,
    /// Until when no call goes to this endpoint, and why.
    ejected: Option<(Instant, String)>,
}

/// One HTTP/2 connection, as a tower service the gRPC client calls through.
#[derive(Clone)]
pub(crate) struct Connection {
    id: u64,
    send: SendRequest<tonic::body::Body>,
    /// Read to hand a request to hyper's dispatcher, written to drop the
    /// dispatcher: no request is on its way into a queue that drops (`drive`
    /// says why).
    handoff: Arc<RwLock<()>>,
    /// Calls using it now.
    load: Arc<AtomicUsize>,
    /// The bearer token every request carries, if any.
    authorization: Option<HeaderValue>,
}

/// A connection chosen for one call: counts as load until dropped.
pub(crate) struct Lease {
    pub(crate) connection: Connection,
    pub(crate) endpoint: Arc<Endpoint>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.connection.load.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why no connection can be had.
#[derive(Debug)]
pub(crate) struct NoEndpoint(pub(crate) String);

fn lock(state: &Mutex<EndpointState>) -> MutexGuard<'_, EndpointState> {
    crate::lock(state)
}

/// An endpoint's address, read.
pub(crate) struct Address {
    /// `scheme://authority/`.
    pub(crate) origin: Uri,
    /// `host:port`.
    pub(crate) authority: String,
    pub(crate) host: String,
    /// Whether it is `https://`.
    pub(crate) secure: bool,
}

/// Reads an endpoint address: `http://host:port` or `https://host:port`
/// (the port defaults to 80 and 443).
pub(crate) fn parse_address(address: &str) -> Result<Address, String> {
    let uri: Uri = address
        .parse()
        .map_err(|error| format!("{address:?} is not a URI: {error}"))?;
    let (scheme, secure, port) = match uri.scheme_str() {
        Some("http") => ("http", false, 80),
        Some("https") => ("https", true, 443),
        Some(other) => {
            return Err(format!(
                "{address:?}: the scheme {other:?} is not supported (use http:// or https://)"
            ));
        }
        None => {
            return Err(format!(
                "{address:?} has no scheme (e.g. http://host:50051)"
            ));
        }
    };
    let Some(authority) = uri.authority() else {
        return Err(format!("{address:?} has no host"));
    };
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err(format!(
            "{address:?} has a path; an endpoint is scheme, host and port"
        ));
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let origin = Uri::builder()
        .scheme(scheme)
        .authority(authority.clone())
        .path_and_query("/")
        .build()
        .map_err(|error| format!("{address:?}: {error}"))?;
    Ok(Address {
        origin,
        authority: format!(
            "{}:{}",
            authority.host(),
            authority.port_u16().unwrap_or(port)
        ),
        host: host.to_owned(),
        secure,
    })
}

impl Pool {
    /// A pool over `endpoints` (already parsed), whose tasks start
    /// connecting at once.
    pub(crate) fn start(endpoints: Vec<(String, Address)>, config: ConnectConfig) -> Arc<Pool> {
        let (closed, _) = watch::channel(false);
        let pool = Arc::new(Pool {
            endpoints: endpoints
                .into_iter()
                .map(|(address, parsed)| {
                    Arc::new(Endpoint {
                        address,
                        origin: parsed.origin,
                        authority: parsed.authority,
                        host: parsed.host,
                        state: Mutex::new(EndpointState::default()),
                        lost: Notify::new(),
                    })
                })
                .collect(),
            next: AtomicUsize::new(0),
            changed: Arc::new(Notify::new()),
            closed,
        });
        let config = Arc::new(config);
        for endpoint in &pool.endpoints {
            tokio::spawn(maintain(
                Arc::clone(endpoint),
                Arc::clone(&config),
                Arc::clone(&pool.changed),
                pool.closed.subscribe(),
            ));
        }
        pool
    }

    /// Closes every connection now and stops reconnecting.
    pub(crate) fn close(&self) {
        self.closed.send_replace(true);
        for endpoint in &self.endpoints {
            lock(&endpoint.state).connections.clear();
        }
        self.changed.notify_waiters();
    }

    pub(crate) fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Waits until some endpoint has a connection, or every endpoint has
    /// been tried and none could be reached (the error says why for each).
    pub(crate) async fn ready(&self) -> Result<(), NoEndpoint> {
        loop {
            let changed = self.changed.notified();
            match self.state() {
                Choice::Ready => return Ok(()),
                Choice::Wait => changed.await,
                Choice::Fail(error) => return Err(error),
            }
        }
    }

    /// A connection for one call: the least loaded of the endpoints not
    /// ejected, waiting while endpoints are still connecting; an error at
    /// once if every endpoint is ejected.
    pub(crate) async fn lease(&self) -> Result<Lease, NoEndpoint> {
        loop {
            let changed = self.changed.notified();
            if let Some(lease) = self.pick() {
                return Ok(lease);
            }
            match self.state() {
                Choice::Ready => {}
                Choice::Wait => changed.await,
                Choice::Fail(error) => return Err(error),
            }
        }
    }

    /// How many endpoints there are.
    pub(crate) fn endpoints(&self) -> usize {
        self.endpoints.len()
    }

    /// A connection to endpoint `index`, the least loaded of its own,
    /// waiting while it has none; an error once the pool closes.
    pub(crate) async fn lease_at(&self, index: usize) -> Result<Lease, NoEndpoint> {
        let endpoint = &self.endpoints[index];
        loop {
            let changed = self.changed.notified();
            if self.is_closed() {
                return Err(NoEndpoint("the client was closed".to_owned()));
            }
            let least = lock(&endpoint.state)
                .connections
                .iter()
                .min_by_key(|c| c.load.load(Ordering::Relaxed))
                .cloned();
            if let Some(connection) = least {
                connection.load.fetch_add(1, Ordering::Relaxed);
                return Ok(Lease {
                    connection,
                    endpoint: Arc::clone(endpoint),
                });
            }
            changed.await;
        }
    }

    fn pick(&self) -> Option<Lease> {
        let count = self.endpoints.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut best: Option<(usize, Connection, &Arc<Endpoint>)> = None;
        for offset in 0..count {
            let endpoint = &self.endpoints[(start + offset) % count];
            let state = lock(&endpoint.state);
            if state
                .ejected
                .as_ref()
                .is_some_and(|(until, _)| *until > now)
            {
                continue;
            }
            for connection in &state.connections {
                // Closed (after a GOAWAY, say) but not yet forgotten by its
                // endpoint's task: a call sent on it would fail unsent.
                if connection.send.is_closed() {
                    continue;
                }
                let load = connection.load.load(Ordering::Relaxed);
                if best.as_ref().is_none_or(|(least, ..)| load < *least) {
                    best = Some((load, connection.clone(), endpoint));
                }
            }
        }
        let (_, connection, endpoint) = best?;
        connection.load.fetch_add(1, Ordering::Relaxed);
        Some(Lease {
            connection,
            endpoint: Arc::clone(endpoint),
        })
    }

    fn state(&self) -> Choice {
        if self.is_closed() {
            return Choice::Fail(NoEndpoint("the client was closed".to_owned()));
        }
        let now = Instant::now();
        let mut reasons = Vec::new();
        let mut connecting = false;
        for endpoint in &self.endpoints {
            let state = lock(&endpoint.state);
            match &state.ejected {
                Some((until, why)) if *until > now => {
                    let left = until.saturating_duration_since(now);
                    reasons.push(format!(
                        "{} ({why}; next try in {} ms)",
                        endpoint.address,
                        left.as_millis()
                    ));
                }
                _ if !state.connections.is_empty() => return Choice::Ready,
                // Connecting, for the first time or again.
                _ => connecting = true,
            }
        }
        if connecting {
            return Choice::Wait;
        }
        Choice::Fail(NoEndpoint(format!(
            "no endpoint is reachable: {}",
            reasons.join(", ")
        )))
    }

    pub(crate) fn addresses(&self) -> Vec<&str> {
        self.endpoints.iter().map(|e| e.address.as_str()).collect()
    }

    /// How many connections are open now, per endpoint.
    pub(crate) fn open_connections(&self) -> Vec<usize> {
        self.endpoints
            .iter()
            .map(|e| lock(&e.state).connections.len())
            .collect()
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("endpoints", &self.addresses())
            .field("connections", &self.open_connections())
            .finish()
    }
}

enum Choice {
    Ready,
    Wait,
    Fail(NoEndpoint),
}

/// Keeps `config.connections` connections open to `endpoint` until the
/// pool closes: a connection that ends is replaced at once; an endpoint
/// that cannot be reached is ejected, and tried again after a backoff that
/// doubles up to its maximum, and starts again from the first after a
/// success.
async fn maintain(
    endpoint: Arc<Endpoint>,
    config: Arc<ConnectConfig>,
    changed: Arc<Notify>,
    mut closed: watch::Receiver<bool>,
) {
    let mut backoff = config.backoff_first;
    let mut next_id = 0u64;
    loop {
        let lost = endpoint.lost.notified();
        let missing = config
            .connections
            .saturating_sub(lock(&endpoint.state).connections.len());
        if missing == 0 {
            tokio::select! {
                () = lost => continue,
                _ = closed.wait_for(|closed| *closed) => return,
            }
        }
        let opened = tokio::select! {
            opened = open(&endpoint, &config, next_id, closed.clone()) => opened,
            _ = closed.wait_for(|closed| *closed) => return,
        };
        next_id += 1;
        match opened {
            Ok(connection) => {
                backoff = config.backoff_first;
                let mut state = lock(&endpoint.state);
                state.ejected = None;
                if *closed.borrow() {
                    return;
                }
                state.connections.push(connection);
                drop(state);
                changed.notify_waiters();
            }
            Err(error) => {
                tracing::debug!(endpoint = %endpoint.address, %error, ?backoff, "workerbus-grpc: ejecting an endpoint");
                {
                    let mut state = lock(&endpoint.state);
                    state.ejected = Some((Instant::now() + backoff, error));
                }
                changed.notify_waiters();
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = closed.wait_for(|closed| *closed) => return,
                }
                backoff = (backoff * 2).min(config.backoff_max);
            }
        }
    }
}

/// Opens one HTTP/2 connection to `endpoint`, driven by a task of its own
/// that removes it from the endpoint when it ends.
async fn open(
    endpoint: &Arc<Endpoint>,
    config: &ConnectConfig,
    id: u64,
    closed: watch::Receiver<bool>,
) -> Result<Connection, String> {
    let timeout = config.connect_timeout;
    let late = || format!("no connection within {} ms", timeout.as_millis());
    let started = tokio::time::Instant::now();
    let stream = tokio::time::timeout(timeout, TcpStream::connect(&endpoint.authority))
        .await
        .map_err(|_| late())?
        .map_err(|error| error.to_string())?;
    let _ = stream.set_nodelay(true);
    let (send, handoff) = match &config.tls {
        None => drive(endpoint, config, id, closed, stream).await?,
        Some(tls) => {
            let name = tls
                .name_for(&endpoint.host)
                .map_err(|error| error.to_string())?;
            let config_tls = tls.config().map_err(|error| error.to_string())?;
            let connector = tokio_rustls::TlsConnector::from(config_tls);
            let left = timeout.saturating_sub(started.elapsed());
            let stream = tokio::time::timeout(left, connector.connect(name, stream))
                .await
                .map_err(|_| late())?
                .map_err(|error| format!("TLS handshake failed: {error}"))?;
            drive(endpoint, config, id, closed, stream).await?
        }
    };
    Ok(Connection {
        id,
        send,
        handoff,
        load: Arc::new(AtomicUsize::new(0)),
        authorization: config.authorization.clone(),
    })
}

/// Runs HTTP/2 over `io`, driven by a task of its own that removes the
/// connection from its endpoint when it ends: the connection's sender, and
/// the lock requests are handed over under.
async fn drive<I>(
    endpoint: &Arc<Endpoint>,
    config: &ConnectConfig,
    id: u64,
    mut closed: watch::Receiver<bool>,
    io: I,
) -> Result<(SendRequest<tonic::body::Body>, Arc<RwLock<()>>), String>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let mut builder = hyper::client::conn::http2::Builder::new(BoxingExecutor);
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(config.keepalive_interval)
        .keep_alive_timeout(config.keepalive_timeout)
        .keep_alive_while_idle(true);
    let (send, mut connection) = builder
        .handshake::<_, tonic::body::Body>(TokioIo::new(io))
        .await
        .map_err(|error| format!("HTTP/2 handshake failed: {error}"))?;
    let handoff = Arc::new(RwLock::new(()));
    let dispatcher = Arc::clone(&handoff);
    let endpoint = Arc::clone(endpoint);
    tokio::spawn(async move {
        tokio::select! {
            ended = &mut connection => {
                if let Err(error) = ended {
                    tracing::debug!(endpoint = %endpoint.address, %error, "workerbus-grpc: a connection ended");
                }
            }
            _ = closed.wait_for(|closed| *closed) => {}
        }
        // Dropping the connection closes its socket and drops hyper's
        // dispatcher with its queue: the requests it has not taken are
        // answered canceled, and their calls send them again. But a request
        // still being pushed as the queue drops (tokio's channel checks that
        // it is open, then writes) is left in it, with every request behind
        // it, answered only once the connection's last sender goes; each of
        // their calls holds one, so they would wait to their deadlines.
        // Requests are handed over under the read side of this lock, and the
        // queue drops under its write side: each request is in the queue
        // when it drops, or refused by it, closed, after.
        let dropping = dispatcher.write().unwrap_or_else(PoisonError::into_inner);
        drop(connection);
        drop(dropping);
        lock(&endpoint.state).connections.retain(|c| c.id != id);
        endpoint.lost.notify_one();
    });
    Ok((send, handoff))
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl tower::Service<http::Request<tonic::body::Body>> for Connection {
    type Response = http::Response<Checked>;
    type Error = hyper::Error;
    type Future = BoxFuture<Result<Self::Response, hyper::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.send.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        if let Some(authorization) = &self.authorization {
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, authorization.clone());
        }
        let response = {
            // Never while the dispatcher drops (see `drive`).
            let _handing = self.handoff.read().unwrap_or_else(PoisonError::into_inner);
            self.send.send_request(request)
        };
        Box::pin(async move {
            let mut response = response.await?;
            check_status_headers(response.headers_mut());
            Ok(response
                .map(|body| RewriteTrailers::new(body, check_status_headers as fn(&mut HeaderMap))))
        })
    }
}

/// A response body whose trailers are checked like the headers.
pub(crate) type Checked = RewriteTrailers<hyper::body::Incoming, fn(&mut HeaderMap)>;

use crate::map::names::{GRPC_MESSAGE, GRPC_STATUS, GRPC_STATUS_DETAILS};

/// A server's status whose details are not base64 becomes `INTERNAL`,
/// saying so: tonic's client would panic reading it.
fn check_status_headers(headers: &mut HeaderMap) {
    let Some(details) = headers.get(&GRPC_STATUS_DETAILS) else {
        return;
    };
    let mut only = HeaderMap::new();
    only.insert(GRPC_STATUS_DETAILS, details.clone());
    let valid = tonic::metadata::MetadataMap::from_headers(only)
        .get_bin(GRPC_STATUS_DETAILS.as_str())
        .is_some_and(|value| value.to_bytes().is_ok());
    if valid {
        return;
    }
    headers.remove(&GRPC_STATUS_DETAILS);
    headers.insert(GRPC_STATUS, HeaderValue::from_static("13"));
    headers.insert(
        GRPC_MESSAGE,
        HeaderValue::from_static("the server sent a grpc-status-details-bin that is not base64"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_http_or_https_with_a_host() {
        let address = parse_address("http://127.0.0.1:50051").unwrap();
        assert_eq!(address.origin.to_string(), "http://127.0.0.1:50051/");
        assert_eq!(address.authority, "127.0.0.1:50051");
        assert!(!address.secure);
        let plain = parse_address("http://example.com").unwrap();
        assert_eq!(plain.authority, "example.com:80");
        let secure = parse_address("https://example.com").unwrap();
        assert_eq!(
            (
                secure.authority.as_str(),
                secure.host.as_str(),
                secure.secure
            ),
            ("example.com:443", "example.com", true)
        );
        for (bad, why) in [
            ("127.0.0.1:50051", "scheme"),
            ("ftp://host:1", "not supported"),
            ("http://host:1/some/path", "has a path"),
            ("http://", "not a URI"),
        ] {
            let Err(error) = parse_address(bad) else {
                panic!("{bad} was taken");
            };
            assert!(error.contains(why), "{bad}: {error}");
        }
    }

    #[test]
    fn status_details_that_are_not_base64_become_internal() {
        let mut headers = HeaderMap::new();
        headers.insert(GRPC_STATUS, HeaderValue::from_static("5"));
        headers.insert(
            GRPC_STATUS_DETAILS,
            HeaderValue::from_static("!!not base64!!"),
        );
        check_status_headers(&mut headers);
        assert_eq!(headers[GRPC_STATUS], "13");
        assert!(headers.get(GRPC_STATUS_DETAILS).is_none());
        // Valid details are left alone.
        let mut headers = HeaderMap::new();
        headers.insert(GRPC_STATUS, HeaderValue::from_static("5"));
        headers.insert(GRPC_STATUS_DETAILS, HeaderValue::from_static("AQID"));
        check_status_headers(&mut headers);
        assert_eq!(headers[GRPC_STATUS], "5");
        assert_eq!(headers[GRPC_STATUS_DETAILS], "AQID");
    }
}
