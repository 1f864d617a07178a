//! A shard: the single-threaded owner of one hash range of every feature's
//! keyed state.
//!
//! It takes record batches in chunk order, decides which events are
//! duplicates (its dedup tables), folds each other record into its feature,
//! advances the combined watermark from the chunk's partition progress,
//! fires complete windows, expires keys past their TTL, forgets entities on
//! request, and publishes changed values to the serving views. It holds no
//! locks; the runtime gives it one thread and bounded channels.
//!
//! Dedup is decided per shard, among the events whose records reach it: an
//! event repeating an earlier one (same dedup key, so in practice the same
//! event sent again) sends its records to the same shards, which all find it
//! seen. Two events that share a dedup key but differ in the fields that
//! pick shards are each kept where the other was not seen.

use std::ops::Range;

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::dedup::{DedupSnapshot, DedupSnapshotRef, DedupTable};
use crate::features::{Entity, FeatureState, Outputs, RestoreError, SNAPSHOT_VERSION, Views};
use std::sync::Arc;

use crate::pipeline::{Pipeline, RecommenderPlan};
use crate::recommend::{ModelCopy, ModelRead, Recommender, RecommenderView, push_varint};
use crate::record::{ModelInput, ModelInputKind, RecordBatch, ShardInput};
use crate::time::{PartitionId, WATERMARK_MAX, WATERMARK_MIN, Watermarks, in_state_range};

/// Counters of one shard step.
#[derive(Debug, Default, Clone, Copy)]
pub struct ShardStats {
    /// Records applied.
    pub records: u64,
    /// Whether the watermark advanced.
    pub watermark_advanced: bool,
    /// Events dropped as duplicates by dedup stages (export as `freshet_dedup_dropped_total`).
    pub dedup_dropped: u64,
    /// Keys removed by the input's `forget`.
    pub forgotten: u64,
}

/// A shard's state at a barrier, as read back: event-time progress, every
/// feature, every dedup table, and the recommender on the shard that owns it.
/// The nested snapshots are byte blocks (`serde_bytes`): postcard encodes them
/// as it did a `Vec<u8>` (a length, then the bytes) but in one copy, not one
/// call per byte, and reads them back borrowed from the checkpoint.
#[derive(Debug, Deserialize)]
struct ShardSnapshot<'a> {
    progress: Vec<(PartitionId, i64, bool)>,
    watermark: i64,
    #[serde(borrow)]
    features: Vec<&'a [u8]>,
    dedup: Vec<DedupSnapshot>,
    #[serde(borrow)]
    recommender: Option<&'a [u8]>,
}

/// The same but the recommender, as written: the recommender's bytes follow
/// (an `Option` of a byte block), see [`ShardCopy::encode`].
#[derive(Serialize)]
struct ShardSnapshotHead<'a> {
    progress: Vec<(PartitionId, i64, bool)>,
    watermark: i64,
    features: Vec<ByteBuf>,
    dedup: Vec<DedupSnapshotRef<'a>>,
}

/// A shard's state at a barrier, copied so that it can be encoded on
/// another thread: all but the recommender encoded already, the
/// recommender copied (its encoding is most of the work; see `recommend::snapshot`).
#[derive(Debug)]
pub struct ShardCopy {
    head: Vec<u8>,
    recommender: Option<ModelCopy>,
}

impl ShardCopy {
    /// The snapshot's bytes, as [`Shard::snapshot`] makes them.
    pub fn encode(self) -> Vec<u8> {
        let mut bytes = self.head;
        match &self.recommender {
            None => bytes.push(0),
            Some(model) => {
                let len = model.encoded_len();
                bytes.reserve(len + 11);
                bytes.push(1);
                push_varint(&mut bytes, len as u64);
                model.encode_into(&mut bytes);
            }
        }
        bytes
    }
}

