//! One-way messages in the serve loop: never answered, whether served,
//! failed, of an unknown method, beyond the queue, sent during a shutdown or
//! past their deadline. (One whose dispatch panics is in `dispatch.rs`.)

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use prost::Message;
use workerbus::{Frame, MemoryTransport, MethodKind, MethodName, ServeOptions, Status};
use workerbus_tests::pb::echo::{NoteRequest, SleepRequest, SleepState};

use super::{echo, next, observe, request, serve, sleep, status_of, still_serving};

fn one_way_note(id: u64, tag: &str, fail: bool) -> Frame {
    let message = NoteRequest {
        tag: tag.into(),
        text: format!("note {id}"),
        fail,
    };
    request(id, "echo.note", &message).with_kind(MethodKind::OneWay)
}

/// Frames until the answer to `id`, which must come.
async fn frames_until_answer(host: &mut MemoryTransport, id: u64) -> Vec<Frame> {
    let mut frames = Vec::new();
    loop {
        let frame = next(host).await;
        let done = matches!(&frame, Frame::Response { id: answered, .. } | Frame::Status { id: answered, .. } if *answered == id);
        frames.push(frame);
        if done {
            return frames;
        }
    }
}

#[tokio::test]
async fn one_way_messages_are_never_answered() {
    let (mut host, _served) = serve(ServeOptions::new());
    // Served, failed, and of an unknown method: no answer to any of them.
    host.send(one_way_note(1, "answered", false)).await.unwrap();
    host.send(one_way_note(2, "failed", true)).await.unwrap();
    let unknown = Frame::request(
        3,
        MethodName::from_static("echo.nothing"),
        None,
        1,
        Bytes::new(),
    )
    .with_kind(MethodKind::OneWay);
    host.send(unknown).await.unwrap();
    host.send(observe(4, "never", SleepState::Unspecified))
        .await
        .unwrap();
    host.send(Frame::Cancel { id: 4 }).await.unwrap();
    host.send(echo(5, "after")).await.unwrap();
    let mut frames = frames_until_answer(&mut host, 5).await;
    // An answer may overtake the events of other calls (PROTOCOL.md 5.12).
    let noted = |frame: &Frame| matches!(frame, Frame::Event { method, .. } if method == "echo_events.noted");
    if !frames.iter().any(noted) {
        frames.push(next(&mut host).await);
    }
    for frame in &frames {
        assert!(
            matches!(frame, Frame::Event { .. } | Frame::Response { id: 5, .. }),
            "a one-way message was answered: {frame:?}"
        );
    }
    // The served note sent its event.
    assert!(frames.iter().any(noted), "{frames:?}");
}

#[tokio::test]
async fn a_one_way_message_beyond_the_queue_is_dropped_without_an_answer() {
    let (mut host, _served) = serve(
        ServeOptions::new()
            .max_concurrent_calls(1)
            .max_queued_calls(0),
    );
    host.send(sleep(1, "running", 60_000, None)).await.unwrap();
    host.send(one_way_note(2, "shed", false)).await.unwrap();
    host.send(Frame::Cancel { id: 1 }).await.unwrap();
    host.send(echo(3, "after")).await.unwrap();
    let frames = frames_until_answer(&mut host, 3).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
}

#[tokio::test]
async fn a_one_way_message_during_a_shutdown_is_dropped_without_an_answer() {
    let (mut host, served) = serve(ServeOptions::new());
    host.send(Frame::Shutdown).await.unwrap();
    let note = NoteRequest {
        tag: "late".into(),
        text: "too late".into(),
        fail: false,
    };
    host.send(request(1, "echo.note", &note).with_kind(MethodKind::OneWay))
        .await
        .unwrap();
    host.send(echo(2, "too late")).await.unwrap();
    // The call is refused; the one-way message neither runs (no event) nor
    // is answered; then the worker closes.
    assert_eq!(
        status_of(&mut host, 2).await,
        Status::unavailable("echo.echo was not started: the worker is shutting down")
    );
    assert!(host.next().await.is_none());
    tokio::time::timeout(Duration::from_secs(20), served)
        .await
        .unwrap()
        .unwrap()
        .expect("a shutdown ends serving cleanly");
}

#[tokio::test]
async fn a_one_way_message_past_its_deadline_is_dropped_without_an_answer() {
    let (mut host, _served) = serve(ServeOptions::new());
    let sleep = SleepRequest {
        tag: "one-way".into(),
        ms: 60_000,
        blocking: false,
    };
    let one_way = Frame::request(
        1,
        MethodName::from_static("echo.sleep"),
        Some(Duration::from_millis(50)),
        1,
        Bytes::from(sleep.encode_to_vec()),
    )
    .with_kind(MethodKind::OneWay);
    host.send(one_way).await.unwrap();
    host.send(observe(2, "one-way", SleepState::Cancelled))
        .await
        .unwrap();
    // The only answer is the observer's: the sleep was cancelled at its
    // deadline and never answered.
    assert_eq!(
        next(&mut host).await,
        Frame::Response {
            id: 2,
            payload: Bytes::new().into()
        }
    );
    still_serving(&mut host, 3).await;
}

#[tokio::test]
async fn events_a_handler_sends_before_it_answers_arrive_before_its_answer() {
    let (mut host, _served) = serve(ServeOptions::new());
    let announce = workerbus_tests::pb::echo::AnnounceRequest {
        tag: "before the answer".into(),
        count: 5,
        padding: 0,
    };
    host.send(request(7, "echo.announce", &announce))
        .await
        .unwrap();
    let frames = frames_until_answer(&mut host, 7).await;
    let (answer, before) = frames.split_last().expect("the answer");
    assert!(
        matches!(answer, Frame::Response { id: 7, .. }),
        "{answer:?}"
    );
    let ticks = before
        .iter()
        .filter(
            |frame| matches!(frame, Frame::Event { method, .. } if method == "echo_events.tick_v1"),
        )
        .count();
    assert_eq!(ticks, 5, "{before:?}");
}
