//! The `larder-write-behind` thread's side of the queue: its loop
//! ([`Queue::run`]), the batches it takes from the buffer, its calls to the
//! store with their retries and dead letters, and the hand-over of what it
//! could not write.

use super::*;

impl<K, V, S> Queue<K, V, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: Store<K, V>,
{
    /// The flusher thread's body.
    pub(super) fn run(&self, woken: &Receiver<()>) {
        // A `run_pending_tasks` from user code run here (an eviction
        // listener, the store, the dead-letter handler) must not wait for
        // passes or reloads on other threads: their listeners may be
        // waiting for this flusher (a `flush` waits for its dead letters).
        let _user_code = RunsUserCode::of(self.address());
        // Every piece of user code the flusher runs has a `catch_unwind` of
        // its own (a key's `Eq` in the buffer's); this one is a backstop:
        // a panic that ends a round does not end the thread.
        loop {
            let round = || match self.next_batch(woken) {
                Some((receipts, pairs)) => {
                    self.send(receipts, pairs);
                    true
                }
                None => false,
            };
            match catch_unwind(AssertUnwindSafe(round)) {
                Ok(true) => {}
                Ok(false) => break,
                // Not at once: the same key may panic again next round.
                Err(_) => thread::sleep(PAUSE_AFTER_PANIC),
            }
        }
        self.state.lock().exited = true;
        self.changed.notify_all();
    }

    /// Waits for a batch to send, and returns the changes to give the store
    /// with the receipts to report their outcome by; `None` when the
    /// flusher must exit.
    fn next_batch(&self, woken: &Receiver<()>) -> Option<Outgoing<K, V>> {
        let mut st = self.state.lock();
        loop {
            if st.stop {
                return None;
            }
            self.drain(&mut st);
            if !st.uncompared.is_empty() {
                let letters = std::mem::take(&mut st.uncompared);
                self.hand_over(st, letters);
                st = self.state.lock();
                continue;
            }
            let now = self.now();
            if st.closing {
                let mark = st.buffer.flush_mark();
                st.buffer.request_flush(mark);
            }
            let interval = self.interval();
            if st.buffer.ready(now, self.config.batch_size, interval) {
                let batch = st.buffer.take_batch_copied(self.config.batch_size, now);
                // A key the buffer could not copy for the batch: its change
                // is a dead letter, handed over before the batch is taken
                // again.
                if self.gave_up_uncopied(&mut st) && batch.is_empty() {
                    continue;
                }
                // The changes move into the store's batch, not cloned, with
                // the keys' copies (each receipt keeps the buffer's); the
                // changes of a failed batch are put back together with their
                // receipts.
                let (pairs, receipts): (Batch<K, V>, Vec<Receipt<K>>) = batch
                    .into_iter()
                    .map(|(key, taken)| {
                        let (change, receipt) = taken.split();
                        ((key, change), receipt)
                    })
                    .unzip();
                let pairs = Arc::new(pairs);
                st.flying = Arc::clone(&pairs);
                st.flying_slots = receipts.iter().map(Receipt::slot).collect();
                return Some((receipts, pairs));
            }
            if st.closing && st.buffer.is_empty() {
                return None;
            }
            // Publish the wake-up time, then look for writes that came too
            // late to be drained (see the module docs).
            let mut due = st.buffer.next_due(interval);
            self.wake_at.store(due.unwrap_or(u64::MAX).max(1), SeqCst);
            if self.undrained.load(SeqCst) > 0 {
                let soon = now.saturating_add(interval);
                due = Some(due.map_or(soon, |at| at.min(soon)));
                self.wake_at.store(soon.max(1), SeqCst);
            }
            // Woken or timed out, the loop looks again; the sender lives as
            // long as this queue, so `recv` cannot fail while it runs.
            st.idle = true;
            MutexGuard::unlocked(&mut st, || match due {
                Some(at) => {
                    let _ = woken.recv_timeout(Duration::from_nanos(at.saturating_sub(now)));
                }
                None => {
                    let _ = woken.recv();
                }
            });
            st.idle = false;
            self.wake_at.store(AWAKE, SeqCst);
        }
    }

