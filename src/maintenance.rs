//! The cache's own background thread, `larder-maintenance`.
//!
//! A pass does what
//! [`Cache::run_pending_tasks`](crate::Cache::run_pending_tasks) does: advance
//! each shard's timing wheel, reap expired entries in bounded batches (the
//! shard lock is released between batches so readers never wait long), and
//! deliver their removal notifications with no lock held. A pass that
//! panics (a key's `Hash` may, while reaping) is contained: the other
//! shards are still reaped in that pass, and the thread goes on to the
//! next.
//!
//! The thread passes every [`INTERVAL`] while some wheel has an entry
//! that may fall due within it. Otherwise it sleeps until the first slot
//! of any wheel begins, for at most [`LONGEST_SLEEP`] (for a cache without
//! deadlines, that is all it does), and publishes when it will wake: a
//! write that gives an entry an earlier deadline wakes it
//! ([`Maintenance::wake_for`]), so an entry is still reaped within about
//! an interval of its deadline, while an idle cache costs a wake-up every
//! [`LONGEST_SLEEP`] instead of ten a second. The published time and the
//! writes meet under the shard locks: the thread publishes, then looks at
//! every wheel again under its shard's exclusive lock, so a write either
//! landed before that look (and the thread sees its deadline) or takes the
//! lock after it (and reads the published time).
//!
//! Ownership runs one way: the cache owns the thread (a stop channel and the
//! join handle); the thread holds only a `Weak` reference to the cache, which
//! it upgrades for the length of one pass. Dropping the last cache handle
//! drops the channel's sender, which wakes the thread to exit, and joins it.
//! If a pass holds the cache at that moment, the handle was not the last:
//! the thread drops the cache itself when the pass ends, and exits unjoined.

use std::{
    cell::Cell,
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{
        Arc, Weak,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded};
use parking_lot::{Condvar, Mutex};

/// Time between two maintenance passes while an entry may be due.
pub(crate) const INTERVAL: Duration = Duration::from_millis(100);

/// The longest the thread sleeps when no entry is due sooner. It keeps the
/// shard locks' hit counts widened (they wrap after 2^39 hits on one
/// shard, which takes over 500 s even at a billion hits a second).
pub(crate) const LONGEST_SLEEP: Duration = Duration::from_secs(10);

/// Work the maintenance thread does on each pass.
pub(crate) trait Maintained: Send + Sync + 'static {
    /// What the thread does when it wakes: a pass, unless the cache's clock
    /// is driven by hand. Returns how long the thread may sleep before the
    /// next one (a write giving an earlier deadline may wake it sooner).
    fn background_pass(&self) -> Duration;
}

/// The cache's handle on its maintenance thread, and the count of passes in
/// progress so that `run_pending_tasks` can wait for a background pass to
/// finish delivering what it reaped.
#[derive(Debug)]
pub(crate) struct Maintenance {
    stop: Mutex<Option<Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    passes: Mutex<usize>,
    idle: Condvar,
    /// While the thread sleeps past [`INTERVAL`]: an interval before the
    /// time it wakes (ns on the cache's clock), the deadlines before which
    /// a write wakes it; 0 while it passes every interval.
    wake_below: AtomicU64,
}

thread_local! {
    /// How many maintenance passes this thread is inside: then
    /// [`Maintenance::settle`] does not wait (a listener called from a pass
    /// may call `run_pending_tasks` again).
    static DEPTH: Cell<usize> = const { Cell::new(0) };
    /// How many [`Awaited`] marks this thread holds.
    static AWAITED: Cell<usize> = const { Cell::new(0) };
}

/// Marks the calling thread, until dropped, as one that other threads'
/// passes or reloads may be waiting for, so a `run_pending_tasks` called
/// on it must not wait for them: they would wait for each other. Held by
/// every loader call and by the fill that caches its value, whose weigher
/// and expiry hooks are user code too (until the flight closes, a pass's
/// listener may be reading the key with a `get_with`, a loading cache's
/// background reload may be reading it from its loader); by an entry
/// compute's closure, its first look (which runs the read hook) and its
/// write, which lead the key's flight as a load does; and, for its
/// whole life, by the write-behind flusher (a
/// pass's listener may be waiting in `flush`, and the flusher runs user
/// code: eviction listeners for the copies it drops, the store, the
/// dead-letter handler).
#[derive(Debug)]
pub(crate) struct Awaited(());

impl Awaited {
    /// Marks the calling thread until the mark drops.
    pub(crate) fn here() -> Self {
        AWAITED.with(|d| d.set(d.get() + 1));
        Awaited(())
    }

    /// True while the calling thread holds a mark.
    pub(crate) fn here_now() -> bool {
        AWAITED.with(Cell::get) > 0
    }
}

