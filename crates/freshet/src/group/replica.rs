//! The recommender and lookup tables of a group: a replica on every
//! process, reading every partition of the group's source (Kafka Streams'
//! global stores).
//!
//! Features split by partition; the recommender's item model does not: an
//! item's co-occurrence neighbours learn from every user who touched it,
//! whichever partition holds the user. So each process keeps the whole
//! model and answers every recommendation itself (nothing is forwarded),
//! and serving scales with the processes while learning does not: each
//! replica learns every event.
//!
//! The replica is a job of its own: the config's flows and recommender,
//! without features (the tasks keep them), sinks, routes and dead letters
//! (the tasks write those). Its stages run again on the events (an
//! `enrich_http` stage calls its service from the tasks and from each
//! replica). It reads
//! the partitions by assignment, not as a member of the group, and commits
//! nothing to the group: its positions live in its checkpoints, in the
//! process's data directory (`recommender/`). A process that restarts goes
//! on from its last checkpoint. Every replica also ships its checkpoints
//! (at most one every 30 s) to the one
//! partition of `{group}-{source}-recommender-changelog`, and a process
//! with no checkpoint of its own starts from the newest one there (any
//! replica's checkpoint is a consistent state: the model with the
//! positions it learned up to), so a new process does not read the whole
//! topic again; with none there, it reads the topic from its start.
//! A replica that fails starts again from its checkpoint, after a backoff;
//! meanwhile its last published model still answers. Its source is named
//! `{source}-recommender` in metrics and logs, apart from the tasks'.
//!
//! Lookup tables are the same case: an interaction's item row may have come
//! through any partition. The replica feeds the process's tables (its
//! checkpoints keep them) and the tasks only look rows up; the tasks start
//! once a replica checkpoint's positions reach the end offsets the topic had
//! when the replica first started (Kafka Streams bootstraps its global
//! tables so), and the rows read after that reach the tasks as the replica
//! reads them, not in order with their partitions. Without a recommender
//! the replica runs for the tables alone, without the flows' stages.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use freshet_engine::lookup::Tables;
use freshet_io::kafka::group::Changelog;

use super::Planner;
use super::reads::Reads;
use crate::checkpoint::{Checkpoint, Store};
use crate::config::model::{Config, StageConfig};
use crate::config::plan::{SharedTables, SourceKind};
use crate::topology::{CheckpointHook, Job};

/// At most one replica checkpoint goes to the changelog this often: each
/// holds the whole model, and a new process reads on from its positions.
const SHIP_EVERY: Duration = Duration::from_secs(30);

/// Positions that stay this long count as the end of what the topic held
/// (see [`loading`]).
const STILL_FOR: Duration = Duration::from_secs(10);

/// The replica's state.
enum State {
    /// To start at this instant (at once the first time; after a backoff once it failed).
    Waiting(Instant),
    /// Restoring its checkpoint and opening its source, off the group's thread.
    Starting(JoinHandle<Result<Job>>),
    Running(Job),
    /// A bounded source read to its end.
    Done,
}

/// This process's replica of the recommender and the lookup tables.
pub(super) struct Replica {
    planner: Arc<Planner>,
    /// The source's name and partitions.
    source: String,
    partitions: usize,
    dir: PathBuf,
    stop: Arc<AtomicBool>,
    reads: Option<Arc<Reads>>,
    /// Where replicas' checkpoints are shipped.
    changelog: Arc<Changelog>,
    /// What it holds, for the logs: "recommender", "lookup tables" or both.
    holds: &'static str,
    /// The process's lookup tables, which the replica feeds and the tasks read.
    tables: Option<Arc<Tables>>,
    /// Whether the tables hold what the topic held when the replica first
    /// started: the tasks start only then.
    tables_loaded: Arc<AtomicBool>,
    state: State,
    failures: u32,
}

impl Replica {
    /// A replica of the recommender (if `recommender`) and the lookup
    /// tables (`tables`, if any) of the job `planner` plans, reading
    /// every one of the `partitions` of source `source`, with its
    /// checkpoints in `dir`; it starts at the first [`Replica::step`].
    pub(super) fn new(
        planner: Arc<Planner>,
        (source, partitions): (&str, usize),
        dir: PathBuf,
        stop: Arc<AtomicBool>,
        reads: Option<Arc<Reads>>,
        changelog: Arc<Changelog>,
        (recommender, tables): (bool, Option<Arc<Tables>>),
    ) -> Self {
        let holds = match (recommender, tables.is_some()) {
            (true, true) => "recommender, lookup tables",
            (false, true) => "lookup tables",
            _ => "recommender",
        };
        Replica {
            planner,
            source: source.to_owned(),
            partitions,
            dir,
            stop,
            reads,
            changelog,
            holds,
            tables_loaded: Arc::new(AtomicBool::new(tables.is_none())),
            tables,
            state: State::Waiting(Instant::now()),
            failures: 0,
        }
    }

