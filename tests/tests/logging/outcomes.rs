//! The `outcome` of calls that fail, on each side: the short name of each
//! way a call can fail on the host, and the status code on the worker. (The
//! spans are captured by a subscriber set for the test's thread, where host
//! and worker both run.)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tracing_subscriber::Registry;
use tracing_subscriber::layer::SubscriberExt;
use workerbus::{
    CallInfo, CallOptions, Channel, Code, Error, ExitReason, FrameError, Logging, MemoryTransport,
    Middleware, Next, ServeOptions, Status, serve_transport,
};
use workerbus_tests::EchoWorker;
use workerbus_tests::pb::echo::{EchoClient, EchoReply, EchoRequest, EchoServer, FailRequest};

use crate::Recorder;

/// Fails every call with the error it is given next, without sending it.
#[derive(Clone, Default)]
struct FailWith(Arc<Mutex<Option<Error>>>);

impl Middleware for FailWith {
    async fn call(&self, _call: &CallInfo, next: Next<'_>) -> Result<workerbus::Payload, Error> {
        let error = self.0.lock().unwrap().take();
        match error {
            Some(error) => Err(error),
            None => next.run().await,
        }
    }
}

fn method() -> workerbus::MethodName {
    workerbus::MethodName::from_static("echo.echo")
}

#[tokio::test]
async fn each_way_a_call_fails_has_its_own_outcome_on_the_host() {
    let recorder = Recorder::default();
    let _guard = tracing::subscriber::set_default(Registry::default().with(recorder.clone()));

    let (host, _worker) = MemoryTransport::pair();
    let fail = FailWith::default();
    let client = EchoClient::new(
        Channel::new(host)
            .with_middleware(Logging::new())
            .with_middleware(fail.clone()),
    );
    let decode_error = EchoReply::decode(&[0x0a, 0xff][..]).unwrap_err();
    let errors = [
        Error::Timeout {
            method: method(),
            after: Duration::from_secs(1),
        },
        Error::Remote {
            method: method(),
            status: Status::not_found("no such thing"),
        },
        Error::WorkerExited {
            method: method(),
            exit: ExitReason::Signal(9),
        },
        Error::Disconnected {
            method: method(),
            cause: Some(Arc::new(FrameError::Closed)),
        },
        Error::Unavailable {
            method: method(),
            worker: "w".into(),
            reason: "it is restarting".into(),
        },
        Error::Cancelled { method: method() },
        Error::TooLarge {
            method: method(),
            what: "request",
            size: 2,
            max: 1,
            key: None,
        },
        Error::Decode {
            method: method(),
            what: "response",
            message: "echo.EchoReply",
            source: decode_error,
        },
        Error::Handshake {
            worker: "w".into(),
            reason: "refused".into(),
        },
    ];
    for error in errors {
        *fail.0.lock().unwrap() = Some(error);
        client
            .echo(EchoRequest::default())
            .await
            .expect_err("the call fails as told");
    }
    assert_eq!(
        recorder.outcomes("host"),
        [
            "timeout",
            "not found",
            "worker exited",
            "disconnected",
            "unavailable",
            "cancelled",
            "too large",
            "decode",
            "error",
        ]
    );
}

#[tokio::test]
async fn a_failed_call_has_its_status_code_as_outcome_on_both_sides() {
    let recorder = Recorder::default();
    let _guard = tracing::subscriber::set_default(Registry::default().with(recorder.clone()));

    let (host, worker) = MemoryTransport::pair();
    let _served = tokio::spawn(serve_transport(
        worker,
        EchoServer::new(EchoWorker::new()),
        ServeOptions::new().middleware(Logging::new()),
    ));
    let client = EchoClient::new(Channel::new(host).with_middleware(Logging::new()));
    let error = client
        .fail(FailRequest {
            code: Code::PermissionDenied.as_u32(),
            message: "not yours".into(),
            details: Bytes::new(),
            repeat: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(
        error.status().map(Status::code),
        Some(Code::PermissionDenied)
    );
    // A call the host gives up on: its timeout.
    let sleep = workerbus_tests::pb::echo::SleepRequest {
        tag: "slow".into(),
        ms: 60_000,
        blocking: false,
    };
    let error = client
        .sleep_with(sleep, CallOptions::new().timeout(Duration::from_millis(20)))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Timeout { .. }), "{error:?}");

    assert_eq!(recorder.outcomes("host"), ["permission denied", "timeout"]);
    // The worker's sleep was dropped at its deadline: it has no outcome.
    assert_eq!(recorder.outcomes("worker"), ["permission denied", ""]);
}
