//! The pipeline config file as serde reads it: plain data, strict about
//! unknown keys. Each field's doc states its default; this text is the
//! user's reference (docs/config.md points here).

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Process-wide pipeline settings.
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// Event-time settings.
    #[serde(default)]
    pub event_time: EventTimeConfig,
    /// Named sources.
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
    /// Named sinks.
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkConfig>,
    /// Flows, matched in order.
    #[serde(default)]
    pub flows: Vec<FlowConfig>,
    /// Windowed features.
    #[serde(default)]
    pub features: Vec<FeatureConfig>,
    /// The recommender. Default: none.
    pub recommender: Option<super::recommender::RecommenderConfig>,
    /// Lookup tables kept from flows' events, for `enrich_lookup` stages. Default: none.
    #[serde(default)]
    pub tables: BTreeMap<String, super::enrich::TableConfig>,
}

/// `[pipeline]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Shard threads owning keyed state. Default: the number of cores.
    pub shards: Option<usize>,
    /// Decoder threads parsing and running flows. Default: the number of cores.
    pub decoders: Option<usize>,
    /// Sink for rejected events (NDJSON records with reason, source, partition, offset, raw). Default: none (counted only).
    pub dead_letter: Option<String>,
    /// What to do with events no flow takes: `dead_letter` (default) or `drop`.
    pub unmatched: Option<String>,
    /// Longest accepted event line in bytes. Default: 1048576 (1 MiB).
    pub max_event_bytes: Option<usize>,
    /// Deepest accepted JSON nesting. Default: 64.
    pub max_depth: Option<u32>,
    /// How often shards publish changed feature values for serving. Default: "5ms".
    pub publish_interval: Option<String>,
    /// Bytes read per source block. Default: 262144.
    pub read_block_bytes: Option<usize>,
    /// How often state and source positions are checkpointed into the data
    /// directory (when one is given with --data-dir or FRESHET_DATA_DIR). Default: "1s".
    pub checkpoint_interval: Option<String>,
    /// How many complete checkpoints to keep. Default: 3.
    pub keep_checkpoints: Option<usize>,
    /// Default TTL of every feature's keyed state, in event time: a key whose
    /// newest event is this much older than the watermark, and that has no
    /// window left to fire or to take late events, is removed with its
    /// served value (reads then return nothing for it; a later event starts
    /// it afresh). A global window's running value is dropped unemitted.
    /// Features override it with `ttl`. Default: none (keys are kept forever).
    pub state_ttl: Option<String>,
}

/// `[event_time]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EventTimeConfig {
    /// Field with the event time (integer epoch ms). Default: "ts".
    pub field: Option<String>,
    /// Bounded out-of-orderness. Default: "5s".
    pub max_out_of_orderness: Option<String>,
    /// A partition silent this long stops holding the watermark back. Default: "30s".
    pub idle_timeout: Option<String>,
    /// Default allowed lateness of features. Default: "0s".
    pub allowed_lateness: Option<String>,
}

