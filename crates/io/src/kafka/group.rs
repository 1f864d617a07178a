//! The Kafka side of a group that scales out with state: the membership
//! (which partitions this process owns, as tasks) and the changelog (where a
//! task's checkpoints go, so that the next owner of its partition starts
//! from them).
//!
//! [`Membership`] is a consumer that joins the group and consumes nothing:
//! its assignment says which tasks run here, and it commits the tasks'
//! checkpointed offsets so that lag tools see the group's progress. The
//! tasks read their partitions with their own assigned consumers.
//!
//! [`Changelog`] keeps, per task, its checkpoints in the partition of a
//! changelog topic with the task's number. A checkpoint is cut into pieces
//! (a record holds at most [`PIECE_BYTES`]); each piece says which writer
//! and checkpoint it belongs to and how many pieces there are, and its key is
//! one of two slots (checkpoint number modulo 2) and its index, so a
//! compacted topic keeps the last two checkpoints, and a crash halfway
//! through writing one leaves the previous one whole. [`Changelog::fetch`]
//! reads the partition to its end and returns the last complete checkpoint
//! in log order. Two processes may briefly run the same task during a
//! rebalance; their checkpoints are told apart by writer, and either is a
//! consistent state (its offsets with its state). A process that stands by
//! ([`super::standby::Standby`]) reads the same pieces as they are written.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use super::admin::{TopicSpec, ensure_topic, wait_for_partitions};
use super::{Connection, GroupContext, Logged};
use crate::error::{IoError, Result};

/// The largest piece of a checkpoint in one record (brokers take 1 MB).
pub const PIECE_BYTES: usize = 512 << 10;
const MAGIC: &[u8; 4] = b"FRCL";
const HEADER: usize = 4 + 8 + 8 + 4 + 4;

/// This process's membership of the group.
pub struct Membership {
    consumer: BaseConsumer<GroupContext>,
    topic: String,
    /// Partitions of the topic.
    partitions: usize,
    seen: u64,
    assigned: metrics::Gauge,
}

impl Membership {
    /// Waits (with backoff) for `topic`, then joins `group` on it.
    pub fn join(
        name: &str,
        connection: &Connection,
        (topic, group): (&str, &str),
        stop: &dyn Fn() -> bool,
    ) -> Result<Self> {
        let component = format!("source {name}");
        let err = |message: String| IoError::Kafka { component: component.clone(), message };
        let consumer: BaseConsumer<GroupContext> = connection
            .client_config(&[
                ("group.id", group),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("session.timeout.ms", "10000"),
                ("heartbeat.interval.ms", "1000"),
            ])
            .create_with_context(GroupContext::new(&component, name, "tasks"))
            .map_err(|e| err(format!("creating the group's consumer: {e}")))?;
        let serve = |wait| {
            let _ = consumer.poll(wait);
        };
        let ids = wait_for_partitions(consumer.client(), topic, &component, stop, &serve)?;
        consumer.subscribe(&[topic]).map_err(|e| err(format!("joining group {group}: {e}")))?;
        tracing::info!(
            component,
            topic,
            group,
            partitions = ids.len(),
            "Joined the group; tasks follow its assignment."
        );
        Ok(Self {
            consumer,
            topic: topic.to_owned(),
            partitions: ids.len(),
            seen: 0,
            assigned: metrics::gauge!(crate::metrics::KAFKA_ASSIGNED_PARTITIONS, "source" => name.to_owned()),
        })
    }

    /// The topic's partition count (one task each).
    pub fn partitions(&self) -> usize {
        self.partitions
    }

