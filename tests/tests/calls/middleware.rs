//! Middleware on both sides: order, short-circuits, metrics, trace
//! propagation across a process boundary, concurrency and rate limits,
//! panics.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use workerbus::{
    CallInfo, CallOptions, Channel, Code, ConcurrencyLimit, Error, Logging, Metrics, Middleware,
    Next, ProcessDriver, RateLimit, ServeOptions, ServerMiddleware, ServerNext, Side, Status,
    ThreadDriver, ThreadWorker, TraceContext,
};
use workerbus_tests::EchoWorker;
use workerbus_tests::pb::echo::{
    CountRequest, EchoClient, EchoReply, EchoRequest, EchoServer, FailRequest, NoteRequest,
    ObserveRequest, SleepRequest, SleepState, SumReply, SumRequest,
};

type Journal = Arc<Mutex<Vec<String>>>;

/// Notes when it is entered and left, on either side.
struct Note {
    name: &'static str,
    journal: Journal,
}

impl Note {
    fn new(name: &'static str, journal: &Journal) -> Note {
        Note {
            name,
            journal: Arc::clone(journal),
        }
    }

    fn write(&self, what: &str) {
        self.journal
            .lock()
            .unwrap()
            .push(format!("{} {what}", self.name));
    }
}

impl Middleware for Note {
    async fn call(&self, call: &CallInfo, next: Next<'_>) -> Result<workerbus::Payload, Error> {
        assert_eq!(call.side(), Side::Host);
        self.write(&format!("in {} attempt {}", call.method(), call.attempt()));
        let result = next.run().await;
        self.write("out");
        result
    }
}

impl ServerMiddleware for Note {
    async fn handle(
        &self,
        call: &CallInfo,
        next: ServerNext<'_>,
    ) -> Result<workerbus::Payload, Status> {
        assert_eq!(call.side(), Side::Worker);
        assert!(call.request_id().is_some());
        self.write(&format!("in {}", call.method()));
        let result = next.run().await;
        self.write("out");
        result
    }
}

/// Answers every echo itself, without calling `next`.
struct ShortCircuit;

impl Middleware for ShortCircuit {
    async fn call(&self, _call: &CallInfo, _next: Next<'_>) -> Result<workerbus::Payload, Error> {
        let reply = EchoReply {
            text: "from the middleware".into(),
            data: Bytes::new(),
        };
        Ok(Bytes::from(reply.encode_to_vec()).into())
    }
}

impl ServerMiddleware for ShortCircuit {
    async fn handle(
        &self,
        call: &CallInfo,
        _next: ServerNext<'_>,
    ) -> Result<workerbus::Payload, Status> {
        Err(Status::permission_denied(format!(
            "{} is not allowed here",
            call.method()
        )))
    }
}

async fn spawn(options: ServeOptions) -> ThreadWorker {
    ThreadDriver::new()
        .serve_options(options)
        .spawn(EchoServer::new(EchoWorker::new()))
        .await
        .unwrap()
}

fn echo(text: &str) -> EchoRequest {
    EchoRequest {
        text: text.into(),
        ..EchoRequest::default()
    }
}

#[tokio::test]
async fn host_middleware_runs_in_order_and_can_answer_without_the_worker() {
    let journal = Journal::default();
    let worker_journal = Journal::default();
    let worker = spawn(ServeOptions::new().middleware(Note::new("worker", &worker_journal))).await;
    let channel = worker
        .channel()
        .with_middleware(Note::new("outer", &journal))
        .with_middleware(Note::new("inner", &journal));
    let reply = EchoClient::new(channel.clone())
        .echo(echo("hello"))
        .await
        .unwrap();
    assert_eq!(reply.text, "hello");
    assert_eq!(
        *journal.lock().unwrap(),
        [
            "outer in echo.echo attempt 1",
            "inner in echo.echo attempt 1",
            "inner out",
            "outer out"
        ]
    );
    assert_eq!(
        *worker_journal.lock().unwrap(),
        ["worker in echo.echo", "worker out"]
    );

    // A middleware that answers by itself: the worker never sees the call.
    let short = channel.with_middleware(ShortCircuit);
    let reply = EchoClient::new(short).echo(echo("hello")).await.unwrap();
    assert_eq!(reply.text, "from the middleware");
    assert_eq!(
        worker_journal.lock().unwrap().len(),
        2,
        "the worker saw nothing more"
    );
    // The channel it was made from is unchanged.
    assert_eq!(worker.channel().in_flight(), 0);
    let plain = EchoClient::new(worker.channel())
        .echo(echo("plain"))
        .await
        .unwrap();
    assert_eq!(plain.text, "plain");
}

