//! A slot: key, value, and one atomic word of metadata.
//!
//! The word holds the entry's deadline in its low 60 bits (nanoseconds since
//! the clock origin; all ones means none, so deadlines past ~36 years count as
//! never) and the policy's touch counter in its top 4 bits. Keeping both
//! beside the key and value means a read hit reads and writes one cache line
//! of the slot array, and costs 8 bytes per entry in all.
//!
//! Under the shard's *shared* lock, readers bump the touch counter with a
//! plain store (lossy if two readers race: a touch or a slide may be lost,
//! which costs a little precision, never correctness) and slide idle
//! deadlines with a single compare-and-swap. Under the exclusive lock, the
//! policy takes the counter and writers set the deadline.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::{expiry::NEVER, policy::TOUCH_MAX};

const DEADLINE_BITS: u32 = 60;
const DEADLINE_MASK: u64 = (1 << DEADLINE_BITS) - 1;
const ONE_TOUCH: u64 = 1 << DEADLINE_BITS;
/// The word of an entry with no deadline and a saturated touch counter (a
/// hot key of an untimed cache): a hit on it has nothing to check or store,
/// and [`Slot::untimed_hit`] tests for it first with one compare.
const HOT_UNTIMED: u64 = u64::MAX;
const _: () = assert!(HOT_UNTIMED == (DEADLINE_MASK | (TOUCH_MAX as u64) << DEADLINE_BITS));

/// The latest deadline the word can hold.
pub(crate) const LAST_DEADLINE: u64 = DEADLINE_MASK - 1;

/// Clamps a deadline to what the word can hold: far ones become [`NEVER`].
#[inline]
pub(crate) fn representable(deadline: u64) -> u64 {
    if deadline >= DEADLINE_MASK {
        NEVER
    } else {
        deadline
    }
}

/// One cached entry.
#[derive(Debug)]
pub(crate) struct Slot<K, V> {
    pub(crate) key: K,
    pub(crate) value: V,
    meta: AtomicU64,
}

impl<K, V> Slot<K, V> {
    /// A slot with no deadline and no touches.
    pub(crate) fn new(key: K, value: V) -> Self {
        Slot {
            key,
            value,
            meta: AtomicU64::new(DEADLINE_MASK),
        }
    }

    /// The deadline, [`NEVER`] if none.
    #[inline]
    pub(crate) fn deadline(&self) -> u64 {
        match self.meta.load(Relaxed) & DEADLINE_MASK {
            DEADLINE_MASK => NEVER,
            d => d,
        }
    }

    /// Sets the deadline (exclusive lock), keeping the touches. Returns the
    /// deadline actually stored (see [`representable`]).
    pub(crate) fn set_deadline(&self, deadline: u64) -> u64 {
        let deadline = representable(deadline);
        let bits = if deadline == NEVER {
            DEADLINE_MASK
        } else {
            deadline
        };
        let meta = self.meta.load(Relaxed);
        self.meta.store((meta & !DEADLINE_MASK) | bits, Relaxed);
        deadline
    }

    /// A read hit (shared lock): false if the deadline is at or before
    /// `now()`, else records the touch unless the counter is saturated. One
    /// load of the word; the clock is read only for entries with a deadline.
    #[inline]
    pub(crate) fn hit(&self, now: impl FnOnce() -> u64) -> bool {
        let meta = self.meta.load(Relaxed);
        let deadline = meta & DEADLINE_MASK;
        if deadline != DEADLINE_MASK && now() >= deadline {
            return false;
        }
        self.add_touch(meta);
        true
    }

    /// A read hit on a cache whose reads do not want the clock (shared
    /// lock): records the touch and returns true, unless the entry has a
    /// deadline, when it does nothing and returns false.
    #[inline]
    pub(crate) fn untimed_hit(&self) -> bool {
        let meta = self.meta.load(Relaxed);
        if meta == HOT_UNTIMED {
            return true;
        }
        if meta & DEADLINE_MASK != DEADLINE_MASK {
            return false;
        }
        self.add_touch(meta);
        true
    }

    /// Stores `meta` (the word as just loaded) plus one touch, unless the
    /// counter is saturated.
    #[inline]
    fn add_touch(&self, meta: u64) {
        if meta >> DEADLINE_BITS < u64::from(TOUCH_MAX) {
            self.meta.store(meta + ONE_TOUCH, Relaxed);
        }
    }

