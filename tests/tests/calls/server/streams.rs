//! Streams in the serve loop: items a host had no room or right to send,
//! streams asked of methods that have none (and the reverse), request stream
//! messages that do not decode, and stream halves that outlive their call.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use prost::Message;
use workerbus::{Call, Code, Frame, MethodKind, MethodName, ServeOptions, Status};
use workerbus_tests::pb::echo::{EchoReply, EchoRequest, SleepRequest, SleepState, SumRequest};

use super::{
    Handled, Probe, echo, ended_with, next, observe, request, serve, serve_with, status_of,
    still_serving,
};

/// A `sum` call whose request streams; its items follow.
fn sum(id: u64) -> Frame {
    Frame::request(
        id,
        MethodName::from_static("echo.sum"),
        None,
        1,
        Bytes::new(),
    )
    .with_kind(MethodKind::ClientStreaming)
}

fn sum_item(id: u64, value: i64, hold_after: u32) -> Frame {
    let message = SumRequest {
        tag: format!("sum {id}"),
        value,
        stop: false,
        hold_after,
        padding: Bytes::new(),
    };
    Frame::Item {
        id,
        payload: Bytes::from(message.encode_to_vec()),
    }
}

#[tokio::test]
async fn an_item_after_the_end_of_its_request_stream_ends_serving() {
    let (mut host, served) = serve(ServeOptions::new());
    host.send(sum(1)).await.unwrap();
    // The handler takes one message and then holds the call open.
    host.send(sum_item(1, 5, 1)).await.unwrap();
    host.send(Frame::End { id: 1 }).await.unwrap();
    host.send(sum_item(1, 6, 0)).await.unwrap();
    assert_eq!(
        ended_with(served).await,
        "malformed ITEM frame: an item for request 1 after its END"
    );
    assert!(host.next().await.is_none(), "the worker closed its end");
}

#[tokio::test]
async fn items_within_the_window_are_taken_and_one_beyond_it_ends_serving() {
    let (mut host, served) = serve(ServeOptions::new());
    host.send(sum(1)).await.unwrap();
    // The handler reads one message, then stops reading: no credit comes back.
    for value in 0..workerbus::STREAM_WINDOW {
        host.send(sum_item(1, value.into(), 1)).await.unwrap();
    }
    // A full window is within the rules: the worker still serves.
    still_serving(&mut host, 2).await;
    host.send(sum_item(1, 99, 1)).await.unwrap();
    assert_eq!(
        ended_with(served).await,
        "malformed ITEM frame: more items for request 1 than its credit allows"
    );
}

#[tokio::test]
async fn item_bytes_beyond_the_window_end_serving() {
    let (mut host, served) = serve(ServeOptions::new());
    host.send(sum(1)).await.unwrap();
    // The handler reads one message, then stops reading: no credit comes back.
    host.send(sum_item(1, 5, 1)).await.unwrap();
    // One item as large as the window's bytes is within the rules, since
    // the host had credit left: the worker still serves.
    let large = Frame::Item {
        id: 1,
        payload: Bytes::from(vec![0; workerbus::STREAM_WINDOW_BYTES as usize]),
    };
    host.send(large).await.unwrap();
    still_serving(&mut host, 2).await;
    host.send(sum_item(1, 1, 1)).await.unwrap();
    assert_eq!(
        ended_with(served).await,
        "malformed ITEM frame: more bytes of items for request 1 than its credit allows"
    );
}

#[tokio::test]
async fn an_item_for_a_call_whose_request_does_not_stream_ends_serving() {
    let (mut host, served) = serve(ServeOptions::new());
    // `count` streams its response only: its request stream is over from
    // the start, so an item for it comes after its end.
    let count = request(
        1,
        "echo.count",
        &workerbus_tests::pb::echo::CountRequest {
            tag: "count".into(),
            from: 0,
            count: 1_000,
            delay_ms: 60_000,
            fail_code: 0,
            padding: 0,
        },
    )
    .with_kind(MethodKind::ServerStreaming);
    host.send(count).await.unwrap();
    host.send(observe(2, "count", SleepState::Started))
        .await
        .unwrap();
    assert_eq!(next(&mut host).await.id(), 2);
    host.send(sum_item(1, 1, 0)).await.unwrap();
    assert_eq!(
        ended_with(served).await,
        "malformed ITEM frame: an item for request 1 after its END"
    );
}

