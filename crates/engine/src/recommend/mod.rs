//! The streaming recommender: candidate generators updated on every
//! interaction and catalog event, and the ranking that blends them.
//!
//! `Recommender` is the live model, owned by one thread like any keyed
//! operator state. Every interaction updates, in O(pair window) work:
//! the user's profile (`user`), the item–item co-occurrence lists and the
//! transition lists of the items involved (`neighbours`), and decayed
//! popularity (`trending`). A catalog event (item upsert) registers the
//! item with its category and tags, so it is recommendable at once through
//! the content generator and similar items, with no retraining step. When
//! the catalog event carries an embedding (and a dimension is configured),
//! the vector goes into an HNSW index at once (`embedding`), and the
//! embedding generator proposes the seeds' nearest items.
//!
//! Ranking (`rank`) is written against [`ModelRead`], which the live model
//! implements (`freshet eval` asks it directly, test-then-train) and which
//! the published serving view implements too (`view`), so the HTTP API and
//! the evaluation rank with the same code.

mod attribution;
mod embedding;
mod neighbours;
mod rank;
mod snapshot;
mod spec;
mod trending;
mod user;
mod view;

use std::ops::Deref;
use std::sync::Arc;

use fixedbitset::FixedBitSet;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use embedding::Embeddings;

pub use attribution::{Asked, Attributed, Attribution, Counts as AttributionCounts};
pub use embedding::{Embedded, EmbeddingIndex, EmbeddingRejection, UnitCosine, parse_json as parse_embedding};
pub use neighbours::{Neighbours, SharedEntries};
pub use rank::{Placement, PlacementRule, Query, Ranking, Scored, rank, similar};
pub use snapshot::ModelCopy;
pub(crate) use snapshot::push_varint;
pub use spec::{
    ContentSpec, CooccurrenceSpec, EmbeddingSpec, Generator, Normalisation, RecommenderSpec, SequenceSpec,
    TrendingSpec, root_llr,
};
pub use trending::Trending;
pub use user::UserProfile;
pub use view::{ItemView, RecommenderView};

/// Number of generators (length of per-generator score arrays).
pub const GENERATORS: usize = Generator::ALL.len();

/// Weighted item lists as ranking reads them: (item index, weight).
pub type Weighted = [(u32, f32)];

/// Receives an item's neighbours and every item's candidate damping.
pub type NeighboursFn<'a> = dyn FnMut(&Weighted, &[f32]) + 'a;

