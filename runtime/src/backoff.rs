//! [`Backoff`]: how long to wait before the next attempt, growing exponentially.

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

/// Delays between attempts: `initial × multiplierⁿ⁻¹` before the n-th retry,
/// capped at a maximum, each shortened by a random fraction up to `jitter` so
/// that callers that failed together do not retry together.
///
/// The default starts at 100 ms, doubles, stops growing at 5 s and has 20 %
/// jitter: 100 ms, 200 ms, 400 ms... each between 80 % and 100 % of that.
///
/// ```
/// use std::time::Duration;
/// use workerbus::Backoff;
///
/// let backoff = Backoff::exponential(Duration::from_millis(10))
///     .max_delay(Duration::from_millis(50))
///     .jitter(0.0);
/// assert_eq!(backoff.delay(1), Duration::from_millis(10));
/// assert_eq!(backoff.delay(2), Duration::from_millis(20));
/// assert_eq!(backoff.delay(3), Duration::from_millis(40));
/// assert_eq!(backoff.delay(4), Duration::from_millis(50));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    multiplier: f64,
    jitter: f64,
}

impl Backoff {
    /// Exponential backoff from `initial`, doubling, capped at 5 s, no jitter.
    pub const fn exponential(initial: Duration) -> Backoff {
        Backoff {
            initial,
            max: Duration::from_secs(5),
            multiplier: 2.0,
            jitter: 0.0,
        }
    }

    /// The same delay before every retry.
    pub const fn constant(delay: Duration) -> Backoff {
        Backoff {
            initial: delay,
            max: delay,
            multiplier: 1.0,
            jitter: 0.0,
        }
    }

    /// Caps the delay.
    #[must_use]
    pub const fn max_delay(mut self, max: Duration) -> Backoff {
        self.max = max;
        self
    }

    /// Sets the growth factor between consecutive delays (at least 1).
    #[must_use]
    pub fn multiplier(mut self, multiplier: f64) -> Backoff {
        self.multiplier = if multiplier.is_finite() {
            multiplier.max(1.0)
        } else {
            1.0
        };
        self
    }

    /// Sets the largest fraction (0 to 1) by which a delay is randomly shortened.
    #[must_use]
    pub fn jitter(mut self, fraction: f64) -> Backoff {
        self.jitter = if fraction.is_finite() {
            fraction.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }

    /// The delay before retry number `retry` (1 for the first retry) without
    /// jitter: the upper bound of [`delay`](Backoff::delay).
    pub fn nominal(&self, retry: u32) -> Duration {
        let exponent = retry.saturating_sub(1).min(1024) as i32;
        let secs = self.initial.as_secs_f64() * self.multiplier.powi(exponent);
        // NaN (0 × ∞) and infinity fall to the cap too.
        if secs.is_finite() && secs < self.max.as_secs_f64() {
            Duration::from_secs_f64(secs)
        } else {
            self.max
        }
    }

    /// The delay before retry number `retry` (1 for the first retry), with jitter.
    pub fn delay(&self, retry: u32) -> Duration {
        self.delay_with(retry, random_unit())
    }

    /// [`delay`](Backoff::delay) with the random draw given: `unit` in `[0, 1)`
    /// shortens the nominal delay by `unit × jitter` of itself.
    pub fn delay_with(&self, retry: u32, unit: f64) -> Duration {
        let nominal = self.nominal(retry);
        if self.jitter == 0.0 {
            return nominal;
        }
        nominal.mul_f64(1.0 - self.jitter * unit.clamp(0.0, 1.0))
    }
}

impl Backoff {
    /// [`Backoff::default`], for constants.
    pub(crate) const DEFAULT: Backoff = Backoff {
        jitter: 0.2,
        ..Backoff::exponential(Duration::from_millis(100))
    };
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::DEFAULT
    }
}

/// A uniform draw from `[0, 1)`. Every `RandomState` is freshly keyed, which is
/// all the randomness jitter needs, without a generator crate or global state.
fn random_unit() -> f64 {
    let bits = RandomState::new().hash_one(0u8);
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn default_grows_from_100ms_and_caps_at_5s() {
        let backoff = Backoff::default();
        assert_eq!(backoff.nominal(1), Duration::from_millis(100));
        assert_eq!(backoff.nominal(2), Duration::from_millis(200));
        assert_eq!(backoff.nominal(3), Duration::from_millis(400));
        assert_eq!(backoff.nominal(7), Duration::from_secs(5));
        assert_eq!(backoff.nominal(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn extreme_settings_never_panic() {
        let zero = Backoff::exponential(Duration::ZERO).multiplier(10.0);
        assert_eq!(zero.delay(400), Duration::from_secs(5));
        assert_eq!(zero.delay(1), Duration::ZERO);
        let huge = Backoff::exponential(Duration::MAX)
            .max_delay(Duration::MAX)
            .jitter(1.0);
        assert!(huge.delay(u32::MAX) <= Duration::MAX);
    }

    #[test]
    fn constant_never_grows() {
        let backoff = Backoff::constant(Duration::from_millis(30));
        assert_eq!(backoff.delay(1), Duration::from_millis(30));
        assert_eq!(backoff.delay(50), Duration::from_millis(30));
    }

    proptest! {
        #[test]
        fn jittered_delay_stays_within_bounds(retry in 1u32..40, unit in 0.0f64..1.0, jitter in 0.0f64..=1.0) {
            let backoff = Backoff::default().jitter(jitter);
            let delay = backoff.delay_with(retry, unit);
            let nominal = backoff.nominal(retry);
            prop_assert!(delay <= nominal);
            prop_assert!(delay >= nominal.mul_f64(1.0 - jitter) - Duration::from_nanos(1));
        }

        #[test]
        fn growth_is_exponential_until_the_cap(initial_ms in 1u64..1000, multiplier in 1.5f64..4.0, retry in 1u32..20) {
            let backoff = Backoff::exponential(Duration::from_millis(initial_ms))
                .multiplier(multiplier)
                .max_delay(Duration::from_secs(3600));
            let (this, next) = (backoff.nominal(retry), backoff.nominal(retry + 1));
            if next < Duration::from_secs(3600) {
                let ratio = next.as_secs_f64() / this.as_secs_f64();
                prop_assert!((ratio - multiplier).abs() < 1e-6, "ratio {ratio} vs {multiplier}");
            }
        }
    }
}
