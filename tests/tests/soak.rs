//! Chaos soak: many concurrent callers against supervised process and thread
//! workers while a chaos task per worker kills and stalls them; a ledger of
//! every call proves that each ended exactly once, with its own answer.
//!
//! The callers mix echoes carrying a payload of their own, short sleeps
//! with short deadlines, idempotent sleeps, sleeps past their deadline, and
//! calls given up mid-flight (raced against a timer, or their task aborted).
//! The chaos SIGKILLs process workers, ends them with the `Exit` rpc, kills
//! thread workers with `SupervisedWorker::kill`, and blocks workers in a
//! handler past its deadline (each such stall prints a line on stderr).
//!
//! Two modes, one test:
//!
//! - **Short** (the default, run by `cargo test --workspace`): 2 process and
//!   2 thread workers, 32 callers, 5 s of load: several thousand calls,
//!   about 5 s of wall time.
//! - **Long**: `WORKERBUS_SOAK_SECS=<seconds>` sets the load's duration and
//!   adds a worker of each kind, e.g.
//!   `WORKERBUS_SOAK_SECS=600 cargo test -p workerbus-tests --test soak -- --nocapture`.
//!   It samples resident memory (and, with a counting allocator, the heap
//!   in use) every 60 s.
//!
//! The seed is fixed unless `WORKERBUS_SOAK_SEED=<u64, decimal or 0x-hex>`
//! sets it; it is printed first, so a failing run can be replayed (the
//! choices replay; the timing, being real, does not). The figures (calls,
//! kills, outcomes by kind, recovery times, memory) are printed at the end:
//! run with `--nocapture` to see them.
//!
//! What it checks, after the load stops: every call issued ended exactly
//! once; no call succeeded with another call's payload; no call meant to
//! outlive its deadline succeeded; no error of an unexpected kind; every
//! death was reported with the exit its kill causes; the supervisor is back
//! to all its workers running; every pending table is empty and no call
//! waits for a restart; the workers killed were reaped (no zombie children);
//! resident memory did not grow with the number of calls (in long mode: by
//! less than 2% in the load's second half, the soak's own ledger of calls
//! excluded); and at least half
//! of the calls succeeded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::broadcast::{self, error::RecvError};
use workerbus::{
    Backoff, CallOptions, Error, ExitReason, ProcessDriver, RestartPolicy, SupervisedWorker,
    Supervisor, SupervisorEvent, ThreadDriver,
};
use workerbus_tests::pb::echo::{
    EchoClient, EchoReply, EchoRequest, EchoServer, ExitRequest, SleepRequest,
};
use workerbus_tests::support::sigkill;
use workerbus_tests::{EchoWorker, heap};

const ECHO_WORKER: &str = env!("CARGO_BIN_EXE_echo-worker");

/// Counts the heap in use, to tell a leak from the allocator's keeping.
#[global_allocator]
static HEAP: workerbus_tests::heap::LiveBytes = workerbus_tests::heap::LiveBytes;

/// The seed when `WORKERBUS_SOAK_SEED` is unset.
const DEFAULT_SEED: u64 = 0x5eed_c4a0_5000;

/// How long any wait for a worker's exit, restart or recovery may take
/// before the soak fails saying which.
const PATIENCE: Duration = Duration::from_secs(30);

/// Resident memory may grow this much from the end of the warm-up to the end
/// of the load, whatever the number of calls.
const MAX_GROWTH: u64 = 32 << 20;

/// In long mode, resident memory may grow this much in the load's second
/// half, as a fraction of what it was halfway (ledger excluded): a leak
/// proportional to calls grows it as much as the first half.
const MAX_SECOND_HALF_GROWTH: f64 = 0.02;

/// In long mode, resident memory is sampled this often (or four times in
/// a shorter load).
const SAMPLE_EVERY: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// Configuration

#[derive(Debug, Clone)]
struct Config {
    seed: u64,
    load: Duration,
    warm_up: Duration,
    long: bool,
    process_workers: usize,
    thread_workers: usize,
    callers: usize,
    /// Pause between two chaos actions on one worker, in milliseconds.
    chaos_pause_ms: (u64, u64),
}

impl Config {
    fn from_env() -> Config {
        let seed = match std::env::var("WORKERBUS_SOAK_SEED") {
            Ok(text) => parse_seed(&text)
                .unwrap_or_else(|| panic!("WORKERBUS_SOAK_SEED={text:?} is not a u64")),
            Err(_) => DEFAULT_SEED,
        };
        match std::env::var("WORKERBUS_SOAK_SECS") {
            Ok(text) => {
                let secs: u64 = text
                    .trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("WORKERBUS_SOAK_SECS={text:?} is not a number"));
                assert!(secs >= 4, "WORKERBUS_SOAK_SECS must be at least 4");
                let load = Duration::from_secs(secs);
                Config {
                    seed,
                    load,
                    warm_up: (load / 10).min(Duration::from_secs(10)),
                    long: true,
                    process_workers: 3,
                    thread_workers: 3,
                    callers: 32,
                    chaos_pause_ms: (150, 900),
                }
            }
            Err(_) => Config {
                seed,
                load: Duration::from_secs(5),
                warm_up: Duration::from_secs(1),
                long: false,
                process_workers: 2,
                thread_workers: 2,
                callers: 32,
                chaos_pause_ms: (100, 500),
            },
        }
    }
}