    /// Writes `batch` to the store and records the outcome.
    fn send(&self, receipts: Vec<Receipt<K>>, pairs: Arc<Batch<K, V>>) {
        let started = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| self.store.write(&pairs)));
        let took = started.elapsed();
        let mut st = self.state.lock();
        if st.stop {
            // `close` timed out during this call and reported the batch as
            // unwritten; the buffer it came from is gone.
            return;
        }
        st.store_calls += 1;
        st.store_time += took;
        st.max_store_time = st.max_store_time.max(took);
        st.flying = Arc::default();
        st.flying_slots.clear();
        let now = self.now();
        let failure = match result {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(WriteFailure::Store(Arc::new(e))),
            Err(panic) => Some(WriteFailure::Panicked(panic_message(&*panic))),
        };
        let given = match failure {
            None => {
                for receipt in receipts {
                    st.buffer.landed(receipt);
                }
                Vec::new()
            }
            Some(_) => {
                // `flying` let go of its handle above, so this is the last.
                let pairs = Arc::try_unwrap(pairs).unwrap_or_else(|shared| (*shared).clone());
                let batch = pairs
                    .into_iter()
                    .zip(receipts)
                    .map(|((_, change), receipt)| Taken::from_parts(change, receipt))
                    .collect();
                st.buffer.batch_failed(batch, now, unit_random())
            }
        };
        self.gave_up_uncopied(&mut st);
        self.held.store(st.buffer.len(), SeqCst);
        let letters = failure.map_or_else(Vec::new, |failure| {
            given
                .into_iter()
                .map(|dead| DeadLetter {
                    key: dead.key,
                    change: dead.change,
                    attempts: dead.attempts,
                    error: failure.clone(),
                })
                .collect()
        });
        self.hand_over(st, letters);
    }

    /// Releases `st` and hands over the dead letters of a batch. Each key's
    /// cached copy is dropped first (it is a value the store did not take;
    /// a newer change of the key still queued is read back from the queue),
    /// then the letter goes to the handler. Without a handler the letters
    /// are kept at once, under the lock that settled them, so that a
    /// `close` that runs out of time while the flusher is still dropping
    /// the cached copies returns them all the same.
    fn hand_over(
        &self,
        mut st: MutexGuard<'_, State<K, V, S::Error>>,
        letters: Vec<DeadLetter<K, V, S::Error>>,
    ) {
        let reporting = letters.len();
        st.reporting += reporting;
        let (letters, kept): (Vec<_>, Vec<K>) = if self.handler.is_some() {
            (letters, Vec::new())
        } else {
            // Kept with a copy of each key to drop its cached copy by; a
            // letter whose key cannot be copied (its `Clone` panics) is
            // kept after its cached copy is dropped instead.
            let mut keys = Vec::with_capacity(letters.len());
            let mut later = Vec::new();
            for dead in letters {
                match catch_unwind(AssertUnwindSafe(|| dead.key.clone())) {
                    Ok(key) => {
                        keys.push(key);
                        st.kept.push(dead);
                    }
                    Err(_) => later.push(dead),
                }
            }
            (later, keys)
        };
        drop(st);
        // Counted as under way until the end, however this ends (a flush
        // waits for the count to come back to zero); taken back unlocked.
        let _reported = Reported {
            queue: self,
            letters: reporting,
        };
        self.changed.notify_all();
        for key in &kept {
            self.drop_cached(key);
        }
        for dead in letters {
            self.drop_cached(&dead.key);
            self.report(dead);
        }
    }

    /// Moves the changes the buffer gave up because their keys could not
    /// be copied into the letters the flusher hands over next, as
    /// [`WriteFailure::KeyPanicked`]; whether there were any.
    fn gave_up_uncopied(&self, st: &mut State<K, V, S::Error>) -> bool {
        let uncopied = st.buffer.take_uncopied();
        if uncopied.is_empty() {
            return false;
        }
        self.held.store(st.buffer.len(), SeqCst);
        st.uncompared
            .extend(uncopied.into_iter().map(|lost| DeadLetter {
                key: lost.key,
                change: lost.change,
                attempts: 0,
                error: WriteFailure::KeyPanicked(panic_message(&*lost.panic)),
            }));
        true
    }
}

/// Takes back, when dropped, the letters a hand-over counted as under way.
struct Reported<'a, K, V, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: Store<K, V>,
{
    queue: &'a Queue<K, V, S>,
    letters: usize,
}

impl<K, V, S> Drop for Reported<'_, K, V, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: Store<K, V>,
{
    fn drop(&mut self) {
        if self.letters > 0 {
            self.queue.state.lock().reporting -= self.letters;
            self.queue.changed.notify_all();
        }
    }
}
