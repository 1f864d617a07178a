//! Who runs which task of a group, where its HTTP API answers, whether it
//! is alive, and which task halves have read their input to the end: the
//! group's members topic, so that a read sent to any process is forwarded
//! to the process that owns the key's partition (Kafka Streams' interactive
//! queries), and so that a group can tell a task nobody runs (its owner's
//! claim has gone stale) and a bounded job's end (every half done).
//!
//! Kafka Streams carries each member's address in the rebalance protocol's
//! user data; librdkafka's assignors do not expose it, so here each process
//! writes its latest assignment to a compacted one-partition topic, keyed by
//! its advertised address, and every process follows that topic to its end.
//! A partition's owner is the member whose latest claim, among those that
//! list it, is the newest in the topic's order (never by the claims' own
//! times: another host's clock may be ahead): after a rebalance the new
//! owner's claim replaces the old one's. A process that leaves writes a tombstone; one that dies
//! keeps its claim until the partitions' new owners write theirs. A live
//! member writes its claim again every few seconds ([`Members::heartbeat`]),
//! so a claim not renewed for a while is a dead member's. "A while" is
//! measured on this process's monotonic clock, from when it read the
//! claim's last renewal, never by comparing another host's wall clock with
//! this one's: a skewed clock cannot make a live member look dead. (A
//! process that has just joined reads every claim at once, so it waits the
//! whole window before it takes any claim for a dead one.)
//!
//! Beside the claims, the topic holds each task half's status, keyed
//! `task/{partition}/{half}`: not done (its task was assigned), or done (a
//! bounded job's half read its input to the end and shipped its last
//! checkpoint). A status outlives the member that wrote it; the next
//! assignment of that task replaces it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// Wall-clock time of the claim (ms since the epoch): tells the
    /// member's own claims apart (a new one from a heartbeat), never
    /// compared with another member's.
    at_ms: i64,
    /// Wall-clock time the member last said it is alive (its claim written again).
    #[serde(default)]
    alive_ms: i64,
}

/// Claims by advertised address.
type Claims = HashMap<String, Claim>;

/// Where each member's claim was made, in the topic's order: the offset of
/// the record that first carried it (its heartbeats keep it), or
/// [`WRITTEN`] for this process's own claim until it is read back.
type Claimed = HashMap<String, i64>;

/// The place of a claim this process has written but not read back yet:
/// after everything read so far.
const WRITTEN: i64 = i64::MAX;

/// A task half's status (see the module's doc).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Status {
    done: bool,
    /// When it was written, by the writer's clock: for people reading the
    /// topic; the topic's order decides which status stands.
    at_ms: i64,
}

/// Where the follower keeps what it read.
#[derive(Debug, Default)]
struct Book {
    claims: Claims,
    /// Where each claim was made in the topic ([`Claimed`]).
    claimed: Claimed,
    /// When this process last saw each claim renewed (written anew, or
    /// with a later `alive_ms`), on its own monotonic clock.
    renewed: HashMap<String, Instant>,
    /// Task halves' statuses by key (`task/{partition}/{half}`).
    statuses: HashMap<String, Status>,
}

/// The prefix of a task half's status key.
const TASK_PREFIX: &str = "task/";

/// The prefix of the name a process that serves no HTTP API claims its
/// tasks under: it has no address another member could forward a read to.
pub const UNSERVED_PREFIX: &str = "unserved-";

fn status_key(partition: u32, half: &str) -> String {
    format!("{TASK_PREFIX}{partition}/{half}")
}

