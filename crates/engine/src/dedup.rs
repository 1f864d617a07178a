//! Keyed dedup tables, owned by the shards: which dedup keys were seen, and
//! since when, in event time.
//!
//! An entry lives until the watermark reaches its first event time plus the
//! stage's TTL; a min-queue by that time removes entries as the watermark
//! passes them, so no step scans the table. Decisions use the watermark the
//! event meets (as its records do), never the wall clock, so a replay or a
//! restored run decides the same. Keys are kept whole (short ones inline),
//! never just hashed: two events are duplicates only if their keys are
//! equal.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use hashbrown::HashTable;
use serde::Serialize;
use smallvec::SmallVec;

use crate::features::keys::hash_bytes;

/// One remembered key.
#[derive(Debug, Clone)]
struct Seen {
    hash: u64,
    key: SmallVec<[u8; 24]>,
    first_ts: i64,
}

/// The seen keys of one dedup stage in one shard.
#[derive(Debug, Clone)]
pub struct DedupTable {
    ttl: i64,
    table: HashTable<Seen>,
    /// (expiry, hash): one per entry.
    expiry: BinaryHeap<Reverse<(i64, u64)>>,
}

impl DedupTable {
    /// An empty table remembering keys for `ttl` ms of event time.
    pub fn new(ttl: i64) -> Self {
        Self { ttl, table: HashTable::new(), expiry: BinaryHeap::new() }
    }

    /// Forgets keys whose time ran out at watermark `wm`.
    pub fn expire(&mut self, wm: i64) {
        let ttl = self.ttl;
        while let Some(&Reverse((at, hash))) = self.expiry.peek() {
            if at > wm {
                break;
            }
            self.expiry.pop();
            // Entries sharing a hash are told apart by their own expiry.
            if let Ok(e) = self.table.find_entry(hash, |s| s.hash == hash && s.first_ts.saturating_add(ttl) <= wm) {
                e.remove();
            }
        }
    }

    /// Whether an event with `key` (hashed as `hash` by [`hash_bytes`]) at
    /// time `ts`, meeting watermark `wm`, repeats one seen within the TTL;
    /// if not, remembers it.
    pub fn check(&mut self, hash: u64, key: &[u8], ts: i64, wm: i64) -> bool {
        self.expire(wm);
        if self.table.find(hash, |s| s.hash == hash && s.key[..] == *key).is_some() {
            return true;
        }
        self.insert(hash, key, ts, wm);
        false
    }

    fn insert(&mut self, hash: u64, key: &[u8], ts: i64, wm: i64) {
        let at = ts.saturating_add(self.ttl);
        // An event whose time already ran out is not remembered (it would expire at once).
        if at > wm {
            self.table.insert_unique(hash, Seen { hash, key: SmallVec::from_slice(key), first_ts: ts }, |s| s.hash);
            self.expiry.push(Reverse((at, hash)));
        }
    }

    /// Number of keys remembered.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Approximate heap bytes used.
    pub fn heap_bytes(&self) -> usize {
        self.table.capacity() * std::mem::size_of::<Seen>() + self.expiry.capacity() * 16
    }

    /// The entries, for a snapshot: (key, first event time).
    pub fn snapshot(&self) -> DedupSnapshotRef<'_> {
        DedupSnapshotRef(self)
    }

    /// Loads entries saved by [`DedupTable::snapshot`] into this empty table.
    pub fn restore(&mut self, entries: Vec<(Vec<u8>, i64)>) {
        for (key, first_ts) in entries {
            self.insert(hash_bytes(&key), &key, first_ts, i64::MIN);
        }
    }
}

/// A table's entries, encoded as a sequence of (key, first event time)
/// straight from the table.
pub struct DedupSnapshotRef<'a>(&'a DedupTable);

impl Serialize for DedupSnapshotRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.table.iter().map(|e| (&e.key[..], e.first_ts)))
    }
}

/// What [`DedupSnapshotRef`] reads back as.
pub type DedupSnapshot = Vec<(Vec<u8>, i64)>;

#[cfg(test)]
mod tests {
    use super::*;

    fn check(t: &mut DedupTable, key: &str, ts: i64, wm: i64) -> bool {
        t.check(hash_bytes(key.as_bytes()), key.as_bytes(), ts, wm)
    }

    #[test]
    fn repeats_within_the_ttl_are_duplicates_until_the_watermark_passes() {
        let mut t = DedupTable::new(1000);
        assert!(!check(&mut t, "e1", 100, 0));
        assert!(check(&mut t, "e1", 150, 500), "seen at 100, kept until the watermark reaches 1100");
        assert!(!check(&mut t, "e2", 200, 500));
        assert!(check(&mut t, "e1", 100, 1099));
        assert!(!check(&mut t, "e1", 100, 1100), "expired at 1100: the event counts again");
        assert_eq!(t.len(), 1, "e2 expired with it; e1 was remembered again, from 100");
        assert!(!check(&mut t, "old", 0, 5000), "too old to remember");
        assert!(!check(&mut t, "old", 0, 5000));
        assert!(t.is_empty());
    }

    #[test]
    fn entries_with_equal_hashes_expire_each_at_its_own_time() {
        let mut t = DedupTable::new(100);
        // Force a collision: same hash, different keys.
        assert!(!t.check(7, b"a", 0, i64::MIN));
        assert!(!t.check(7, b"b", 50, i64::MIN));
        assert!(t.check(7, b"a", 0, 99) && t.check(7, b"b", 0, 99));
        t.expire(100);
        assert_eq!(t.len(), 1);
        assert!(!t.check(7, b"a", 200, 100) && t.check(7, b"b", 0, 149));
        t.expire(150);
        assert_eq!(t.len(), 1, "only a (again, from 200) is left");
    }

    #[test]
    fn snapshot_restores_every_entry() {
        let mut t = DedupTable::new(1000);
        for i in 0..100 {
            check(&mut t, &format!("e{i}"), i * 10, 0);
        }
        let bytes = postcard::to_stdvec(&t.snapshot()).unwrap();
        let mut u = DedupTable::new(1000);
        u.restore(postcard::from_bytes::<DedupSnapshot>(&bytes).unwrap());
        assert_eq!(u.len(), 100);
        assert!(check(&mut u, "e99", 0, 1989) && !check(&mut u, "e0", 5000, 1989));
        assert_eq!(u.len(), 1 + 1, "e99 (until 1990) and e0 again");
    }
}
