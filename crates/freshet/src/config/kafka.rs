//! Planning of `kafka` sources and sinks: names, start positions, key rules
//! and topic creation checked, librdkafka properties passed through.

use std::collections::BTreeMap;

use freshet_engine::features::{Entity, Format};
use freshet_io::kafka::Connection;
use freshet_io::kafka::admin::TopicSpec;
use freshet_io::kafka::keys::{KeyRule, Partitioner, RowFormat};
use freshet_io::kafka::sink::KafkaSinkConfig;
use freshet_io::kafka::source::{KafkaSourceConfig, StartAt};

use super::plan::{Planner, SinkPlan, SourceKind, SourcePlan};

/// Properties Freshet sets itself: a user's value would break what the
/// source or sink promises (offsets in the checkpoint, delivery before a
/// checkpoint completes).
const OWNED: &[&str] =
    &["enable.auto.commit", "enable.auto.offset.store", "enable.idempotence", "group.id", "transactional.id"];

fn connection(p: &mut Planner, path: &str, brokers: &str, properties: Option<&BTreeMap<String, String>>) -> Connection {
    if brokers.trim().is_empty() {
        p.err(format!("{path}.brokers"), "must name at least one broker (host:port)");
    }
    let mut props = Vec::new();
    for (k, v) in properties.into_iter().flatten() {
        if OWNED.contains(&k.as_str()) || k == "bootstrap.servers" {
            p.err(format!("{path}.properties.{k}"), "is set by Freshet (use the source's or sink's own key, if any)");
        }
        props.push((k.clone(), v.clone()));
    }
    Connection { brokers: brokers.to_owned(), properties: props }
}

fn topic_name(p: &mut Planner, path: &str, topic: &str) {
    let valid = !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !valid {
        p.err(format!("{path}.topic"), format!("{topic:?} is not a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)"));
    }
}

/// How a Kafka source is shared with a group, as configured.
pub struct Sharing<'a> {
    /// `scale_out`.
    pub scale_out: Option<bool>,
    /// `standby`.
    pub standby: Option<bool>,
    /// `partition_key`.
    pub partition_key: Option<&'a str>,
    /// `partitioner`.
    pub partitioner: Option<&'a str>,
}

/// Plans `[sources.NAME]` of type kafka.
pub fn source(
    p: &mut Planner,
    name: &str,
    (brokers, topic, group): (&str, &str, Option<&str>),
    bounded: Option<bool>,
    Sharing { scale_out, standby, partition_key, partitioner }: Sharing<'_>,
    (start, forget_on_tombstone): (Option<&str>, Option<&str>),
    properties: Option<&BTreeMap<String, String>>,
) -> KafkaSourceConfig {
    let path = format!("sources.{name}");
    let connection = connection(p, &path, brokers, properties);
    topic_name(p, &path, topic);
    let start = match start {
        None | Some("earliest") => StartAt::Earliest,
        Some("latest") => StartAt::Latest,
        Some(other) => {
            p.err(format!("{path}.start"), format!("expected \"earliest\" or \"latest\", got {other:?}"));
            StartAt::Earliest
        }
    };
    let forget_on_tombstone = forget_on_tombstone.and_then(|name| match Entity::from_name(name) {
        Some(entity) if entity != Entity::None => Some(entity),
        _ => {
            p.err(format!("{path}.forget_on_tombstone"), format!("expected \"user\" or \"item\", got {name:?}"));
            None
        }
    });
    let group = group.unwrap_or("freshet");
    if group.is_empty() {
        p.err(format!("{path}.group"), "must not be empty");
    }
    if partition_key.is_some_and(str::is_empty) {
        p.err(format!("{path}.partition_key"), "must name a field");
    }
    let partitioner = match partitioner {
        None => Partitioner::default(),
        Some(name) => Partitioner::named(name).unwrap_or_else(|| {
            p.err(format!("{path}.partitioner"), format!("expected one of {:?}, got {name:?}", Partitioner::NAMES));
            Partitioner::default()
        }),
    };
    KafkaSourceConfig {
        connection,
        topic: topic.to_owned(),
        group: group.to_owned(),
        bounded: bounded.unwrap_or(false),
        start,
        scale_out: scale_out.unwrap_or(false),
        standby: standby.unwrap_or(false),
        only: None,
        partition_key: partition_key.map(str::to_owned),
        partitioner,
        upstreams: None,
        forget_on_tombstone,
    }
}

