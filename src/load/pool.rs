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
    collections::BTreeSet,
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

/// The threads, their queue and the jobs not yet finished.
#[derive(Debug)]
pub(crate) struct Pool {
    sender: Mutex<Option<Sender<(u64, Job)>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    pending: std::sync::Arc<Pending>,
}

/// The jobs queued or running, by the number each got when submitted, and
/// a condition variable for [`Pool::settle`].
#[derive(Debug, Default)]
struct Pending {
    jobs: Mutex<Outstanding>,
    finished: Condvar,
}

#[derive(Debug, Default)]
struct Outstanding {
    /// The number the next job gets.
    next: u64,
    /// Numbers of the jobs not yet finished.
    unfinished: BTreeSet<u64>,
}

impl Pending {
    /// Records a job about to be queued; returns its number.
    fn add(&self) -> u64 {
        let mut jobs = self.jobs.lock();
        let number = jobs.next;
        jobs.next += 1;
        jobs.unfinished.insert(number);
        number
    }

    fn done(&self, number: u64) {
        self.jobs.lock().unfinished.remove(&number);
        self.finished.notify_all();
    }

    /// The number the next job will get: every job numbered below it was
    /// submitted before now.
    fn ticket(&self) -> u64 {
        self.jobs.lock().next
    }

    /// Waits until no job numbered below `ticket` is unfinished.
    fn wait_for(&self, ticket: u64) {
        let mut jobs = self.jobs.lock();
        while jobs.unfinished.first().is_some_and(|&n| n < ticket) {
            self.finished.wait(&mut jobs);
        }
    }
}

impl Pool {
    /// Starts `threads` workers sharing a queue of `capacity` jobs. A worker
    /// that the system refuses to spawn is left out; with none at all every
    /// submit is refused, so reloads are skipped and counted, not lost.
    pub(crate) fn new(threads: usize, capacity: usize) -> Self {
        let (sender, receiver) = bounded::<(u64, Job)>(capacity);
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
        let number = self.pending.add();
        match sender.try_send((number, job)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full((_, job)) | TrySendError::Disconnected((_, job))) => {
                self.pending.done(number);
                Err(job)
            }
        }
    }

    /// Waits until every job submitted before the call has finished (not
    /// those submitted since: under steady reloads the queue may never be
    /// empty). Returns at once on a worker thread, where waiting would be
    /// for itself.
    pub(crate) fn settle(&self) {
        if WORKER.with(Cell::get) {
            return;
        }
        self.pending.wait_for(self.pending.ticket());
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

fn work(jobs: &Receiver<(u64, Job)>, pending: &Pending) {
    WORKER.with(|w| w.set(true));
    for (number, job) in jobs {
        // The job records its own failure (a panicking loader counts as a
        // failed load through its guard); the worker only survives it.
        let _ = catch_unwind(AssertUnwindSafe(job));
        pending.done(number);
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
    fn settling_waits_for_the_jobs_submitted_before_it_only() {
        let pool = Pool::new(2, 8);
        let (first_gate, later_gate) = (Arc::new(Mutex::new(())), Arc::new(Mutex::new(())));
        let ran = Arc::new(AtomicUsize::new(0));
        let gated = |gate: &Arc<Mutex<()>>| -> Job {
            let (gate, ran) = (gate.clone(), ran.clone());
            Box::new(move || {
                drop(gate.lock());
                ran.fetch_add(1, Ordering::SeqCst);
            })
        };
        let first = first_gate.lock();
        let later = later_gate.lock();
        assert!(pool.submit(gated(&first_gate)).is_ok());
        let ticket = pool.pending.ticket();
        // Submitted after the settle began: it must not wait for this one,
        // which stays blocked until the end of the test.
        assert!(pool.submit(gated(&later_gate)).is_ok());
        let settling = {
            let pending = pool.pending.clone();
            thread::spawn(move || pending.wait_for(ticket))
        };
        drop(first);
        settling.join().unwrap();
        assert_eq!(
            ran.load(Ordering::SeqCst),
            1,
            "the first job, not the later one"
        );
        drop(later);
        pool.settle();
        assert_eq!(ran.load(Ordering::SeqCst), 2);
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
