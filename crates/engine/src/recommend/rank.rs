//! Ranking: candidates from every generator, blended, filtered (seen,
//! excluded, unavailable, placement exclusions), placed and
//! diversified into a top-k list, each item with the generators behind it.
//!
//! Each generator's raw scores are normalised by their maximum over this
//! request's candidates, so weights compare generators, not their units.
//! Ties go to the more popular item (decayed), then to the older item.

use fixedbitset::FixedBitSet;
use rustc_hash::FxHashMap;

use super::spec::{Generator, Normalisation, root_llr};
use super::{GENERATORS, ModelRead, Weighted};

/// A placement's rules, applied after blending.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Placement {
    /// The name requests use.
    pub name: String,
    /// Rules, in order.
    pub rules: Vec<PlacementRule>,
    /// At most this many items of one category (0: the recommender's default).
    pub max_per_category: usize,
}

/// One placement rule.
#[derive(Debug, Clone, PartialEq)]
pub enum PlacementRule {
    /// Multiply the score of items of a category.
    Boost {
        /// Category name.
        category: String,
        /// Factor.
        factor: f64,
    },
    /// Never show items of a category.
    Exclude {
        /// Category name.
        category: String,
    },
    /// Put an item at a position (1-based) when the user has not seen it.
    Pin {
        /// Item id.
        item: String,
        /// Position, 1-based.
        position: usize,
    },
}

/// One ranking request.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    /// The user, if known to the caller (unknown users get a cold-start answer).
    pub user: Option<&'a str>,
    /// How many items.
    pub k: usize,
    /// Items of the request's context (the page's item, a cart), newest first;
    /// they seed the generators like the user's own recent items, ahead of them.
    pub context: &'a [u32],
    /// Items never to return.
    pub exclude: &'a [u32],
    /// Only items of these categories, when given.
    pub categories: Option<&'a [u32]>,
    /// Placement rules.
    pub placement: Option<&'a Placement>,
    /// Generators allowed to propose candidates.
    pub generators: [bool; GENERATORS],
}

impl<'a> Query<'a> {
    /// A plain request for `user`.
    pub fn for_user(user: &'a str, k: usize) -> Self {
        Query {
            user: Some(user),
            k,
            context: &[],
            exclude: &[],
            categories: None,
            placement: None,
            generators: [true; GENERATORS],
        }
    }
}

/// One ranked item.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    /// Item index.
    pub item: u32,
    /// Blended score (0 for fill-ins and pins).
    pub score: f64,
    /// Each generator's weighted, normalised contribution (indexed by `Generator::index`).
    pub parts: [f64; GENERATORS],
}

impl Scored {
    /// The generators that proposed this item, with their contributions.
    pub fn reasons(&self) -> impl Iterator<Item = (Generator, f64)> + '_ {
        Generator::ALL.into_iter().map(|g| (g, self.parts[g.index()])).filter(|(_, s)| *s > 0.0)
    }
}

/// Raw per-generator scores of this request's candidates, in a dense array
/// indexed by item, with a mark per item saying whether this request touched
/// or blocked it (marks are request-stamped, so nothing is ever cleared):
/// candidate generation touches thousands of entries per request, and a hash
/// map there was half the cost of ranking.
///
/// Scores are zero outside a request: [`Candidates::begin`] zeroes what the
/// previous request wrote. Co-occurrence, which runs first and proposes most
/// candidates, relies on that: [`Candidates::accumulate`] adds without
/// reading marks or branching per entry (an entry whose score was still zero
/// is appended to `written` unconditionally, the index advanced by the
/// comparison), and [`Candidates::settle`] then marks the new entries once
/// each, dropping blocked ones and repeats.
#[derive(Debug, Default)]
struct Candidates {
    scores: Vec<[f32; GENERATORS]>,
    /// `2·stamp` when touched by this request, `2·stamp + 1` when blocked.
    marks: Vec<u32>,
    stamp: u32,
    /// Distinct, unblocked candidates of this request.
    touched: Vec<u32>,
    /// Every entry this request wrote a score to (with repeats): zeroed by the next `begin`.
    written: Vec<u32>,
}