/// `[sources.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceConfig {
    /// NDJSON file, optionally gzip; bounded.
    File {
        /// Path of the file.
        path: String,
    },
    /// `POST /v1/events` on the serving address. With a data directory, each
    /// accepted batch is appended to a durable log there (`DIR/ingest/NAME`)
    /// before the answer, and replayed from the last checkpoint after a restart.
    Http {
        /// When the log is synced to disk: `"always"` (before answering; the
        /// requests waiting at that moment share one sync), `"never"` (the OS
        /// decides; a process crash loses nothing, a machine crash may), or an
        /// interval such as `"100ms"` (answers do not wait). Default: "always".
        fsync: Option<String>,
        /// Size at which a log segment is closed and the next begun. Default: 67108864 (64 MiB).
        segment_bytes: Option<u64>,
    },
    /// A Kafka topic, one JSON event per record value. Offsets live in
    /// Freshet's checkpoint (the group's committed offsets are written for
    /// lag display only); each partition has its own watermark.
    Kafka {
        /// `bootstrap.servers`, e.g. "127.0.0.1:9092".
        brokers: String,
        /// The topic read.
        topic: String,
        /// Consumer group id. Default: "freshet".
        group: Option<String>,
        /// Read up to the end offsets seen at start, then end like a file. Default: false.
        bounded: Option<bool>,
        /// Where partitions start when no checkpoint says: "earliest" or "latest". Default: "earliest".
        start: Option<String>,
        /// Share the topic with every process of the same `group`: read the
        /// partitions the group assigns, follow rebalances, and keep offsets in
        /// the group (committed after each checkpoint); needs a data directory.
        /// A pipeline with features runs each assigned partition as a task
        /// whose state moves with it through a changelog topic, and needs
        /// `partition_key`. Default: false.
        scale_out: Option<bool>,
        /// With `scale_out` and state: keep a standby copy of every task of
        /// the group (Kafka Streams' standby replicas): this process reads
        /// the changelog topics as they are written and keeps each task's
        /// newest checkpoint in memory, so a task that moves here (its owner
        /// left or died) restores without reading its changelog through the
        /// broker. Costs memory (every task's checkpoint, as bytes) and one
        /// more reader of the changelogs. Default: false.
        standby: Option<bool>,
        /// The event field the topic's records are keyed (partitioned) by,
        /// e.g. "user_id": state keyed by it belongs to one partition.
        partition_key: Option<String>,
        /// How the topic's producers chose a record's partition from its key:
        /// "murmur2_random" (Java clients, Freshet) or "consistent_random"
        /// (librdkafka's default). A group that scales out with state forwards
        /// a read of a key to the process owning that key's partition, so it
        /// must agree with the producers. Default: "murmur2_random".
        partitioner: Option<String>,
        /// "user" or "item": a record without a value (a tombstone) forgets
        /// the entity its key names (in every feature of that kind and, for
        /// a user, in the recommender), in order with the partition's events.
        /// Default: none (a tombstone is an empty event: a dead letter).
        forget_on_tombstone: Option<String>,
        /// librdkafka properties passed as they are (security.protocol, sasl.*, ssl.*, fetch tuning).
        properties: Option<BTreeMap<String, String>>,
    },
    /// The built-in workload generator (shared/workload's schema).
    Generator {
        /// Lines to generate. Default: unbounded.
        events: Option<u64>,
        /// Wall-clock events per second; 0 = as fast as possible. Default: 200.
        emit_per_s: Option<f64>,
        /// Users. Default: 100000.
        users: Option<u64>,
        /// Initial items. Default: 50000.
        items: Option<u64>,
        /// Seed. Default: 42.
        seed: Option<u64>,
        /// Fraction of malformed lines. Default: 0.001.
        malformed_rate: Option<f64>,
        /// Fraction of duplicated lines. Default: 0.
        duplicate_rate: Option<f64>,
        /// Max event-time disorder in ms. Default: 5000.
        disorder_ms: Option<i64>,
        /// Start event time at the wall clock instead of 2026-01-01. Default: true.
        start_now: Option<bool>,
    },
}

