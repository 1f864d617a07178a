//! A Kafka source: one topic's partitions, read into chunks.
//!
//! Each chunk holds records of one partition with contiguous offsets (a gap,
//! as compaction leaves, starts a new chunk), so a line's offset is the
//! record's Kafka offset and a dead letter names the real partition and
//! offset. A record's value is one line: newlines inside it (pretty-printed
//! JSON) become spaces; an empty value (a tombstone) is an empty line, which
//! the decoder dead-letters. Chunks are cut at the read block size, at a gap,
//! or when no more records are waiting (at most [`LINGER`] after their first
//! record), so a quiet topic's events reach the pipeline at once.
//!
//! Where to start is the caller's: positions restored from Freshet's
//! checkpoint, else `start` (earliest or latest). Partitions are assigned
//! explicitly (the group id names whose offsets [`KafkaSource::commit`]
//! records for lag tools). A bounded source reads each partition up to the
//! end offset it saw at start, then reports the partition's end.
//!
//! With `scale_out`, the source instead joins its consumer group and reads
//! the partitions the group gives it, following every rebalance: a newly
//! assigned partition starts at the group's committed offset, and a revoked
//! one's pending records still go out (what comes after them is the new
//! owner's). The group's committed offsets are then where the group goes
//! on, so [`KafkaSource::commit`] records only what the caller has finished
//! (its checkpoints), and only for partitions it still owns.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use freshet_engine::decode::{Chunk, Oversized};
use freshet_engine::record::Forget;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::admin::wait_for_partitions;
use super::{Connection, GroupContext};
use crate::error::{IoError, Result};
use crate::file::OVERSIZED_PREFIX;

/// How long a chunk may wait for more records of its partition.
pub const LINGER: Duration = Duration::from_millis(2);
/// How often the consumer lag is measured.
const LAG_EVERY: Duration = Duration::from_secs(5);
/// At most one warning about consume errors this often.
const WARN_EVERY: Duration = Duration::from_secs(5);

/// Where a partition with no restored position starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// Its first record.
    Earliest,
    /// After its last record at start.
    Latest,
}

/// A Kafka source's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSourceConfig {
    /// The cluster.
    pub connection: Connection,
    /// The topic read.
    pub topic: String,
    /// Consumer group (offsets are committed there for lag display only).
    pub group: String,
    /// Read up to the end offsets seen at start, then end.
    pub bounded: bool,
    /// Where partitions without a restored position start.
    pub start: StartAt,
    /// Join the group and read only the partitions it assigns (several
    /// processes share the topic); offsets then live in the group.
    pub scale_out: bool,
    /// With `scale_out` and state: keep a standby copy of every task's
    /// newest checkpoint (see [`super::standby`]), so a task that moves
    /// here restores without reading its changelog.
    pub standby: bool,
    /// Read only these partitions (a task of a group that keeps state, see
    /// `freshet::group`); offsets are then committed by the group's member,
    /// not by this source.
    pub only: Option<Vec<u32>>,
    /// The event field the records are keyed by (their producer's
    /// partitioning), when the config names it.
    pub partition_key: Option<String>,
    /// How the topic's producers chose partitions from keys (where a
    /// group's read of a key is forwarded).
    pub partitioner: super::keys::Partitioner,
    /// A group's repartition topic, written by this many upstream tasks
    /// (see [`super::sink::Repartition`]): each upstream is read as a
    /// partition of its own, whose offsets are its records' numbers (a
    /// record seen before is dropped) and whose end is its end marker. The
    /// topic's partition (`only`) is read from its start.
    pub upstreams: Option<u32>,
    /// A record without a value (a tombstone) forgets the entity of this
    /// kind its key names, in order with the partition's events; without
    /// it a tombstone is an empty event (a dead letter).
    pub forget_on_tombstone: Option<freshet_engine::features::Entity>,
}

impl KafkaSourceConfig {
    /// Whether a group shares this source as tasks, each partition with its
    /// own checkpoints (`freshet::group`), rather than directly: so it does
    /// when the pipeline keeps state (`stateful`) or the source is bounded.
    pub fn in_tasks(&self, stateful: bool) -> bool {
        self.scale_out && self.only.is_none() && (stateful || self.bounded)
    }
}

/// What [`KafkaSource::poll`] found.
#[derive(Debug)]
pub enum Polled {
    /// Records of one partition (or a partition's end).
    Chunk(Chunk),
    /// Nothing within the poll's wait.
    Idle,
    /// A bounded source has read every partition to its end.
    Finished,
}