/// A shard snapshot of the second format (no recommender), still restorable.
#[derive(Debug, Deserialize)]
struct ShardSnapshotV2<'a> {
    progress: Vec<(PartitionId, i64, bool)>,
    watermark: i64,
    #[serde(borrow)]
    features: Vec<&'a [u8]>,
    dedup: Vec<DedupSnapshot>,
}

/// A shard snapshot of the first format (no dedup tables), to tell it from a corrupt one.
#[derive(Deserialize)]
struct ShardSnapshotV1 {
    _progress: Vec<(PartitionId, i64, bool)>,
    _watermark: i64,
    _features: Vec<Vec<u8>>,
}

/// One shard's state.
pub struct Shard {
    features: Vec<FeatureState>,
    /// Per dedup stage, by id.
    dedups: Vec<DedupTable>,
    ids: Vec<u32>,
    /// The ranges of the current batch's records that are not duplicates.
    kept: Vec<Range<usize>>,
    watermarks: Watermarks,
    outputs: Outputs,
    views: Option<Views>,
    sinks: usize,
    /// The recommender, on the shard that owns it, with its serving view.
    recommender: Option<(Recommender, Option<Arc<RecommenderView>>)>,
}

impl Shard {
    /// An empty shard for `pipeline`, publishing into `views` when given.
    pub fn new(pipeline: &Pipeline, views: Option<Views>) -> Self {
        let features =
            pipeline.features.iter().enumerate().map(|(i, spec)| FeatureState::new(i as u16, spec.clone())).collect();
        let et = &pipeline.event_time;
        Self {
            features,
            dedups: pipeline.dedups().iter().map(|d| DedupTable::new(d.ttl)).collect(),
            ids: Vec::new(),
            kept: Vec::new(),
            watermarks: Watermarks::new(et.max_out_of_orderness, et.idle_timeout, &et.bounded_sources),
            outputs: Outputs::new(pipeline.sinks.len(), pipeline.features.len()),
            views,
            sinks: pipeline.sinks.len(),
            recommender: None,
        }
    }

    /// Makes this shard the owner of the recommender planned in `plan`, publishing into `view`.
    pub fn with_recommender(mut self, plan: &RecommenderPlan, view: Option<Arc<RecommenderView>>) -> Self {
        self.recommender = Some((Recommender::new(plan.spec.clone()), view));
        self
    }

    /// The recommender, if this shard owns it.
    pub fn recommender(&self) -> Option<&Recommender> {
        self.recommender.as_ref().map(|(m, _)| m)
    }

    fn apply_model_inputs(&mut self, batch: &RecordBatch) {
        let Some((model, view)) = &mut self.recommender else { return };
        let text = |m: &ModelInput, i: usize| batch.model_field(m, i).and_then(|b| std::str::from_utf8(b).ok());
        for m in &batch.model {
            match m.kind {
                ModelInputKind::Interaction => {
                    if let (Some(user), Some(item)) = (text(m, 0), text(m, 1)) {
                        model.interaction(user, item, text(m, 2), m.ts);
                        // An interaction with a served item: counted for the list it came from.
                        if let (Some(id), Some(view)) = (text(m, 3), view.as_deref())
                            && let Some(index) = model.item_index(item)
                        {
                            view.attribution().interaction(id, index, text(m, 2));
                        }
                    }
                }
                ModelInputKind::Item { available } => {
                    let Some(item) = text(m, 0) else { continue };
                    let tags: Vec<String> =
                        text(m, 2).and_then(|t| serde_json::from_str::<Vec<String>>(t).ok()).unwrap_or_default();
                    let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
                    let mut vector = Vec::new();
                    if batch.model_embedding(m, &mut vector) {
                        // Checked by the decoder against the same spec: a rejection here is a broken invariant.
                        let taken = model.upsert_item_with_embedding(item, text(m, 1), &tags, &vector, m.ts);
                        debug_assert!(taken.is_ok(), "{taken:?}");
                    } else {
                        model.upsert_item(item, text(m, 1), &tags, m.ts);
                    }
                    model.set_available(item, available);
                }
            }
        }
    }

