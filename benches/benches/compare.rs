//! The comparison: workerbus on each driver beside the baselines (raw Unix
//! sockets, Tokio channels) and, with the `peers` feature, tonic and tarpc,
//! scenario by scenario, in one run, in rounds that take the subjects in
//! turn so that the machine's drift falls on all of them alike.
//!
//! ```text
//! cargo bench -p workerbus-benches --bench compare                   # workerbus and the baselines
//! cargo bench -p workerbus-benches --features peers --bench compare  # and the peers
//! ```
//!
//! `ROUNDS=n` sets the rounds (default 5); `QUICK=1` measures each figure
//! for 50 ms instead of 400 ms; `SUBJECTS` and `SCENARIOS` (comma-separated
//! parts of names) measure only some. The results go to standard output as a
//! table with the targets' ratios, and to `target/bench-results/compare.json`.
//!
//! The binary is also every server it compares against: started by the
//! process driver it serves the Echo test service, and started with
//! `WORKERBUS_BENCH_ROLE` it serves a baseline's or a peer's role.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use workerbus::{ConcurrencyLimit, Metrics};
use workerbus_benches::baselines::{self, MpscEcho, ServerProcess};
use workerbus_benches::counting::{Counting, allocations};
use workerbus_benches::scenarios::{fresh_in_flight, in_flight, sequential, transfer};
use workerbus_benches::subjects::{self, WorkerbusEcho, WorkerbusVectors};
use workerbus_benches::{Echo, MakeVectors, ROLE_ENV, percentile};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// How long each figure is measured.
#[derive(Clone, Copy, Debug)]
struct Config {
    rounds: usize,
    time: Duration,
    spawns: usize,
}

/// Every figure of every round: (scenario, subject) -> values.
#[derive(Debug, Default)]
struct Results {
    figures: BTreeMap<(String, String), (String, Vec<f64>)>,
    order: Vec<(String, String)>,
}

impl Results {
    fn record(&mut self, scenario: &str, subject: &str, unit: &str, value: f64) {
        let key = (scenario.to_owned(), subject.to_owned());
        if !self.figures.contains_key(&key) {
            self.order.push(key.clone());
        }
        let entry = self
            .figures
            .entry(key)
            .or_insert_with(|| (unit.to_owned(), Vec::new()));
        entry.1.push(value);
    }

    fn merge(&mut self, other: Results) {
        for key in other.order {
            let (unit, values) = &other.figures[&key];
            for value in values {
                self.record(&key.0, &key.1, unit, *value);
            }
        }
    }

    fn median(&self, scenario: &str, subject: &str) -> Option<f64> {
        let (_, values) = self
            .figures
            .get(&(scenario.to_owned(), subject.to_owned()))?;
        Some(median(values))
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    } else {
        sorted[middle]
    }
}

const SEQ_P50: &str = "64 B sequential: p50 latency";
const SEQ_P99: &str = "64 B sequential: p99 latency";
const FLIGHT: &str = "64 B x 64 in flight";
const FLIGHT_64K: &str = "64 KiB x 64 in flight";
const BIG: &str = "1 MiB request and response";
const FRESH: &str = "fresh 64 KiB message x 64 in flight";
const STREAM: &str = "raw Unix-socket streaming";
const MIDDLEWARE: &str = "call cost by middleware (64 B sequential p50)";
const ALLOCS: &str = "heap allocations per call (64 B sequential)";
const SPAWN: &str = "spawn to first answer";

const THREAD: &str = "workerbus thread driver";
const GRPC: &str = "workerbus gRPC driver, TCP";
const TONIC_TCP: &str = "tonic, TCP";
const PROCESS: &str = "workerbus process driver";
// Not a name that contains `PROCESS`, so that `SUBJECTS` can pick either.
const PROCESS_MULTI: &str = "workerbus process, multi-thread host";
// Contains `PROCESS`: measured with it, in the 1 MiB scenario only.
const PROCESS_SHARED: &str = "workerbus process driver, shared memory";

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

/// Whether `subject` is measured: `SUBJECTS` (comma-separated parts of
/// names) picks some; all are by default.
fn wanted(subject: &str) -> bool {
    match std::env::var("SUBJECTS") {
        Ok(wanted) => wanted.split(',').any(|part| subject.contains(part.trim())),
        Err(_) => true,
    }
}

