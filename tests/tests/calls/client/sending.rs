//! What the host sends, and when: method names outside their bounds,
//! requests and stream items over the maximum frame length (refused before
//! sending), and calls, streams and one-way messages waiting for room while
//! the worker does not read, without the host buffering every request.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use prost::Message;
use workerbus::{
    CallOptions, Channel, ChannelOptions, Error, Frame, MemoryTransport, ServeOptions,
    ThreadDriver, serve_transport,
};
use workerbus_tests::pb::echo::{
    CountReply, EchoClient, EchoReply, EchoRequest, EchoServer, NoteRequest, SumRequest,
};
use workerbus_tests::{EchoWorker, cases};

use super::{closed, count_request, echo_request, request_id, sent};

/// A message name no `REQUEST` can carry, as a client generated with it
/// would call it (through the door generated code uses).
async fn call_named(channel: &Channel, name: &'static str) -> Result<EchoReply, Error> {
    let method: &'static workerbus::__codegen::MethodDesc = Box::leak(Box::new(
        workerbus::__codegen::MethodDesc::new(name, "echo.EchoReply"),
    ));
    workerbus::__codegen::Client::new(channel.clone())
        .unary(method, echo_request("named"), None)
        .await
}

#[tokio::test]
async fn method_names_outside_1_to_1024_bytes_are_refused_before_sending() {
    let (host, mut worker) = MemoryTransport::pair();
    let channel = Channel::new(host);
    let long: &'static str = Box::leak("m".repeat(workerbus::MAX_METHOD_LEN + 1).into_boxed_str());
    for (name, size) in [("", 0), (long, workerbus::MAX_METHOD_LEN + 1)] {
        match call_named(&channel, name).await {
            Err(Error::InvalidMethodName { method, len, max }) => {
                assert_eq!(method, name);
                assert_eq!(len, size);
                assert_eq!(max, workerbus::MAX_METHOD_LEN);
            }
            other => panic!("expected the name to be refused, got {other:?}"),
        }
    }
    // A name of exactly the maximum is sent.
    let longest: &'static str = Box::leak("m".repeat(workerbus::MAX_METHOD_LEN).into_boxed_str());
    let script = async {
        let Frame::Request { id, method, .. } = sent(&mut worker).await else {
            panic!("expected a request");
        };
        assert_eq!(
            method, longest,
            "the first request sent is the longest name"
        );
        let payload = Bytes::new();
        worker
            .send(Frame::Response {
                id,
                payload: payload.into(),
            })
            .await
            .unwrap();
    };
    let (result, ()) = tokio::join!(call_named(&channel, longest), script);
    result.unwrap();
}

#[tokio::test]
async fn a_refused_method_name_is_not_reported_as_a_frame_over_its_maximum_length() {
    let (host, _worker) = MemoryTransport::pair();
    let channel = Channel::new(host);
    for name in ["", &*Box::leak("m".repeat(1025).into_boxed_str())] {
        let message = call_named(&channel, name).await.unwrap_err().to_string();
        assert!(!message.contains("maximum frame length"), "{message}");
    }
}

#[tokio::test]
async fn oversized_requests_fail_before_sending() {
    let worker = ThreadDriver::new()
        .channel_options(ChannelOptions::new().max_frame_length(4096))
        .spawn(EchoServer::new(EchoWorker::new()))
        .await
        .unwrap();
    let client = EchoClient::new(worker.channel());
    let error = client
        .echo(EchoRequest {
            text: "x".repeat(5000),
            ..EchoRequest::default()
        })
        .await
        .unwrap_err();
    // 24 bytes of header and fields, 9 of method name, 5003 of message.
    assert_eq!(
        error.to_string(),
        "echo.echo failed: request of 5036 bytes exceeds the maximum frame length of 4096 bytes"
    );
    assert_eq!(worker.channel().in_flight(), 0);
    cases::unary_round_trip(&worker.channel()).await;
}

