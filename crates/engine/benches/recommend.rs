//! The recommender's two hot paths: learning one interaction, and ranking
//! top-10 for a user (from the published view, as the HTTP API does, and
//! from the live model, as `freshet eval` does), plus similar items and
//! forgetting an item; a checkpoint's copy of the model and learning while
//! it is held; ranking with a tenth of the catalog unavailable; and
//! in `recommend_llr`, the same model with co-occurrence normalised by
//! log-likelihood ratio.
//!
//! The model is built from a synthetic stream: 100k users, 20k items with
//! skewed popularity, 1M interactions. The `recommend_embedding` group runs
//! the same catalog with 64-dimensional item embeddings (100 clusters, one per
//! category) and 200k interactions: inserting an embedding, and ranking with
//! the embedding generator on (5 index searches per request).
//!
//! `cargo bench -p freshet-engine --bench recommend`

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use freshet_engine::recommend::{
    Asked, ModelRead, Normalisation, Query, Ranking, Recommender, RecommenderSpec, RecommenderView, rank, similar,
};

type Group<'a> = BenchmarkGroup<'a, WallTime>;
use rand::{Rng, SeedableRng};

const USERS: u64 = 100_000;
const ITEMS: u64 = 20_000;
const EVENTS: u64 = 1_000_000;

fn skewed_item(rng: &mut impl Rng) -> u64 {
    let x: f64 = rng.random();
    ((x * x * x) * ITEMS as f64) as u64
}

fn model(spec: RecommenderSpec) -> (Recommender, RecommenderView) {
    let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(1);
    let mut m = Recommender::new(spec.clone());
    for i in 0..ITEMS {
        m.upsert_item(&format!("i{i}"), Some(&format!("c{}", i % 100)), &[], 0);
    }
    for t in 0..EVENTS {
        let u = rng.random_range(0..USERS);
        m.interaction(&format!("u{u}"), &format!("i{}", skewed_item(&mut rng)), Some("view"), t as i64 * 100);
    }
    let view = RecommenderView::new(spec, 0);
    view.publish(&mut m, true);
    (m, view)
}

/// `n` more (user, item) interactions after the model's: any user, skewed items.
fn skewed_events(seed: u64, n: usize) -> Vec<(String, String)> {
    let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(seed);
    (0..n).map(|_| (format!("u{}", rng.random_range(0..USERS)), format!("i{}", skewed_item(&mut rng)))).collect()
}

/// A thousand users spread over the model's, the ones ranking benches ask for.
fn sampled_users() -> Vec<String> {
    (0..1000).map(|u| format!("u{}", u * 97 % USERS)).collect()
}

/// Ten items similar to each of the first thousand items in turn.
fn bench_similar(g: &mut Group<'_>, view: &RecommenderView, out: &mut Ranking) {
    let mut n = 0;
    g.bench_function("similar_top10_view", |b| {
        b.iter(|| {
            n = (n + 1) % 1000;
            similar(view, n as u32, 10, out);
            out.items.len()
        })
    });
}

/// Ranks top 10 for each of `users` in turn, from `model`.
fn bench_ranking(g: &mut Group<'_>, name: &str, model: &impl ModelRead, users: &[String], out: &mut Ranking) {
    let mut n = 0;
    g.bench_function(name, |b| {
        b.iter(|| {
            n = (n + 1) % users.len();
            rank(model, &Query::for_user(&users[n], 10), out);
            out.items.len()
        })
    });
}

/// Learns 10,000 more skewed interactions in turn (and again), after the model's.
fn bench_learning(g: &mut Group<'_>, m: &mut Recommender) {
    let events = skewed_events(2, 10_000);
    let (mut n, mut t) = (0, EVENTS as i64 * 100);
    g.bench_function("learn_interaction", |b| {
        b.iter(|| {
            n = (n + 1) % events.len();
            t += 100;
            m.interaction(&events[n].0, &events[n].1, Some("view"), t);
        })
    });
}

/// A checkpoint's barrier on the model's shard: the copy it takes (the
/// shard's pause), and learning a thousand interactions while a copy is
/// held by the thread that encodes it (what the copy costs the events after it).
fn bench_snapshot(g: &mut Group<'_>, m: &mut Recommender) {
    g.bench_function("snapshot_copy", |b| b.iter(|| m.snapshot_copy()));
    let events = skewed_events(3, 1000);
    let mut t = 2 * EVENTS as i64 * 100;
    g.bench_function("learn_1000_interactions_copy_held", |b| {
        b.iter_custom(|iterations| {
            let mut spent = std::time::Duration::ZERO;
            for _ in 0..iterations {
                let copy = m.snapshot_copy();
                let started = std::time::Instant::now();
                for (user, item) in &events {
                    t += 100;
                    m.interaction(user, item, Some("view"), t);
                }
                spent += started.elapsed();
                drop(copy);
            }
            spent
        })
    });
}

