//! A batch's round trip: [`Buffer::take_batch`] marks entries in flight,
//! and the flusher's report settles them ([`Buffer::succeeded`],
//! [`Buffer::landed`]), schedules a retry with backoff, or gives them up as
//! dead letters ([`Buffer::failed`], [`Buffer::batch_failed`]).

use super::*;

impl<K: Hash + Eq + Clone, V> Buffer<K, V> {
    /// Takes up to `max` sendable entries, oldest first, and marks their keys
    /// in flight. Never two entries of one key; fewer than `max` if an
    /// entry's split limit says so.
    // The flusher takes with copies; tests and the fuzz target use this.
    #[cfg_attr(not(feature = "test-util"), allow(dead_code))]
    pub fn take_batch(&mut self, max: usize, now: u64) -> Vec<Taken<K, V>> {
        self.take_with(max, now, |_| Ok(()))
            .into_iter()
            .map(|((), taken)| taken)
            .collect()
    }

    /// [`take_batch`](Self::take_batch), each entry with a copy of its key
    /// for the store's batch (the flusher's call). The copy (the key's
    /// `Clone`, user code) is made before the entry is marked in flight: an
    /// entry whose copy panics leaves the buffer with its change, counted
    /// dead-lettered, for [`take_uncopied`](Self::take_uncopied).
    pub fn take_batch_copied(&mut self, max: usize, now: u64) -> Vec<(K, Taken<K, V>)> {
        self.take_with(max, now, |key: &K| {
            catch_unwind(AssertUnwindSafe(|| key.clone()))
        })
    }

    /// The loop of [`take_batch`](Self::take_batch), with `copy` made of
    /// each entry's key first.
    fn take_with<C>(
        &mut self,
        max: usize,
        now: u64,
        mut copy: impl FnMut(&K) -> Result<C, Box<dyn Any + Send>>,
    ) -> Vec<(C, Taken<K, V>)> {
        self.promote_due(now);
        let mut limit = max;
        let mut batch = Vec::with_capacity(max.min(self.queue.len()));
        while batch.len() < limit {
            let Some((_, key)) = self.queue.first() else {
                break;
            };
            let slot = self.slots.get_mut(key).expect("queued key has a slot");
            let cap = slot.pending.as_ref().expect("queued key is pending").cap;
            if batch.len() >= cap {
                break;
            }
            let copied = match copy(&key.key) {
                Ok(copied) => copied,
                Err(panic) => {
                    self.give_up_queued(panic);
                    continue;
                }
            };
            limit = limit.min(cap);
            let pending = slot.pending.take().expect("queued key is pending");
            let (first, last) = (pending.first, pending.last);
            slot.flight = Some(Flight { first, last });
            self.in_flight += 1;
            if pending.retry {
                self.queued_retries -= 1;
            }
            let (_, held) = self.queue.pop_first().expect("the first entry is there");
            let slot = held.slot();
            batch.push((
                copied,
                Taken {
                    change: pending.change,
                    receipt: Receipt {
                        key: held.key,
                        slot,
                        first,
                        last,
                        queued_at: pending.queued_at,
                        attempt: pending.attempts + 1,
                    },
                },
            ));
        }
        batch
    }

    /// Gives up the first queued entry, whose key could not be copied
    /// (`panic`): its slot goes (a queued key has no flight), and its
    /// change, with the queue's copy of the key, goes to the uncopied ones,
    /// dead-lettered.
    fn give_up_queued(&mut self, panic: Box<dyn Any + Send>) {
        let (_, held) = self.queue.pop_first().expect("the first entry is there");
        let slot = self
            .slots
            .remove(&held.slot() as &dyn Probe<K>)
            .expect("queued key has a slot");
        debug_assert!(slot.flight.is_none(), "a queued key is not in flight");
        let pending = slot.pending.expect("queued key is pending");
        if pending.retry {
            self.queued_retries -= 1;
        }
        self.give_up_uncopied(held.key, pending, panic);
    }

