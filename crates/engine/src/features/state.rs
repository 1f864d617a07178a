//! The keyed state of one windowed feature inside one shard: panes per key,
//! window firing on watermarks and allowed lateness (grouping by entity and
//! view publishing are in `serving`, removing keys in `expiry`).
//!
//! Layout (chosen because keyed state waits on memory): keys are interned to
//! dense ids; each key's entry holds its open panes inline (a tumbling window
//! needs one or two); per pane start, a list of the keys that have that pane
//! tells a firing window which keys to visit, so no window walks every key.
//! Aligned windows (tumbling, hopping) fire in start order once the
//! watermark passes their end; `fired_until` is the first window start not
//! yet fired, and a pane is dropped when every window holding it has fired
//! and its lateness has run out. Sessions keep per-key timers. Global
//! windows fire once, at end of input, in key order.
//!
//! Keys can be removed (TTL, forgetting an entity; see `expiry`): an id
//! found in a pane list or timer after its key was removed visits an empty
//! entry and does nothing, and the id is reused only once no such reference
//! can remain, so a stale reference never reaches another key's state.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use hashbrown::HashTable;
use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use super::emit::{Outputs, write_late, write_row};
use super::keys::KeyTable;
use super::prefix::Prefix;
use super::spec::FeatureSpec;
use crate::aggregate::{Acc, AggValue, Input};
use crate::record::{Record, RecordBatch};
use crate::time::WATERMARK_MAX;
use crate::window::{WindowSpec, align};

pub(super) const NONE: u32 = u32::MAX;

/// A partial aggregate starting at `start`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct Pane {
    pub(super) start: i64,
    /// Sessions and global windows: the exclusive end. Aligned panes: the
    /// earliest window start the pane counts in. Windows that the watermark
    /// had already passed when the pane was created (they were empty then,
    /// so they never fired) must not take its events, as in Flink, where an
    /// event skips every window that is late for it.
    pub(super) end: i64,
    pub(super) acc: Acc,
    pub(super) fired: bool,
}

/// The hot part of a key's state, touched per record.
#[derive(Debug, Clone)]
pub(super) struct KeyEntry {
    pub(super) panes: SmallVec<[Pane; 2]>,
    pub(super) max_ts: i64,
    pub(super) mark: u32,
    pub(super) dirty: bool,
}

impl KeyEntry {
    /// The state of a key before its first event.
    pub(super) fn empty() -> Self {
        KeyEntry { panes: SmallVec::new(), max_ts: i64::MIN, mark: 0, dirty: false }
    }
}

/// A closed window's value kept for serving: (start, end, value).
pub(super) type Closed = (i64, i64, AggValue);

/// A key's place in its entity's group, kept apart so records touch fewer cache lines.
#[derive(Debug, Clone, Copy)]
pub(super) struct Link {
    pub(super) group: u32,
    pub(super) next: u32,
}

/// Keys that share an entity (first key part), linked through [`Link`]s.
#[derive(Debug, Clone, Copy)]
pub(super) struct Group {
    pub(super) head: u32,
    pub(super) dirty: bool,
}