/// One assigned partition.
struct Part {
    id: i32,
    /// The next offset expected (known once restored or once a record came).
    next: Option<u64>,
    /// Bounded: the end offset (exclusive) seen at start.
    end: Option<u64>,
    chunk: Option<Chunk>,
    /// When the pending chunk got its first record.
    since: Instant,
    finished: bool,
    lag: metrics::Gauge,
    /// A repartition topic's upstream: the records of each chunk it got,
    /// oldest first, until a checkpoint holds them (see [`RESUME_PARTITION`]).
    spans: VecDeque<Span>,
}

/// The records of one chunk of an upstream task's: the number after its
/// last, and the repartition topic's offset of its first. An upstream's end
/// marker is a span that never ends: a restored reader must read it again,
/// as the end is not in its checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    end: u64,
    kafka_offset: u64,
}

/// Where a repartition topic's partition is read again from after a
/// restore, as a position of its own in the reader's checkpoint: every
/// record before it is in the checkpoint's state (or a duplicate of one
/// that is). Without it the partition would be read from its start after
/// every restore, dropping all it had. It travels as an empty chunk of
/// this pseudo partition, finished (it never holds the watermark back),
/// sent once a checkpoint has shown how far its state goes; so the next
/// checkpoint carries the offset of the one before, which is safe: reading
/// from earlier only drops more duplicates.
pub const RESUME_PARTITION: u32 = u32::MAX - 1;

/// A repartition topic's read position: the offset after the last record
/// read, and the last resume offset sent.
#[derive(Debug, Default)]
struct Resume {
    consumed: u64,
    sent: u64,
}

/// The reading state, apart from the consumer (messages borrow the consumer).
struct Reader {
    name: String,
    source: String,
    topic: String,
    /// Partitions come and go with the group's assignment (`scale_out`).
    grouped: bool,
    /// Whether [`KafkaSource::commit`] commits (not for a group's task).
    committing: bool,
    /// A repartition topic: `parts` are the upstream tasks.
    repartitioned: bool,
    /// What a tombstone forgets (see [`KafkaSourceConfig::forget_on_tombstone`]).
    forget_on_tombstone: Option<freshet_engine::features::Entity>,
    resume: Resume,
    parts: Vec<Part>,
    ready: VecDeque<Chunk>,
    block: usize,
    max_line: usize,
}

/// An open Kafka source.
pub struct KafkaSource {
    consumer: BaseConsumer<GroupContext>,
    reader: Reader,
    bounded: bool,
    /// Rebalances the reader has followed (see [`GroupContext`]).
    followed: u64,
    last_lag: Instant,
    last_warning: Option<Instant>,
}

