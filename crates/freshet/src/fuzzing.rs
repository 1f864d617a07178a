//! Entry points for the fuzz targets (`fuzz/` at the repository root): each
//! takes arbitrary input, runs one untrusted-input path of the binary, and
//! panics only when an invariant breaks. Not an API; hidden from the docs.
//!
//! The plans are built once per process and shared by every input.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use freshet_engine::decode::{Chunk, DecodeStats, Decoded, Decoder, Oversized, RejectKind};
use freshet_engine::features::{FeatureView, Format, Outputs, Views};
use freshet_engine::pipeline::Pipeline;
use freshet_engine::record::{RecordBatch, ShardInput};
use freshet_engine::shard::Shard;

use crate::checkpoint;
use crate::config::{self, load, plan};

/// A small pipeline that reaches what the embedded default does not: unmatched
/// events dropped, nested fields, every predicate, stage, window and
/// aggregate, routed events, CSV and NDJSON results, late output.
const SHAPED: &str = r#"
[pipeline]
dead_letter = "dlq"
unmatched = "drop"
max_event_bytes = 2048
max_depth = 8
shards = 3

[event_time]
field = "ts"
max_out_of_orderness = "1s"
allowed_lateness = "2s"

[sources.in]
type = "file"
path = "in.ndjson"

[sinks.dlq]
type = "file"
path = "dlq.ndjson"

[sinks.routed]
type = "stdout"

[sinks.table]
type = "file"
path = "table.csv"

[sinks.late]
type = "stdout"

[[flows]]
name = "shaped"
when = { any = [{ field = "kind", prefix = "a" }, { all = [{ field = "n", gte = 0 }, { field = "n", lt = 100 }] }, { field = "tags", exists = true }] }
fields = { ts = "integer", user = { type = "string", required = false }, n = { type = "number", required = false }, obj = { type = "object", required = false }, tags = { type = "array", required = false } }
stages = [
  { type = "filter", when = { not = { field = "drop", eq = true } } },
  { type = "set", field = "meta.version", value = 2 },
  { type = "set", field = "flag", value = { a = [1, "x", 2.5, false] } },
  { type = "copy", from = "user", to = "who.name" },
  { type = "rename", from = "n", to = "amount" },
  { type = "remove", fields = ["secret", "meta.tmp"] },
  { type = "route", sink = "routed" },
]

[[flows]]
name = "rest"
when = { field = "kind", not_in = ["skip", 1, true] }
time_field = "at.ms"
fields = { "at.ms" = "integer", v = { type = "any", required = false }, b = { type = "boolean", required = false } }

[[features]]
name = "count_by_user"
flow = "shaped"
key = ["user"]
window = { type = "tumbling", size = "1s" }
sink = "table"
late_sink = "late"

[[features]]
name = "sum_by_user_kind"
flow = "shaped"
key = ["user", "kind"]
window = { type = "hopping", size = "3s", slide = "1s" }
aggregate = "sum"
field = "amount"
sink = "routed"
late_sink = "late"

[[features]]
name = "distinct_kinds"
flow = "shaped"
key = ["who.name"]
entity = "user"
window = { type = "session", gap = "2s" }
aggregate = "distinct"
field = "kind"
precision = 4
sink = "routed"

[[features]]
name = "last_kinds"
flow = "shaped"
key = ["user"]
window = { type = "global" }
aggregate = "last_n"
field = "kind"
n = 3
sink = "table"

[[features]]
name = "mean_obj"
flow = "shaped"
key = ["obj.k", "tags"]
entity = "item"
window = { type = "tumbling", size = "2s" }
aggregate = "mean"
field = "obj.x"
sink = "routed"

[[features]]
name = "decayed"
flow = "shaped"
key = ["kind"]
entity = "item"
window = { type = "global" }
aggregate = "decayed_count"
half_life = "1s"
sink = "routed"

