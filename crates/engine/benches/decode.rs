//! Decoding candidates on the workload's lines: the lean validating scanner
//! (what the engine uses), sonic-rs (SIMD DOM) and serde_json, each fully
//! validating a line and reading the reference job's four fields; then the
//! engine's whole decoder step (flows, keys, records per shard) and a shard
//! applying those records, on the reference job's two features.
//!
//! `cargo bench -p freshet-engine --bench decode`

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use freshet_engine::aggregate::AggFn;
use freshet_engine::decode::{Chunk, Decoder};
use freshet_engine::event::{FieldPath, Fields};
use freshet_engine::features::{Entity, FeatureSpec, Format};
use freshet_engine::flow::{Dedup, Flow, Stage};
use freshet_engine::pipeline::{EventTime, Limits, Pipeline, SinkSpec, Unmatched};
use freshet_engine::predicate::{Literal, Predicate};
use freshet_engine::record::{RecordBatch, ShardInput};
use freshet_engine::shard::Shard;
use freshet_engine::window::WindowSpec;
use std::hint::black_box;

/// Lines shaped like shared/workload/gen_events.py's (views, purchases, catalog).
fn lines() -> Vec<String> {
    (0..4096)
        .map(|i| match i % 20 {
            0 => format!(
                r#"{{"event_id":"e{i}","type":"item_upsert","item_id":"i{}","ts":{},"category":"c{}","tags":["t3","t17"],"title":"compact travel watch"}}"#,
                50000 + i,
                1767225600000u64 + i * 997,
                i % 50
            ),
            1 => format!(
                r#"{{"event_id":"e{i}","type":"purchase","user_id":"u{}","item_id":"i{}","session_id":"s{}","ts":{},"context":{{"device":"mobile","placement":"pdp"}},"price":123.45}}"#,
                i * 7919 % 100000,
                i * 104729 % 50000,
                i / 3,
                1767225600000u64 + i * 997
            ),
            _ => format!(
                r#"{{"event_id":"e{i}","type":"view","user_id":"u{}","item_id":"i{}","session_id":"s{}","ts":{},"context":{{"device":"tv","placement":"search"}}}}"#,
                i * 7919 % 100000,
                i * 104729 % 50000,
                i / 3,
                1767225600000u64 + i * 997
            ),
        })
        .collect()
}

fn decode(c: &mut Criterion) {
    let lines = lines();
    let bytes: u64 = lines.iter().map(|l| l.len() as u64).sum();
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(lines.len() as u64));
    let paths = ["type", "user_id", "item_id", "ts"].map(|p| FieldPath::parse(p).unwrap());
    g.bench_function("lean_scanner", |b| {
        let mut fields = Fields::default();
        b.iter(|| {
            let mut n = 0usize;
            for l in &lines {
                let mut ev = fields.decode(l.as_bytes(), 64).unwrap();
                for p in &paths {
                    n += ev.get(p).map_or(0, |v| v.raw.len());
                }
            }
            black_box(n)
        })
    });
    g.bench_function("sonic_rs_dom", |b| {
        use sonic_rs::JsonValueTrait;
        b.iter(|| {
            let mut n = 0usize;
            for l in &lines {
                let v: sonic_rs::Value = sonic_rs::from_str(l).unwrap();
                for p in ["type", "user_id", "item_id"] {
                    n += v.get(p).and_then(|x| x.as_str()).map_or(0, str::len);
                }
                n += v.get("ts").and_then(|x| x.as_i64()).map_or(0, |t| t as usize & 1);
            }
            black_box(n)
        })
    });
    g.bench_function("serde_json_value", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for l in &lines {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                for p in ["type", "user_id", "item_id"] {
                    n += v.get(p).and_then(|x| x.as_str()).map_or(0, str::len);
                }
                n += v.get("ts").and_then(|x| x.as_i64()).map_or(0, |t| t as usize & 1);
            }
            black_box(n)
        })
    });
    g.finish();
    eprintln!("({} lines, {} bytes per iteration)", lines.len(), bytes);
}

