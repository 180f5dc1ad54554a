//! [`Metrics`]: per message name, success and failure counts and a latency
//! histogram, readable in-process and, with the `metrics` feature, exported
//! through the `metrics` facade.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{CallInfo, Middleware, Next, ServerMiddleware, ServerNext, Side};
use crate::error::{Error, Status};
use crate::payload::Payload;
use crate::sync::lock;

/// Upper bounds of the latency buckets, in microseconds: a 1-2-5 series from
/// 1 µs to 100 s, then everything longer.
const BOUNDS_US: [u64; 25] = [
    1,
    2,
    5,
    10,
    20,
    50,
    100,
    200,
    500,
    1_000,
    2_000,
    5_000,
    10_000,
    20_000,
    50_000,
    100_000,
    200_000,
    500_000,
    1_000_000,
    2_000_000,
    5_000_000,
    10_000_000,
    20_000_000,
    50_000_000,
    100_000_000,
];

/// Counts calls and their latencies, per side and message name.
///
/// Cloning shares the counts: install one `Metrics` on a channel (host) or
/// serve options (worker) and keep a clone to read [`snapshot`](Metrics::snapshot).
///
/// ```
/// use workerbus::Metrics;
///
/// let metrics = Metrics::new();
/// // channel.with_middleware(metrics.clone()) ...
/// assert!(metrics.snapshot().methods().is_empty());
/// ```
///
/// With the crate's `metrics` feature, each call is also recorded through the
/// [`metrics`](https://docs.rs/metrics) facade: the counter
/// `workerbus_calls_total` (labels `side`, `method`, `outcome`) and the
/// histogram `workerbus_call_duration_seconds` (labels `side`, `method`).
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    counts: Arc<Mutex<BTreeMap<(Side, String), MethodMetrics>>>,
}

impl Metrics {
    /// Empty counts.
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// The counts so far, by side and message name.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let counts = lock(&self.counts);
        MetricsSnapshot {
            methods: counts.values().cloned().collect(),
        }
    }

    fn record(&self, side: Side, method: &str, outcome: Outcome, elapsed: Duration) {
        {
            let mut counts = lock(&self.counts);
            let entry = counts
                .entry((side, method.to_owned()))
                .or_insert_with(|| MethodMetrics::new(side, method));
            entry.calls += 1;
            match outcome {
                Outcome::Ok => entry.ok += 1,
                Outcome::Timeout => {
                    entry.failed += 1;
                    entry.timeouts += 1;
                }
                Outcome::Failed => entry.failed += 1,
            }
            entry.latency.record(elapsed);
        }
        #[cfg(feature = "metrics")]
        export(side, method, outcome, elapsed);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    Timeout,
    Failed,
}

#[cfg(feature = "metrics")]
fn export(side: Side, method: &str, outcome: Outcome, elapsed: Duration) {
    let side = match side {
        Side::Host => "host",
        Side::Worker => "worker",
    };
    let outcome = match outcome {
        Outcome::Ok => "ok",
        Outcome::Timeout => "timeout",
        Outcome::Failed => "failed",
    };
    metrics::counter!("workerbus_calls_total", "side" => side, "method" => method.to_owned(), "outcome" => outcome)
        .increment(1);
    metrics::histogram!("workerbus_call_duration_seconds", "side" => side, "method" => method.to_owned())
        .record(elapsed.as_secs_f64());
}

impl Middleware for Metrics {
    async fn call(&self, call: &CallInfo, next: Next<'_>) -> Result<Payload, Error> {
        let started = Instant::now();
        let result = next.run().await;
        let outcome = match &result {
            Ok(_) => Outcome::Ok,
            Err(Error::Timeout { .. }) => Outcome::Timeout,
            Err(_) => Outcome::Failed,
        };
        self.record(Side::Host, call.method(), outcome, started.elapsed());
        result
    }
}

impl ServerMiddleware for Metrics {
    async fn handle(&self, call: &CallInfo, next: ServerNext<'_>) -> Result<Payload, Status> {
        let started = Instant::now();
        let result = next.run().await;
        let outcome = if result.is_ok() {
            Outcome::Ok
        } else {
            Outcome::Failed
        };
        self.record(Side::Worker, call.method(), outcome, started.elapsed());
        result
    }
}

/// All counts, as [`Metrics::snapshot`] returns them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsSnapshot {
    methods: Vec<MethodMetrics>,
}

impl MetricsSnapshot {
    /// One entry per side and message name that has seen a call.
    pub fn methods(&self) -> &[MethodMetrics] {
        &self.methods
    }

    /// The entry for a message name on a side, if it has seen a call.
    pub fn method(&self, side: Side, method: &str) -> Option<&MethodMetrics> {
        self.methods
            .iter()
            .find(|entry| entry.side == side && entry.method == method)
    }
}

/// The counts of one message name on one side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MethodMetrics {
    side: Side,
    method: String,
    calls: u64,
    ok: u64,
    failed: u64,
    timeouts: u64,
    latency: Histogram,
}

