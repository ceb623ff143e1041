//! Keys kept with the hash they were pushed with and the id of their slot
//! (see "Hashing each key once" and "Comparing keys only on a push" in the
//! buffer's module docs): the map's key type, the borrowed forms lookups
//! use, and the hasher that hands the stored hash back.

use std::{
    borrow::Borrow,
    hash::{Hash, Hasher},
};

use super::Seq;

/// A key held by the buffer, with the hash it was pushed with and the id of
/// its slot: the seq of the push that made the slot, unique among the slots
/// held. Two `Hashed` are equal when their hashes and ids are: comparing
/// them never runs the key's `Eq`.
#[derive(Clone, Debug)]
pub(super) struct Hashed<K> {
    pub(super) hash: u64,
    pub(super) id: Seq,
    pub(super) key: K,
}

impl<K> Hashed<K> {
    /// The slot's hash and id.
    pub(super) fn slot(&self) -> SlotId {
        SlotId {
            hash: self.hash,
            id: self.id,
        }
    }
}

impl<K> Hash for Hashed<K> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl<K> PartialEq for Hashed<K> {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.id == other.id
    }
}

impl<K> Eq for Hashed<K> {}

/// Which slot a key of the buffer is in: its hash and the slot's id. What
/// the buffer's own lookups (a batch, an outcome, a retry) go by, so they
/// never run the key's `Eq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotId {
    pub(super) hash: u64,
    pub(super) id: Seq,
}

impl SlotId {
    /// The key's hash, as the buffer took it when the key was pushed.
    pub fn hash(&self) -> u64 {
        self.hash
    }
}

/// What a lookup goes by: a held slot's id ([`SlotId`], and a [`Hashed`]
/// itself), or a key from outside ([`HashedRef`]), which only a key's `Eq`
/// can match. The map's keys borrow as `dyn Probe<K>`, so a lookup needs no
/// owned key.
pub(super) trait Probe<K> {
    fn hash(&self) -> u64;
    /// The slot's id; `None` for a key from outside.
    fn id(&self) -> Option<Seq>;
    /// The key; `None` for a bare slot id.
    fn key(&self) -> Option<&K>;
}

impl<K> Probe<K> for Hashed<K> {
    fn hash(&self) -> u64 {
        self.hash
    }
    fn id(&self) -> Option<Seq> {
        Some(self.id)
    }
    fn key(&self) -> Option<&K> {
        Some(&self.key)
    }
}

impl<K> Probe<K> for SlotId {
    fn hash(&self) -> u64 {
        self.hash
    }
    fn id(&self) -> Option<Seq> {
        Some(self.id)
    }
    fn key(&self) -> Option<&K> {
        None
    }
}

/// A borrowed key from outside the buffer and its hash.
pub(super) struct HashedRef<'a, K>(pub(super) u64, pub(super) &'a K);

impl<K> Probe<K> for HashedRef<'_, K> {
    fn hash(&self) -> u64 {
        self.0
    }
    fn id(&self) -> Option<Seq> {
        None
    }
    fn key(&self) -> Option<&K> {
        Some(self.1)
    }
}

impl<'a, K: 'a> Borrow<dyn Probe<K> + 'a> for Hashed<K> {
    fn borrow(&self) -> &(dyn Probe<K> + 'a) {
        self
    }
}

// Agree with `Hashed`'s own `Hash` and `Eq`, as `Borrow` requires: two held
// keys compare by id. A key from outside compares with a held one by the
// key's `Eq`; the map holds at most one slot per key (a push looks its key
// up before it makes a slot), so at most one held key matches it.
impl<K> Hash for dyn Probe<K> + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(Probe::hash(self));
    }
}

impl<K: PartialEq> PartialEq for dyn Probe<K> + '_ {
    fn eq(&self, other: &Self) -> bool {
        if Probe::hash(self) != Probe::hash(other) {
            return false;
        }
        match (self.id(), other.id()) {
            (Some(a), Some(b)) => a == b,
            _ => match (self.key(), other.key()) {
                (Some(a), Some(b)) => a == b,
                // A bare slot id against a key from outside: the map never
                // compares two probes, only a probe with a held key.
                _ => false,
            },
        }
    }
}

impl<K: Eq> Eq for dyn Probe<K> + '_ {}

/// The map's hasher: hands back the stored hash written to it.
#[derive(Default)]
pub(super) struct StoredHash(u64);

impl Hasher for StoredHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is ever called; fold anything else in all the same.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }
}
