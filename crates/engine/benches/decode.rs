//! Decoding candidates on the workload's lines: the lean validating scanner
//! (what the engine uses), sonic-rs (SIMD DOM) and serde_json, each fully
//! validating a line and reading the reference job's four fields.
//!
//! `cargo bench -p freshet-engine --bench decode`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use freshet_engine::event::{FieldPath, Fields};
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

criterion_group!(benches, decode);
criterion_main!(benches);