impl KafkaSource {
    /// Connects, waits (with backoff, logging why) for the topic's
    /// partitions, and assigns them at `resume` (partition → next offset)
    /// or `start`; with `scale_out`, joins the group instead (`resume` is
    /// not used: the group's committed offsets are). `block` is the chunk
    /// size, `max_line` the largest value kept whole.
    pub fn open(
        name: &str,
        config: &KafkaSourceConfig,
        resume: &[(u32, u64)],
        (block, max_line): (usize, usize),
        stop: &dyn Fn() -> bool,
    ) -> Result<Self> {
        let component = format!("source {name}");
        let err = |message: String| IoError::Kafka { component: component.clone(), message };
        let eof = if config.bounded && config.upstreams.is_none() { "true" } else { "false" };
        let consumer: BaseConsumer<GroupContext> = config
            .connection
            .client_config(&[
                ("group.id", config.group.as_str()),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("enable.partition.eof", eof),
                // A dead member's partitions move after this long (librdkafka's default is 45 s).
                ("session.timeout.ms", "10000"),
                ("heartbeat.interval.ms", "1000"),
                // A fetch returns at the latest this long after it was sent, data or not.
                // Brokers that do not answer as soon as data arrives (tansu) make it the
                // latency floor of every event (librdkafka's default is 500 ms).
                ("fetch.wait.max.ms", "10"),
                (
                    "auto.offset.reset",
                    match config.start {
                        StartAt::Earliest => "earliest",
                        StartAt::Latest => "latest",
                    },
                ),
            ])
            .create_with_context(GroupContext::new(&component, name, "partitions"))
            .map_err(|e| err(format!("creating the consumer: {e}")))?;
        let serve = |wait| {
            let _ = consumer.poll(wait);
        };
        let mut ids = wait_for_partitions(consumer.client(), &config.topic, &component, stop, &serve)?;
        if let Some(only) = &config.only {
            if let Some(missing) = only.iter().find(|p| !ids.contains(&(**p as i32))) {
                return Err(err(format!("topic {} has no partition {missing}", config.topic)));
            }
            ids.retain(|id| only.contains(&(*id as u32)));
        }
        let mut reader = Reader {
            name: component.clone(),
            source: name.to_owned(),
            topic: config.topic.clone(),
            grouped: config.scale_out,
            committing: config.only.is_none(),
            repartitioned: config.upstreams.is_some(),
            forget_on_tombstone: config.forget_on_tombstone,
            resume: Resume::default(),
            parts: Vec::new(),
            ready: VecDeque::new(),
            block,
            max_line,
        };
        if config.scale_out {
            consumer.subscribe(&[&config.topic]).map_err(|e| err(format!("joining group {}: {e}", config.group)))?;
            tracing::info!(
                component,
                topic = config.topic.as_str(),
                group = config.group.as_str(),
                partitions = ids.len(),
                "Kafka source joined its group; partitions follow the group's assignment."
            );
            return Ok(Self {
                consumer,
                reader,
                bounded: false,
                followed: 0,
                last_lag: Instant::now(),
                last_warning: None,
            });
        }
        if let (Some(upstreams), [partition]) = (config.upstreams, &ids[..]) {
            let from = resume.iter().find(|(p, _)| *p == RESUME_PARTITION).map_or(0, |(_, k)| *k);
            reader.resume = Resume { consumed: from, sent: from };
            let mut list = TopicPartitionList::new();
            let offset = if from == 0 { Offset::Beginning } else { Offset::Offset(from as i64) };
            list.add_partition_offset(&config.topic, *partition, offset)
                .and_then(|()| consumer.assign(&list))
                .map_err(|e| err(format!("assigning partition {partition}: {e}")))?;
            for u in 0..upstreams {
                let next = resume.iter().find(|(p, _)| *p == u).map_or(0, |(_, next)| *next);
                let part = Part::new(name, u as i32, Some(next), None);
                // Every upstream is known from the start: one that has said
                // nothing yet holds the watermark back (no record, watermark,
                // idle or end marker of its can be overtaken).
                reader.ready.push_back(part.empty_chunk(next));
                reader.parts.push(part);
            }
            tracing::info!(
                component,
                topic = config.topic.as_str(),
                partition,
                upstreams,
                from,
                "Repartition topic assigned."
            );
            return Ok(Self {
                consumer,
                reader,
                bounded: config.bounded,
                followed: 0,
                last_lag: Instant::now(),
                last_warning: None,
            });
        }
        let mut assignment = TopicPartitionList::new();
        // Bounded partitions that have nothing to read, with where they stand.
        let mut empty = Vec::new();
        for id in ids {
            let restored = resume.iter().find(|(p, _)| *p as i32 == id).map(|(_, next)| *next);
            let end = if config.bounded {
                let (low, high) = consumer
                    .fetch_watermarks(&config.topic, id, Duration::from_secs(10))
                    .map_err(|e| err(format!("reading the end offset of partition {id}: {e}")))?;
                let (low, high) = (low.max(0) as u64, high.max(0) as u64);
                let first = match (restored, config.start) {
                    (Some(n), _) => n,
                    (None, StartAt::Earliest) => low,
                    (None, StartAt::Latest) => high,
                };
                tracing::debug!(component, partition = id, from = first, to = high, "Bounded partition.");
                if first >= high {
                    empty.push((reader.parts.len(), first));
                }
                Some(high)
            } else {
                None
            };
            let offset = match (restored, config.start) {
                (Some(n), _) => Offset::Offset(n as i64),
                (None, StartAt::Earliest) => Offset::Beginning,
                (None, StartAt::Latest) => Offset::End,
            };
            assignment
                .add_partition_offset(&config.topic, id, offset)
                .map_err(|e| err(format!("assigning partition {id}: {e}")))?;
            reader.parts.push(Part::new(name, id, restored, end));
        }
        consumer.assign(&assignment).map_err(|e| err(format!("assigning partitions: {e}")))?;
        // A bounded partition with nothing to read ends now.
        for (i, next) in empty {
            reader.parts[i].next = Some(next);
            reader.finish(i, &consumer);
        }
        tracing::info!(
            component,
            topic = config.topic.as_str(),
            partitions = reader.parts.len(),
            bounded = config.bounded,
            "Kafka source assigned."
        );
        Ok(Self {
            consumer,
            reader,
            bounded: config.bounded,
            followed: 0,
            last_lag: Instant::now() - LAG_EVERY,
            last_warning: None,
        })
    }

    /// The partitions read, for the watermark to wait for each from the
    /// start (none in a group: they are known only once assigned).
    pub fn partitions(&self) -> Vec<u32> {
        self.reader.parts.iter().map(|p| p.id as u32).collect()
    }