    /// Starts the replica when due, takes it once started, and notices its
    /// end or failure. Returns whether it is done (a bounded source read to
    /// its end).
    pub(super) fn step(&mut self) -> bool {
        self.state = match std::mem::replace(&mut self.state, State::Done) {
            State::Waiting(at) if Instant::now() >= at => match self.spawn_start() {
                Ok(handle) => State::Starting(handle),
                Err(e) => self.failed("could not start", anyhow::Error::from(e).context("spawning its start")),
            },
            State::Starting(handle) if handle.is_finished() => match handle.join() {
                Ok(Ok(job)) => {
                    if let (Some(reads), Some(recommending)) = (&self.reads, job.recommending()) {
                        reads.replica_started(recommending);
                    }
                    tracing::info!(checkpoint = job.restored(), holds = self.holds, "The replica runs.");
                    State::Running(job)
                }
                Ok(Err(e)) => self.failed("could not start", e),
                Err(_) => self.failed("could not start", anyhow::anyhow!("its start panicked")),
            },
            State::Running(job) if job.finished() => match job.wait() {
                Ok(summary) => {
                    tracing::info!(lines = summary.lines, holds = self.holds, "The replica read its input to the end.");
                    if self.tables.is_some() && !self.tables_loaded.swap(true, Ordering::SeqCst) {
                        tracing::info!("The lookup tables are loaded: the tasks start.");
                    }
                    State::Done
                }
                Err(e) => self.failed("failed", e),
            },
            other => other,
        };
        matches!(self.state, State::Done)
    }

    /// Whether the lookup tables (if any) hold every row the topic held
    /// when the replica first started (Kafka Streams bootstraps its global
    /// tables so before its tasks run).
    pub(super) fn tables_loaded(&self) -> bool {
        self.tables_loaded.load(Ordering::SeqCst)
    }

    /// Stops the replica at its last checkpoint.
    pub(super) fn stop(self) {
        let job = match self.state {
            State::Running(job) => job,
            State::Starting(handle) => match handle.join() {
                Ok(Ok(job)) => job,
                _ => return,
            },
            State::Waiting(_) | State::Done => return,
        };
        job.stop();
        if let Err(e) = job.wait() {
            tracing::warn!(error = %format!("{e:#}"), "The replica failed while stopping.");
        }
    }

    fn failed(&mut self, what: &str, e: anyhow::Error) -> State {
        self.failures += 1;
        let delay = Duration::from_millis(500 * u64::from(self.failures.min(20)));
        tracing::error!(
            error = %format!("{e:#}"),
            retry_in_ms = delay.as_millis() as u64,
            "The replica {what}; it starts again from its checkpoint."
        );
        State::Waiting(Instant::now() + delay)
    }

