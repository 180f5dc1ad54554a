//! Resource bounds at their edges: the maximum frame length (a frame of
//! exactly the maximum passes, one byte more is refused), the calls in
//! flight per channel, and the calls waiting for a restart. Each is
//! configurable and has a documented default.

use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use tokio::sync::broadcast;
use workerbus::{
    Backoff, CallOptions, ChannelOptions, Code, DEFAULT_MAX_FRAME_LENGTH, DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_QUEUED_BYTES, DEFAULT_MAX_WAITING_CALLS, Error, Frame, MethodName, ProcessDriver,
    RestartPolicy, ServeOptions, Supervisor, SupervisorEvent, ThreadDriver, WhileRestarting,
};
use workerbus_tests::EchoWorker;
use workerbus_tests::pb::echo::{EchoClient, EchoReply, EchoRequest, EchoServer, SleepRequest};

use crate::ECHO_WORKER;

const MAX: usize = 4096;
const TIMEOUT: Duration = Duration::from_secs(20);

fn text(len: usize) -> EchoRequest {
    EchoRequest {
        text: "x".repeat(len),
        ..EchoRequest::default()
    }
}

/// The length of the `REQUEST` frame an echo call of `request` sends.
fn request_frame_len(request: &EchoRequest) -> usize {
    let payload = Bytes::from(request.encode_to_vec());
    let method = MethodName::from_static("echo.echo");
    Frame::request(1, method, Some(TIMEOUT), 1, payload).encoded_len()
}

/// The length of the `RESPONSE` frame that answers an echo of `len` bytes.
fn response_frame_len(len: usize) -> usize {
    let reply = EchoReply {
        text: "x".repeat(len),
        ..EchoReply::default()
    };
    let payload = Bytes::from(reply.encode_to_vec());
    Frame::Response {
        id: 1,
        payload: payload.into(),
    }
    .encoded_len()
}

/// The largest text whose frame fits in `MAX`, found from the frame
/// layout: its frame is exactly `MAX` bytes.
fn text_filling(frame_len: impl Fn(usize) -> usize) -> usize {
    let len = (0..MAX).rev().find(|&len| frame_len(len) <= MAX).unwrap();
    assert_eq!(frame_len(len), MAX, "no text fills the frame exactly");
    len
}

#[test]
fn the_documented_defaults() {
    assert_eq!(DEFAULT_MAX_FRAME_LENGTH, 16 * 1024 * 1024);
    assert_eq!(DEFAULT_MAX_IN_FLIGHT, 10_000);
    assert_eq!(DEFAULT_MAX_QUEUED_BYTES, 64 * 1024 * 1024);
    assert_eq!(DEFAULT_MAX_WAITING_CALLS, 10_000);
}

#[tokio::test]
async fn a_request_of_exactly_the_maximum_frame_length_is_sent_and_one_byte_more_is_not() {
    // Over a real socket to a worker process whose own limit is higher.
    let worker = ProcessDriver::new(ECHO_WORKER)
        .channel_options(ChannelOptions::new().max_frame_length(MAX))
        .spawn()
        .await
        .expect("spawn");
    let client =
        EchoClient::new(worker.channel()).with_options(CallOptions::new().timeout(TIMEOUT));
    let len = text_filling(|len| request_frame_len(&text(len)));

    let reply = client
        .echo(text(len))
        .await
        .expect("a frame of the maximum");
    assert_eq!(reply.text.len(), len);

    let error = client.echo(text(len + 1)).await.unwrap_err();
    assert!(
        matches!(error, Error::TooLarge { what: "request", size, max, .. } if size == MAX + 1 && max == MAX),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        format!(
            "echo.echo failed: request of {} bytes exceeds the maximum frame length of {MAX} bytes",
            MAX + 1
        )
    );
    // Refused before sending: the connection is intact.
    client.echo(text(1)).await.expect("the channel still works");
    assert_eq!(worker.channel().in_flight(), 0);
}

#[tokio::test]
async fn a_response_of_exactly_the_maximum_frame_length_is_sent_and_one_byte_more_is_not() {
    let worker = ThreadDriver::new()
        .serve_options(ServeOptions::new().max_frame_length(MAX))
        .spawn(EchoServer::new(EchoWorker::new()))
        .await
        .unwrap();
    let client =
        EchoClient::new(worker.channel()).with_options(CallOptions::new().timeout(TIMEOUT));
    let len = text_filling(response_frame_len);

    let reply = client
        .echo(text(len))
        .await
        .expect("a frame of the maximum");
    assert_eq!(reply.text.len(), len);

    let error = client.echo(text(len + 1)).await.unwrap_err();
    let status = error.status().expect("a remote status");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(
        status.message(),
        format!(
            "the response to echo.echo is {} bytes, over the maximum frame length of {MAX} bytes",
            MAX + 1
        )
    );
    client.echo(text(1)).await.expect("the channel still works");
}

/// Waits until `ready` holds, yielding to the runtime in between; fails the
/// test after 20 s.
async fn until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready() {
        assert!(Instant::now() < deadline, "{what} never happened");
        tokio::task::yield_now().await;
    }
}

fn sleep(tag: &str, ms: u64) -> SleepRequest {
    SleepRequest {
        tag: tag.into(),
        ms,
        blocking: false,
    }
}

