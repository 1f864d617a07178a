//! The recommender as planned from config: which generators run, their
//! weights and bounds, and the rules applied after blending.
//!
//! The defaults are the one configuration `freshet eval` is measured with on
//! every dataset (BENCHMARKS.md); nothing in them is tuned per dataset.

/// Which candidate generator a score or an explanation comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Generator {
    /// Item–item co-occurrence over the user's recent items.
    Cooccurrence,
    /// What followed the user's latest items (transitions).
    Sequence,
    /// Decayed popularity, overall and per category.
    Trending,
    /// The user's category and tag affinity.
    Content,
    /// Items whose embeddings are nearest to the seeds' (catalog vectors).
    Embedding,
}

impl Generator {
    /// Every generator, in explanation order.
    pub const ALL: [Generator; 5] =
        [Generator::Cooccurrence, Generator::Sequence, Generator::Trending, Generator::Content, Generator::Embedding];

    /// The name used in config, explanations and ablation reports.
    pub fn name(self) -> &'static str {
        match self {
            Generator::Cooccurrence => "cooccurrence",
            Generator::Sequence => "sequence",
            Generator::Trending => "trending",
            Generator::Content => "content",
            Generator::Embedding => "embedding",
        }
    }

    /// Index into per-generator arrays.
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// Item–item co-occurrence: a pair of one user's distinct items counts
/// `event_weight / distance^distance_exponent`, where the distance is how many
/// distinct items apart they are in that user's history, in both directions.
/// A candidate's score sums, over the user's recent items `j` (newest first,
/// the k-th weighted `recency_decay^k`), the pair's normalised count:
/// `count(j, c) / (users(j)^source_damping · users(c)^candidate_damping)`
/// ([`Normalisation::Cosine`]), or its log-likelihood ratio ([`Normalisation::Llr`]).
#[derive(Debug, Clone, PartialEq)]
pub struct CooccurrenceSpec {
    /// Whether it runs.
    pub enabled: bool,
    /// Blend weight.
    pub weight: f64,
    /// How many of the user's previous distinct items a new item pairs with.
    pub pair_window: usize,
    /// Exponent of the distance in a pair's weight (0 counts every pair alike).
    pub distance_exponent: f64,
    /// Exponent of the source item's distinct users in the normalisation.
    pub source_damping: f64,
    /// Exponent of the candidate's distinct users in the normalisation.
    pub candidate_damping: f64,
    /// Neighbours kept per item; an item's list is pruned back to this many
    /// (the heaviest) when it reaches twice as many.
    pub max_neighbours: usize,
    /// How a pair's count becomes its score.
    pub normalisation: Normalisation,
}

/// How co-occurrence turns a pair's count into a score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Normalisation {
    /// `count / (users(source)^source_damping · users(candidate)^candidate_damping)`:
    /// the cosine of the two items' user sets with both exponents 0.5 (the
    /// default damps the candidate's popularity less, 0.2).
    #[default]
    Cosine,
    /// Dunning's log-likelihood ratio of the pair's 2×2 table of
    /// co-occurrence weight (as Mahout's item similarity): the pair's count,
    /// the rest of each item's total, the rest of all pairs. As a signed
    /// square root: how surely the pair occurs more often than the two
    /// items' shares of all pairs explain; pairs that occur no more often
    /// score 0. The dampings are not used.
    Llr,
}

impl Normalisation {
    /// The name used in config.
    pub fn name(self) -> &'static str {
        match self {
            Normalisation::Cosine => "cosine",
            Normalisation::Llr => "llr",
        }
    }
}

/// `x · ln x`, 0 at 0.
fn x_log_x(x: f64) -> f64 {
    if x > 0.0 { x * x.ln() } else { 0.0 }
}

