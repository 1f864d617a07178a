//! The bodies of the pipeline threads: dispatcher, decoders, shards, writer.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Result;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use freshet_engine::decode::{Chunk, Decoder};
use freshet_engine::features::SinkBuffer;
use freshet_engine::record::{RecordBatch, ShardInput};
use freshet_engine::shard::{Shard, ShardCopy};
use freshet_engine::time::PartitionId;
use freshet_io::sink::SinkWriter;

use super::{Shared, send, wall_ms};
use crate::checkpoint::{Checkpoint, SourcePosition, Store};
use crate::config::plan::Plan;
use crate::metrics::{DecoderMetrics, ShardMetrics, WriterMetrics};

/// How often the dispatcher ticks when no chunk arrives (idleness, publishing).
const TICK: Duration = Duration::from_millis(50);
/// A shard ships a sink buffer once it holds this much.
const SHIP_BYTES: usize = 256 << 10;

/// A numbered chunk, a checkpoint barrier, or (neither) a tick.
pub(super) struct DecoderMsg {
    seq: u64,
    chunk: Option<Chunk>,
    barrier: Option<u64>,
    now_ms: i64,
    now_us: u64,
}

/// What the writer receives, from shard `shard`.
pub(super) enum WriterMsg {
    /// Formatted rows for one sink.
    Rows { shard: usize, sink: u16, buf: SinkBuffer },
    /// The shard has shipped everything before barrier `id`.
    Barrier { shard: usize, id: u64 },
    /// Shard 0 applied a forget after the rows routed before it: a sink
    /// that carries forgets further (a group's repartition topic) gets it here.
    Forget { shard: usize, forget: freshet_engine::record::Forget },
}

impl WriterMsg {
    fn shard(&self) -> usize {
        match self {
            WriterMsg::Rows { shard, .. } | WriterMsg::Barrier { shard, .. } | WriterMsg::Forget { shard, .. } => {
                *shard
            }
        }
    }
}

/// Parts of a checkpoint, sent to the coordinator.
pub(super) enum CoordMsg {
    /// Source positions at barrier `id` (from the dispatcher).
    Sources { id: u64, positions: Vec<SourcePosition> },
    /// One shard's state at barrier `id`, encoded by the coordinator (so
    /// the shard goes on while the bulk of its model is encoded).
    Shard { id: u64, shard: usize, state: ShardCopy },
    /// Committed sink lengths at barrier `id` (from the writer).
    Sinks { id: u64, lengths: Vec<u64> },
    /// The lookup tables at barrier `id` (from the decoder whose turn it was).
    Tables { id: u64, bytes: Vec<u8> },
}

/// The lookup tables of a job and the turns that order their passes: the
/// decoder with message `seq` runs its table pass once every earlier
/// message's pass is done (see `freshet_engine::lookup`).
pub(super) struct TablePasses {
    pub tables: Arc<freshet_engine::lookup::Tables>,
    /// Whether this job applies upserts and snapshots the tables (else
    /// another job of the process does, and this one only reads them).
    feeds: bool,
    next: std::sync::Mutex<u64>,
    turn: std::sync::Condvar,
}

impl TablePasses {
    pub fn new(tables: Arc<freshet_engine::lookup::Tables>, feeds: bool) -> Self {
        Self { tables, feeds, next: std::sync::Mutex::new(0), turn: std::sync::Condvar::new() }
    }

    /// Waits for `seq`'s turn; false when the job stops first.
    fn wait(&self, seq: u64, shared: &Shared) -> bool {
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        while *next != seq {
            if shared.stop.load(Ordering::SeqCst) {
                return false;
            }
            next = self.turn.wait_timeout(next, Duration::from_millis(100)).unwrap_or_else(|p| p.into_inner()).0;
        }
        true
    }

    /// Ends `seq`'s turn.
    fn done(&self, seq: u64) {
        *self.next.lock().unwrap_or_else(|p| p.into_inner()) = seq + 1;
        self.turn.notify_all();
    }
}

