//! [`ConcurrencyLimit`] and [`RateLimit`]: host-side limits on calls.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::{CallInfo, Middleware, Next};
use crate::error::Error;
use crate::payload::Payload;
use crate::sync::lock;

fn timeout(call: &CallInfo) -> Error {
    Error::Timeout {
        method: call.method_name().clone(),
        after: call.timeout().unwrap_or_default(),
    }
}

/// At most `max` calls through the channel at once; the others wait for a
/// slot within their own timeout (then fail with [`Error::Timeout`]).
///
/// Clones share the limit: install clones on several channels to limit
/// them together.
#[derive(Clone, Debug)]
pub struct ConcurrencyLimit {
    permits: Arc<Semaphore>,
}

impl ConcurrencyLimit {
    /// A limit of `max` calls at once (at least 1).
    pub fn new(max: usize) -> ConcurrencyLimit {
        ConcurrencyLimit {
            permits: Arc::new(Semaphore::new(max.max(1))),
        }
    }
}

impl Middleware for ConcurrencyLimit {
    async fn call(&self, call: &CallInfo, next: Next<'_>) -> Result<Payload, Error> {
        let acquire = self.permits.acquire();
        let permit = match call.tokio_deadline() {
            Some(deadline) => tokio::time::timeout_at(deadline, acquire)
                .await
                .map_err(|_| timeout(call))?,
            None => acquire.await,
        };
        // The semaphore is never closed.
        let _permit = permit.map_err(|_| timeout(call))?;
        next.run().await
    }
}

/// At most `per_second` calls a second through the channel on average, in
/// bursts of at most `burst` (a token bucket). A call beyond the rate waits
/// for its turn within its own timeout (then fails with [`Error::Timeout`]).
///
/// Clones share the bucket.
#[derive(Clone, Debug)]
pub struct RateLimit {
    per_second: f64,
    burst: f64,
    bucket: Arc<Mutex<Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimit {
    /// A rate of `per_second` calls (more than 0) with bursts of `burst`
    /// (at least 1); the bucket starts full.
    pub fn new(per_second: f64, burst: u32) -> RateLimit {
        let burst = f64::from(burst.max(1));
        RateLimit {
            per_second: if per_second.is_finite() && per_second > 0.0 {
                per_second
            } else {
                1.0
            },
            burst,
            bucket: Arc::new(Mutex::new(Bucket {
                tokens: burst,
                updated: Instant::now(),
            })),
        }
    }

    /// Takes a token, or says when one will be free (the token is then
    /// reserved: callers queue in arrival order).
    fn take(&self) -> Option<Duration> {
        let mut bucket = lock(&self.bucket);
        let now = Instant::now();
        let refill = now.duration_since(bucket.updated).as_secs_f64() * self.per_second;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.updated = now;
        bucket.tokens -= 1.0;
        (bucket.tokens < 0.0).then(|| Duration::from_secs_f64(-bucket.tokens / self.per_second))
    }

    fn give_back(&self) {
        let mut bucket = lock(&self.bucket);
        bucket.tokens = (bucket.tokens + 1.0).min(self.burst);
    }
}

impl Middleware for RateLimit {
    async fn call(&self, call: &CallInfo, next: Next<'_>) -> Result<Payload, Error> {
        if let Some(wait) = self.take() {
            let ready = Instant::now() + wait;
            if call
                .tokio_deadline()
                .is_some_and(|deadline| deadline < ready)
            {
                // Its turn comes after its deadline: do not hold the token.
                self.give_back();
                return Err(timeout(call));
            }
            tokio::time::sleep_until(ready).await;
        }
        next.run().await
    }
}
