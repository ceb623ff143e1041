//! Expiry: the clock, the hierarchical timing wheel and the [`Expiry`] trait.
//!
//! Every entry carries one deadline (nanoseconds since the cache's clock
//! origin, [`NEVER`] when it has none). Readers compare it with the clock and
//! treat a passed deadline as a miss, so an expired entry is never returned
//! whether or not it has been reaped; the [wheel] only decides when the
//! memory is reclaimed and the listener told.
//!
//! Deadlines come from, in order of precedence: a per-entry TTL
//! (`insert_with_ttl`, or `expire_in` / `persist` on an entry already
//! cached), the user's [`Expiry`] hooks, or the cache-wide
//! `time_to_live`; `time_to_idle` then caps the result at "last access plus
//! idle time". With both TTL and TTI the write-based deadline is kept apart
//! (the *hard* deadline) so that reads can slide the idle deadline without
//! going past it. `ttl_jitter` spreads the lifetimes the cache decides (its
//! `time_to_live`, the hooks' answers) by a random factor in `1 ± jitter`;
//! a TTL given to `insert_with_ttl` or `expire_in` and the time to idle are
//! kept exactly.

pub(crate) mod clock;
mod tsc;
pub(crate) mod wheel;

use std::{
    cell::Cell,
    fmt,
    sync::atomic::{AtomicBool, Ordering::Relaxed},
    time::Duration,
};

use clock::{Clock, saturating_nanos};
pub(crate) use wheel::NEVER;

/// Decides, entry by entry, how long an entry lives.
///
/// Give it to [`CacheBuilder::expire_after`](crate::CacheBuilder::expire_after).
/// Each hook returns the time left to live from now: `None` means "never
/// expires". The hooks run without any lock of the cache held; the read hook
/// runs on every read hit, so keep it cheap.
///
/// A write asks its hook about the key's entry as it finds it. If another
/// write of the same key creates, removes or re-times that entry before
/// this one lands, or the entry expires meanwhile, it asks again: the
/// create hook for an entry it turns out to create (a write over an
/// expired entry creates one), the update hook for one it turns out to
/// replace (up to 8 times in all, after which the last answer stands). So
/// a hook may be called more than once for one write.
///
/// The read hook's answer applies to the entry the read returned, once the
/// read has unlocked: it is dropped if that entry's deadline changed
/// meanwhile (another read's hook, a write's), if the entry expired
/// meanwhile (an expired entry is never revived), if any entry was
/// created in its shard, since the key may have been removed and written
/// again (the answer was about a value no longer cached), and if any entry
/// of its shard was given a lifetime by
/// [`Cache::expire_in`](crate::Cache::expire_in) or
/// [`persist`](crate::Cache::persist) (which may leave the deadline as
/// it was).
///
/// # Examples
///
/// ```
/// use larder::{Cache, Expiry, clock::MockClock};
/// use std::time::Duration;
///
/// /// Errors are cached for a second, everything else for a minute.
/// struct ShortErrors;
/// impl Expiry<String, Result<u32, String>> for ShortErrors {
///     fn expire_after_create(&self, _: &String, value: &Result<u32, String>) -> Option<Duration> {
///         Some(if value.is_ok() { Duration::from_secs(60) } else { Duration::from_secs(1) })
///     }
/// }
///
/// let clock = MockClock::new();
/// let cache = Cache::builder().expire_after(ShortErrors).clock(clock.clone()).build().unwrap();
/// cache.insert("a".to_string(), Ok(1));
/// cache.insert("b".to_string(), Err("down".to_string()));
/// clock.advance(Duration::from_secs(2));
/// assert_eq!(cache.get("a"), Some(Ok(1)));
/// assert_eq!(cache.get("b"), None);
/// ```
pub trait Expiry<K, V>: Send + Sync + 'static {
    /// Time to live for a newly inserted entry; `None` for no expiry.
    fn expire_after_create(&self, key: &K, value: &V) -> Option<Duration>;

    /// New time to live after a read hit, given what was `remaining`.
    /// The default keeps the current deadline.
    fn expire_after_read(
        &self,
        key: &K,
        value: &V,
        remaining: Option<Duration>,
    ) -> Option<Duration> {
        let _ = (key, value);
        remaining
    }

    /// New time to live after the entry's value is replaced, given what was
    /// `remaining` for the old value. The default keeps the current deadline.
    fn expire_after_update(
        &self,
        key: &K,
        value: &V,
        remaining: Option<Duration>,
    ) -> Option<Duration> {
        let _ = (key, value);
        remaining
    }
}

