//! A bounded map from item to weight: an item's co-occurrence neighbours or
//! its successors.
//!
//! Weights only grow, so the heaviest entries are the ones worth keeping.
//! When the map reaches twice its bound it is pruned back to the bound,
//! dropping the lightest entries (ties by higher item index, so pruning is
//! deterministic). Memory per item is thus at most `2 · bound` entries, and
//! the amortised pruning cost is O(1) per insert. Hand-written because it is
//! a few lines over `hashbrown` and sits on the per-event path: the index
//! holds only positions (4 bytes a slot, half a map from item to position),
//! and a probe checks the entry it points at.
//!
//! The entries are copy-on-write: [`Neighbours::share`] hands them to a
//! checkpoint's copy of the model or to the serving view without copying
//! them, and the next write takes them back, copying them only if a holder
//! still has them. So a checkpoint's barrier does not stop the shard to copy
//! every list (200 ms at 20k items and 1M interactions): each list is copied
//! at most once, at its first write after the barrier, and not at all when
//! its holder is done first. While the model alone has them, a write checks
//! one enum tag (no atomic operation, which `Arc::make_mut` would add to
//! every write).

use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;
use serde::{Deserialize, Serialize, Serializer};

/// Weights by item index, bounded: entries in a vector (ranking reads them
/// as one slice) with a hash index for updates.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(from = "Stored")]
pub struct Neighbours {
    entries: Entries,
    /// Positions in `entries`, hashed by their entry's item.
    index: HashTable<u32>,
    total: f64,
}

/// A list's entries as handed to a holder (see [`Neighbours::share`]).
pub type SharedEntries = Arc<Vec<(u32, f32)>>;

/// An entry list, shared once handed out: the model's own until then.
#[derive(Debug, Clone)]
enum Entries {
    Owned(Vec<(u32, f32)>),
    Shared(SharedEntries),
}

impl Default for Entries {
    fn default() -> Self {
        Entries::Owned(Vec::new())
    }
}

impl Entries {
    fn as_slice(&self) -> &[(u32, f32)] {
        match self {
            Entries::Owned(entries) => entries,
            Entries::Shared(entries) => entries,
        }
    }

    /// The entries to write, taken back from their holders first if shared.
    #[inline]
    fn to_mut(&mut self) -> &mut Vec<(u32, f32)> {
        if let Entries::Shared(_) = self {
            self.take_back();
        }
        match self {
            Entries::Owned(entries) => entries,
            Entries::Shared(_) => unreachable!("taken back above"),
        }
    }

    /// Makes shared entries owned again: moved back when no one else holds
    /// them any more, else copied (with the capacity they had, so that the
    /// next inserts do not grow the copy at once).
    #[cold]
    fn take_back(&mut self) {
        if let Entries::Shared(shared) = std::mem::take(self) {
            let owned = Arc::try_unwrap(shared).unwrap_or_else(|shared| {
                let mut copy = Vec::with_capacity(shared.capacity());
                copy.extend_from_slice(&shared);
                copy
            });
            *self = Entries::Owned(owned);
        }
    }

    /// The entries, for a holder that only reads them.
    fn share(&mut self) -> SharedEntries {
        if let Entries::Owned(owned) = self {
            *self = Entries::Shared(Arc::new(std::mem::take(owned)));
        }
        match self {
            Entries::Shared(shared) => Arc::clone(shared),
            Entries::Owned(_) => unreachable!("shared above"),
        }
    }
}

fn hash(item: u32) -> u64 {
    FxBuildHasher.hash_one(item)
}

/// What a snapshot holds (the index is rebuilt on load).
#[derive(Deserialize)]
struct Stored {
    entries: Vec<(u32, f32)>,
    total: f64,
}

impl From<Stored> for Neighbours {
    fn from(s: Stored) -> Self {
        let mut n = Neighbours { entries: Entries::Owned(s.entries), index: HashTable::new(), total: s.total };
        n.reindex();
        n
    }
}

/// [`Stored`] by reference: a snapshot writes the entries without copying the map.
#[derive(Serialize)]
#[serde(rename = "Stored")]
struct StoredRef<'a> {
    entries: &'a [(u32, f32)],
    total: f64,
}

impl Serialize for Neighbours {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        StoredRef { entries: self.entries.as_slice(), total: self.total }.serialize(serializer)
    }
}

impl Neighbours {
    /// Adds `weight` to `item`'s entry, pruning to `bound` entries when the map reaches twice that.
    #[inline]
    pub fn add(&mut self, item: u32, weight: f32, bound: usize) {
        self.total += f64::from(weight);
        let entries = self.entries.to_mut();
        let h = hash(item);
        match self.index.find(h, |&at| entries[at as usize].0 == item) {
            Some(&at) => entries[at as usize].1 += weight,
            None => {
                let at = entries.len() as u32;
                entries.push((item, weight));
                self.index.insert_unique(h, at, |&at| hash(entries[at as usize].0));
                if bound > 0 && entries.len() >= 2 * bound {
                    self.prune(bound);
                }
            }
        }
    }

    /// Removes `item`'s entry, if any (the total keeps its weight, as it
    /// keeps a pruned entry's). Returns whether there was one.
    pub fn remove(&mut self, item: u32) -> bool {
        let entries = self.entries.as_slice();
        let Ok(slot) = self.index.find_entry(hash(item), |&at| entries[at as usize].0 == item) else { return false };
        let (at, _) = slot.remove();
        let at = at as usize;
        let entries = self.entries.to_mut();
        entries.swap_remove(at);
        // The last entry moved into `at`: its index slot follows it.
        if let Some(&(moved, _)) = entries.get(at) {
            let from = entries.len() as u32;
            if let Some(position) = self.index.find_mut(hash(moved), |&p| p == from) {
                *position = at as u32;
            }
        }
        true
    }

