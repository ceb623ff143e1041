//! Write guards: which loads and writes may put their value in the cache.
//!
//! A load reads the store, then caches what it read. A write changes the
//! store (or queues the change), then caches the new value. When the two
//! overlap on one key, the slower one can cache data the store no longer
//! holds: a load that read the old value finishes after the write, or two
//! writes land in the store in one order and in the cache in the other.
//!
//! Each shard spreads its keys over a few stripes, each with a count of
//! the writes that *ended* there (see [`Stripe`]). A load or a write reads
//! its key's count before it touches the store ([`seen`]); that read is a
//! plain load, and nothing is written when a write begins. A write *ends*
//! under the shard lock, in the same critical section that caches its
//! value or drops the key, and counts itself there (a plain store: only
//! the lock's holder changes a count). So at every end or cache fill,
//! under the lock:
//!
//! - a load caches what it read only if no write of its key ended since it
//!   began: if no write ended on its stripe at all ([`Seen::load_verdict`]),
//!   or else if none marked the key's flight, which the load leads (a
//!   write of the key marks it under the same lock, and a clear marks
//!   every flight); a write that ends after the load's fill
//!   replaces or drops the filled value, and a write that ended before it
//!   changed the store before the load's read began, or bumped the count.
//!   On the same test, made once no reader can join the load any more, the
//!   readers waiting for it take its value or load again
//!   ([`LeaderGuard::finish_unless_stale`]): one that began after such a
//!   write must not get a value read before it;
//! - a write caches its value only if no other write of its key ended
//!   since it began ([`Seen::write_verdict`]), and drops the key otherwise.
//!   Of two writes
//!   of a key that overlap, the first to end may cache its value and the
//!   second drops it; the cache then holds nothing until both are done,
//!   and the next read loads the store's own value. Writes that do not
//!   overlap see each other's count and cache in their order.
//!
//! A write that fails or panics may still have changed the store (a store
//! call can time out after its commit), so it ends like a delete: it drops
//! the key and counts itself.
//!
//! Keys that share a stripe share its count, so a moved count alone does
//! not say whose write ended. A write asks its stripe, which remembers the
//! keys (a 32-bit tag of their hash) of its last 8 counted writes
//! ([`Stripe::key_ended_since`]): the write drops its key only if one of
//! those was of its key or of every key (a clear), or if more writes ended
//! than the stripe remembers, or if another key shares its tag (about one
//! pair in 2^29). Each of those only costs the next read a load. Decided by
//! the count alone (until 7 December, afternoon), a store's write that
//! overlapped any other key's write on its stripe dropped its key: with
//! eight other keys written during a write-through in a one-shard cache,
//! two times in three. A load asks its flight instead, which a write of
//! its key marks: decided by the count alone (until 7 December, morning),
//! a key whose 5 ms load raced a thread inserting other keys flat out was
//! loaded on every read. A `LoadingCache::insert` changes no store, so it
//! only counts itself and caches its value ([`write_replaces`]): as a
//! store's write it dropped its key about once in 10,000 inserts with two
//! threads inserting other keys.
//!
//! [`Cache::invalidate_all`] counts a write on every stripe, so a loading
//! cache's clear is a write of every key. (A plain `Cache`'s `get_with`
//! keeps the same rule per key, exactly, through its flights: see
//! [`flight`](crate::load::flight).)
//!
//! [`Stripe`]: crate::shard::Stripe
//! [`Stripe::key_ended_since`]: crate::shard::Stripe::key_ended_since
//! [`LeaderGuard::finish_unless_stale`]: crate::load::flight::LeaderGuard::finish_unless_stale

use std::hash::Hash;

use crate::{Cache, cache::Verdict, shard::Stripe};

/// A key's stripe count, taken before a load reads the store or a write
/// changes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Seen(u32);

/// The count of `key`'s stripe now.
pub(crate) fn seen<K, V>(cache: &Cache<K, V>, key: &K) -> Seen
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    cache.seen(key)
}

impl Seen {
    /// A count read from a stripe.
    pub(crate) fn new(count: u32) -> Self {
        Seen(count)
    }

