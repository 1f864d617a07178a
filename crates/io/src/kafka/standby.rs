//! Standby copies of a group's tasks (Kafka Streams' standby replicas): a
//! process reads every partition of a changelog topic as it is written and
//! keeps each task's newest complete checkpoint, so a task that moves to it
//! (its owner left or died) restores from memory instead of reading its
//! changelog partition through the broker (seconds for a big state on the
//! test broker).
//!
//! A copy only answers once it has read its partition up to the end offset
//! the restore asks for: then its newest checkpoint is the one
//! [`Changelog::fetch`] would find there (or one completed later, its
//! pieces begun before the tail that `fetch` reads: just as consistent,
//! and newer). Reading starts at each partition's tail (the records a
//! restore would read first), all partitions at once, so a process that
//! joins has copies of its first tasks too; a copy knows a checkpoint once
//! one has been read whole since; until then, and when it lags behind, the
//! restore reads the changelog as without a standby.
//! Copies are kept as the checkpoint's bytes (decoding is the smaller part
//! of a restore), also of the tasks this process runs itself: which those
//! are changes with every rebalance, and the copy is ready when it moves.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::group::{Assembler, Changelog, TAIL_RECORDS};
use crate::error::{IoError, Result};

/// The newest checkpoint of every task of one changelog topic, kept up to date.
pub struct Standby {
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

struct Shared {
    copies: Mutex<Vec<TaskCopy>>,
    /// Notified whenever a copy has read further.
    read: Condvar,
}

/// One task's copy.
#[derive(Default)]
struct TaskCopy {
    /// The next offset to read.
    next: i64,
    newest: Option<Arc<Vec<u8>>>,
    assembler: Assembler,
}

impl Standby {
    /// Starts reading every partition of `changelog` from its tail, on a thread of its own.
    pub fn start(changelog: &Changelog) -> Result<Standby> {
        let error = |message: String| IoError::Kafka { component: format!("standby {}", changelog.topic()), message };
        let consumer = changelog.consumer()?;
        let mut list = TopicPartitionList::new();
        let mut copies = Vec::with_capacity(changelog.partitions());
        for partition in 0..changelog.partitions() as u32 {
            let (low, high) = consumer
                .fetch_watermarks(changelog.topic(), partition as i32, Duration::from_secs(30))
                .map_err(|e| error(format!("reading the end of partition {partition}: {e}")))?;
            let from = high.saturating_sub(TAIL_RECORDS).max(low);
            list.add_partition_offset(changelog.topic(), partition as i32, Offset::Offset(from))
                .map_err(|e| error(format!("reading partition {partition}: {e}")))?;
            copies.push(TaskCopy { next: from, ..TaskCopy::default() });
        }
        consumer.assign(&list).map_err(|e| error(format!("assigning its partitions: {e}")))?;
        let shared = Arc::new(Shared { copies: Mutex::new(copies), read: Condvar::new() });
        let stop = Arc::new(AtomicBool::new(false));
        let (reading, stopped, topic) = (shared.clone(), stop.clone(), changelog.topic().to_owned());
        let reader = std::thread::Builder::new()
            .name("standby".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    match consumer.poll(Duration::from_millis(100)) {
                        Some(Ok(m)) => reading.take(m.partition() as usize, m.offset(), m.payload()),
                        Some(Err(e)) => {
                            tracing::warn!(topic = topic.as_str(), error = %e, "Standby read error; retrying.");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        None => {}
                    }
                }
            })
            .map_err(|e| error(format!("starting its reader: {e}")))?;
        Ok(Standby { shared, stop, reader: Some(reader) })
    }

    /// Task `partition`'s newest complete checkpoint once its copy has read
    /// up to `end` (waiting at most `wait` for it); `None` when it has none
    /// or lags behind (the changelog must be read then).
    pub fn newest(&self, partition: u32, end: i64, wait: Duration) -> Option<Arc<Vec<u8>>> {
        let deadline = Instant::now() + wait;
        let mut copies = self.shared.copies.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let copy = copies.get(partition as usize)?;
            if copy.next >= end {
                return copy.newest.clone();
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            copies = self.shared.read.wait_timeout(copies, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

impl Shared {
    /// Takes the record at `offset` of `partition`.
    fn take(&self, partition: usize, offset: i64, value: Option<&[u8]>) {
        let mut copies = self.copies.lock().unwrap_or_else(|e| e.into_inner());
        let Some(copy) = copies.get_mut(partition) else { return };
        if let Some(whole) = value.and_then(|v| copy.assembler.take(v)) {
            copy.newest = Some(Arc::new(whole));
        }
        copy.next = copy.next.max(offset + 1);
        drop(copies);
        self.read.notify_all();
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::group::piece;

    /// A standby over `partitions` partitions, fed by hand (no broker).
    fn fed(partitions: usize) -> Standby {
        let copies = (0..partitions).map(|_| TaskCopy::default()).collect();
        let shared = Arc::new(Shared { copies: Mutex::new(copies), read: Condvar::new() });
        Standby { shared, stop: Arc::new(AtomicBool::new(false)), reader: None }
    }

    #[test]
    fn a_copy_answers_with_the_newest_whole_checkpoint_once_it_has_read_to_the_end_asked() {
        let standby = fed(2);
        let wait = Duration::ZERO;
        // Checkpoint 1 of writer 7 in two pieces, at offsets 0 and 1 of partition 1.
        standby.shared.take(1, 0, Some(&piece(7, 1, 0, 2, b"ab")));
        assert_eq!(standby.newest(1, 1, wait), None, "read to the end, but no whole checkpoint yet");
        standby.shared.take(1, 1, Some(&piece(7, 1, 1, 2, b"cd")));
        assert_eq!(standby.newest(1, 2, wait).as_deref().map(Vec::as_slice), Some(&b"abcd"[..]));
        assert_eq!(standby.newest(1, 3, wait), None, "lagging behind the end asked (a newer one may be there)");
        // The next one begun but not whole: the last whole one still answers; a record that is no piece moves on.
        standby.shared.take(1, 2, Some(&piece(7, 2, 0, 2, b"ef")));
        standby.shared.take(1, 3, Some(b"not a piece"));
        assert_eq!(standby.newest(1, 4, wait).as_deref().map(Vec::as_slice), Some(&b"abcd"[..]));
        standby.shared.take(1, 4, Some(&piece(7, 2, 1, 2, b"gh")));
        assert_eq!(standby.newest(1, 5, wait).as_deref().map(Vec::as_slice), Some(&b"efgh"[..]));
        assert_eq!(standby.newest(0, 0, wait), None, "the other partition has none");
        assert_eq!(standby.newest(2, 0, wait), None, "no such partition");
    }

    #[test]
    fn a_restore_waits_for_a_copy_that_lags_and_gives_up_after_its_wait() {
        let standby = Arc::new(fed(1));
        let feeder = standby.clone();
        let fed_later = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            feeder.shared.take(0, 0, Some(&piece(3, 9, 0, 1, b"state")));
        });
        let copy = standby.newest(0, 1, Duration::from_secs(10));
        fed_later.join().unwrap();
        assert_eq!(copy.as_deref().map(Vec::as_slice), Some(&b"state"[..]));
        let started = Instant::now();
        assert_eq!(standby.newest(0, 2, Duration::from_millis(30)), None, "offset 1 never comes");
        assert!(started.elapsed() >= Duration::from_millis(30));
    }
}
