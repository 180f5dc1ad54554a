//! One gRPC call as one call on a channel, for each call shape: its options
//! from the request's headers, its answer or status, and the bodies that
//! keep a reset from reading as an end and a size refusal from reading as
//! `OUT_OF_RANGE`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_core::Stream;
use tonic::codec::CompressionEncoding;
use tonic::server::Grpc;
use tonic::{Request, Response, Streaming};
use workerbus::{ByteStream, CallOptions, MethodKind, MethodName, Payload, ResponseMetadata};

use super::Route;
use crate::codec::BridgeCodec;
use crate::latch::Latch;
use crate::map::{
    decode_timeout, decode_traceparent, error_to_tonic, metadata_from, metadata_into, names,
    oversize, too_large,
};
use crate::trailers::RewriteTrailers;

/// A future of the server's, boxed.
pub(super) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
/// A response stream as tonic's server takes it.
pub(super) type ItemStream =
    Pin<Box<dyn Stream<Item = Result<Payload, tonic::Status>> + Send + 'static>>;

/// Makes `request` one call on `route`'s channel, in its method's shape.
pub(super) fn call(
    route: Route,
    max_message_size: usize,
    request: http::Request<hyper::body::Incoming>,
) -> BoxFuture<Result<http::Response<tonic::body::Body>, Infallible>> {
    // tonic's decoder takes a request body that fails with `CANCEL` (the
    // caller's reset) for one that ended: it must not reach the worker
    // as `END`.
    let request = request.map(Unended);
    // Compressed when the caller asks, with gzip or zstd; never else.
    let mut grpc = Grpc::new(BridgeCodec)
        .max_decoding_message_size(max_message_size)
        .max_encoding_message_size(max_message_size)
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
            let call = tower::service_fn(move |request| server_stream(Arc::clone(&route), request));
            let response = grpc.server_streaming(call, request).await;
            Ok(resource_exhausted(response, &method))
        }),
        MethodKind::ClientStreaming => Box::pin(async move {
            let call = tower::service_fn(move |request| client_stream(Arc::clone(&route), request));
            let response = grpc.client_streaming(call, request).await;
            Ok(resource_exhausted(response, &method))
        }),
        MethodKind::BidiStreaming => Box::pin(async move {
            let call = tower::service_fn(move |request| bidi_stream(Arc::clone(&route), request));
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
) -> Result<Response<Payload>, tonic::Status> {
    let answered = ResponseMetadata::new();
    let options = call_options(&request, &answered)?;
    let outcome = (route.channel)
        .call_payload(&route.name, request.into_inner().into(), &options)
        .await;
    reply(outcome, &answered)
}

/// A one-way message is answered `OK` (an empty message) once the worker
/// has it queued; its handler runs detached from the gRPC call.
async fn one_way(
    route: Arc<Route>,
    request: Request<Bytes>,
) -> Result<Response<Payload>, tonic::Status> {
    let answered = ResponseMetadata::new();
    let options = call_options(&request, &answered)?;
    match (route.channel)
        .post_bytes(&route.name, request.into_inner(), &options)
        .await
    {
        Ok(()) => Ok(Response::new(Payload::new())),
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
) -> Result<Response<Payload>, tonic::Status> {
    let answered = ResponseMetadata::new();
    let options = call_options(&request, &answered)?;
    let (requests, refusal) = Requests::of(request);
    let call = (route.channel).client_stream_bytes(&route.name, requests, &options);
    tokio::select! {
        outcome = call => reply(outcome.map(Payload::from), &answered),
        refused = refused(refusal, route.name.clone()) => Err(refused),
    }
}

async fn bidi_stream(
    route: Arc<Route>,
    request: Request<Streaming<Bytes>>,
) -> Result<Response<ItemStream>, tonic::Status> {
    let answered = ResponseMetadata::new();
    let options = call_options(&request, &answered)?;
    let (requests, refusal) = Requests::of(request);
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

impl Requests {
    /// A call's request stream, and the latch its refusal is reported to.
    fn of(request: Request<Streaming<Bytes>>) -> (Requests, Arc<Latch<(u64, u64)>>) {
        let refusal = Arc::new(Latch::new());
        let requests = Requests {
            messages: request.into_inner(),
            refusal: Arc::clone(&refusal),
        };
        (requests, refusal)
    }
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
    let method = method.clone();
    let body = tonic::body::Body::new(RewriteTrailers::new(
        body,
        move |trailers: &mut http::HeaderMap| {
            rewrite_oversize(trailers, "a response message", &method);
        },
    ));
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
    type Item = Result<Payload, tonic::Status>;

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
            Some(Ok(item)) => Poll::Ready(Some(Ok(item.into()))),
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