    /// Declares a partition before its first chunk, so it holds the watermark back from the start.
    pub fn register(&mut self, partition: PartitionId, now_ms: i64) {
        self.watermarks.observe(partition, None, now_ms);
    }

    /// Applies one chunk's records and advances event time, then forgets
    /// the input's entity, if any.
    ///
    /// Each record meets the watermark as it stood just before it (its
    /// partition's progress, including the chunk's earlier events, and the
    /// other partitions' minimum), and windows fire and keys expire as soon
    /// as that watermark passes them, as with a watermark after every event.
    pub fn process(&mut self, input: &ShardInput) -> ShardStats {
        let mut wm = self.watermarks.current();
        let before = wm;
        let batch = &input.batch;
        let (others, partition_max) = match input.partition {
            Some(p) => (self.watermarks.others_min(p, input.ingest_ms), self.watermarks.partition_max(p)),
            None => (wm, i64::MIN),
        };
        let record_wm =
            |w: &Watermarks, prior_max_ts: i64| others.min(w.partition_watermark(partition_max.max(prior_max_ts)));
        let mut kept = std::mem::take(&mut self.kept);
        kept.clear();
        let dedup_dropped = if batch.markers.is_empty() {
            kept.push(0..batch.records.len());
            0
        } else {
            self.dedup(batch, &mut kept, |w, prior| wm.max(record_wm(w, prior)))
        };
        // Three passes, because keyed state waits on memory: load every
        // record's table slot (independent loads, whose misses overlap), then
        // intern (hits) while loading each key's entry, then apply in order.
        // (Plain loops per kept range: an iterator chain over the ranges
        // costs the hot loop measurably.)
        let mut warm_slots = 0u32;
        for k in &kept {
            for r in &batch.records[k.clone()] {
                warm_slots ^= self.features[r.feature as usize].warm(r.hash);
            }
        }
        std::hint::black_box(warm_slots);
        self.ids.clear();
        let mut warm = 0i64;
        for k in &kept {
            for r in &batch.records[k.clone()] {
                let (id, max_ts) = self.features[r.feature as usize].intern(r.hash, batch.key(r));
                warm ^= max_ts;
                self.ids.push(id);
            }
        }
        std::hint::black_box(warm);
        // Once a watermark step removed keys (TTL), ids interned above may be stale.
        let mut stale = false;
        let mut ids = self.ids.iter();
        for k in &kept {
            for (r, &id) in batch.records[k.clone()].iter().zip(ids.by_ref()) {
                let record_wm = record_wm(&self.watermarks, r.prior_max_ts);
                if record_wm > wm {
                    wm = record_wm;
                    self.watermarks.raise(wm);
                    for f in &mut self.features {
                        stale |= f.on_watermark(wm, &mut self.outputs);
                    }
                }
                let f = &mut self.features[r.feature as usize];
                let id = if stale { f.intern(r.hash, batch.key(r)).0 } else { id };
                f.apply_interned(batch, r, id, wm, &mut self.outputs);
            }
        }
        let applied = self.ids.len() as u64 + batch.model.len() as u64;
        self.kept = kept;
        self.apply_model_inputs(batch);
        if let Some(partition) = input.partition {
            self.watermarks.observe(partition, input.max_ts, input.ingest_ms);
            if input.idle {
                self.watermarks.idle(partition, input.ingest_ms);
            }
            if input.end_of_partition {
                self.watermarks.finish(partition);
            }
        }
        let advanced = self.advance(input.ingest_ms) || self.watermarks.current() > before;
        if advanced {
            let wm = self.watermarks.current();
            for d in &mut self.dedups {
                d.expire(wm);
            }
        }
        let forgotten = input.forget.as_ref().map_or(0, |f| self.forget(f.entity, &f.id) as u64);
        ShardStats { records: applied, watermark_advanced: advanced, dedup_dropped, forgotten }
    }

