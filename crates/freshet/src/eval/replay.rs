//! The prequential replay (peer README, "Protocol", steps 6–7): every
//! position in canonical order, a top-k query before each evaluated event,
//! then the event fed to the model.
//!
//! The replay enforces the candidate rule rather than trusting the model: a
//! returned item that no event before the position had, that the user
//! already has, or that repeats an earlier entry of the list is dropped and
//! counted in `invalid_recommendations`; the list is then cut to k. Metrics
//! are summed in position order, as the peer sums them.

use std::time::Instant;

use indicatif::ProgressBar;
use rustc_hash::FxHashSet;

use super::dataset::Stream;
use super::model::StreamRecommender;
use super::protocol::{Protocol, rank_metrics};

/// What one replay of one model measured.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Evaluated events.
    pub evaluated: usize,
    /// Mean hit@k.
    pub hit: f64,
    /// Mean NDCG@k.
    pub ndcg: f64,
    /// Mean reciprocal rank, truncated at k.
    pub mrr: f64,
    /// Distinct items in any (cleaned) list / distinct items in the dataset.
    pub coverage: f64,
    /// Wall time of the replay: model updates and queries and the checks.
    pub seconds: f64,
    /// Positions replayed per second of `seconds`.
    pub events_per_s: f64,
    /// Returned items dropped by the candidate rule (or as duplicates).
    pub invalid_recommendations: u64,
    /// The cleaned list at each evaluated position, when asked for.
    pub lists: Vec<(usize, Vec<u32>)>,
}

/// Replays `stream` through `model`, asking for `k` items at each evaluated
/// position of `protocol`; keeps the lists if `keep_lists`. Advances
/// `progress` by positions.
pub fn replay(
    stream: &Stream,
    protocol: &Protocol,
    k: usize,
    model: &mut dyn StreamRecommender,
    keep_lists: bool,
    progress: &ProgressBar,
) -> Outcome {
    let started = Instant::now();
    let mut user_items: Vec<FxHashSet<u32>> = vec![FxHashSet::default(); stream.n_users()];
    let mut seen_items = 0u32; // items 0..seen_items occurred before the position
    // The last query whose list had the item, to catch repeats in a list.
    let (mut query, mut in_list) = (0u32, vec![u32::MAX; stream.n_items()]);
    let mut recommended = vec![false; stream.n_items()];
    let (mut raw, mut list) = (Vec::with_capacity(k), Vec::with_capacity(k));
    let (mut sums, mut invalid) = ((0.0f64, 0.0f64, 0.0f64), 0u64);
    let mut lists = Vec::new();
    let mut evaluated = protocol.evaluated.iter().copied().peekable();
    for p in 0..stream.len() {
        let (u, i, t) = (stream.users[p], stream.items[p], stream.timestamps[p]);
        if evaluated.next_if_eq(&p).is_some() {
            query += 1;
            raw.clear();
            model.recommend(u, k, &mut raw);
            list.clear();
            let own = &user_items[u as usize];
            for &c in &raw {
                let candidate = c < seen_items && !own.contains(&c) && in_list[c as usize] != query;
                if !candidate {
                    invalid += 1;
                    continue;
                }
                in_list[c as usize] = query;
                if list.len() < k {
                    list.push(c);
                }
            }
            for &c in &list {
                recommended[c as usize] = true;
            }
            let (hit, ndcg, rr) = rank_metrics(list.iter().position(|&c| c == i));
            sums = (sums.0 + hit, sums.1 + ndcg, sums.2 + rr);
            if keep_lists {
                lists.push((p, list.clone()));
            }
        }
        model.learn(u, i, t);
        user_items[u as usize].insert(i);
        seen_items = seen_items.max(i + 1);
        if p % 4096 == 0 {
            progress.set_position(p as u64);
        }
    }
    progress.set_position(stream.len() as u64);
    let seconds = started.elapsed().as_secs_f64();
    let n = protocol.evaluated.len();
    let mean = |sum: f64| if n == 0 { 0.0 } else { sum / n as f64 };
    Outcome {
        evaluated: n,
        hit: mean(sums.0),
        ndcg: mean(sums.1),
        mrr: mean(sums.2),
        coverage: recommended.iter().filter(|&&r| r).count() as f64 / stream.n_items().max(1) as f64,
        seconds,
        events_per_s: stream.len() as f64 / seconds.max(1e-9),
        invalid_recommendations: invalid,
        lists,
    }
}
