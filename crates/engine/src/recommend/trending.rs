//! Trending: exponentially decayed popularity in event time, with the top
//! items kept overall and per category.
//!
//! Scores use forward decay (Cormode et al., ICDE 2009): an event at time `t`
//! adds `w · 2^((t − landmark) / half_life)`, so a score never has to be
//! decayed as time passes and the ranking of items that saw no event does not
//! change. That makes an exact top-N list cheap: only the item just updated
//! can move, and only upwards. When the factor grows large every score is
//! rescaled and the landmark moves forward.

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

/// Above this exponent (in half-lives past the landmark) scores are rescaled.
const RESCALE_AFTER_HALF_LIVES: f64 = 64.0;

/// A top-N list of (score, item), best first; ties by lower item index.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TopList {
    entries: Vec<(f64, u32)>,
}

impl TopList {
    fn better(a: (f64, u32), b: (f64, u32)) -> bool {
        a.0 > b.0 || (a.0 == b.0 && a.1 < b.1)
    }

    /// Records `item`'s new score, raised from `old`.
    ///
    /// An item in the list is normally listed with exactly its previous
    /// score (both are set from the same value and rescaled by the same
    /// factor), so a binary search for `(old, item)` finds it; only when it
    /// is not there is the list searched item by item (an item entering the
    /// list, or one whose tags changed and whose old tag list kept an older
    /// score).
    fn raise(&mut self, item: u32, old: f64, score: f64, len: usize) {
        let entry = (score, item);
        // Scores only grow: an item in a full list ranks at least as the last
        // entry, so one whose new score does not beat the last is not in it
        // (most events, on long tails), and the list need not be searched.
        if self.entries.len() >= len && self.entries.last().is_none_or(|&last| !Self::better(entry, last)) {
            return;
        }
        let guess = self.entries.partition_point(|&e| Self::better(e, (old, item)));
        let listed = match self.entries.get(guess) {
            Some(e) if e.1 == item => Some(guess),
            _ => self.entries.iter().position(|e| e.1 == item),
        };
        let at = match listed {
            Some(at) => {
                self.entries[at].0 = score;
                at
            }
            None if self.entries.len() < len => {
                self.entries.push(entry);
                self.entries.len() - 1
            }
            None => match self.entries.last() {
                Some(&last) if Self::better(entry, last) => {
                    let end = self.entries.len() - 1;
                    self.entries[end] = entry;
                    end
                }
                _ => return,
            },
        };
        // Recent events outweigh old ones by far (forward decay), so a raised
        // item often climbs many places: find its place by binary search and
        // shift the entries it passes in one move.
        let to = self.entries[..at].partition_point(|&e| Self::better(e, entry));
        self.entries[to..=at].rotate_right(1);
    }

    fn remove(&mut self, item: u32) {
        self.entries.retain(|e| e.1 != item);
    }

    fn scale(&mut self, factor: f64) {
        for e in &mut self.entries {
            e.0 *= factor;
        }
    }

    /// The entries, best first.
    pub fn entries(&self) -> &[(f64, u32)] {
        &self.entries
    }
}

/// Decayed popularity of every item.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Trending {
    half_life_ms: f64,
    list_len: usize,
    landmark_ms: i64,
    scores: Vec<f64>,
    overall: TopList,
    by_category: FxHashMap<u32, TopList>,
}

impl Trending {
    /// Empty, with the given half-life (ms) and list length.
    pub fn new(half_life_ms: i64, list_len: usize) -> Self {
        Self { half_life_ms: half_life_ms.max(1) as f64, list_len, ..Self::default() }
    }

    /// Adds an interaction with `item` (with these attributes: category and
    /// tags) at event time `time_ms`.
    pub fn add(&mut self, item: u32, attributes: &[u32], weight: f64, time_ms: i64) {
        if self.scores.is_empty() && self.landmark_ms == 0 {
            self.landmark_ms = time_ms;
        }
        let mut exponent = (time_ms - self.landmark_ms) as f64 / self.half_life_ms;
        if exponent > RESCALE_AFTER_HALF_LIVES {
            self.rescale(time_ms);
            exponent = 0.0;
        }
        let index = item as usize;
        if self.scores.len() <= index {
            self.scores.resize(index + 1, 0.0);
        }
        let old = self.scores[index];
        self.scores[index] += weight * exponent.exp2();
        let score = self.scores[index];
        self.overall.raise(item, old, score, self.list_len);
        for &attribute in attributes {
            self.by_category.entry(attribute).or_default().raise(item, old, score, self.list_len);
        }
    }

