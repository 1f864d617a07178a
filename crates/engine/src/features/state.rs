//! The keyed state of one windowed feature inside one shard: panes per key,
//! window firing on watermarks, allowed lateness, and view publishing.
//!
//! Layout (chosen because keyed state waits on memory): keys are interned to
//! dense ids; each key's entry holds its open panes inline (a tumbling window
//! needs one or two); per pane start, a list of the keys that have that pane
//! tells a firing window which keys to visit, so no window walks every key.
//! Aligned windows (tumbling, hopping) fire in start order once the
//! watermark passes their end; `fired_until` is the first window start not
//! yet fired, and a pane is dropped when every window holding it has fired
//! and its lateness has run out. Sessions keep per-key timers.

use std::collections::{BTreeMap, VecDeque};

use hashbrown::HashTable;
use smallvec::SmallVec;

use super::emit::{Outputs, write_late, write_row};
use super::keys::{KeyTable, first_part_len, hash_bytes, parts};
use super::spec::FeatureSpec;
use super::view::{EntityView, FeatureView, GroupView, WindowValue};
use crate::aggregate::{Acc, AggValue, Input};
use crate::record::{Record, RecordBatch};
use crate::time::WATERMARK_MAX;
use crate::window::{WindowSpec, align};

const NONE: u32 = u32::MAX;

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
    mark: u32,
    dirty: bool,
}

/// The serving part of a key's state, kept apart so records touch fewer cache lines.
#[derive(Debug, Clone)]
pub(super) struct Serving {
    pub(super) last_closed: Option<(i64, i64, AggValue)>,
    group: u32,
    next_in_group: u32,
}

/// Keys that share an entity (first key part), linked through their entries.
#[derive(Debug, Clone, Copy)]
struct Group {
    head: u32,
    dirty: bool,
}

/// One feature's state in one shard.
pub struct FeatureState {
    pub(super) spec: FeatureSpec,
    index: u16,
    pub(super) keys: KeyTable,
    pub(super) entries: Vec<KeyEntry>,
    /// Indexed like `entries` when the feature is served; empty otherwise.
    pub(super) serving: Vec<Serving>,
    /// Aligned and global windows: pane start → keys holding that pane, by start.
    pub(super) touched: VecDeque<(i64, Vec<u32>)>,
    spare_lists: Vec<Vec<u32>>,
    pub(super) fired_until: i64,
    /// Sessions: end → keys with a session ending there (stale entries are skipped).
    pub(super) timers: BTreeMap<i64, Vec<u32>>,
    mark: u32,
    /// No window fires and no pane expires before the watermark reaches this.
    pub(super) next_deadline: i64,
    dirty: Vec<u32>,
    group_table: HashTable<(u64, u32)>,
    groups: Vec<Group>,
    dirty_groups: Vec<u32>,
}

