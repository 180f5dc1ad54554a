//! A host that breaks the rules: frames only a host may receive, an id
//! reused while in flight, a request that does not decode, and control
//! exchanges a worker does not know. The control exchanges only a worker
//! process has (the handshake) are tried over a detached worker's named
//! socket.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use prost::Message;
use tokio::net::UnixStream;
use tokio_util::codec::Framed;
use workerbus::{
    Code, ExitReason, Frame, FrameCodec, MethodName, ProcessDriver, ServeOptions, Status,
};
use workerbus_tests::pb::echo::EchoReply;
use workerbus_tests::support::{KillOnDrop, greeted};

use super::{echo, next, serve, sleep, status_of, still_serving};
use crate::ECHO_WORKER;

#[tokio::test]
async fn a_frame_only_a_host_may_receive_ends_serving_with_an_error() {
    let (mut host, served) = serve(ServeOptions::new());
    host.send(Frame::Response {
        id: 1,
        payload: Bytes::new().into(),
    })
    .await
    .unwrap();
    let error = served.await.unwrap().unwrap_err();
    assert_eq!(error.to_string(), "unexpected RESPONSE frame from the host");
    assert!(host.next().await.is_none());
}

#[tokio::test]
async fn response_metadata_from_the_host_ends_serving_with_an_error() {
    let (mut host, served) = serve(ServeOptions::new());
    host.send(Frame::Metadata {
        id: 1,
        metadata: workerbus::Metadata::new().with("k", "v").unwrap(),
    })
    .await
    .unwrap();
    let error = served.await.unwrap().unwrap_err();
    assert_eq!(error.to_string(), "unexpected METADATA frame from the host");
    assert!(host.next().await.is_none());
}

#[tokio::test]
async fn a_request_reusing_an_id_in_flight_ends_serving_with_an_error() {
    let (mut host, served) = serve(ServeOptions::new());
    host.send(sleep(5, "first", 60_000, None)).await.unwrap();
    host.send(echo(5, "same id")).await.unwrap();
    let error = served.await.unwrap().unwrap_err();
    assert_eq!(error.to_string(), "request id 5 is already in flight");
}

#[tokio::test]
async fn an_undecodable_request_is_an_invalid_argument_naming_the_message() {
    let (mut host, _served) = serve(ServeOptions::new());
    let garbage = Frame::request(
        7,
        MethodName::from_static("echo.echo"),
        None,
        1,
        Bytes::from_static(&[0x0a, 0xff, 0xff]),
    );
    host.send(garbage).await.unwrap();
    let Frame::Status { id: 7, status } = next(&mut host).await else {
        panic!("expected a status for id 7");
    };
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .starts_with("the request to echo.echo did not decode as echo.EchoRequest: "),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn control_exchanges_of_a_worker_without_any_are_unimplemented() {
    let (mut host, _served) = serve(ServeOptions::new());
    for (id, method) in [(1, "$workerbus.detach"), (2, "$workerbus.nonsense")] {
        host.send(Frame::request(
            id,
            MethodName::from_static(method),
            None,
            1,
            Bytes::new(),
        ))
        .await
        .unwrap();
        assert_eq!(
            status_of(&mut host, id).await,
            Status::unimplemented(format!("{method}: this worker has no control exchanges"))
        );
    }
    still_serving(&mut host, 3).await;
}

async fn answer(peer: &mut Framed<UnixStream, FrameCodec>) -> Frame {
    tokio::time::timeout(Duration::from_secs(20), peer.next())
        .await
        .expect("the worker answers within 20 s")
        .expect("the connection is open")
        .expect("a valid frame")
}

#[tokio::test]
async fn a_worker_process_refuses_unknown_control_exchanges_and_closes_on_undecodable_greetings() {
    let detached = ProcessDriver::new(ECHO_WORKER)
        .stderr(workerbus::Stdio::Null)
        .spawn()
        .await
        .expect("spawn")
        .detach()
        .await
        .expect("detach");
    let _kill = KillOnDrop(detached.pid().unwrap());
    let mut peer = greeted(&detached).await;

    let unknown = MethodName::from_static("$workerbus.nonsense");
    peer.send(Frame::request(2, unknown, None, 1, Bytes::new()))
        .await
        .unwrap();
    assert_eq!(
        answer(&mut peer).await,
        Frame::Status {
            id: 2,
            status: Status::unimplemented(
                "$workerbus.nonsense is not a control exchange this worker knows"
            ),
        }
    );
    // An unknown control exchange does not break the connection.
    peer.send(echo(3, "after")).await.unwrap();
    match answer(&mut peer).await {
        Frame::Response { id: 3, payload } => {
            assert_eq!(
                EchoReply::decode(payload.into_bytes()).unwrap().text,
                "after"
            );
        }
        other => panic!("expected the echo, got {other:?}"),
    }

    // A greeting whose payload is a truncated varint is refused, as a wrong
    // one is, and the worker closes the connection (PROTOCOL.md 9.2), even
    // one that was greeted before.
    let hello = MethodName::from_static("$workerbus.hello");
    peer.send(Frame::request(
        4,
        hello,
        None,
        1,
        Bytes::from_static(&[0x08]),
    ))
    .await
    .unwrap();
    match answer(&mut peer).await {
        Frame::Status { id: 4, status } => {
            assert_eq!(status.code(), Code::InvalidArgument);
            assert!(
                status
                    .message()
                    .starts_with("$workerbus.hello: failed to decode Protobuf message"),
                "{}",
                status.message()
            );
        }
        other => panic!("expected a status for the greeting, got {other:?}"),
    }
    let after = tokio::time::timeout(Duration::from_secs(20), peer.next())
        .await
        .expect("the worker closes within 20 s");
    assert!(after.is_none(), "the refused peer got {after:?}");

    let host = ProcessDriver::new(ECHO_WORKER)
        .connect(detached.address(), detached.secret())
        .await
        .expect("connect to stop it");
    assert_eq!(host.shutdown().await, ExitReason::Unknown);
}