fn parse_seed(text: &str) -> Option<u64> {
    let text = text.trim();
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(&hex.replace('_', ""), 16).ok(),
        None => text.replace('_', "").parse().ok(),
    }
}

// ---------------------------------------------------------------------------
// A small deterministic generator (splitmix64): no dependency, same choices
// for the same seed.

struct Rng(u64);

impl Rng {
    /// A generator for stream `stream` of `seed` (one per task).
    fn new(seed: u64, stream: u64) -> Rng {
        let mut rng = Rng(seed ^ stream.wrapping_mul(0xa076_1d64_78bd_642f));
        rng.next_u64();
        rng
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `low..high`.
    fn range(&mut self, low: u64, high: u64) -> u64 {
        assert!(low < high);
        low + self.next_u64() % (high - low)
    }

    fn index(&mut self, len: usize) -> usize {
        self.range(0, len as u64) as usize
    }

    fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(self.range(low, high))
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(len + 8);
        while bytes.len() < len {
            bytes.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        bytes.truncate(len);
        bytes
    }

    /// Picks one of `choices` by weight.
    fn pick<T: Copy>(&mut self, choices: &[(u32, T)]) -> T {
        let total: u64 = choices.iter().map(|&(weight, _)| u64::from(weight)).sum();
        let mut at = self.range(0, total);
        for &(weight, choice) in choices {
            if at < u64::from(weight) {
                return choice;
            }
            at -= u64::from(weight);
        }
        unreachable!("weights sum to {total}")
    }
}

// ---------------------------------------------------------------------------
// The ledger: one entry per call, four bytes each, so that its own growth
// does not pass for a leak.

/// What a call was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
enum Kind {
    /// An echo with a payload of its own, which the reply must carry.
    Echo,
    /// A short sleep with a short deadline, which a stall makes it miss.
    Sleep,
    /// An idempotent sleep: run again on the replacement if its worker dies.
    Idempotent,
    /// A sleep longer than its deadline: must time out.
    PastDeadline,
    /// An echo raced against a short timer; the loser is dropped.
    Raced,
    /// An echo in a task that is aborted after a short time.
    Aborted,
    /// Chaos: a handler that blocks its worker past its deadline.
    Stall,
    /// Chaos: the `Exit` rpc, which ends a process worker.
    Exit,
    /// The echo made on each worker once the load has stopped.
    Final,
}

const KINDS: [Kind; 9] = [
    Kind::Echo,
    Kind::Sleep,
    Kind::Idempotent,
    Kind::PastDeadline,
    Kind::Raced,
    Kind::Aborted,
    Kind::Stall,
    Kind::Exit,
    Kind::Final,
];

/// How a call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Outcome {
    Ok,
    /// It succeeded with an answer that was not its own.
    WrongPayload,
    Timeout,
    /// We stopped waiting for it: its future lost a race with a timer.
    Dropped,
    /// We stopped waiting for it: its task was aborted.
    Aborted,
    /// `Error::Cancelled` from the runtime.
    Cancelled,
    WorkerExited,
    Disconnected,
    Unavailable,
    Remote,
    Other,
}

const OUTCOMES: [Outcome; 11] = [
    Outcome::Ok,
    Outcome::WrongPayload,
    Outcome::Timeout,
    Outcome::Dropped,
    Outcome::Aborted,
    Outcome::Cancelled,
    Outcome::WorkerExited,
    Outcome::Disconnected,
    Outcome::Unavailable,
    Outcome::Remote,
    Outcome::Other,
];

const NO_OUTCOME: u8 = u8::MAX;

#[derive(Clone, Copy, Debug)]
struct Entry {
    worker: u8,
    kind: Kind,
    outcome: u8,
    ends: u8,
}

impl<T> From<&Result<T, Error>> for Outcome {
    fn from(result: &Result<T, Error>) -> Outcome {
        match result {
            Ok(_) => Outcome::Ok,
            Err(Error::Timeout { .. }) => Outcome::Timeout,
            Err(Error::Cancelled { .. }) => Outcome::Cancelled,
            Err(Error::WorkerExited { .. }) => Outcome::WorkerExited,
            Err(Error::Disconnected { .. }) => Outcome::Disconnected,
            Err(Error::Unavailable { .. }) => Outcome::Unavailable,
            Err(Error::Remote { .. }) => Outcome::Remote,
            Err(_) => Outcome::Other,
        }
    }
}

/// The most notes kept about unexpected outcomes.
const MAX_NOTES: usize = 40;

#[derive(Default)]
struct Ledger {
    entries: Mutex<Vec<Entry>>,
    /// Descriptions of the first unexpected outcomes, for the failure message.
    notes: Mutex<Vec<String>>,
}

