//! The cache's own background thread, `larder-maintenance`.
//!
//! It wakes every [`INTERVAL`] and does what
//! [`Cache::run_pending_tasks`](crate::Cache::run_pending_tasks) does: advance
//! each shard's timing wheel, reap expired entries in bounded batches (the
//! shard lock is released between batches so readers never wait long), and
//! deliver their removal notifications with no lock held. A pass that
//! panics (a key's `Hash` may, while reaping) is contained: the thread goes
//! on to the next.
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
    sync::{Arc, Weak},
    thread::{self, JoinHandle},
    time::Duration,
};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded};
use parking_lot::{Condvar, Mutex};

/// Time between two maintenance passes.
pub(crate) const INTERVAL: Duration = Duration::from_millis(100);

/// Work the maintenance thread does on each pass.
pub(crate) trait Maintained: Send + Sync + 'static {
    /// What the thread does when it wakes: a pass, unless the cache's clock
    /// is driven by hand.
    fn background_pass(&self);
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
/// background reload may be reading it from its loader) and, for its
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
        let (tx, rx) = bounded::<()>(0);
        let weak = Arc::downgrade(target);
        let spawned = thread::Builder::new()
            .name("larder-maintenance".into())
            .spawn(move || run(weak, rx));
        if let Ok(handle) = spawned {
            *self.stop.lock() = Some(tx);
            *self.thread.lock() = Some(handle);
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
    loop {
        match stop.recv_timeout(INTERVAL) {
            Err(RecvTimeoutError::Timeout) | Ok(()) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let Some(target) = target.upgrade() else {
            return;
        };
        // A pass that panics (a key's `Hash` while reaping) costs that
        // pass, not the thread: the cache's later passes still run.
        let _ = catch_unwind(AssertUnwindSafe(|| target.background_pass()));
    }
}
