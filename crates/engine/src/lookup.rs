//! Lookup tables: rows kept from one flow's events (the catalog's
//! `item_upsert`s, say) and read by another flow's `enrich_lookup` stage,
//! a stream–table join with no call out.
//!
//! A table is written and read in input order: the runtime lets one decoder
//! at a time run its chunk's *table pass* ([`crate::decode::Decoder::table_pass`]),
//! in chunk sequence, which applies the chunk's upserts and answers its
//! lookups line by line; the decoders then finish their chunks in parallel
//! with the answers in hand. So a lookup sees exactly the upserts of the
//! lines before it, whatever the thread timing, and a replay after a crash
//! joins the same rows. The tables are snapshotted at each checkpoint
//! barrier, when every earlier chunk's pass is done and no later one has
//! started.
//!
//! The runtime serialises a job's passes (one at a time), so a table is a
//! plain hash map behind a lock that one job leaves uncontended. In a group
//! one job (the process's replica) writes the tables and every task reads
//! them (`freshet::group`): a read–write lock, so the tasks' lookups do not
//! wait for each other.

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::event::FieldPath;
use crate::json::Kind;

/// A table kept from a flow's events.
#[derive(Debug, Clone)]
pub struct TableSpec {
    /// Table name.
    pub name: String,
    /// The flow whose accepted events upsert rows.
    pub flow: usize,
    /// The row key field of those events.
    pub key: FieldPath,
    /// Columns: fields of those events, kept as JSON.
    pub columns: Vec<FieldPath>,
}

/// What a lookup stage does when the table has no row for the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// The event goes on without the fields (counted).
    Pass,
    /// The event goes to the dead-letter sink with the reason.
    DeadLetter,
}

/// An `enrich_lookup` stage.
#[derive(Debug, Clone)]
pub struct EnrichLookup {
    /// Index among the pipeline's lookup stages.
    pub id: u16,
    /// Stage name.
    pub name: String,
    /// The table (index into the pipeline's tables).
    pub table: u16,
    /// This event's field holding the key.
    pub key: FieldPath,
    /// Event field ← column index.
    pub fields: Vec<(FieldPath, usize)>,
    /// Policy for a missing row.
    pub on_missing: Missing,
}

impl EnrichLookup {
    /// Writes a row's columns into the event.
    pub fn apply(&self, row: &Row, ev: &mut crate::event::Event<'_>) {
        for (path, column) in &self.fields {
            if let Some(Some((raw, kind))) = row.get(*column) {
                ev.set(path, raw, *kind);
            }
        }
    }
}

/// A row: each column's JSON (raw bytes, kind), or `None` when the event
/// that wrote it lacked the field.
pub type Row = Arc<Vec<Option<(Vec<u8>, Kind)>>>;

/// Every table of a pipeline.
#[derive(Debug, Default)]
pub struct Tables {
    maps: RwLock<Vec<FxHashMap<Vec<u8>, Row>>>,
}

/// A row as snapshotted: (key, columns as (JSON, kind index)).
type SnapshotRow = (Vec<u8>, Vec<Option<(Vec<u8>, u8)>>);

#[derive(Serialize, Deserialize)]
struct Snapshot {
    tables: Vec<Vec<SnapshotRow>>,
}

const KINDS: [Kind; 7] = [Kind::String, Kind::Integer, Kind::Float, Kind::Bool, Kind::Null, Kind::Object, Kind::Array];

impl Tables {
    /// `n` empty tables.
    pub fn new(n: usize) -> Self {
        Self { maps: RwLock::new(vec![FxHashMap::default(); n]) }
    }

    fn maps(&self) -> RwLockReadGuard<'_, Vec<FxHashMap<Vec<u8>, Row>>> {
        self.maps.read().unwrap_or_else(|p| p.into_inner())
    }

    fn maps_mut(&self) -> RwLockWriteGuard<'_, Vec<FxHashMap<Vec<u8>, Row>>> {
        self.maps.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes a row.
    pub fn upsert(&self, table: u16, key: &[u8], row: Row) {
        if let Some(m) = self.maps_mut().get_mut(table as usize) {
            m.insert(key.to_vec(), row);
        }
    }

    /// Reads a row.
    pub fn get(&self, table: u16, key: &[u8]) -> Option<Row> {
        self.maps().get(table as usize).and_then(|m| m.get(key).cloned())
    }

    /// Rows per table.
    pub fn len(&self, table: u16) -> usize {
        self.maps().get(table as usize).map_or(0, |m| m.len())
    }

    /// Serialises every table (keys sorted, so equal tables give equal bytes).
    pub fn snapshot(&self) -> Vec<u8> {
        let maps = self.maps();
        let tables = maps
            .iter()
            .map(|m| {
                let mut rows: Vec<_> = m
                    .iter()
                    .map(|(k, row)| {
                        let cols = row
                            .iter()
                            .map(|c| {
                                c.as_ref().map(|(raw, kind)| {
                                    (raw.clone(), KINDS.iter().position(|k| k == kind).unwrap_or(4) as u8)
                                })
                            })
                            .collect();
                        (k.clone(), cols)
                    })
                    .collect();
                rows.sort_by(|a, b| a.0.cmp(&b.0));
                rows
            })
            .collect();
        postcard::to_stdvec(&Snapshot { tables }).unwrap_or_default()
    }

    /// Replaces every table with a snapshot's.
    pub fn restore(&self, bytes: &[u8]) -> Result<(), String> {
        let snap: Snapshot = postcard::from_bytes(bytes).map_err(|e| format!("invalid table snapshot: {e}"))?;
        let mut maps = self.maps_mut();
        if snap.tables.len() != maps.len() {
            return Err(format!("the snapshot has {} tables, the pipeline {}", snap.tables.len(), maps.len()));
        }
        for (m, rows) in maps.iter_mut().zip(snap.tables) {
            m.clear();
            for (k, cols) in rows {
                let row = cols
                    .into_iter()
                    .map(|c| c.map(|(raw, kind)| (raw, KINDS.get(kind as usize).copied().unwrap_or(Kind::Null))))
                    .collect();
                m.insert(k, Arc::new(row));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_and_restore_round_trip_rows() {
        let t = Tables::new(2);
        t.upsert(1, b"i1", Arc::new(vec![Some((b"\"shoes\"".to_vec(), Kind::String)), None]));
        t.upsert(1, b"i2", Arc::new(vec![Some((b"[1,2]".to_vec(), Kind::Array)), None]));
        let bytes = t.snapshot();
        let u = Tables::new(2);
        u.restore(&bytes).unwrap();
        assert_eq!(u.get(1, b"i2"), t.get(1, b"i2"));
        assert_eq!((u.len(0), u.len(1)), (0, 2));
        assert_eq!(u.snapshot(), bytes);
        assert!(Tables::new(1).restore(&bytes).is_err());
    }
}
