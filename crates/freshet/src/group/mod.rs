//! Scaling out with state: the processes that run one config with the same
//! consumer group share the source topic's partitions as tasks, Kafka
//! Streams' model, with no protocol of Freshet's own.
//!
//! A task is one input partition. Its features keyed by the field the topic
//! is keyed by (`partition_key`, e.g. user_id) are computed on the
//! partition itself (the *input* half). Features keyed by another field
//! (item_id) are fed through the repartition topic
//! `{group}-{source}-by-{field}`, with as many partitions as the input: the
//! input half routes its flows' events there, keyed by the field, and the
//! task's *repartitioned* half reads its partition of it and computes them.
//! Each record's key is its writer task and number, so a half that runs
//! again from a checkpoint writes the same records and the reader drops
//! them; an upstream's end of input travels as an end marker in every
//! partition, its watermark as a watermark marker after each of its
//! checkpoints (besides the events' own times), and its input's idleness
//! as an idle marker, so a reader's watermark is the minimum over all
//! upstream tasks that are not idle (an upstream counts as a partition of
//! the reader's source), also those that send it no events.
//!
//! Each half runs as a job of its own, with checkpoints (state, positions,
//! sink positions) written locally and shipped to the half's partition of a
//! changelog topic (`{group}-{source}-changelog`, `…-by-{field}-changelog`):
//! each holds the half's whole state, so at most one every few seconds,
//! and the newest when the half stops or ends.
//! When the group gives a partition to this process (at start, or because
//! another process left or died), both halves first restore their last
//! complete checkpoint from the changelog and go on from there; when the
//! group takes a partition away, they stop. Results are keyed, so what a
//! half writes again after a move replaces the same records.
//!
//! Each process writes to the group's members topic which tasks it runs,
//! that it is alive (every few seconds), and when a half of a bounded job
//! is done ([`Members`]). A bounded job's process ends once every task of
//! the group is done, its own and the others' (a half has read its input to
//! the end; the repartitioned half once every upstream task has), and no
//! rebalance is under way (it may bring more tasks, and a member that leaves
//! mid-rebalance can leave the group stuck on tansu); an unbounded one runs
//! until stopped. A process that sees a task not done without a live owner
//! for a while joins the group again ([`Orphans`]), so a member that died
//! for good does not keep its tasks, whichever of their halves it had
//! finished.
//!
//! Reads of the tasks' features are answered by the process that runs the
//! entity's task, whichever process they are sent to ([`reads`]).
//!
//! A recommender does not split by partition (its item model learns from
//! every user): each process runs a replica of it over every partition
//! ([`replica`]), which answers the recommendations asked of that process.
//! A bounded job's process also waits for its replica to read the input to
//! the end. Lookup tables do not split either (an event's row may be in any
//! partition): the replica feeds the process's tables, its tasks read them,
//! and they start once the replica has loaded what the topic held.

pub mod reads;
mod replica;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use freshet_engine::shard::Shard;
use freshet_engine::time::WATERMARK_MIN;
use freshet_io::kafka::Connection;
use freshet_io::kafka::group::{Changelog, Markers, Membership};
use freshet_io::kafka::members::Members;
use freshet_io::kafka::sink::Repartition;
use freshet_io::kafka::source::KafkaSourceConfig;
use freshet_io::kafka::standby::Standby;
use freshet_io::kafka::tombstones::Tombstones;
use freshet_io::sink::Target;

use crate::checkpoint::{Checkpoint, Store};
use crate::config::model::{Config, SinkConfig, SourceConfig, StageConfig};
use crate::config::plan::{Plan, SharedTables, SourceKind};
use crate::topology::{CheckpointHook, Job};

/// Plans the job from its config file after an edit (each half of each
/// task runs its own copy).
pub type Planner = dyn Fn(&dyn Fn(&mut Config)) -> Result<Plan> + Send + Sync;

/// The sink the input half routes events to the repartition topic through.
const REPARTITION_SINK: &str = "repartition";
/// How long a bounded job's process given no task stays in the group.
const IDLE_MEMBER_WAIT: Duration = Duration::from_secs(15);
/// How long a bounded job's process that is done stays in the group before
/// it leaves: long enough (heartbeats go every second) to hear of a
/// rebalance another member's leave or join started, and take part in it.
const LEAVE_SETTLE: Duration = Duration::from_secs(3);
/// The longest a done process waits for a rebalance to end before it
/// leaves anyway.
const REBALANCE_WAIT: Duration = Duration::from_secs(120);
/// At most one checkpoint of a half goes to its changelog this often.
const SHIP_EVERY: Duration = Duration::from_secs(5);
/// And at most once in this many times what the last one took to ship: a
/// big state (each checkpoint is the whole of it) takes a tenth of the
/// time, and of the broker, at most.
const SHIP_DUTY: u32 = 10;
/// How long a restore waits for a standby copy to read up to its
/// changelog's end (it follows the changelog within milliseconds unless the
/// broker is slow) before it reads the changelog itself.
const STANDBY_WAIT: Duration = Duration::from_secs(2);
/// A repartitioned half's idle timeout: in effect never.
const UPSTREAM_IDLE_TIMEOUT: &str = "3650days";
/// A task owned elsewhere, not done, that no member alive claimed this
/// long is taken for one nobody runs (see [`Orphans`]); twice as long after
/// each time this process joined again for one, up to [`ORPHAN_AFTER_MAX`].
const ORPHAN_AFTER: Duration = Duration::from_secs(30);
const ORPHAN_AFTER_MAX: Duration = Duration::from_secs(120);
/// A rebalance of this process's membership (its tasks revoked, no new
/// assignment yet) that lasts this long is taken for one that will not end
/// (a group re-forming around a member that died mid-rebalance), and the
/// process joins the group again; at most once in this long.
const REBALANCE_STUCK: Duration = Duration::from_secs(60);
/// How often a process says it is alive (its claim again, in the members
/// topic) and looks for tasks nobody runs.
const ORPHAN_CHECK_EVERY: Duration = Duration::from_secs(5);

