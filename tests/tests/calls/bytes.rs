//! Calls in bytes (`Channel::call_bytes` and its siblings): every call shape
//! and one-way messages with requests and responses as encoded bytes reach
//! the same handlers, with the same options, metadata and errors, as the
//! generated client's typed calls.

use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use workerbus::{CallOptions, Code, Error, Metadata, MethodName, ResponseMetadata, ThreadDriver};
use workerbus_tests::EchoWorker;
use workerbus_tests::pb::echo::{
    CountReply, CountRequest, EchoClient, EchoReply, EchoRequest, EchoServer, FailRequest,
    HeadersReply, HeadersRequest, NoteRequest, ProgressRequest, SleepRequest, SumReply, SumRequest,
    echo_service,
};

fn bytes_of(message: &impl Message) -> Bytes {
    message.encode_to_vec().into()
}

fn echo(text: &str) -> EchoRequest {
    EchoRequest {
        text: text.into(),
        ..EchoRequest::default()
    }
}

#[tokio::test]
async fn every_call_shape_travels_as_bytes() {
    let worker = ThreadDriver::new()
        .spawn(EchoServer::new(EchoWorker::new()))
        .await
        .unwrap();
    let channel = worker.channel();
    let options = CallOptions::new().timeout(Duration::from_secs(10));

    // Unary.
    let method = MethodName::from_static(echo_service::ECHO);
    let response = channel
        .call_bytes(&method, bytes_of(&echo("one")), &options)
        .await
        .unwrap();
    assert_eq!(EchoReply::decode(response).unwrap().text, "one");

    // A response stream.
    let method = MethodName::from_static(echo_service::COUNT);
    let request = CountRequest {
        from: 7,
        count: 3,
        ..CountRequest::default()
    };
    let mut items = channel
        .server_stream_bytes(&method, bytes_of(&request), &options)
        .await
        .unwrap();
    assert_eq!(items.method(), "echo.count");
    let mut values = Vec::new();
    while let Some(item) = items.message().await.unwrap() {
        values.push(CountReply::decode(item).unwrap().value);
    }
    assert_eq!(values, [7, 8, 9]);

    // A request stream.
    let method = MethodName::from_static(echo_service::SUM);
    let requests = [1, 2, 39].map(|value| {
        bytes_of(&SumRequest {
            value,
            ..SumRequest::default()
        })
    });
    let response = channel
        .client_stream_bytes(&method, futures_util::stream::iter(requests), &options)
        .await
        .unwrap();
    let sum = SumReply::decode(response).unwrap();
    assert_eq!((sum.sum, sum.messages), (42, 3));

    // Both ways.
    let method = MethodName::from_static(echo_service::CHAT);
    let requests = ["a", "b"].map(|text| bytes_of(&echo(text)));
    let mut replies = channel
        .bidi_stream_bytes(&method, futures_util::stream::iter(requests), &options)
        .await
        .unwrap();
    let mut texts = Vec::new();
    while let Some(reply) = replies.message().await.unwrap() {
        texts.push(EchoReply::decode(reply).unwrap().text);
    }
    assert_eq!(texts, ["a", "b"]);

    // One way: the worker counts it under its tag.
    let method = MethodName::from_static(echo_service::NOTE);
    let note = NoteRequest {
        tag: "bytes".into(),
        text: "hello".into(),
        ..NoteRequest::default()
    };
    channel
        .post_bytes(&method, bytes_of(&note), &options)
        .await
        .unwrap();
    let progress = EchoClient::new(channel.clone())
        .progress(ProgressRequest {
            tag: "bytes".into(),
            at_least: 1,
        })
        .await
        .unwrap();
    assert_eq!(progress.messages, 1);
    worker.shutdown().await;
}

