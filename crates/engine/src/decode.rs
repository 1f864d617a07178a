//! The decoder: turns a chunk of raw lines into keyed records for the shards,
//! routed events for sinks, and dead letters, in parallel with other decoders.
//!
//! Per line: trim, size check, scan and validate JSON, choose a flow, check
//! its rules, read event time, run its stages, then extract (key, time,
//! value) for every feature the flow feeds. A bad line never stops the
//! chunk: it becomes one DLQ record with the reason, source, partition and
//! offset. Everything is written into buffers that are reused or shipped
//! whole; nothing is allocated per line on the accepted path.
//!
//! Dedup stages are not decided here (decoders share no state): the decoder
//! reads the stage's key and puts a marker before the event's records in
//! each shard batch that gets some, and those shards decide.
//!
//! Enrichment stages make their calls before the chunk runs:
//! [`Decoder::decode_enriched`] first walks the chunk's lines up to each
//! enrichment stage (no effects), hands the rendered requests to the
//! [`Enricher`] in one batch, keeps the answers by (line, stage), repeats
//! for flows with several stages, and then decodes the chunk as usual with
//! the answers in hand. Lines are decoded twice in such flows; against a
//! network call per event that is noise, and it keeps one code path for the
//! effects.

use std::io::Write;

use std::ops::ControlFlow;

use rustc_hash::FxHashMap;

use crate::aggregate::AggFn;
use crate::enrich::{Answer, EnrichHttp, EnrichRequest, Enricher, FailurePolicy};
use crate::event::{Event, FieldPath, Fields, Value};
use crate::features::emit::{Outputs, write_json_str};
use crate::features::keys::{hash_bytes, push_part};
use crate::flow::{Outcome, Stage};
use crate::json::{self, JsonError, Kind};
use crate::lookup::{EnrichLookup, Missing, Row, Tables};
use crate::pipeline::{Pipeline, Unmatched};
use crate::record::{DedupMarker, ModelInput, ModelInputKind, Record, RecordBatch, RecordValue};
use crate::time::{MAX_EVENT_TIME, MIN_EVENT_TIME, PartitionId};

/// A line too long to keep, cut by the reader: only a prefix is kept.
#[derive(Debug, Clone)]
pub struct Oversized {
    /// Offset (line number) in the partition.
    pub offset: u64,
    /// Full length in bytes.
    pub len: u64,
    /// The first bytes of the line.
    pub prefix: Vec<u8>,
}

/// A block of whole lines from one source partition.
#[derive(Debug, Default)]
pub struct Chunk {
    /// Source index.
    pub source: u16,
    /// Partition within the source.
    pub partition: u32,
    /// Offset (line number in the partition) of the first line.
    pub first_offset: u64,
    /// Lines, each ending in `\n` (the last may not).
    pub data: Vec<u8>,
    /// Lines removed from `data` for being too long, in offset order.
    pub oversized: Vec<Oversized>,
    /// Wall time the chunk was read (ms).
    pub ingest_ms: i64,
    /// Monotonic instant the chunk was read (µs, runtime-defined), for latency.
    pub ingest_us: u64,
    /// Whether the partition ends after this chunk.
    pub end_of_partition: bool,
    /// Source position after this chunk (file: byte offset of the next line),
    /// where a restored job resumes.
    pub end_position: u64,
    /// Offset (line number) of the line after this chunk.
    pub end_offset: u64,
    /// An entity to forget after this chunk's lines (a control operation,
    /// ordered with the events around it).
    pub forget: Option<crate::record::Forget>,
    /// The partition's watermark after this chunk's lines, when its writer
    /// said so in-band (a repartition topic's upstream task): the partition
    /// then stands at least there, as if an event with the time giving that
    /// watermark had come.
    pub watermark: Option<i64>,
    /// The partition's writer says it is idle (its own input had nothing
    /// for its idle timeout): after this chunk the partition no longer holds
    /// the watermark back, until it delivers again.
    pub idle: bool,
}

impl Chunk {
    /// The partition id.
    pub fn partition_id(&self) -> PartitionId {
        (self.source, self.partition)
    }
}

/// Why a line went to the dead-letter sink, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectKind {
    /// Not JSON, or not an object, or too deep, or bad bytes.
    InvalidJson,
    /// An empty line.
    Empty,
    /// Longer than the maximum event size.
    TooLarge,
    /// No flow takes it.
    Unmatched,
    /// A field rule failed.
    FieldRule,
    /// JSON Schema failed.
    Schema,
    /// Event time missing, not an integer, or outside the supported range.
    EventTime,
    /// An enrichment call failed and the stage's policy is `dlq`.
    Enrichment,
    /// A catalog event's embedding is not an array of numbers of the
    /// configured dimension; the event itself is accepted without it.
    Embedding,
    /// A catalog event's availability is not `true` or `false`; the event
    /// itself is accepted, the item as available.
    Availability,
}

impl RejectKind {
    /// All kinds, for metric registration.
    pub const ALL: [RejectKind; 10] = [
        RejectKind::InvalidJson,
        RejectKind::Empty,
        RejectKind::TooLarge,
        RejectKind::Unmatched,
        RejectKind::FieldRule,
        RejectKind::Schema,
        RejectKind::EventTime,
        RejectKind::Embedding,
        RejectKind::Availability,
        RejectKind::Enrichment,
    ];

    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            RejectKind::InvalidJson => "invalid_json",
            RejectKind::Empty => "empty",
            RejectKind::TooLarge => "too_large",
            RejectKind::Unmatched => "unmatched",
            RejectKind::FieldRule => "field_rule",
            RejectKind::Schema => "schema",
            RejectKind::EventTime => "event_time",
            RejectKind::Embedding => "embedding",
            RejectKind::Availability => "availability",
            RejectKind::Enrichment => "enrichment",
        }
    }
}