/// The group's source: its index and settings.
pub fn grouped_source(plan: &Plan) -> Option<(usize, &KafkaSourceConfig)> {
    let p = &plan.pipeline;
    let stateful = !p.features.is_empty() || p.recommender.is_some() || !p.tables.is_empty();
    plan.sources.iter().enumerate().find_map(|(i, s)| match &s.kind {
        SourceKind::Kafka(k) if k.in_tasks(stateful) => Some((i, k)),
        _ => None,
    })
}

/// Half of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Half {
    /// On the input partition: the features keyed by the partition key, and
    /// routing to the repartition topic.
    Input,
    /// On the repartition topic's partition: the other features.
    Repartitioned,
}

impl Half {
    /// Its name in the group's task statuses.
    fn name(self) -> &'static str {
        match self {
            Half::Input => "input",
            Half::Repartitioned => "repartitioned",
        }
    }

    /// The half that computes a feature keyed by `key`: the input half when
    /// the key holds the field the input is partitioned by.
    fn of<F: AsRef<str>>(key: &[F], partition_key: &str) -> Half {
        if key.iter().any(|f| f.as_ref() == partition_key) { Half::Input } else { Half::Repartitioned }
    }
}

/// How the job splits into halves.
struct Layout {
    /// The source's index and name.
    source: usize,
    name: String,
    connection: Connection,
    /// Partitions of the input (and of the repartition topic).
    partitions: usize,
    /// The field events are repartitioned by, when some feature needs it.
    by: Option<String>,
    /// The repartition topic.
    repartition_topic: String,
    bounded: bool,
    /// The consumer group (prefix of the group's topics).
    group: String,
}

impl Layout {
    /// How `plan`'s source `source` (with `partitions`) splits: whether some
    /// feature needs the repartition topic, and by which field.
    fn of(plan: &Plan, source: usize, partitions: usize) -> Result<Layout> {
        let SourceKind::Kafka(k) = &plan.sources[source].kind else {
            anyhow::bail!("source {} is not a Kafka source", plan.sources[source].name)
        };
        let key = k.partition_key.as_deref().unwrap_or_default();
        let features = plan.pipeline.features.iter().map(|f| f.key.as_slice());
        let by = crate::config::kafka::repartition_field(key, features).map(str::to_owned);
        let name = plan.sources[source].name.clone();
        Ok(Layout {
            source,
            repartition_topic: format!("{}-{name}-by-{}", k.group, by.as_deref().unwrap_or("none")),
            name,
            connection: k.connection.clone(),
            partitions,
            by,
            bounded: plan.bounded(),
            group: k.group.clone(),
        })
    }
}

/// Creates what the group shares when missing: the changelog topic of each
/// half, the repartition topic, and the output topics (once here, not by
/// every task's sinks). Returns the changelog of each half a task has.
fn create_topics(plan: &Plan, layout: &Layout) -> Result<BTreeMap<Half, Arc<Changelog>>> {
    let name = &layout.name;
    let changelog = |suffix: &str| -> Result<Arc<Changelog>> {
        let topic = format!("{}-{name}{suffix}-changelog", layout.group);
        let log = Changelog::open(&layout.connection, &topic, layout.partitions)
            .with_context(|| format!("source {name}: the changelog topic {topic}"))?;
        Ok(Arc::new(log))
    };
    let mut changelogs = BTreeMap::from([(Half::Input, changelog("")?)]);
    if let Some(by) = &layout.by {
        let spec = freshet_io::kafka::admin::TopicSpec {
            name: layout.repartition_topic.clone(),
            partitions: layout.partitions as i32,
            replication: 1,
            compacted: false,
        };
        freshet_io::kafka::admin::ensure_topic(&layout.connection, &spec)
            .with_context(|| format!("source {name}: the repartition topic"))?;
        changelogs.insert(Half::Repartitioned, changelog(&format!("-by-{by}"))?);
    }
    for sink in &plan.sinks {
        if let Target::Kafka(k) = &sink.target
            && let Some(spec) = &k.create
        {
            freshet_io::kafka::admin::ensure_topic(&k.connection, spec)
                .with_context(|| format!("sink {}", sink.name))?;
        }
    }
    Ok(changelogs)
}

