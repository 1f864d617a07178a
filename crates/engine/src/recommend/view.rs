//! The recommender's serving view: what the owning shard publishes for
//! lock-free reads, so that `/v1/recommend` and `/similar` never wait for
//! the write path.
//!
//! Users and trending lists are published on every publish tick (the user's
//! next recommendation reflects their latest event within one tick). Item
//! neighbour lists change on almost every event for popular items and are
//! the bulk of the model, so they are published at most once per
//! `item_interval` (default 1 s): similar-items may be up to that old, and a
//! new catalog item becomes recommendable within it. Neighbour weights are
//! published as counts, with every item's damping beside them in one dense
//! array of the same publication. Publishing an item copies none of its
//! lists: the view shares them with the model, which copies a list at its
//! next write if the view still holds it (copy-on-write, see `neighbours`),
//! so the copying is spread over the events instead of stopping the shard.
//! The same goes for users' profiles.
//!
//! The embedding index is not copied: the view shares the model's, which
//! takes searches concurrently with the model's inserts. An item's vector
//! and generation are published with the item, so a point inserted since the
//! last item publication is ignored until the item is published too.

use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use fixedbitset::FixedBitSet;

use crate::features::view::serving_map;

use super::neighbours::SharedEntries;
use super::{
    Attribution, Embedded, EmbeddingIndex, ModelRead, NeighboursFn, PairTotals, Recommender, RecommenderSpec,
    UserProfile, Weighted,
};

/// Key of the overall trending list in the per-category map.
const OVERALL: u32 = u32::MAX;

/// One item as published.
#[derive(Debug, Clone, Default)]
pub struct ItemView {
    /// The item id.
    pub name: Box<str>,
    /// Category attribute id.
    pub category: Option<u32>,
    /// Distinct users.
    pub users: u32,
    source_norm: f32,
    /// Shared with the model, which copies a list at its next write while the view holds it.
    neighbours: SharedEntries,
    successors: SharedEntries,
    successor_total: f64,
    embedding: Option<Embedded>,
}

/// Published state, read concurrently.
pub struct RecommenderView {
    spec: RecommenderSpec,
    item_ids: papaya::HashMap<Box<str>, u32>,
    items: papaya::HashMap<u32, Arc<ItemView>>,
    attributes: papaya::HashMap<Box<str>, u32>,
    users: papaya::HashMap<Box<str>, Arc<UserProfile>>,
    trending: papaya::HashMap<u32, Arc<[(u32, f64)]>>,
    /// Trending score per item index, as of the last item publication.
    scores: ArcSwap<Vec<f64>>,
    /// Candidate damping per item index, as of the last item publication.
    norms: ArcSwap<Vec<f32>>,
    /// Co-occurrence weight totals, as of the last item publication (LLR only).
    pair_totals: ArcSwap<PairTotals>,
    /// Unavailable items, as of the last publication (any tick: an item
    /// that goes out of stock leaves the lists within one publish interval).
    unavailable: ArcSwap<FixedBitSet>,
    /// The model's embedding index, as of the last item publication.
    embeddings: ArcSwapOption<EmbeddingIndex>,
    /// Event time of the latest published interaction or catalog event.
    published_items: std::sync::atomic::AtomicU64,
    /// The served lists, for attributing interactions to them.
    attribution: Attribution,
}

impl std::fmt::Debug for RecommenderView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecommenderView").field("items", &self.items.len()).field("users", &self.users.len()).finish()
    }
}

impl RecommenderView {
    /// An empty view for a model running `spec`, served from a process
    /// started at `started_ms` (wall clock: it tags recommendation ids).
    pub fn new(spec: RecommenderSpec, started_ms: i64) -> Self {
        Self {
            attribution: Attribution::new(spec.attributed_answers, started_ms),
            spec,
            item_ids: serving_map(),
            items: serving_map(),
            attributes: serving_map(),
            users: serving_map(),
            trending: serving_map(),
            scores: ArcSwap::from_pointee(Vec::new()),
            norms: ArcSwap::from_pointee(Vec::new()),
            pair_totals: ArcSwap::from_pointee(PairTotals::default()),
            unavailable: ArcSwap::from_pointee(FixedBitSet::new()),
            embeddings: ArcSwapOption::empty(),
            published_items: Default::default(),
        }
    }

    /// The served lists and what followed them.
    pub fn attribution(&self) -> &Attribution {
        &self.attribution
    }

    /// Number of items published.
    pub fn item_count(&self) -> usize {
        self.items.len()
    }

    /// Number of users published.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// An item's id.
    pub fn item_name(&self, item: u32) -> Option<Box<str>> {
        self.items.pin().get(&item).map(|i| i.name.clone())
    }

