//! The processor's time-stamp counter as the system clock, where the
//! kernel itself trusts it.
//!
//! Every `get` on a cache with deadlines reads the clock. [`Instant::now`]
//! is a `clock_gettime` through the vDSO, which with the TSC as the kernel's
//! clock source is an `rdtsc` plus a sequence-lock read and a scaling; with
//! `Instant::elapsed`'s subtraction and conversion it measured 20.3 ns per
//! call on this project's machine, against 7.2 ns for the bare `rdtsc`
//! (about 14 for `rdtscp`, which orders the reading after earlier loads,
//! see [`read`]).
//! So where the TSC is safe to use, the cache reads it directly and scales
//! the ticks itself: [`Tsc::ticks`] and [`Tsc::nanos_between`].
//!
//! # When the TSC is used
//!
//! Only on x86-64 Linux when the kernel's current clock source is `tsc`
//! (the kernel checks at boot that the counters of all CPUs agree and
//! switches away from it when they do not, or when it drifts), and the
//! processor reports an invariant TSC (CPUID `0x8000_0007`, EDX bit 8: a
//! constant rate in every power state) and the `rdtscp` instruction
//! (`0x8000_0001`, EDX bit 27). Anywhere else [`Tsc::get`] is `None` and
//! the cache reads [`Instant`], as before.
//!
//! # Calibration
//!
//! The rate is measured once per process, on the first system clock a
//! cache makes: a tick count and an `Instant` are read together (the
//! `Instant` between two `rdtsc`s, whose midpoint stands for it) at the
//! start and again at least [`CALIBRATION`] later, and the ratio kept as
//! nanoseconds per tick in 32.32 fixed point. The uncertainty of the two
//! readings (a few tens of nanoseconds) over 2 ms is about 10 parts per
//! million: a one-hour time to live may end some tens of milliseconds early
//! or late relative to wall time. Deadlines and the times they are compared
//! with all come from the same scaled counter, so the cache's own ordering
//! of events is exact. A rate outside 100 MHz to 20 GHz is taken for a
//! failed measurement and the cache falls back to `Instant`.
//!
//! The clock source is read once too, with the calibration: if the kernel
//! later switches away from the TSC (its watchdog found it drifting
//! against another clock), the cache goes on reading the counter until the
//! process restarts. Nothing checks that readings only move forward (a
//! reading behind a cache's origin counts as the origin, one behind an
//! earlier reading is taken as it is): the cache trusts the kernel's
//! verdict that the counters of all CPUs agree.
//!
//! The rate is not measured again: a virtual machine moved to a host whose
//! counter runs at another rate, without the hypervisor scaling it (KVM and
//! the other common hypervisors scale it, so that the guest kernel can
//! keep the TSC as its clock), would see lifetimes stretch or shrink by
//! the ratio of the two rates until the process restarts.

#![allow(unsafe_code)]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long the calibration measures the counter's rate against
/// [`Instant`], once per process.
pub(crate) const CALIBRATION: Duration = Duration::from_millis(2);

/// The calibrated time-stamp counter.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tsc {
    /// Nanoseconds per tick, times 2^32.
    nanos_per_tick: u64,
}

impl Tsc {
    /// The process's calibrated counter, if the TSC may be used (see the
    /// module docs). The first call calibrates, taking [`CALIBRATION`].
    pub(crate) fn get() -> Option<Tsc> {
        static TSC: OnceLock<Option<Tsc>> = OnceLock::new();
        *TSC.get_or_init(calibrate)
    }

    /// The counter now.
    #[inline]
    pub(crate) fn ticks(self) -> u64 {
        read()
    }

    /// Nanoseconds from tick `from` to tick `to` (0 if `to` is earlier).
    #[inline]
    pub(crate) fn nanos_between(self, from: u64, to: u64) -> u64 {
        let ticks = u128::from(to.saturating_sub(from));
        let nanos = (ticks * u128::from(self.nanos_per_tick)) >> 32;
        u64::try_from(nanos).unwrap_or(u64::MAX)
    }
}

