//! One call of the channel's as one gRPC call: its headers, its request
//! body as the channel sends it, its response as the channel's credit
//! allows, and a new attempt when the server refused it before reading it.

use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_core::Stream;
use http::uri::PathAndQuery;
use tokio::sync::{Notify, mpsc};
use tokio::task::AbortHandle;
use workerbus::{
    Code, Frame, Metadata, MethodKind, MethodName, Payload, STREAM_WINDOW, STREAM_WINDOW_BYTES,
    Status, TraceContext,
};

use super::{Route, Shared};
use crate::codec::BridgeCodec;
use crate::latch::Latch;
use crate::map::{
    GRPC_PREVIOUS_ATTEMPTS, TRACEPARENT, encode_timeout, encode_traceparent, from_tonic,
    metadata_into, names, oversize, response_metadata_from, too_large,
};
use crate::pool::{Lease, NoEndpoint};

/// How close to a call's own deadline a server's `DEADLINE_EXCEEDED` is
/// taken for the call's timeout, and left to the channel's timer.
const DEADLINE_SLACK: std::time::Duration = std::time::Duration::from_millis(100);

/// How many transparent retries a call refused before any server saw it
/// gets (on another connection each time, if there is one).
const MAX_REFUSED_RETRIES: u32 = 4;

/// Runs `call` on a task of its own until it ends, answering the channel
/// (an `INTERNAL` status if the task panics).
pub(super) fn spawn(
    shared: Arc<Shared>,
    call: Call,
    route: Route,
    received: Option<mpsc::UnboundedReceiver<Bytes>>,
    credit: Arc<ResponseCredit>,
) -> AbortHandle {
    let id = call.id;
    let one_way = call.kind == MethodKind::OneWay;
    let future = async move {
        let ending = Ending {
            shared: Arc::clone(&shared),
            id,
            one_way,
        };
        run(&shared, call, route, received, &credit).await;
        drop(ending);
    };
    // Boxed before it is spawned: the task keeps a pointer, and the future
    // (kilobytes, with tonic's and hyper's inside) is moved once.
    tokio::spawn(Box::pin(future)).abort_handle()
}

/// Ends a call task however it ends: forgets the call, and if the task
/// panicked (a bug, in this crate or below it), answers the call
/// `INTERNAL` rather than leaving it to its timeout.
struct Ending {
    shared: Arc<Shared>,
    id: u64,
    one_way: bool,
}

impl Drop for Ending {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.one_way {
            self.shared.send(Frame::Status {
                id: self.id,
                status: Status::internal(
                    "the gRPC client failed while it carried the call (a panic)".to_owned(),
                ),
            });
        }
        self.shared.finished(self.id);
    }
}

/// A `REQUEST`, as the call task takes it.
pub(super) struct Call {
    pub(super) id: u64,
    pub(super) method: MethodName,
    pub(super) timeout: Option<std::time::Duration>,
    pub(super) attempt: u32,
    pub(super) trace: Option<TraceContext>,
    pub(super) kind: MethodKind,
    pub(super) metadata: Metadata,
    pub(super) payload: Payload,
}

/// The response stream's credit, as the channel grants it (`PROTOCOL.md`
/// 5.10): the call reads a message only while it has some.
pub(super) struct ResponseCredit {
    state: Mutex<(u32, i64)>,
    granted: Notify,
}

