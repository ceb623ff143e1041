//! Unit tests of the loading cache's internals: a reload asked for a value
//! that has been replaced since.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use super::*;

/// A reload asked for by a read that saw an older value than the one now
/// cached (another load finished in between) must not call the loader.
#[test]
fn a_reload_for_a_replaced_value_does_not_load() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let cache = Cache::builder()
        .loader(move |k: &u32| -> Result<Option<u32>, String> {
            counted.fetch_add(1, Relaxed);
            Ok(Some(*k))
        })
        .refresh_after(Duration::from_secs(3600))
        .build()
        .unwrap();
    cache.get(&1).unwrap();
    let seen = cache.inner.cache.peek(&1).unwrap().stamp;
    cache.insert(1, 10); // the value the read saw is replaced
    assert!(cache.inner.reload(&1, Some(seen)), "queued");
    cache.run_pending_tasks();
    assert_eq!(calls.load(Relaxed), 1, "only the first load ran");
    assert_eq!(cache.stats().refreshes(), 0);
    assert_eq!(cache.get(&1).unwrap(), Some(10));

    // The value it was asked for is still there: the reload runs.
    let seen = cache.inner.cache.peek(&1).unwrap().stamp;
    assert!(cache.inner.reload(&1, Some(seen)));
    cache.run_pending_tasks();
    assert_eq!(calls.load(Relaxed), 2);
    assert_eq!(cache.get(&1).unwrap(), Some(1));
}
