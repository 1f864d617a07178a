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
//! With several threads, each builds its own copy of the model (models are
//! deterministic, so each copy's lists are the ones a single replay would
//! produce) and ranks one contiguous run of the evaluated events: thread 0
//! from the first, each next one from where it takes over from the one
//! before, which then stops, learning nothing more. A thread that does not
//! rank yet only learns, several times faster than one that ranks, and
//! takes over once it is far enough ahead of the one before: when what is
//! left after that thread's position, weighed as positions to learn plus
//! rankings (each worth the ranking time measured so far over the learning
//! time), is split evenly between it and the threads after. So the last
//! thread learns every event, the others stop early: on MovieLens (where
//! ranking is three quarters of the replay) two threads learn about 1.55
//! times the log, where each learning all of it took twice. The hand-over
//! is claimed under a lock, so each evaluated event is ranked exactly once;
//! the per-event metrics are summed in position order afterwards, so the
//! numbers do not depend on the thread count or the timing (tested).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
    let lanes: Vec<Lane> = (0..threads).map(|_| Lane::default()).collect();
    let handoffs: Vec<Mutex<Handoff>> = (0..threads).map(|_| Mutex::new(Handoff::default())).collect();
    let shared = Shared { lanes: &lanes, handoffs: &handoffs };
    let share = |nth: usize| {
        // The last thread learns every event: it shows the progress.
        let shown = if nth + 1 == threads { progress.clone() } else { ProgressBar::hidden() };
        replay_share(stream, protocol, k, make().as_mut(), (nth, shared), keep_lists, &shown)
    };
    let mut shares: Vec<Ranked> = if threads == 1 {
        vec![share(0)]
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads).map(|nth| scope.spawn(move || share(nth))).collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
        })
    };
    progress.set_position(stream.len() as u64);

    // Each thread ranked a contiguous run of the evaluated events, from its `first`.
    shares.sort_by_key(|s| s.first);
    let n = protocol.evaluated.len();
    let mut sums = (0.0f64, 0.0f64, 0.0f64);
    let mut lists = Vec::new();
    let mut j = 0;
    for share in &shares {
        assert!(share.metrics.is_empty() || share.first == j, "the threads' runs of evaluated events do not meet");
        for (at, &(hit, ndcg, rr)) in share.metrics.iter().enumerate() {
            sums = (sums.0 + hit, sums.1 + ndcg, sums.2 + rr);
            if keep_lists {
                lists.push((protocol.evaluated[j], share.lists[at].clone()));
            }
            j += 1;
        }
    }
    assert_eq!(j, n, "every evaluated event is ranked once");
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

/// What a thread tells the others, for the next one to know when to take over.
#[derive(Default)]
struct Lane {
    /// The position it is at.
    position: AtomicUsize,
    /// The evaluated events before that position.
    evaluated: AtomicUsize,
    /// Nanoseconds spent ranking, and rankings (thread 0's: it ranks from the start).
    rank_ns: AtomicU64,
    ranks: AtomicU64,
}

/// The hand-over from thread `k - 1` to thread `k` (held at index `k`).
#[derive(Default)]
struct Handoff {
    /// Evaluated events below this one are thread `k - 1`'s (it ranked or is ranking them).
    claimed: usize,
    /// The evaluated event thread `k` ranks first, once it took over.
    start: Option<usize>,
}

/// What the threads of one replay share.
#[derive(Clone, Copy)]
struct Shared<'a> {
    lanes: &'a [Lane],
    handoffs: &'a [Mutex<Handoff>],
}

impl Shared<'_> {
    fn handoff(&self, k: usize) -> std::sync::MutexGuard<'_, Handoff> {
        self.handoffs[k].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether thread `k` may rank evaluated event `j`: claims it unless thread `k + 1` took over at or before it.
    fn claim(&self, k: usize, j: usize) -> bool {
        let Some(next) = self.handoffs.get(k + 1) else { return true };
        let mut h = next.lock().unwrap_or_else(|e| e.into_inner());
        if h.start.is_some_and(|s| j >= s) {
            return false;
        }
        h.claimed = j + 1;
        true
    }

    /// Whether thread `k` (`k >= 1`), which learned up to position `p`
    /// (evaluated event `j` next) in `learned_s` seconds, should take over
    /// from thread `k - 1` now, and may: then it has.
    fn take_over(&self, k: usize, (p, j): (usize, usize), learned_s: f64, (len, n): (usize, usize)) -> bool {
        let before = &self.lanes[k - 1];
        let started = k == 1 || self.handoff(k - 1).start.is_some();
        let (ranks, rank_ns) =
            (self.lanes[0].ranks.load(Ordering::Relaxed), self.lanes[0].rank_ns.load(Ordering::Relaxed));
        // A few rankings timed first, and learning timed over a while.
        if !started || ranks < 32 || p < 1024 {
            return false;
        }
        // One ranking weighs as many learned positions as it takes time.
        let weight = (rank_ns as f64 / ranks as f64) / (learned_s * 1e9 / p as f64).max(1.0);
        let (q, jq) = (before.position.load(Ordering::Relaxed), before.evaluated.load(Ordering::Relaxed));
        let work = |(p, j): (usize, usize)| p as f64 + weight * j as f64;
        let left = work((len, n)) - work((q, jq));
        // Thread k - 1 keeps what lies before p; the rest is split among thread k and those after it.
        if work((p, j)) - work((q, jq)) < left / (self.lanes.len() - k + 1) as f64 {
            return false;
        }
        let mut h = self.handoff(k);
        if h.claimed > j {
            return false;
        }
        h.start = Some(j);
        true
    }
}