impl ResponseCredit {
    pub(super) fn new() -> ResponseCredit {
        ResponseCredit {
            state: Mutex::new((STREAM_WINDOW, i64::from(STREAM_WINDOW_BYTES))),
            granted: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, (u32, i64)> {
        crate::lock(&self.state)
    }

    pub(super) fn grant(&self, messages: u32, bytes: u32) {
        let mut state = self.lock();
        state.0 = state.0.saturating_add(messages);
        state.1 = state
            .1
            .saturating_add(i64::from(bytes))
            .min(i64::from(u32::MAX));
        drop(state);
        self.granted.notify_waiters();
    }

    /// Waits until a message of `size` bytes may be sent to the channel,
    /// and spends its credit: for senders that share the credit.
    pub(super) async fn acquire(&self, size: usize) {
        loop {
            let granted = self.granted.notified();
            {
                let mut state = self.lock();
                if state.0 > 0 && state.1 > 0 {
                    state.0 -= 1;
                    state.1 = state
                        .1
                        .saturating_sub(i64::try_from(size).unwrap_or(i64::MAX));
                    return;
                }
            }
            granted.await;
        }
    }

    /// Waits until a message may be sent to the channel.
    async fn ready(&self) {
        loop {
            let granted = self.granted.notified();
            {
                let state = self.lock();
                if state.0 > 0 && state.1 > 0 {
                    return;
                }
            }
            granted.await;
        }
    }

    fn spend(&self, size: usize) {
        let mut state = self.lock();
        state.0 = state.0.saturating_sub(1);
        state.1 = state
            .1
            .saturating_sub(i64::try_from(size).unwrap_or(i64::MAX));
    }
}

/// Runs one call to its end, sending the channel its answer.
async fn run(
    shared: &Arc<Shared>,
    call: Call,
    route: Route,
    received: Option<mpsc::UnboundedReceiver<Bytes>>,
    credit: &ResponseCredit,
) {
    let id = call.id;
    let one_way = call.kind == MethodKind::OneWay;
    let started = tokio::time::Instant::now();
    // A message over the size limit, unary or in the request stream, fails
    // the call before it is sent (the call is dropped, so its stream is
    // reset).
    let refused = Arc::new(Latch::new());
    if call.payload.len() > shared.max_message_size {
        refused.set(call.payload.len());
    }
    let outcome = tokio::select! {
        biased;
        size = refused.wait() => {
            let status = too_large(
                &format!("a request message of {}", call.method),
                size as u64,
                shared.max_message_size as u64,
                "this gRPC client",
            );
            Err((Metadata::new(), Status::new(Code::ResourceExhausted, status.message().to_owned())))
        }
        outcome = attempt(shared, &call, route, received, credit, &refused) => outcome,
    };
    let (metadata, end) = match outcome {
        Ok((metadata, payload)) => (
            metadata,
            Frame::Response {
                id,
                payload: payload.into(),
            },
        ),
        Err((metadata, status)) => (metadata, Frame::Status { id, status }),
    };
    // The server's deadline is the call's, started a little later: its
    // DEADLINE_EXCEEDED may overtake the channel's own timer by a hair. At
    // the call's deadline, the channel's timer answers (`Error::Timeout`,
    // as on every driver) and cancels this task.
    if let (Frame::Status { status, .. }, Some(timeout), false) = (&end, call.timeout, one_way)
        && status.code() == Code::DeadlineExceeded
        && started.elapsed() + DEADLINE_SLACK >= timeout
    {
        std::future::pending::<()>().await;
    }
    if one_way {
        if let Frame::Status { status, .. } = &end {
            tracing::warn!(method = %call.method, %status, "workerbus-grpc: a one-way message failed");
        }
        return;
    }
    if !metadata.is_empty() {
        shared.send(Frame::Metadata { id, metadata });
    }
    shared.send(end);
}

/// A call's end: its response metadata and answer (empty for a stream), or
/// its response metadata and status.
type Outcome = Result<(Metadata, Bytes), (Metadata, Status)>;

/// The call, on a connection the pool gives, and again on another if the
/// server refused it before seeing it.
async fn attempt(
    shared: &Arc<Shared>,
    call: &Call,
    route: Route,
    received: Option<mpsc::UnboundedReceiver<Bytes>>,
    credit: &ResponseCredit,
    refused: &Arc<Latch<usize>>,
) -> Outcome {
    let path = PathAndQuery::from_static(route.path);
    let requests = Arc::new(Mutex::new(received));
    let mut refusals = 0;
    loop {
        let lease = match shared.pool.lease().await {
            Ok(lease) => lease,
            Err(NoEndpoint(why)) => {
                return Err((
                    Metadata::new(),
                    Status::unavailable(format!("{}: {why}", call.method)),
                ));
            }
        };
        let body = RequestBody::new(call, route.kind, &requests, shared, refused);
        let pulled = body.pulled();
        let mut request = tonic::Request::new(body);
        prepare(&mut request, call);
        let mut grpc = tonic::client::Grpc::with_origin(
            lease.connection.clone(),
            lease.endpoint.origin.clone(),
        )
        .max_decoding_message_size(shared.max_message_size)
        .max_encoding_message_size(shared.max_message_size);
        if let Some(encoding) = shared.compression {
            grpc = grpc.send_compressed(encoding).accept_compressed(encoding);
        }
        let response = match grpc.ready().await {
            Ok(()) => grpc.streaming(request, path.clone(), BridgeCodec).await,
            Err(error) => Err(tonic::Status::from_error(Box::new(error))),
        };
        match response {
            Ok(response) => return read(shared, call, route, response, credit, &lease).await,
            Err(status)
                if is_refused(&status)
                    && refusals < MAX_REFUSED_RETRIES
                    && !pulled.load(std::sync::atomic::Ordering::Acquire) =>
            {
                refusals += 1;
                tracing::debug!(method = %call.method, endpoint = %lease.endpoint.address, %status, "workerbus-grpc: a call was refused before any server saw it; sending it again");
            }
            Err(status) => {
                let mut metadata = Metadata::new();
                let status = failed(&status, &lease, &mut metadata);
                return Err((metadata, status));
            }
        }
    }
}

/// The call's headers: metadata, timeout, trace, attempt.
fn prepare<T>(request: &mut tonic::Request<T>, call: &Call) {
    metadata_into(&call.metadata, request.metadata_mut());
    let headers = request.metadata_mut();
    if let Some(timeout) = call.timeout {
        // tonic's `set_timeout` formats its value several times over.
        AsMut::<http::HeaderMap>::as_mut(headers)
            .insert(names::GRPC_TIMEOUT, encode_timeout(timeout));
    }
    if let Some(trace) = call.trace
        && let Ok(value) = encode_traceparent(trace).parse()
    {
        headers.insert(TRACEPARENT, value);
    }
    if call.attempt > 1 {
        headers.insert(GRPC_PREVIOUS_ATTEMPTS, (call.attempt - 1).into());
    }
}

/// Reads the response: one message, or a stream of them as the channel's
/// credit allows; then the trailers.
async fn read(
    shared: &Shared,
    call: &Call,
    route: Route,
    response: tonic::Response<tonic::Streaming<Bytes>>,
    credit: &ResponseCredit,
    lease: &Lease,
) -> Outcome {
    let mut metadata = Metadata::new();
    if let Err(status) = response_metadata_from(response.metadata(), &mut metadata) {
        return Err((Metadata::new(), status));
    }
    let mut messages = response.into_inner();
    let streams = matches!(
        route.kind,
        MethodKind::ServerStreaming | MethodKind::BidiStreaming
    );
    let mut answer = None;
    loop {
        if streams {
            credit.ready().await;
        }
        match messages.message().await {
            Ok(Some(message)) if streams => {
                credit.spend(message.len());
                shared.send(Frame::Item {
                    id: call.id,
                    payload: message,
                });
            }
            Ok(Some(message)) => {
                if answer.replace(message).is_some() {
                    return Err((
                        metadata,
                        Status::internal(format!(
                            "{}: the server answered a unary call with more than one message",
                            call.method
                        )),
                    ));
                }
            }
            Ok(None) => break,
            Err(status) => {
                let status = failed(&status, lease, &mut metadata);
                return Err((metadata, status));
            }
        }
    }
    match messages.trailers().await {
        Ok(Some(trailers)) => {
            if let Err(status) = response_metadata_from(&trailers, &mut metadata) {
                return Err((Metadata::new(), status));
            }
        }
        Ok(None) => {}
        Err(status) => {
            let status = failed(&status, lease, &mut metadata);
            return Err((metadata, status));
        }
    }
    if streams || call.kind == MethodKind::OneWay {
        return Ok((metadata, Bytes::new()));
    }
    match answer {
        Some(payload) => Ok((metadata, payload)),
        None => Err((
            metadata,
            Status::internal(format!(
                "{}: the server ended the call without a message",
                call.method
            )),
        )),
    }
}

/// A failed call's status, its trailers added to its response metadata:
/// the server's status as it is; a connection that failed under the call
/// `UNAVAILABLE`, naming the endpoint (so an idempotent call is retried,
/// on another endpoint if this one is ejected).
fn failed(status: &tonic::Status, lease: &Lease, metadata: &mut Metadata) -> Status {
    if let Some((size, limit)) = oversize(status) {
        // tonic's codec says OUT_OF_RANGE; gRPC (and the server) say
        // RESOURCE_EXHAUSTED.
        let what = if status.message().contains("encoded") {
            "a request message"
        } else {
            "a response message"
        };
        let status = too_large(what, size, limit, "this gRPC client");
        return Status::new(Code::ResourceExhausted, status.message().to_owned());
    }
    if let Some(error) = transport_error(status) {
        return Status::unavailable(format!(
            "the connection to {} failed: {error}",
            lease.endpoint.address
        ));
    }
    from_tonic(status, metadata)
}

/// The connection's own error under a status, if the status is not the
/// server's (a stream the server reset keeps the server's reason).
fn transport_error(status: &tonic::Status) -> Option<String> {
    let mut source: Option<&(dyn StdError + 'static)> = status.source();
    let mut found = None;
    while let Some(error) = source {
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            if h2.is_reset() && h2.is_remote() {
                return None;
            }
            return Some(h2.to_string());
        }
        if error.downcast_ref::<hyper::Error>().is_some()
            || error.downcast_ref::<std::io::Error>().is_some()
        {
            found.get_or_insert_with(|| error.to_string());
        }
        source = error.source();
    }
    found
}

/// Whether a call failed before any server saw it: the server refused its
/// stream (REFUSED_STREAM), its id was above the last one a GOAWAY let
/// through, or the connection had closed before it was sent (hyper says
/// canceled, or, when its sender was closed already, closed).
fn is_refused(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn StdError + 'static)> = status.source();
    while let Some(error) = source {
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            return h2.is_remote()
                && (h2.is_go_away() || h2.reason() == Some(h2::Reason::REFUSED_STREAM));
        }
        if let Some(hyper) = error.downcast_ref::<hyper::Error>()
            && (hyper.is_canceled() || hyper.is_closed())
        {
            return true;
        }
        source = error.source();
    }
    false
}

/// A request's body: its one message, or its stream's items as the channel
/// sends them (granting the channel credit as HTTP/2 takes them).
struct RequestBody {
    id: u64,
    first: Option<Payload>,
    /// Shared with the call, which takes it back for another try if the
    /// call was refused before a message was taken.
    items: Option<mpsc::UnboundedReceiver<Bytes>>,
    slot: Arc<Mutex<Option<mpsc::UnboundedReceiver<Bytes>>>>,
    /// Whether a message of the stream left: the call can no longer be
    /// sent again.
    pulled: Arc<std::sync::atomic::AtomicBool>,
    shared: Arc<Shared>,
    /// Taken and not yet granted back to the channel.
    taken: (u32, u32),
    /// Where a message over the size limit is reported.
    refused: Arc<Latch<usize>>,
    /// A message over the limit was refused: the body never ends.
    stalled: bool,
}

impl RequestBody {
    fn new(
        call: &Call,
        kind: MethodKind,
        slot: &Arc<Mutex<Option<mpsc::UnboundedReceiver<Bytes>>>>,
        shared: &Arc<Shared>,
        refused: &Arc<Latch<usize>>,
    ) -> RequestBody {
        let streams = matches!(
            kind,
            MethodKind::ClientStreaming | MethodKind::BidiStreaming
        );
        let items = if streams {
            crate::lock(slot).take()
        } else {
            None
        };
        RequestBody {
            id: call.id,
            first: (!streams).then(|| call.payload.clone()),
            items,
            slot: Arc::clone(slot),
            pulled: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            shared: Arc::clone(shared),
            taken: (0, 0),
            refused: Arc::clone(refused),
            stalled: false,
        }
    }

