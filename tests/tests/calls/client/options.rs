//! Call options and backoffs: what they report, and values they ignore.

use std::time::Duration;

use workerbus::{Backoff, CallOptions};

#[test]
fn call_options_report_what_was_set() {
    let backoff = Backoff::constant(Duration::from_millis(5));
    let options = CallOptions::new()
        .retries(3)
        .backoff(backoff)
        .idempotent(true);
    assert_eq!(options.get_retries(), Some(3));
    assert_eq!(options.get_backoff(), Some(backoff));
    assert_eq!(options.get_idempotent(), Some(true));
    assert_eq!(options.get_timeout(), None);
    let unset = CallOptions::new();
    assert_eq!(
        (
            unset.get_retries(),
            unset.get_backoff(),
            unset.get_idempotent()
        ),
        (None, None, None)
    );
}

#[test]
fn a_backoff_ignores_a_multiplier_or_jitter_that_is_not_a_number() {
    let initial = Duration::from_millis(10);
    for odd in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let backoff = Backoff::exponential(initial).multiplier(odd).jitter(odd);
        // A multiplier of 1 and no jitter: every delay is the first, exactly.
        assert_eq!(
            backoff,
            Backoff::constant(initial).max_delay(Duration::from_secs(5))
        );
        for retry in [1, 2, 10] {
            assert_eq!(backoff.delay(retry), initial, "{odd} at retry {retry}");
        }
    }
}