    /// Decides every marked event of `batch`: fills `kept` with the record
    /// ranges left once duplicates are cut out, and returns how many events
    /// were duplicates. `wm_at(watermarks, prior_max_ts)` is the watermark a
    /// record meets.
    fn dedup(
        &mut self,
        batch: &RecordBatch,
        kept: &mut Vec<Range<usize>>,
        wm_at: impl Fn(&Watermarks, i64) -> i64,
    ) -> u64 {
        let (records, markers) = (&batch.records, &batch.markers);
        let (mut from, mut dropped, mut i) = (0, 0, 0);
        while i < markers.len() {
            let m = markers[i];
            let at = m.at as usize;
            let r = &records[at];
            let wm = wm_at(&self.watermarks, r.prior_max_ts);
            let duplicate = self.dedups[m.dedup as usize].check(m.hash, batch.marker_key(&m), r.ts, wm);
            i += 1;
            if duplicate {
                // A duplicate stops at this stage: the event's later stages see nothing.
                while i < markers.len() && markers[i].at == m.at {
                    i += 1;
                }
                let end = at + records[at..].iter().take_while(|x| x.offset == r.offset).count();
                kept.push(from..at);
                from = end;
                dropped += 1;
            }
        }
        kept.push(from..records.len());
        dropped
    }

    /// Re-evaluates idleness at wall time `now_ms`; fires windows and
    /// expires keys if the watermark moved.
    pub fn advance(&mut self, now_ms: i64) -> bool {
        let before = self.watermarks.current();
        let wm = self.watermarks.advance(now_ms);
        if wm == before {
            return false;
        }
        for f in &mut self.features {
            f.on_watermark(wm, &mut self.outputs);
        }
        for d in &mut self.dedups {
            d.expire(wm);
        }
        true
    }

    /// Forgets an entity: removes every key whose first part is `id` from
    /// every feature whose entity is `entity`, with their unfired windows
    /// (dropped, not emitted) and serving values (gone from the views at
    /// once), and, on the recommender's shard, the user's profile or the
    /// item's learned state ([`Recommender::forget_item`]). Returns how many
    /// keys (a recommender's user or item counting one) were removed.
    /// Deterministic: call it at the same point of the input (see
    /// [`ShardInput::forget`]) and a restored run forgets the same.
    pub fn forget(&mut self, entity: Entity, id: &[u8]) -> usize {
        let mut n = 0;
        if let Some((model, view)) = &mut self.recommender {
            let name = String::from_utf8_lossy(id);
            match entity {
                Entity::User => {
                    if model.forget_user(&name) {
                        n += 1;
                    }
                    if let Some(view) = view {
                        view.remove_user(&name);
                    }
                }
                // Its changed lists reach the view with the next item publication.
                Entity::Item => n += usize::from(model.forget_item(&name)),
                Entity::None => {}
            }
        }
        for (i, f) in self.features.iter_mut().enumerate() {
            if f.spec().entity != entity {
                continue;
            }
            let removed = f.forget(id);
            n += removed;
            // Only the shard that held the entity's keys touches the shared
            // view: another shard's forget may run later than the owner's
            // next events, and would delete their fresh value.
            if removed > 0
                && f.spec().serve
                && let Some(view) = self.views.as_ref().and_then(|v| v.get(i))
            {
                view.remove(&String::from_utf8_lossy(id));
            }
            if removed > 0
                && let Some(s) = f.spec().updates_sink
            {
                crate::features::write_update(&mut self.outputs.sinks[s as usize], f.spec(), id, None);
            }
        }
        n
    }

    /// The combined watermark.
    pub fn watermark(&self) -> i64 {
        self.watermarks.current()
    }

