//! The `handshake` target: arbitrary bytes as either half of the handshake,
//! through the parsers the real handshake runs (`workerbus::fuzzing`).
//!
//! An input is `[side, payload...]`: an even `side` makes `payload` the
//! body of a host's `$workerbus.hello` as a worker reads it; an odd one makes
//! it a worker's answer as a host reads it.
//!
//! Checked, besides never panicking:
//!
//! - worker side: a greeting accepted first on the inherited socket sets the
//!   secret, and the same greeting is then accepted on the named socket; a
//!   greeting refused sets nothing; on the named socket, a worker that knows
//!   no secret accepts nobody, and one that knows another secret refuses it;
//! - host side: what is accepted when the host expects the `Echo` service is
//!   accepted when it expects nothing, and what is accepted when it expects
//!   `Echo` and `Missing` is accepted when it expects `Echo` alone.

use workerbus::Secret;
use workerbus::fuzzing::{host_reads_welcome, worker_reads_hello};
use workerbus_tests::pb::echo::{echo_service, missing_service};

/// Runs the `handshake` checks on one input.
pub fn check(data: &[u8]) {
    let [side, payload @ ..] = data else {
        return;
    };
    if side % 2 == 0 {
        worker_side(payload);
    } else {
        host_side(payload);
    }
}

fn worker_side(payload: &[u8]) {
    let mut known = None;
    match worker_reads_hello(payload, &mut known, true) {
        Ok(()) => {
            let secret = known.expect("an accepted first greeting sets the secret");
            assert!(
                worker_reads_hello(payload, &mut Some(secret.clone()), false).is_ok(),
                "the greeting that set the secret is refused on the named socket"
            );
            let other = other_secret(&secret);
            assert!(
                worker_reads_hello(payload, &mut Some(other), true).is_err(),
                "a greeting with another secret is accepted"
            );
        }
        Err(_) => assert!(known.is_none(), "a refused greeting set the secret"),
    }
    let mut none = None;
    assert!(
        worker_reads_hello(payload, &mut none, false).is_err(),
        "a worker that knows no secret accepted a peer on its named socket"
    );
    assert!(none.is_none(), "a peer on the named socket set the secret");
}

/// A secret that differs from `secret`.
fn other_secret(secret: &Secret) -> Secret {
    let zeros = "00".repeat(32);
    let zero = Secret::from_hex(&zeros).expect("64 hex digits");
    if &zero == secret {
        Secret::from_hex(&"11".repeat(32)).expect("64 hex digits")
    } else {
        zero
    }
}

fn host_side(payload: &[u8]) {
    let echo = [echo_service::SCHEMA];
    let both = [echo_service::SCHEMA, missing_service::SCHEMA];
    let nothing = host_reads_welcome(payload, &[]);
    let one = host_reads_welcome(payload, &echo);
    let two = host_reads_welcome(payload, &both);
    if one.is_ok() {
        assert!(
            nothing.is_ok(),
            "accepted for Echo, refused for nothing: {nothing:?}"
        );
    }
    if two.is_ok() {
        assert!(
            one.is_ok(),
            "accepted for Echo and Missing, refused for Echo: {one:?}"
        );
    }
}
