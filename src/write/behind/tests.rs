//! `close` racing a write on another thread, with the write held at a
//! chosen step of [`Queue::push`] by a test hook: a write is flushed,
//! handed back by `close`, or refused to its writer, never lost between
//! them.

use std::{cell::RefCell, sync::Arc, thread, time::Duration};

use parking_lot::Mutex;

use super::{Config, Leftovers, Queue, Refused};
use crate::{
    WhenFull,
    write::{
        Store,
        buffer::{Backoff, Change},
    },
};

/// Where [`hook`] may hold a push.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Past the capacity check, before the lane's lock.
    BeforeLane,
    /// Holding the lane's lock, past its closed check.
    InLane,
}

type Hook = (Step, Box<dyn FnOnce()>);

std::thread_local! {
    static HOOK: RefCell<Option<Hook>> = const { RefCell::new(None) };
}

/// Runs the hook set on this thread for `step`, once.
pub(super) fn hook(step: Step) {
    let due = HOOK.with(|hook| {
        let mut hook = hook.borrow_mut();
        match hook.take() {
            Some((at, f)) if at == step => Some(f),
            other => {
                *hook = other;
                None
            }
        }
    });
    if let Some(f) = due {
        f();
    }
}

fn set_hook(step: Step, f: impl FnOnce() + 'static) {
    HOOK.with(|hook| *hook.borrow_mut() = Some((step, Box::new(f))));
}

/// A store that keeps every change it takes.
#[derive(Default)]
struct Sink(Mutex<Vec<(u32, Change<u32>)>>);

impl Store<u32, u32> for Sink {
    type Error = String;
    fn load(&self, _: &u32) -> Result<Option<u32>, String> {
        Ok(None)
    }
    fn write(&self, batch: &[(u32, Change<u32>)]) -> Result<(), String> {
        self.0.lock().extend_from_slice(batch);
        Ok(())
    }
}

type Closed = Arc<Mutex<Option<Leftovers<u32, u32, String>>>>;

fn queue(store: &Arc<Sink>) -> Arc<Queue<u32, u32, Sink>> {
    let config = Config {
        batch_size: 16,
        flush_interval: Duration::from_millis(1),
        queue_capacity: 1024,
        when_full: WhenFull::Block,
        max_attempts: 3,
        backoff: Backoff {
            base: Duration::from_millis(1),
            max: Duration::from_millis(2),
            jitter: 0.0,
        },
        drop_timeout: Duration::from_secs(1),
    };
    Queue::start(store.clone(), config, None, Box::new(|_| {}))
}

/// Starts `close` on another thread; the handle returns once it has.
fn close_on_another_thread(
    queue: &Arc<Queue<u32, u32, Sink>>,
    closed: &Closed,
) -> thread::JoinHandle<()> {
    let (queue, closed) = (queue.clone(), closed.clone());
    thread::spawn(move || {
        let left = queue.close(Duration::from_secs(5));
        *closed.lock() = Some(left);
    })
}

/// Where key `key`'s change ended: flushed, handed back by `close`, or
/// neither.
fn fate(store: &Sink, closed: &Closed, key: u32) -> (bool, bool) {
    let flushed = store.0.lock().iter().any(|(k, _)| *k == key);
    let closed = closed.lock();
    let left = closed.as_ref().expect("close returned");
    let handed_back = left.unwritten.iter().any(|(k, _)| *k == key);
    (flushed, handed_back)
}

#[test]
fn a_write_that_reaches_its_lane_after_close_has_drained_is_refused() {
    let store = Arc::new(Sink::default());
    let queue = queue(&store);
    queue.push(1, Change::Put(1), 0).unwrap();
    let closed = Closed::default();
    // The writer has passed every check but its lane's when `close` runs
    // from start to end: drains, stops the flusher and reports.
    set_hook(Step::BeforeLane, {
        let (queue, closed) = (queue.clone(), closed.clone());
        move || close_on_another_thread(&queue, &closed).join().unwrap()
    });
    let pushed = queue.push(2, Change::Put(2), 0);
    assert_eq!(pushed, Err(Refused::Closed), "refused to its writer");
    assert_eq!(fate(&store, &closed, 1), (true, false), "key 1 was flushed");
    assert_eq!(fate(&store, &closed, 2), (false, false));
}

#[test]
fn a_write_in_its_lane_when_close_begins_is_flushed_or_handed_back() {
    let store = Arc::new(Sink::default());
    let queue = queue(&store);
    let closed = Closed::default();
    // The writer holds its lane's lock, past the closed check, while
    // `close` starts: close waits for the lane, then drains the write.
    let closer: Arc<Mutex<Option<thread::JoinHandle<()>>>> = Arc::default();
    set_hook(Step::InLane, {
        let (queue, closed, closer) = (queue.clone(), closed.clone(), closer.clone());
        move || {
            *closer.lock() = Some(close_on_another_thread(&queue, &closed));
            // Long enough for close to reach this lane, which it cannot
            // pass (close then holds the main mutex: not to be taken here).
            thread::sleep(Duration::from_millis(50));
        }
    });
    assert_eq!(queue.push(2, Change::Put(2), 0), Ok(()), "taken");
    closer.lock().take().unwrap().join().unwrap();
    let (flushed, handed_back) = fate(&store, &closed, 2);
    assert!(flushed ^ handed_back, "flushed or handed back, once");
    assert_eq!(queue.push(3, Change::Put(3), 0), Err(Refused::Closed));
}
