//! Source threads (file, generator, Kafka), feeding chunks into the
//! dispatcher's bounded channel. HTTP ingest is in [`super::ingest`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Result;
use crossbeam_channel::Sender;
use freshet_engine::decode::Chunk;
use freshet_io::file::FileSource;
use freshet_io::generator::Generator;
use freshet_io::kafka::source::{KafkaSource, Polled};
use freshet_io::kafka::tombstones::Tombstones;

use super::{Shared, send, wall_ms};
use crate::checkpoint::SourcePosition;
use crate::config::plan::{Plan, SourceKind, SourcePlan};

/// A source thread's body.
pub(super) type SourceRun = Box<dyn FnOnce(Sender<Chunk>, Arc<Shared>) + Send>;

/// Partition positions (partition → next offset) of a completed checkpoint,
/// sent to a Kafka source to commit to its group.
pub(super) type Commits = Vec<(u32, u64)>;

/// An opened source.
pub(super) enum Opened {
    /// Runs on its own thread.
    Thread(SourceRun),
    /// A Kafka source's thread, its partitions (each holds the watermark
    /// back from the start), where completed checkpoints' offsets go, and
    /// what forgets an entity through its topic (`forget_on_tombstone`).
    Kafka { run: SourceRun, partitions: Vec<u32>, commits: Sender<Commits>, forgets: Option<Forgets> },
    /// Fed by HTTP handlers (through the ingest log with a data directory).
    Http,
}

/// What `DELETE /v1/{users,items}/{id}` goes through for a Kafka source
/// with `forget_on_tombstone`: a tombstone produced to the entity's partition.
#[derive(Clone)]
pub struct Forgets {
    /// The kind of entity a tombstone forgets.
    pub entity: freshet_engine::features::Entity,
    /// The producer of the source topic's tombstones.
    pub tombstones: Arc<Tombstones>,
}

/// Opens a source, at `resume` when restoring a checkpoint; file errors
/// surface here, before any thread starts. A Kafka source waits for its
/// brokers and topic until `cancelled()`.
pub(super) fn open(
    index: u16,
    plan: &SourcePlan,
    job: &Plan,
    resume: Option<&SourcePosition>,
    cancelled: &dyn Fn() -> bool,
) -> Result<Opened> {
    let max_line = job.pipeline.limits.max_event_bytes;
    Ok(match &plan.kind {
        SourceKind::File(_) if resume.is_some_and(|r| r.finished) => {
            // Everything was read and checkpointed: only say so again.
            let r = resume.cloned().unwrap_or(SourcePosition { finished: true, ..SourcePosition::start() });
            Opened::Thread(Box::new(move |tx, shared| {
                let mut chunk = Chunk {
                    first_offset: r.line,
                    end_of_partition: true,
                    end_position: r.position,
                    end_offset: r.line,
                    ..Chunk::default()
                };
                stamp(&mut chunk, index, &shared);
                send(&tx, chunk, &shared);
            }))
        }
        SourceKind::File(path) => {
            let mut file = match resume {
                Some(r) => FileSource::open_at(path, job.read_block, max_line, r.position, r.line)?,
                None => FileSource::open(path, job.read_block, max_line)?,
            };
            Opened::Thread(Box::new(move |tx, shared| {
                loop {
                    if shared.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    match file.next_chunk() {
                        Ok(Some(mut chunk)) => {
                            stamp(&mut chunk, index, &shared);
                            if !send(&tx, chunk, &shared) {
                                return;
                            }
                        }
                        Ok(None) => return,
                        Err(e) => return shared.fail(e.into()),
                    }
                }
            }))
        }
        SourceKind::Generator { options, emit_per_s } => {
            let mut generator = Generator::new(options.clone()).map_err(anyhow::Error::msg)?;
            // The generator is deterministic: resuming replays it up to the position.
            let skip = resume.map_or(0, |r| r.line);
            let mut scratch = Vec::new();
            for _ in 0..skip {
                scratch.clear();
                generator.next_line(&mut scratch);
            }
            let rate = *emit_per_s;
            let block = job.read_block;
            Opened::Thread(Box::new(move |tx, shared| {
                let start = Instant::now();
                let mut offset = skip;
                loop {
                    if shared.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let due = if rate > 0.0 {
                        std::thread::sleep(Duration::from_millis(10));
                        ((start.elapsed().as_secs_f64() * rate) as u64).saturating_sub(offset - skip)
                    } else {
                        u64::MAX
                    };
                    let mut chunk = Chunk { first_offset: offset, ..Chunk::default() };
                    let mut more = true;
                    let mut n = 0;
                    while n < due && chunk.data.len() < block {
                        if !generator.next_line(&mut chunk.data) {
                            more = false;
                            break;
                        }
                        n += 1;
                    }
                    offset += n;
                    chunk.end_of_partition = !more;
                    chunk.end_offset = offset;
                    if n == 0 && more {
                        continue;
                    }
                    stamp(&mut chunk, index, &shared);
                    if !send(&tx, chunk, &shared) || !more {
                        return;
                    }
                }
            }))
        }
        SourceKind::Http(_) => Opened::Http,
        SourceKind::Kafka(config) => {
            let resume = resume.map(|r| r.partitions.clone()).unwrap_or_default();
            let mut kafka = KafkaSource::open(&plan.name, config, &resume, (job.read_block, max_line), cancelled)?;
            let partitions = kafka.partitions();
            // Not for a group's task or replica: the group's API forgets through the topic itself.
            let forgets = match config.forget_on_tombstone {
                Some(entity) if !config.scale_out && config.only.is_none() => {
                    let (connection, topic) = (&config.connection, &config.topic);
                    let tombstones = Tombstones::open(connection, topic, partitions.len(), config.partitioner)?;
                    Some(Forgets { entity, tombstones: Arc::new(tombstones) })
                }
                _ => None,
            };
            let (commits, committed) = crossbeam_channel::bounded::<Commits>(4);
            let run: SourceRun = Box::new(move |tx, shared| {
                loop {
                    if shared.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    if let Some(positions) = committed.try_iter().last() {
                        kafka.commit(&positions);
                    }
                    match kafka.poll() {
                        Ok(Polled::Chunk(mut chunk)) => {
                            chunk.source = index;
                            stamp(&mut chunk, index, &shared);
                            if !send(&tx, chunk, &shared) {
                                return;
                            }
                        }
                        Ok(Polled::Idle) => {}
                        Ok(Polled::Finished) => return,
                        Err(e) => return shared.fail(e.into()),
                    }
                }
            });
            Opened::Kafka { run, partitions, commits, forgets }
        }
    })
}

fn stamp(chunk: &mut Chunk, source: u16, shared: &Shared) {
    chunk.source = source;
    chunk.ingest_ms = wall_ms();
    chunk.ingest_us = shared.now_us();
}