    /// Serves the group for up to `wait`; after a rebalance, the tasks
    /// (partitions) it assigned to this process, else `None`.
    pub fn poll(&mut self, wait: Duration) -> Option<Vec<u32>> {
        // Consumes nothing: the partitions are paused once assigned. An
        // error comes back at once; the rest of `wait` is slept then.
        let started = Instant::now();
        match self.consumer.poll(wait) {
            Some(Ok(m)) => {
                tracing::debug!(partition = m.partition(), "A paused partition delivered a record; ignored.")
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "The group's consumer reported an error.");
                std::thread::sleep(wait.saturating_sub(started.elapsed()));
            }
            None => {}
        }
        let assignments = self.consumer.context().assignments.load(Ordering::SeqCst);
        if assignments == self.seen {
            return None;
        }
        self.seen = assignments;
        let list = self.consumer.assignment().ok()?;
        let _ = self.consumer.pause(&list);
        let mut ids: Vec<u32> = list.elements_for_topic(&self.topic).iter().map(|e| e.partition() as u32).collect();
        ids.sort_unstable();
        self.assigned.set(ids.len() as f64);
        Some(ids)
    }

    /// How long a rebalance has been going on for this member (its tasks
    /// revoked, their new assignment not yet here), if one is.
    ///
    /// A member should not leave then: tansu 0.6.0 keeps a leader that
    /// leaves mid-rebalance as the group's leader, and the members left wait
    /// for its assignment forever (they never get tasks again).
    pub fn rebalancing_for(&self) -> Option<Duration> {
        let revoked_at = self.consumer.context().revoked_at();
        revoked_at.map(|at| at.elapsed())
    }

    /// Leaves the group and joins it again as a new member, so that the
    /// group re-forms and assigns every partition anew.
    ///
    /// For tasks nobody runs: tansu 0.6.0 goes on assigning a member that
    /// died (its session lapsed) its partitions until the group changes.
    pub fn rejoin(&mut self) -> Result<()> {
        self.consumer.unsubscribe();
        let _ = self.consumer.poll(Duration::from_millis(100));
        self.consumer.subscribe(&[self.topic.as_str()]).map_err(|e| IoError::Kafka {
            component: format!("group on {}", self.topic),
            message: format!("joining the group again: {e}"),
        })
    }

    /// Records a task's checkpointed position as the group's committed
    /// offset (for lag tools), asynchronously.
    pub fn commit(&self, partition: u32, next: u64) {
        let mut list = TopicPartitionList::new();
        if list.add_partition_offset(&self.topic, partition as i32, Offset::Offset(next as i64)).is_ok()
            && let Err(e) = self.consumer.commit(&list, CommitMode::Async)
        {
            tracing::debug!(partition, error = %e, "Could not commit a task's offset to the group.");
        }
    }
}

impl Membership {
    /// Ends this membership without leaving the group: the process is about
    /// to exit, and the group drops it when its session lapses.
    ///
    /// For a bounded job whose members all end within moments of each other:
    /// on tansu 0.6.0 a member that leaves while another's leave has the
    /// group re-forming stays its leader, and the group never forms again
    /// (a later member would wait forever), whereas a lapsed session
    /// clears it. Stopping (Ctrl-C) still leaves at once, so that the others
    /// take the tasks without waiting for the session to lapse.
    pub fn lapse(self) {
        tracing::debug!(topic = self.topic.as_str(), "Ending without leaving the group; its session lapses.");
        // Neither this type's Drop (unsubscribe) nor the consumer's (close,
        // which sends LeaveGroup) runs; the process exits next.
        std::mem::forget(self);
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        // Leave at once rather than after the session timeout.
        self.consumer.unsubscribe();
        let _ = self.consumer.poll(Duration::from_millis(100));
    }
}

/// How many records at the end of a changelog partition a restore reads
/// first (see [`Changelog::fetch`]).
pub(super) const TAIL_RECORDS: i64 = 64;

/// A group's changelog topic.
pub struct Changelog {
    connection: Connection,
    topic: String,
    partitions: usize,
    producer: BaseProducer<Logged>,
    /// Asks the broker for partitions' offsets (in no group, reads nothing):
    /// kept, so that a restore does not connect a client of its own first.
    offsets_client: BaseConsumer<Logged>,
}

