//! Measures the recommender's memory: builds the live model and its published
//! view from a synthetic stream (USERS users, ITEMS items, EVENTS_PER_USER
//! interactions each, item popularity skewed like the workload generator's)
//! and prints resident memory before and after, as JSON.
//!
//! `cargo run --release -p freshet-engine --example recommender_memory -- 1000000 100000 10`

use freshet_engine::recommend::{ModelRead, Recommender, RecommenderSpec, RecommenderView};
use rand::{Rng, SeedableRng};

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn main() {
    let args: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (users, items, per_user) = (
        args.first().copied().unwrap_or(1_000_000),
        args.get(1).copied().unwrap_or(100_000),
        args.get(2).copied().unwrap_or(10),
    );
    let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(7);
    let before = rss_bytes();
    let mut model = Recommender::new(RecommenderSpec::default());
    for i in 0..items {
        model.upsert_item(&format!("i{i}"), Some(&format!("c{}", i % 500)), &[], 0);
    }
    let started = std::time::Instant::now();
    let mut t = 0i64;
    for _round in 0..per_user {
        for u in 0..users {
            // Skewed popularity: the square of a uniform draw favours low ids.
            let x: f64 = rng.random();
            let item = ((x * x) * items as f64) as u64;
            t += 1;
            model.interaction(&format!("u{u}"), &format!("i{item}"), Some("view"), t);
        }
    }
    let learn_s = started.elapsed().as_secs_f64();
    let model_rss = rss_bytes();
    let view = RecommenderView::new(model.spec().clone(), 0);
    view.publish(&mut model, true);
    let view_rss = rss_bytes();
    let snapshot = model.snapshot().len();
    println!(
        "{}",
        serde_json::json!({
            "users": users, "items": items, "events": users * per_user,
            "events_per_s": (users * per_user) as f64 / learn_s,
            "model_bytes": model_rss - before,
            "view_bytes": view_rss - model_rss,
            "snapshot_bytes": snapshot,
        })
    );
}
