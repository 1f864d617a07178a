//! Kafka sources and sinks on librdkafka (the `rdkafka` crate).
//!
//! - [`source`]: a topic's partitions read into [`freshet_engine::decode::Chunk`]s,
//!   one partition per chunk, Kafka offsets as line offsets. Positions are
//!   the caller's (Freshet's checkpoint), not the group's: auto-commit is
//!   off and offsets are committed to the group only so lag tools can show it;
//!   except with `scale_out`, where the source joins its group, follows its
//!   assignment, and the committed offsets are where the group goes on.
//! - [`sink`]: rows produced as records with a deterministic key through an
//!   idempotent producer, flushed at every checkpoint.
//! - [`group`], [`members`]: a group that scales out with state: its membership,
//!   its tasks' changelogs, and who owns which task (reads go there).
//! - [`admin`]: topic metadata and creation (the CLI's `freshet kafka`, and
//!   sinks that create their topic).
//!
//! Every client logs through `tracing` ([`Logged`]) rather than librdkafka's
//! default `log` calls, and takes any librdkafka property the user passes
//! (security settings, tuning) after Freshet's own.

pub mod admin;
pub mod group;
pub mod keys;
pub mod members;
pub mod sink;
pub mod source;
pub mod standby;
pub mod tombstones;

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::ProducerContext;
use rdkafka::{ClientContext, TopicPartitionList};

/// Whether the job is stopping: a Kafka client that waits for the brokers
/// gives up then.
pub type Stop = std::sync::Arc<dyn Fn() -> bool + Send + Sync>;

/// How to reach a cluster: bootstrap servers and extra librdkafka properties
/// (`security.protocol`, `sasl.mechanism`, `sasl.username`, `ssl.ca.location`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// `bootstrap.servers`, comma separated.
    pub brokers: String,
    /// Passed to librdkafka as they are, after Freshet's own settings (so they win).
    pub properties: Vec<(String, String)>,
}

impl Connection {
    /// A librdkafka configuration with `defaults`, then the user's properties.
    pub fn client_config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (k, v) in defaults {
            config.set(*k, *v);
        }
        for (k, v) in &self.properties {
            config.set(k, v);
        }
        config
    }
}

/// A client context that sends librdkafka's logs and errors to `tracing`.
#[derive(Debug, Clone, Default)]
pub struct Logged {
    /// What the client is, in every line (`source events`, `sink results`).
    pub component: String,
}

impl ClientContext for Logged {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let component = self.component.as_str();
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(component, facility, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(component, facility, "librdkafka: {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(component, facility, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(component, facility, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        metrics::counter!(crate::metrics::KAFKA_CLIENT_ERRORS, "component" => self.component.clone()).increment(1);
        tracing::warn!(component = self.component.as_str(), %error, "Kafka: {reason}");
    }
}

impl ConsumerContext for Logged {}

/// Failed deliveries are logged; a pipeline sink counts them itself (see [`sink`]).
impl ProducerContext for Logged {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            tracing::error!(component = self.component.as_str(), error = %e, "Kafka did not take a record.");
        }
    }
}

/// Why [`send_with_room`] did not send a record.
#[derive(Debug)]
pub(crate) enum Unsent {
    /// `stop` said to give up while the queue was full.
    Stopped,
    /// The producer refused it, with librdkafka's reason.
    Failed(String),
}

impl std::fmt::Display for Unsent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unsent::Stopped => f.write_str("stopped while waiting for room in the queue"),
            Unsent::Failed(reason) => f.write_str(reason),
        }
    }
}

/// Sends `record`; while the producer's local queue is full, serves
/// delivery reports until there is room, unless `stop` says to give up.
pub(crate) fn send_with_room<K, P, C>(
    producer: &rdkafka::producer::BaseProducer<C>,
    mut record: rdkafka::producer::BaseRecord<'_, K, P, C::DeliveryOpaque>,
    stop: &dyn Fn() -> bool,
) -> std::result::Result<(), Unsent>
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
    C: ProducerContext,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), back)) => {
                if stop() {
                    return Err(Unsent::Stopped);
                }
                record = back;
                producer.poll(std::time::Duration::from_millis(10));
            }
            Err((e, _)) => return Err(Unsent::Failed(format!("producing a record: {e}"))),
        }
    }
}

/// The context of Freshet's consumers (a source's, and a group's
/// membership): logs like [`Logged`], and counts and logs the group's
/// rebalances, which a scaled-out source and a membership follow.
struct GroupContext {
    logged: Logged,
    /// The source's name (the metrics' label).
    source: String,
    /// What the group hands out, as the logs name it: "partitions" or "tasks".
    shares: &'static str,
    /// Rebalance callbacks so far, assignments and revocations.
    rebalances: AtomicU64,
    /// Assignments so far (one per rebalance this member took part in).
    assignments: AtomicU64,
    /// When the group last took this member's share back for a rebalance
    /// whose assignment has not come yet.
    revoked_at: Mutex<Option<Instant>>,
}

impl GroupContext {
    fn new(component: &str, source: &str, shares: &'static str) -> Self {
        GroupContext {
            logged: Logged { component: component.to_owned() },
            source: source.to_owned(),
            shares,
            rebalances: AtomicU64::new(0),
            assignments: AtomicU64::new(0),
            revoked_at: Mutex::new(None),
        }
    }

    fn revoked_at(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.revoked_at.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.logged.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.logged.error(error, reason);
    }
}

impl ConsumerContext for GroupContext {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let (component, shares) = (self.logged.component.as_str(), self.shares);
        let ids = |list: &TopicPartitionList| -> Vec<i32> { list.elements().iter().map(|e| e.partition()).collect() };
        match rebalance {
            Rebalance::Assign(list) => {
                tracing::info!(component, "Kafka group rebalance: {shares} assigned: {:?}.", ids(list));
                metrics::counter!(crate::metrics::KAFKA_REBALANCES, "source" => self.source.clone()).increment(1);
                self.assignments.fetch_add(1, Ordering::SeqCst);
                *self.revoked_at() = None;
            }
            // With the eager protocol every rebalance revokes everything first;
            // the next assignment says what stays here.
            Rebalance::Revoke(list) => {
                tracing::info!(component, "Kafka group rebalance: {shares} revoked: {:?}.", ids(list));
                *self.revoked_at() = Some(Instant::now());
            }
            Rebalance::Error(e) => {
                tracing::warn!(component, error = %e, "Kafka group rebalance failed; the group retries.");
                return;
            }
        }
        self.rebalances.fetch_add(1, Ordering::SeqCst);
    }
}