impl Ledger {
    fn issue(&self, worker: usize, kind: Kind) -> u32 {
        let mut entries = self.entries.lock().unwrap();
        let id = u32::try_from(entries.len()).expect("fewer than 2^32 calls");
        entries.push(Entry {
            worker: u8::try_from(worker).expect("fewer than 256 workers"),
            kind,
            outcome: NO_OUTCOME,
            ends: 0,
        });
        id
    }

    fn end(&self, id: u32, outcome: Outcome) {
        let mut entries = self.entries.lock().unwrap();
        let entry = &mut entries[id as usize];
        entry.ends = entry.ends.saturating_add(1);
        if entry.outcome == NO_OUTCOME {
            entry.outcome = outcome as u8;
        }
    }

    fn note(&self, note: String) {
        let mut notes = self.notes.lock().unwrap();
        if notes.len() < MAX_NOTES {
            notes.push(note);
        }
    }

    fn len(&self) -> usize {
        self.entries.lock().unwrap().len()
    }

    /// The bytes the ledger holds, to tell its growth from the runtime's.
    fn bytes(&self) -> u64 {
        (self.entries.lock().unwrap().capacity() * size_of::<Entry>()) as u64
    }
}

// ---------------------------------------------------------------------------
// The workers and what the soak knows about each.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Driver {
    Process,
    Thread,
}

struct Target {
    name: String,
    driver: Driver,
    worker: SupervisedWorker,
    client: EchoClient,
    /// Set after a kill once its exit was seen: (killed at, exit seen at).
    /// The first call issued after the exit that succeeds ends the recovery.
    recovering: Mutex<Option<(Instant, Instant)>>,
    recoveries: Mutex<Vec<Duration>>,
    /// Kills whose recovery was not measured because the next kill came
    /// first.
    superseded: AtomicU32,
}

impl Target {
    fn recovered(&self, issued: Instant) {
        let mut recovering = self.recovering.lock().unwrap();
        if let Some((killed, exit_seen)) = *recovering
            && issued >= exit_seen
        {
            self.recoveries.lock().unwrap().push(killed.elapsed());
            *recovering = None;
        }
    }
}

struct Soak {
    seed: u64,
    ledger: Ledger,
    targets: Vec<Target>,
    stop: AtomicBool,
}

/// A call in the ledger: ends with [`Call::end`], or, dropped unended (its
/// task aborted), as [`Outcome::Aborted`].
struct Call {
    soak: Arc<Soak>,
    id: u32,
    worker: usize,
    issued: Instant,
    ended: bool,
}

impl Call {
    fn issue(soak: &Arc<Soak>, worker: usize, kind: Kind) -> Call {
        let id = soak.ledger.issue(worker, kind);
        Call {
            soak: Arc::clone(soak),
            id,
            worker,
            issued: Instant::now(),
            ended: false,
        }
    }

    fn target(&self) -> &Target {
        &self.soak.targets[self.worker]
    }

    fn end(mut self, outcome: Outcome) {
        self.ended = true;
        self.soak.ledger.end(self.id, outcome);
        if outcome == Outcome::Ok {
            self.target().recovered(self.issued);
        }
    }

    /// Ends the call with `result`, noting errors of kinds no call of the
    /// soak should meet.
    fn end_with<T>(self, result: &Result<T, Error>) {
        let outcome = Outcome::from(result);
        if let Err(error) = result
            && matches!(
                outcome,
                Outcome::Other | Outcome::Remote | Outcome::Cancelled
            )
        {
            self.soak.ledger.note(format!(
                "call {} on {}: {error:?}",
                self.id,
                self.target().name
            ));
        }
        self.end(outcome);
    }

