//! The host's side against a worker that breaks the rules, scripted frame by
//! frame over an in-memory transport (frames for requests never sent, items
//! it had no room or right to send, answers that do not decode), and the
//! host's own limits: method names, stream items over the maximum frame
//! length, one-way messages and streams waiting for room, requests cut off
//! by a lost connection, and the paths of a supervised channel.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use prost::Message;
use workerbus::{
    Backoff, CallInfo, CallOptions, Channel, ChannelOptions, Error, Frame, MemoryTransport,
    Middleware, Next, RestartPolicy, ServeOptions, Supervisor, ThreadDriver, serve_transport,
};
use workerbus_tests::EchoWorker;
use workerbus_tests::pb::echo::{
    CountReply, CountRequest, EchoClient, EchoEvent, EchoEvents, EchoReply, EchoRequest,
    EchoServer, NoteRequest, SumRequest,
};

fn echo_request(text: &str) -> EchoRequest {
    EchoRequest {
        text: text.into(),
        ..EchoRequest::default()
    }
}

fn count_request(count: u32) -> CountRequest {
    CountRequest {
        tag: "count".into(),
        from: 0,
        count,
        delay_ms: 0,
        fail_code: 0,
        padding: 0,
    }
}

/// The next frame the host sent, which must come within 20 s.
async fn sent(worker: &mut MemoryTransport) -> Frame {
    tokio::time::timeout(Duration::from_secs(20), worker.next())
        .await
        .expect("the host sends within 20 s")
        .expect("the host's end is open")
        .expect("a valid frame")
}

/// The id of the next request the host sent.
async fn request_id(worker: &mut MemoryTransport) -> u64 {
    match sent(worker).await {
        Frame::Request { id, .. } => id,
        other => panic!("expected a request, got {other:?}"),
    }
}

/// Waits until `channel` has closed, failing the test after 20 s.
async fn closed(channel: &Channel) {
    tokio::time::timeout(Duration::from_secs(20), channel.closed())
        .await
        .expect("the channel closes within 20 s");
}

