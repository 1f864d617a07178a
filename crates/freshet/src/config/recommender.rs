//! `[recommender]`: the file model of the recommender section and its
//! planning into the engine's [`RecommenderPlan`]. Every knob is optional;
//! the defaults are the engine's `RecommenderSpec::default()`, the one
//! configuration `freshet eval` is measured with.

use std::collections::BTreeMap;

use freshet_engine::flow::Flow;
use freshet_engine::pipeline::RecommenderPlan;
use freshet_engine::recommend::{Normalisation, Placement, PlacementRule, RecommenderSpec};
use serde::Deserialize;

use super::plan::Planner;

/// `[recommender]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RecommenderConfig {
    /// Flows whose events are interactions. Default: `["interactions"]`.
    pub interactions: Option<Vec<String>>,
    /// The catalog flow (item upserts). Default: "catalog" if such a flow exists, else none.
    pub catalog: Option<String>,
    /// User id field of interactions. Default: "user_id".
    pub user_field: Option<String>,
    /// Item id field. Default: "item_id".
    pub item_field: Option<String>,
    /// Event type field of interactions. Default: "type".
    pub type_field: Option<String>,
    /// Recommendation id field of interactions: an interaction that carries
    /// the id of a served list is attributed to it (metrics). Default: "recommendation_id".
    pub attribution_field: Option<String>,
    /// Served lists kept for attribution (the last ones; 0: none). Default: 65536.
    pub attributed_answers: Option<usize>,
    /// Category field of catalog events. Default: "category".
    pub category_field: Option<String>,
    /// Tags field of catalog events (array of strings). Default: "tags".
    pub tags_field: Option<String>,
    /// Availability field of catalog events: `false` keeps the item out of
    /// every list until an upsert says `true` or leaves it out. Default: "available".
    pub availability_field: Option<String>,
    /// Embedding field of catalog events (array of numbers), read only when
    /// `[recommender.embedding] dimension` is set. Default: "embedding".
    pub embedding_field: Option<String>,
    /// Recent distinct items of a user that seed co-occurrence. Default: 10.
    pub recent_items: Option<usize>,
    /// Weight of the k-th newest recent item: decay^k. Default: 0.6.
    pub recency_decay: Option<f64>,
    /// Weight per event type; a weight of 0 ignores the type. Default: every type 1.
    pub event_weights: Option<BTreeMap<String, f64>>,
    /// At most this many items of one category per list; 0 = no cap. Default: 0.
    pub max_per_category: Option<usize>,
    /// How often item neighbour lists reach the serving view. Default: "500ms" (a new item is recommendable within 1 s).
    pub item_publish_interval: Option<String>,
    /// Item–item co-occurrence.
    #[serde(default)]
    pub cooccurrence: CooccurrenceConfig,
    /// Transitions (what follows what).
    #[serde(default)]
    pub sequence: SequenceConfig,
    /// Decayed popularity.
    #[serde(default)]
    pub trending: TrendingConfig,
    /// Category and tag affinity.
    #[serde(default)]
    pub content: ContentConfig,
    /// Nearest items by catalog embedding.
    #[serde(default)]
    pub embedding: EmbeddingConfig,
    /// Named placements (`"placement"` in a recommend request).
    #[serde(default)]
    pub placements: BTreeMap<String, PlacementConfig>,
}

/// `[recommender.cooccurrence]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CooccurrenceConfig {
    /// Default: true.
    pub enabled: Option<bool>,
    /// Blend weight. Default: 1.0.
    pub weight: Option<f64>,
    /// Previous distinct items a new item pairs with. Default: 50.
    pub pair_window: Option<usize>,
    /// A pair counts 1/distance^this. Default: 0.5.
    pub distance_exponent: Option<f64>,
    /// Normalisation exponent of the source item's users. Default: 0.5.
    pub source_damping: Option<f64>,
    /// Normalisation exponent of the candidate's users. Default: 0.2.
    pub candidate_damping: Option<f64>,
    /// Neighbours kept per item. Default: 400.
    pub max_neighbours: Option<usize>,
    /// How a pair's count becomes its score: "cosine" (with the two
    /// dampings) or "llr" (log-likelihood ratio; the dampings unused). Default: "cosine".
    pub normalisation: Option<String>,
}

