//! The running job: threads and bounded channels around the engine.
//!
//! ```text
//! sources ─► dispatcher ─► decoder[d] ─► shard[s] ─► writer ─► sinks
//!  file        seq, ticks    parse,        keyed        files,
//!  generator                 flows,        state,       stdout,
//!  http ingest               records       windows      DLQ
//!                               │ ▲
//!                               ▼ │ a chunk's enrichment calls, all at once
//!                            enrich-io runtime (HTTP, retries, breaker, cache)
//! ```
//!
//! The dispatcher numbers chunks and deals them round-robin to decoders;
//! every decoder sends each shard one input per chunk (maybe empty), and a
//! shard reads decoders in sequence order, so every shard sees every chunk in
//! source order and derives the same watermark. All channels are bounded:
//! a slow shard or sink pushes back to the sources. Metrics are counted per
//! chunk, never per event.

mod enrich;
pub(crate) mod ingest;
pub(crate) mod sources;
mod workers;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crossbeam_channel::{Sender, bounded};
use freshet_engine::decode::Chunk;
use freshet_engine::features::{FeatureView, Views};
use freshet_io::sink::SinkWriter;

use crate::checkpoint::{SourcePosition, Store};
use crate::config::plan::{Plan, SharedTables, SourceKind};
use freshet_engine::recommend::{Placement, RecommenderView};
use freshet_engine::shard::Shard;
use freshet_engine::time::PartitionId;
pub use ingest::IngestHandle;
use std::path::Path;

/// Called with each checkpoint once it is written.
pub type CheckpointHook = Arc<dyn Fn(&crate::checkpoint::Checkpoint) + Send + Sync>;

/// Rows written per sink: (name, rows).
pub type SinkRows = Vec<(String, u64)>;

/// Counters of a finished job.
#[derive(Debug, Default, Clone)]
pub struct JobSummary {
    /// Lines read from all sources.
    pub lines: u64,
    /// Events accepted by a flow.
    pub accepted: u64,
    /// Lines sent to the dead-letter sink (or counted as rejected).
    pub rejected: u64,
    /// Rows written per sink (name, rows).
    pub sink_rows: Vec<(String, u64)>,
    /// Wall time from start to the last flush.
    pub elapsed: Duration,
    /// Ingest-to-visible latency of each chunk, µs.
    pub latencies_us: Vec<u64>,
}

/// Shared state of a running job.
pub(crate) struct Shared {
    pub stop: AtomicBool,
    pub error: std::sync::Mutex<Option<anyhow::Error>>,
    pub epoch: Instant,
    pub lines: AtomicU64,
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub ready: AtomicBool,
    /// The last checkpoint written and when (µs on `epoch`'s clock).
    pub last_checkpoint: std::sync::Mutex<(u64, u64)>,
}

/// Whether `e` is a component giving up because the job or the process was
/// being stopped ([`freshet_io::IoError::Stopped`]): a consequence of a stop.
pub fn gave_up_on_stop(e: &anyhow::Error) -> bool {
    e.chain().any(|c| matches!(c.downcast_ref(), Some(freshet_io::IoError::Stopped { .. })))
}

impl Shared {
    pub fn fail(&self, e: anyhow::Error) {
        if gave_up_on_stop(&e) && self.stop.load(Ordering::SeqCst) {
            // A consequence of the stop, not a failure: what was not written
            // is written again from the last checkpoint at the next start.
            tracing::info!(reason = %format!("{e:#}"), "Stopped before every result was written.");
            return;
        }
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            tracing::error!(error = %format!("{e:#}"), "Job failed; stopping.");
            *slot = Some(e);
        }
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }
}

/// Wall-clock milliseconds since the epoch.
pub fn wall_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// What the HTTP API reads of the recommender: its lock-free view and the
/// configured placements.
#[derive(Clone)]
pub struct Recommending {
    /// The published model.
    pub view: Arc<RecommenderView>,
    /// Named placements.
    pub placements: Arc<Vec<Placement>>,
}