    fn pulled(&self) -> Arc<std::sync::atomic::AtomicBool> {
        Arc::clone(&self.pulled)
    }
}

impl Stream for RequestBody {
    type Item = Payload;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Payload>> {
        let this = &mut *self;
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(first));
        }
        if this.stalled {
            return Poll::Pending;
        }
        let Some(items) = &mut this.items else {
            return Poll::Ready(None);
        };
        let Some(item) = std::task::ready!(items.poll_recv(cx)) else {
            return Poll::Ready(None);
        };
        if item.len() > this.shared.max_message_size {
            // The call fails; the stream must never look ended, so it stays
            // pending from here on.
            this.refused.set(item.len());
            this.stalled = true;
            return Poll::Pending;
        }
        this.pulled
            .store(true, std::sync::atomic::Ordering::Release);
        // Grant the channel credit once half a window has been taken
        // (PROTOCOL.md 5.10).
        let size = u32::try_from(item.len()).unwrap_or(u32::MAX);
        this.taken = (this.taken.0 + 1, this.taken.1.saturating_add(size));
        if this.taken.0 >= STREAM_WINDOW / 2 || this.taken.1 >= STREAM_WINDOW_BYTES / 2 {
            let (count, bytes) = std::mem::take(&mut this.taken);
            this.shared.send(Frame::Credit {
                id: this.id,
                count,
                bytes,
            });
        }
        Poll::Ready(Some(item.into()))
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        if !self.pulled.load(std::sync::atomic::Ordering::Acquire)
            && let Some(items) = self.items.take()
        {
            *crate::lock(&self.slot) = Some(items);
        }
    }
}
