//! Composite keys and the per-operator key table that interns them to dense ids.
//!
//! A key is one or more parts (field texts) encoded as `varint(len) bytes`
//! each, so parts can hold any byte. The first part is the entity (user or
//! item id): it decides the shard, so all of one entity's groups live in one
//! place. Interning keeps short keys inline in the hash table (no pointer
//! chase, no `memcmp` through the arena on a hit), which matters because
//! keyed state waits on memory (shared PERFORMANCE.md).

use hashbrown::HashTable;

/// Bytes kept inline in a table slot.
const INLINE: usize = 24;

/// Appends one key part to an encoded key.
#[inline]
pub fn push_part(key: &mut Vec<u8>, part: &[u8]) {
    let mut n = part.len();
    while n >= 0x80 {
        key.push((n as u8) | 0x80);
        n >>= 7;
    }
    key.push(n as u8);
    key.extend_from_slice(part);
}

/// Iterates over the parts of an encoded key.
pub fn parts(mut key: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if key.is_empty() {
            return None;
        }
        let (mut n, mut shift, mut i) = (0usize, 0, 0);
        loop {
            let b = key[i];
            n |= ((b & 0x7f) as usize) << shift;
            i += 1;
            if b < 0x80 {
                break;
            }
            shift += 7;
        }
        let part = &key[i..i + n];
        key = &key[i + n..];
        Some(part)
    })
}

/// Length in bytes of the first encoded part (prefix included).
pub fn first_part_len(key: &[u8]) -> usize {
    parts(key).next().map_or(0, |p| p.len() + varint_len(p.len()))
}

fn varint_len(mut n: usize) -> usize {
    let mut l = 1;
    while n >= 0x80 {
        n >>= 7;
        l += 1;
    }
    l
}

/// The hash used for keys, shards and tables: deterministic across processes.
#[inline]
pub fn hash_bytes(b: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    rustc_hash::FxBuildHasher.hash_one(b)
}

#[derive(Clone, Copy)]
struct Slot {
    hash: u64,
    id: u32,
    len: u32,
    inline: [u8; INLINE],
}

/// Interns encoded keys to dense `u32` ids and keeps their bytes.
#[derive(Default)]
pub struct KeyTable {
    table: HashTable<Slot>,
    arena: Vec<u8>,
    spans: Vec<(u32, u32)>,
}

impl KeyTable {
    /// The id of `key` (hashed as `hash`), and whether it was new.
    #[inline]
    pub fn intern(&mut self, hash: u64, key: &[u8]) -> (u32, bool) {
        let arena = &self.arena;
        let spans = &self.spans;
        // Short keys compare as one fixed-width array: no call, no length-dependent loop.
        let mut probe = [0u8; INLINE];
        let n = key.len().min(INLINE);
        probe[..n].copy_from_slice(&key[..n]);
        let long = key.len() > INLINE;
        let found = self.table.find(hash, |s| {
            s.hash == hash
                && s.len as usize == key.len()
                && s.inline == probe
                && (!long || {
                    let (a, b) = spans[s.id as usize];
                    &arena[a as usize..b as usize] == key
                })
        });
        if let Some(s) = found {
            return (s.id, false);
        }
        let id = self.spans.len() as u32;
        let start = self.arena.len() as u32;
        self.arena.extend_from_slice(key);
        self.spans.push((start, self.arena.len() as u32));
        self.table.insert_unique(hash, Slot { hash, id, len: key.len() as u32, inline: probe }, |s| s.hash);
        (id, true)
    }

    /// The id of `key`, if interned.
    pub fn get(&self, key: &[u8]) -> Option<u32> {
        let hash = hash_bytes(key);
        self.table.find(hash, |s| s.hash == hash && self.key(s.id) == key).map(|s| s.id)
    }

    /// The encoded key of `id`.
    #[inline]
    pub fn key(&self, id: u32) -> &[u8] {
        let (a, b) = self.spans[id as usize];
        &self.arena[a as usize..b as usize]
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Approximate heap bytes used.
    pub fn heap_bytes(&self) -> usize {
        self.table.capacity() * std::mem::size_of::<Slot>() + self.arena.capacity() + self.spans.capacity() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(parts_: &[&[u8]]) -> Vec<u8> {
        let mut k = Vec::new();
        for p in parts_ {
            push_part(&mut k, p);
        }
        k
    }

    #[test]
    fn encodes_and_splits_parts_of_any_length() {
        let long = vec![b'x'; 300];
        let k = key(&[b"u1", b"", &long, b"a,b"]);
        let got: Vec<&[u8]> = parts(&k).collect();
        assert_eq!(got, vec![&b"u1"[..], b"", &long[..], b"a,b"]);
        assert_eq!(first_part_len(&k), 3);
    }

    #[test]
    fn interns_short_and_long_keys_to_stable_ids() {
        let mut t = KeyTable::default();
        let short = key(&[b"u75111", b"view"]);
        let long = key(&[&[b'z'; 40], b"add_to_cart"]);
        let (a, new_a) = t.intern(hash_bytes(&short), &short);
        let (b, new_b) = t.intern(hash_bytes(&long), &long);
        assert!(new_a && new_b && a != b);
        assert_eq!(t.intern(hash_bytes(&short), &short), (a, false));
        assert_eq!(t.intern(hash_bytes(&long), &long), (b, false));
        assert_eq!(t.key(b), &long[..]);
        assert_eq!(t.get(&short), Some(a));
        assert_eq!(t.len(), 2);
    }
}