/// What ranking reads of a model: the live one or its published view.
pub trait ModelRead {
    /// A borrowed or shared user profile.
    type User<'a>: Deref<Target = UserProfile>
    where
        Self: 'a;
    /// The unavailable items' set, as ranking reads it once per request.
    type Unavailable<'a>: Deref<Target = FixedBitSet>
    where
        Self: 'a;
    /// The co-occurrence weight totals, as ranking reads them once per request.
    type PairTotals<'a>: Deref<Target = PairTotals>
    where
        Self: 'a;
    /// The spec the model runs with.
    fn spec(&self) -> &RecommenderSpec;
    /// Items the catalog marked unavailable: never recommended, still
    /// learned from and still seeds for others ([`Recommender::set_available`]).
    fn unavailable(&self) -> Self::Unavailable<'_>;
    /// The co-occurrence weight totals ([`Normalisation::Llr`] only; zeros otherwise).
    fn pair_totals(&self) -> Self::PairTotals<'_>;
    /// A user's profile.
    fn user(&self, name: &str) -> Option<Self::User<'_>>;
    /// An item's index, if the item is known.
    fn item_index(&self, name: &str) -> Option<u32>;
    /// Items are numbered densely from 0: every index below this one may be
    /// recommended ([`ModelRead::is_item`]).
    fn item_end(&self) -> usize;
    /// Whether `item` may be recommended.
    fn is_item(&self, item: u32) -> bool {
        (item as usize) < self.item_end()
    }
    /// The item's category, if the catalog gave one.
    fn category(&self, item: u32) -> Option<u32>;
    /// The attribute id of a category or tag name.
    fn attribute(&self, name: &str) -> Option<u32>;
    /// `users(item)^-source_damping` (0 when no user interacted with it).
    fn source_norm(&self, item: u32) -> f32;
    /// Calls `f` once with `item`'s co-occurrence neighbours (item, weight)
    /// and every item's `users^-candidate_damping`, indexed by item (an
    /// item past its end has none yet: weight 0).
    fn neighbours(&self, item: u32, f: &mut NeighboursFn<'_>);
    /// Calls `f` once with `item`'s successors (item, count); returns the outgoing total.
    fn successors(&self, item: u32, f: &mut dyn FnMut(&Weighted)) -> f64;
    /// Decayed popularity of `item` (comparable only with other items' now).
    fn trending_score(&self, item: u32) -> f64;
    /// [`ModelRead::trending_score`] of every item of `items`, into `out` (cleared first).
    fn trending_scores(&self, items: &[u32], out: &mut Vec<f64>) {
        out.clear();
        out.extend(items.iter().map(|&i| self.trending_score(i)));
    }
    /// Calls `f` with the trending list of a category (or overall), best first.
    fn trending(&self, category: Option<u32>, f: &mut dyn FnMut(u32, f64));
    /// Calls `f` with up to `k` items whose embeddings are nearest to
    /// `item`'s, as (item, cosine similarity > 0), nearest first; nothing
    /// when `item` has no embedding or embeddings are off.
    fn embedding_neighbours(&self, item: u32, k: usize, f: &mut dyn FnMut(u32, f32)) {
        let _ = (item, k, f);
    }
}

/// One item of the catalog as the live model keeps it. `snapshot` writes
/// these fields in this order: keep the two alike.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ItemState {
    pub(crate) name: Box<str>,
    pub(crate) category: Option<u32>,
    pub(crate) tags: Vec<u32>,
    /// Distinct users who interacted with it.
    pub(crate) users: u32,
    pub(crate) source_norm: f32,
    pub(crate) candidate_norm: f32,
    pub(crate) neighbours: Neighbours,
    pub(crate) successors: Neighbours,
    /// Changed since the items were last taken for publication (listed in `Dirty::items`).
    #[serde(skip)]
    pub(crate) dirty: bool,
}

impl ItemState {
    /// Its category, then its tags: the attributes whose trending lists hold it.
    pub(crate) fn attributes(&self) -> impl Iterator<Item = u32> + '_ {
        self.category.iter().chain(&self.tags).copied()
    }
}

/// The live model: every generator's state. `snapshot` writes the stored
/// fields in this order: keep the two alike.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recommender {
    #[serde(skip)]
    spec: RecommenderSpec,
    item_ids: FxHashMap<Box<str>, u32>,
    items: Vec<ItemState>,
    /// `candidate_norm` of every item, dense: ranking reads it once per neighbour.
    candidate_norms: Vec<f32>,
    /// Co-occurrence weight totals, kept for [`Normalisation::Llr`] only
    /// (rebuilt from the lists at a restore).
    #[serde(skip)]
    pair_totals: PairTotals,
    attribute_ids: FxHashMap<Box<str>, u32>,
    attributes: Vec<Box<str>>,
    users: FxHashMap<Arc<str>, UserEntry>,
    trending: Trending,
    /// Item embeddings and their index; a snapshot stores the vectors after
    /// the model's other state (so snapshots from before embeddings restore).
    #[serde(skip)]
    embeddings: Embeddings,
    /// Items the catalog marked unavailable (out of stock, withdrawn);
    /// a snapshot stores them after the embeddings.
    #[serde(skip)]
    unavailable: FixedBitSet,
    /// Items and users changed since the last `take_dirty`.
    #[serde(skip)]
    dirty: Dirty,
    /// `distance^-distance_exponent` for each pair distance in the window
    /// (index 0 unused): learning reads it instead of calling `powf` per pair.
    #[serde(skip)]
    pair_weights: Vec<f64>,
}

