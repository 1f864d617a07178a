//! A shard: the single-threaded owner of one hash range of every feature's
//! keyed state.
//!
//! It takes record batches in chunk order, folds each record into its
//! feature, advances the combined watermark from the chunk's partition
//! progress, fires complete windows, and publishes changed values to the
//! serving views. It holds no locks; the runtime gives it one thread and
//! bounded channels.

use serde::{Deserialize, Serialize};

use crate::features::{FeatureState, Outputs, RestoreError, Views};
use crate::pipeline::Pipeline;
use crate::record::ShardInput;
use crate::time::{PartitionId, WATERMARK_MAX, WATERMARK_MIN, Watermarks, in_state_range};

/// Counters of one shard step.
#[derive(Debug, Default, Clone, Copy)]
pub struct ShardStats {
    /// Records applied.
    pub records: u64,
    /// Whether the watermark advanced.
    pub watermark_advanced: bool,
}

/// A shard's state at a barrier: event-time progress and every feature.
#[derive(Debug, Serialize, Deserialize)]
struct ShardSnapshot {
    progress: Vec<(PartitionId, i64, bool)>,
    watermark: i64,
    features: Vec<Vec<u8>>,
}

/// One shard's state.
pub struct Shard {
    features: Vec<FeatureState>,
    ids: Vec<u32>,
    watermarks: Watermarks,
    outputs: Outputs,
    views: Option<Views>,
    sinks: usize,
}

impl Shard {
    /// An empty shard for `pipeline`, publishing into `views` when given.
    pub fn new(pipeline: &Pipeline, views: Option<Views>) -> Self {
        let features =
            pipeline.features.iter().enumerate().map(|(i, spec)| FeatureState::new(i as u16, spec.clone())).collect();
        let et = pipeline.event_time;
        Self {
            features,
            ids: Vec::new(),
            watermarks: Watermarks::new(et.max_out_of_orderness, et.idle_timeout),
            outputs: Outputs::new(pipeline.sinks.len(), pipeline.features.len()),
            views,
            sinks: pipeline.sinks.len(),
        }
    }

    /// Declares a partition before its first chunk, so it holds the watermark back from the start.
    pub fn register(&mut self, partition: PartitionId, now_ms: i64) {
        self.watermarks.observe(partition, None, now_ms);
    }

    /// Applies one chunk's records and advances event time.
    ///
    /// Each record meets the watermark as it stood just before it (its
    /// partition's progress, including the chunk's earlier events, and the
    /// other partitions' minimum), and windows fire as soon as that
    /// watermark passes them, as with a watermark after every event.
    pub fn process(&mut self, input: &ShardInput) -> ShardStats {
        let mut wm = self.watermarks.current();
        let before = wm;
        let batch = &input.batch;
        let (others, partition_max) = match input.partition {
            Some(p) => (self.watermarks.others_min(p, input.ingest_ms), self.watermarks.partition_max(p)),
            None => (wm, i64::MIN),
        };
        // Three passes, because keyed state waits on memory: load every
        // record's table slot (independent loads, whose misses overlap), then
        // intern (hits) while loading each key's entry, then apply in order.
        let mut warm_slots = 0u32;
        for r in &batch.records {
            warm_slots ^= self.features[r.feature as usize].warm(r.hash);
        }
        std::hint::black_box(warm_slots);
        self.ids.clear();
        let mut warm = 0i64;
        for r in &batch.records {
            let (id, max_ts) = self.features[r.feature as usize].intern(r.hash, batch.key(r));
            warm ^= max_ts;
            self.ids.push(id);
        }
        std::hint::black_box(warm);
        for (r, &id) in batch.records.iter().zip(&self.ids) {
            let seen = self.watermarks.partition_watermark(partition_max.max(r.prior_max_ts));
            let record_wm = others.min(seen);
            if record_wm > wm {
                wm = record_wm;
                self.watermarks.raise(wm);
                for f in &mut self.features {
                    f.on_watermark(wm, &mut self.outputs);
                }
            }
            let f = &mut self.features[r.feature as usize];
            f.apply_interned(batch, r, id, wm, &mut self.outputs);
        }
        if let Some(partition) = input.partition {
            self.watermarks.observe(partition, input.max_ts, input.ingest_ms);
            if input.end_of_partition {
                self.watermarks.finish(partition);
            }
        }
        let advanced = self.advance(input.ingest_ms) || self.watermarks.current() > before;
        ShardStats { records: batch.records.len() as u64, watermark_advanced: advanced }
    }