/// What follows a completed checkpoint, per source.
pub(super) struct OnComplete {
    /// Ingest log directories whose covered segments are removed.
    pub logs: Vec<(usize, PathBuf)>,
    /// Kafka sources that commit the checkpoint's offsets to their group.
    pub commits: Vec<(usize, Sender<super::sources::Commits>)>,
    /// Called with each checkpoint once written.
    pub hook: Option<super::CheckpointHook>,
}

/// The dispatcher's checkpoint duties.
pub(super) struct Barriers {
    pub interval: Duration,
    pub next_id: u64,
    pub positions: Vec<SourcePosition>,
    /// Per source: whether it has partitions with their own offsets (Kafka).
    pub partitioned: Vec<bool>,
    pub coordinator: Sender<CoordMsg>,
    /// The last barrier this run injected (0: none yet).
    pub injected: u64,
}

impl Barriers {
    /// Whether the next barrier is due. One checkpoint at a time, as Flink's
    /// default: while one is in flight none starts, and the next starts an
    /// interval after both the last barrier and the last completion, so a
    /// checkpoint slower than the interval (large state) still leaves the
    /// pipeline an interval of undisturbed work between two.
    fn due(&self, last_barrier: Instant, shared: &Shared) -> bool {
        if last_barrier.elapsed() < self.interval {
            return false;
        }
        let (completed, at_us) = *shared.last_checkpoint.lock().unwrap_or_else(|p| p.into_inner());
        let in_flight = self.injected > completed;
        !in_flight && shared.now_us().saturating_sub(at_us) >= self.interval.as_micros() as u64
    }
}

/// Recycled allocations: sink buffers go back from the writer to whoever
/// fills them, record batches from shards to their decoder. Fresh pages cost
/// more than the work (the kernel zeroes them), so the hot path reuses.
#[derive(Clone)]
pub(super) struct Pools {
    pub buffers: (Sender<Vec<u8>>, Receiver<Vec<u8>>),
    /// batches[d]: record batches returning to decoder d.
    pub batches: Vec<(Sender<RecordBatch>, Receiver<RecordBatch>)>,
}

/// Buffers larger than this are freed rather than pooled (a window firing
/// can fill megabytes once; keeping such buffers would hold that memory).
const POOL_MAX_CAPACITY: usize = 1 << 20;

impl Pools {
    pub fn new(decoders: usize) -> Self {
        Self {
            buffers: crossbeam_channel::bounded(64),
            batches: (0..decoders).map(|_| crossbeam_channel::bounded(64)).collect(),
        }
    }

    fn buffer(&self) -> Vec<u8> {
        self.buffers.1.try_recv().unwrap_or_default()
    }

    fn give_buffer(&self, mut b: Vec<u8>) {
        if b.capacity() > 0 && b.capacity() <= POOL_MAX_CAPACITY {
            b.clear();
            let _ = self.buffers.0.try_send(b);
        }
    }

    fn batch(&self, decoder: usize) -> RecordBatch {
        self.batches[decoder].1.try_recv().unwrap_or_default()
    }

    fn give_batch(&self, decoder: usize, mut b: RecordBatch) {
        b.clear();
        let _ = self.batches[decoder].0.try_send(b);
    }
}

/// What every decoder and shard thread sends through.
#[derive(Clone)]
pub(super) struct Links {
    pub writer: Sender<WriterMsg>,
    pub pools: Pools,
    pub shared: Arc<Shared>,
}