impl Changelog {
    /// Connects, creating the compacted topic with `partitions` (one per
    /// task) when it is missing.
    pub fn open(connection: &Connection, topic: &str, partitions: usize) -> Result<Self> {
        let component = format!("changelog {topic}");
        ensure_topic(
            connection,
            &TopicSpec { name: topic.to_owned(), partitions: partitions as i32, replication: 1, compacted: true },
        )?;
        let producer: BaseProducer<Logged> = connection
            .client_config(&[("enable.idempotence", "true"), ("linger.ms", "5")])
            .create_with_context(Logged { component: component.clone() })
            .map_err(|e| IoError::Kafka { component, message: format!("creating the producer: {e}") })?;
        let offsets_client = consumer(connection, topic)?;
        Ok(Self { connection: connection.clone(), topic: topic.to_owned(), partitions, producer, offsets_client })
    }

    /// Writes checkpoint `id` of the task `partition` (by `writer`, a
    /// number of the task's run) and waits until the broker has it all.
    pub fn ship(&self, partition: u32, writer: u64, id: u64, bytes: &[u8]) -> Result<()> {
        let pieces: Vec<&[u8]> = if bytes.is_empty() { vec![&[][..]] } else { bytes.chunks(PIECE_BYTES).collect() };
        let count = pieces.len() as u32;
        let mut value = Vec::with_capacity(HEADER + PIECE_BYTES);
        for (index, piece) in pieces.into_iter().enumerate() {
            put_piece(&mut value, (writer, id, index as u32, count), piece);
            let key = format!("{}/{index}", id % 2);
            let record = BaseRecord::to(&self.topic).partition(partition as i32).key(&key).payload(&value);
            super::send_with_room(&self.producer, record, &|| false)
                .map_err(|m| self.error(format!("writing to partition {partition}: {m}")))?;
        }
        self.producer.flush(Duration::from_secs(60)).map_err(|e| self.error(format!("flushing: {e}")))
    }

    /// The last complete checkpoint of task `partition`, from the end of its
    /// changelog partition; `None` when it has none.
    ///
    /// The newest checkpoint is at the end, and a broker that does not
    /// compact (tansu) keeps every one before it: the partition's tail is
    /// read first (`TAIL_RECORDS` records), four times longer each time it
    /// holds no complete checkpoint, so a restore reads about one checkpoint
    /// however long the task has run. (Two runs of a task writing at once,
    /// for a moment during a move, may interleave their pieces; whichever
    /// complete checkpoint a tail yields is a consistent state.)
    pub fn fetch(&self, partition: u32, stop: &dyn Fn() -> bool) -> Result<Option<Vec<u8>>> {
        let (low, high) = self.offsets(partition)?;
        let mut tail = TAIL_RECORDS;
        loop {
            let from = high.saturating_sub(tail).max(low);
            if from >= high {
                return Ok(None);
            }
            let found = self.read(partition, (from, high), stop)?;
            if found.is_some() || from == low {
                return Ok(found);
            }
            tail = tail.saturating_mul(4);
        }
    }

    /// A consumer of the topic, in no group's assignment.
    pub(super) fn consumer(&self) -> Result<BaseConsumer<Logged>> {
        consumer(&self.connection, &self.topic)
    }

    /// The last checkpoint completed in offsets `from..high` of `partition`
    /// (read by a consumer of its own: none of an earlier read's records may
    /// come first).
    fn read(&self, partition: u32, (from, high): (i64, i64), stop: &dyn Fn() -> bool) -> Result<Option<Vec<u8>>> {
        let consumer = self.consumer()?;
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&self.topic, partition as i32, Offset::Offset(from))
            .and_then(|()| consumer.assign(&list))
            .map_err(|e| self.error(format!("reading partition {partition}: {e}")))?;
        let mut assembler = Assembler::default();
        let mut last = None;
        let mut quiet = Instant::now();
        loop {
            if stop() {
                return Err(self.error("stopped while restoring".into()));
            }
            let m = match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    tracing::warn!(topic = self.topic.as_str(), partition, error = %e, "Changelog read error; retrying.");
                    continue;
                }
                None if quiet.elapsed() > Duration::from_secs(60) => {
                    return Err(self.error(format!("partition {partition} stopped short of its end offset {high}")));
                }
                None => continue,
            };
            quiet = Instant::now();
            if let Some(whole) = m.payload().and_then(|value| assembler.take(value)) {
                last = Some(whole);
            }
            if m.offset() + 1 >= high {
                return Ok(last);
            }
        }
    }

    /// The first and the next offset of task `partition`'s changelog partition.
    pub fn offsets(&self, partition: u32) -> Result<(i64, i64)> {
        self.offsets_client
            .fetch_watermarks(&self.topic, partition as i32, Duration::from_secs(30))
            .map_err(|e| self.error(format!("reading the end of partition {partition}: {e}")))
    }

    /// The topic's name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Its partitions (one per task).
    pub fn partitions(&self) -> usize {
        self.partitions
    }

    fn error(&self, message: String) -> IoError {
        IoError::Kafka { component: format!("changelog {}", self.topic), message }
    }
}