#[tokio::test]
async fn retries_run_the_host_chain_again_with_the_next_attempt() {
    let journal = Journal::default();
    let worker = spawn(ServeOptions::new()).await;
    let channel = worker
        .channel()
        .with_middleware(Note::new("note", &journal));
    let options =
        CallOptions::new().backoff(workerbus::Backoff::constant(Duration::from_millis(1)));
    let reply = EchoClient::new(channel)
        .flaky_with(
            workerbus_tests::pb::echo::FlakyRequest { succeed_on: 2 },
            options,
        )
        .await
        .unwrap();
    assert_eq!(reply.attempt, 2);
    assert_eq!(
        *journal.lock().unwrap(),
        [
            "note in echo.flaky_v2 attempt 1",
            "note out",
            "note in echo.flaky_v2 attempt 2",
            "note out"
        ]
    );
}

#[tokio::test]
async fn worker_middleware_runs_in_order_and_can_refuse_a_call() {
    let journal = Journal::default();
    let worker = spawn(
        ServeOptions::new()
            .middleware(Note::new("outer", &journal))
            .middleware(ShortCircuit),
    )
    .await;
    let error = EchoClient::new(worker.channel())
        .echo(echo("x"))
        .await
        .unwrap_err();
    let status = error.status().expect("a remote status");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(status.message(), "echo.echo is not allowed here");
    assert_eq!(
        *journal.lock().unwrap(),
        ["outer in echo.echo", "outer out"]
    );
}

#[tokio::test]
async fn metrics_count_successes_failures_and_timeouts_on_both_sides() {
    let host_metrics = Metrics::new();
    let worker_metrics = Metrics::new();
    let worker = spawn(ServeOptions::new().middleware(worker_metrics.clone())).await;
    let client = EchoClient::new(worker.channel().with_middleware(host_metrics.clone()));
    for text in ["a", "b", "c"] {
        client.echo(echo(text)).await.unwrap();
    }
    for _ in 0..2 {
        let fail = FailRequest {
            code: Code::NotFound.as_u32(),
            message: "gone".into(),
            ..FailRequest::default()
        };
        client.fail(fail).await.unwrap_err();
    }
    let sleep = SleepRequest {
        tag: "too long".into(),
        ms: 60_000,
        blocking: false,
    };
    let timed_out = client
        .sleep_with(sleep, CallOptions::new().timeout(Duration::from_millis(50)))
        .await;
    assert!(matches!(timed_out, Err(Error::Timeout { .. })));

    let host = host_metrics.snapshot();
    let echo = host.method(Side::Host, "echo.echo").unwrap();
    assert_eq!((echo.calls(), echo.ok(), echo.failed()), (3, 3, 0));
    assert_eq!(echo.latency().count(), 3);
    let fail = host.method(Side::Host, "echo.fail").unwrap();
    assert_eq!(
        (fail.calls(), fail.ok(), fail.failed(), fail.timeouts()),
        (2, 0, 2, 0)
    );
    let sleep = host.method(Side::Host, "echo.sleep").unwrap();
    assert_eq!((sleep.calls(), sleep.failed(), sleep.timeouts()), (1, 1, 1));
    assert!(sleep.latency().quantile(0.5).unwrap() >= Duration::from_millis(50));

    let handled = worker_metrics.snapshot();
    assert_eq!(handled.method(Side::Worker, "echo.echo").unwrap().ok(), 3);
    assert_eq!(
        handled.method(Side::Worker, "echo.fail").unwrap().failed(),
        2
    );
    // A cancelled handler did not end: the worker counts no outcome for it.
    assert!(handled.method(Side::Worker, "echo.sleep").is_none());
    assert!(handled.method(Side::Host, "echo.echo").is_none());
}

/// Records the trace context the host sent with each call.
#[derive(Clone, Default)]
struct SentTrace(Arc<Mutex<Option<TraceContext>>>);