impl Drop for Awaited {
    fn drop(&mut self) {
        AWAITED.with(|d| d.set(d.get() - 1));
    }
}

impl Maintenance {
    /// A handle with no thread yet; [`start`](Self::start) spawns it.
    pub(crate) fn new() -> Self {
        Maintenance {
            stop: Mutex::new(None),
            thread: Mutex::new(None),
            passes: Mutex::new(0),
            idle: Condvar::new(),
            wake_below: AtomicU64::new(0),
        }
    }

    /// Runs one pass of `work`, counted so that [`settle`](Self::settle) can
    /// wait for it. No lock is held while `work` runs.
    pub(crate) fn pass(&self, work: impl FnOnce()) {
        *self.passes.lock() += 1;
        DEPTH.with(|d| d.set(d.get() + 1));
        struct Done<'a>(&'a Maintenance);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                DEPTH.with(|d| d.set(d.get() - 1));
                let mut passes = self.0.passes.lock();
                *passes -= 1;
                if *passes == 0 {
                    self.0.idle.notify_all();
                }
            }
        }
        let _done = Done(self);
        work();
    }

    /// Waits until no pass is in progress, unless called from inside one
    /// or on a thread others may be waiting for (see [`Awaited`]).
    pub(crate) fn settle(&self) {
        if DEPTH.with(Cell::get) > 0 || Awaited::here_now() {
            return;
        }
        let mut passes = self.passes.lock();
        while *passes > 0 {
            self.idle.wait(&mut passes);
        }
    }

    /// Spawns the thread for `target`. A failed spawn (the OS refused a
    /// thread) leaves the cache working: expired entries are then reaped by
    /// `run_pending_tasks` and by writes, and are never returned either way.
    pub(crate) fn start<T: Maintained>(&self, target: &Arc<T>) {
        // One wake-up may wait in the channel, so that a write's
        // `try_send` reaches a thread not yet asleep.
        let (tx, rx) = bounded::<()>(1);
        let weak = Arc::downgrade(target);
        let spawned = thread::Builder::new()
            .name("larder-maintenance".into())
            .spawn(move || run(weak, rx));
        if let Ok(handle) = spawned {
            *self.stop.lock() = Some(tx);
            *self.thread.lock() = Some(handle);
        }
    }

    /// Publishes that the thread sleeps until `at` (ns on the cache's
    /// clock, more than an [`INTERVAL`] from now): a write giving a
    /// deadline over an interval before it is then to wake it (one due
    /// later is reaped within an interval anyway, when the thread wakes).
    /// The caller looks at every wheel again afterwards, under the shard
    /// locks (see the module docs).
    pub(crate) fn sleep_until(&self, at: u64) {
        let interval = u64::try_from(INTERVAL.as_nanos()).unwrap_or(u64::MAX);
        self.wake_below
            .store(at.saturating_sub(interval).max(1), Relaxed);
    }

    /// Marks the thread awake: writes no longer wake it.
    pub(crate) fn awake(&self) {
        if self.wake_below.load(Relaxed) != 0 {
            self.wake_below.store(0, Relaxed);
        }
    }

    /// Called by a write once it has unlocked the shard where it gave an
    /// entry `deadline`: wakes the thread if it sleeps too long for it.
    /// Each wake-up brings the thread's next one at least an interval
    /// forward, so writes cannot keep it passing back to back.
    #[inline]
    pub(crate) fn wake_for(&self, deadline: u64) {
        if deadline < self.wake_below.load(Relaxed) {
            self.wake();
        }
    }

    #[cold]
    #[inline(never)]
    fn wake(&self) {
        // The first write to see the published time wakes the thread; the
        // others find 0 and leave it.
        if self.wake_below.swap(0, Relaxed) != 0 {
            if let Some(tx) = &*self.stop.lock() {
                let _ = tx.try_send(());
            }
        }
    }

    /// Stops the thread and waits for it, unless called from that very thread
    /// (when it held the last reference), which then exits on its own.
    pub(crate) fn stop(&self) {
        drop(self.stop.lock().take());
        if let Some(handle) = self.thread.lock().take() {
            if handle.thread().id() != thread::current().id() {
                let _ = handle.join();
            }
        }
    }
}

fn run<T: Maintained>(target: Weak<T>, stop: Receiver<()>) {
    let mut sleep = INTERVAL;
    loop {
        match stop.recv_timeout(sleep) {
            Err(RecvTimeoutError::Timeout) | Ok(()) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let Some(target) = target.upgrade() else {
            return;
        };
        // A pass that panics (a key's `Hash` while reaping) costs that
        // pass, not the thread: the cache's later passes still run.
        sleep = catch_unwind(AssertUnwindSafe(|| target.background_pass())).unwrap_or(INTERVAL);
    }
}
