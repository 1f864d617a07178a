//! The model's snapshot in two steps: a copy taken at the barrier, on the
//! shard that owns the model, and its encoding, on whichever thread writes
//! the checkpoint.
//!
//! The item lists (co-occurrence neighbours, successors) are most of a
//! model: at 50k events/s of the demo, 7M entries and 90 % of its bytes
//! after a minute. Encoding them on the shard stopped it for 100–250 ms
//! once a checkpoint interval, and a recommendation waited that long for a
//! user's event. So the shard now copies the lists' entries flat (one
//! memory copy, no allocation per item), encodes what is small (the item
//! ids, each item's other fields, users, trending) and hands the copy over.
//!
//! A dropped copy hands its list buffer back to the model for the next one
//! (behind a mutex taken once a checkpoint), so the shard copies into pages
//! already mapped rather than faulting in fresh ones.
//!
//! The result is byte for byte what `postcard` makes of the model (tested),
//! so snapshots from before read back, and the other way round. Hand-written
//! because serde cannot splice bytes already encoded between fields: the
//! lists are written in postcard's layout (LEB128 lengths and item indexes,
//! little-endian floats).

use std::sync::{Arc, Mutex};

use rustc_hash::FxHashMap;
use serde::Serialize;

use super::trending::Trending;
use super::{Recommender, UserProfile};

/// A list buffer handed back by a dropped [`ModelCopy`] for the next one.
pub(crate) type Spare = Arc<Mutex<Vec<(u32, f32)>>>;

/// A model's state at a barrier, to encode elsewhere ([`ModelCopy::encode`]).
#[derive(Debug)]
pub struct ModelCopy {
    /// The item ids' map, encoded.
    head: Vec<u8>,
    /// Each item's fields before its lists, encoded, one after another.
    item_heads: Vec<u8>,
    /// The end of each item's fields in `item_heads`.
    item_head_ends: Vec<usize>,
    /// Every list's entries, two lists an item: neighbours, then successors.
    entries: Vec<(u32, f32)>,
    /// Each list's end in `entries` and its total weight.
    lists: Vec<(usize, f64)>,
    /// The fields after the items, then the embeddings and unavailable items, encoded.
    tail: Vec<u8>,
    /// Where `entries` goes back to when the copy is dropped.
    spare: Spare,
}

impl Drop for ModelCopy {
    fn drop(&mut self) {
        if let Ok(mut spare) = self.spare.lock() {
            *spare = std::mem::take(&mut self.entries);
        }
    }
}

/// An item's fields before its lists, in `ItemState`'s order.
#[derive(Serialize)]
struct ItemHead<'a> {
    name: &'a str,
    category: Option<u32>,
    tags: &'a [u32],
    users: u32,
    source_norm: f32,
    candidate_norm: f32,
}

/// The model's fields after the items, in `Recommender`'s order.
#[derive(Serialize)]
struct Tail<'a> {
    candidate_norms: &'a [f32],
    attribute_ids: &'a FxHashMap<Box<str>, u32>,
    attributes: &'a [Box<str>],
    users: &'a FxHashMap<Box<str>, UserProfile>,
    trending: &'a Trending,
}

impl Recommender {
    /// Copies the model's state for [`ModelCopy::encode`].
    pub fn snapshot_copy(&self) -> ModelCopy {
        let encode_error = "the model serialises";
        let head = postcard::to_stdvec(&self.item_ids).expect(encode_error);
        let mut item_heads = Vec::with_capacity(self.items.len() * 24);
        let mut item_head_ends = Vec::with_capacity(self.items.len());
        let count: usize = self.items.iter().map(|i| i.neighbours.len() + i.successors.len()).sum();
        // A poisoned lock only loses the spare buffer.
        let mut entries = self.spare_lists.lock().map(|mut spare| std::mem::take(&mut *spare)).unwrap_or_default();
        entries.clear();
        entries.reserve(count);
        let mut lists = Vec::with_capacity(self.items.len() * 2);
        for item in &self.items {
            let fields = ItemHead {
                name: &item.name,
                category: item.category,
                tags: &item.tags,
                users: item.users,
                source_norm: item.source_norm,
                candidate_norm: item.candidate_norm,
            };
            item_heads = postcard::to_extend(&fields, item_heads).expect(encode_error);
            item_head_ends.push(item_heads.len());
            for list in [&item.neighbours, &item.successors] {
                entries.extend_from_slice(list.entries());
                lists.push((entries.len(), list.total()));
            }
        }
        let tail = Tail {
            candidate_norms: &self.candidate_norms,
            attribute_ids: &self.attribute_ids,
            attributes: &self.attributes,
            users: &self.users,
            trending: &self.trending,
        };
        let mut tail = postcard::to_stdvec(&tail).expect(encode_error);
        // Optional trailing parts, so that snapshots from before each read back:
        // the embeddings (empty when only the next part is there), then unavailable items.
        let stored = self.embeddings.stored();
        let unavailable: Vec<u32> = self.unavailable_items().ones().map(|i| i as u32).collect();
        if !stored.is_empty() || !unavailable.is_empty() {
            tail = postcard::to_extend(&stored, tail).expect("embeddings serialise");
        }
        if !unavailable.is_empty() {
            tail = postcard::to_extend(&unavailable, tail).expect("indexes serialise");
        }
        ModelCopy { head, item_heads, item_head_ends, entries, lists, tail, spare: Arc::clone(&self.spare_lists) }
    }
}