/// The deadlines one write gives an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Deadline {
    /// When the entry expires (ns since the clock origin), or [`NEVER`].
    pub(crate) at: u64,
    /// The write-based cap that idle-time sliding may not pass.
    pub(crate) hard: u64,
}

impl Deadline {
    /// No expiry at all.
    pub(crate) const NONE: Deadline = Deadline {
        at: NEVER,
        hard: NEVER,
    };
}

/// The user's hooks, with the key cloner the read hook needs.
pub(crate) type Hooks<K, V> = (Box<dyn Expiry<K, V>>, fn(&K) -> K);

/// A cache's expiry settings and clock: turns writes and reads into deadlines.
pub(crate) struct Timing<K, V> {
    pub(crate) clock: Clock,
    ttl: Option<u64>,
    tti: Option<u64>,
    jitter: f64,
    expiry: Option<Box<dyn Expiry<K, V>>>,
    clone_key: Option<fn(&K) -> K>,
    /// True from the start if reads move deadlines, else set by the first
    /// write that gives an entry a deadline; never cleared. While false, no
    /// read needs the time (see [`reads_want_clock`](Self::reads_want_clock)).
    clock_reads: AtomicBool,
    /// `ttl`, `tti` or `expiry` is set (see [`is_timed`](Self::is_timed)).
    timed: bool,
    /// `tti` or `expiry` is set: a read hit may move a deadline (see
    /// [`read_moves_deadlines`](Self::read_moves_deadlines)).
    read_effects: bool,
}

impl<K, V> fmt::Debug for Timing<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timing")
            .field("clock", &self.clock)
            .field("ttl", &self.ttl)
            .field("tti", &self.tti)
            .field("jitter", &self.jitter)
            .field("expiry", &self.expiry.is_some())
            .finish()
    }
}

/// What a write needs to know about the entry it replaces, for `expire_after_update`.
pub(crate) type Remaining = Option<Duration>;

/// What the expiry hooks said of a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hooked {
    /// Expire this long from now (`None`: never), spread by the jitter.
    After(Remaining),
    /// The update hook left the time remaining as it was (the default
    /// hook does): keep this deadline exactly, not a new jittered one.
    Kept(u64),
}

impl<K, V> Timing<K, V> {
    /// Settings checked by the builder: durations are non-zero, jitter in `0..1`.
    pub(crate) fn new(
        clock: Clock,
        ttl: Option<Duration>,
        tti: Option<Duration>,
        jitter: f64,
        expiry: Option<Hooks<K, V>>,
    ) -> Self {
        let nanos = |d: Duration| saturating_nanos(d.as_nanos()).max(1);
        let (expiry, clone_key) = match expiry {
            Some((e, c)) => (Some(e), Some(c)),
            None => (None, None),
        };
        let read_effects = tti.is_some() || expiry.is_some();
        Timing {
            clock,
            timed: ttl.is_some() || read_effects,
            read_effects,
            ttl: ttl.map(nanos),
            tti: tti.map(nanos),
            jitter,
            expiry,
            clone_key,
            clock_reads: AtomicBool::new(read_effects),
        }
    }

    /// True when entries get deadlines without `insert_with_ttl`.
    #[inline]
    pub(crate) fn is_timed(&self) -> bool {
        self.timed
    }

    /// True when a read hit may slide or reset the entry's deadline (a time
    /// to idle, or expiry hooks): one test for the read path's fast case.
    #[inline]
    pub(crate) fn read_moves_deadlines(&self) -> bool {
        self.read_effects
    }

