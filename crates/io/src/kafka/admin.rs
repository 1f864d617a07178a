//! Topic metadata (waiting for the cluster with backoff) and topic creation.
//!
//! A source or sink that cannot reach its brokers, finds no topic, or is
//! refused its credentials says so in one log line per attempt and tries
//! again after an exponential, jittered delay (backon's schedule, capped at
//! 30 s): a cluster that comes up later is joined, and nothing crash-loops.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::Client;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::types::RDKafkaRespErr;

use super::{Connection, Logged};
use crate::error::{IoError, Result};

/// How long one metadata request may take (then the attempt counts as
/// failed and is logged; the next one follows after the backoff).
const METADATA_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a metadata request did not give the topic's partitions.
fn topic_partitions<C: ClientContext>(client: &Client<C>, topic: &str) -> std::result::Result<Vec<i32>, String> {
    let metadata = client.fetch_metadata(Some(topic), METADATA_TIMEOUT).map_err(|e| match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown) => {
            format!("cannot reach the brokers: {e}")
        }
        Some(
            RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::TopicAuthorizationFailed,
        ) => format!("the brokers refused the credentials: {e}"),
        _ => format!("no metadata from the brokers: {e}"),
    })?;
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Err(format!("topic {topic:?} does not exist"));
    };
    match t.error() {
        None => {}
        Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) => {
            return Err(format!("topic {topic:?} does not exist"));
        }
        Some(code) => return Err(format!("topic {topic:?}: {}", RDKafkaErrorCode::from(code))),
    }
    let mut partitions: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    if partitions.is_empty() {
        return Err(format!("topic {topic:?} has no partitions"));
    }
    partitions.sort_unstable();
    Ok(partitions)
}

/// The partitions of `topic`, asking again with backoff (one warning per
/// failed attempt, naming `component` and the reason) until the cluster
/// answers and the topic exists, or `stop()` turns true. Between attempts it
/// calls `idle` with how long to wait: a client's `poll`, so that what
/// librdkafka says meanwhile (an authentication error, say) reaches the logs,
/// or a plain sleep.
pub fn wait_for_partitions<C: ClientContext>(
    client: &Client<C>,
    topic: &str,
    component: &str,
    stop: &dyn Fn() -> bool,
    idle: &dyn Fn(Duration),
) -> Result<Vec<i32>> {
    let mut delays = ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(30))
        .with_jitter()
        .without_max_times()
        .build();
    loop {
        match topic_partitions(client, topic) {
            Ok(p) => return Ok(p),
            Err(reason) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(30));
                tracing::warn!(component, "{reason}; retrying in {:.1} s.", delay.as_secs_f64());
                let until = std::time::Instant::now() + delay;
                while std::time::Instant::now() < until {
                    if stop() {
                        return Err(IoError::Kafka {
                            component: component.to_owned(),
                            message: format!("stopped while waiting: {reason}"),
                        });
                    }
                    idle(Duration::from_millis(50).min(delay));
                }
            }
        }
    }
}

/// A topic to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Its name.
    pub name: String,
    /// Number of partitions.
    pub partitions: i32,
    /// Replication factor.
    pub replication: i32,
    /// `cleanup.policy=compact`: the broker keeps the last record of each key.
    pub compacted: bool,
}

/// Creates `topic` unless it exists already (then it is left as it is).
pub fn ensure_topic(connection: &Connection, topic: &TopicSpec) -> Result<()> {
    let err = |message: String| IoError::Kafka { component: format!("topic {}", topic.name), message };
    let admin: AdminClient<Logged> = connection
        .client_config(&[])
        .create_with_context(Logged { component: format!("admin {}", topic.name) })
        .map_err(|e| err(format!("creating the admin client: {e}")))?;
    let mut new = NewTopic::new(&topic.name, topic.partitions, TopicReplication::Fixed(topic.replication));
    if topic.compacted {
        new = new.set("cleanup.policy", "compact");
    }
    let options = AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| err(format!("starting a runtime for the admin client: {e}")))?;
    let results =
        runtime.block_on(admin.create_topics([&new], &options)).map_err(|e| err(format!("creating the topic: {e}")))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(err(format!("creating the topic: {code}"))),
        }
    }
    Ok(())
}

/// The end offset (the next offset to be written) of each of `topic`'s
/// partitions `0..partitions`: what a reader has to reach to have read
/// everything written before this call.
pub fn end_offsets(connection: &Connection, topic: &str, partitions: u32) -> Result<Vec<u64>> {
    let err = |message: String| IoError::Kafka { component: format!("topic {topic}"), message };
    let consumer: BaseConsumer<Logged> = connection
        .client_config(&[("group.id", "freshet-end-offsets"), ("enable.auto.commit", "false")])
        .create_with_context(Logged { component: format!("end offsets of {topic}") })
        .map_err(|e| err(format!("creating a consumer: {e}")))?;
    (0..partitions as i32)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(30))
                .map(|(_, high)| high.max(0) as u64)
                .map_err(|e| err(format!("reading the end offset of partition {p}: {e}")))
        })
        .collect()
}
