//! The buffer's sequence bookkeeping: the sendable keys in the order of
//! their first sequence number ([`SeqQueue`]), and the first sequence
//! numbers of every entry held ([`Outstanding`]), which a flush waits past.

use std::collections::{BTreeMap, VecDeque};

use super::Seq;

/// Keys by sequence number, popped lowest first. Fresh writes arrive in
/// increasing order and go to the back of `fresh` (a ring buffer, cheaper
/// than a tree for the common case); entries that come back out of order
/// (retries, writes that waited behind a flight) go to `late`. Each part is
/// sorted, so the lowest is at the front of one of them.
#[derive(Debug)]
pub(super) struct SeqQueue<K> {
    fresh: VecDeque<(Seq, K)>,
    late: BTreeMap<Seq, K>,
}

impl<K> Default for SeqQueue<K> {
    fn default() -> Self {
        Self {
            fresh: VecDeque::new(),
            late: BTreeMap::new(),
        }
    }
}

impl<K> SeqQueue<K> {
    pub(super) fn insert(&mut self, seq: Seq, key: K) {
        if self.fresh.back().is_none_or(|&(newest, _)| newest < seq) {
            self.fresh.push_back((seq, key));
        } else {
            self.late.insert(seq, key);
        }
    }

    /// True if the lowest entry is at the front of `fresh`; `None` if empty.
    pub(super) fn lowest_is_fresh(&self) -> Option<bool> {
        match (self.fresh.front(), self.late.first_key_value()) {
            (Some((a, _)), Some((b, _))) => Some(a < b),
            (Some(_), None) => Some(true),
            (None, Some(_)) => Some(false),
            (None, None) => None,
        }
    }

    pub(super) fn first(&self) -> Option<(Seq, &K)> {
        if self.lowest_is_fresh()? {
            self.fresh.front().map(|(seq, key)| (*seq, key))
        } else {
            self.late.first_key_value().map(|(seq, key)| (*seq, key))
        }
    }

    pub(super) fn pop_first(&mut self) -> Option<(Seq, K)> {
        if self.lowest_is_fresh()? {
            self.fresh.pop_front()
        } else {
            self.late.pop_first()
        }
    }

    pub(super) fn len(&self) -> usize {
        self.fresh.len() + self.late.len()
    }

    #[cfg(any(test, fuzzing, feature = "test-util"))]
    pub(super) fn get(&self, seq: Seq) -> Option<&K> {
        match self.fresh.binary_search_by_key(&seq, |&(s, _)| s) {
            Ok(i) => Some(&self.fresh[i].1),
            Err(_) => self.late.get(&seq),
        }
    }
}

/// The first seqs of the entries held. A seq comes in as the newest (a fresh
/// entry's), so the ring buffer stays sorted; one leaves in any order, by
/// being marked gone. Marks at the front are swept at once, and all of them
/// are compacted away when they outnumber the live seqs, so memory stays
/// within about twice the live count.
#[derive(Debug, Default)]
pub(super) struct Outstanding {
    seqs: VecDeque<(Seq, bool)>,
    live: usize,
}

impl Outstanding {
    pub(super) fn insert(&mut self, seq: Seq) {
        debug_assert!(self.seqs.back().is_none_or(|&(newest, _)| newest < seq));
        self.seqs.push_back((seq, true));
        self.live += 1;
    }

    pub(super) fn remove(&mut self, seq: Seq) {
        // Batches leave oldest first, so the seq is most often the front.
        let found = if self.seqs.front().is_some_and(|&(first, _)| first == seq) {
            Ok(0)
        } else {
            self.seqs.binary_search_by_key(&seq, |&(s, _)| s)
        };
        let Ok(i) = found else {
            return;
        };
        if !std::mem::replace(&mut self.seqs[i].1, false) {
            return;
        }
        self.live -= 1;
        while self.seqs.front().is_some_and(|&(_, live)| !live) {
            self.seqs.pop_front();
        }
        if self.seqs.len() > 2 * self.live + 64 {
            self.seqs.retain(|&(_, live)| live);
        }
    }

    /// The oldest live seq (the front is never a mark).
    pub(super) fn first(&self) -> Option<Seq> {
        self.seqs.front().map(|&(seq, _)| seq)
    }

    pub(super) fn len(&self) -> usize {
        self.live
    }

    pub(super) fn is_empty(&self) -> bool {
        self.live == 0
    }

    #[cfg(any(test, fuzzing, feature = "test-util"))]
    pub(super) fn iter(&self) -> impl Iterator<Item = Seq> + '_ {
        self.seqs
            .iter()
            .filter(|&&(_, live)| live)
            .map(|&(seq, _)| seq)
    }
}
