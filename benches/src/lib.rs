//! What the benchmarks share: the [`Echo`] interface every subject of a
//! comparison implements (workerbus on each driver, the raw baselines, the
//! peers), the scenarios run against it, and percentiles of a sample.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

pub mod baselines;
pub mod counting;
#[cfg(feature = "peers")]
pub mod peers;
pub mod scenarios;
pub mod subjects;

/// The environment variable that makes a benchmark binary a server process
/// for a comparison (its value names the role; the first argument is the
/// socket path). Benchmarks re-run themselves with it, so that client and
/// server live in separate processes, as they would in production.
pub const ROLE_ENV: &str = "WORKERBUS_BENCH_ROLE";

/// A connected client of an echo service: every subject of a comparison,
/// whatever carries its calls.
pub trait Echo: Clone + Send + Sync + 'static {
    /// Sends `payload` and returns the answer, a payload of the same length.
    /// Panics on failure: a failed call invalidates the measurement.
    fn echo(&self, payload: Bytes) -> impl Future<Output = Bytes> + Send;
}

/// A connected client of a service that makes a fresh batch of vectors for
/// every call (the fresh-message scenario): every subject that can serve
/// it.
pub trait MakeVectors: Clone + Send + Sync + 'static {
    /// Asks for `count` floats, made for this call, and returns them.
    /// Panics on failure.
    fn make(&self, count: u32) -> impl Future<Output = Vec<f32>> + Send;
}

/// What every server of the fresh-message scenario answers: `count` floats,
/// made now.
pub fn fresh_vectors(count: u32) -> Vec<f32> {
    (0..count).map(|i| i as f32 * 0.25).collect()
}

/// The `p`-th percentile (0 to 1) of `samples`, by nearest rank.
pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// A one-line summary: median, p90, min and max.
pub fn summary(samples: &[Duration]) -> String {
    format!(
        "median {:>8.2?}  p90 {:>8.2?}  min {:>8.2?}  max {:>8.2?}  (n = {})",
        percentile(samples, 0.5),
        percentile(samples, 0.9),
        percentile(samples, 0.0),
        percentile(samples, 1.0),
        samples.len()
    )
}