impl Middleware for SentTrace {
    async fn call(&self, call: &CallInfo, next: Next<'_>) -> Result<workerbus::Payload, Error> {
        *self.0.lock().unwrap() = call.trace();
        next.run().await
    }
}

#[tokio::test]
async fn the_host_span_is_the_parent_of_the_worker_span_across_processes() {
    let worker = ProcessDriver::new(env!("CARGO_BIN_EXE_echo-worker"))
        .arg("--logging")
        .spawn()
        .await
        .unwrap();
    let sent = SentTrace::default();
    let channel: Channel = worker
        .channel()
        .with_middleware(Logging::new())
        .with_middleware(sent.clone());
    let reply = EchoClient::new(channel).trace(()).await.unwrap();
    let host = sent.0.lock().unwrap().expect("Logging set a trace context");
    assert!(reply.traced, "the worker ran the handler in a trace");
    assert_eq!(
        (u128::from(reply.trace_id_high) << 64) | u128::from(reply.trace_id_low),
        host.trace_id(),
        "one trace across the boundary"
    );
    assert!(reply.has_parent);
    assert_eq!(
        reply.parent_span_id,
        host.span_id(),
        "the host's span is the parent"
    );
    assert_ne!(
        reply.span_id,
        host.span_id(),
        "the worker's span is its own"
    );

    // Without Logging on the host, nothing is sent and the worker starts
    // its own trace.
    let reply = EchoClient::new(worker.channel()).trace(()).await.unwrap();
    assert!(reply.traced && !reply.has_parent);
}