/// A started job.
pub struct Job {
    shared: Arc<Shared>,
    views: Views,
    recommending: Option<Recommending>,
    ingest: Option<IngestHandle>,
    threads: Vec<JoinHandle<()>>,
    writer: Option<JoinHandle<Result<SinkRows>>>,
    shards: Vec<JoinHandle<Vec<u64>>>,
    coordinator: Option<JoinHandle<()>>,
    /// Kept until the decoders are done.
    enrichment: Option<Arc<enrich::Enrichment>>,
    /// The checkpoint it started from.
    restored: Option<u64>,
    /// What forgets an entity through a Kafka source's topic.
    forgets: Option<sources::Forgets>,
    started: Instant,
}

impl Job {
    /// Opens every source and sink (and, with a data directory, restores the
    /// last complete checkpoint), then starts the threads. Fails before
    /// starting anything when an input, output or checkpoint is unusable.
    pub fn start(plan: Arc<Plan>, data_dir: Option<&Path>, reset_state: bool) -> Result<Job> {
        Self::start_until(plan, data_dir, reset_state, Arc::new(AtomicBool::new(false)))
    }

    /// As [`Job::start`]; sources and sinks that wait for their brokers
    /// while opening give up once `cancel` is set (the user stops the process).
    pub fn start_until(
        plan: Arc<Plan>,
        data_dir: Option<&Path>,
        reset_state: bool,
        cancel: Arc<AtomicBool>,
    ) -> Result<Job> {
        Self::start_with(plan, data_dir, reset_state, cancel, None)
    }

    /// As [`Job::start_until`] with checkpoints in `data_dir`, and `after`
    /// called with each checkpoint once it is written (a group's task ships
    /// it to its changelog, see `crate::group`).
    pub fn start_task(plan: Arc<Plan>, data_dir: &Path, cancel: Arc<AtomicBool>, after: CheckpointHook) -> Result<Job> {
        Self::start_with(plan, Some(data_dir), false, cancel, Some(after))
    }