#[tokio::test]
async fn an_item_for_a_running_unary_call_is_ignored_like_a_late_one() {
    let (mut host, _served) = serve(ServeOptions::new());
    let sleep = SleepRequest {
        tag: "unary".into(),
        ms: 60_000,
        blocking: false,
    };
    host.send(request(1, "echo.sleep", &sleep)).await.unwrap();
    host.send(observe(2, "unary", SleepState::Started))
        .await
        .unwrap();
    assert_eq!(next(&mut host).await.id(), 2);
    // The call is still running when its item arrives.
    host.send(sum_item(1, 1, 0)).await.unwrap();
    still_serving(&mut host, 3).await;
    host.send(Frame::Cancel { id: 1 }).await.unwrap();
    host.send(observe(4, "unary", SleepState::Cancelled))
        .await
        .unwrap();
    assert_eq!(next(&mut host).await.id(), 4);
}

#[tokio::test]
async fn a_unary_method_asked_for_a_response_stream_answers_with_its_response_alone() {
    let (mut host, _served) = serve(ServeOptions::new());
    host.send(echo(1, "no stream here").with_kind(MethodKind::ServerStreaming))
        .await
        .unwrap();
    match next(&mut host).await {
        Frame::Response { id: 1, payload } => {
            assert_eq!(
                EchoReply::decode(payload.into_bytes()).unwrap().text,
                "no stream here"
            );
        }
        other => panic!("expected the response alone, got {other:?}"),
    }
    // The call's stream is gone with it: credit for it is late, not wrong.
    host.send(Frame::Credit {
        id: 1,
        count: 16,
        bytes: 0,
    })
    .await
    .unwrap();
    still_serving(&mut host, 2).await;
}

#[tokio::test]
async fn streaming_methods_called_without_their_streams_fail_their_precondition() {
    let (mut host, _served) = serve(ServeOptions::new());
    let count = workerbus_tests::pb::echo::CountRequest {
        count: 3,
        ..Default::default()
    };
    host.send(request(1, "echo.count", &count)).await.unwrap();
    assert_eq!(
        status_of(&mut host, 1).await,
        Status::failed_precondition(
            "echo.count streams its response, but its caller did not ask for a stream"
        )
    );
    host.send(request(2, "echo.sum", &())).await.unwrap();
    assert_eq!(
        status_of(&mut host, 2).await,
        Status::failed_precondition(
            "echo.sum takes a stream of requests, but its caller did not send one"
        )
    );
    // A stream asked the wrong way round fails the same way.
    host.send(request(3, "echo.sum", &()).with_kind(MethodKind::ServerStreaming))
        .await
        .unwrap();
    assert_eq!(
        status_of(&mut host, 3).await,
        Status::failed_precondition(
            "echo.sum takes a stream of requests, but its caller did not send one"
        )
    );
}

#[tokio::test]
async fn a_request_stream_message_that_does_not_decode_is_an_invalid_argument() {
    let (mut host, _served) = serve(ServeOptions::new());
    host.send(sum(1)).await.unwrap();
    host.send(Frame::Item {
        id: 1,
        payload: Bytes::from_static(&[0x0a, 0xff]),
    })
    .await
    .unwrap();
    let status = status_of(&mut host, 1).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with(
            "a message of echo.sum's request stream did not decode as echo.SumRequest: "
        ),
        "{}",
        status.message()
    );
    still_serving(&mut host, 2).await;
}

/// What the stream probe saw.
#[derive(Debug, Default)]
struct Seen {
    debug: Vec<String>,
    messages: Vec<String>,
    read_after_end: Option<bool>,
}

/// A `chat` handler that reads its request stream to the end and past it,
/// describes its stream halves, and leaves its sender to a task that sends
/// once told to, after the call has ended.
fn stream_probe(
    seen: Arc<Mutex<Seen>>,
    late_send: Arc<Mutex<Option<tokio::sync::oneshot::Receiver<()>>>>,
    sent: tokio::sync::mpsc::UnboundedSender<Result<(), Status>>,
) -> Probe {
    Probe(Box::new(move |call: Call| -> Handled {
        let (seen, late_send, sent) = (Arc::clone(&seen), Arc::clone(&late_send), sent.clone());
        Box::pin(async move {
            let (_payload, cx, streams) = call.into_parts();
            let sender = streams.sender::<EchoReply>(&cx)?;
            let mut incoming = streams.incoming::<EchoRequest>(&cx, "echo.EchoRequest")?;
            // A second reader of the same stream, left unread.
            let mut unread = streams.incoming::<EchoRequest>(&cx, "echo.EchoRequest")?;
            {
                let mut seen = seen.lock().unwrap();
                seen.debug.push(format!("{streams:?}"));
                seen.debug.push(format!("{sender:?}"));
                seen.debug.push(format!("{incoming:?}"));
                seen.debug.push(format!("{:?}", cx.events()));
            }
            while let Some(message) = incoming.message().await? {
                seen.lock().unwrap().messages.push(message.text);
            }
            let again = incoming.message().await?;
            seen.lock().unwrap().read_after_end = Some(again.is_none());
            let go = late_send.lock().unwrap().take().expect("one call");
            tokio::spawn(async move {
                let _ = go.await;
                let _ = sent.send(sender.send(EchoReply::default()).await);
                let _ = sent.send(unread.message().await.map(|message| {
                    assert_eq!(message, None, "the call's stream ended with it");
                }));
            });
            Ok(workerbus::Payload::new())
        })
    }))
}

