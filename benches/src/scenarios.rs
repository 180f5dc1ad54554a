//! The scenarios of a comparison, each run against any [`Echo`] for a
//! fixed time, so that fast and slow subjects are measured alike.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::{Echo, MakeVectors};

/// A payload of `size` bytes.
pub fn payload(size: usize) -> Bytes {
    Bytes::from(vec![0x5a; size])
}

/// The latency of each call of `size` bytes, made one after another for
/// `time`.
pub async fn sequential<E: Echo>(echo: &E, size: usize, time: Duration) -> Vec<Duration> {
    let payload = payload(size);
    let mut samples = Vec::with_capacity(100_000);
    let end = Instant::now() + time;
    loop {
        let start = Instant::now();
        if start >= end {
            return samples;
        }
        let answer = echo.echo(payload.clone()).await;
        samples.push(start.elapsed());
        assert_eq!(answer.len(), size, "an echo of another length");
    }
}

/// Calls per second with `in_flight` calls of `size` bytes outstanding at
/// all times, for `time` (each of `in_flight` tasks calls in a loop).
pub async fn in_flight<E: Echo>(echo: &E, size: usize, in_flight: usize, time: Duration) -> f64 {
    let payload = payload(size);
    let start = Instant::now();
    let end = start + time;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..in_flight {
        let echo = echo.clone();
        let payload = payload.clone();
        tasks.spawn(async move {
            let mut calls = 0u64;
            while Instant::now() < end {
                let answer = echo.echo(payload.clone()).await;
                assert_eq!(answer.len(), payload.len(), "an echo of another length");
                calls += 1;
            }
            calls
        });
    }
    let mut calls = 0;
    while let Some(done) = tasks.join_next().await {
        calls += done.expect("a calling task panicked");
    }
    calls as f64 / start.elapsed().as_secs_f64()
}

/// Bytes per second moved by calls of `size` bytes one after another for
/// `time`, counting the request and the response.
pub async fn transfer<E: Echo>(echo: &E, size: usize, time: Duration) -> f64 {
    let samples = sequential(echo, size, time).await;
    let elapsed: Duration = samples.iter().sum();
    (2 * size * samples.len()) as f64 / elapsed.as_secs_f64()
}

/// Calls per second with `in_flight` calls outstanding at all times, for
/// `time`, each answered by `count` floats the server made for it.
pub async fn fresh_in_flight<V: MakeVectors>(
    subject: &V,
    count: u32,
    in_flight: usize,
    time: Duration,
) -> f64 {
    let start = Instant::now();
    let end = start + time;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..in_flight {
        let subject = subject.clone();
        tasks.spawn(async move {
            let mut calls = 0u64;
            while Instant::now() < end {
                let values = subject.make(count).await;
                assert_eq!(values.len(), count as usize, "another number of floats");
                calls += 1;
            }
            calls
        });
    }
    let mut calls = 0;
    while let Some(done) = tasks.join_next().await {
        calls += done.expect("a calling task panicked");
    }
    calls as f64 / start.elapsed().as_secs_f64()
}
