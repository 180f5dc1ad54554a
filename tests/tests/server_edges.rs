//! The serve loop against a host that breaks the rules, frame by frame over
//! an in-memory transport: stream items it had no room or right to send,
//! streams asked of methods that have none (and the reverse), control
//! exchanges it does not know, requests during a shutdown, messages over
//! the maximum frame length, and handlers that panic in every way. The
//! control exchanges only a worker process has (the handshake) are tried
//! over a detached worker's named socket.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use prost::Message;
use tokio::net::UnixStream;
use tokio_util::codec::Framed;
use workerbus::{
    Call, Code, Context, Dispatch, ExitReason, Frame, FrameCodec, FrameError, MemoryTransport,
    MethodKind, MethodName, ProcessDriver, ServeOptions, ServiceSchema, Status, serve_transport,
};
use workerbus_tests::EchoWorker;
use workerbus_tests::pb::echo::{
    AnnounceRequest, EchoClient, EchoReply, EchoRequest, EchoServer, MissingServer, NoteRequest,
    ObserveRequest, SleepRequest, SleepState, SumRequest,
};
use workerbus_tests::support::{KillOnDrop, greeted};

type Served = tokio::task::JoinHandle<Result<(), FrameError>>;

/// Serves `service` on this runtime; returns the host's raw end.
fn serve_with(service: impl Dispatch, options: ServeOptions) -> (MemoryTransport, Served) {
    let (host, worker) = MemoryTransport::pair();
    let served = tokio::spawn(serve_transport(worker, service, options));
    (host, served)
}

/// An `EchoWorker` served on this runtime.
fn serve(options: ServeOptions) -> (MemoryTransport, Served) {
    serve_with(EchoServer::new(EchoWorker::new()), options)
}

fn request(id: u64, method: &'static str, message: &impl Message) -> Frame {
    Frame::request(
        id,
        MethodName::from_static(method),
        None,
        1,
        Bytes::from(message.encode_to_vec()),
    )
}

fn echo(id: u64, text: &str) -> Frame {
    let message = EchoRequest {
        text: text.into(),
        ..EchoRequest::default()
    };
    request(id, "echo.echo", &message)
}

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

fn observe(id: u64, tag: &str, state: SleepState) -> Frame {
    let message = ObserveRequest {
        tag: tag.into(),
        state: state.into(),
    };
    request(id, "echo.observe", &message)
}

async fn next(host: &mut MemoryTransport) -> Frame {
    tokio::time::timeout(Duration::from_secs(20), host.next())
        .await
        .expect("the worker answers within 20 s")
        .expect("the connection is open")
        .expect("a valid frame")
}

/// The error serving ended with, which it must end with.
async fn ended_with(served: Served) -> String {
    tokio::time::timeout(Duration::from_secs(20), served)
        .await
        .expect("serving ends within 20 s")
        .expect("the serve task did not panic")
        .expect_err("serving ends with an error")
        .to_string()
}

/// The status answering `id`, which must be the next frame.
async fn status_of(host: &mut MemoryTransport, id: u64) -> Status {
    match next(host).await {
        Frame::Status {
            id: answered,
            status,
        } if answered == id => status,
        other => panic!("expected a status for request {id}, got {other:?}"),
    }
}

/// The worker still answers: a health check and an echo.
async fn still_serving(host: &mut MemoryTransport, id: u64) {
    host.send(echo(id, "still here")).await.unwrap();
    match next(host).await {
        Frame::Response {
            id: answered,
            payload,
        } if answered == id => {
            assert_eq!(EchoReply::decode(payload).unwrap().text, "still here");
        }
        other => panic!("expected the answer to request {id}, got {other:?}"),
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
            assert_eq!(EchoReply::decode(payload).unwrap().text, "no stream here");
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
            payload: Bytes::new()
        }
    );
    still_serving(&mut host, 3).await;
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

struct Nothing;

impl workerbus_tests::pb::echo::MissingHandler for Nothing {
    async fn nothing(&self, _request: (), _cx: &Context) -> Result<(), Status> {
        Ok(())
    }
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
            payload: Bytes::new()
        }
    );
}

type Handled = Pin<Box<dyn Future<Output = Result<Bytes, Status>> + Send>>;

static ECHO_SCHEMA: ServiceSchema = EchoClient::SCHEMA;

/// A hand-written service: each call is whatever its function makes of it.
struct Probe(Box<dyn Fn(Call) -> Handled + Send + Sync>);

impl Dispatch for Probe {
    fn schema(&self) -> &'static ServiceSchema {
        &ECHO_SCHEMA
    }

    fn dispatch(
        &self,
        call: Call,
    ) -> impl Future<Output = Result<Bytes, Status>> + Send + 'static + use<> {
        (self.0)(call)
    }
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
            Ok(Bytes::new())
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
            payload: Bytes::new()
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

async fn answer(peer: &mut Framed<UnixStream, FrameCodec>) -> Frame {
    tokio::time::timeout(Duration::from_secs(20), peer.next())
        .await
        .expect("the worker answers within 20 s")
        .expect("the connection is open")
        .expect("a valid frame")
}

#[tokio::test]
async fn a_worker_process_refuses_unknown_control_exchanges_and_closes_on_undecodable_greetings() {
    const ECHO_WORKER: &str = env!("CARGO_BIN_EXE_echo-worker");
    let detached = ProcessDriver::new(ECHO_WORKER)
        .stderr(workerbus::Stdio::Null)
        .spawn()
        .await
        .expect("spawn")
        .detach()
        .await
        .expect("detach");
    let _kill = KillOnDrop(detached.pid());
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
            assert_eq!(EchoReply::decode(payload).unwrap().text, "after");
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