/// The signed square root of Dunning's log-likelihood ratio for a pair of
/// weight `both`, of items whose totals are `source` and `candidate`, among
/// pairs of weight `total` (the 2×2 table's margins; `both` is clamped to
/// the smaller total): positive when the pair is more frequent than
/// independence predicts, else 0.
pub fn root_llr(both: f64, source: f64, candidate: f64, total: f64) -> f64 {
    let k11 = both.min(source).min(candidate).max(0.0);
    let (k12, k21) = (source - k11, candidate - k11);
    let k22 = (total - source - candidate + k11).max(0.0);
    // More often together than apart: k11 / (k11 + k12) > k21 / (k21 + k22).
    if k11 * (k21 + k22) <= k21 * (k11 + k12) {
        return 0.0;
    }
    let n = k11 + k12 + k21 + k22;
    let matrix = x_log_x(n) - x_log_x(k11) - x_log_x(k12) - x_log_x(k21) - x_log_x(k22);
    let rows = x_log_x(n) - x_log_x(k11 + k12) - x_log_x(k21 + k22);
    let columns = x_log_x(n) - x_log_x(k11 + k21) - x_log_x(k12 + k22);
    (2.0 * (rows + columns - matrix)).max(0.0).sqrt()
}

impl Default for CooccurrenceSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            weight: 1.0,
            pair_window: 25,
            distance_exponent: 0.5,
            source_damping: 0.5,
            candidate_damping: 0.2,
            max_neighbours: 400,
            normalisation: Normalisation::Cosine,
        }
    }
}

/// Transitions: how often item `b` directly followed item `a` in one user's
/// events (within `session_gap` of event time). A candidate's score sums the
/// transition counts from the user's latest items, the k-th newest weighted
/// `recency_decay^k`, normalised by the source's outgoing total: a
/// transition probability. The blend divides a request's sequence scores by
/// their maximum, but by no less than `full_weight_at`: where what follows
/// an item is spread thin (ratings entered in no particular order, say),
/// its best successor, followed one time in twenty, gets a quarter of the
/// generator's weight instead of all of it.
#[derive(Debug, Clone, PartialEq)]
pub struct SequenceSpec {
    /// Whether it runs.
    pub enabled: bool,
    /// Blend weight.
    pub weight: f64,
    /// How many of the user's latest items are sources.
    pub sources: usize,
    /// Weight of the k-th newest source: `recency_decay^k`.
    pub recency_decay: f64,
    /// Successors kept per item (pruned like co-occurrence neighbours).
    pub max_successors: usize,
    /// Two events of a user further apart than this (ms) are not a transition.
    pub session_gap_ms: i64,
    /// The transition probability that earns the generator its full weight
    /// (0: the best successor always does).
    pub full_weight_at: f64,
}

impl Default for SequenceSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            weight: 0.5,
            sources: 1,
            recency_decay: 0.5,
            max_successors: 200,
            session_gap_ms: 30 * 60 * 1000,
            full_weight_at: 0.2,
        }
    }
}

/// Trending: popularity with exponential decay in event time, overall and per category.
#[derive(Debug, Clone, PartialEq)]
pub struct TrendingSpec {
    /// Whether it runs.
    pub enabled: bool,
    /// Blend weight.
    pub weight: f64,
    /// Half-life of an event's contribution (ms of event time).
    pub half_life_ms: i64,
    /// Items kept in each trending list.
    pub list_len: usize,
}

impl Default for TrendingSpec {
    fn default() -> Self {
        Self { enabled: true, weight: 0.1, half_life_ms: 6 * 3600 * 1000, list_len: 200 }
    }
}

/// Content: the user's decayed affinity to categories and tags, proposing the
/// trending items of the categories and tags the user likes most.
#[derive(Debug, Clone, PartialEq)]
pub struct ContentSpec {
    /// Whether it runs.
    pub enabled: bool,
    /// Blend weight.
    pub weight: f64,
    /// Categories (and tags) of the user's affinity that propose candidates.
    pub top_attributes: usize,
    /// Candidates proposed per attribute.
    pub per_attribute: usize,
}

impl Default for ContentSpec {
    fn default() -> Self {
        Self { enabled: true, weight: 0.3, top_attributes: 3, per_attribute: 50 }
    }
}