/// Runs this process's share of the group until the tasks it owns end
/// (bounded) or `stop` is set; with `reads`, tells the group where its
/// tasks' features are read and keeps `reads` up to date.
pub fn run(
    plan: &Plan,
    planner: Arc<Planner>,
    data_dir: &Path,
    stop: Arc<AtomicBool>,
    reads: Option<Arc<reads::Reads>>,
) -> Result<()> {
    let (index, source) = grouped_source(plan).context("the job has no source that scales out with state")?;
    let name = plan.sources[index].name.clone();
    let stopped = || stop.load(Ordering::SeqCst);
    let mut membership = Membership::join(&name, &source.connection, (&source.topic, &source.group), &stopped)
        .with_context(|| format!("source {name}"))?;
    let layout = Layout::of(plan, index, membership.partitions())?;
    let changelogs = create_topics(plan, &layout)?;
    // Who runs which task, who is alive, which halves are done (and, when
    // this process serves, where it answers).
    let topic = format!("{}-{name}-members", layout.group);
    let address = match &reads {
        Some(r) => r.advertised().to_owned(),
        None => format!(
            "{}{}-{}",
            freshet_io::kafka::members::UNSERVED_PREFIX,
            std::process::id(),
            crate::topology::wall_ms()
        ),
    };
    let members = Arc::new(
        Members::open(&layout.connection, &topic, &address)
            .with_context(|| format!("source {name}: the members topic {topic}"))?,
    );
    if let Some(reads) = &reads {
        let tombstones = reads
            .forgets()
            .map(|_| Tombstones::open(&layout.connection, &source.topic, layout.partitions, source.partitioner))
            .transpose()
            .with_context(|| format!("source {name}: its tombstones"))?;
        reads.joined(layout.partitions, members.clone(), tombstones);
    }
    let forget = |key: Key| {
        if let Some(r) = &reads {
            r.stopped(key);
        }
    };
    let halves: Vec<Half> = changelogs.keys().copied().collect();
    let tables = (!plan.pipeline.tables.is_empty())
        .then(|| Arc::new(freshet_engine::lookup::Tables::new(plan.pipeline.tables.len())));
    let mut replica = if plan.pipeline.recommender.is_some() || tables.is_some() {
        let topic = format!("{}-{name}-recommender-changelog", layout.group);
        let changelog = Changelog::open(&layout.connection, &topic, 1)
            .with_context(|| format!("source {name}: the recommender's changelog topic {topic}"))?;
        let source = (name.as_str(), layout.partitions);
        let dir = data_dir.join("recommender");
        let changelog = Arc::new(changelog);
        Some(replica::Replica::new(
            planner.clone(),
            source,
            dir,
            stop.clone(),
            reads.clone(),
            changelog,
            (plan.pipeline.recommender.is_some(), tables.clone()),
        ))
    } else {
        None
    };
    let commits = Arc::new(std::sync::Mutex::new(Vec::<(u32, u64)>::new()));
    let standbys = if source.standby {
        let standby = |(half, log): (&Half, &Arc<Changelog>)| -> Result<(Half, Standby)> {
            let copy = Standby::start(log).with_context(|| format!("source {name}: standby of {}", log.topic()))?;
            Ok((*half, copy))
        };
        changelogs.iter().map(standby).collect::<Result<_>>()?
    } else {
        BTreeMap::new()
    };
    let starter = Arc::new(Starter {
        planner,
        layout,
        changelogs,
        stop: stop.clone(),
        commits: commits.clone(),
        tasks_dir: data_dir.join("tasks"),
        tables,
        standbys,
    });
    let mut running: BTreeMap<Key, Running> = BTreeMap::new();
    // Halves being restored and started, off this thread: the group is served meanwhile.
    let mut starting: BTreeMap<Key, std::thread::JoinHandle<Result<Running>>> = BTreeMap::new();
    let mut retry_at: BTreeMap<Key, Instant> = BTreeMap::new();
    let mut owned: Vec<u32> = Vec::new();
    let mut done: BTreeSet<Key> = BTreeSet::new();
    let mut assigned_at: Option<Instant> = None;
    // Since when this process has had nothing left to do (bounded jobs).
    let mut done_at: Option<Instant> = None;
    let mut failures = 0u32;
    let mut orphans = Orphans::default();
    // A half that stops ships its newest checkpoint: its next owner starts there.
    let halt = |(job, shipper): Running| {
        job.stop();
        let _ = job.wait();
        shipper.flush();
    };
    loop {
        if stopped() {
            tracing::info!("Stopping: the tasks stop at their last checkpoint.");
            if let Some(r) = replica.take() {
                r.stop();
            }
            std::mem::take(&mut running).into_values().for_each(halt);
            for h in std::mem::take(&mut starting).into_values() {
                if let Ok(Ok(half)) = h.join() {
                    halt(half);
                }
            }
            return Ok(());
        }
        if let Some(assigned) = membership.poll(Duration::from_millis(100)) {
            assigned_at = Some(Instant::now());
            for key in running.keys().copied().filter(|(p, _)| !assigned.contains(p)).collect::<Vec<_>>() {
                forget(key);
                running.remove(&key).map(halt);
            }
            if let Err(e) = members.announce(&assigned) {
                tracing::warn!(error = %e, "Could not tell the group which tasks run here; reads of them may not find this process.");
            }
            if let Some(r) = &reads {
                r.assigned(&assigned);
            }
            for p in owned.iter().filter(|p| !assigned.contains(p)) {
                tracing::info!(task = p, "Task moved to another process; stopped here.");
            }
            done.retain(|(p, _)| assigned.contains(p));
            // Not done (a status from an earlier run of a bounded job may say
            // so): said at once, not when the half starts (after the replica's
            // tables load, two starts at a time), so that the group does not
            // count it done if this process dies before it starts it.
            for key in assigned.iter().flat_map(|&p| halves.iter().map(move |&h| (p, h))) {
                if !done.contains(&key)
                    && !running.contains_key(&key)
                    && let Err(e) = members.task_status(key.0, key.1.name(), false)
                {
                    tracing::debug!(task = key.0, half = ?key.1, error = %e, "Could not tell the group the half is not done.");
                }
            }
            owned = assigned;
        }
        for (p, next) in std::mem::take(&mut *commits.lock().unwrap_or_else(|e| e.into_inner())) {
            membership.commit(p, next);
        }
        let mut failed = |key: Key, what: &str, e: anyhow::Error| {
            failures += 1;
            let (task, half) = key;
            tracing::error!(task, ?half, error = %format!("{e:#}"), "{what}");
            // The broker may be away for a while: each try waits longer.
            retry_at.insert(key, Instant::now() + Duration::from_millis(500 * u64::from(failures.min(20))));
        };
        for key in starting.iter().filter(|(_, h)| h.is_finished()).map(|(k, _)| *k).collect::<Vec<_>>() {
            let Some(handle) = starting.remove(&key) else { continue };
            match handle.join() {
                Ok(Ok(half)) if owned.contains(&key.0) => {
                    if let Some(r) = &reads {
                        r.started(key, half.0.views());
                    }
                    running.insert(key, half);
                }
                Ok(Ok(half)) => halt(half),
                Ok(Err(e)) => failed(key, "Task could not start; trying again.", e),
                Err(_) => failed(key, "Task start panicked; trying again.", anyhow::anyhow!("panic")),
            }
        }
        // Halves that ended: a bounded one is done; a failed one starts again.
        for key in running.iter().filter(|(_, (job, _))| job.finished()).map(|(k, _)| *k).collect::<Vec<_>>() {
            let Some((job, shipper)) = running.remove(&key) else { continue };
            let (p, half) = key;
            let ended = job.wait();
            shipper.flush();
            let ended = ended.and_then(|summary| {
                if let Some(upstream) = &shipper.upstream {
                    upstream.markers.end().context("marking the end of its repartitioned events")?;
                }
                Ok(summary)
            });
            match ended {
                Ok(summary) => {
                    // Its last checkpoint is in the changelog: the group may count it done.
                    if let Err(e) = members.task_status(p, half.name(), true) {
                        tracing::warn!(task = p, ?half, error = %e, "Could not tell the group the half is done.");
                    }
                    tracing::info!(task = p, ?half, lines = summary.lines, "Task half read its input to the end.");
                    done.insert(key);
                }
                Err(e) => {
                    forget(key);
                    failed(key, "Task failed; it starts again from its changelog.", e)
                }
            }
        }
        let now = Instant::now();
        // Tasks look rows up in the replica's tables: they start once it has loaded them.
        let tables_loaded = replica.as_ref().is_none_or(replica::Replica::tables_loaded);
        for p in owned.clone().into_iter().filter(|_| tables_loaded) {
            for &half in &halves {
                let key = (p, half);
                let busy = running.contains_key(&key) || starting.contains_key(&key) || done.contains(&key);
                // Two at a time: each start opens its clients and reads a changelog.
                if busy || starting.len() >= 2 || retry_at.get(&key).is_some_and(|t| *t > now) {
                    continue;
                }
                let starter = starter.clone();
                let handle = std::thread::Builder::new()
                    .name(format!("start-task-{p}"))
                    .spawn(move || starter.start(key))
                    .context("spawning a task start")?;
                starting.insert(key, handle);
            }
        }
        if orphans.due() {
            if let Err(e) = members.heartbeat() {
                tracing::debug!(error = %e, "Could not tell the group this process is alive.");
            }
            let rebalancing = membership.rebalancing_for();
            if orphans.rebalance_stuck(rebalancing, Instant::now()) {
                tracing::warn!(
                    waited_s = rebalancing.unwrap_or_default().as_secs(),
                    "The group's rebalance has not given this process its tasks for a while; joining the group \
                     again so that it re-forms."
                );
                if let Err(e) = membership.rejoin() {
                    tracing::error!(error = %format!("{e:#}"), "Could not join the group again.");
                }
                orphans.rejoined_for_a_rebalance();
            }
            // (Not when every task is here: none can be orphaned.)
            if owned.len() < starter.layout.partitions && rebalancing.is_none() {
                let unclaimed = |p: u32| {
                    !halves.iter().all(|h| members.is_done(p, h.name())) && !members.claimed_alive(p, ORPHAN_AFTER)
                };
                let tasks = (0..starter.layout.partitions as u32).filter(|p| !owned.contains(p));
                if let Some(p) = orphans.stuck(tasks.filter(|&p| unclaimed(p)), Instant::now()) {
                    tracing::warn!(
                        task = p,
                        waited_s = orphans.after.as_secs(),
                        "A task not done has had no live owner for a while: taken for one nobody runs; \
                         joining the group again so that it re-forms."
                    );
                    if let Err(e) = membership.rejoin() {
                        tracing::error!(error = %format!("{e:#}"), "Could not join the group again.");
                    }
                    orphans.rejoined();
                }
            }
        }
        let replica_done = replica.as_mut().is_none_or(replica::Replica::step);
        // A bounded job ends when every task is done, here or elsewhere: a
        // process must not end while a task it does not run is left undone
        // (its owner may have died; the orphan check gives it to a live one).
        let group_done = owned.len() == starter.layout.partitions
            || (0..starter.layout.partitions as u32)
                .all(|p| owned.contains(&p) || halves.iter().all(|h| members.is_done(p, h.name())));
        let all_done =
            replica_done && group_done && owned.iter().all(|p| halves.iter().all(|h| done.contains(&(*p, *h))));
        // A process given nothing waits a while: members join one by one, and
        // the group may yet need it.
        let may_end = !owned.is_empty() || assigned_at.is_some_and(|t| t.elapsed() >= IDLE_MEMBER_WAIT);
        let ending = starter.layout.bounded
            && assigned_at.is_some()
            && running.is_empty()
            && starting.is_empty()
            && all_done
            && may_end;
        // A rebalance in flight is seen through first: the group may hand
        // this process more tasks, and (with tansu) it must not leave then.
        let rebalancing = membership.rebalancing_for().is_some_and(|t| t < REBALANCE_WAIT);
        match (ending && !rebalancing, done_at) {
            (false, _) => done_at = None,
            (true, None) => done_at = Some(Instant::now()),
            (true, Some(t)) if t.elapsed() >= LEAVE_SETTLE => {
                tracing::info!(tasks = ?owned, "Every task of this process read its input to the end.");
                membership.lapse();
                return Ok(());
            }
            (true, Some(_)) => {}
        }
    }
}