    /// Publishes what changed in `model`: users, forgotten users, trending
    /// lists and availability always; items too when `with_items`. Returns how many entries were written.
    pub fn publish(&self, model: &mut Recommender, with_items: bool) -> usize {
        let dirty = model.take_dirty(with_items);
        let mut written = 0;
        {
            let users = self.users.pin();
            for name in &dirty.forgotten {
                users.remove(name);
            }
            for name in &dirty.users {
                if let Some(profile) = model.shared_profile(name) {
                    users.insert(name.clone(), profile);
                    written += 1;
                }
            }
        }
        {
            let trending = self.trending.pin();
            let state = model.trending_state();
            trending.insert(OVERALL, state.overall().iter().map(|&(s, i)| (i, s)).collect());
            // Lists of the changed items' categories and tags (cheap: a list is
            // short), also of those whose items wait for the next item publication.
            let changed = if with_items { &dirty.items[..] } else { model.pending_items() };
            let mut categories: Vec<u32> = changed.iter().flat_map(|&i| model.item_state(i).attributes()).collect();
            categories.sort_unstable();
            categories.dedup();
            for c in categories {
                trending.insert(c, state.category(c).iter().map(|&(s, i)| (i, s)).collect());
            }
        }
        if dirty.availability {
            self.unavailable.store(Arc::new(model.unavailable_items().clone()));
        }
        if dirty.catalog {
            let attributes = self.attributes.pin();
            for (index, name) in model.attribute_names().iter().enumerate() {
                if !attributes.contains_key(name) {
                    attributes.insert(name.clone(), index as u32);
                }
            }
        }
        if with_items {
            written += self.publish_items(model, dirty.items.iter().copied());
            let state = model.trending_state();
            let scores: Vec<f64> = (0..model.item_count() as u32).map(|i| state.score(i)).collect();
            self.scores.store(Arc::new(scores));
            self.norms.store(Arc::new(model.candidate_norms().to_vec()));
            // Only the log-likelihood ratio reads them.
            if model.spec().cooccurrence.normalisation == super::Normalisation::Llr {
                self.pair_totals.store(Arc::new(model.pair_totals().clone()));
            }
            self.embeddings.store(model.embedding_index().cloned());
        }
        written
    }

    fn publish_items(&self, model: &mut Recommender, dirty: impl Iterator<Item = u32>) -> usize {
        let items = self.items.pin();
        let ids = self.item_ids.pin();
        let mut written = 0;
        for index in dirty {
            let (neighbours, successors) = model.share_lists(index);
            let state = model.item_state(index);
            let view = ItemView {
                name: state.name.clone(),
                category: state.category,
                users: state.users,
                source_norm: state.source_norm,
                neighbours,
                successors,
                successor_total: state.successors.total(),
                embedding: model.embedding(index).cloned(),
            };
            if !ids.contains_key(&state.name) {
                ids.insert(state.name.clone(), index);
            }
            items.insert(index, Arc::new(view));
            written += 1;
        }
        self.published_items.fetch_add(written as u64, std::sync::atomic::Ordering::Relaxed);
        written
    }

    /// Removes a user at once (forget), ahead of the next publication.
    pub fn remove_user(&self, name: &str) {
        self.users.pin().remove(name);
    }
}

impl ModelRead for RecommenderView {
    type User<'a> = Arc<UserProfile>;
    type Unavailable<'a> = Arc<FixedBitSet>;
    type PairTotals<'a> = Arc<PairTotals>;

    fn spec(&self) -> &RecommenderSpec {
        &self.spec
    }

    fn unavailable(&self) -> Arc<FixedBitSet> {
        self.unavailable.load_full()
    }

    fn pair_totals(&self) -> Arc<PairTotals> {
        self.pair_totals.load_full()
    }

    fn user(&self, name: &str) -> Option<Arc<UserProfile>> {
        self.users.pin().get(name).cloned()
    }

    fn item_index(&self, name: &str) -> Option<u32> {
        self.item_ids.pin().get(name).copied()
    }

    fn item_end(&self) -> usize {
        // Every item below the count of the last item publication has been published.
        self.norms.load().len()
    }

    fn category(&self, item: u32) -> Option<u32> {
        self.items.pin().get(&item).and_then(|i| i.category)
    }

    fn attribute(&self, name: &str) -> Option<u32> {
        self.attributes.pin().get(name).copied()
    }

    fn source_norm(&self, item: u32) -> f32 {
        self.items.pin().get(&item).map_or(0.0, |i| i.source_norm)
    }

    fn neighbours(&self, item: u32, f: &mut NeighboursFn<'_>) {
        if let Some(view) = self.items.pin().get(&item) {
            f(&view.neighbours, &self.norms.load());
        }
    }

    fn successors(&self, item: u32, f: &mut dyn FnMut(&Weighted)) -> f64 {
        match self.items.pin().get(&item) {
            Some(view) => {
                f(&view.successors);
                view.successor_total
            }
            None => 0.0,
        }
    }

    fn trending_score(&self, item: u32) -> f64 {
        self.scores.load().get(item as usize).copied().unwrap_or(0.0)
    }

    fn trending_scores(&self, items: &[u32], out: &mut Vec<f64>) {
        let scores = self.scores.load();
        out.clear();
        out.extend(items.iter().map(|&i| scores.get(i as usize).copied().unwrap_or(0.0)));
    }

    fn trending(&self, category: Option<u32>, f: &mut dyn FnMut(u32, f64)) {
        if let Some(list) = self.trending.pin().get(&category.unwrap_or(OVERALL)) {
            for &(item, score) in list.iter() {
                f(item, score);
            }
        }
    }

    fn embedding_neighbours(&self, item: u32, k: usize, f: &mut dyn FnMut(u32, f32)) {
        let index = self.embeddings.load();
        let Some(index) = index.as_ref() else { return };
        let items = self.items.pin();
        if let Some(Embedded { vector, .. }) = items.get(&item).and_then(|v| v.embedding.as_ref()) {
            let current = |other: u32| items.get(&other).and_then(|v| v.embedding.as_ref()).map(|e| e.generation);
            index.nearest(item, vector, k, current, f);
        }
    }
}
