//! [`Dispatch`], what generated servers implement, and the [`Call`] it is
//! given: a worker's services as the serve loop sees them.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use crate::error::Status;
use crate::payload::Payload;
use crate::schema::MethodKind;
use crate::schema::ServiceSchema;

use super::stream::CallStreams;
use crate::context::Context;

/// A service a worker can serve. Generated `<Service>Server` types implement
/// it; you pass them to a driver or to [`serve_transport`](crate::serve_transport).
///
/// Several services are a service too: [`Services`] serves them from one
/// worker, a call going to the one that has its message name. So is a pair,
/// `(EmbedderServer::new(e), ModelServer::new(m))`, which `Services` nests.
pub trait Dispatch: Send + Sync + 'static {
    /// The schema of the service, as generated from its `.proto` (of the
    /// first service, for a pair).
    fn schema(&self) -> &'static ServiceSchema;

    /// Every service served, as the handshake announces them: `schema()`
    /// alone, unless this combines several.
    fn schemas(&self) -> Vec<&'static ServiceSchema> {
        vec![self.schema()]
    }

    /// Whether a call of `method` is one of these services'.
    fn serves(&self, method: &str) -> bool {
        self.schema().method(method).is_some()
    }

    /// Runs one call: takes the request back as its message type (decoding
    /// it if it came as bytes), calls the handler and answers with its
    /// response as a [`Payload`] (the message itself; whatever carries it
    /// to a peer encodes it). The future owns what it needs and borrows nothing from
    /// `self` (`use<Self>`), so it can run as a task, and the serve loop can
    /// keep one allocation for every call's future.
    fn dispatch(
        &self,
        call: Call,
    ) -> impl Future<Output = Result<Payload, Status>> + Send + 'static + use<Self>;
}

/// The services one worker serves, added one at a time; a call goes to the
/// first that has its message name, and a name none has is answered
/// `Unimplemented`, naming every service and its methods. It costs what the
/// pairs it nests cost: a look-up in each service's schema, in the order
/// added, until one has the name.
///
/// ```no_run
/// # use workerbus::{Call, Dispatch, ServiceSchema, Status};
/// # struct EmbedderServer;
/// # struct ModelServer;
/// # struct Embedder;
/// # struct Models;
/// # impl EmbedderServer { fn new(_: Embedder) -> Self { EmbedderServer } }
/// # impl ModelServer { fn new(_: Models) -> Self { ModelServer } }
/// # static EMBEDDER: ServiceSchema = workerbus::__codegen::service_schema("embedder.Embedder", &[], 1);
/// # static MODEL: ServiceSchema = workerbus::__codegen::service_schema("model.Model", &[], 2);
/// # impl Dispatch for EmbedderServer {
/// #     fn schema(&self) -> &'static ServiceSchema { &EMBEDDER }
/// #     fn dispatch(&self, _: Call) -> impl Future<Output = Result<workerbus::Payload, Status>> + Send + 'static + use<> { async { unreachable!() } }
/// # }
/// # impl Dispatch for ModelServer {
/// #     fn schema(&self) -> &'static ServiceSchema { &MODEL }
/// #     fn dispatch(&self, _: Call) -> impl Future<Output = Result<workerbus::Payload, Status>> + Send + 'static + use<> { async { unreachable!() } }
/// # }
/// use workerbus::Services;
///
/// # async fn run() -> Result<(), workerbus::Error> {
/// // The worker's main: generated servers, each around its handler.
/// let services = Services::new(EmbedderServer::new(Embedder)).add(ModelServer::new(Models));
/// workerbus::serve(services).await
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Services<S>(S);

impl<S: Dispatch> Services<S> {
    /// The services of a worker, starting with `first`.
    pub fn new(first: S) -> Services<S> {
        Services(first)
    }

    /// Adds `next`, after the services already added.
    #[allow(clippy::should_implement_trait)] // not an arithmetic `+`
    pub fn add<T: Dispatch>(self, next: T) -> Services<(S, T)> {
        Services((self.0, next))
    }
}

impl<S: Dispatch> Dispatch for Services<S> {
    fn schema(&self) -> &'static ServiceSchema {
        self.0.schema()
    }

    fn schemas(&self) -> Vec<&'static ServiceSchema> {
        self.0.schemas()
    }

    fn serves(&self, method: &str) -> bool {
        self.0.serves(method)
    }

    #[inline]
    fn dispatch(
        &self,
        call: Call,
    ) -> impl Future<Output = Result<Payload, Status>> + Send + 'static + use<S> {
        self.0.dispatch(call)
    }
}

impl<A: Dispatch, B: Dispatch> Dispatch for (A, B) {
    fn schema(&self) -> &'static ServiceSchema {
        self.0.schema()
    }

    fn schemas(&self) -> Vec<&'static ServiceSchema> {
        let mut schemas = self.0.schemas();
        schemas.extend(self.1.schemas());
        schemas
    }

    fn serves(&self, method: &str) -> bool {
        self.0.serves(method) || self.1.serves(method)
    }

    fn dispatch(
        &self,
        call: Call,
    ) -> impl Future<Output = Result<Payload, Status>> + Send + 'static + use<A, B> {
        let method = call.context.method();
        if self.0.serves(method) {
            Either::First {
                future: self.0.dispatch(call),
            }
        } else if self.1.serves(method) {
            Either::Second {
                future: self.1.dispatch(call),
            }
        } else {
            let services: Vec<String> = self
                .schemas()
                .iter()
                .map(|schema| {
                    let methods: Vec<&str> = schema.methods().iter().map(|m| m.name()).collect();
                    format!("{} ({})", schema.name(), methods.join(", "))
                })
                .collect();
            let status = Status::unimplemented(format!(
                "{method} is not a method of any service this worker serves: {}",
                services.join("; ")
            ));
            Either::Neither {
                status: Some(status),
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The dispatch future of a pair of services.
    #[project = EitherProjection]
    pub(super) enum Either<A, B> {
        First { #[pin] future: A },
        Second { #[pin] future: B },
        Neither { status: Option<Status> },
    }
}

impl<A, B> Future for Either<A, B>
where
    A: Future<Output = Result<Payload, Status>>,
    B: Future<Output = Result<Payload, Status>>,
{
    type Output = Result<Payload, Status>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            EitherProjection::First { future } => future.poll(cx),
            EitherProjection::Second { future } => future.poll(cx),
            EitherProjection::Neither { status } => Poll::Ready(Err(status
                .take()
                .unwrap_or_else(|| Status::internal("polled after completion")))),
        }
    }
}

/// An incoming call as handed to [`Dispatch::dispatch`]: the request (the
/// message itself from a thread of this process, bytes from a peer) and its
/// [`Context`].
#[derive(Debug)]
pub struct Call {
    pub(super) payload: Payload,
    pub(super) context: Context,
    pub(super) streams: CallStreams,
    pub(super) kind: MethodKind,
}

impl Call {
    /// A unary call of `context.method()` with its request, encoded
    /// (`Bytes`) or a [`Payload`].
    pub fn new(payload: impl Into<Payload>, context: Context) -> Call {
        Call {
            payload: payload.into(),
            context,
            streams: CallStreams { stream: None },
            kind: MethodKind::Unary,
        }
    }

    /// The request, the call's context, and its streams.
    pub fn into_parts(self) -> (Payload, Context, CallStreams) {
        (self.payload, self.context, self.streams)
    }
}
