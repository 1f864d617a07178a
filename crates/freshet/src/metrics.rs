//! Metric names and the handles each thread records through.
//!
//! Names follow `freshet_<subsystem>_<what>_<unit|total>`; labels are config
//! names (flows, sinks, features, reasons), never entity ids. Handles are
//! registered once per thread and incremented once per chunk.

use freshet_engine::decode::{DecodeStats, RejectKind};
use freshet_engine::shard::ShardStats;
use freshet_io::sink::SinkWriter;
use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

use crate::config::plan::Plan;

/// Lines read, by source.
pub const SOURCE_LINES: &str = "freshet_source_lines_total";
/// Events accepted by a flow.
pub const EVENTS_ACCEPTED: &str = "freshet_events_accepted_total";
/// Lines rejected to the dead-letter sink, by reason.
pub const EVENTS_REJECTED: &str = "freshet_dlq_events_total";
/// Events into each flow.
pub const FLOW_EVENTS: &str = "freshet_flow_events_total";
/// Events dropped by filter stages.
pub const FLOW_FILTERED: &str = "freshet_flow_filtered_total";
/// Records folded into features, by shard.
pub const FEATURE_RECORDS: &str = "freshet_feature_records_total";
/// Feature inputs skipped for a missing key or value.
pub const FEATURE_SKIPPED: &str = "freshet_feature_skipped_total";
/// Events dropped as duplicates by dedup stages, by shard.
pub const DEDUP_DROPPED: &str = "freshet_dedup_dropped_total";
/// Events that passed a dedup stage unchecked, for lack of its key field.
pub const DEDUP_UNKEYED: &str = "freshet_dedup_unkeyed_total";
/// Events too late for every window, by feature.
pub const FEATURE_LATE: &str = "freshet_feature_late_events_total";
/// Rows written, by sink.
pub const SINK_ROWS: &str = "freshet_sink_rows_total";
/// Wall clock minus the watermark, by shard.
pub const WATERMARK_LAG: &str = "freshet_watermark_lag_seconds";
/// Ingest to visible in serving views, per chunk.
pub const PIPELINE_LATENCY: &str = "freshet_pipeline_latency_seconds";
/// HTTP request duration, by route and status.
pub const HTTP_DURATION: &str = "freshet_http_request_duration_seconds";
/// Events taken by HTTP ingest.
pub const HTTP_INGESTED: &str = "freshet_http_ingested_events_total";

/// Events out of an enrichment stage, by stage and outcome: `enriched`,
/// `skipped` (passed on unenriched, policy `skip`), `dead_lettered` (policy
/// `dlq`). The calls themselves are counted by `freshet_enrich_calls_total`.
pub const ENRICH_EVENTS: &str = "freshet_enrich_events_total";

/// Recommendations answered, by kind: `user` (a user the model knows),
/// `cold_start` (anonymous or unknown user), `similar` (similar items).
pub const RECOMMEND_REQUESTS: &str = "freshet_recommend_requests_total";
/// Lists served, by `placement` (a configured placement's name, `none`, or
/// `similar` for similar items).
pub const RECOMMENDATIONS_SERVED: &str = "freshet_recommendations_served_total";
/// Interactions attributed to a served list (they carried its
/// recommendation id and its item was in it), by `placement` and event `type`.
pub const RECOMMENDATION_INTERACTIONS: &str = "freshet_recommendation_interactions_total";
/// Attributed interactions by the item's `position` in its list (1-based).
pub const RECOMMENDATION_POSITIONS: &str = "freshet_recommendation_interactions_by_position_total";
/// Attributed interactions by `generator` that proposed the item (each that did).
pub const RECOMMENDATION_GENERATORS: &str = "freshet_recommendation_interactions_by_generator_total";
/// Interactions with a recommendation id that were not attributed, by
/// `reason`: `not_served_here` (another process's list, or one no longer
/// kept) or `not_in_list`.
pub const RECOMMENDATION_UNATTRIBUTED: &str = "freshet_recommendation_unattributed_total";