    /// Ends an echo call, checking that the reply carries its own payload.
    fn end_echo(self, result: Result<EchoReply, Error>, sent: &EchoRequest) {
        match &result {
            Ok(reply) if reply.text == sent.text && reply.data == sent.data => {
                self.end(Outcome::Ok)
            }
            Ok(reply) => {
                self.soak.ledger.note(format!(
                    "call {} on {} sent {:?} ({} bytes) and got {:?} ({} bytes)",
                    self.id,
                    self.target().name,
                    sent.text,
                    sent.data.len(),
                    reply.text,
                    reply.data.len()
                ));
                self.end(Outcome::WrongPayload);
            }
            Err(_) => self.end_with(&result),
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.ended {
            self.soak.ledger.end(self.id, Outcome::Aborted);
        }
    }
}

fn echo_request(soak: &Soak, rng: &mut Rng, id: u32, delay_ms: u32) -> EchoRequest {
    let len = match rng.range(0, 100) {
        0..70 => rng.range(0, 256),
        70..98 => rng.range(256, 8 << 10),
        _ => rng.range(64 << 10, 256 << 10),
    };
    EchoRequest {
        text: format!("soak {:x} call {id} nonce {:x}", soak.seed, rng.next_u64()),
        data: rng.bytes(len as usize).into(),
        delay_ms,
    }
}

fn sleep_request(tag: &str, ms: u64, blocking: bool) -> SleepRequest {
    // A few fixed tags: the handler remembers every tag it has seen, and a
    // thread worker's memory is the host's.
    SleepRequest {
        tag: tag.into(),
        ms,
        blocking,
    }
}

// ---------------------------------------------------------------------------
// The callers.

async fn caller(soak: Arc<Soak>, index: u64) {
    let mut rng = Rng::new(soak.seed, 1_000 + index);
    let mix = [
        (40, Kind::Echo),
        (15, Kind::Sleep),
        (10, Kind::Idempotent),
        (10, Kind::PastDeadline),
        (15, Kind::Raced),
        (10, Kind::Aborted),
    ];
    while !soak.stop.load(Ordering::Relaxed) {
        let worker = rng.index(soak.targets.len());
        let kind = rng.pick(&mix);
        one_call(&soak, &mut rng, worker, kind).await;
    }
}

async fn one_call(soak: &Arc<Soak>, rng: &mut Rng, worker: usize, kind: Kind) {
    let client = soak.targets[worker].client.clone();
    let patient = CallOptions::new().timeout(Duration::from_secs(5));
    let call = Call::issue(soak, worker, kind);
    match kind {
        Kind::Echo | Kind::Final => {
            let delay = if rng.range(0, 4) == 0 {
                rng.range(1, 10)
            } else {
                0
            };
            let request = echo_request(soak, rng, call.id, delay as u32);
            let result = client.echo_with(request.clone(), patient).await;
            call.end_echo(result, &request);
        }
        Kind::Sleep => {
            // Within its deadline, unless a stall holds its worker up.
            let request = sleep_request("short", rng.range(1, 10), false);
            let options = CallOptions::new().timeout(Duration::from_millis(150));
            let result = client.sleep_with(request, options).await;
            call.end_with(&result);
        }
        Kind::Idempotent => {
            let request = sleep_request("idempotent", rng.range(5, 30), false);
            let result = client.sleep_with(request, patient.idempotent(true)).await;
            call.end_with(&result);
        }
        Kind::PastDeadline => {
            let request = sleep_request("past", rng.range(150, 300), false);
            let options = CallOptions::new().timeout(rng.millis(10, 40));
            let result = client.sleep_with(request, options).await;
            call.end_with(&result);
        }
        Kind::Raced => {
            let delay = rng.range(0, 20) as u32;
            let request = echo_request(soak, rng, call.id, delay);
            let timer = tokio::time::sleep(rng.millis(0, 20));
            tokio::select! {
                result = client.echo_with(request.clone(), patient) => call.end_echo(result, &request),
                () = timer => call.end(Outcome::Dropped),
            }
        }
        Kind::Aborted => {
            let delay = rng.range(0, 20) as u32;
            let request = echo_request(soak, rng, call.id, delay);
            let task = tokio::spawn(async move {
                let result = client.echo_with(request.clone(), patient).await;
                call.end_echo(result, &request);
            });
            // Load, not synchronisation: the abort lands wherever the call is.
            tokio::time::sleep(rng.millis(0, 20)).await;
            task.abort();
            match task.await {
                Ok(()) => {}
                Err(error) if error.is_cancelled() => {}
                Err(error) => std::panic::resume_unwind(error.into_panic()),
            }
        }
        Kind::Stall | Kind::Exit => unreachable!("chaos calls are made by the chaos tasks"),
    }
}

// ---------------------------------------------------------------------------
// Chaos: one task per worker, so that restarts of different workers overlap
// while each worker's own kills are told apart.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    /// `kill -KILL` on a process worker's pid.
    Sigkill,
    /// The `Exit` rpc on a process worker.
    ExitRpc,
    /// `SupervisedWorker::kill` on a thread worker.
    Kill,
    /// A blocking sleep past its deadline.
    Stall,
}

#[derive(Default)]
struct ChaosReport {
    sigkills: u32,
    exit_rpcs: u32,
    thread_kills: u32,
    stalls: u32,
    /// Restart times: from the exit seen to the replacement started.
    restarts: Vec<Duration>,
    /// Exits that were not the one the kill causes: (action, exit).
    wrong_exits: Vec<(Action, ExitReason)>,
    /// Kills skipped because the pid was no longer our child's.
    skipped: u32,
}