/// Spots tasks that nobody runs. tansu 0.6.0 goes on assigning the
/// partitions of a member that died to it until the group changes, so a
/// group that lost a member for good would never run them again (a bounded
/// one would wait forever: its repartitioned halves for their end markers,
/// and every process for the group's tasks to be done). A task owned
/// elsewhere, not done, that no live member claims (every member says it is
/// alive every few seconds, [`Members::heartbeat`]) for [`ORPHAN_AFTER`] is
/// taken for one nobody runs, and the process joins the group again: the
/// group re-forms and assigns it. The wait doubles after each rejoin, so
/// that a group slow to re-form is not made to start over and over.
struct Orphans {
    last_check: Option<Instant>,
    /// Per task without a live owner: since when.
    seen: BTreeMap<u32, Instant>,
    /// How long a task may stay so.
    after: Duration,
    /// When this process last joined the group again (for either reason).
    last_rejoin: Option<Instant>,
}

impl Default for Orphans {
    fn default() -> Self {
        Orphans { last_check: None, seen: BTreeMap::new(), after: ORPHAN_AFTER, last_rejoin: None }
    }
}

impl Orphans {
    /// After joining the group again: every task is watched anew, for twice as long.
    fn rejoined(&mut self) {
        self.seen.clear();
        self.after = (self.after * 2).min(ORPHAN_AFTER_MAX);
        self.last_rejoin = Some(Instant::now());
    }

