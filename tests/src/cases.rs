//! Cases every driver must pass. Each takes a channel to a worker serving
//! [`EchoWorker`](crate::EchoWorker) and ends by checking that no call is
//! left in the channel's pending table.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use workerbus::{
    Backoff, CallOptions, Channel, Code, Error, ExitReason, MAX_METADATA_LEN, Metadata,
    ResponseMetadata, STREAM_WINDOW, STREAM_WINDOW_BYTES, Streaming,
};

use crate::pb::common::{Order, Page};
use crate::pb::echo::{
    AnnounceRequest, CountReply, CountRequest, EchoClient, EchoEvent, EchoEvents, EchoRequest,
    FailRequest, FlakyRequest, HandOffRequest, MissingClient, NoteRequest, ObserveRequest,
    PanicRequest, ProgressRequest, SleepRequest, SleepState, SumRequest, TickEvent,
};
use crate::pb::echo::{Header, HeadersRequest};

fn echo(channel: &Channel) -> EchoClient {
    EchoClient::new(channel.clone())
}

fn assert_settled(channel: &Channel) {
    assert_eq!(channel.in_flight(), 0, "calls left in the pending table");
}

/// Where a driver's behaviour differs from the in-process drivers', each as
/// the README's driver table names it. The cases adapt to these and to
/// nothing else; [`Differences::NONE`] is the thread and process drivers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Differences {
    /// Bytes of each stream the transport itself may hold between the
    /// worker and the caller, beyond the protocol's windows: 0 when frames
    /// are carried as they are; over gRPC, what HTTP/2's flow-control
    /// windows and send buffers hold (they count bytes, not messages), plus
    /// the serving node's own window, which the case counts in messages.
    pub transport_bytes: u64,
    /// Whether metadata entries keep their order across keys. HTTP/2 header
    /// blocks (so gRPC) keep the order of the entries of each key only.
    pub metadata_order_across_keys: bool,
    /// Whether a method the worker does not serve is answered by the
    /// worker, naming its service. A gRPC client knows the paths of the
    /// services it was given only, and answers a call of any other method
    /// itself, naming the method.
    pub worker_answers_unknown_methods: bool,
    /// Whether a handler's events reach the caller before the call's
    /// answer. Over gRPC, events travel on a stream of their own, which a
    /// call's answer may overtake.
    pub events_before_answers: bool,
}

impl Differences {
    /// The thread and process drivers: frames carried as they are.
    pub const NONE: Differences = Differences {
        transport_bytes: 0,
        metadata_order_across_keys: true,
        worker_answers_unknown_methods: true,
        events_before_answers: true,
    };

    /// Messages of `size` bytes the transport may hold beyond the
    /// protocol's window (`window` messages of that size): what its bytes
    /// hold, a second window (a serving node that forwards has one of its
    /// own), and one message each held on its way by the encoder, the
    /// decoder and the receiving client.
    fn slack(&self, size: u64, window: u64) -> u64 {
        if self.transport_bytes == 0 {
            return 0;
        }
        self.transport_bytes.div_ceil(size) + window + 3
    }

    /// The padding of the messages of a case about counts of messages: none
    /// in frames; over a transport that counts bytes, enough that its bytes
    /// hold fewer messages than the case sends.
    fn padding(&self) -> u32 {
        if self.transport_bytes == 0 {
            0
        } else {
            16 * 1024
        }
    }
}

/// Waits until a count the worker reports stops changing (it holds for 20
/// round trips), and returns it.
async fn settled_progress(channel: &Channel, tag: &str) -> u64 {
    let mut last = progress(channel, tag, 0).await;
    loop {
        round_trips(channel, 20).await;
        let now = progress(channel, tag, 0).await;
        if now == last {
            return now;
        }
        last = now;
    }
}

/// Waits (through the worker) until the sleep tagged `tag` reaches `state`.
pub async fn observe(channel: &Channel, tag: &str, state: SleepState) {
    echo(channel)
        .observe_with(
            ObserveRequest {
                tag: tag.to_owned(),
                state: state.into(),
            },
            CallOptions::new().timeout(Duration::from_secs(20)),
        )
        .await
        .unwrap_or_else(|error| panic!("sleep {tag:?} never reached {state:?}: {error}"));
}

/// A call returns the handler's response.
pub async fn unary_round_trip(channel: &Channel) {
    let reply = echo(channel)
        .echo(EchoRequest {
            text: "hello".into(),
            data: Bytes::from_static(b"\x00\x01\x02"),
            delay_ms: 0,
        })
        .await
        .unwrap();
    assert_eq!(reply.text, "hello");
    assert_eq!(reply.data, Bytes::from_static(b"\x00\x01\x02"));
    assert_settled(channel);
}

/// A handler's `Err(Status)` reaches the caller with code, message and
/// details intact, and the error names the method.
pub async fn remote_status_is_intact(channel: &Channel) {
    let error = echo(channel)
        .fail(FailRequest {
            code: Code::NotFound.as_u32(),
            message: "no document 42 (é ✓)".into(),
            details: Bytes::from_static(b"detail"),
            repeat: 1,
        })
        .await
        .unwrap_err();
    let status = error.status().expect("a remote status");
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "no document 42 (é ✓)");
    assert_eq!(status.details(), &Bytes::from_static(b"detail"));
    assert_eq!(error.method(), Some("echo.fail"));
    assert_eq!(
        error.to_string(),
        "echo.fail failed: not found: no document 42 (é ✓)"
    );
    assert_settled(channel);
}

/// A message name the worker does not serve is answered `Unimplemented`,
/// naming the method and the service.
pub async fn unknown_method_is_unimplemented(channel: &Channel) {
    unknown_method_is_unimplemented_with(channel, &Differences::NONE).await;
}

/// [`unknown_method_is_unimplemented`], on a driver with `differences`.
pub async fn unknown_method_is_unimplemented_with(channel: &Channel, differences: &Differences) {
    let error = MissingClient::new(channel.clone())
        .nothing(())
        .await
        .unwrap_err();
    let status = error.status().expect("a remote status");
    assert_eq!(status.code(), Code::Unimplemented);
    let expected = if differences.worker_answers_unknown_methods {
        "missing.nothing is not a method of echo.Echo (it has: echo.echo, "
    } else {
        "missing.nothing is not a method of the services this gRPC client serves"
    };
    assert!(
        status.message().starts_with(expected),
        "{}",
        status.message()
    );
    assert_settled(channel);
}