impl Candidates {
    /// Starts a request over a model of `items` items.
    fn begin(&mut self, items: usize) {
        for &item in &self.written {
            self.scores[item as usize] = [0.0; GENERATORS];
        }
        self.written.clear();
        self.touched.clear();
        self.stamp += 1;
        if self.stamp >= u32::MAX / 2 {
            self.marks.fill(0);
            self.stamp = 1;
        }
        self.fit(items);
    }

    /// Makes room for items `0..items` (in powers of two).
    fn fit(&mut self, items: usize) {
        if items > self.scores.len() {
            let len = items.next_power_of_two();
            self.scores.resize(len, [0.0; GENERATORS]);
            self.marks.resize(len, 0);
        }
    }

    #[inline]
    fn grow(&mut self, item: u32) -> usize {
        let i = item as usize;
        self.fit(i + 1);
        i
    }

    fn block(&mut self, item: u32) {
        let i = self.grow(item);
        self.marks[i] = 2 * self.stamp + 1;
    }

    fn is_blocked(&self, item: u32) -> bool {
        self.marks.get(item as usize) == Some(&(2 * self.stamp + 1))
    }

    /// Adds `source · weight · norms[item]` to each entry's co-occurrence
    /// score. Only before any other generator's entries (see the type's doc);
    /// [`Candidates::settle`] must follow.
    #[inline]
    fn accumulate(&mut self, entries: &Weighted, norms: &[f32], source: f64) {
        const G: usize = Generator::Cooccurrence.index();
        let start = self.written.len();
        self.written.resize(start + entries.len(), 0);
        let mut end = start;
        for &(item, count) in entries {
            let i = item as usize;
            if i >= self.scores.len() {
                self.grow(item);
            }
            let norm = norms.get(i).copied().unwrap_or(0.0);
            let score = &mut self.scores[i][G];
            self.written[end] = item;
            end += usize::from(*score == 0.0);
            *score += (source * f64::from(count * norm)) as f32;
        }
        self.written.truncate(end);
    }

    /// Marks the entries `accumulate` wrote since `from` in `written` as touched.
    fn settle(&mut self, from: usize) {
        let touched = 2 * self.stamp;
        for &item in &self.written[from..] {
            let mark = &mut self.marks[item as usize];
            if *mark != touched && *mark != touched + 1 {
                *mark = touched;
                self.touched.push(item);
            }
        }
    }

    #[inline]
    fn entry(&mut self, item: u32) -> Option<&mut [f32; GENERATORS]> {
        let i = self.grow(item);
        let touched = 2 * self.stamp;
        let mark = self.marks[i];
        if mark != touched {
            if mark == touched + 1 {
                return None;
            }
            self.marks[i] = touched;
            self.touched.push(item);
            self.written.push(item);
        }
        Some(&mut self.scores[i])
    }

    #[inline]
    fn add(&mut self, item: u32, generator: Generator, score: f64) {
        if let Some(entry) = self.entry(item) {
            entry[generator.index()] += score as f32;
        }
    }
}

/// Scratch space and result of [`rank`]; reuse it across requests.
#[derive(Debug, Default)]
pub struct Ranking {
    candidates: Candidates,
    buffer: Vec<(u32, f32)>,
    seeds: Vec<u32>,
    ranked: Vec<(f64, f64, u32)>,
    popularity: Vec<f64>,
    raw: Vec<[f32; GENERATORS]>,
    head: Vec<(f64, f64, u32)>,
    /// The result, best first.
    pub items: Vec<Scored>,
}