[[features]]
name = "min_v"
flow = "rest"
key = ["kind"]
entity = "user"
filter = { field = "v", in = [1, "a", true, 2.5] }
window = { type = "tumbling", size = "1s" }
aggregate = "min"
field = "v"
sink = "table"

[[features]]
name = "max_v"
flow = "rest"
key = ["kind", "b"]
entity = "none"
window = { type = "hopping", size = "2s", slide = "500ms" }
aggregate = "max"
field = "v"
sink = "routed"
"#;

/// A schema the config target may name (`schema = "schema.json"`).
const SCHEMA: &str = r#"{"type": "object", "properties": {"ts": {"type": "integer"}}, "required": ["ts"]}"#;

fn default_plan() -> &'static plan::Plan {
    static PLAN: OnceLock<plan::Plan> = OnceLock::new();
    PLAN.get_or_init(|| {
        config::plan_default(Path::new("/nonexistent/freshet-fuzz"), 2).expect("the embedded default plans")
    })
}

fn shaped_plan() -> &'static plan::Plan {
    static PLAN: OnceLock<plan::Plan> = OnceLock::new();
    PLAN.get_or_init(|| {
        let config = load::parse(SHAPED, "fuzzing", &|_: &str| None).expect("the fuzzing pipeline parses");
        plan::plan_with(&config, "fuzzing", 2, &no_files).expect("the fuzzing pipeline plans")
    })
}

/// Schema files as the fuzz targets see them: `schema.json` and `broken.json`
/// exist, nothing else does; the file system is never read.
fn no_files(name: &str) -> (String, std::io::Result<String>) {
    let text = match name {
        "schema.json" => Ok(SCHEMA.to_string()),
        "broken.json" => Ok("{\"type\":".to_string()),
        _ => Err(std::io::Error::from(std::io::ErrorKind::NotFound)),
    };
    (name.to_string(), text)
}

/// Decodes `data` as one chunk (with one reader-cut oversized line after the
/// first) through the embedded default pipeline and a pipeline with every stage,
/// window and aggregate, then folds the records into shards and fires every
/// window. Panics when an invariant breaks: each line is accepted, rejected
/// with a reason or dropped by policy, and the counts add up; dead letters,
/// routed events and NDJSON results are JSON; a shard's snapshot restores to
/// the same snapshot.
pub fn decode_lines(data: &[u8]) {
    decode_through(&default_plan().pipeline, data);
    decode_through(&shaped_plan().pipeline, data);
}

fn line_count(data: &[u8]) -> u64 {
    if data.is_empty() {
        return 0;
    }
    memchr::memchr_iter(b'\n', data).count() as u64 + u64::from(data.last() != Some(&b'\n'))
}

fn decode_through(p: &Pipeline, data: &[u8]) -> DecodeStats {
    let mut decoder = Decoder::new(p);
    let mut out = decoder.output();
    // After the first line (if any), one that the reader cut for its length.
    let cut =
        (!data.is_empty()).then(|| Oversized { offset: 1, len: 1 << 30, prefix: data[..data.len().min(16)].to_vec() });
    let chunk =
        Chunk { data: data.to_vec(), oversized: cut.into_iter().collect(), end_of_partition: true, ..Chunk::default() };
    decoder.decode(&chunk, &mut out);
    check_decoded(p, &chunk, &out);

    // Shards: fold the records, check a snapshot round trip, end the input.
    // (A shard without records has nothing to show; skipping it keeps the
    // target fast, as a fresh shard allocates a key table per feature.)
    let views: Views = Arc::new(p.features.iter().map(FeatureView::new).collect());
    let max_ts = out.max_ts;
    for batch in std::mem::take(&mut out.shards).into_iter().filter(|b| !b.records.is_empty()) {
        let mut shard = Shard::new(p, Some(views.clone()));
        shard.register((0, 0), 0);
        shard.process(&shard_input(batch, max_ts, false));
        shard.publish();
        let snapshot = shard.snapshot();
        let mut restored = Shard::new(p, Some(views.clone()));
        if let Err(e) = restored.restore(&snapshot, 0) {
            panic!("a shard does not restore its own snapshot: {e}");
        }
        assert!(restored.snapshot() == snapshot, "snapshot, restore, snapshot changed the state");
        shard.process(&shard_input(RecordBatch::default(), None, true));
        shard.publish();
        assert!(shard.finished(), "the only partition ended");
        check_outputs(p, &shard.take_outputs(Vec::new), "shard");
    }
    out.stats
}

