//! A worker that breaks the rules, seen by the host: frames for requests
//! never sent, items and events it had no room or right to send, and
//! answers that do not decode.

use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use prost::Message;
use workerbus::{Channel, Error, Frame, MemoryTransport, MethodName};
use workerbus_tests::pb::echo::{
    CountReply, EchoClient, EchoEvents, EchoReply, EchoRequest, SumRequest,
};

use super::{answer, closed_with, count_request, echo_request, request_id, scripted};

#[tokio::test]
async fn frames_for_requests_never_sent_break_the_connection_naming_the_frame() {
    let frames = [
        (
            "CREDIT",
            Frame::Credit {
                id: 5,
                count: 1,
                bytes: 0,
            },
        ),
        (
            "ITEM",
            Frame::Item {
                id: 5,
                payload: Bytes::new(),
            },
        ),
        (
            "RESPONSE",
            Frame::Response {
                id: 5,
                payload: Bytes::new().into(),
            },
        ),
        (
            "STATUS",
            Frame::Status {
                id: 5,
                status: workerbus::Status::internal("hm"),
            },
        ),
        (
            "METADATA",
            Frame::Metadata {
                id: 5,
                metadata: workerbus::Metadata::new().with("k", "v").unwrap(),
            },
        ),
    ];
    for (kind, frame) in frames {
        let (host, mut worker) = MemoryTransport::pair();
        let channel = Channel::new(host);
        worker.send(frame).await.unwrap();
        assert_eq!(
            closed_with(&channel).await,
            format!(
                "echo.echo failed: disconnected from the worker: a {kind} frame refers to \
                 request 5, which was never sent"
            )
        );
    }
}

#[tokio::test]
async fn a_credit_for_a_call_that_ended_is_late_and_ignored() {
    let (host, mut worker) = MemoryTransport::pair();
    let channel = Channel::new(host);
    let client = EchoClient::new(channel.clone());
    let script = async {
        let id = request_id(&mut worker).await;
        let reply = EchoReply {
            text: "first".into(),
            data: Bytes::new(),
        };
        worker
            .send(Frame::Response {
                id,
                payload: reply.encode_to_vec().into(),
            })
            .await
            .unwrap();
        id
    };
    let (first, id) = tokio::join!(client.echo(echo_request("first")), script);
    assert_eq!(first.unwrap().text, "first");
    worker
        .send(Frame::Credit {
            id,
            count: 16,
            bytes: 0,
        })
        .await
        .unwrap();
    let script = async {
        let id = request_id(&mut worker).await;
        worker
            .send(Frame::Response {
                id,
                payload: Bytes::new().into(),
            })
            .await
            .unwrap();
    };
    let (second, ()) = tokio::join!(client.echo(echo_request("second")), script);
    second.expect("the connection survived the late credit");
    assert!(!channel.is_closed());
}

#[tokio::test]
async fn an_item_for_a_unary_call_breaks_the_connection() {
    let (host, mut worker) = MemoryTransport::pair();
    let channel = Channel::new(host);
    let client = EchoClient::new(channel.clone());
    let script = async {
        let id = request_id(&mut worker).await;
        worker
            .send(Frame::Item {
                id,
                payload: Bytes::new(),
            })
            .await
            .unwrap();
    };
    let (result, ()) = tokio::join!(client.echo(echo_request("unary")), script);
    assert_eq!(
        result.unwrap_err().to_string(),
        "echo.echo failed: disconnected from the worker: malformed ITEM frame: request 1 is \
         not a streaming call"
    );
    assert_eq!(client.channel().in_flight(), 0);
}

#[tokio::test]
async fn item_bytes_beyond_the_window_break_the_connection() {
    let (host, mut worker) = MemoryTransport::pair();
    let channel = Channel::new(host);
    let client = EchoClient::new(channel.clone());
    let mut stream = client.count(count_request(100)).await.unwrap();
    let id = request_id(&mut worker).await;
    // A window's bytes in one item is within the credit; one more item is
    // not, while nothing is read on the host.
    let large = CountReply {
        value: 1,
        padding: Bytes::from(vec![0; workerbus::STREAM_WINDOW_BYTES as usize]),
    };
    for item in [large, CountReply::default()] {
        worker
            .send(Frame::Item {
                id,
                payload: item.encode_to_vec().into(),
            })
            .await
            .unwrap();
    }
    channel.closed().await;
    assert_eq!(
        stream.message().await.unwrap().map(|item| item.value),
        Some(1)
    );
    let error = stream.message().await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "echo.count failed: disconnected from the worker: malformed ITEM frame: more bytes \
         of items for request 1 than its credit allows"
    );
}

