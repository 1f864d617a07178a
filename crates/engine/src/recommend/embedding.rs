//! Item embeddings: the vectors catalog events carry, checked against the
//! configured dimension, and their approximate nearest-neighbour index.
//!
//! The index is `hnsw_rs`'s HNSW graph under cosine distance: vectors are
//! scaled to unit length when they are set, and the distance is `1 − dot`
//! over eight f32 lanes (`hnsw_rs`'s own `DistCosine` recomputes both norms
//! in f64 on every evaluation, three times slower here; its `DistDot`
//! asserts against the rounding of unit vectors). It takes
//! inserts and searches through `&self` (its layers are behind fine-grained
//! locks), so one `Arc<EmbeddingIndex>` is shared by the live model, which
//! inserts on every catalog event carrying an embedding, and the serving
//! view, whose readers search it concurrently.
//!
//! HNSW cannot delete a point. An item whose embedding changes is inserted
//! again under a new data id, `generation << 32 | item`, and the item's
//! current generation is kept beside its vector; a search drops every hit
//! whose generation is not its item's current one. A stale point thus costs
//! memory and a little search width until the next restore, which rebuilds
//! the index from the current vectors only (snapshots hold the vectors, never
//! the graph).
//!
//! Everything here is behind `Option`: with no `dimension` configured there is
//! no index, and neither the catalog path nor ranking does any work for it.

use std::sync::Arc;

use hnsw_rs::prelude::{Distance, Hnsw};

// Data ids pack (generation, item) into a `usize`.
const _: () = assert!(usize::BITS >= 64, "embedding data ids need a 64-bit usize");

/// Why an item's embedding was not taken (the item itself still is).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EmbeddingRejection {
    /// The value is not an array of numbers: fix the producer.
    #[error("embedding is not an array of numbers")]
    NotNumbers,
    /// The array's length is not the configured dimension: fix the producer
    /// or `[recommender.embedding] dimension`.
    #[error("embedding has dimension {actual}, expected {expected}")]
    Dimension {
        /// The configured dimension.
        expected: usize,
        /// The array's length.
        actual: usize,
    },
    /// A component is infinite or NaN (or overflows `f32`).
    #[error("embedding has a component that is not a finite number")]
    NotFinite,
    /// Every component is 0: the vector has no direction to compare.
    #[error("embedding is all zeros")]
    Zero,
    /// Embeddings are off (no dimension configured).
    #[error("embeddings are off (no [recommender.embedding] dimension)")]
    Disabled,
}

/// Checks `vector` against `dimension`.
pub fn check(vector: &[f32], dimension: usize) -> Result<(), EmbeddingRejection> {
    if vector.len() != dimension {
        return Err(EmbeddingRejection::Dimension { expected: dimension, actual: vector.len() });
    }
    if !vector.iter().all(|x| x.is_finite()) {
        return Err(EmbeddingRejection::NotFinite);
    }
    if vector.iter().all(|&x| x == 0.0) {
        return Err(EmbeddingRejection::Zero);
    }
    Ok(())
}

/// Parses the JSON text of an array of numbers (already validated JSON) into
/// `out` (cleared first) and checks it against `dimension`.
pub fn parse_json(raw: &[u8], dimension: usize, out: &mut Vec<f32>) -> Result<(), EmbeddingRejection> {
    out.clear();
    let body = match raw {
        [b'[', body @ .., b']'] => body,
        _ => return Err(EmbeddingRejection::NotNumbers),
    };
    if !body.iter().all(u8::is_ascii_whitespace) {
        for part in body.split(|&b| b == b',') {
            // JSON numbers are ASCII; strings, literals and nested values fail to parse.
            let text = std::str::from_utf8(part).map_err(|_| EmbeddingRejection::NotNumbers)?.trim();
            if !text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
                return Err(EmbeddingRejection::NotNumbers);
            }
            out.push(text.parse::<f32>().map_err(|_| EmbeddingRejection::NotNumbers)?);
        }
    }
    check(out, dimension)
}

/// Cosine distance of unit vectors, `1 − a·b`, clamped at 0 against rounding.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnitCosine;