/// Reads the time-stamp counter, after every load before it has completed.
///
/// A bare `rdtsc` is not ordered with the loads ahead of it: the processor
/// may run it while an earlier load still waits for its cache line, so a
/// thread that reads another thread's published time and then the counter
/// can get a reading earlier than the one it just saw. On this project's
/// machine that came to 200–270 ticks (about 0.1 µs) with four threads
/// racing on one published reading, and to 1.2 µs on a busy host
/// (`the_counter_never_goes_back_across_threads` failed in CI on 6
/// December); with `lfence` first, as the kernel's own clock reads do
/// (`rdtsc_ordered`), or with `rdtscp`, none in 24 million readings.
/// `rdtscp` waits for the earlier loads as the fence does, but lets the
/// instructions after it start meanwhile, where `lfence` holds them back:
/// both take 14 ns in a loop of readings (7.8 bare), but in alternating
/// runs of the `expiry_churn` bench a timed operation took 76–80 ns with
/// `rdtscp` against 83–89 with the fence (67–74 bare, 87–88 through
/// [`Instant`]), and the stampede bench's timed reads kept more of their
/// margin (early expiry's p99 1.77× a plain hit's against 1.87×).
#[cfg(target_arch = "x86_64")]
#[inline]
fn read() -> u64 {
    // SAFETY: `read` runs only once `usable` has found `rdtscp` in CPUID:
    // in `calibrate`, after asking it, and through a `Tsc`, which only a
    // successful `calibrate` makes (the unit tests' hand-made one never
    // reads). The instruction has no memory effects beyond writing `aux`.
    // Whether user code may run it (CR4.TSD) decides only whether it traps:
    // where the kernel's clock source is the TSC the vDSO runs it too, but
    // a thread can still turn it off for itself (`prctl(PR_SET_TSC,
    // PR_TSC_SIGSEGV)`, as the rr debugger does to record), and then the
    // read raises SIGSEGV, a crash (or rr's emulation), not undefined
    // behaviour.
    unsafe {
        let mut aux = 0u32;
        std::arch::x86_64::__rdtscp(&mut aux)
    }
}

/// No counter off x86-64; never called, since [`calibrate`] says `None`.
#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn read() -> u64 {
    0
}

/// Measures the counter's rate, or `None` where it must not be used.
fn calibrate() -> Option<Tsc> {
    if !usable() {
        return None;
    }
    let (start, start_ticks) = paired_reading();
    while start.elapsed() < CALIBRATION {
        std::hint::spin_loop();
    }
    let (end, end_ticks) = paired_reading();
    let nanos = end.duration_since(start).as_nanos();
    let ticks = u128::from(end_ticks.checked_sub(start_ticks)?);
    if ticks == 0 {
        return None;
    }
    // 100 MHz to 20 GHz: 10 ns to 0.05 ns per tick.
    let hertz = ticks * 1_000_000_000 / nanos.max(1);
    if !(100_000_000..=20_000_000_000).contains(&hertz) {
        return None;
    }
    let nanos_per_tick = u64::try_from((nanos << 32) / ticks).ok()?;
    Some(Tsc { nanos_per_tick })
}

/// An `Instant` and the tick count at the same moment: the midpoint of
/// two counter reads around it, taking the tightest of a few tries.
fn paired_reading() -> (Instant, u64) {
    let mut best: Option<(u64, Instant, u64)> = None;
    for _ in 0..5 {
        let before = read();
        let instant = Instant::now();
        let after = read();
        let width = after.wrapping_sub(before);
        if best.is_none_or(|(w, _, _)| width < w) {
            best = Some((width, instant, before + width / 2));
        }
    }
    let (_, instant, ticks) = best.expect("five tries were made");
    (instant, ticks)
}

