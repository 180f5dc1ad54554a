//! Middleware: code that runs around every call, on the host
//! ([`Middleware`], per channel) and in the worker ([`ServerMiddleware`], per
//! serve loop), composed in the order installed.
//!
//! ```text
//!  host:   client ─▶ [Logging ─▶ Metrics ─▶ ConcurrencyLimit ─▶ attempt] ─▶ frames
//!  worker: frames ─▶ [Logging ─▶ Metrics ─▶ handler]
//! ```
//!
//! A host middleware wraps each attempt of a call (a retry runs the chain
//! again, with [`CallInfo::attempt`] one higher); a worker middleware wraps
//! each run of a handler. A middleware may answer without calling `next`.
//! For a streaming call, the host's chain wraps its opening (until its
//! request is queued; an answer without `next` is then the response of a
//! request stream, and ends a response stream empty), and the worker's
//! wraps the handler's whole run. A one-way message passes both chains as a
//! call answered with an empty response once it is queued.
//! Without middleware, calls take a path with no middleware code and no
//! allocation for it.
//!
//! A middleware that panics fails the call it wraps, on either side, and
//! names itself (its type, [`std::any::type_name`]) and the panic's
//! message: on the host the call fails with [`Error::Middleware`] and the
//! caller's task goes on; in the worker the call is answered with an
//! [`Internal`](crate::Code::Internal) status, `the middleware {type} around
//! {method} panicked: {message}`, and the worker goes on serving. The layers
//! around it see that failure as the outcome of their `next`; the attempt or
//! handler under it is dropped (an attempt in flight is withdrawn, as for
//! any failure), and a host call is not retried. A panic of the call itself
//! (a handler's) passes through the layers as it would without them.

mod limit;
mod logging;
mod metrics;

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use self::limit::{ConcurrencyLimit, RateLimit};
pub use self::logging::Logging;
pub use self::metrics::{Histogram, MethodMetrics, Metrics, MetricsSnapshot};
use crate::error::{Error, Status};
use crate::metadata::Metadata;
use crate::name::MethodName;
use crate::panic::{CatchUnwind, panic_message};
use crate::payload::Payload;
use crate::sync::lock;
use crate::trace::TraceContext;

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Which side of the boundary a call is seen from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Side {
    /// The caller.
    Host,
    /// The callee.
    Worker,
}

/// What a middleware knows about the call it wraps.
pub struct CallInfo {
    side: Side,
    method: MethodName,
    request_id: Option<u64>,
    attempt: u32,
    timeout: Option<Duration>,
    deadline: Option<tokio::time::Instant>,
    driver: &'static str,
    request_len: usize,
    trace: Mutex<Option<TraceContext>>,
    metadata: Mutex<Metadata>,
}

impl CallInfo {
    pub(crate) fn host(
        method: &MethodName,
        attempt: u32,
        timeout: Option<Duration>,
        driver: &'static str,
        request_len: usize,
        metadata: Metadata,
        trace: Option<TraceContext>,
    ) -> CallInfo {
        CallInfo {
            side: Side::Host,
            method: method.clone(),
            request_id: None,
            attempt,
            timeout,
            deadline: timeout.and_then(|timeout| tokio::time::Instant::now().checked_add(timeout)),
            driver,
            request_len,
            trace: Mutex::new(trace),
            metadata: Mutex::new(metadata),
        }
    }

    pub(crate) fn worker(
        context: &crate::context::Context,
        driver: &'static str,
        request_len: usize,
    ) -> CallInfo {
        CallInfo {
            side: Side::Worker,
            method: context.method_name().clone(),
            request_id: Some(context.request_id()),
            attempt: context.attempt(),
            timeout: context.remaining(),
            deadline: context.tokio_deadline(),
            driver,
            request_len,
            trace: Mutex::new(context.trace()),
            metadata: Mutex::new(context.metadata().clone()),
        }
    }

    /// The side the call is seen from.
    pub fn side(&self) -> Side {
        self.side
    }

    /// The message name, e.g. `embedder.embed`.
    pub fn method(&self) -> &str {
        self.method.as_str()
    }

    /// The message name as a [`MethodName`].
    pub fn method_name(&self) -> &MethodName {
        &self.method
    }

    /// The request id, on the worker's side. (On the host it is chosen by
    /// the connection when the request is sent, after the middleware ran;
    /// the trace context links the two sides instead.)
    pub fn request_id(&self) -> Option<u64> {
        self.request_id
    }