/// Whether the echo scenario `scenario` is measured: `SCENARIOS`
/// (comma-separated parts of names) picks some; all are by default.
fn scenario_wanted(scenario: &str) -> bool {
    match std::env::var("SCENARIOS") {
        Ok(wanted) => wanted.split(',').any(|part| scenario.contains(part.trim())),
        Err(_) => true,
    }
}

/// The echo scenarios for one subject.
async fn echo_scenarios<E: Echo>(results: &mut Results, subject: &str, echo: &E, config: Config) {
    if !wanted(subject) {
        return;
    }
    if scenario_wanted(SEQ_P50) || scenario_wanted(SEQ_P99) {
        let samples = sequential(echo, 64, config.time).await;
        results.record(SEQ_P50, subject, "µs", micros(percentile(&samples, 0.5)));
        results.record(SEQ_P99, subject, "µs", micros(percentile(&samples, 0.99)));
    }
    if scenario_wanted(FLIGHT) {
        let rate = in_flight(echo, 64, 64, config.time).await;
        results.record(FLIGHT, subject, "calls/s", rate);
    }
    if scenario_wanted(FLIGHT_64K) {
        let rate = in_flight(echo, 64 << 10, 64, config.time).await;
        results.record(
            FLIGHT_64K,
            subject,
            "MB/s",
            rate * f64::from(64u32 << 10) / 1e6,
        );
    }
    if scenario_wanted(BIG) {
        let rate = transfer(echo, 1 << 20, config.time).await;
        results.record(BIG, subject, "MB/s", rate / 1e6);
    }
}

/// The fresh-message scenario for one subject: 64 calls in flight, each
/// answered by 16,384 floats (64 KiB) made for it.
async fn fresh_scenario<V: MakeVectors>(
    results: &mut Results,
    subject: &str,
    vectors: &V,
    config: Config,
) {
    if !wanted(subject) || !scenario_wanted(FRESH) {
        return;
    }
    const FLOATS: u32 = 16_384;
    let rate = fresh_in_flight(vectors, FLOATS, 64, config.time).await;
    results.record(FRESH, subject, "MB/s", rate * f64::from(FLOATS * 4) / 1e6);
}

/// Heap allocations per call, all threads of the process counted.
async fn allocations_per_call<E: Echo>(echo: &E, calls: u64) -> f64 {
    let payload = workerbus_benches::scenarios::payload(64);
    // Warm up, so that buffers and tables have their steady-state size.
    for _ in 0..1_000 {
        echo.echo(payload.clone()).await;
    }
    let before = allocations();
    for _ in 0..calls {
        echo.echo(payload.clone()).await;
    }
    (allocations() - before) as f64 / calls as f64
}