#[tokio::test]
async fn stream_halves_end_with_their_call() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (go, late) = tokio::sync::oneshot::channel();
    let (sent_tx, mut sent) = tokio::sync::mpsc::unbounded_channel();
    let probe = stream_probe(Arc::clone(&seen), Arc::new(Mutex::new(Some(late))), sent_tx);
    let (mut host, _served) = serve_with(probe, ServeOptions::new());
    let chat = Frame::request(
        1,
        MethodName::from_static("echo.chat"),
        None,
        1,
        Bytes::new(),
    )
    .with_kind(MethodKind::BidiStreaming);
    host.send(chat).await.unwrap();
    for text in ["a", "b"] {
        let message = EchoRequest {
            text: text.into(),
            ..EchoRequest::default()
        };
        host.send(Frame::Item {
            id: 1,
            payload: Bytes::from(message.encode_to_vec()),
        })
        .await
        .unwrap();
    }
    host.send(Frame::End { id: 1 }).await.unwrap();
    assert_eq!(
        next(&mut host).await,
        Frame::Response {
            id: 1,
            payload: Bytes::new().into()
        }
    );
    go.send(()).unwrap();
    let late = tokio::time::timeout(Duration::from_secs(20), sent.recv())
        .await
        .expect("the late send ends")
        .expect("a result");
    assert_eq!(
        late,
        Err(Status::cancelled(
            "the caller of echo.chat no longer listens"
        ))
    );
    let late_read = tokio::time::timeout(Duration::from_secs(20), sent.recv())
        .await
        .expect("the late read ends")
        .expect("a result");
    assert_eq!(late_read, Ok(()), "a late read finds the stream over");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.messages, ["a", "b"]);
    assert_eq!(
        seen.read_after_end,
        Some(true),
        "an ended stream stays ended"
    );
    assert_eq!(
        seen.debug,
        [
            "CallStreams { stream: Some(StreamHandle { id: 1, request: true, response: true, .. }) }",
            "StreamSender { method: \"echo.chat\", .. }",
            "Incoming { method: \"echo.chat\", done: false, .. }",
            "EventSink { connected: true }",
        ]
    );
}

/// A handler being polled when its call's `CANCEL` arrives outlives the
/// abort until it next waits; a read of its request stream before then
/// fails cancelled, and never takes the stream's loss for its end (on which
/// the handler would answer as if its caller had sent everything). The
/// handler keeps its thread busy from before the `CANCEL` is sent until its
/// cancellation fires, so the read comes after the `CANCEL` was taken in,
/// whatever the timing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_after_the_calls_cancel_is_cancelled_not_the_streams_end() {
    let (busy, busy_now) = std::sync::mpsc::channel::<()>();
    let (read_after, reads) = std::sync::mpsc::channel::<Result<Option<i64>, Status>>();
    let senders = Mutex::new((busy, read_after));
    let probe = Probe(Box::new(move |call: Call| -> Handled {
        let (busy, read_after) = senders.lock().unwrap().clone();
        Box::pin(async move {
            let (_payload, cx, streams) = call.into_parts();
            let mut incoming = streams.incoming::<SumRequest>(&cx, "echo.SumRequest")?;
            incoming.message().await?;
            // Polled by its own task from here, not within the serve loop.
            tokio::task::yield_now().await;
            let cancellation = cx.cancelled();
            busy.send(()).unwrap();
            // Busy until the CANCEL has been taken in, on the other thread:
            // the task is being polled all along, so the abort cannot stop
            // it first.
            while !cancellation.is_cancelled() {
                std::thread::yield_now();
            }
            let next = incoming
                .message()
                .await
                .map(|next| next.map(|request| request.value));
            read_after.send(next).unwrap();
            Ok(workerbus::Payload::new())
        })
    }));
    let (mut host, _served) = serve_with(probe, ServeOptions::new());
    host.send(sum(1)).await.unwrap();
    host.send(sum_item(1, 1, 0)).await.unwrap();
    let waited =
        tokio::task::spawn_blocking(move || busy_now.recv_timeout(Duration::from_secs(20)));
    waited
        .await
        .unwrap()
        .expect("the handler read its first message within 20 s");
    host.send(Frame::Cancel { id: 1 }).await.unwrap();
    let read = tokio::task::spawn_blocking(move || reads.recv_timeout(Duration::from_secs(20)))
        .await
        .unwrap()
        .expect("the handler read its stream again within 20 s");
    let status = read.expect_err("a read after the cancel failed, rather than ended the stream");
    assert_eq!(status.code(), Code::Cancelled, "{status}");
}
