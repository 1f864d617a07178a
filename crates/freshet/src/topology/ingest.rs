//! HTTP ingest into the pipeline, through the durable log when the job has
//! a data directory.
//!
//! With a log, one thread owns it: at start it replays the records after the
//! checkpointed position, then it takes the requests waiting in its queue,
//! appends them all, syncs once (group commit) as the fsync policy says,
//! acknowledges them, and hands them to the pipeline as one chunk whose end
//! position is the log position, so a checkpoint never covers a record that
//! is not in the log. A request is answered 202 only once its record is in
//! the log (synced, with `fsync = "always"`); a request the queue cannot take
//! in time is answered 429 and leaves no trace.
//!
//! Forgetting a user travels the same way, as a control record: it is
//! ordered with the events around it, replayed after a crash, and covered by
//! the next checkpoint like any event.
//!
//! Without a data directory there is nothing to write: batches go straight
//! to the pipeline, and a crash loses what the job had not yet processed.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crossbeam_channel::{Receiver, RecvTimeoutError, SendTimeoutError, Sender};
use freshet_engine::decode::Chunk;
use freshet_engine::features::Entity;
use freshet_engine::record::Forget;
use freshet_io::log::{Entry, LogReader, LogWriter};

use super::{Shared, send, wall_ms};
use crate::checkpoint::SourcePosition;
use crate::config::plan::{Fsync, IngestLogPlan};

/// Requests waiting for the log thread.
const QUEUE: usize = 256;
/// Bytes taken into one append-and-sync round at most.
const GROUP_BYTES: usize = 4 << 20;

/// Why an ingest request was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The pipeline did not take the batch in time (backpressure): retry later.
    #[error("the pipeline is busy; retry later")]
    Busy,
    /// The job has stopped.
    #[error("the pipeline is not running")]
    Stopped,
    /// The durable log could not be written; the batch was not accepted.
    #[error("the ingest log failed: {0}")]
    Log(String),
}

/// A request waiting for the log: NDJSON lines, or an entity to forget.
struct Request {
    body: Vec<u8>,
    /// Lines in `body`, counted once by the handler.
    lines: u64,
    forget: Option<Forget>,
    reply: Sender<Result<(), String>>,
}

/// The control record of a forget: `{"forget":{"entity":"user","id":"u1"}}`.
fn encode_forget(f: &Forget) -> Vec<u8> {
    let id = String::from_utf8_lossy(&f.id);
    serde_json::to_vec(&serde_json::json!({ "forget": { "entity": f.entity.name(), "id": id } })).unwrap_or_default()
}

fn decode_forget(payload: &[u8]) -> Option<Forget> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let f = v.get("forget")?;
    let entity = Entity::from_name(f.get("entity")?.as_str()?).filter(|e| *e != Entity::None)?;
    Some(Forget { entity, id: f.get("id")?.as_str()?.as_bytes().to_vec() })
}

enum Route {
    /// Straight into the pipeline (no data directory).
    Direct { tx: Sender<Chunk>, next_offset: Arc<AtomicU64> },
    /// Through the log thread.
    Logged { requests: Sender<Request> },
}

/// Hands HTTP request bodies to the pipeline as chunks of one partition.
#[derive(Clone)]
pub struct IngestHandle {
    source: u16,
    route: Arc<Route>,
    shared: Arc<Shared>,
}

impl IngestHandle {
    /// Batches go straight to the pipeline.
    pub(super) fn direct(source: u16, tx: Sender<Chunk>, shared: Arc<Shared>) -> Self {
        let route = Route::Direct { tx, next_offset: Arc::new(AtomicU64::new(0)) };
        Self { source, route: Arc::new(route), shared }
    }

    /// Submits NDJSON lines (`single`: the body is one JSON document, which
    /// may span lines). Blocks while the pipeline is full, up to `wait`, and
    /// then until the batch is in the log. Returns the number of lines taken.
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
        self.take(body, lines, None, wait).map(|()| lines)
    }

    /// Forgets `id` in every feature of `entity`, after the events accepted
    /// before it. Returns once the request is in the log (or the pipeline).
    pub fn forget(&self, entity: Entity, id: &str, wait: Duration) -> Result<(), IngestError> {
        if self.shared.stop.load(Ordering::SeqCst) {
            return Err(IngestError::Stopped);
        }
        self.take(Vec::new(), 0, Some(Forget { entity, id: id.as_bytes().to_vec() }), wait)
    }

    /// Hands `lines` lines (and maybe a forget, after them) to the route.
    fn take(&self, body: Vec<u8>, lines: u64, forget: Option<Forget>, wait: Duration) -> Result<(), IngestError> {
        match &*self.route {
            Route::Direct { tx, next_offset } => {
                // Offsets are claimed in submission order; chunks may reach the
                // dispatcher in another order, which changes nothing but DLQ offsets' order.
                let first_offset = next_offset.fetch_add(lines, Ordering::SeqCst);
                let chunk = Chunk {
                    source: self.source,
                    first_offset,
                    end_offset: first_offset + lines,
                    data: body,
                    ingest_ms: wall_ms(),
                    ingest_us: self.shared.now_us(),
                    forget,
                    ..Chunk::default()
                };
                queued(tx.send_timeout(chunk, wait))
            }
            Route::Logged { requests } => self.logged(requests, body, lines, forget, wait),
        }
    }

    fn logged(
        &self,
        requests: &Sender<Request>,
        body: Vec<u8>,
        lines: u64,
        forget: Option<Forget>,
        wait: Duration,
    ) -> Result<(), IngestError> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        queued(requests.send_timeout(Request { body, lines, forget, reply }, wait))?;
        // Once queued, the outcome is the log's: wait for it.
        match answer.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(IngestError::Log(e)),
            Err(_) => Err(IngestError::Stopped),
        }
    }
}

