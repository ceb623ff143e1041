//! Time sources.
//!
//! The cache reads time as nanoseconds since its own origin (a `u64`), so
//! deadlines fit in one atomic word. The system clock is the processor's
//! time-stamp counter where the kernel trusts it ([`Clock::Tsc`], see
//! [`tsc`](super::tsc)) and [`Instant`] elsewhere ([`Clock::System`]);
//! [`MockClock`] (feature `test-util`) is moved by hand so tests need no sleeps.

use std::time::Instant;

use super::tsc::Tsc;

#[cfg(feature = "test-util")]
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

/// Where a cache reads the time from.
#[derive(Clone, Debug)]
pub(crate) enum Clock {
    /// Monotonic system time, measured from the given origin.
    System(Instant),
    /// The calibrated time-stamp counter, from the tick `origin`.
    Tsc {
        /// The tick count when the clock was made.
        origin: u64,
        /// The counter and its rate.
        tsc: Tsc,
    },
    /// Hand-driven time for tests.
    #[cfg(feature = "test-util")]
    Mock(MockClock),
}

impl Clock {
    /// A system clock whose origin is now: the time-stamp counter where
    /// it may be used, else [`Instant`]. The first in a process calibrates
    /// the counter (about 2 ms, see [`tsc`](super::tsc)).
    pub(crate) fn system() -> Self {
        match Tsc::get() {
            Some(tsc) => Clock::Tsc {
                origin: tsc.ticks(),
                tsc,
            },
            None => Clock::System(Instant::now()),
        }
    }

    /// True for a hand-driven clock: background work then waits to be asked.
    pub(crate) fn is_manual(&self) -> bool {
        match self {
            Clock::System(_) | Clock::Tsc { .. } => false,
            #[cfg(feature = "test-util")]
            Clock::Mock(_) => true,
        }
    }

    /// Nanoseconds since the clock's origin.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        match self {
            Clock::Tsc { origin, tsc } => tsc.nanos_between(*origin, tsc.ticks()),
            Clock::System(origin) => saturating_nanos(origin.elapsed().as_nanos()),
            #[cfg(feature = "test-util")]
            Clock::Mock(mock) => mock.nanos.load(Ordering::Acquire),
        }
    }
}

/// Converts a `u128` nanosecond count to `u64`, saturating (after ~584 years).
pub(crate) fn saturating_nanos(nanos: u128) -> u64 {
    u64::try_from(nanos).unwrap_or(u64::MAX)
}

/// A clock that only moves when told to, for deterministic tests.
///
/// Clones share the same time. A cache on a `MockClock` reaps expired entries
/// only when asked ([`Cache::run_pending_tasks`](crate::Cache::run_pending_tasks),
/// or a write that meets one): its maintenance thread stays idle, so listener
/// notifications arrive at predictable points. Expired entries are never
/// returned either way. Give one to
/// [`CacheBuilder::clock`](crate::CacheBuilder::clock) and keep another to
/// move time with [`advance`](MockClock::advance).
///
/// # Examples
///
/// ```
/// use larder::{Cache, clock::MockClock};
/// use std::time::Duration;
///
/// let clock = MockClock::new();
/// let cache: Cache<u32, &str> = Cache::builder()
///     .time_to_live(Duration::from_secs(10))
///     .clock(clock.clone())
///     .build()
///     .unwrap();
/// cache.insert(1, "one");
/// clock.advance(Duration::from_secs(9));
/// assert_eq!(cache.get(&1), Some("one"));
/// clock.advance(Duration::from_secs(1));
/// assert_eq!(cache.get(&1), None);
/// ```
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
#[derive(Clone, Debug, Default)]
pub struct MockClock {
    nanos: Arc<AtomicU64>,
}

#[cfg(feature = "test-util")]
impl MockClock {
    /// A clock standing at its origin (time zero).
    ///
    /// # Examples
    ///
    /// ```
    /// let clock = larder::clock::MockClock::new();
    /// assert_eq!(clock.elapsed(), std::time::Duration::ZERO);
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves this clock and all its clones forward by `by` (saturating).
    ///
    /// A cache keeps deadlines in 60 bits of nanoseconds from its clock's
    /// origin, the all-ones word meaning none, so it counts any deadline
    /// from 2^60 - 1 ns (about 36.5 years) on as none: past that point on a
    /// `MockClock`, entries written stop expiring (an idle deadline that a
    /// read slides past it stops 1 ns short of it instead).
    /// Tests of long lifetimes should stay below it.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let clock = larder::clock::MockClock::new();
    /// let other = clock.clone();
    /// clock.advance(Duration::from_millis(1500));
    /// assert_eq!(other.elapsed(), Duration::from_millis(1500));
    /// ```
    pub fn advance(&self, by: Duration) {
        let by = saturating_nanos(by.as_nanos());
        let mut now = self.nanos.load(Ordering::Acquire);
        loop {
            let next = now.saturating_add(by);
            match self
                .nanos
                .compare_exchange_weak(now, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(actual) => now = actual,
            }
        }
    }

    /// Time since this clock's origin.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let clock = larder::clock::MockClock::new();
    /// clock.advance(Duration::from_secs(3));
    /// assert_eq!(clock.elapsed(), Duration::from_secs(3));
    /// ```
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::Acquire))
    }
}

#[cfg(feature = "test-util")]
impl From<MockClock> for Clock {
    fn from(mock: MockClock) -> Self {
        Clock::Mock(mock)
    }
}