/// Ranks items for `query` into `out.items`.
pub fn rank<M: ModelRead + ?Sized>(model: &M, query: &Query<'_>, out: &mut Ranking) {
    out.items.clear();
    if query.k == 0 {
        return;
    }
    let spec = model.spec();
    let user = query.user.and_then(|u| model.user(u));
    let user = user.as_deref();
    let weight = |g: Generator| if query.generators[g.index()] { spec.weight(g) } else { 0.0 };

    out.seeds.clear();
    for &item in query.context {
        if model.is_item(item) && !out.seeds.contains(&item) {
            out.seeds.push(item);
        }
    }
    if let Some(user) = user {
        for item in user.recent() {
            if !out.seeds.contains(&item) {
                out.seeds.push(item);
            }
        }
    }
    out.seeds.truncate(spec.recent_items.max(query.context.len()));
    let item_end = model.item_end();
    let candidates = &mut out.candidates;
    candidates.begin(item_end);
    if let Some(user) = user {
        for item in user.seen() {
            candidates.block(item);
        }
    }
    for &item in query.exclude.iter().chain(query.context) {
        candidates.block(item);
    }

    let unavailable = model.unavailable();

    // Co-occurrence first: `Candidates::accumulate` needs to run before any other generator.
    if weight(Generator::Cooccurrence) > 0.0 && spec.cooccurrence.normalisation == Normalisation::Llr {
        // Logarithms per neighbour: slower than the cosine's product, and
        // entries scoring 0 are no candidates, so it adds entry by entry.
        let totals = model.pair_totals();
        let mut w = 1.0;
        for &seed in &out.seeds {
            let source = totals.of(seed);
            model.neighbours(seed, &mut |entries, _| {
                for &(item, both) in entries {
                    let score = root_llr(f64::from(both), source, totals.of(item), totals.mass);
                    if score > 0.0 {
                        candidates.add(item, Generator::Cooccurrence, w * score);
                    }
                }
            });
            w *= spec.recency_decay;
        }
    } else if weight(Generator::Cooccurrence) > 0.0 {
        let mut w = 1.0;
        let from = candidates.written.len();
        for &seed in &out.seeds {
            let source = w * f64::from(model.source_norm(seed));
            model.neighbours(seed, &mut |entries, norms| candidates.accumulate(entries, norms, source));
            w *= spec.recency_decay;
        }
        candidates.settle(from);
    }
    if weight(Generator::Sequence) > 0.0 {
        let mut w = 1.0;
        for &seed in out.seeds.iter().take(spec.sequence.sources) {
            out.buffer.clear();
            let total = model.successors(seed, &mut |entries| out.buffer.extend_from_slice(entries));
            if total > 0.0 {
                for &(item, count) in &out.buffer {
                    candidates.add(item, Generator::Sequence, w * f64::from(count) / total);
                }
            }
            w *= spec.sequence.recency_decay;
        }
    }
    if weight(Generator::Content) > 0.0 {
        content(model, user.map_or(&[][..], |u| u.affinity()), &out.seeds, &unavailable, candidates);
    }
    if weight(Generator::Embedding) > 0.0 {
        let mut w = 1.0;
        for &seed in out.seeds.iter().take(spec.embedding.sources) {
            model.embedding_neighbours(seed, spec.embedding.neighbours, &mut |item, similarity| {
                candidates.add(item, Generator::Embedding, w * f64::from(similarity));
            });
            w *= spec.recency_decay;
        }
    }
    if weight(Generator::Trending) > 0.0 {
        model.trending(None, &mut |item, _| {
            candidates.entry(item);
        });
    }

    // Filters, then per-generator maxima over what is left.
    let excluded_categories: Vec<u32> = query
        .placement
        .into_iter()
        .flat_map(|p| &p.rules)
        .filter_map(|r| match r {
            PlacementRule::Exclude { category } => model.attribute(category),
            _ => None,
        })
        .collect();
    let filters = !excluded_categories.is_empty() || query.categories.is_some();
    let passes = |item: u32| {
        (item as usize) < item_end
            && !unavailable.contains(item as usize)
            && (!filters
                || match model.category(item) {
                    Some(c) => {
                        !excluded_categories.contains(&c) && query.categories.is_none_or(|cats| cats.contains(&c))
                    }
                    None => query.categories.is_none(),
                })
    };
    let trending_on = weight(Generator::Trending) > 0.0;
    let mut touched = std::mem::take(&mut candidates.touched);
    touched.retain(|&item| passes(item));
    let trend = Generator::Trending.index();
    let popularity = &mut out.popularity;
    model.trending_scores(&touched, popularity);
    // Each candidate's raw scores, gathered once in candidate order: the
    // maxima and the blend below then read them sequentially.
    // (Maxima by plain comparison: scores are never NaN, and `f32::max`'s
    // NaN handling made a chain of five instructions per generator and row.)
    let raw = &mut out.raw;
    raw.clear();
    let mut max = [0.0f32; GENERATORS];
    raw.extend(touched.iter().map(|&item| {
        let row = candidates.scores[item as usize];
        for g in 0..GENERATORS {
            if row[g] > max[g] {
                max[g] = row[g];
            }
        }
        row
    }));
    let mut max = max.map(f64::from);
    if trending_on {
        for &p in popularity.iter() {
            if p > max[trend] {
                max[trend] = p;
            }
        }
    }
    // Sequence scores are probabilities: a thin best one earns less than the full weight.
    let sequence = Generator::Sequence.index();
    if max[sequence] > 0.0 {
        max[sequence] = max[sequence].max(spec.sequence.full_weight_at);
    }
    // A generator's raw score times its scale is its weighted, normalised part.
    let scale: [f64; GENERATORS] = Generator::ALL.map(|g| {
        let max = max[g.index()];
        if max > 0.0 { weight(g) / max } else { 0.0 }
    });
    let boosts: Vec<(u32, f64)> = query
        .placement
        .into_iter()
        .flat_map(|p| &p.rules)
        .filter_map(|r| match r {
            PlacementRule::Boost { category, factor } => model.attribute(category).map(|c| (c, *factor)),
            _ => None,
        })
        .collect();
    let boosted = |item: u32, mut score: f64| {
        if !boosts.is_empty()
            && let Some(c) = model.category(item)
        {
            for &(_, factor) in boosts.iter().filter(|(b, _)| *b == c) {
                score *= factor;
            }
        }
        score
    };
    // A generator's part of a candidate's score: trending's raw score is the popularity.
    let part = |row: &[f32; GENERATORS], popularity: f64, g: usize| {
        let raw = if g == trend && trending_on { popularity } else { f64::from(row[g]) };
        raw * scale[g]
    };
    // Blend into compact (score, popularity, item) entries; the per-generator
    // parts are worked out again only for the items that make the list.
    // (Summed part by part, not through a local array: writing one element
    // of an array and reading it back as a vector stalled store forwarding.)
    let ranked = &mut out.ranked;
    ranked.clear();
    ranked.extend(touched.iter().zip(raw.iter()).zip(popularity.iter()).map(|((&item, row), &pop)| {
        let mut score = 0.0;
        for g in 0..GENERATORS {
            score += part(row, pop, g);
        }
        (boosted(item, score), pop, item)
    }));
    let parts_of = |item: u32, popularity: f64| {
        let row = &candidates.scores[item as usize];
        let parts: [f64; GENERATORS] = std::array::from_fn(|g| part(row, popularity, g));
        (boosted(item, parts.iter().sum()), parts)
    };
    let order =
        |a: &(f64, f64, u32), b: &(f64, f64, u32)| b.0.total_cmp(&a.0).then(b.1.total_cmp(&a.1)).then(a.2.cmp(&b.2));

    let cap = match query.placement {
        Some(p) if p.max_per_category > 0 => p.max_per_category,
        _ => spec.max_per_category,
    };
    let mut per_category: FxHashMap<u32, usize> = FxHashMap::default();
    let take = |per_category: &mut FxHashMap<u32, usize>, item: u32| -> bool {
        if cap == 0 {
            return true;
        }
        match model.category(item) {
            Some(c) => {
                let n = per_category.entry(c).or_default();
                *n += 1;
                *n <= cap
            }
            None => true,
        }
    };
    // Only the best few need sorting; a category cap may need more of them.
    let mut limit = if cap == 0 { query.k } else { query.k.saturating_mul(4).max(query.k + 64) };
    let head = &mut out.head;
    loop {
        best_sorted(ranked, limit, order, head);
        out.items.clear();
        per_category.clear();
        for &(score, pop, item) in head.iter() {
            if out.items.len() == query.k {
                break;
            }
            if take(&mut per_category, item) {
                out.items.push(Scored { item, score, parts: parts_of(item, pop).1 });
            }
        }
        if out.items.len() == query.k || limit >= ranked.len() {
            break;
        }
        limit = ranked.len();
    }
    candidates.touched = touched;
    let allowed = |item: u32| passes(item) && !candidates.is_blocked(item);
    // Fill-ins from the trending list (unless the spec or the query rules trending out), then pins.
    if out.items.len() < query.k && weight(Generator::Trending) > 0.0 {
        let mut fill = Vec::new();
        model.trending(None, &mut |item, _| fill.push(item));
        for item in fill {
            if out.items.len() == query.k {
                break;
            }
            if allowed(item) && !out.items.iter().any(|s| s.item == item) && take(&mut per_category, item) {
                out.items.push(Scored { item, score: 0.0, parts: [0.0; GENERATORS] });
            }
        }
    }
    if let Some(placement) = query.placement {
        for rule in &placement.rules {
            if let PlacementRule::Pin { item, position } = rule
                && let Some(item) = model.item_index(item)
                && allowed(item)
            {
                out.items.retain(|s| s.item != item);
                let at = position.saturating_sub(1).min(out.items.len());
                out.items.insert(at, Scored { item, score: 0.0, parts: [0.0; GENERATORS] });
                out.items.truncate(query.k);
            }
        }
    }
}