fn shard_input(batch: RecordBatch, max_ts: Option<i64>, end: bool) -> ShardInput {
    ShardInput {
        seq: u64::from(end),
        partition: Some((0, 0)),
        max_ts,
        end_of_partition: end,
        idle: false,
        ingest_ms: 0,
        ingest_us: 0,
        batch,
        barrier: None,
        forwarded: None,
        forget: None,
    }
}

fn check_decoded(p: &Pipeline, chunk: &Chunk, out: &Decoded) {
    let s = &out.stats;
    let lines = line_count(&chunk.data) + chunk.oversized.len() as u64;
    assert_eq!(s.lines, lines, "lines counted");
    let rejected: u64 = s.rejected.iter().sum();
    // A rejected embedding or availability is a dead letter of an accepted line (its item is still catalogued).
    let of_accepted: u64 = [RejectKind::Embedding, RejectKind::Availability]
        .iter()
        .map(|k| s.rejected[RejectKind::ALL.iter().position(|x| x == k).unwrap_or(0)])
        .sum();
    assert_eq!(
        s.accepted + rejected - of_accepted + s.dropped_unmatched,
        s.lines,
        "every line accepted, rejected or dropped"
    );
    let after_flow: u64 = [RejectKind::FieldRule, RejectKind::Schema, RejectKind::EventTime]
        .iter()
        .map(|k| s.rejected[RejectKind::ALL.iter().position(|x| x == k).unwrap_or(0)])
        .sum();
    assert_eq!(s.flow_in.iter().sum::<u64>(), s.accepted + after_flow, "every line a flow took is counted once");
    assert!(s.filtered <= s.accepted, "only accepted lines are filtered");
    assert_eq!(out.max_ts.is_some(), s.accepted > 0, "max_ts is set by accepted lines");
    let mut records = 0;
    for batch in &out.shards {
        for r in &batch.records {
            assert!((r.feature as usize) < p.features.len(), "record of an unknown feature");
            assert!(r.key.0 <= r.key.1 && r.key.1 as usize <= batch.bytes.len(), "key outside the batch");
            assert!(Some(r.ts) <= out.max_ts, "record later than max_ts");
            assert!(r.offset < chunk.first_offset + s.lines, "record offset past the chunk");
            let _ = batch.input(r);
        }
        records += batch.records.len() as u64;
    }
    assert_eq!(records, s.records, "records counted");
    if let Some(dlq) = p.dead_letter {
        let buf = &out.outputs.sinks[dlq as usize];
        assert_eq!(buf.rows, rejected, "one dead letter per rejected line");
        for line in buf.data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let text = String::from_utf8_lossy(line);
            let dl: DeadLetter = serde_json::from_slice(line)
                .unwrap_or_else(|e| panic!("dead letter without reason or offset ({e}): {text}"));
            assert!(!dl.reason.is_empty() && dl.offset < s.lines, "dead letter: {text}");
        }
    }
    check_outputs(p, &out.outputs, "decoder");
}

/// What a dead letter must say (other fields are checked as JSON only).
#[derive(serde::Deserialize)]
struct DeadLetter {
    reason: String,
    offset: u64,
}

/// A JSON object, checked but not kept.
type Object = std::collections::BTreeMap<String, serde::de::IgnoredAny>;