/// The state a pipeline keeps, as far as scaling out is concerned.
pub struct KeptState<'a> {
    /// Its features.
    pub features: &'a [KeptFeature<'a>],
    /// Whether it has a recommender: a group runs it on every process, over
    /// every partition (`crate::group`'s replica).
    pub recommender: bool,
    /// Whether it has lookup tables: a group keeps them whole on every
    /// process (the replica feeds them, the tasks read them).
    pub tables: bool,
    /// Whether a flow has a keyed stage (dedup): its tables move with the
    /// tasks' checkpoints, so only a group of tasks can keep them.
    pub keyed_stages: bool,
}

/// A feature, as a group's planning sees it.
pub struct KeptFeature<'a> {
    /// Its path in the config (`features[i]`).
    pub path: String,
    /// Its key fields.
    pub key: &'a [String],
    /// Whether it is served.
    pub serve: bool,
    /// The entity it is read (and forgotten) by.
    pub entity: Entity,
}

/// What a `scale_out` source allows. A stateless pipeline shares the topic
/// through the group directly. One with features or a recommender (or a
/// bounded one) runs each assigned partition as a task whose checkpoints go
/// to a changelog topic, so its state moves with the partition
/// (`crate::group`); then all of a key's events must be in one partition
/// (every feature is keyed by the field the topic is keyed by), every task
/// writes the same outputs (Kafka sinks), and the job has that one source.
/// A recommender is not split by partition (its item model learns from
/// every user), nor are lookup tables (an event's row may come from any
/// partition): each process keeps a replica of them that reads every
/// partition.
pub fn check_scale_out(p: &mut Planner, sources: &[SourcePlan], sinks: &[SinkPlan], state: &KeptState<'_>) {
    let stateful = !state.features.is_empty() || state.recommender || state.tables;
    for s in sources {
        if let SourceKind::Kafka(k) = &s.kind
            && k.standby
            && !k.in_tasks(stateful)
        {
            p.err(
                format!("sources.{}.standby", s.name),
                "stands by for the tasks of a group that keeps state (scale_out = true with features, or bounded): \
                 this source runs none",
            );
        }
    }
    let Some((name, k)) = sources.iter().find_map(|s| match &s.kind {
        SourceKind::Kafka(k) if k.scale_out => Some((s.name.as_str(), k)),
        _ => None,
    }) else {
        return;
    };
    let path = format!("sources.{name}");
    if !k.in_tasks(stateful) {
        if state.keyed_stages {
            p.err(
                format!("{path}.scale_out"),
                "this pipeline keeps a keyed stage (dedup), which does not yet move with the partitions it belongs to",
            );
        }
        return;
    }
    if sources.len() > 1 {
        p.err(format!("{path}.scale_out"), "a job that scales out with state reads this one source only");
    }
    for s in sinks {
        if !matches!(s.target, freshet_io::sink::Target::Kafka(_)) {
            p.err(
                format!("sinks.{}.type", s.name),
                format!("every task of the group writes it, as {path} scales out with state: use a kafka sink"),
            );
        }
    }
    if state.features.is_empty() {
        return;
    }
    let Some(key) = &k.partition_key else {
        p.err(
            format!("{path}.partition_key"),
            "is needed to scale out with features: the field the topic's records are keyed by (e.g. \"user_id\")",
        );
        return;
    };
    // Features keyed otherwise are fed through one repartition topic, keyed by their first key field.
    let mut by: Option<(&str, &str)> = None;
    for KeptFeature { path: feature, key: fields, serve, entity } in state.features {
        if fields.contains(key) {
            // A tombstone reaches the task of the entity's partition, and forgets
            // the keys that begin with its id: they must all be in that partition.
            if k.forget_on_tombstone == Some(*entity) && fields.first() != Some(key) {
                p.err(
                    format!("{feature}.key"),
                    format!(
                        "spreads each {entity}'s keys over the tasks ({path} is partitioned by {key}), and a \
                         tombstone forgets it in one task (forget_on_tombstone): put {key} first, or take {key} \
                         out of the key (the feature is then repartitioned by its first field)",
                        entity = entity.name(),
                    ),
                );
            }
            // A read names the entity (the first key field): its partition must follow from it.
            if *serve && fields.first() != Some(key) {
                p.err(
                    format!("{feature}.key"),
                    format!(
                        "is served, and read by its first field, but {path} is partitioned by {key}: \
                         put {key} first, or set serve = false"
                    ),
                );
            }
            continue;
        }
        let Some(first) = fields.first() else {
            p.err(format!("{feature}.key"), "a feature without a key cannot be spread over a group's tasks");
            continue;
        };
        match by {
            None => by = Some((feature.as_str(), first)),
            Some((other, field)) if field != first => p.err(
                format!("{feature}.key"),
                format!(
                    "would be repartitioned by {first} and {other} by {field}: \
                     a job repartitions by one field for now"
                ),
            ),
            Some(_) => {}
        }
    }
}