    /// The next chunk, or `Idle` after about 100 ms without records, or
    /// `Finished` once a bounded source has ended every partition.
    pub fn poll(&mut self) -> Result<Polled> {
        let Self { consumer, reader, followed, .. } = self;
        loop {
            let rebalances = consumer.context().rebalances.load(Ordering::SeqCst);
            if rebalances != *followed {
                *followed = rebalances;
                reader.follow_assignment(consumer);
            }
            if let Some(c) = reader.ready.pop_front() {
                return Ok(Polled::Chunk(c));
            }
            if self.bounded && reader.parts.iter().all(|p| p.finished) {
                return Ok(Polled::Finished);
            }
            let pending = reader.parts.iter().filter(|p| p.chunk.is_some()).map(|p| p.since).min();
            if pending.is_some_and(|since| since.elapsed() >= LINGER) {
                reader.flush_all();
                continue;
            }
            let wait = if pending.is_some() { Duration::ZERO } else { Duration::from_millis(100) };
            match consumer.poll(wait) {
                Some(Ok(m)) => reader.take(&m, consumer),
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    if self.bounded
                        && let Some(i) = reader.parts.iter().position(|x| x.id == p && !x.finished)
                    {
                        reader.finish(i, consumer);
                    }
                }
                Some(Err(e)) => {
                    if self.last_warning.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                        self.last_warning = Some(Instant::now());
                        tracing::warn!(component = reader.name.as_str(), error = %e, "Kafka consume error; retrying.");
                    }
                    reader.flush_all();
                    if reader.ready.is_empty() {
                        return Ok(Polled::Idle);
                    }
                }
                None => {
                    reader.flush_all();
                    if reader.ready.is_empty() {
                        if self.last_lag.elapsed() >= LAG_EVERY {
                            self.last_lag = Instant::now();
                            reader.measure_lag(consumer);
                        }
                        return Ok(Polled::Idle);
                    }
                }
            }
        }
    }

    /// Records `positions` (partition → next offset) as the group's committed
    /// offsets, asynchronously: for lag display, or with `scale_out` as
    /// where the group goes on (then only for partitions still owned).
    pub fn commit(&mut self, positions: &[(u32, u64)]) {
        if self.reader.repartitioned {
            return self.reader.resume_after(positions);
        }
        if !self.reader.committing {
            return;
        }
        let mut list = TopicPartitionList::new();
        let owned = |p: u32| !self.reader.grouped || self.reader.parts.iter().any(|x| x.id as u32 == p);
        for (p, next) in positions.iter().filter(|(p, _)| owned(*p)) {
            if list.add_partition_offset(&self.reader.topic, *p as i32, Offset::Offset(*next as i64)).is_err() {
                return;
            }
        }
        if list.count() == 0 {
            return;
        }
        if let Err(e) = self.consumer.commit(&list, CommitMode::Async) {
            tracing::debug!(component = self.reader.name.as_str(), error = %e, "Could not commit offsets to the group.");
        }
    }
}

impl Part {
    /// An empty chunk of this partition at `offset`: what it says without records.
    fn empty_chunk(&self, offset: u64) -> Chunk {
        Chunk {
            partition: self.id as u32,
            first_offset: offset,
            end_offset: offset,
            end_position: offset,
            ..Chunk::default()
        }
    }

    fn new(source: &str, id: i32, next: Option<u64>, end: Option<u64>) -> Self {
        Part {
            id,
            next,
            end,
            chunk: None,
            since: Instant::now(),
            finished: false,
            spans: VecDeque::new(),
            lag: metrics::gauge!(
                crate::metrics::KAFKA_CONSUMER_LAG,
                "source" => source.to_owned(),
                "partition" => id.to_string()
            ),
        }
    }
}

impl Reader {
    /// Follows the group's assignment after a rebalance: a revoked
    /// partition's pending chunk goes out and the partition is dropped; a new
    /// one is read from the group's committed offset.
    fn follow_assignment(&mut self, consumer: &BaseConsumer<GroupContext>) {
        let assigned: Vec<i32> = match consumer.assignment() {
            Ok(list) => list.elements_for_topic(&self.topic).iter().map(|e| e.partition()).collect(),
            Err(e) => {
                tracing::warn!(component = self.name.as_str(), error = %e, "Could not read the group's assignment.");
                return;
            }
        };
        let Reader { parts, ready, .. } = self;
        parts.retain_mut(|p| {
            let kept = assigned.contains(&p.id);
            if !kept {
                ready.extend(p.chunk.take());
                p.lag.set(0.0);
            }
            kept
        });
        for id in assigned {
            if !self.parts.iter().any(|p| p.id == id) {
                self.parts.push(Part::new(&self.source, id, None, None));
            }
        }
        metrics::gauge!(crate::metrics::KAFKA_ASSIGNED_PARTITIONS, "source" => self.source.clone())
            .set(self.parts.len() as f64);
    }

