//! Snapshots of one feature's keyed state: what a checkpoint stores, and what
//! restore loads into a fresh [`FeatureState`].
//!
//! A snapshot is plain data (serde), encoded with postcard, and carries a
//! format version and the feature's definition (name, window, aggregate), so
//! restoring into a pipeline whose feature changed is an error that names
//! what differs, never a silent partial restore. Live keys are stored in id
//! order and restore re-interns them densely: ids of removed keys (TTL,
//! forgetting) are left out of pane lists and timers and the others
//! renumbered, so a restore compacts. Pane lists, firing progress and
//! session timers come back in the same order: continuing after a restore
//! equals never having stopped (property-tested). The TTL queue is not
//! stored: restore queues every key for a check at the next watermark step,
//! which removes exactly the keys an uninterrupted run would.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use super::keys::{count_parts, hash_bytes};
use super::state::{FeatureState, NONE, NOT_QUEUED, Pane};
use crate::aggregate::AggValue;
use crate::time::in_state_range;
use crate::window::WindowSpec;

/// Version of the snapshot layout; bump on any change.
pub const SNAPSHOT_VERSION: u32 = 2;

/// One key's state, as read back.
#[derive(Debug, Deserialize)]
struct KeySnapshot {
    #[serde(with = "serde_bytes")]
    key: Vec<u8>,
    max_ts: i64,
    panes: Vec<Pane>,
    last_closed: Option<(i64, i64, AggValue)>,
}

/// One key's state, as written: borrowed, so a snapshot allocates no
/// per-key copies (the encoding is the same as [`KeySnapshot`]'s).
#[derive(Debug, Serialize)]
struct KeySnapshotRef<'a> {
    #[serde(with = "serde_bytes")]
    key: &'a [u8],
    max_ts: i64,
    panes: &'a [Pane],
    last_closed: Option<&'a (i64, i64, AggValue)>,
}

/// One feature's state in one shard, as read back.
#[derive(Debug, Deserialize)]
pub struct FeatureSnapshot {
    version: u32,
    name: String,
    definition: String,
    keys: Vec<KeySnapshot>,
    touched: Vec<(i64, Vec<u32>)>,
    fired_until: i64,
    timers: Vec<(i64, Vec<u32>)>,
}

/// One feature's state in one shard, as written.
#[derive(Serialize)]
struct FeatureSnapshotRef<'a> {
    version: u32,
    name: &'a str,
    definition: String,
    keys: KeysRef<'a>,
    touched: Vec<(i64, Cow<'a, [u32]>)>,
    fired_until: i64,
    timers: Vec<(i64, Cow<'a, [u32]>)>,
}

/// Why a snapshot cannot be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// The bytes are not a snapshot (corrupt or truncated). Fall back to an older checkpoint.
    #[error("snapshot of feature {feature} is unreadable: {reason}")]
    Corrupt {
        /// The feature being restored.
        feature: String,
        /// The decoder's complaint.
        reason: String,
    },
    /// Written by another format version. Run the version that wrote it, or start over with `--reset-state`.
    #[error("snapshot of feature {feature} has format version {found}, this build reads {expected}")]
    Version {
        /// The feature.
        feature: String,
        /// Version in the snapshot.
        found: u32,
        /// Version this build writes.
        expected: u32,
    },
    /// The feature's definition changed since the snapshot. Restore with the old config, or start over with `--reset-state`.
    #[error("feature {feature} changed since the snapshot: it was {was}, it is {now}")]
    Definition {
        /// The feature.
        feature: String,
        /// Definition in the snapshot.
        was: String,
        /// Definition now.
        now: String,
    },
}

/// Every live key of a state, encoded as a sequence straight from the entries.
struct KeysRef<'a>(&'a FeatureState);

impl Serialize for KeysRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let st = self.0;
        let live = (0..st.keys.id_bound()).filter(|&id| st.keys.is_live(id)).map(|id| {
            let e = &st.entries[id as usize];
            KeySnapshotRef {
                key: st.keys.key(id),
                max_ts: e.max_ts,
                panes: &e.panes,
                last_closed: st.last_closed.get(id as usize).and_then(Option::as_ref),
            }
        });
        // The encoding needs the length first.
        s.collect_seq(Counted { iter: live, left: st.keys.len() })
    }
}

/// An iterator that knows its length.
struct Counted<I> {
    iter: I,
    left: usize,
}

impl<I: Iterator> Iterator for Counted<I> {
    type Item = I::Item;

    fn next(&mut self) -> Option<I::Item> {
        let item = self.iter.next()?;
        self.left -= 1;
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

/// Id lists with removed keys left out and the others numbered as restore will.
fn renumbered<'a>(lists: impl Iterator<Item = (i64, &'a Vec<u32>)>, new_ids: &[u32]) -> Vec<(i64, Cow<'a, [u32]>)> {
    lists
        .map(|(at, ids)| {
            let ids = if new_ids.is_empty() {
                Cow::Borrowed(&ids[..])
            } else {
                Cow::Owned(ids.iter().map(|&id| new_ids[id as usize]).filter(|&id| id != NONE).collect())
            };
            (at, ids)
        })
        .filter(|(_, ids)| !ids.is_empty())
        .collect()
}