    fn spawn_start(&self) -> std::io::Result<JoinHandle<Result<Job>>> {
        let (planner, source, partitions) = (self.planner.clone(), self.source.clone(), self.partitions);
        let (dir, stop) = (self.dir.clone(), self.stop.clone());
        let changelog = self.changelog.clone();
        let (tables, loaded) = (self.tables.clone(), self.tables_loaded.clone());
        let start = move || -> Result<Job> {
            let mut plan = planner(&|c: &mut Config| edit(c))?;
            let index = plan.sources.iter().position(|s| s.name == source).context("the group's source is gone")?;
            let mut ends = None;
            if let SourceKind::Kafka(k) = &mut plan.sources[index].kind {
                k.scale_out = false;
                k.only = Some((0..partitions as u32).collect());
                if tables.is_some() && !loaded.load(Ordering::SeqCst) {
                    let offsets = freshet_io::kafka::admin::end_offsets(&k.connection, &k.topic, partitions as u32)
                        .context("the lookup tables' topic")?;
                    ends = Some(offsets);
                }
            }
            plan.shared_tables = tables.map(SharedTables::Feeds);
            // Its metrics (events read, lag per partition) apart from the tasks' of the same partitions.
            plan.sources[index].name = format!("{source}-recommender");
            let store = Store::open(&dir, plan.keep_checkpoints)?;
            if store.is_empty()? {
                let stopped = || stop.load(Ordering::SeqCst);
                match changelog.fetch(0, &stopped)?.map(|bytes| postcard::from_bytes::<Checkpoint>(&bytes)) {
                    Some(Ok(cp)) if cp.fingerprint == plan.fingerprint() => {
                        tracing::info!(checkpoint = cp.id, "The replica starts from a shipped checkpoint.");
                        store.write(&cp)?;
                    }
                    Some(Ok(_)) => tracing::info!("The shipped replica checkpoint is of another config; not used."),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "The shipped replica checkpoint does not decode; not used.")
                    }
                    None => {}
                }
            }
            let ship = shipping(changelog);
            let hook: CheckpointHook = match ends {
                Some(ends) => {
                    let load = loading(index, ends, loaded);
                    Arc::new(move |cp: &Checkpoint| {
                        load(cp);
                        ship(cp);
                    })
                }
                None => ship,
            };
            Job::start_task(Arc::new(plan), &dir, stop, hook).context("the replica")
        };
        std::thread::Builder::new().name("start-recommender".into()).spawn(start)
    }
}

/// Ships a replica's checkpoints, at most one every [`SHIP_EVERY`] after
/// the last that reached the broker (each holds the whole model). Every
/// replica ships, not one elected: a group on tansu can leave tasks (task 0
/// too) unassigned for minutes.
fn shipping(changelog: Arc<Changelog>) -> CheckpointHook {
    let writer = (u64::from(std::process::id()) << 32) ^ crate::topology::wall_ms() as u64;
    let last: Mutex<Option<Instant>> = Mutex::new(None);
    Arc::new(move |cp: &Checkpoint| {
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| t.elapsed() < SHIP_EVERY) {
            return;
        }
        let shipped = postcard::to_stdvec(cp)
            .map_err(anyhow::Error::from)
            .and_then(|bytes| changelog.ship(0, writer, cp.id, &bytes).map_err(anyhow::Error::from));
        match shipped {
            Ok(()) => *last = Some(Instant::now()),
            // The next checkpoint tries again (a topic just created may not take records yet).
            Err(e) => tracing::warn!(
                checkpoint = cp.id,
                error = %format!("{e:#}"),
                "Could not ship the replica's checkpoint; the next one is tried."
            ),
        }
    })
}

/// Marks the lookup tables loaded at the first checkpoint of the replica
/// whose positions (in its source, `index`) reached `ends` on every
/// partition, or did not move over [`STILL_FOR`] (a transactional
/// producer's last offset is a commit marker, never read as a record):
/// a checkpoint's tables hold every row its positions read.
fn loading(index: usize, ends: Vec<u64>, loaded: Arc<AtomicBool>) -> impl Fn(&Checkpoint) {
    let last: Mutex<Option<(Vec<u64>, Instant)>> = Mutex::new(None);
    move |cp: &Checkpoint| {
        if loaded.load(Ordering::SeqCst) {
            return;
        }
        let positions: Vec<u64> = (0..ends.len() as u32)
            .map(|p| {
                let read = cp.sources.get(index).and_then(|s| s.partitions.iter().find(|(q, _)| *q == p));
                read.map_or(0, |(_, next)| *next)
            })
            .collect();
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        let still = match &*last {
            Some((before, since)) if *before == positions => since.elapsed() >= STILL_FOR,
            _ => {
                *last = Some((positions.clone(), Instant::now()));
                false
            }
        };
        if still || positions.iter().zip(&ends).all(|(at, end)| at >= end) {
            loaded.store(true, Ordering::SeqCst);
            tracing::info!(checkpoint = cp.id, ?positions, "The lookup tables are loaded: the tasks start.");
        }
    }
}

/// The replica's config: the flows and the recommender, nothing that
/// writes (the tasks write every output) and no features (the tasks keep them).
fn edit(config: &mut Config) {
    config.features.clear();
    config.sinks.clear();
    let learns = config.recommender.is_some();
    for flow in &mut config.flows {
        // Tables take their rows before the stages run: without a recommender, no stage has a use here.
        flow.stages.retain(|s| learns && !matches!(s, StageConfig::Route { .. }));
    }
    config.pipeline.dead_letter = None;
    config.pipeline.unmatched = None;
}
