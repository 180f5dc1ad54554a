//! What a worker sends over the maximum frame length: a response, a status,
//! an event or a stream item is replaced by a status that says so, and the
//! connection goes on.

use bytes::Bytes;
use futures_util::SinkExt;
use prost::Message;
use tokio_util::codec::Framed;
use workerbus::{
    Channel, Code, Frame, FrameCodec, MethodKind, MethodName, ServeOptions, Status, ThreadDriver,
    serve_transport,
};
use workerbus_tests::pb::echo::{
    AnnounceRequest, EchoClient, EchoRequest, EchoServer, FailRequest,
};
use workerbus_tests::{EchoWorker, cases};

use super::{request, serve, status_of, still_serving};

#[tokio::test]
async fn oversized_responses_are_replaced_by_a_status_that_says_so() {
    let worker = ThreadDriver::new()
        .serve_options(ServeOptions::new().max_frame_length(4096))
        .spawn(EchoServer::new(EchoWorker::new()))
        .await
        .unwrap();
    let client = EchoClient::new(worker.channel());
    let error = client
        .echo(EchoRequest {
            text: "y".repeat(5000),
            ..EchoRequest::default()
        })
        .await
        .unwrap_err();
    let status = error.status().expect("a remote status");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(
        status.message(),
        "the response to echo.echo is 5013 bytes, over the maximum frame length of 4096 bytes"
    );
    cases::unary_round_trip(&worker.channel()).await;
}

#[tokio::test]
async fn an_oversized_status_is_replaced_and_the_connection_survives() {
    let (host, worker) = tokio::io::duplex(64 * 1024);
    let _served = tokio::spawn(serve_transport(
        Framed::new(worker, FrameCodec::new().max_frame_length(4096)),
        EchoServer::new(EchoWorker::new()),
        ServeOptions::new().max_frame_length(4096),
    ));
    let channel = Channel::new(Framed::new(host, FrameCodec::new()));
    let error = EchoClient::new(channel.clone())
        .fail(FailRequest {
            code: Code::NotFound.as_u32(),
            message: "z".into(),
            details: Bytes::new(),
            repeat: 10_000,
        })
        .await
        .unwrap_err();
    let status = error.status().expect("a remote status");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(
        status.message(),
        "a not found status of 10018 bytes was replaced: over the maximum frame length of 4096 bytes"
    );
    cases::unary_round_trip(&channel).await;
}

#[tokio::test]
async fn an_event_over_the_maximum_frame_length_fails_its_handler() {
    let (mut host, _served) = serve(ServeOptions::new().max_frame_length(256));
    let announce = AnnounceRequest {
        tag: "x".repeat(300),
        count: 1,
        padding: 0,
    };
    host.send(request(1, "echo.announce", &announce))
        .await
        .unwrap();
    // 10 bytes of header, 2 + 19 of name, 303 of message.
    assert_eq!(
        status_of(&mut host, 1).await,
        Status::resource_exhausted(
            "event echo_events.tick_v1 is 334 bytes, over the maximum frame length of 256 bytes"
        )
    );
    still_serving(&mut host, 2).await;
}

#[tokio::test]
async fn a_stream_item_over_the_maximum_frame_length_fails_its_handler() {
    let (mut host, _served) = serve(ServeOptions::new().max_frame_length(256));
    let chat = Frame::request(
        1,
        MethodName::from_static("echo.chat"),
        None,
        1,
        Bytes::new(),
    )
    .with_kind(MethodKind::BidiStreaming);
    host.send(chat).await.unwrap();
    let message = EchoRequest {
        text: "y".repeat(300),
        ..EchoRequest::default()
    };
    host.send(Frame::Item {
        id: 1,
        payload: Bytes::from(message.encode_to_vec()),
    })
    .await
    .unwrap();
    // Its echo would be 10 bytes of header and 303 of message.
    assert_eq!(
        status_of(&mut host, 1).await,
        Status::resource_exhausted(
            "a message of echo.chat is 313 bytes, over the maximum frame length of 256 bytes"
        )
    );
    still_serving(&mut host, 2).await;
}