/// Each item's total co-occurrence weight (pruned entries included) and
/// the weight of every pair, counted from both items: the margins of the
/// pair tables that [`Normalisation::Llr`] scores.
#[derive(Debug, Clone, Default)]
pub struct PairTotals {
    /// Each item's total, by item index.
    pub per_item: Vec<f64>,
    /// The sum of all items' totals.
    pub mass: f64,
}

impl PairTotals {
    fn add(&mut self, a: u32, b: u32, weight: f32) {
        let w = f64::from(weight);
        self.per_item[a as usize] += w;
        self.per_item[b as usize] += w;
        self.mass += 2.0 * w;
    }

    /// `item`'s total (0 for an item past the end).
    pub fn of(&self, item: u32) -> f64 {
        self.per_item.get(item as usize).copied().unwrap_or(0.0)
    }
}

/// A user's profile, shared with the serving view and with checkpoints'
/// copies (the model copies it at its next write while they hold it), and
/// the model's own flag for it. Stored as the profile alone.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct UserEntry {
    profile: Arc<UserProfile>,
    /// Changed since the model's changes were last taken (listed in its `Dirty::users`).
    #[serde(skip)]
    dirty: bool,
}

/// Lists something as changed, once: `listed` is its own flag, `id` makes its entry.
#[inline]
fn list_once<T>(listed: &mut bool, list: &mut Vec<T>, id: impl FnOnce() -> T) {
    if !*listed {
        *listed = true;
        list.push(id());
    }
}

/// Lists `item` (whose state is `state`) as changed, once.
#[inline]
fn mark_dirty(dirty: &mut Vec<u32>, state: &mut ItemState, item: u32) {
    list_once(&mut state.dirty, dirty, || item);
}

/// The co-occurrence weight of each pair distance `1..=pair_window`.
fn pair_weights(spec: &RecommenderSpec) -> Vec<f64> {
    let c = &spec.cooccurrence;
    (0..=c.pair_window).map(|d| if d == 0 { 0.0 } else { (d as f64).powf(-c.distance_exponent) }).collect()
}

/// What changed since the view was last published.
#[derive(Debug, Clone, Default)]
pub(crate) struct Dirty {
    /// Each changed item once (its `ItemState::dirty` says whether it is listed):
    /// a flag on the item it touches anyway is cheaper per pair than a hash set.
    pub(crate) items: Vec<u32>,
    /// Each changed user once (its `UserProfile::dirty` says whether it is listed).
    pub(crate) users: Vec<Box<str>>,
    pub(crate) forgotten: Vec<Box<str>>,
    pub(crate) catalog: bool,
    /// An item's availability changed.
    pub(crate) availability: bool,
}

impl Recommender {
    /// An empty model.
    pub fn new(spec: RecommenderSpec) -> Self {
        let trending = Trending::new(spec.trending.half_life_ms, spec.trending.list_len);
        let embeddings = Embeddings::new(spec.embedding.dimension);
        Self {
            pair_weights: pair_weights(&spec),
            spec,
            item_ids: FxHashMap::default(),
            items: Vec::new(),
            candidate_norms: Vec::new(),
            pair_totals: PairTotals::default(),
            attribute_ids: FxHashMap::default(),
            attributes: Vec::new(),
            users: FxHashMap::default(),
            trending,
            embeddings,
            unavailable: FixedBitSet::new(),
            dirty: Dirty::default(),
        }
    }

    /// Number of items known.
    pub fn item_count(&self) -> usize {
        self.items.len()
    }

    /// Number of users known.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// An item's id.
    pub fn item_name(&self, item: u32) -> Option<&str> {
        self.items.get(item as usize).map(|i| &*i.name)
    }

    fn intern_item(&mut self, name: &str) -> u32 {
        if let Some(&index) = self.item_ids.get(name) {
            return index;
        }
        let index = u32::try_from(self.items.len()).expect("fewer than 2^32 items");
        self.items.push(ItemState { name: name.into(), ..ItemState::default() });
        self.candidate_norms.push(0.0);
        self.pair_totals.per_item.push(0.0);
        self.item_ids.insert(name.into(), index);
        self.dirty.catalog = true;
        index
    }