    fn take(&mut self, m: &BorrowedMessage<'_>, consumer: &BaseConsumer<GroupContext>) {
        if self.repartitioned {
            return self.take_repartitioned(m, consumer);
        }
        let i = match self.parts.iter().position(|p| p.id == m.partition()) {
            Some(i) => i,
            // A record of a partition assigned in this very poll.
            None if self.grouped => {
                self.parts.push(Part::new(&self.source, m.partition(), None, None));
                self.parts.len() - 1
            }
            None => return,
        };
        let offset = m.offset().max(0) as u64;
        match (m.payload(), m.key(), self.forget_on_tombstone) {
            (None, Some(id), Some(entity)) => self.forget(i, offset, Forget { entity, id: id.to_vec() }, consumer),
            (value, ..) => self.append(i, offset, value.unwrap_or_default(), consumer),
        }
    }

    /// A tombstone at `offset` of part `i` forgets an entity: the pending
    /// chunk goes out first, then a chunk of no lines that carries the
    /// forget (applied after every event before it).
    fn forget(&mut self, i: usize, offset: u64, forget: Forget, consumer: &BaseConsumer<GroupContext>) {
        let part = &mut self.parts[i];
        if part.finished {
            return;
        }
        self.ready.extend(part.chunk.take());
        self.ready.push_back(Chunk {
            forget: Some(forget),
            end_offset: offset + 1,
            end_position: offset + 1,
            ..part.empty_chunk(offset)
        });
        part.next = Some(offset + 1);
        if part.end.is_some_and(|end| offset + 1 >= end) {
            self.finish(i, consumer);
        }
    }

    /// A repartition record: a row of its upstream's or a forget, numbered
    /// (dropped when seen before), or the upstream's end, watermark or idle marker.
    fn take_repartitioned(&mut self, m: &BorrowedMessage<'_>, consumer: &BaseConsumer<GroupContext>) {
        if let Some((u, seq, forget)) = m.key().and_then(|k| super::sink::parse_forget_marker(k, m.payload())) {
            return self.take_forget_marker(u, seq, forget, m.offset(), consumer);
        }
        let Some((u, seq)) = m.key().and_then(super::sink::parse_repartition_key) else {
            let component = self.name.as_str();
            return tracing::warn!(component, offset = m.offset(), "A repartition record without its key; dropped.");
        };
        let Some(i) = self.parts.iter().position(|p| p.id == u as i32) else {
            let component = self.name.as_str();
            return tracing::warn!(component, upstream = u, "A repartition record of an unknown task; dropped.");
        };
        let kafka_offset = m.offset().max(0) as u64;
        self.resume.consumed = self.resume.consumed.max(kafka_offset + 1);
        if seq == super::sink::END_OF_UPSTREAM {
            if !self.parts[i].finished {
                self.parts[i].spans.push_back(Span { end: u64::MAX, kafka_offset });
                self.finish(i, consumer);
            }
        } else if seq == super::sink::IDLE_UPSTREAM {
            self.upstream_idle(i);
        } else if seq == super::sink::WATERMARK_OF_UPSTREAM {
            match std::str::from_utf8(m.payload().unwrap_or_default()).ok().and_then(|v| v.parse().ok()) {
                Some(watermark) => self.upstream_watermark(i, watermark),
                None => tracing::warn!(
                    component = self.name.as_str(),
                    upstream = u,
                    offset = m.offset(),
                    "A watermark marker without a watermark; dropped."
                ),
            }
        } else if self.parts[i].next.is_none_or(|next| seq >= next) {
            self.append(i, seq, m.payload().unwrap_or_default(), consumer);
            let part = &mut self.parts[i];
            // A record that began a chunk begins a span; others extend the last.
            let began = part.chunk.as_ref().is_some_and(|c| c.first_offset == seq);
            match part.spans.back_mut() {
                Some(span) if !began => span.end = seq + 1,
                _ => part.spans.push_back(Span { end: seq + 1, kafka_offset }),
            }
        }
        // Else written again by a task that ran again from a checkpoint: dropped.
    }