    /// Moves a deadline later to `next`, if it is more than `slack` ns later
    /// than the current one and still ahead of `now()` (shared lock; one
    /// CAS, skipped if it races). The clock is read only when the deadline
    /// would move, after the word: an entry expired by then stays expired.
    #[inline]
    pub(crate) fn extend(&self, next: u64, slack: u64, now: impl FnOnce() -> u64) {
        let meta = self.meta.load(Relaxed);
        let current = meta & DEADLINE_MASK;
        let next = representable(next);
        if next != NEVER
            && current != DEADLINE_MASK
            && next > current.saturating_add(slack)
            && now() < current
        {
            let updated = (meta & !DEADLINE_MASK) | next;
            let _ = self.meta.compare_exchange(meta, updated, Relaxed, Relaxed);
        }
    }

    /// Records an access by a writer (exclusive lock), as a read hit does.
    #[inline]
    pub(crate) fn touch(&self) {
        self.add_touch(self.meta.load(Relaxed));
    }

    /// Whether the touch counter is non-zero, leaving it as it is.
    #[inline]
    pub(crate) fn touched(&self) -> bool {
        self.meta.load(Relaxed) >> DEADLINE_BITS != 0
    }

    /// Reads and clears the touch counter (exclusive lock).
    #[inline]
    pub(crate) fn take_touches(&self) -> u8 {
        let meta = self.meta.load(Relaxed);
        let touches = (meta >> DEADLINE_BITS) as u8;
        if touches > 0 {
            self.meta.store(meta & DEADLINE_MASK, Relaxed);
        }
        touches
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_and_touches_share_the_word_without_interfering() {
        let slot = Slot::new(1u8, 2u8);
        assert_eq!(slot.deadline(), NEVER);
        for _ in 0..40 {
            assert!(slot.hit(|| unreachable!("no deadline, no clock")));
        }
        assert_eq!(slot.set_deadline(12_345), 12_345);
        assert_eq!(slot.deadline(), 12_345);
        assert_eq!(slot.take_touches(), TOUCH_MAX, "saturates at the maximum");
        assert_eq!(slot.take_touches(), 0);
        assert_eq!(slot.deadline(), 12_345, "taking touches keeps the deadline");
        assert!(slot.hit(|| 12_344));
        assert!(!slot.hit(|| 12_345), "expired at its deadline");
        assert_eq!(slot.set_deadline(NEVER), NEVER);
        assert_eq!(slot.deadline(), NEVER);
        assert_eq!(
            slot.take_touches(),
            1,
            "setting a deadline keeps the touches"
        );
    }

    #[test]
    fn an_untimed_hit_touches_entries_without_a_deadline_and_refuses_the_rest() {
        let slot = Slot::new((), ());
        for _ in 0..TOUCH_MAX {
            assert!(slot.untimed_hit());
        }
        assert_eq!(
            slot.meta.load(Relaxed),
            HOT_UNTIMED,
            "saturated, no deadline"
        );
        assert!(slot.untimed_hit(), "the hot word needs no store");
        assert_eq!(slot.take_touches(), TOUCH_MAX);
        slot.set_deadline(5);
        assert!(
            !slot.untimed_hit(),
            "a deadline sends the read to the timed path"
        );
        assert_eq!(slot.take_touches(), 0, "a refused hit records no touch");
        assert!(
            slot.hit(|| 4),
            "which sees the entry live before its deadline"
        );
    }

    #[test]
    fn far_deadlines_become_never_and_extend_only_moves_later() {
        let slot = Slot::new((), ());
        assert_eq!(slot.set_deadline(DEADLINE_MASK), NEVER);
        assert_eq!(slot.set_deadline(DEADLINE_MASK - 1), DEADLINE_MASK - 1);
        slot.set_deadline(1_000);
        slot.extend(900, 0, || 0);
        assert_eq!(slot.deadline(), 1_000, "never earlier");
        slot.extend(1_050, 100, || 0);
        assert_eq!(slot.deadline(), 1_000, "within the slack");
        slot.extend(2_000, 100, || 0);
        assert_eq!(slot.deadline(), 2_000);
        slot.extend(NEVER, 0, || 0);
        assert_eq!(slot.deadline(), 2_000, "extend never removes a deadline");
    }

    #[test]
    fn extend_never_moves_a_deadline_that_has_passed() {
        let slot = Slot::new((), ());
        slot.set_deadline(1_000);
        slot.extend(5_000, 0, || 1_000);
        assert_eq!(slot.deadline(), 1_000, "expired at 1,000: stays expired");
        slot.extend(5_000, 0, || 999);
        assert_eq!(slot.deadline(), 5_000, "live at 999");
        let mut asked = false;
        slot.extend(5_000, 0, || {
            asked = true;
            0
        });
        assert!(!asked, "no move, no clock read");
    }
}