/// Every NDJSON sink holds `rows` lines, each a JSON object.
fn check_outputs(p: &Pipeline, outputs: &Outputs, from: &str) {
    for (spec, buf) in p.sinks.iter().zip(&outputs.sinks) {
        assert!(buf.data.is_empty() || buf.data.ends_with(b"\n"), "{from}: sink {} ends mid-row", spec.name);
        if spec.format != Format::Ndjson {
            continue;
        }
        let mut rows = 0;
        for line in buf.data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            // From a str: serde_json checks UTF-8 only then, even in ignored values.
            let parsed = std::str::from_utf8(line)
                .map_err(|e| e.to_string())
                .and_then(|text| serde_json::from_str::<Object>(text).map_err(|e| e.to_string()));
            if let Err(e) = parsed {
                panic!(
                    "{from}: row of sink {} is not a JSON object ({e}): {}",
                    spec.name,
                    String::from_utf8_lossy(line)
                );
            }
            rows += 1;
        }
        assert_eq!(rows, buf.rows, "{from}: rows counted in sink {}", spec.name);
    }
}

/// Parses `text` as a config file (variables whose names have an even
/// length are set, others are not) and plans it. Returns the plan's
/// fingerprint, or the config error's text; panics never.
pub fn load_config(text: &str) -> Result<String, String> {
    // Freshet's own variables as a deployment sets them (paths; the rest take
    // their defaults), any other name set or not by the parity of its length.
    let env = |name: &str| {
        let set = match name.strip_prefix("FRESHET_") {
            Some(_) => name.ends_with("_DIR") || name.ends_with("_INPUT") || name.ends_with("_OUTPUT"),
            None => name.len().is_multiple_of(2),
        };
        set.then(|| format!("/fuzz/{name}"))
    };
    let result = load::parse(text, "fuzz.toml", &env).and_then(|c| plan::plan_with(&c, "fuzz.toml", 2, &no_files));
    match result {
        Ok(plan) => {
            assert!(plan.pipeline.shards >= 1 && plan.decoders >= 1, "a plan has a shard and a decoder");
            assert_eq!(plan.sources.len(), plan.pipeline.sources.len(), "sources planned once");
            assert_eq!(plan.sinks.len(), plan.pipeline.sinks.len(), "sinks planned once");
            let _ = plan.bounded();
            Ok(plan.fingerprint())
        }
        Err(e) => {
            assert!(!e.problems.is_empty(), "a config error names a problem");
            Err(e.to_string())
        }
    }
}

/// Decodes `bytes` as a checkpoint file and, when it decodes, restores each
/// shard snapshot into a fresh shard of the embedded default plan, then runs
/// the restored shard to the end of its input and snapshots it again. The
/// same is done with the bytes after the header re-sealed under a correct
/// length and checksum, so mutated payloads get past the checksum. Errors are
/// fine; panics are not. Returns how many snapshots of `bytes` as given
/// restored.
pub fn read_checkpoint(bytes: &[u8]) -> usize {
    let restored = restore_checkpoint(bytes);
    if let Some(payload) = bytes.get(24..) {
        let mut sealed = bytes[..24].to_vec();
        sealed[12..20].copy_from_slice(&(payload.len() as u64).to_le_bytes());
        sealed[20..24].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
        sealed.extend_from_slice(payload);
        restore_checkpoint(&sealed);
    }
    restored
}