/// The error a call on `channel` fails with once it has closed.
async fn closed_with(channel: &Channel) -> String {
    closed(channel).await;
    EchoClient::new(channel.clone())
        .echo(echo_request("after"))
        .await
        .expect_err("a call on a closed channel fails")
        .to_string()
}

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
                payload: Bytes::new(),
            },
        ),
        (
            "STATUS",
            Frame::Status {
                id: 5,
                status: workerbus::Status::internal("hm"),
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
                payload: Bytes::new(),
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

/// A channel over an in-memory transport, its client, and the worker's end.
fn scripted() -> (Channel, EchoClient, MemoryTransport) {
    let (host, worker) = MemoryTransport::pair();
    let channel = Channel::new(host);
    let client = EchoClient::new(channel.clone());
    (channel, client, worker)
}

/// Answers the next request with `payload`.
async fn answer(worker: &mut MemoryTransport, payload: Bytes) {
    let id = request_id(worker).await;
    worker.send(Frame::Response { id, payload }).await.unwrap();
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

#[tokio::test]
async fn a_streaming_call_that_ends_with_its_answer_sends_no_cancel() {
    let (_channel, client, mut worker) = scripted();
    let mut stream = client.count(count_request(1)).await.unwrap();
    let id = request_id(&mut worker).await;
    let item = CountReply {
        value: 7,
        padding: Bytes::new(),
    };
    let payload = Bytes::from(item.encode_to_vec());
    worker.send(Frame::Item { id, payload }).await.unwrap();
    let payload = Bytes::new();
    worker.send(Frame::Response { id, payload }).await.unwrap();
    assert_eq!(stream.message().await.unwrap(), Some(item));
    assert_eq!(stream.message().await.unwrap(), None);
    let (reply, ()) = tokio::join!(
        client.echo(echo_request("next")),
        answer(&mut worker, Bytes::new())
    );
    reply.expect("the next call is the next frame the worker reads");

    let requests = futures_util::stream::empty::<SumRequest>();
    let script = async {
        let id = request_id(&mut worker).await;
        assert_eq!(sent(&mut worker).await, Frame::End { id });
        let payload = Bytes::new();
        worker.send(Frame::Response { id, payload }).await.unwrap();
    };
    let (sum, ()) = tokio::join!(client.sum(requests), script);
    sum.unwrap();
    let (reply, ()) = tokio::join!(
        client.echo(echo_request("next")),
        answer(&mut worker, Bytes::new())
    );
    reply.expect("the next call is the next frame the worker reads");
}

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
        worker.send(Frame::Response { id, payload }).await.unwrap();
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
async fn a_request_stream_cut_off_by_a_lost_connection_fails_the_call() {
    let (host, mut worker) = MemoryTransport::pair();
    let channel = Channel::new(host);
    let client = EchoClient::new(channel.clone());
    let (items, requests) = tokio::sync::mpsc::unbounded_channel::<SumRequest>();
    let requests = futures_util::stream::unfold(requests, |mut requests| async move {
        requests.recv().await.map(|request| (request, requests))
    });
    items.send(SumRequest::default()).unwrap();
    let script = async {
        request_id(&mut worker).await;
        assert!(matches!(sent(&mut worker).await, Frame::Item { .. }));
        drop(worker);
        closed(&channel).await;
        // The next item finds the connection gone.
        items.send(SumRequest::default()).unwrap();
        drop(items);
    };
    // Without a timeout too, the call ends with the connection.
    let forever = CallOptions::new().no_timeout();
    let (result, ()) = tokio::join!(client.sum_with(requests, forever), script);
    let error = result.unwrap_err();
    assert!(
        matches!(error, Error::Disconnected { cause: None, .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_call_streaming_both_ways_stops_taking_requests_once_answered() {
    let (_channel, client, mut worker) = scripted();
    let (items, requests) = tokio::sync::mpsc::unbounded_channel::<EchoRequest>();
    let requests = futures_util::stream::unfold(requests, |mut requests| async move {
        requests.recv().await.map(|request| (request, requests))
    });
    let mut chat = client.chat(requests).await.unwrap();
    let id = request_id(&mut worker).await;
    let status = workerbus::Status::failed_precondition("no chatting today");
    worker.send(Frame::Status { id, status }).await.unwrap();
    let error = chat.message().await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "echo.chat failed: failed precondition: no chatting today"
    );
    // The next request finds the call over: the sender stops and drops the
    // caller's stream of requests.
    items.send(echo_request("too late")).unwrap();
    tokio::time::timeout(Duration::from_secs(20), items.closed())
        .await
        .expect("the requests are dropped once the call is over");
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
            payload: Bytes::new(),
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

#[tokio::test]
async fn a_middleware_answering_a_call_streaming_both_ways_gives_an_empty_stream() {
    struct Answers;
    impl Middleware for Answers {
        async fn call(&self, _call: &CallInfo, _next: Next<'_>) -> Result<Bytes, Error> {
            Ok(Bytes::new())
        }
    }
    let (host, _worker) = MemoryTransport::pair();
    let channel = Channel::new(host).with_middleware(Answers);
    let mut chat = EchoClient::new(channel.clone())
        .chat(futures_util::stream::iter([echo_request("unsent")]))
        .await
        .unwrap();
    assert!(chat.message().await.unwrap().is_none());
    assert_eq!(channel.in_flight(), 0);
}

/// A call as a middleware saw it: its method, driver, request length and
/// time left.
type SeenCall = (String, &'static str, usize, Option<Duration>);

/// What a middleware saw of each call.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<SeenCall>>>);

impl Middleware for Seen {
    async fn call(&self, call: &CallInfo, next: Next<'_>) -> Result<Bytes, Error> {
        let left = call
            .deadline()
            .map(|deadline| deadline.saturating_duration_since(Instant::now()));
        self.0.lock().unwrap().push((
            call.method().to_owned(),
            call.driver(),
            call.request_len(),
            left,
        ));
        next.run().await
    }
}

#[tokio::test]
async fn a_supervised_channel_streams_posts_and_closes_with_its_supervisor() {
    let supervisor = Supervisor::new();
    let worker = supervisor
        .supervise(
            "edges",
            ThreadDriver::new().spawner(|| EchoServer::new(EchoWorker::new())),
            RestartPolicy::new().backoff(Backoff::constant(Duration::ZERO)),
        )
        .await
        .unwrap();
    let seen = Seen::default();
    let channel = worker.channel().with_middleware(seen.clone());
    let client = EchoClient::new(channel.clone());

    let request = echo_request("supervised");
    let reply = client.echo(request.clone()).await.unwrap();
    assert_eq!(reply.text, "supervised");
    let mut stream = client.count(count_request(3)).await.unwrap();
    let mut values = Vec::new();
    while let Some(reply) = stream.message().await.unwrap() {
        values.push(reply.value);
    }
    assert_eq!(values, [0, 1, 2]);
    client
        .note(NoteRequest {
            tag: "posted".into(),
            ..NoteRequest::default()
        })
        .await
        .unwrap();
    let progress = client
        .progress(workerbus_tests::pb::echo::ProgressRequest {
            tag: "posted".into(),
            at_least: 1,
        })
        .await
        .unwrap();
    assert_eq!(progress.messages, 1);

    {
        let seen = seen.0.lock().unwrap();
        let (method, driver, request_len, left) = &seen[0];
        assert_eq!(method, "echo.echo");
        assert_eq!(
            *driver, "thread",
            "the driver of the worker behind the slot"
        );
        assert_eq!(*request_len, request.encoded_len());
        let left = left.expect("the default timeout sets a deadline");
        assert!(
            left <= workerbus::DEFAULT_TIMEOUT && left > Duration::from_secs(20),
            "{left:?}"
        );
        let methods: Vec<&str> = seen.iter().map(|(method, ..)| method.as_str()).collect();
        assert_eq!(
            methods,
            ["echo.echo", "echo.count", "echo.note", "echo.progress"]
        );
    }

    let waiting = {
        let channel = channel.clone();
        tokio::spawn(async move { channel.closed().await })
    };
    assert!(!channel.is_closed());
    supervisor.shutdown().await;
    tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("closed() returns once the supervisor shut the worker down")
        .unwrap();
    assert!(channel.is_closed());
    assert_eq!(channel.in_flight(), 0, "no worker, nothing in flight");
    let error = client.count(count_request(1)).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "echo.count failed: worker edges is unavailable: its supervisor shut it down"
    );
    let error = client.note(NoteRequest::default()).await.unwrap_err();
    assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
    // Its events end with it.
    let mut events = EchoEvents::subscribe(&channel);
    let ended: Option<Result<EchoEvent, Error>> = events.next_event().await;
    assert!(ended.is_none());
}

#[test]
fn call_options_report_what_was_set() {
    let backoff = Backoff::constant(Duration::from_millis(5));
    let options = CallOptions::new()
        .retries(3)
        .backoff(backoff)
        .idempotent(true);
    assert_eq!(options.get_retries(), Some(3));
    assert_eq!(options.get_backoff(), Some(backoff));
    assert_eq!(options.get_idempotent(), Some(true));
    assert_eq!(options.get_timeout(), None);
    let unset = CallOptions::new();
    assert_eq!(
        (
            unset.get_retries(),
            unset.get_backoff(),
            unset.get_idempotent()
        ),
        (None, None, None)
    );
}

#[test]
fn a_backoff_ignores_a_multiplier_or_jitter_that_is_not_a_number() {
    let initial = Duration::from_millis(10);
    for odd in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let backoff = Backoff::exponential(initial).multiplier(odd).jitter(odd);
        // A multiplier of 1 and no jitter: every delay is the first, exactly.
        assert_eq!(
            backoff,
            Backoff::constant(initial).max_delay(Duration::from_secs(5))
        );
        for retry in [1, 2, 10] {
            assert_eq!(backoff.delay(retry), initial, "{odd} at retry {retry}");
        }
    }
}
