//! Planning: from what serde read ([`Config`]) to what the runtime runs
//! ([`Plan`]): names resolved to indices, durations parsed, predicates built,
//! and every problem reported at once with its key path.

use std::path::PathBuf;
use std::time::Duration;

use freshet_engine::aggregate::AggFn;
use freshet_engine::event::FieldPath;
use freshet_engine::features::{Entity, FeatureSpec, Format};
use freshet_engine::flow::{Dedup, Flow, Placement, Stage};
use freshet_engine::json::Kind;
use freshet_engine::pipeline::{EventTime, Limits, Pipeline, SinkSpec, Unmatched};
use freshet_engine::predicate::{Literal, Ordering, Predicate};
use freshet_engine::time::MAX_DURATION_MS;
use freshet_engine::validate::{FieldRule, FieldType, Schema};
use freshet_engine::window::WindowSpec;
use freshet_io::generator::GenOptions;
use freshet_io::kafka::keys::KeyRule;
use freshet_io::sink::Target;

use super::load::{ConfigError, Problem};
use super::model::*;

/// How a source produces chunks.
#[derive(Debug, Clone)]
pub enum SourceKind {
    /// A bounded NDJSON file.
    File(PathBuf),
    /// HTTP ingest, with its durable log's settings.
    Http(IngestLogPlan),
    /// A Kafka topic.
    Kafka(freshet_io::kafka::source::KafkaSourceConfig),
    /// The generator, at `emit_per_s` lines per wall second (0: unthrottled).
    Generator {
        /// Generator knobs.
        options: GenOptions,
        /// Wall-clock rate.
        emit_per_s: f64,
    },
}

/// When the ingest log is synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Before answering each batch of waiting requests.
    Always,
    /// Never explicitly.
    Never,
    /// At most this long after an append; answers do not wait.
    Every(Duration),
}

/// The durable ingest log of an http source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestLogPlan {
    /// Sync policy.
    pub fsync: Fsync,
    /// Segment size in bytes.
    pub segment_bytes: u64,
}

impl SourceKind {
    /// What identifies the source across restarts (a generator's start time,
    /// taken from the wall clock, does not).
    pub fn identity(&self) -> String {
        match self {
            SourceKind::File(path) => format!("file {}", path.display()),
            SourceKind::Http(_) => "http".into(),
            SourceKind::Kafka(k) => format!("kafka {} topic {}", k.connection.brokers, k.topic),
            SourceKind::Generator { options: o, .. } => format!(
                "generator seed {} users {} items {} events {} malformed {} duplicates {} disorder {}",
                o.seed, o.users, o.items, o.events, o.malformed_rate, o.duplicate_rate, o.disorder_ms
            ),
        }
    }
}

/// A planned source.
#[derive(Debug, Clone)]
pub struct SourcePlan {
    /// Its name.
    pub name: String,
    /// What it reads.
    pub kind: SourceKind,
}

/// A planned sink.
#[derive(Debug, Clone)]
pub struct SinkPlan {
    /// Its name.
    pub name: String,
    /// Where it writes.
    pub target: Target,
}

/// Everything needed to run a job.
#[derive(Debug)]
pub struct Plan {
    /// The engine's view.
    pub pipeline: Pipeline,
    /// Sources, indexed like `pipeline.sources`.
    pub sources: Vec<SourcePlan>,
    /// Sinks, indexed like `pipeline.sinks`.
    pub sinks: Vec<SinkPlan>,
    /// Decoder threads.
    pub decoders: usize,
    /// View publishing interval.
    pub publish_interval: Duration,
    /// Source read block size.
    pub read_block: usize,
    /// Checkpoint interval (used when the job has a data directory).
    pub checkpoint_interval: Duration,
    /// Complete checkpoints kept.
    pub keep_checkpoints: usize,
    /// How each enrichment stage calls its service, by stage id.
    pub enrich: Vec<freshet_io::enrich::HttpEnrichConfig>,
    /// Lookup tables shared with other jobs of the process, instead of the
    /// job's own: a group's replica feeds them, its tasks read them
    /// (`crate::group`). None when planned; set by the group.
    pub shared_tables: Option<SharedTables>,
}

/// A job's part in lookup tables shared by the jobs of one process.
#[derive(Debug, Clone)]
pub enum SharedTables {
    /// The job applies its table flows' upserts, and keeps the tables in its checkpoints.
    Feeds(std::sync::Arc<freshet_engine::lookup::Tables>),
    /// The job only looks rows up: another job feeds and checkpoints them.
    Reads(std::sync::Arc<freshet_engine::lookup::Tables>),
}

