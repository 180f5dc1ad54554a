//! Services and their dispatch: pairs of services served by one worker,
//! hand-written services whose dispatch or handler panics, and a handler's
//! context outside a worker.

use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use prost::Message;
use workerbus::{
    Call, Code, Context, Dispatch, Frame, MemoryTransport, MethodKind, MethodName, ServeOptions,
    Services, Status, ThreadDriver, serve_transport,
};
use workerbus_tests::pb::echo::{EchoReply, EchoServer, MissingServer};
use workerbus_tests::{EchoWorker, cases};

use super::{Handled, Nothing, Probe, next, request, serve_with, status_of, still_serving};

#[tokio::test]
async fn a_pair_of_services_is_served_by_one_worker() {
    use workerbus::Dispatch;
    use workerbus_tests::pb::echo::{MissingClient, MissingServer};

    let services = (
        EchoServer::new(EchoWorker::new()),
        MissingServer::new(Nothing),
    );
    let names: Vec<&str> = services.schemas().iter().map(|s| s.name()).collect();
    assert_eq!(names, ["echo.Echo", "echo.Missing"]);
    let worker = ThreadDriver::new().spawn(services).await.unwrap();
    cases::unary_round_trip(&worker.channel()).await;
    MissingClient::new(worker.channel())
        .nothing(())
        .await
        .unwrap();

    // A message name neither has is answered naming both.
    let (mut host, worker) = MemoryTransport::pair();
    let _served = tokio::spawn(serve_transport(
        worker,
        (
            EchoServer::new(EchoWorker::new()),
            MissingServer::new(Nothing),
        ),
        ServeOptions::new(),
    ));
    let unknown = Frame::request(
        1,
        MethodName::from_static("echo.unknown"),
        None,
        1,
        Bytes::new(),
    );
    host.send(unknown).await.unwrap();
    match next(&mut host).await {
        Frame::Status { id: 1, status } => {
            assert_eq!(status.code(), Code::Unimplemented);
            assert!(
                status.message().starts_with(
                    "echo.unknown is not a method of any service this worker serves: echo.Echo (echo.echo, "
                ),
                "{}",
                status.message()
            );
            assert!(
                status
                    .message()
                    .ends_with("; echo.Missing (missing.nothing)")
            );
        }
        other => panic!("expected Unimplemented, got {other:?}"),
    }
}

#[tokio::test]
async fn services_added_one_at_a_time_are_served_by_one_worker_in_the_order_added() {
    use workerbus_tests::pb::echo::MissingClient;

    let services = Services::new(MissingServer::new(Nothing))
        .add(EchoServer::new(EchoWorker::new()))
        .add(MissingServer::new(Nothing));
    let names: Vec<&str> = services.schemas().iter().map(|s| s.name()).collect();
    assert_eq!(names, ["echo.Missing", "echo.Echo", "echo.Missing"]);
    assert!(services.serves("echo.echo") && services.serves("missing.nothing"));
    assert!(!services.serves("echo.unknown"));
    // The builder is the pairs it nests, nothing more.
    assert_eq!(
        std::mem::size_of_val(&services),
        std::mem::size_of::<(
            (MissingServer<Nothing>, EchoServer<EchoWorker>),
            MissingServer<Nothing>
        )>()
    );

    let worker = ThreadDriver::new().spawn(services).await.unwrap();
    cases::unary_round_trip(&worker.channel()).await;
    MissingClient::new(worker.channel())
        .nothing(())
        .await
        .unwrap();

    // A message name none has is answered naming each service.
    let (mut host, _served) = serve_with(
        Services::new(EchoServer::new(EchoWorker::new())).add(MissingServer::new(Nothing)),
        ServeOptions::new(),
    );
    host.send(request(1, "echo.unknown", &())).await.unwrap();
    let status = status_of(&mut host, 1).await;
    assert_eq!(status.code(), Code::Unimplemented);
    assert!(
        status.message().starts_with(
            "echo.unknown is not a method of any service this worker serves: echo.Echo (echo.echo, "
        ) && status
            .message()
            .ends_with("; echo.Missing (missing.nothing)"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn a_pair_nested_in_a_pair_routes_each_call_to_the_service_that_has_it() {
    let services = (
        (
            MissingServer::new(Nothing),
            EchoServer::new(EchoWorker::new()),
        ),
        MissingServer::new(Nothing),
    );
    let names: Vec<&str> = services.schemas().iter().map(|s| s.name()).collect();
    assert_eq!(names, ["echo.Missing", "echo.Echo", "echo.Missing"]);
    assert!(services.serves("echo.echo"));
    assert!(!services.serves("echo.unknown"));
    let (mut host, _served) = serve_with(services, ServeOptions::new());
    still_serving(&mut host, 1).await;
    host.send(request(2, "missing.nothing", &())).await.unwrap();
    assert_eq!(
        next(&mut host).await,
        Frame::Response {
            id: 2,
            payload: Bytes::new().into()
        }
    );
}

/// A service whose dispatch panics with `&'static str` for `echo.fail`,
/// whose handler panics with a number for `echo.panic`, and which answers
/// everything else.
fn panicking() -> Probe {
    Probe(Box::new(|call: Call| -> Handled {
        match call.into_parts().1.method() {
            "echo.fail" => panic!("dispatch refused the call"),
            "echo.panic" => Box::pin(async { std::panic::panic_any(42_u32) }),
            _ => Box::pin(async { Ok(EchoReply::default().encode_to_vec().into()) }),
        }
    }))
}

async fn panics_are_answered_as_internal_errors() {
    let (mut host, _served) = serve_with(panicking(), ServeOptions::new());
    host.send(request(1, "echo.fail", &())).await.unwrap();
    assert_eq!(
        status_of(&mut host, 1).await,
        Status::internal("the handler for echo.fail panicked: dispatch refused the call")
    );
    host.send(request(2, "echo.panic", &())).await.unwrap();
    assert_eq!(
        status_of(&mut host, 2).await,
        Status::internal("the handler for echo.panic panicked: a non-string panic payload")
    );
    host.send(request(3, "echo.echo", &())).await.unwrap();
    assert!(matches!(
        next(&mut host).await,
        Frame::Response { id: 3, .. }
    ));
}

/// A one-way message is never answered, even when its dispatch panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_way_message_whose_dispatch_panics_is_not_answered() {
    let (mut host, _served) = serve_with(panicking(), ServeOptions::new());
    host.send(request(1, "echo.fail", &()).with_kind(MethodKind::OneWay))
        .await
        .unwrap();
    host.send(request(2, "echo.echo", &())).await.unwrap();
    assert!(matches!(
        next(&mut host).await,
        Frame::Response { id: 2, .. }
    ));
}

/// On a current-thread runtime the serve loop polls a handler first itself.
#[tokio::test]
async fn a_handler_panicking_in_its_first_poll_is_an_internal_error_naming_the_payload() {
    panics_are_answered_as_internal_errors().await;
}

/// On a multi-thread runtime every call is a task of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_panicking_in_its_task_or_its_dispatch_is_an_internal_error() {
    panics_are_answered_as_internal_errors().await;
}

#[tokio::test]
async fn a_context_has_the_deadline_it_is_given_and_no_host_outside_a_worker() {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let cx = Context::new("echo.echo").with_deadline(deadline);
    assert_eq!(cx.deadline(), Some(deadline));
    let remaining = cx.remaining().expect("a deadline");
    assert!(
        remaining <= Duration::from_secs(60) && remaining > Duration::from_secs(50),
        "{remaining:?}"
    );
    assert_eq!(
        format!("{:?}", cx.events()),
        "EventSink { connected: false }"
    );
}
