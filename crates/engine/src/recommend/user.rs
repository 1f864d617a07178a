//! What the recommender keeps per user: recent distinct items, everything
//! seen (to exclude it), the history that pairs with a new item, the latest
//! event for transitions, and category and tag affinity.

use std::collections::VecDeque;
use std::sync::Arc;

use rustc_hash::FxHashSet;
use serde::{Deserialize, Serialize};

/// Affinities kept per user (the heaviest).
const MAX_AFFINITIES: usize = 16;

/// One user's recommender state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UserProfile {
    /// Distinct items by most recent interaction, newest last.
    pub(crate) recent: VecDeque<u32>,
    /// Distinct items in first-interaction order, the newest `pair_window`, with their ordinal.
    pub(crate) history: VecDeque<(u32, u32)>,
    /// Number of distinct items ever interacted with.
    pub(crate) distinct: u32,
    /// Every item interacted with. Shared with the profile's published copy,
    /// so publishing a user costs no copy of it; the model copies it on
    /// write, at most once per publication, and only when a new item arrives.
    pub(crate) seen: Arc<FxHashSet<u32>>,
    /// The item and event time of the latest event.
    pub(crate) last: Option<(u32, i64)>,
    /// Attribute (category or tag) ids with their weight, heaviest first.
    pub(crate) affinity: Vec<(u32, f32)>,
}

impl UserProfile {
    /// Whether the user interacted with `item`.
    pub fn has_seen(&self, item: u32) -> bool {
        self.seen.contains(&item)
    }

    /// Every item interacted with, in no particular order.
    pub fn seen(&self) -> impl Iterator<Item = u32> + '_ {
        self.seen.iter().copied()
    }

    /// Distinct items by most recent interaction, newest first.
    pub fn recent(&self) -> impl Iterator<Item = u32> + '_ {
        self.recent.iter().rev().copied()
    }

    /// Number of distinct items interacted with.
    pub fn seen_count(&self) -> usize {
        self.seen.len()
    }

    /// Attribute affinities, heaviest first.
    pub fn affinity(&self) -> &[(u32, f32)] {
        &self.affinity
    }

    /// Moves `item` to the newest end of the recent list (bounded by `keep`).
    pub(crate) fn touch(&mut self, item: u32, keep: usize) {
        if let Some(at) = self.recent.iter().position(|&i| i == item) {
            self.recent.remove(at);
        }
        self.recent.push_back(item);
        while self.recent.len() > keep.max(1) {
            self.recent.pop_front();
        }
    }

    /// Adds weight to an attribute, keeping the heaviest few, sorted.
    pub(crate) fn like(&mut self, attribute: u32, weight: f32) {
        match self.affinity.iter_mut().find(|(a, _)| *a == attribute) {
            Some(entry) => entry.1 += weight,
            None => self.affinity.push((attribute, weight)),
        }
        self.affinity.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        self.affinity.truncate(MAX_AFFINITIES);
    }
}