/// Numbers chunks and deals them round-robin to decoders; ticks when idle;
/// injects a checkpoint barrier every interval and a last one when the
/// sources end.
pub(super) fn dispatch(
    rx: Receiver<Chunk>,
    txs: Vec<Sender<DecoderMsg>>,
    mut barriers: Option<Barriers>,
    shared: Arc<Shared>,
) {
    let mut seq = 0u64;
    let mut last_barrier = Instant::now();
    let deal = |seq: &mut u64, chunk: Option<Chunk>, barrier: Option<u64>| -> bool {
        let msg = DecoderMsg { seq: *seq, chunk, barrier, now_ms: wall_ms(), now_us: shared.now_us() };
        let ok = send(&txs[(*seq % txs.len() as u64) as usize], msg, &shared);
        *seq += 1;
        ok
    };
    let inject = |seq: &mut u64, b: &mut Barriers| -> bool {
        let id = b.next_id;
        b.next_id += 1;
        b.injected = id;
        let _ = b.coordinator.send(CoordMsg::Sources { id, positions: b.positions.clone() });
        deal(seq, None, Some(id))
    };
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let chunk = match rx.recv_timeout(TICK) {
            Ok(c) => Some(c),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                // Sources ended: a last checkpoint covers everything.
                if let Some(b) = &mut barriers {
                    inject(&mut seq, b);
                }
                return;
            }
        };
        if let (Some(b), Some(c)) = (&mut barriers, &chunk)
            && let Some(p) = b.positions.get_mut(c.source as usize)
        {
            p.advance(c, b.partitioned.get(c.source as usize).copied().unwrap_or(false));
        }
        if !deal(&mut seq, chunk, None) {
            return;
        }
        if let Some(b) = &mut barriers
            && b.due(last_barrier, &shared)
        {
            last_barrier = Instant::now();
            if !inject(&mut seq, b) {
                return;
            }
        }
    }
}

/// Assembles checkpoints from their parts and writes each once complete.
pub(super) fn coordinate(
    store: Store,
    rx: Receiver<CoordMsg>,
    (shards, has_tables): (usize, bool),
    fingerprint: String,
    OnComplete { logs, commits, hook }: OnComplete,
    shared: Arc<Shared>,
) {
    struct Partial {
        started: Instant,
        sources: Option<Vec<SourcePosition>>,
        shards: Vec<Option<Vec<u8>>>,
        sinks: Option<Vec<u64>>,
        tables: Option<Vec<u8>>,
    }
    let mut pending: std::collections::BTreeMap<u64, Partial> = Default::default();
    let metrics = crate::metrics::CheckpointMetrics::new();
    // Source positions of the checkpoints written by this run, newest last.
    // Once they are all the store keeps, a log segment below the oldest is
    // needed by no checkpoint that recovery could fall back to.
    let mut kept: std::collections::VecDeque<Vec<SourcePosition>> = Default::default();
    while let Ok(msg) = rx.recv() {
        let id = match &msg {
            CoordMsg::Sources { id, .. }
            | CoordMsg::Shard { id, .. }
            | CoordMsg::Sinks { id, .. }
            | CoordMsg::Tables { id, .. } => *id,
        };
        let p = pending.entry(id).or_insert_with(|| Partial {
            started: Instant::now(),
            sources: None,
            shards: vec![None; shards],
            sinks: None,
            tables: None,
        });
        match msg {
            CoordMsg::Sources { positions, .. } => p.sources = Some(positions),
            CoordMsg::Shard { shard, state, .. } => p.shards[shard] = Some(state.encode()),
            CoordMsg::Sinks { lengths, .. } => p.sinks = Some(lengths),
            CoordMsg::Tables { bytes, .. } => p.tables = Some(bytes),
        }
        if p.sources.is_none()
            || p.sinks.is_none()
            || p.shards.iter().any(Option::is_none)
            || (has_tables && p.tables.is_none())
        {
            continue;
        }
        let Some(p) = pending.remove(&id) else { continue };
        let cp = Checkpoint {
            id,
            fingerprint: fingerprint.clone(),
            sources: p.sources.unwrap_or_default(),
            shards: p.shards.into_iter().map(Option::unwrap_or_default).collect(),
            sinks: p.sinks.unwrap_or_default(),
            tables: p.tables.unwrap_or_default(),
        };
        match store.write(&cp) {
            Ok(size) => {
                metrics.completed(p.started.elapsed(), size);
                *shared.last_checkpoint.lock().unwrap_or_else(|p| p.into_inner()) = (id, shared.now_us());
                let took_ms = p.started.elapsed().as_millis() as u64;
                tracing::debug!(checkpoint = id, bytes = size, took_ms, "Checkpoint complete.");
                if let Some(hook) = &hook {
                    hook(&cp);
                }
                for (source, tx) in &commits {
                    if let Some(p) = cp.sources.get(*source) {
                        let _ = tx.try_send(p.partitions.clone());
                    }
                }
                kept.push_back(cp.sources);
                if kept.len() > store.keep() {
                    kept.pop_front();
                }
                if kept.len() == store.keep() {
                    remove_covered_segments(&logs, &kept);
                }
            }
            Err(e) => return shared.fail(e.context(format!("writing checkpoint {id}"))),
        }
    }
}