#[tokio::test]
async fn a_request_stream_item_over_the_maximum_frame_length_fails_the_call() {
    let (host, worker) = MemoryTransport::pair();
    let _served = tokio::spawn(serve_transport(
        worker,
        EchoServer::new(EchoWorker::new()),
        ServeOptions::new(),
    ));
    let channel = Channel::with_options(host, ChannelOptions::new().max_frame_length(256));
    let client = EchoClient::new(channel.clone());
    let item = SumRequest {
        tag: "t".repeat(300),
        value: 1,
        stop: false,
        hold_after: 0,
        padding: Bytes::new(),
    };
    let error = client
        .sum(futures_util::stream::iter([item]))
        .await
        .unwrap_err();
    // 10 bytes of header, 303 of tag and 2 of value.
    assert_eq!(
        error.to_string(),
        "echo.sum failed: request stream item of 315 bytes exceeds the maximum frame length \
         of 256 bytes"
    );
    assert_eq!(channel.in_flight(), 0);
    let reply = client.echo(echo_request("after")).await.unwrap();
    assert_eq!(reply.text, "after");
}

#[tokio::test]
async fn a_request_stream_item_too_large_to_send_cancels_the_call_in_the_worker() {
    let (host, mut worker) = MemoryTransport::pair();
    let channel = Channel::with_options(host, ChannelOptions::new().max_frame_length(256));
    let client = EchoClient::new(channel.clone());
    let item = SumRequest {
        tag: "t".repeat(300),
        value: 1,
        stop: false,
        hold_after: 0,
        padding: Bytes::new(),
    };
    // The item comes once the worker has the request, so that the call is
    // running there (an unsent request would just be withdrawn).
    let (go, ready) = tokio::sync::oneshot::channel::<()>();
    let items = futures_util::stream::once(async move {
        ready.await.expect("the script says go");
        item
    });
    let call = client.sum(items);
    let script = async {
        let id = request_id(&mut worker).await;
        go.send(()).unwrap();
        // The worker still runs the call: it must learn that it is over,
        // not find its request stream ended as if complete.
        let mut after = Vec::new();
        loop {
            match sent(&mut worker).await {
                Frame::Cancel { id: cancelled } => {
                    assert_eq!(cancelled, id);
                    break;
                }
                other => after.push(other),
            }
        }
        after
    };
    let (result, after) = tokio::join!(call, script);
    assert!(matches!(result, Err(Error::TooLarge { .. })), "{result:?}");
    assert!(
        after.iter().all(|frame| matches!(frame, Frame::End { .. })),
        "before the CANCEL: {after:?}"
    );
    assert_eq!(channel.in_flight(), 0);
}

#[tokio::test]
async fn calls_wait_for_room_within_their_timeout_and_fail_at_once_when_closed() {
    // One call in flight at most, and a worker that reads nothing yet.
    let (host, mut worker) = MemoryTransport::pair();
    let channel = Channel::with_options(host, ChannelOptions::new().max_in_flight(1));
    let client = EchoClient::new(channel.clone());
    let first = client.echo_with(
        echo_request("first"),
        CallOptions::new().timeout(Duration::from_secs(60)),
    );
    tokio::pin!(first);
    let id = tokio::select! {
        _ = &mut first => panic!("the first call ended unanswered"),
        id = request_id(&mut worker) => id,
    };
    // A stream finds no room, and gives up at its timeout.
    let quick = CallOptions::new().timeout(Duration::from_millis(50));
    let waited = client.count_with(count_request(1), quick).await;
    assert!(
        matches!(&waited, Err(Error::Timeout { method, .. }) if *method == "echo.count"),
        "{waited:?}"
    );
    // Once the first call ends there is room again.
    worker
        .send(Frame::Response {
            id,
            payload: Bytes::new().into(),
        })
        .await
        .unwrap();
    first.await.unwrap();
    // A stream without a timeout waits for its items however long they take.
    let mut stream = client
        .count_with(count_request(1), CallOptions::new().no_timeout())
        .await
        .unwrap();
    let script = async {
        let id = request_id(&mut worker).await;
        let item = CountReply {
            value: 9,
            padding: Bytes::new(),
        };
        let payload = Bytes::from(item.encode_to_vec());
        worker.send(Frame::Item { id, payload }).await.unwrap();
    };
    let (item, ()) = tokio::join!(stream.message(), script);
    assert_eq!(
        item.unwrap(),
        Some(CountReply {
            value: 9,
            padding: Bytes::new(),
        })
    );
    drop(stream);

    // On a closed channel, streams and one-way messages fail at once.
    drop(worker);
    closed(&channel).await;
    let stream = client.count(count_request(1)).await;
    assert!(
        matches!(stream, Err(Error::Disconnected { .. })),
        "{stream:?}"
    );
    let note = client.note(NoteRequest::default()).await;
    assert!(matches!(note, Err(Error::Disconnected { .. })), "{note:?}");
}

