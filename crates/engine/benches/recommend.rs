//! The recommender's two hot paths: learning one interaction, and ranking
//! top-10 for a user (from the published view, as the HTTP API does, and
//! from the live model, as `freshet eval` does), plus similar items.
//!
//! The model is built from a synthetic stream: 100k users, 20k items with
//! skewed popularity, 1M interactions.
//!
//! `cargo bench -p freshet-engine --bench recommend`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use freshet_engine::recommend::{Query, Ranking, Recommender, RecommenderSpec, RecommenderView, rank, similar};
use rand::{Rng, SeedableRng};

const USERS: u64 = 100_000;
const ITEMS: u64 = 20_000;
const EVENTS: u64 = 1_000_000;

fn skewed_item(rng: &mut impl Rng) -> u64 {
    let x: f64 = rng.random();
    ((x * x * x) * ITEMS as f64) as u64
}

fn model() -> (Recommender, RecommenderView) {
    let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(1);
    let mut m = Recommender::new(RecommenderSpec::default());
    for i in 0..ITEMS {
        m.upsert_item(&format!("i{i}"), Some(&format!("c{}", i % 100)), &[], 0);
    }
    for t in 0..EVENTS {
        let u = rng.random_range(0..USERS);
        m.interaction(&format!("u{u}"), &format!("i{}", skewed_item(&mut rng)), Some("view"), t as i64 * 100);
    }
    let view = RecommenderView::new(RecommenderSpec::default());
    view.publish(&mut m, true);
    (m, view)
}

fn bench(c: &mut Criterion) {
    let (mut m, view) = model();
    let users: Vec<String> = (0..1000).map(|u| format!("u{}", u * 97 % USERS)).collect();
    let mut out = Ranking::default();
    let mut g = c.benchmark_group("recommend");
    g.throughput(Throughput::Elements(1));
    let mut n = 0;
    g.bench_function("rank_top10_view", |b| {
        b.iter(|| {
            n = (n + 1) % users.len();
            rank(&view, &Query::for_user(&users[n], 10), &mut out);
            out.items.len()
        })
    });
    g.bench_function("rank_top10_live", |b| {
        b.iter(|| {
            n = (n + 1) % users.len();
            rank(&m, &Query::for_user(&users[n], 10), &mut out);
            out.items.len()
        })
    });
    g.bench_function("similar_top10_view", |b| {
        b.iter(|| {
            n = (n + 1) % 1000;
            similar(&view, n as u32, 10, &mut out);
            out.items.len()
        })
    });
    let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(2);
    let events: Vec<(String, String)> = (0..10_000)
        .map(|_| (format!("u{}", rng.random_range(0..USERS)), format!("i{}", skewed_item(&mut rng))))
        .collect();
    let mut t = EVENTS as i64 * 100;
    g.bench_function("learn_interaction", |b| {
        b.iter(|| {
            n = (n + 1) % events.len();
            t += 100;
            m.interaction(&events[n].0, &events[n].1, Some("view"), t);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