/// Deletes ingest log segments that every kept checkpoint has passed.
fn remove_covered_segments(logs: &[(usize, PathBuf)], kept: &std::collections::VecDeque<Vec<SourcePosition>>) {
    for (source, dir) in logs {
        let Some(floor) = kept.iter().filter_map(|positions| positions.get(*source)).map(|p| p.position).min() else {
            continue;
        };
        match freshet_io::log::remove_below(dir, floor) {
            Ok(0) => {}
            Ok(n) => {
                metrics::counter!(crate::metrics::INGEST_LOG_SEGMENTS_REMOVED).increment(n as u64);
                tracing::debug!(log = %dir.display(), segments = n, below = floor, "Removed covered ingest log segments.");
            }
            Err(e) => tracing::warn!(log = %dir.display(), error = %e, "Could not remove covered ingest log segments."),
        }
    }
}

/// Decodes chunks and fans their records out to every shard.
pub(super) fn decode(
    plan: &Plan,
    index: usize,
    rx: Receiver<DecoderMsg>,
    txs: Vec<Sender<ShardInput>>,
    links: Links,
    mut enricher: Option<super::enrich::Calls>,
    tables: Option<(Arc<TablePasses>, Option<Sender<CoordMsg>>)>,
) {
    let Links { pools, shared, .. } = links;
    let pipeline = &plan.pipeline;
    let mut decoder = Decoder::new(pipeline);
    let metrics = DecoderMetrics::new(plan);
    while let Ok(msg) = rx.recv() {
        if let Some((passes, coordinator)) = &tables {
            // In sequence: this message's table pass (or snapshot, at a barrier).
            if !passes.wait(msg.seq, &shared) {
                return;
            }
            if let (Some(id), Some(c)) = (msg.barrier, coordinator) {
                // Tables read from another job are in that job's checkpoints.
                let bytes = if passes.feeds { passes.tables.snapshot() } else { Vec::new() };
                let _ = c.send(CoordMsg::Tables { id, bytes });
            }
            if let Some(c) = &msg.chunk {
                decoder.table_pass(c, &passes.tables, passes.feeds);
            }
            passes.done(msg.seq);
        }
        let mut out = decoder.output();
        for b in out.shards.iter_mut() {
            *b = pools.batch(index);
        }
        for s in out.outputs.sinks.iter_mut() {
            s.data = pools.buffer();
        }
        if let Some(id) = msg.barrier {
            for tx in &txs {
                let input = ShardInput {
                    seq: msg.seq,
                    partition: None,
                    max_ts: None,
                    end_of_partition: false,
                    idle: false,
                    ingest_ms: msg.now_ms,
                    ingest_us: msg.now_us,
                    batch: RecordBatch::default(),
                    barrier: Some(id),
                    forwarded: None,
                    forget: None,
                };
                if !send(tx, input, &shared) {
                    return;
                }
            }
            continue;
        }
        let forget = msg.chunk.as_ref().and_then(|c| c.forget.clone());
        let (partition, end, idle, ingest_ms, ingest_us) = match &msg.chunk {
            Some(c) => {
                match &mut enricher {
                    Some(e) => decoder.decode_enriched(c, &mut out, e),
                    None => decoder.decode(c, &mut out),
                }
                if let Some(failure) = out.failure.take() {
                    // Policy `fail`: the chunk is not shipped; recovery replays it.
                    shared.fail(
                        anyhow::anyhow!(failure).context("an enrichment stage with on_failure = \"fail\" failed"),
                    );
                    return;
                }
                metrics.record(&out.stats, plan.sources.get(c.source as usize).map_or("", |s| s.name.as_str()));
                let rejected: u64 = out.stats.rejected.iter().sum();
                shared.lines.fetch_add(out.stats.lines, Ordering::Relaxed);
                shared.accepted.fetch_add(out.stats.accepted, Ordering::Relaxed);
                shared.rejected.fetch_add(rejected, Ordering::Relaxed);
                (Some::<PartitionId>(c.partition_id()), c.end_of_partition, c.idle, c.ingest_ms, c.ingest_us)
            }
            None => (None, false, false, msg.now_ms, msg.now_us),
        };
        // The decoder's own output rides with shard 0's input, in chunk order.
        let mut forwarded = None;
        if out.outputs.has_data() {
            // Only filled buffers travel; empty ones go back to the pool at once.
            for buf in out.outputs.sinks.iter_mut().filter(|b| b.data.is_empty()) {
                pools.give_buffer(std::mem::take(&mut buf.data));
            }
            forwarded = Some(std::mem::take(&mut out.outputs));
        } else {
            for buf in std::mem::take(&mut out.outputs.sinks) {
                pools.give_buffer(buf.data);
            }
        }
        for (tx, batch) in txs.iter().zip(out.shards.drain(..)) {
            let input = ShardInput {
                seq: msg.seq,
                partition,
                max_ts: out.max_ts,
                end_of_partition: end,
                idle,
                ingest_ms,
                ingest_us,
                batch,
                barrier: None,
                forwarded: forwarded.take(),
                forget: forget.clone(),
            };
            if !send(tx, input, &shared) {
                return;
            }
        }
    }
}