/// One feature's state in one shard.
pub struct FeatureState {
    pub(super) spec: FeatureSpec,
    index: u16,
    pub(super) keys: KeyTable,
    pub(super) entries: Vec<KeyEntry>,
    /// Last closed values, indexed like `entries` when the feature is served; empty otherwise.
    pub(super) last_closed: Vec<Option<Closed>>,
    /// Aligned windows: pane start → keys holding that pane, by start.
    pub(super) touched: VecDeque<(i64, Vec<u32>)>,
    spare_lists: Vec<Vec<u32>>,
    pub(super) fired_until: i64,
    /// Sessions: end → keys with a session ending there (stale entries are skipped).
    pub(super) timers: BTreeMap<i64, Vec<u32>>,
    mark: u32,
    /// No window fires and no pane expires before the watermark reaches this.
    pub(super) next_deadline: i64,
    pub(super) dirty: Vec<u32>,
    /// Whether keys are grouped by entity (`links`, `groups`): always when
    /// served, else from the first [`FeatureState::forget`] on.
    pub(super) indexed: bool,
    /// Indexed like `entries` when `indexed`.
    pub(super) links: Vec<Link>,
    pub(super) group_table: HashTable<(u64, u32)>,
    pub(super) groups: Vec<Group>,
    pub(super) free_groups: Vec<u32>,
    pub(super) dirty_groups: Vec<u32>,
    /// Served entities whose last key expired, to remove from the view at the next publish.
    pub(super) removed_entities: Vec<Box<str>>,
    /// TTL: (due, id), the earliest watermark at which a key may have expired.
    pub(super) ttl_queue: BinaryHeap<Reverse<(i64, u32)>>,
    /// TTL: each key's due time in `ttl_queue` (other entries for it are stale), indexed like `entries`.
    pub(super) ttl_due: Vec<i64>,
    /// Removed ids, reusable once the watermark reaches their time (no stale reference is left then).
    pub(super) limbo: BinaryHeap<Reverse<(i64, u32)>>,
    /// No key expires and no id is recycled before the watermark reaches this.
    pub(super) upkeep_deadline: i64,
    /// The last watermark seen.
    pub(super) watermark: i64,
    /// Hopping distinct counts: per key, its running window's older panes merged (see `prefix`).
    pub(super) prefixes: FxHashMap<u32, Prefix>,
}

impl FeatureState {
    /// Empty state for feature number `index`.
    pub fn new(index: u16, spec: FeatureSpec) -> Self {
        Self {
            indexed: spec.tracked(),
            spec,
            index,
            keys: KeyTable::default(),
            entries: Vec::new(),
            last_closed: Vec::new(),
            touched: VecDeque::new(),
            spare_lists: Vec::new(),
            fired_until: i64::MIN,
            timers: BTreeMap::new(),
            mark: 0,
            next_deadline: i64::MAX,
            dirty: Vec::new(),
            links: Vec::new(),
            group_table: HashTable::new(),
            groups: Vec::new(),
            free_groups: Vec::new(),
            dirty_groups: Vec::new(),
            removed_entities: Vec::new(),
            ttl_queue: BinaryHeap::new(),
            ttl_due: Vec::new(),
            limbo: BinaryHeap::new(),
            upkeep_deadline: i64::MAX,
            watermark: i64::MIN,
            prefixes: FxHashMap::default(),
        }
    }

    /// The feature's definition.
    pub fn spec(&self) -> &FeatureSpec {
        &self.spec
    }

    /// Number of keys held.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Approximate heap bytes used.
    pub fn heap_bytes(&self) -> usize {
        self.keys.heap_bytes()
            + self.entries.capacity() * std::mem::size_of::<KeyEntry>()
            + self.last_closed.capacity() * std::mem::size_of::<Option<Closed>>()
            + self.links.capacity() * std::mem::size_of::<Link>()
            + self.ttl_due.capacity() * 8
            + (self.ttl_queue.capacity() + self.limbo.capacity()) * 16
            + self.prefix_bytes()
    }

    /// Loads the key table slot of `hash` ahead of [`FeatureState::intern`].
    #[inline]
    pub fn warm(&self, hash: u64) -> u32 {
        self.keys.warm(hash)
    }

    /// The id of a key, creating its (empty) state when new, and the key's
    /// newest event time (reading it pulls the entry into cache early).
    #[inline]
    pub fn intern(&mut self, hash: u64, key: &[u8]) -> (u32, i64) {
        let id = self.entry_for(hash, key);
        (id, self.entries[id as usize].max_ts)
    }

    #[inline]
    pub(super) fn entry_for(&mut self, hash: u64, key: &[u8]) -> u32 {
        let (id, new) = self.keys.intern(hash, key);
        if new {
            self.new_entry(id, key);
        }
        id
    }

