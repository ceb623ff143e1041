//! Async test helpers shared by the integration tests that drive the cache
//! from tokio tasks: a hang bound for test bodies, waiting for callers to
//! reach the cache, a closure's result from a plain thread, and a counting
//! waker for futures polled by hand.
#![allow(dead_code, unreachable_pub)]

use std::{
    future::Future,
    io::Write,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::SeqCst},
        mpsc::{self, RecvTimeoutError},
    },
    task::{Context, Poll, Waker},
    thread,
    time::{Duration, Instant},
};

use larder::Cache;
use tokio::sync::oneshot;

/// How long a test body may take before it counts as a hang.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// How long a helper waits for callers to reach the cache before giving up
/// (the test then fails on what it asserts, instead of hanging).
pub const ARRIVAL: Duration = Duration::from_secs(5);

/// Runs a test body, failing it if it is not done within [`TIMEOUT`].
pub async fn bounded<T>(what: &str, body: impl Future<Output = T>) -> T {
    let _watchdog = watchdog(what, TIMEOUT + Duration::from_secs(10));
    match tokio::time::timeout(TIMEOUT, body).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: not done within {TIMEOUT:?} (hang)"),
    }
}

/// Aborts the process unless the returned sender is dropped within `limit`:
/// the last resort when the runtime's thread is blocked and its timers never
/// fire.
pub fn watchdog(what: &str, limit: Duration) -> mpsc::Sender<()> {
    let (done, rx) = mpsc::channel::<()>();
    let what = what.to_string();
    thread::spawn(move || {
        if rx.recv_timeout(limit) == Err(RecvTimeoutError::Timeout) {
            // Straight to the stream: the test harness's capture of
            // `eprintln!` would be lost with the process.
            let _ = writeln!(
                std::io::stderr(),
                "{what}: the runtime's thread was still blocked after {limit:?}; aborting"
            );
            std::process::abort();
        }
    });
    done
}

/// Awaits, without blocking the thread, until `cache` has counted `n`
/// misses (so `n` callers reached it before any value was cached), then a
/// little longer so the last of them get from their miss onto the flight.
/// Gives up after [`ARRIVAL`] so a bug cannot turn it into a hang.
pub async fn until_misses<K, V>(cache: &Cache<K, V>, n: u64)
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    let deadline = Instant::now() + ARRIVAL;
    while cache.stats().misses() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// The blocking form of [`until_misses`], for a loader on a plain thread.
pub fn until_misses_blocking<K, V>(cache: &Cache<K, V>, n: u64)
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    let deadline = Instant::now() + ARRIVAL;
    while cache.stats().misses() < n && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(1));
    }
    thread::sleep(Duration::from_millis(50));
}

/// Runs `f` on a new thread; its result arrives on the receiver (which
/// errors if `f` panicked).
pub fn on_thread<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> oneshot::Receiver<T> {
    let (tx, rx) = oneshot::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx
}

/// A waker that counts its wake-ups; the `Arc`'s count tells who holds it.
pub struct Wakes(pub AtomicUsize);

impl Wakes {
    pub fn new() -> Arc<Self> {
        Arc::new(Wakes(AtomicUsize::new(0)))
    }

    /// How many times it was woken.
    pub fn count(&self) -> usize {
        self.0.load(SeqCst)
    }
}

impl std::task::Wake for Wakes {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, SeqCst);
    }
}

/// Polls `f` once with a waker of `wakes`, which it may keep.
pub fn poll_with<F: Future>(f: std::pin::Pin<&mut F>, wakes: &Arc<Wakes>) -> Poll<F::Output> {
    let waker = Waker::from(wakes.clone());
    f.poll(&mut Context::from_waker(&waker))
}
