//! Keys kept with the hash they were pushed with (see "Hashing each key
//! once" in the buffer's module docs): the map's key type, the borrowed
//! form lookups use, and the hasher that hands the stored hash back.

use std::{
    borrow::Borrow,
    hash::{Hash, Hasher},
};

/// A key with the hash it was pushed with (see "Hashing each key once" in
/// the module docs).
#[derive(Clone, Debug)]
pub(super) struct Hashed<K> {
    pub(super) hash: u64,
    pub(super) key: K,
}

impl<K> Hash for Hashed<K> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl<K: PartialEq> PartialEq for Hashed<K> {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.key == other.key
    }
}

impl<K: Eq> Eq for Hashed<K> {}

/// A key to look up by, owned ([`Hashed`]) or borrowed ([`HashedRef`]): the
/// map's keys borrow as `dyn Probe<K>`, so a lookup needs no owned key.
pub(super) trait Probe<K> {
    fn hash(&self) -> u64;
    fn key(&self) -> &K;
}

impl<K> Probe<K> for Hashed<K> {
    fn hash(&self) -> u64 {
        self.hash
    }
    fn key(&self) -> &K {
        &self.key
    }
}

/// A borrowed key and its hash.
pub(super) struct HashedRef<'a, K>(pub(super) u64, pub(super) &'a K);

impl<K> Probe<K> for HashedRef<'_, K> {
    fn hash(&self) -> u64 {
        self.0
    }
    fn key(&self) -> &K {
        self.1
    }
}

impl<'a, K: 'a> Borrow<dyn Probe<K> + 'a> for Hashed<K> {
    fn borrow(&self) -> &(dyn Probe<K> + 'a) {
        self
    }
}

// Agree with `Hashed`'s own `Hash` and `Eq`, as `Borrow` requires.
impl<K> Hash for dyn Probe<K> + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(Probe::hash(self));
    }
}

impl<K: PartialEq> PartialEq for dyn Probe<K> + '_ {
    fn eq(&self, other: &Self) -> bool {
        Probe::hash(self) == Probe::hash(other) && self.key() == other.key()
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