/// A consumer of changelog `topic`, in no group's assignment.
fn consumer(connection: &Connection, topic: &str) -> Result<BaseConsumer<Logged>> {
    connection
        .client_config(&[("group.id", "freshet-changelog-restore"), ("enable.auto.commit", "false")])
        .create_with_context(Logged { component: format!("changelog {topic}") })
        .map_err(|e| IoError::Kafka {
            component: format!("changelog {topic}"),
            message: format!("creating a consumer: {e}"),
        })
}

/// What an upstream task tells every partition of its group's repartition
/// topic, after its records: how far its event time has come (its
/// watermark, [`super::sink::WATERMARK_OF_UPSTREAM`]), that its input is
/// idle ([`super::sink::IDLE_UPSTREAM`]), and that it has written all it
/// will ([`super::sink::END_OF_UPSTREAM`]). So a reader's
/// watermark moves on with every upstream task's, also one that sends it no
/// records.
pub struct Markers {
    producer: BaseProducer<Logged>,
    topic: String,
    upstream: u32,
    partitions: usize,
}

impl Markers {
    /// A producer for task `upstream`'s markers on `topic` (with `partitions`).
    pub fn open(connection: &Connection, topic: &str, upstream: u32, partitions: usize) -> Result<Self> {
        let component = format!("repartition {topic}");
        let producer = connection
            .client_config(&[("enable.idempotence", "true")])
            .create_with_context(Logged { component: component.clone() })
            .map_err(|e| IoError::Kafka { component, message: format!("creating the producer: {e}") })?;
        Ok(Self { producer, topic: topic.to_owned(), upstream, partitions })
    }

    /// Tells every partition that the task's watermark is `watermark`: its
    /// records up to a checkpoint whose state has that watermark must be
    /// written (acknowledged) first. Not awaited: a marker lost is made
    /// good by the next.
    pub fn watermark(&self, watermark: i64) -> Result<()> {
        self.send(super::sink::WATERMARK_OF_UPSTREAM, watermark.to_string().as_bytes())?;
        self.producer.poll(Duration::ZERO);
        Ok(())
    }

    /// Tells every partition that the task is idle (see
    /// [`super::sink::IDLE_UPSTREAM`]). Not awaited either.
    pub fn idle(&self) -> Result<()> {
        self.send(super::sink::IDLE_UPSTREAM, b"")?;
        self.producer.poll(Duration::ZERO);
        Ok(())
    }

    /// Tells every partition that the task has written all it will (its
    /// bounded input ended), after its records; waits until they have it.
    pub fn end(&self) -> Result<()> {
        self.send(super::sink::END_OF_UPSTREAM, b"")?;
        self.producer.flush(Duration::from_secs(60)).map_err(|e| self.error(format!("flushing the end markers: {e}")))
    }

    fn send(&self, number: u64, value: &[u8]) -> Result<()> {
        let key = super::sink::repartition_key(self.upstream, number);
        for partition in 0..self.partitions as i32 {
            let record = BaseRecord::<[u8], [u8]>::to(&self.topic).partition(partition).key(&key[..]).payload(value);
            super::send_with_room(&self.producer, record, &|| false)
                .map_err(|m| self.error(format!("writing a marker to partition {partition}: {m}")))?;
        }
        Ok(())
    }

    fn error(&self, message: String) -> IoError {
        IoError::Kafka { component: format!("repartition {}", self.topic), message }
    }
}