/// `[sinks.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkConfig {
    /// A file (created or truncated).
    File {
        /// Path.
        path: String,
        /// `csv` or `ndjson`. Default: from the extension (`.csv` → csv), else ndjson.
        format: Option<String>,
    },
    /// Standard output.
    Stdout {
        /// `csv` or `ndjson`. Default: ndjson.
        format: Option<String>,
    },
    /// A Kafka topic: one record per row, the row (no newline) as its value.
    Kafka {
        /// `bootstrap.servers`.
        brokers: String,
        /// The topic written.
        topic: String,
        /// `csv` or `ndjson`. Default: ndjson.
        format: Option<String>,
        /// Record keys: "result" (the row without its value: window and
        /// entity, so a replayed result has the same key; other rows are their
        /// own key), "row", or "none". Default: "result".
        key: Option<String>,
        /// Create the topic with this many partitions when it is missing.
        /// Default: none (a missing topic is waited for).
        partitions: Option<i32>,
        /// Replication factor of a created topic. Default: 1.
        replication: Option<i32>,
        /// Create the topic compacted (the broker keeps each key's last record). Default: false.
        compacted: Option<bool>,
        /// "at_least_once" (idempotent producer, every checkpoint waits for
        /// the acknowledgements; replays rewrite the same keys) or
        /// "exactly_once" (also one transaction per checkpoint; needs brokers
        /// with transactions). Default: "at_least_once".
        delivery: Option<String>,
        /// The transactional id of `exactly_once`. Default: "freshet-" + the sink's name.
        transactional_id: Option<String>,
        /// librdkafka properties passed as they are (security.protocol, sasl.*, ssl.*, batching).
        properties: Option<BTreeMap<String, String>>,
    },
}

/// A condition, written as a table with one operator:
/// `{ field = "type", eq = "view" }`, `{ field = "price", gt = 10 }`,
/// `{ field = "type", in = ["view", "click"] }`, `{ field = "x", exists = true }`,
/// `{ all = [...] }`, `{ any = [...] }`, `{ not = {...} }`.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct PredicateConfig {
    /// The field the operator applies to.
    pub field: Option<String>,
    /// Equal to this string, number or boolean.
    pub eq: Option<toml::Value>,
    /// Not equal to this value (or missing).
    pub ne: Option<toml::Value>,
    /// Equal to one of these.
    #[serde(rename = "in")]
    pub in_: Option<Vec<toml::Value>>,
    /// Equal to none of these (or missing).
    pub not_in: Option<Vec<toml::Value>>,
    /// Numeric `>`.
    pub gt: Option<f64>,
    /// Numeric `>=`.
    pub gte: Option<f64>,
    /// Numeric `<`.
    pub lt: Option<f64>,
    /// Numeric `<=`.
    pub lte: Option<f64>,
    /// Present (true) or absent (false).
    pub exists: Option<bool>,
    /// String starts with this.
    pub prefix: Option<String>,
    /// All of these hold.
    pub all: Option<Vec<PredicateConfig>>,
    /// Any of these holds.
    pub any: Option<Vec<PredicateConfig>>,
    /// This does not hold.
    pub not: Option<Box<PredicateConfig>>,
}

/// A field rule: a type name (`"string"`) or a table.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum FieldRuleConfig {
    /// Required field of this type: string, integer, number, boolean, object, array, any.
    Type(String),
    /// `{ type = "string", required = false }`.
    Full {
        /// The type.
        #[serde(rename = "type")]
        ty: String,
        /// Whether it must be present. Default: true.
        required: Option<bool>,
    },
}

/// `[[flows]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowConfig {
    /// Unique name.
    pub name: String,
    /// Which events the flow takes. Default: all.
    pub when: Option<PredicateConfig>,
    /// Typed field rules, by field path. Default: none.
    #[serde(default)]
    pub fields: BTreeMap<String, FieldRuleConfig>,
    /// Path of a JSON Schema file the events must satisfy. Default: none.
    pub schema: Option<String>,
    /// Event-time field. Default: `event_time.field`.
    pub time_field: Option<String>,
    /// Stages, in order. Default: none.
    #[serde(default)]
    pub stages: Vec<StageConfig>,
}

