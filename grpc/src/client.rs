//! The client's transport: the frames a [`Channel`](workerbus::Channel)
//! sends become gRPC calls, and what the calls answer becomes frames. A
//! `REQUEST` opens a call on a connection the pool chooses, `ITEM`s and
//! `END` are its request body, `CANCEL` resets it, and `CREDIT` lets the
//! call read its next response messages, so a slow reader holds back the
//! server through HTTP/2's flow control.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_core::Stream;
use futures_sink::Sink;
use http::uri::PathAndQuery;
use prost::Message;
use tokio::sync::{Notify, mpsc};
use tokio::task::AbortHandle;
use workerbus::{
    Code, Frame, FrameError, Metadata, MethodKind, MethodName, STREAM_WINDOW, STREAM_WINDOW_BYTES,
    ServiceSchema, Status, TraceContext,
};

use crate::codec::BytesCodec;
use crate::latch::Latch;
use crate::map::{
    GRPC_PREVIOUS_ATTEMPTS, TRACEPARENT, encode_timeout, encode_traceparent, from_tonic,
    metadata_into, names, oversize, response_metadata_from, too_large,
};
use crate::pool::{Lease, NoEndpoint, Pool};
use crate::worker::{self, Event, HealthRequest, SubscribeRequest};

/// What the transport knows of each method it can call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Route {
    pub(crate) path: &'static str,
    pub(crate) kind: MethodKind,
}