    /// True once some entry has been given a deadline, and from the start
    /// if reads move deadlines: reads then read the clock up front (before
    /// any lock) rather than on finding a deadline. While false, a read hit
    /// takes `get`'s untimed path, which tests only this.
    #[inline]
    pub(crate) fn reads_want_clock(&self) -> bool {
        self.clock_reads.load(Relaxed)
    }

    /// Idle time in ns, if reads slide deadlines.
    #[inline]
    pub(crate) fn tti(&self) -> Option<u64> {
        self.tti
    }

    /// The user's expiry hooks with the key cloner they need, if configured.
    #[inline]
    #[allow(clippy::type_complexity)]
    pub(crate) fn hooks(&self) -> Option<(&dyn Expiry<K, V>, fn(&K) -> K)> {
        Some((self.expiry.as_deref()?, self.clone_key?))
    }

    /// Deadlines for a write at `now`: `ttl` is a per-entry TTL, `hook` what
    /// an expiry hook said.
    pub(crate) fn on_write(
        &self,
        now: u64,
        ttl: Option<Duration>,
        hook: Option<Hooked>,
    ) -> Deadline {
        // The jitter spreads the lifetimes the cache decides (its time to
        // live, the hooks' answers); a TTL the caller gave and the time to
        // idle are kept exactly.
        let hard = match (ttl, hook) {
            (Some(ttl), _) => exact_after(now, saturating_nanos(ttl.as_nanos())),
            (None, Some(Hooked::After(Some(d)))) => self.after(now, saturating_nanos(d.as_nanos())),
            (None, Some(Hooked::After(None))) => NEVER,
            (None, Some(Hooked::Kept(deadline))) => deadline,
            (None, None) => self.ttl.map_or(NEVER, |t| self.after(now, t)),
        };
        let at = self.tti.map_or(hard, |tti| hard.min(exact_after(now, tti)));
        if at != NEVER && !self.reads_want_clock() {
            self.clock_reads.store(true, Relaxed);
        }
        Deadline { at, hard }
    }

    /// Deadlines for an entry given a new lifetime at `now` by its user
    /// (`Cache::expire_in`, `persist`): `ttl` from now exactly (`None`:
    /// no hard deadline), capped by the time to idle counted from now, as
    /// for a write with a TTL of its own.
    pub(crate) fn on_retime(&self, now: u64, ttl: Option<Duration>) -> Deadline {
        match ttl {
            Some(ttl) => self.on_write(now, Some(ttl), None),
            None => self.on_write(now, None, Some(Hooked::After(None))),
        }
    }

    /// `now + duration`, spread by the jitter and saturating at [`NEVER`].
    /// A zero duration is `now`: expired at once. Any other is at least a
    /// nanosecond, however the jitter spreads it.
    pub(crate) fn after(&self, now: u64, duration: u64) -> u64 {
        let spread = if self.jitter > 0.0 && duration > 0 {
            let factor = 1.0 + self.jitter * (2.0 * unit_random() - 1.0);
            ((duration as f64) * factor) as u64
        } else {
            duration
        };
        let spread = if duration == 0 { 0 } else { spread.max(1) };
        exact_after(now, spread)
    }
}

/// `now + duration`, not spread, saturating at [`NEVER`].
fn exact_after(now: u64, duration: u64) -> u64 {
    now.saturating_add(duration).min(NEVER - 1)
}

/// Time left until `deadline` at `now`, as the hooks see it.
pub(crate) fn remaining(now: u64, deadline: u64) -> Remaining {
    (deadline != NEVER).then(|| Duration::from_nanos(deadline.saturating_sub(now)))
}

/// 64 random bits from a per-thread xorshift generator.
#[inline]
pub(crate) fn random_bits() -> u64 {
    thread_local! {
        /// The generator's state; 0 until the thread's first draw seeds it.
        static STATE: Cell<u64> = const { Cell::new(0) };
    }
    let mut x = STATE.get();
    if x == 0 {
        x = seed();
    }
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    STATE.set(x);
    x
}

/// A uniform number in `[0, 1)`, from [`random_bits`].
#[inline]
pub(crate) fn unit_random() -> f64 {
    (random_bits() >> 11) as f64 / (1u64 << 53) as f64
}

