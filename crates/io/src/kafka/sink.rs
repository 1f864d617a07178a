//! A Kafka sink: each formatted row becomes one record (value = the row
//! without its newline, key by [`KeyRule`]), produced by an idempotent
//! producer.
//!
//! Delivery is at least once per attempt and exactly once per key: the
//! writer calls [`KafkaSink::sync`] at every checkpoint, which waits until
//! the broker has acknowledged every record, so a checkpoint never covers a
//! record that could still be lost; after a crash the rows since the last
//! checkpoint are produced again with the same keys (the key is the result's
//! identity, window and entity). While the brokers are unreachable the
//! producer keeps retrying (librdkafka's `message.timeout.ms`, unlimited by
//! default here) and the checkpoint waits; a record that still fails stops
//! the job with the sink's name and the broker's reason.
//!
//! With a transactional id (`delivery = "exactly_once"`, brokers with
//! transactions: Apache Kafka, Redpanda; not tansu) the records between two
//! checkpoints form one transaction, committed when the checkpoint's barrier
//! reaches the writer; consumers with `isolation.level=read_committed` never
//! see the records of a run that crashed before its commit. The commit
//! precedes the checkpoint file by the moment it takes to write it: a crash
//! exactly then produces that checkpoint's rows again in the next
//! transaction, with the same keys. Consumed offsets stay in Freshet's
//! checkpoint (the source of truth on restore), not in the transaction.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};

use super::admin::{TopicSpec, ensure_topic, wait_for_partitions};
use super::keys::{KeyRule, is_tombstone, key_of};
use super::{Connection, Logged, Stop};
use crate::error::{IoError, Result};
use freshet_engine::features::Entity;
use freshet_engine::record::Forget;

/// Said with every transaction failure: the usual cause is a broker without them.
const TRANSACTIONS_HINT: &str = " (delivery = \"exactly_once\" needs brokers with transactions, \
     e.g. Apache Kafka or Redpanda; use \"at_least_once\" with others)";

/// A Kafka sink's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSinkConfig {
    /// The cluster.
    pub connection: Connection,
    /// The topic written.
    pub topic: String,
    /// How records are keyed.
    pub key: KeyRule,
    /// Create the topic when it is missing, with these settings.
    pub create: Option<TopicSpec>,
    /// `delivery = "exactly_once"`: the transactional id; each checkpoint's
    /// records are committed as one transaction.
    pub transactional_id: Option<String>,
    /// Records of a group's repartition topic (see [`Repartition`]).
    pub repartition: Option<Repartition>,
}

/// A repartition topic's records, written by one task of a group that
/// scales out (`freshet::group`): each NDJSON row (an event) goes to the
/// partition of its `field`'s value (CRC-32 modulo the topic's partitions), so all of
/// a value's events meet in one partition, and its key says which task
/// wrote it and the row's number in that task's output, on from the
/// checkpoint's ([`repartition_key`]). A task that runs again from a
/// checkpoint writes the same rows with the same numbers, which the reader
/// drops. (Not headers: the test broker, tansu, scans its whole header table
/// for every record it fetches.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repartition {
    /// The field whose value picks the partition.
    pub field: String,
    /// The writing task (its input partition).
    pub upstream: u32,
}

/// The number of a repartition topic's end marker: the task has written
/// everything (its bounded input ended).
pub const END_OF_UPSTREAM: u64 = u64::MAX;
/// The number of a repartition topic's watermark marker, whose value is the
/// task's watermark (decimal): its later records are not expected to be
/// older, as with the watermark its own input gives.
pub const WATERMARK_OF_UPSTREAM: u64 = u64::MAX - 1;
/// The number of a repartition topic's idle marker: the task's own input
/// has had nothing for its idle timeout, so it holds no reader's watermark
/// back until it writes again (Flink's idle watermark status).
pub const IDLE_UPSTREAM: u64 = u64::MAX - 2;

/// A repartition topic's forget marker: the writing task forgot an entity
/// (its source read the entity's tombstone), and the task that keeps the
/// entity's repartitioned features forgets it where the marker stands among
/// the writer's records. Its key is a record's key followed by the entity's
/// id (a row's key is never longer), its value the entity's kind.
pub fn forget_marker_key(upstream: u32, seq: u64, id: &[u8]) -> Vec<u8> {
    [&repartition_key(upstream, seq)[..], id].concat()
}