impl SourceKind {
    /// Whether the source ends with its input (its partitions never go idle).
    pub fn bounded(&self) -> bool {
        match self {
            SourceKind::File(_) => true,
            SourceKind::Http(_) => false,
            SourceKind::Kafka(k) => k.bounded,
            SourceKind::Generator { options, .. } => options.events != u64::MAX,
        }
    }
}

impl Plan {
    /// Whether every source is bounded (the job ends with its input).
    pub fn bounded(&self) -> bool {
        self.sources.iter().all(|s| s.kind.bounded())
    }

    /// A description of everything that shapes state and outputs: a
    /// checkpoint written by another pipeline is refused.
    pub fn fingerprint(&self) -> String {
        let p = &self.pipeline;
        let sources: Vec<String> = self.sources.iter().map(|s| format!("{}={}", s.name, s.kind.identity())).collect();
        let sinks: Vec<String> = self.sinks.iter().map(|s| format!("{}={:?}", s.name, s.target)).collect();
        let features: Vec<String> = p.features.iter().map(|f| format!("{} ({})", f.name, f.definition())).collect();
        let flows: Vec<String> = p
            .flows
            .iter()
            .map(|f| {
                let dedups: Vec<String> = f
                    .stages
                    .iter()
                    .filter_map(|s| match s {
                        Stage::Dedup(d) => Some(d.definition()),
                        Stage::EnrichHttp(e) => Some(e.definition()),
                        Stage::EnrichLookup(l) => Some(format!("enrich_lookup {} table {}", l.name, l.table)),
                        _ => None,
                    })
                    .collect();
                if dedups.is_empty() { f.name.clone() } else { format!("{} ({})", f.name, dedups.join(", ")) }
            })
            .collect();
        let tables: Vec<String> = p
            .tables
            .iter()
            .map(|t| {
                let columns: Vec<&str> = t.columns.iter().map(|c| c.as_str()).collect();
                format!("{} (flow {} key {} columns {})", t.name, t.flow, t.key, columns.join(" "))
            })
            .collect();
        format!(
            "sources {}; sinks {}; flows {}; features {}; shards {}{}",
            sources.join(", "),
            sinks.join(", "),
            flows.join(", "),
            features.join(", "),
            p.shards,
            if tables.is_empty() { String::new() } else { format!("; tables {}", tables.join(", ")) }
        )
    }

    /// Whether a source takes HTTP ingest.
    pub fn has_http_source(&self) -> bool {
        self.sources.iter().any(|s| matches!(s.kind, SourceKind::Http(_)))
    }
}

/// Collects problems while planning.
pub struct Planner {
    problems: Vec<Problem>,
}

impl Planner {
    /// A planner with no problems yet.
    pub fn new() -> Self {
        Self { problems: Vec::new() }
    }

    /// The problems found, as an error for `origin` (None when there are none).
    pub fn finish(self, origin: &str) -> Result<(), ConfigError> {
        if self.problems.is_empty() {
            return Ok(());
        }
        Err(ConfigError { origin: origin.into(), problems: self.problems })
    }

