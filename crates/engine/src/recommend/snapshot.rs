//! The model's snapshot in two steps: a copy taken at the barrier, on the
//! shard that owns the model, and its encoding, on whichever thread writes
//! the checkpoint.
//!
//! The item lists (co-occurrence neighbours, successors) are most of a
//! model: at 50k events/s of the demo, 7M entries and 90 % of its bytes
//! after a minute. Encoding them on the shard stopped it for 100–250 ms
//! once a checkpoint interval, and a recommendation waited that long for a
//! user's event; copying them flat still took 200 ms at 20k items and 1M
//! interactions. So the copy shares each list (copy-on-write, see
//! `neighbours`: a list is copied only if the shard writes to it while the
//! copy still holds it), encodes what is small (the item ids, each item's
//! other fields, users, trending) and hands the copy over.
//!
//! The result is byte for byte what `postcard` makes of the model (tested),
//! so snapshots from before read back, and the other way round. Hand-written
//! because serde cannot splice bytes already encoded between fields: the
//! lists are written in postcard's layout (LEB128 lengths and item indexes,
//! little-endian floats).

use std::cell::OnceCell;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use serde::Serialize;

use super::neighbours::SharedEntries;
use super::{Recommender, UserProfile};

/// A model's state at a barrier, to encode elsewhere ([`ModelCopy::encode`]).
#[derive(Debug)]
pub struct ModelCopy {
    /// The item ids' map, encoded.
    head: Vec<u8>,
    /// Each item's fields before its lists, encoded, one after another.
    item_heads: Vec<u8>,
    /// The end of each item's fields in `item_heads`.
    item_head_ends: Vec<usize>,
    /// Every list's entries and its total weight, two lists an item:
    /// neighbours, then successors.
    lists: Vec<(SharedEntries, f64)>,
    /// The fields between the items and the users, encoded.
    before_users: Vec<u8>,
    /// Every user's profile, shared, in the model's map order.
    users: Vec<(Arc<str>, Arc<UserProfile>)>,
    /// `users` encoded, once, by whichever of [`ModelCopy::encoded_len`]
    /// and [`ModelCopy::encode_into`] needs them first.
    users_encoded: OnceCell<Vec<u8>>,
    /// The fields after the users, then the embeddings and unavailable items, encoded.
    tail: Vec<u8>,
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

/// The model's fields between the items and the users, in `Recommender`'s order.
#[derive(Serialize)]
struct BeforeUsers<'a> {
    candidate_norms: &'a [f32],
    attribute_ids: &'a FxHashMap<Box<str>, u32>,
    attributes: &'a [Box<str>],
}

/// The users' profiles as held by a copy, encoded as the model's map of them.
struct UsersRef<'a>(&'a [(Arc<str>, Arc<UserProfile>)]);

impl Serialize for UsersRef<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(name, profile)| (name, &**profile)))
    }
}

impl Recommender {
    /// Copies the model's state for [`ModelCopy::encode`]; its lists are
    /// shared, not copied (the next write to one copies it if the copy
    /// still holds it).
    pub fn snapshot_copy(&mut self) -> ModelCopy {
        let encode_error = "the model serialises";
        let head = postcard::to_stdvec(&self.item_ids).expect(encode_error);
        let mut item_heads = Vec::with_capacity(self.items.len() * 24);
        let mut item_head_ends = Vec::with_capacity(self.items.len());
        let mut lists = Vec::with_capacity(self.items.len() * 2);
        for item in &mut self.items {
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
            for list in [&mut item.neighbours, &mut item.successors] {
                lists.push((list.share(), list.total()));
            }
        }
        let before_users = BeforeUsers {
            candidate_norms: &self.candidate_norms,
            attribute_ids: &self.attribute_ids,
            attributes: &self.attributes,
        };
        let before_users = postcard::to_stdvec(&before_users).expect(encode_error);
        let users = self.users.iter().map(|(name, entry)| (Arc::clone(name), Arc::clone(&entry.profile))).collect();
        let mut tail = postcard::to_stdvec(&self.trending).expect(encode_error);
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
        ModelCopy { head, item_heads, item_head_ends, lists, before_users, users, users_encoded: OnceCell::new(), tail }
    }
}