impl ModelCopy {
    /// The length of [`ModelCopy::encode`]'s bytes.
    pub fn encoded_len(&self) -> usize {
        let mut from = 0;
        let lists: usize = self
            .lists
            .iter()
            .map(|&(end, _)| {
                let len = end - from;
                from = end;
                varint_len(len as u64) + 8
            })
            .sum();
        let entries: usize = self.entries.iter().map(|&(item, _)| varint_len(u64::from(item)) + 4).sum();
        self.head.len()
            + varint_len(self.item_head_ends.len() as u64)
            + self.item_heads.len()
            + lists
            + entries
            + self.tail.len()
    }

    /// Appends the snapshot's bytes (as [`Recommender::snapshot`]) to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        out.extend_from_slice(&self.head);
        push_varint(out, self.item_head_ends.len() as u64);
        let (mut head_from, mut entry_from) = (0, 0);
        for (i, &head_end) in self.item_head_ends.iter().enumerate() {
            out.extend_from_slice(&self.item_heads[head_from..head_end]);
            head_from = head_end;
            for &(end, total) in &self.lists[2 * i..2 * i + 2] {
                let list = &self.entries[entry_from..end];
                entry_from = end;
                push_varint(out, list.len() as u64);
                for &(item, weight) in list {
                    push_varint(out, u64::from(item));
                    out.extend_from_slice(&weight.to_le_bytes());
                }
                out.extend_from_slice(&total.to_le_bytes());
            }
        }
        out.extend_from_slice(&self.tail);
    }

    /// The snapshot's bytes, as [`Recommender::snapshot`] makes them.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out
    }
}

/// Bytes of `x` as a LEB128 varint (postcard's encoding of lengths and integers).
fn varint_len(x: u64) -> usize {
    (64 - (x | 1).leading_zeros() as usize).div_ceil(7)
}

/// Appends `x` as a LEB128 varint.
pub(crate) fn push_varint(out: &mut Vec<u8>, mut x: u64) {
    while x >= 0x80 {
        out.push((x as u8) | 0x80);
        x >>= 7;
    }
    out.push(x as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recommend::RecommenderSpec;

    /// The copy encodes to postcard's bytes of the model, over item indexes
    /// and list lengths of several varint bytes, and its length is known first.
    #[test]
    fn the_copy_encodes_as_postcard_encodes_the_model() {
        let mut m = Recommender::new(RecommenderSpec::default());
        let mut x: u64 = 7;
        for t in 0..20_000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let (user, item) = ((x >> 33) % 300, (x >> 45) % 1500);
            let category = format!("c{}", item % 7);
            if t % 50 == 0 {
                m.upsert_item(&format!("i{item}"), Some(&category), &["t1"], t);
            }
            m.interaction(&format!("u{user}"), &format!("i{item}"), Some("view"), t * 1000);
        }
        let copy = m.snapshot_copy();
        assert!(copy.entries.iter().any(|&(item, _)| item >= 1 << 7) && copy.lists.len() == 2 * 1500);
        let bytes = copy.encode();
        assert_eq!(bytes.len(), copy.encoded_len());
        assert_eq!(bytes, postcard::to_stdvec(&m).unwrap());
        // Dropped, the copy hands its list buffer to the next one.
        let buffer = copy.entries.as_ptr();
        drop(copy);
        let again = m.snapshot_copy();
        assert_eq!(again.entries.as_ptr(), buffer);
        assert_eq!(again.encode(), bytes);
    }

    #[test]
    fn varints_are_leb128() {
        for x in [0u64, 1, 127, 128, 300, 16_383, 16_384, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            push_varint(&mut out, x);
            assert_eq!(out.len(), varint_len(x), "{x}");
            assert_eq!(out, postcard::to_stdvec(&x).unwrap(), "{x}");
        }
    }
}