#[tokio::test]
async fn a_one_way_message_waits_for_room_while_the_worker_does_not_read() {
    let (host, mut worker) = MemoryTransport::pair_with_capacity(1);
    let channel = Channel::with_options(host, ChannelOptions::new().max_queued_bytes(64));
    let client = EchoClient::new(channel.clone());
    let note = NoteRequest {
        tag: "queued".into(),
        text: "n".repeat(40),
        fail: false,
    };
    let quick = CallOptions::new().timeout(Duration::from_millis(50));
    let mut queued = 0;
    let refused = loop {
        match client.note_with(note.clone(), quick.clone()).await {
            Ok(()) => queued += 1,
            Err(error) => break error,
        }
        assert!(
            queued < 100,
            "the host queued {queued} notes for a stuck worker"
        );
    };
    assert!(
        matches!(&refused, Error::Timeout { method, .. } if *method == "echo.note"),
        "{refused:?}"
    );
    // The worker reads what was queued; a message without a timeout then
    // waits until there is room, and goes.
    let wait = client.note_with(note.clone(), CallOptions::new().no_timeout());
    let drain = async {
        for _ in 0..=queued {
            assert!(matches!(sent(&mut worker).await, Frame::Request { .. }));
        }
    };
    let (waited, ()) = tokio::join!(wait, drain);
    waited.unwrap();
}

/// A worker that stops reading must not make the host buffer every request:
/// calls wait for room within their timeout, and requests that never left
/// are withdrawn, not followed by a CANCEL.
#[tokio::test]
async fn a_worker_that_does_not_read_does_not_make_the_host_buffer_without_bound() {
    let (host, mut worker) = MemoryTransport::pair_with_capacity(4);
    let channel = Channel::with_options(host, ChannelOptions::new().max_queued_bytes(1024 * 1024));
    let client = EchoClient::new(channel.clone());
    let options = CallOptions::new().timeout(Duration::from_millis(50));
    let payload = Bytes::from(vec![7; 256 * 1024]);
    let calls = (0..100).map(|_| {
        client.echo_with(
            EchoRequest {
                data: payload.clone(),
                ..EchoRequest::default()
            },
            options.clone(),
        )
    });
    for result in futures_util::future::join_all(calls).await {
        assert!(matches!(result, Err(Error::Timeout { .. })), "{result:?}");
    }
    assert_eq!(channel.in_flight(), 0);
    drop(client);
    drop(channel);
    // What reached the worker: the few requests the transport took, and a
    // CANCEL for each; nothing for the calls that never left the host.
    let mut requests = 0;
    while let Some(frame) = worker.next().await {
        if matches!(frame.unwrap(), Frame::Request { .. }) {
            requests += 1;
        }
    }
    assert!(
        requests <= 16,
        "{requests} of 100 requests were queued for a worker that was not reading"
    );
}