    /// After joining the group again because a rebalance did not end: the
    /// tasks watched stay watched, for as long as before.
    fn rejoined_for_a_rebalance(&mut self) {
        self.last_rejoin = Some(Instant::now());
    }

    /// Whether a rebalance that has gone on for `rebalancing_for` at `now`
    /// is stuck: [`REBALANCE_STUCK`] long, and as long since the last rejoin
    /// (a rejoin starts a rebalance of its own, which may not say so).
    fn rebalance_stuck(&self, rebalancing_for: Option<Duration>, now: Instant) -> bool {
        rebalancing_for.is_some_and(|t| t >= REBALANCE_STUCK)
            && self.last_rejoin.is_none_or(|at| now.duration_since(at) >= REBALANCE_STUCK)
    }

    /// Whether a check is due.
    fn due(&mut self) -> bool {
        if self.last_check.is_some_and(|t| t.elapsed() < ORPHAN_CHECK_EVERY) {
            return false;
        }
        self.last_check = Some(Instant::now());
        true
    }

    /// Notes the tasks that have no live owner at `now` (others elsewhere
    /// have one, or are done); returns one that has had none for `self.after`.
    fn stuck(&mut self, ownerless: impl Iterator<Item = u32>, now: Instant) -> Option<u32> {
        let ownerless: BTreeSet<u32> = ownerless.collect();
        self.seen.retain(|p, _| ownerless.contains(p));
        for &p in &ownerless {
            self.seen.entry(p).or_insert(now);
        }
        self.seen.iter().find(|(_, since)| now.duration_since(**since) >= self.after).map(|(p, _)| *p)
    }
}

/// A half of a task: (partition, half).
type Key = (u32, Half);
/// A half running here, and what ships its checkpoints.
type Running = (Job, Arc<Shipper>);

/// What starting a task needs, shared with the threads that start them.
struct Starter {
    planner: Arc<Planner>,
    layout: Layout,
    changelogs: BTreeMap<Half, Arc<Changelog>>,
    stop: Arc<AtomicBool>,
    commits: Arc<std::sync::Mutex<Vec<(u32, u64)>>>,
    tasks_dir: std::path::PathBuf,
    /// The lookup tables the replica feeds (the tasks read them).
    tables: Option<Arc<freshet_engine::lookup::Tables>>,
    /// With `standby`: each half's standby copies of every task.
    standbys: BTreeMap<Half, Standby>,
}

impl Starter {
    fn start(&self, (p, half): Key) -> Result<Running> {
        let dir = self.tasks_dir.join(format!("{p}-{half:?}").to_lowercase());
        start(self, (p, half), &dir).with_context(|| format!("task {p} ({half:?} half)"))
    }
}

