//! Helpers shared by the benchmarks: percentiles of a sample.

use std::time::Duration;

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
