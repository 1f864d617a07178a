//! Source threads (file, generator) and the HTTP ingest handle, all feeding
//! chunks into the dispatcher's bounded channel.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use crossbeam_channel::{SendTimeoutError, Sender};
use freshet_engine::decode::Chunk;
use freshet_io::file::FileSource;
use freshet_io::generator::Generator;

use super::{Shared, send, wall_ms};
use crate::checkpoint::SourcePosition;
use crate::config::plan::{Plan, SourceKind, SourcePlan};

/// A source thread's body.
pub(super) type SourceRun = Box<dyn FnOnce(Sender<Chunk>, Arc<Shared>) + Send>;

/// An opened source.
pub(super) enum Opened {
    /// Runs on its own thread.
    Thread(SourceRun),
    /// Fed by HTTP handlers.
    Http,
}

/// Opens a source, at `resume` when restoring a checkpoint; file errors
/// surface here, before any thread starts.
pub(super) fn open(index: u16, plan: &SourcePlan, job: &Plan, resume: Option<&SourcePosition>) -> Result<Opened> {
    let max_line = job.pipeline.limits.max_event_bytes;
    Ok(match &plan.kind {
        SourceKind::File(_) if resume.is_some_and(|r| r.finished) => {
            // Everything was read and checkpointed: only say so again.
            let r = resume.cloned().unwrap_or(SourcePosition { position: 0, line: 0, finished: true });
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
        SourceKind::Http => Opened::Http,
    })
}

fn stamp(chunk: &mut Chunk, source: u16, shared: &Shared) {
    chunk.source = source;
    chunk.ingest_ms = wall_ms();
    chunk.ingest_us = shared.now_us();
}

/// Why an ingest request was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The pipeline did not take the batch in time (backpressure): retry later.
    #[error("the pipeline is busy; retry later")]
    Busy,
    /// The job has stopped.
    #[error("the pipeline is not running")]
    Stopped,
}

/// Hands HTTP request bodies to the pipeline as chunks of one partition.
#[derive(Clone)]
pub struct IngestHandle {
    source: u16,
    tx: Sender<Chunk>,
    shared: Arc<Shared>,
    next_offset: Arc<AtomicU64>,
}

impl IngestHandle {
    pub(super) fn new(source: u16, tx: Sender<Chunk>, shared: Arc<Shared>) -> Self {
        Self { source, tx, shared, next_offset: Arc::new(AtomicU64::new(0)) }
    }

    /// Submits NDJSON lines (`single`: the body is one JSON document, which
    /// may span lines). Blocks while the pipeline is full, up to `wait`.
    /// Returns the number of events taken.
    pub fn submit(&self, mut body: Vec<u8>, single: bool, wait: Duration) -> Result<u64, IngestError> {
        if self.shared.stop.load(Ordering::SeqCst) {
            return Err(IngestError::Stopped);
        }
        if single {
            // Raw newlines cannot occur inside JSON strings, so folding them keeps valid JSON valid.
            for b in body.iter_mut().filter(|b| **b == b'\n' || **b == b'\r') {
                *b = b' ';
            }
        }
        if body.last().is_some_and(|&b| b != b'\n') {
            body.push(b'\n');
        }
        let lines = memchr::memchr_iter(b'\n', &body).count() as u64;
        if lines == 0 {
            return Ok(0);
        }
        // Offsets are claimed in submission order; chunks may reach the
        // dispatcher in another order, which changes nothing but DLQ offsets' order.
        let first_offset = self.next_offset.fetch_add(lines, Ordering::SeqCst);
        let chunk = Chunk {
            source: self.source,
            partition: 0,
            first_offset,
            data: body,
            ingest_ms: wall_ms(),
            ingest_us: self.shared.now_us(),
            ..Chunk::default()
        };
        match self.tx.send_timeout(chunk, wait) {
            Ok(()) => Ok(lines),
            Err(SendTimeoutError::Timeout(_)) => Err(IngestError::Busy),
            Err(SendTimeoutError::Disconnected(_)) => Err(IngestError::Stopped),
        }
    }
}
