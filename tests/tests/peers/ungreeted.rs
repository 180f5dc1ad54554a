//! Peers of a worker's named socket that never prove they know the secret:
//! anyone running as the worker's user can connect, and such peers must
//! cost a worker little and keep no host out. Real worker processes
//! (`echo-worker`, detached), measured from `/proc/<pid>`: their memory
//! (`status`), CPU time (`stat`) and open descriptors (`fd`). A worker is
//! given a low descriptor or address-space limit by starting it through
//! `/bin/sh -c 'ulimit ...; exec "$0" "$@"'`, which keeps its pid, its
//! parent and descriptor 3.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio_util::codec::{Decoder, Encoder, Framed};
use workerbus::{
    DEFAULT_MAX_UNGREETED_CONNECTIONS, DetachedWorker, Frame, FrameCodec, MethodName,
    ProcessDriver, Secret,
};
use workerbus_tests::cases;
use workerbus_tests::support::{KillOnDrop, greeted, secret_bytes};

use crate::ECHO_WORKER;

const SILENT_PEERS: &str = env!("CARGO_BIN_EXE_silent-peers");

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
    let guard = KillOnDrop(detached.pid().unwrap());
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

/// A line of `/proc/<pid>/status`, in KiB (`VmRSS`).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let line = status
        .lines()
        .find(|line| line.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The CPU time a process has used (user and system), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    // After the command name, in parentheses: state is field 3, utime 14.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Clock ticks per second, as `/proc/<pid>/stat` counts them.
fn ticks_per_second() -> u64 {
    let output = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("getconf");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap()
}

/// The address space a process can use, in KiB: its mappings that allow
/// any access. Unlike `VmSize`, it leaves out what is only reserved, such as
/// the 64 MiB glibc reserves for the heap of a thread's first allocation
/// (the worker's watchdog thread's, whenever that comes).
fn accessible_kib(pid: u32) -> u64 {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("read maps");
    let mut bytes = 0;
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        if perms.starts_with("---") {
            continue;
        }
        let (start, end) = range.split_once('-').unwrap();
        bytes += u64::from_str_radix(end, 16).unwrap() - u64::from_str_radix(start, 16).unwrap();
    }
    bytes / 1024
}

/// How many descriptors a process has open.
fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read the worker's descriptors")
        .count()
}

/// The bytes of `frame` on the wire.
fn encoded(frame: Frame) -> Vec<u8> {
    let mut bytes = BytesMut::new();
    FrameCodec::new().encode(frame, &mut bytes).unwrap();
    bytes.to_vec()
}

