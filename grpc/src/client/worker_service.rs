//! `workerbus.v1.Worker` from the client: the describe call at connect, and
//! event subscriptions.

use std::sync::Arc;

use bytes::Bytes;
use http::uri::PathAndQuery;
use prost::Message;
use workerbus::{Frame, MethodName, ServiceSchema};

use super::Shared;
use crate::codec::BytesCodec;
use crate::pool::{NoEndpoint, Pool};
use crate::worker::{self, Event, SubscribeRequest};

/// How long a subscription waits before it subscribes again after its
/// stream ended.
const RESUBSCRIBE_DELAY: std::time::Duration = std::time::Duration::from_millis(250);

/// Keeps a subscription to the events of `schema`'s service open on the
/// endpoint `index`, passing its events to the channel as its credit
/// allows, and subscribing again (on a new connection, if need be) when its
/// stream ends, until the transport ends. `subscribed` hears once the first
/// subscription is in place, or has failed.
pub(crate) async fn subscribe(
    shared: Arc<Shared>,
    index: usize,
    schema: &'static ServiceSchema,
    subscribed: tokio::sync::oneshot::Sender<Result<(), String>>,
) {
    let mut subscribed = Some(subscribed);
    let request = Bytes::from(
        SubscribeRequest {
            service: schema.name().to_owned(),
        }
        .encode_to_vec(),
    );
    loop {
        let Ok(lease) = shared.pool.lease_at(index).await else {
            return;
        };
        let mut grpc = tonic::client::Grpc::with_origin(
            lease.connection.clone(),
            lease.endpoint.origin.clone(),
        )
        .max_decoding_message_size(shared.max_message_size);
        let response = match grpc.ready().await {
            Ok(()) => {
                let path = PathAndQuery::from_static(worker::SUBSCRIBE);
                grpc.server_streaming(tonic::Request::new(request.clone()), path, BytesCodec)
                    .await
            }
            Err(error) => Err(tonic::Status::from_error(Box::new(error))),
        };
        let mut events = match response {
            Ok(response) => {
                if let Some(subscribed) = subscribed.take() {
                    let _ = subscribed.send(Ok(()));
                }
                response.into_inner()
            }
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::NotFound | tonic::Code::Unimplemented
                ) =>
            {
                let why = format!(
                    "{} does not publish the events of {}: {}",
                    lease.endpoint.address,
                    schema.name(),
                    status.message()
                );
                tracing::warn!("workerbus-grpc: {why}");
                if let Some(subscribed) = subscribed.take() {
                    let _ = subscribed.send(Err(why));
                }
                return;
            }
            Err(status) => {
                tracing::debug!(endpoint = %lease.endpoint.address, %status, "workerbus-grpc: subscribing to events failed");
                drop(lease);
                tokio::time::sleep(RESUBSCRIBE_DELAY).await;
                continue;
            }
        };
        loop {
            match events.message().await {
                Ok(Some(message)) => {
                    let event = match Event::decode(message) {
                        Ok(event) if schema.method(&event.name).is_some() => event,
                        Ok(event) => {
                            tracing::warn!(name = %event.name, service = schema.name(), "workerbus-grpc: dropping an event of another service");
                            continue;
                        }
                        Err(error) => {
                            tracing::warn!(%error, "workerbus-grpc: dropping an event that does not decode");
                            continue;
                        }
                    };
                    // One event is held here at most while the channel's
                    // credit is spent: the next is read only once this one
                    // has gone.
                    shared.events.acquire(event.payload.len()).await;
                    shared.send(Frame::Event {
                        method: MethodName::from(event.name),
                        payload: event.payload,
                    });
                }
                Ok(None) => break,
                Err(status) => {
                    tracing::debug!(endpoint = %lease.endpoint.address, %status, "workerbus-grpc: an event subscription ended");
                    break;
                }
            }
        }
        drop(lease);
        tokio::time::sleep(RESUBSCRIBE_DELAY).await;
    }
}

/// Asks the server what it serves, on any connection: its description,
/// `None` if it answers `UNIMPLEMENTED` (a gRPC server that is not
/// workerbus's), or why it could not be asked.
pub(crate) async fn describe(
    pool: &Pool,
    timeout: std::time::Duration,
) -> Result<Option<Bytes>, String> {
    let lease = pool.lease().await.map_err(|NoEndpoint(why)| why)?;
    let mut grpc =
        tonic::client::Grpc::with_origin(lease.connection.clone(), lease.endpoint.origin.clone());
    let mut request = tonic::Request::new(Bytes::new());
    request.set_timeout(timeout);
    let asked = async {
        grpc.ready()
            .await
            .map_err(|error| tonic::Status::from_error(Box::new(error)))?;
        let path = PathAndQuery::from_static(worker::DESCRIBE);
        grpc.unary(request, path, BytesCodec).await
    };
    match tokio::time::timeout(timeout, asked).await {
        Ok(Ok(response)) => Ok(Some(response.into_inner())),
        Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => Ok(None),
        Ok(Err(status)) => Err(format!(
            "{} did not say what it serves: {status}",
            lease.endpoint.address
        )),
        Err(_) => Err(format!(
            "{} did not say what it serves within {} ms",
            lease.endpoint.address,
            timeout.as_millis()
        )),
    }
}