fn main() {
    if subjects::serve_if_worker() {
        return;
    }
    if let Ok(role) = std::env::var(ROLE_ENV) {
        let socket = PathBuf::from(std::env::args_os().nth(1).expect("a socket path"));
        if baselines::serve_role(&role, &socket) {
            return;
        }
        #[cfg(feature = "peers")]
        if workerbus_benches::peers::serve_role(&role, &socket) {
            return;
        }
        panic!("unknown role {role:?}");
    }
    let quick = std::env::var_os("QUICK").is_some_and(|quick| quick != "0");
    let config = Config {
        rounds: std::env::var("ROUNDS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(5),
        time: Duration::from_millis(if quick { 50 } else { 400 }),
        spawns: if quick { 3 } else { 10 },
    };
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    let results = runtime.block_on(run(config));
    print(&results);
    check_targets(&results);
    write_json(&results, config, started.elapsed());
}

async fn run(config: Config) -> Results {
    let mut results = Results::default();
    let std_echo = ServerProcess::start(baselines::STD_ECHO);
    let tokio_echo = ServerProcess::start(baselines::TOKIO_ECHO);
    let sink = ServerProcess::start(baselines::SINK);
    let thread = subjects::thread_worker().await.expect("a thread worker");
    let process = subjects::process_worker().await.expect("a process worker");
    let shared_memory = subjects::process_worker_shared_memory()
        .await
        .expect("a process worker");
    let on_thread = WorkerbusEcho::new(thread.channel());
    let in_process = WorkerbusEcho::new(process.channel());
    let with_middleware = WorkerbusEcho::new(
        thread
            .channel()
            .with_middleware(Metrics::new())
            .with_middleware(ConcurrencyLimit::new(1024)),
    );
    let mpsc = MpscEcho::start();
    let vectors_thread = subjects::vectors_thread_worker()
        .await
        .expect("a thread worker");
    let vectors_process = subjects::vectors_process_worker()
        .await
        .expect("a process worker");
    let (on_thread_vectors, in_process_vectors) = (
        WorkerbusVectors::new(vectors_thread.channel()),
        WorkerbusVectors::new(vectors_process.channel()),
    );
    let multi = wanted(PROCESS_MULTI)
        .then(|| MultiThreadHost::start(config, tokio_echo.socket().to_owned()));
    #[cfg(feature = "peers")]
    let peers = Peers::start().await;

    for round in 1..=config.rounds {
        eprintln!("round {round} of {}", config.rounds);
        echo_scenarios(&mut results, THREAD, &on_thread, config).await;
        echo_scenarios(&mut results, PROCESS, &in_process, config).await;
        if wanted(PROCESS_SHARED) && scenario_wanted(BIG) {
            let echo = WorkerbusEcho::new(shared_memory.channel());
            let rate = transfer(&echo, 1 << 20, config.time).await;
            results.record(BIG, PROCESS_SHARED, "MB/s", rate / 1e6);
        }
        if let Some(multi) = &multi {
            results.merge(multi.round());
        }
        echo_scenarios(&mut results, "tokio mpsc + oneshot", &mpsc, config).await;
        fresh_scenario(&mut results, THREAD, &on_thread_vectors, config).await;
        fresh_scenario(&mut results, PROCESS, &in_process_vectors, config).await;
        fresh_scenario(&mut results, "tokio mpsc + oneshot", &mpsc, config).await;
        #[cfg(feature = "peers")]
        peers.run(&mut results, config).await;

        if wanted("raw") {
            let samples = baselines::std_ping_pong(std_echo.socket(), 64, config.time);
            results.record(
                SEQ_P50,
                "raw std Unix socket",
                "µs",
                micros(percentile(&samples, 0.5)),
            );
            results.record(
                SEQ_P99,
                "raw std Unix socket",
                "µs",
                micros(percentile(&samples, 0.99)),
            );
            let samples = baselines::tokio_ping_pong(tokio_echo.socket(), 64, config.time).await;
            let subject = "raw tokio Unix socket";
            results.record(SEQ_P50, subject, "µs", micros(percentile(&samples, 0.5)));
            results.record(SEQ_P99, subject, "µs", micros(percentile(&samples, 0.99)));
            let same_buffer = Some(baselines::WORKERBUS_SEND_BUFFER);
            for (write, send_buffer, subject) in [
                (1 << 20, None, "1 MiB writes"),
                (1 << 20, same_buffer, "1 MiB writes, 1 MiB buffer"),
                (1 << 10, None, "1 KiB writes"),
            ] {
                let rate =
                    baselines::stream_to_sink(sink.socket(), write, send_buffer, config.time);
                results.record(STREAM, subject, "MB/s", rate / 1e6);
            }
        }

        if !wanted("workerbus") {
            continue;
        }
        for (subject, echo) in [
            ("thread, no middleware", &on_thread),
            ("thread, 2 middleware", &with_middleware),
        ] {
            let samples = sequential(echo, 64, config.time).await;
            results.record(MIDDLEWARE, subject, "µs", micros(percentile(&samples, 0.5)));
        }
        let calls = 10_000;
        results.record(
            ALLOCS,
            THREAD,
            "allocations",
            allocations_per_call(&on_thread, calls).await,
        );
        results.record(
            ALLOCS,
            PROCESS,
            "allocations (host only)",
            allocations_per_call(&in_process, calls).await,
        );
        results.record(
            ALLOCS,
            "tokio mpsc + oneshot",
            "allocations",
            allocations_per_call(&mpsc, calls).await,
        );

        for _ in 0..config.spawns {
            let start = Instant::now();
            let worker = subjects::thread_worker().await.expect("a thread worker");
            WorkerbusEcho::new(worker.channel())
                .echo(workerbus_benches::scenarios::payload(64))
                .await;
            results.record(SPAWN, THREAD, "µs", micros(start.elapsed()));
            worker.shutdown().await;
            let start = Instant::now();
            let worker = subjects::process_worker().await.expect("a process worker");
            WorkerbusEcho::new(worker.channel())
                .echo(workerbus_benches::scenarios::payload(64))
                .await;
            results.record(SPAWN, PROCESS, "µs", micros(start.elapsed()));
            worker.shutdown().await;
        }
    }
    thread.shutdown().await;
    process.shutdown().await;
    vectors_thread.shutdown().await;
    vectors_process.shutdown().await;
    if let Some(multi) = multi {
        multi.stop();
    }
    results
}

/// The process driver with its host on a multi-thread runtime (two worker
/// threads), where a call's task and the connection's link task may run on
/// different threads. The runtime lives on a thread of its own, since one
/// runtime cannot block on another.
struct MultiThreadHost {
    rounds: std::sync::mpsc::Sender<()>,
    results: std::sync::mpsc::Receiver<Results>,
    thread: std::thread::JoinHandle<()>,
}

impl MultiThreadHost {
    /// Starts the runtime and its worker, and returns once the worker is up
    /// (so that starting it does not fall into another subject's figures).
    /// Its rounds also time raw Tokio ping-pong on the same runtime, against
    /// the echo server at `raw_echo`: what a multi-thread host costs any
    /// design, beside what it costs workerbus.
    fn start(config: Config, raw_echo: PathBuf) -> MultiThreadHost {
        let (rounds, next_round) = std::sync::mpsc::channel::<()>();
        let (done, results) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a multi-thread Tokio runtime");
            let worker = runtime
                .block_on(subjects::process_worker())
                .expect("a process worker");
            let echo = WorkerbusEcho::new(worker.channel());
            if done.send(Results::default()).is_err() {
                return;
            }
            while next_round.recv().is_ok() {
                // From a task, as an application's calls are: `block_on`'s
                // own future runs outside the runtime's worker threads.
                let (echo, raw_echo) = (echo.clone(), raw_echo.clone());
                let round = async move {
                    let mut results = Results::default();
                    echo_scenarios(&mut results, PROCESS_MULTI, &echo, config).await;
                    let samples = baselines::tokio_ping_pong(&raw_echo, 64, config.time).await;
                    let subject = "raw tokio Unix socket, multi-thread";
                    results.record(SEQ_P50, subject, "µs", micros(percentile(&samples, 0.5)));
                    results.record(SEQ_P99, subject, "µs", micros(percentile(&samples, 0.99)));
                    results
                };
                let results = runtime
                    .block_on(runtime.spawn(round))
                    .expect("a round on the multi-thread host");
                if done.send(results).is_err() {
                    break;
                }
            }
            runtime.block_on(worker.shutdown());
        });
        results
            .recv()
            .expect("the multi-thread host's worker is up");
        MultiThreadHost {
            rounds,
            results,
            thread,
        }
    }

    /// Runs the echo scenarios once; the caller's runtime waits meanwhile.
    fn round(&self) -> Results {
        self.rounds
            .send(())
            .expect("the multi-thread host is running");
        self.results
            .recv()
            .expect("the multi-thread host's results")
    }

    /// Shuts its worker down and waits for its thread to end.
    fn stop(self) {
        drop(self.rounds);
        self.thread.join().expect("the multi-thread host's thread");
    }
}