impl MethodMetrics {
    fn new(side: Side, method: &str) -> MethodMetrics {
        MethodMetrics {
            side,
            method: method.to_owned(),
            calls: 0,
            ok: 0,
            failed: 0,
            timeouts: 0,
            latency: Histogram::default(),
        }
    }

    /// The side.
    pub fn side(&self) -> Side {
        self.side
    }

    /// The message name.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// Calls (attempts, on the host) that ended: `ok + failed`.
    pub fn calls(&self) -> u64 {
        self.calls
    }

    /// Calls that succeeded.
    pub fn ok(&self) -> u64 {
        self.ok
    }

    /// Calls that failed, timeouts included.
    pub fn failed(&self) -> u64 {
        self.failed
    }

    /// Calls that timed out (host side).
    pub fn timeouts(&self) -> u64 {
        self.timeouts
    }

    /// How long the calls took.
    pub fn latency(&self) -> &Histogram {
        &self.latency
    }
}

/// Durations counted in fixed buckets (a 1-2-5 series from 1 µs to 100 s).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Histogram {
    counts: [u64; BOUNDS_US.len() + 1],
    total_us: u128,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram {
            counts: [0; BOUNDS_US.len() + 1],
            total_us: 0,
        }
    }
}

impl Histogram {
    fn record(&mut self, elapsed: Duration) {
        let us = elapsed.as_micros();
        let bucket = BOUNDS_US
            .iter()
            .position(|&bound| us <= u128::from(bound))
            .unwrap_or(BOUNDS_US.len());
        self.counts[bucket] += 1;
        self.total_us += us;
    }

    /// How many durations were recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The mean duration.
    pub fn mean(&self) -> Option<Duration> {
        let count = self.count();
        (count > 0).then(|| Duration::from_micros((self.total_us / u128::from(count)) as u64))
    }

    /// An upper bound of the `q` quantile (0 to 1): the upper bound of the
    /// bucket it falls in (`None` if empty or beyond 100 s).
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = ((count as f64) * q.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (bucket, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return BOUNDS_US.get(bucket).map(|&us| Duration::from_micros(us));
            }
        }
        None
    }

    /// The buckets: (upper bound, count); the last bound is `None`
    /// (beyond 100 s).
    pub fn buckets(&self) -> impl Iterator<Item = (Option<Duration>, u64)> + '_ {
        self.counts.iter().enumerate().map(|(bucket, &count)| {
            (
                BOUNDS_US.get(bucket).map(|&us| Duration::from_micros(us)),
                count,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_bucket_upper_bounds() {
        let mut histogram = Histogram::default();
        for us in [3, 4, 40, 400, 4000] {
            histogram.record(Duration::from_micros(us));
        }
        assert_eq!(histogram.count(), 5);
        assert_eq!(histogram.quantile(0.0), Some(Duration::from_micros(5)));
        assert_eq!(histogram.quantile(0.5), Some(Duration::from_micros(50)));
        assert_eq!(histogram.quantile(1.0), Some(Duration::from_micros(5_000)));
        assert_eq!(histogram.mean(), Some(Duration::from_micros(889)));
        histogram.record(Duration::from_secs(1_000));
        assert_eq!(histogram.quantile(1.0), None, "beyond the last bucket");
    }

    #[test]
    fn an_empty_histogram_has_no_quantile_no_mean_and_empty_buckets() {
        let histogram = Histogram::default();
        assert_eq!(histogram.quantile(0.5), None);
        assert_eq!(histogram.mean(), None);
        assert!(histogram.buckets().all(|(_, count)| count == 0));
    }

    #[test]
    fn buckets_count_each_duration_under_the_first_bound_above_it() {
        let mut histogram = Histogram::default();
        for elapsed in [
            Duration::from_micros(3),
            Duration::from_micros(5),
            Duration::from_micros(6),
            Duration::from_secs(1_000),
        ] {
            histogram.record(elapsed);
        }
        let buckets: Vec<(Option<Duration>, u64)> = histogram.buckets().collect();
        assert_eq!(buckets.len(), BOUNDS_US.len() + 1);
        assert_eq!(buckets[0], (Some(Duration::from_micros(1)), 0));
        assert_eq!(buckets[2], (Some(Duration::from_micros(5)), 2));
        assert_eq!(buckets[3], (Some(Duration::from_micros(10)), 1));
        assert_eq!(buckets[BOUNDS_US.len()], (None, 1), "beyond 100 s");
        let bounds: Vec<Duration> = buckets.iter().filter_map(|(bound, _)| *bound).collect();
        assert!(bounds.windows(2).all(|pair| pair[0] < pair[1]));
        assert_eq!(bounds.last(), Some(&Duration::from_secs(100)));
        let total: u64 = buckets.iter().map(|(_, count)| count).sum();
        assert_eq!(total, histogram.count());
    }

    #[test]
    fn method_metrics_name_their_side_and_message() {
        let entry = MethodMetrics::new(Side::Worker, "embedder.embed");
        assert_eq!(entry.side(), Side::Worker);
        assert_eq!(entry.method(), "embedder.embed");
        assert_eq!((entry.calls(), entry.ok(), entry.failed()), (0, 0, 0));
    }
}