/// A non-zero per-thread seed.
fn seed() -> u64 {
    ahash::RandomState::new().hash_one(std::thread::current().id()) | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(ttl: Option<u64>, tti: Option<u64>, jitter: f64) -> Timing<u32, u32> {
        let s = |n: u64| Duration::from_secs(n);
        Timing::new(Clock::system(), ttl.map(s), tti.map(s), jitter, None)
    }

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn ttl_and_tti_combine_to_the_earlier_deadline() {
        let t = timing(Some(10), Some(3), 0.0);
        assert_eq!(
            t.on_write(0, None, None),
            Deadline {
                at: 3 * SEC,
                hard: 10 * SEC
            }
        );
        let only_ttl = timing(Some(10), None, 0.0);
        assert_eq!(
            only_ttl.on_write(SEC, None, None),
            Deadline {
                at: 11 * SEC,
                hard: 11 * SEC
            }
        );
    }

    #[test]
    fn per_entry_ttl_and_hooks_override_the_cache_ttl() {
        let t = timing(Some(10), None, 0.0);
        assert_eq!(
            t.on_write(0, Some(Duration::from_secs(2)), None).at,
            2 * SEC
        );
        assert_eq!(t.on_write(0, None, Some(Hooked::After(None))).at, NEVER);
        assert_eq!(
            t.on_write(0, None, Some(Hooked::After(Some(Duration::from_secs(4)))))
                .at,
            4 * SEC
        );
        assert_eq!(
            timing(None, None, 0.0).on_write(5, None, None),
            Deadline::NONE
        );
    }

    #[test]
    fn the_first_deadline_made_is_remembered() {
        let t = timing(None, None, 0.0);
        t.on_write(0, None, None);
        t.on_write(0, None, Some(Hooked::After(None)));
        assert!(!t.reads_want_clock(), "no entry has a deadline yet");
        t.on_write(0, Some(Duration::from_secs(1)), None);
        assert!(t.reads_want_clock());
        t.on_write(0, None, None);
        assert!(t.reads_want_clock(), "never cleared");
    }

    #[test]
    fn jitter_spreads_deadlines_within_bounds() {
        let t = timing(Some(100), None, 0.1);
        let ats: Vec<u64> = (0..1000).map(|_| t.on_write(0, None, None).at).collect();
        assert!(ats.iter().all(|&a| (90 * SEC..=110 * SEC).contains(&a)));
        let distinct: std::collections::HashSet<_> = ats.iter().collect();
        assert!(distinct.len() > 900, "jitter should spread deadlines");
        let (lo, hi) = (ats.iter().min().unwrap(), ats.iter().max().unwrap());
        assert!(
            *lo < 92 * SEC && *hi > 108 * SEC,
            "spread covers the range: {lo}..{hi}"
        );
    }

    #[test]
    fn jitter_leaves_a_given_ttl_and_the_time_to_idle_exact() {
        let t = timing(Some(100), Some(50), 0.5);
        for _ in 0..1000 {
            let given = t.on_write(0, Some(Duration::from_secs(30)), None);
            assert_eq!(given.hard, 30 * SEC, "insert_with_ttl's TTL is exact");
            let idle = t.on_write(0, None, None);
            assert_eq!(idle.at, 50 * SEC, "the idle deadline is exact");
            assert!(
                (50 * SEC..=150 * SEC).contains(&idle.hard),
                "the cache's time to live is spread: {}",
                idle.hard
            );
        }
        let spread: std::collections::HashSet<_> = (0..100)
            .map(|_| {
                t.on_write(0, None, Some(Hooked::After(Some(Duration::from_secs(20)))))
                    .hard
            })
            .collect();
        assert!(spread.len() > 90, "a hook's lifetime is spread");
    }

    #[test]
    fn huge_durations_saturate_below_never() {
        let t = timing(None, None, 0.0);
        assert_eq!(t.after(u64::MAX - 5, u64::MAX), NEVER - 1);
        assert_eq!(remaining(10, NEVER), None);
        assert_eq!(remaining(10, 4), Some(Duration::ZERO));
    }
}
