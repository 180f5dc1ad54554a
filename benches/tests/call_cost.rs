//! The cost of a call, counted rather than timed so that it holds on a
//! noisy machine: heap allocations per 64 B echo call in the steady state,
//! on each driver, and bytes allocated per 64 KiB call on the thread
//! driver, against a budget. A change that makes calls allocate more
//! fails here (and in CI), before any benchmark is run.
//!
//! The budgets are what the messages themselves need: nothing. On the
//! thread driver the messages cross as values, never encoded, each in a
//! block of memory from the process's pool of cells, used again from call
//! to call. On the host of a process worker, the request is encoded into
//! the connection's write buffer, and answers are read out of its read
//! buffer (or a large one into a pooled buffer of its own) and decoded
//! into a message of the caller's own; a 64 KiB call costs no more than a
//! few small headers now and then. Everything of the runtime's own
//! (frames, cells, pending-table slots, wakers, handler futures, write
//! buffers) is reused, and what a handler may ask for and the echo handler
//! does not (its call's `Context::cancelled()`) is made only when asked.

use workerbus_benches::Echo;
use workerbus_benches::counting::{Counting, allocated_bytes, allocations};
use workerbus_benches::scenarios::payload;
use workerbus_benches::subjects::{self, WorkerbusEcho};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Calls counted per measurement, after as many to warm up.
const CALLS: u64 = 2_000;

/// Allocations per call (in every thread of this process) over `CALLS`
/// sequential calls, after `CALLS` to let buffers and tables reach their
/// steady-state size.
async fn allocations_per_call(echo: &WorkerbusEcho) -> f64 {
    let payload = payload(64);
    for _ in 0..CALLS {
        echo.echo(payload.clone()).await;
    }
    let before = allocations();
    for _ in 0..CALLS {
        echo.echo(payload.clone()).await;
    }
    (allocations() - before) as f64 / CALLS as f64
}

/// Bytes allocated per call (in every thread of this process) over `CALLS`
/// sequential calls of `size` bytes, after `CALLS` to warm up.
async fn bytes_per_call(echo: &WorkerbusEcho, size: usize) -> f64 {
    let payload = payload(size);
    for _ in 0..CALLS {
        echo.echo(payload.clone()).await;
    }
    let before = allocated_bytes();
    for _ in 0..CALLS {
        echo.echo(payload.clone()).await;
    }
    (allocated_bytes() - before) as f64 / CALLS as f64
}

/// Fails if `measured` is over `budget` (with room for the rare wake-up
/// that grows a buffer): the cost of a call went up.
fn check(what: &str, measured: f64, budget: f64) {
    println!("{what}: {measured:.2} allocations per call (budget {budget})");
    assert!(
        measured <= budget + 0.1,
        "{what}: {measured:.2} heap allocations per 64 B call, over the budget of {budget}: \
         something on the call path allocates again (profile it with \
         `cargo build --release -p workerbus-benches --example hot_path` under callgrind)"
    );
}

/// A test without the test harness: the allocator counts every thread, so
/// nothing may run beside it, and the binary is also the process driver's
/// worker.
fn main() {
    if subjects::serve_if_worker() {
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    runtime.block_on(async {
        // Host and worker both count here: the worker is a thread of this
        // process.
        let worker = subjects::thread_worker().await.expect("a thread worker");
        let echo = WorkerbusEcho::new(worker.channel());
        check(
            "thread driver (host and worker)",
            allocations_per_call(&echo).await,
            0.0,
        );
        // A 64 KiB message crosses as a value: its data is never copied,
        // and its message is kept in a pooled cell, so a call allocates
        // nothing, not 128 KiB of encodings.
        let bytes = bytes_per_call(&echo, 64 << 10).await;
        println!("thread driver, 64 KiB calls: {bytes:.0} bytes allocated per call (budget 64)");
        assert!(
            bytes <= 64.0,
            "64 KiB calls allocate {bytes:.0} bytes each (host and worker), over 64: \
             are messages encoded between threads, or boxed, again?"
        );
        worker.shutdown().await;

        // Only the host counts: the worker is another process.
        let worker = subjects::process_worker().await.expect("a process worker");
        let echo = WorkerbusEcho::new(worker.channel());
        check(
            "process driver (host only)",
            allocations_per_call(&echo).await,
            0.0,
        );
        // A 64 KiB request is encoded into the connection's write buffer,
        // and its answer read into a pooled buffer: neither is a fresh
        // allocation per call.
        let bytes = bytes_per_call(&echo, 64 << 10).await;
        println!("process driver, 64 KiB calls: {bytes:.0} bytes allocated per call (budget 256)");
        assert!(
            bytes <= 256.0,
            "64 KiB calls allocate {bytes:.0} bytes each (host), over 256: \
             are large frames read or written through fresh buffers again?"
        );
        worker.shutdown().await;
    });
    println!("a call allocates nothing of its own: ok");
}