impl Distance<f32> for UnitCosine {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        let (xs, ys) = (a.chunks_exact(8), b.chunks_exact(8));
        let mut dot: f32 = xs.remainder().iter().zip(ys.remainder()).map(|(x, y)| x * y).sum();
        // Eight independent sums: the compiler keeps them in one SIMD register.
        let mut lanes = [0f32; 8];
        for (x, y) in xs.zip(ys) {
            for i in 0..8 {
                lanes[i] += x[i] * y[i];
            }
        }
        dot += lanes.iter().sum::<f32>();
        (1.0 - dot).max(0.0)
    }
}

/// `vector` scaled to unit length (checked: finite and not all zeros).
fn unit(vector: &[f32]) -> Arc<[f32]> {
    let norm = vector.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt();
    vector.iter().map(|&x| (f64::from(x) / norm) as f32).collect()
}

/// An item's current embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedded {
    /// How many times the item's embedding was replaced (its index data ids carry it).
    pub generation: u32,
    /// The vector, scaled to unit length.
    pub vector: Arc<[f32]>,
}

/// The shared ANN index over every item's embeddings.
pub struct EmbeddingIndex {
    hnsw: Hnsw<'static, f32, UnitCosine>,
    dimension: usize,
}

impl std::fmt::Debug for EmbeddingIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingIndex")
            .field("dimension", &self.dimension)
            .field("points", &self.hnsw.get_nb_point())
            .finish()
    }
}

/// Links per node and layer, and the search width while inserting: the
/// usual HNSW settings for recall well above 0.9 at these sizes.
const MAX_CONNECTIONS: usize = 16;
const EF_CONSTRUCTION: usize = 100;
const MAX_LAYERS: usize = 16;
/// Search width at query time, at least: 32 finds 99.9% of the true 20
/// nearest in `recall_against_brute_force` (64: 100%, at twice the cost).
const EF_SEARCH: usize = 32;

impl EmbeddingIndex {
    /// An empty index of `dimension`-long vectors.
    pub fn new(dimension: usize) -> Self {
        Self { hnsw: Hnsw::new(MAX_CONNECTIONS, 10_000, MAX_LAYERS, EF_CONSTRUCTION, UnitCosine), dimension }
    }

    /// The vectors' dimension.
    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// Points in the graph, stale ones included.
    pub fn points(&self) -> usize {
        self.hnsw.get_nb_point()
    }

    /// Inserts `item`'s vector of `generation` (checked by the caller).
    pub(crate) fn insert(&self, item: u32, e: &Embedded) {
        debug_assert_eq!(e.vector.len(), self.dimension);
        self.hnsw.insert_slice((&e.vector, (e.generation as usize) << 32 | item as usize));
    }

    /// Calls `f` with up to `k` items nearest to `seed`'s vector, as (item,
    /// cosine similarity), nearest first: never `seed` itself, never a hit
    /// whose generation is not `current(item)`, never a similarity ≤ 0.
    pub(crate) fn nearest(
        &self,
        seed: u32,
        vector: &[f32],
        k: usize,
        current: impl Fn(u32) -> Option<u32>,
        f: &mut dyn FnMut(u32, f32),
    ) {
        if k == 0 {
            return;
        }
        // One more than asked: the seed finds itself.
        let ask = k + 1;
        let mut given = 0;
        for hit in self.hnsw.search(vector, ask, ask.max(EF_SEARCH)) {
            let item = hit.d_id as u32;
            let generation = (hit.d_id >> 32) as u32;
            let similarity = 1.0 - hit.distance;
            if item == seed || current(item) != Some(generation) || similarity <= 0.0 {
                continue;
            }
            f(item, similarity);
            given += 1;
            if given == k {
                break;
            }
        }
    }
}

/// The live model's embeddings: the shared index (none when off) and every
/// item's current vector.
#[derive(Default)]
pub(crate) struct Embeddings {
    pub(crate) index: Option<Arc<EmbeddingIndex>>,
    /// By item index; shorter than the catalog when the last items have none.
    pub(crate) items: Vec<Option<Embedded>>,
}

impl std::fmt::Debug for Embeddings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embeddings").field("index", &self.index).finish()
    }
}

