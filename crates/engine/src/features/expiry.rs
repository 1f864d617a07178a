//! Removing keys from a feature's state: TTL in event time, forgetting an
//! entity, and deciding when a removed key's id may be reused.
//!
//! TTL: a key expires once the watermark reaches its newest event time plus
//! the TTL and it holds no pane (every window holding its events has fired
//! and run out of lateness); a global window's running value is dropped
//! unemitted instead. The check is incremental: a queue holds, per key, the
//! earliest watermark at which it may have expired, pushed at its first event
//! and re-pushed (never earlier than that bound) when a check finds it still
//! alive, so no step scans every key. That bound is what makes expiry
//! deterministic: a key is removed at the first watermark step where it has
//! expired, whether the queue was built by this run or rebuilt by a restore.
//! End of input (`WATERMARK_MAX`) expires nothing, so a finished job still
//! serves its last values.
//!
//! A removed key's id may still sit in a pane list or a session timer; those
//! then visit an empty entry and do nothing. The id goes back to the key
//! table only once the watermark has passed every such reference (the last
//! of its panes' clean-up times), so a stale reference never reaches another
//! key's state.
//!
//! Nothing here writes results: forgetting drops unfired windows, TTL only
//! removes keys whose windows are done.

use std::cmp::Reverse;

use super::keys::{first_part_len, hash_bytes, push_part};
use super::state::{FeatureState, KeyEntry, Link, NONE, NOT_QUEUED, Pane};
use crate::time::WATERMARK_MAX;
use crate::window::{WindowSpec, align};

impl FeatureState {
    /// Puts key `id` in the TTL queue, to be checked once the watermark reaches `due`.
    pub(super) fn queue_ttl(&mut self, id: u32, due: i64) {
        if self.spec.ttl.is_none() {
            return;
        }
        let due = due.max(NOT_QUEUED + 1);
        self.ttl_due[id as usize] = due;
        self.ttl_queue.push(Reverse((due, id)));
        self.upkeep_deadline = self.upkeep_deadline.min(due);
    }

    /// Expires keys and recycles ids due at `wm`; returns whether keys were removed.
    pub(super) fn upkeep(&mut self, wm: i64) -> bool {
        let mut removed = false;
        if let Some(ttl) = self.spec.ttl
            && wm != WATERMARK_MAX
        {
            let global = self.spec.window == WindowSpec::Global;
            while let Some(&Reverse((due, id))) = self.ttl_queue.peek() {
                if due > wm {
                    break;
                }
                self.ttl_queue.pop();
                if !self.keys.is_live(id) || self.ttl_due[id as usize] != due {
                    continue; // removed, or queued again later
                }
                let e = &self.entries[id as usize];
                if (global || e.panes.is_empty()) && e.max_ts.saturating_add(ttl) <= wm {
                    self.remove_key(id, true);
                    removed = true;
                } else {
                    let next = self.earliest_expiry(e, ttl).max(wm.saturating_add(1));
                    self.ttl_due[id as usize] = next;
                    self.ttl_queue.push(Reverse((next, id)));
                }
            }
        }
        while let Some(&Reverse((at, id))) = self.limbo.peek() {
            if at > wm {
                break;
            }
            self.limbo.pop();
            self.keys.recycle(id);
        }
        let ttl_next = self.ttl_queue.peek().map_or(i64::MAX, |r| r.0.0);
        self.upkeep_deadline = ttl_next.min(self.limbo.peek().map_or(i64::MAX, |r| r.0.0));
        removed
    }

    /// The lowest watermark at which key `e` can have expired: its newest
    /// event plus the TTL, and (but for global windows) its panes cleaned up.
    fn earliest_expiry(&self, e: &KeyEntry, ttl: i64) -> i64 {
        let mut due = e.max_ts.saturating_add(ttl);
        if self.spec.window != WindowSpec::Global {
            for p in &e.panes {
                due = due.max(self.pane_done(p));
            }
        }
        due
    }