/// The config of one half: the input half keeps the features keyed by the
/// partition key and routes the events of the others' flows to the
/// repartition topic; the repartitioned half reads that topic, keeps the
/// others, and runs its flows without the stages the input half ran (their
/// events were shaped and checked upstream).
///
/// Dedup is decided where feature records meet state, so each half keeps
/// its own tables: the input half routes a flow's events before its first
/// dedup stage (a route after one would write duplicates), and the
/// repartitioned half runs that stage and the ones after it. Copies of an
/// event carry its keys, so they reach the same task and shard in both halves.
fn edit(config: &mut Config, layout: &Layout, half: Half) {
    // The recommender is not split by partition: it runs in the process's replica.
    config.recommender = None;
    let Some(SourceConfig::Kafka { partition_key, topic, .. }) = config.sources.get_mut(&layout.name) else { return };
    let key = partition_key.clone().unwrap_or_default();
    let local = |k: &[String]| Half::of(k, &key) == Half::Input;
    match half {
        Half::Input => {
            let moved: BTreeSet<String> =
                config.features.iter().filter(|f| !local(&f.key)).map(|f| f.flow.clone()).collect();
            config.features.retain(|f| local(&f.key));
            for flow in config.flows.iter_mut().filter(|f| moved.contains(&f.name)) {
                let at = first_dedup(&flow.stages);
                flow.stages.insert(at, StageConfig::Route { sink: REPARTITION_SINK.into() });
            }
            if !moved.is_empty() {
                config.sinks.insert(
                    REPARTITION_SINK.into(),
                    SinkConfig::Kafka {
                        brokers: layout.connection.brokers.clone(),
                        topic: layout.repartition_topic.clone(),
                        format: Some("ndjson".into()),
                        key: Some("none".into()),
                        partitions: None,
                        replication: None,
                        compacted: None,
                        delivery: None,
                        transactional_id: None,
                        properties: Some(layout.connection.properties.iter().cloned().collect()),
                    },
                );
            }
        }
        Half::Repartitioned => {
            *topic = layout.repartition_topic.clone();
            config.features.retain(|f| !local(&f.key));
            for flow in &mut config.flows {
                let upstream = first_dedup(&flow.stages);
                flow.stages.drain(..upstream);
            }
            // Its events were accepted upstream: nothing of them is dead-lettered twice.
            config.pipeline.dead_letter = None;
            config.pipeline.unmatched = None;
            // An upstream task without records for a while is not idle but
            // away (moving, restarting): its events still come, so the
            // watermark waits for every upstream until its end marker.
            config.event_time.idle_timeout = Some(UPSTREAM_IDLE_TIMEOUT.into());
        }
    }
    // Each sink is a producer of each task: the half keeps those it writes.
    let mut used: BTreeSet<String> =
        [&config.pipeline.dead_letter, &config.pipeline.unmatched].into_iter().flatten().cloned().collect();
    for f in &config.features {
        used.extend([&f.sink, &f.late_sink, &f.updates_sink].into_iter().flatten().cloned());
    }
    for flow in &config.flows {
        for stage in &flow.stages {
            if let StageConfig::Route { sink } = stage {
                used.insert(sink.clone());
            }
        }
    }
    config.sinks.retain(|name, _| used.contains(name));
}

/// Where a flow's first dedup stage is (its length when it has none).
fn first_dedup(stages: &[StageConfig]) -> usize {
    stages.iter().position(|s| matches!(s, StageConfig::Dedup { .. })).unwrap_or(stages.len())
}

/// Restores half `half` of task `partition` from its changelog into `dir`
/// and starts it.
fn start(starter: &Starter, (partition, half): Key, dir: &Path) -> Result<Running> {
    let Starter { planner, layout, stop, .. } = starter;
    let changelog = &starter.changelogs[&half];
    let mut plan = planner(&|c: &mut Config| edit(c, layout, half))?;
    // Lookups read the replica's tables, which hold every partition's rows.
    plan.shared_tables = starter.tables.clone().map(SharedTables::Reads);
    if let SourceKind::Kafka(k) = &mut plan.sources[layout.source].kind {
        k.only = Some(vec![partition]);
        k.scale_out = false;
        if half == Half::Repartitioned {
            k.upstreams = Some(layout.partitions as u32);
        }
    }
    for sink in &mut plan.sinks {
        if let Target::Kafka(k) = &mut sink.target {
            k.create = None;
            if let (REPARTITION_SINK, Some(field)) = (sink.name.as_str(), &layout.by) {
                k.repartition = Some(Repartition { field: field.clone(), upstream: partition });
            }
        }
    }
    let started = Instant::now();
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    let store = Store::open(dir, plan.keep_checkpoints)?;
    let stopped = || stop.load(Ordering::SeqCst);
    // A standby copy is the changelog's newest checkpoint, read as it was written.
    let copy = match starter.standbys.get(&half) {
        Some(standby) => standby.newest(partition, changelog.offsets(partition)?.1, STANDBY_WAIT),
        None => None,
    };
    let (restored, from) = match copy {
        Some(copy) => (Some(copy), "standby"),
        None => (changelog.fetch(partition, &stopped)?.map(Arc::new), "changelog"),
    };
    let bytes = restored.as_ref().map_or(0, |b| b.len());
    let checkpoint = match restored {
        Some(bytes) => {
            let cp: Checkpoint =
                postcard::from_bytes(&bytes).with_context(|| format!("decoding a checkpoint from the {from}"))?;
            store.write(&cp)?;
            Some(cp.id)
        }
        None => None,
    };
    let took = started.elapsed();
    let label = format!("{partition}-{half:?}").to_lowercase();
    metrics::gauge!(crate::metrics::TASK_RESTORE_SECONDS, "task" => label).set(took.as_secs_f64());
    metrics::counter!(crate::metrics::TASK_RESTORES, "from" => from).increment(1);
    tracing::info!(
        task = partition,
        ?half,
        checkpoint,
        bytes,
        from,
        took_ms = took.as_millis() as u64,
        "Task restored; starting."
    );
    let upstream = match (half, &layout.by) {
        (Half::Input, Some(_)) => Some(Upstream::new(
            Markers::open(&layout.connection, &layout.repartition_topic, partition, layout.partitions)?,
            (!layout.bounded).then(|| Duration::from_millis(plan.pipeline.event_time.idle_timeout.max(0) as u64)),
        )),
        _ => None,
    };
    let shipper = Arc::new(Shipper {
        log: changelog.clone(),
        upstream,
        key: (partition, half),
        source: layout.source,
        writer: (u64::from(std::process::id()) << 32) ^ crate::topology::wall_ms() as u64,
        commits: starter.commits.clone(),
        state: std::sync::Mutex::new(ShipState::default()),
        shipped: AtomicBool::new(false),
    });
    let offered = shipper.clone();
    let hook: CheckpointHook = Arc::new(move |cp| offered.offer(cp));
    Ok((Job::start_task(Arc::new(plan), dir, stop.clone(), hook)?, shipper))
}