async fn chaos(
    soak: Arc<Soak>,
    worker: usize,
    mut events: broadcast::Receiver<SupervisorEvent>,
    pause_ms: (u64, u64),
) -> ChaosReport {
    let mut rng = Rng::new(soak.seed, worker as u64);
    let target = &soak.targets[worker];
    let mut report = ChaosReport::default();
    loop {
        // Load, not synchronisation: chaos at random moments.
        tokio::time::sleep(rng.millis(pause_ms.0, pause_ms.1)).await;
        if soak.stop.load(Ordering::Relaxed) {
            return report;
        }
        let action = match target.driver {
            Driver::Process => rng.pick(&[
                (45, Action::Sigkill),
                (20, Action::ExitRpc),
                (35, Action::Stall),
            ]),
            Driver::Thread => rng.pick(&[(60, Action::Kill), (40, Action::Stall)]),
        };
        assert!(
            target.worker.is_running(),
            "{} is not running between chaos actions",
            target.name
        );
        let killed = Instant::now();
        let expected = match action {
            Action::Stall => {
                report.stalls += 1;
                let call = Call::issue(&soak, worker, Kind::Stall);
                let request = sleep_request("stall", rng.range(100, 400), true);
                let options = CallOptions::new().timeout(rng.millis(20, 80));
                let result = target.client.sleep_with(request, options).await;
                call.end_with(&result);
                continue;
            }
            Action::Sigkill => {
                let pid = target.worker.pid().expect("a process worker has a pid");
                if !is_our_child(pid) {
                    report.skipped += 1;
                    continue;
                }
                report.sigkills += 1;
                sigkill(pid);
                ExitReason::Signal(9)
            }
            Action::ExitRpc => {
                report.exit_rpcs += 1;
                let call = Call::issue(&soak, worker, Kind::Exit);
                let result = target.client.exit(ExitRequest { code: 3 }).await;
                call.end_with(&result);
                ExitReason::Code(3)
            }
            Action::Kill => {
                report.thread_kills += 1;
                target.worker.kill();
                ExitReason::Killed
            }
        };
        let exit = next_event(&mut events, &target.name, "Exited", |event| match event {
            SupervisorEvent::Exited { worker, exit, .. } if *worker == target.name => {
                Some(exit.clone())
            }
            _ => None,
        })
        .await;
        let exit_seen = Instant::now();
        if exit != expected {
            report.wrong_exits.push((action, exit));
        }
        if target
            .recovering
            .lock()
            .unwrap()
            .replace((killed, exit_seen))
            .is_some()
        {
            target.superseded.fetch_add(1, Ordering::Relaxed);
        }
        next_event(&mut events, &target.name, "Started", |event| match event {
            SupervisorEvent::Started { worker, .. } if *worker == target.name => Some(()),
            _ => None,
        })
        .await;
        report.restarts.push(exit_seen.elapsed());
    }
}

/// The next event about `worker` that `pick` accepts; fails the soak after
/// [`PATIENCE`].
async fn next_event<T>(
    events: &mut broadcast::Receiver<SupervisorEvent>,
    worker: &str,
    what: &str,
    mut pick: impl FnMut(&SupervisorEvent) -> Option<T>,
) -> T {
    let mut lagged = 0;
    let wait = async {
        loop {
            match events.recv().await {
                Ok(event) => {
                    if let Some(found) = pick(&event) {
                        return found;
                    }
                }
                Err(RecvError::Lagged(missed)) => lagged += missed,
                Err(RecvError::Closed) => panic!("the supervisor's events ended"),
            }
        }
    };
    match tokio::time::timeout(PATIENCE, wait).await {
        Ok(found) => found,
        Err(_) => panic!(
            "no {what} event for {worker} within {PATIENCE:?} ({lagged} events missed by lagging)"
        ),
    }
}

// ---------------------------------------------------------------------------
// The process's view of itself: resident memory and children.

/// Our children: (pid, state letter, command).
fn children() -> Vec<(u32, char, String)> {
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some((state, parent, command)) = stat(pid)
            && parent == me
        {
            found.push((pid, state, command));
        }
    }
    found
}