    /// Whether every partition has ended.
    pub fn finished(&self) -> bool {
        self.watermarks.all_finished()
    }

    /// Publishes changed entities to the views (features and the
    /// recommender's users; not its item lists); returns how many.
    pub fn publish(&mut self) -> usize {
        self.publish_recommender_users() + self.publish_features()
    }

    /// Publishes the recommender's changed users and trending lists to its
    /// view (cheap next to features: a user's seen set is shared with its
    /// published copy, not copied).
    pub fn publish_recommender_users(&mut self) -> usize {
        match &mut self.recommender {
            Some((model, Some(view))) => view.publish(model, false),
            _ => 0,
        }
    }

    /// Publishes the features' changed entities to their views and updates sinks.
    pub fn publish_features(&mut self) -> usize {
        let mut unlimited = usize::MAX;
        self.publish_some_features(&mut unlimited).0
    }

    /// [`Shard::publish_features`], of at most `budget` entities (counted
    /// down), so that a large publication can be taken in slices with input
    /// in between. Returns how many, and whether none is left waiting.
    pub fn publish_some_features(&mut self, budget: &mut usize) -> (usize, bool) {
        let (mut n, mut done) = (0, true);
        for (i, f) in self.features.iter_mut().enumerate() {
            let spec = f.spec();
            let view = self.views.as_ref().and_then(|v| v.get(i)).filter(|_| spec.serve);
            let updates = spec.updates_sink.map(|s| &mut self.outputs.sinks[s as usize]);
            if view.is_some() || updates.is_some() {
                n += f.publish_some(view, updates, budget);
                done &= !f.has_unpublished();
            }
        }
        (n, done)
    }

    /// Publishes the recommender's changed items (their neighbour lists) to
    /// its view; the runtime calls it every `item_publish_ms`.
    pub fn publish_recommender_items(&mut self) -> usize {
        match &mut self.recommender {
            Some((model, Some(view))) => view.publish(model, true),
            _ => 0,
        }
    }

    /// Takes the filled sink buffers, leaving fresh ones made by `buffer`
    /// (so the runtime can recycle allocations).
    pub fn take_outputs(&mut self, mut buffer: impl FnMut() -> Vec<u8>) -> Outputs {
        let mut fresh = Outputs::new(self.sinks, self.features.len());
        for s in &mut fresh.sinks {
            s.data = buffer();
        }
        std::mem::replace(&mut self.outputs, fresh)
    }

    /// Bytes waiting in sink buffers.
    pub fn output_bytes(&self) -> usize {
        self.outputs.sinks.iter().map(|s| s.data.len()).sum()
    }

    /// Whether sink buffers hold data.
    pub fn has_output(&self) -> bool {
        self.outputs.has_data()
    }

    /// Encodes the shard's state (taken between two inputs, i.e. at a barrier).
    pub fn snapshot(&mut self) -> Vec<u8> {
        self.snapshot_copy().encode()
    }

    /// The shard's state for [`ShardCopy::encode`], which may run on another thread.
    pub fn snapshot_copy(&mut self) -> ShardCopy {
        let head = ShardSnapshotHead {
            progress: self.watermarks.progress(),
            watermark: self.watermarks.current(),
            features: self.features.iter().map(|f| ByteBuf::from(f.snapshot())).collect(),
            dedup: self.dedups.iter().map(DedupTable::snapshot).collect(),
        };
        // The features' bytes plus room for the rest (grown if short).
        let blocks: usize = head.features.iter().map(|b| b.len() + 10).sum();
        let dedup_keys: usize = self.dedups.iter().map(DedupTable::len).sum();
        let capacity = blocks + dedup_keys * 32 + head.progress.len() * 24 + 64;
        // Encoding plain data into a Vec cannot fail.
        let head = postcard::to_extend(&head, Vec::with_capacity(capacity)).unwrap_or_default();
        ShardCopy { head, recommender: self.recommender.as_mut().map(|(m, _)| m.snapshot_copy()) }
    }