#[tokio::test]
async fn a_concurrency_limit_holds_calls_and_times_them_out_while_they_wait() {
    let worker = spawn(ServeOptions::new()).await;
    let client = EchoClient::new(worker.channel().with_middleware(ConcurrencyLimit::new(2)));
    let sleeps = (0..8).map(|i| {
        client.sleep(SleepRequest {
            tag: format!("limited {i}"),
            ms: 30,
            blocking: false,
        })
    });
    for result in futures_util::future::join_all(sleeps).await {
        result.unwrap();
    }
    assert_eq!(client.stats(()).await.unwrap().peak_concurrency, 2);

    let limited = EchoClient::new(worker.channel().with_middleware(ConcurrencyLimit::new(1)));
    let hog = limited.sleep_with(
        SleepRequest {
            tag: "hog".into(),
            ms: 60_000,
            blocking: false,
        },
        CallOptions::new().no_timeout(),
    );
    let waiting = async {
        workerbus_tests::cases::observe(
            &worker.channel(),
            "hog",
            workerbus_tests::pb::echo::SleepState::Started,
        )
        .await;
        limited
            .echo_with(
                echo("waits"),
                CallOptions::new().timeout(Duration::from_millis(100)),
            )
            .await
    };
    tokio::select! {
        result = hog => panic!("the hog ended: {result:?}"),
        result = waiting => {
            let error = result.unwrap_err();
            assert_eq!(error.to_string(), "echo.echo timed out after 100ms");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_rate_limit_spaces_calls_out() {
    let worker = spawn(ServeOptions::new()).await;
    let client = EchoClient::new(worker.channel().with_middleware(RateLimit::new(10.0, 2)));
    let options = CallOptions::new().no_timeout();
    let started = tokio::time::Instant::now();
    for i in 0..6 {
        client
            .echo_with(echo(&format!("{i}")), options.clone())
            .await
            .unwrap();
    }
    // A burst of 2, then one every 100 ms.
    assert_eq!(started.elapsed(), Duration::from_millis(400));
    // A call whose turn comes after its deadline fails at once.
    let hurried = CallOptions::new().timeout(Duration::from_millis(10));
    client.echo_with(echo("a"), options.clone()).await.unwrap();
    let error = client.echo_with(echo("b"), hurried).await.unwrap_err();
    assert!(matches!(error, Error::Timeout { .. }), "{error:?}");
}

#[tokio::test]
async fn workerbus_log_traces_every_frame_on_both_sides() {
    use tokio::io::AsyncReadExt;

    // The worker's side: its stderr, captured.
    let mut worker = ProcessDriver::new(env!("CARGO_BIN_EXE_echo-worker"))
        .env(workerbus::LOG_ENV, "1")
        .stderr(workerbus::Stdio::Capture)
        .spawn()
        .await
        .unwrap();
    let mut stderr = worker.take_stderr().unwrap();
    EchoClient::new(worker.channel())
        .echo(echo("followed"))
        .await
        .unwrap();
    worker.shutdown().await;
    let mut lines = String::new();
    stderr.read_to_string(&mut lines).await.unwrap();
    let frames: Vec<String> = lines
        .lines()
        .filter_map(|line| line.split_once("] ").map(|(_, rest)| rest.to_owned()))
        .collect();
    let expected = [
        "worker <- host REQUEST #1 $workerbus.hello",
        "worker -> host RESPONSE #1 $workerbus.hello",
        "worker <- host REQUEST #2 echo.echo",
        "worker -> host RESPONSE #2 echo.echo",
        "worker <- host SHUTDOWN #0 -",
    ];
    assert_eq!(frames.len(), expected.len(), "{lines}");
    for (frame, expected) in frames.iter().zip(expected) {
        assert!(
            frame.starts_with(expected),
            "{frame:?} should start with {expected:?}"
        );
        assert!(frame.ends_with(" B"), "{frame:?} gives its size");
    }

    // The host's side: a host program run with the variable set.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_detach-host"))
        .arg(env!("CARGO_BIN_EXE_echo-worker"))
        .env(workerbus::LOG_ENV, "1")
        .output()
        .unwrap();
    let host = String::from_utf8_lossy(&output.stderr);
    assert!(
        host.contains("host -> worker REQUEST #2 echo.echo"),
        "{host}"
    );
    assert!(
        host.contains("host <- worker RESPONSE #2 echo.echo"),
        "{host}"
    );
    assert!(
        host.contains("host -> worker REQUEST #3 $workerbus.detach"),
        "{host}"
    );
    // The detached worker is not needed any more.
    let line = String::from_utf8_lossy(&output.stdout);
    let mut fields = line.split_whitespace();
    let (address, secret) = (fields.next().unwrap(), fields.next().unwrap());
    let detached = ProcessDriver::new(env!("CARGO_BIN_EXE_echo-worker"))
        .connect(address, &workerbus::Secret::from_hex(secret).unwrap())
        .await
        .unwrap();
    detached.shutdown().await;
}

/// Records the trace context each call arrived with, in the worker.
#[derive(Clone, Default)]
struct ReceivedTrace(Arc<Mutex<Option<TraceContext>>>);

impl ServerMiddleware for ReceivedTrace {
    async fn handle(
        &self,
        call: &CallInfo,
        next: ServerNext<'_>,
    ) -> Result<workerbus::Payload, Status> {
        *self.0.lock().unwrap() = call.trace();
        next.run().await
    }
}

/// Answers a request stream by itself.
struct AnswerSum;

impl Middleware for AnswerSum {
    async fn call(&self, _call: &CallInfo, _next: Next<'_>) -> Result<workerbus::Payload, Error> {
        let reply = SumReply {
            sum: 42,
            messages: 0,
        };
        Ok(Bytes::from(reply.encode_to_vec()).into())
    }
}

#[tokio::test]
async fn streaming_calls_pass_both_chains_and_carry_the_trace() {
    let journal = Journal::default();
    let worker_journal = Journal::default();
    let received = ReceivedTrace::default();
    let worker = spawn(
        ServeOptions::new()
            .middleware(Note::new("worker", &worker_journal))
            .middleware(received.clone()),
    )
    .await;
    let sent = SentTrace::default();
    let channel = worker
        .channel()
        .with_middleware(Note::new("host", &journal))
        .with_middleware(Logging::new())
        .with_middleware(sent.clone());
    let request = CountRequest {
        count: 3,
        ..CountRequest::default()
    };
    let mut stream = EchoClient::new(channel.clone())
        .count(request.clone())
        .await
        .unwrap();
    // The host's chain wraps the opening of the call.
    assert_eq!(
        *journal.lock().unwrap(),
        ["host in echo.count attempt 1", "host out"]
    );
    let mut messages = 0;
    while stream.message().await.unwrap().is_some() {
        messages += 1;
    }
    assert_eq!(messages, 3);
    // The worker's chain wraps the handler's whole run.
    assert_eq!(
        *worker_journal.lock().unwrap(),
        ["worker in echo.count", "worker out"]
    );
    let sent = sent.0.lock().unwrap().expect("Logging set a trace context");
    assert_eq!(*received.0.lock().unwrap(), Some(sent), "the trace crossed");

    // A host middleware that answers by itself: a response stream is empty,
    // and a request stream's answer is the middleware's.
    let short = EchoClient::new(channel.clone().with_middleware(ShortCircuit));
    let mut stream = short.count(request).await.unwrap();
    assert!(stream.message().await.unwrap().is_none());
    let answered = EchoClient::new(channel.with_middleware(AnswerSum));
    let reply = answered
        .sum(futures_util::stream::iter([SumRequest::default()]))
        .await
        .unwrap();
    assert_eq!(reply.sum, 42);
    assert_eq!(
        worker_journal.lock().unwrap().len(),
        2,
        "the worker saw neither"
    );
}

#[tokio::test]
async fn one_way_messages_pass_both_chains() {
    let journal = Journal::default();
    let worker_journal = Journal::default();
    let worker = spawn(ServeOptions::new().middleware(Note::new("worker", &worker_journal))).await;
    let channel = worker
        .channel()
        .with_middleware(Note::new("host", &journal));
    let note = NoteRequest {
        tag: "through middleware".into(),
        ..NoteRequest::default()
    };
    EchoClient::new(channel.clone()).note(note).await.unwrap();
    assert_eq!(
        *journal.lock().unwrap(),
        ["host in echo.note attempt 1", "host out"]
    );
    // The note's task started first and runs to its end without yielding,
    // on the worker's single thread: once a later call is answered, its
    // middleware has run.
    workerbus_tests::cases::unary_round_trip(&worker.channel()).await;
    let seen = worker_journal.lock().unwrap().clone();
    assert_eq!(
        &seen[..2],
        ["worker in echo.note", "worker out"],
        "{seen:?}"
    );
}

/// Starts its attempt, waits until the worker runs it (a sleep or a stream
/// tagged `tag`), and panics with the call still in flight.
struct PanicsMidCall {
    worker: EchoClient,
    tag: &'static str,
}

impl Middleware for PanicsMidCall {
    async fn call(&self, call: &CallInfo, next: Next<'_>) -> Result<workerbus::Payload, Error> {
        let mut attempt = std::pin::pin!(next.run());
        let started = ObserveRequest {
            tag: self.tag.into(),
            state: SleepState::Started.into(),
        };
        let mut started = std::pin::pin!(self.worker.observe(started));
        tokio::select! {
            // A stream's opening ends once its request is queued.
            _ = &mut attempt => started.await.unwrap(),
            observed = &mut started => observed.unwrap(),
        }
        panic!("gave up on {} attempt {}", call.method(), call.attempt());
    }
}

/// Panics the first time it is entered (before `next`), then passes calls
/// on.
#[derive(Default)]
struct PanicsOnce {
    panicked: std::sync::atomic::AtomicBool,
}

impl Middleware for PanicsOnce {
    async fn call(&self, _call: &CallInfo, next: Next<'_>) -> Result<workerbus::Payload, Error> {
        if !self
            .panicked
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            panic!("first call refused");
        }
        next.run().await
    }
}

/// Panics once `next` has answered: after a stream has opened.
struct PanicsAfterNext;

impl Middleware for PanicsAfterNext {
    async fn call(&self, _call: &CallInfo, next: Next<'_>) -> Result<workerbus::Payload, Error> {
        let _ = next.run().await;
        panic!("after next");
    }
}

impl ServerMiddleware for PanicsAfterNext {
    async fn handle(
        &self,
        _call: &CallInfo,
        next: ServerNext<'_>,
    ) -> Result<workerbus::Payload, Status> {
        let _ = next.run().await;
        panic!("after next");
    }
}

/// The error a host middleware of type `M` that panicked with `message`
/// fails `method` with.
fn assert_middleware_panic<M>(error: &Error, method: &str, message: &str) {
    let middleware = std::any::type_name::<M>();
    match error {
        Error::Middleware {
            method: m,
            middleware: name,
            message: text,
            ..
        } => {
            assert_eq!(m.as_str(), method);
            assert_eq!(*name, middleware);
            assert_eq!(text, message);
        }
        other => panic!("expected Error::Middleware, got {other:?}"),
    }
    assert_eq!(
        error.to_string(),
        format!("{method} failed: the middleware {middleware} panicked: {message}")
    );
    assert_eq!(error.method(), Some(method));
    assert!(!error.is_retryable());
    assert_eq!(Status::from(error_clone(error)).code(), Code::Internal);
}

fn error_clone(error: &Error) -> Error {
    let Error::Middleware {
        method,
        middleware,
        message,
        ..
    } = error
    else {
        unreachable!()
    };
    Error::Middleware {
        method: method.clone(),
        middleware,
        message: message.clone(),
    }
}

#[tokio::test]
async fn a_host_middleware_that_panics_fails_its_call_naming_it_and_withdraws_the_attempt() {
    let journal = Journal::default();
    let worker = spawn(ServeOptions::new()).await;
    let plain = EchoClient::new(worker.channel());
    let channel = worker
        .channel()
        .with_middleware(Note::new("outer", &journal))
        .with_middleware(PanicsMidCall {
            worker: plain.clone(),
            tag: "mid-call",
        });
    let sleep = SleepRequest {
        tag: "mid-call".into(),
        ms: 60_000,
        ..SleepRequest::default()
    };
    let error = EchoClient::new(channel.clone())
        .sleep(sleep)
        .await
        .unwrap_err();
    assert_middleware_panic::<PanicsMidCall>(
        &error,
        "echo.sleep",
        "gave up on echo.sleep attempt 1",
    );
    // The outer middleware saw the call fail, and the call was not retried.
    assert_eq!(
        *journal.lock().unwrap(),
        ["outer in echo.sleep attempt 1", "outer out"]
    );
    // The attempt was withdrawn: its slot is free, and the worker was told
    // to cancel it.
    assert_eq!(channel.in_flight(), 0);
    let cancelled = ObserveRequest {
        tag: "mid-call".into(),
        state: SleepState::Cancelled.into(),
    };
    plain.observe(cancelled).await.unwrap();
    // The calling task goes on, and so does the channel.
    workerbus_tests::cases::unary_round_trip(&worker.channel()).await;
    let once = worker.channel().with_middleware(PanicsOnce::default());
    let error = EchoClient::new(once.clone())
        .echo(echo("refused"))
        .await
        .unwrap_err();
    assert_middleware_panic::<PanicsOnce>(&error, "echo.echo", "first call refused");
    workerbus_tests::cases::unary_round_trip(&once).await;
    assert_eq!(once.in_flight(), 0);
}

#[tokio::test]
async fn a_host_middleware_that_panics_fails_a_one_way_message_naming_it() {
    let worker = spawn(ServeOptions::new()).await;
    let channel = worker.channel().with_middleware(PanicsOnce::default());
    let note = NoteRequest {
        tag: "refused".into(),
        ..NoteRequest::default()
    };
    let error = EchoClient::new(channel.clone())
        .note(note.clone())
        .await
        .unwrap_err();
    assert_middleware_panic::<PanicsOnce>(&error, "echo.note", "first call refused");
    // The same channel sends the next one.
    EchoClient::new(channel.clone()).note(note).await.unwrap();
    workerbus_tests::cases::unary_round_trip(&channel).await;
    assert_eq!(channel.in_flight(), 0);
}

#[tokio::test]
async fn a_host_middleware_that_panics_once_a_stream_opened_fails_it_and_closes_the_stream() {
    let worker = spawn(ServeOptions::new()).await;
    let plain = EchoClient::new(worker.channel());
    // A response stream: opened, then given up with the middleware's error,
    // which cancels it in the worker.
    let opened = worker.channel().with_middleware(PanicsMidCall {
        worker: plain.clone(),
        tag: "opened",
    });
    let request = CountRequest {
        tag: "opened".into(),
        count: 1_000_000,
        delay_ms: 10,
        ..CountRequest::default()
    };
    let error = EchoClient::new(opened.clone())
        .count(request)
        .await
        .unwrap_err();
    assert_middleware_panic::<PanicsMidCall>(
        &error,
        "echo.count",
        "gave up on echo.count attempt 1",
    );
    let cancelled = ObserveRequest {
        tag: "opened".into(),
        state: SleepState::Cancelled.into(),
    };
    plain.observe(cancelled).await.unwrap();
    assert_eq!(opened.in_flight(), 0);
    let channel = worker.channel().with_middleware(PanicsAfterNext);
    let client = EchoClient::new(channel.clone());
    // A request stream and a stream both ways.
    let error = client
        .sum(futures_util::stream::iter([SumRequest::default()]))
        .await
        .unwrap_err();
    assert_middleware_panic::<PanicsAfterNext>(&error, "echo.sum", "after next");
    let error = client
        .chat(futures_util::stream::iter([echo("hello")]))
        .await
        .unwrap_err();
    assert_middleware_panic::<PanicsAfterNext>(&error, "echo.chat", "after next");
    assert_eq!(channel.in_flight(), 0);
    workerbus_tests::cases::unary_round_trip(&worker.channel()).await;
}

#[tokio::test]
async fn a_worker_middleware_that_panics_is_an_internal_status_naming_it() {
    let journal = Journal::default();
    let worker = spawn(
        ServeOptions::new()
            .middleware(Note::new("outer", &journal))
            .middleware(PanicsAfterNext),
    )
    .await;
    let error = EchoClient::new(worker.channel())
        .echo(echo("x"))
        .await
        .unwrap_err();
    let status = error.status().expect("a remote status");
    assert_eq!(status.code(), Code::Internal);
    assert_eq!(
        status.message(),
        format!(
            "the middleware {} around echo.echo panicked: after next",
            std::any::type_name::<PanicsAfterNext>()
        )
    );
    // The outer middleware saw the call fail, and the worker goes on.
    assert_eq!(
        *journal.lock().unwrap(),
        ["outer in echo.echo", "outer out"]
    );
    assert_eq!(worker.channel().in_flight(), 0);
}

#[tokio::test]
async fn a_handlers_panic_under_middleware_is_the_handlers_on_both_sides() {
    let journal = Journal::default();
    let worker = spawn(ServeOptions::new().middleware(Note::new("worker", &journal))).await;
    let channel = worker
        .channel()
        .with_middleware(Note::new("host", &Journal::default()));
    // Not blamed on the middleware it passed through.
    workerbus_tests::cases::handler_panic_is_internal(&channel).await;
}

/// Adds an entry to every call's metadata (host side).
struct Tenant(&'static str);

impl Middleware for Tenant {
    async fn call(&self, call: &CallInfo, next: Next<'_>) -> Result<workerbus::Payload, Error> {
        call.insert_metadata("tenant", self.0)?;
        next.run().await
    }
}

/// Records the metadata each call arrived with (worker side), and refuses
/// calls without a tenant.
struct Gate(Arc<Mutex<Vec<workerbus::Metadata>>>);

impl ServerMiddleware for Gate {
    async fn handle(
        &self,
        call: &CallInfo,
        next: ServerNext<'_>,
    ) -> Result<workerbus::Payload, Status> {
        let metadata = call.metadata();
        self.0.lock().unwrap().push(metadata.clone());
        if metadata.get("tenant").is_none() {
            return Err(Status::unauthenticated("no tenant"));
        }
        next.run().await
    }
}

#[tokio::test]
async fn metadata_set_by_channel_options_and_host_middleware_reaches_worker_middleware_and_handler()
{
    use workerbus::{ChannelOptions, Metadata};
    use workerbus_tests::pb::echo::HeadersRequest;

    let seen = Arc::new(Mutex::new(Vec::new()));
    let worker = ThreadDriver::new()
        .serve_options(ServeOptions::new().middleware(Gate(Arc::clone(&seen))))
        .channel_options(
            ChannelOptions::new().metadata(Metadata::new().with("host", "indexer-1").unwrap()),
        )
        .spawn(EchoServer::new(EchoWorker::new()))
        .await
        .unwrap();

    // Without the middleware the gate refuses: only the channel's entry.
    let bare = EchoClient::new(worker.channel());
    let refused = bare.headers(HeadersRequest::default()).await.unwrap_err();
    assert_eq!(
        refused.status().map(Status::code),
        Some(Code::Unauthenticated)
    );

    let channel = worker.channel().with_middleware(Tenant("acme"));
    let client = EchoClient::new(channel);
    let options = CallOptions::new().metadata(Metadata::new().with("user", "ann").unwrap());
    let reply = client
        .headers_with(HeadersRequest::default(), options)
        .await
        .unwrap();
    let seen_by_handler: Vec<_> = reply.seen.iter().map(|h| h.key.as_str()).collect();
    // The channel's first, then the call's, then the middleware's.
    assert_eq!(seen_by_handler, ["host", "user", "tenant"]);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].iter().map(|(k, _)| k).collect::<Vec<_>>(), ["host"]);
    assert_eq!(
        seen[1].iter().map(|(k, _)| k).collect::<Vec<_>>(),
        ["host", "user", "tenant"]
    );
}

#[tokio::test]
async fn a_host_middleware_that_adds_invalid_metadata_fails_the_call_naming_the_key() {
    struct Shouting;

    impl Middleware for Shouting {
        async fn call(&self, call: &CallInfo, next: Next<'_>) -> Result<workerbus::Payload, Error> {
            call.insert_metadata("Tenant", "acme")?;
            next.run().await
        }
    }

    let worker = spawn(ServeOptions::new()).await;
    let client = EchoClient::new(worker.channel().with_middleware(Shouting));
    let error = client.echo(EchoRequest::default()).await.unwrap_err();
    match error {
        Error::InvalidMetadata { key, reason } => {
            assert_eq!(key, "Tenant");
            assert!(reason.contains("0-9 a-z"), "{reason}");
        }
        other => panic!("expected InvalidMetadata, got {other:?}"),
    }
}

#[tokio::test]
async fn a_call_continues_the_trace_its_options_name() {
    let worker = ThreadDriver::new()
        .spawn(EchoServer::new(EchoWorker::new()))
        .await
        .unwrap();
    let remote = TraceContext::from_parts(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736, 0xf067)
        .expect("a nonzero span id");
    let options = CallOptions::new().trace(remote);

    // Without middleware, the request carries the trace as the caller's span.
    let client = EchoClient::new(worker.channel());
    let reply = client.trace_with((), options.clone()).await.unwrap();
    assert!(reply.has_parent);
    assert_eq!(reply.parent_span_id, 0xf067);

    // With Logging, the call's span is a child of it: same trace, new span.
    let sent = SentTrace::default();
    let channel = worker
        .channel()
        .with_middleware(Logging::new())
        .with_middleware(sent.clone());
    let reply = EchoClient::new(channel)
        .trace_with((), options.clone())
        .await
        .unwrap();
    let sent = sent.0.lock().unwrap().expect("Logging set a trace context");
    assert_eq!(sent.trace_id(), remote.trace_id());
    assert_ne!(sent.span_id(), remote.span_id());
    assert_eq!(reply.parent_span_id, sent.span_id());
    worker.shutdown().await;
}

/// Records what it sees of each response: its length, whether it is still
/// a value, and its bytes, asked for.
#[derive(Clone, Default)]
struct Encoded {
    seen: Arc<Mutex<Vec<(usize, bool, Bytes)>>>,
}

impl Middleware for Encoded {
    async fn call(&self, _call: &CallInfo, next: Next<'_>) -> Result<workerbus::Payload, Error> {
        let response = next.run().await?;
        let seen = (response.len(), response.is_encoded(), response.to_bytes());
        self.seen.lock().unwrap().push(seen);
        Ok(response)
    }
}

impl ServerMiddleware for Encoded {
    async fn handle(
        &self,
        _call: &CallInfo,
        next: ServerNext<'_>,
    ) -> Result<workerbus::Payload, Status> {
        let response = next.run().await?;
        let seen = (response.len(), response.is_encoded(), response.to_bytes());
        self.seen.lock().unwrap().push(seen);
        Ok(response)
    }
}

#[tokio::test]
async fn a_middleware_sees_a_response_as_a_value_and_gets_its_bytes_when_it_asks() {
    let host = Encoded::default();
    let worker_side = Encoded::default();
    let worker = spawn(ServeOptions::new().middleware(worker_side.clone())).await;
    let client = EchoClient::new(worker.channel().with_middleware(host.clone()));
    let reply = client.echo(echo("as a value")).await.unwrap();
    let expected = Bytes::from(reply.encode_to_vec());
    for (side, seen) in [("host", &host.seen), ("worker", &worker_side.seen)] {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "{side}");
        let (len, encoded, bytes) = &seen[0];
        assert!(
            !encoded,
            "the {side}'s middleware saw bytes on the thread driver"
        );
        assert_eq!(*len, expected.len(), "{side}");
        assert_eq!(*bytes, expected, "{side}");
    }
}
