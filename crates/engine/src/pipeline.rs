//! The resolved pipeline the engine runs: flows, features, sinks and limits,
//! as planned from config by the binary. Plain data; no I/O.

use crate::enrich::EnrichHttp;
use crate::event::FieldPath;
use crate::features::{FeatureSpec, Format};
use crate::flow::{Dedup, Flow, Stage};
use crate::recommend::{Placement, RecommenderSpec};

/// The recommender as planned: which flows feed it, which fields it reads,
/// and which shard owns it.
#[derive(Debug, Clone)]
pub struct RecommenderPlan {
    /// The model's spec.
    pub spec: RecommenderSpec,
    /// Flows whose events are interactions.
    pub interactions: Vec<usize>,
    /// User id field of interactions.
    pub user: FieldPath,
    /// Item id field (interactions and catalog).
    pub item: FieldPath,
    /// Event type field of interactions (weights by type), if any.
    pub event_type: Option<FieldPath>,
    /// Recommendation id field of interactions (attribution to a served list), if any.
    pub attribution: Option<FieldPath>,
    /// The catalog flow (item upserts), if any.
    pub catalog: Option<usize>,
    /// Category field of catalog events.
    pub category: Option<FieldPath>,
    /// Tags field of catalog events (an array of strings).
    pub tags: Option<FieldPath>,
    /// Availability field of catalog events (`false`: not recommended until
    /// an upsert says `true` or leaves it out).
    pub availability: Option<FieldPath>,
    /// Embedding field of catalog events (an array of `spec.embedding.dimension`
    /// numbers); `None` when no dimension is configured.
    pub embedding: Option<FieldPath>,
    /// The shard that owns the model. Co-occurrence couples every user's
    /// items, so the model is one operator instance (parallelism 1) until
    /// issue 5's repartitioning splits it by item.
    pub shard: usize,
    /// How often item neighbour lists are published to the serving view (ms).
    pub item_publish_ms: i64,
    /// Named placements.
    pub placements: Vec<Placement>,
}

/// What to do with an event that no flow takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmatched {
    /// Send it to the dead-letter sink.
    DeadLetter,
    /// Drop it (counted).
    Drop,
}

/// A sink as the engine sees it: a name and a format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkSpec {
    /// Sink name.
    pub name: String,
    /// Format.
    pub format: Format,
}

/// Limits on input.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest accepted line in bytes.
    pub max_event_bytes: usize,
    /// Deepest accepted JSON nesting.
    pub max_depth: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_event_bytes: 1 << 20, max_depth: crate::json::DEFAULT_MAX_DEPTH }
    }
}

/// Event-time settings.
#[derive(Debug, Clone)]
pub struct EventTime {
    /// Bounded out-of-orderness (ms).
    pub max_out_of_orderness: i64,
    /// A partition without events this long (wall ms) stops holding the
    /// watermark, unless its source is one of `bounded_sources`.
    pub idle_timeout: i64,
    /// The bounded sources (by index): their partitions end with their
    /// input and never go idle by the clock (see [`crate::time`]).
    pub bounded_sources: Vec<u16>,
}

/// Everything the engine needs to run a job.
#[derive(Debug)]
pub struct Pipeline {
    /// Flows, in match order.
    pub flows: Vec<Flow>,
    /// Features.
    pub features: Vec<FeatureSpec>,
    /// Sinks by index.
    pub sinks: Vec<SinkSpec>,
    /// The dead-letter sink.
    pub dead_letter: Option<u16>,
    /// Policy for unmatched events.
    pub unmatched: Unmatched,
    /// Source names by index (for DLQ records).
    pub sources: Vec<String>,
    /// Input limits.
    pub limits: Limits,
    /// Event time.
    pub event_time: EventTime,
    /// Number of shards.
    pub shards: usize,
    /// The recommender, if the job has one.
    pub recommender: Option<RecommenderPlan>,
    /// Lookup tables kept from flows' events.
    pub tables: Vec<crate::lookup::TableSpec>,
}

impl Pipeline {
    /// Every dedup stage, by id.
    pub fn dedups(&self) -> Vec<&Dedup> {
        let mut all: Vec<&Dedup> = self.stages(|s| if let Stage::Dedup(d) = s { Some(d) } else { None });
        all.sort_by_key(|d| d.id);
        all
    }

    /// Every HTTP enrichment stage, by id.
    pub fn enrich_stages(&self) -> Vec<&EnrichHttp> {
        let mut all: Vec<&EnrichHttp> = self.stages(|s| if let Stage::EnrichHttp(e) = s { Some(e) } else { None });
        all.sort_by_key(|e| e.id);
        all
    }

    /// Every lookup stage, by id.
    pub fn lookup_stages(&self) -> Vec<&crate::lookup::EnrichLookup> {
        let mut all: Vec<&crate::lookup::EnrichLookup> =
            self.stages(|s| if let Stage::EnrichLookup(l) = s { Some(l) } else { None });
        all.sort_by_key(|l| l.id);
        all
    }

    /// The stages of every flow that `pick` takes, in flow order.
    fn stages<'a, T>(&'a self, pick: impl Fn(&'a Stage) -> Option<&'a T>) -> Vec<&'a T> {
        self.flows.iter().flat_map(|f| &f.stages).filter_map(pick).collect()
    }
}