#[cfg(feature = "peers")]
struct Peers {
    tonic: (
        workerbus_benches::peers::TonicEcho,
        workerbus_benches::peers::ServerProcess,
    ),
    tarpc_unix: (
        workerbus_benches::peers::TarpcEcho,
        workerbus_benches::peers::ServerProcess,
    ),
    tarpc_channel: workerbus_benches::peers::TarpcEcho,
    _tarpc_server: Box<dyn std::any::Any>,
    tonic_tcp: (
        workerbus_benches::peers::TonicEcho,
        workerbus_benches::peers::ServerProcess,
    ),
    grpc: (
        WorkerbusEcho,
        workerbus_grpc::GrpcWorker,
        workerbus_benches::peers::ServerProcess,
    ),
}

#[cfg(feature = "peers")]
impl Peers {
    async fn start() -> Peers {
        use workerbus_benches::peers;
        let (tarpc_channel, server) = peers::tarpc_channel();
        Peers {
            tonic: peers::tonic_unix().await,
            tarpc_unix: peers::tarpc_unix().await,
            tarpc_channel,
            _tarpc_server: Box::new(server),
            tonic_tcp: peers::tonic_tcp().await,
            grpc: peers::workerbus_grpc().await,
        }
    }

    async fn run(&self, results: &mut Results, config: Config) {
        echo_scenarios(results, "tonic, Unix socket", &self.tonic.0, config).await;
        fresh_scenario(results, "tonic, Unix socket", &self.tonic.0, config).await;
        fresh_scenario(
            results,
            "tarpc, bincode, Unix socket",
            &self.tarpc_unix.0,
            config,
        )
        .await;
        fresh_scenario(
            results,
            "tarpc, in-process channel",
            &self.tarpc_channel,
            config,
        )
        .await;
        echo_scenarios(
            results,
            "tarpc, bincode, Unix socket",
            &self.tarpc_unix.0,
            config,
        )
        .await;
        echo_scenarios(
            results,
            "tarpc, in-process channel",
            &self.tarpc_channel,
            config,
        )
        .await;
        echo_scenarios(results, GRPC, &self.grpc.0, config).await;
        echo_scenarios(results, TONIC_TCP, &self.tonic_tcp.0, config).await;
    }
}