    /// Sets up the state of a newly interned key (a fresh id or a recycled one).
    fn new_entry(&mut self, id: u32, key: &[u8]) {
        put(&mut self.entries, id, KeyEntry::empty());
        self.forget_prefix(id);
        if self.spec.tracked() {
            put(&mut self.last_closed, id, None);
        }
        if self.spec.ttl.is_some() {
            put(&mut self.ttl_due, id, NOT_QUEUED);
        }
        if self.indexed {
            self.link(id, key);
        }
    }

    /// Folds one record in. `watermark` is the shard's current watermark.
    #[inline]
    pub fn apply(&mut self, batch: &RecordBatch, r: &Record, watermark: i64, out: &mut Outputs) {
        let id = self.entry_for(r.hash, batch.key(r));
        self.apply_interned(batch, r, id, watermark, out);
    }

    /// Folds one record in whose key was interned as `id`.
    #[inline]
    pub fn apply_interned(&mut self, batch: &RecordBatch, r: &Record, id: u32, watermark: i64, out: &mut Outputs) {
        let (key, ts, input, offset) = (batch.key(r), r.ts, batch.input(r), r.offset);
        match self.spec.window {
            WindowSpec::Session { gap } => self.apply_session(id, key, ts, gap, input, offset, watermark, out),
            WindowSpec::Global => {
                let e = &mut self.entries[id as usize];
                if e.panes.is_empty() {
                    e.panes.push(Pane { start: ts, end: ts + 1, acc: Acc::new(&self.spec.agg), fired: false });
                }
                let p = &mut e.panes[0];
                p.start = p.start.min(ts);
                p.end = p.end.max(ts + 1);
                p.acc.update(&self.spec.agg, ts, input);
                self.after_update(id, ts);
            }
            _ => self.apply_aligned(id, key, ts, input, offset, watermark, out),
        }
    }

    fn late(&mut self, id: u32, key: &[u8], ts: i64, offset: u64, watermark: i64, out: &mut Outputs) {
        out.late[self.index as usize] += 1;
        if let Some(s) = self.spec.late_sink {
            write_late(&mut out.sinks[s as usize], &self.spec, key, ts, offset, watermark);
        }
        if self.spec.ttl.is_some() && self.entries[id as usize].max_ts == i64::MIN {
            // A key made by a late event holds nothing: let TTL look at it at the next step.
            self.queue_ttl(id, watermark.saturating_add(1));
        }
    }

    /// Per record, so it must inline; a key's first event takes a cold call.
    #[inline(always)]
    fn after_update(&mut self, id: u32, ts: i64) {
        let e = &mut self.entries[id as usize];
        let first = e.max_ts == i64::MIN;
        e.max_ts = e.max_ts.max(ts);
        if self.spec.tracked() && !e.dirty {
            e.dirty = true;
            self.dirty.push(id);
        }
        if first {
            self.first_event(id, ts);
        }
    }

    /// Lists a served key for the next publish (after a restore).
    pub(super) fn mark_dirty(&mut self, id: u32) {
        let e = &mut self.entries[id as usize];
        if self.spec.tracked() && !e.dirty {
            e.dirty = true;
            self.dirty.push(id);
        }
    }

