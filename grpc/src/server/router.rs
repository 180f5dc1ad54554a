//! The tower service that routes each gRPC call by its path: to health
//! and reflection, to `workerbus.v1.Worker`, or to a method's channel.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::Service;
use tower::util::BoxCloneSyncService;

use super::Route;
use super::calls::{self, BoxFuture};
use super::worker_service::WorkerService;
use crate::worker;

/// The path prefixes of the standard services the server adds.
pub(super) const HEALTH: &str = "/grpc.health.v1.Health/";
pub(super) const REFLECTION_V1: &str = "/grpc.reflection.v1.ServerReflection/";
pub(super) const REFLECTION_V1ALPHA: &str = "/grpc.reflection.v1alpha.ServerReflection/";

/// A standard service (health, reflection), as tonic generates them.
pub(super) type StandardService = BoxCloneSyncService<
    http::Request<hyper::body::Incoming>,
    http::Response<tonic::body::Body>,
    Infallible,
>;

/// The tower service that routes every gRPC call by its path.
#[derive(Clone)]
pub(super) struct Router {
    pub(super) worker: Arc<WorkerService>,
    pub(super) routes: Arc<HashMap<&'static str, Route>>,
    /// Health and reflection, by path prefix.
    pub(super) standard: Arc<Vec<(&'static str, StandardService)>>,
    pub(super) max_message_size: usize,
    /// The bearer token every call but health checks must carry, if any.
    pub(super) token: Option<Arc<str>>,
}

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
        calls::call(route, self.max_message_size, request)
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