/// Checkpoints completed.
pub const CHECKPOINTS: &str = "freshet_checkpoints_total";
/// Barrier injection to checkpoint file written.
pub const CHECKPOINT_DURATION: &str = "freshet_checkpoint_duration_seconds";
/// How long a shard stops at a checkpoint's barrier to take its state (its
/// features encoded, the recommender's shared), by `shard`: Flink's sync duration.
pub const CHECKPOINT_SYNC_SECONDS: &str = "freshet_checkpoint_sync_duration_seconds";
/// Size of the last checkpoint file.
pub const CHECKPOINT_SIZE: &str = "freshet_checkpoint_size_bytes";
/// Restarts of a failed job from its last checkpoint (outside causes only).
pub const JOB_RESTARTS: &str = "freshet_job_restarts_total";
/// How long restoring the last checkpoint took at start (seconds).
pub const RESTORE_SECONDS: &str = "freshet_restore_duration_seconds";
/// How long a group's task took to restore its state from the changelog (seconds), per task.
pub const TASK_RESTORE_SECONDS: &str = "freshet_task_restore_duration_seconds";
/// A group's task restores, by where the checkpoint came from (`from`:
/// `standby`, a copy this process kept, or `changelog`, read through the broker).
pub const TASK_RESTORES: &str = "freshet_task_restores_total";

/// Forget requests accepted (`DELETE /v1/users/{id}`, `/v1/items/{id}`).
pub const FORGET_REQUESTS: &str = "freshet_forget_requests_total";
/// Bytes appended to the durable ingest log.
pub const INGEST_LOG_BYTES: &str = "freshet_ingest_log_bytes_total";
/// Duration of one ingest log sync (one per group of requests).
pub const INGEST_LOG_SYNC_SECONDS: &str = "freshet_ingest_log_sync_seconds";
/// Bytes of torn records cut from the ingest log's tail at start.
pub const INGEST_LOG_TRUNCATED_BYTES: &str = "freshet_ingest_log_truncated_bytes_total";
/// Corrupt ingest log records found on replay (skipped and quarantined).
pub const INGEST_LOG_CORRUPT: &str = "freshet_ingest_log_corrupt_records_total";
/// Ingest log segments deleted once checkpoints covered them.
pub const INGEST_LOG_SEGMENTS_REMOVED: &str = "freshet_ingest_log_segments_removed_total";

