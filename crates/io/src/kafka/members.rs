//! Who runs which task of a group, and where its HTTP API answers: the
//! group's members topic, so that a read sent to any process is forwarded
//! to the process that owns the key's partition (Kafka Streams' interactive
//! queries).
//!
//! Kafka Streams carries each member's address in the rebalance protocol's
//! user data; librdkafka's assignors do not expose it, so here each process
//! writes its latest assignment to a compacted one-partition topic, keyed by
//! its advertised address, and every process follows that topic to its end.
//! A partition's owner is the member whose latest claim, among those that
//! list it, is the newest: after a rebalance the new owner's claim replaces
//! the old one's. A process that leaves writes a tombstone; one that dies
//! keeps its claim until the partitions' new owners write theirs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::admin::{TopicSpec, ensure_topic};
use super::{Connection, Logged};
use crate::error::{IoError, Result};

/// One member's latest assignment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Claim {
    partitions: Vec<u32>,
    /// Wall-clock time of the claim (ms since the epoch).
    at_ms: i64,
}

/// Claims by advertised address.
type Claims = HashMap<String, Claim>;

/// This process's view of the group's members, and its own entry.
pub struct Members {
    topic: String,
    /// This process's advertised address (its key in the topic).
    address: String,
    producer: BaseProducer<Logged>,
    claims: Arc<Mutex<Claims>>,
    stop: Arc<AtomicBool>,
    follower: Option<std::thread::JoinHandle<()>>,
}

impl Members {
    /// Connects to the members topic `topic` (creating it when missing) as
    /// the member reachable at `address`, and follows it from its start.
    pub fn open(connection: &Connection, topic: &str, address: &str) -> Result<Self> {
        let component = format!("members {topic}");
        let err = |message: String| IoError::Kafka { component: component.clone(), message };
        ensure_topic(
            connection,
            &TopicSpec { name: topic.to_owned(), partitions: 1, replication: 1, compacted: true },
        )?;
        let producer: BaseProducer<Logged> = connection
            .client_config(&[("enable.idempotence", "true")])
            .create_with_context(Logged { component: component.clone() })
            .map_err(|e| err(format!("creating the producer: {e}")))?;
        let consumer: BaseConsumer<Logged> = connection
            .client_config(&[("group.id", "freshet-members"), ("enable.auto.commit", "false")])
            .create_with_context(Logged { component: component.clone() })
            .map_err(|e| err(format!("creating the consumer: {e}")))?;
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(topic, 0, Offset::Beginning)
            .and_then(|()| consumer.assign(&list))
            .map_err(|e| err(format!("reading the topic: {e}")))?;
        let claims = Arc::new(Mutex::new(Claims::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let follower = {
            let (claims, stop) = (claims.clone(), stop.clone());
            std::thread::Builder::new()
                .name("group-members".into())
                .spawn(move || follow(&consumer, &claims, &stop))
                .map_err(|e| err(format!("starting the follower: {e}")))?
        };
        Ok(Self {
            topic: topic.to_owned(),
            address: address.to_owned(),
            producer,
            claims,
            stop,
            follower: Some(follower),
        })
    }

    /// Tells the group that this process now runs `partitions`' tasks.
    pub fn announce(&self, partitions: &[u32]) -> Result<()> {
        let claim = Claim { partitions: partitions.to_vec(), at_ms: wall_ms() };
        let value = serde_json::to_vec(&claim).unwrap_or_default();
        self.write(Some(&value))?;
        // Its own claim counts at once, before the follower reads it back.
        lock(&self.claims).insert(self.address.clone(), claim);
        Ok(())
    }

    /// The address of the member running `partition`'s task, if any has said so.
    pub fn owner(&self, partition: u32) -> Option<String> {
        owner_of(&lock(&self.claims), partition)
    }

    /// This process's advertised address.
    pub fn address(&self) -> &str {
        &self.address
    }

    fn write(&self, value: Option<&[u8]>) -> Result<()> {
        let err = |message: String| IoError::Kafka { component: format!("members {}", self.topic), message };
        let mut record = BaseRecord::<str, [u8]>::to(&self.topic).partition(0).key(&self.address);
        if let Some(v) = value {
            record = record.payload(v);
        }
        self.producer.send(record).map_err(|(e, _)| err(format!("writing this member's claim: {e}")))?;
        self.producer.flush(Duration::from_secs(10)).map_err(|e| err(format!("flushing this member's claim: {e}")))
    }
}

impl Drop for Members {
    fn drop(&mut self) {
        // Leaving: no partition is this process's any more.
        if let Err(e) = self.write(None) {
            tracing::debug!(error = %e, "Could not withdraw this member's claim.");
        }
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.follower.take() {
            let _ = t.join();
        }
    }
}

fn follow(consumer: &BaseConsumer<Logged>, claims: &Mutex<Claims>, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        let m = match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "Members topic read error; retrying.");
                continue;
            }
            None => continue,
        };
        let Some(member) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else { continue };
        let mut claims = lock(claims);
        match m.payload().map(serde_json::from_slice::<Claim>) {
            None => {
                claims.remove(member);
            }
            Some(Ok(claim)) => {
                // A claim read back may be older than one this process already holds.
                if claims.get(member).is_none_or(|c| c.at_ms <= claim.at_ms) {
                    claims.insert(member.to_owned(), claim);
                }
            }
            Some(Err(e)) => tracing::debug!(member, error = %e, "A members record that is not a claim; ignored."),
        }
    }
}

/// The member whose newest claim lists `partition`, the newest such claim winning.
fn owner_of(claims: &Claims, partition: u32) -> Option<String> {
    claims
        .iter()
        .filter(|(_, c)| c.partitions.contains(&partition))
        .max_by(|a, b| a.1.at_ms.cmp(&b.1.at_ms).then_with(|| a.0.cmp(b.0)))
        .map(|(member, _)| member.clone())
}

fn lock(claims: &Mutex<Claims>) -> std::sync::MutexGuard<'_, Claims> {
    claims.lock().unwrap_or_else(|e| e.into_inner())
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_claim_of_a_partition_names_its_owner() {
        let claim = |partitions: &[u32], at_ms| Claim { partitions: partitions.to_vec(), at_ms };
        let mut claims = Claims::new();
        claims.insert("a:1".into(), claim(&[0, 1, 2, 3], 100));
        assert_eq!(owner_of(&claims, 2).as_deref(), Some("a:1"));
        // b joined: the rebalance gave it 2 and 3; a has not said so yet.
        claims.insert("b:1".into(), claim(&[2, 3], 200));
        assert_eq!(owner_of(&claims, 2).as_deref(), Some("b:1"));
        assert_eq!(owner_of(&claims, 0).as_deref(), Some("a:1"));
        claims.insert("a:1".into(), claim(&[0, 1], 210));
        assert_eq!(owner_of(&claims, 3).as_deref(), Some("b:1"));
        claims.remove("b:1");
        assert_eq!(owner_of(&claims, 3), None, "b left, and nobody claimed 3 yet");
    }
}