/// Puts checkpoints back together from their pieces, read in log order.
#[derive(Default)]
pub(super) struct Assembler {
    /// Pieces so far, by (writer, checkpoint).
    pieces: HashMap<(u64, u64), Vec<Option<Vec<u8>>>>,
}

impl Assembler {
    /// Takes one record's value; returns the checkpoint it completes.
    pub(super) fn take(&mut self, value: &[u8]) -> Option<Vec<u8>> {
        let (writer, id, index, count, piece) = parse(value)?;
        let slots = self.pieces.entry((writer, id)).or_insert_with(|| vec![None; count as usize]);
        *slots.get_mut(index as usize)? = Some(piece.to_vec());
        if !slots.iter().all(Option::is_some) {
            return None;
        }
        let whole = self.pieces.remove(&(writer, id)).unwrap_or_default();
        // Pieces of this writer's earlier checkpoints are of no use any more.
        self.pieces.retain(|(w, i), _| *w != writer || *i > id);
        Some(whole.into_iter().flatten().flatten().collect())
    }
}

/// Makes `value` the record of piece `index` of `count` of checkpoint `id` by `writer`.
fn put_piece(value: &mut Vec<u8>, (writer, id, index, count): (u64, u64, u32, u32), bytes: &[u8]) {
    value.clear();
    value.extend_from_slice(MAGIC);
    value.extend_from_slice(&writer.to_be_bytes());
    value.extend_from_slice(&id.to_be_bytes());
    value.extend_from_slice(&index.to_be_bytes());
    value.extend_from_slice(&count.to_be_bytes());
    value.extend_from_slice(bytes);
}

/// A piece's record value (for tests of what reads them).
#[cfg(test)]
pub(super) fn piece(writer: u64, id: u64, index: u32, count: u32, bytes: &[u8]) -> Vec<u8> {
    let mut value = Vec::new();
    put_piece(&mut value, (writer, id, index, count), bytes);
    value
}

/// A piece: (writer, checkpoint, index, count, bytes).
fn parse(value: &[u8]) -> Option<(u64, u64, u32, u32, &[u8])> {
    if value.len() < HEADER || &value[..4] != MAGIC {
        return None;
    }
    let u64_at = |at: usize| u64::from_be_bytes(value[at..at + 8].try_into().unwrap_or_default());
    let u32_at = |at: usize| u32::from_be_bytes(value[at..at + 4].try_into().unwrap_or_default());
    Some((u64_at(4), u64_at(12), u32_at(20), u32_at(24), &value[HEADER..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_come_whole_in_log_order_whatever_their_pieces_interleave_with() {
        let mut assembler = Assembler::default();
        // Two writers (a task run by two processes for a moment) interleave.
        assert_eq!(assembler.take(&piece(1, 5, 1, 2, b"2")), None);
        assert_eq!(assembler.take(&piece(2, 8, 0, 2, b"x")), None);
        assert_eq!(assembler.take(&piece(1, 5, 0, 2, b"1")), Some(b"12".to_vec()), "pieces in any order");
        assert_eq!(assembler.take(&piece(2, 8, 1, 2, b"y")), Some(b"xy".to_vec()));
        // A torn checkpoint (a crash halfway) is dropped once its writer completes a later one.
        assert_eq!(assembler.take(&piece(1, 6, 0, 2, b"torn")), None);
        assert_eq!(assembler.take(&piece(1, 7, 0, 1, b"next")), Some(b"next".to_vec()));
        assert!(assembler.pieces.is_empty(), "nothing of writer 1 left: {:?}", assembler.pieces.keys());
        assert_eq!(assembler.take(&piece(1, 7, 3, 1, b"?")), None, "an index out of its count");
        assert_eq!(assembler.take(b"FRCL"), None, "a cut header");
    }

    #[test]
    fn a_piece_says_its_writer_checkpoint_index_and_count() {
        let mut value = piece(7, 42, 2, 3, b"state");
        assert_eq!(parse(&value), Some((7, 42, 2, 3, &b"state"[..])));
        assert_eq!(parse(&value[..HEADER - 1]), None, "a cut header");
        value[0] = b'X';
        assert_eq!(parse(&value), None, "another record");
    }
}
