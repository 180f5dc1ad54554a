//! Broken and hostile workers, seen from the host: a real worker process
//! (`hostile-worker`) that breaks the protocol on purpose over the process
//! driver's socket. Each breach ends in an error that names the message and
//! the cause; the host never panics, hangs or delivers one call's answer to
//! another.
//!
//! Broken and hostile hosts, seen from a worker process: peers of its named
//! socket that greet it properly and then break the protocol. Each is
//! disconnected; the worker serves the next peer as before. (A wrong secret
//! or protocol version, garbage and calls before the handshake are in
//! `drivers/process.rs`, `hostile_peers`.)

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use workerbus::{
    CallOptions, ChannelOptions, DetachedWorker, Error, ExitReason, Frame, MethodName,
    ProcessDriver, ProcessWorker, Secret,
};
use workerbus_tests::cases;
use workerbus_tests::pb::echo::{AnnounceRequest, EchoClient, EchoReply, EchoRequest};
use workerbus_tests::support::{KillOnDrop, greeted};

use crate::ECHO_WORKER;

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

/// This process's resident memory, in bytes.
fn resident_bytes() -> u64 {
    workerbus::resident_memory().expect("resident memory in /proc/self/status")
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

#[test]
fn a_worker_claiming_another_process_id_gets_itself_killed_and_nobody_else() {
    // Runs as long as this test: a live process some worker claims to be.
    let mut bystander = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .expect("run sleep");
    let dir = std::env::temp_dir().join(format!("workerbus-claims-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // 0 is the greeting's default (a worker that leaves it out), and names
    // the signaller's own process group; 1 is init.
    for claimed in [0, 1, bystander.id()] {
        let address = dir.join(format!("claims-{claimed}"));
        // In a process group of its own, which a signal to pid 0 would end.
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_claim-host"))
            .arg(HOSTILE)
            .arg(&address)
            .arg(claimed.to_string())
            .process_group(0)
            .output()
            .expect("run claim-host");
        let said = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "the host of a worker claiming pid {claimed} ended with {}: {said} {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let mut lines = said.lines();
        let pids: Vec<u32> = lines
            .next()
            .expect("the pids")
            .split_whitespace()
            .map(|pid| pid.parse().expect("a pid"))
            .collect();
        assert_eq!(
            pids[1], pids[0],
            "the connected worker's pid is the process serving the socket, not its claim"
        );
        assert_ne!(pids[1], claimed);
        assert_eq!(lines.next(), Some("killed"), "{said}");
        assert!(
            bystander.try_wait().unwrap().is_none(),
            "the process whose pid was claimed was killed"
        );
        assert!(Path::new("/proc/1").exists());
        let _ = std::fs::remove_file(&address);
    }
    bystander.kill().unwrap();
    bystander.wait().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_worker_speaking_another_protocol_version_fails_the_spawn() {
    let error = driver("wrong-protocol").spawn().await.unwrap_err();
    assert!(matches!(error, Error::Handshake { .. }), "{error:?}");
    let ours = workerbus::PROTOCOL_VERSION;
    assert_eq!(
        error.to_string(),
        format!(
            "worker hostile-worker: the worker speaks protocol version {}, this host speaks \
             version {ours}",
            ours + 1
        )
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

fn echo_frame(id: u64, data: Bytes) -> Frame {
    let request = EchoRequest {
        text: format!("request {id}"),
        data,
        ..EchoRequest::default()
    };
    let method = MethodName::from_static("echo.echo");
    Frame::request(id, method, None, 1, Bytes::from(request.encode_to_vec()))
}

/// Writes `bytes` after the greeting and expects the worker to close the
/// connection without a word.
async fn closed_after(worker: &DetachedWorker, bytes: &[u8]) {
    let mut socket = greeted(worker).await.into_inner();
    socket.write_all(bytes).await.expect("write");
    let mut rest = Vec::new();
    let read = socket.read_to_end(&mut rest).await;
    assert!(
        read.is_ok() && rest.is_empty(),
        "after {bytes:02x?} the worker answered {rest:02x?} ({read:?})"
    );
}

/// The worker still serves a well-behaved host, and has not grown.
async fn still_serving(worker: &DetachedWorker, address: &Path, secret: &Secret) -> u64 {
    let host = ProcessDriver::new(ECHO_WORKER)
        .connect(address, secret)
        .await
        .unwrap_or_else(|error| panic!("{:?} refused a good host: {error}", worker.pid()));
    cases::unary_round_trip(&host.channel()).await;
    let health = host
        .channel()
        .health(Duration::from_secs(20))
        .await
        .unwrap();
    health.memory_bytes
}

#[tokio::test]
async fn a_worker_disconnects_broken_hosts_and_serves_the_next() {
    let spawned = ProcessDriver::new(ECHO_WORKER)
        .spawn()
        .await
        .expect("spawn");
    let worker = spawned.detach().await.expect("detach");
    let _kill = KillOnDrop(worker.pid().unwrap());
    let (address, secret) = (worker.address().to_owned(), worker.secret().clone());
    let memory = still_serving(&worker, &address, &secret).await;

    // A truncated frame: a REQUEST announcing 100 bytes, then the end.
    let mut peer = greeted(&worker).await.into_inner();
    peer.write_all(&[0, 0, 0, 100, 1, 0, 0, 0, 0, 0, 0, 0, 0, 2])
        .await
        .unwrap();
    peer.shutdown().await.unwrap();
    let mut rest = Vec::new();
    assert_eq!(peer.read_to_end(&mut rest).await.unwrap(), 0, "{rest:02x?}");

    // A frame announcing 4 GiB: refused without allocating it.
    closed_after(
        &worker,
        &[0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0, 0, 0, 0, 0, 0, 2],
    )
    .await;
    // An unknown kind.
    closed_after(&worker, &[0, 0, 0, 10, 0x7f, 0, 0, 0, 0, 0, 0, 0, 0, 2]).await;
    // A RESPONSE, which only a host may receive.
    closed_after(&worker, &[0, 0, 0, 10, 2, 0, 0, 0, 0, 0, 0, 0, 0, 2]).await;

    // A cancellation of a request never sent is a late cancellation, not an
    // error: the connection goes on serving.
    let mut peer = greeted(&worker).await;
    peer.send(Frame::Cancel { id: 999 }).await.unwrap();
    peer.send(echo_frame(2, Bytes::new())).await.unwrap();
    match peer.next().await {
        Some(Ok(Frame::Response { id: 2, payload })) => {
            assert_eq!(
                EchoReply::decode(payload.into_bytes()).unwrap().text,
                "request 2"
            );
        }
        other => panic!("expected the answer to request 2, got {other:?}"),
    }
    drop(peer);

    // A host that sends and never reads: the worker stops reading too once
    // its answers back up, so what it holds stays bounded.
    let mut peer = greeted(&worker).await;
    let data = Bytes::from(vec![1u8; 1 << 20]);
    let mut sent = 0u64;
    let flood = async {
        for id in 2.. {
            peer.send(echo_frame(id, data.clone())).await.expect("send");
            sent += 1;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), flood).await;
    let grown = still_serving(&worker, &address, &secret)
        .await
        .saturating_sub(memory);
    println!(
        "a host that does not read sent {sent} MiB; the worker grew by {} MiB",
        grown >> 20
    );
    assert!(
        sent < 1024,
        "the worker read {sent} MiB from a host that reads none of its answers"
    );
    assert!(
        grown < 128 << 20,
        "the worker grew by {} MiB for a host that does not read",
        grown >> 20
    );
    drop(peer);

    let last = still_serving(&worker, &address, &secret).await;
    assert!(last > 0);
    let host = ProcessDriver::new(ECHO_WORKER)
        .connect(&address, &secret)
        .await
        .expect("reconnect");
    assert_eq!(host.shutdown().await, ExitReason::Unknown);
}

#[tokio::test]
async fn a_host_that_grants_credit_and_never_reads_holds_the_handler_back() {
    let spawned = ProcessDriver::new(ECHO_WORKER)
        .spawn()
        .await
        .expect("spawn");
    let worker = spawned.detach().await.expect("detach");
    let _kill = KillOnDrop(worker.pid().unwrap());
    let (address, secret) = (worker.address().to_owned(), worker.secret().clone());
    let memory = still_serving(&worker, &address, &secret).await;

    // Ten million events asked for, credit for four billion, and nothing
    // read: the handler may only run as far as the worker's send queue.
    let mut peer = greeted(&worker).await;
    let request = AnnounceRequest {
        tag: "flood".into(),
        count: 10_000_000,
        padding: 0,
    };
    let method = MethodName::from_static("echo.announce");
    let payload = Bytes::from(request.encode_to_vec());
    peer.send(Frame::request(2, method, None, 1, payload))
        .await
        .unwrap();
    peer.send(Frame::Credit {
        id: 0,
        count: u32::MAX,
        bytes: u32::MAX,
    })
    .await
    .unwrap();

    let host = ProcessDriver::new(ECHO_WORKER)
        .connect(&address, &secret)
        .await
        .expect("a second host");
    cases::progress(&host.channel(), "flood", 1).await;
    // Time for a handler that is not held back to run far ahead.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent = cases::progress(&host.channel(), "flood", 0).await;
    let grown = host
        .channel()
        .health(Duration::from_secs(20))
        .await
        .unwrap()
        .memory_bytes
        .saturating_sub(memory);
    println!(
        "events queued for a host that does not read: {sent}; the worker grew by {} MiB",
        grown >> 20
    );
    assert!(sent < 200_000, "the handler sent {sent} events nobody read");
    assert!(grown < 64 << 20, "the worker grew by {} MiB", grown >> 20);

    drop(peer);
    assert_eq!(host.shutdown().await, ExitReason::Unknown);
}