/// Counters for one chunk.
#[derive(Debug, Default, Clone)]
pub struct DecodeStats {
    /// Lines read.
    pub lines: u64,
    /// Lines accepted by a flow.
    pub accepted: u64,
    /// Rejections by kind (index = position in `RejectKind::ALL`): one dead
    /// letter each. `Embedding` and `Availability` rejections are of accepted lines.
    pub rejected: [u64; RejectKind::ALL.len()],
    /// Events dropped by filters.
    pub filtered: u64,
    /// Unmatched events dropped by policy.
    pub dropped_unmatched: u64,
    /// Per flow: events in.
    pub flow_in: Vec<u64>,
    /// Records emitted to features.
    pub records: u64,
    /// Feature inputs skipped for a missing key or value.
    pub feature_skipped: u64,
    /// Events that passed a dedup stage unchecked, for lack of its key.
    pub dedup_unkeyed: u64,
    /// Per enrichment stage: events enriched.
    pub enriched: Vec<u64>,
    /// Per enrichment stage: events passed on unenriched (policy `skip`).
    pub enrich_skipped: Vec<u64>,
    /// Per enrichment stage: events dead-lettered (policy `dlq`).
    pub enrich_dead_lettered: Vec<u64>,
    /// Per lookup stage: events that found a row.
    pub lookup_hits: Vec<u64>,
    /// Per lookup stage: events that found none (passed on or dead-lettered per policy).
    pub lookup_missing: Vec<u64>,
}

/// Everything one chunk produced.
#[derive(Debug, Default)]
pub struct Decoded {
    /// Records per shard.
    pub shards: Vec<RecordBatch>,
    /// Routed events and dead letters per sink.
    pub outputs: Outputs,
    /// Largest accepted event time.
    pub max_ts: Option<i64>,
    /// Counters.
    pub stats: DecodeStats,
    /// Set when an enrichment stage with policy `fail` failed: the chunk
    /// must not be shipped, and the job stops with this error.
    pub failure: Option<String>,
}

/// Decodes chunks for a pipeline; one per decoder thread.
pub struct Decoder<'p> {
    pipeline: &'p Pipeline,
    fields: Fields,
    scratch: String,
    text: Vec<u8>,
    /// The current event's dedup keys: (stage id, hash, span in `dedup_bytes`).
    dedup: Vec<(u16, u64, (u32, u32))>,
    dedup_bytes: Vec<u8>,
    /// Per shard: whether the current event's dedup markers are in its batch.
    marked: Vec<bool>,
    /// The current catalog event's embedding.
    vector: Vec<f32>,
    /// Enrichment stages by id.
    enrich_stages: Vec<&'p EnrichHttp>,
    /// This chunk's settled calls: (line offset, stage id) → answer.
    answers: FxHashMap<(u64, u16), Answer>,
    /// Lookup stages by id.
    lookup_stages: Vec<&'p EnrichLookup>,
    /// This chunk's lookups: (line offset, stage id) → the row, if any.
    lookups: FxHashMap<(u64, u16), Option<Row>>,
}

impl<'p> Decoder<'p> {
    /// A decoder for `pipeline`.
    pub fn new(pipeline: &'p Pipeline) -> Self {
        Self {
            pipeline,
            fields: Fields::default(),
            scratch: String::new(),
            text: Vec::new(),
            dedup: Vec::new(),
            dedup_bytes: Vec::new(),
            marked: vec![false; pipeline.shards],
            vector: Vec::new(),
            enrich_stages: pipeline.enrich_stages(),
            answers: FxHashMap::default(),
            lookup_stages: pipeline.lookup_stages(),
            lookups: FxHashMap::default(),
        }
    }

    /// An empty output sized for the pipeline (reuse it across chunks after shipping).
    pub fn output(&self) -> Decoded {
        let p = self.pipeline;
        Decoded {
            shards: (0..p.shards).map(|_| RecordBatch::default()).collect(),
            outputs: Outputs::new(p.sinks.len(), p.features.len()),
            max_ts: None,
            stats: DecodeStats {
                flow_in: vec![0; p.flows.len()],
                enriched: vec![0; self.enrich_stages.len()],
                enrich_skipped: vec![0; self.enrich_stages.len()],
                enrich_dead_lettered: vec![0; self.enrich_stages.len()],
                lookup_hits: vec![0; self.lookup_stages.len()],
                lookup_missing: vec![0; self.lookup_stages.len()],
                ..DecodeStats::default()
            },
            failure: None,
        }
    }

    /// Decodes `chunk` into `out` after making its enrichment calls through
    /// `enricher` (see the module doc). Without enrichment stages in the
    /// pipeline this is [`Decoder::decode`].
    pub fn decode_enriched(&mut self, chunk: &Chunk, out: &mut Decoded, enricher: &mut dyn Enricher) {
        self.answers.clear();
        // One round per stage an event can pass at most; each round settles
        // the next stage of every event that reached one.
        for _ in 0..self.enrich_stages.len() {
            let (keys, requests) = self.collect_calls(chunk);
            if requests.is_empty() {
                break;
            }
            let responses = enricher.call(requests);
            for ((offset, id), response) in keys.into_iter().zip(responses) {
                let answer = self.enrich_stages[id as usize].answer(response);
                self.answers.insert((offset, id), answer);
            }
        }
        self.decode(chunk, out);
    }

