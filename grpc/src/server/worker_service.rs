//! `workerbus.v1.Worker` on the server: describe, events and health.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_core::Stream;
use prost::Message;
use tonic::server::Grpc;
use tonic::{Request, Response};
use workerbus::{Channel, Payload, ServiceSchema};

use super::calls::ItemStream;
use crate::codec::BridgeCodec;
use crate::map::{decode_timeout, error_to_tonic, names};
use crate::worker::{self, Event, HealthReport, HealthRequest, SubscribeRequest};

/// `workerbus.v1.Worker`: what the server serves, its workers' events and
/// health (`docs/PROTOCOL.md` 10.5).
pub(super) struct WorkerService {
    pub(super) services: Vec<&'static ServiceSchema>,
    pub(super) channels: HashMap<&'static str, Channel>,
    pub(super) workers: Vec<Channel>,
    pub(super) events: Vec<&'static ServiceSchema>,
}

impl WorkerService {
    pub(super) async fn call(
        self: Arc<Self>,
        request: http::Request<hyper::body::Incoming>,
    ) -> http::Response<tonic::body::Body> {
        let mut grpc = Grpc::new(BridgeCodec);
        match request.uri().path() {
            worker::DESCRIBE => {
                let call = tower::service_fn(move |_: Request<Bytes>| {
                    let description = workerbus::describe_services(&self.services);
                    async move { Ok(Response::new(Payload::from(description))) }
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

    async fn health(&self, request: Request<Bytes>) -> Result<Response<Payload>, tonic::Status> {
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
        Ok(Response::new(Payload::message(HealthReport::from(report))))
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
    type Item = Result<Payload, tonic::Status>;

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
                    return Poll::Ready(Some(Ok(Payload::message(event))));
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