#[tokio::test]
async fn items_beyond_the_window_break_the_connection() {
    let (host, mut worker) = MemoryTransport::pair();
    let channel = Channel::new(host);
    let client = EchoClient::new(channel.clone());
    let mut stream = client.count(count_request(100)).await.unwrap();
    let id = request_id(&mut worker).await;
    // Nothing is read on the host meanwhile, so no credit goes back.
    for value in 0..=workerbus::STREAM_WINDOW {
        let item = CountReply {
            value: value.into(),
            padding: Bytes::new(),
        };
        worker
            .send(Frame::Item {
                id,
                payload: item.encode_to_vec().into(),
            })
            .await
            .unwrap();
    }
    let error = loop {
        match tokio::time::timeout(Duration::from_secs(20), stream.message()).await {
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => panic!("the stream ended without an error"),
            Ok(Err(error)) => break error,
            Err(_) => panic!("the stream neither failed nor ended within 20 s"),
        }
    };
    assert_eq!(
        error.to_string(),
        "echo.count failed: disconnected from the worker: malformed ITEM frame: more items \
         for request 1 than its credit allows"
    );
}

#[tokio::test]
async fn events_past_the_hosts_credit_end_the_connection() {
    // A hostile worker: events without credit.
    let (host, mut worker) = MemoryTransport::pair();
    let channel = Channel::new(host);
    let _events = workerbus_tests::pb::echo::EchoEvents::subscribe(&channel);
    for _ in 0..=workerbus::STREAM_WINDOW {
        let event = Frame::Event {
            method: MethodName::from_static("echo_events.noted"),
            payload: Bytes::new(),
        };
        if worker.send(event).await.is_err() {
            break;
        }
    }
    channel.closed().await;
    let error = EchoClient::new(channel)
        .echo(EchoRequest::default())
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("malformed EVENT frame: more events than the host's credit allows"),
        "{error}"
    );
}

#[tokio::test]
async fn event_bytes_past_the_hosts_credit_end_the_connection() {
    // A hostile worker: a window's bytes of events in one, then one more.
    let (host, mut worker) = MemoryTransport::pair();
    let channel = Channel::new(host);
    let _events = workerbus_tests::pb::echo::EchoEvents::subscribe(&channel);
    for size in [workerbus::STREAM_WINDOW_BYTES as usize, 1] {
        let event = Frame::Event {
            method: MethodName::from_static("echo_events.noted"),
            payload: Bytes::from(vec![0; size]),
        };
        if worker.send(event).await.is_err() {
            break;
        }
    }
    channel.closed().await;
    let error = EchoClient::new(channel)
        .echo(EchoRequest::default())
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("malformed EVENT frame: more bytes of events than the host's credit allows"),
        "{error}"
    );
}

#[tokio::test]
async fn answers_that_do_not_decode_fail_naming_the_message_expected() {
    let garbage = Bytes::from_static(&[0x0a, 0xff]);

    // A unary response.
    let (channel, client, mut worker) = scripted();
    let (result, ()) = tokio::join!(
        client.echo(echo_request("x")),
        answer(&mut worker, garbage.clone())
    );
    assert_eq!(
        result.unwrap_err().to_string(),
        "echo.echo failed: the response did not decode as echo.EchoReply"
    );
    assert!(
        !channel.is_closed(),
        "a bad answer does not break the connection"
    );

    // An item of a response stream.
    let (_channel, client, mut worker) = scripted();
    let mut stream = client.count(count_request(1)).await.unwrap();
    let id = request_id(&mut worker).await;
    let payload = garbage.clone();
    worker.send(Frame::Item { id, payload }).await.unwrap();
    let error = stream.message().await.unwrap_err();
    assert!(matches!(error, Error::Decode { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        "echo.count failed: the response stream item did not decode as echo.CountReply"
    );

    // The response to a request stream (of no messages).
    let (_channel, client, mut worker) = scripted();
    let requests = futures_util::stream::empty::<SumRequest>();
    let (result, ()) = tokio::join!(client.sum(requests), answer(&mut worker, garbage.clone()));
    assert_eq!(
        result.unwrap_err().to_string(),
        "echo.sum failed: the response did not decode as echo.SumReply"
    );

    // An event.
    let (channel, _client, mut worker) = scripted();
    let mut events = EchoEvents::subscribe(&channel);
    worker
        .send(Frame::Event {
            method: workerbus::MethodName::from_static("echo_events.noted"),
            payload: garbage.clone(),
        })
        .await
        .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(20), events.next_event())
        .await
        .expect("the event arrives")
        .expect("the subscription is open");
    assert_eq!(
        event.unwrap_err().to_string(),
        "echo_events.noted failed: the event did not decode as echo.NoteRequest"
    );

    // A health report.
    let (channel, _client, mut worker) = scripted();
    let (result, ()) = tokio::join!(
        channel.health(Duration::from_secs(20)),
        answer(&mut worker, garbage.clone())
    );
    let error = result.unwrap_err();
    assert!(matches!(error, Error::Decode { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        "$workerbus.health failed: the response did not decode as workerbus.Health"
    );
}
