//! Counting this process's threads by name (Linux `/proc/self/task`), for
//! the tests of the threads a cache owns.
#![allow(dead_code, unreachable_pub)]

use std::{
    fs, thread,
    time::{Duration, Instant},
};

/// The threads whose name starts with a prefix. `/proc/*/comm` holds at
/// most 15 bytes of a name, so the prefix must be no longer.
pub struct Named(pub &'static str);

impl Named {
    /// How many there are now.
    pub fn count(&self) -> usize {
        fs::read_dir("/proc/self/task")
            .expect("/proc/self/task is readable (Linux)")
            .filter_map(|task| fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .filter(|comm| comm.trim_end().starts_with(self.0))
            .count()
    }

    /// How many times they have slept and woken so far: the sum of their
    /// voluntary context switches (a thread blocked in a timed wait
    /// makes one each time it wakes).
    pub fn wakeups(&self) -> u64 {
        fs::read_dir("/proc/self/task")
            .expect("/proc/self/task is readable (Linux)")
            .filter_map(|task| {
                let path = task.ok()?.path();
                let comm = fs::read_to_string(path.join("comm")).ok()?;
                if !comm.trim_end().starts_with(self.0) {
                    return None;
                }
                let status = fs::read_to_string(path.join("status")).ok()?;
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    }

    /// Polls for up to `limit` until the count is `expected`; returns the
    /// last count.
    pub fn wait_for(&self, expected: usize, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        loop {
            let n = self.count();
            if n == expected || Instant::now() > deadline {
                return n;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Watches the count for 300 ms: a thread that starts or ends late
    /// changes it. Returns the first count that differs from `expected`, or
    /// `expected`.
    pub fn stays(&self, expected: usize) -> usize {
        let until = Instant::now() + Duration::from_millis(300);
        while Instant::now() < until {
            let n = self.count();
            if n != expected {
                return n;
            }
            thread::sleep(Duration::from_millis(10));
        }
        expected
    }
}
