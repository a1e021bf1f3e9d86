//! What a session's record of decided requests has forgotten: request ids (and progress
//! tokens) are remembered as 64-bit keyed hashes once their decision is dropped, so that a
//! forgotten id is never taken for a new one.
//!
//! A server keeps the replies it sent (an event store replays them on a resumed stream)
//! after idguard forgets the request they answer. Were the id used again, an old reply
//! would be filtered under the new request's decision: a redacted call's result passed
//! whole under a later plain call with the same id. A retired id is refused as a reused
//! one, so the record never attributes an old reply to a new decision.

use std::hash::BuildHasher as _;

/// Retired entries a session may hold per request its record remembers: beyond
/// `64 × requests_per_session`, the session is ended.
pub(crate) const RETIRED_PER_REMEMBERED: usize = 64;

/// Hashes inserted unsorted before they are merged into the sorted ones.
const RECENT: usize = 64;

/// What a retired key was: one namespace each, so a retired progress token never refuses
/// a request with the same id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Request,
    Progress,
}

/// A bounded set of keyed 64-bit hashes: 8 bytes per entry.
///
/// The hash is foldhash keyed with a random seed per set, so ids cannot be chosen to
/// collide; and a collision only ever refuses a request (a new id taken for a retired one),
/// never passes a reply.
#[derive(Debug)]
pub(crate) struct Retired {
    hasher: foldhash::quality::RandomState,
    /// Sorted, searched by bisection; its capacity never exceeds `limit`.
    sorted: Vec<u64>,
    /// The latest hashes, unsorted (at most [`RECENT`]).
    recent: Vec<u64>,
    /// Entries the set holds at most.
    limit: usize,
}

impl Retired {
    /// An empty set that holds at most `limit` entries.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            hasher: foldhash::quality::RandomState::default(),
            sorted: Vec::new(),
            recent: Vec::new(),
            limit,
        }
    }

    fn hash(&self, kind: Kind, key: &str) -> u64 {
        self.hasher.hash_one((kind as u8, key))
    }

    /// Whether `key` was retired (or, with a chance of `len / 2^64`, collides with one
    /// that was).
    pub(crate) fn contains(&self, kind: Kind, key: &str) -> bool {
        let h = self.hash(kind, key);
        self.recent.contains(&h) || self.sorted.binary_search(&h).is_ok()
    }

    /// Retires `key`; `false` when the set is full (and `key` not already in it).
    pub(crate) fn insert(&mut self, kind: Kind, key: &str) -> bool {
        let h = self.hash(kind, key);
        if self.recent.contains(&h) || self.sorted.binary_search(&h).is_ok() {
            return true;
        }
        if self.len() >= self.limit {
            return false;
        }
        self.recent.push(h);
        if self.recent.len() >= RECENT {
            self.merge();
        }
        true
    }

    /// Entries held.
    pub(crate) fn len(&self) -> usize {
        self.sorted.len() + self.recent.len()
    }

    /// Moves the recent hashes into the sorted ones, merging from the back in place.
    fn merge(&mut self) {
        self.recent.sort_unstable();
        let kept = self.sorted.len();
        let total = kept + self.recent.len();
        if self.sorted.capacity() < total {
            // Doubling (amortized merges), never beyond the bound.
            let want = total.max(kept.saturating_mul(2)).min(self.limit.max(total));
            self.sorted.reserve_exact(want - kept);
        }
        self.sorted.resize(total, 0);
        // `sorted[..left]` and `recent` remain; `sorted[slot..]` is merged.
        let mut left = kept;
        let mut slot = total;
        while let Some(&newest) = self.recent.last() {
            slot -= 1;
            let from_sorted = left
                .checked_sub(1)
                .and_then(|i| self.sorted.get(i).copied())
                .filter(|&old| old > newest);
            let next = match from_sorted {
                Some(old) => {
                    left -= 1;
                    old
                }
                None => {
                    self.recent.pop();
                    newest
                }
            };
            if let Some(s) = self.sorted.get_mut(slot) {
                *s = next;
            }
        }
    }

    /// Frees every entry (the session is over).
    pub(crate) fn clear(&mut self) {
        self.sorted = Vec::new();
        self.recent = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retired_keys_are_found_until_the_bound() {
        let mut set = Retired::new(1000);
        for i in 0..1000 {
            assert!(set.insert(Kind::Request, &i.to_string()), "{i}");
            assert!(set.contains(Kind::Request, &i.to_string()), "{i}");
        }
        // Merged in order, nothing lost, the capacity within the bound.
        assert!(set.sorted.windows(2).all(|w| w[0] < w[1]));
        assert!(set.sorted.capacity() <= 1000, "{}", set.sorted.capacity());
        assert!((0..1000).all(|i| set.contains(Kind::Request, &i.to_string())));
        assert!(!set.contains(Kind::Request, "1000"));
        assert!(!set.contains(Kind::Progress, "1"), "another namespace");
        // Full: a new key is refused, a known one is still in.
        assert!(!set.insert(Kind::Request, "1000"));
        assert!(set.insert(Kind::Request, "7"));
        assert_eq!(set.len(), 1000);
        set.clear();
        assert_eq!(set.len(), 0);
    }

    #[test]
    fn two_sets_hash_alike_keys_apart() {
        let (a, b) = (Retired::new(1), Retired::new(1));
        assert_ne!(a.hash(Kind::Request, "1"), b.hash(Kind::Request, "1"));
    }
}
