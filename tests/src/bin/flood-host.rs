//! A host that measures what a flood of large events costs it: the median
//! time of small calls to a process worker, without and then during a flood
//! of 16 MiB events that its one subscriber reads slowly; and how far its
//! resident memory rose above what it was before the flood. A process of
//! its own, so that its memory is nobody else's.
//!
//! Usage: `flood-host <path of echo-worker>`. Prints one line:
//! `baseline_us=<p50> flood_us=<p50> growth_bytes=<peak - before> events=<taken>`.

use std::time::{Duration, Instant};

use workerbus::{ProcessDriver, Stdio};
use workerbus_tests::pb::echo::{AnnounceRequest, EchoClient, EchoEvents, EchoRequest};

/// The size of each event of the flood: as large as the default maximum
/// frame length allows.
const EVENT: u32 = (16 << 20) - 4096;
/// How long the subscriber takes over each event.
const READ_EVERY: Duration = Duration::from_millis(100);
/// Calls measured in each phase.
const CALLS: usize = 300;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), workerbus::Error> {
    let program = std::env::args().nth(1).expect("the path of echo-worker");
    let worker = ProcessDriver::new(program)
        .stderr(Stdio::Inherit)
        .spawn()
        .await?;
    let client = EchoClient::new(worker.channel());
    median(&client, CALLS).await?;
    let baseline = median(&client, CALLS).await?;

    let read_every = std::env::args().nth(2).map_or(READ_EVERY, |ms| {
        Duration::from_millis(ms.parse().expect("milliseconds"))
    });
    let before = workerbus::resident_memory().expect("resident memory");
    let mut events = EchoEvents::subscribe(&worker.channel());
    let mut flood = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .announce(AnnounceRequest {
                    tag: "flood".into(),
                    count: u32::MAX,
                    padding: EVENT,
                })
                .await
        })
    };
    let (taken_tx, mut taken) = tokio::sync::watch::channel(0_u64);
    let reader = tokio::spawn(async move {
        while let Some(Ok(_)) = events.next_event().await {
            taken_tx.send_modify(|taken| *taken += 1);
            tokio::time::sleep(read_every).await;
        }
    });
    // The flood is on once the first event has arrived.
    tokio::select! {
        first = taken.wait_for(|&taken| taken > 0) => {
            first.expect("the reader runs");
        }
        ended = &mut flood => panic!("the flood ended before its first event: {ended:?}"),
    }
    // Calls go on while the subscriber takes ten more events.
    let start = *taken.borrow();
    let mut times = Vec::new();
    while *taken.borrow() < start + 10 {
        times.push(time(&client).await?);
    }
    let during = median_of(times);
    let peak = memory("VmHWM");
    let events = *taken.borrow();
    flood.abort();
    reader.abort();

    println!(
        "baseline_us={} flood_us={} growth_bytes={} events={events}",
        baseline.as_micros(),
        during.as_micros(),
        peak.saturating_sub(before),
    );
    worker.kill();
    worker.exited().await;
    Ok(())
}

/// The median time of `calls` small calls made one after another.
async fn median(client: &EchoClient, calls: usize) -> Result<Duration, workerbus::Error> {
    let mut times = Vec::with_capacity(calls);
    for _ in 0..calls {
        times.push(time(client).await?);
    }
    Ok(median_of(times))
}

/// The time of one small call.
async fn time(client: &EchoClient) -> Result<Duration, workerbus::Error> {
    let start = Instant::now();
    client
        .echo(EchoRequest {
            text: "ping".into(),
            ..EchoRequest::default()
        })
        .await?;
    Ok(start.elapsed())
}

fn median_of(mut times: Vec<Duration>) -> Duration {
    times.sort_unstable();
    times[times.len() / 2]
}

/// A field of `/proc/self/status`, in bytes.
fn memory(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}
