//! The prequential replay (peer README, "Protocol", steps 6–7): every
//! position in canonical order, a top-k query before each evaluated event,
//! then the event fed to the model.
//!
//! The replay enforces the candidate rule rather than trusting the model: a
//! returned item that no event before the position had, that the user
//! already has, or that repeats an earlier entry of the list is dropped and
//! counted in `invalid_recommendations`; the list is then cut to k. Metrics
//! are summed in position order, as the peer sums them.
//!
//! With several threads, each builds its own copy of the model, learns every
//! event and ranks every `threads`-th evaluated event. Learning is cheap next
//! to ranking (on MovieLens a quarter of the replay), so the copies cost less
//! than the cores they free; models are deterministic, so each thread's
//! lists are the ones a single replay would produce, and the per-event
//! metrics are summed in position order afterwards: the numbers do not
//! depend on the thread count (tested).

use std::time::Instant;

use indicatif::ProgressBar;
use rustc_hash::FxHashSet;

use super::dataset::Stream;
use super::model::StreamRecommender;
use super::protocol::{Protocol, rank_metrics};

/// Builds one copy of a model; the replay calls it once per thread.
pub type ModelFactory<'s> = dyn Fn() -> Box<dyn StreamRecommender + Send + 's> + Sync + 's;

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

/// Replays `stream` through models from `make` on `threads` threads, asking
/// for `k` items at each evaluated position of `protocol`; keeps the lists
/// if `keep_lists`. Advances `progress` by positions.
pub fn replay(
    stream: &Stream,
    protocol: &Protocol,
    k: usize,
    make: &ModelFactory<'_>,
    threads: usize,
    keep_lists: bool,
    progress: &ProgressBar,
) -> Outcome {
    let started = Instant::now();
    let threads = threads.clamp(1, protocol.evaluated.len().max(1));
    let share = |nth: usize| {
        let shown = if nth == 0 { progress.clone() } else { ProgressBar::hidden() };
        replay_share(stream, protocol, k, make().as_mut(), Share { nth, of: threads }, keep_lists, &shown)
    };
    let shares: Vec<Ranked> = if threads == 1 {
        vec![share(0)]
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads).map(|nth| scope.spawn(move || share(nth))).collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
        })
    };
    progress.set_position(stream.len() as u64);

    // Evaluated event j was ranked by share j % threads, as its (j / threads)-th.
    let n = protocol.evaluated.len();
    let mut sums = (0.0f64, 0.0f64, 0.0f64);
    let mut lists = Vec::new();
    for (j, &position) in protocol.evaluated.iter().enumerate() {
        let (share, at) = (&shares[j % threads], j / threads);
        let (hit, ndcg, rr) = share.metrics[at];
        sums = (sums.0 + hit, sums.1 + ndcg, sums.2 + rr);
        if keep_lists {
            lists.push((position, share.lists[at].clone()));
        }
    }
    let mut recommended = vec![false; stream.n_items()];
    for share in &shares {
        for (r, &s) in recommended.iter_mut().zip(&share.recommended) {
            *r |= s;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let mean = |sum: f64| if n == 0 { 0.0 } else { sum / n as f64 };
    Outcome {
        evaluated: n,
        hit: mean(sums.0),
        ndcg: mean(sums.1),
        mrr: mean(sums.2),
        coverage: recommended.iter().filter(|&&r| r).count() as f64 / stream.n_items().max(1) as f64,
        seconds,
        events_per_s: stream.len() as f64 / seconds.max(1e-9),
        invalid_recommendations: shares.iter().map(|s| s.invalid).sum(),
        lists,
    }
}

/// Which evaluated events a thread ranks: the `nth` of every `of`.
#[derive(Clone, Copy)]
struct Share {
    nth: usize,
    of: usize,
}

/// What one thread ranked, in the order of its share.
struct Ranked {
    /// (hit, NDCG, reciprocal rank) per ranked event.
    metrics: Vec<(f64, f64, f64)>,
    /// The cleaned lists, when kept.
    lists: Vec<Vec<u32>>,
    /// Items in any of these lists.
    recommended: Vec<bool>,
    invalid: u64,
}

/// Feeds every event to `model`, ranking before the evaluated events of `share`.
fn replay_share(
    stream: &Stream,
    protocol: &Protocol,
    k: usize,
    model: &mut dyn StreamRecommender,
    share: Share,
    keep_lists: bool,
    progress: &ProgressBar,
) -> Ranked {
    let mut user_items: Vec<FxHashSet<u32>> = vec![FxHashSet::default(); stream.n_users()];
    let mut seen_items = 0u32; // items 0..seen_items occurred before the position
    // The last query whose list had the item, to catch repeats in a list.
    let (mut query, mut in_list) = (0u32, vec![u32::MAX; stream.n_items()]);
    let (mut raw, mut list) = (Vec::with_capacity(k), Vec::with_capacity(k));
    let mut ranked = Ranked {
        metrics: Vec::with_capacity(protocol.evaluated.len() / share.of + 1),
        lists: Vec::new(),
        recommended: vec![false; stream.n_items()],
        invalid: 0,
    };
    let mut mine = protocol.evaluated.iter().copied().skip(share.nth).step_by(share.of).peekable();
    for p in 0..stream.len() {
        let (u, i, t) = (stream.users[p], stream.items[p], stream.timestamps[p]);
        if mine.next_if_eq(&p).is_some() {
            query += 1;
            raw.clear();
            model.recommend(u, k, &mut raw);
            list.clear();
            let own = &user_items[u as usize];
            for &c in &raw {
                let candidate = c < seen_items && !own.contains(&c) && in_list[c as usize] != query;
                if !candidate {
                    ranked.invalid += 1;
                    continue;
                }
                in_list[c as usize] = query;
                if list.len() < k {
                    list.push(c);
                }
            }
            for &c in &list {
                ranked.recommended[c as usize] = true;
            }
            ranked.metrics.push(rank_metrics(list.iter().position(|&c| c == i)));
            if keep_lists {
                ranked.lists.push(list.clone());
            }
        }
        model.learn(u, i, t);
        user_items[u as usize].insert(i);
        seen_items = seen_items.max(i + 1);
        if p % 4096 == 0 {
            progress.set_position(p as u64);
        }
    }
    ranked
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
        let model = || Box::new(Fixed(vec![5, 0, 1, 1, 2])) as Box<dyn StreamRecommender + Send>;
        let o = replay(&s, &protocol, 10, &model, 1, true, &ProgressBar::hidden());
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
        let model = || Box::new(Fixed(vec![0, 1, 2, 3])) as Box<dyn StreamRecommender + Send>;
        let o = replay(&s, &protocol, 2, &model, 1, true, &ProgressBar::hidden());
        // p4: user 0 has 0, so 1 and 2 fill k = 2 and 3 (the target) is cut.
        assert_eq!(o.lists.last().unwrap(), &(4, vec![1, 2]));
        assert_eq!(o.hit, 0.0);
    }

    #[test]
    fn the_numbers_do_not_depend_on_the_thread_count() {
        // 4,000 events of 60 users over 300 items: each user walks the
        // catalogue in strides of its own, so co-occurrence has something to find.
        let mut state = 7u64;
        let mut next = |n: u64| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) % n
        };
        let mut position = vec![0u64; 60];
        let events: Vec<(u32, u32)> = (0..4000)
            .map(|_| {
                let u = next(60) as usize;
                position[u] = (position[u] + 1 + (u as u64 % 5) + next(3)) % 300;
                (u as u32, position[u] as u32)
            })
            .collect();
        let s = stream(&events);
        let protocol = Protocol::new(&s, EvalFrac::parse("0.5").unwrap(), 1);
        let (freshet, _) = crate::eval::models::freshet_models(None, false, &s).unwrap();
        let one = replay(&s, &protocol, 10, &*freshet, 1, true, &ProgressBar::hidden());
        assert!(one.hit > 0.1, "the model finds the walks: hit@10 {}", one.hit);
        assert_eq!(one.lists.len(), protocol.evaluated.len());
        for threads in [2, 3, 8] {
            let many = replay(&s, &protocol, 10, &*freshet, threads, true, &ProgressBar::hidden());
            assert_eq!(many.lists, one.lists, "{threads} threads");
            assert_eq!(
                (many.hit.to_bits(), many.ndcg.to_bits(), many.mrr.to_bits(), many.coverage.to_bits()),
                (one.hit.to_bits(), one.ndcg.to_bits(), one.mrr.to_bits(), one.coverage.to_bits()),
                "{threads} threads"
            );
            assert_eq!((many.evaluated, many.invalid_recommendations), (one.evaluated, one.invalid_recommendations));
        }
    }
}