    fn start_with(
        plan: Arc<Plan>,
        data_dir: Option<&Path>,
        reset_state: bool,
        cancel: Arc<AtomicBool>,
        after_checkpoint: Option<CheckpointHook>,
    ) -> Result<Job> {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            error: std::sync::Mutex::new(None),
            epoch: Instant::now(),
            lines: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            last_checkpoint: std::sync::Mutex::default(),
        });
        let p = &plan.pipeline;
        let views: Views = Arc::new(p.features.iter().map(FeatureView::new).collect());
        let recommending = p.recommender.as_ref().map(|r| Recommending {
            view: Arc::new(RecommenderView::new(r.spec.clone(), wall_ms())),
            placements: Arc::new(r.placements.clone()),
        });

        let grouped = plan.sources.iter().find(|s| matches!(&s.kind, SourceKind::Kafka(k) if k.scale_out));
        if let (Some(s), None) = (grouped, data_dir) {
            anyhow::bail!(
                "source {} has scale_out = true, which commits offsets to its group after each checkpoint, \
                 and checkpoints need a data directory: pass --data-dir (one per process)",
                s.name
            );
        }

        // Checkpoints: the store, and the state to resume from.
        let fingerprint = plan.fingerprint();
        let restore_started = Instant::now();
        let (store, restored) = match data_dir {
            Some(dir) => {
                let store = Store::open(dir, plan.keep_checkpoints)?;
                if reset_state {
                    store.reset()?;
                }
                let latest = store.latest(&fingerprint)?;
                (Some(store), latest)
            }
            None => (None, None),
        };
        if let Some(cp) = &restored {
            tracing::info!(checkpoint = cp.id, "Restoring from checkpoint.");
        }
        let restored_bytes: usize = restored.as_ref().map_or(0, |cp| cp.shards.iter().map(Vec::len).sum());
        let restored_id = restored.as_ref().map(|cp| cp.id);

        // Open everything first: a bad path is one clear error, before any thread.
        let mut opened = Vec::new();
        let mut logs = Vec::new();
        // Every partition of every source holds the watermark back from the start.
        let mut partitions: Vec<PartitionId> = Vec::new();
        let mut commits = Vec::new();
        // The first Kafka source that forgets on tombstones (for the HTTP API).
        let mut forgets = None;
        // Where each source resumes: the checkpoint's position, except that a
        // group's source goes on where its group says.
        let resume_at = |i: usize| match &plan.sources[i].kind {
            SourceKind::Kafka(k) if k.scale_out => None,
            _ => restored.as_ref().and_then(|cp| cp.sources.get(i)),
        };
        for (i, s) in plan.sources.iter().enumerate() {
            let resume = resume_at(i);
            let cancelled = || cancel.load(Ordering::SeqCst);
            let mut source =
                sources::open(i as u16, s, &plan, resume, &cancelled).with_context(|| format!("source {}", s.name))?;
            match &mut source {
                sources::Opened::Kafka { partitions: ps, commits: tx, forgets: f, .. } => {
                    partitions.extend(ps.iter().map(|p| (i as u16, *p)));
                    commits.push((i, tx.clone()));
                    if forgets.is_none() {
                        forgets = f.take();
                    }
                }
                _ => partitions.push((i as u16, 0)),
            }
            opened.push(source);
            if let (SourceKind::Http(log_plan), Some(dir)) = (&s.kind, data_dir) {
                let log = ingest::open_log(dir, &s.name, *log_plan, resume, reset_state)
                    .with_context(|| format!("source {}", s.name))?;
                logs.push((i, log));
            }
        }
        if data_dir.is_none() && plan.has_http_source() {
            tracing::warn!(
                "HTTP ingest is not durable without --data-dir: a crash loses what the job had not processed."
            );
        }
        let log_dirs: Vec<_> = match data_dir {
            Some(dir) => logs.iter().map(|(i, _)| (*i, ingest::log_dir(dir, &plan.sources[*i].name))).collect(),
            None => Vec::new(),
        };
        let mut writers = Vec::new();
        for (i, s) in plan.sinks.iter().enumerate() {
            let committed = restored.as_ref().and_then(|cp| cp.sinks.get(i).copied());
            let (sh, cancel) = (shared.clone(), cancel.clone());
            let stop = Arc::new(move || sh.stop.load(Ordering::SeqCst) || cancel.load(Ordering::SeqCst));
            let writer = SinkWriter::open_with(&s.name, &s.target, committed, stop)
                .with_context(|| format!("sink {}", s.name))?;
            writers.push(writer);
        }
        let mut shards = Vec::new();
        for i in 0..p.shards {
            let mut shard = Shard::new(p, Some(views.clone()));
            if let (Some(plan), Some(r)) = (&p.recommender, &recommending)
                && plan.shard == i
            {
                shard = shard.with_recommender(plan, Some(r.view.clone()));
            }
            if let Some(bytes) = restored.as_ref().and_then(|cp| cp.shards.get(i)) {
                shard.restore(bytes, wall_ms()).with_context(|| format!("restoring shard {i}"))?;
            }
            shards.push(shard);
        }
        if let Some(cp) = &restored {
            let took = restore_started.elapsed();
            metrics::gauge!(crate::metrics::RESTORE_SECONDS).set(took.as_secs_f64());
            let keys: usize = shards.iter().flat_map(Shard::key_counts).sum();
            tracing::info!(
                checkpoint = cp.id,
                state_bytes = restored_bytes,
                keys,
                took_ms = took.as_millis() as u64,
                "Restored."
            );
        }

        let decoders = plan.decoders;
        let (source_tx, source_rx) = bounded::<Chunk>(decoders * 4);
        let (writer_tx, writer_rx) = bounded(64);
        let mut decoder_txs = Vec::new();
        let mut decoder_rxs = Vec::new();
        for _ in 0..decoders {
            let (tx, rx) = bounded(4);
            decoder_txs.push(tx);
            decoder_rxs.push(rx);
        }
        // shard_rxs[s][d]: decoder d → shard s.
        let mut shard_txs: Vec<Vec<Sender<_>>> = Vec::new();
        let mut shard_rxs: Vec<Vec<_>> = (0..p.shards).map(|_| Vec::new()).collect();
        for _ in 0..decoders {
            let mut row = Vec::new();
            for rxs in shard_rxs.iter_mut() {
                let (tx, rx) = bounded(8);
                row.push(tx);
                rxs.push(rx);
            }
            shard_txs.push(row);
        }

        let enrichment = enrich::Enrichment::start(&plan)?;
        // A job feeds its own tables, or shares a process's (a group's replica feeds them, its tasks read them).
        let (tables, feeds) = match &plan.shared_tables {
            Some(SharedTables::Feeds(t)) => (Some(t.clone()), true),
            Some(SharedTables::Reads(t)) => (Some(t.clone()), false),
            None => {
                ((!p.tables.is_empty()).then(|| Arc::new(freshet_engine::lookup::Tables::new(p.tables.len()))), true)
            }
        };
        if let (Some(t), Some(cp), true) = (&tables, &restored, feeds) {
            t.restore(&cp.tables).map_err(anyhow::Error::msg).context("restoring the lookup tables")?;
        }
        let passes = tables.map(|t| Arc::new(workers::TablePasses::new(t, feeds)));
        let pools = workers::Pools::new(decoders);
        let links = workers::Links { writer: writer_tx.clone(), pools: pools.clone(), shared: shared.clone() };
        let mut threads = Vec::new();
        let mut ingest = None;
        for (i, src) in opened.into_iter().enumerate() {
            match src {
                sources::Opened::Thread(run) | sources::Opened::Kafka { run, .. } => {
                    let tx = source_tx.clone();
                    let sh = shared.clone();
                    let name = format!("source-{}", plan.sources[i].name);
                    threads.push(spawn(&name, move || run(tx, sh))?);
                }
                sources::Opened::Http => match logs.iter().position(|(l, _)| *l == i) {
                    Some(at) => {
                        let (_, log) = logs.swap_remove(at);
                        let (handle, run) = ingest::logged(i as u16, log, source_tx.clone(), shared.clone());
                        ingest = Some(handle);
                        threads.push(spawn("ingest-log", run)?);
                    }
                    None => ingest = Some(IngestHandle::direct(i as u16, source_tx.clone(), shared.clone())),
                },
            }
        }
        drop(source_tx);

        let (coordinator_tx, coordinator) = match store {
            Some(store) => {
                let (tx, rx) = crossbeam_channel::unbounded();
                let (sh, n, t) = (shared.clone(), p.shards, !p.tables.is_empty());
                let handle = spawn("checkpoints", move || {
                    let after = workers::OnComplete { logs: log_dirs, commits, hook: after_checkpoint };
                    workers::coordinate(store, rx, (n, t), fingerprint, after, sh)
                })?;
                (Some(tx), Some(handle))
            }
            None => (None, None),
        };
        let barriers = coordinator_tx.as_ref().map(|c| workers::Barriers {
            interval: plan.checkpoint_interval,
            next_id: restored.as_ref().map_or(1, |cp| cp.id + 1),
            partitioned: plan.sources.iter().map(|s| matches!(s.kind, SourceKind::Kafka(_))).collect(),
            positions: (0..plan.sources.len())
                .map(|i| resume_at(i).cloned().unwrap_or_else(SourcePosition::start))
                .collect(),
            coordinator: c.clone(),
            injected: 0,
        });
        {
            let sh = shared.clone();
            threads.push(spawn("dispatcher", move || workers::dispatch(source_rx, decoder_txs, barriers, sh))?);
        }
        for (d, (rx, txs)) in decoder_rxs.into_iter().zip(shard_txs).enumerate() {
            let (plan, links) = (plan.clone(), links.clone());
            let calls = enrichment.as_ref().map(|e| e.calls());
            let tables = passes.as_ref().map(|t| (t.clone(), coordinator_tx.clone()));
            threads.push(spawn(&format!("decoder-{d}"), move || {
                workers::decode(&plan, d, rx, txs, links, calls, tables)
            })?);
        }
        let mut shard_handles = Vec::new();
        for (s, (shard, rxs)) in shards.into_iter().zip(shard_rxs).enumerate() {
            let (plan, parts, links, coord) = (plan.clone(), partitions.clone(), links.clone(), coordinator_tx.clone());
            shard_handles
                .push(spawn(&format!("shard-{s}"), move || workers::shard(&plan, s, shard, rxs, parts, coord, links))?);
        }
        drop(links);
        drop(writer_tx);
        let (n, coord) = (p.shards, coordinator_tx.clone());
        let writer = spawn("writer", move || workers::write(writers, writer_rx, n, coord, pools))?;
        drop(coordinator_tx);
        shared.ready.store(true, Ordering::SeqCst);
        tracing::info!(
            sources = plan.sources.len(),
            decoders,
            shards = p.shards,
            features = p.features.len(),
            bounded = plan.bounded(),
            checkpoints = data_dir.is_some(),
            "Job started."
        );
        Ok(Job {
            shared,
            views,
            recommending,
            ingest,
            threads,
            writer: Some(writer),
            shards: shard_handles,
            coordinator,
            enrichment,
            restored: restored_id,
            forgets,
            started: Instant::now(),
        })
    }

    /// What forgets an entity through a Kafka source's topic, when one
    /// forgets on tombstones (`DELETE /v1/users/{id}` without an http source).
    pub fn forgets(&self) -> Option<sources::Forgets> {
        self.forgets.clone()
    }

    /// The checkpoint the job started from, if it restored one.
    pub fn restored(&self) -> Option<u64> {
        self.restored
    }

    /// The serving views.
    pub fn views(&self) -> Views {
        self.views.clone()
    }

    /// The recommender's serving side, when the job has one.
    pub fn recommending(&self) -> Option<Recommending> {
        self.recommending.clone()
    }

    /// The HTTP ingest handle, when the job has an http source.
    pub fn ingest(&self) -> Option<IngestHandle> {
        self.ingest.clone()
    }

    /// A probe that answers whether the job still runs (for `/readyz`).
    pub fn ready_probe(&self) -> std::sync::Arc<dyn Fn() -> bool + Send + Sync> {
        let shared = self.shared.clone();
        std::sync::Arc::new(move || shared.ready.load(Ordering::SeqCst) && !shared.stop.load(Ordering::SeqCst))
    }

    /// A flag that turns true when the job stops for any reason.
    pub fn stopped(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }

    /// Whether the job has ended (its input, or an error, or a stop): its
    /// last writes are done, [`Job::wait`] returns without waiting long.
    pub fn finished(&self) -> bool {
        self.stopped() || self.writer.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Asks the job to stop (unbounded jobs end this way; open windows are not emitted).
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }

    /// Waits for the job to end and returns its summary, or its first error.
    pub fn wait(mut self) -> Result<JobSummary> {
        drop(self.ingest.take());
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let mut latencies = Vec::new();
        for s in self.shards.drain(..) {
            latencies.extend(s.join().unwrap_or_default());
        }
        let sink_rows = match self.writer.take().map(JoinHandle::join) {
            Some(Ok(Ok(rows))) => rows,
            Some(Ok(Err(e))) => {
                self.shared.fail(e);
                Vec::new()
            }
            _ => Vec::new(),
        };
        if let Some(c) = self.coordinator.take() {
            let _ = c.join();
        }
        drop(self.enrichment.take());
        if let Some(e) = self.shared.error.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(e);
        }
        Ok(JobSummary {
            lines: self.shared.lines.load(Ordering::SeqCst),
            accepted: self.shared.accepted.load(Ordering::SeqCst),
            rejected: self.shared.rejected.load(Ordering::SeqCst),
            sink_rows,
            elapsed: self.started.elapsed(),
            latencies_us: latencies,
        })
    }
}

/// Sends with backpressure, re-checking the stop flag while the channel is
/// full; false when the job stops or the receiver is gone.
pub(crate) fn send<T>(tx: &Sender<T>, mut msg: T, shared: &Shared) -> bool {
    loop {
        match tx.send_timeout(msg, Duration::from_millis(100)) {
            Ok(()) => return true,
            Err(crossbeam_channel::SendTimeoutError::Timeout(m)) => {
                if shared.stop.load(Ordering::SeqCst) {
                    return false;
                }
                msg = m;
            }
            Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => return false,
        }
    }
}

fn spawn<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<JoinHandle<T>> {
    std::thread::Builder::new().name(name.into()).spawn(f).with_context(|| format!("spawning thread {name}"))
}