impl FeatureState {
    /// Empty state for feature number `index`.
    pub fn new(index: u16, spec: FeatureSpec) -> Self {
        Self {
            spec,
            index,
            keys: KeyTable::default(),
            entries: Vec::new(),
            serving: Vec::new(),
            touched: VecDeque::new(),
            spare_lists: Vec::new(),
            fired_until: i64::MIN,
            timers: BTreeMap::new(),
            mark: 0,
            next_deadline: i64::MAX,
            dirty: Vec::new(),
            group_table: HashTable::new(),
            groups: Vec::new(),
            dirty_groups: Vec::new(),
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
            + self.serving.capacity() * std::mem::size_of::<Serving>()
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
            self.entries.push(KeyEntry { panes: SmallVec::new(), max_ts: i64::MIN, mark: 0, dirty: false });
            if self.spec.serve {
                let entity = &key[..first_part_len(key)];
                let eh = hash_bytes(entity);
                let keys = &self.keys;
                let groups = &self.groups;
                let found = self.group_table.find(eh, |&(h, g)| {
                    h == eh && {
                        let head = keys.key(groups[g as usize].head);
                        &head[..first_part_len(head)] == entity
                    }
                });
                let g = match found {
                    Some(&(_, g)) => g,
                    None => {
                        let g = self.groups.len() as u32;
                        self.groups.push(Group { head: NONE, dirty: false });
                        self.group_table.insert_unique(eh, (eh, g), |&(h, _)| h);
                        g
                    }
                };
                let next_in_group = self.groups[g as usize].head;
                self.groups[g as usize].head = id;
                self.serving.push(Serving { last_closed: None, group: g, next_in_group });
            }
        }
        id
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
                    touch(&mut self.touched, &mut self.spare_lists, i64::MIN, id);
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

    fn late(&mut self, key: &[u8], ts: i64, offset: u64, watermark: i64, out: &mut Outputs) {
        out.late[self.index as usize] += 1;
        if let Some(s) = self.spec.late_sink {
            write_late(&mut out.sinks[s as usize], &self.spec, key, ts, offset, watermark);
        }
    }

    #[inline]
    fn after_update(&mut self, id: u32, ts: i64) {
        let e = &mut self.entries[id as usize];
        e.max_ts = e.max_ts.max(ts);
        if self.spec.serve && !e.dirty {
            e.dirty = true;
            self.dirty.push(id);
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
            self.late(key, ts, offset, wm, out);
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
            self.late(key, ts, offset, wm, out);
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

    /// Fires every window complete at watermark `wm`.
    #[inline]
    pub fn on_watermark(&mut self, wm: i64, out: &mut Outputs) {
        if wm < self.next_deadline {
            return;
        }
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
                if wm == WATERMARK_MAX
                    && let Some((_, ids)) = self.touched.pop_front()
                {
                    for id in ids {
                        let e = &mut self.entries[id as usize];
                        if let Some(p) = e.panes.pop() {
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
            }
            ids.clear();
            self.spare_lists.push(ids);
        }
    }

    /// The value of aligned window `[start, end)` for key `id`.
    fn merged(&self, id: u32, start: i64, end: i64) -> Option<AggValue> {
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
        if self.spec.serve {
            self.serving[id as usize].last_closed = Some((start, end, value));
            let e = &mut self.entries[id as usize];
            if !e.dirty {
                e.dirty = true;
                self.dirty.push(id);
            }
        }
    }

    /// The running value of the earliest open window holding the key's newest event.
    fn current(&self, id: u32) -> Option<WindowValue> {
        let e = &self.entries[id as usize];
        match self.spec.window {
            WindowSpec::Session { .. } => {
                let p = e.panes.iter().rev().find(|p| !p.fired)?;
                Some(WindowValue { start: p.start, end: p.end, value: p.acc.value()? })
            }
            WindowSpec::Global => {
                let p = e.panes.first()?;
                Some(WindowValue { start: p.start, end: p.end, value: p.acc.value()? })
            }
            // A key whose events were all late has none to show.
            _ if e.max_ts == i64::MIN => None,
            w => {
                let (size, slide) = w.size_slide()?;
                let first = w.first_window_containing(e.max_ts)?;
                let start = first.max(self.fired_until);
                if start > align(e.max_ts, slide) {
                    return None;
                }
                Some(WindowValue { start, end: start + size, value: self.merged(id, start, start + size)? })
            }
        }
    }

    /// Publishes the values of every entity updated since the last call.
    pub fn publish(&mut self, view: &FeatureView) -> usize {
        for id in std::mem::take(&mut self.dirty) {
            self.entries[id as usize].dirty = false;
            let g = self.serving[id as usize].group as usize;
            if !self.groups[g].dirty {
                self.groups[g].dirty = true;
                self.dirty_groups.push(g as u32);
            }
        }
        let n = self.dirty_groups.len();
        for g in std::mem::take(&mut self.dirty_groups) {
            self.groups[g as usize].dirty = false;
            let mut entity: Option<Box<str>> = None;
            let mut groups: EntityView = Vec::new();
            let mut id = self.groups[g as usize].head;
            while id != NONE {
                let key = self.keys.key(id);
                let mut ps = parts(key);
                if entity.is_none() {
                    entity = ps.next().map(|p| String::from_utf8_lossy(p).into());
                } else {
                    ps.next();
                }
                let serving = &self.serving[id as usize];
                groups.push(GroupView {
                    group: ps.map(|p| String::from_utf8_lossy(p).into_owned()).collect(),
                    current: self.current(id),
                    last_closed: serving.last_closed.clone().map(|(start, end, value)| WindowValue {
                        start,
                        end,
                        value,
                    }),
                    event_time: self.entries[id as usize].max_ts,
                });
                id = serving.next_in_group;
            }
            groups.sort_by(|a, b| a.group.cmp(&b.group));
            if let Some(entity) = entity {
                view.publish(entity, groups);
            }
        }
        n
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