    /// The chunk's table pass (see [`crate::lookup`]): in line order, applies
    /// the upserts of table flows' valid events to `tables` and answers the
    /// lookup stages, keeping the answers for [`Decoder::decode`]. The caller
    /// runs one pass at a time, in chunk order. Without `upserts` the pass
    /// only reads `tables`: another job of the process feeds them (a group's
    /// tasks read the replica's, see `freshet::group`).
    pub fn table_pass(&mut self, chunk: &Chunk, tables: &Tables, upserts: bool) {
        let p = self.pipeline;
        self.lookups.clear();
        for (this, line) in kept_lines(chunk) {
            if line.len() > p.limits.max_event_bytes {
                continue;
            }
            let Ok(mut ev) = self.fields.decode(line, p.limits.max_depth) else { continue };
            let scratch = &mut self.scratch;
            let Some(fi) = p.flows.iter().position(|f| f.when.eval(&mut ev, scratch)) else { continue };
            let flow = &p.flows[fi];
            let has_lookup = flow.stages.iter().any(|s| matches!(s, Stage::EnrichLookup(_)));
            let feeds = upserts && p.tables.iter().any(|t| t.flow == fi);
            if !(has_lookup || feeds) || !valid(flow, &mut ev, line) {
                continue;
            }
            let key = &mut self.text;
            for (t, spec) in p.tables.iter().enumerate().filter(|(_, t)| feeds && t.flow == fi) {
                key.clear();
                let Some(k) = ev.get(&spec.key) else { continue };
                if !k.write_text(key, scratch) {
                    continue;
                }
                let row: Vec<_> = spec.columns.iter().map(|c| ev.get(c).map(|v| (v.raw.to_vec(), v.kind))).collect();
                tables.upsert(t as u16, key, std::sync::Arc::new(row));
            }
            if !has_lookup {
                continue;
            }
            let lookups = &mut self.lookups;
            flow.run_stages(&mut ev, scratch, |stage, ev, scratch| match stage {
                Stage::EnrichLookup(l) => {
                    key.clear();
                    let row = match ev.get(&l.key) {
                        Some(k) if k.write_text(key, scratch) => tables.get(l.table, key),
                        _ => None,
                    };
                    if let Some(row) = &row {
                        l.apply(row, ev);
                    }
                    let stop = row.is_none() && l.on_missing == Missing::DeadLetter;
                    lookups.insert((this, l.id), row);
                    if stop { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
                }
                // Lookups never follow a call (the planner refuses it).
                Stage::EnrichHttp(_) => ControlFlow::Break(()),
                _ => ControlFlow::Continue(()),
            });
        }
    }

    /// Walks the chunk's enriching lines without effects up to the first
    /// enrichment stage with no answer yet; returns the calls to make.
    fn collect_calls(&mut self, chunk: &Chunk) -> (Vec<(u64, u16)>, Vec<EnrichRequest>) {
        let p = self.pipeline;
        let (mut keys, mut requests) = (Vec::new(), Vec::new());
        for (this, line) in kept_lines(chunk) {
            if line.len() > p.limits.max_event_bytes {
                continue;
            }
            let Ok(mut ev) = self.fields.decode(line, p.limits.max_depth) else { continue };
            let scratch = &mut self.scratch;
            let Some(flow) = p.flows.iter().find(|f| f.when.eval(&mut ev, scratch)) else { continue };
            if !flow.enriches()
                || flow.rules.iter().any(|r| r.check(&mut ev).is_err())
                || flow.schema.as_ref().is_some_and(|s| s.check(line).is_err())
                || !ev
                    .get(&flow.time_field)
                    .and_then(|v| v.as_i64())
                    .is_some_and(|ts| (MIN_EVENT_TIME..=MAX_EVENT_TIME).contains(&ts))
            {
                continue;
            }
            let answers = &mut self.answers;
            flow.run_stages(&mut ev, scratch, |stage, ev, scratch| {
                let Stage::EnrichHttp(e) = stage else { return ControlFlow::Continue(()) };
                let answer = match answers.entry((this, e.id)) {
                    std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::hash_map::Entry::Vacant(v) => match e.request(ev, scratch) {
                        Ok(request) => {
                            keys.push((this, e.id));
                            requests.push(request);
                            return ControlFlow::Break(());
                        }
                        Err(why) => v.insert(Answer::Failed(format!("cannot make the call: {why}"))),
                    },
                };
                match answer {
                    Answer::Fields(values) => e.apply(values, ev),
                    Answer::Failed(_) if e.on_failure == FailurePolicy::Skip => e.mark(ev),
                    Answer::Failed(_) => return ControlFlow::Break(()),
                }
                ControlFlow::Continue(())
            });
        }
        (keys, requests)
    }

    /// Decodes every line of `chunk` into `out`.
    pub fn decode(&mut self, chunk: &Chunk, out: &mut Decoded) {
        let mut offset = chunk.first_offset;
        let mut oversized = chunk.oversized.iter().peekable();
        let data = &chunk.data[..];
        let mut start = 0;
        while start < data.len() {
            while let Some(o) = oversized.next_if(|o| o.offset == offset) {
                self.oversized(chunk, o, out);
                offset += 1;
            }
            let end = memchr::memchr(b'\n', &data[start..]).map_or(data.len(), |i| start + i);
            self.line(chunk, offset, &data[start..end], out);
            out.stats.lines += 1;
            offset += 1;
            start = end + 1;
        }
        for o in oversized {
            self.oversized(chunk, o, out);
        }
        if let Some(w) = chunk.watermark {
            // The event time whose partition watermark is `w` (see crate::time).
            let ooo = self.pipeline.event_time.max_out_of_orderness;
            let ts = w.saturating_add(ooo).saturating_add(1).clamp(MIN_EVENT_TIME, MAX_EVENT_TIME);
            out.max_ts = Some(out.max_ts.map_or(ts, |m| m.max(ts)));
        }
    }

    /// Dead-letters a line the reader cut for being too long.
    fn oversized(&mut self, chunk: &Chunk, o: &Oversized, out: &mut Decoded) {
        let reason = JsonError::TooLarge(self.max_bytes());
        self.dead_letter(chunk, o.offset, &o.prefix, RejectKind::TooLarge, &reason, out);
        out.stats.lines += 1;
    }

    fn max_bytes(&self) -> u32 {
        self.pipeline.limits.max_event_bytes.min(u32::MAX as usize) as u32
    }

    fn dead_letter(
        &mut self,
        chunk: &Chunk,
        offset: u64,
        raw: &[u8],
        kind: RejectKind,
        reason: &dyn std::fmt::Display,
        out: &mut Decoded,
    ) {
        let i = RejectKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        out.stats.rejected[i] += 1;
        let Some(sink) = self.pipeline.dead_letter else { return };
        let buf = &mut out.outputs.sinks[sink as usize];
        let o = &mut buf.data;
        self.text.clear();
        let _ = write!(self.text, "{reason}");
        o.extend_from_slice(b"{\"reason\":");
        write_json_str(o, &self.text);
        o.extend_from_slice(b",\"source\":");
        write_json_str(o, self.pipeline.sources.get(chunk.source as usize).map_or("", |s| s).as_bytes());
        let _ = write!(o, ",\"partition\":{},\"offset\":{offset},\"raw\":", chunk.partition);
        write_json_str(o, raw);
        o.extend_from_slice(b"}\n");
        buf.rows += 1;
    }

    fn line(&mut self, chunk: &Chunk, offset: u64, raw: &[u8], out: &mut Decoded) {
        let p = self.pipeline;
        let line = json::trim(raw);
        if line.len() > p.limits.max_event_bytes {
            let cut = &raw[..p.limits.max_event_bytes.min(raw.len()).min(4096)];
            self.dead_letter(chunk, offset, cut, RejectKind::TooLarge, &JsonError::TooLarge(self.max_bytes()), out);
            return;
        }
        let mut ev = match self.fields.decode(line, p.limits.max_depth) {
            Ok(ev) => ev,
            Err(e) => {
                let kind = if e == JsonError::Empty { RejectKind::Empty } else { RejectKind::InvalidJson };
                // Re-borrow: the failed decode holds no borrow.
                return self.dead_letter(chunk, offset, raw, kind, &e, out);
            }
        };
        let scratch = &mut self.scratch;
        let Some(fi) = p.flows.iter().position(|f| f.when.eval(&mut ev, scratch)) else {
            return match p.unmatched {
                Unmatched::DeadLetter => {
                    self.dead_letter(chunk, offset, raw, RejectKind::Unmatched, &"no flow matches the event", out)
                }
                Unmatched::Drop => out.stats.dropped_unmatched += 1,
            };
        };
        let flow = &p.flows[fi];
        out.stats.flow_in[fi] += 1;
        for rule in &flow.rules {
            if let Err(r) = rule.check(&mut ev) {
                return self.dead_letter(
                    chunk,
                    offset,
                    raw,
                    RejectKind::FieldRule,
                    &format_args!("flow {}: {}", flow.name, r.0),
                    out,
                );
            }
        }
        if let Some(schema) = &flow.schema
            && let Err(r) = schema.check(line)
        {
            return self.dead_letter(
                chunk,
                offset,
                raw,
                RejectKind::Schema,
                &format_args!("flow {}: {}", flow.name, r.0),
                out,
            );
        }
        let Some(ts) = ev.get(&flow.time_field).and_then(|v| v.as_i64()) else {
            let tf = &flow.time_field;
            return self.dead_letter(
                chunk,
                offset,
                raw,
                RejectKind::EventTime,
                &format_args!("flow {}: event time field {tf} missing or not an integer", flow.name),
                out,
            );
        };
        if !(MIN_EVENT_TIME..=MAX_EVENT_TIME).contains(&ts) {
            let tf = &flow.time_field;
            return self.dead_letter(
                chunk,
                offset,
                raw,
                RejectKind::EventTime,
                &format_args!("flow {}: event time {tf} = {ts} is outside ±2^53 ms", flow.name),
                out,
            );
        }
        out.stats.accepted += 1;
        let prior_max_ts = out.max_ts.unwrap_or(i64::MIN);
        out.max_ts = Some(out.max_ts.map_or(ts, |m| m.max(ts)));
        let sinks = &mut out.outputs.sinks;
        let unkeyed = &mut out.stats.dedup_unkeyed;
        let (dedup, dedup_bytes) = (&mut self.dedup, &mut self.dedup_bytes);
        dedup.clear();
        let (answers, lookups) = (&self.answers, &self.lookups);
        let (enriched, skipped) = (&mut out.stats.enriched, &mut out.stats.enrich_skipped);
        let (hits, missing) = (&mut out.stats.lookup_hits, &mut out.stats.lookup_missing);
        let mut halted: Option<Halt> = None;
        let outcome = flow.run_stages(&mut ev, scratch, |stage, ev, scratch| match stage {
            Stage::Route(sink) => {
                let buf = &mut sinks[*sink as usize];
                ev.write_json(&mut buf.data);
                buf.data.push(b'\n');
                buf.rows += 1;
                ControlFlow::Continue(())
            }
            Stage::EnrichHttp(e) => {
                let i = e.id as usize;
                match answers.get(&(offset, e.id)) {
                    Some(Answer::Fields(values)) => {
                        e.apply(values, ev);
                        enriched[i] += 1;
                        ControlFlow::Continue(())
                    }
                    failed => {
                        let why = match failed {
                            Some(Answer::Failed(why)) => why.as_str(),
                            _ => "no enricher made the call",
                        };
                        if e.on_failure == FailurePolicy::Skip {
                            e.mark(ev);
                            skipped[i] += 1;
                            ControlFlow::Continue(())
                        } else {
                            halted = Some(Halt::Http(e.id, why.to_string()));
                            ControlFlow::Break(())
                        }
                    }
                }
            }
            Stage::EnrichLookup(l) => match lookups.get(&(offset, l.id)) {
                Some(Some(row)) => {
                    l.apply(row, ev);
                    hits[l.id as usize] += 1;
                    ControlFlow::Continue(())
                }
                _ => {
                    missing[l.id as usize] += 1;
                    if l.on_missing == Missing::DeadLetter {
                        halted = Some(Halt::Lookup(l.id));
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                }
            },
            Stage::Dedup(d) => {
                if dedup.is_empty() {
                    dedup_bytes.clear();
                }
                let start = dedup_bytes.len();
                if push_key(ev, &d.key, dedup_bytes, scratch).is_some() {
                    let hash = hash_bytes(&dedup_bytes[start..]);
                    dedup.push((d.id, hash, (start as u32, dedup_bytes.len() as u32)));
                } else {
                    dedup_bytes.truncate(start);
                    *unkeyed += 1;
                }
                ControlFlow::Continue(())
            }
            _ => ControlFlow::Continue(()),
        });
        match outcome {
            Outcome::Passed => {}
            Outcome::Filtered => {
                out.stats.filtered += 1;
                return;
            }
            Outcome::Halted => {
                let reason = match halted {
                    Some(Halt::Http(id, why)) => {
                        let e = self.enrich_stages[id as usize];
                        let reason = format!("flow {}: enrich stage {}: {why}", flow.name, e.name);
                        if e.on_failure == FailurePolicy::Fail {
                            out.failure.get_or_insert(reason);
                            return;
                        }
                        out.stats.enrich_dead_lettered[e.id as usize] += 1;
                        reason
                    }
                    Some(Halt::Lookup(id)) => {
                        let l = self.lookup_stages[id as usize];
                        let table = p.tables.get(l.table as usize).map_or("", |t| t.name.as_str());
                        let mut key = Vec::new();
                        if let Some(k) = ev.get(&l.key) {
                            k.write_text(&mut key, &mut self.scratch);
                        }
                        let key = String::from_utf8_lossy(&key);
                        format!(
                            "flow {}: lookup stage {}: no row for {} = {key:?} in table {table}",
                            flow.name, l.name, l.key
                        )
                    }
                    None => return,
                };
                // The event ends here, in the dead-letter sink, not accepted.
                out.stats.accepted -= 1;
                return self.dead_letter(chunk, offset, raw, RejectKind::Enrichment, &reason, out);
            }
        }
        if !self.dedup.is_empty() {
            self.marked.fill(false);
        }
        let nshards = out.shards.len() as u64;
        for &fid in &flow.features {
            let spec = &p.features[fid as usize];
            if let Some(filter) = &spec.filter
                && !filter.eval(&mut ev, scratch)
            {
                continue;
            }
            // Build the key, entity first; parts are the fields' texts.
            self.text.clear();
            let Some(entity_end) = push_key(&mut ev, &spec.key, &mut self.text, scratch) else {
                out.stats.feature_skipped += 1;
                continue;
            };
            let value = match (&spec.field, spec.agg) {
                (Some(field), agg) if agg.needs_field() => match ev.get(field) {
                    Some(v) if agg.numeric() => match v.as_f64() {
                        Some(x) => Val::Num(x),
                        None => Val::Skip,
                    },
                    Some(v) => Val::Text(v),
                    None => Val::Skip,
                },
                (_, AggFn::Count | AggFn::DecayedCount(_)) => Val::None,
                _ => Val::Skip,
            };
            let shard = (hash_bytes(&self.text[..entity_end]) % nshards) as usize;
            let batch = &mut out.shards[shard];
            let ks = batch.bytes.len() as u32;
            batch.bytes.extend_from_slice(&self.text);
            let ke = batch.bytes.len() as u32;
            let value = match value {
                Val::Skip => {
                    batch.bytes.truncate(ks as usize);
                    out.stats.feature_skipped += 1;
                    continue;
                }
                Val::None => RecordValue::None,
                Val::Num(x) => RecordValue::Num(x),
                Val::Text(v) => {
                    let vs = batch.bytes.len() as u32;
                    if !v.write_text(&mut batch.bytes, scratch) {
                        batch.bytes.truncate(ks as usize);
                        out.stats.feature_skipped += 1;
                        continue;
                    }
                    RecordValue::Text(vs, batch.bytes.len() as u32)
                }
            };
            let hash = hash_bytes(&batch.bytes[ks as usize..ke as usize]);
            if !self.dedup.is_empty() && !self.marked[shard] {
                // The event's first record on this shard: its dedup markers go first.
                self.marked[shard] = true;
                let at = batch.records.len() as u32;
                for &(dedup, hash, (a, b)) in &self.dedup {
                    let start = batch.bytes.len() as u32;
                    batch.bytes.extend_from_slice(&self.dedup_bytes[a as usize..b as usize]);
                    batch.markers.push(DedupMarker { dedup, at, hash, key: (start, batch.bytes.len() as u32) });
                }
            }
            batch.records.push(Record { feature: fid, ts, hash, key: (ks, ke), value, offset, prior_max_ts });
            out.stats.records += 1;
        }
        // Catalog fields refused (the event itself is accepted): one dead letter each.
        let mut rejected: Vec<(RejectKind, String)> = Vec::new();
        if let Some(plan) = &p.recommender {
            let kind = if plan.interactions.contains(&fi) {
                let fields = [Some(&plan.user), Some(&plan.item), plan.event_type.as_ref(), plan.attribution.as_ref()];
                Some((ModelInputKind::Interaction, fields))
            } else if plan.catalog == Some(fi) {
                let item = ModelInputKind::Item { available: true };
                Some((item, [Some(&plan.item), plan.category.as_ref(), plan.tags.as_ref(), None]))
            } else {
                None
            };
            if let Some((mut kind, paths)) = kind {
                let batch = &mut out.shards[plan.shard];
                let mut fields = [None; 4];
                for (slot, path) in fields.iter_mut().zip(paths) {
                    if let Some(v) = path.and_then(|path| ev.get(path)) {
                        let start = batch.bytes.len();
                        if v.write_text(&mut batch.bytes, scratch) {
                            *slot = Some((start as u32, batch.bytes.len() as u32));
                        } else {
                            batch.bytes.truncate(start);
                        }
                    }
                }
                let is_item = matches!(kind, ModelInputKind::Item { .. });
                if is_item
                    && fields[0].is_some()
                    && let (Some(path), Some(dimension)) = (&plan.embedding, plan.spec.embedding.dimension)
                    && let Some(v) = ev.get(path).filter(|v| v.kind != Kind::Null)
                {
                    let vector = &mut self.vector;
                    let parsed = if v.kind == Kind::Array {
                        crate::recommend::parse_embedding(v.raw, dimension, vector)
                    } else {
                        Err(crate::recommend::EmbeddingRejection::NotNumbers)
                    };
                    match parsed {
                        Ok(()) => {
                            let start = batch.bytes.len();
                            for x in vector.iter() {
                                batch.bytes.extend_from_slice(&x.to_le_bytes());
                            }
                            fields[3] = Some((start as u32, batch.bytes.len() as u32));
                        }
                        Err(rejection) => {
                            let item = batch.model_field(&ModelInput { kind, ts, offset, fields }, 0).unwrap_or(b"");
                            let reason = catalog_reason(&flow.name, item, rejection, "without it");
                            rejected.push((RejectKind::Embedding, reason));
                        }
                    }
                }
                if let ModelInputKind::Item { available } = &mut kind
                    && fields[0].is_some()
                    && let Some(path) = &plan.availability
                    && let Some(v) = ev.get(path)
                {
                    match v.kind {
                        Kind::Bool => *available = v.raw == b"true",
                        Kind::Null => {}
                        _ => {
                            let item = batch.model_field(&ModelInput { kind, ts, offset, fields }, 0).unwrap_or(b"");
                            let problem = format!("{path} is not true or false");
                            rejected.push((
                                RejectKind::Availability,
                                catalog_reason(&flow.name, item, problem, "as available"),
                            ));
                        }
                    }
                }
                if fields[0].is_some() && (is_item || fields[1].is_some()) {
                    batch.model.push(ModelInput { kind, ts, offset, fields });
                } else {
                    out.stats.feature_skipped += 1;
                }
            }
        }
        for (kind, reason) in rejected {
            self.dead_letter(chunk, offset, raw, kind, &reason, out);
        }
    }
}

/// The chunk's lines with their offsets, trimmed, skipping those the reader
/// cut for being too long (the passes before the real one ignore them; it
/// dead-letters them).
fn kept_lines(chunk: &Chunk) -> impl Iterator<Item = (u64, &[u8])> {
    let mut oversized = chunk.oversized.iter().peekable();
    let mut offset = chunk.first_offset;
    let data = &chunk.data[..];
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= data.len() {
            return None;
        }
        while oversized.next_if(|o| o.offset == offset).is_some() {
            offset += 1;
        }
        let end = memchr::memchr(b'\n', &data[start..]).map_or(data.len(), |i| start + i);
        let line = (offset, json::trim(&data[start..end]));
        offset += 1;
        start = end + 1;
        Some(line)
    })
}

