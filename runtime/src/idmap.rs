//! [`IdMap`]: a hash map keyed by request ids, with a hasher fit for counters;
//! [`SeqIdMap`]: a map of ids handed out in order, indexed rather than hashed.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

/// A map from request id to per-call state.
///
/// Our own ids are sequential counters, but a worker's are chosen by its
/// peer: the splitmix64 finalizer spreads any pattern of ids (sequential,
/// `i << 32`, ...) over every bit the table uses, at a fraction of SipHash's
/// cost.
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
        let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        self.0 = z ^ (z >> 31);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A map from id to per-call state for ids handed out in increasing order
/// (a connection's own request ids): a window indexed by the id's distance
/// from the oldest one in it, with an [`IdMap`] for the calls that outlive
/// it. Calls that end about in the order they began (most of them) cost an
/// index, not a hash; a long call (a stream open for hours) is moved out of
/// the window once the calls behind it leave it mostly empty, so the window
/// stays about twice the calls in it, whatever the ids skipped.
#[derive(Debug)]
pub(crate) struct SeqIdMap<V> {
    /// The entries of ids `base..base + window.len()`; `None` for ids that
    /// ended or never had an entry. Never all `None`.
    window: VecDeque<Option<V>>,
    base: u64,
    /// How many entries at the window's front are `None`: dropped in
    /// batches, as popping each would move the whole of its room out.
    ended: usize,
    /// Entries in `window`.
    in_window: usize,
    /// Entries pushed out of the window, and any inserted out of order.
    old: IdMap<V>,
}

/// The length past which a window must be at least half full.
const WINDOW_SLACK: usize = 64;

/// How many ended entries at a window's front are dropped at once.
const ENDED_BATCH: usize = 32;

impl<V> Default for SeqIdMap<V> {
    fn default() -> SeqIdMap<V> {
        SeqIdMap {
            window: VecDeque::new(),
            base: 0,
            ended: 0,
            in_window: 0,
            old: IdMap::default(),
        }
    }
}

impl<V> SeqIdMap<V> {
    /// The number of entries.
    pub(crate) fn len(&self) -> usize {
        self.in_window + self.old.len()
    }

    /// Where `id` is in the window, if it is in its range.
    #[inline]
    fn index(&self, id: u64) -> Option<usize> {
        let index = usize::try_from(id.checked_sub(self.base)?).ok()?;
        (index < self.window.len()).then_some(index)
    }

    /// Adds the entry of `id`, replacing any.
    #[inline]
    pub(crate) fn insert(&mut self, id: u64, value: V) {
        if self.window.is_empty() {
            self.base = id;
        }
        let end = self.base + self.window.len() as u64;
        if id < end {
            // Out of order: not how a connection hands out ids, but kept.
            match self.index(id) {
                Some(index) if self.window[index].is_some() => self.window[index] = Some(value),
                _ => {
                    self.old.insert(id, value);
                }
            }
            return;
        }
        // Keep the window at most about twice its entries: push the oldest
        // out (to `old`) while the new entry would leave it sparser.
        let limit = 2 * (self.in_window + 1) + WINDOW_SLACK;
        while !self.window.is_empty() && (id - self.base) as usize >= limit {
            match self.window.pop_front() {
                Some(Some(value)) => {
                    self.old.insert(self.base, value);
                    self.in_window -= 1;
                }
                _ => self.ended -= 1,
            }
            self.base += 1;
            self.trim_front();
        }
        if self.window.is_empty() {
            self.base = id;
        }
        // Ids skipped (one-way messages) are gaps.
        for _ in self.window.len()..(id - self.base) as usize {
            self.window.push_back(None);
        }
        self.window.push_back(Some(value));
        self.in_window += 1;
    }

    /// The entry of `id`.
    #[inline]
    pub(crate) fn get(&self, id: &u64) -> Option<&V> {
        match self
            .index(*id)
            .and_then(|index| self.window[index].as_ref())
        {
            Some(value) => Some(value),
            None => self.old.get(id),
        }
    }

    /// The entry of `id`, to change.
    #[inline]
    pub(crate) fn get_mut(&mut self, id: &u64) -> Option<&mut V> {
        match self.index(*id) {
            Some(index) if self.window[index].is_some() => self.window[index].as_mut(),
            _ => self.old.get_mut(id),
        }
    }

    /// Whether `id` has an entry.
    pub(crate) fn contains_key(&self, id: &u64) -> bool {
        self.get(id).is_some()
    }

    /// Removes the entry of `id` and returns it.
    #[inline]
    pub(crate) fn remove(&mut self, id: &u64) -> Option<V> {
        let Some(index) = self.index(*id) else {
            return self.old.remove(id);
        };
        let Some(value) = self.window[index].take() else {
            return self.old.remove(id);
        };
        self.in_window -= 1;
        self.trim_front();
        Some(value)
    }

