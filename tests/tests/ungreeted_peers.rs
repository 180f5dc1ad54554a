//! Peers of a worker's named socket that never prove they know the secret:
//! anyone running as the worker's user can connect, and such peers must
//! cost a worker little. Real worker processes (`echo-worker`, detached),
//! measured from `/proc/<pid>/status`. A worker is given an address-space
//! limit by starting it through `/bin/sh -c 'ulimit ...; exec "$0" "$@"'`,
//! which keeps its pid, its parent and descriptor 3.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use workerbus::{DetachedWorker, ProcessDriver, Secret};
use workerbus_tests::cases;
use workerbus_tests::support::KillOnDrop;

const ECHO_WORKER: &str = env!("CARGO_BIN_EXE_echo-worker");

/// Starts an echo worker under the shell's `limits` (`ulimit` commands, or
/// nothing) with `args`, and detaches it to its named socket.
async fn detached(limits: &str, args: &[&str]) -> (DetachedWorker, KillOnDrop) {
    let driver = if limits.is_empty() {
        ProcessDriver::new(ECHO_WORKER)
    } else {
        ProcessDriver::new("/bin/sh")
            .arg("-c")
            .arg(format!("{limits}; exec \"$0\" \"$@\""))
            .arg(ECHO_WORKER)
    };
    let worker = driver
        .name("echo-worker")
        .args(args)
        .spawn()
        .await
        .expect("spawn");
    let detached = worker.detach().await.expect("detach");
    let guard = KillOnDrop(detached.pid());
    (detached, guard)
}

/// Connects a host to the worker as an application would, and makes a call.
async fn host_served(address: &Path, secret: &Secret) -> workerbus::ProcessWorker {
    let host = ProcessDriver::new(ECHO_WORKER)
        .connect(address, secret)
        .await
        .expect("a host connects");
    cases::unary_round_trip(&host.channel()).await;
    host
}

/// A line of `/proc/<pid>/status`, in KiB (`VmRSS`, `VmSize`).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let line = status
        .lines()
        .find(|line| line.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A prefix announcing a `REQUEST` of `len` bytes and its header.
fn announcing(len: u32) -> Vec<u8> {
    let mut bytes = len.to_be_bytes().to_vec();
    bytes.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    bytes
}

/// Reads `peer` to its end: the worker closed the connection. Bytes the
/// worker wrote before closing (a refusal) are returned.
async fn closed(mut peer: UnixStream) -> Vec<u8> {
    let mut rest = Vec::new();
    match peer.read_to_end(&mut rest).await {
        Ok(_) => rest,
        // The worker closed with our bytes unread.
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => rest,
        Err(error) => panic!("reading a closed connection: {error}"),
    }
}

/// Waits for every peer to be closed by the worker, failing the test if
/// they are not all closed within `bound`.
async fn all_closed(peers: Vec<UnixStream>, bound: Duration, what: &str) {
    let count = peers.len();
    let reads = futures_util::future::join_all(peers.into_iter().map(closed));
    if tokio::time::timeout(bound, reads).await.is_err() {
        panic!("the worker did not close the {count} connections of {what} within {bound:?}");
    }
}

#[tokio::test]
async fn peers_that_have_not_greeted_cannot_make_a_worker_allocate_what_they_announce() {
    let (worker, _kill) = detached("", &[]).await;
    let (address, secret, pid) = (worker.address(), worker.secret(), worker.pid());
    drop(host_served(address, secret).await);
    let (rss, size) = (status_kib(pid, "VmRSS"), status_kib(pid, "VmSize"));

    // 32 peers announce 16 MiB frames and send nothing more: each is
    // refused on its length prefix, with nothing allocated for it.
    let mut announcing_16_mib = Vec::new();
    for _ in 0..32 {
        let mut peer = UnixStream::connect(address).await.unwrap();
        peer.write_all(&(16u32 << 20).to_be_bytes()).await.unwrap();
        announcing_16_mib.push(peer);
    }
    // 32 more announce frames within the greeting's limit, send part of
    // them and wait: the worker holds what they sent, not what they
    // announced.
    let mut waiting = Vec::new();
    for _ in 0..32 {
        let mut peer = UnixStream::connect(address).await.unwrap();
        peer.write_all(&announcing(4000)).await.unwrap();
        waiting.push(peer);
    }
    // Accepted in order: once this host is served, every peer before it has
    // been accepted and read.
    let host = host_served(address, secret).await;
    let grown_rss = status_kib(pid, "VmRSS").saturating_sub(rss);
    let grown_size = status_kib(pid, "VmSize").saturating_sub(size);
    println!(
        "64 peers that did not greet: the worker grew by {grown_rss} KiB resident, {grown_size} KiB virtual"
    );
    assert!(
        grown_size < 16 * 1024,
        "64 peers that did not greet grew the worker's address space by {grown_size} KiB"
    );
    assert!(
        grown_rss < 4 * 1024,
        "64 peers that did not greet grew the worker by {grown_rss} KiB"
    );
    all_closed(announcing_16_mib, Duration::from_secs(20), "16 MiB frames").await;
    for peer in &mut waiting {
        let mut byte = [0];
        assert!(
            peer.try_read(&mut byte).is_err(),
            "a waiting peer was closed"
        );
    }
    cases::unary_round_trip(&host.channel()).await;
}

#[tokio::test]
async fn under_an_address_space_limit_a_worker_outlives_peers_announcing_large_frames() {
    // Room for the worker as it is, not for 500 frames of 16 MiB.
    let (worker, _kill) = detached("ulimit -v 262144", &[]).await;
    let (address, secret, pid) = (worker.address(), worker.secret(), worker.pid());
    drop(host_served(address, secret).await);
    let mut peers = Vec::new();
    for _ in 0..500 {
        let mut peer = UnixStream::connect(address).await.unwrap();
        peer.write_all(&(16u32 << 20).to_be_bytes()).await.unwrap();
        peers.push(peer);
    }
    host_served(address, secret).await;
    println!(
        "after 500 peers announcing 16 MiB: {} KiB virtual, {} KiB resident",
        status_kib(pid, "VmSize"),
        status_kib(pid, "VmRSS")
    );
    all_closed(peers, Duration::from_secs(20), "16 MiB frames").await;
}
