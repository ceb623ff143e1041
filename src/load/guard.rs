//! Write guards: which loads and writes may put their value in the cache.
//!
//! A load reads the store, then caches what it read. A write changes the
//! store (or queues the change), then caches the new value. When the two
//! overlap on one key, the slower one can cache data the store no longer
//! holds: a load that read the old value finishes after the write, or two
//! writes land in the store in one order and in the cache in the other.
//!
//! Keys hash to [`STRIPES`] counters, each packing two numbers: writes
//! *started* (high 32 bits) and writes *running* (low 32 bits). A load takes
//! a [`Seen`] before reading the store and caches its result only if no
//! write was running then and none started since. A write takes a
//! [`Ticket`] before touching the store and caches its value only if it ran
//! alone: nothing running when it began, nothing started after it. The check
//! runs under the shard lock, inside the conditional insert, so a write that
//! starts after it sees the cached value and replaces or removes it; every
//! other case removes the key instead of caching, which is always safe (the
//! next read loads the store's current value).
//!
//! Two keys sharing a stripe only cost an occasional uncached load.

use std::{
    hash::Hash,
    sync::atomic::{AtomicU64, Ordering::SeqCst},
};

use ahash::RandomState;

use crate::padded::Padded;

/// Counters per guard table; a power of two.
pub(crate) const STRIPES: usize = 64;
const ONE_START: u64 = 1 << 32;
const RUNNING: u64 = ONE_START - 1;

/// The per-key-stripe write counters of one loading cache.
#[derive(Debug)]
pub(crate) struct Guards {
    stripes: Box<[Stripe]>,
    hasher: RandomState,
}

/// One stripe's counter, alone on its cache line pair: every write does
/// two read-modify-writes on its stripe, and writers on other cores must
/// not pay for them.
type Stripe = Padded<AtomicU64>;

/// A stripe's count of started writes, taken when nothing was running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Seen {
    stripe: usize,
    started: u64,
}

/// A write under way on a stripe; ends (stops counting as running) on drop.
#[derive(Debug)]
pub(crate) struct Ticket<'a> {
    guards: &'a Guards,
    stripe: usize,
    /// What the stripe must still say for this write to cache its value;
    /// `None` if another write was already running when it began.
    alone: Option<Seen>,
    /// The stripe's count of started writes, this one included.
    started: u32,
}

impl Default for Guards {
    fn default() -> Self {
        Guards {
            stripes: (0..STRIPES).map(|_| Stripe::default()).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl Guards {
    fn stripe_of<K: Hash + ?Sized>(&self, key: &K) -> usize {
        self.hasher.hash_one(key) as usize & (STRIPES - 1)
    }

    /// Taken by a load before it reads the store: `None` if a write of the
    /// key's stripe is running (the load must not cache what it reads).
    pub(crate) fn seen<K: Hash + ?Sized>(&self, key: &K) -> Option<Seen> {
        let stripe = self.stripe_of(key);
        let word = self.stripes[stripe].load(SeqCst);
        (word & RUNNING == 0).then_some(Seen {
            stripe,
            started: word >> 32,
        })
    }

    /// Taken by a write before it touches the store.
    pub(crate) fn begin<K: Hash + ?Sized>(&self, key: &K) -> Ticket<'_> {
        let stripe = self.stripe_of(key);
        let before = self.stripes[stripe].fetch_add(ONE_START + 1, SeqCst);
        let started = (before >> 32).wrapping_add(1) & RUNNING;
        let alone = (before & RUNNING == 0).then_some(Seen { stripe, started });
        Ticket {
            guards: self,
            stripe,
            alone,
            started: started as u32,
        }
    }

    /// Counts a write started on every stripe (one that ends at once), so
    /// no load under way caches its result: for clearing the whole cache.
    pub(crate) fn start_everywhere(&self) {
        for stripe in &*self.stripes {
            stripe.fetch_add(ONE_START, SeqCst);
        }
    }

    /// Whether no write of `seen`'s stripe started since it was taken.
    pub(crate) fn unchanged(&self, seen: Seen) -> bool {
        self.stripes[seen.stripe].load(SeqCst) >> 32 == seen.started
    }
}

impl Ticket<'_> {
    /// The condition for caching this write's value: `None` if it cannot
    /// (another write overlapped its start).
    pub(crate) fn alone(&self) -> Option<Seen> {
        self.alone
    }

    /// This write's place among the writes of its key: of two writes of one
    /// key, the one that began first has the smaller order (compared as a
    /// wrapping counter: by the sign of the difference). Writes of a key
    /// that do not overlap reach the store in this order.
    pub(crate) fn order(&self) -> u32 {
        self.started
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.guards.stripes[self.stripe].fetch_sub(1, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_load_caches_only_if_no_write_ran_or_started() {
        let guards = Guards::default();
        let seen = guards.seen(&1u32).expect("nothing running");
        assert!(guards.unchanged(seen));
        {
            let ticket = guards.begin(&1u32);
            assert!(ticket.alone().is_some());
            assert_eq!(guards.seen(&1u32), None, "a write is running");
        }
        assert!(!guards.unchanged(seen), "a write started since");
        let later = guards.seen(&1u32).expect("the write ended");
        assert!(guards.unchanged(later));
    }

    #[test]
    fn writes_of_a_key_are_ordered_by_their_start_across_the_wrap() {
        let guards = Guards::default();
        let stripe = guards.stripe_of(&3u8);
        // Just below the wrap of the 32-bit started count.
        guards.stripes[stripe].store((u64::from(u32::MAX) - 1) << 32, SeqCst);
        let orders: Vec<u32> = (0..4).map(|_| guards.begin(&3u8).order()).collect();
        assert_eq!(orders, [u32::MAX, 0, 1, 2]);
        for pair in orders.windows(2) {
            assert!((pair[1].wrapping_sub(pair[0]) as i32) > 0, "{pair:?}");
        }
    }

    #[test]
    fn overlapping_writes_both_lose_the_right_to_cache() {
        let guards = Guards::default();
        let first = guards.begin(&7u64);
        let alone = first.alone().expect("first write ran alone at its start");
        let second = guards.begin(&7u64);
        assert_eq!(second.alone(), None, "began while the first was running");
        assert!(
            !guards.unchanged(alone),
            "the second started after the first"
        );
        drop(first);
        drop(second);
        let third = guards.begin(&7u64);
        let alone = third.alone().expect("nothing running any more");
        assert!(guards.unchanged(alone));
    }
}