/// The writer, number and forget of a forget marker: the id its key holds
/// after the writer and number, the entity its value names (see
/// [`forget_marker_key`]).
pub fn parse_forget_marker(key: &[u8], value: Option<&[u8]>) -> Option<(u32, u64, Forget)> {
    let (upstream, seq) = parse_repartition_key(key.get(..12)?)?;
    let id = key.get(12..).filter(|id| !id.is_empty())?;
    let entity = Entity::from_name(std::str::from_utf8(value?).ok()?)?;
    Some((upstream, seq, Forget { entity, id: id.to_vec() }))
}

/// The key of a repartition record: writing task and number, big-endian.
pub fn repartition_key(upstream: u32, seq: u64) -> [u8; 12] {
    let mut key = [0; 12];
    key[..4].copy_from_slice(&upstream.to_be_bytes());
    key[4..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// The writing task and number of a repartition record's key.
pub fn parse_repartition_key(key: &[u8]) -> Option<(u32, u64)> {
    let upstream = u32::from_be_bytes(key.get(..4)?.try_into().ok()?);
    let seq = u64::from_be_bytes(key.get(4..12)?.try_into().ok()?);
    (key.len() == 12).then_some((upstream, seq))
}

/// Delivery reports, counted by librdkafka's thread and read by the writer.
struct Deliveries {
    logged: Logged,
    produced: metrics::Counter,
    failed: AtomicU64,
    first_failure: std::sync::Mutex<Option<String>>,
}

/// The producer's context: delivery reports and logs.
#[derive(Clone)]
struct SinkContext(Arc<Deliveries>);

impl ClientContext for SinkContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.0.logged.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.0.logged.error(error, reason);
    }
}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.0.produced.increment(1);
            }
            Err((e, _)) => {
                self.0.failed.fetch_add(1, Ordering::Relaxed);
                let mut first = self.0.first_failure.lock().unwrap_or_else(|p| p.into_inner());
                first.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// An open Kafka sink.
pub struct KafkaSink {
    name: String,
    topic: String,
    key: KeyRule,
    producer: BaseProducer<SinkContext>,
    deliveries: Arc<Deliveries>,
    transactional: bool,
    stop: Stop,
    key_buf: Vec<u8>,
    errors: metrics::Counter,
    repartition: Option<Repartition>,
    /// The topic's partitions (a repartition topic's records pick theirs).
    partitions: u32,
    /// The next record's number (repartition topics).
    seq: u64,
}

impl KafkaSink {
    /// Connects the producer, creating the topic first when asked, and waits
    /// (with backoff) until the topic's metadata is there.
    pub fn open(name: &str, config: &KafkaSinkConfig, stop: Stop) -> Result<Self> {
        let component = format!("sink {name}");
        if let Some(spec) = &config.create {
            ensure_topic(&config.connection, spec)?;
        }
        let deliveries = Arc::new(Deliveries {
            logged: Logged { component: component.clone() },
            produced: metrics::counter!(crate::metrics::KAFKA_PRODUCED, "sink" => name.to_owned()),
            failed: AtomicU64::new(0),
            first_failure: std::sync::Mutex::new(None),
        });
        let mut settings = vec![
            ("enable.idempotence", "true"),
            // Retry for as long as it takes: a checkpoint waits for the broker rather than losing rows.
            ("message.timeout.ms", "0"),
            // Java clients' partitioner, so other clients that key by the same bytes agree on the partition.
            ("partitioner", "murmur2_random"),
            ("linger.ms", "1"),
            // A bounded queue pushes back on the pipeline, so a checkpoint (which
            // waits for every queued record) never waits for more than this.
            ("queue.buffering.max.messages", "10000"),
            ("compression.type", "none"),
        ];
        if let Some(id) = &config.transactional_id {
            settings.push(("transactional.id", id.as_str()));
        }
        let producer: BaseProducer<SinkContext> =
            config.connection.client_config(&settings).create_with_context(SinkContext(deliveries.clone())).map_err(
                |e| IoError::Kafka { component: component.clone(), message: format!("creating the producer: {e}") },
            )?;
        let partitions = wait_for_partitions(producer.client(), &config.topic, &component, &*stop, &|wait| {
            producer.poll(wait);
        })?
        .len() as u32;
        if config.transactional_id.is_some() {
            let err = |what: &str, e: KafkaError| IoError::Kafka {
                component: component.clone(),
                message: format!("{what}: {e}{TRANSACTIONS_HINT}"),
            };
            producer.init_transactions(Duration::from_secs(30)).map_err(|e| err("initialising transactions", e))?;
            producer.begin_transaction().map_err(|e| err("beginning a transaction", e))?;
        }
        Ok(Self {
            name: name.to_owned(),
            topic: config.topic.clone(),
            key: config.key,
            producer,
            deliveries,
            transactional: config.transactional_id.is_some(),
            stop,
            key_buf: Vec::new(),
            errors: metrics::counter!(crate::metrics::KAFKA_PRODUCER_ERRORS, "sink" => name.to_owned()),
            repartition: config.repartition.clone(),
            partitions,
            seq: 0,
        })
    }

    /// Numbers records from `committed` on: the records a checkpoint covered.
    pub fn resume_at(&mut self, committed: u64) {
        self.seq = committed;
    }

    /// Produces each line of `data` as one record.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        for line in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let mut partition = None;
            let keyed = match &self.repartition {
                Some(r) => {
                    field_value(line, &r.field, &mut self.key_buf);
                    partition = Some(
                        super::keys::Partitioner::ConsistentRandom.partition(&self.key_buf, self.partitions as usize)
                            as i32,
                    );
                    self.key_buf.clear();
                    self.key_buf.extend_from_slice(&repartition_key(r.upstream, self.seq));
                    self.seq += 1;
                    true
                }
                None => key_of(self.key, line, &mut self.key_buf),
            };
            let mut record = BaseRecord::to(&self.topic);
            if !is_tombstone(self.key, line) {
                record = record.payload(line);
            }
            if keyed {
                record = record.key(&self.key_buf[..]);
            }
            if let Some(p) = partition {
                record = record.partition(p);
            }
            super::send_with_room(&self.producer, record, &*self.stop).map_err(|u| self.unsent(u))?;
        }
        self.producer.poll(Duration::ZERO);
        self.check()
    }

    /// Passes a forget on to the task that keeps the entity's repartitioned
    /// features: a forget marker, numbered as the rows are, in the partition
    /// the entity's id picks. Other sinks have nothing to pass on. Returns
    /// whether a record was produced.
    pub fn forget(&mut self, forget: &Forget) -> Result<bool> {
        let Some(r) = &self.repartition else { return Ok(false) };
        if forget.id.is_empty() {
            return Ok(false);
        }
        let partition =
            super::keys::Partitioner::ConsistentRandom.partition(&forget.id, self.partitions as usize) as i32;
        let key = forget_marker_key(r.upstream, self.seq, &forget.id);
        self.seq += 1;
        let record = BaseRecord::to(&self.topic).key(&key[..]).payload(forget.entity.name()).partition(partition);
        super::send_with_room(&self.producer, record, &*self.stop).map_err(|u| self.unsent(u))?;
        self.producer.poll(Duration::ZERO);
        self.check().map(|()| true)
    }

    /// Waits until every record produced so far is acknowledged (a
    /// checkpoint's commit point), logging while the brokers keep it waiting.
    pub fn sync(&mut self) -> Result<()> {
        let started = std::time::Instant::now();
        loop {
            match self.producer.flush(Duration::from_secs(5)) {
                Ok(()) => break,
                Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)) => {
                    self.check()?;
                    if (self.stop)() {
                        return Err(self.stopped("acknowledgements"));
                    }
                    tracing::warn!(
                        sink = self.name.as_str(),
                        waiting_s = started.elapsed().as_secs(),
                        in_flight = self.producer.in_flight_count(),
                        "Kafka has not acknowledged every record yet; the checkpoint waits."
                    );
                }
                Err(e) => return Err(self.failure(format!("flushing: {e}"))),
            }
        }
        self.check()?;
        if self.transactional {
            self.producer
                .commit_transaction(Duration::from_secs(60))
                .map_err(|e| self.failure(format!("committing the transaction: {e}{TRANSACTIONS_HINT}")))?;
            self.producer.begin_transaction().map_err(|e| self.failure(format!("beginning a transaction: {e}")))?;
        }
        Ok(())
    }

    /// Serves delivery reports; fails if a record could not be delivered.
    pub fn serve(&mut self) -> Result<()> {
        self.producer.poll(Duration::ZERO);
        self.check()
    }

    fn check(&self) -> Result<()> {
        if self.deliveries.failed.load(Ordering::Relaxed) > 0 {
            let first = self.deliveries.first_failure.lock().unwrap_or_else(|p| p.into_inner()).clone();
            return Err(self.failure(format!(
                "{} record(s) could not be delivered: {}",
                self.deliveries.failed.load(Ordering::Relaxed),
                first.unwrap_or_default()
            )));
        }
        Ok(())
    }

    fn unsent(&self, unsent: super::Unsent) -> IoError {
        match unsent {
            super::Unsent::Stopped => self.stopped("room in the queue"),
            super::Unsent::Failed(message) => self.failure(message),
        }
    }

    /// The job was stopped while this sink waited for `what`: not a producer error.
    fn stopped(&self, what: &str) -> IoError {
        IoError::Stopped { component: format!("sink {}", self.name), waiting_for: what.to_owned() }
    }

    fn failure(&self, message: String) -> IoError {
        self.errors.increment(1);
        IoError::Kafka { component: format!("sink {}", self.name), message }
    }
}