impl Clone for Embeddings {
    /// A clone gets its own index (the model and its clone must not share inserts).
    fn clone(&self) -> Self {
        Self::rebuilt(self.index.as_ref().map(|i| i.dimension()), self.items.clone())
    }
}

impl Embeddings {
    /// Embeddings of `dimension`, none yet (`None`: off).
    pub(crate) fn new(dimension: Option<usize>) -> Self {
        Self { index: dimension.map(|d| Arc::new(EmbeddingIndex::new(d))), items: Vec::new() }
    }

    /// A fresh index of `dimension` holding `items`' vectors of that dimension (others are dropped).
    pub(crate) fn rebuilt(dimension: Option<usize>, mut items: Vec<Option<Embedded>>) -> Self {
        let mut e = Self::new(dimension);
        match &e.index {
            Some(index) => {
                for (item, slot) in items.iter_mut().enumerate() {
                    if let Some(embedded) = slot {
                        if embedded.vector.len() == index.dimension() {
                            index.insert(item as u32, embedded);
                        } else {
                            *slot = None;
                        }
                    }
                }
                e.items = items;
            }
            None => e.items = Vec::new(),
        }
        e
    }

    /// `item`'s current embedding.
    pub(crate) fn get(&self, item: u32) -> Option<&Embedded> {
        self.items.get(item as usize).and_then(Option::as_ref).filter(|e| !e.vector.is_empty())
    }

    /// Drops `item`'s embedding. Its slot keeps a next generation with no
    /// vector, so its points in the index stay stale when it gets a vector
    /// again (their generations never come back).
    pub(crate) fn forget(&mut self, item: u32) {
        if let Some(slot) = self.items.get_mut(item as usize)
            && let Some(e) = slot
        {
            *slot = Some(Embedded { generation: e.generation.wrapping_add(1), vector: Arc::from(Vec::new()) });
        }
    }

    /// Sets `item`'s embedding and inserts it into the index.
    pub(crate) fn set(&mut self, item: u32, vector: &[f32]) -> Result<(), EmbeddingRejection> {
        let Some(index) = &self.index else { return Err(EmbeddingRejection::Disabled) };
        check(vector, index.dimension())?;
        let i = item as usize;
        if self.items.len() <= i {
            self.items.resize(i + 1, None);
        }
        let vector = unit(vector);
        let slot = &mut self.items[i];
        if slot.as_ref().is_some_and(|e| e.vector == vector) {
            return Ok(());
        }
        let generation = slot.as_ref().map_or(0, |e| e.generation.wrapping_add(1));
        let embedded = Embedded { generation, vector };
        index.insert(item, &embedded);
        *slot = Some(embedded);
        Ok(())
    }

    /// What a snapshot holds: (item, generation, vector) of every item with one.
    pub(crate) fn stored(&self) -> Vec<(u32, u32, &[f32])> {
        (0..self.items.len() as u32).filter_map(|i| self.get(i).map(|e| (i, e.generation, &*e.vector))).collect()
    }

    /// The inverse of [`Embeddings::stored`], with an index of `dimension`
    /// (stored vectors are unit vectors already).
    #[cfg(test)]
    pub(crate) fn from_stored(dimension: Option<usize>, stored: Vec<(u32, u32, Vec<f32>)>) -> Self {
        Self::rebuilt(dimension, Self::items_from_stored(stored))
    }