    /// Which attempt this is: 1 for the first, 2 for the first retry...
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The attempt's timeout (on the worker: the time left when the request
    /// arrived).
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// When the attempt times out. A middleware that waits (for a permit, a
    /// token) should give up by then.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline.map(tokio::time::Instant::into_std)
    }

    pub(crate) fn tokio_deadline(&self) -> Option<tokio::time::Instant> {
        self.deadline
    }

    /// The driver of the connection: `"thread"`, `"process"`, or
    /// `"transport"` for a channel made with `Channel::new`.
    pub fn driver(&self) -> &'static str {
        self.driver
    }

    /// The size of the encoded request, in bytes.
    pub fn request_len(&self) -> usize {
        self.request_len
    }

    /// The call's trace context: on the host, the span making the call, once
    /// a middleware (e.g. [`Logging`]) has set one; on the worker, the
    /// caller's.
    pub fn trace(&self) -> Option<TraceContext> {
        *lock(&self.trace)
    }

    /// Sets the trace context sent with the request (host side).
    pub fn set_trace(&self, trace: TraceContext) {
        *lock(&self.trace) = Some(trace);
    }

    /// The call's metadata: on the host, what this attempt will send (the
    /// client's and the call's [`CallOptions::metadata`](crate::CallOptions::metadata),
    /// with what middleware added; the channel's own entries go before
    /// them); on the worker, what the caller sent.
    pub fn metadata(&self) -> Metadata {
        lock(&self.metadata).clone()
    }

    /// Adds an entry to the metadata this attempt sends (host side; on the
    /// worker the handler does not see it), checked as
    /// [`Metadata::insert`] does.
    ///
    /// ```
    /// use workerbus::{CallInfo, Error, Middleware, Next, Payload};
    ///
    /// /// Tells every worker which tenant calls.
    /// struct Tenant(&'static str);
    ///
    /// impl Middleware for Tenant {
    ///     async fn call(&self, call: &CallInfo, next: Next<'_>) -> Result<Payload, Error> {
    ///         call.insert_metadata("tenant", self.0)?;
    ///         next.run().await
    ///     }
    /// }
    /// ```
    pub fn insert_metadata(&self, key: &str, value: impl AsRef<[u8]>) -> Result<(), Error> {
        lock(&self.metadata).insert(key, value)
    }
}

impl fmt::Debug for CallInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallInfo")
            .field("side", &self.side)
            .field("method", &self.method)
            .field("request_id", &self.request_id)
            .field("attempt", &self.attempt)
            .field("deadline", &self.deadline)
            .field("driver", &self.driver)
            .field("request_len", &self.request_len)
            .field("trace", &self.trace())
            .field("metadata", &self.metadata())
            .finish()
    }
}

/// Runs around each attempt of every call made through a channel, on the
/// host: install it with [`Channel::with_middleware`](crate::Channel::with_middleware).
///
/// The response comes as a [`Payload`]: on the thread driver the message
/// itself, which nothing has encoded. Its [`len`](Payload::len) is its
/// encoded length, known without encoding; a middleware that needs the
/// bytes asks [`to_bytes`](Payload::to_bytes), which encodes it then.
///
/// A middleware that panics fails the call with [`Error::Middleware`],
/// naming its type and the panic's message; the caller's task goes on, and
/// the attempt it wrapped is withdrawn. (A [`ServerMiddleware`] that panics
/// is answered with an `Internal` status naming it the same way.)
///
/// ```
/// use workerbus::{CallInfo, Error, Middleware, Next, Payload};
///
/// /// Counts the bytes a channel sends and receives.
/// #[derive(Default)]
/// struct ByteCounter {
///     bytes: std::sync::atomic::AtomicUsize,
/// }
///
/// impl Middleware for ByteCounter {
///     async fn call(&self, call: &CallInfo, next: Next<'_>) -> Result<Payload, Error> {
///         let response = next.run().await?;
///         let total = call.request_len() + response.len();
///         self.bytes.fetch_add(total, std::sync::atomic::Ordering::Relaxed);
///         Ok(response)
///     }
/// }
/// ```
pub trait Middleware: Send + Sync + 'static {
    /// Handles the attempt: usually does something, awaits
    /// [`next.run()`](Next::run), and does something with its outcome.
    fn call(
        &self,
        call: &CallInfo,
        next: Next<'_>,
    ) -> impl Future<Output = Result<Payload, Error>> + Send;
}

