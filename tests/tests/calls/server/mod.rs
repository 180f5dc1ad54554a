//! The serve loop seen through raw frames over an in-memory transport: a
//! call's life (deadline, cancellation, the limit of calls running and the
//! queue behind it, shutdown), the cancellation a handler hands its work,
//! one-way messages, streams, a host that breaks
//! the rules, messages over the maximum frame length, and services and their
//! dispatch (pairs of services, handlers that panic).

mod calls;
mod cancellation;
mod dispatch;
mod one_way;
mod oversized;
mod rules;
mod streams;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use prost::Message;
use workerbus::{
    Call, Context, Dispatch, Frame, FrameError, MemoryTransport, MethodName, Payload, ServeOptions,
    ServiceSchema, Status, serve_transport,
};
use workerbus_tests::EchoWorker;
use workerbus_tests::pb::echo::{
    EchoClient, EchoReply, EchoRequest, EchoServer, ObserveRequest, SleepRequest, SleepState,
};

type Served = tokio::task::JoinHandle<Result<(), FrameError>>;

/// Serves `service` on this runtime; returns the host's raw end.
fn serve_with(service: impl Dispatch, options: ServeOptions) -> (MemoryTransport, Served) {
    let (host, worker) = MemoryTransport::pair();
    let served = tokio::spawn(serve_transport(worker, service, options));
    (host, served)
}

/// An `EchoWorker` served on this runtime.
fn serve(options: ServeOptions) -> (MemoryTransport, Served) {
    serve_with(EchoServer::new(EchoWorker::new()), options)
}

fn request(id: u64, method: &'static str, message: &impl Message) -> Frame {
    Frame::request(
        id,
        MethodName::from_static(method),
        None,
        1,
        Bytes::from(message.encode_to_vec()),
    )
}

/// A request with the deadline `timeout`, if any.
fn request_within(
    id: u64,
    method: &'static str,
    timeout: Option<Duration>,
    message: &impl Message,
) -> Frame {
    Frame::request(
        id,
        MethodName::from_static(method),
        timeout,
        1,
        Bytes::from(message.encode_to_vec()),
    )
}

fn echo(id: u64, text: &str) -> Frame {
    let message = EchoRequest {
        text: text.into(),
        ..EchoRequest::default()
    };
    request(id, "echo.echo", &message)
}

fn sleep(id: u64, tag: &str, ms: u64, timeout: Option<Duration>) -> Frame {
    let message = SleepRequest {
        tag: tag.into(),
        ms,
        blocking: false,
    };
    request_within(id, "echo.sleep", timeout, &message)
}

fn observe(id: u64, tag: &str, state: SleepState) -> Frame {
    let message = ObserveRequest {
        tag: tag.into(),
        state: state.into(),
    };
    request(id, "echo.observe", &message)
}

async fn next(host: &mut MemoryTransport) -> Frame {
    tokio::time::timeout(Duration::from_secs(20), host.next())
        .await
        .expect("the worker answers within 20 s")
        .expect("the connection is open")
        .expect("a valid frame")
}

/// The error serving ended with, which it must end with.
async fn ended_with(served: Served) -> String {
    tokio::time::timeout(Duration::from_secs(20), served)
        .await
        .expect("serving ends within 20 s")
        .expect("the serve task did not panic")
        .expect_err("serving ends with an error")
        .to_string()
}

/// The status answering `id`, which must be the next frame.
async fn status_of(host: &mut MemoryTransport, id: u64) -> Status {
    match next(host).await {
        Frame::Status {
            id: answered,
            status,
        } if answered == id => status,
        other => panic!("expected a status for request {id}, got {other:?}"),
    }
}

/// The worker still answers: a health check and an echo.
async fn still_serving(host: &mut MemoryTransport, id: u64) {
    host.send(echo(id, "still here")).await.unwrap();
    match next(host).await {
        Frame::Response {
            id: answered,
            payload,
        } if answered == id => {
            assert_eq!(
                EchoReply::decode(payload.into_bytes()).unwrap().text,
                "still here"
            );
        }
        other => panic!("expected the answer to request {id}, got {other:?}"),
    }
}

struct Nothing;

impl workerbus_tests::pb::echo::MissingHandler for Nothing {
    async fn nothing(&self, _request: (), _cx: &Context) -> Result<(), Status> {
        Ok(())
    }
}

type Handled = Pin<Box<dyn Future<Output = Result<Payload, Status>> + Send>>;

static ECHO_SCHEMA: ServiceSchema = EchoClient::SCHEMA;

/// A hand-written service: each call is whatever its function makes of it.
struct Probe(Box<dyn Fn(Call) -> Handled + Send + Sync>);

impl Dispatch for Probe {
    fn schema(&self) -> &'static ServiceSchema {
        &ECHO_SCHEMA
    }

    fn dispatch(
        &self,
        call: Call,
    ) -> impl Future<Output = Result<Payload, Status>> + Send + 'static + use<> {
        (self.0)(call)
    }
}