    /// The per-item vectors of [`Embeddings::stored`], not indexed yet.
    pub(crate) fn items_from_stored(stored: Vec<(u32, u32, Vec<f32>)>) -> Vec<Option<Embedded>> {
        let mut items: Vec<Option<Embedded>> = Vec::new();
        for (item, generation, vector) in stored {
            let i = item as usize;
            if items.len() <= i {
                items.resize(i + 1, None);
            }
            items[i] = Some(Embedded { generation, vector: vector.into() });
        }
        items
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_arrays_of_numbers_only() {
        let mut v = Vec::new();
        assert_eq!(parse_json(b"[1, -0.5,2e-1 ]", 3, &mut v), Ok(()));
        assert_eq!(v, vec![1.0, -0.5, 0.2]);
        assert_eq!(parse_json(b"[1,2]", 3, &mut v), Err(EmbeddingRejection::Dimension { expected: 3, actual: 2 }));
        assert_eq!(parse_json(b"[]", 3, &mut v), Err(EmbeddingRejection::Dimension { expected: 3, actual: 0 }));
        assert_eq!(parse_json(b"[1,\"2\",3]", 3, &mut v), Err(EmbeddingRejection::NotNumbers));
        assert_eq!(parse_json(b"[1,[2],3]", 3, &mut v), Err(EmbeddingRejection::NotNumbers));
        assert_eq!(parse_json(b"[1,null,3]", 3, &mut v), Err(EmbeddingRejection::NotNumbers));
        assert_eq!(parse_json(b"\"abc\"", 3, &mut v), Err(EmbeddingRejection::NotNumbers));
        assert_eq!(parse_json(b"[1,1e40,3]", 3, &mut v), Err(EmbeddingRejection::NotFinite));
        assert_eq!(parse_json(b"[0,0,0]", 3, &mut v), Err(EmbeddingRejection::Zero));
    }

    /// The index finds most of the true nearest items (brute force) at the
    /// search width ranking uses, on clustered vectors with noise.
    #[test]
    fn recall_against_brute_force() {
        use rand::{Rng, SeedableRng};
        const ITEMS: u32 = 3000;
        const DIM: usize = 32;
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(7);
        let mut e = Embeddings::new(Some(DIM));
        for item in 0..ITEMS {
            let hot = item as usize % DIM;
            let v: Vec<f32> =
                (0..DIM).map(|d| f32::from(u8::from(d == hot)) + (rng.random::<f32>() - 0.5) * 3.0).collect();
            e.set(item, &v).unwrap();
        }
        let index = e.index.clone().unwrap();
        let (k, mut found, mut total) = (20, 0, 0);
        for seed in (0..ITEMS).step_by(40) {
            let v = &e.get(seed).unwrap().vector;
            let mut exact: Vec<(f32, u32)> =
                (0..ITEMS).filter(|&i| i != seed).map(|i| (UnitCosine.eval(v, &e.get(i).unwrap().vector), i)).collect();
            exact.sort_by(|a, b| a.0.total_cmp(&b.0));
            let truth: Vec<u32> = exact[..k].iter().map(|x| x.1).collect();
            let mut got = Vec::new();
            index.nearest(seed, v, k, |i| e.get(i).map(|x| x.generation), &mut |i, _| got.push(i));
            found += got.iter().filter(|i| truth.contains(i)).count();
            total += k;
        }
        let recall = found as f64 / total as f64;
        println!("recall@{k} {recall}");
        assert!(recall >= 0.9, "recall@{k} {recall}");
    }

    #[test]
    fn a_replaced_embedding_leaves_only_its_stale_point() {
        let mut e = Embeddings::new(Some(2));
        e.set(0, &[1.0, 0.0]).unwrap();
        e.set(1, &[0.9, 0.1]).unwrap();
        e.set(2, &[0.0, 1.0]).unwrap();
        let nearest = |e: &Embeddings, seed: u32| {
            let mut out = Vec::new();
            let vector = e.get(seed).unwrap().vector.clone();
            e.index
                .as_ref()
                .unwrap()
                .nearest(seed, &vector, 5, |i| e.get(i).map(|x| x.generation), &mut |i, s| out.push((i, s)));
            out
        };
        assert_eq!(nearest(&e, 0).first().map(|h| h.0), Some(1));
        // Item 1 turns towards item 2: its old point is stale, not a neighbour of 0 any more.
        e.set(1, &[0.1, 0.9]).unwrap();
        assert_eq!(e.index.as_ref().unwrap().points(), 4);
        let hits = nearest(&e, 0);
        assert!(hits.iter().all(|&(_, s)| s < 0.2), "{hits:?}");
        assert_eq!(nearest(&e, 2).first().map(|h| h.0), Some(1));
        // A restore keeps only current points.
        let restored =
            Embeddings::from_stored(Some(2), e.stored().into_iter().map(|(i, g, v)| (i, g, v.to_vec())).collect());
        assert_eq!(restored.index.as_ref().unwrap().points(), 3);
        assert_eq!(nearest(&restored, 2).first().map(|h| h.0), Some(1));
    }
}