/// A bounded queue's verdict: full after the wait is backpressure, gone is a stopped job.
fn queued<T>(sent: Result<(), SendTimeoutError<T>>) -> Result<(), IngestError> {
    match sent {
        Ok(()) => Ok(()),
        Err(SendTimeoutError::Timeout(_)) => Err(IngestError::Busy),
        Err(SendTimeoutError::Disconnected(_)) => Err(IngestError::Stopped),
    }
}

/// The log of an http source, opened (and its tail repaired) at start.
pub(super) struct OpenedLog {
    dir: PathBuf,
    writer: LogWriter,
    plan: IngestLogPlan,
    resume: SourcePosition,
}

/// Where source `name`'s log lives in the data directory.
pub(super) fn log_dir(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("ingest").join(name)
}

/// Opens the log of source `name`, replaying from `resume` once started.
/// `reset` (with `--reset-state`) deletes it first.
pub(super) fn open_log(
    data_dir: &Path,
    name: &str,
    plan: IngestLogPlan,
    resume: Option<&SourcePosition>,
    reset: bool,
) -> Result<OpenedLog> {
    let dir = log_dir(data_dir, name);
    if reset && dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let (writer, report) =
        LogWriter::open(&dir, plan.segment_bytes).with_context(|| format!("opening ingest log {}", dir.display()))?;
    if report.truncated_bytes > 0 {
        metrics::counter!(crate::metrics::INGEST_LOG_TRUNCATED_BYTES).increment(report.truncated_bytes);
        tracing::warn!(
            log = %dir.display(),
            bytes = report.truncated_bytes,
            position = report.end,
            "The ingest log ended in a torn record (a crash mid-write); cut it off. It was never acknowledged."
        );
    }
    let resume = resume.cloned().unwrap_or_else(SourcePosition::start);
    if resume.position > report.end {
        anyhow::bail!(
            "the checkpoint says ingest log {} reached position {}, but it ends at {}: \
             the log was truncated or replaced. Pass --reset-state to start over.",
            dir.display(),
            resume.position,
            report.end
        );
    }
    tracing::info!(log = %dir.display(), segments = report.segments, end = report.end, from = resume.position, "Ingest log open.");
    Ok(OpenedLog { dir, writer, plan, resume })
}

/// Starts the log thread's work: returns the handle for HTTP and the thread body.
pub(super) fn logged(
    source: u16,
    log: OpenedLog,
    tx: Sender<Chunk>,
    shared: Arc<Shared>,
) -> (IngestHandle, impl FnOnce() + Send + 'static) {
    let (requests, queue) = crossbeam_channel::bounded(QUEUE);
    let handle = IngestHandle { source, route: Arc::new(Route::Logged { requests }), shared: shared.clone() };
    let run = move || {
        if let Err(e) = run_log(source, log, &queue, &tx, &shared) {
            shared.fail(e);
        }
    };
    (handle, run)
}