/// This process's view of the group's members, and its own entry.
pub struct Members {
    topic: String,
    /// This process's advertised address (its key in the topic).
    address: String,
    producer: BaseProducer<Logged>,
    book: Arc<Mutex<Book>>,
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
        let book = Arc::new(Mutex::new(Book::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let follower = {
            let (book, stop) = (book.clone(), stop.clone());
            std::thread::Builder::new()
                .name("group-members".into())
                .spawn(move || follow(&consumer, &book, &stop))
                .map_err(|e| err(format!("starting the follower: {e}")))?
        };
        Ok(Self {
            topic: topic.to_owned(),
            address: address.to_owned(),
            producer,
            book,
            stop,
            follower: Some(follower),
        })
    }

    /// Tells the group that this process now runs `partitions`' tasks.
    pub fn announce(&self, partitions: &[u32]) -> Result<()> {
        let now = wall_ms();
        self.claim(Claim { partitions: partitions.to_vec(), at_ms: now, alive_ms: now })
    }

    /// Tells the group that this process is alive: its latest claim again,
    /// the claim's own time unchanged (a heartbeat does not win a partition
    /// back from a newer claim).
    pub fn heartbeat(&self) -> Result<()> {
        let Some(mut claim) = lock(&self.book).claims.get(&self.address).cloned() else { return Ok(()) };
        // Later than the last one even if this host's clock stepped back:
        // other members see a renewal only in a later `alive_ms`.
        claim.alive_ms = wall_ms().max(claim.alive_ms + 1);
        self.claim(claim)
    }

    fn claim(&self, claim: Claim) -> Result<()> {
        let value = serde_json::to_vec(&claim).unwrap_or_default();
        self.write(&self.address, Some(&value))?;
        // Its own claim counts at once, before the follower reads it back.
        lock(&self.book).take_claim(&self.address, claim, WRITTEN, Instant::now());
        Ok(())
    }

    /// Says that half `half` of `partition`'s task is not done (`done` false) or
    /// read its input to the end and shipped its last checkpoint (`done`).
    pub fn task_status(&self, partition: u32, half: &str, done: bool) -> Result<()> {
        let key = status_key(partition, half);
        let status = Status { done, at_ms: wall_ms() };
        // Taken into the book when read back, in the topic's order with the
        // others' (this process reads only other tasks' statuses).
        self.write(&key, Some(&serde_json::to_vec(&status).unwrap_or_default()))
    }

    /// Whether half `half` of `partition`'s task is done, as last said.
    pub fn is_done(&self, partition: u32, half: &str) -> bool {
        lock(&self.book).is_done(partition, half)
    }

    /// Whether a member that claims `partition` was seen saying it is alive
    /// within the last `within` (on this process's clock).
    pub fn claimed_alive(&self, partition: u32, within: Duration) -> bool {
        let now = Instant::now();
        lock(&self.book).claimed_alive(partition, now.checked_sub(within).unwrap_or(now))
    }

    /// The address of the member running `partition`'s task, if any has said so.
    pub fn owner(&self, partition: u32) -> Option<String> {
        let book = lock(&self.book);
        owner_of(&book.claims, &book.claimed, partition)
    }

    /// This process's advertised address.
    pub fn address(&self) -> &str {
        &self.address
    }

    fn write(&self, key: &str, value: Option<&[u8]>) -> Result<()> {
        let err = |message: String| IoError::Kafka { component: format!("members {}", self.topic), message };
        let mut record = BaseRecord::<str, [u8]>::to(&self.topic).partition(0).key(key);
        if let Some(v) = value {
            record = record.payload(v);
        }
        self.producer.send(record).map_err(|(e, _)| err(format!("writing {key}: {e}")))?;
        self.producer.flush(Duration::from_secs(10)).map_err(|e| err(format!("flushing {key}: {e}")))
    }
}

impl Drop for Members {
    fn drop(&mut self) {
        // Leaving: no partition is this process's any more.
        if let Err(e) = self.write(&self.address, None) {
            tracing::debug!(error = %e, "Could not withdraw this member's claim.");
        }
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.follower.take() {
            let _ = t.join();
        }
    }
}

fn follow(consumer: &BaseConsumer<Logged>, book: &Mutex<Book>, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        let m = match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "Members topic read error; retrying.");
                continue;
            }
            None => continue,
        };
        let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else { continue };
        lock(book).read(key, m.payload(), m.offset(), Instant::now());
    }
}

impl Book {
    /// Takes in one record of the topic: a member's claim (or its
    /// tombstone), or a task half's status. A claim of this process read
    /// back may be older than one it wrote since: the newer (by its own
    /// clock) stays. Statuses are taken in the topic's order. `offset` is
    /// the record's place in the topic, `now` when it was read.
    fn read(&mut self, key: &str, value: Option<&[u8]>, offset: i64, now: Instant) {
        if key.starts_with(TASK_PREFIX) {
            match value.map(serde_json::from_slice::<Status>) {
                // The topic's order, not the writers' clocks: another host's
                // clock may be behind this one's.
                Some(Ok(status)) => {
                    self.statuses.insert(key.to_owned(), status);
                }
                None => {
                    self.statuses.remove(key);
                }
                Some(Err(e)) => tracing::debug!(key, error = %e, "A task status that is not one; ignored."),
            }
            return;
        }
        match value.map(serde_json::from_slice::<Claim>) {
            None => {
                self.claims.remove(key);
                self.claimed.remove(key);
                self.renewed.remove(key);
            }
            Some(Ok(claim)) => self.take_claim(key, claim, offset, now),
            Some(Err(e)) => tracing::debug!(member = key, error = %e, "A members record that is not a claim; ignored."),
        }
    }