/// The field features not keyed by the scaled-out source's partition key are
/// repartitioned by (the first key field of the first such feature).
pub fn repartition_field<'a, F: AsRef<str> + 'a>(
    partition_key: &str,
    features: impl IntoIterator<Item = &'a [F]>,
) -> Option<&'a str> {
    features
        .into_iter()
        .find(|key| !key.iter().any(|f| f.as_ref() == partition_key))
        .and_then(|key| key.first())
        .map(AsRef::as_ref)
}

/// What a kafka sink's config says, as given.
pub struct SinkFields<'a> {
    pub brokers: &'a str,
    pub topic: &'a str,
    pub key: Option<&'a str>,
    pub partitions: Option<i32>,
    pub replication: Option<i32>,
    pub compacted: Option<bool>,
    pub delivery: Option<&'a str>,
    pub transactional_id: Option<&'a str>,
    pub properties: Option<&'a BTreeMap<String, String>>,
}

/// Plans `[sinks.NAME]` of type kafka, whose rows have `format`.
pub fn sink(p: &mut Planner, name: &str, f: SinkFields<'_>, format: Format) -> KafkaSinkConfig {
    let path = format!("sinks.{name}");
    let connection = connection(p, &path, f.brokers, f.properties);
    topic_name(p, &path, f.topic);
    let rows = match format {
        Format::Csv => RowFormat::Csv,
        Format::Ndjson => RowFormat::Ndjson,
    };
    let key = match f.key {
        None | Some("result") => KeyRule::Result(rows),
        Some("row") => KeyRule::Row,
        Some("none") => KeyRule::None,
        Some(other) => {
            p.err(format!("{path}.key"), format!("expected \"result\", \"row\" or \"none\", got {other:?}"));
            KeyRule::Result(rows)
        }
    };
    if f.partitions.is_some_and(|n| n < 1) {
        p.err(format!("{path}.partitions"), "must be at least 1");
    }
    if f.replication.is_some_and(|n| n < 1) {
        p.err(format!("{path}.replication"), "must be at least 1");
    }
    if f.partitions.is_none() && (f.replication.is_some() || f.compacted.is_some()) {
        p.err(
            format!("{path}.partitions"),
            "is needed with replication or compacted (they apply when Freshet creates the topic)",
        );
    }
    let create = f.partitions.map(|partitions| TopicSpec {
        name: f.topic.to_owned(),
        partitions,
        replication: f.replication.unwrap_or(1),
        compacted: f.compacted.unwrap_or(false),
    });
    let transactional_id = match f.delivery {
        None | Some("at_least_once") => {
            if f.transactional_id.is_some() {
                p.err(format!("{path}.transactional_id"), "applies only with delivery = \"exactly_once\"");
            }
            None
        }
        Some("exactly_once") => Some(f.transactional_id.map_or_else(|| format!("freshet-{name}"), str::to_owned)),
        Some(other) => {
            p.err(format!("{path}.delivery"), format!("expected \"at_least_once\" or \"exactly_once\", got {other:?}"));
            None
        }
    };
    KafkaSinkConfig { connection, topic: f.topic.to_owned(), key, create, transactional_id, repartition: None }
}