/// Why an effect stopped an event.
enum Halt {
    /// An HTTP enrichment failed for good (stage id, last error).
    Http(u16, String),
    /// A lookup found no row and its policy is `dlq` (stage id).
    Lookup(u16),
}

/// Whether `ev` passes its flow's rules, schema and event-time checks (the
/// passes before the real one skip invalid lines, which it dead-letters).
fn valid(flow: &crate::flow::Flow, ev: &mut Event<'_>, line: &[u8]) -> bool {
    flow.rules.iter().all(|r| r.check(ev).is_ok())
        && flow.schema.as_ref().is_none_or(|s| s.check(line).is_ok())
        && ev
            .get(&flow.time_field)
            .and_then(|v| v.as_i64())
            .is_some_and(|ts| (MIN_EVENT_TIME..=MAX_EVENT_TIME).contains(&ts))
}

/// Appends the encoded key of `paths` (each field's text, see
/// [`push_part`]) to `key`; returns where the first part ends, or `None` if
/// a field is missing or unreadable (`key` then holds a partial key).
#[inline]
fn push_key(ev: &mut Event<'_>, paths: &[FieldPath], key: &mut Vec<u8>, scratch: &mut String) -> Option<usize> {
    let mut entity_end = 0;
    for (i, path) in paths.iter().enumerate() {
        let v = ev.get(path)?;
        match v.plain_str() {
            Some(s) => push_part(key, s),
            None if v.kind == Kind::String => {
                let mut unescaped = Vec::new();
                if !v.write_text(&mut unescaped, scratch) {
                    return None;
                }
                push_part(key, &unescaped);
            }
            None => push_part(key, v.raw),
        }
        if i == 0 {
            entity_end = key.len();
        }
    }
    Some(entity_end)
}