/// Runs around every handler of a worker: install it with
/// [`ServeOptions::middleware`](crate::ServeOptions::middleware).
///
/// A middleware that panics is answered, like a handler that panics, with
/// an [`Internal`](crate::Code::Internal) status, here naming the middleware:
/// `the middleware {type} around {method} panicked: {message}`, where
/// `{type}` is its [`std::any::type_name`]; the worker goes on serving. (A
/// host [`Middleware`] that panics fails its call with [`Error::Middleware`],
/// naming it the same way.)
pub trait ServerMiddleware: Send + Sync + 'static {
    /// Handles the call: usually does something, awaits
    /// [`next.run()`](ServerNext::run), and does something with its outcome.
    fn handle(
        &self,
        call: &CallInfo,
        next: ServerNext<'_>,
    ) -> impl Future<Output = Result<Payload, Status>> + Send;
}

/// The rest of a middleware chain, ending in the call itself: on the host
/// (`Next<'_>`, for a [`Middleware`]) the attempt, on the worker
/// ([`ServerNext`], for a [`ServerMiddleware`]) the handler.
pub struct Next<'a, T = Result<Payload, Error>> {
    rest: &'a [Arc<dyn Layer<T>>],
    info: &'a CallInfo,
    endpoint: BoxFuture<'a, T>,
    /// Whether this is the whole chain, as the runtime runs it (not the
    /// rest of it a layer runs).
    outermost: bool,
}

/// The rest of a worker's middleware chain, ending in the handler.
pub type ServerNext<'a> = Next<'a, Result<Payload, Status>>;

impl<'a, T: 'a> Next<'a, T> {
    pub(crate) fn new(
        chain: &'a [Arc<dyn Layer<T>>],
        info: &'a CallInfo,
        endpoint: BoxFuture<'a, T>,
    ) -> Next<'a, T> {
        Next {
            rest: chain,
            info,
            endpoint,
            outermost: true,
        }
    }

    /// Runs the rest of the chain and the call: on the host the attempt, on
    /// the worker the handler.
    pub async fn run(self) -> T {
        let Some((layer, rest)) = self.rest.split_first() else {
            return self.run_endpoint().await;
        };
        let next = Next {
            rest,
            info: self.info,
            endpoint: self.endpoint,
            outermost: false,
        };
        // A panic of this layer ends the call with its `panicked`; the layers
        // inside it have caught their own already, so any other panic
        // caught here is this layer's, or the call's own passing through.
        let entered = std::panic::catch_unwind(AssertUnwindSafe(|| layer.enter(self.info, next)));
        let outcome = match entered {
            Ok(future) => CatchUnwind::new(future).await,
            Err(panic) => Err(panic),
        };
        // The layer's future, and with it the call under it, is dropped by
        // now: an attempt it had started is withdrawn, as for any failure.
        match outcome {
            Ok(outcome) => outcome,
            Err(panic) => match panic.downcast::<Passing>() {
                Ok(passing) if self.outermost => std::panic::resume_unwind(passing.0),
                Ok(passing) => std::panic::resume_unwind(passing),
                Err(panic) => layer.panicked(self.info, panic_message(&*panic)),
            },
        }
    }

    /// The call itself, below every layer. Its panic is not a middleware's:
    /// it passes through the layers, marked so that none takes it for its
    /// own, and goes on unwinding from the outermost as it would without
    /// middleware (a worker answers it as the handler's).
    async fn run_endpoint(self) -> T {
        if self.outermost {
            return self.endpoint.await;
        }
        match CatchUnwind::new(self.endpoint).await {
            Ok(outcome) => outcome,
            Err(panic) => std::panic::resume_unwind(Box::new(Passing(panic))),
        }
    }
}

/// The panic of a call (its handler, its attempt) on its way out through
/// the layers around it.
struct Passing(Box<dyn Any + Send>);

impl<T> fmt::Debug for Next<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.info.side() {
            Side::Host => "Next",
            Side::Worker => "ServerNext",
        };
        f.debug_struct(name)
            .field("remaining", &self.rest.len())
            .finish_non_exhaustive()
    }
}