/// What one thread ranked: a contiguous run of the evaluated events.
struct Ranked {
    /// The first evaluated event ranked (index into the protocol's list).
    first: usize,
    /// (hit, NDCG, reciprocal rank) per ranked event.
    metrics: Vec<(f64, f64, f64)>,
    /// The cleaned lists, when kept.
    lists: Vec<Vec<u32>>,
    /// Items in any of these lists.
    recommended: Vec<bool>,
    invalid: u64,
}

/// Feeds events to `model` as thread `nth`, ranking before the evaluated
/// events of its run (see the module doc), until the next thread took over.
fn replay_share(
    stream: &Stream,
    protocol: &Protocol,
    k: usize,
    model: &mut dyn StreamRecommender,
    (nth, shared): (usize, Shared<'_>),
    keep_lists: bool,
    progress: &ProgressBar,
) -> Ranked {
    let mut user_items: Vec<FxHashSet<u32>> = vec![FxHashSet::default(); stream.n_users()];
    let mut seen_items = 0u32; // items 0..seen_items occurred before the position
    // The last query whose list had the item, to catch repeats in a list.
    let (mut query, mut in_list) = (0u32, vec![u32::MAX; stream.n_items()]);
    let (mut raw, mut list) = (Vec::with_capacity(k), Vec::with_capacity(k));
    let mut ranked = Ranked {
        first: 0,
        metrics: Vec::new(),
        lists: Vec::new(),
        recommended: vec![false; stream.n_items()],
        invalid: 0,
    };
    let lane = &shared.lanes[nth];
    let started = Instant::now();
    let mut ranking = nth == 0;
    let (evaluated, n) = (&protocol.evaluated, protocol.evaluated.len());
    let mut j = 0; // the next evaluated event
    for p in 0..stream.len() {
        let (u, i, t) = (stream.users[p], stream.items[p], stream.timestamps[p]);
        if j < n && evaluated[j] == p {
            if !ranking && shared.take_over(nth, (p, j), started.elapsed().as_secs_f64(), (stream.len(), n)) {
                ranking = true;
                ranked.first = j;
            }
            if ranking && !shared.claim(nth, j) {
                break;
            }
            if ranking {
                query += 1;
                raw.clear();
                let asked = Instant::now();
                model.recommend(u, k, &mut raw);
                if nth == 0 {
                    lane.rank_ns.fetch_add(asked.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    lane.ranks.fetch_add(1, Ordering::Relaxed);
                }
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
            j += 1;
        }
        model.learn(u, i, t);
        user_items[u as usize].insert(i);
        seen_items = seen_items.max(i + 1);
        if p % 256 == 0 {
            lane.position.store(p, Ordering::Relaxed);
            lane.evaluated.store(j, Ordering::Relaxed);
            if p % 4096 == 0 {
                progress.set_position(p as u64);
            }
        }
    }
    tracing::debug!(thread = nth, first = ranked.first, ranked = ranked.metrics.len(), took = ?started.elapsed(), "Replay share done.");
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
    fn a_thread_takes_over_once_far_enough_ahead_and_never_an_event_already_claimed() {
        let lanes: Vec<Lane> = (0..2).map(|_| Lane::default()).collect();
        let handoffs: Vec<Mutex<Handoff>> = (0..2).map(|_| Mutex::new(Handoff::default())).collect();
        let shared = Shared { lanes: &lanes, handoffs: &handoffs };
        // 10,000 positions, 2,000 evaluated (one in five); a ranking takes
        // 20 µs, learning 1 µs a position: a ranking weighs 20 positions.
        let (len, n) = (10_000, 2_000);
        lanes[0].ranks.store(100, Ordering::Relaxed);
        lanes[0].rank_ns.store(100 * 20_000, Ordering::Relaxed);
        lanes[0].position.store(500, Ordering::Relaxed);
        lanes[0].evaluated.store(100, Ordering::Relaxed);
        // Thread 0 has 10,000 - 500 + 20 · 1,900 = 47,500 left; thread 1 at
        // position p (event p / 5) is 5p - 2,500 ahead: half of it from p = 5,250.
        let learned = |p: usize| p as f64 * 1e-6;
        assert!(!shared.take_over(1, (5_000, 1_000), learned(5_000), (len, n)), "too close to thread 0");
        assert!(shared.claim(0, 100), "nothing taken over yet");
        // Thread 0 claimed up to event 1,100 meanwhile (it ran on): a take-over there is refused.
        assert!(shared.claim(0, 1_100));
        assert!(!shared.take_over(1, (5_500, 1_100), learned(5_500), (len, n)), "event 1,100 is claimed");
        assert!(shared.take_over(1, (5_505, 1_101), learned(5_505), (len, n)));
        assert_eq!(handoffs[1].lock().unwrap().start, Some(1_101));
        // Thread 0 ranked up to event 1,100 and stops at 1,101.
        assert!(!shared.claim(0, 1_101));
        assert!(!shared.claim(0, 1_500));
        // The last thread has no one to hand over to.
        assert!(shared.claim(1, 1_999));
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
        let (freshet, _) = crate::eval::models::freshet_models(None, false, &s, 1000.0).unwrap();
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