    /// Records a problem at a key path.
    pub fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem { path: path.into(), message: message.into() });
    }

    /// A duration in ms (`default` when not given).
    pub fn duration_ms(&mut self, path: &str, text: Option<&str>, default: i64) -> i64 {
        let Some(t) = text else { return default };
        match humantime::parse_duration(t) {
            Ok(d) if d.as_millis() <= MAX_DURATION_MS as u128 => d.as_millis() as i64,
            Ok(_) => {
                self.err(path, format!("{t:?} is longer than the longest supported duration, 2^53 ms (285,000 years)"));
                default
            }
            Err(e) => {
                self.err(path, format!("expected a duration like \"5s\" or \"250ms\", got {t:?} ({e})"));
                default
            }
        }
    }

    /// A duration that must be > 0, if given.
    pub fn positive_ms(&mut self, path: &str, text: Option<&str>) -> Option<i64> {
        let ms = self.duration_ms(path, text, 1);
        if text.is_some() && ms <= 0 {
            self.err(path, "must be > 0");
        }
        text.map(|_| ms.max(1))
    }

    /// A field path.
    pub fn field(&mut self, path: &str, text: &str) -> FieldPath {
        FieldPath::parse(text).unwrap_or_else(|e| {
            self.err(path, e);
            FieldPath::parse("_").unwrap_or_else(|_| unreachable!("\"_\" is a valid path"))
        })
    }

    fn literal(&mut self, path: &str, v: &toml::Value) -> Literal {
        match v {
            toml::Value::String(s) => Literal::Str(s.clone()),
            toml::Value::Integer(i) => Literal::Num(*i as f64),
            toml::Value::Float(f) => Literal::Num(*f),
            toml::Value::Boolean(b) => Literal::Bool(*b),
            other => {
                self.err(path, format!("expected a string, number or boolean, got {}", other.type_str()));
                Literal::Null
            }
        }
    }

    fn predicate(&mut self, path: &str, p: &PredicateConfig) -> Predicate {
        let mut ops: Vec<Predicate> = Vec::new();
        let field = p.field.as_deref().map(|f| self.field(&format!("{path}.field"), f));
        let need_field = |me: &mut Self, op: &str| -> Option<FieldPath> {
            if field.is_none() {
                me.err(path, format!("`{op}` needs `field`"));
            }
            field.clone()
        };
        if let Some(v) = &p.eq
            && let Some(f) = need_field(self, "eq")
        {
            ops.push(Predicate::Eq(f, self.literal(&format!("{path}.eq"), v)));
        }
        if let Some(v) = &p.ne
            && let Some(f) = need_field(self, "ne")
        {
            ops.push(Predicate::Not(Box::new(Predicate::Eq(f, self.literal(&format!("{path}.ne"), v)))));
        }
        if let Some(vs) = &p.in_
            && let Some(f) = need_field(self, "in")
        {
            let lits = vs.iter().enumerate().map(|(i, v)| self.literal(&format!("{path}.in[{i}]"), v)).collect();
            ops.push(Predicate::In(f, lits));
        }
        if let Some(vs) = &p.not_in
            && let Some(f) = need_field(self, "not_in")
        {
            let lits = vs.iter().enumerate().map(|(i, v)| self.literal(&format!("{path}.not_in[{i}]"), v)).collect();
            ops.push(Predicate::Not(Box::new(Predicate::In(f, lits))));
        }
        for (op, bound, ord) in [
            ("gt", p.gt, Ordering::Gt),
            ("gte", p.gte, Ordering::Gte),
            ("lt", p.lt, Ordering::Lt),
            ("lte", p.lte, Ordering::Lte),
        ] {
            if let Some(b) = bound
                && let Some(f) = need_field(self, op)
            {
                ops.push(Predicate::Compare(f, ord, b));
            }
        }
        if let Some(e) = p.exists
            && let Some(f) = need_field(self, "exists")
        {
            let x = Predicate::Exists(f);
            ops.push(if e { x } else { Predicate::Not(Box::new(x)) });
        }
        if let Some(prefix) = &p.prefix
            && let Some(f) = need_field(self, "prefix")
        {
            ops.push(Predicate::Prefix(f, prefix.clone()));
        }
        if let Some(all) = &p.all {
            ops.push(Predicate::All(
                all.iter().enumerate().map(|(i, q)| self.predicate(&format!("{path}.all[{i}]"), q)).collect(),
            ));
        }
        if let Some(any) = &p.any {
            ops.push(Predicate::Any(
                any.iter().enumerate().map(|(i, q)| self.predicate(&format!("{path}.any[{i}]"), q)).collect(),
            ));
        }
        if let Some(not) = &p.not {
            ops.push(Predicate::Not(Box::new(self.predicate(&format!("{path}.not"), not))));
        }
        match ops.len() {
            0 => {
                self.err(
                    path,
                    "expected one operator: eq, ne, in, not_in, gt, gte, lt, lte, exists, prefix, all, any or not",
                );
                Predicate::True
            }
            1 => ops.pop().unwrap_or(Predicate::True),
            _ => Predicate::All(ops),
        }
    }
}

fn format_of(p: &mut Planner, path: &str, format: Option<&str>, default: Format) -> Format {
    match format {
        None => default,
        Some("csv") => Format::Csv,
        Some("ndjson") => Format::Ndjson,
        Some(other) => {
            p.err(path, format!("expected \"csv\" or \"ndjson\", got {other:?}"));
            default
        }
    }
}

fn json_of(v: &toml::Value) -> (Vec<u8>, Kind) {
    let kind = match v {
        toml::Value::String(_) => Kind::String,
        toml::Value::Integer(_) => Kind::Integer,
        toml::Value::Float(_) => Kind::Float,
        toml::Value::Boolean(_) => Kind::Bool,
        toml::Value::Array(_) => Kind::Array,
        _ => Kind::Object,
    };
    (serde_json::to_vec(v).unwrap_or_else(|_| b"null".to_vec()), kind)
}

/// Reads a flow's JSON Schema file named as in the config: the path to show
/// in errors, and the file's text.
pub type SchemaReader<'a> = &'a dyn Fn(&str) -> (String, std::io::Result<String>);

