//! The `larder-reload-N` threads' lifetime: started only when a setting needs
//! background reloads, as many as configured, and gone once the last handle
//! is dropped, even when that happens on a reload thread. One test only: it
//! counts the threads of its own process.

use std::{
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

#[path = "support/named_threads.rs"]
mod named_threads;

use larder::{Cache, LoadingCache};
use named_threads::Named;

/// The `larder-reload-N` threads.
const RELOAD: Named = Named("larder-reload-");

fn reload_threads() -> usize {
    RELOAD.count()
}

/// Polls for up to 5 s until the count is `expected`; returns the last count.
fn wait_for(expected: usize) -> usize {
    RELOAD.wait_for(expected, Duration::from_secs(5))
}

/// [`wait_for`], then watches the count for 300 ms more: a thread that
/// starts or ends late changes it.
fn steady(expected: usize) -> usize {
    match wait_for(expected) {
        n if n == expected => RELOAD.stays(expected),
        n => n,
    }
}

type Slot = Arc<Mutex<Option<LoadingCache<u32, u32, String>>>>;

#[test]
fn reload_threads_exist_only_when_needed_and_end_with_the_cache() {
    assert_eq!(reload_threads(), 0);

    // No background setting: no threads.
    let plain = Cache::builder()
        .loader(|k: &u32| Ok::<_, String>(Some(*k)))
        .build()
        .unwrap();
    assert_eq!(steady(0), 0);

    let refreshing = Cache::builder()
        .loader(|k: &u32| Ok::<_, String>(Some(*k)))
        .refresh_after(Duration::from_secs(60))
        .reload_threads(3)
        .build()
        .unwrap();
    assert_eq!(steady(3), 3, "as many threads as configured");
    let clone = refreshing.clone();
    drop(refreshing);
    assert_eq!(steady(3), 3, "a clone keeps them");
    drop(clone);
    assert_eq!(wait_for(0), 0, "gone with the last handle");
    drop(plain);

    // The last handle dropped by a reload itself: the loader holds the only
    // handle by then and drops it mid-reload.
    let slot: Slot = Arc::default();
    let held = slot.clone();
    let (done_tx, done_rx) = mpsc::channel();
    let cache = Cache::builder()
        .loader(move |k: &u32| -> Result<Option<u32>, String> {
            if *k == 99 {
                drop(held.lock().unwrap().take());
                let _ = done_tx.send(());
            }
            Ok(Some(*k))
        })
        .refresh_after(Duration::from_secs(60))
        .reload_threads(2)
        .build()
        .unwrap();
    assert_eq!(wait_for(2), 2);
    *slot.lock().unwrap() = Some(cache.clone());
    assert!(cache.refresh(&99));
    drop(cache);
    done_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the reload ran");
    assert_eq!(wait_for(0), 0, "the pool stopped from its own thread");
}