    /// Gives up `pending`, out of the buffer already, as a change whose
    /// `key` could not be copied (`panic`): dead-lettered, for
    /// [`take_uncopied`](Self::take_uncopied).
    fn give_up_uncopied(&mut self, key: K, pending: Pending<V>, panic: Box<dyn Any + Send>) {
        self.outstanding.remove(pending.first);
        self.stats.dead_lettered += 1;
        self.uncopied.push(Uncompared {
            key,
            change: pending.change,
            panic,
        });
    }

    /// `taken` landed in the store. A newer pending change of its key becomes
    /// sendable.
    ///
    /// # Panics
    ///
    /// If `taken`'s key is not in flight here (it came from another buffer).
    // The flusher reports with receipts; tests and the fuzz target use this.
    #[cfg_attr(not(feature = "test-util"), allow(dead_code))]
    pub fn succeeded(&mut self, taken: Taken<K, V>) {
        self.landed(taken.receipt);
    }

    /// [`succeeded`](Self::succeeded) for a [`Taken`] split by
    /// [`Taken::split`].
    ///
    /// # Panics
    ///
    /// If `receipt`'s key is not in flight here (it came from another
    /// buffer).
    pub fn landed(&mut self, receipt: Receipt<K>) {
        // Found by its slot (no key compared), and a newer change waiting
        // behind the flight is queued with the receipt's own copy of the
        // key: nothing here runs the key's code.
        let probe = &receipt.slot as &dyn Probe<K>;
        let slot = self.slots.get_mut(probe);
        let waiting = slot
            .as_ref()
            .and_then(|slot| slot.pending.as_ref())
            .map(|p| p.first);
        Self::take_flight(slot, receipt.flight(), &mut self.in_flight);
        self.stats.flushed += 1;
        self.outstanding.remove(receipt.first);
        match waiting {
            Some(first) => {
                let key = Hashed {
                    hash: receipt.slot.hash,
                    id: receipt.slot.id,
                    key: receipt.key,
                };
                self.queue.insert(first, key);
            }
            None => {
                self.slots.remove(probe);
            }
        }
    }

    /// The store rejected `taken`. With attempts left, the key is retried
    /// after [`Backoff::delay`]`(taken.attempt(), draw)` (with the newest
    /// change pushed for it); otherwise the change is returned as a
    /// [`DeadLetter`]. `draw` is a uniform random number in `0.0..=1.0`.
    ///
    /// # Panics
    ///
    /// If `taken`'s key is not in flight here (it came from another buffer).
    pub fn failed(&mut self, taken: Taken<K, V>, now: u64, draw: f64) -> Option<DeadLetter<K, V>> {
        let attempt = taken.receipt.attempt;
        self.end_flight(&taken.receipt);
        if attempt >= self.max_attempts {
            self.stats.dead_lettered += 1;
            let Taken { change, receipt } = taken;
            self.settle(&receipt);
            return Some(DeadLetter {
                key: receipt.key,
                change,
                attempts: attempt,
            });
        }
        let delay = self.backoff_policy.delay(attempt, draw);
        self.requeue(taken, attempt, usize::MAX, now.saturating_add(delay));
        None
    }

    /// The store rejected `batch` as a whole. A batch of one is
    /// [`failed`](Self::failed). A larger one is split: its entries come back
    /// sendable at once, spending no attempt, each limited to batches of half
    /// this size (rounded up), so that a poisonous key ends up alone.
    ///
    /// # Panics
    ///
    /// If an entry's key is not in flight here (it came from another
    /// buffer).
    pub fn batch_failed(
        &mut self,
        batch: Vec<Taken<K, V>>,
        now: u64,
        draw: f64,
    ) -> Vec<DeadLetter<K, V>> {
        if batch.len() <= 1 {
            return batch
                .into_iter()
                .filter_map(|taken| self.failed(taken, now, draw))
                .collect();
        }
        let cap = batch.len().div_ceil(2);
        for taken in batch {
            self.end_flight(&taken.receipt);
            let attempts = taken.receipt.attempt - 1;
            self.requeue(taken, attempts, cap, now);
        }
        Vec::new()
    }

