//! Serving a feature: keys grouped by entity (the first key part), and
//! publishing each changed entity's values (running and last closed window
//! per group) to its view.
//!
//! Groups are linked lists through the keys' [`Link`]s, so publishing an
//! entity visits only its own keys. Served features keep them from the
//! start; others build them on the first forget (`expiry`). Nothing here
//! changes a key's windows.

use super::emit::{SinkBuffer, write_update};
use super::keys::{first_part_len, hash_bytes, parts};
use super::state::{FeatureState, Group, Link, NONE, put};
use super::view::{EntityView, FeatureView, GroupView, WindowValue};
use crate::window::{WindowSpec, align};

impl FeatureState {
    /// Adds key `id` to its entity's group, creating the group if needed.
    pub(super) fn link(&mut self, id: u32, key: &[u8]) {
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
                let g = match self.free_groups.pop() {
                    Some(g) => g,
                    None => {
                        self.groups.push(Group { head: NONE, dirty: false });
                        (self.groups.len() - 1) as u32
                    }
                };
                self.groups[g as usize] = Group { head: NONE, dirty: false };
                self.group_table.insert_unique(eh, (eh, g), |&(h, _)| h);
                g
            }
        };
        let next = self.groups[g as usize].head;
        self.groups[g as usize].head = id;
        put(&mut self.links, id, Link { group: g, next });
    }

    /// The running value of the earliest open window holding the key's newest event.
    fn current(&mut self, id: u32) -> Option<WindowValue> {
        let e = &self.entries[id as usize];
        if e.max_ts == i64::MIN {
            return None;
        }
        match self.spec.window {
            WindowSpec::Session { .. } => {
                let p = e.panes.iter().rev().find(|p| !p.fired)?;
                Some(WindowValue { start: p.start, end: p.end, value: p.acc.value()? })
            }
            WindowSpec::Global => {
                let p = e.panes.first()?;
                Some(WindowValue { start: p.start, end: p.end, value: p.acc.value()? })
            }
            w => {
                let (size, slide) = w.size_slide()?;
                let first = w.first_window_containing(e.max_ts)?;
                let start = first.max(self.fired_until);
                if start > align(e.max_ts, slide) {
                    return None;
                }
                let value = if self.keeps_prefixes() {
                    self.merged_through_prefix(id, start, start + size)?
                } else {
                    self.merged(id, start, start + size)?
                };
                Some(WindowValue { start, end: start + size, value })
            }
        }
    }

    /// Publishes the values of every entity updated since the last call to
    /// `view` (served features) and as a row to `updates` (features with an
    /// updates sink), and removes those whose every key expired.
    pub fn publish(&mut self, view: Option<&FeatureView>, updates: Option<&mut SinkBuffer>) -> usize {
        let mut unlimited = usize::MAX;
        self.publish_some(view, updates, &mut unlimited)
    }

    /// Whether changes wait for [`FeatureState::publish`].
    pub fn has_unpublished(&self) -> bool {
        !self.dirty.is_empty() || !self.dirty_groups.is_empty() || !self.removed_entities.is_empty()
    }

    /// [`FeatureState::publish`], of at most `budget` entities (counted
    /// down), the ones changed longest ago first; the rest wait for the next call.
    pub fn publish_some(
        &mut self,
        view: Option<&FeatureView>,
        mut updates: Option<&mut SinkBuffer>,
        budget: &mut usize,
    ) -> usize {
        for entity in self.removed_entities.drain(..) {
            if let Some(buf) = updates.as_deref_mut() {
                write_update(buf, &self.spec, entity.as_bytes(), None);
            }
            if let Some(view) = view {
                view.remove(&entity);
            }
        }
        for id in std::mem::take(&mut self.dirty) {
            // A removed key's flag was cleared: its id may be listed still.
            let e = &mut self.entries[id as usize];
            if !e.dirty {
                continue;
            }
            e.dirty = false;
            let g = self.links[id as usize].group as usize;
            if !self.groups[g].dirty {
                self.groups[g].dirty = true;
                self.dirty_groups.push(g as u32);
            }
        }
        let mut n = 0;
        let mut taken = 0;
        let mut pending = std::mem::take(&mut self.dirty_groups);
        for &g in &pending {
            if *budget == 0 {
                break;
            }
            taken += 1;
            if !self.groups[g as usize].dirty {
                continue;
            }
            *budget -= 1;
            n += 1;
            self.groups[g as usize].dirty = false;
            let mut entity: Option<Box<str>> = None;
            let mut groups: EntityView = Vec::new();
            let mut id = self.groups[g as usize].head;
            while id != NONE {
                let current = self.current(id);
                let key = self.keys.key(id);
                let next = self.links[id as usize].next;
                let mut ps = parts(key);
                if entity.is_none() {
                    entity = ps.next().map(|p| String::from_utf8_lossy(p).into());
                } else {
                    ps.next();
                }
                if self.entries[id as usize].max_ts == i64::MIN {
                    // Made by a late event: nothing to show.
                    id = next;
                    continue;
                }
                groups.push(GroupView {
                    group: ps.map(|p| String::from_utf8_lossy(p).into_owned()).collect(),
                    current,
                    last_closed: self.last_closed[id as usize].clone().map(|(start, end, value)| WindowValue {
                        start,
                        end,
                        value,
                    }),
                    event_time: self.entries[id as usize].max_ts,
                });
                id = next;
            }
            groups.sort_by(|a, b| a.group.cmp(&b.group));
            let Some(entity) = entity else { continue };
            if let Some(buf) = updates.as_deref_mut() {
                let values = (!groups.is_empty()).then_some(&groups[..]);
                write_update(buf, &self.spec, entity.as_bytes(), values);
            }
            match view {
                Some(view) if groups.is_empty() => view.remove(&entity),
                Some(view) => view.publish(entity, groups),
                None => {}
            }
        }
        pending.drain(..taken);
        self.dirty_groups = pending;
        n
    }
}