    fn intern_attribute(&mut self, name: &str) -> u32 {
        if let Some(&index) = self.attribute_ids.get(name) {
            return index;
        }
        let index = u32::try_from(self.attributes.len()).expect("fewer than 2^32 attributes");
        self.attributes.push(name.into());
        self.attribute_ids.insert(name.into(), index);
        index
    }

    /// Learns one interaction of `user` with `item` at event time `time_ms`.
    /// Event types weighing 0 are ignored.
    pub fn interaction(&mut self, user: &str, item: &str, event_type: Option<&str>, time_ms: i64) {
        let weight = self.spec.event_weight(event_type);
        if weight <= 0.0 {
            return;
        }
        let item = self.intern_item(item);
        let spec = &self.spec;
        let entry = match self.users.get_mut(user) {
            Some(entry) => entry,
            None => self.users.entry(user.into()).or_default(),
        };
        list_once(&mut entry.dirty, &mut self.dirty.users, || user.into());
        let profile = Arc::make_mut(&mut entry.profile);
        if spec.sequence.enabled
            && let Some((previous, at)) = profile.last
            && previous != item
            && time_ms.saturating_sub(at) <= spec.sequence.session_gap_ms
        {
            let state = &mut self.items[previous as usize];
            state.successors.add(item, weight as f32, spec.sequence.max_successors);
            mark_dirty(&mut self.dirty.items, state, previous);
        }
        profile.last = Some((item, time_ms));
        if !profile.seen.contains(&item) {
            Arc::make_mut(&mut profile.seen).insert(item);
            let ordinal = profile.distinct;
            profile.distinct += 1;
            if spec.cooccurrence.enabled {
                let c = &spec.cooccurrence;
                for &(other, other_ordinal) in &profile.history {
                    // Beyond the table only after a restore with a smaller window.
                    let distance = (ordinal - other_ordinal) as usize;
                    let pair_weight = match self.pair_weights.get(distance) {
                        Some(&w) => w,
                        None => (distance as f64).powf(-c.distance_exponent),
                    };
                    let w = (weight * pair_weight) as f32;
                    self.items[item as usize].neighbours.add(other, w, c.max_neighbours);
                    let state = &mut self.items[other as usize];
                    state.neighbours.add(item, w, c.max_neighbours);
                    mark_dirty(&mut self.dirty.items, state, other);
                    if c.normalisation == Normalisation::Llr {
                        self.pair_totals.add(item, other, w);
                    }
                }
                profile.history.push_back((item, ordinal));
                while profile.history.len() > c.pair_window {
                    profile.history.pop_front();
                }
            }
            let state = &mut self.items[item as usize];
            state.users += 1;
            let users = f64::from(state.users);
            state.source_norm = users.powf(-spec.cooccurrence.source_damping) as f32;
            state.candidate_norm = users.powf(-spec.cooccurrence.candidate_damping) as f32;
            self.candidate_norms[item as usize] = state.candidate_norm;
        }
        profile.touch(item, spec.recent_items);
        let state = &self.items[item as usize];
        if spec.content.enabled {
            if let Some(category) = state.category {
                profile.like(category, weight as f32);
            }
            for &tag in &state.tags {
                profile.like(tag, 0.5 * weight as f32);
            }
        }
        // Kept even when trending proposes nothing: it breaks ties and fills short lists.
        let attributes: smallvec::SmallVec<[u32; 4]> = state.attributes().collect();
        self.trending.add(item, &attributes, weight, time_ms);
        mark_dirty(&mut self.dirty.items, &mut self.items[item as usize], item);
    }

    /// Registers or updates a catalog item; it is recommendable from now on.
    /// Its embedding, if it has one, stays.
    pub fn upsert_item(&mut self, item: &str, category: Option<&str>, tags: &[&str], time_ms: i64) {
        self.catalogue(item, category, tags, time_ms);
    }