/// The `limit` first entries of `entries` by `order` (a total order), sorted, into `head`.
///
/// One pass that compares each entry with the worst kept so far: with a
/// short head and a thousand candidates, almost every entry is rejected by
/// that one comparison, cheaper than partitioning the whole slice.
fn best_sorted<T: Copy>(entries: &[T], limit: usize, order: impl Fn(&T, &T) -> std::cmp::Ordering, head: &mut Vec<T>) {
    head.clear();
    if entries.len() <= limit {
        head.extend_from_slice(entries);
        head.sort_unstable_by(&order);
        return;
    }
    for &entry in entries {
        if head.len() == limit {
            match head.last() {
                Some(worst) if order(&entry, worst).is_lt() => {
                    head.pop();
                }
                _ => continue,
            }
        }
        let at = head.partition_point(|kept| order(kept, &entry).is_lt());
        head.insert(at, entry);
    }
}

/// Items similar to `item`: its co-occurrence neighbours and successors,
/// items of its category, and the items nearest to its embedding; never the
/// item itself, never merely popular ones.
pub fn similar<M: ModelRead + ?Sized>(model: &M, item: u32, k: usize, out: &mut Ranking) {
    let context = [item];
    let mut generators = [true; GENERATORS];
    generators[Generator::Trending.index()] = false;
    let query = Query { user: None, k, context: &context, exclude: &[], categories: None, placement: None, generators };
    rank(model, &query, out);
}

