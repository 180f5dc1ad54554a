//! Broken and hostile workers, seen from the host: a real worker process
//! (`hostile-worker`) that breaks the protocol on purpose over the process
//! driver's socket. Each breach ends in an error that names the message and
//! the cause; the host never panics, hangs or delivers one call's answer to
//! another.
//!
//! Hostile *hosts* (a wrong secret or protocol version, garbage, calls before
//! the handshake) are in `process_driver.rs` (`hostile_peers`) and
//! `server.rs`.

use std::time::Duration;

use bytes::Bytes;
use workerbus::{CallOptions, ChannelOptions, Error, ProcessDriver, ProcessWorker};
use workerbus_tests::pb::echo::{EchoClient, EchoReply, EchoRequest};

const HOSTILE: &str = env!("CARGO_BIN_EXE_hostile-worker");

fn driver(mode: &str) -> ProcessDriver {
    ProcessDriver::new(HOSTILE).arg(format!("--mode={mode}"))
}

async fn spawn(mode: &str) -> ProcessWorker {
    driver(mode)
        .spawn()
        .await
        .expect("spawn the hostile worker")
}

fn request(text: &str) -> EchoRequest {
    EchoRequest {
        text: text.into(),
        ..EchoRequest::default()
    }
}

/// One echo call, with a timeout long enough that a test failing on it says
/// the host hung rather than passing.
async fn echo(worker: &ProcessWorker, text: &str) -> Result<EchoReply, Error> {
    EchoClient::new(worker.channel())
        .with_options(CallOptions::new().timeout(Duration::from_secs(20)))
        .echo(request(text))
        .await
}

/// The message of the disconnection a call failed with, after checking it
/// names the call and carries a cause.
fn disconnection(result: Result<EchoReply, Error>) -> String {
    match result {
        Err(error @ Error::Disconnected { .. }) => {
            let Error::Disconnected { method, cause } = &error else {
                unreachable!()
            };
            assert_eq!(*method, "echo.echo");
            assert!(cause.is_some(), "no cause in {error}");
            error.to_string()
        }
        other => panic!("expected a disconnection, got {other:?}"),
    }
}

/// Reads this process's resident memory from `/proc/self/statm`.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[tokio::test]
async fn garbage_from_a_worker_fails_the_call_naming_what_did_not_decode() {
    let worker = spawn("garbage").await;
    let message = disconnection(echo(&worker, "hello").await);
    assert_eq!(
        message,
        "echo.echo failed: disconnected from the worker: frame of 3735928559 bytes exceeds \
         the maximum frame length of 16777216 bytes"
    );
    // Later calls fail at once with the same cause.
    assert_eq!(disconnection(echo(&worker, "again").await), message);
    assert_eq!(worker.channel().in_flight(), 0);
}

#[tokio::test]
async fn a_truncated_frame_fails_the_call_naming_the_truncation() {
    let worker = spawn("truncated").await;
    assert_eq!(
        disconnection(echo(&worker, "hello").await),
        "echo.echo failed: disconnected from the worker: the connection closed in the middle \
         of a frame (14 bytes received)"
    );
}

#[tokio::test]
async fn a_frame_announcing_4_gib_is_refused_without_allocating_it() {
    let before = resident_bytes();
    let worker = spawn("huge").await;
    assert_eq!(
        disconnection(echo(&worker, "hello").await),
        "echo.echo failed: disconnected from the worker: frame of 4294967295 bytes exceeds \
         the maximum frame length of 16777216 bytes"
    );
    let grown = resident_bytes().saturating_sub(before);
    assert!(
        grown < 256 << 20,
        "the host grew by {grown} bytes reading a frame header"
    );
}

#[tokio::test]
async fn an_unknown_frame_kind_fails_the_call_naming_the_kind() {
    let worker = spawn("unknown-kind").await;
    assert_eq!(
        disconnection(echo(&worker, "hello").await),
        "echo.echo failed: disconnected from the worker: unknown frame kind 0x7f"
    );
}

#[tokio::test]
async fn a_request_from_a_worker_fails_the_call_as_unexpected() {
    let worker = spawn("unexpected-request").await;
    assert_eq!(
        disconnection(echo(&worker, "hello").await),
        "echo.echo failed: disconnected from the worker: unexpected REQUEST frame from the worker"
    );
}

#[tokio::test]
async fn an_answer_to_a_request_never_sent_fails_the_calls_naming_the_id() {
    let worker = spawn("unknown-id").await;
    // The handshake was request 1, so this call is 2, and the stray answer
    // is for request 1002.
    assert_eq!(
        disconnection(echo(&worker, "hello").await),
        "echo.echo failed: disconnected from the worker: a RESPONSE frame refers to request \
         1002, which was never sent"
    );
}

#[tokio::test]
async fn a_second_answer_to_a_request_is_dropped_and_never_reaches_another_call() {
    let worker = spawn("duplicate").await;
    let client = EchoClient::new(worker.channel())
        .with_options(CallOptions::new().timeout(Duration::from_secs(20)));
    // Sequential calls: each second answer arrives while the next call is
    // being made, with the previous call's id.
    for n in 0..50 {
        let text = format!("call {n}");
        let reply = client.echo(request(&text)).await.expect("an answer");
        assert_eq!(reply.text, text);
    }
    // Concurrent calls: every answer goes to its own caller.
    let calls = (0..64).map(|n| {
        let client = client.clone();
        async move {
            let text = format!("concurrent {n}");
            (client.echo(request(&text)).await, text)
        }
    });
    for (reply, text) in futures_util::future::join_all(calls).await {
        assert_eq!(reply.expect("an answer").text, text);
    }
    assert_eq!(worker.channel().in_flight(), 0);
}

#[tokio::test]
async fn a_worker_that_stops_reading_makes_calls_wait_and_then_time_out() {
    let queued = 1 << 20;
    let worker = driver("stops-reading")
        .channel_options(ChannelOptions::new().max_queued_bytes(queued))
        .spawn()
        .await
        .expect("spawn");
    let client = EchoClient::new(worker.channel())
        .with_options(CallOptions::new().timeout(Duration::from_millis(500)));
    // 64 MiB offered to a worker that reads nothing: the socket's buffers
    // fill, then 1 MiB waits in the host, then callers wait for room.
    let calls = (0..64).map(|_| {
        let client = client.clone();
        async move {
            let data = Bytes::from(vec![7u8; 1 << 20]);
            let request = EchoRequest {
                data,
                ..EchoRequest::default()
            };
            client.echo(request).await
        }
    });
    let started = std::time::Instant::now();
    let results = futures_util::future::join_all(calls).await;
    for result in results {
        match result {
            Err(Error::Timeout { method, after }) => {
                assert_eq!(method, "echo.echo");
                assert_eq!(after, Duration::from_millis(500));
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the calls took {:?} to time out",
        started.elapsed()
    );
    assert_eq!(worker.channel().in_flight(), 0);
}

#[tokio::test]
async fn a_worker_speaking_another_protocol_version_fails_the_spawn() {
    let error = driver("wrong-protocol").spawn().await.unwrap_err();
    assert!(matches!(error, Error::Handshake { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        "worker hostile-worker: the worker speaks protocol version 2, this host speaks version 1"
    );
}

#[tokio::test]
async fn a_welcome_that_does_not_decode_fails_the_spawn() {
    let error = driver("bad-welcome").spawn().await.unwrap_err();
    assert!(matches!(error, Error::Handshake { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.starts_with(
            "worker hostile-worker: the worker's answer to the handshake did not decode: "
        ),
        "{message}"
    );
}