/// The reference job (examples/reference-job.toml) as the engine sees it, on
/// one shard; with `dedup`, its flow drops repeated `event_id`s.
fn reference_pipeline(dedup: bool) -> Pipeline {
    let p = |s: &str| FieldPath::parse(s).unwrap();
    let s = |v: &str| Literal::Str(v.into());
    let feature = |name: &str, key: Vec<FieldPath>, filter, window, sink| FeatureSpec {
        name: name.into(),
        flow: 0,
        key,
        entity: Entity::None,
        filter,
        window,
        agg: AggFn::Count,
        field: None,
        sink: Some((sink, Format::Csv)),
        late_sink: None,
        updates_sink: None,
        allowed_lateness: 0,
        serve: false,
        ttl: None,
    };
    Pipeline {
        flows: vec![Flow {
            name: "interactions".into(),
            when: Predicate::In(p("type"), vec![s("view"), s("click"), s("add_to_cart"), s("purchase")]),
            rules: vec![],
            schema: None,
            time_field: p("ts"),
            stages: if dedup {
                vec![Stage::Dedup(Dedup { id: 0, key: vec![p("event_id")], ttl: 600_000 })]
            } else {
                vec![]
            },
            features: vec![0, 1],
        }],
        features: vec![
            feature("user_type_5m", vec![p("user_id"), p("type")], None, WindowSpec::Tumbling { size: 300_000 }, 0),
            feature(
                "item_views_1h",
                vec![p("item_id")],
                Some(Predicate::Eq(p("type"), s("view"))),
                WindowSpec::Hopping { size: 3_600_000, slide: 300_000 },
                1,
            ),
        ],
        sinks: ["a", "b"].map(|n| SinkSpec { name: n.into(), format: Format::Csv }).to_vec(),
        dead_letter: None,
        unmatched: Unmatched::Drop,
        sources: vec!["events".into()],
        limits: Limits::default(),
        event_time: EventTime { max_out_of_orderness: 5000, idle_timeout: 30_000, bounded_sources: vec![] },
        shards: 1,
        recommender: None,
        tables: vec![],
    }
}

fn pipeline(c: &mut Criterion) {
    for (suffix, dedup) in [("", false), ("_dedup", true)] {
        pipeline_case(c, suffix, dedup);
    }
}

/// The decoder and a shard on the reference job, named with `suffix`.
fn pipeline_case(c: &mut Criterion, suffix: &str, dedup: bool) {
    let lines = lines();
    let mut data = Vec::new();
    for l in &lines {
        data.extend_from_slice(l.as_bytes());
        data.push(b'\n');
    }
    let chunk = Chunk { data, ..Chunk::default() };
    let pipeline = reference_pipeline(dedup);
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(lines.len() as u64));
    let mut decoder = Decoder::new(&pipeline);
    g.bench_function(format!("decoder_reference_job{suffix}"), |b| {
        b.iter(|| {
            let mut out = decoder.output();
            decoder.decode(&chunk, &mut out);
            black_box(out.stats.records)
        })
    });
    let mut out = decoder.output();
    decoder.decode(&chunk, &mut out);
    let batch = std::mem::take(&mut out.shards[0]);
    g.bench_function(format!("shard_reference_job{suffix}"), |b| {
        b.iter_batched(
            || {
                let mut shard = Shard::new(&pipeline, None);
                shard.register((0, 0), 0);
                let input = ShardInput {
                    seq: 0,
                    partition: Some((0, 0)),
                    max_ts: out.max_ts,
                    end_of_partition: true,
                    idle: false,
                    ingest_ms: 0,
                    ingest_us: 0,
                    batch: RecordBatch {
                        records: batch.records.clone(),
                        bytes: batch.bytes.clone(),
                        markers: Vec::new(),
                        model: Vec::new(),
                    },
                    barrier: None,
                    forwarded: None,
                    forget: None,
                };
                (shard, input)
            },
            |(mut shard, input)| {
                let stats = shard.process(&input);
                black_box(stats.records + shard.take_outputs(Vec::new).sinks[0].rows)
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, decode, pipeline);
criterion_main!(benches);