/// A host's greeting with `secret`.
fn hello(secret: &[u8]) -> Vec<u8> {
    let mut payload = vec![0x08, workerbus::PROTOCOL_VERSION as u8, 0x12, 32];
    payload.extend_from_slice(secret);
    let method = MethodName::from_static("$workerbus.hello");
    encoded(Frame::request(1, method, None, 1, Bytes::from(payload)))
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
    // Time enough that no peer is closed for its delay while the test runs.
    let (worker, _kill) = detached("", &["--greeting-timeout-ms=600000"]).await;
    let (address, secret, pid) = (worker.address(), worker.secret(), worker.pid().unwrap());
    drop(host_served(address, secret).await);
    let (rss, size) = (status_kib(pid, "VmRSS"), accessible_kib(pid));

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
    let grown_size = accessible_kib(pid).saturating_sub(size);
    println!(
        "64 peers that did not greet: the worker grew by {grown_rss} KiB resident, {grown_size} KiB of address space"
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
    let (address, secret, pid) = (worker.address(), worker.secret(), worker.pid().unwrap());
    drop(host_served(address, secret).await);
    // In batches, so that the test holds few descriptors at a time.
    for _ in 0..10 {
        let mut peers = Vec::new();
        for _ in 0..50 {
            let mut peer = UnixStream::connect(address).await.unwrap();
            peer.write_all(&(16u32 << 20).to_be_bytes()).await.unwrap();
            peers.push(peer);
        }
        all_closed(peers, Duration::from_secs(20), "16 MiB frames").await;
    }
    host_served(address, secret).await;
    println!(
        "after 500 peers announcing 16 MiB: {} KiB of address space, {} KiB resident",
        accessible_kib(pid),
        status_kib(pid, "VmRSS")
    );
}

#[tokio::test]
async fn a_host_connects_in_under_a_second_while_1000_silent_connections_are_open() {
    // Time enough that no peer is closed for its delay while the test runs,
    // and too few descriptors for a worker that would hold 1,000 connections.
    let args = ["--greeting-timeout-ms=600000"];
    let (worker, _kill) = detached("ulimit -n 256", &args).await;
    let (address, secret, pid) = (worker.address(), worker.secret(), worker.pid().unwrap());
    let descriptors = open_descriptors(pid);
    // The 1,000 connections, in a process of their own with room for them.
    let mut silent = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg("ulimit -n 2048 2>/dev/null; exec \"$0\" \"$@\"")
        .arg(SILENT_PEERS)
        .arg(address)
        .arg("1000")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run silent-peers");
    let mut said = tokio::io::BufReader::new(silent.stdout.take().unwrap()).lines();
    let mut ask = silent.stdin.take().unwrap();
    let ready = said.next_line().await.unwrap();
    assert_eq!(
        ready.as_deref(),
        Some("ready"),
        "silent-peers did not connect"
    );

    let started = Instant::now();
    let host = host_served(address, secret).await;
    let took = started.elapsed();
    println!("a host connected and called in {took:?} behind 1,000 silent connections");
    assert!(
        took < Duration::from_secs(1),
        "a host took {took:?} to connect and call"
    );
    // Only the newest connections wait to greet: the host's pushed one more
    // out, and left the line when it greeted. The rest were closed.
    ask.write_all(b"count\n").await.unwrap();
    let open: usize = said.next_line().await.unwrap().unwrap().parse().unwrap();
    let line = DEFAULT_MAX_UNGREETED_CONNECTIONS;
    assert!(
        open == line - 1 || open == line,
        "{open} of 1,000 silent connections are open"
    );
    let held = open_descriptors(pid) - descriptors;
    assert!(held <= line + 1, "the worker holds {held} connections");
    cases::unary_round_trip(&host.channel()).await;
}

#[tokio::test]
async fn connections_that_do_not_greet_in_time_are_closed_and_greeted_ones_stay() {
    let timeout = Duration::from_millis(300);
    let args = [format!("--greeting-timeout-ms={}", timeout.as_millis())];
    let (worker, _kill) = detached("", &[args[0].as_str()]).await;
    let (address, secret) = (worker.address(), worker.secret());
    let started = Instant::now();
    let silent = UnixStream::connect(address).await.unwrap();
    let mut partial = UnixStream::connect(address).await.unwrap();
    let greeting = hello(&secret_bytes(secret));
    partial.write_all(&greeting[..20]).await.unwrap();
    // A greeting that trickles in, a byte every 20 ms: too slow to finish.
    let mut trickling = UnixStream::connect(address).await.unwrap();
    let trickle = tokio::spawn(async move {
        for byte in greeting {
            if trickling.write_all(&[byte]).await.is_err() {
                return closed(trickling).await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "the worker read a whole greeting sent over {:?}",
            started.elapsed()
        );
    });
    let host = host_served(address, secret).await;
    let host_connected = Instant::now();

    all_closed(
        vec![silent, partial],
        Duration::from_secs(20),
        "peers that did not greet",
    )
    .await;
    let trickled = tokio::time::timeout(Duration::from_secs(20), trickle)
        .await
        .expect("the trickling peer was not closed within 20 s")
        .unwrap();
    assert!(trickled.is_empty(), "the worker answered {trickled:02x?}");
    assert!(
        started.elapsed() >= timeout,
        "closed after {:?}, before the greeting timeout",
        started.elapsed()
    );
    // Past its own greeting timeout, the host that greeted is served.
    tokio::time::sleep_until((host_connected + 2 * timeout).into()).await;
    cases::unary_round_trip(&host.channel()).await;
}

#[tokio::test]
async fn at_the_descriptor_limit_a_worker_waits_for_a_free_descriptor_without_spinning() {
    let limit = 48;
    let (worker, _kill) = detached(&format!("ulimit -n {limit}"), &[]).await;
    let (address, secret, pid) = (worker.address(), worker.secret(), worker.pid().unwrap());
    // Greeted connections, which no limit closes, take every descriptor left.
    let mut peers = Vec::new();
    while open_descriptors(pid) < limit {
        peers.push(greeted(&worker).await);
    }
    // One more connects; the worker cannot accept it.
    let waiting = UnixStream::connect(address).await.unwrap();
    let before = cpu_ticks(pid);
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = cpu_ticks(pid) - before;
    let ticks = ticks_per_second() as f64 * window.elapsed().as_secs_f64();
    println!(
        "at its limit of {limit} descriptors, the worker used {used} of {ticks:.0} clock ticks"
    );
    assert!(
        (used as f64) < ticks / 4.0,
        "at its descriptor limit the worker used {used} of {ticks:.0} clock ticks"
    );
    // Descriptors free up: the waiting peer is accepted and greeted, and a
    // host connects.
    peers.truncate(peers.len() - 2);
    let mut waiting = Framed::new(waiting, FrameCodec::new());
    let greeting = hello(&secret_bytes(secret));
    waiting.get_mut().write_all(&greeting).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(20), waiting.next())
        .await
        .expect("the waiting peer was not greeted within 20 s");
    assert!(
        matches!(answer, Some(Ok(Frame::Response { id: 1, .. }))),
        "{answer:?}"
    );
    host_served(address, secret).await;
    waiting.send(Frame::Shutdown).await.unwrap();
}

/// What a peer that never greets does.
#[derive(Clone, Debug)]
enum Stranger {
    /// Connects and says nothing.
    Silent,
    /// Sends part of a length prefix.
    PartialPrefix(Vec<u8>),
    /// Announces a `REQUEST` of `len` bytes and sends `sent` bytes of it.
    Announces { len: u32, sent: u16 },
    /// Sends bytes that are no frame.
    Garbage(Vec<u8>),
    /// Sends the first bytes of a real greeting, and no more.
    PartialGreeting(usize),
    /// Greets with a wrong secret.
    WrongSecret,
}

impl Stranger {
    /// What it writes, knowing what the worker's greeting looks like.
    fn bytes(&self, greeting: &[u8]) -> Vec<u8> {
        match self {
            Stranger::Silent => Vec::new(),
            Stranger::PartialPrefix(bytes) | Stranger::Garbage(bytes) => bytes.clone(),
            Stranger::Announces { len, sent } => {
                let mut bytes = announcing(*len);
                bytes.resize(4 + usize::from(*sent).min(*len as usize), 0);
                bytes
            }
            Stranger::PartialGreeting(cut) => greeting[..(*cut).min(greeting.len() - 1)].to_vec(),
            Stranger::WrongSecret => hello(&[0x5a; 32]),
        }
    }
}

fn stranger() -> impl Strategy<Value = Stranger> {
    prop_oneof![
        Just(Stranger::Silent),
        prop::collection::vec(any::<u8>(), 1..4).prop_map(Stranger::PartialPrefix),
        // Within the greeting's limit, within the maximum frame length, any.
        (
            prop_oneof![0u32..=4096, 4097u32..=16 << 20, any::<u32>()],
            0u16..5000
        )
            .prop_map(|(len, sent)| Stranger::Announces { len, sent }),
        prop::collection::vec(any::<u8>(), 1..256).prop_map(Stranger::Garbage),
        (1usize..100).prop_map(Stranger::PartialGreeting),
        Just(Stranger::WrongSecret),
    ]
}

/// The limits of the worker the property runs against: a short greeting
/// timeout and a small line, so that a case sees both at work, and fewer
/// descriptors than a case has peers.
const PROPERTY_TIMEOUT: Duration = Duration::from_millis(500);
const PROPERTY_LINE: usize = 16;

/// Many peers that never greet, all at once, against one worker across
/// every case: a host still connects at once; what they make the worker
/// hold stays within a few MiB; each is closed (at the latest when its
/// greeting timeout passes) and none is welcomed; and once they are gone the
/// worker holds nothing of theirs.
#[test]
fn strangers_never_cost_a_worker_more_than_the_greeting_limits_allow() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let args = [
        format!("--greeting-timeout-ms={}", PROPERTY_TIMEOUT.as_millis()),
        format!("--max-ungreeted-connections={PROPERTY_LINE}"),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (worker, _kill) = runtime.block_on(detached("ulimit -n 128", &args));
    let (address, secret, pid) = (worker.address(), worker.secret(), worker.pid().unwrap());
    let greeting = hello(&secret_bytes(secret));
    let (rss, size, descriptors) = runtime.block_on(async {
        drop(host_served(address, secret).await);
        let rss = status_kib(pid, "VmRSS");
        (rss, accessible_kib(pid), open_descriptors(pid))
    });
    let mut runner = TestRunner::new(Config {
        cases: 12,
        max_shrink_iters: 32,
        failure_persistence: None,
        ..Config::default()
    });
    let strangers = prop::collection::vec(stranger(), 1..150);
    let outcome = runner.run(&strangers, |strangers| {
        runtime.block_on(async {
            let mut peers = Vec::new();
            for stranger in &strangers {
                let mut peer = UnixStream::connect(address).await.unwrap();
                // The worker may have closed it already.
                let _ = peer.write_all(&stranger.bytes(&greeting)).await;
                peers.push(peer);
            }
            let started = Instant::now();
            let host = host_served(address, secret).await;
            let took = started.elapsed();
            prop_assert!(took < Duration::from_secs(2), "a host took {took:?}");
            let grown_rss = status_kib(pid, "VmRSS").saturating_sub(rss);
            let grown_size = accessible_kib(pid).saturating_sub(size);
            prop_assert!(grown_rss < 4 * 1024, "grew by {grown_rss} KiB resident");
            prop_assert!(
                grown_size < 16 * 1024,
                "grew by {grown_size} KiB of address space"
            );
            // Strangers wait in a line of PROPERTY_LINE, the host's
            // connection having pushed the oldest out before it greeted.
            let held = open_descriptors(pid);
            prop_assert!(
                held < descriptors + PROPERTY_LINE + 1,
                "the worker holds {held} descriptors, {descriptors} before the strangers came"
            );

            let answers = futures_util::future::join_all(peers.into_iter().map(closed));
            let bound = PROPERTY_TIMEOUT + Duration::from_secs(10);
            let Ok(answers) = tokio::time::timeout(bound, answers).await else {
                return Err(TestCaseError::fail(format!(
                    "peers that never greeted were still connected after {bound:?}"
                )));
            };
            for answer in answers {
                let mut answer = BytesMut::from(&answer[..]);
                while let Ok(Some(frame)) = FrameCodec::new().decode(&mut answer) {
                    prop_assert!(
                        matches!(frame, Frame::Status { .. }),
                        "a stranger was answered {frame:?}"
                    );
                }
            }
            let held = open_descriptors(pid);
            prop_assert!(
                held <= descriptors + 1,
                "the worker holds {held} descriptors, {descriptors} before and a host now"
            );
            drop(host);
            Ok(())
        })
    });
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
    runtime.block_on(async { drop(host_served(address, secret).await) });
}
