//! Large payloads between a host and a real worker process in sealed
//! memory files (PROTOCOL.md 5.13): they cross that way both ways when both
//! ends turn it on, and through the socket when either end has it off (the
//! default), as the handshake settles.

use std::time::Duration;

use bytes::Bytes;
use workerbus::{CallOptions, ChannelOptions, ProcessDriver, ProcessWorker};
use workerbus_tests::pb::echo::{EchoClient, EchoReply, EchoRequest};

use crate::ECHO_WORKER;

/// The threshold both ends are given when they turn it on.
const FROM: usize = 256 * 1024;

/// Whether `ptr` points into a memory file workerbus made, as this
/// process's mappings name it.
fn in_memory_file(ptr: *const u8) -> bool {
    let address = ptr as usize;
    let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
    maps.lines().any(|line| {
        let range = line.split_whitespace().next().unwrap_or_default();
        let Some((start, end)) = range.split_once('-') else {
            return false;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            return false;
        };
        (start..end).contains(&address) && line.contains("memfd:workerbus")
    })
}

/// A worker started with shared memory on or off at each end.
async fn spawn(host: bool, worker: bool) -> ProcessWorker {
    let mut driver = ProcessDriver::new(ECHO_WORKER);
    if host {
        driver = driver.channel_options(ChannelOptions::new().shared_memory_from(Some(FROM)));
    }
    if worker {
        driver = driver.arg(format!("--shared-memory-from={FROM}"));
    }
    driver.spawn().await.expect("spawn the echo worker")
}

async fn echo(worker: &ProcessWorker, data: &Bytes) -> EchoReply {
    let reply = EchoClient::new(worker.channel())
        .with_options(CallOptions::new().timeout(Duration::from_secs(20)))
        .echo(EchoRequest {
            data: data.clone(),
            ..EchoRequest::default()
        })
        .await
        .expect("the echo of a large payload");
    assert_eq!(reply.data, *data, "the payload came back changed");
    reply
}

fn data(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// Whether the process `pid` maps a memory file workerbus made.
fn maps_a_memory_file(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .is_ok_and(|maps| maps.contains("memfd:workerbus"))
}

#[tokio::test]
async fn large_payloads_cross_in_shared_memory_when_both_ends_turn_it_on() {
    let worker = spawn(true, true).await;
    let pid = worker.pid().expect("the worker's pid");
    assert!(!maps_a_memory_file(pid));
    // The request, in a memory file, is mapped in the worker while its
    // handler holds it (it waits 20 s before answering, or until the call
    // is dropped).
    let large = data(1 << 20);
    let client = EchoClient::new(worker.channel());
    let held = client.echo(EchoRequest {
        data: large.clone(),
        delay_ms: 20_000,
        ..EchoRequest::default()
    });
    let watch = async {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !maps_a_memory_file(pid) && std::time::Instant::now() < deadline {
            tokio::task::yield_now().await;
        }
        maps_a_memory_file(pid)
    };
    let mapped = tokio::select! {
        mapped = watch => mapped,
        answer = held => panic!("answered before the worker was seen: {answer:?}"),
    };
    assert!(
        mapped,
        "the request's memory file is not mapped in the worker"
    );
    // The reply, in a memory file, is mapped here.
    let reply = echo(&worker, &large).await;
    assert!(
        in_memory_file(reply.data.as_ptr()),
        "the reply's bytes are not in a memory file"
    );
    // Below the threshold: through the socket.
    let reply = echo(&worker, &data(FROM - 64)).await;
    assert!(!in_memory_file(reply.data.as_ptr()));
}

#[tokio::test]
async fn by_default_every_payload_goes_through_the_socket() {
    let worker = spawn(false, false).await;
    let reply = echo(&worker, &data(1 << 20)).await;
    assert!(!in_memory_file(reply.data.as_ptr()));
}

#[tokio::test]
async fn a_host_that_takes_no_shared_memory_is_answered_through_the_socket() {
    let worker = spawn(false, true).await;
    let reply = echo(&worker, &data(1 << 20)).await;
    assert!(!in_memory_file(reply.data.as_ptr()));
}

#[tokio::test]
async fn a_worker_that_takes_no_shared_memory_is_sent_every_payload_through_the_socket() {
    // A memory file sent to it would break the connection, and the call.
    let worker = spawn(true, false).await;
    let reply = echo(&worker, &data(1 << 20)).await;
    assert!(!in_memory_file(reply.data.as_ptr()));
}
