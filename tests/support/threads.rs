//! Thread helpers shared by the integration tests: run closures on threads
//! with a hang timeout, and read panic messages.
#![allow(dead_code, unreachable_pub)]

use std::{
    any::Any,
    panic::{self, AssertUnwindSafe},
    sync::{
        Arc,
        mpsc::{self, RecvTimeoutError},
    },
    thread,
    time::{Duration, Instant},
};

/// Runs `f(0..n)` on `n` threads and returns the results by index. A panic in
/// any of them is re-raised here; if they are not all done within `timeout`,
/// the test fails (the stuck threads are left behind) instead of hanging CI.
pub fn parallel<T, F>(timeout: Duration, what: &str, n: usize, f: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> T + Send + Sync + 'static,
{
    let f = Arc::new(f);
    let (tx, rx) = mpsc::channel();
    for i in 0..n {
        let (f, tx) = (f.clone(), tx.clone());
        thread::spawn(move || {
            let result = panic::catch_unwind(AssertUnwindSafe(|| f(i)));
            let _ = tx.send((i, result));
        });
    }
    drop(tx);
    let deadline = Instant::now() + timeout;
    let mut results: Vec<Option<T>> = (0..n).map(|_| None).collect();
    for _ in 0..n {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((i, Ok(v))) => results[i] = Some(v),
            Ok((_, Err(payload))) => panic::resume_unwind(payload),
            Err(RecvTimeoutError::Timeout) => {
                let done = results.iter().filter(|r| r.is_some()).count();
                panic!("{what}: only {done} of {n} threads finished within {timeout:?} (hang)")
            }
            Err(RecvTimeoutError::Disconnected) => unreachable!("every thread sends"),
        }
    }
    results.into_iter().map(|r| r.expect("all sent")).collect()
}

/// The message of a panic payload.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "<non-string panic payload>".to_string()
    }
}
