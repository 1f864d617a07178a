//! Composite keys and the per-operator key table that interns them to dense ids.
//!
//! A key is one or more parts (field texts) encoded as `varint(len) bytes`
//! each, so parts can hold any byte. The first part is the entity (user or
//! item id): it decides the shard, so all of one entity's groups live in one
//! place. Interning keeps short keys inline in the hash table (no pointer
//! chase, no `memcmp` through the arena on a hit), which matters because
//! keyed state waits on memory (shared PERFORMANCE.md).
//!
//! Keys can be removed (state TTL, forgetting an entity): a removal shifts
//! the probe run back over the hole (no tombstones, so lookups never slow
//! down), and the key's bytes become arena garbage that is compacted away
//! once it is half the arena. A removed id is not reused until the owner
//! [`KeyTable::recycle`]s it, so the owner decides when no stale reference
//! to it can remain.

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
    /// Arena span per id; [`DEAD`] for a removed id.
    spans: Vec<(u32, u32)>,
    /// Removed ids handed back by the owner, reused by [`KeyTable::intern`].
    free: Vec<u32>,
    live: usize,
    /// Arena bytes of removed keys.
    garbage: usize,
}

/// The span of a removed id: empty, where every key has at least one byte.
const DEAD: (u32, u32) = (0, 0);

/// Garbage below this many bytes is never worth a compaction.
const COMPACT_MIN_BYTES: usize = 1 << 16;

impl Default for KeyTable {
    fn default() -> Self {
        Self {
            slots: vec![VACANT; 1024],
            mask: 1023,
            arena: Vec::new(),
            spans: Vec::new(),
            free: Vec::new(),
            live: 0,
            garbage: 0,
        }
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
        let start = self.arena.len() as u32;
        self.arena.extend_from_slice(key);
        let span = (start, self.arena.len() as u32);
        let id = match self.free.pop() {
            Some(id) => {
                self.spans[id as usize] = span;
                id
            }
            None => {
                self.spans.push(span);
                (self.spans.len() - 1) as u32
            }
        };
        self.slots[i] = Slot { id, tag, len: key.len() as u32, inline: probe };
        self.live += 1;
        if self.live * 2 > self.slots.len() {
            self.grow();
        }
        (id, true)
    }

    /// Removes the key of `id`; returns whether it was there. The id stays
    /// unused until [`KeyTable::recycle`] hands it back.
    pub fn remove(&mut self, id: u32) -> bool {
        if !self.is_live(id) {
            return false;
        }
        let mut hole = hash_bytes(self.key(id)) as usize & self.mask;
        while self.slots[hole].id != id {
            hole = (hole + 1) & self.mask;
        }
        // Backward shift: move each later slot of the probe run whose home is
        // at or before the hole into it, so no lookup ever meets a gap.
        let mut j = (hole + 1) & self.mask;
        while self.slots[j].id != EMPTY {
            let home = self.home(&self.slots[j]);
            if (j.wrapping_sub(home) & self.mask) >= (j.wrapping_sub(hole) & self.mask) {
                self.slots[hole] = self.slots[j];
                hole = j;
            }
            j = (j + 1) & self.mask;
        }
        self.slots[hole] = VACANT;
        let (a, b) = self.spans[id as usize];
        self.garbage += (b - a) as usize;
        self.spans[id as usize] = DEAD;
        self.live -= 1;
        if self.garbage >= COMPACT_MIN_BYTES && self.garbage * 2 > self.arena.len() {
            self.compact();
        }
        true
    }

    /// Makes a removed id available to [`KeyTable::intern`] again.
    pub fn recycle(&mut self, id: u32) {
        debug_assert!(!self.is_live(id), "recycling live id {id}");
        self.free.push(id);
    }

    /// Whether `id` holds a key.
    #[inline]
    pub fn is_live(&self, id: u32) -> bool {
        self.spans.get(id as usize).is_some_and(|&(a, b)| b > a)
    }

    /// One past the largest id ever given out: ids range over `0..id_bound()`.
    pub fn id_bound(&self) -> u32 {
        self.spans.len() as u32
    }

