//! Control exchanges: calls answered by a worker's runtime, not its handlers.
//!
//! They travel as ordinary `REQUEST`s under reserved message names starting
//! with `$workerbus.` (which generated services cannot use), so they share the
//! call machinery: ids, timeouts, the pending table. The serve loop answers
//! the health report itself, on every driver, and routes every other one to
//! the connection's [`Control`], which a driver supplies (the process
//! driver's handshake and detach live in `driver/process/handshake.rs`).
//! Their messages are protobuf, defined in code rather than in a `.proto`
//! so the runtime needs no build step.

use bytes::Bytes;

use crate::error::Status;

/// The prefix reserved for control exchanges.
pub(crate) const PREFIX: &str = "$workerbus.";
/// A health report, for supervision.
pub(crate) const HEALTH: &str = "$workerbus.health";

/// The version of the protocol in `docs/PROTOCOL.md`.
pub const PROTOCOL_VERSION: u32 = 4;

/// Answers a connection's control exchanges other than the health report:
/// what a driver adds to the serve loop.
pub(crate) trait Control: Send + Sync {
    /// The exchange a peer must complete before anything else, if any (a
    /// process worker's handshake).
    fn greeting(&self) -> Option<&'static str>;

    /// Answers the greeting with `payload`; an error refuses the peer, whose
    /// connection closes once it is told why.
    fn greet(&self, payload: Bytes) -> Result<Bytes, Status>;

    /// Answers the control exchange `method` (other than the greeting) with
    /// `payload`; an error fails the exchange, and the connection goes on.
    fn exchange(&self, method: &str, payload: Bytes) -> Result<Bytes, Status>;

    /// The peer asked the worker to shut down: stop accepting new peers now,
    /// before the calls in flight finish.
    fn shutting_down(&self) {}
}

/// The answer to [`HEALTH`]: see [`HealthReport`](crate::HealthReport).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Health {
    #[prost(uint64, tag = "1")]
    pub(crate) memory_bytes: u64,
    #[prost(uint64, tag = "2")]
    pub(crate) processed: u64,
    #[prost(uint64, tag = "3")]
    pub(crate) uptime_ms: u64,
    #[prost(uint32, tag = "4")]
    pub(crate) running: u32,
    #[prost(uint32, tag = "5")]
    pub(crate) stalled: u32,
}

/// A worker's health, as its runtime reports it (see
/// [`Channel::health`](crate::Channel::health)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HealthReport {
    /// Resident memory of the worker's process, in bytes (0 where the system
    /// does not say; for a thread worker, the whole host process's).
    pub memory_bytes: u64,
    /// Calls whose handlers ran to the end since the worker started serving.
    pub processed: u64,
    /// How long the worker has served its connection.
    pub uptime: std::time::Duration,
    /// Calls running now.
    pub running: u32,
    /// Running calls more than a second past their deadline: their handlers
    /// have not yielded since (e.g. a busy loop), so they cannot be cancelled.
    pub stalled: u32,
}

/// This process's resident memory in bytes, on systems that say (Linux's
/// `/proc/self/status`): what [`HealthReport::memory_bytes`] reports, for
/// a handler that reports its own.
///
/// ```
/// let resident = workerbus::resident_memory();
/// if cfg!(target_os = "linux") {
///     assert!(resident.unwrap() > 0);
/// }
/// ```
pub fn resident_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kilobytes: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kilobytes * 1024)
}

impl From<Health> for HealthReport {
    fn from(health: Health) -> HealthReport {
        HealthReport {
            memory_bytes: health.memory_bytes,
            processed: health.processed,
            uptime: std::time::Duration::from_millis(health.uptime_ms),
            running: health.running,
            stalled: health.stalled,
        }
    }
}