#[tokio::test]
async fn calls_beyond_the_in_flight_limit_wait_for_room() {
    const LIMIT: usize = 3;
    let worker = ThreadDriver::new()
        .channel_options(ChannelOptions::new().max_in_flight(LIMIT))
        .spawn(EchoServer::new(EchoWorker::new()))
        .await
        .unwrap();
    let client =
        EchoClient::new(worker.channel()).with_options(CallOptions::new().timeout(TIMEOUT));

    // Twice the limit at once: never more than the limit reach the worker,
    // and every call ends well.
    let calls = (0..2 * LIMIT).map(|n| {
        let client = client.clone();
        async move { client.sleep(sleep(&format!("sleep {n}"), 100)).await }
    });
    for result in futures_util::future::join_all(calls).await {
        result.expect("a call that waited for room");
    }
    let stats = client.stats(()).await.unwrap();
    assert_eq!(stats.peak_concurrency as usize, LIMIT);

    // With the limit taken by calls that do not end, one more waits for
    // room within its own timeout and fails without being sent.
    let held: Vec<_> = (0..LIMIT)
        .map(|n| {
            let client = client.clone();
            tokio::spawn(async move { client.sleep(sleep(&format!("held {n}"), 60_000)).await })
        })
        .collect();
    until("the held calls being sent", || {
        worker.channel().in_flight() == LIMIT
    })
    .await;
    let short = CallOptions::new().timeout(Duration::from_millis(200));
    let error = client.echo_with(text(1), short).await.unwrap_err();
    assert!(
        matches!(&error, Error::Timeout { method, .. } if *method == "echo.echo"),
        "{error:?}"
    );
    assert_eq!(worker.channel().in_flight(), LIMIT);

    // Room made by one call ending lets the next one through.
    held[0].abort();
    let reply = client
        .echo(text(1))
        .await
        .expect("a call after room was made");
    assert_eq!(reply.text, "x");
    for call in held {
        call.abort();
    }
    until("the held calls ending", || {
        worker.channel().in_flight() == 0
    })
    .await;
}

#[tokio::test]
async fn calls_beyond_the_waiting_limit_during_a_restart_fail_at_once() {
    const LIMIT: usize = 2;
    let supervisor = Supervisor::new();
    let mut events = supervisor.subscribe();
    let policy = RestartPolicy::new()
        .while_restarting(WhileRestarting::Wait)
        .max_waiting_calls(LIMIT)
        .backoff(Backoff::constant(Duration::from_secs(60)))
        .intensity(10, Duration::from_secs(60));
    let worker = supervisor
        .supervise(
            "waited-for",
            ThreadDriver::new().spawner(|| EchoServer::new(EchoWorker::new())),
            policy,
        )
        .await
        .unwrap();
    started(&mut events).await;
    // The first restart is immediate; the second waits a minute.
    worker.kill();
    started(&mut events).await;
    worker.kill();
    loop {
        match events.recv().await.expect("the supervisor's events") {
            SupervisorEvent::Restarting { attempt: 2, .. } => break,
            _ => continue,
        }
    }

    let client =
        EchoClient::new(worker.channel()).with_options(CallOptions::new().timeout(TIMEOUT));
    let waiting: Vec<_> = (0..LIMIT)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.echo(text(1)).await })
        })
        .collect();
    until("the calls waiting", || worker.calls_waiting() == LIMIT).await;

    let error = client.echo(text(1)).await.unwrap_err();
    assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!(
            "echo.echo failed: worker waited-for is unavailable: {LIMIT} calls already wait for it to restart"
        )
    );
    assert_eq!(worker.calls_waiting(), LIMIT);

    // The waiting calls are still waiting, not failed: shutting down ends
    // them, each exactly once.
    supervisor.shutdown().await;
    for call in waiting {
        let result = call.await.expect("the call's task");
        assert!(result.is_err(), "a call answered by a stopped worker");
    }
}

async fn started(events: &mut broadcast::Receiver<SupervisorEvent>) {
    loop {
        if let SupervisorEvent::Started { .. } = events.recv().await.expect("events") {
            return;
        }
    }
}

/// What `flood-host` measured: call medians without and during a flood of
/// large events read by a slow subscriber, and its memory's rise.
struct Flood {
    baseline_us: u64,
    flood_us: u64,
    growth_bytes: u64,
    events: u64,
}

fn flood() -> Flood {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_flood-host"))
        .arg(ECHO_WORKER)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run flood-host");
    assert!(output.status.success(), "flood-host: {:?}", output.status);
    let line = String::from_utf8(output.stdout).expect("UTF-8");
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line:?}"))
    };
    Flood {
        baseline_us: field("baseline_us"),
        flood_us: field("flood_us"),
        growth_bytes: field("growth_bytes"),
        events: field("events"),
    }
}

#[test]
fn a_flood_of_large_events_holds_neither_the_hosts_memory_nor_its_calls() {
    // 16 MiB events, taken one per 100 ms by the host's one subscriber. The
    // host holds the event window's bytes plus a few events in hand (the
    // one the subscriber decodes, the one arriving): without a byte window
    // it held 32 of them, 512 MiB.
    let bound = u64::from(workerbus::STREAM_WINDOW_BYTES) + 4 * (16 << 20);
    // A median is a median on a busy machine too, but give the latency two
    // more tries; the memory bound gets none.
    for attempt in 1..=3 {
        let flood = flood();
        assert!(flood.events >= 10, "{} events taken", flood.events);
        assert!(
            flood.growth_bytes <= bound,
            "the host's memory rose by {} bytes during the flood (bound {bound})",
            flood.growth_bytes
        );
        if flood.flood_us <= 2 * flood.baseline_us {
            return;
        }
        eprintln!(
            "attempt {attempt}: calls took {} µs during the flood, {} µs before",
            flood.flood_us, flood.baseline_us
        );
    }
    panic!("calls slowed more than twofold during a flood of events, three times out of three");
}
