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

use std::hash::BuildHasher;

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;
use serde::{Deserialize, Serialize, Serializer};

/// Weights by item index, bounded: entries in a vector (ranking reads them
/// as one slice) with a hash index for updates.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(from = "Stored")]
pub struct Neighbours {
    entries: Vec<(u32, f32)>,
    /// Positions in `entries`, hashed by their entry's item.
    index: HashTable<u32>,
    total: f64,
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
        let mut n = Neighbours { entries: s.entries, index: HashTable::new(), total: s.total };
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
        StoredRef { entries: &self.entries, total: self.total }.serialize(serializer)
    }
}

impl Neighbours {
    /// Adds `weight` to `item`'s entry, pruning to `bound` entries when the map reaches twice that.
    #[inline]
    pub fn add(&mut self, item: u32, weight: f32, bound: usize) {
        self.total += f64::from(weight);
        let entries = &mut self.entries;
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
        let entries = &self.entries;
        let Ok(slot) = self.index.find_entry(hash(item), |&at| entries[at as usize].0 == item) else { return false };
        let (at, _) = slot.remove();
        let at = at as usize;
        self.entries.swap_remove(at);
        // The last entry moved into `at`: its index slot follows it.
        if let Some(&(moved, _)) = self.entries.get(at) {
            let from = self.entries.len() as u32;
            if let Some(position) = self.index.find_mut(hash(moved), |&p| p == from) {
                *position = at as u32;
            }
        }
        true
    }

    /// Removes every entry and the total.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.index.clear();
        self.total = 0.0;
    }

    fn prune(&mut self, bound: usize) {
        self.entries.select_nth_unstable_by(bound, |a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        self.entries.truncate(bound);
        self.reindex();
    }

    /// Rebuilds the index from the entries (keeping its capacity).
    fn reindex(&mut self) {
        self.index.clear();
        let entries = &self.entries;
        self.index.reserve(entries.len(), |&at| hash(entries[at as usize].0));
        for (at, &(item, _)) in entries.iter().enumerate() {
            self.index.insert_unique(hash(item), at as u32, |&at| hash(entries[at as usize].0));
        }
    }

    /// The weight of `item` (0 when absent).
    pub fn get(&self, item: u32) -> f32 {
        let entries = &self.entries;
        self.index.find(hash(item), |&at| entries[at as usize].0 == item).map_or(0.0, |&at| entries[at as usize].1)
    }

    /// Every entry, in no particular order.
    pub fn entries(&self) -> &[(u32, f32)] {
        &self.entries
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, f32)> + '_ {
        self.entries.iter().copied()
    }

    /// Everything ever added, pruned entries included.
    pub fn total(&self) -> f64 {
        self.total
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The `k` heaviest entries, heaviest first (ties: lower index first).
    pub fn top(&self, k: usize) -> Vec<(u32, f32)> {
        let mut entries = self.entries.clone();
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
    fn weights_accumulate() {
        let mut n = Neighbours::default();
        n.add(3, 0.5, 10);
        n.add(3, 0.25, 10);
        assert_eq!(n.get(3), 0.75);
        assert_eq!(n.get(4), 0.0);
    }
}