    /// A key's first event: it starts waiting for its TTL.
    #[cold]
    #[inline(never)]
    fn first_event(&mut self, id: u32, ts: i64) {
        if let Some(ttl) = self.spec.ttl {
            self.queue_ttl(id, ts.saturating_add(ttl));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn apply_aligned(
        &mut self,
        id: u32,
        key: &[u8],
        ts: i64,
        input: Input<'_>,
        offset: u64,
        wm: i64,
        out: &mut Outputs,
    ) {
        let (size, slide) = self.spec.window.size_slide().unwrap_or((1, 1));
        let width = self.spec.window.pane_width().unwrap_or(1);
        let lateness = self.spec.allowed_lateness;
        let pane = align(ts, width);
        let last_window = align(pane, slide);
        if last_window.saturating_add(size - 1).saturating_add(lateness) <= wm {
            self.late(id, key, ts, offset, wm, out);
            return;
        }
        let e = &mut self.entries[id as usize];
        let pos = match e.panes.iter().rposition(|p| p.start <= pane) {
            Some(i) if e.panes[i].start == pane => i,
            found => {
                let i = found.map_or(0, |i| i + 1);
                let first = self.spec.window.first_window_containing(pane).unwrap_or(pane);
                // Windows starting at or before `due` were complete before this pane existed.
                let from = match wm.checked_sub(size - 1) {
                    Some(due) if wm > i64::MIN => first.max(align(due, slide) + slide),
                    _ => first,
                };
                e.panes.insert(i, Pane { start: pane, end: from, acc: Acc::new(&self.spec.agg), fired: false });
                touch(&mut self.touched, &mut self.spare_lists, pane, id);
                let fire_at = first.max(self.fired_until).saturating_add(size - 1);
                let expire_at = last_window.saturating_add(size - 1).saturating_add(lateness);
                self.next_deadline = self.next_deadline.min(fire_at).min(expire_at);
                i
            }
        };
        e.panes[pos].acc.update(&self.spec.agg, ts, input);
        if pos + 1 != e.panes.len() {
            // Only the newest pane is never part of a cached merge.
            self.forget_prefix(id);
        }
        if pane < self.fired_until {
            // Windows holding this pane have fired: re-emit those still within lateness.
            let first = self.spec.window.first_window_containing(pane).unwrap_or(pane);
            let mut s = first;
            while s < self.fired_until && s <= last_window {
                if s + size - 1 + lateness > wm {
                    self.emit_key_window(id, s, s + size, out);
                }
                s += slide;
            }
        }
        self.after_update(id, ts);
    }

    #[allow(clippy::too_many_arguments)]
    fn apply_session(
        &mut self,
        id: u32,
        key: &[u8],
        ts: i64,
        gap: i64,
        input: Input<'_>,
        offset: u64,
        wm: i64,
        out: &mut Outputs,
    ) {
        let lateness = self.spec.allowed_lateness;
        if ts.saturating_add(gap - 1).saturating_add(lateness) <= wm {
            self.late(id, key, ts, offset, wm, out);
            return;
        }
        let agg = self.spec.agg;
        let e = &mut self.entries[id as usize];
        let mut merged = Pane { start: ts, end: ts + gap, acc: Acc::new(&agg), fired: false };
        merged.acc.update(&agg, ts, input);
        let mut was_fired = false;
        let mut i = 0;
        while i < e.panes.len() {
            let p = &e.panes[i];
            if p.start <= merged.end && p.end >= merged.start {
                let p = e.panes.remove(i);
                // Its timer is stale now: dropped, so timers stay one per
                // session rather than one per event (a hot key's 30 minutes
                // of events were millions of them).
                let due = if p.fired { p.end.saturating_add(lateness) } else { p.end };
                if let Some(ids) = self.timers.get_mut(&due) {
                    if let Some(at) = ids.iter().position(|&x| x == id) {
                        ids.swap_remove(at);
                    }
                    if ids.is_empty() {
                        self.timers.remove(&due);
                    }
                }
                merged.start = merged.start.min(p.start);
                merged.end = merged.end.max(p.end);
                merged.acc.merge(&agg, &p.acc);
                was_fired |= p.fired;
            } else {
                i += 1;
            }
        }
        let end = merged.end;
        let pos = e.panes.iter().position(|p| p.start > merged.start).unwrap_or(e.panes.len());
        e.panes.insert(pos, merged);
        self.timers.entry(end).or_default().push(id);
        self.next_deadline = self.next_deadline.min(end - 1);
        if was_fired && end - 1 <= wm {
            // A late event extended a fired session within lateness: re-emit it.
            self.fire_session(id, wm, out, true);
        }
        self.after_update(id, ts);
    }

    /// Fires every window complete at watermark `wm`, then expires keys
    /// past their TTL. Returns whether keys were removed (ids interned
    /// before this call may then be stale).
    #[inline]
    pub fn on_watermark(&mut self, wm: i64, out: &mut Outputs) -> bool {
        self.watermark = wm;
        if wm >= self.next_deadline {
            self.fire(wm, out);
        }
        wm >= self.upkeep_deadline && self.upkeep(wm)
    }

    fn fire(&mut self, wm: i64, out: &mut Outputs) {
        match self.spec.window {
            WindowSpec::Session { .. } => {
                while let Some(entry) = self.timers.first_entry() {
                    if *entry.key() - 1 > wm {
                        break;
                    }
                    let ids = entry.remove();
                    for id in ids {
                        self.fire_session(id, wm, out, false);
                    }
                }
                self.next_deadline = self.timers.keys().next().map_or(i64::MAX, |end| end - 1);
            }
            WindowSpec::Global => {
                if wm == WATERMARK_MAX {
                    // Key order: the same in a run restored from a snapshot, whose ids differ.
                    let mut ids: Vec<u32> =
                        (0..self.keys.id_bound()).filter(|&id| !self.entries[id as usize].panes.is_empty()).collect();
                    ids.sort_unstable_by(|&a, &b| self.keys.key(a).cmp(self.keys.key(b)));
                    for id in ids {
                        if let Some(p) = self.entries[id as usize].panes.pop() {
                            let (s, t) = (p.start, p.end);
                            if let Some(v) = p.acc.value() {
                                self.emit(id, s, t, v, out);
                            }
                        }
                    }
                }
            }
            _ => self.fire_aligned(wm, out),
        }
    }

    fn fire_session(&mut self, id: u32, wm: i64, out: &mut Outputs, refire: bool) {
        let lateness = self.spec.allowed_lateness;
        let mut fired = Vec::new();
        let e = &mut self.entries[id as usize];
        for p in e.panes.iter_mut() {
            if p.end - 1 <= wm && (!p.fired || refire) {
                p.fired = true;
                if let Some(v) = p.acc.value() {
                    fired.push((p.start, p.end, v));
                }
            }
        }
        e.panes.retain(|p| !(p.fired && p.end - 1 + lateness <= wm));
        if lateness > 0 {
            for p in e.panes.iter().filter(|p| p.fired) {
                self.timers.entry(p.end + lateness).or_default().push(id);
            }
        }
        self.next_deadline = self.timers.keys().next().map_or(i64::MAX, |end| end - 1);
        for (s, t, v) in fired {
            self.emit(id, s, t, v, out);
        }
    }

    fn fire_aligned(&mut self, wm: i64, out: &mut Outputs) {
        let Some((size, slide)) = self.spec.window.size_slide() else { return };
        loop {
            let idx = self.touched.partition_point(|(p, _)| *p < self.fired_until);
            let Some(&(pane, _)) = self.touched.get(idx) else { break };
            let first = self.spec.window.first_window_containing(pane).unwrap_or(pane);
            let s = self.fired_until.max(first);
            if s.saturating_add(size - 1) > wm {
                break;
            }
            self.mark = self.mark.wrapping_add(1);
            let mark = self.mark;
            let mut i = idx;
            while i < self.touched.len() && self.touched[i].0 < s + size {
                let n = self.touched[i].1.len();
                for j in 0..n {
                    let id = self.touched[i].1[j];
                    let e = &mut self.entries[id as usize];
                    if e.mark != mark {
                        e.mark = mark;
                        self.emit_key_window(id, s, s + size, out);
                    }
                }
                i += 1;
            }
            self.fired_until = s + slide;
        }
        self.cleanup_aligned(wm, size, slide);
        self.next_deadline = self.aligned_deadline(size, slide);
    }

    /// The lowest watermark at which an aligned window fires or a pane expires.
    fn aligned_deadline(&self, size: i64, slide: i64) -> i64 {
        let mut deadline = i64::MAX;
        let idx = self.touched.partition_point(|(p, _)| *p < self.fired_until);
        if let Some(&(pane, _)) = self.touched.get(idx) {
            let first = self.spec.window.first_window_containing(pane).unwrap_or(pane);
            deadline = first.max(self.fired_until).saturating_add(size - 1);
        }
        if let Some(&(pane, _)) = self.touched.front()
            && pane < self.fired_until
        {
            let expire = align(pane, slide).saturating_add(size - 1).saturating_add(self.spec.allowed_lateness);
            deadline = deadline.min(expire);
        }
        deadline
    }

    /// Drops panes whose every window has fired and run out of lateness.
    fn cleanup_aligned(&mut self, wm: i64, size: i64, slide: i64) {
        let lateness = self.spec.allowed_lateness;
        while let Some(&(pane, _)) = self.touched.front() {
            let last_window = align(pane, slide);
            if pane >= self.fired_until || last_window.saturating_add(size - 1).saturating_add(lateness) > wm {
                break;
            }
            let Some((_, mut ids)) = self.touched.pop_front() else { break };
            for &id in &ids {
                let panes = &mut self.entries[id as usize].panes;
                if let Some(i) = panes.iter().position(|p| p.start == pane) {
                    panes.remove(i);
                }
                self.forget_prefix(id);
            }
            ids.clear();
            self.spare_lists.push(ids);
        }
    }

    /// The value of aligned window `[start, end)` for key `id`.
    pub(super) fn merged(&self, id: u32, start: i64, end: i64) -> Option<AggValue> {
        let e = &self.entries[id as usize];
        let mut it = e.panes.iter().filter(|p| p.start >= start && p.start < end && p.end <= start);
        let first = it.next()?;
        let mut acc = first.acc.clone();
        for p in it {
            acc.merge(&self.spec.agg, &p.acc);
        }
        acc.into_value()
    }

    fn emit_key_window(&mut self, id: u32, start: i64, end: i64, out: &mut Outputs) {
        if let Some(v) = self.merged(id, start, end) {
            self.emit(id, start, end, v, out);
        }
    }

    fn emit(&mut self, id: u32, start: i64, end: i64, value: AggValue, out: &mut Outputs) {
        if let Some((sink, format)) = self.spec.sink {
            write_row(&mut out.sinks[sink as usize], format, &self.spec, start, end, self.keys.key(id), &value);
        }
        if self.spec.tracked() {
            self.last_closed[id as usize] = Some((start, end, value));
            let e = &mut self.entries[id as usize];
            if !e.dirty {
                e.dirty = true;
                self.dirty.push(id);
            }
        }
    }
}

/// `ttl_due` of a key not in the TTL queue.
pub(super) const NOT_QUEUED: i64 = i64::MIN;

/// Stores `x` at `id`, which is either a recycled id or the next new one.
#[inline]
pub(super) fn put<T>(v: &mut Vec<T>, id: u32, x: T) {
    match v.get_mut(id as usize) {
        Some(slot) => *slot = x,
        None => {
            debug_assert_eq!(v.len(), id as usize);
            v.push(x);
        }
    }
}

/// Records that key `id` has a pane starting at `pane`.
#[inline]
fn touch(touched: &mut VecDeque<(i64, Vec<u32>)>, spare: &mut Vec<Vec<u32>>, pane: i64, id: u32) {
    // Panes arrive nearly in order: search from the back.
    let mut i = touched.len();
    while i > 0 && touched[i - 1].0 > pane {
        i -= 1;
    }
    if i > 0 && touched[i - 1].0 == pane {
        touched[i - 1].1.push(id);
    } else {
        let mut list = spare.pop().unwrap_or_default();
        list.push(id);
        touched.insert(i, (pane, list));
    }
}