    /// Removes every entry and the total.
    pub fn clear(&mut self) {
        self.entries = Entries::default();
        self.index.clear();
        self.total = 0.0;
    }

    fn prune(&mut self, bound: usize) {
        let entries = self.entries.to_mut();
        entries.select_nth_unstable_by(bound, |a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        entries.truncate(bound);
        self.reindex();
    }

    /// Rebuilds the index from the entries (keeping its capacity).
    fn reindex(&mut self) {
        self.index.clear();
        let entries = self.entries.as_slice();
        self.index.reserve(entries.len(), |&at| hash(entries[at as usize].0));
        for (at, &(item, _)) in entries.iter().enumerate() {
            self.index.insert_unique(hash(item), at as u32, |&at| hash(entries[at as usize].0));
        }
    }

    /// The weight of `item` (0 when absent).
    pub fn get(&self, item: u32) -> f32 {
        let entries = self.entries.as_slice();
        self.index.find(hash(item), |&at| entries[at as usize].0 == item).map_or(0.0, |&at| entries[at as usize].1)
    }

    /// Every entry, in no particular order.
    pub fn entries(&self) -> &[(u32, f32)] {
        self.entries.as_slice()
    }

    /// Every entry, in no particular order, for a holder that keeps them
    /// as they are now: no copy until the next write (see the module doc).
    pub fn share(&mut self) -> SharedEntries {
        self.entries.share()
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, f32)> + '_ {
        self.entries.as_slice().iter().copied()
    }

    /// Everything ever added, pruned entries included.
    pub fn total(&self) -> f64 {
        self.total
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.as_slice().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.as_slice().is_empty()
    }

    /// The `k` heaviest entries, heaviest first (ties: lower index first).
    pub fn top(&self, k: usize) -> Vec<(u32, f32)> {
        let mut entries = self.entries.as_slice().to_vec();
        entries.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        entries.truncate(k);
        entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prunes_the_lightest_back_to_the_bound() {
        let mut n = Neighbours::default();
        for item in 0..7u32 {
            n.add(item, item as f32, 4);
        }
        // Reaching 8 entries prunes to 4: the 7th insert makes 7 entries, no prune yet.
        assert_eq!(n.len(), 7);
        n.add(7, 7.0, 4);
        assert_eq!(n.len(), 4);
        let kept: Vec<u32> = n.top(10).into_iter().map(|(i, _)| i).collect();
        assert_eq!(kept, vec![7, 6, 5, 4]);
        assert_eq!(n.total(), (0..8).sum::<u32>() as f64);
    }

    #[test]
    fn a_snapshot_round_trip_keeps_entries_order_and_total() {
        let mut n = Neighbours::default();
        for item in [5u32, 3, 9, 3, 1] {
            n.add(item, 0.5 + item as f32, 10);
        }
        let bytes = postcard::to_stdvec(&n).unwrap();
        // The layout is (entries, total), as snapshots have always stored it.
        let (entries, total): (Vec<(u32, f32)>, f64) = postcard::from_bytes(&bytes).unwrap();
        assert_eq!((&entries[..], total), (n.entries(), n.total()));
        let back: Neighbours = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.entries(), n.entries());
        assert_eq!(back.get(3), n.get(3));
    }

    #[test]
    fn removing_an_entry_keeps_the_others_findable() {
        let mut n = Neighbours::default();
        for item in 0..6u32 {
            n.add(item, 1.0 + item as f32, 10);
        }
        assert!(n.remove(2), "2 was there");
        assert!(!n.remove(2), "2 is gone");
        assert_eq!(n.get(2), 0.0);
        // The last entry (5) moved into 2's place and is still found, as are the rest.
        for item in [0u32, 1, 3, 4, 5] {
            assert_eq!(n.get(item), 1.0 + item as f32, "item {item}");
        }
        assert!(n.remove(5) && n.remove(0));
        assert_eq!(n.len(), 3);
        n.add(2, 7.0, 10);
        assert_eq!((n.get(2), n.get(4)), (7.0, 5.0));
        assert_eq!(n.total(), (1..=6).sum::<u32>() as f64 + 7.0, "removal keeps the total, as pruning does");
        n.clear();
        assert!(n.is_empty() && n.get(4) == 0.0 && n.total() == 0.0);
    }

    #[test]
    fn shared_entries_stay_as_shared_while_the_map_goes_on() {
        let mut n = Neighbours::default();
        for item in 0..6u32 {
            n.add(item, 1.0, 4);
        }
        let held = n.share();
        n.add(2, 1.0, 4);
        n.add(9, 3.0, 4);
        n.add(10, 3.0, 4);
        assert!(n.remove(0));
        assert_eq!(held.len(), 6);
        assert!(held.iter().all(|&(_, w)| w == 1.0), "the holder's entries are as shared");
        assert_eq!((n.get(2), n.get(9), n.get(0)), (2.0, 3.0, 0.0), "the map is written, and found through its index");
        assert_ne!(n.entries().as_ptr(), held.as_ptr(), "copied, as the holder still has them");
        // Released before the next write: taken back without a copy.
        let buffer = n.share().as_ptr();
        n.add(9, 1.0, 4);
        assert_eq!(n.entries().as_ptr(), buffer);
        assert_eq!(n.get(9), 4.0);
    }

    #[test]
    fn weights_accumulate() {
        let mut n = Neighbours::default();
        n.add(3, 0.5, 10);
        n.add(3, 0.25, 10);
        assert_eq!(n.get(3), 0.75);
        assert_eq!(n.get(4), 0.0);
    }
}