fn bench(c: &mut Criterion) {
    let (mut m, view) = model(RecommenderSpec::default());
    let users = sampled_users();
    let mut out = Ranking::default();
    let mut g = c.benchmark_group("recommend");
    g.throughput(Throughput::Elements(1));
    let mut n = 0;
    bench_ranking(&mut g, "rank_top10_view", &view, &users, &mut out);
    bench_ranking(&mut g, "rank_top10_live", &m, &users, &mut out);
    bench_similar(&mut g, &view, &mut out);
    // Every tenth item out of stock: one more bit test per candidate.
    for i in (0..ITEMS).step_by(10) {
        m.set_available(&format!("i{i}"), false);
    }
    view.publish(&mut m, false);
    bench_ranking(&mut g, "rank_top10_view_unavailable", &view, &users, &mut out);
    for i in (0..ITEMS).step_by(10) {
        m.set_available(&format!("i{i}"), true);
    }
    view.publish(&mut m, false);
    // What attribution adds: keeping an answer's ten items, and looking an
    // interaction's answer up (the ring full, so slots are reused).
    rank(&view, &Query::for_user(&users[0], 10), &mut out);
    let attribution = view.attribution();
    g.bench_function("attribution_serve", |b| b.iter(|| attribution.serve(Asked::Recommend(0), &out.items)));
    // The ring's 65,536 answers, each looked up in turn.
    let ids: Vec<String> = (0..1 << 16).map(|_| attribution.serve(Asked::Recommend(0), &out.items)).collect();
    let clicked = out.items[3].item;
    g.bench_function("attribution_interaction", |b| {
        b.iter(|| {
            n = (n + 1) % ids.len();
            attribution.interaction(&ids[n], clicked, Some("click"))
        })
    });
    bench_learning(&mut g, &mut m);
    bench_snapshot(&mut g, &mut m);
    // Forgetting an item probes every item's two lists once (20k items here).
    let items: Vec<String> = (0..ITEMS).map(|i| format!("i{i}")).collect();
    g.bench_function("forget_item", |b| {
        b.iter(|| {
            n = (n + 1) % items.len();
            m.forget_item(&items[n])
        })
    });
    g.finish();
}

fn bench_llr(c: &mut Criterion) {
    let mut spec = RecommenderSpec::default();
    spec.cooccurrence.normalisation = Normalisation::Llr;
    let (mut m, view) = model(spec);
    let users = sampled_users();
    let mut out = Ranking::default();
    let mut g = c.benchmark_group("recommend_llr");
    g.throughput(Throughput::Elements(1));
    bench_ranking(&mut g, "rank_top10_view", &view, &users, &mut out);
    bench_learning(&mut g, &mut m);
    g.finish();
}

const DIMENSION: usize = 64;

fn vector(rng: &mut impl Rng, cluster: u64) -> Vec<f32> {
    let hot = (cluster % DIMENSION as u64) as usize;
    (0..DIMENSION).map(|d| f32::from(u8::from(d == hot)) + (rng.random::<f32>() - 0.5) * 0.3).collect()
}

fn bench_embeddings(c: &mut Criterion) {
    let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(3);
    let mut spec = RecommenderSpec::default();
    spec.embedding.dimension = Some(DIMENSION);
    let mut m = Recommender::new(spec.clone());
    for i in 0..ITEMS {
        let v = vector(&mut rng, i % 100);
        m.upsert_item_with_embedding(&format!("i{i}"), Some(&format!("c{}", i % 100)), &[], &v, 0).unwrap();
    }
    for t in 0..EVENTS / 5 {
        let u = rng.random_range(0..USERS);
        m.interaction(&format!("u{u}"), &format!("i{}", skewed_item(&mut rng)), Some("view"), t as i64 * 100);
    }
    let view = RecommenderView::new(spec, 0);
    view.publish(&mut m, true);
    let users = sampled_users();
    let mut out = Ranking::default();
    let mut g = c.benchmark_group("recommend_embedding");
    g.throughput(Throughput::Elements(1));
    bench_ranking(&mut g, "rank_top10_view", &view, &users, &mut out);
    bench_similar(&mut g, &view, &mut out);
    let vectors: Vec<Vec<f32>> = (0..1000).map(|i| vector(&mut rng, i % 100)).collect();
    let mut i = 0usize;
    g.bench_function("upsert_item_with_embedding", |b| {
        b.iter(|| {
            // Re-embeds an existing item with another vector each time (a new point, as a catalog update makes).
            i += 1;
            let item = i % 1000;
            m.upsert_item_with_embedding(
                &format!("i{item}"),
                Some(&format!("c{}", item % 100)),
                &[],
                &vectors[i % 997],
                1,
            )
        })
    });
    g.finish();
}

criterion_group!(benches, bench, bench_llr, bench_embeddings);
criterion_main!(benches);