    fn is_done(&self, partition: u32, half: &str) -> bool {
        self.statuses.get(&status_key(partition, half)).is_some_and(|s| s.done)
    }

    /// Keeps `claim` of `member`, read at `offset` (or [`WRITTEN`]), unless
    /// the one held is newer by the member's own clock; a claim newer than
    /// the one held (or the first) is a renewal seen at `now`. A claim with
    /// a new `at_ms` is made where it is read; a heartbeat (the same
    /// `at_ms`) keeps its claim's place, unless that was this process's
    /// own claim not yet read back.
    fn take_claim(&mut self, member: &str, claim: Claim, offset: i64, now: Instant) {
        let held = self.claims.get(member).map(|c| (c.at_ms, c.alive_ms));
        if held.is_none_or(|held| held <= (claim.at_ms, claim.alive_ms)) {
            if held != Some((claim.at_ms, claim.alive_ms)) {
                self.renewed.insert(member.to_owned(), now);
            }
            let place = self.claimed.entry(member.to_owned()).or_insert(offset);
            if held.is_none_or(|(at_ms, _)| at_ms != claim.at_ms) || *place == WRITTEN {
                *place = offset;
            }
            self.claims.insert(member.to_owned(), claim);
        } else if held.is_some_and(|(at_ms, _)| at_ms == claim.at_ms) && self.claimed.get(member) == Some(&WRITTEN) {
            // This process's claim read back after a heartbeat of it was written: its place is now known.
            self.claimed.insert(member.to_owned(), offset);
        }
    }

    /// Whether a member claiming `partition` was seen renewing its claim at or after `since`.
    fn claimed_alive(&self, partition: u32, since: Instant) -> bool {
        self.claims.iter().any(|(member, c)| {
            c.partitions.contains(&partition) && self.renewed.get(member).is_some_and(|&at| at >= since)
        })
    }
}

/// The member whose latest claim lists `partition`, the claim made last in the topic winning.
fn owner_of(claims: &Claims, claimed: &Claimed, partition: u32) -> Option<String> {
    let place = |member: &str| claimed.get(member).copied().unwrap_or(i64::MIN);
    claims
        .iter()
        .filter(|(_, c)| c.partitions.contains(&partition))
        .max_by(|a, b| place(a.0).cmp(&place(b.0)).then_with(|| a.0.cmp(b.0)))
        .map(|(member, _)| member.clone())
}