/// Ships a half's checkpoints to its changelog partition. Each holds the
/// half's whole state, so at most one goes every [`SHIP_EVERY`] (and every
/// [`SHIP_DUTY`] times its last one's shipping time); the newest goes when
/// the half stops or ends. Any of them is a consistent
/// state: one shipped less often only means a moved task reads more input
/// again. An input half that feeds the repartition topic also tells it its
/// watermark at every checkpoint, and its end.
struct Shipper {
    log: Arc<Changelog>,
    upstream: Option<Upstream>,
    key: Key,
    source: usize,
    /// This run of the half (tells its pieces from another owner's).
    writer: u64,
    commits: Arc<std::sync::Mutex<Vec<(u32, u64)>>>,
    state: std::sync::Mutex<ShipState>,
    /// Whether a checkpoint of this run of the half is in the changelog yet.
    shipped: AtomicBool,
}

#[derive(Default)]
struct ShipState {
    last: Option<Instant>,
    /// How long the last one took to ship.
    took: Duration,
    /// The newest checkpoint not shipped yet.
    pending: Option<Checkpoint>,
}

/// Whether a half whose last checkpoint shipped at `last` and took `took`
/// to ship may ship another at `now`.
fn ship_due(last: Option<Instant>, took: Duration, now: Instant) -> bool {
    last.is_none_or(|t| now.duration_since(t) >= SHIP_EVERY.max(took * SHIP_DUTY))
}

/// An input half's markers in the repartition topic, and what they last told.
struct Upstream {
    markers: Markers,
    /// The half's own idle timeout: its input silent this long, it says so
    /// (not in a bounded job: its input has an end, and a read that stalls
    /// is not an idle input; the end marker releases the readers).
    idle_after: Option<Duration>,
    state: std::sync::Mutex<UpstreamState>,
}

struct UpstreamState {
    /// The watermark last told.
    told: i64,
    /// The input's position at the last checkpoint, and since when it stands there.
    position: Option<u64>,
    since: Instant,
    /// When the input was last said idle (while it stays so).
    idle_told: Option<Instant>,
}

impl Upstream {
    fn new(markers: Markers, idle_after: Option<Duration>) -> Self {
        let state = UpstreamState { told: WATERMARK_MIN, position: None, since: Instant::now(), idle_told: None };
        Self { markers, idle_after, state: std::sync::Mutex::new(state) }
    }

    /// After checkpoint `cp` (its input standing at `position`): tells the
    /// repartition topic the checkpoint's watermark when it moved on (every
    /// record the half routed before it is written: the checkpoint waited
    /// for their acknowledgements, so none of them comes after the marker;
    /// a moved task's first may be below one told before, and readers keep
    /// the highest), and that the half is idle once its input has not moved
    /// for its idle timeout (again every [`SHIP_EVERY`] while it stays so:
    /// a reader restored meanwhile counts it active again).
    fn offer(&self, cp: &Checkpoint, task: u32, position: Option<u64>) {
        let Some(watermark) = cp.shards.iter().map(|s| Shard::snapshot_watermark(s)).min().flatten() else {
            return tracing::warn!(task, checkpoint = cp.id, "A checkpoint without a readable watermark.");
        };
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if watermark != WATERMARK_MIN && watermark > state.told {
            match self.markers.watermark(watermark) {
                Ok(()) => state.told = watermark,
                Err(e) => tracing::warn!(task, error = %e, "Could not tell the repartition topic a watermark."),
            }
        }
        if position != state.position {
            (state.position, state.since, state.idle_told) = (position, Instant::now(), None);
        } else if self.idle_after.is_some_and(|after| state.since.elapsed() >= after)
            && state.idle_told.is_none_or(|t| t.elapsed() >= SHIP_EVERY)
        {
            match self.markers.idle() {
                Ok(()) => {
                    if state.idle_told.is_none() {
                        tracing::info!(task, "The task's input is idle; the repartition topic is told so.");
                    }
                    state.idle_told = Some(Instant::now());
                }
                Err(e) => tracing::warn!(task, error = %e, "Could not tell the repartition topic the task is idle."),
            }
        }
    }
}