fn restore_checkpoint(bytes: &[u8]) -> usize {
    let Ok(cp) = checkpoint::decode(bytes) else { return 0 };
    let p = &default_plan().pipeline;
    let views: Views = Arc::new(p.features.iter().map(FeatureView::new).collect());
    let mut restored = 0;
    for snapshot in &cp.shards {
        let mut shard = Shard::new(p, Some(views.clone()));
        if shard.restore(snapshot, 0).is_err() {
            continue;
        }
        restored += 1;
        shard.publish();
        let again = shard.snapshot();
        let mut copy = Shard::new(p, None);
        if let Err(e) = copy.restore(&again, 0) {
            panic!("a restored shard's snapshot does not restore: {e}");
        }
        shard.process(&shard_input(RecordBatch::default(), None, true));
        shard.advance(i64::MAX);
        shard.publish();
        let _ = (shard.key_counts(), shard.heap_bytes(), shard.snapshot());
        check_outputs(p, &shard.take_outputs(Vec::new), "restored shard");
    }
    restored
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINES: &[u8] = br#"{"event_id":"e1","type":"view","user_id":"u7","item_id":"i3","session_id":"s0","ts":1767225595779,"context":{"device":"tv","placement":"search"}}
{"event_id":"e2","type":"purchase","user_id":"u7","item_id":"i3","session_id":"s0","ts":1767225596000,"price":9.5}
{"event_id":"e3","type":"item_upsert","item_id":"i9","ts":1767225597000,"category":"c1"}
{"event_id":"e4","type":"view","user_id":"u7"
{"kind":"abc","ts":1000,"user":"u1","n":3,"obj":{"k":"o","x":1.5},"tags":["t"],"secret":1}
{"kind":"zz","at":{"ms":2500},"v":2.5,"b":true}

[1,2]
"#;

    #[test]
    fn harnesses_pass_on_real_inputs() {
        decode_lines(LINES);
        decode_lines(b"");
        // Both pipelines take some lines and reach their features.
        let default = decode_through(&default_plan().pipeline, LINES);
        assert_eq!((default.accepted, default.rejected.iter().sum::<u64>()), (3, 6), "{default:?}");
        assert!(default.records > 10, "{default:?}");
        let shaped = decode_through(&shaped_plan().pipeline, LINES);
        assert_eq!(shaped.flow_in, [1, 4], "{shaped:?}");
        assert_eq!(shaped.accepted, 2, "{shaped:?}");
        assert!(shaped.records >= 7, "{shaped:?}");
        let loaded = load_config(config::DEFAULT_CONFIG);
        assert!(loaded.is_ok(), "{loaded:?}");
        assert!(load_config(SHAPED).is_ok());
        assert!(load_config("[pipeline\n").is_err());
        assert!(load_config("[[flows]]\nname = \"f\"\nschema = \"broken.json\"\n").is_err());
    }

    #[test]
    fn checkpoint_harness_restores_a_written_checkpoint() {
        let p = &default_plan().pipeline;
        let mut decoder = Decoder::new(p);
        let mut out = decoder.output();
        decoder.decode(&Chunk { data: LINES.to_vec(), ..Chunk::default() }, &mut out);
        let shards = std::mem::take(&mut out.shards)
            .into_iter()
            .map(|batch| {
                let mut shard = Shard::new(p, None);
                shard.process(&shard_input(batch, out.max_ts, false));
                shard.snapshot()
            })
            .collect();
        let cp = checkpoint::Checkpoint {
            id: 1,
            fingerprint: "f".into(),
            sources: vec![],
            shards,
            sinks: vec![],
            tables: vec![],
        };
        let dir = tempfile::tempdir().unwrap();
        checkpoint::Store::open(dir.path(), 1).unwrap().write(&cp).unwrap();
        let file = dir.path().join("checkpoints").join("checkpoint-00000000000000000001.bin");
        assert_eq!(read_checkpoint(&std::fs::read(file).unwrap()), 2);
        assert_eq!(read_checkpoint(b"FRSHCKPT"), 0);
    }

    /// The checkpoint target's seeds must reach restore, or it fuzzes the header only.
    #[test]
    fn committed_checkpoint_seeds_restore() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/checkpoint");
        for name in ["default-mid-run.bin", "default-end.bin"] {
            let bytes = std::fs::read(dir.join(name)).unwrap();
            assert_eq!(read_checkpoint(&bytes), 2, "{name}: regenerate it as fuzz/README.md says");
        }
    }
}