impl Drop for KafkaSink {
    fn drop(&mut self) {
        // Deliver what is queued; a sink dropped on error gives up after a while.
        let _ = self.producer.flush(Duration::from_secs(10));
    }
}

/// Writes the value of `row`'s top-level `field` (a string's text, another
/// value's JSON; nothing when the row has no such field) into `out`.
fn field_value(row: &[u8], field: &str, out: &mut Vec<u8>) {
    out.clear();
    if let Some((_, _, start, end)) = freshet_engine::json::find_member(row, field) {
        let value = &row[start..end];
        match value.strip_prefix(b"\"").and_then(|v| v.strip_suffix(b"\"")) {
            // A string's text, as the engine keys state by it and as a
            // tombstone's key spells it: `caf\u00e9` and `café` are one id.
            Some(body) if body.contains(&b'\\') => {
                let mut text = String::new();
                if freshet_engine::json::unescape_into(body, &mut text) {
                    out.extend_from_slice(text.as_bytes());
                } else {
                    // A lone surrogate has no text: its raw spelling, then.
                    out.extend_from_slice(body);
                }
            }
            Some(body) => out.extend_from_slice(body),
            None => out.extend_from_slice(value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repartition_key_holds_writer_and_number() {
        let key = repartition_key(3, 1 << 40);
        assert_eq!(parse_repartition_key(&key), Some((3, 1 << 40)));
        assert_eq!(parse_repartition_key(&repartition_key(0, END_OF_UPSTREAM)), Some((0, END_OF_UPSTREAM)));
        assert_eq!(parse_repartition_key(&key[..11]), None);
        assert_eq!(parse_repartition_key(b"a result key, 12+ bytes"), None);
    }

    #[test]
    fn a_forget_marker_holds_writer_number_and_the_forgotten_entity() {
        let key = forget_marker_key(2, 77, b"i9");
        assert_eq!(parse_repartition_key(&key), None, "a forget marker is not taken for a row");
        let forget = Forget { entity: Entity::Item, id: b"i9".to_vec() };
        assert_eq!(parse_forget_marker(&key, Some(b"item")), Some((2, 77, forget)));
        assert_eq!(
            parse_forget_marker(&key, Some(Entity::User.name().as_bytes())).map(|m| m.2.entity),
            Some(Entity::User)
        );
        assert_eq!(parse_forget_marker(&key, None), None, "a marker names its entity");
        assert_eq!(parse_forget_marker(&key, Some(b"{\"item_id\":\"i9\"}")), None);
        assert_eq!(parse_forget_marker(&repartition_key(2, 77), Some(b"item")), None, "a marker names its id");
    }

    #[test]
    fn the_repartition_field_is_read_from_the_row() {
        let mut out = Vec::new();
        field_value(br#"{"user_id":"u1","item_id":"i9","n":5}"#, "item_id", &mut out);
        assert_eq!(out, b"i9");
        field_value(br#"{"user_id":"u1","item_id":"i9","n":5}"#, "n", &mut out);
        assert_eq!(out, b"5");
        field_value(br#"{"item_id":"caf\u00e9 \"x\""}"#, "item_id", &mut out);
        assert_eq!(out, "café \"x\"".as_bytes(), "a string's text, escapes decoded");
        field_value(br#"{"user_id":"u1"}"#, "item_id", &mut out);
        assert!(out.is_empty(), "a row without the field goes to the partition of the empty value");
    }
}