/// Histogram buckets (seconds) for latencies from 50 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] =
    &[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// A decoder thread's handles.
pub struct DecoderMetrics {
    sources: Vec<(String, Counter)>,
    accepted: Counter,
    rejected: Vec<Counter>,
    flows: Vec<Counter>,
    filtered: Counter,
    skipped: Counter,
    unkeyed: Counter,
    /// Per enrichment stage: enriched, skipped, dead-lettered.
    enrich: Vec<[Counter; 3]>,
}

impl DecoderMetrics {
    /// Registers the handles.
    pub fn new(plan: &Plan) -> Self {
        Self {
            sources: plan
                .sources
                .iter()
                .map(|s| (s.name.clone(), counter!(SOURCE_LINES, "source" => s.name.clone())))
                .collect(),
            accepted: counter!(EVENTS_ACCEPTED),
            rejected: RejectKind::ALL.iter().map(|k| counter!(EVENTS_REJECTED, "reason" => k.label())).collect(),
            flows: plan.pipeline.flows.iter().map(|f| counter!(FLOW_EVENTS, "flow" => f.name.clone())).collect(),
            filtered: counter!(FLOW_FILTERED),
            skipped: counter!(FEATURE_SKIPPED),
            unkeyed: counter!(DEDUP_UNKEYED),
            enrich: plan
                .enrich
                .iter()
                .map(|e| {
                    ["enriched", "skipped", "dead_lettered"]
                        .map(|outcome| counter!(ENRICH_EVENTS, "stage" => e.stage.clone(), "outcome" => outcome))
                })
                .collect(),
        }
    }

    /// Records one chunk's counters.
    pub fn record(&self, s: &DecodeStats, source: &str) {
        if let Some((_, c)) = self.sources.iter().find(|(n, _)| n == source) {
            c.increment(s.lines);
        }
        self.accepted.increment(s.accepted);
        for (c, n) in self.rejected.iter().zip(s.rejected) {
            if n > 0 {
                c.increment(n);
            }
        }
        for (c, n) in self.flows.iter().zip(&s.flow_in) {
            if *n > 0 {
                c.increment(*n);
            }
        }
        self.filtered.increment(s.filtered);
        self.skipped.increment(s.feature_skipped);
        self.unkeyed.increment(s.dedup_unkeyed);
        for (i, [enriched, skipped, dead]) in self.enrich.iter().enumerate() {
            enriched.increment(s.enriched.get(i).copied().unwrap_or(0));
            skipped.increment(s.enrich_skipped.get(i).copied().unwrap_or(0));
            dead.increment(s.enrich_dead_lettered.get(i).copied().unwrap_or(0));
        }
    }
}

/// A shard thread's handles.
pub struct ShardMetrics {
    records: Counter,
    dedup_dropped: Counter,
    late: Vec<Counter>,
    lag: Gauge,
    latency: Histogram,
    sync: Histogram,
}

impl ShardMetrics {
    /// Registers the handles.
    pub fn new(plan: &Plan, shard: usize) -> Self {
        Self {
            records: counter!(FEATURE_RECORDS, "shard" => shard.to_string()),
            dedup_dropped: counter!(DEDUP_DROPPED, "shard" => shard.to_string()),
            late: plan.pipeline.features.iter().map(|f| counter!(FEATURE_LATE, "feature" => f.name.clone())).collect(),
            lag: gauge!(WATERMARK_LAG, "shard" => shard.to_string()),
            latency: histogram!(PIPELINE_LATENCY),
            sync: histogram!(CHECKPOINT_SYNC_SECONDS, "shard" => shard.to_string()),
        }
    }

    /// Records the time a barrier stopped the shard for its snapshot.
    pub fn synced(&self, took: std::time::Duration) {
        self.sync.record(took.as_secs_f64());
    }

    /// Records a step.
    pub fn record(&self, stats: &ShardStats, watermark: i64) {
        self.records.increment(stats.records);
        self.dedup_dropped.increment(stats.dedup_dropped);
        if watermark > i64::MIN && watermark < i64::MAX {
            self.lag.set((crate::topology::wall_ms() - watermark) as f64 / 1000.0);
        }
    }

    /// Records late events per feature.
    pub fn record_late(&self, late: &[u64]) {
        for (c, n) in self.late.iter().zip(late) {
            if *n > 0 {
                c.increment(*n);
            }
        }
    }

    /// Records one chunk's ingest-to-visible latency.
    pub fn latency(&self, micros: u64) {
        self.latency.record(micros as f64 / 1e6);
    }
}

/// The writer thread's handles.
pub struct WriterMetrics {
    rows: Vec<Counter>,
}

impl WriterMetrics {
    /// Registers the handles.
    pub fn new(writers: &[SinkWriter]) -> Self {
        Self { rows: writers.iter().map(|w| counter!(SINK_ROWS, "sink" => w.name().to_owned())).collect() }
    }

    /// Counts rows written to sink `i`.
    pub fn rows(&self, i: usize, n: u64) {
        self.rows[i].increment(n);
    }
}

/// The checkpoint coordinator's handles.
pub struct CheckpointMetrics {
    completed: Counter,
    duration: Histogram,
    size: Gauge,
}

impl CheckpointMetrics {
    /// Registers the handles.
    pub fn new() -> Self {
        Self {
            completed: counter!(CHECKPOINTS),
            duration: histogram!(CHECKPOINT_DURATION),
            size: gauge!(CHECKPOINT_SIZE),
        }
    }

    /// Records a completed checkpoint.
    pub fn completed(&self, took: std::time::Duration, bytes: u64) {
        self.completed.increment(1);
        self.duration.record(took.as_secs_f64());
        self.size.set(bytes as f64);
    }
}

/// Sets the attribution counters from the recommender view's counts (read
/// when `/metrics` is scraped: the shard that attributes records no metrics).
pub fn export_attribution(
    view: &freshet_engine::recommend::RecommenderView,
    placements: &[freshet_engine::recommend::Placement],
) {
    use freshet_engine::recommend::{Asked, Generator};
    let counts = view.attribution().counts();
    let placement = |asked: Asked| match asked {
        Asked::Similar => "similar".to_owned(),
        Asked::Recommend(0) => "none".to_owned(),
        Asked::Recommend(i) => placements.get(i as usize - 1).map_or_else(|| i.to_string(), |p| p.name.clone()),
    };
    for (&asked, &n) in &counts.served {
        counter!(RECOMMENDATIONS_SERVED, "placement" => placement(asked)).absolute(n);
    }
    for ((asked, event_type), &n) in &counts.interactions {
        counter!(RECOMMENDATION_INTERACTIONS, "placement" => placement(*asked), "type" => event_type.clone())
            .absolute(n);
    }
    for (i, &n) in counts.positions.iter().enumerate().filter(|(_, n)| **n > 0) {
        counter!(RECOMMENDATION_POSITIONS, "position" => (i + 1).to_string()).absolute(n);
    }
    for g in Generator::ALL {
        let n = counts.generators[g.index()];
        if n > 0 {
            counter!(RECOMMENDATION_GENERATORS, "generator" => g.name()).absolute(n);
        }
    }
    for (reason, n) in [("not_served_here", counts.not_served_here), ("not_in_list", counts.not_in_list)] {
        if n > 0 {
            counter!(RECOMMENDATION_UNATTRIBUTED, "reason" => reason).absolute(n);
        }
    }
}
