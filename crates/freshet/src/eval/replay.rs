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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::protocol::EvalFrac;

    /// Returns the same list whatever it is asked, learns nothing.
    struct Fixed(Vec<u32>);

    impl StreamRecommender for Fixed {
        fn recommend(&mut self, _user: u32, _k: usize, out: &mut Vec<u32>) {
            out.extend(&self.0);
        }
        fn learn(&mut self, _user: u32, _item: u32, _timestamp: f64) {}
    }

    fn stream(events: &[(u32, u32)]) -> Stream {
        let users = events.iter().map(|e| e.0).max().map_or(0, |m| m + 1);
        let items = events.iter().map(|e| e.1).max().map_or(0, |m| m + 1);
        Stream {
            users: events.iter().map(|e| e.0).collect(),
            items: events.iter().map(|e| e.1).collect(),
            timestamps: (0..events.len()).map(|t| t as f64).collect(),
            user_names: (0..users).map(|u| format!("u{u}")).collect(),
            item_names: (0..items).map(|i| format!("i{i}")).collect(),
        }
    }

    #[test]
    fn items_outside_the_candidates_are_dropped_and_counted() {
        let s = stream(&[(0, 0), (1, 1), (0, 1), (1, 2), (0, 2)]);
        let protocol = Protocol::new(&s, EvalFrac::parse("1").unwrap(), 1);
        assert_eq!(protocol.evaluated, [2, 3, 4]);
        // 5 never occurs, 2 only from position 3 on, 1 twice.
        let mut model = Fixed(vec![5, 0, 1, 1, 2]);
        let o = replay(&s, &protocol, 10, &mut model, true, &ProgressBar::hidden());
        let lists: Vec<_> = o.lists.iter().map(|(p, l)| (*p, l.clone())).collect();
        // p2, user 0 has 0: keeps 1. p3, user 1 has 1: keeps 0. p4, user 0 has 0, 1: keeps 2.
        assert_eq!(lists, vec![(2, vec![1]), (3, vec![0]), (4, vec![2])]);
        assert_eq!(o.invalid_recommendations, 12);
        assert_eq!(o.evaluated, 3);
        assert!((o.hit - 2.0 / 3.0).abs() < 1e-12);
        assert!((o.mrr - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(o.coverage, 1.0);
    }

    #[test]
    fn lists_are_cut_to_k_after_cleaning() {
        let s = stream(&[(0, 0), (1, 1), (1, 2), (1, 3), (0, 3)]);
        let protocol = Protocol::new(&s, EvalFrac::parse("1").unwrap(), 1);
        assert_eq!(protocol.evaluated, [2, 3, 4]);
        let mut model = Fixed(vec![0, 1, 2, 3]);
        let o = replay(&s, &protocol, 2, &mut model, true, &ProgressBar::hidden());
        // p4: user 0 has 0, so 1 and 2 fill k = 2 and 3 (the target) is cut.
        assert_eq!(o.lists.last().unwrap(), &(4, vec![1, 2]));
        assert_eq!(o.hit, 0.0);
    }
}