/// Applies records in chunk order, fires windows, publishes views, ships
/// results (its own and the decoders' forwarded ones), and snapshots at
/// barriers. Returns the ingest-to-visible latency of every chunk, in µs.
#[allow(clippy::too_many_arguments)]
pub(super) fn shard(
    plan: &Plan,
    index: usize,
    mut shard: Shard,
    rxs: Vec<Receiver<ShardInput>>,
    partitions: Vec<PartitionId>,
    coordinator: Option<Sender<CoordMsg>>,
    links: Links,
) -> Vec<u64> {
    let Links { writer: wtx, pools, shared } = links;
    let metrics = ShardMetrics::new(plan, index);
    for p in partitions {
        shard.register(p, wall_ms());
    }
    let mut latencies = Vec::new();
    let mut pending: Vec<u64> = Vec::new();
    let item_every = plan.pipeline.recommender.as_ref().map(|r| Duration::from_millis(r.item_publish_ms as u64));
    let mut clock = PublishClock::new(plan.publish_interval, item_every);
    // What a restore brought back is served at once, not one item interval
    // later (users would get empty lists meanwhile). Features wait for
    // their lane: their publication also writes sinks.
    shard.publish_recommender_items();
    let mut seq = 0usize;
    let send_buffers = |outputs: freshet_engine::features::Outputs| -> bool {
        metrics.record_late(&outputs.late);
        for (sink, buf) in outputs.sinks.into_iter().enumerate() {
            if buf.data.is_empty() {
                pools.give_buffer(buf.data);
            } else if !send(&wtx, WriterMsg::Rows { shard: index, sink: sink as u16, buf }, &shared) {
                return false;
            }
        }
        true
    };
    let ship = |shard: &mut Shard| -> bool { send_buffers(shard.take_outputs(|| pools.buffer())) };
    let published = |pending: &mut Vec<u64>, latencies: &mut Vec<u64>| {
        let now = shared.now_us();
        for t in pending.drain(..) {
            let lat = now.saturating_sub(t);
            metrics.latency(lat);
            latencies.push(lat);
        }
    };
    loop {
        let from = seq % rxs.len();
        let mut input = match rxs[from].recv_timeout(clock.due_in().unwrap_or(IDLE_WAIT)) {
            Ok(input) => input,
            Err(RecvTimeoutError::Timeout) => {
                // No input for a while: what changed is published on time all the same.
                if clock.due() {
                    if clock.publish(&mut shard) {
                        published(&mut pending, &mut latencies);
                    }
                    if shard.has_output() && !ship(&mut shard) {
                        return latencies;
                    }
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        seq += 1;
        if let Some(forwarded) = input.forwarded.take()
            && !send_buffers(forwarded)
        {
            return latencies;
        }
        let stats = shard.process(&input);
        // Every shard forgets; one passes the forget on, after the routed rows before it.
        if index == 0
            && let Some(forget) = input.forget.take()
            && !send(&wtx, WriterMsg::Forget { shard: index, forget }, &shared)
        {
            return latencies;
        }
        let had_records = !input.batch.records.is_empty() || !input.batch.model.is_empty();
        pools.give_batch(from, std::mem::take(&mut input.batch));
        metrics.record(&stats, shard.watermark());
        if had_records {
            pending.push(input.ingest_us);
        }
        clock.changed(
            had_records || stats.watermark_advanced || stats.forgotten > 0,
            had_records || stats.forgotten > 0,
        );
        let publishing = clock.due();
        if publishing && clock.publish(&mut shard) {
            published(&mut pending, &mut latencies);
        }
        let barrier = input.barrier;
        // Closed windows' rows leave as the watermark passes them; a publish
        // may have written updates rows: they leave with it.
        if (barrier.is_some()
            || publishing
            || stats.watermark_advanced
            || input.partition.is_none()
            || shard_output_large(&shard))
            && shard.has_output()
            && !ship(&mut shard)
        {
            return latencies;
        }
        if let (Some(id), Some(coordinator)) = (barrier, &coordinator) {
            // Everything before the barrier is shipped: snapshot, then tell the writer.
            let started = Instant::now();
            let state = shard.snapshot_copy();
            metrics.synced(started.elapsed());
            let _ = coordinator.send(CoordMsg::Shard { id, shard: index, state });
            if !send(&wtx, WriterMsg::Barrier { shard: index, id }, &shared) {
                return latencies;
            }
        }
    }
    shard.publish_recommender_items();
    shard.publish();
    let now = shared.now_us();
    latencies.extend(pending.drain(..).map(|t| now.saturating_sub(t)));
    ship(&mut shard);
    let keys: usize = shard.key_counts().iter().sum();
    tracing::debug!(shard = index, keys, heap_bytes = shard.heap_bytes(), "Shard finished.");
    latencies
}

/// How long a shard with nothing to publish waits for input before it looks again.
const IDLE_WAIT: Duration = Duration::from_secs(3600);

/// When a shard publishes its views, in three lanes: features, the
/// recommender's users, and its item lists. A change waits at most one
/// interval (`publish_interval`; `item_publish_interval` for item lists),
/// stretched to four times what the lane's last publication took, so that
/// each lane stays under a fifth of a busy shard; the lanes stretch apart,
/// so costly features do not hold back the recommender's users, and the
/// features go in slices of [`FEATURE_SLICE`] entities with input and the
/// other lanes in between. Not at every
/// watermark step: with event time near wall time that is nearly every
/// chunk, and publication then took most of a busy shard (78 % at 50k
/// events/s).
struct PublishClock {
    features: Lane,
    users: Option<Lane>,
    items: Option<Lane>,
}

/// One kind of publication: its interval, and what its last one cost.
struct Lane {
    every: Duration,
    last: Instant,
    cost: Duration,
    /// Changes applied since the last publication began.
    changed: bool,
    /// A publication taken in slices is under way: its next slice is due at once.
    slicing: bool,
    /// What the publication under way has cost so far.
    spent: Duration,
}

impl Lane {
    /// A lane with a publication due one interval from now (a start
    /// publishes what it restored, before any input arrives).
    fn new(every: Duration) -> Self {
        Lane { every, last: Instant::now(), cost: Duration::ZERO, changed: true, slicing: false, spent: Duration::ZERO }
    }

    fn due_in(&self) -> Option<Duration> {
        if self.slicing {
            return Some(Duration::ZERO);
        }
        self.changed.then(|| (self.last + self.every.max(self.cost * 4)).saturating_duration_since(Instant::now()))
    }

    /// Runs `publish` if it is due; it says whether it published everything
    /// (else its next slice is due at once, after the shard's next input).
    /// Says whether a publication ended.
    fn publish_if_due(&mut self, publish: impl FnOnce() -> bool) -> bool {
        if self.due_in() != Some(Duration::ZERO) {
            return false;
        }
        if !self.slicing {
            (self.changed, self.spent) = (false, Duration::ZERO);
        }
        let started = Instant::now();
        let finished = publish();
        let now = Instant::now();
        self.spent += now - started;
        self.slicing = !finished;
        if finished {
            (self.last, self.cost) = (now, self.spent);
        }
        finished
    }
}

/// Entities a slice of the features' publication publishes at most (about
/// 1-3 ms): a window closing changes every entity at once, and publishing
/// them all in one go held the recommender's users and the input back for
/// up to 90 ms at 50k events/s.
const FEATURE_SLICE: usize = 256;

impl PublishClock {
    /// `recommender`: the recommender's item publication interval, on the shard that owns it.
    fn new(interval: Duration, recommender: Option<Duration>) -> Self {
        PublishClock {
            features: Lane::new(interval),
            users: recommender.map(|_| Lane::new(interval)),
            items: recommender.map(Lane::new),
        }
    }

    /// Notes what a chunk changed: features, and the recommender.
    fn changed(&mut self, features: bool, recommender: bool) {
        self.features.changed |= features;
        for lane in [&mut self.users, &mut self.items].into_iter().flatten() {
            lane.changed |= recommender;
        }
    }

    /// How long until a publication is due; `None` when nothing waits.
    fn due_in(&self) -> Option<Duration> {
        [Some(&self.features), self.users.as_ref(), self.items.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(Lane::due_in)
            .min()
    }

    fn due(&self) -> bool {
        self.due_in() == Some(Duration::ZERO)
    }

    /// Publishes what is due; says whether the features were (the chunks
    /// applied before are then visible: the pipeline latency's end).
    fn publish(&mut self, shard: &mut Shard) -> bool {
        if let Some(lane) = &mut self.items {
            lane.publish_if_due(|| {
                shard.publish_recommender_items();
                true
            });
        }
        if let Some(lane) = &mut self.users {
            lane.publish_if_due(|| {
                shard.publish_recommender_users();
                true
            });
        }
        self.features.publish_if_due(|| {
            let mut budget = FEATURE_SLICE;
            shard.publish_some_features(&mut budget).1
        })
    }
}

fn shard_output_large(shard: &Shard) -> bool {
    shard.output_bytes() >= SHIP_BYTES
}

/// Writes sink buffers; flushes when idle and at the end.
///
/// Checkpoints are aligned here as in a multi-input operator: once a shard
/// has passed barrier `n`, its later messages are held until every shard
/// has; then every sink is synced and its length reported (the point a
/// recovery cuts back to), and the held messages are replayed in order.
/// Without holding them, a fast shard's rows from after the barrier would
/// count as committed and be written again after a recovery.
pub(super) fn write(
    mut writers: Vec<SinkWriter>,
    rx: Receiver<WriterMsg>,
    shards: usize,
    coordinator: Option<Sender<CoordMsg>>,
    pools: Pools,
) -> Result<Vec<(String, u64)>> {
    let metrics = WriterMetrics::new(&writers);
    let mut dirty = false;
    let mut passed = vec![false; shards];
    let mut held: Vec<std::collections::VecDeque<WriterMsg>> = (0..shards).map(|_| Default::default()).collect();
    let mut queue: std::collections::VecDeque<WriterMsg> = Default::default();
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(msg) => queue.push_back(msg),
            Err(RecvTimeoutError::Timeout) => {
                if dirty {
                    for w in &mut writers {
                        w.flush()?;
                    }
                    dirty = false;
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => {
                // Past the last barrier: write what was held, in order.
                for h in &mut held {
                    queue.extend(h.drain(..));
                }
                passed.iter_mut().for_each(|p| *p = false);
                if queue.is_empty() {
                    break;
                }
            }
        }
        while let Some(msg) = queue.pop_front() {
            let s = msg.shard();
            if passed[s] {
                held[s].push_back(msg);
                continue;
            }
            match msg {
                WriterMsg::Rows { sink, buf, .. } => {
                    let w = &mut writers[sink as usize];
                    // A failed write ends the writer: no later checkpoint may
                    // count rows that never reached the sink.
                    w.write(&buf.data, buf.rows)?;
                    metrics.rows(sink as usize, buf.rows);
                    pools.give_buffer(buf.data);
                    dirty = true;
                }
                WriterMsg::Forget { forget, .. } => {
                    for w in &mut writers {
                        w.forget(&forget)?;
                    }
                    dirty = true;
                }
                WriterMsg::Barrier { id, .. } => {
                    passed[s] = true;
                    if passed.iter().all(|p| *p) {
                        for w in &mut writers {
                            w.sync()?;
                        }
                        dirty = false;
                        if let Some(c) = &coordinator {
                            let lengths = writers.iter().map(SinkWriter::position).collect();
                            let _ = c.send(CoordMsg::Sinks { id, lengths });
                        }
                        passed.iter_mut().for_each(|p| *p = false);
                        // Replay what the shards sent after the barrier, each in its order.
                        let mut replay: std::collections::VecDeque<WriterMsg> = Default::default();
                        for h in &mut held {
                            replay.extend(h.drain(..));
                        }
                        replay.extend(queue.drain(..));
                        queue = replay;
                    }
                }
            }
        }
    }
    for w in &mut writers {
        w.finish()?;
    }
    Ok(writers.iter().map(|w| (w.name().to_owned(), w.rows())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_change_is_due_within_an_interval_stretched_by_the_last_cost() {
        let mut clock = PublishClock::new(5 * MS, None);
        assert!(clock.due_in().is_some_and(|d| d <= 5 * MS), "a start publishes what it restored");
        assert!(clock.users.is_none() && clock.items.is_none(), "no recommender, no recommender lanes");
        clock.features.changed = false;
        assert_eq!(clock.due_in(), None, "nothing changed, nothing due");
        clock.changed(true, true);
        assert!(clock.due_in().is_some_and(|d| d <= 5 * MS && d > Duration::ZERO));
        // A publication that took 10 ms puts the next one 40 ms after it.
        clock.features.cost = 10 * MS;
        assert!(clock.due_in().is_some_and(|d| d > 30 * MS && d <= 40 * MS));
        clock.features.last -= 40 * MS;
        assert!(clock.due());
    }

    #[test]
    fn the_recommenders_lanes_keep_their_own_time() {
        let mut clock = PublishClock::new(5 * MS, Some(500 * MS));
        let users = clock.users.as_mut().unwrap();
        users.changed = false;
        clock.features.changed = false;
        assert!(clock.due_in().is_some_and(|d| d > 400 * MS), "the item lists of a start are due in 500 ms");
        clock.items.as_mut().unwrap().changed = false;
        assert_eq!(clock.due_in(), None);
        // Costly features do not hold back the users.
        clock.features.cost = 50 * MS;
        clock.changed(true, true);
        assert!(clock.due_in().is_some_and(|d| d <= 5 * MS), "the users' lane is due within its interval");
        clock.items.as_mut().unwrap().last -= 500 * MS;
        clock.users.as_mut().unwrap().last -= 5 * MS;
        assert!(clock.due(), "users and items are due; features wait for 200 ms");
        assert!(clock.features.due_in().is_some_and(|d| d > 150 * MS));
    }

    #[test]
    fn a_publication_in_slices_is_due_until_it_ends_and_costs_all_its_slices() {
        let mut lane = Lane::new(5 * MS);
        lane.last -= 5 * MS;
        let mut slices = 0;
        while lane.due_in() == Some(Duration::ZERO) {
            slices += 1;
            let ended = lane.publish_if_due(|| {
                std::thread::sleep(2 * MS);
                slices == 3
            });
            assert_eq!(ended, slices == 3);
            if slices < 3 {
                assert_eq!(lane.due_in(), Some(Duration::ZERO), "the next slice is due at once");
            }
        }
        assert_eq!(slices, 3);
        assert!(lane.cost >= 6 * MS, "the cost is the three slices': {:?}", lane.cost);
        assert_eq!(lane.due_in(), None, "nothing changed since it began");
        lane.changed = true;
        assert!(lane.due_in().is_some_and(|d| d > 20 * MS), "the next waits four times that");
    }
}