impl Shipper {
    fn offer(&self, cp: &Checkpoint) {
        if let Some(upstream) = &self.upstream {
            let task = self.key.0;
            let position = cp.sources.get(self.source).and_then(|s| s.partitions.iter().find(|(p, _)| *p == task));
            upstream.offer(cp, task, position.map(|(_, next)| *next));
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !ship_due(state.last, state.took, Instant::now()) {
            state.pending = Some(cp.clone());
            return;
        }
        state.pending = None;
        let started = Instant::now();
        state.last = Some(started);
        self.ship(cp);
        state.took = started.elapsed();
    }

    /// Ships the newest checkpoint, if it has not gone yet.
    fn flush(&self) {
        let pending = self.state.lock().unwrap_or_else(|e| e.into_inner()).pending.take();
        if let Some(cp) = pending {
            self.ship(&cp);
        }
    }

    fn ship(&self, cp: &Checkpoint) {
        let (partition, half) = self.key;
        let shipped = postcard::to_stdvec(cp)
            .map_err(anyhow::Error::from)
            .and_then(|bytes| self.log.ship(partition, self.writer, cp.id, &bytes).map_err(anyhow::Error::from));
        match shipped {
            Ok(()) => {
                if !self.shipped.swap(true, Ordering::Relaxed) {
                    tracing::info!(
                        task = partition,
                        ?half,
                        checkpoint = cp.id,
                        "Task half's first checkpoint is in the changelog."
                    );
                }
                let position =
                    cp.sources.get(self.source).and_then(|s| s.partitions.iter().find(|(q, _)| *q == partition));
                if let (Half::Input, Some((_, next))) = (half, position) {
                    self.commits.lock().unwrap_or_else(|e| e.into_inner()).push((partition, *next));
                }
            }
            // The next checkpoint tries again; until then a move replays more.
            Err(e) => tracing::warn!(
                task = partition,
                ?half,
                checkpoint = cp.id,
                error = %format!("{e:#}"),
                "Could not ship a checkpoint to the changelog."
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use freshet_engine::flow::Stage;

    use super::*;
    use crate::config::{load, plan};

    #[test]
    fn a_half_ships_every_5_s_or_ten_times_as_long_as_its_last_shipping_took() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert!(ship_due(None, Duration::ZERO, t0), "the first goes at once");
        let small = Duration::from_millis(200);
        assert!(!ship_due(Some(t0), small, at(4_999)) && ship_due(Some(t0), small, at(5_000)));
        let big = Duration::from_millis(2_100);
        assert!(!ship_due(Some(t0), big, at(20_999)) && ship_due(Some(t0), big, at(21_000)));
    }

    #[test]
    fn a_task_without_a_live_owner_for_a_while_is_an_orphan() {
        let mut orphans = Orphans::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // Task 3 has no live owner from the start, task 2 from 30 s on.
        assert_eq!(orphans.stuck([3].into_iter(), at(0)), None);
        assert_eq!(orphans.stuck([3].into_iter(), at(29)), None);
        assert_eq!(orphans.stuck([2, 3].into_iter(), at(30)), Some(3));
        // An owner again (or done), it is none; 2 is one 30 s after it lost its owner.
        assert_eq!(orphans.stuck([2].into_iter(), at(59)), None);
        assert_eq!(orphans.stuck([2].into_iter(), at(60)), Some(2));
        assert_eq!(orphans.stuck([].into_iter(), at(61)), None);
        assert_eq!(orphans.stuck([2].into_iter(), at(62)), None, "watched anew");
        // After a rejoin, a task is one after twice as long.
        orphans.rejoined();
        assert_eq!(orphans.stuck([2].into_iter(), at(200)), None);
        assert_eq!(orphans.stuck([2].into_iter(), at(259)), None);
        assert_eq!(orphans.stuck([2].into_iter(), at(260)), Some(2));
        // And no longer than ORPHAN_AFTER_MAX however many rejoins.
        for _ in 0..5 {
            orphans.rejoined();
        }
        assert_eq!(orphans.after, ORPHAN_AFTER_MAX);
    }

    #[test]
    fn a_rebalance_that_does_not_end_is_joined_again_at_most_once_a_minute() {
        let mut orphans = Orphans::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let secs = |s: u64| Some(Duration::from_secs(s));
        assert!(!orphans.rebalance_stuck(None, at(0)), "no rebalance");
        assert!(!orphans.rebalance_stuck(secs(59), at(0)));
        assert!(orphans.rebalance_stuck(secs(60), at(0)));
        orphans.last_rejoin = Some(at(0));
        // The rejoin's own rebalance may not restart the clock: the last rejoin's time holds it back.
        assert!(!orphans.rebalance_stuck(secs(100), at(59)));
        assert!(orphans.rebalance_stuck(secs(120), at(60)));
    }

    /// Per-user and per-item counts over one scaled-out topic, with a dedup
    /// stage between a filter and a mask.
    const JOB: &str = r#"
        [sources.events]
        type = "kafka"
        brokers = "127.0.0.1:9"
        topic = "events"
        group = "g"
        bounded = true
        scale_out = true
        partition_key = "user_id"

        [sinks.out]
        type = "kafka"
        brokers = "127.0.0.1:9"
        topic = "out"

        [[flows]]
        name = "interactions"
        stages = [
          { type = "filter", when = { field = "type", ne = "bot" } },
          { type = "dedup", key = "event_id", ttl = "1h" },
          { type = "remove", fields = ["ip"] },
        ]

        [[features]]
        name = "per_user"
        flow = "interactions"
        key = ["user_id"]
        window = { type = "tumbling", size = "5m" }
        aggregate = "count"
        sink = "out"
        serve = false

        [[features]]
        name = "per_item"
        flow = "interactions"
        key = ["item_id"]
        window = { type = "tumbling", size = "5m" }
        aggregate = "count"
        sink = "out"
        serve = false
    "#;

    fn kinds(plan: &Plan) -> Vec<&'static str> {
        plan.pipeline.flows[0]
            .stages
            .iter()
            .map(|s| match s {
                Stage::Filter(_) => "filter",
                Stage::Dedup(_) => "dedup",
                Stage::Route(_) => "route",
                _ => "other",
            })
            .collect()
    }

    #[test]
    fn each_half_keeps_its_own_dedup_and_the_input_half_routes_before_it() {
        let config = load::parse(JOB, "t", &|_| None).unwrap();
        let whole = plan::plan(&config, "t", 1, Path::new(".")).expect("a dedup stage scales out with its tasks");
        let layout = Layout::of(&whole, 0, 4).unwrap();
        assert_eq!(layout.by.as_deref(), Some("item_id"));
        let half = |half: Half| {
            let mut c = load::parse(JOB, "t", &|_| None).unwrap();
            edit(&mut c, &layout, half);
            plan::plan(&c, "t", 1, Path::new(".")).unwrap_or_else(|e| panic!("the {half:?} half plans: {e}"))
        };
        // The input half writes each event (duplicates too) to the repartition
        // topic before dedup, then dedups for its own feature.
        assert_eq!(kinds(&half(Half::Input)), ["filter", "route", "dedup", "other"]);
        // The repartitioned half dedups what it reads, then runs what followed.
        assert_eq!(kinds(&half(Half::Repartitioned)), ["dedup", "other"]);
    }
}
