//! Throwaway tuning loop (not committed).
use freshet_engine::recommend::*;
use std::collections::{HashMap, HashSet};

fn load(which: &str) -> Vec<(f64, usize, String, String)> {
    let mut rows = Vec::new();
    let mut idx = 0;
    let (files, sep, cols): (Vec<&str>, char, (usize, usize, usize)) = match which {
        "ml" => (vec!["/work/shared/datasets/movielens-latest-small/ratings.csv"], ',', (0, 1, 3)),
        _ => (
            vec![
                "/work/shared/datasets/yoochoose-rsc15-100k/yoochoose-clicks-100k_train_full.txt",
                "/work/shared/datasets/yoochoose-rsc15-100k/yoochoose-clicks-100k_test.txt",
            ],
            '\t',
            (0, 1, 2),
        ),
    };
    for f in files {
        for line in std::fs::read_to_string(f).unwrap().lines().skip(1) {
            if line.trim().is_empty() {
                continue;
            }
            let p: Vec<&str> = line.split(sep).collect();
            rows.push((
                p[cols.2].parse::<f64>().unwrap(),
                idx,
                p[cols.0].trim().to_string(),
                p[cols.1].trim().to_string(),
            ));
            idx += 1;
        }
    }
    rows.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap().then(a.1.cmp(&b.1)));
    rows
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let which = args.get(1).map(|s| s.as_str()).unwrap_or("yc");
    let rows = load(which);
    let n = rows.len();
    let start = 4 * n / 5;
    let mut spec = RecommenderSpec::default();
    for kv in args.iter().skip(2) {
        let (k, v) = kv.split_once('=').unwrap();
        let f: f64 = v.parse().unwrap();
        match k {
            "recent" => spec.recent_items = f as usize,
            "decay" => spec.recency_decay = f,
            "pw" => spec.cooccurrence.pair_window = f as usize,
            "de" => spec.cooccurrence.distance_exponent = f,
            "sd" => spec.cooccurrence.source_damping = f,
            "cd" => spec.cooccurrence.candidate_damping = f,
            "m" => spec.cooccurrence.max_neighbours = f as usize,
            "seq" => spec.sequence.weight = f,
            "seqsrc" => spec.sequence.sources = f as usize,
            "seqdecay" => spec.sequence.recency_decay = f,
            "gap" => spec.sequence.session_gap_ms = f as i64,
            "trend" => spec.trending.weight = f,
            "hl" => spec.trending.half_life_ms = f as i64,
            "only" => spec = spec.only(Generator::ALL[f as usize]),
            _ => panic!("{k}"),
        }
    }
    let mut model = Recommender::new(spec);
    let mut seen: HashMap<String, HashSet<String>> = HashMap::new();
    let (mut ev, mut hit, mut ndcg) = (0u64, 0.0, 0.0);
    let mut out = Ranking::default();
    let t = std::time::Instant::now();
    let (mut rank_time, mut learn_time) = (0.0, 0.0);
    for (p, (ts, _, u, i)) in rows.iter().enumerate() {
        let s = seen.entry(u.clone()).or_default();
        if p >= start && !s.is_empty() && !s.contains(i) {
            ev += 1;
            let t0 = std::time::Instant::now();
            rank(&model, &Query::for_user(u, 10), &mut out);
            rank_time += t0.elapsed().as_secs_f64();
            if let Some(r) = out.items.iter().position(|x| model.item_name(x.item) == Some(i.as_str())) {
                hit += 1.0;
                ndcg += 1.0 / ((r + 2) as f64).log2();
            }
        }
        s.insert(i.clone());
        let t0 = std::time::Instant::now();
        model.interaction(u, i, None, (ts * 1000.0) as i64);
        learn_time += t0.elapsed().as_secs_f64();
    }
    println!(
        "{which} ev={ev} hit={:.4} ndcg={:.4} {:.0} ev/s",
        hit / ev as f64,
        ndcg / ev as f64,
        n as f64 / t.elapsed().as_secs_f64()
    );
    println!("rank {rank_time:.2}s learn {learn_time:.2}s total {:.2}s", t.elapsed().as_secs_f64());
}