/// `[recommender.sequence]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SequenceConfig {
    /// Default: true.
    pub enabled: Option<bool>,
    /// Blend weight. Default: 0.5.
    pub weight: Option<f64>,
    /// The user's latest items that propose their successors. Default: 1.
    pub sources: Option<usize>,
    /// Weight of the k-th newest source: decay^k. Default: 0.5.
    pub recency_decay: Option<f64>,
    /// Successors kept per item. Default: 200.
    pub max_successors: Option<usize>,
    /// Events of a user further apart are not a transition. Default: "30m".
    pub session_gap: Option<String>,
    /// The transition probability that earns the full weight: a request's
    /// sequence scores are divided by their maximum or by this, whichever
    /// is larger (0..=1). Default: 0.2.
    pub full_weight_at: Option<f64>,
}

/// `[recommender.trending]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TrendingConfig {
    /// Default: true.
    pub enabled: Option<bool>,
    /// Blend weight. Default: 0.1.
    pub weight: Option<f64>,
    /// Half-life in event time. Default: "6h".
    pub half_life: Option<String>,
    /// Items per trending list. Default: 200.
    pub list_len: Option<usize>,
}

/// `[recommender.content]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ContentConfig {
    /// Default: true.
    pub enabled: Option<bool>,
    /// Blend weight. Default: 0.3.
    pub weight: Option<f64>,
    /// Attributes of the user's affinity that propose items. Default: 3.
    pub top_attributes: Option<usize>,
    /// Items proposed per attribute. Default: 50.
    pub per_attribute: Option<usize>,
}

/// `[recommender.embedding]`: off unless `dimension` is set.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingConfig {
    /// Length of every catalog embedding; an embedding of another length (or
    /// not an array of finite numbers, or all zeros) goes to the dead-letter
    /// sink and its item is catalogued without it. Default: none (embeddings
    /// are not read at all).
    pub dimension: Option<usize>,
    /// Default: true (when `dimension` is set).
    pub enabled: Option<bool>,
    /// Blend weight. Default: 0.5.
    pub weight: Option<f64>,
    /// Nearest items proposed per seed item. Default: 20.
    pub neighbours: Option<usize>,
    /// Seed items (context, then the user's newest) whose nearest items are searched. Default: 5.
    pub sources: Option<usize>,
}

/// `[recommender.placements.NAME]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PlacementConfig {
    /// Multiply the scores of a category's items.
    #[serde(default)]
    pub boost: Vec<BoostConfig>,
    /// Categories never shown here.
    #[serde(default)]
    pub exclude_categories: Vec<String>,
    /// Items put at fixed positions (1-based) when the user has not seen them.
    #[serde(default)]
    pub pin: Vec<PinConfig>,
    /// At most this many items of one category. Default: the recommender's.
    pub max_per_category: Option<usize>,
}

/// A boost rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoostConfig {
    /// Category name.
    pub category: String,
    /// Score factor (> 0).
    pub factor: f64,
}

/// A pin rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinConfig {
    /// Item id.
    pub item: String,
    /// 1-based position.
    pub position: usize,
}