impl ModelCopy {
    fn users_encoded(&self) -> &[u8] {
        self.users_encoded.get_or_init(|| postcard::to_stdvec(&UsersRef(&self.users)).expect("the model serialises"))
    }

    /// The length of [`ModelCopy::encode`]'s bytes.
    pub fn encoded_len(&self) -> usize {
        let lists: usize = self.lists.iter().map(|(list, _)| varint_len(list.len() as u64) + 8).sum();
        let entries: usize =
            self.lists.iter().flat_map(|(list, _)| list.iter()).map(|&(item, _)| varint_len(u64::from(item)) + 4).sum();
        self.head.len()
            + varint_len(self.item_head_ends.len() as u64)
            + self.item_heads.len()
            + lists
            + entries
            + self.before_users.len()
            + self.users_encoded().len()
            + self.tail.len()
    }

    /// Appends the snapshot's bytes (as [`Recommender::snapshot`]) to `out`,
    /// which the caller has made room in ([`ModelCopy::encoded_len`]).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.head);
        push_varint(out, self.item_head_ends.len() as u64);
        let mut head_from = 0;
        for (i, &head_end) in self.item_head_ends.iter().enumerate() {
            out.extend_from_slice(&self.item_heads[head_from..head_end]);
            head_from = head_end;
            for (list, total) in &self.lists[2 * i..2 * i + 2] {
                push_varint(out, list.len() as u64);
                for &(item, weight) in list.iter() {
                    push_varint(out, u64::from(item));
                    out.extend_from_slice(&weight.to_le_bytes());
                }
                out.extend_from_slice(&total.to_le_bytes());
            }
        }
        out.extend_from_slice(&self.before_users);
        out.extend_from_slice(self.users_encoded());
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

    /// `events` pseudo-random interactions (300 users, 1500 items, some
    /// catalog upserts), continuing the stream from `x` at time `from`.
    fn learn(m: &mut Recommender, x: &mut u64, from: i64, events: i64) {
        for t in from..from + events {
            *x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let (user, item) = ((*x >> 33) % 300, (*x >> 45) % 1500);
            let category = format!("c{}", item % 7);
            if t % 50 == 0 {
                m.upsert_item(&format!("i{item}"), Some(&category), &["t1"], t);
            }
            m.interaction(&format!("u{user}"), &format!("i{item}"), Some("view"), t * 1000);
        }
    }

    /// The copy encodes to postcard's bytes of the model, over item indexes
    /// and list lengths of several varint bytes, and its length is known
    /// first; the model's writes after the copy do not reach it, and a copy
    /// dropped before the writes costs them no copy of its lists.
    #[test]
    fn the_copy_encodes_the_model_as_it_was_at_the_copy() {
        let mut m = Recommender::new(RecommenderSpec::default());
        let mut x: u64 = 7;
        learn(&mut m, &mut x, 0, 20_000);
        let at_barrier = postcard::to_stdvec(&m).unwrap();
        let copy = m.snapshot_copy();
        assert!(copy.lists.iter().any(|(l, _)| l.iter().any(|&(item, _)| item >= 1 << 7)));
        assert_eq!(copy.lists.len(), 2 * 1500);
        // The shard goes on: learning, an item forgotten (its lists cleared, it leaves every other list).
        learn(&mut m, &mut x, 20_000, 5_000);
        assert!(m.forget_item("i3"));
        let bytes = copy.encode();
        assert_eq!(bytes.len(), copy.encoded_len());
        assert_eq!(bytes, at_barrier, "the copy is the model at the barrier");
        let now = postcard::to_stdvec(&m).unwrap();
        assert_ne!(now, at_barrier, "the model learned meanwhile");
        drop(copy);
        assert_eq!(m.snapshot_copy().encode(), now);

        // A list written after its copy is dropped is taken back, not copied.
        let popular = m.items.iter().position(|i| i.neighbours.len() > 10).unwrap();
        let copy = m.snapshot_copy();
        let buffer = copy.lists[2 * popular].0.as_ptr();
        drop(copy);
        let neighbours = &mut m.items[popular].neighbours;
        let (first, weight) = neighbours.entries()[0];
        neighbours.add(first, 1.0, 400);
        assert_eq!(neighbours.entries().as_ptr(), buffer);
        assert_eq!(neighbours.get(first), weight + 1.0);
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
