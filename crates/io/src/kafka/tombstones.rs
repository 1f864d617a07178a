//! Forgetting an entity through its topic: a tombstone (a record keyed by
//! the entity's id, with no value) produced to the partition the topic's
//! producers choose for that key. A source with `forget_on_tombstone` reads
//! it in order with the partition's events, so in a group it reaches the
//! task that owns the id after the id's earlier events, and every replica
//! that reads the partition; the checkpoint after it covers the forget.

use std::sync::Mutex;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};

use super::keys::Partitioner;
use super::{Connection, Logged};
use crate::error::{IoError, Result};

/// Produces tombstones to one topic, and says whether the broker took each.
pub struct Tombstones {
    producer: BaseProducer<Delivered>,
    topic: String,
    partitions: usize,
    partitioner: Partitioner,
    /// One caller at a time serves the producer's delivery reports.
    serving: Mutex<()>,
}

/// Reports each delivery to the sender its record carries.
struct Delivered(Logged);

impl ClientContext for Delivered {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        self.0.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.0.error(error, reason);
    }
}

impl ProducerContext for Delivered {
    type DeliveryOpaque = Box<SyncSender<std::result::Result<(), String>>>;

    fn delivery(&self, result: &DeliveryResult<'_>, to: Self::DeliveryOpaque) {
        let _ = to.try_send(result.as_ref().map(|_| ()).map_err(|(e, _)| e.to_string()));
    }
}

impl Tombstones {
    /// A producer of tombstones to `topic`, which has `partitions`
    /// partitions chosen by `partitioner` from the key.
    pub fn open(connection: &Connection, topic: &str, partitions: usize, partitioner: Partitioner) -> Result<Self> {
        let component = format!("tombstones {topic}");
        let producer = connection
            .client_config(&[("enable.idempotence", "true")])
            .create_with_context(Delivered(Logged { component: component.clone() }))
            .map_err(|e| IoError::Kafka { component, message: format!("creating the producer: {e}") })?;
        Ok(Self { producer, topic: topic.to_owned(), partitions, partitioner, serving: Mutex::new(()) })
    }

    /// Produces the tombstone of `id` and waits (at most `timeout`) until
    /// the broker has it. Blocks: call it off async threads.
    pub fn send(&self, id: &str, timeout: Duration) -> Result<()> {
        let err = |message: String| IoError::Kafka { component: format!("tombstones {}", self.topic), message };
        let partition = self.partitioner.partition(id.as_bytes(), self.partitions) as i32;
        let (tx, rx): (_, Receiver<std::result::Result<(), String>>) = sync_channel(1);
        let record = BaseRecord::<str, [u8], _>::with_opaque_to(&self.topic, Box::new(tx)).partition(partition).key(id);
        self.producer.send(record).map_err(|(e, _)| err(format!("producing the tombstone of {id:?}: {e}")))?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(delivered) = rx.try_recv() {
                return delivered.map_err(|e| err(format!("the broker did not take the tombstone of {id:?}: {e}")));
            }
            if Instant::now() >= deadline {
                return Err(err(format!("no answer from the broker within {timeout:?} for the tombstone of {id:?}")));
            }
            match self.serving.try_lock() {
                Ok(_serving) => {
                    self.producer.poll(Duration::from_millis(20));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }
}

impl Drop for Tombstones {
    fn drop(&mut self) {
        let _ = self.producer.flush(Duration::from_secs(5));
    }
}