fn run_log(source: u16, log: OpenedLog, queue: &Receiver<Request>, tx: &Sender<Chunk>, shared: &Shared) -> Result<()> {
    let OpenedLog { dir, mut writer, plan, resume } = log;
    let mut line = resume.line;
    let chunk = |first_offset: u64, data: Vec<u8>, end_position: u64, end_offset: u64| Chunk {
        source,
        first_offset,
        data,
        ingest_ms: wall_ms(),
        ingest_us: shared.now_us(),
        end_position,
        end_offset,
        ..Chunk::default()
    };

    // Replay what the last checkpoint does not cover.
    let started = Instant::now();
    let mut reader =
        LogReader::open(&dir, resume.position).with_context(|| format!("replaying ingest log {}", dir.display()))?;
    let (mut records, first_line) = (0u64, line);
    while let Some(entry) = reader.next_entry().with_context(|| format!("reading ingest log {}", dir.display()))? {
        match entry {
            Entry::Record { end, payload, control: true, .. } => match decode_forget(&payload) {
                Some(forget) => {
                    let c = Chunk { forget: Some(forget), ..chunk(line, Vec::new(), end, line) };
                    if !send(tx, c, shared) {
                        return Ok(());
                    }
                }
                None => {
                    tracing::error!(log = %dir.display(), end, "Unknown control record in the ingest log: skipped.")
                }
            },
            Entry::Record { end, payload, control: false, .. } => {
                let n = memchr::memchr_iter(b'\n', &payload).count() as u64;
                let c = chunk(line, payload, end, line + n);
                line += n;
                records += 1;
                if !send(tx, c, shared) {
                    return Ok(());
                }
            }
            Entry::Corrupt { start, end, reason, raw } => {
                // Keep line numbers stable across replays: count the lines the bytes seem to hold.
                line += memchr::memchr_iter(b'\n', &raw).count() as u64;
                quarantine(&dir, start, end, &reason, &raw);
            }
        }
    }
    if records > 0 {
        tracing::info!(records, events = line - first_line, elapsed = ?started.elapsed(), "Replayed the ingest log.");
    }

    // Serve: append what is waiting, sync once, answer, pass on.
    let mut last_sync = Instant::now();
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let first = match queue.recv_timeout(Duration::from_millis(50)) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => {
                if let Fsync::Every(d) = plan.fsync
                    && last_sync.elapsed() >= d
                {
                    writer.sync().with_context(|| format!("syncing ingest log {}", dir.display()))?;
                    last_sync = Instant::now();
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut group = vec![first];
        let mut bytes = group[0].body.len();
        while bytes < GROUP_BYTES {
            let Ok(r) = queue.try_recv() else { break };
            bytes += r.body.len();
            group.push(r);
        }
        let ends = match append_group(&mut writer, &group, plan.fsync, &mut last_sync) {
            Ok(ends) => ends,
            Err(e) => {
                let e = anyhow::Error::new(e).context(format!("writing ingest log {}", dir.display()));
                for r in &group {
                    let _ = r.reply.send(Err(format!("{e:#}")));
                }
                return Err(e);
            }
        };
        for r in &group {
            let _ = r.reply.send(Ok(()));
        }
        metrics::counter!(crate::metrics::INGEST_LOG_BYTES).increment(bytes as u64);
        // One chunk for the group, cut after each forget so that it applies
        // after exactly the events before it.
        let mut data = Vec::with_capacity(bytes);
        let mut first_line = line;
        for (r, end) in group.into_iter().zip(ends) {
            data.extend_from_slice(&r.body);
            line += r.lines;
            if r.forget.is_some() {
                let c = Chunk { forget: r.forget, ..chunk(first_line, std::mem::take(&mut data), end, line) };
                if !send(tx, c, shared) {
                    return Ok(());
                }
                first_line = line;
            }
        }
        if !data.is_empty() && !send(tx, chunk(first_line, data, writer.end(), line), shared) {
            break;
        }
    }
    writer.sync().with_context(|| format!("syncing ingest log {}", dir.display()))
}

/// Appends a group of requests, syncing as the policy says; returns each one's end position.
fn append_group(
    writer: &mut LogWriter,
    group: &[Request],
    fsync: Fsync,
    last_sync: &mut Instant,
) -> std::io::Result<Vec<u64>> {
    let mut ends = Vec::with_capacity(group.len());
    for r in group {
        ends.push(match &r.forget {
            Some(f) => writer.append_control(&encode_forget(f))?,
            None => writer.append(&r.body)?,
        });
    }
    let due = match fsync {
        Fsync::Always => true,
        Fsync::Never => false,
        Fsync::Every(d) => last_sync.elapsed() >= d,
    };
    if due {
        let t = Instant::now();
        writer.sync()?;
        metrics::histogram!(crate::metrics::INGEST_LOG_SYNC_SECONDS).record(t.elapsed().as_secs_f64());
        *last_sync = Instant::now();
    }
    Ok(ends)
}

/// Reports a corrupt stretch of the log and keeps its bytes beside the log.
fn quarantine(dir: &Path, start: u64, end: u64, reason: &str, raw: &[u8]) {
    metrics::counter!(crate::metrics::INGEST_LOG_CORRUPT).increment(1);
    let path = dir.join("quarantine").join(format!("{start:020}-{end:020}.bin"));
    let saved = fs::create_dir_all(dir.join("quarantine")).and_then(|()| fs::write(&path, raw));
    tracing::error!(
        log = %dir.display(),
        start,
        end,
        reason,
        saved = %path.display(),
        save_error = saved.err().map(|e| e.to_string()),
        "Corrupt record in the ingest log: skipped; its bytes are kept for inspection."
    );
}