/// Content candidates: the trending items of the attributes the user (and
/// the context's items) like most, each weighted by its share of affinity.
/// Unavailable items take none of an attribute's `per_attribute` places.
fn content<M: ModelRead + ?Sized>(
    model: &M,
    affinity: &[(u32, f32)],
    seeds: &[u32],
    unavailable: &FixedBitSet,
    candidates: &mut Candidates,
) {
    let spec = &model.spec().content;
    let mut attributes: Vec<(u32, f64)> = affinity.iter().map(|&(a, w)| (a, f64::from(w))).collect();
    // Context items (and, for a user with no affinity yet, recent items) lend their categories.
    for (k, &seed) in seeds.iter().enumerate().take(spec.top_attributes) {
        if let Some(c) = model.category(seed) {
            let w = 1.0 / (k + 1) as f64;
            match attributes.iter_mut().find(|(a, _)| *a == c) {
                Some(entry) => entry.1 += w,
                None => attributes.push((c, w)),
            }
        }
    }
    attributes.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    attributes.truncate(spec.top_attributes);
    let total: f64 = attributes.iter().map(|a| a.1).sum();
    if total <= 0.0 {
        return;
    }
    for (attribute, w) in attributes {
        let share = w / total;
        let mut top = None;
        let mut taken = 0;
        model.trending(Some(attribute), &mut |item, score| {
            if taken == spec.per_attribute || unavailable.contains(item as usize) {
                return;
            }
            taken += 1;
            let top = *top.get_or_insert(score);
            if top > 0.0 {
                candidates.add(item, Generator::Content, share * score / top);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::best_sorted;

    proptest! {
        /// The one-pass selection keeps exactly the first `limit` entries of a full sort.
        #[test]
        fn best_sorted_is_the_head_of_a_full_sort(
            entries in prop::collection::vec((0u8..8, 0u32..1000), 0..300),
            limit in 0usize..40,
        ) {
            let order = |a: &(u8, u32), b: &(u8, u32)| b.0.cmp(&a.0).then(a.1.cmp(&b.1));
            let mut head = Vec::new();
            best_sorted(&entries, limit, order, &mut head);
            let mut sorted = entries.clone();
            sorted.sort_by(order);
            sorted.truncate(limit);
            prop_assert_eq!(head, sorted);
        }
    }
}