/// A panicking handler is answered `Internal` with its message, and the
/// worker goes on serving.
pub async fn handler_panic_is_internal(channel: &Channel) {
    let error = echo(channel)
        .panic(PanicRequest {
            message: "boom".into(),
        })
        .await
        .unwrap_err();
    let status = error.status().expect("a remote status");
    assert_eq!(status.code(), Code::Internal);
    assert_eq!(
        status.message(),
        "the handler for echo.panic panicked: boom"
    );
    unary_round_trip(channel).await;
}

/// `count` calls in flight at once, finishing in shuffled order, each get
/// their own answer.
pub async fn concurrent_calls_are_correlated(channel: &Channel, count: usize) {
    let client = echo(channel);
    let calls = (0..count).map(|i| {
        let client = client.clone();
        async move {
            let text = format!("call {i}");
            let reply = client
                .echo(EchoRequest {
                    text: text.clone(),
                    data: Bytes::from(i.to_le_bytes().to_vec()),
                    // Later calls often finish first.
                    delay_ms: ((i * 7919) % 13) as u32,
                })
                .await
                .unwrap();
            assert_eq!(reply.text, text);
            assert_eq!(reply.data, Bytes::from(i.to_le_bytes().to_vec()));
        }
    });
    futures_util::future::join_all(calls).await;
    assert_settled(channel);
}

/// 300,000 multi-byte characters and 4 MiB of bytes round-trip unchanged.
pub async fn large_payloads_round_trip(channel: &Channel) {
    let text: String = "é✓🦀".chars().cycle().take(300_000).collect();
    let data: Bytes = (0..4 * 1024 * 1024).map(|i: u32| (i % 251) as u8).collect();
    let reply = echo(channel)
        .echo(EchoRequest {
            text: text.clone(),
            data: data.clone(),
            delay_ms: 0,
        })
        .await
        .unwrap();
    assert_eq!(reply.text.chars().count(), 300_000);
    assert!(reply.text == text, "text changed in transit");
    assert!(reply.data == data, "bytes changed in transit");
    assert_settled(channel);
}

/// Dropping a call's future cancels its handler in the worker.
pub async fn dropping_a_call_cancels_the_handler(channel: &Channel) {
    let client = echo(channel);
    let call = client.sleep(SleepRequest {
        tag: "dropped".into(),
        ms: 60_000,
        blocking: false,
    });
    let mut call = Box::pin(call);
    tokio::select! {
        result = &mut call => panic!("the sleep ended early: {result:?}"),
        () = observe(channel, "dropped", SleepState::Started) => {}
    }
    drop(call);
    observe(channel, "dropped", SleepState::Cancelled).await;
    assert_settled(channel);
}

/// A call that outlives its timeout fails with `Timeout` naming the method
/// and the duration, and its handler is cancelled.
pub async fn timeout_cancels_the_handler(channel: &Channel) {
    let client = echo(channel);
    let options = CallOptions::new().timeout(Duration::from_secs(1));
    let request = SleepRequest {
        tag: "timed out".into(),
        ms: 60_000,
        blocking: false,
    };
    let call = client.sleep_with(request, options);
    // The handler must have started for its cancellation to be observable.
    let (result, ()) = tokio::join!(call, observe(channel, "timed out", SleepState::Started));
    let error = result.unwrap_err();
    assert!(
        matches!(&error, Error::Timeout { method, after } if *method == "echo.sleep" && *after == Duration::from_secs(1)),
        "{error:?}"
    );
    assert_eq!(error.to_string(), "echo.sleep timed out after 1s");
    observe(channel, "timed out", SleepState::Cancelled).await;
    assert_settled(channel);
}

/// The schema's `retries: 3, idempotent: true` on `Flaky` apply without any
/// call options: attempts are counted and sent to the worker, and the last
/// failure is returned when they run out. The method travels under its
/// overridden name.
pub async fn schema_retries_apply(channel: &Channel) {
    let client = echo(channel)
        .with_options(CallOptions::new().backoff(Backoff::constant(Duration::from_millis(1))));
    let reply = client.flaky(FlakyRequest { succeed_on: 4 }).await.unwrap();
    assert_eq!(reply.attempt, 4, "three retries after the first attempt");
    let error = client
        .flaky(FlakyRequest { succeed_on: 5 })
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "echo.flaky_v2 failed: unavailable: attempt 4 fails"
    );
    let error = client
        .flaky_with(
            FlakyRequest { succeed_on: 2 },
            CallOptions::new().retries(0),
        )
        .await
        .unwrap_err();
    assert_eq!(error.status().map(|s| s.code()), Some(Code::Unavailable));
    assert_settled(channel);
}

/// Well-known types (`Empty`, `Timestamp`) and messages of another package
/// cross the boundary.
pub async fn well_known_types_and_imports(channel: &Channel) {
    let client = echo(channel);
    let now = client.now(()).await.unwrap();
    assert!(now.seconds > 1_600_000_000, "{now:?}");
    let page = Page {
        limit: 10,
        cursor: "abc".into(),
        order: Order::Descending.into(),
    };
    assert_eq!(client.page(page.clone()).await.unwrap(), page);
    assert_settled(channel);
}

/// After the worker is gone, calls fail at once with how it ended.
pub async fn calls_after_exit_fail_fast(channel: &Channel, exit: &ExitReason) {
    let error = echo(channel)
        .echo(EchoRequest::default())
        .await
        .unwrap_err();
    match &error {
        Error::WorkerExited { method, exit: got } => {
            assert_eq!(method, "echo.echo");
            assert_eq!(got, exit);
        }
        other => panic!("expected WorkerExited, got {other:?}"),
    }
    assert_settled(channel);
}

/// The longest the work a handler handed off may run on once its call is
/// given up on, seen from the host: from the cancel (the call dropped, or
/// its timeout) until the host has heard from the worker that the work saw
/// its [`Cancellation`](workerbus::Cancellation) and stopped. The round
/// trip of that news is counted in, so the worker's own delay is shorter.
pub const CANCEL_TO_STOP: Duration = Duration::from_millis(50);

fn hand_off(tag: &str, blocking: bool) -> HandOffRequest {
    HandOffRequest {
        tag: tag.to_owned(),
        blocking,
    }
}

/// The ways a handler hands work off: to a task that awaits the
/// cancellation, and to a blocking thread that checks it in a loop.
const HAND_OFFS: [(&str, bool); 2] = [("task", false), ("blocking thread", true)];