fn lock(book: &Mutex<Book>) -> std::sync::MutexGuard<'_, Book> {
    book.lock().unwrap_or_else(|e| e.into_inner())
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// a's clock runs ten seconds ahead of b's: the topic's order, not the
    /// claims' times, says who claimed a partition last.
    #[test]
    fn the_claim_made_last_in_the_topic_names_a_partitions_owner() {
        let claim = |partitions: &[u32], at_ms: i64, alive_ms: i64| {
            serde_json::to_vec(&Claim { partitions: partitions.to_vec(), at_ms, alive_ms }).unwrap()
        };
        let now = Instant::now();
        let mut book = Book::default();
        let owner = |book: &Book, partition| owner_of(&book.claims, &book.claimed, partition);
        book.read("a:1", Some(&claim(&[0, 1, 2, 3], 10_100, 10_100)), 0, now);
        assert_eq!(owner(&book, 2).as_deref(), Some("a:1"));
        // b joined: the rebalance gave it 2 and 3, at an earlier time by b's clock; a has not said so yet.
        book.read("b:1", Some(&claim(&[2, 3], 200, 200)), 1, now);
        assert_eq!(owner(&book, 2).as_deref(), Some("b:1"), "an earlier clock lost a later claim");
        assert_eq!(owner(&book, 0).as_deref(), Some("a:1"));
        // a's heartbeat, later in the topic, does not win 2 back.
        book.read("a:1", Some(&claim(&[0, 1, 2, 3], 10_100, 15_000)), 2, now);
        assert_eq!(owner(&book, 2).as_deref(), Some("b:1"), "a heartbeat won a partition back");
        book.read("a:1", Some(&claim(&[0, 1], 10_300, 15_100)), 3, now);
        assert_eq!(owner(&book, 3).as_deref(), Some("b:1"));
        book.read("b:1", None, 4, now);
        assert_eq!(owner(&book, 3), None, "b left, and nobody claimed 3 yet");

        // This process's own claim counts at once, as the newest, until it is
        // read back and takes its place; a heartbeat written meanwhile keeps it pending.
        book.read("c:1", Some(&claim(&[5], 300, 300)), 5, now);
        let mine = Claim { partitions: vec![5], at_ms: 250, alive_ms: 250 };
        book.take_claim("me:1", mine.clone(), WRITTEN, now);
        assert_eq!(owner(&book, 5).as_deref(), Some("me:1"));
        book.take_claim("me:1", Claim { alive_ms: 260, ..mine.clone() }, WRITTEN, now);
        book.read("c:1", Some(&claim(&[5], 400, 400)), 7, now);
        assert_eq!(owner(&book, 5).as_deref(), Some("me:1"), "not read back yet: the newest");
        book.read("me:1", Some(&serde_json::to_vec(&mine).unwrap()), 6, now);
        assert_eq!(owner(&book, 5).as_deref(), Some("c:1"), "read back before c's later claim");
        assert_eq!(book.claims["me:1"].alive_ms, 260, "the older record read back replaced the newer claim");
    }

    #[test]
    fn claims_say_who_is_alive_by_when_they_were_seen_renewed_and_statuses_which_halves_are_done() {
        let json = |v: serde_json::Value| v.to_string().into_bytes();
        let claim =
            |alive_ms: i64| json(serde_json::json!({ "partitions": [0, 1], "at_ms": 100, "alive_ms": alive_ms }));
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut book = Book::default();
        book.read("a:1", Some(&claim(100)), 100, at(0));
        let b = json(serde_json::json!({ "partitions": [2, 3], "at_ms": 100, "alive_ms": 100 }));
        book.read("b:1", Some(&b), 101, at(0));
        // Seen at 40 s: a renews its claim; b says nothing more.
        book.read("a:1", Some(&claim(5000)), 102, at(40));
        assert!(book.claimed_alive(1, at(30)) && !book.claimed_alive(2, at(30)) && book.claimed_alive(2, at(0)));
        assert_eq!(
            owner_of(&book.claims, &book.claimed, 2).as_deref(),
            Some("b:1"),
            "a stale claim still names its owner"
        );
        // A's clock is far behind this host's, or far ahead: how its
        // `alive_ms` compares with this host's time does not matter, only
        // that it grew.
        book.read("a:1", Some(&claim(5001)), 103, at(100));
        assert!(book.claimed_alive(0, at(95)));
        // An older heartbeat read back, or the same one again, is no renewal.
        book.read("a:1", Some(&claim(200)), 104, at(200));
        book.read("a:1", Some(&claim(5001)), 105, at(200));
        assert!(!book.claimed_alive(0, at(150)));
        // Statuses are kept apart from claims, the last in the topic winning.
        let status = |done: bool, at_ms: i64| json(serde_json::json!({ "done": done, "at_ms": at_ms }));
        book.read(&status_key(2, "input"), Some(&status(true, 300)), 106, at(300));
        book.read(&status_key(2, "repartitioned"), Some(&status(false, 300)), 107, at(300));
        assert!(book.is_done(2, "input") && !book.is_done(2, "repartitioned") && !book.is_done(3, "input"));
        // The task moved to a member whose clock is behind: its "done" comes
        // later in the topic, with an earlier time. It stands.
        book.read(&status_key(2, "repartitioned"), Some(&status(true, 250)), 108, at(300));
        assert!(book.is_done(2, "repartitioned"), "a later status with an earlier clock was not taken");
        // Started again: not done.
        book.read(&status_key(2, "input"), Some(&status(false, 500)), 109, at(300));
        assert!(!book.is_done(2, "input"));
        assert_eq!(book.claims.len(), 2, "statuses are not claims");
        book.read("b:1", None, 110, at(300));
        assert!(!book.claimed_alive(2, at(0)), "b left");
    }
}