    fn rescale(&mut self, time_ms: i64) {
        let factor = (-((time_ms - self.landmark_ms) as f64) / self.half_life_ms).exp2();
        self.landmark_ms = time_ms;
        for s in &mut self.scores {
            *s *= factor;
        }
        self.overall.scale(factor);
        for list in self.by_category.values_mut() {
            list.scale(factor);
        }
    }

    /// Moves `item` from one attribute's list to another's.
    pub fn recategorise(&mut self, item: u32, from: Option<u32>, to: Option<u32>) {
        if from == to {
            return;
        }
        if let Some(list) = from.and_then(|c| self.by_category.get_mut(&c)) {
            list.remove(item);
        }
        let score = self.score(item);
        if let Some(to) = to
            && score > 0.0
        {
            self.by_category.entry(to).or_default().raise(item, score, score, self.list_len);
        }
    }

    /// Forgets an item: its score is zero and it is in no list (of its
    /// `attributes` nor overall) until it is interacted with again.
    pub fn forget(&mut self, item: u32, attributes: &[u32]) {
        if let Some(score) = self.scores.get_mut(item as usize) {
            *score = 0.0;
        }
        self.overall.remove(item);
        for attribute in attributes {
            if let Some(list) = self.by_category.get_mut(attribute) {
                list.remove(item);
            }
        }
    }

    /// An item's score (relative: only comparable with other scores of now).
    pub fn score(&self, item: u32) -> f64 {
        self.scores.get(item as usize).copied().unwrap_or(0.0)
    }

    /// The overall top list.
    pub fn overall(&self) -> &[(f64, u32)] {
        self.overall.entries()
    }

    /// A category's (or tag's) top list.
    pub fn category(&self, category: u32) -> &[(f64, u32)] {
        self.by_category.get(&category).map_or(&[], |l| l.entries())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    #[test]
    fn recent_events_outweigh_old_ones() {
        let mut t = Trending::new(HOUR, 10);
        t.add(0, &[], 1.0, 0);
        t.add(0, &[], 1.0, 0);
        t.add(1, &[], 1.0, 2 * HOUR);
        // Item 0: 2 events two half-lives ago = 0.5 now; item 1: 1.
        let order: Vec<u32> = t.overall().iter().map(|e| e.1).collect();
        assert_eq!(order, vec![1, 0]);
        assert!((t.score(0) / t.score(1) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn the_list_keeps_the_top_n_exactly_and_per_category() {
        let mut t = Trending::new(HOUR, 2);
        for (item, n) in [(0u32, 1), (1, 3), (2, 2), (3, 5)] {
            for _ in 0..n {
                t.add(item, &[item % 2], 1.0, 0);
            }
        }
        assert_eq!(t.overall().iter().map(|e| e.1).collect::<Vec<_>>(), vec![3, 1]);
        assert_eq!(t.category(0).iter().map(|e| e.1).collect::<Vec<_>>(), vec![2, 0]);
        assert_eq!(t.category(1).iter().map(|e| e.1).collect::<Vec<_>>(), vec![3, 1]);
    }

    #[test]
    fn the_list_is_the_exact_top_n_after_every_event() {
        let mut t = Trending::new(HOUR, 5);
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for step in 0..5_000i64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Skewed items, some events weighing nothing, time moving on.
            let item = ((x % 64) * (x % 64) / 64) as u32;
            let weight = [0.0, 1.0, 2.5][(x >> 20) as usize % 3];
            t.add(item, &[], weight, step * 1000);
            let mut all: Vec<(f64, u32)> = (0..64).map(|i| (t.score(i), i)).filter(|e| e.0 > 0.0).collect();
            all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            all.truncate(5);
            assert_eq!(t.overall(), &all[..], "after event {step}");
        }
    }

    #[test]
    fn an_item_back_in_an_old_tag_list_is_moved_not_listed_twice() {
        let mut t = Trending::new(HOUR, 10);
        t.add(1, &[7], 1.0, 0);
        t.add(2, &[7], 1.0, 0);
        // Item 1 loses tag 7 for a while: list 7 keeps it at its older score.
        t.add(1, &[8], 1.0, HOUR);
        t.add(1, &[8], 1.0, HOUR);
        t.add(1, &[7], 1.0, 2 * HOUR);
        let listed: Vec<u32> = t.category(7).iter().map(|e| e.1).collect();
        assert_eq!(listed, vec![1, 2]);
        assert_eq!(t.category(7)[0].0, t.score(1));
    }

    #[test]
    fn rescaling_keeps_ratios() {
        let mut t = Trending::new(1, 10);
        t.add(0, &[], 1.0, 0);
        t.add(1, &[], 1.0, 1000);
        t.add(1, &[], 1.0, 1000);
        assert_eq!(t.overall()[0].1, 1);
        assert!(t.score(1).is_finite() && t.score(1) > 0.0);
    }
}