/// Waits until the work handed off under `tag` has stopped, which must be
/// within [`CANCEL_TO_STOP`] of `cancelled`, and says how long it took.
async fn stopped_in_time(channel: &Channel, tag: &str, cancelled: std::time::Instant) {
    let stopped = tokio::time::timeout(
        Duration::from_secs(5),
        observe(channel, tag, SleepState::Cancelled),
    )
    .await;
    let took = cancelled.elapsed();
    assert!(
        stopped.is_ok(),
        "the work of {tag:?} still ran {took:?} after its call was given up on"
    );
    assert!(
        took < CANCEL_TO_STOP,
        "the work of {tag:?} stopped {took:?} after its call was given up on, over {CANCEL_TO_STOP:?}"
    );
    println!("{tag}: stopped {took:?} after its call was given up on");
}

/// Work a handler handed off (to a task, or to `spawn_blocking`) stops
/// within [`CANCEL_TO_STOP`] of its caller dropping the call.
pub async fn handed_off_work_stops_when_the_call_is_dropped(channel: &Channel) {
    let client = echo(channel);
    for (to, blocking) in HAND_OFFS {
        let tag = format!("handed off to a {to}, dropped");
        let mut call = Box::pin(client.hand_off(hand_off(&tag, blocking)));
        tokio::select! {
            result = &mut call => panic!("the hand-off ended early: {result:?}"),
            () = observe(channel, &tag, SleepState::Started) => {}
        }
        let cancelled = std::time::Instant::now();
        drop(call);
        stopped_in_time(channel, &tag, cancelled).await;
    }
    assert_settled(channel);
}

/// Work a handler handed off stops within [`CANCEL_TO_STOP`] of its
/// call's deadline.
pub async fn handed_off_work_stops_at_the_deadline(channel: &Channel) {
    let client = echo(channel);
    for (to, blocking) in HAND_OFFS {
        let tag = format!("handed off to a {to}, timed out");
        let options = CallOptions::new().timeout(Duration::from_millis(500));
        let call = client.hand_off_with(hand_off(&tag, blocking), options);
        // The work must have started for its stop to be observable.
        let (result, ()) = tokio::join!(
            async {
                let result = call.await;
                (result, std::time::Instant::now())
            },
            observe(channel, &tag, SleepState::Started)
        );
        let (result, timed_out) = result;
        let error = result.unwrap_err();
        assert!(matches!(error, Error::Timeout { .. }), "{error:?}");
        stopped_in_time(channel, &tag, timed_out).await;
    }
    assert_settled(channel);
}

/// Every case that needs nothing but a fresh worker, in one go.
pub async fn all(channel: &Channel) {
    all_with(channel, &Differences::NONE).await;
}

/// [`all`], on a driver with `differences`.
pub async fn all_with(channel: &Channel, differences: &Differences) {
    unary_round_trip(channel).await;
    remote_status_is_intact(channel).await;
    unknown_method_is_unimplemented_with(channel, differences).await;
    handler_panic_is_internal(channel).await;
    concurrent_calls_are_correlated(channel, 1000).await;
    large_payloads_round_trip(channel).await;
    dropping_a_call_cancels_the_handler(channel).await;
    timeout_cancels_the_handler(channel).await;
    schema_retries_apply(channel).await;
    well_known_types_and_imports(channel).await;
    handed_off_work_stops_when_the_call_is_dropped(channel).await;
    handed_off_work_stops_at_the_deadline(channel).await;
}

/// Waits (through the worker) until the stream tagged `tag` has sent or read
/// `at_least` messages, and returns how many it has.
pub async fn progress(channel: &Channel, tag: &str, at_least: u64) -> u64 {
    echo(channel)
        .progress_with(
            ProgressRequest {
                tag: tag.to_owned(),
                at_least,
            },
            CallOptions::new().timeout(Duration::from_secs(20)),
        )
        .await
        .unwrap_or_else(|error| panic!("stream {tag:?} never reached {at_least} messages: {error}"))
        .messages
}

/// Round trips through the connection and the worker: whatever the worker
/// could do before them, it has had every chance to do by their end.
async fn round_trips(channel: &Channel, count: usize) {
    for _ in 0..count {
        echo(channel).echo(EchoRequest::default()).await.unwrap();
    }
}

/// Reads a stream of numbers to its end or its first error.
async fn read_counts(stream: &mut Streaming<CountReply>) -> (Vec<u64>, Option<Error>) {
    let mut values = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(reply)) => values.push(reply.value),
            Ok(None) => return (values, None),
            Err(error) => return (values, Some(error)),
        }
    }
}

fn count(tag: &str, from: u64, count: u32) -> CountRequest {
    CountRequest {
        tag: tag.to_owned(),
        from,
        count,
        ..CountRequest::default()
    }
}

/// A response stream delivers every message in order and ends when the
/// handler returns.
pub async fn response_stream_in_order(channel: &Channel) {
    let total = 10 * STREAM_WINDOW;
    let mut stream = echo(channel)
        .count(count("in order", 7, total))
        .await
        .unwrap();
    let (values, error) = read_counts(&mut stream).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(values, (7..7 + u64::from(total)).collect::<Vec<_>>());
    // Ended streams stay ended.
    assert!(stream.message().await.unwrap().is_none());
    assert_settled(channel);
}

/// A handler's error after some messages reaches the reader after them,
/// naming the method.
pub async fn response_stream_error_follows_its_messages(channel: &Channel) {
    let request = CountRequest {
        fail_code: Code::NotFound.as_u32(),
        ..count("failing", 0, 5)
    };
    let mut stream = echo(channel).count(request).await.unwrap();
    let (values, error) = read_counts(&mut stream).await;
    assert_eq!(values, [0, 1, 2, 3, 4]);
    match error {
        Some(Error::Remote { method, status }) => {
            assert_eq!(method, "echo.count");
            assert_eq!(status.code(), Code::NotFound);
            assert_eq!(status.message(), "failed after 5 messages");
        }
        other => panic!("expected the handler's status, got {other:?}"),
    }
    assert!(stream.message().await.unwrap().is_none());
    assert_settled(channel);
}

/// A reader that stops reading holds the handler back: it sends no more
/// than the stream's window, however much it has to send, and goes on when
/// the reader does.
pub async fn stalled_reader_bounds_the_handler(channel: &Channel) {
    stalled_reader_bounds_the_handler_with(channel, &Differences::NONE).await;
}