/// A process's state letter, parent and command, from `/proc/<pid>/stat`.
fn stat(pid: u32) -> Option<(char, u32, String)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (command) state ppid ...`: the command may hold spaces and
    // parentheses, so split at the last one.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let command = text[open + 1..close].to_owned();
    let mut fields = text[close + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    Some((state, parent, command))
}

fn is_our_child(pid: u32) -> bool {
    stat(pid).is_some_and(|(state, parent, _)| parent == std::process::id() && state != 'Z')
}

// ---------------------------------------------------------------------------
// Figures.

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

fn signed_mib(from: u64, to: u64) -> f64 {
    mib(to) - mib(from)
}

fn spread(mut times: Vec<Duration>) -> String {
    if times.is_empty() {
        return "none".into();
    }
    times.sort();
    format!(
        "n={} min {:.1?} median {:.1?} max {:.1?}",
        times.len(),
        times[0],
        times[times.len() / 2],
        times[times.len() - 1]
    )
}

// ---------------------------------------------------------------------------
// The soak.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_soak_every_call_ends_once_with_its_own_answer_and_workers_recover() {
    let config = Config::from_env();
    println!(
        "soak: seed {:#x} (replay with WORKERBUS_SOAK_SEED={:#x}), {} mode, {:?} of load, \
         {} process + {} thread workers, {} callers",
        config.seed,
        config.seed,
        if config.long { "long" } else { "short" },
        config.load,
        config.process_workers,
        config.thread_workers,
        config.callers
    );
    let began = Instant::now();

    // Restarts as fast as the chaos wants them, never given up on: the soak
    // is about calls across restarts, not about intensity.
    let policy = || {
        RestartPolicy::new()
            .intensity(100_000, Duration::from_secs(10))
            .backoff(
                Backoff::exponential(Duration::from_millis(5)).max_delay(Duration::from_millis(50)),
            )
    };
    let supervisor = Supervisor::new();
    let mut targets = Vec::new();
    for index in 0..config.process_workers + config.thread_workers {
        let (name, driver) = if index < config.process_workers {
            (format!("process-{index}"), Driver::Process)
        } else {
            (
                format!("thread-{}", index - config.process_workers),
                Driver::Thread,
            )
        };
        let worker = match driver {
            Driver::Process => {
                supervisor
                    .supervise(name.clone(), ProcessDriver::new(ECHO_WORKER), policy())
                    .await
            }
            Driver::Thread => {
                let spawner = ThreadDriver::new().spawner(|| EchoServer::new(EchoWorker::new()));
                supervisor.supervise(name.clone(), spawner, policy()).await
            }
        }
        .unwrap_or_else(|error| panic!("start {name}: {error}"));
        targets.push(Target {
            client: EchoClient::new(worker.channel()),
            name,
            driver,
            worker,
            recovering: Mutex::new(None),
            recoveries: Mutex::new(Vec::new()),
            superseded: AtomicU32::new(0),
        });
    }
    let soak = Arc::new(Soak {
        seed: config.seed,
        ledger: Ledger::default(),
        targets,
        stop: AtomicBool::new(false),
    });

    // The load.
    let load_began = Instant::now();
    let callers: Vec<_> = (0..config.callers)
        .map(|index| tokio::spawn(caller(Arc::clone(&soak), index as u64)))
        .collect();
    let chaos_tasks: Vec<_> = (0..soak.targets.len())
        .map(|worker| {
            let events = supervisor.subscribe();
            tokio::spawn(chaos(
                Arc::clone(&soak),
                worker,
                events,
                config.chaos_pause_ms,
            ))
        })
        .collect();

    // Memory: after the warm-up, then (in long mode) every SAMPLE_EVERY,
    // halfway through the rest, and at the end of the load (these sleeps
    // pace measurements; nothing waits on them).
    let sample = || (resident_bytes(), soak.ledger.bytes(), soak.ledger.len());
    tokio::time::sleep(config.warm_up).await;
    let memory_warm = sample();
    let rest = config.load - config.warm_up;
    let half = rest / 2;
    let every = if config.long {
        SAMPLE_EVERY.min(rest / 4)
    } else {
        half
    };
    let mut samples = vec![(config.warm_up, memory_warm, heap::live_bytes())];
    let mut memory_half = None;
    let mut elapsed = Duration::ZERO;
    while elapsed < rest {
        let next = if memory_half.is_none() {
            (elapsed + every).min(half)
        } else {
            (elapsed + every).min(rest)
        };
        tokio::time::sleep(next - elapsed).await;
        elapsed = next;
        let memory = sample();
        samples.push((config.warm_up + elapsed, memory, heap::live_bytes()));
        if elapsed == half {
            memory_half = Some(memory);
        }
    }
    let memory_half = memory_half.expect("a sample halfway");
    let memory_end = sample();
    soak.stop.store(true, Ordering::Relaxed);
    let load_time = load_began.elapsed();

    // Every caller ends: every call has a timeout, so a caller still busy
    // after a generous bound has a call that never ended.
    let settled = tokio::time::timeout(PATIENCE, futures_util::future::join_all(callers)).await;
    match settled {
        Ok(results) => {
            for result in results {
                if let Err(error) = result {
                    std::panic::resume_unwind(error.into_panic());
                }
            }
        }
        Err(_) => {
            let entries = soak.ledger.entries.lock().unwrap();
            let unended: Vec<String> = entries
                .iter()
                .enumerate()
                .filter(|(_, entry)| entry.ends == 0)
                .take(20)
                .map(|(id, entry)| {
                    format!(
                        "call {id} ({:?} on {})",
                        entry.kind, soak.targets[entry.worker as usize].name
                    )
                })
                .collect();
            panic!(
                "callers still busy {PATIENCE:?} after the load stopped; calls that never ended: {}",
                unended.join(", ")
            );
        }
    }
    let mut chaos_report = ChaosReport::default();
    for task in chaos_tasks {
        let report = match tokio::time::timeout(PATIENCE * 2, task).await {
            Ok(Ok(report)) => report,
            Ok(Err(error)) => std::panic::resume_unwind(error.into_panic()),
            Err(_) => panic!(
                "a chaos task did not end {:?} after the load stopped",
                PATIENCE * 2
            ),
        };
        chaos_report.sigkills += report.sigkills;
        chaos_report.exit_rpcs += report.exit_rpcs;
        chaos_report.thread_kills += report.thread_kills;
        chaos_report.stalls += report.stalls;
        chaos_report.skipped += report.skipped;
        chaos_report.restarts.extend(report.restarts);
        chaos_report.wrong_exits.extend(report.wrong_exits);
    }

    // The supervisor is back to every worker running.
    let mut events = supervisor.subscribe();
    let wait_running = async {
        loop {
            if soak.targets.iter().all(|target| target.worker.is_running()) {
                return;
            }
            match events.recv().await {
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => panic!("the supervisor's events ended"),
            }
        }
    };
    if tokio::time::timeout(PATIENCE, wait_running).await.is_err() {
        let down: Vec<_> = soak
            .targets
            .iter()
            .filter(|target| !target.worker.is_running())
            .map(|target| format!("{:?}", target.worker))
            .collect();
        panic!(
            "the supervisor is not back to {} running workers {PATIENCE:?} after the load stopped: {}",
            soak.targets.len(),
            down.join(", ")
        );
    }
    // Each answers, which also ends the recovery of its last kill.
    let mut rng = Rng::new(config.seed, u64::MAX);
    for worker in 0..soak.targets.len() {
        one_call(&soak, &mut rng, worker, Kind::Final).await;
    }

    // Every pending table is empty and nothing waits for a restart.
    for target in &soak.targets {
        let channel = target.worker.channel();
        assert_eq!(
            channel.in_flight(),
            0,
            "{} still has calls in its pending table after the load stopped",
            target.name
        );
        assert_eq!(
            target.worker.calls_waiting(),
            0,
            "calls still wait for {} to restart after the load stopped",
            target.name
        );
    }

    // No zombie: every worker killed was reaped; the current ones run.
    let zombies: Vec<_> = children()
        .into_iter()
        .filter(|(_, state, _)| *state == 'Z')
        .collect();
    assert!(
        zombies.is_empty(),
        "zombie children (killed workers not reaped): {zombies:?}"
    );
    for target in soak
        .targets
        .iter()
        .filter(|target| target.driver == Driver::Process)
    {
        let pid = target.worker.pid().expect("a process worker has a pid");
        assert!(
            is_our_child(pid),
            "{}'s pid {pid} is not a live child of ours",
            target.name
        );
    }

    // The ledger.
    let entries = soak.ledger.entries.lock().unwrap().clone();
    let notes = soak.ledger.notes.lock().unwrap().clone();
    let calls = entries.len();
    let mut table: HashMap<(Kind, u8), usize> = HashMap::new();
    let mut unended = Vec::new();
    let mut ended_twice = Vec::new();
    for (id, entry) in entries.iter().enumerate() {
        match entry.ends {
            0 => unended.push(id),
            1 => {}
            _ => ended_twice.push(id),
        }
        *table.entry((entry.kind, entry.outcome)).or_default() += 1;
    }
    let count = |kind: Option<Kind>, outcome: Outcome| -> usize {
        table
            .iter()
            .filter(|((k, o), _)| kind.is_none_or(|kind| kind == *k) && *o == outcome as u8)
            .map(|(_, n)| n)
            .sum()
    };
    let ended: usize = entries.iter().map(|entry| usize::from(entry.ends)).sum();

    // Figures.
    let mut recoveries = Vec::new();
    let mut recoveries_by = HashMap::<&str, Vec<Duration>>::new();
    let mut superseded = 0;
    for target in &soak.targets {
        let times = target.recoveries.lock().unwrap().clone();
        let label = match target.driver {
            Driver::Process => "process",
            Driver::Thread => "thread",
        };
        recoveries_by.entry(label).or_default().extend(&times);
        recoveries.extend(times);
        superseded += target.superseded.load(Ordering::Relaxed);
        assert!(
            target.recovering.lock().unwrap().is_none(),
            "{}'s last kill was never followed by a successful call",
            target.name
        );
    }
    let restarts: u32 = soak
        .targets
        .iter()
        .map(|target| target.worker.restarts())
        .sum();
    let kills = chaos_report.sigkills + chaos_report.exit_rpcs + chaos_report.thread_kills;
    println!("soak: figures");
    println!(
        "  wall time        {:.1?} (load {:.1?})",
        began.elapsed(),
        load_time
    );
    println!(
        "  calls            {calls} ({:.0}/s), {} by chaos",
        calls as f64 / load_time.as_secs_f64(),
        entries
            .iter()
            .filter(|entry| matches!(entry.kind, Kind::Stall | Kind::Exit))
            .count()
    );
    println!(
        "  kills            {kills}: {} SIGKILL, {} Exit rpc (process), {} kill() (thread); \
         {} stalls; {} skipped; {restarts} restarts",
        chaos_report.sigkills,
        chaos_report.exit_rpcs,
        chaos_report.thread_kills,
        chaos_report.stalls,
        chaos_report.skipped
    );
    println!("  outcomes");
    for outcome in OUTCOMES {
        let total = count(None, outcome);
        if total == 0 {
            continue;
        }
        let by_kind: Vec<String> = KINDS
            .iter()
            .filter_map(|&kind| {
                let n = count(Some(kind), outcome);
                (n > 0).then(|| format!("{kind:?} {n}"))
            })
            .collect();
        println!(
            "    {:<14} {total:>8}  ({})",
            format!("{outcome:?}"),
            by_kind.join(", ")
        );
    }
    println!(
        "  recovery         {} (kill to the next successful call)",
        spread(recoveries.clone())
    );
    for (label, times) in &recoveries_by {
        println!("    {label:<14} {}", spread(times.clone()));
    }
    println!(
        "  restart          {} (exit seen to started)",
        spread(chaos_report.restarts.clone())
    );
    println!("  superseded       {superseded} kills (the next kill came before a success)");
    println!(
        "  memory           {:.1} MiB after warm-up ({} calls), {:.1} MiB halfway ({} calls), \
         {:.1} MiB at the end ({} calls); ledger {:.1} MiB",
        mib(memory_warm.0),
        memory_warm.2,
        mib(memory_half.0),
        memory_half.2,
        mib(memory_end.0),
        memory_end.2,
        mib(memory_end.1)
    );
    if config.long {
        let series: Vec<String> = samples
            .iter()
            .map(|(at, (rss, ledger, _), heap)| {
                format!(
                    "{}s {:.1}/{:.1}",
                    at.as_secs(),
                    mib(rss.saturating_sub(*ledger)),
                    mib(heap.saturating_sub(*ledger))
                )
            })
            .collect();
        println!(
            "  memory samples   {} (MiB resident/heap in use, ledger excluded)",
            series.join(", ")
        );
    }
    for note in &notes {
        println!("  note: {note}");
    }

    // The assertions, most fundamental first.
    assert!(
        unended.is_empty(),
        "{} calls never ended, e.g. {:?}",
        unended.len(),
        &unended[..unended.len().min(10)]
    );
    assert!(
        ended_twice.is_empty(),
        "{} calls ended more than once, e.g. {:?}",
        ended_twice.len(),
        &ended_twice[..ended_twice.len().min(10)]
    );
    assert_eq!(ended, calls, "outcomes recorded vs calls issued");
    assert_eq!(
        count(None, Outcome::WrongPayload),
        0,
        "calls succeeded with an answer not their own: {notes:#?}"
    );
    for kind in [Kind::PastDeadline, Kind::Stall] {
        assert_eq!(
            count(Some(kind), Outcome::Ok),
            0,
            "{kind:?} calls, which outlive their deadline, succeeded"
        );
    }
    for outcome in [
        Outcome::Other,
        Outcome::Remote,
        Outcome::Cancelled,
        Outcome::Unavailable,
    ] {
        assert_eq!(
            count(None, outcome),
            0,
            "calls ended {outcome:?}, which nothing in the soak should cause: {notes:#?}"
        );
    }
    for outcome in [Outcome::WorkerExited, Outcome::Disconnected] {
        assert_eq!(
            count(Some(Kind::Idempotent), outcome),
            0,
            "idempotent calls ended {outcome:?} instead of running again on the replacement"
        );
    }
    assert_eq!(
        count(Some(Kind::Final), Outcome::Ok),
        soak.targets.len(),
        "final calls: {notes:#?}"
    );
    assert!(
        chaos_report.wrong_exits.is_empty(),
        "deaths reported with another exit than their kill's: {:?}",
        chaos_report.wrong_exits
    );
    assert!(
        kills > 0 && chaos_report.stalls > 0,
        "the chaos did nothing"
    );
    let ok = count(None, Outcome::Ok);
    assert!(
        ok * 2 >= calls,
        "only {ok} of {calls} calls succeeded: too few for the soak to mean anything"
    );
    assert!(calls >= 500, "only {calls} calls in {load_time:?}");

    let ledger_growth = memory_end.1.saturating_sub(memory_warm.1);
    let growth = memory_end
        .0
        .saturating_sub(memory_warm.0)
        .saturating_sub(ledger_growth);
    assert!(
        growth < MAX_GROWTH,
        "resident memory grew {:.1} MiB (ledger excluded) over {} calls after the warm-up; \
         at most {:.0} MiB allowed",
        mib(growth),
        memory_end.2 - memory_warm.2,
        mib(MAX_GROWTH)
    );
    if config.long {
        let first_ledger = memory_half.1.saturating_sub(memory_warm.1);
        let first = signed_mib(memory_warm.0, memory_half.0.saturating_sub(first_ledger));
        let second_ledger = memory_end.1.saturating_sub(memory_half.1);
        let second = memory_end
            .0
            .saturating_sub(memory_half.0)
            .saturating_sub(second_ledger);
        let at_half = memory_half.0.saturating_sub(memory_half.1) as f64;
        let share = second as f64 / at_half;
        println!(
            "  memory halves    first {first:+.1} MiB, second {:+.1} MiB ({:+.2}% of {:.1} MiB; \
             ledger excluded)",
            mib(second),
            100.0 * share,
            mib(at_half as u64)
        );
        assert!(
            share < MAX_SECOND_HALF_GROWTH,
            "resident memory grew {:.1} MiB ({:.2}%) in the second half of the load ({} calls; \
             the first half: {first:+.1} MiB): more than {}%, it grows with the calls",
            mib(second),
            100.0 * share,
            memory_end.2 - memory_half.2,
            100.0 * MAX_SECOND_HALF_GROWTH
        );
    }

    // Shutdown reaps every worker process.
    supervisor.shutdown().await;
    let left = children();
    assert!(
        left.iter()
            .all(|(_, _, command)| !command.starts_with("echo-worker")),
        "worker processes left after shutdown: {left:?}"
    );
}

/// This process's resident memory, in bytes.
fn resident_bytes() -> u64 {
    workerbus::resident_memory().expect("resident memory in /proc/self/status")
}