    /// [`Recommender::upsert_item`] with the item's embedding, which replaces
    /// any previous one and is searchable at once. A rejected embedding
    /// (wrong dimension, not finite, all zeros, or embeddings off) leaves the
    /// item's previous embedding, if any; the item is catalogued either way.
    pub fn upsert_item_with_embedding(
        &mut self,
        item: &str,
        category: Option<&str>,
        tags: &[&str],
        embedding: &[f32],
        time_ms: i64,
    ) -> Result<(), EmbeddingRejection> {
        let index = self.catalogue(item, category, tags, time_ms);
        self.embeddings.set(index, embedding)
    }

    /// The embedding index shared with the serving view (none when embeddings are off).
    pub fn embedding_index(&self) -> Option<&std::sync::Arc<EmbeddingIndex>> {
        self.embeddings.index.as_ref()
    }

    /// An item's current embedding.
    pub fn embedding(&self, item: u32) -> Option<&Embedded> {
        self.embeddings.get(item)
    }

    fn catalogue(&mut self, item: &str, category: Option<&str>, tags: &[&str], time_ms: i64) -> u32 {
        let index = self.intern_item(item);
        let category = category.map(|c| self.intern_attribute(c));
        let tags: Vec<u32> = tags.iter().map(|t| self.intern_attribute(t)).collect();
        let attributes: Vec<u32> = category.iter().chain(&tags).copied().collect();
        let state = &mut self.items[index as usize];
        let previous = state.category;
        state.category = category;
        state.tags = tags;
        if self.trending.score(index) == 0.0 {
            // A new item enters its category's and tags' lists (and the overall one) at the
            // weight of one event, so content and trending can propose it at once.
            self.trending.add(index, &attributes, self.spec.default_event_weight, time_ms);
        } else {
            self.trending.recategorise(index, previous, category);
        }
        mark_dirty(&mut self.dirty.items, &mut self.items[index as usize], index);
        self.dirty.catalog = true;
        index
    }

    /// Marks a catalog item available or not (a catalog event's
    /// availability field; absent means available). An unavailable item is
    /// never recommended, in any list, until it is available again; it
    /// still learns from interactions (its lists are intact when it comes
    /// back) and still proposes its neighbours as a user's recent item.
    /// Returns whether the item was known.
    pub fn set_available(&mut self, item: &str, available: bool) -> bool {
        let Some(&index) = self.item_ids.get(item) else { return false };
        let index = index as usize;
        let unavailable = !available;
        if self.unavailable.contains(index) != unavailable {
            if unavailable {
                self.unavailable.grow(index + 1);
            }
            self.unavailable.set(index, unavailable);
            self.dirty.availability = true;
        }
        true
    }

    /// Whether `item` may be recommended as far as the catalog says.
    pub fn is_available(&self, item: u32) -> bool {
        !self.unavailable.contains(item as usize)
    }

    /// Forgets a user's profile. The user's past contributions to aggregate
    /// item statistics (co-occurrence counts, popularity) stay: they are not
    /// about the user, and no single user can be read back from them.
    pub fn forget_user(&mut self, user: &str) -> bool {
        let removed = self.users.remove(user).is_some();
        if removed {
            self.dirty.users.retain(|name| &**name != user);
            self.dirty.forgotten.push(user.into());
        }
        removed
    }