impl FeatureState {
    /// Encodes the state as snapshot bytes.
    pub fn snapshot(&self) -> Vec<u8> {
        // Restore numbers live keys densely in id order; empty when that changes nothing.
        let mut new_ids = Vec::new();
        if self.keys.len() != self.keys.id_bound() as usize {
            let mut next = 0;
            new_ids = (0..self.keys.id_bound())
                .map(|id| {
                    if self.keys.is_live(id) {
                        next += 1;
                        next - 1
                    } else {
                        NONE
                    }
                })
                .collect();
        }
        let snap = FeatureSnapshotRef {
            version: SNAPSHOT_VERSION,
            name: &self.spec.name,
            definition: self.spec.definition(),
            keys: KeysRef(self),
            touched: renumbered(self.touched.iter().map(|(at, ids)| (*at, ids)), &new_ids),
            fired_until: self.fired_until,
            timers: renumbered(self.timers.iter().map(|(at, ids)| (*at, ids)), &new_ids),
        };
        // Encoding plain data into a Vec cannot fail.
        postcard::to_stdvec(&snap).unwrap_or_default()
    }

    /// Replaces this (fresh) state with a snapshot's.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<(), RestoreError> {
        let feature = self.spec.name.clone();
        let snap: FeatureSnapshot = postcard::from_bytes(bytes)
            .map_err(|e| RestoreError::Corrupt { feature: feature.clone(), reason: e.to_string() })?;
        if snap.version != SNAPSHOT_VERSION {
            return Err(RestoreError::Version { feature, found: snap.version, expected: SNAPSHOT_VERSION });
        }
        let now = self.spec.definition();
        if snap.name != feature || snap.definition != now {
            return Err(RestoreError::Definition { feature, was: format!("{} ({})", snap.name, snap.definition), now });
        }
        if let Err(reason) = self.check(&snap) {
            return Err(RestoreError::Corrupt { feature, reason });
        }
        for k in snap.keys {
            let id = self.entry_for(hash_bytes(&k.key), &k.key);
            let e = &mut self.entries[id as usize];
            e.max_ts = k.max_ts;
            e.panes = SmallVec::from_vec(k.panes);
            if let Some(closed) = self.last_closed.get_mut(id as usize) {
                *closed = k.last_closed;
            }
            // Checked at the next watermark step.
            self.queue_ttl(id, NOT_QUEUED + 1);
            // Served again from the first publish after the restore.
            self.mark_dirty(id);
        }
        self.touched = snap.touched.into_iter().collect();
        self.fired_until = snap.fired_until;
        self.timers = snap.timers.into_iter().collect();
        // Recomputed at the next watermark.
        self.next_deadline = i64::MIN;
        Ok(())
    }

    /// Checks what the state's code relies on and a well-formed checksum
    /// cannot promise: distinct keys of the feature's parts, key ids in
    /// range, accumulators of the feature's aggregate, times in range.
    fn check(&self, snap: &FeatureSnapshot) -> Result<(), String> {
        let keys = snap.keys.len();
        if keys >= u32::MAX as usize {
            return Err(format!("{keys} keys"));
        }
        let time = |what: &str, t: i64| {
            if in_state_range(t) { Ok(()) } else { Err(format!("{what} {t} is out of range")) }
        };
        let ids = |what: &str, ids: &[u32]| match ids.iter().find(|&&id| id as usize >= keys) {
            Some(id) => Err(format!("{what} names key {id} of {keys}")),
            None => Ok(()),
        };
        let parts = self.spec.key.len();
        let mut seen = hashbrown::HashSet::with_capacity(keys);
        for k in &snap.keys {
            if count_parts(&k.key) != Some(parts) {
                return Err(format!("a key is not an encoding of {parts} parts"));
            }
            if !seen.insert(k.key.as_slice()) {
                return Err("a key appears twice".into());
            }
            if k.max_ts != i64::MIN {
                time("event time", k.max_ts)?;
            }
            for p in &k.panes {
                time("pane start", p.start)?;
                time("pane end", p.end)?;
                if !p.acc.fits(&self.spec.agg) {
                    return Err(format!("a pane does not hold a {} accumulator", self.spec.agg.name()));
                }
            }
            if let Some((start, end, _)) = k.last_closed {
                time("window start", start)?;
                time("window end", end)?;
            }
        }
        for (start, list) in &snap.touched {
            // Global windows list every key under one start, i64::MIN.
            if !(*start == i64::MIN && self.spec.window == WindowSpec::Global) {
                time("pane start", *start)?;
            }
            ids("pane list", list)?;
        }
        if snap.fired_until != i64::MIN {
            time("fired-until time", snap.fired_until)?;
        }
        for (end, list) in &snap.timers {
            time("session end", *end)?;
            ids("session timer", list)?;
        }
        Ok(())
    }
}