#[tokio::test]
async fn calls_in_bytes_take_options_metadata_and_fail_as_typed_calls_do() {
    let worker = ThreadDriver::new()
        .spawn(EchoServer::new(EchoWorker::new()))
        .await
        .unwrap();
    let channel = worker.channel();

    // Metadata both ways.
    let mut metadata = Metadata::new();
    metadata.insert("tenant", "blue").unwrap();
    let answered = ResponseMetadata::new();
    let options = CallOptions::new()
        .metadata(metadata)
        .response_metadata(&answered);
    let request = HeadersRequest {
        reply: vec![workerbus_tests::pb::echo::Header {
            key: "served-by".into(),
            value: b"bytes".to_vec().into(),
        }],
        ..HeadersRequest::default()
    };
    let method = MethodName::from_static(echo_service::HEADERS);
    let response = channel
        .call_bytes(&method, bytes_of(&request), &options)
        .await
        .unwrap();
    let seen = HeadersReply::decode(response).unwrap().seen;
    assert!(
        seen.iter()
            .any(|header| header.key == "tenant" && header.value == b"blue".as_slice()),
        "{seen:?}"
    );
    assert_eq!(answered.get().get_str("served-by"), Some("bytes"));

    // The handler's status.
    let method = MethodName::from_static(echo_service::FAIL);
    let fail = FailRequest {
        code: Code::NotFound as u32,
        message: "no such thing".into(),
        ..FailRequest::default()
    };
    match channel
        .call_bytes(&method, bytes_of(&fail), &CallOptions::new())
        .await
    {
        Err(Error::Remote { method, status }) => {
            assert_eq!(method, "echo.fail");
            assert_eq!(status.code(), Code::NotFound);
            assert_eq!(status.message(), "no such thing");
        }
        other => panic!("expected the handler's status, got {other:?}"),
    }

    // The call's timeout, and no schema default in its place: `echo.sleep`
    // declares none, so the options' timeout is the one that ends it.
    let method = MethodName::from_static(echo_service::SLEEP);
    let sleep = SleepRequest {
        tag: "bytes".into(),
        ms: 60_000,
        blocking: false,
    };
    let options = CallOptions::new().timeout(Duration::from_millis(50));
    match channel
        .call_bytes(&method, bytes_of(&sleep), &options)
        .await
    {
        Err(Error::Timeout { method, after }) => {
            assert_eq!(method, "echo.sleep");
            assert_eq!(after, Duration::from_millis(50));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }

    // Bytes that are not the request's message.
    let method = MethodName::from_static(echo_service::ECHO);
    match channel
        .call_bytes(
            &method,
            Bytes::from_static(b"\xff\xff\xff"),
            &CallOptions::new(),
        )
        .await
    {
        Err(Error::Remote { status, .. }) => {
            assert_eq!(status.code(), Code::InvalidArgument);
            assert!(status.message().contains("echo.EchoRequest"), "{status:?}");
        }
        other => panic!("expected a decoding failure, got {other:?}"),
    }
    worker.shutdown().await;
}

#[tokio::test]
async fn a_call_in_payloads_gets_a_thread_workers_answer_as_its_value() {
    let worker = ThreadDriver::new()
        .spawn(EchoServer::new(EchoWorker::new()))
        .await
        .unwrap();
    let method = MethodName::from_static(echo_service::ECHO);
    let options = CallOptions::new();
    for request in [
        workerbus::Payload::from(bytes_of(&echo("as bytes"))),
        workerbus::Payload::message(echo("as a value")),
    ] {
        let expected = EchoReply {
            text: request.clone().decode::<EchoRequest>().unwrap().text,
            ..EchoReply::default()
        };
        let response = worker
            .channel()
            .call_payload(&method, request, &options)
            .await
            .unwrap();
        // Not encoded by anyone: a bridge encodes it into its own buffer.
        assert!(!response.is_encoded());
        assert_eq!(response.len(), expected.encoded_len());
        let mut encoded = Vec::new();
        response.encode_to(&mut encoded);
        assert_eq!(encoded, expected.encode_to_vec());
        assert_eq!(response.decode::<EchoReply>().unwrap(), expected);
    }
}