/// A [`Middleware`] (`T` is the attempt's outcome) or a
/// [`ServerMiddleware`] (the handler's) behind a pointer.
pub(crate) trait Layer<T>: Send + Sync {
    fn enter<'a>(&'a self, call: &'a CallInfo, next: Next<'a, T>) -> BoxFuture<'a, T>;

    /// What the call ends with when the middleware panicked with
    /// `message`: an error naming it (its type) and the panic.
    fn panicked(&self, call: &CallInfo, message: String) -> T;
}

impl<M: Middleware> Layer<Result<Payload, Error>> for M {
    fn enter<'a>(
        &'a self,
        call: &'a CallInfo,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<Payload, Error>> {
        Box::pin(self.call(call, next))
    }

    fn panicked(&self, call: &CallInfo, message: String) -> Result<Payload, Error> {
        let (method, middleware) = (call.method_name(), std::any::type_name::<M>());
        tracing::error!(%method, middleware, panic = %message, "host middleware panicked");
        Err(Error::Middleware {
            method: method.clone(),
            middleware,
            message,
        })
    }
}

impl<M: ServerMiddleware> Layer<Result<Payload, Status>> for M {
    fn enter<'a>(
        &'a self,
        call: &'a CallInfo,
        next: ServerNext<'a>,
    ) -> BoxFuture<'a, Result<Payload, Status>> {
        Box::pin(self.handle(call, next))
    }

    fn panicked(&self, call: &CallInfo, message: String) -> Result<Payload, Status> {
        let (method, middleware) = (call.method_name(), std::any::type_name::<M>());
        let id = call.request_id();
        tracing::error!(%method, id, middleware, panic = %message, "worker middleware panicked");
        Err(Status::internal(format!(
            "the middleware {middleware} around {method} panicked: {message}"
        )))
    }
}

/// The chain of a channel's [`Middleware`].
pub(crate) type HostChain = Chain<dyn Layer<Result<Payload, Error>>>;

/// The chain of a worker's [`ServerMiddleware`].
pub(crate) type WorkerChain = Chain<dyn Layer<Result<Payload, Status>>>;

/// An installed chain, shared by the clones of a channel or serve options.
pub(crate) type Chain<M> = Option<Arc<[Arc<M>]>>;

/// `chain` with `layer` appended (innermost).
pub(crate) fn append<M: ?Sized>(chain: &Chain<M>, layer: Arc<M>) -> Chain<M> {
    let mut layers: Vec<Arc<M>> = chain.as_deref().map(<[_]>::to_vec).unwrap_or_default();
    layers.push(layer);
    Some(layers.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    type HostLayer = Arc<dyn Layer<Result<Payload, Error>>>;

    /// Passes every call on.
    struct Pass;

    impl Middleware for Pass {
        async fn call(&self, _call: &CallInfo, next: Next<'_>) -> Result<Payload, Error> {
            next.run().await
        }
    }

    /// Panics before `next`.
    struct Boom;

    impl Middleware for Boom {
        async fn call(&self, _call: &CallInfo, _next: Next<'_>) -> Result<Payload, Error> {
            panic!("boom")
        }
    }

    fn info() -> CallInfo {
        CallInfo::host(
            &MethodName::from_static("echo.echo"),
            1,
            None,
            "transport",
            0,
            Metadata::new(),
            None,
        )
    }

    async fn answers() -> Result<Payload, Error> {
        Ok(Payload::new())
    }

    async fn panics() -> Result<Payload, Error> {
        panic!("the attempt's own")
    }

    #[tokio::test]
    async fn a_layers_panic_fails_the_call_naming_the_layer() {
        let chain: [HostLayer; 3] = [Arc::new(Pass), Arc::new(Boom), Arc::new(Pass)];
        let info = info();
        let outcome = Next::new(&chain, &info, Box::pin(answers())).run().await;
        match outcome {
            Err(Error::Middleware {
                method,
                middleware,
                message,
            }) => {
                assert_eq!(method.as_str(), "echo.echo");
                assert_eq!(middleware, std::any::type_name::<Boom>());
                assert_eq!(message, "boom");
            }
            other => panic!("expected Error::Middleware, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn the_calls_own_panic_passes_through_the_layers_unchanged() {
        let chain: [HostLayer; 2] = [Arc::new(Pass), Arc::new(Pass)];
        let info = info();
        let run = Next::new(&chain, &info, Box::pin(panics())).run();
        let panic = CatchUnwind::new(run)
            .await
            .expect_err("the attempt panicked");
        assert_eq!(panic_message(&*panic), "the attempt's own");
    }
}