/// [`stalled_reader_bounds_the_handler`], on a driver with `differences`:
/// the handler gets out its window, plus what the transport holds.
pub async fn stalled_reader_bounds_the_handler_with(channel: &Channel, differences: &Differences) {
    let tag = "stalled reader";
    let total = 20 * STREAM_WINDOW;
    let padding = differences.padding();
    let window = u64::from(STREAM_WINDOW);
    let bound = window + differences.slack(u64::from(padding) + 16, u64::from(STREAM_WINDOW));
    assert!(bound < u64::from(total));
    let request = CountRequest {
        padding,
        ..count(tag, 0, total)
    };
    let mut stream = echo(channel).count(request).await.unwrap();
    assert!(progress(channel, tag, window).await >= window);
    let held = settled_progress(channel, tag).await;
    assert!(
        (window..=bound).contains(&held),
        "the handler sent {held} messages while nobody read, more than the window ({window}) and the transport's {} bytes",
        differences.transport_bytes
    );
    let (values, error) = read_counts(&mut stream).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(values.len(), total as usize);
    assert_eq!(progress(channel, tag, 0).await, u64::from(total));
    assert_settled(channel);
}

/// A megabyte: large messages for the byte windows.
const MIB: u32 = 1 << 20;

/// How many messages of `size` bytes a sender gets out on a fresh window:
/// while any byte credit is left, so the last may overrun it.
fn fit_in_window(size: u32) -> u64 {
    u64::from(STREAM_WINDOW_BYTES.div_ceil(size)).min(u64::from(STREAM_WINDOW))
}

/// A response stream of large messages that nobody reads holds its handler
/// back by bytes, long before the window's count of messages.
pub async fn stalled_reader_bounds_the_handler_in_bytes(channel: &Channel) {
    stalled_reader_bounds_the_handler_in_bytes_with(channel, &Differences::NONE).await;
}

/// [`stalled_reader_bounds_the_handler_in_bytes`], on a driver with
/// `differences`.
pub async fn stalled_reader_bounds_the_handler_in_bytes_with(
    channel: &Channel,
    differences: &Differences,
) {
    let tag = "stalled reader, bytes";
    let window = fit_in_window(MIB + 16);
    assert!(window < u64::from(STREAM_WINDOW));
    let slack = differences.slack(u64::from(MIB), window);
    let bound = window + slack;
    let total = (3 * STREAM_WINDOW_BYTES / MIB).max(u32::try_from(bound).unwrap() + 4);
    let request = CountRequest {
        padding: MIB,
        ..count(tag, 0, total)
    };
    let mut stream = echo(channel).count(request).await.unwrap();
    assert!(progress(channel, tag, window).await >= window);
    let held = settled_progress(channel, tag).await;
    assert!(
        (window..=bound).contains(&held),
        "the handler sent {held} messages of 1 MiB while nobody read, more than the window's bytes ({window} messages) and the transport's {} bytes",
        differences.transport_bytes
    );
    let (values, error) = read_counts(&mut stream).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(values.len(), total as usize);
    assert_settled(channel);
}

/// Dropping a response stream cancels its handler.
pub async fn dropping_a_response_stream_cancels_the_handler(channel: &Channel) {
    let tag = "dropped stream";
    let mut stream = echo(channel).count(count(tag, 0, u32::MAX)).await.unwrap();
    assert_eq!(
        stream.message().await.unwrap().map(|reply| reply.value),
        Some(0)
    );
    drop(stream);
    observe(channel, tag, SleepState::Cancelled).await;
    assert_settled(channel);
}

/// Work the handler of a response stream handed off stops within
/// [`CANCEL_TO_STOP`] of its caller dropping the stream.
pub async fn handed_off_work_stops_when_a_stream_is_dropped(channel: &Channel) {
    for (to, blocking) in HAND_OFFS {
        let tag = format!("handed off to a {to} by a stream, dropped");
        let stream = echo(channel)
            .hand_off_stream(hand_off(&tag, blocking))
            .await
            .unwrap();
        observe(channel, &tag, SleepState::Started).await;
        let cancelled = std::time::Instant::now();
        drop(stream);
        stopped_in_time(channel, &tag, cancelled).await;
    }
    assert_settled(channel);
}