    /// Forgets an item's learned state, so that nothing recommends it until
    /// it is interacted with again: its co-occurrence and transition lists,
    /// its place in every other item's lists, its trending score and its
    /// embedding. It stays in the catalog (with its category and tags, so
    /// an upsert or interaction brings it back as any item comes); the
    /// count of its distinct users and users' own histories stay, as for
    /// [`Recommender::forget_user`]. One probe per catalog item. Returns
    /// whether the item was known.
    pub fn forget_item(&mut self, item: &str) -> bool {
        let Some(&index) = self.item_ids.get(item) else { return false };
        for (other, state) in self.items.iter_mut().enumerate() {
            // Both removals run: an item may be in either list alone.
            let in_neighbours = state.neighbours.remove(index);
            if state.successors.remove(index) | in_neighbours {
                mark_dirty(&mut self.dirty.items, state, other as u32);
            }
        }
        let state = &mut self.items[index as usize];
        state.neighbours.clear();
        state.successors.clear();
        self.pair_totals.per_item[index as usize] = 0.0;
        let attributes: smallvec::SmallVec<[u32; 4]> = state.attributes().collect();
        mark_dirty(&mut self.dirty.items, state, index);
        self.trending.forget(index, &attributes);
        self.embeddings.forget(index);
        self.dirty.catalog = true;
        // Users' histories let go of it too: a later event of theirs would
        // pair with it (putting it back into other items' lists with no
        // event of its own) or make a transition from it. Their seen sets
        // keep it: it is still never proposed to someone who had it.
        let had = |profile: &UserProfile| {
            profile.last.is_some_and(|(item, _)| item == index)
                || profile.recent.contains(&index)
                || profile.history.iter().any(|&(item, _)| item == index)
        };
        for (name, entry) in &mut self.users {
            // Looked at first: a profile is copied to be written if the view or a copy holds it.
            if !had(&entry.profile) {
                continue;
            }
            let profile = Arc::make_mut(&mut entry.profile);
            profile.history.retain(|&(item, _)| item != index);
            profile.recent.retain(|&item| item != index);
            if profile.last.is_some_and(|(item, _)| item == index) {
                profile.last = None;
            }
            list_once(&mut entry.dirty, &mut self.dirty.users, || Box::from(&**name));
        }
        true
    }

    /// Replaces the spec after a restore (the spec is config, not state).
    /// The embedding index is rebuilt for the spec's dimension; embeddings of
    /// another dimension (or all, with none configured) are dropped.
    pub fn with_spec(mut self, spec: RecommenderSpec) -> Self {
        self.pair_weights = pair_weights(&spec);
        self.pair_totals = PairTotals::default();
        self.pair_totals.per_item = vec![0.0; self.items.len()];
        if spec.cooccurrence.normalisation == Normalisation::Llr {
            self.pair_totals.per_item = self.items.iter().map(|i| i.neighbours.total()).collect();
            self.pair_totals.mass = self.pair_totals.per_item.iter().sum();
        }
        self.embeddings = Embeddings::rebuilt(spec.embedding.dimension, std::mem::take(&mut self.embeddings.items));
        self.spec = spec;
        self.dirty.catalog = true;
        self.dirty.items.clear();
        for (index, state) in self.items.iter_mut().enumerate() {
            state.dirty = false;
            mark_dirty(&mut self.dirty.items, state, index as u32);
        }
        self.dirty.users.clear();
        for (name, entry) in &mut self.users {
            entry.dirty = false;
            list_once(&mut entry.dirty, &mut self.dirty.users, || Box::from(&**name));
        }
        self
    }

    /// Encodes the model's state (postcard): the model, then, when any item
    /// has one or any item is unavailable, the embeddings as (item,
    /// generation, vector), then, when any item is unavailable, their
    /// indexes. The HNSW graph is not stored; a restore rebuilds it. In two
    /// steps, so that the second can run on another thread:
    /// [`Recommender::snapshot_copy`], [`ModelCopy::encode`].
    pub fn snapshot(&mut self) -> Vec<u8> {
        self.snapshot_copy().encode()
    }

    /// Decodes a snapshot taken by [`Recommender::snapshot`], running it with `spec`.
    pub fn restore(bytes: &[u8], spec: RecommenderSpec) -> Result<Self, postcard::Error> {
        let (mut model, rest): (Recommender, _) = postcard::take_from_bytes(bytes)?;
        if !rest.is_empty() {
            let (stored, rest): (Vec<(u32, u32, Vec<f32>)>, _) = postcard::take_from_bytes(rest)?;
            model.embeddings.items = Embeddings::items_from_stored(stored);
            if !rest.is_empty() {
                let unavailable: Vec<u32> = postcard::from_bytes(rest)?;
                if let Some(&last) = unavailable.iter().max() {
                    model.unavailable.grow(last as usize + 1);
                }
                model.unavailable.extend(unavailable.iter().map(|&i| i as usize));
            }
        }
        Ok(model.with_spec(spec))
    }

