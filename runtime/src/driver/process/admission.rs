//! Peers that have not greeted a process worker yet: where each connection
//! stands with its greeting.
//!
//! Anyone running as the worker's user can connect to its named socket; only
//! a peer that knows the secret gets past the greeting. Until then a
//! connection is read with a small frame limit and no memory reserved ahead
//! of its bytes (`SocketTransport::until_greeted`), so that a peer that has
//! proved nothing cannot make the worker allocate what it announces.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Where one connection stands with its greeting: whether its peer has been
/// accepted (proved that it knows the secret). Shared by the connection's
/// transport (which reads with the greeting's limit until then) and its
/// control exchanges (which accept the greeting).
#[derive(Debug, Default)]
pub(crate) struct Greeting {
    greeted: AtomicBool,
}

impl Greeting {
    /// The greeting of a new connection, not accepted yet.
    pub(crate) fn new() -> Arc<Greeting> {
        Arc::default()
    }

    /// Whether the peer's greeting has been accepted.
    pub(crate) fn is_done(&self) -> bool {
        self.greeted.load(Ordering::Acquire)
    }

    /// The peer's greeting was accepted: from now on it is read with the
    /// full frame limit.
    pub(crate) fn done(&self) {
        self.greeted.store(true, Ordering::Release);
    }
}