/// The spec alone (no flows): what `freshet eval --config` replays.
pub fn spec(config: &RecommenderConfig, p: &mut Planner) -> RecommenderSpec {
    let mut s = RecommenderSpec::default();
    let weight = |p: &mut Planner, path: &str, v: Option<f64>, into: &mut f64| {
        if let Some(v) = v {
            if !(v.is_finite() && v >= 0.0) {
                p.err(path, format!("must be a finite number >= 0, got {v}"));
            }
            *into = v;
        }
    };
    let fraction = |p: &mut Planner, path: &str, v: Option<f64>, into: &mut f64| {
        if let Some(v) = v {
            if !(0.0..=1.0).contains(&v) {
                p.err(path, format!("must be within 0..=1, got {v}"));
            }
            *into = v;
        }
    };
    if let Some(n) = config.recent_items {
        if n == 0 {
            p.err("recommender.recent_items", "must be >= 1");
        }
        s.recent_items = n.max(1);
    }
    fraction(p, "recommender.recency_decay", config.recency_decay, &mut s.recency_decay);
    for (name, &w) in config.event_weights.iter().flatten() {
        let mut into = 0.0;
        weight(p, &format!("recommender.event_weights.{name}"), Some(w), &mut into);
        s.event_weights.push((name.clone(), into));
    }
    s.max_per_category = config.max_per_category.unwrap_or(s.max_per_category);
    if let Some(n) = config.attributed_answers {
        const MOST: usize = 1 << 24;
        if n > MOST {
            p.err("recommender.attributed_answers", format!("must be at most {MOST}, got {n}"));
        }
        s.attributed_answers = n.min(MOST);
    }

    let c = &config.cooccurrence;
    s.cooccurrence.enabled = c.enabled.unwrap_or(true);
    weight(p, "recommender.cooccurrence.weight", c.weight, &mut s.cooccurrence.weight);
    s.cooccurrence.pair_window = c.pair_window.unwrap_or(s.cooccurrence.pair_window);
    weight(p, "recommender.cooccurrence.distance_exponent", c.distance_exponent, &mut s.cooccurrence.distance_exponent);
    weight(p, "recommender.cooccurrence.source_damping", c.source_damping, &mut s.cooccurrence.source_damping);
    weight(p, "recommender.cooccurrence.candidate_damping", c.candidate_damping, &mut s.cooccurrence.candidate_damping);
    if let Some(n) = c.max_neighbours {
        if n == 0 {
            p.err("recommender.cooccurrence.max_neighbours", "must be >= 1");
        }
        s.cooccurrence.max_neighbours = n.max(1);
    }
    if let Some(name) = &c.normalisation {
        match [Normalisation::Cosine, Normalisation::Llr].into_iter().find(|n| n.name() == name) {
            Some(n) => s.cooccurrence.normalisation = n,
            None => {
                p.err("recommender.cooccurrence.normalisation", format!("expected \"cosine\" or \"llr\", got {name:?}"))
            }
        }
    }

    let q = &config.sequence;
    s.sequence.enabled = q.enabled.unwrap_or(true);
    weight(p, "recommender.sequence.weight", q.weight, &mut s.sequence.weight);
    s.sequence.sources = q.sources.unwrap_or(s.sequence.sources);
    fraction(p, "recommender.sequence.recency_decay", q.recency_decay, &mut s.sequence.recency_decay);
    if let Some(n) = q.max_successors {
        if n == 0 {
            p.err("recommender.sequence.max_successors", "must be >= 1");
        }
        s.sequence.max_successors = n.max(1);
    }
    s.sequence.session_gap_ms =
        p.duration_ms("recommender.sequence.session_gap", q.session_gap.as_deref(), s.sequence.session_gap_ms);
    fraction(p, "recommender.sequence.full_weight_at", q.full_weight_at, &mut s.sequence.full_weight_at);

    let t = &config.trending;
    s.trending.enabled = t.enabled.unwrap_or(true);
    weight(p, "recommender.trending.weight", t.weight, &mut s.trending.weight);
    if let Some(ms) = p.positive_ms("recommender.trending.half_life", t.half_life.as_deref()) {
        s.trending.half_life_ms = ms;
    }
    s.trending.list_len = t.list_len.unwrap_or(s.trending.list_len).max(1);

    let n = &config.content;
    s.content.enabled = n.enabled.unwrap_or(true);
    weight(p, "recommender.content.weight", n.weight, &mut s.content.weight);
    s.content.top_attributes = n.top_attributes.unwrap_or(s.content.top_attributes);
    s.content.per_attribute = n.per_attribute.unwrap_or(s.content.per_attribute);

    let e = &config.embedding;
    if let Some(d) = e.dimension {
        if d == 0 {
            p.err("recommender.embedding.dimension", "must be >= 1");
        }
        s.embedding.dimension = Some(d.max(1));
    }
    s.embedding.enabled = e.enabled.unwrap_or(true);
    weight(p, "recommender.embedding.weight", e.weight, &mut s.embedding.weight);
    s.embedding.neighbours = e.neighbours.unwrap_or(s.embedding.neighbours);
    s.embedding.sources = e.sources.unwrap_or(s.embedding.sources);
    s
}

