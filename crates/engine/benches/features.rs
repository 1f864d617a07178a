//! The keyed-state hot path: folding records into tumbling and hopping
//! count features and firing their windows, for Zipf-like keys, without
//! and with a state TTL.
//!
//! `cargo bench -p freshet-engine --bench features`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use freshet_engine::aggregate::AggFn;
use freshet_engine::event::FieldPath;
use freshet_engine::features::keys::{hash_bytes, push_part};
use freshet_engine::features::{Entity, FeatureSpec, FeatureState, Format, Outputs};
use freshet_engine::record::{Record, RecordBatch, RecordValue};
use freshet_engine::window::WindowSpec;

fn batch(n: usize, keys: u64) -> RecordBatch {
    let mut b = RecordBatch::default();
    let mut x = 88172645463325252u64;
    for i in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Skewed keys: a few hot ones, a long tail.
        let k = (x % keys).min(x % 97 * (x % 13 + 1));
        let start = b.bytes.len() as u32;
        push_part(&mut b.bytes, format!("u{k}").as_bytes());
        let end = b.bytes.len() as u32;
        let hash = hash_bytes(&b.bytes[start as usize..]);
        let ts = 1_767_225_600_000 + i as i64;
        b.records.push(Record {
            feature: 0,
            ts,
            hash,
            key: (start, end),
            value: RecordValue::None,
            offset: i as u64,
            prior_max_ts: ts - 1,
        });
    }
    b
}

fn spec(window: WindowSpec, ttl: Option<i64>) -> FeatureSpec {
    FeatureSpec {
        name: "f".into(),
        flow: 0,
        key: vec![FieldPath::parse("user_id").unwrap()],
        entity: Entity::User,
        filter: None,
        window,
        agg: AggFn::Count,
        field: None,
        sink: Some((0, Format::Csv)),
        late_sink: None,
        updates_sink: None,
        allowed_lateness: 0,
        serve: false,
        ttl,
    }
}

fn features(c: &mut Criterion) {
    let b = batch(100_000, 100_000);
    let mut g = c.benchmark_group("features");
    g.throughput(Throughput::Elements(b.records.len() as u64));
    for (name, w, ttl) in [
        ("tumbling_5m", WindowSpec::Tumbling { size: 300_000 }, None),
        ("hopping_1h_5m", WindowSpec::Hopping { size: 3_600_000, slide: 300_000 }, None),
        ("hopping_1h_1m", WindowSpec::Hopping { size: 3_600_000, slide: 60_000 }, None),
        // The same with a state TTL: the cost of queueing keys for expiry.
        ("tumbling_5m_ttl_1m", WindowSpec::Tumbling { size: 300_000 }, Some(60_000)),
    ] {
        g.bench_function(name, |bench| {
            bench.iter(|| {
                let mut state = FeatureState::new(0, spec(w, ttl));
                let mut out = Outputs::new(1, 1);
                for r in &b.records {
                    state.apply(&b, r, r.prior_max_ts - 5001, &mut out);
                }
                state.on_watermark(i64::MAX, &mut out);
                out.sinks[0].rows
            })
        });
    }
    g.finish();
}

criterion_group!(benches, features);
criterion_main!(benches);
