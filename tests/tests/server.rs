//! The serve loop seen through raw frames, and the full call path over a byte
//! stream with the frame codec (what the process driver carries).

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use prost::Message;
use tokio::io::AsyncWriteExt;
use tokio_util::codec::Framed;
use workerbus::{
    Channel, ChannelOptions, Code, Error, Frame, FrameCodec, FrameError, MemoryTransport,
    MethodKind, MethodName, ServeOptions, Status, ThreadDriver, serve_transport,
};
use workerbus_tests::pb::echo::{
    EchoClient, EchoRequest, EchoServer, FailRequest, NoteRequest, ObserveRequest, SleepRequest,
    SleepState,
};
use workerbus_tests::{EchoWorker, cases};

/// A worker serving `EchoWorker` on this runtime, and the host's raw end.
fn serve(
    options: ServeOptions,
) -> (
    MemoryTransport,
    tokio::task::JoinHandle<Result<(), FrameError>>,
) {
    let (host, worker) = MemoryTransport::pair();
    let served = tokio::spawn(serve_transport(
        worker,
        EchoServer::new(EchoWorker::new()),
        options,
    ));
    (host, served)
}

fn request(
    id: u64,
    method: &'static str,
    timeout: Option<Duration>,
    message: &impl Message,
) -> Frame {
    Frame::request(
        id,
        MethodName::from_static(method),
        timeout,
        1,
        Bytes::from(message.encode_to_vec()),
    )
}

fn sleep(id: u64, tag: &str, ms: u64, timeout: Option<Duration>) -> Frame {
    let message = SleepRequest {
        tag: tag.into(),
        ms,
        blocking: false,
    };
    request(id, "echo.sleep", timeout, &message)
}

fn observe(id: u64, tag: &str, state: SleepState) -> Frame {
    let message = ObserveRequest {
        tag: tag.into(),
        state: state.into(),
    };
    request(id, "echo.observe", None, &message)
}

fn echo(id: u64, text: &str) -> Frame {
    let message = EchoRequest {
        text: text.into(),
        ..EchoRequest::default()
    };
    request(id, "echo.echo", None, &message)
}

async fn next(host: &mut MemoryTransport) -> Frame {
    tokio::time::timeout(Duration::from_secs(20), host.next())
        .await
        .expect("the worker answers")
        .expect("the connection is open")
        .expect("a valid frame")
}