/// Plans `config`. `cores` sizes the default thread counts; `config_dir`
/// resolves relative schema paths.
pub fn plan(config: &Config, origin: &str, cores: usize, config_dir: &std::path::Path) -> Result<Plan, ConfigError> {
    let read_schema = |name: &str| {
        let file = config_dir.join(name);
        (file.display().to_string(), std::fs::read_to_string(&file))
    };
    plan_with(config, origin, cores, &read_schema)
}

/// Plans `config`, reading schema files with `read_schema` (the fuzz target
/// reads none: a planned config must not reach the file system).
pub fn plan_with(config: &Config, origin: &str, cores: usize, read_schema: SchemaReader) -> Result<Plan, ConfigError> {
    let mut p = Planner::new();
    let pc = &config.pipeline;

    // Sinks.
    let mut sinks = Vec::new();
    let mut sink_specs = Vec::new();
    for (name, s) in &config.sinks {
        let path = format!("sinks.{name}");
        let (target, format) = match s {
            SinkConfig::File { path: file, format } => {
                let default = if file.ends_with(".csv") { Format::Csv } else { Format::Ndjson };
                (Target::File(file.into()), format_of(&mut p, &format!("{path}.format"), format.as_deref(), default))
            }
            SinkConfig::Stdout { format } => {
                (Target::Stdout, format_of(&mut p, &format!("{path}.format"), format.as_deref(), Format::Ndjson))
            }
            SinkConfig::Kafka {
                brokers,
                topic,
                format,
                key,
                partitions,
                replication,
                compacted,
                delivery,
                transactional_id,
                properties,
            } => {
                let format = format_of(&mut p, &format!("{path}.format"), format.as_deref(), Format::Ndjson);
                let fields = super::kafka::SinkFields {
                    brokers,
                    topic,
                    key: key.as_deref(),
                    partitions: *partitions,
                    replication: *replication,
                    compacted: *compacted,
                    delivery: delivery.as_deref(),
                    transactional_id: transactional_id.as_deref(),
                    properties: properties.as_ref(),
                };
                (Target::Kafka(super::kafka::sink(&mut p, name, fields, format)), format)
            }
        };
        sinks.push(SinkPlan { name: name.clone(), target });
        sink_specs.push(SinkSpec { name: name.clone(), format });
    }
    let sink_index = |p: &mut Planner, path: &str, name: &str| -> Option<u16> {
        let i = sink_specs.iter().position(|s| s.name == name).map(|i| i as u16);
        if i.is_none() {
            let known: Vec<_> = sink_specs.iter().map(|s| s.name.as_str()).collect();
            p.err(
                path,
                format!(
                    "no sink named {name:?} (sinks: {})",
                    if known.is_empty() { "none".into() } else { known.join(", ") }
                ),
            );
        }
        i
    };
    let dead_letter = pc.dead_letter.as_deref().and_then(|n| sink_index(&mut p, "pipeline.dead_letter", n));
    let unmatched = match pc.unmatched.as_deref() {
        None | Some("dead_letter") => Unmatched::DeadLetter,
        Some("drop") => Unmatched::Drop,
        Some(other) => {
            p.err("pipeline.unmatched", format!("expected \"dead_letter\" or \"drop\", got {other:?}"));
            Unmatched::DeadLetter
        }
    };

    // Sources.
    let mut sources = Vec::new();
    if config.sources.is_empty() {
        p.err("sources", "at least one source is required");
    }
    for (name, s) in &config.sources {
        let kind = match s {
            SourceConfig::File { path } => SourceKind::File(path.into()),
            SourceConfig::Kafka {
                brokers,
                topic,
                group,
                bounded,
                start,
                scale_out,
                standby,
                partition_key,
                partitioner,
                forget_on_tombstone,
                properties,
            } => SourceKind::Kafka(super::kafka::source(
                &mut p,
                name,
                (brokers, topic, group.as_deref()),
                *bounded,
                super::kafka::Sharing {
                    scale_out: *scale_out,
                    standby: *standby,
                    partition_key: partition_key.as_deref(),
                    partitioner: partitioner.as_deref(),
                },
                (start.as_deref(), forget_on_tombstone.as_deref()),
                properties.as_ref(),
            )),
            SourceConfig::Http { fsync, segment_bytes } => {
                let fsync = match fsync.as_deref() {
                    None | Some("always") => Fsync::Always,
                    Some("never") => Fsync::Never,
                    Some(other) => match humantime::parse_duration(other) {
                        Ok(d) if !d.is_zero() => Fsync::Every(d),
                        _ => {
                            p.err(
                                format!("sources.{name}.fsync"),
                                format!(
                                    "expected \"always\", \"never\" or an interval such as \"100ms\", got {other:?}"
                                ),
                            );
                            Fsync::Always
                        }
                    },
                };
                let segment_bytes = segment_bytes.unwrap_or(64 << 20);
                if segment_bytes < 4096 {
                    p.err(format!("sources.{name}.segment_bytes"), "must be at least 4096");
                }
                SourceKind::Http(IngestLogPlan { fsync, segment_bytes })
            }
            SourceConfig::Generator {
                events,
                emit_per_s,
                users,
                items,
                seed,
                malformed_rate,
                duplicate_rate,
                disorder_ms,
                start_now,
            } => {
                let d = GenOptions::default();
                let start_ms = if start_now.unwrap_or(true) {
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(d.start_ms, |t| t.as_millis() as i64)
                } else {
                    d.start_ms
                };
                let options = GenOptions {
                    events: events.unwrap_or(u64::MAX),
                    users: users.unwrap_or(d.users),
                    items: items.unwrap_or(d.items),
                    seed: seed.unwrap_or(d.seed),
                    malformed_rate: malformed_rate.unwrap_or(d.malformed_rate),
                    duplicate_rate: duplicate_rate.unwrap_or(d.duplicate_rate),
                    disorder_ms: disorder_ms.unwrap_or(d.disorder_ms),
                    rate_per_s: emit_per_s.filter(|r| *r > 0.0).unwrap_or(d.rate_per_s),
                    start_ms,
                };
                if let Err(e) = options.validate() {
                    p.err(format!("sources.{name}"), e);
                }
                let emit = emit_per_s.unwrap_or(200.0);
                if emit < 0.0 {
                    p.err(format!("sources.{name}.emit_per_s"), "must be >= 0");
                }
                SourceKind::Generator { options, emit_per_s: emit }
            }
        };
        sources.push(SourcePlan { name: name.clone(), kind });
    }
    if sources.iter().filter(|s| matches!(s.kind, SourceKind::Http(_))).count() > 1 {
        p.err("sources", "at most one http source");
    }

    // Event time.
    let et = &config.event_time;
    let time_field = et.field.clone().unwrap_or_else(|| "ts".into());
    let ooo = p.duration_ms("event_time.max_out_of_orderness", et.max_out_of_orderness.as_deref(), 5000);
    let idle = p.duration_ms("event_time.idle_timeout", et.idle_timeout.as_deref(), 30_000);
    // A bounded source's partitions never go idle by the clock (engine::time).
    let bounded_sources: Vec<u16> =
        sources.iter().enumerate().filter(|(_, s)| s.kind.bounded()).map(|(i, _)| i as u16).collect();
    let lateness = p.duration_ms("event_time.allowed_lateness", et.allowed_lateness.as_deref(), 0);

    // Flows.
    let mut flows: Vec<Flow> = Vec::new();
    let mut dedups = 0u16;
    let mut enrich: Vec<freshet_io::enrich::HttpEnrichConfig> = Vec::new();
    let tables = super::enrich::plan_tables(&config.tables, &config.flows, &mut p);
    let mut lookups = 0u16;
    for (i, f) in config.flows.iter().enumerate() {
        let path = format!("flows[{i}]");
        if flows.iter().any(|g| g.name == f.name) {
            p.err(format!("{path}.name"), format!("duplicate flow name {:?}", f.name));
        }
        let when = f.when.as_ref().map_or(Predicate::True, |w| p.predicate(&format!("{path}.when"), w));
        let mut rules = Vec::new();
        for (field, rule) in &f.fields {
            let rpath = format!("{path}.fields.{field}");
            let (ty, required) = match rule {
                FieldRuleConfig::Type(t) => (t.as_str(), true),
                FieldRuleConfig::Full { ty, required } => (ty.as_str(), required.unwrap_or(true)),
            };
            let ty = match ty {
                "string" => FieldType::String,
                "integer" => FieldType::Integer,
                "number" => FieldType::Number,
                "boolean" => FieldType::Boolean,
                "object" => FieldType::Object,
                "array" => FieldType::Array,
                "any" => FieldType::Any,
                other => {
                    p.err(
                        &rpath,
                        format!("expected one of string, integer, number, boolean, object, array, any; got {other:?}"),
                    );
                    FieldType::Any
                }
            };
            rules.push(FieldRule { path: p.field(&rpath, field), ty, required });
        }
        let schema = f.schema.as_ref().and_then(|s| {
            let (file, text) = read_schema(s);
            let loaded = text
                .map_err(|e| format!("cannot read {file}: {e}"))
                .and_then(|t| serde_json::from_str(&t).map_err(|e| format!("{file} is not JSON: {e}")))
                .and_then(|v| Schema::compile(&v).map_err(|e| format!("invalid JSON Schema: {e}")));
            loaded.map_err(|e| p.err(format!("{path}.schema"), e)).ok()
        });
        let tf = f.time_field.clone().unwrap_or_else(|| time_field.clone());
        let time_field = p.field(&format!("{path}.time_field"), &tf);
        let mut stages = Vec::new();
        let mut dedup_at: Option<usize> = None;
        for (j, s) in f.stages.iter().enumerate() {
            let spath = format!("{path}.stages[{j}]");
            stages.push(match s {
                StageConfig::Filter { when } => Stage::Filter(p.predicate(&format!("{spath}.when"), when)),
                StageConfig::Set { field, value } => {
                    let (raw, kind) = json_of(value);
                    Stage::Set { path: p.field(&format!("{spath}.field"), field), raw, kind }
                }
                StageConfig::Copy { from, to } => Stage::Copy {
                    from: p.field(&format!("{spath}.from"), from),
                    to: p.field(&format!("{spath}.to"), to),
                },
                StageConfig::Rename { from, to } => Stage::Rename {
                    from: p.field(&format!("{spath}.from"), from),
                    to: p.field(&format!("{spath}.to"), to),
                },
                StageConfig::Remove { fields } => Stage::Remove(
                    fields.iter().enumerate().map(|(k, f)| p.field(&format!("{spath}.fields[{k}]"), f)).collect(),
                ),
                StageConfig::Route { sink } => {
                    let i = sink_index(&mut p, &format!("{spath}.sink"), sink).unwrap_or(0);
                    if sink_specs.get(i as usize).is_some_and(|s| s.format == Format::Csv) {
                        p.err(format!("{spath}.sink"), "events are routed as NDJSON; the sink's format is csv");
                    }
                    if let Some(d) = dedup_at {
                        p.err(
                            &spath,
                            format!(
                                "a route cannot follow the dedup stage {path}.stages[{d}]: events are routed \
                                 before duplicates are decided, so duplicates would be written; \
                                 move the route before the dedup stage"
                            ),
                        );
                    }
                    Stage::Route(i)
                }
                StageConfig::Dedup { key, ttl } => {
                    dedup_at.get_or_insert(j);
                    let key = match key {
                        KeyConfig::One(k) => vec![p.field(&format!("{spath}.key"), k)],
                        KeyConfig::Many(ks) => {
                            if ks.is_empty() {
                                p.err(format!("{spath}.key"), "at least one key field is required");
                            }
                            ks.iter().enumerate().map(|(k, s)| p.field(&format!("{spath}.key[{k}]"), s)).collect()
                        }
                    };
                    let ttl = p.positive_ms(&format!("{spath}.ttl"), Some(ttl)).unwrap_or(1);
                    dedups += 1;
                    Stage::Dedup(Dedup { id: dedups - 1, key, ttl })
                }
                StageConfig::EnrichHttp(c) => {
                    let id = enrich.len() as u16;
                    let default_name = format!("{}_enrich_{j}", f.name);
                    let (stage, client) =
                        super::enrich::plan(c, &spath, id, default_name, dead_letter.is_some(), &mut p);
                    if enrich.iter().any(|e| e.stage == client.stage) {
                        p.err(format!("{spath}.name"), format!("duplicate enrichment stage name {:?}", client.stage));
                    }
                    enrich.push(client);
                    Stage::EnrichHttp(stage)
                }
                StageConfig::EnrichLookup(c) => {
                    if let Some(h) = f.stages.iter().position(|s| matches!(s, StageConfig::EnrichHttp(_)))
                        && h < j
                    {
                        p.err(
                            &spath,
                            format!(
                                "a lookup cannot follow the enrich_http stage {path}.stages[{h}]: lookups are \
                                 answered in input order before calls are made; move it before"
                            ),
                        );
                    }
                    let default_name = format!("{}_lookup_{j}", f.name);
                    lookups += 1;
                    let has_dlq = dead_letter.is_some();
                    let stage =
                        super::enrich::plan_lookup(c, &spath, lookups - 1, default_name, &tables, has_dlq, &mut p);
                    Stage::EnrichLookup(stage)
                }
            });
        }
        flows.push(Flow { name: f.name.clone(), when, rules, schema, time_field, stages, features: Vec::new() });
    }

    // Features.
    let state_ttl = p.positive_ms("pipeline.state_ttl", pc.state_ttl.as_deref());
    let mut features: Vec<FeatureSpec> = Vec::new();
    let mut update_sinks: Vec<(u16, String)> = Vec::new();
    for (i, f) in config.features.iter().enumerate() {
        let path = format!("features[{i}]");
        if features.iter().any(|g| g.name == f.name) {
            p.err(format!("{path}.name"), format!("duplicate feature name {:?}", f.name));
        }
        let flow = flows.iter().position(|g| g.name == f.flow).unwrap_or_else(|| {
            p.err(format!("{path}.flow"), format!("no flow named {:?}", f.flow));
            0
        });
        if f.key.is_empty() {
            p.err(format!("{path}.key"), "at least one key field is required");
        }
        let key: Vec<FieldPath> =
            f.key.iter().enumerate().map(|(k, s)| p.field(&format!("{path}.key[{k}]"), s)).collect();
        let window = match &f.window {
            WindowConfig::Tumbling { size } => {
                WindowSpec::Tumbling { size: p.duration_ms(&format!("{path}.window.size"), Some(size), 1) }
            }
            WindowConfig::Hopping { size, slide } => WindowSpec::Hopping {
                size: p.duration_ms(&format!("{path}.window.size"), Some(size), 1),
                slide: p.duration_ms(&format!("{path}.window.slide"), Some(slide), 1),
            },
            WindowConfig::Session { gap } => {
                WindowSpec::Session { gap: p.duration_ms(&format!("{path}.window.gap"), Some(gap), 1) }
            }
            WindowConfig::Global {} => WindowSpec::Global,
        };
        if let Err(e) = window.validate() {
            p.err(format!("{path}.window"), e);
        }
        let agg = match f.aggregate.as_deref().unwrap_or("count") {
            "count" => AggFn::Count,
            "sum" => AggFn::Sum,
            "min" => AggFn::Min,
            "max" => AggFn::Max,
            "mean" => AggFn::Mean,
            "distinct" => {
                let precision = f.precision.unwrap_or(12);
                if !(4..=18).contains(&precision) {
                    p.err(format!("{path}.precision"), "must be between 4 and 18");
                }
                AggFn::Distinct(precision.clamp(4, 18))
            }
            "last_n" => {
                let n = f.n.unwrap_or(10);
                if n == 0 || n > 1000 {
                    p.err(format!("{path}.n"), "must be between 1 and 1000");
                }
                AggFn::LastN(n.clamp(1, 1000))
            }
            "decayed_count" => {
                let h = p.duration_ms(&format!("{path}.half_life"), f.half_life.as_deref(), 3_600_000);
                if h <= 0 {
                    p.err(format!("{path}.half_life"), "must be > 0");
                }
                AggFn::DecayedCount(h.max(1) as f64)
            }
            other => {
                p.err(
                    format!("{path}.aggregate"),
                    format!("expected count, sum, min, max, mean, distinct, last_n or decayed_count; got {other:?}"),
                );
                AggFn::Count
            }
        };
        let field = f.field.as_ref().map(|s| p.field(&format!("{path}.field"), s));
        if agg.needs_field() && field.is_none() {
            p.err(format!("{path}.field"), format!("aggregate {} needs a field", agg.name()));
        }
        let entity = match f.entity.as_deref() {
            Some("user") => Entity::User,
            Some("item") => Entity::Item,
            Some("none") => Entity::None,
            Some(other) => {
                p.err(format!("{path}.entity"), format!("expected \"user\", \"item\" or \"none\", got {other:?}"));
                Entity::None
            }
            None => match f.key.first().map(String::as_str) {
                Some("user_id") => Entity::User,
                Some("item_id") => Entity::Item,
                _ => Entity::None,
            },
        };
        let sink = f
            .sink
            .as_deref()
            .and_then(|s| sink_index(&mut p, &format!("{path}.sink"), s))
            .map(|i| (i, sink_specs[i as usize].format));
        let late_sink = f.late_sink.as_deref().and_then(|s| sink_index(&mut p, &format!("{path}.late_sink"), s));
        let updates_sink =
            f.updates_sink.as_deref().and_then(|s| sink_index(&mut p, &format!("{path}.updates_sink"), s));
        if let Some(s) = updates_sink {
            if sink_specs[s as usize].format != Format::Ndjson {
                p.err(format!("{path}.updates_sink"), "an updates sink writes NDJSON (format = \"ndjson\")");
            }
            if entity == Entity::None {
                p.err(format!("{path}.updates_sink"), "needs an entity (user or item): updates are per entity");
            }
            update_sinks.push((s, format!("{path}.updates_sink")));
        }
        let filter = f.filter.as_ref().map(|q| p.predicate(&format!("{path}.filter"), q));
        let allowed_lateness =
            p.duration_ms(&format!("{path}.allowed_lateness"), f.allowed_lateness.as_deref(), lateness);
        let ttl = match f.ttl.as_deref() {
            None => state_ttl,
            Some("none") => None,
            Some(t) => p.positive_ms(&format!("{path}.ttl"), Some(t)),
        };
        if let Some(flow) = flows.get_mut(flow) {
            flow.features.push(i as u16);
        }
        features.push(FeatureSpec {
            name: f.name.clone(),
            flow,
            key,
            entity,
            filter,
            window,
            agg,
            field,
            sink,
            late_sink,
            updates_sink,
            allowed_lateness,
            serve: f.serve.unwrap_or(true) && entity != Entity::None,
            ttl,
        });
    }
    if features.len() > u16::MAX as usize {
        p.err("features", "too many features");
    }
    // A sink of updates takes only updates: its rows' null values are tombstones.
    for (s, path) in &update_sinks {
        let shared = features.iter().any(|f| f.sink.is_some_and(|(x, _)| x == *s) || f.late_sink == Some(*s))
            || dead_letter == Some(*s);
        if shared {
            p.err(
                path.as_str(),
                format!("sink {:?} takes other rows too; give updates a sink of their own", sinks[*s as usize].name),
            );
        }
        if let Target::Kafka(k) = &mut sinks[*s as usize].target
            && matches!(k.key, KeyRule::Result(_))
        {
            k.key = KeyRule::Updates;
        }
    }

    let shards = pc.shards.unwrap_or(cores).max(1);
    // A decoder waits on its chunk's enrichment calls; more of them keep
    // more chunks' calls in flight.
    let decoders = pc.decoders.unwrap_or(if enrich.is_empty() { cores } else { cores.max(4) }).max(1);
    if pc.shards == Some(0) {
        p.err("pipeline.shards", "must be >= 1");
    }
    if pc.decoders == Some(0) {
        p.err("pipeline.decoders", "must be >= 1");
    }
    let publish_ms = p.duration_ms("pipeline.publish_interval", pc.publish_interval.as_deref(), 5);
    let checkpoint_ms = p.duration_ms("pipeline.checkpoint_interval", pc.checkpoint_interval.as_deref(), 1000);
    if checkpoint_ms <= 0 {
        p.err("pipeline.checkpoint_interval", "must be > 0");
    }
    let limits = Limits {
        max_event_bytes: pc.max_event_bytes.unwrap_or(1 << 20),
        max_depth: pc.max_depth.unwrap_or(freshet_engine::json::DEFAULT_MAX_DEPTH),
    };
    if limits.max_event_bytes == 0 {
        p.err("pipeline.max_event_bytes", "must be > 0");
    }

    let recommender = config.recommender.as_ref().map(|r| super::recommender::plan(r, &flows, shards, &mut p));
    let keyed_stages = flows.iter().flat_map(|f| &f.stages).any(|s| s.placement() == Placement::Keyed);
    let keyed_by: Vec<super::kafka::KeptFeature<'_>> = config
        .features
        .iter()
        .zip(&features)
        .enumerate()
        .map(|(i, (f, spec))| super::kafka::KeptFeature {
            path: format!("features[{i}]"),
            key: f.key.as_slice(),
            serve: f.serve.unwrap_or(true),
            entity: spec.entity,
        })
        .collect();
    let state = super::kafka::KeptState {
        features: &keyed_by,
        recommender: recommender.is_some(),
        tables: !tables.is_empty(),
        keyed_stages,
    };
    super::kafka::check_scale_out(&mut p, &sources, &sinks, &state);
    if !p.problems.is_empty() {
        return Err(ConfigError { origin: origin.into(), problems: p.problems });
    }
    Ok(Plan {
        pipeline: Pipeline {
            flows,
            features,
            sinks: sink_specs,
            dead_letter,
            unmatched,
            sources: sources.iter().map(|s| s.name.clone()).collect(),
            limits,
            event_time: EventTime { max_out_of_orderness: ooo, idle_timeout: idle, bounded_sources },
            shards,
            recommender,
            tables,
        },
        sources,
        sinks,
        decoders,
        publish_interval: Duration::from_millis(publish_ms.max(1) as u64),
        read_block: pc.read_block_bytes.unwrap_or(1 << 18).max(4096),
        checkpoint_interval: Duration::from_millis(checkpoint_ms.max(1) as u64),
        keep_checkpoints: pc.keep_checkpoints.unwrap_or(3).max(1),
        enrich,
        shared_tables: None,
    })
}