/// One stage, tagged by `type`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum StageConfig {
    /// Keep events matching `when`.
    Filter {
        /// The condition.
        when: Box<PredicateConfig>,
    },
    /// Set a field to a constant (use it to mask).
    Set {
        /// Field path.
        field: String,
        /// The value (string, number, boolean, array or table).
        value: toml::Value,
    },
    /// Copy a field.
    Copy {
        /// From.
        from: String,
        /// To.
        to: String,
    },
    /// Rename (move) a field.
    Rename {
        /// From.
        from: String,
        /// To.
        to: String,
    },
    /// Remove fields.
    Remove {
        /// Field paths.
        fields: Vec<String>,
    },
    /// Write the event to a sink and go on. Not allowed after a `dedup`
    /// stage (routing runs before duplicates are decided).
    Route {
        /// Sink name.
        sink: String,
    },
    /// Drop an event whose key was already seen (by the shards that get its
    /// feature records) within `ttl` of event time: it reaches no feature.
    /// An event without the key passes, counted.
    Dedup {
        /// Field path of the key (`"event_id"`), or a list of paths.
        key: KeyConfig,
        /// How long a key is remembered: until the watermark reaches the
        /// first event's time plus this. Required.
        ttl: String,
    },
    /// Add fields from an HTTP service's answer, with retries, a circuit
    /// breaker and a cache; see [`super::enrich::EnrichHttpConfig`].
    EnrichHttp(Box<super::enrich::EnrichHttpConfig>),
    /// Add fields from a lookup table's row (`[tables.NAME]`), in input
    /// order; see [`super::enrich::EnrichLookupConfig`].
    EnrichLookup(Box<super::enrich::EnrichLookupConfig>),
}

/// One field path or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum KeyConfig {
    /// One field.
    One(String),
    /// Several fields, together.
    Many(Vec<String>),
}

/// A window: `{ type = "tumbling", size = "5m" }`, `{ type = "hopping", size = "1h", slide = "5m" }`,
/// `{ type = "session", gap = "30m" }`, `{ type = "global" }`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum WindowConfig {
    /// Tumbling.
    Tumbling {
        /// Length.
        size: String,
    },
    /// Hopping (sliding).
    Hopping {
        /// Length.
        size: String,
        /// Step.
        slide: String,
    },
    /// Session.
    Session {
        /// Inactivity gap.
        gap: String,
    },
    /// One window over all time.
    Global {},
}

/// `[[features]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureConfig {
    /// Unique name.
    pub name: String,
    /// The flow whose events feed it.
    pub flow: String,
    /// Key fields; the first is the entity (user or item id).
    pub key: Vec<String>,
    /// The window.
    pub window: WindowConfig,
    /// count, sum, min, max, mean, distinct, last_n, decayed_count. Default: count.
    pub aggregate: Option<String>,
    /// Field aggregated (required by all but count and decayed_count).
    pub field: Option<String>,
    /// last_n: how many values. Default: 10.
    pub n: Option<usize>,
    /// decayed_count: half-life. Default: "1h".
    pub half_life: Option<String>,
    /// distinct: HyperLogLog precision 4..=18. Default: 12.
    pub precision: Option<u8>,
    /// Extra condition on the flow's events. Default: none.
    pub filter: Option<PredicateConfig>,
    /// Sink for closed-window results. Default: none (served only).
    pub sink: Option<String>,
    /// Sink for events too late for all their windows. Default: none (counted only).
    pub late_sink: Option<String>,
    /// Sink for the entity's values on every change (NDJSON rows
    /// `{"feature","entity","value":[groups]}`, `"value": null` when the
    /// entity is forgotten or expires; to a Kafka sink: a compacted topic
    /// keyed by feature and entity, with tombstones). Default: none.
    pub updates_sink: Option<String>,
    /// Allowed lateness. Default: `event_time.allowed_lateness`.
    pub allowed_lateness: Option<String>,
    /// `user`, `item` or `none`. Default: `user` when key[0] is user_id, `item` when item_id.
    pub entity: Option<String>,
    /// Publish values for `GET /v1/{users,items}/{id}/features`. Default: true.
    pub serve: Option<bool>,
    /// TTL of this feature's keys (see `pipeline.state_ttl`); `"none"` keeps
    /// them forever. Default: `pipeline.state_ttl`.
    pub ttl: Option<String>,
}
