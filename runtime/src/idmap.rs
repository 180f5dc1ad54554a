//! [`IdMap`]: a hash map keyed by request ids, with a hasher fit for counters.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A map from request id to per-call state.
///
/// Ids are sequential counters, so SipHash's resistance to chosen keys buys
/// nothing; a Fibonacci multiply spreads them over the table (it permutes the
/// low bits and fills the high bits) at a fraction of the cost.
pub(crate) type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed; this path keeps the hasher total anyway.
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}