    /// Re-evaluates idleness at wall time `now_ms`; fires windows if the watermark moved.
    pub fn advance(&mut self, now_ms: i64) -> bool {
        let before = self.watermarks.current();
        let wm = self.watermarks.advance(now_ms);
        if wm == before {
            return false;
        }
        for f in &mut self.features {
            f.on_watermark(wm, &mut self.outputs);
        }
        true
    }

    /// The combined watermark.
    pub fn watermark(&self) -> i64 {
        self.watermarks.current()
    }

    /// Whether every partition has ended.
    pub fn finished(&self) -> bool {
        self.watermarks.all_finished()
    }

    /// Publishes changed entities to the views; returns how many.
    pub fn publish(&mut self) -> usize {
        let Some(views) = &self.views else { return 0 };
        self.features.iter_mut().zip(views.iter()).filter(|(f, _)| f.spec().serve).map(|(f, v)| f.publish(v)).sum()
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
    pub fn snapshot(&self) -> Vec<u8> {
        let snap = ShardSnapshot {
            progress: self.watermarks.progress(),
            watermark: self.watermarks.current(),
            features: self.features.iter().map(FeatureState::snapshot).collect(),
        };
        postcard::to_stdvec(&snap).unwrap_or_default()
    }

    /// Loads a snapshot into this fresh shard; `now_ms` restarts idleness clocks.
    pub fn restore(&mut self, bytes: &[u8], now_ms: i64) -> Result<(), RestoreError> {
        let snap: ShardSnapshot = postcard::from_bytes(bytes)
            .map_err(|e| RestoreError::Corrupt { feature: "(shard)".into(), reason: e.to_string() })?;
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
        for (f, bytes) in self.features.iter_mut().zip(&snap.features) {
            f.restore(bytes)?;
        }
        self.watermarks.restore(&snap.progress, snap.watermark, now_ms);
        Ok(())
    }

    /// Keys held, per feature.
    pub fn key_counts(&self) -> Vec<usize> {
        self.features.iter().map(FeatureState::key_count).collect()
    }

    /// Approximate heap bytes of keyed state.
    pub fn heap_bytes(&self) -> usize {
        self.features.iter().map(FeatureState::heap_bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{EventTime, Limits, Unmatched};

    /// A partition's event time near `i64::MIN` overflowed the watermark
    /// (`max_ts - out_of_orderness - 1`) after restore; such times are refused.
    #[test]
    fn restore_refuses_progress_times_out_of_range() {
        let p = Pipeline {
            flows: vec![],
            features: vec![],
            sinks: vec![],
            dead_letter: None,
            unmatched: Unmatched::Drop,
            sources: vec![],
            limits: Limits::default(),
            event_time: EventTime { max_out_of_orderness: 1000, idle_timeout: 1000 },
            shards: 1,
        };
        let snap = |max_ts: i64, watermark: i64| {
            postcard::to_stdvec(&ShardSnapshot { progress: vec![((0, 0), max_ts, false)], watermark, features: vec![] })
                .unwrap()
        };
        assert!(Shard::new(&p, None).restore(&snap(i64::MIN, WATERMARK_MIN), 0).is_ok());
        assert!(Shard::new(&p, None).restore(&snap(5000, WATERMARK_MAX), 0).is_ok());
        for bad in [snap(i64::MIN + 1, WATERMARK_MIN), snap(5000, i64::MAX - 1)] {
            let err = Shard::new(&p, None).restore(&bad, 0).unwrap_err();
            assert!(err.to_string().contains("out of range"), "{err}");
        }
    }
}