fn print(results: &Results) {
    let mut scenario = "";
    for key in &results.order {
        let (unit, values) = &results.figures[key];
        if key.0 != scenario {
            scenario = &key.0;
            println!("\n{scenario} ({unit})");
        }
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        println!(
            "  {:<38} median {:>12}   min {:>12}   max {:>12}",
            key.1,
            figure(median(values)),
            figure(min),
            figure(max)
        );
    }
}

fn figure(value: f64) -> String {
    if value >= 1000.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// A target: `subject`'s median against `baseline`'s, in one scenario.
struct Target {
    what: &'static str,
    scenario: &'static str,
    subject: &'static str,
    against_scenario: &'static str,
    against: &'static str,
    /// For latencies: the most the ratio may be; for rates: the least.
    bound: f64,
    lower_is_better: bool,
}

const TARGETS: &[Target] = &[
    Target {
        what: "process driver sequential p50 <= 1.3x raw tokio ping-pong",
        scenario: SEQ_P50,
        subject: PROCESS,
        against_scenario: SEQ_P50,
        against: "raw tokio Unix socket",
        bound: 1.3,
        lower_is_better: true,
    },
    Target {
        what: "process driver 64 B x 64 >= 25x tonic",
        scenario: FLIGHT,
        subject: PROCESS,
        against_scenario: FLIGHT,
        against: "tonic, Unix socket",
        bound: 25.0,
        lower_is_better: false,
    },
    Target {
        what: "process driver 64 B x 64 >= 5x tarpc over a Unix socket",
        scenario: FLIGHT,
        subject: PROCESS,
        against_scenario: FLIGHT,
        against: "tarpc, bincode, Unix socket",
        bound: 5.0,
        lower_is_better: false,
    },
    Target {
        what: "thread driver 64 B x 64 >= 0.5x tokio mpsc + oneshot",
        scenario: FLIGHT,
        subject: THREAD,
        against_scenario: FLIGHT,
        against: "tokio mpsc + oneshot",
        bound: 0.5,
        lower_is_better: false,
    },
    Target {
        what: "thread driver 64 B x 64 >= 4x tarpc's channel",
        scenario: FLIGHT,
        subject: THREAD,
        against_scenario: FLIGHT,
        against: "tarpc, in-process channel",
        bound: 4.0,
        lower_is_better: false,
    },
    Target {
        what: "process driver 1 MiB >= 0.75x raw streaming (1 MiB writes)",
        scenario: BIG,
        subject: PROCESS,
        against_scenario: STREAM,
        against: "1 MiB writes",
        bound: 0.75,
        lower_is_better: false,
    },
    // The same, against streaming with the send buffer the process driver
    // asks for: the limit at workerbus's own socket setting.
    Target {
        what: "... and >= 0.75x raw streaming with a 1 MiB send buffer",
        scenario: BIG,
        subject: PROCESS,
        against_scenario: STREAM,
        against: "1 MiB writes, 1 MiB buffer",
        bound: 0.75,
        lower_is_better: false,
    },
    // Messages at memory speed: data, not reference counts.
    Target {
        what: "thread driver 64 KiB x 64 >= 1.0x tarpc's channel",
        scenario: FLIGHT_64K,
        subject: THREAD,
        against_scenario: FLIGHT_64K,
        against: "tarpc, in-process channel",
        bound: 1.0,
        lower_is_better: false,
    },
    Target {
        what: "thread driver 64 KiB x 64 >= 0.25x tokio mpsc + oneshot",
        scenario: FLIGHT_64K,
        subject: THREAD,
        against_scenario: FLIGHT_64K,
        against: "tokio mpsc + oneshot",
        bound: 0.25,
        lower_is_better: false,
    },
    Target {
        what: "thread driver fresh 64 KiB x 64 >= 1.0x tarpc's channel",
        scenario: FRESH,
        subject: THREAD,
        against_scenario: FRESH,
        against: "tarpc, in-process channel",
        bound: 1.0,
        lower_is_better: false,
    },
    Target {
        what: "process driver 64 KiB x 64 >= 1.0x tarpc over a Unix socket",
        scenario: FLIGHT_64K,
        subject: PROCESS,
        against_scenario: FLIGHT_64K,
        against: "tarpc, bincode, Unix socket",
        bound: 1.0,
        lower_is_better: false,
    },
    // workerbus's gRPC bridge and driver against plain tonic, both on TCP
    // loopback with one connection each.
    Target {
        what: "gRPC driver 64 B x 64 >= 0.95x tonic over TCP",
        scenario: FLIGHT,
        subject: GRPC,
        against_scenario: FLIGHT,
        against: TONIC_TCP,
        bound: 0.95,
        lower_is_better: false,
    },
    Target {
        what: "gRPC driver 64 B sequential p50 <= 1.1x tonic over TCP",
        scenario: SEQ_P50,
        subject: GRPC,
        against_scenario: SEQ_P50,
        against: TONIC_TCP,
        bound: 1.1,
        lower_is_better: true,
    },
    Target {
        what: "gRPC driver 64 KiB x 64 >= 0.85x tonic over TCP",
        scenario: FLIGHT_64K,
        subject: GRPC,
        against_scenario: FLIGHT_64K,
        against: TONIC_TCP,
        bound: 0.85,
        lower_is_better: false,
    },
];

fn check_targets(results: &Results) {
    println!("\ntargets (ratios of medians in this run)");
    for target in TARGETS {
        let (Some(ours), Some(theirs)) = (
            results.median(target.scenario, target.subject),
            results.median(target.against_scenario, target.against),
        ) else {
            println!("  {:<62} not measured in this run", target.what);
            continue;
        };
        let ratio = ours / theirs;
        let met = if target.lower_is_better {
            ratio <= target.bound
        } else {
            ratio >= target.bound
        };
        println!(
            "  {:<62} {ratio:>7.2}x  {}",
            target.what,
            if met { "met" } else { "MISSED" }
        );
    }
}

fn write_json(results: &Results, config: Config, elapsed: Duration) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-results");
    let mut json = format!(
        "{{\n  \"rounds\": {},\n  \"seconds_per_figure\": {},\n  \"elapsed_seconds\": {:.1},\n  \"figures\": [\n",
        config.rounds,
        config.time.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    let rows: Vec<String> = results
        .order
        .iter()
        .map(|key| {
            let (unit, values) = &results.figures[key];
            let values: Vec<String> = values.iter().map(|value| format!("{value}")).collect();
            format!(
                "    {{\"scenario\": {:?}, \"subject\": {:?}, \"unit\": {:?}, \"median\": {}, \"values\": [{}]}}",
                key.0,
                key.1,
                unit,
                median(&results.figures[key].1),
                values.join(", ")
            )
        })
        .collect();
    json.push_str(&rows.join(",\n"));
    json.push_str("\n  ]\n}\n");
    let path = dir.join("compare.json");
    match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, json)) {
        Ok(()) => println!("\nwritten to {}", path.display()),
        Err(error) => eprintln!("writing {}: {error}", path.display()),
    }
}