    /// Moves the retries due at `now` from `backoff` to `queue`.
    fn promote_due(&mut self, now: u64) {
        while let Some(entry) = self.backoff.first_entry() {
            let (at, first) = *entry.key();
            if at > now {
                break;
            }
            let key = entry.remove();
            let slot = self.slots.get_mut(&key).expect("retried key has a slot");
            slot.pending
                .as_mut()
                .expect("retried key is pending")
                .retry_at = None;
            self.queue.insert(first, key);
            self.queued_retries += 1;
        }
    }

    /// Ends the flight `receipt` was taken as.
    fn end_flight(&mut self, receipt: &Receipt<K>) {
        let slot = self.slots.get_mut(&receipt.slot as &dyn Probe<K>);
        Self::take_flight(slot, receipt.flight(), &mut self.in_flight);
    }

    /// Ends the flight `expected` in its key's slot (`None`: the key is not
    /// here), checking the slot holds that very flight.
    fn take_flight(slot: Option<&mut Slot<V>>, expected: Flight, in_flight: &mut usize) {
        assert_eq!(
            slot.and_then(|slot| slot.flight.take()),
            Some(expected),
            "a Taken goes back to the buffer that made it"
        );
        *in_flight -= 1;
    }

    /// Forgets the writes of `receipt`'s ended flight, dead-lettered (the
    /// receipt's key goes with the letter); a pending entry behind it
    /// becomes sendable, queued with a copy of the key. If that copy (the
    /// key's `Clone`) panics, the pending entry is given up too, with the
    /// slot's own key, to the uncopied ones, dead-lettered.
    fn settle(&mut self, receipt: &Receipt<K>) {
        let probe = &receipt.slot as &dyn Probe<K>;
        let slot = self.slots.get(probe).expect("settled key has a slot");
        self.outstanding.remove(receipt.first);
        let Some(first) = slot.pending.as_ref().map(|p| p.first) else {
            self.slots.remove(probe);
            return;
        };
        match catch_unwind(AssertUnwindSafe(|| receipt.key.clone())) {
            Ok(key) => {
                let key = Hashed {
                    hash: receipt.slot.hash,
                    id: receipt.slot.id,
                    key,
                };
                self.queue.insert(first, key);
            }
            Err(panic) => {
                let (held, slot) = self
                    .slots
                    .remove_entry(probe)
                    .expect("settled key has a slot");
                let pending = slot.pending.expect("checked above");
                self.give_up_uncopied(held.key, pending, panic);
            }
        }
    }

    /// Puts the key of a failed, ended flight back as pending at `retry_at`,
    /// carrying the newest change pushed for it.
    fn requeue(&mut self, taken: Taken<K, V>, attempts: u32, cap: usize, retry_at: u64) {
        self.stats.retried += 1;
        let Taken {
            change,
            receipt:
                Receipt {
                    key,
                    slot,
                    first,
                    last,
                    queued_at,
                    ..
                },
        } = taken;
        let key = Hashed {
            hash: slot.hash,
            id: slot.id,
            key,
        };
        let slot = self.slots.get_mut(&key).expect("failed key has a slot");
        let (change, last, tag) = match slot.pending.take() {
            Some(newer) => {
                self.outstanding.remove(newer.first);
                self.stats.coalesced += 1;
                (newer.change, newer.last, newer.tag)
            }
            None => (change, last, None),
        };
        slot.pending = Some(Pending {
            change,
            first,
            last,
            queued_at,
            attempts,
            cap,
            retry: true,
            retry_at: Some(retry_at),
            tag,
        });
        self.backoff.insert((retry_at, first), key);
    }
}