    /// The probe start of a slot's key.
    fn home(&self, s: &Slot) -> usize {
        let key = if s.len as usize <= INLINE_BYTES { &s.inline[..s.len as usize] } else { self.key(s.id) };
        hash_bytes(key) as usize & self.mask
    }

    /// Copies the live keys into a fresh arena, dropping removed keys' bytes.
    fn compact(&mut self) {
        let mut arena = Vec::with_capacity(self.arena.len() - self.garbage);
        for span in self.spans.iter_mut().filter(|s| **s != DEAD) {
            let start = arena.len() as u32;
            arena.extend_from_slice(&self.arena[span.0 as usize..span.1 as usize]);
            *span = (start, arena.len() as u32);
        }
        self.arena = arena;
        self.garbage = 0;
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

    /// The encoded key of `id` (empty for a removed id).
    #[inline]
    pub fn key(&self, id: u32) -> &[u8] {
        let (a, b) = self.spans[id as usize];
        &self.arena[a as usize..b as usize]
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Approximate heap bytes used.
    pub fn heap_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Slot>()
            + self.arena.capacity()
            + self.spans.capacity() * 8
            + self.free.capacity() * 4
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

    #[test]
    fn removed_keys_are_gone_and_others_still_found_through_probe_runs() {
        // A tiny-table stand-in: many keys, so probe runs wrap and collide.
        let mut t = KeyTable::default();
        let keys: Vec<Vec<u8>> = (0..5000)
            .map(|i| key(&[format!("u{i}").as_bytes(), if i % 4 == 0 { &[b'y'; 25] } else { b"v" }]))
            .collect();
        for k in &keys {
            t.intern(hash_bytes(k), k);
        }
        for (i, k) in keys.iter().enumerate().filter(|(i, _)| i % 3 != 1) {
            assert!(t.remove(t.get(k).unwrap()), "key {i}");
        }
        assert_eq!(t.len(), (0..keys.len()).filter(|i| i % 3 == 1).count());
        for (i, k) in keys.iter().enumerate() {
            let id = t.get(k);
            assert_eq!(id.is_some(), i % 3 == 1, "key {i}");
            if let Some(id) = id {
                assert_eq!(t.key(id), &k[..]);
                assert_eq!(t.intern(hash_bytes(k), k), (id, false));
            }
        }
        assert!(!t.remove(t.id_bound()), "an id never given out");
    }

    #[test]
    fn ids_are_reused_only_once_recycled() {
        let mut t = KeyTable::default();
        let (a, b) = (key(&[b"a"]), key(&[b"b"]));
        let (ia, _) = t.intern(hash_bytes(&a), &a);
        assert!(t.remove(ia));
        assert!(!t.is_live(ia) && !t.remove(ia));
        assert_eq!(t.key(ia), b"");
        let (ib, new) = t.intern(hash_bytes(&b), &b);
        assert!(new && ib != ia, "a removed id is not reused before it is recycled");
        t.recycle(ia);
        let (ia2, new) = t.intern(hash_bytes(&a), &a);
        assert_eq!((ia2, new), (ia, true));
        assert_eq!(t.get(&b), Some(ib));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn removal_compacts_the_arena_and_keeps_memory_bounded_under_churn() {
        let mut t = KeyTable::default();
        let mut ids = std::collections::VecDeque::new();
        for i in 0..200_000u32 {
            let k = key(&[format!("user-{i:08}").as_bytes(), &[b'z'; 30]]);
            ids.push_back(t.intern(hash_bytes(&k), &k).0);
            if ids.len() > 1000 {
                let id = ids.pop_front().unwrap();
                assert!(t.remove(id));
                t.recycle(id);
            }
        }
        assert_eq!(t.len(), 1000);
        assert!(t.id_bound() <= 1001, "ids are reused: {}", t.id_bound());
        assert!(t.heap_bytes() < 1 << 20, "heap {} bytes for 1000 live keys", t.heap_bytes());
        for &id in &ids {
            let k = t.key(id).to_vec();
            assert_eq!(t.get(&k), Some(id));
        }
    }
}
