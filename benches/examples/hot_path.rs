//! A fixed number of echo calls (64 B unless told) on one driver, for
//! profilers that count rather than time (callgrind, the counting
//! allocator's tests, page-fault and system-call counts):
//!
//! ```text
//! cargo build --release -p workerbus-benches --example hot_path
//! valgrind --tool=callgrind --trace-children=no \
//!     target/release/examples/hot_path thread 20000 64
//! ```
//!
//! Arguments: the driver (`thread`, `process`, or `process-shared`: with
//! payloads of 256 KiB or more in sealed memory files), the number of
//! calls, how many are in flight at a time, and the payload's size in
//! bytes.

use workerbus_benches::Echo;
use workerbus_benches::scenarios::payload;
use workerbus_benches::subjects::{self, WorkerbusEcho};

fn main() {
    if subjects::serve_if_worker() {
        return;
    }
    let mut args = std::env::args().skip(1);
    let driver = args.next().unwrap_or_else(|| "thread".to_owned());
    let calls: usize = args
        .next()
        .map_or(20_000, |n| n.parse().expect("a number of calls"));
    let in_flight: usize = args
        .next()
        .map_or(64, |n| n.parse().expect("a number in flight"));
    let size: usize = args
        .next()
        .map_or(64, |n| n.parse().expect("a payload size in bytes"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    runtime.block_on(async {
        let (echo, worker) = match driver.as_str() {
            "thread" => {
                let worker = subjects::thread_worker().await.expect("a thread worker");
                (WorkerbusEcho::new(worker.channel()), Ok(worker))
            }
            "process" => {
                let worker = subjects::process_worker().await.expect("a process worker");
                (WorkerbusEcho::new(worker.channel()), Err(worker))
            }
            // Payloads of 256 KiB or more in sealed memory files.
            "process-shared" => {
                let worker = subjects::process_worker_shared_memory()
                    .await
                    .expect("a process worker");
                (WorkerbusEcho::new(worker.channel()), Err(worker))
            }
            other => panic!("unknown driver {other:?}: thread, process or process-shared"),
        };
        let start = std::time::Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for task in 0..in_flight {
            let echo = echo.clone();
            let share = calls / in_flight + usize::from(task < calls % in_flight);
            tasks.spawn(async move {
                let payload = payload(size);
                for _ in 0..share {
                    echo.echo(payload.clone()).await;
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("a calling task panicked");
        }
        let elapsed = start.elapsed();
        println!(
            "{calls} calls on the {driver} driver, {in_flight} in flight: {elapsed:.2?} ({:.0} calls/s)",
            calls as f64 / elapsed.as_secs_f64()
        );
        match worker {
            Ok(worker) => worker.shutdown().await,
            Err(worker) => worker.shutdown().await,
        }
    });
}