    /// What changed since the last call; changed items only `with_items`
    /// (otherwise they stay for the next call that takes them).
    pub(crate) fn take_dirty(&mut self, with_items: bool) -> Dirty {
        let items = if with_items { std::mem::take(&mut self.dirty.items) } else { Vec::new() };
        for &item in &items {
            self.items[item as usize].dirty = false;
        }
        for name in &self.dirty.users {
            if let Some(entry) = self.users.get_mut(&**name) {
                entry.dirty = false;
            }
        }
        Dirty {
            items,
            users: std::mem::take(&mut self.dirty.users),
            forgotten: std::mem::take(&mut self.dirty.forgotten),
            catalog: std::mem::take(&mut self.dirty.catalog),
            availability: std::mem::take(&mut self.dirty.availability),
        }
    }

    pub(crate) fn unavailable_items(&self) -> &FixedBitSet {
        &self.unavailable
    }

    /// Items changed since they were last taken for publication.
    pub(crate) fn pending_items(&self) -> &[u32] {
        &self.dirty.items
    }

    pub(crate) fn candidate_norms(&self) -> &[f32] {
        &self.candidate_norms
    }

    /// An item's neighbours and successors, to hold as they are now (the
    /// model copies a list at its next write while they are held).
    pub(crate) fn share_lists(&mut self, item: u32) -> (SharedEntries, SharedEntries) {
        let state = &mut self.items[item as usize];
        (state.neighbours.share(), state.successors.share())
    }

    pub(crate) fn item_state(&self, item: u32) -> &ItemState {
        &self.items[item as usize]
    }

    pub(crate) fn attribute_names(&self) -> &[Box<str>] {
        &self.attributes
    }

    pub(crate) fn trending_state(&self) -> &Trending {
        &self.trending
    }

    /// A user's profile, to hold as it is now (the model copies it at its next write).
    pub(crate) fn shared_profile(&self, name: &str) -> Option<Arc<UserProfile>> {
        self.users.get(name).map(|entry| Arc::clone(&entry.profile))
    }
}

impl ModelRead for Recommender {
    type User<'a> = &'a UserProfile;
    type Unavailable<'a> = &'a FixedBitSet;
    type PairTotals<'a> = &'a PairTotals;

    fn spec(&self) -> &RecommenderSpec {
        &self.spec
    }

    fn unavailable(&self) -> &FixedBitSet {
        &self.unavailable
    }

    fn pair_totals(&self) -> &PairTotals {
        &self.pair_totals
    }

    fn user(&self, name: &str) -> Option<&UserProfile> {
        self.users.get(name).map(|entry| &*entry.profile)
    }

    fn item_index(&self, name: &str) -> Option<u32> {
        self.item_ids.get(name).copied()
    }

    fn item_end(&self) -> usize {
        self.items.len()
    }

    fn category(&self, item: u32) -> Option<u32> {
        self.items.get(item as usize).and_then(|i| i.category)
    }

    fn attribute(&self, name: &str) -> Option<u32> {
        self.attribute_ids.get(name).copied()
    }

    fn source_norm(&self, item: u32) -> f32 {
        self.items[item as usize].source_norm
    }

    fn neighbours(&self, item: u32, f: &mut NeighboursFn<'_>) {
        f(self.items[item as usize].neighbours.entries(), &self.candidate_norms);
    }

    fn successors(&self, item: u32, f: &mut dyn FnMut(&Weighted)) -> f64 {
        let successors = &self.items[item as usize].successors;
        f(successors.entries());
        successors.total()
    }

    fn trending_score(&self, item: u32) -> f64 {
        self.trending.score(item)
    }

    fn trending(&self, category: Option<u32>, f: &mut dyn FnMut(u32, f64)) {
        let list = match category {
            Some(c) => self.trending.category(c),
            None => self.trending.overall(),
        };
        for &(score, item) in list {
            f(item, score);
        }
    }

    fn embedding_neighbours(&self, item: u32, k: usize, f: &mut dyn FnMut(u32, f32)) {
        if let (Some(index), Some(e)) = (&self.embeddings.index, self.embeddings.get(item)) {
            index.nearest(item, &e.vector, k, |other| self.embeddings.get(other).map(|e| e.generation), f);
        }
    }
}

#[cfg(test)]
mod tests;
