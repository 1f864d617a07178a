//! The peer's `pop` and `itemknn` baselines (peer README, "Baselines"),
//! implemented exactly: same scores in the same float64 arithmetic, same tie
//! rule (primary score descending, then the secondary key descending, then
//! item index ascending). They are the oracles for the harness's arithmetic
//! and the side-by-side reference for the Freshet model.
//!
//! Item-kNN keeps its co-occurrence counts in `cooccur` (dense like the
//! peer's for small catalogs, sparse otherwise); scores are summed over the
//! user's recent items in the peer's order, so every float is the peer's.

use std::cmp::{Ordering, Reverse};
use std::collections::BTreeSet;

use rustc_hash::FxHashSet;

use super::cooccur::{CoCounts, DENSE_MAX_BYTES};
use super::model::StreamRecommender;

/// How many of a user's most recent distinct items item-kNN scores from.
pub const KNN_LAST: usize = 20;

/// Grows `v` with defaults so that `index` is in range.
fn ensure<T: Default + Clone>(v: &mut Vec<T>, index: usize) {
    if v.len() <= index {
        v.resize(index + 1, T::default());
    }
}

/// Event counts per item (repeats included) and the items in popularity
/// order: count descending, index ascending. Only items with an event appear.
#[derive(Default)]
struct PopOrder {
    counts: Vec<u64>,
    order: BTreeSet<(Reverse<u64>, u32)>,
}

impl PopOrder {
    fn add(&mut self, item: u32) {
        ensure(&mut self.counts, item as usize);
        let count = &mut self.counts[item as usize];
        if *count > 0 {
            self.order.remove(&(Reverse(*count), item));
        }
        *count += 1;
        self.order.insert((Reverse(*count), item));
    }

    fn count(&self, item: u32) -> u64 {
        self.counts.get(item as usize).copied().unwrap_or(0)
    }

    /// Appends to `out`, until it holds `k` items, the most popular items
    /// for which `skip` is false.
    fn fill(&self, k: usize, out: &mut Vec<u32>, mut skip: impl FnMut(u32) -> bool) {
        if out.len() >= k {
            return;
        }
        for &(_, item) in &self.order {
            if !skip(item) {
                out.push(item);
                if out.len() == k {
                    return;
                }
            }
        }
    }
}

/// `pop`: items by number of events so far.
#[derive(Default)]
pub struct Pop {
    pop: PopOrder,
    seen: Vec<FxHashSet<u32>>,
}

impl Pop {
    /// An empty model.
    pub fn new() -> Self {
        Self::default()
    }
}

impl StreamRecommender for Pop {
    fn recommend(&mut self, user: u32, k: usize, out: &mut Vec<u32>) {
        out.clear();
        let seen = self.seen.get(user as usize);
        self.pop.fill(k, out, |item| seen.is_some_and(|s| s.contains(&item)));
    }

    fn learn(&mut self, user: u32, item: u32, _timestamp: f64) {
        ensure(&mut self.seen, user as usize);
        self.seen[user as usize].insert(item);
        self.pop.add(item);
    }
}

/// One user's state for item-kNN.
#[derive(Default, Clone)]
struct KnnUser {
    /// Distinct items.
    items: FxHashSet<u32>,
    /// Distinct items in first-interaction order.
    history: Vec<u32>,
    /// The last `KNN_LAST` distinct items, least recent first.
    recent: Vec<u32>,
}

/// `itemknn`: incremental item-item co-occurrence over distinct users with
/// cosine normalisation, scored from the user's last 20 distinct items;
/// zero-score slots filled by popularity.
pub struct ItemKnn {
    users: Vec<KnnUser>,
    co: CoCounts,
    /// Distinct users per item, and its square root.
    n: Vec<u32>,
    sqrt_n: Vec<f64>,
    /// Items seen so far are `0..seen`.
    seen: usize,
    pop: PopOrder,
    /// Scratch: score per item (0 = not scored), the scored items, the
    /// ranking, and `count / sqrt(n[j])` by count for the row being added.
    score: Vec<f64>,
    touched: Vec<u32>,
    ranked: Vec<(f64, u64, u32)>,
    weight: Vec<f64>,
}

impl ItemKnn {
    /// An empty model for a catalog of `items` items (indices below it):
    /// dense counts if they fit in [`DENSE_MAX_BYTES`], else sparse.
    pub fn new(items: usize) -> Self {
        Self::with_layout(items, DENSE_MAX_BYTES)
    }

    /// As [`ItemKnn::new`] with another limit for the dense layout.
    pub fn with_layout(items: usize, dense_max_bytes: usize) -> Self {
        Self {
            users: Vec::new(),
            co: CoCounts::new(items, dense_max_bytes),
            n: Vec::new(),
            sqrt_n: Vec::new(),
            seen: 0,
            pop: PopOrder::default(),
            score: Vec::new(),
            touched: Vec::new(),
            ranked: Vec::new(),
            weight: Vec::new(),
        }
    }
}

/// The peer's order: score descending, popularity descending, index ascending.
fn by_rank(a: &(f64, u64, u32), b: &(f64, u64, u32)) -> Ordering {
    b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2))
}