    /// A load's fill: cache what it read only if no write ended since.
    pub(crate) fn load_verdict(self, stripe: &Stripe<'_>) -> Verdict {
        if stripe.get() == self.0 {
            Verdict::Insert
        } else {
            Verdict::Skip
        }
    }

    /// A write's end with a value: counts it, and caches the value only if
    /// no other write ended since it began; drops the key otherwise.
    pub(crate) fn write_verdict(self, stripe: &Stripe<'_>) -> Verdict {
        let verdict = if stripe.key_ended_since(self.0) {
            Verdict::Remove
        } else {
            Verdict::Insert
        };
        stripe.bump();
        verdict
    }

    /// This write's place among the writes of its key: a write that began
    /// after another ended has a larger order (compared as a wrapping
    /// counter: by the sign of the difference); writes that overlap may
    /// share one. Writes of a key that do not overlap reach the store in
    /// this order. "After" is in the memory model's sense: the end of one
    /// write happens before the start of the next (the same thread, or a
    /// hand-over through a lock or channel). The count is read with
    /// `Acquire` and bumped with `Release` under the shard lock, so such a
    /// write reads the earlier one's bump; two writes that nothing orders
    /// count as overlapping.
    pub(crate) fn order(self) -> u32 {
        self.0
    }
}

/// The end of a write that changed no store (`LoadingCache::insert`): counts
/// it, so that no load under way caches over it, and caches its value
/// whatever else ended meanwhile.
pub(crate) fn write_replaces(stripe: &Stripe<'_>) -> Verdict {
    stripe.bump();
    Verdict::Insert
}