    /// A forget marker, number `seq` of upstream `u`: the entity is forgotten
    /// after every record read before it (dropped when seen before).
    fn take_forget_marker(
        &mut self,
        u: u32,
        seq: u64,
        forget: Forget,
        offset: i64,
        consumer: &BaseConsumer<GroupContext>,
    ) {
        let Some(i) = self.parts.iter().position(|p| p.id == u as i32) else {
            let component = self.name.as_str();
            return tracing::warn!(component, upstream = u, "A forget marker of an unknown task; dropped.");
        };
        let kafka_offset = offset.max(0) as u64;
        self.resume.consumed = self.resume.consumed.max(kafka_offset + 1);
        if self.parts[i].finished || self.parts[i].next.is_some_and(|next| seq < next) {
            return;
        }
        // After every row read before it, of any upstream: its place in the
        // partition, which a restored reader reads again in the same order.
        self.flush_all();
        self.forget(i, seq, forget, consumer);
        self.parts[i].spans.push_back(Span { end: seq + 1, kafka_offset });
    }

    /// Upstream `i` says its watermark is `watermark`: its pending chunk
    /// carries it (after its records), or an empty chunk when none is
    /// pending. A marker read again after a restore changes nothing (the
    /// engine's watermarks never go back).
    fn upstream_watermark(&mut self, i: usize, watermark: i64) {
        let part = &mut self.parts[i];
        if part.finished {
            return;
        }
        let chunk = match &mut part.chunk {
            Some(c) => c,
            None => {
                self.ready.push_back(part.empty_chunk(part.next.unwrap_or(0)));
                self.ready.back_mut().expect("just pushed")
            }
        };
        chunk.watermark = Some(chunk.watermark.map_or(watermark, |w| w.max(watermark)));
    }

    /// Upstream `i` says it is idle: its pending chunk goes out, then an
    /// empty one saying so (records after the marker make it active again).
    fn upstream_idle(&mut self, i: usize) {
        let part = &mut self.parts[i];
        if part.finished {
            return;
        }
        self.ready.extend(part.chunk.take());
        self.ready.push_back(Chunk { idle: true, ..part.empty_chunk(part.next.unwrap_or(0)) });
    }

    /// Appends one record's value (at `offset` of part `i`) to its pending chunk.
    fn append(&mut self, i: usize, offset: u64, value: &[u8], consumer: &BaseConsumer<GroupContext>) {
        let Reader { parts, ready, block, max_line, .. } = self;
        let part = &mut parts[i];
        if part.finished {
            return;
        }
        // A gap in offsets, a full chunk, or an oversized value (which must begin
        // a chunk, see `Chunk::oversized`) sends the pending chunk out first.
        let cut = |c: &Chunk| {
            c.end_offset != offset
                || c.data.len() + value.len() >= *block
                || (value.len() > *max_line && !c.data.is_empty())
        };
        if let Some(c) = part.chunk.take_if(|c| cut(c)) {
            ready.push_back(c);
        }
        let chunk = part.chunk.get_or_insert_with(|| {
            part.since = Instant::now();
            Chunk { partition: part.id as u32, first_offset: offset, end_offset: offset, ..Chunk::default() }
        });
        if value.len() > *max_line {
            let prefix = value[..value.len().min(OVERSIZED_PREFIX)].to_vec();
            chunk.oversized.push(Oversized { offset, len: value.len() as u64, prefix });
        } else {
            let at = chunk.data.len();
            chunk.data.extend_from_slice(value);
            for b in &mut chunk.data[at..] {
                if matches!(*b, b'\n' | b'\r') {
                    *b = b' ';
                }
            }
            chunk.data.push(b'\n');
        }
        chunk.end_offset = offset + 1;
        chunk.end_position = offset + 1;
        part.next = Some(offset + 1);
        if part.end.is_some_and(|end| offset + 1 >= end) {
            self.finish(i, consumer);
        }
    }

    /// Ends partition `i`: its pending chunk (or an empty one) goes out with
    /// `end_of_partition`, and the consumer stops fetching it.
    fn finish(&mut self, i: usize, consumer: &BaseConsumer<GroupContext>) {
        let part = &mut self.parts[i];
        part.finished = true;
        let next = part.next.or(part.end).unwrap_or(0);
        let mut chunk = match part.chunk.take() {
            Some(c) => c,
            None => part.empty_chunk(next),
        };
        chunk.end_of_partition = true;
        self.ready.push_back(chunk);
        part.lag.set(0.0);
        if !self.repartitioned {
            let mut list = TopicPartitionList::new();
            list.add_partition(&self.topic, part.id);
            let _ = consumer.pause(&list);
        }
    }