impl StreamRecommender for ItemKnn {
    fn recommend(&mut self, user: u32, k: usize, out: &mut Vec<u32>) {
        out.clear();
        if k == 0 {
            return;
        }
        let Some(u) = self.users.get(user as usize) else {
            self.pop.fill(k, out, |_| false);
            return;
        };
        // score(c) = (sum over j in recent, oldest first, of C[j,c] / sqrt(n[j])) / sqrt(n[c]),
        // in float64 and in this order, as the peer's numpy rows sum.
        let score = &mut self.score[..self.seen];
        self.co.sum_rows(&u.recent, (&self.n, &self.sqrt_n), &mut self.weight, score, &mut self.touched);
        self.ranked.clear();
        for &c in &self.touched {
            let s = &mut score[c as usize];
            *s /= self.sqrt_n[c as usize];
            if !u.items.contains(&c) {
                self.ranked.push((*s, self.pop.count(c), c));
            }
        }
        if self.ranked.len() > k {
            self.ranked.select_nth_unstable_by(k - 1, by_rank);
            self.ranked.truncate(k);
        }
        self.ranked.sort_unstable_by(by_rank);
        out.extend(self.ranked.iter().map(|&(_, _, c)| c));
        // Every scored candidate is in `out` if there is room: fill with the
        // zero-score ones, by popularity.
        let score = &*score;
        self.pop.fill(k, out, |c| score[c as usize] > 0.0 || u.items.contains(&c));
        for &c in &self.touched {
            self.score[c as usize] = 0.0;
        }
        self.touched.clear();
    }

    fn learn(&mut self, user: u32, item: u32, _timestamp: f64) {
        let i = item as usize;
        ensure(&mut self.users, user as usize);
        ensure(&mut self.n, i);
        ensure(&mut self.sqrt_n, i);
        ensure(&mut self.score, i);
        self.seen = self.seen.max(i + 1);
        let u = &mut self.users[user as usize];
        if u.items.insert(item) {
            for &j in &u.history {
                self.co.add_pair(item, j);
            }
            self.n[i] += 1;
            self.sqrt_n[i] = f64::from(self.n[i]).sqrt();
            u.history.push(item);
        }
        if let Some(at) = u.recent.iter().position(|&j| j == item) {
            u.recent.remove(at);
        } else if u.recent.len() == KNN_LAST {
            u.recent.remove(0);
        }
        u.recent.push(item);
        self.pop.add(item);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn top(model: &mut dyn StreamRecommender, user: u32, k: usize) -> Vec<u32> {
        let mut out = Vec::new();
        model.recommend(user, k, &mut out);
        out
    }

    #[test]
    fn pop_ranks_by_count_then_index_and_skips_own_items() {
        let mut pop = Pop::new();
        for (u, i) in [(0, 0), (1, 1), (2, 1), (0, 2), (3, 2), (1, 3), (1, 3)] {
            pop.learn(u, i, 0.0);
        }
        // counts: 0:1, 1:2, 2:2, 3:2 → 1, 2, 3 (ties by index), then 0.
        assert_eq!(top(&mut pop, 9, 10), vec![1, 2, 3, 0]);
        assert_eq!(top(&mut pop, 0, 2), vec![1, 3]);
        assert_eq!(top(&mut pop, 1, 10), vec![2, 0]);
    }

    #[test]
    fn itemknn_scores_cosine_over_recent_items_and_fills_by_popularity() {
        let mut knn = ItemKnn::new(100);
        // Users 0 and 1 share items 0 and 1; user 2 has 1 and 2; item 3 is popular alone.
        for (u, i) in [(0, 0), (0, 1), (1, 0), (1, 1), (2, 1), (2, 2), (3, 3), (4, 3), (5, 3)] {
            knn.learn(u, i, 0.0);
        }
        // User 6 saw item 0: C[0,1] = 2, n0 = n1 = 3 → score(1) = 2/3; items 2 and 3 score 0
        // and follow by popularity (3 events, then 1).
        knn.learn(6, 0, 0.0);
        assert_eq!(top(&mut knn, 6, 3), vec![1, 3, 2]);
        // Repeats change nothing in C but move the item to the recent end.
        knn.learn(0, 0, 0.0);
        assert_eq!(knn.co.get(0, 1), 2);
        assert_eq!(knn.users[0].recent, vec![1, 0]);
        // An unknown user gets popularity: 0 (4 events), then 1 and 3 (3 each, by index).
        assert_eq!(top(&mut knn, 99, 3), vec![0, 1, 3]);
    }

    #[test]
    fn itemknn_keeps_the_last_distinct_items() {
        let mut knn = ItemKnn::new(100);
        for i in 0..(KNN_LAST as u32 + 5) {
            knn.learn(0, i, 0.0);
        }
        knn.learn(0, 2, 0.0);
        let recent = &knn.users[0].recent;
        assert_eq!(recent.len(), KNN_LAST);
        assert_eq!(recent[0], 6);
        assert_eq!(*recent.last().unwrap(), 2);
    }

    #[test]
    fn itemknn_dense_and_sparse_layouts_rank_identically() {
        let (users, items) = (40u32, 60u32);
        let mut dense = ItemKnn::new(items as usize);
        let mut sparse = ItemKnn::with_layout(items as usize, 0);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |bound: u32| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % u64::from(bound)) as u32
        };
        for p in 0..3000 {
            // Skewed items so that scores tie and popularity matters.
            let u = next(users);
            let bound = next(items) + 1;
            let i = next(bound);
            if p % 3 == 0 {
                assert_eq!(top(&mut dense, u, 10), top(&mut sparse, u, 10), "position {p}");
            }
            dense.learn(u, i, 0.0);
            sparse.learn(u, i, 0.0);
        }
    }
}