    /// The combined watermark a snapshot of [`Shard::snapshot`] holds, read
    /// from its head alone (the state after it is not decoded).
    pub fn snapshot_watermark(bytes: &[u8]) -> Option<i64> {
        // Every format begins with the partitions' progress and the watermark.
        let ((_, watermark), _) = postcard::take_from_bytes::<(Vec<(PartitionId, i64, bool)>, i64)>(bytes).ok()?;
        Some(watermark)
    }

    /// Loads a snapshot into this fresh shard; `now_ms` restarts idleness clocks.
    pub fn restore(&mut self, bytes: &[u8], now_ms: i64) -> Result<(), RestoreError> {
        let snap: ShardSnapshot = postcard::from_bytes(bytes)
            .or_else(|e| match postcard::from_bytes::<ShardSnapshotV2>(bytes) {
                Ok(v2) => Ok(ShardSnapshot {
                    progress: v2.progress,
                    watermark: v2.watermark,
                    features: v2.features,
                    dedup: v2.dedup,
                    recommender: None,
                }),
                Err(_) => Err(e),
            })
            .map_err(|e| {
                if postcard::from_bytes::<ShardSnapshotV1>(bytes).is_ok() {
                    RestoreError::Version { feature: "(shard)".into(), found: 1, expected: SNAPSHOT_VERSION }
                } else {
                    RestoreError::Corrupt { feature: "(shard)".into(), reason: e.to_string() }
                }
            })?;
        if snap.dedup.len() != self.dedups.len() {
            return Err(RestoreError::Definition {
                feature: "(pipeline)".into(),
                was: format!("{} dedup stages", snap.dedup.len()),
                now: format!("{} dedup stages", self.dedups.len()),
            });
        }
        if snap.features.len() != self.features.len() {
            return Err(RestoreError::Definition {
                feature: "(pipeline)".into(),
                was: format!("{} features", snap.features.len()),
                now: format!("{} features", self.features.len()),
            });
        }
        // Times derived from bounded event times (the two extreme watermarks aside).
        let times = snap.progress.iter().map(|p| p.1).filter(|&t| t != i64::MIN);
        let watermark = Some(snap.watermark).filter(|&w| w != WATERMARK_MIN && w != WATERMARK_MAX);
        if let Some(t) = times.chain(watermark).find(|&t| !in_state_range(t)) {
            return Err(RestoreError::Corrupt {
                feature: "(shard)".into(),
                reason: format!("time {t} is out of range"),
            });
        }
        for (f, bytes) in self.features.iter_mut().zip(snap.features) {
            f.restore(bytes)?;
        }
        if let (Some((model, _)), Some(bytes)) = (&mut self.recommender, snap.recommender) {
            let spec = model.spec().clone();
            *model = Recommender::restore(bytes, spec)
                .map_err(|e| RestoreError::Corrupt { feature: "(recommender)".into(), reason: e.to_string() })?;
        }
        for (d, entries) in self.dedups.iter_mut().zip(snap.dedup) {
            d.restore(entries);
        }
        self.watermarks.restore(&snap.progress, snap.watermark, now_ms);
        Ok(())
    }

    /// Keys held, per feature.
    pub fn key_counts(&self) -> Vec<usize> {
        self.features.iter().map(FeatureState::key_count).collect()
    }

    /// Keys remembered, per dedup stage.
    pub fn dedup_counts(&self) -> Vec<usize> {
        self.dedups.iter().map(DedupTable::len).collect()
    }

    /// Approximate heap bytes of keyed state and dedup tables.
    pub fn heap_bytes(&self) -> usize {
        self.features.iter().map(FeatureState::heap_bytes).sum::<usize>()
            + self.dedups.iter().map(DedupTable::heap_bytes).sum::<usize>()
    }
}

#[cfg(test)]
mod tests;