/// Embedding similarity: the seeds' nearest items by the cosine of their
/// catalog embeddings, found in an HNSW index updated on every catalog event.
/// A candidate's score sums `recency_decay^k · similarity` over the first
/// `sources` seeds (the request's context items, then the user's recent
/// items, newest first). Off unless `dimension` is set.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingSpec {
    /// Whether it runs (when `dimension` is set).
    pub enabled: bool,
    /// Blend weight.
    pub weight: f64,
    /// The embeddings' dimension; `None`: catalog embeddings are ignored.
    pub dimension: Option<usize>,
    /// Nearest items proposed per seed.
    pub neighbours: usize,
    /// How many seeds propose their nearest items (each is one index search).
    pub sources: usize,
}

impl Default for EmbeddingSpec {
    fn default() -> Self {
        Self { enabled: true, weight: 0.5, dimension: None, neighbours: 20, sources: 5 }
    }
}

/// The whole recommender.
#[derive(Debug, Clone, PartialEq)]
pub struct RecommenderSpec {
    /// The user's recent distinct items that seed co-occurrence.
    pub recent_items: usize,
    /// Weight of the k-th newest recent item: `recency_decay^k`.
    pub recency_decay: f64,
    /// Interaction weight per event type (`view`, `purchase`, ...); types not
    /// listed weigh `default_event_weight`.
    pub event_weights: Vec<(String, f64)>,
    /// Weight of event types not in `event_weights`.
    pub default_event_weight: f64,
    /// At most this many items of one category in a list (0: no cap).
    pub max_per_category: usize,
    /// Served lists kept for attributing interactions to them (the last ones).
    pub attributed_answers: usize,
    /// Co-occurrence.
    pub cooccurrence: CooccurrenceSpec,
    /// Transitions.
    pub sequence: SequenceSpec,
    /// Trending.
    pub trending: TrendingSpec,
    /// Content.
    pub content: ContentSpec,
    /// Embedding similarity.
    pub embedding: EmbeddingSpec,
}

impl Default for RecommenderSpec {
    fn default() -> Self {
        Self {
            recent_items: 10,
            recency_decay: 0.6,
            event_weights: Vec::new(),
            default_event_weight: 1.0,
            max_per_category: 0,
            attributed_answers: 1 << 16,
            cooccurrence: CooccurrenceSpec::default(),
            sequence: SequenceSpec::default(),
            trending: TrendingSpec::default(),
            content: ContentSpec::default(),
            embedding: EmbeddingSpec::default(),
        }
    }
}

impl RecommenderSpec {
    /// The weight of an event type.
    pub fn event_weight(&self, event_type: Option<&str>) -> f64 {
        event_type
            .and_then(|t| self.event_weights.iter().find(|(name, _)| name == t))
            .map_or(self.default_event_weight, |(_, w)| *w)
    }

    /// Whether a generator runs.
    pub fn enabled(&self, generator: Generator) -> bool {
        match generator {
            Generator::Cooccurrence => self.cooccurrence.enabled,
            Generator::Sequence => self.sequence.enabled,
            Generator::Trending => self.trending.enabled,
            Generator::Content => self.content.enabled,
            Generator::Embedding => self.embedding.enabled && self.embedding.dimension.is_some(),
        }
    }

    /// A generator's blend weight (0 when it is off).
    pub fn weight(&self, generator: Generator) -> f64 {
        if !self.enabled(generator) {
            return 0.0;
        }
        match generator {
            Generator::Cooccurrence => self.cooccurrence.weight,
            Generator::Sequence => self.sequence.weight,
            Generator::Trending => self.trending.weight,
            Generator::Content => self.content.weight,
            Generator::Embedding => self.embedding.weight,
        }
    }

    /// This spec with only `generator` on (for ablation).
    pub fn only(&self, generator: Generator) -> Self {
        let mut spec = self.clone();
        spec.cooccurrence.enabled = generator == Generator::Cooccurrence;
        spec.sequence.enabled = generator == Generator::Sequence;
        spec.trending.enabled = generator == Generator::Trending;
        spec.content.enabled = generator == Generator::Content;
        spec.embedding.enabled = generator == Generator::Embedding;
        spec
    }
}