/// Whether the TSC may serve as the clock here (see the module docs).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn usable() -> bool {
    let source =
        std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource");
    if !source.is_ok_and(|s| s.trim() == "tsc") {
        return false;
    }
    let highest = cpuid(0x8000_0000).eax;
    // An invariant TSC (leaf 0x8000_0007, EDX bit 8) and `rdtscp` (leaf
    // 0x8000_0001, EDX bit 27), which `read` needs.
    highest >= 0x8000_0007
        && cpuid(0x8000_0007).edx & (1 << 8) != 0
        && cpuid(0x8000_0001).edx & (1 << 27) != 0
}

/// CPUID leaf `leaf`. `__cpuid` is a safe function in recent Rust (1.95
/// here) but an `unsafe` one in 1.85, the crate's `rust-version`, which
/// rejects a call outside an `unsafe` block: the block is needed there and
/// redundant here (hence the `allow`).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[allow(unused_unsafe)]
fn cpuid(leaf: u32) -> std::arch::x86_64::CpuidResult {
    // SAFETY: every x86-64 processor has the CPUID instruction (the reason
    // later Rust made the intrinsic safe), and it has no memory effects. A
    // leaf above the highest the processor supports returns other data,
    // never a fault; `usable` asks for the extended leaves only after
    // checking the highest one.
    unsafe { std::arch::x86_64::__cpuid(leaf) }
}

/// Elsewhere the cache reads `Instant`.
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn usable() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_is_exact_on_round_rates() {
        // 2 GHz: half a nanosecond per tick.
        let tsc = Tsc {
            nanos_per_tick: 1 << 31,
        };
        assert_eq!(tsc.nanos_between(10, 10), 0);
        assert_eq!(tsc.nanos_between(0, 2_000_000_000), 1_000_000_000);
        assert_eq!(tsc.nanos_between(5, 3), 0, "an earlier tick gives 0");
        assert_eq!(
            tsc.nanos_between(0, u64::MAX),
            u64::MAX / 2,
            "no overflow at the end of the counter"
        );
    }

    #[test]
    fn the_counter_follows_instant() {
        // Where the TSC is used, it must keep time with `Instant`; where it
        // may be used, calibration must have succeeded.
        let Some(tsc) = Tsc::get() else {
            assert!(
                !usable() || cfg!(not(target_arch = "x86_64")),
                "usable but calibration failed"
            );
            return;
        };
        // Each counter reading is bracketed by two `Instant`s, so a
        // preempted thread only widens the bracket; a rate off by more than
        // 0.1% falls outside it.
        let (first_before, first, first_after) = (Instant::now(), tsc.ticks(), Instant::now());
        std::thread::sleep(Duration::from_millis(50));
        let (last_before, last, last_after) = (Instant::now(), tsc.ticks(), Instant::now());
        let by_tsc = tsc.nanos_between(first, last) as f64;
        let shortest = last_before.duration_since(first_after).as_nanos() as f64;
        let longest = last_after.duration_since(first_before).as_nanos() as f64;
        assert!(
            by_tsc >= shortest * 0.999 - 1_000.0 && by_tsc <= longest * 1.001 + 1_000.0,
            "the counter says {by_tsc} ns where Instant says {shortest} to {longest} ns"
        );
    }

    #[test]
    fn the_counter_never_goes_back_across_threads() {
        let Some(tsc) = Tsc::get() else { return };
        let origin = tsc.ticks();
        let last = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..100_000 {
                        // A reading published before we look must not be
                        // later than ours: the read waits for the load.
                        // The slack is for counters that differ between
                        // CPUs by less than the kernel's check at boot
                        // notices; none was seen on this project's host.
                        let seen = last.load(std::sync::atomic::Ordering::SeqCst);
                        let now = tsc.nanos_between(origin, tsc.ticks());
                        assert!(
                            now + 1_000 >= seen,
                            "a reading of {now} ns after one of {seen} ns"
                        );
                        last.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                    }
                });
            }
        });
    }
}