    /// A checkpoint holding `positions` (each upstream's next number) was
    /// written: sends the offset the partition can be read again from.
    fn resume_after(&mut self, positions: &[(u32, u64)]) {
        let mut from = self.resume.consumed;
        for part in &mut self.parts {
            // An upstream absent from the checkpoint has nothing in it yet.
            let next = positions.iter().find(|(p, _)| *p == part.id as u32).map_or(0, |&(_, next)| next);
            while part.spans.front().is_some_and(|s| s.end <= next) {
                part.spans.pop_front();
            }
            if let Some(span) = part.spans.front() {
                from = from.min(span.kafka_offset);
            }
        }
        if from > self.resume.sent {
            self.ready.push_back(Chunk {
                partition: RESUME_PARTITION,
                first_offset: self.resume.sent,
                end_offset: from,
                end_position: from,
                end_of_partition: true,
                ..Chunk::default()
            });
            self.resume.sent = from;
        }
    }

    fn flush_all(&mut self) {
        for p in &mut self.parts {
            if let Some(c) = p.chunk.take() {
                self.ready.push_back(c);
            }
        }
    }

    fn measure_lag(&self, consumer: &BaseConsumer<GroupContext>) {
        // Before its first record a partition stands where the consumer's fetch does.
        let positions = consumer.position().ok();
        let fetching = |id: i32| -> Option<u64> {
            let at = positions.as_ref()?.find_partition(&self.topic, id)?.offset().to_raw()?;
            (at >= 0).then_some(at as u64)
        };
        for p in self.parts.iter().filter(|p| !p.finished) {
            let Some(next) = p.next.or_else(|| fetching(p.id)) else { continue };
            if let Ok((_, high)) = consumer.fetch_watermarks(&self.topic, p.id, Duration::from_secs(1)) {
                p.lag.set((high - next as i64).max(0) as f64);
            }
        }
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        // Leave the group explicitly (see shared/peers/kafka: a consumer dropped
        // right after a commit could hang against the test broker).
        if self.reader.grouped {
            // The group moves this process's partitions at once, not after a session timeout.
            self.consumer.unsubscribe();
        } else {
            let _ = self.consumer.unassign();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(upstreams: i32) -> Reader {
        Reader {
            name: "test".into(),
            source: "test".into(),
            topic: "t".into(),
            grouped: false,
            committing: false,
            repartitioned: true,
            forget_on_tombstone: None,
            resume: Resume::default(),
            parts: (0..upstreams).map(|u| Part::new("test", u, None, None)).collect(),
            ready: VecDeque::new(),
            block: 1 << 20,
            max_line: 1 << 20,
        }
    }

    fn sent(r: &mut Reader) -> Option<(u64, u64)> {
        let c = r.ready.pop_back()?;
        assert_eq!((c.partition, c.end_of_partition, c.data.len()), (RESUME_PARTITION, true, 0));
        Some((c.first_offset, c.end_offset))
    }

    #[test]
    fn a_tombstone_forgets_between_the_records_around_it() {
        let mut r = Reader { repartitioned: false, ..reader(1) };
        // Created, never connected: `append` only hands it to `finish`, which a partition without an end never calls.
        let consumer: BaseConsumer<GroupContext> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:9")
            .create_with_context(GroupContext::new("test", "test", "partitions"))
            .unwrap();
        r.append(0, 0, b"{\"a\":1}", &consumer);
        r.append(0, 1, b"{\"a\":2}", &consumer);
        r.forget(0, 2, Forget { entity: freshet_engine::features::Entity::User, id: b"u1".to_vec() }, &consumer);
        r.append(0, 3, b"{\"a\":3}", &consumer);
        r.flush_all();
        let chunks: Vec<_> = r
            .ready
            .iter()
            .map(|c| (c.first_offset, c.end_position, c.data.as_slice(), c.forget.as_ref().map(|f| f.id.as_slice())))
            .collect();
        let forgets: &[u8] = b"u1";
        assert_eq!(
            chunks,
            [
                (0, 2, &b"{\"a\":1}\n{\"a\":2}\n"[..], None),
                (2, 3, &b""[..], Some(forgets)),
                (3, 4, &b"{\"a\":3}\n"[..], None)
            ]
        );
    }

    #[test]
    fn a_forget_marker_forgets_after_every_row_read_before_it_and_once() {
        let mut r = reader(2);
        let consumer: BaseConsumer<GroupContext> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:9")
            .create_with_context(GroupContext::new("test", "test", "partitions"))
            .unwrap();
        let forget = Forget { entity: freshet_engine::features::Entity::Item, id: b"i9".to_vec() };
        r.append(0, 0, b"{\"a\":1}", &consumer);
        r.append(0, 1, b"{\"a\":2}", &consumer);
        r.append(1, 0, b"{\"b\":1}", &consumer);
        r.take_forget_marker(0, 2, forget.clone(), 40, &consumer);
        let chunks: Vec<_> =
            r.ready.drain(..).map(|c| (c.partition, c.first_offset, c.end_position, c.forget)).collect();
        let after_every_row = [(0, 0, 2, None), (1, 0, 1, None), (0, 2, 3, Some(forget.clone()))];
        assert_eq!(chunks, after_every_row, "upstream 1's row read before the marker goes first");
        assert_eq!(r.parts[0].spans.back(), Some(&Span { end: 3, kafka_offset: 40 }));
        assert_eq!(r.resume.consumed, 41);
        // Read again after a restore, or written again by an upstream that ran again: dropped.
        r.take_forget_marker(0, 2, forget.clone(), 41, &consumer);
        r.take_forget_marker(0, 1, forget.clone(), 42, &consumer);
        r.take_forget_marker(7, 0, forget, 43, &consumer);
        assert!(r.ready.is_empty());
        assert_eq!(r.parts[0].next, Some(3));
    }

    #[test]
    fn a_repartition_reader_resumes_at_the_first_record_its_checkpoint_lacks() {
        let mut r = reader(2);
        // Upstream 0: rows 0..10 at offsets 0..10 (one chunk), rows 10..20 at 20.. (another);
        // upstream 1: rows 0..10 at offsets 10..20. Read up to offset 30.
        r.parts[0].spans.extend([Span { end: 10, kafka_offset: 0 }, Span { end: 20, kafka_offset: 20 }]);
        r.parts[1].spans.push_back(Span { end: 10, kafka_offset: 10 });
        r.resume.consumed = 30;
        // A checkpoint with upstream 0's first chunk only: upstream 1 is not in it.
        r.resume_after(&[(0, 10)]);
        assert_eq!(sent(&mut r), Some((0, 10)));
        // Both of upstream 1's and the first of upstream 0's: from upstream 0's second chunk.
        r.resume_after(&[(0, 10), (1, 10)]);
        assert_eq!(sent(&mut r), Some((10, 20)));
        // Everything read is in: from the offset after the last record read.
        r.resume_after(&[(0, 20), (1, 10)]);
        assert_eq!(sent(&mut r), Some((20, 30)));
        // Nothing new: nothing sent.
        r.resume_after(&[(0, 20), (1, 10)]);
        assert_eq!(sent(&mut r), None);
    }

    #[test]
    fn an_upstreams_watermark_rides_on_its_pending_chunk_or_an_empty_one() {
        let mut r = reader(3);
        r.parts[0].next = Some(7);
        r.upstream_watermark(0, 100);
        let c = r.ready.pop_front().expect("an empty chunk carries it");
        assert_eq!((c.partition, c.first_offset, c.end_offset, c.end_position), (0, 7, 7, 7));
        assert_eq!((c.data.len(), c.end_of_partition, c.watermark), (0, false, Some(100)));
        // After the records pending: on their chunk, the highest told.
        r.parts[1].chunk = Some(Chunk { partition: 1, end_offset: 2, data: b"a\nb\n".to_vec(), ..Chunk::default() });
        r.upstream_watermark(1, 50);
        r.upstream_watermark(1, 40);
        assert!(r.ready.is_empty());
        assert_eq!(r.parts[1].chunk.as_ref().and_then(|c| c.watermark), Some(50));
        // An upstream that ended has nothing more to say.
        r.parts[2].finished = true;
        r.upstream_watermark(2, 60);
        r.upstream_idle(2);
        assert!(r.ready.is_empty() && r.parts[2].chunk.is_none());
        // Idle: after the records pending, in a chunk of its own.
        r.upstream_idle(1);
        let records = r.ready.pop_front().expect("the pending records first");
        assert_eq!((records.data.len(), records.idle, records.watermark), (4, false, Some(50)));
        let idle = r.ready.pop_front().expect("then the idle status");
        assert_eq!((idle.partition, idle.first_offset, idle.data.len(), idle.idle), (1, 0, 0, true));
        assert!(r.parts[1].chunk.is_none());
    }

    #[test]
    fn an_upstreams_end_marker_is_always_read_again() {
        let mut r = reader(1);
        r.parts[0].spans.extend([Span { end: 5, kafka_offset: 0 }, Span { end: u64::MAX, kafka_offset: 5 }]);
        r.resume.consumed = 6;
        r.resume_after(&[(0, 5)]);
        assert_eq!(sent(&mut r), Some((0, 5)));
        r.resume_after(&[(0, 5)]);
        assert_eq!(sent(&mut r), None, "the end marker at 5 is read again after a restore");
    }
}
