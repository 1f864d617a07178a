//! The bodies of the pipeline threads: dispatcher, decoders, shards, writer.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Result;
use crossbeam_channel::{Receiver, RecvTimeoutError, SendTimeoutError, Sender};
use freshet_engine::decode::{Chunk, Decoder};
use freshet_engine::features::{SinkBuffer, Views};
use freshet_engine::record::{RecordBatch, ShardInput};
use freshet_engine::shard::Shard;
use freshet_engine::time::PartitionId;
use freshet_io::sink::SinkWriter;

use super::{Shared, wall_ms};
use crate::config::plan::Plan;
use crate::metrics::{DecoderMetrics, ShardMetrics, WriterMetrics};

/// How often the dispatcher ticks when no chunk arrives (idleness, publishing).
const TICK: Duration = Duration::from_millis(50);
/// A shard ships a sink buffer once it holds this much.
const SHIP_BYTES: usize = 256 << 10;

/// A numbered chunk, or a tick when `chunk` is `None`.
pub(super) struct DecoderMsg {
    seq: u64,
    chunk: Option<Chunk>,
    now_ms: i64,
    now_us: u64,
}

/// Formatted rows for one sink.
pub(super) struct WriterMsg {
    sink: u16,
    buf: SinkBuffer,
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

/// Buffers larger than this are freed rather than pooled.
const POOL_MAX_CAPACITY: usize = 8 << 20;

impl Pools {
    pub fn new(decoders: usize) -> Self {
        Self {
            buffers: crossbeam_channel::bounded(256),
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

/// Sends, re-checking the stop flag while the channel is full.
fn send<T>(tx: &Sender<T>, mut msg: T, shared: &Shared) -> bool {
    loop {
        match tx.send_timeout(msg, Duration::from_millis(100)) {
            Ok(()) => return true,
            Err(SendTimeoutError::Timeout(m)) => {
                if shared.stop.load(Ordering::SeqCst) {
                    return false;
                }
                msg = m;
            }
            Err(SendTimeoutError::Disconnected(_)) => return false,
        }
    }
}

/// Numbers chunks and deals them round-robin to decoders; ticks when idle.
pub(super) fn dispatch(rx: Receiver<Chunk>, txs: Vec<Sender<DecoderMsg>>, shared: Arc<Shared>) {
    let mut seq = 0u64;
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let chunk = match rx.recv_timeout(TICK) {
            Ok(c) => Some(c),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let msg = DecoderMsg { seq, chunk, now_ms: wall_ms(), now_us: shared.now_us() };
        if !send(&txs[(seq % txs.len() as u64) as usize], msg, &shared) {
            return;
        }
        seq += 1;
    }
}

/// Decodes chunks and fans their records out to every shard.
pub(super) fn decode(plan: &Plan, index: usize, rx: Receiver<DecoderMsg>, txs: Vec<Sender<ShardInput>>, links: Links) {
    let Links { writer: wtx, pools, shared } = links;
    let pipeline = &plan.pipeline;
    let mut decoder = Decoder::new(pipeline);
    let metrics = DecoderMetrics::new(plan);
    while let Ok(msg) = rx.recv() {
        let mut out = decoder.output();
        for b in out.shards.iter_mut() {
            *b = pools.batch(index);
        }
        for s in out.outputs.sinks.iter_mut() {
            s.data = pools.buffer();
        }
        let (partition, end, ingest_ms, ingest_us) = match &msg.chunk {
            Some(c) => {
                decoder.decode(c, &mut out);
                metrics.record(&out.stats, plan.sources.get(c.source as usize).map_or("", |s| s.name.as_str()));
                let rejected: u64 = out.stats.rejected.iter().sum();
                shared.lines.fetch_add(out.stats.lines, Ordering::Relaxed);
                shared.accepted.fetch_add(out.stats.accepted, Ordering::Relaxed);
                shared.rejected.fetch_add(rejected, Ordering::Relaxed);
                (Some::<PartitionId>(c.partition_id()), c.end_of_partition, c.ingest_ms, c.ingest_us)
            }
            None => (None, false, msg.now_ms, msg.now_us),
        };
        for (tx, batch) in txs.iter().zip(out.shards.drain(..)) {
            let input = ShardInput {
                seq: msg.seq,
                partition,
                max_ts: out.max_ts,
                end_of_partition: end,
                ingest_ms,
                ingest_us,
                batch,
            };
            if !send(tx, input, &shared) {
                return;
            }
        }
        for (sink, buf) in out.outputs.sinks.into_iter().enumerate() {
            if buf.data.is_empty() {
                pools.give_buffer(buf.data);
            } else if !send(&wtx, WriterMsg { sink: sink as u16, buf }, &shared) {
                return;
            }
        }
    }
}

/// Applies records in chunk order, fires windows, publishes views, ships results.
/// Returns the ingest-to-visible latency of every chunk it published, in µs.
pub(super) fn shard(
    plan: &Plan,
    index: usize,
    rxs: Vec<Receiver<ShardInput>>,
    views: Views,
    partitions: Vec<PartitionId>,
    links: Links,
) -> Vec<u64> {
    let Links { writer: wtx, pools, shared } = links;
    let mut shard = Shard::new(&plan.pipeline, Some(views));
    let metrics = ShardMetrics::new(plan, index);
    for p in partitions {
        shard.register(p, wall_ms());
    }
    let mut latencies = Vec::new();
    let mut pending: Vec<u64> = Vec::new();
    let mut last_publish = Instant::now();
    let mut publish_cost = Duration::ZERO;
    let mut seq = 0usize;
    let ship = |shard: &mut Shard| -> bool {
        let outputs = shard.take_outputs(|| pools.buffer());
        metrics.record_late(&outputs.late);
        for (sink, buf) in outputs.sinks.into_iter().enumerate() {
            if buf.data.is_empty() {
                pools.give_buffer(buf.data);
            } else if !send(&wtx, WriterMsg { sink: sink as u16, buf }, &shared) {
                return false;
            }
        }
        true
    };
    loop {
        let from = seq % rxs.len();
        let Ok(mut input) = rxs[from].recv() else { break };
        seq += 1;
        let stats = shard.process(&input);
        let had_records = !input.batch.records.is_empty();
        pools.give_batch(from, std::mem::take(&mut input.batch));
        metrics.record(stats.records, shard.watermark());
        if had_records {
            pending.push(input.ingest_us);
        }
        // Publishing adapts to load: the next one waits at least four times
        // as long as the last took, so it stays under a fifth of the shard.
        let due = last_publish.elapsed() >= plan.publish_interval.max(publish_cost * 4);
        if due || stats.watermark_advanced {
            let started = Instant::now();
            shard.publish();
            last_publish = Instant::now();
            publish_cost = last_publish - started;
            let now = shared.now_us();
            for t in pending.drain(..) {
                let lat = now.saturating_sub(t);
                metrics.latency(lat);
                latencies.push(lat);
            }
        }
        if (stats.watermark_advanced || input.partition.is_none() || shard_output_large(&shard))
            && shard.has_output()
            && !ship(&mut shard)
        {
            return latencies;
        }
    }
    shard.publish();
    let now = shared.now_us();
    latencies.extend(pending.drain(..).map(|t| now.saturating_sub(t)));
    ship(&mut shard);
    let keys: usize = shard.key_counts().iter().sum();
    tracing::debug!(shard = index, keys, heap_bytes = shard.heap_bytes(), "Shard finished.");
    latencies
}

fn shard_output_large(shard: &Shard) -> bool {
    shard.output_bytes() >= SHIP_BYTES
}

/// Writes sink buffers; flushes when idle and at the end.
pub(super) fn write(
    mut writers: Vec<SinkWriter>,
    rx: Receiver<WriterMsg>,
    pools: Pools,
    shared: Arc<Shared>,
) -> Result<Vec<(String, u64)>> {
    let metrics = WriterMetrics::new(&writers);
    let mut dirty = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(msg) => {
                let w = &mut writers[msg.sink as usize];
                if let Err(e) = w.write(&msg.buf.data, msg.buf.rows) {
                    shared.fail(e.into());
                    continue;
                }
                metrics.rows(msg.sink as usize, msg.buf.rows);
                pools.give_buffer(msg.buf.data);
                dirty = true;
            }
            Err(RecvTimeoutError::Timeout) => {
                if dirty {
                    for w in &mut writers {
                        w.flush()?;
                    }
                    dirty = false;
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    for w in &mut writers {
        w.flush()?;
    }
    Ok(writers.iter().map(|w| (w.name().to_owned(), w.rows())).collect())
}
