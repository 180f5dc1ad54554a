//! The door generated code goes through (`workerbus::__codegen`), driven at
//! run time with what a generator would emit for other schemas: a method's
//! schema defaults (timeout, retries, idempotency) apply to its calls, a
//! subscription is a stream of its service's events, and a host built from a
//! schema that differs from its worker's fails the handshake naming every
//! difference.

use std::time::Duration;

use futures_util::StreamExt;
use prost::Message;
use workerbus::__codegen::{Client, MethodDesc, method_schema, service_schema};
use workerbus::{
    Backoff, CallOptions, Code, Error, MethodKind, MethodSchema, ProcessDriver, ServiceSchema,
    ThreadDriver,
};
use workerbus_tests::EchoWorker;
use workerbus_tests::pb::echo::{
    AnnounceRequest, EchoClient, EchoServer, FlakyReply, FlakyRequest, SleepRequest, TickEvent,
    echo_events_service,
};

use crate::ECHO_WORKER;

/// A method description made at run time, as generated code makes one at
/// compile time.
fn method(desc: MethodDesc) -> &'static MethodDesc {
    Box::leak(Box::new(desc))
}

#[tokio::test]
async fn a_methods_schema_defaults_apply_to_its_calls() {
    let worker = ThreadDriver::new()
        .spawn(EchoServer::new(EchoWorker::new()))
        .await
        .unwrap();
    let client = Client::new(worker.channel());

    // `timeout_ms`.
    let sleep = method(MethodDesc::new("echo.sleep", "google.protobuf.Empty").timeout_ms(50));
    let request = SleepRequest {
        tag: "defaults".into(),
        ms: 60_000,
        blocking: false,
    };
    let result: Result<(), Error> = client.unary(sleep, request, None).await;
    match result {
        Err(Error::Timeout { method, after }) => {
            assert_eq!(method, "echo.sleep");
            assert_eq!(after, Duration::from_millis(50));
        }
        other => panic!("expected the schema's timeout, got {other:?}"),
    }

    // `retries` apply to an `idempotent` method only.
    let quick = CallOptions::new().backoff(Backoff::constant(Duration::ZERO));
    let retried = method(
        MethodDesc::new("echo.flaky_v2", "echo.FlakyReply")
            .retries(3)
            .idempotent(),
    );
    let reply: FlakyReply = client
        .unary(retried, FlakyRequest { succeed_on: 3 }, Some(&quick))
        .await
        .unwrap();
    assert_eq!(reply.attempt, 3);
    let not_idempotent = method(MethodDesc::new("echo.flaky_v2", "echo.FlakyReply").retries(3));
    let result: Result<FlakyReply, Error> = client
        .unary(not_idempotent, FlakyRequest { succeed_on: 3 }, Some(&quick))
        .await;
    let status = result
        .unwrap_err()
        .status()
        .cloned()
        .expect("a remote status");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "attempt 1 fails");
    worker.shutdown().await;
}

/// The Echo method `name` as the worker's schema has it, but of `kind`.
fn echo_method(name: &str, kind: MethodKind) -> MethodSchema {
    let real = EchoClient::SCHEMA.method(name).expect("an Echo method");
    method_schema(
        real.name(),
        (real.request(), real.request_fingerprint()),
        (real.response(), real.response_fingerprint()),
        kind,
        real.grpc_path(),
    )
}

fn schema(methods: Vec<MethodSchema>) -> ServiceSchema {
    service_schema("echo.Echo", Box::leak(methods.into_boxed_slice()), 1)
}

async fn handshake_error(expected: ServiceSchema) -> String {
    let error = ProcessDriver::new(ECHO_WORKER)
        .serves(expected)
        .spawn()
        .await
        .expect_err("the schemas differ");
    assert!(matches!(error, Error::Handshake { .. }), "{error:?}");
    error.to_string()
}

#[tokio::test]
async fn a_schema_differing_in_kinds_and_methods_fails_the_handshake_naming_each() {
    let mut methods: Vec<MethodSchema> = EchoClient::SCHEMA.methods().to_vec();
    for method in &mut methods {
        *method = match method.name() {
            "echo.echo" => echo_method("echo.echo", MethodKind::ClientStreaming),
            "echo.count" => echo_method("echo.count", MethodKind::BidiStreaming),
            "echo.note" => echo_method("echo.note", MethodKind::Unary),
            _ => *method,
        };
    }
    methods.push(method_schema(
        "echo.gone",
        ("google.protobuf.Empty", 1),
        ("google.protobuf.Empty", 1),
        MethodKind::Unary,
        "/echo.Echo/Gone",
    ));
    assert_eq!(
        handshake_error(schema(methods)).await,
        "worker echo-worker: schema mismatch: echo.Echo differs: \
         echo.echo: streams its requests here but is unary in the worker; \
         echo.count: streams both ways here but streams its responses in the worker; \
         echo.note: is unary here but is one-way in the worker; \
         echo.gone is missing from the worker"
    );
}

#[tokio::test]
async fn a_schema_with_the_same_methods_in_another_order_fails_the_handshake_saying_so() {
    let mut methods: Vec<MethodSchema> = EchoClient::SCHEMA.methods().to_vec();
    methods.reverse();
    assert_eq!(
        handshake_error(schema(methods)).await,
        "worker echo-worker: schema mismatch: echo.Echo differs: the method order differs"
    );
}

#[tokio::test]
async fn a_subscription_is_a_stream_of_its_services_events() {
    let worker = ThreadDriver::new()
        .spawn(EchoServer::new(EchoWorker::new()))
        .await
        .unwrap();
    let mut events =
        workerbus::__codegen::subscribe(&worker.channel(), &echo_events_service::SCHEMA);
    assert_eq!(events.schema().name(), "echo.EchoEvents");
    let request = AnnounceRequest {
        tag: "door".into(),
        count: 2,
        padding: 0,
    };
    EchoClient::new(worker.channel())
        .announce(request)
        .await
        .unwrap();
    for value in 0..2 {
        let (method, payload) = events.next().await.expect("an event");
        assert_eq!(method, echo_events_service::TICK);
        let tick = TickEvent::decode(payload).unwrap();
        assert_eq!((tick.tag.as_str(), tick.value), ("door", value));
    }
    worker.shutdown().await;
    assert!(
        events.next().await.is_none(),
        "the stream ends with the worker"
    );
}