    /// Drops the entry of `id`, if it has one: [`remove`](Self::remove)
    /// without moving the entry out.
    #[inline]
    pub(crate) fn discard(&mut self, id: u64) {
        match self.index(id) {
            Some(index) if self.window[index].is_some() => {
                self.window[index] = None;
                self.in_window -= 1;
                self.trim_front();
            }
            _ => {
                self.old.remove(&id);
            }
        }
    }

    /// Counts the ended ids at the front of the window, and drops them
    /// when they are many, or all there is.
    fn trim_front(&mut self) {
        while self.window.get(self.ended).is_some_and(Option::is_none) {
            self.ended += 1;
        }
        if self.ended == self.window.len() {
            self.window.clear();
            self.ended = 0;
        } else if self.ended >= ENDED_BATCH {
            self.window.drain(..self.ended);
            self.base += self.ended as u64;
            self.ended = 0;
        }
    }

    /// Every entry, to change, in no particular order.
    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.window
            .iter_mut()
            .flatten()
            .chain(self.old.values_mut())
    }
}

#[cfg(test)]
mod tests {
    use super::SeqIdMap;

    #[test]
    fn calls_ending_in_order_keep_the_window_short() {
        let mut map = SeqIdMap::default();
        for id in 1..=10_000u64 {
            map.insert(id, id);
            if id > 64 {
                assert_eq!(map.remove(&(id - 64)), Some(id - 64));
            }
        }
        assert_eq!(map.len(), 64);
        assert!(map.window.len() <= 64 + super::ENDED_BATCH);
        assert!(map.old.is_empty());
        assert_eq!(map.get(&9_937), Some(&9_937));
        assert_eq!(map.get(&9_936), None);
    }

    #[test]
    fn a_long_call_moves_out_of_the_window_and_stays_reachable() {
        let mut map = SeqIdMap::default();
        map.insert(1, 1u64);
        for id in 2..=10_000u64 {
            map.insert(id, id);
            map.discard(id);
        }
        assert_eq!(map.len(), 1);
        assert!(map.window.len() <= 1);
        assert_eq!(map.get(&1), Some(&1));
        *map.get_mut(&1).expect("kept") = 7;
        assert_eq!(map.remove(&1), Some(7));
        assert_eq!(map.len(), 0);
    }

    #[test]
    fn ids_skipped_cost_no_more_than_the_calls_in_flight() {
        let mut map = SeqIdMap::default();
        map.insert(1, 1u64);
        map.insert(1_000_000, 2);
        map.insert(1_000_010, 3);
        assert!(map.window.len() <= 2 * 3 + super::WINDOW_SLACK);
        assert_eq!(map.len(), 3);
        let mut values: Vec<u64> = map.values_mut().map(|value| *value).collect();
        values.sort_unstable();
        assert_eq!(values, [1, 2, 3]);
        assert!(map.contains_key(&1_000_000));
        assert!(!map.contains_key(&1_000_001));
        assert_eq!(map.remove(&1_000_001), None);
    }

    #[test]
    fn entries_inserted_out_of_order_are_kept() {
        let mut map = SeqIdMap::default();
        map.insert(5, 5u64);
        map.insert(6, 6);
        map.insert(3, 3);
        map.insert(6, 60);
        assert_eq!(map.len(), 3);
        assert_eq!(map.get(&3), Some(&3));
        assert_eq!(map.get(&6), Some(&60));
        map.discard(5);
        assert_eq!(map.remove(&3), Some(3));
        assert_eq!(map.remove(&6), Some(60));
        assert_eq!(map.len(), 0);
    }

    #[test]
    fn calls_ending_in_any_order_are_found_as_a_hash_map_finds_them() {
        let mut map = SeqIdMap::default();
        let mut model = std::collections::HashMap::new();
        let mut next = 1u64;
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            match seed % 4 {
                // A call, sometimes after ids skipped.
                0 | 1 => {
                    next += seed % 3;
                    map.insert(next, next);
                    model.insert(next, next);
                    next += 1;
                }
                // One ends: mostly among the oldest, sometimes any.
                _ => {
                    let id = next.saturating_sub(1 + (seed >> 8) % 100);
                    assert_eq!(map.remove(&id), model.remove(&id));
                }
            }
            let id = next.saturating_sub(1 + (seed >> 20) % 200);
            assert_eq!(map.get(&id), model.get(&id));
            assert_eq!(map.len(), model.len());
        }
        assert!(
            map.window.len() <= 2 * (map.in_window + 1) + super::WINDOW_SLACK + super::ENDED_BATCH
        );
    }
}