/// A write's end without a value to cache (a delete, an invalidation, a
/// write-around, a panic): counts it; the key's entry goes.
pub(crate) fn write_removes(stripe: &Stripe<'_>) -> bool {
    stripe.bump();
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::ENDS;

    fn cache() -> Cache<u64, u64> {
        Cache::new(100)
    }

    fn load(cache: &Cache<u64, u64>, key: u64, value: u64, seen: Seen) -> bool {
        cache.insert_if(
            key,
            value,
            None,
            |_, s| seen.load_verdict(&s),
            &mut cache.delivery(),
        )
    }

    fn end_write(cache: &Cache<u64, u64>, key: u64, value: u64, seen: Seen) -> bool {
        cache.insert_if(
            key,
            value,
            None,
            |_, s| seen.write_verdict(&s),
            &mut cache.delivery(),
        )
    }

    #[test]
    fn a_load_caches_only_if_no_write_ended_since_it_began() {
        let cache = cache();
        let before = seen(&cache, &1);
        assert!(load(&cache, 1, 10, before), "nothing happened since");
        let write = seen(&cache, &1);
        let racing = seen(&cache, &1);
        assert!(end_write(&cache, 1, 11, write));
        assert!(!load(&cache, 1, 10, racing), "a write ended since");
        assert_eq!(cache.peek(&1), Some(11), "the write's value stays");
        assert!(load(&cache, 1, 11, seen(&cache, &1)));
    }

    #[test]
    fn a_load_that_fills_before_a_write_ends_is_replaced_by_the_write() {
        let cache = cache();
        let write = seen(&cache, &2);
        let racing = seen(&cache, &2);
        assert!(load(&cache, 2, 20, racing), "no write has ended yet");
        assert!(end_write(&cache, 2, 21, write));
        assert_eq!(cache.peek(&2), Some(21));
    }

    #[test]
    fn of_overlapping_writes_the_first_to_end_caches_and_the_second_drops_the_key() {
        let cache = cache();
        let first = seen(&cache, &7);
        let second = seen(&cache, &7);
        assert!(end_write(&cache, 7, 2, second));
        assert_eq!(cache.peek(&7), Some(2));
        assert!(!end_write(&cache, 7, 1, first));
        assert_eq!(cache.peek(&7), None, "an overlapped write drops the key");
        let third = seen(&cache, &7);
        assert!(end_write(&cache, 7, 3, third), "nothing overlaps it");
        assert_eq!(cache.peek(&7), Some(3));
    }

    /// `n` keys other than `key` that share its stripe: a write of each
    /// moves `key`'s count.
    fn stripe_mates(cache: &Cache<u64, u64>, key: u64, n: usize) -> Vec<u64> {
        (key + 1..)
            .filter(|k| {
                let before = seen(cache, &key);
                cache.remove_if(k, |_, s| write_removes(&s), &mut cache.delivery());
                seen(cache, &key) != before
            })
            .take(n)
            .collect()
    }

    #[test]
    fn a_write_overlapped_only_by_writes_of_other_keys_caches_its_value() {
        let cache = cache();
        let remembered = ENDS as usize;
        let mates = stripe_mates(&cache, 1, remembered + 1);
        let write = seen(&cache, &1);
        for &k in &mates[..remembered] {
            assert!(end_write(&cache, k, k, seen(&cache, &k)));
        }
        assert_ne!(seen(&cache, &1), write, "the stripe moved");
        assert!(end_write(&cache, 1, 10, write), "only other keys ended");
        assert_eq!(cache.peek(&1), Some(10));
        // More ends than the stripe remembers the keys of count as the key's.
        let write = seen(&cache, &1);
        for &k in &mates {
            assert!(end_write(&cache, k, k, seen(&cache, &k)));
        }
        assert!(!end_write(&cache, 1, 11, write));
        assert_eq!(cache.peek(&1), None);
        // A delete of the key among other keys' writes counts.
        let write = seen(&cache, &1);
        assert!(end_write(&cache, mates[0], 0, seen(&cache, &mates[0])));
        cache.remove_if(&1, |_, s| write_removes(&s), &mut cache.delivery());
        assert!(end_write(&cache, mates[1], 0, seen(&cache, &mates[1])));
        assert!(!end_write(&cache, 1, 12, write), "a delete of it ended");
        assert_eq!(cache.peek(&1), None);
    }

    #[test]
    fn writes_that_do_not_overlap_are_ordered_by_their_start() {
        let cache = cache();
        let mut orders = Vec::new();
        for v in 0..4 {
            let write = seen(&cache, &3);
            orders.push(write.order());
            if v % 2 == 0 {
                assert!(end_write(&cache, 3, v, write));
            } else {
                cache.remove_if(&3, |_, s| write_removes(&s), &mut cache.delivery());
            }
        }
        for pair in orders.windows(2) {
            assert!((pair[1].wrapping_sub(pair[0]) as i32) > 0, "{pair:?}");
        }
        assert_eq!(cache.peek(&3), None, "the last write removed the key");
    }

    /// One actor of [`interleavings`]: a load or a write of one key, stopped
    /// between the steps that can interleave with other actors' steps.
    #[derive(Clone, Copy, Debug)]
    enum Actor {
        Idle,
        /// Took `seen`; `read` once it has read the store.
        Loading {
            key: u64,
            seen: Seen,
            read: Option<Option<u64>>,
        },
        /// Took `seen`; puts `value` (`None`: deletes) once it commits.
        Writing {
            key: u64,
            seen: Seen,
            value: Option<u64>,
            committed: bool,
        },
    }

    /// Advances actor `who` one step, as the loading cache's loads and
    /// writes take them (see `LoadingCache::write` and `LoadingInner::store`).
    fn step(
        cache: &Cache<u64, u64>,
        store: &mut [Option<u64>],
        actor: &mut Actor,
        choice: u8,
        next: &mut u64,
    ) {
        let keys = store.len() as u64;
        *actor = match *actor {
            Actor::Idle => {
                let key = u64::from(choice >> 3) % keys;
                let seen = seen(cache, &key);
                match choice & 7 {
                    0..=2 => Actor::Loading {
                        key,
                        seen,
                        read: None,
                    },
                    3 => {
                        // `LoadingCache::invalidate`: a write that only drops.
                        cache.remove_if(&key, |_, s| write_removes(&s), &mut cache.delivery());
                        Actor::Idle
                    }
                    4 => {
                        cache.invalidate_all();
                        Actor::Idle
                    }
                    op => {
                        *next += 1;
                        Actor::Writing {
                            key,
                            seen,
                            value: (op != 5).then_some(*next),
                            committed: false,
                        }
                    }
                }
            }
            Actor::Loading {
                key,
                seen,
                read: None,
            } => Actor::Loading {
                key,
                seen,
                read: Some(store[key as usize]),
            },
            Actor::Loading {
                key,
                seen,
                read: Some(read),
            } => {
                match read {
                    Some(v) => {
                        cache.insert_if(
                            key,
                            v,
                            None,
                            |_, s| seen.load_verdict(&s),
                            &mut cache.delivery(),
                        );
                    }
                    // Absent, no negative caching: the load drops the key.
                    None => cache.invalidate(&key),
                }
                Actor::Idle
            }
            Actor::Writing {
                key,
                value,
                committed: false,
                ..
            } if choice % 4 == 0 => {
                // The store call failed, having changed the store or not.
                if choice & 4 != 0 {
                    store[key as usize] = value;
                }
                cache.remove_if(&key, |_, s| write_removes(&s), &mut cache.delivery());
                Actor::Idle
            }
            Actor::Writing {
                key,
                seen,
                value,
                committed: false,
            } => {
                store[key as usize] = value;
                Actor::Writing {
                    key,
                    seen,
                    value,
                    committed: true,
                }
            }
            Actor::Writing {
                key,
                seen,
                value,
                committed: true,
            } => {
                match value {
                    Some(v) => {
                        cache.insert_if(
                            key,
                            v,
                            None,
                            |_, s| seen.write_verdict(&s),
                            &mut cache.delivery(),
                        );
                    }
                    None => {
                        cache.remove_if(&key, |_, s| write_removes(&s), &mut cache.delivery());
                    }
                }
                Actor::Idle
            }
        };
    }

    /// Whatever the cache holds for a key is the store's value, unless a
    /// write of the key is under way.
    fn check(cache: &Cache<u64, u64>, store: &[Option<u64>], actors: &[Actor]) {
        for (key, stored) in store.iter().enumerate() {
            let key = key as u64;
            let Some(cached) = cache.peek(&key) else {
                continue;
            };
            let writing = actors
                .iter()
                .any(|a| matches!(a, Actor::Writing { key: k, .. } if *k == key));
            assert!(
                writing || Some(cached) == *stored,
                "key {key}: cached {cached}, the store holds {stored:?}, no write under way"
            );
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Random interleavings of the steps of up to four loads and writes
        /// (some of keys that share a stripe, some failing before or after
        /// changing the store, invalidations and clears among them) never leave the cache behind the store
        /// once no write of a key is under way, and leave it in step at the
        /// end.
        #[test]
        fn interleavings(
            steps in proptest::collection::vec((0..4usize, proptest::prelude::any::<u8>()), 1..120),
        ) {
            let cache = cache();
            let mut store = vec![None; 5];
            let mut actors = [Actor::Idle; 4];
            let mut next = 0;
            for (who, choice) in steps {
                step(&cache, &mut store, &mut actors[who], choice, &mut next);
                check(&cache, &store, &actors);
            }
            // Let every actor finish (no more failures).
            for who in 0..actors.len() {
                while !matches!(actors[who], Actor::Idle) {
                    step(&cache, &mut store, &mut actors[who], 1, &mut next);
                    check(&cache, &store, &actors);
                }
            }
            for (key, stored) in store.iter().enumerate() {
                let cached = cache.peek(&(key as u64));
                proptest::prop_assert!(cached.is_none() || cached == *stored, "key {}", key);
            }
        }
    }

    #[test]
    fn clearing_counts_a_write_on_every_stripe() {
        let cache = cache();
        let loads: Vec<Seen> = (0..64).map(|k| seen(&cache, &k)).collect();
        cache.invalidate_all();
        for (k, seen) in (0..64).zip(loads) {
            assert!(!load(&cache, k, 0, seen), "key {k}");
        }
        assert_eq!(cache.entry_count(), 0);
        let writes: Vec<Seen> = (0..64).map(|k| seen(&cache, &k)).collect();
        cache.invalidate_all();
        for (k, seen) in (0..64).zip(writes) {
            assert!(!end_write(&cache, k, 0, seen), "key {k}");
        }
        assert_eq!(cache.entry_count(), 0);
    }
}