/// Every method of the services a client serves, by message name.
pub(crate) fn routes(schemas: &[&'static ServiceSchema]) -> HashMap<MethodName, Route> {
    schemas
        .iter()
        .flat_map(|schema| schema.methods())
        .map(|method| {
            (
                MethodName::from_static(method.name()),
                Route {
                    path: method.grpc_path(),
                    kind: method.kind(),
                },
            )
        })
        .collect()
}

/// How close to a call's own deadline a server's `DEADLINE_EXCEEDED` is
/// taken for the call's timeout, and left to the channel's timer.
const DEADLINE_SLACK: std::time::Duration = std::time::Duration::from_millis(100);

/// How many transparent retries a call refused before any server saw it
/// gets (on another connection each time, if there is one).
const MAX_REFUSED_RETRIES: u32 = 4;

/// The transport of a gRPC client's channel.
pub(crate) struct GrpcTransport {
    shared: Arc<Shared>,
    inbox: mpsc::UnboundedReceiver<Frame>,
}

/// What the transport and its calls share.
pub(crate) struct Shared {
    pool: Arc<Pool>,
    routes: HashMap<MethodName, Route>,
    max_message_size: usize,
    /// Frames for the channel: answers, items, metadata, credit.
    outbox: mpsc::UnboundedSender<Frame>,
    state: Mutex<State>,
    /// Rung when the last call in flight ends.
    idle: Notify,
    /// The channel's credit for events (`CREDIT` with id 0).
    events: ResponseCredit,
    /// The service whose worker's health the channel's `health()` reports.
    health_of: String,
    /// How calls' messages are compressed, if they are.
    compression: Option<tonic::codec::CompressionEncoding>,
}

#[derive(Default)]
struct State {
    calls: HashMap<u64, CallHandle>,
    /// The channel asked to finish: new calls are refused, and the stream
    /// ends once the calls in flight have.
    draining: bool,
    /// No more frames: the stream ends now.
    ended: bool,
    /// The channel's reader, woken when the stream ends.
    reader: Option<Waker>,
}

/// What the transport keeps of a call in flight.
struct CallHandle {
    /// Its request stream's next messages; dropped at `END`.
    requests: Option<mpsc::UnboundedSender<Bytes>>,
    credit: Arc<ResponseCredit>,
    task: AbortHandle,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn send(&self, frame: Frame) {
        // The receiver is the transport itself; once it is gone, nobody
        // awaits the frame.
        let _ = self.outbox.send(frame);
    }

    /// A call ended: forget it, and end the stream if it was the last one
    /// of a drain.
    fn finished(&self, id: u64) {
        let (idle, waker) = {
            let mut state = self.lock();
            state.calls.remove(&id);
            // Only a drain waits for the last call to end.
            let idle = state.calls.is_empty() && state.draining;
            if idle {
                state.ended = true;
                (idle, state.reader.take())
            } else {
                (idle, None)
            }
        };
        if idle {
            self.idle.notify_waiters();
        }
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Refuses new calls, and waits until the calls in flight have ended.
    pub(crate) async fn drain(&self) {
        loop {
            let idle = self.idle.notified();
            {
                let mut state = self.lock();
                state.draining = true;
                if state.calls.is_empty() {
                    return;
                }
            }
            idle.await;
        }
    }

    /// Ends the transport now: every call is dropped (its HTTP/2 stream
    /// reset), the connections close, and the channel's stream ends.
    pub(crate) fn end(&self) {
        self.pool.close();
        let (calls, waker) = {
            let mut state = self.lock();
            state.ended = true;
            (std::mem::take(&mut state.calls), state.reader.take())
        };
        for call in calls.into_values() {
            call.task.abort();
        }
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// How many calls are in flight.
    pub(crate) fn in_flight(&self) -> usize {
        self.lock().calls.len()
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcTransport")
            .field("calls", &self.in_flight())
            .finish_non_exhaustive()
    }
}

impl GrpcTransport {
    pub(crate) fn new(
        pool: Arc<Pool>,
        routes: HashMap<MethodName, Route>,
        max_message_size: usize,
        health_of: String,
        compression: Option<tonic::codec::CompressionEncoding>,
    ) -> GrpcTransport {
        let (outbox, inbox) = mpsc::unbounded_channel();
        GrpcTransport {
            shared: Arc::new(Shared {
                pool,
                routes,
                max_message_size,
                outbox,
                state: Mutex::new(State::default()),
                idle: Notify::new(),
                events: ResponseCredit::new(),
                health_of,
                compression,
            }),
            inbox,
        }
    }

    pub(crate) fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    fn take(&mut self, frame: Frame) {
        match frame {
            Frame::Request {
                id,
                method,
                timeout,
                attempt,
                trace,
                kind,
                metadata,
                payload,
                ..
            } => self.open(Call {
                id,
                method,
                timeout,
                attempt,
                trace,
                kind,
                metadata,
                payload,
            }),
            Frame::Item { id, payload } => {
                if let Some(requests) = self
                    .shared
                    .lock()
                    .calls
                    .get(&id)
                    .and_then(|call| call.requests.as_ref())
                {
                    let _ = requests.send(payload);
                }
            }
            Frame::End { id } => {
                if let Some(call) = self.shared.lock().calls.get_mut(&id) {
                    call.requests = None;
                }
            }
            Frame::Cancel { id } => {
                let call = self.shared.lock().calls.remove(&id);
                if let Some(call) = call {
                    call.task.abort();
                }
                self.shared.finished(id);
            }
            Frame::Credit {
                id: 0,
                count,
                bytes,
            } => self.shared.events.grant(count, bytes),
            Frame::Credit { id, count, bytes } => {
                let credit = self
                    .shared
                    .lock()
                    .calls
                    .get(&id)
                    .map(|call| Arc::clone(&call.credit));
                if let Some(credit) = credit {
                    credit.grant(count, bytes);
                }
            }
            Frame::Shutdown => {
                let waker = {
                    let mut state = self.shared.lock();
                    state.draining = true;
                    if state.calls.is_empty() {
                        state.ended = true;
                    }
                    state.reader.take()
                };
                if let Some(waker) = waker {
                    waker.wake();
                }
            }
            // A host never sends answers or events; nothing to do with them.
            _ => {}
        }
    }

    fn open(&mut self, mut call: Call) {
        let id = call.id;
        let route = if call.method == worker::CORE_HEALTH {
            // The channel's health(): the serving node's report of the
            // worker behind the first service.
            call.payload = HealthRequest {
                service: self.shared.health_of.clone(),
            }
            .encode_to_vec()
            .into();
            Some(Route {
                path: worker::HEALTH,
                kind: MethodKind::Unary,
            })
        } else {
            self.shared.routes.get(&call.method).copied()
        };
        let Some(route) = route else {
            if call.kind != MethodKind::OneWay {
                self.shared.send(Frame::Status {
                    id,
                    status: Status::unimplemented(format!(
                        "{} is not a method of the services this gRPC client serves",
                        call.method
                    )),
                });
            }
            return;
        };
        if self.shared.lock().draining {
            if call.kind != MethodKind::OneWay {
                self.shared.send(Frame::Status {
                    id,
                    status: Status::unavailable(format!(
                        "{}: the gRPC client is shutting down",
                        call.method
                    )),
                });
            }
            return;
        }
        let streams_request = matches!(
            route.kind,
            MethodKind::ClientStreaming | MethodKind::BidiStreaming
        );
        let (requests, received) = if streams_request {
            let (sender, receiver) = mpsc::unbounded_channel();
            (Some(sender), Some(receiver))
        } else {
            (None, None)
        };
        let credit = Arc::new(ResponseCredit::new());
        let shared = Arc::clone(&self.shared);
        let task_credit = Arc::clone(&credit);
        // The task is registered before it can finish and unregister itself.
        let mut state = self.shared.lock();
        let one_way = call.kind == MethodKind::OneWay;
        let future = async move {
            let ending = Ending {
                shared: Arc::clone(&shared),
                id,
                one_way,
            };
            run(&shared, call, route, received, &task_credit).await;
            drop(ending);
        };
        // Boxed before it is spawned: the task keeps a pointer, and the
        // future (kilobytes, with tonic's and hyper's inside) is moved once.
        let task = tokio::spawn(Box::pin(future));
        state.calls.insert(
            id,
            CallHandle {
                requests,
                credit,
                task: task.abort_handle(),
            },
        );
    }
}

impl Drop for GrpcTransport {
    fn drop(&mut self) {
        self.shared.end();
    }
}

impl Stream for GrpcTransport {
    type Item = Result<Frame, FrameError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Poll::Ready(Some(frame)) = self.inbox.poll_recv(cx) {
            return Poll::Ready(Some(Ok(frame)));
        }
        let mut state = self.shared.lock();
        if state.ended {
            return Poll::Ready(None);
        }
        state.reader = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Sink<Frame> for GrpcTransport {
    type Error = FrameError;

    fn poll_ready(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), FrameError>> {
        Poll::Ready(Ok(()))
    }

    fn start_send(mut self: Pin<&mut Self>, frame: Frame) -> Result<(), FrameError> {
        self.take(frame);
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), FrameError>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), FrameError>> {
        self.shared.end();
        Poll::Ready(Ok(()))
    }
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
struct Call {
    id: u64,
    method: MethodName,
    timeout: Option<std::time::Duration>,
    attempt: u32,
    trace: Option<TraceContext>,
    kind: MethodKind,
    metadata: Metadata,
    payload: Bytes,
}

/// The response stream's credit, as the channel grants it (`PROTOCOL.md`
/// 5.10): the call reads a message only while it has some.
struct ResponseCredit {
    state: Mutex<(u32, i64)>,
    granted: Notify,
}

impl ResponseCredit {
    fn new() -> ResponseCredit {
        ResponseCredit {
            state: Mutex::new((STREAM_WINDOW, i64::from(STREAM_WINDOW_BYTES))),
            granted: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, (u32, i64)> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn grant(&self, messages: u32, bytes: u32) {
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
    async fn acquire(&self, size: usize) {
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
        Ok((metadata, payload)) => (metadata, Frame::Response { id, payload }),
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
            Ok(()) => grpc.streaming(request, path.clone(), BytesCodec).await,
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
/// through, or the connection had closed before it was sent.
fn is_refused(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn StdError + 'static)> = status.source();
    while let Some(error) = source {
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            return h2.is_remote()
                && (h2.is_go_away() || h2.reason() == Some(h2::Reason::REFUSED_STREAM));
        }
        if let Some(hyper) = error.downcast_ref::<hyper::Error>()
            && hyper.is_canceled()
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
    first: Option<Bytes>,
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
            slot.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take()
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
    type Item = Bytes;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
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
        Poll::Ready(Some(item))
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        if !self.pulled.load(std::sync::atomic::Ordering::Acquire)
            && let Some(items) = self.items.take()
        {
            *self
                .slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(items);
        }
    }
}

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