    /// The watermark at which pane `p` is dropped, and with it every pane
    /// list and timer entry that names its key.
    fn pane_done(&self, p: &Pane) -> i64 {
        let lateness = self.spec.allowed_lateness;
        match self.spec.window {
            WindowSpec::Session { .. } => p.end.saturating_sub(1).saturating_add(lateness),
            WindowSpec::Global => i64::MIN,
            w => {
                let (size, slide) = w.size_slide().unwrap_or((1, 1));
                align(p.start, slide).saturating_add(size - 1).saturating_add(lateness)
            }
        }
    }

    /// Removes key `id`: its entry, serving value and group place; its id
    /// is recycled once no pane list or timer can name it.
    /// `announce`: an entity left without keys is removed from the view at
    /// the next publish (forgetting removes it from the view at once).
    pub(super) fn remove_key(&mut self, id: u32, announce: bool) {
        let entry = std::mem::replace(&mut self.entries[id as usize], KeyEntry::empty());
        let release = entry.panes.iter().map(|p| self.pane_done(p)).max().unwrap_or(i64::MIN);
        if self.indexed {
            self.unlink(id, announce);
        }
        self.keys.remove(id);
        if let Some(closed) = self.last_closed.get_mut(id as usize) {
            *closed = None;
        }
        if release <= self.watermark {
            self.keys.recycle(id);
        } else {
            self.limbo.push(Reverse((release, id)));
            self.upkeep_deadline = self.upkeep_deadline.min(release);
        }
    }

    /// Takes key `id` out of its entity's group; frees the group when it empties.
    fn unlink(&mut self, id: u32, announce: bool) {
        let Link { group: g, next } = self.links[id as usize];
        let group = &mut self.groups[g as usize];
        if group.head == id {
            group.head = next;
        } else {
            let mut p = group.head;
            while self.links[p as usize].next != id {
                p = self.links[p as usize].next;
            }
            self.links[p as usize].next = next;
        }
        self.links[id as usize] = Link { group: NONE, next: NONE };
        let group = &mut self.groups[g as usize];
        if group.head != NONE {
            if self.spec.tracked() && !group.dirty {
                group.dirty = true;
                self.dirty_groups.push(g);
            }
            return;
        }
        group.dirty = false;
        let key = self.keys.key(id);
        let entity = &key[..first_part_len(key)];
        if let Ok(found) = self.group_table.find_entry(hash_bytes(entity), |&(_, x)| x == g) {
            found.remove();
        }
        if self.spec.tracked() && announce {
            let name = super::keys::parts(entity).next().unwrap_or_default();
            self.removed_entities.push(String::from_utf8_lossy(name).into());
        }
        self.free_groups.push(g);
    }

    /// Removes every key whose entity (first key part) is `entity`, with
    /// their unfired windows (dropped, not emitted) and serving values;
    /// returns how many. The caller removes the entity from the view.
    pub fn forget(&mut self, entity: &[u8]) -> usize {
        if !self.indexed {
            self.build_index();
        }
        let mut encoded = Vec::with_capacity(entity.len() + 2);
        push_part(&mut encoded, entity);
        let eh = hash_bytes(&encoded);
        let (keys, groups) = (&self.keys, &self.groups);
        let found = self.group_table.find(eh, |&(h, g)| {
            h == eh && {
                let head = keys.key(groups[g as usize].head);
                head[..first_part_len(head)] == encoded[..]
            }
        });
        let Some(&(_, g)) = found else { return 0 };
        let mut n = 0;
        // Each removal takes the group's head; the last one frees the group (head NONE).
        while self.groups[g as usize].head != NONE {
            self.remove_key(self.groups[g as usize].head, false);
            n += 1;
        }
        n
    }

    /// Groups every key by entity, for a feature that was not served.
    fn build_index(&mut self) {
        self.indexed = true;
        self.links.clear();
        self.links.resize(self.keys.id_bound() as usize, Link { group: NONE, next: NONE });
        let mut key = Vec::new();
        for id in 0..self.keys.id_bound() {
            if self.keys.is_live(id) {
                key.clear();
                key.extend_from_slice(self.keys.key(id));
                self.link(id, &key);
            }
        }
    }
}