#[tokio::test]
async fn a_call_past_its_deadline_is_cancelled_and_not_answered() {
    let (mut host, _served) = serve(ServeOptions::new());
    host.send(sleep(
        1,
        "deadline",
        60_000,
        Some(Duration::from_millis(50)),
    ))
    .await
    .unwrap();
    host.send(observe(2, "deadline", SleepState::Cancelled))
        .await
        .unwrap();
    // The only answer is the observer's: the sleep was dropped, unanswered.
    assert_eq!(
        next(&mut host).await,
        Frame::Response {
            id: 2,
            payload: Bytes::new()
        }
    );
    host.send(echo(3, "after")).await.unwrap();
    assert!(matches!(
        next(&mut host).await,
        Frame::Response { id: 3, .. }
    ));
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
async fn calls_over_the_limit_wait_in_order_and_can_be_cancelled_while_waiting() {
    let (mut host, _served) = serve(ServeOptions::new().max_concurrent_calls(1));
    host.send(sleep(1, "first", 60_000, None)).await.unwrap();
    host.send(echo(2, "queued")).await.unwrap();
    host.send(echo(3, "also queued")).await.unwrap();
    host.send(Frame::Cancel { id: 2 }).await.unwrap();
    host.send(Frame::Cancel { id: 1 }).await.unwrap();
    // Call 1 is cancelled, 2 never starts, 3 gets the free slot.
    let Frame::Response { id: 3, payload } = next(&mut host).await else {
        panic!("expected the answer to call 3");
    };
    let reply = workerbus_tests::pb::echo::EchoReply::decode(payload).unwrap();
    assert_eq!(reply.text, "also queued");
}

#[tokio::test]
async fn a_request_beyond_the_queue_is_answered_busy_at_once() {
    let (mut host, _served) = serve(
        ServeOptions::new()
            .max_concurrent_calls(1)
            .max_queued_calls(1),
    );
    host.send(sleep(1, "running", 60_000, None)).await.unwrap();
    host.send(echo(2, "queued")).await.unwrap();
    host.send(echo(3, "shed")).await.unwrap();
    assert_eq!(
        next(&mut host).await,
        Frame::Status {
            id: 3,
            status: Status::unavailable(
                "echo.echo was not started: the worker is busy (1 calls running, 1 waiting)"
            ),
        }
    );
    host.send(Frame::Cancel { id: 1 }).await.unwrap();
    assert!(matches!(
        next(&mut host).await,
        Frame::Response { id: 2, .. }
    ));
}

#[tokio::test]
async fn shutdown_refuses_new_calls_finishes_running_ones_then_closes() {
    let (mut host, served) = serve(ServeOptions::new());
    host.send(sleep(1, "draining", 50, None)).await.unwrap();
    host.send(observe(2, "draining", SleepState::Started))
        .await
        .unwrap();
    assert!(matches!(
        next(&mut host).await,
        Frame::Response { id: 2, .. }
    ));
    host.send(Frame::Shutdown).await.unwrap();
    host.send(echo(3, "too late")).await.unwrap();
    assert_eq!(
        next(&mut host).await,
        Frame::Status {
            id: 3,
            status: Status::unavailable("echo.echo was not started: the worker is shutting down"),
        }
    );
    assert_eq!(
        next(&mut host).await,
        Frame::Response {
            id: 1,
            payload: Bytes::new()
        }
    );
    assert!(
        host.next().await.is_none(),
        "the worker closes after draining"
    );
    served.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_frame_only_a_host_may_receive_ends_serving_with_an_error() {
    let (mut host, served) = serve(ServeOptions::new());
    host.send(Frame::Response {
        id: 1,
        payload: Bytes::new(),
    })
    .await
    .unwrap();
    let error = served.await.unwrap().unwrap_err();
    assert_eq!(error.to_string(), "unexpected RESPONSE frame from the host");
    assert!(host.next().await.is_none());
}

#[tokio::test]
async fn every_shared_case_passes_over_a_byte_stream_with_the_frame_codec() {
    let (host, worker) = tokio::io::duplex(64 * 1024);
    let served = tokio::spawn(serve_transport(
        Framed::new(worker, FrameCodec::new()),
        EchoServer::new(EchoWorker::new()),
        ServeOptions::new(),
    ));
    let channel = Channel::new(Framed::new(host, FrameCodec::new()));
    cases::all(&channel).await;
    drop(channel);
    served
        .await
        .unwrap()
        .expect("the worker stops cleanly when the host closes");
}

#[tokio::test]
async fn garbage_from_the_worker_fails_calls_with_a_clear_disconnection() {
    let (host, mut worker) = tokio::io::duplex(1024);
    let channel = Channel::new(Framed::new(host, FrameCodec::new()));
    let client = EchoClient::new(channel.clone());
    let call = client.echo(EchoRequest::default());
    let garbage = async {
        worker
            .write_all(&[0xff, 0xff, 0xff, 0xff, 0x00])
            .await
            .unwrap();
    };
    let (result, ()) = tokio::join!(call, garbage);
    let error = result.unwrap_err();
    assert_eq!(
        error.to_string(),
        "echo.echo failed: disconnected from the worker: frame of 4294967295 bytes exceeds the maximum frame length of 16777216 bytes"
    );
    assert!(matches!(error, Error::Disconnected { cause: Some(_), .. }));
    assert_eq!(channel.in_flight(), 0);
}

#[tokio::test]
async fn garbage_from_the_host_ends_serving_with_a_clear_error() {
    let (mut host, worker) = tokio::io::duplex(1024);
    let served = tokio::spawn(serve_transport(
        Framed::new(worker, FrameCodec::new()),
        EchoServer::new(EchoWorker::new()),
        ServeOptions::new(),
    ));
    host.write_all(&[0, 0, 0, 10, 0x2a, 0, 0, 0, 0, 0, 0, 0, 0, 1])
        .await
        .unwrap();
    let error = served.await.unwrap().unwrap_err();
    assert_eq!(error.to_string(), "unknown frame kind 0x2a");
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
async fn a_request_reusing_an_id_in_flight_ends_serving_with_an_error() {
    let (mut host, served) = serve(ServeOptions::new());
    host.send(sleep(5, "first", 60_000, None)).await.unwrap();
    host.send(echo(5, "same id")).await.unwrap();
    let error = served.await.unwrap().unwrap_err();
    assert_eq!(error.to_string(), "request id 5 is already in flight");
}

#[tokio::test]
async fn a_call_whose_deadline_passes_while_it_waits_never_starts() {
    let (mut host, _served) = serve(ServeOptions::new().max_concurrent_calls(1));
    host.send(sleep(1, "holder", 300, None)).await.unwrap();
    host.send(sleep(2, "expired", 10, Some(Duration::from_millis(20))))
        .await
        .unwrap();
    host.send(observe(3, "holder", SleepState::Finished))
        .await
        .unwrap();
    // Ids 1 and 3 are answered once the holder finishes; 2 never runs.
    let mut answered = [next(&mut host).await.id(), next(&mut host).await.id()];
    answered.sort();
    assert_eq!(answered, [1, 3]);
    host.send(echo(4, "probe")).await.unwrap();
    assert_eq!(next(&mut host).await.id(), 4);
    host.send(request(5, "echo.stats", None, &()))
        .await
        .unwrap();
    let Frame::Response { id: 5, payload } = next(&mut host).await else {
        panic!("expected stats");
    };
    let stats = workerbus_tests::pb::echo::StatsReply::decode(payload).unwrap();
    assert_eq!(stats.peak_concurrency, 1);
    assert_eq!(
        stats.sleeps_cancelled, 0,
        "the expired call never started, so was never cancelled"
    );
}

#[tokio::test]
async fn a_zero_queue_still_runs_calls_while_slots_are_free() {
    let (mut host, _served) = serve(
        ServeOptions::new()
            .max_concurrent_calls(2)
            .max_queued_calls(0),
    );
    host.send(echo(1, "a")).await.unwrap();
    host.send(echo(2, "b")).await.unwrap();
    let mut answered = [next(&mut host).await, next(&mut host).await];
    answered.sort_by_key(Frame::id);
    assert!(matches!(answered[0], Frame::Response { id: 1, .. }));
    assert!(matches!(answered[1], Frame::Response { id: 2, .. }));
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

fn one_way_note(id: u64, tag: &str, fail: bool) -> Frame {
    let message = NoteRequest {
        tag: tag.into(),
        text: format!("note {id}"),
        fail,
    };
    request(id, "echo.note", None, &message).with_kind(MethodKind::OneWay)
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

struct Nothing;

impl workerbus_tests::pb::echo::MissingHandler for Nothing {
    async fn nothing(&self, _request: (), _cx: &workerbus::Context) -> Result<(), Status> {
        Ok(())
    }
}

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
