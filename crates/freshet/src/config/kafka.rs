//! Planning of `kafka` sources and sinks: names, start positions, key rules
//! and topic creation checked, librdkafka properties passed through.

use std::collections::BTreeMap;

use freshet_engine::features::Format;
use freshet_io::kafka::Connection;
use freshet_io::kafka::admin::TopicSpec;
use freshet_io::kafka::keys::{KeyRule, RowFormat};
use freshet_io::kafka::sink::KafkaSinkConfig;
use freshet_io::kafka::source::{KafkaSourceConfig, StartAt};

use super::plan::{Planner, SourceKind, SourcePlan};

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

/// Plans `[sources.NAME]` of type kafka.
pub fn source(
    p: &mut Planner,
    name: &str,
    (brokers, topic, group): (&str, &str, Option<&str>),
    (bounded, scale_out): (Option<bool>, Option<bool>),
    start: Option<&str>,
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
    let group = group.unwrap_or("freshet");
    if group.is_empty() {
        p.err(format!("{path}.group"), "must not be empty");
    }
    let (bounded, scale_out) = (bounded.unwrap_or(false), scale_out.unwrap_or(false));
    if bounded && scale_out {
        p.err(
            format!("{path}.scale_out"),
            "cannot be combined with bounded = true (a group's members do not know where the others end)",
        );
    }
    KafkaSourceConfig { connection, topic: topic.to_owned(), group: group.to_owned(), bounded, start, scale_out }
}

/// A `scale_out` source needs a pipeline without keyed state: partitions
/// move between processes, and state does not move with them yet (that
/// takes changelog topics).
pub fn check_scale_out(p: &mut Planner, sources: &[SourcePlan], kept_state: &[&str]) {
    let Some(first) = kept_state.first() else { return };
    for s in sources {
        if let SourceKind::Kafka(k) = &s.kind
            && k.scale_out
        {
            p.err(
                format!("sources.{}.scale_out", s.name),
                format!(
                    "runs stateless pipelines only for now, and this one keeps {first}: state does not yet move \
                     with the partitions it belongs to (changelog topics are not built)"
                ),
            );
        }
    }
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
    KafkaSinkConfig { connection, topic: f.topic.to_owned(), key, create, transactional_id }
}
