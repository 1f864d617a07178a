//! Composite keys and the per-operator key table that interns them to dense ids.
//!
//! A key is one or more parts (field texts) encoded as `varint(len) bytes`
//! each, so parts can hold any byte. The first part is the entity (user or
//! item id): it decides the shard, so all of one entity's groups live in one
//! place. Interning keeps short keys inline in the hash table (no pointer
//! chase, no `memcmp` through the arena on a hit), which matters because
//! keyed state waits on memory (shared PERFORMANCE.md).

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

/// Number of parts of `key` if it is a well-formed encoding (what
/// [`push_part`] writes), `None` otherwise; [`parts`] expects one.
pub fn count_parts(mut key: &[u8]) -> Option<usize> {
    let mut count = 0;
    while !key.is_empty() {
        // A length of up to five varint bytes (35 bits) is plenty; more is garbage.
        let (mut n, mut i) = (0usize, 0);
        loop {
            let b = *key.get(i)?;
            n |= ((b & 0x7f) as usize) << (7 * i);
            i += 1;
            if b < 0x80 {
                break;
            }
            if i == 5 {
                return None;
            }
        }
        key = key.get(i + n..)?;
        count += 1;
    }
    Some(count)
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

/// Bytes of a key kept in its slot.
const INLINE_BYTES: usize = 20;
const EMPTY: u32 = u32::MAX;

/// One open-addressing slot: 32 bytes, two per cache line.
#[derive(Clone, Copy)]
struct Slot {
    id: u32,
    tag: u32,
    len: u32,
    inline: [u8; INLINE_BYTES],
}

const VACANT: Slot = Slot { id: EMPTY, tag: 0, len: 0, inline: [0; INLINE_BYTES] };

/// Interns encoded keys to dense `u32` ids and keeps their bytes.
///
/// Hand-written (hot path): a linear-probing table whose slots hold the key
/// inline, so a lookup costs one cache miss, and [`KeyTable::warm`] can load
/// a slot ahead of use (a batch warms all its slots first, and the CPU
/// overlaps those misses). A general swiss table needs two dependent misses
/// (control bytes, then the slot) and exposes no way to warm a slot.
pub struct KeyTable {
    slots: Vec<Slot>,
    mask: usize,
    arena: Vec<u8>,
    spans: Vec<(u32, u32)>,
}

impl Default for KeyTable {
    fn default() -> Self {
        Self { slots: vec![VACANT; 1024], mask: 1023, arena: Vec::new(), spans: Vec::new() }
    }
}

#[inline]
fn inline_of(key: &[u8]) -> [u8; INLINE_BYTES] {
    let mut probe = [0u8; INLINE_BYTES];
    let n = key.len().min(INLINE_BYTES);
    probe[..n].copy_from_slice(&key[..n]);
    probe
}

impl KeyTable {
    /// Loads the slot where `hash` starts probing, so a later lookup hits cache.
    #[inline]
    pub fn warm(&self, hash: u64) -> u32 {
        self.slots[hash as usize & self.mask].id
    }

    /// The id of `key` (hashed as `hash` by [`hash_bytes`]), and whether it was new.
    #[inline]
    pub fn intern(&mut self, hash: u64, key: &[u8]) -> (u32, bool) {
        let tag = (hash >> 32) as u32;
        let probe = inline_of(key);
        let long = key.len() > INLINE_BYTES;
        let mut i = hash as usize & self.mask;
        loop {
            let s = &self.slots[i];
            if s.id == EMPTY {
                break;
            }
            if s.tag == tag && s.len as usize == key.len() && s.inline == probe && (!long || self.key(s.id) == key) {
                return (s.id, false);
            }
            i = (i + 1) & self.mask;
        }
        let id = self.spans.len() as u32;
        let start = self.arena.len() as u32;
        self.arena.extend_from_slice(key);
        self.spans.push((start, self.arena.len() as u32));
        self.slots[i] = Slot { id, tag, len: key.len() as u32, inline: probe };
        if self.spans.len() * 2 > self.slots.len() {
            self.grow();
        }
        (id, true)
    }

    fn grow(&mut self) {
        let cap = self.slots.len() * 2;
        let mut slots = vec![VACANT; cap];
        let mask = cap - 1;
        for s in self.slots.iter().filter(|s| s.id != EMPTY) {
            let hash = hash_bytes(self.key(s.id));
            let mut i = hash as usize & mask;
            while slots[i].id != EMPTY {
                i = (i + 1) & mask;
            }
            slots[i] = *s;
        }
        self.slots = slots;
        self.mask = mask;
    }

    /// The id of `key`, if interned.
    pub fn get(&self, key: &[u8]) -> Option<u32> {
        let hash = hash_bytes(key);
        let tag = (hash >> 32) as u32;
        let mut i = hash as usize & self.mask;
        loop {
            let s = &self.slots[i];
            if s.id == EMPTY {
                return None;
            }
            if s.tag == tag && self.key(s.id) == key {
                return Some(s.id);
            }
            i = (i + 1) & self.mask;
        }
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
        self.slots.capacity() * std::mem::size_of::<Slot>() + self.arena.capacity() + self.spans.capacity() * 8
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
        assert_eq!(count_parts(&k), Some(4));
        assert_eq!(count_parts(b""), Some(0));
        // Truncated lengths and parts, and endless varints, are not keys.
        for bad in [&k[..k.len() - 1], &[0x80][..], &[3, b'a'][..], &[0xff; 12][..]] {
            assert_eq!(count_parts(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn interns_many_keys_through_growth_and_finds_them_again() {
        let mut t = KeyTable::default();
        let keys: Vec<Vec<u8>> = (0..50_000)
            .map(|i| key(&[format!("u{i}").as_bytes(), if i % 3 == 0 { &[b'x'; 30] } else { b"view" }]))
            .collect();
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(t.intern(hash_bytes(k), k), (i as u32, true));
        }
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(t.intern(hash_bytes(k), k), (i as u32, false));
            assert_eq!(t.get(k), Some(i as u32));
        }
        assert_eq!(t.get(&key(&[b"nope"])), None);
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