/// Plans the recommender against the job's flows.
pub fn plan(config: &RecommenderConfig, flows: &[Flow], shards: usize, p: &mut Planner) -> RecommenderPlan {
    let spec = spec(config, p);
    let flow_index = |p: &mut Planner, path: &str, name: &str| {
        let i = flows.iter().position(|f| f.name == name);
        if i.is_none() {
            p.err(path, format!("no flow named {name:?}"));
        }
        i
    };
    let interactions = match &config.interactions {
        Some(names) => names
            .iter()
            .enumerate()
            .filter_map(|(i, n)| flow_index(p, &format!("recommender.interactions[{i}]"), n))
            .collect(),
        None => flow_index(p, "recommender.interactions", "interactions").into_iter().collect(),
    };
    let catalog = match &config.catalog {
        Some(name) => flow_index(p, "recommender.catalog", name),
        None => flows.iter().position(|f| f.name == "catalog"),
    };
    let field = |p: &mut Planner, key: &str, v: &Option<String>, default: &str| {
        p.field(&format!("recommender.{key}"), v.as_deref().unwrap_or(default))
    };
    let mut placements = Vec::new();
    for (name, pc) in &config.placements {
        let path = format!("recommender.placements.{name}");
        let mut rules = Vec::new();
        for (i, b) in pc.boost.iter().enumerate() {
            if !(b.factor.is_finite() && b.factor > 0.0) {
                p.err(format!("{path}.boost[{i}].factor"), format!("must be a finite number > 0, got {}", b.factor));
            }
            rules.push(PlacementRule::Boost { category: b.category.clone(), factor: b.factor });
        }
        for c in &pc.exclude_categories {
            rules.push(PlacementRule::Exclude { category: c.clone() });
        }
        for (i, pin) in pc.pin.iter().enumerate() {
            if pin.position == 0 {
                p.err(format!("{path}.pin[{i}].position"), "positions start at 1");
            }
            rules.push(PlacementRule::Pin { item: pin.item.clone(), position: pin.position.max(1) });
        }
        placements.push(Placement { name: name.clone(), rules, max_per_category: pc.max_per_category.unwrap_or(0) });
    }
    let item_publish_ms =
        p.duration_ms("recommender.item_publish_interval", config.item_publish_interval.as_deref(), 500);
    // Read only when a dimension is set: no embedding work at all otherwise.
    let embedding = spec.embedding.dimension.map(|_| field(p, "embedding_field", &config.embedding_field, "embedding"));
    RecommenderPlan {
        spec,
        interactions,
        user: field(p, "user_field", &config.user_field, "user_id"),
        item: field(p, "item_field", &config.item_field, "item_id"),
        event_type: Some(field(p, "type_field", &config.type_field, "type")),
        attribution: Some(field(p, "attribution_field", &config.attribution_field, "recommendation_id")),
        catalog,
        category: Some(field(p, "category_field", &config.category_field, "category")),
        tags: Some(field(p, "tags_field", &config.tags_field, "tags")),
        availability: Some(field(p, "availability_field", &config.availability_field, "available")),
        embedding,
        // The last shard: shard 0 carries the decoders' forwarded output.
        shard: shards.saturating_sub(1),
        item_publish_ms: item_publish_ms.max(1),
        placements,
    }
}