/// A response stream that outlives its call's timeout ends with `Timeout`
/// after the messages that came in time, and its handler is cancelled.
pub async fn response_stream_timeout_cancels_the_handler(channel: &Channel) {
    let tag = "stream timed out";
    let request = CountRequest {
        delay_ms: 20,
        ..count(tag, 0, 10_000)
    };
    let options = CallOptions::new().timeout(Duration::from_secs(1));
    let mut stream = echo(channel).count_with(request, options).await.unwrap();
    let (values, error) = read_counts(&mut stream).await;
    assert!(!values.is_empty(), "no message came within a second");
    assert_eq!(values, (0..values.len() as u64).collect::<Vec<_>>());
    match error {
        Some(Error::Timeout { method, after }) => {
            assert_eq!(method, "echo.count");
            assert_eq!(after, Duration::from_secs(1));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    observe(channel, tag, SleepState::Cancelled).await;
    assert_settled(channel);
}

fn sum(tag: &str, value: i64) -> SumRequest {
    SumRequest {
        tag: tag.to_owned(),
        value,
        ..SumRequest::default()
    }
}

/// A request stream reaches the handler whole and in order.
pub async fn request_stream_round_trip(channel: &Channel) {
    let requests = stream::iter((1..=1000).map(|value| sum("summed", value)));
    let reply = echo(channel).sum(requests).await.unwrap();
    assert_eq!((reply.sum, reply.messages), (500_500, 1000));
    observe(channel, "summed", SleepState::Finished).await;
    // An empty request stream is a request stream too.
    let reply = echo(channel).sum(stream::empty()).await.unwrap();
    assert_eq!((reply.sum, reply.messages), (0, 0));
    assert_settled(channel);
}

/// A handler may answer before its request stream ends: the caller stops
/// sending, even from an endless stream.
pub async fn handler_may_answer_a_request_stream_early(channel: &Channel) {
    let requests = stream::iter(1..).map(|value| SumRequest {
        stop: value == 100,
        ..sum("early", value)
    });
    let reply = echo(channel).sum(requests).await.unwrap();
    assert_eq!((reply.sum, reply.messages), (5050, 100));
    assert_settled(channel);
}

/// A handler that stops reading holds the caller back: it takes no more
/// messages from the request stream than the window allows, and the call
/// stays cancellable.
pub async fn stalled_handler_bounds_the_caller(channel: &Channel) {
    stalled_handler_bounds_the_caller_with(channel, &Differences::NONE).await;
}

/// Waits until the caller's count of messages taken stops changing (it
/// holds for 20 round trips), and returns it.
async fn settled_pulls(channel: &Channel, pulled: &tokio::sync::watch::Receiver<u64>) -> u64 {
    let mut last = *pulled.borrow();
    loop {
        round_trips(channel, 20).await;
        let now = *pulled.borrow();
        if now == last {
            return now;
        }
        last = now;
    }
}

/// [`stalled_handler_bounds_the_caller`], on a driver with `differences`:
/// the caller gets out the window, plus what the transport holds.
pub async fn stalled_handler_bounds_the_caller_with(channel: &Channel, differences: &Differences) {
    let tag = "stalled handler";
    let (pulled, mut watch) = tokio::sync::watch::channel(0_u64);
    let padding = Bytes::from(vec![0x5a; differences.padding() as usize]);
    let slack = differences.slack(padding.len() as u64 + 16, u64::from(STREAM_WINDOW));
    let requests = stream::iter(1..).map(move |value| {
        pulled.send_modify(|pulled| *pulled += 1);
        SumRequest {
            hold_after: 1,
            padding: padding.clone(),
            ..sum(tag, value)
        }
    });
    let client = echo(channel);
    let call = tokio::spawn(async move { client.sum(requests).await });
    // The window's worth was sent, and one more taken that waits for room.
    let window = u64::from(STREAM_WINDOW);
    watch.wait_for(|pulled| *pulled > window).await.unwrap();
    assert_eq!(progress(channel, tag, 1).await, 1);
    let taken = settled_pulls(channel, &watch).await;
    assert!(
        taken <= window + 1 + slack,
        "the caller sent {taken} messages while the handler read one, more than the window ({window}) and the transport's {} bytes",
        differences.transport_bytes
    );
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    observe(channel, tag, SleepState::Cancelled).await;
    assert_settled(channel);
}

/// A handler that stops reading holds a caller sending large messages back
/// by bytes.
pub async fn stalled_handler_bounds_the_caller_in_bytes(channel: &Channel) {
    stalled_handler_bounds_the_caller_in_bytes_with(channel, &Differences::NONE).await;
}

/// [`stalled_handler_bounds_the_caller_in_bytes`], on a driver with
/// `differences`.
pub async fn stalled_handler_bounds_the_caller_in_bytes_with(
    channel: &Channel,
    differences: &Differences,
) {
    let tag = "stalled handler, bytes";
    let (pulled, mut watch) = tokio::sync::watch::channel(0_u64);
    let padding = Bytes::from(vec![0x5a; MIB as usize]);
    let requests = stream::iter(1..).map(move |value| {
        pulled.send_modify(|pulled| *pulled += 1);
        SumRequest {
            hold_after: 1,
            padding: padding.clone(),
            ..sum(tag, value)
        }
    });
    let client = echo(channel);
    let call = tokio::spawn(async move { client.sum(requests).await });
    // The window's worth was sent, and one more taken that waits for room.
    let window = fit_in_window(MIB + 16);
    let slack = differences.slack(u64::from(MIB), window);
    watch.wait_for(|pulled| *pulled > window).await.unwrap();
    assert_eq!(progress(channel, tag, 1).await, 1);
    let taken = settled_pulls(channel, &watch).await;
    assert!(
        taken <= window + 1 + slack,
        "the caller sent {taken} messages of 1 MiB while the handler read one, more than the window's bytes ({window} messages) and the transport's {} bytes",
        differences.transport_bytes
    );
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    observe(channel, tag, SleepState::Cancelled).await;
    assert_settled(channel);
}

/// A request stream that outlives its call's timeout fails the call with
/// `Timeout`, and the handler is cancelled.
pub async fn request_stream_timeout_cancels_the_handler(channel: &Channel) {
    let tag = "request stream timed out";
    let requests = stream::iter([sum(tag, 1)]).chain(stream::pending());
    let options = CallOptions::new().timeout(Duration::from_secs(1));
    let error = echo(channel).sum_with(requests, options).await.unwrap_err();
    match &error {
        Error::Timeout { method, after } => {
            assert_eq!(method, "echo.sum");
            assert_eq!(*after, Duration::from_secs(1));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    observe(channel, tag, SleepState::Cancelled).await;
    assert_settled(channel);
}

/// A two-way stream answers each message as it arrives: the caller reads
/// the answer to one before it sends the next.
pub async fn two_way_stream_interleaves(channel: &Channel) {
    let (sender, receiver) = tokio::sync::mpsc::channel::<EchoRequest>(1);
    let requests = stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|request| (request, receiver))
    });
    let mut replies = echo(channel).chat(requests).await.unwrap();
    for i in 0..100 {
        let text = format!("message {i}");
        sender
            .send(EchoRequest {
                text: text.clone(),
                ..EchoRequest::default()
            })
            .await
            .unwrap();
        let reply = replies.message().await.unwrap().expect("an answer");
        assert_eq!(reply.text, text);
    }
    drop(sender);
    assert!(replies.message().await.unwrap().is_none());
    assert_settled(channel);
}

/// Many more messages than either window, both ways at once, all arrive in
/// order.
pub async fn two_way_stream_carries_many(channel: &Channel) {
    let total = 50 * STREAM_WINDOW as usize;
    let requests = stream::iter(0..total).map(|i| EchoRequest {
        text: i.to_string(),
        data: Bytes::from(vec![0xA5; i % 1000]),
        ..EchoRequest::default()
    });
    let mut replies = echo(channel).chat(requests).await.unwrap();
    let mut received = 0;
    while let Some(reply) = replies.message().await.unwrap() {
        assert_eq!(reply.text, received.to_string());
        assert_eq!(reply.data.len(), received % 1000);
        received += 1;
    }
    assert_eq!(received, total);
    assert_settled(channel);
}

/// Every streaming case, in one go, on a fresh worker.
pub async fn streams(channel: &Channel) {
    streams_with(channel, &Differences::NONE).await;
}

/// [`streams`], on a driver with `differences`.
pub async fn streams_with(channel: &Channel, differences: &Differences) {
    response_stream_in_order(channel).await;
    response_stream_error_follows_its_messages(channel).await;
    stalled_reader_bounds_the_handler_with(channel, differences).await;
    stalled_reader_bounds_the_handler_in_bytes_with(channel, differences).await;
    dropping_a_response_stream_cancels_the_handler(channel).await;
    handed_off_work_stops_when_a_stream_is_dropped(channel).await;
    response_stream_timeout_cancels_the_handler(channel).await;
    request_stream_round_trip(channel).await;
    handler_may_answer_a_request_stream_early(channel).await;
    stalled_handler_bounds_the_caller_with(channel, differences).await;
    stalled_handler_bounds_the_caller_in_bytes_with(channel, differences).await;
    request_stream_timeout_cancels_the_handler(channel).await;
    two_way_stream_interleaves(channel).await;
    two_way_stream_carries_many(channel).await;
}

fn note(tag: &str, text: &str) -> NoteRequest {
    NoteRequest {
        tag: tag.to_owned(),
        text: text.to_owned(),
        fail: false,
    }
}

fn announce(tag: &str, count: u32) -> AnnounceRequest {
    AnnounceRequest {
        tag: tag.to_owned(),
        count,
        padding: 0,
    }
}

/// The next event, which must come.
async fn next_event(events: &mut EchoEvents) -> EchoEvent {
    events
        .next_event()
        .await
        .expect("the subscription ended early")
        .expect("an event that decodes")
}

/// A one-way message returns once it is queued, holds no slot in the
/// pending table, and reaches its handler.
pub async fn one_way_messages_reach_the_handler(channel: &Channel) {
    let tag = "notes";
    for i in 0..100 {
        echo(channel).note(note(tag, &i.to_string())).await.unwrap();
        assert_settled(channel);
    }
    assert_eq!(progress(channel, tag, 100).await, 100);
}

/// A one-way message whose handler fails has already been delivered as far
/// as its caller knows; the worker logs the failure and keeps serving.
pub async fn a_failing_one_way_message_leaves_the_worker_serving(channel: &Channel) {
    let tag = "failing note";
    let request = NoteRequest {
        fail: true,
        ..note(tag, "fail")
    };
    echo(channel).note(request).await.unwrap();
    assert_eq!(progress(channel, tag, 1).await, 1);
    unary_round_trip(channel).await;
}

/// Events reach a subscriber typed, in the order the worker sent them.
pub async fn events_reach_a_subscriber_in_order(channel: &Channel) {
    events_reach_a_subscriber_in_order_with(channel, &Differences::NONE).await;
}

/// [`events_reach_a_subscriber_in_order`], on a driver with `differences`:
/// where answers overtake events, the previous cases' events may still be
/// on their way, and are skipped.
pub async fn events_reach_a_subscriber_in_order_with(channel: &Channel, differences: &Differences) {
    let total = 5 * STREAM_WINDOW;
    let mut events = EchoEvents::subscribe(channel);
    let read = async {
        let mut values = Vec::new();
        while values.len() < total as usize {
            match next_event(&mut events).await {
                EchoEvent::Tick(TickEvent { tag, .. })
                    if tag != "in order" && !differences.events_before_answers => {}
                EchoEvent::Noted(_) if !differences.events_before_answers => {}
                EchoEvent::Tick(TickEvent { tag, value, .. }) => {
                    assert_eq!(tag, "in order");
                    values.push(value);
                }
                other => panic!("expected a tick, got {other:?}"),
            }
        }
        values
    };
    let client = echo(channel);
    let (reply, values) = tokio::join!(client.announce(announce("in order", total)), read);
    assert_eq!(reply.unwrap().sent, total);
    assert_eq!(values, (0..total).collect::<Vec<_>>());
    assert_settled(channel);
}

/// Events nobody subscribed to are dropped on the host, and never hold the
/// worker back.
pub async fn events_nobody_subscribed_to_are_dropped(channel: &Channel) {
    events_nobody_subscribed_to_are_dropped_with(channel, &Differences::NONE).await;
}

/// [`events_nobody_subscribed_to_are_dropped`], on a driver with
/// `differences`: where an answer may overtake its handler's events, an
/// earlier subscription reads them all before the later one is made, so
/// the later one must not see them.
pub async fn events_nobody_subscribed_to_are_dropped_with(
    channel: &Channel,
    differences: &Differences,
) {
    let earlier = (!differences.events_before_answers).then(|| EchoEvents::subscribe(channel));
    let reply = echo(channel)
        .announce(announce("unheard", 10 * STREAM_WINDOW))
        .await
        .unwrap();
    assert_eq!(reply.sent, 10 * STREAM_WINDOW);
    if let Some(mut earlier) = earlier {
        for _ in 0..10 * STREAM_WINDOW {
            next_event(&mut earlier).await;
        }
    }
    let mut events = EchoEvents::subscribe(channel);
    echo(channel).announce(announce("heard", 1)).await.unwrap();
    assert_eq!(
        next_event(&mut events).await,
        EchoEvent::Tick(TickEvent {
            tag: "heard".into(),
            value: 0,
            padding: Bytes::new(),
        }),
        "an event from before the subscription was kept"
    );
}

/// A subscriber that does not read holds its worker back: no more than the
/// window of events waits on the host. Dropping the subscription lets the
/// worker go on.
pub async fn unread_events_hold_the_worker_back(channel: &Channel) {
    unread_events_hold_the_worker_back_with(channel, &Differences::NONE).await;
}

/// [`unread_events_hold_the_worker_back`], on a driver with `differences`:
/// the worker gets out the window, plus what the transport holds.
pub async fn unread_events_hold_the_worker_back_with(channel: &Channel, differences: &Differences) {
    let tag = "held back";
    let events = EchoEvents::subscribe(channel);
    let client = echo(channel);
    let total = 10 * STREAM_WINDOW;
    let padding = differences.padding();
    let bound = u64::from(STREAM_WINDOW)
        + differences.slack(u64::from(padding) + 32, u64::from(STREAM_WINDOW));
    assert!(bound < u64::from(total));
    let request = AnnounceRequest {
        padding,
        ..announce(tag, total)
    };
    let call = tokio::spawn(async move { client.announce(request).await });
    // Credit comes back half a window at a time, so the worker has at least
    // half a window's room, and at most a window's.
    let half = u64::from(STREAM_WINDOW / 2);
    progress(channel, tag, half).await;
    let sent = settled_progress(channel, tag).await;
    assert!(
        sent <= bound,
        "the worker sent {sent} events while nobody read, more than the window ({STREAM_WINDOW}) and the transport's {} bytes",
        differences.transport_bytes
    );
    drop(events);
    assert_eq!(call.await.unwrap().unwrap().sent, total);
    assert_settled(channel);
}

/// Large events that nobody reads hold the worker back by bytes: the host
/// holds no more than the window's bytes, plus one event.
pub async fn unread_large_events_hold_the_worker_back_in_bytes(channel: &Channel) {
    unread_large_events_hold_the_worker_back_in_bytes_with(channel, &Differences::NONE).await;
}

/// [`unread_large_events_hold_the_worker_back_in_bytes`], on a driver with
/// `differences`.
pub async fn unread_large_events_hold_the_worker_back_in_bytes_with(
    channel: &Channel,
    differences: &Differences,
) {
    let tag = "held back, bytes";
    let mut events = EchoEvents::subscribe(channel);
    let client = echo(channel);
    let window = fit_in_window(MIB + 32);
    let slack = differences.slack(u64::from(MIB), window);
    let bound = window + slack;
    let total = (3 * STREAM_WINDOW_BYTES / MIB).max(u32::try_from(bound).unwrap() + 4);
    let request = AnnounceRequest {
        padding: MIB,
        ..announce(tag, total)
    };
    let call = tokio::spawn(async move { client.announce(request).await });
    progress(channel, tag, window).await;
    let sent = settled_progress(channel, tag).await;
    assert!(
        (window..=bound).contains(&sent),
        "the worker sent {sent} events of 1 MiB while nobody read, more than the window's bytes ({window} events) and the transport's {} bytes",
        differences.transport_bytes
    );
    let mut value = 0;
    while value < total {
        match next_event(&mut events).await {
            // The previous case's events may still be on their way where
            // answers overtake events.
            EchoEvent::Tick(tick) if tick.tag != tag && !differences.events_before_answers => {}
            EchoEvent::Tick(tick) => {
                assert_eq!(
                    (tick.tag.as_str(), tick.value, tick.padding.len()),
                    (tag, value, MIB as usize)
                );
                value += 1;
            }
            other => panic!("expected a tick, got {other:?}"),
        }
    }
    assert_eq!(call.await.unwrap().unwrap().sent, total);
    assert_settled(channel);
}

/// One-way messages and events together: each note comes back as an event.
pub async fn one_way_notes_come_back_as_events(channel: &Channel) {
    one_way_notes_come_back_as_events_with(channel, &Differences::NONE).await;
}

/// [`one_way_notes_come_back_as_events`], on a driver with `differences`:
/// where answers overtake events, the previous cases' ticks may still be on
/// their way, and are skipped.
pub async fn one_way_notes_come_back_as_events_with(channel: &Channel, differences: &Differences) {
    let mut events = EchoEvents::subscribe(channel);
    for i in 0..10 {
        echo(channel)
            .note(note("echoed", &i.to_string()))
            .await
            .unwrap();
    }
    let mut texts = Vec::new();
    while texts.len() < 10 {
        match next_event(&mut events).await {
            EchoEvent::Tick(_) if !differences.events_before_answers => {}
            EchoEvent::Noted(note) => texts.push(note.text.parse::<u32>().unwrap()),
            other => panic!("expected a note, got {other:?}"),
        }
    }
    // Handlers run concurrently, so their events may interleave.
    texts.sort_unstable();
    assert_eq!(texts, (0..10).collect::<Vec<_>>());
}

/// Every one-way and event case, in one go, on a fresh worker.
pub async fn one_way_and_events(channel: &Channel) {
    one_way_and_events_with(channel, &Differences::NONE).await;
}

/// [`one_way_and_events`], on a driver with `differences`.
pub async fn one_way_and_events_with(channel: &Channel, differences: &Differences) {
    one_way_messages_reach_the_handler(channel).await;
    a_failing_one_way_message_leaves_the_worker_serving(channel).await;
    events_reach_a_subscriber_in_order_with(channel, differences).await;
    events_nobody_subscribed_to_are_dropped_with(channel, differences).await;
    unread_events_hold_the_worker_back_with(channel, differences).await;
    unread_large_events_hold_the_worker_back_in_bytes_with(channel, differences).await;
    one_way_notes_come_back_as_events_with(channel, differences).await;
}

fn header(key: &str, value: &[u8]) -> Header {
    Header {
        key: key.into(),
        value: value.to_vec().into(),
    }
}

fn entries(metadata: &Metadata) -> Vec<(String, Vec<u8>)> {
    metadata
        .iter()
        .map(|(key, value)| (key.to_owned(), value.to_vec()))
        .collect()
}

fn pairs(list: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
    list.iter()
        .map(|(key, value)| (key.to_string(), value.to_vec()))
        .collect()
}

/// A call's metadata reaches its handler in order (text, binary, repeated
/// keys; the client's entries before the call's), and the handler's
/// response metadata reaches the caller, with a response or an error.
pub async fn metadata_goes_both_ways(channel: &Channel) {
    metadata_goes_both_ways_with(channel, &Differences::NONE).await;
}

/// Entries in the order a driver with `differences` keeps: all of them, or
/// those of each key (the keys sorted, each key's entries in order).
fn in_order(
    mut entries: Vec<(String, Vec<u8>)>,
    differences: &Differences,
) -> Vec<(String, Vec<u8>)> {
    if !differences.metadata_order_across_keys {
        entries.sort_by(|a, b| a.0.cmp(&b.0));
    }
    entries
}

/// [`metadata_goes_both_ways`], on a driver with `differences`.
pub async fn metadata_goes_both_ways_with(channel: &Channel, differences: &Differences) {
    let client_wide = Metadata::new().with("tenant", "acme").unwrap();
    let client = echo(channel).with_options(CallOptions::new().metadata(client_wide));
    let sent = Metadata::new()
        .with("user", "ann")
        .and_then(|m| m.with("key-bin", [0, 0xff, b'\n']))
        .and_then(|m| m.with("user", "bob"))
        .unwrap();
    let answered = ResponseMetadata::new();
    let request = HeadersRequest {
        reply: vec![header("served-by", b"echo"), header("cost-bin", &[1, 2])],
        ..HeadersRequest::default()
    };
    let options = CallOptions::new()
        .metadata(sent)
        .response_metadata(&answered);
    let reply = client
        .headers_with(request.clone(), options.clone())
        .await
        .unwrap();
    let seen: Vec<_> = reply
        .seen
        .iter()
        .map(|h| (h.key.clone(), h.value.to_vec()))
        .collect();
    assert_eq!(
        in_order(seen, differences),
        in_order(
            pairs(&[
                ("tenant", b"acme"),
                ("user", b"ann"),
                ("key-bin", &[0, 0xff, b'\n']),
                ("user", b"bob"),
            ]),
            differences
        )
    );
    assert_eq!(
        entries(&answered.get()),
        pairs(&[("served-by", b"echo"), ("cost-bin", &[1, 2])])
    );

    // With an error, too.
    let failed = ResponseMetadata::new();
    let failing = HeadersRequest {
        fail_code: Code::NotFound as u32,
        ..request
    };
    let error = client
        .headers_with(failing, CallOptions::new().response_metadata(&failed))
        .await
        .unwrap_err();
    assert_eq!(error.status().map(|s| s.code()), Some(Code::NotFound));
    assert_eq!(failed.get().get_str("served-by"), Some("echo"));

    // A call that asks for none and a handler that sets none.
    let nothing = ResponseMetadata::new();
    echo(channel)
        .headers_with(
            HeadersRequest::default(),
            CallOptions::new().response_metadata(&nothing),
        )
        .await
        .unwrap();
    assert!(nothing.get().is_empty());
    assert_settled(channel);
}

/// Every attempt of a retried call carries the call's metadata.
pub async fn metadata_is_kept_across_retries(channel: &Channel) {
    let options = CallOptions::new()
        .metadata(Metadata::new().with("user", "ann").unwrap())
        .retries(3)
        .backoff(Backoff::constant(Duration::from_millis(1)));
    let request = HeadersRequest {
        succeed_on: 3,
        ..HeadersRequest::default()
    };
    let reply = echo(channel).headers_with(request, options).await.unwrap();
    assert_eq!(reply.attempt, 3);
    assert_eq!(reply.seen, [header("user", b"ann")]);
    assert_settled(channel);
}

/// Metadata over its limit fails the call before anything is sent, naming
/// the key that passed the limit; the channel goes on.
pub async fn metadata_over_its_limit_fails_the_call_naming_the_key(channel: &Channel) {
    let big = Metadata::new()
        .with("small", "x")
        .and_then(|m| m.with("big-bin", vec![0u8; MAX_METADATA_LEN]))
        .unwrap();
    let error = echo(channel)
        .headers_with(HeadersRequest::default(), CallOptions::new().metadata(big))
        .await
        .unwrap_err();
    match &error {
        Error::TooLarge { key, what, max, .. } => {
            assert_eq!(key.as_deref(), Some("big-bin"));
            assert_eq!((*what, *max), ("metadata", MAX_METADATA_LEN));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(error.to_string().contains("at key \"big-bin\""), "{error}");
    // The handler's answer past the limit becomes a status naming its size.
    let too_much = HeadersRequest {
        reply: vec![header("big-bin", &vec![0u8; MAX_METADATA_LEN])],
        ..HeadersRequest::default()
    };
    let error = echo(channel).headers(too_much).await.unwrap_err();
    let status = error.status().expect("a status");
    assert_eq!(status.code(), Code::ResourceExhausted, "{error}");
    assert!(
        status
            .message()
            .contains("response metadata of echo.headers"),
        "{error}"
    );
    unary_round_trip(channel).await;
    assert_settled(channel);
}

/// Streaming calls and one-way messages carry metadata too; a stream's
/// response metadata arrives with its end.
pub async fn metadata_travels_with_streams_and_one_way_messages(channel: &Channel) {
    let sent = Metadata::new().with("stream", "yes").unwrap();
    let client = echo(channel);

    let answered = ResponseMetadata::new();
    let options = CallOptions::new()
        .metadata(sent.clone())
        .response_metadata(&answered);
    let request = CountRequest {
        count: 3,
        ..CountRequest::default()
    };
    let mut counted = client.count_with(request, options).await.unwrap();
    while counted.message().await.unwrap().is_some() {}
    assert_eq!(answered.get(), sent, "server stream");

    let answered = ResponseMetadata::new();
    let options = CallOptions::new()
        .metadata(sent.clone())
        .response_metadata(&answered);
    let numbers = stream::iter((1..=3).map(|value| SumRequest {
        value,
        ..SumRequest::default()
    }));
    client.sum_with(numbers, options).await.unwrap();
    assert_eq!(answered.get(), sent, "client stream");

    let answered = ResponseMetadata::new();
    let options = CallOptions::new()
        .metadata(sent.clone())
        .response_metadata(&answered);
    let said = stream::iter([EchoRequest {
        text: "hi".into(),
        ..EchoRequest::default()
    }]);
    let mut chat = client.chat_with(said, options).await.unwrap();
    while chat.message().await.unwrap().is_some() {}
    assert_eq!(answered.get(), sent, "two-way stream");

    // A one-way note whose text comes in metadata, heard back as an event.
    let mut noted = EchoEvents::subscribe(channel);
    let options =
        CallOptions::new().metadata(Metadata::new().with("note-text", "from metadata").unwrap());
    client
        .note_with(
            NoteRequest {
                text: "from the message".into(),
                tag: "metadata-note".into(),
                ..NoteRequest::default()
            },
            options,
        )
        .await
        .unwrap();
    match next_event(&mut noted).await {
        EchoEvent::Noted(note) => assert_eq!(note.text, "from metadata"),
        other => panic!("expected the note back, got {other:?}"),
    }
    assert_settled(channel);
}

/// Every metadata case, in one go.
pub async fn metadata(channel: &Channel) {
    metadata_with(channel, &Differences::NONE).await;
}

/// [`metadata`], on a driver with `differences`.
pub async fn metadata_with(channel: &Channel, differences: &Differences) {
    metadata_goes_both_ways_with(channel, differences).await;
    metadata_is_kept_across_retries(channel).await;
    metadata_over_its_limit_fails_the_call_naming_the_key(channel).await;
    metadata_travels_with_streams_and_one_way_messages(channel).await;
}

/// A call whose request stream has nothing more to send yet ends when its
/// worker does (`kill` stops it), as every call does: it does not wait for
/// a message that has no one left to read it.
pub async fn a_request_stream_with_nothing_to_send_ends_with_its_worker(
    channel: &Channel,
    kill: impl FnOnce(),
) {
    let first = SumRequest {
        value: 1,
        tag: "then-nothing".into(),
        ..SumRequest::default()
    };
    let requests = stream::iter([first]).chain(stream::pending());
    let client = echo(channel);
    let call = tokio::spawn(async move {
        client
            .sum_with(requests, CallOptions::new().no_timeout())
            .await
    });
    // The worker has read the first message and waits for the next.
    progress(channel, "then-nothing", 1).await;
    kill();
    let ended = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the call ended with its worker")
        .expect("the call's task");
    match ended {
        Err(Error::WorkerExited { .. } | Error::Disconnected { .. }) => {}
        other => panic!("expected the worker's exit, got {other:?}"),
    }
    assert_settled(channel);
}