enum Val<'a> {
    None,
    Skip,
    Num(f64),
    Text(Value<'a>),
}

/// The dead letter's reason for a catalog event's field refused while its item is catalogued.
fn catalog_reason(flow: &str, item: &[u8], problem: impl std::fmt::Display, how: &str) -> String {
    format!("flow {flow}: item {}: {problem}; the item is catalogued {how}", String::from_utf8_lossy(item))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::FieldPath;
    use crate::features::{Entity, FeatureSpec, Format};
    use crate::flow::Flow;
    use crate::pipeline::{EventTime, Limits, SinkSpec};
    use crate::predicate::Predicate;
    use crate::record::ShardInput;
    use crate::shard::Shard;
    use crate::window::WindowSpec;

    fn pipeline(window: WindowSpec) -> Pipeline {
        let ts = FieldPath::parse("ts").unwrap();
        let key = vec![FieldPath::parse("k").unwrap()];
        Pipeline {
            flows: vec![Flow {
                name: "f".into(),
                when: Predicate::True,
                rules: vec![],
                schema: None,
                time_field: ts,
                stages: vec![],
                features: vec![0],
            }],
            features: vec![FeatureSpec {
                name: "c".into(),
                flow: 0,
                key,
                entity: Entity::User,
                filter: None,
                window,
                agg: AggFn::Count,
                field: None,
                sink: Some((1, Format::Csv)),
                late_sink: None,
                updates_sink: None,
                allowed_lateness: 1000,
                serve: false,
                ttl: None,
            }],
            sinks: vec![
                SinkSpec { name: "dlq".into(), format: Format::Ndjson },
                SinkSpec { name: "out".into(), format: Format::Csv },
            ],
            dead_letter: Some(0),
            unmatched: Unmatched::DeadLetter,
            sources: vec!["in".into()],
            limits: Limits::default(),
            event_time: EventTime { max_out_of_orderness: 1000, idle_timeout: 10_000, bounded_sources: vec![] },
            shards: 1,
            recommender: None,
            tables: vec![],
        }
    }

    /// A watermark told in-band raises the chunk's event time to the time
    /// that gives it (`w + out_of_orderness + 1`), never lowers it, and an
    /// empty chunk may carry one alone.
    #[test]
    fn a_chunk_watermark_stands_for_the_event_time_that_gives_it() {
        let p = pipeline(WindowSpec::Global);
        let mut d = Decoder::new(&p);
        let decode = |d: &mut Decoder<'_>, data: &[u8], watermark| {
            let mut out = d.output();
            d.decode(&Chunk { data: data.to_vec(), watermark, ..Chunk::default() }, &mut out);
            out.max_ts
        };
        assert_eq!(decode(&mut d, b"", Some(9_000)), Some(10_001));
        assert_eq!(decode(&mut d, b"{\"k\":\"a\",\"ts\":5000}\n", Some(9_000)), Some(10_001));
        assert_eq!(decode(&mut d, b"{\"k\":\"a\",\"ts\":50000}\n", Some(9_000)), Some(50_000));
        assert_eq!(decode(&mut d, b"{\"k\":\"a\",\"ts\":5000}\n", None), Some(5_000));
        assert_eq!(decode(&mut d, b"", None), None);
        assert_eq!(decode(&mut d, b"", Some(i64::MAX - 1)), Some(MAX_EVENT_TIME));
    }

    /// Found by fuzzing: an event time near `i64::MAX` or `i64::MIN`
    /// overflowed window arithmetic in the shard (`ts + 1` for a global
    /// window, `ts + gap` for a session, alignment for tumbling windows).
    #[test]
    fn event_times_outside_the_supported_range_are_dead_letters() {
        let lines = format!(
            "{}\n",
            [i64::MAX, i64::MIN, MAX_EVENT_TIME + 1, MIN_EVENT_TIME - 1, MAX_EVENT_TIME, MIN_EVENT_TIME]
                .map(|ts| format!(r#"{{"k":"a","ts":{ts}}}"#))
                .join("\n")
        );
        for window in [WindowSpec::Global, WindowSpec::Session { gap: 5000 }, WindowSpec::Tumbling { size: 3000 }] {
            let p = pipeline(window);
            let mut decoder = Decoder::new(&p);
            let mut out = decoder.output();
            decoder.decode(&Chunk { data: lines.clone().into_bytes(), ..Chunk::default() }, &mut out);
            assert_eq!(out.stats.accepted, 2, "{window}");
            assert_eq!(
                out.stats.rejected[RejectKind::ALL.iter().position(|k| *k == RejectKind::EventTime).unwrap()],
                4
            );
            let dlq = String::from_utf8(out.outputs.sinks[0].data.clone()).unwrap();
            assert!(dlq.contains("event time ts = 9223372036854775807 is outside ±2^53 ms"), "{dlq}");
            // The accepted extremes go through the shard and fire without overflow.
            let mut shard = Shard::new(&p, None);
            let batch = std::mem::take(&mut out.shards[0]);
            for (batch, end) in [(batch, false), (RecordBatch::default(), true)] {
                shard.process(&ShardInput {
                    seq: 0,
                    partition: Some((0, 0)),
                    max_ts: out.max_ts.filter(|_| !end),
                    end_of_partition: end,
                    idle: false,
                    ingest_ms: 0,
                    ingest_us: 0,
                    batch,
                    barrier: None,
                    forwarded: None,
                    forget: None,
                });
            }
            let rows = shard.take_outputs(Vec::new).sinks[1].rows;
            // The later extreme comes first, so the earlier one is late (or in the same global window).
            assert_eq!(rows, 1, "{window}");
        }
    }

    /// The flow as a catalog with 3-dimensional embeddings (`None`: embeddings off).
    fn catalog(dimension: Option<usize>) -> Pipeline {
        let mut p = pipeline(WindowSpec::Global);
        let mut spec = crate::recommend::RecommenderSpec::default();
        spec.embedding.dimension = dimension;
        p.recommender = Some(crate::pipeline::RecommenderPlan {
            spec,
            interactions: vec![],
            user: FieldPath::parse("user_id").unwrap(),
            item: FieldPath::parse("k").unwrap(),
            event_type: None,
            attribution: None,
            catalog: Some(0),
            category: None,
            tags: None,
            availability: Some(FieldPath::parse("available").unwrap()),
            embedding: dimension.map(|_| FieldPath::parse("embedding").unwrap()),
            shard: 0,
            item_publish_ms: 1000,
            placements: vec![],
        });
        p
    }

    /// `lines`, one event each, decoded by `p` as one chunk.
    fn decode_lines(p: &Pipeline, lines: &[&str]) -> Decoded {
        let mut decoder = Decoder::new(p);
        let mut out = decoder.output();
        let data = lines.iter().flat_map(|l| [l.as_bytes(), b"\n"]).flatten().copied().collect();
        decoder.decode(&Chunk { data, ..Chunk::default() }, &mut out);
        out
    }

    /// The reasons of the dead letters written to the pipeline's first sink.
    fn dead_letter_reasons(out: &Decoded) -> Vec<String> {
        let dlq = String::from_utf8(out.outputs.sinks[0].data.clone()).unwrap();
        dlq.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["reason"].as_str().unwrap().to_owned())
            .collect()
    }

    /// How many lines were rejected as `kind`.
    fn rejected(out: &Decoded, kind: RejectKind) -> u64 {
        out.stats.rejected[RejectKind::ALL.iter().position(|k| *k == kind).unwrap()]
    }

    #[test]
    fn a_bad_embedding_is_a_dead_letter_and_its_item_still_a_model_input() {
        let lines = [
            r#"{"k":"good","ts":1,"embedding":[1, 0.5, -2]}"#,
            r#"{"k":"short","ts":2,"embedding":[1, 0.5]}"#,
            r#"{"k":"text","ts":3,"embedding":"1,2,3"}"#,
            r#"{"k":"none","ts":4,"embedding":null}"#,
        ];
        let decode = |p: &Pipeline| decode_lines(p, &lines);
        let p = catalog(Some(3));
        let out = decode(&p);
        assert_eq!(out.stats.accepted, 4);
        let batch = &out.shards[0];
        let mut vector = Vec::new();
        let inputs: Vec<(String, Option<Vec<f32>>)> = batch
            .model
            .iter()
            .map(|m| {
                let item = String::from_utf8(batch.model_field(m, 0).unwrap().to_vec()).unwrap();
                (item, batch.model_embedding(m, &mut vector).then(|| vector.clone()))
            })
            .collect();
        assert_eq!(
            inputs,
            [
                ("good".to_owned(), Some(vec![1.0, 0.5, -2.0])),
                ("short".to_owned(), None),
                ("text".to_owned(), None),
                ("none".to_owned(), None)
            ]
        );
        assert_eq!(
            dead_letter_reasons(&out),
            [
                "flow f: item short: embedding has dimension 2, expected 3; the item is catalogued without it",
                "flow f: item text: embedding is not an array of numbers; the item is catalogued without it",
            ]
        );
        assert_eq!(rejected(&out, RejectKind::Embedding), 2);

        // Off: the field is never read.
        let off = catalog(None);
        let out = decode(&off);
        assert_eq!((out.stats.accepted, out.stats.rejected.iter().sum::<u64>()), (4, 0));
        assert!(out.shards[0].model.iter().all(|m| m.fields[3].is_none()));
    }

    #[test]
    fn availability_is_read_from_catalog_events_and_a_bad_one_is_a_dead_letter() {
        let lines = [
            r#"{"k":"gone","ts":1,"available":false}"#,
            r#"{"k":"back","ts":2,"available":true}"#,
            r#"{"k":"plain","ts":3}"#,
            r#"{"k":"null","ts":4,"available":null}"#,
            r#"{"k":"word","ts":5,"available":"no"}"#,
        ];
        let out = decode_lines(&catalog(None), &lines);
        assert_eq!(out.stats.accepted, 5);
        let batch = &out.shards[0];
        let inputs: Vec<(String, ModelInputKind)> = batch
            .model
            .iter()
            .map(|m| (String::from_utf8(batch.model_field(m, 0).unwrap().to_vec()).unwrap(), m.kind))
            .collect();
        let item = |name: &str, available| (name.to_owned(), ModelInputKind::Item { available });
        assert_eq!(
            inputs,
            [item("gone", false), item("back", true), item("plain", true), item("null", true), item("word", true)]
        );
        assert_eq!(
            dead_letter_reasons(&out),
            ["flow f: item word: available is not true or false; the item is catalogued as available"]
        );
        assert_eq!(rejected(&out, RejectKind::Availability), 1);
    }

    /// Answers from a table by URL; counts batches. (The real client is
    /// tested against a real server in `freshet-io` and end to end.)
    struct TableEnricher {
        answers: Vec<(&'static str, Result<&'static str, &'static str>)>,
        batches: Vec<Vec<String>>,
    }

    impl Enricher for TableEnricher {
        fn call(&mut self, requests: Vec<EnrichRequest>) -> Vec<Result<Vec<u8>, String>> {
            self.batches.push(requests.iter().map(|r| r.url.clone()).collect());
            requests
                .iter()
                .map(|r| match self.answers.iter().find(|(u, _)| *u == r.url) {
                    Some((_, Ok(body))) => Ok(body.as_bytes().to_vec()),
                    Some((_, Err(e))) => Err(e.to_string()),
                    None => Err("HTTP 404".into()),
                })
                .collect()
        }
    }

    #[test]
    fn chained_enrichment_stages_apply_answers_in_order_and_policies_decide_failures() {
        use crate::enrich::{EnrichHttp, FailurePolicy, Template};
        let path = |s: &str| FieldPath::parse(s).unwrap();
        let stage = |id: u16, url: &str, field: &str, on_failure| {
            Stage::EnrichHttp(EnrichHttp {
                id,
                name: format!("s{id}"),
                url: Template::url(url).unwrap(),
                body: None,
                fields: vec![(path(field), "/v".into())],
                on_failure,
                mark: path("skipped"),
            })
        };
        let mut p = pipeline(WindowSpec::Global);
        p.flows[0].stages = vec![
            stage(0, "http://a/{k}", "cat", FailurePolicy::DeadLetter),
            // The second call's URL uses the first call's answer.
            stage(1, "http://b/{cat}", "dept", FailurePolicy::Skip),
            Stage::Route(0),
        ];
        let lines = [
            r#"{"k":"x","ts":1}"#,
            r#"{"k":"gone","ts":2}"#,
            r#"{"k":"y","ts":3}"#,
            r#"{"ts":4}"#,
            r#"{"k":"x","ts":5}"#,
        ]
        .join("\n");
        let mut enricher = TableEnricher {
            answers: vec![
                ("http://a/x", Ok(r#"{"v":"shoes"}"#)),
                ("http://a/y", Ok(r#"{"v":"hats"}"#)),
                ("http://a/gone", Err("HTTP 503 after 4 attempts")),
                ("http://b/shoes", Ok(r#"{"v":"apparel"}"#)),
            ],
            batches: vec![],
        };
        let mut decoder = Decoder::new(&p);
        let mut out = decoder.output();
        decoder.decode_enriched(&Chunk { data: lines.into_bytes(), ..Chunk::default() }, &mut out, &mut enricher);
        // Two rounds: every first stage, then the second stage of those that passed it.
        assert_eq!(enricher.batches.len(), 2, "{:?}", enricher.batches);
        assert_eq!(enricher.batches[1], vec!["http://b/shoes", "http://b/hats", "http://b/shoes"]);
        let written = String::from_utf8(out.outputs.sinks[0].data.clone()).unwrap();
        let rows: Vec<&str> = written.lines().collect();
        assert_eq!(rows.len(), 5, "{written}");
        assert_eq!(rows[0], r#"{"k":"x","ts":1,"cat":"shoes","dept":"apparel"}"#);
        assert!(rows[1].contains("enrich stage s0: HTTP 503 after 4 attempts") && rows[1].contains(r#""offset":1"#));
        assert_eq!(rows[2], r#"{"k":"y","ts":3,"cat":"hats","skipped":"s1"}"#);
        assert!(rows[3].contains("cannot make the call: URL: field k is missing") && rows[3].contains(r#""offset":3"#));
        assert_eq!(rows[4], r#"{"k":"x","ts":5,"cat":"shoes","dept":"apparel"}"#);
        assert_eq!(out.stats.accepted, 3);
        assert_eq!(out.stats.enriched, vec![3, 2]);
        assert_eq!(out.stats.enrich_skipped, vec![0, 1]);
        assert_eq!(out.stats.enrich_dead_lettered, vec![2, 0]);
        assert!(out.failure.is_none());

        // Policy `fail`: the chunk carries the failure for the runtime to stop on.
        if let Stage::EnrichHttp(e) = &mut p.flows[0].stages[0] {
            e.on_failure = FailurePolicy::Fail;
        }
        let mut decoder = Decoder::new(&p);
        let mut out = decoder.output();
        let chunk = Chunk { data: br#"{"k":"gone","ts":2}"#.to_vec(), ..Chunk::default() };
        decoder.decode_enriched(&chunk, &mut out, &mut enricher);
        assert_eq!(out.failure.as_deref(), Some("flow f: enrich stage s0: HTTP 503 after 4 attempts"));
    }
}
