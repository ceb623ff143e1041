//! The reload pool: a few threads named `larder-reload-N` that run
//! background reloads from a bounded queue.
//!
//! A job that finds the queue full is handed back to the caller, which skips
//! the reload and counts it; nothing is queued without limit. Jobs run under
//! `catch_unwind`, so a panicking loader costs one reload, not a thread.
//!
//! The pool belongs to one cache. Jobs hold only a `Weak` reference to it;
//! dropping the cache's last handle stops the pool: the channel's sender is
//! dropped, the workers drain what is queued (each job finds the cache gone
//! and returns) and are joined.

use std::{
    cell::Cell,
    panic::{AssertUnwindSafe, catch_unwind},
    thread::{self, JoinHandle},
};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use parking_lot::{Condvar, Mutex};

/// One unit of background work.
pub(crate) type Job = Box<dyn FnOnce() + Send>;

thread_local! {
    /// True on a pool worker: waiting for the pool from there would deadlock.
    static WORKER: Cell<bool> = const { Cell::new(false) };
}

/// The threads, their queue and a count of jobs not yet finished.
#[derive(Debug)]
pub(crate) struct Pool {
    sender: Mutex<Option<Sender<Job>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    pending: std::sync::Arc<Pending>,
}

/// Jobs queued or running, and a condition variable for [`Pool::settle`].
#[derive(Debug, Default)]
struct Pending {
    count: Mutex<usize>,
    idle: Condvar,
}

impl Pending {
    fn add(&self) {
        *self.count.lock() += 1;
    }

    fn done(&self) {
        let mut count = self.count.lock();
        *count -= 1;
        if *count == 0 {
            self.idle.notify_all();
        }
    }
}

impl Pool {
    /// Starts `threads` workers sharing a queue of `capacity` jobs. A worker
    /// that the system refuses to spawn is left out; with none at all every
    /// submit is refused, so reloads are skipped and counted, not lost.
    pub(crate) fn new(threads: usize, capacity: usize) -> Self {
        let (sender, receiver) = bounded::<Job>(capacity);
        let pending = std::sync::Arc::new(Pending::default());
        let handles: Vec<_> = (0..threads)
            .filter_map(|i| {
                let receiver = receiver.clone();
                let pending = pending.clone();
                thread::Builder::new()
                    .name(format!("larder-reload-{i}"))
                    .spawn(move || work(&receiver, &pending))
                    .ok()
            })
            .collect();
        let sender = (!handles.is_empty()).then_some(sender);
        Pool {
            sender: Mutex::new(sender),
            threads: Mutex::new(handles),
            pending,
        }
    }

    /// Queues `job`, or hands it back if the queue is full or the pool has
    /// stopped.
    pub(crate) fn submit(&self, job: Job) -> Result<(), Job> {
        let sender = self.sender.lock();
        let Some(sender) = sender.as_ref() else {
            return Err(job);
        };
        self.pending.add();
        match sender.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                self.pending.done();
                Err(job)
            }
        }
    }

    /// Waits until every job submitted so far has finished. Returns at once
    /// on a worker thread, where waiting would be for itself.
    pub(crate) fn settle(&self) {
        if WORKER.with(Cell::get) {
            return;
        }
        let mut count = self.pending.count.lock();
        while *count > 0 {
            self.pending.idle.wait(&mut count);
        }
    }

    /// Stops the workers after the queued jobs and joins them (all but the
    /// calling thread, when a worker drops the last handle itself).
    pub(crate) fn stop(&self) {
        drop(self.sender.lock().take());
        let handles = std::mem::take(&mut *self.threads.lock());
        for handle in handles {
            if handle.thread().id() != thread::current().id() {
                let _ = handle.join();
            }
        }
    }
}

fn work(jobs: &Receiver<Job>, pending: &Pending) {
    WORKER.with(|w| w.set(true));
    for job in jobs {
        // The job records its own failure (a panicking loader counts as a
        // failed load through its guard); the worker only survives it.
        let _ = catch_unwind(AssertUnwindSafe(job));
        pending.done();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use super::*;

    #[test]
    fn runs_jobs_and_refuses_past_capacity() {
        let pool = Pool::new(1, 2);
        let gate = Arc::new(Mutex::new(()));
        let ran = Arc::new(AtomicUsize::new(0));
        let held = gate.lock();
        let mut accepted = 0;
        for _ in 0..10 {
            let (gate, ran) = (gate.clone(), ran.clone());
            let job: Job = Box::new(move || {
                drop(gate.lock());
                ran.fetch_add(1, Ordering::SeqCst);
            });
            if pool.submit(job).is_ok() {
                accepted += 1;
            }
        }
        // One job may be running (blocked on the gate) and two queued.
        assert!((2..=3).contains(&accepted), "accepted {accepted}");
        drop(held);
        pool.settle();
        assert_eq!(ran.load(Ordering::SeqCst), accepted);
        pool.stop();
        assert!(pool.submit(Box::new(|| {})).is_err());
    }

    #[test]
    fn a_panicking_job_leaves_the_worker_running() {
        let pool = Pool::new(1, 4);
        let ran = Arc::new(AtomicUsize::new(0));
        assert!(pool.submit(Box::new(|| panic!("job failed"))).is_ok());
        let counter = ran.clone();
        let job: Job = Box::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        assert!(pool.submit(job).is_ok());
        pool.settle();
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        pool.stop();
    }

    #[test]
    fn workers_are_named() {
        let pool = Pool::new(2, 4);
        let name = Arc::new(Mutex::new(String::new()));
        let seen = name.clone();
        let job: Job = Box::new(move || {
            *seen.lock() = thread::current().name().unwrap_or_default().to_string();
        });
        assert!(pool.submit(job).is_ok());
        pool.settle();
        assert!(name.lock().starts_with("larder-reload-"), "{}", name.lock());
        pool.stop();
    }
}
