//! `POST /v1/recommend` and `GET /v1/items/{id}/similar`: ranked items with
//! the generators behind each, read from the recommender's lock-free view.
//!
//! Ranking runs on the request's thread, against the view the owning shard
//! publishes (users and trending lists every publish tick, item neighbour
//! lists every `item_publish_interval`): it never waits for the write path.
//! Each thread keeps one `Ranking` scratch (a dense per-item array) across
//! requests.
//!
//! Requests are strict: an unknown field, a `k` out of range or an unknown
//! placement is a 400 naming it, so a typo is never silently a default.
//!
//! Each answer's recommendation id comes from the view's attribution ring,
//! which keeps the answer's items for the interactions that follow it.

use std::cell::RefCell;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use freshet_engine::recommend::{
    Asked, GENERATORS, ModelRead, Placement, Query as RankQuery, Ranking, RecommenderView,
};
use serde::{Deserialize, Serialize};
use serde_path_to_error::Segment;

use super::AppState;
use super::error::ApiError;
use crate::topology::Recommending;

/// Default number of items.
const DEFAULT_K: i64 = 10;
/// Largest `k` accepted.
const MAX_K: i64 = 1000;
/// Most context items a request may give (each seeds a neighbour scan).
const MAX_CONTEXT: usize = 100;
/// Most excluded items a request may give.
const MAX_EXCLUDE: usize = 1000;

/// The body of `POST /v1/recommend`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecommendRequest {
    /// The user; absent (or unknown to the model) is a cold start.
    user_id: Option<String>,
    /// How many items (1..=1000); signed so that a negative one gets the range message.
    k: Option<i64>,
    /// A configured placement's name.
    placement: Option<String>,
    /// Items never to return.
    #[serde(default)]
    exclude: Vec<String>,
    /// Restrictions on the items returned.
    #[serde(default)]
    filters: Filters,
    /// Items of the page or cart, newest first: seeds ahead of the user's own items.
    #[serde(default)]
    context: Vec<String>,
}

/// `filters` of a recommend request.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Filters {
    /// Only items of these categories.
    category: Option<Vec<String>>,
}

/// The query string of `GET /v1/items/{id}/similar`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SimilarParams {
    k: Option<i64>,
}

thread_local! {
    /// Ranking scratch, reused by every request on this thread.
    static RANKING: RefCell<Ranking> = RefCell::new(Ranking::default());
}

fn recommending(state: &AppState) -> Result<&Recommending, ApiError> {
    state.recommending.as_ref().ok_or_else(no_recommender)
}

/// The answer to a recommendation asked of a pipeline without a recommender.
pub(super) fn no_recommender() -> ApiError {
    ApiError::NotFound(
        "this pipeline has no recommender: add a [recommender] section to its config (docs/config.md)".into(),
    )
}

fn check_k(k: Option<i64>) -> Result<usize, ApiError> {
    let k = k.unwrap_or(DEFAULT_K);
    if !(1..=MAX_K).contains(&k) {
        return Err(ApiError::BadRequest(format!("k must be within 1..={MAX_K}, got {k}")));
    }
    Ok(k as usize)
}

fn parse_body(body: &[u8]) -> Result<RecommendRequest, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        // No body at all: every default (an anonymous request for 10 items).
        return Ok(RecommendRequest::default());
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let request: RecommendRequest = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let mut segments: Vec<&Segment> = e.path().iter().collect();
        let inner = e.inner().to_string();
        if inner.starts_with("unknown field") {
            // The path ends with the unknown field, which the message names already.
            segments.pop();
        }
        match path_text(&segments) {
            None => ApiError::BadRequest(format!("invalid request body: {inner}")),
            Some(path) => ApiError::BadRequest(format!("invalid request body: {path}: {inner}")),
        }
    })?;
    de.end().map_err(|e| ApiError::BadRequest(format!("invalid request body: {e}")))?;
    Ok(request)
}

/// A key path as `filters.category[2]`, or None for the document itself.
fn path_text(segments: &[&Segment]) -> Option<String> {
    let mut out = String::new();
    for segment in segments {
        if !out.is_empty() && !matches!(segment, Segment::Seq { .. }) {
            out.push('.');
        }
        out.push_str(&segment.to_string());
    }
    (!out.is_empty()).then_some(out)
}

/// The placement named `name`, and its index in the configured order.
fn find_placement<'a>(placements: &'a [Placement], name: &str) -> Result<(usize, &'a Placement), ApiError> {
    placements.iter().enumerate().find(|(_, p)| p.name == name).ok_or_else(|| {
        let known = if placements.is_empty() {
            "none are configured".to_owned()
        } else {
            let names: Vec<String> = placements.iter().map(|p| format!("{:?}", p.name)).collect();
            format!("configured placements: {}", names.join(", "))
        };
        ApiError::BadRequest(format!("unknown placement {name:?}; {known}"))
    })
}

/// Item indices of the ids the view knows, in order, without repeats (unknown ids are skipped:
/// an item the model has never seen cannot be recommended or seed anything).
fn item_indices(view: &RecommenderView, ids: &[String]) -> Vec<u32> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(i) = view.item_index(id)
            && !out.contains(&i)
        {
            out.push(i);
        }
    }
    out
}

/// One ranked item of an answer.
#[derive(Debug, Serialize)]
struct Item {
    item_id: Box<str>,
    /// The blended score.
    score: f64,
    /// Each generator that proposed it, with its weighted, normalised share of the score.
    reasons: Vec<Reason>,
}

/// One generator's part of an item's score.
#[derive(Debug, Serialize)]
struct Reason {
    generator: &'static str,
    score: f64,
}

/// The answer of `POST /v1/recommend` (fields in this order on the wire).
#[derive(Debug, Serialize)]
pub(super) struct Recommendations {
    recommendation_id: String,
    user_id: Option<String>,
    cold_start: bool,
    items: Vec<Item>,
}

/// The answer of `GET /v1/items/{id}/similar`.
#[derive(Debug, Serialize)]
pub(super) struct SimilarItems {
    recommendation_id: String,
    item_id: String,
    items: Vec<Item>,
}

/// The ranked items with their ids and reasons.
fn items(view: &RecommenderView, ranking: &Ranking) -> Vec<Item> {
    ranking
        .items
        .iter()
        .filter_map(|scored| {
            let item_id = view.item_name(scored.item)?;
            let reasons = scored.reasons().map(|(g, score)| Reason { generator: g.name(), score }).collect();
            Some(Item { item_id, score: scored.score, reasons })
        })
        .collect()
}

/// `POST /v1/recommend`.
pub(super) async fn recommend(State(state): State<AppState>, body: Bytes) -> Result<Json<Recommendations>, ApiError> {
    recommend_from(recommending(&state)?, &body)
}

/// The answer to a `POST /v1/recommend` with `body`, from `rec`.
pub(super) fn recommend_from(rec: &Recommending, body: &[u8]) -> Result<Json<Recommendations>, ApiError> {
    let request = parse_body(body)?;
    let k = check_k(request.k)?;
    let found = request.placement.as_deref().map(|name| find_placement(&rec.placements, name)).transpose()?;
    let placement = found.map(|(_, p)| p);
    // Attribution counts by placement: its index in the configured order, plus one (0: none).
    let asked = Asked::Recommend(found.map_or(0, |(i, _)| i as u32 + 1));
    if let Some(user) = &request.user_id
        && user.is_empty()
    {
        return Err(ApiError::BadRequest("user_id must not be empty (leave it out for an anonymous request)".into()));
    }
    if request.context.len() > MAX_CONTEXT {
        return Err(ApiError::BadRequest(format!(
            "context may hold at most {MAX_CONTEXT} items, got {}",
            request.context.len()
        )));
    }
    if request.exclude.len() > MAX_EXCLUDE {
        return Err(ApiError::BadRequest(format!(
            "exclude may hold at most {MAX_EXCLUDE} items, got {}",
            request.exclude.len()
        )));
    }
    if request.filters.category.as_ref().is_some_and(Vec::is_empty) {
        return Err(ApiError::BadRequest("filters.category must name at least one category".into()));
    }

    let view = &*rec.view;
    let user = request.user_id.as_deref();
    let cold_start = user.is_none_or(|u| view.user(u).is_none());
    let context = item_indices(view, &request.context);
    let exclude = item_indices(view, &request.exclude);
    // A category the model has not seen has no items: it narrows the list to nothing.
    let categories: Option<Vec<u32>> =
        request.filters.category.as_ref().map(|names| names.iter().filter_map(|c| view.attribute(c)).collect());
    let query = RankQuery {
        user,
        k,
        context: &context,
        exclude: &exclude,
        categories: categories.as_deref(),
        placement,
        generators: [true; GENERATORS],
    };
    let (recommendation_id, items) = RANKING.with_borrow_mut(|ranking| {
        freshet_engine::recommend::rank(view, &query, ranking);
        (view.attribution().serve(asked, &ranking.items), items(view, ranking))
    });
    let kind = if cold_start { "cold_start" } else { "user" };
    metrics::counter!(crate::metrics::RECOMMEND_REQUESTS, "kind" => kind).increment(1);
    Ok(Json(Recommendations { recommendation_id, user_id: request.user_id.clone(), cold_start, items }))
}

/// `GET /v1/items/{id}/similar?k=10`.
pub(super) async fn similar(
    State(state): State<AppState>,
    Path(id): Path<String>,
    params: Result<Query<SimilarParams>, QueryRejection>,
) -> Result<Json<SimilarItems>, ApiError> {
    similar_from(recommending(&state)?, id, params)
}

/// The answer to a `GET /v1/items/{id}/similar` with `params`, from `rec`.
pub(super) fn similar_from(
    rec: &Recommending,
    id: String,
    params: Result<Query<SimilarParams>, QueryRejection>,
) -> Result<Json<SimilarItems>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let k = check_k(params.k)?;
    let view = &*rec.view;
    let Some(item) = view.item_index(&id) else {
        return Err(ApiError::NotFound(format!("item {id:?} is not known")));
    };
    let (recommendation_id, items) = RANKING.with_borrow_mut(|ranking| {
        freshet_engine::recommend::similar(view, item, k, ranking);
        (view.attribution().serve(Asked::Similar, &ranking.items), items(view, ranking))
    });
    metrics::counter!(crate::metrics::RECOMMEND_REQUESTS, "kind" => "similar").increment(1);
    Ok(Json(SimilarItems { recommendation_id, item_id: id, items }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(body: &str) -> String {
        match parse_body(body.as_bytes()) {
            Err(ApiError::BadRequest(m)) => m,
            other => panic!("{body}: expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn bodies_are_strict_and_errors_name_the_problem() {
        let ok = parse_body(br#"{"user_id":"u1","k":5,"filters":{"category":["c1"]},"context":["i1"]}"#).unwrap();
        assert_eq!((ok.user_id.as_deref(), ok.k), (Some("u1"), Some(5)));
        assert_eq!(ok.filters.category, Some(vec!["c1".to_owned()]));
        assert!(parse_body(b"").unwrap().user_id.is_none());
        assert!(parse_body(br#"{"user_id":null}"#).unwrap().user_id.is_none());

        let m = bad(r#"{"user_id":"u1","foo":1}"#);
        assert!(m.starts_with("invalid request body: unknown field `foo`, expected one of `user_id`, `k`"), "{m}");
        let m = bad(r#"{"filters":{"colour":["red"]}}"#);
        assert!(m.starts_with("invalid request body: filters: unknown field `colour`, expected `category`"), "{m}");
        let m = bad(r#"{"context":["i1",7]}"#);
        assert!(m.starts_with("invalid request body: context[1]: invalid type: integer `7`"), "{m}");
        let m = bad(r#"{"user_id":"#);
        assert!(m.contains("EOF"), "{m}");
        let m = bad(r#"{"k":"ten"}"#);
        assert!(m.contains("k: invalid type"), "{m}");
        let m = bad(r#"{} {}"#);
        assert!(m.contains("trailing characters"), "{m}");
    }

    #[test]
    fn k_is_within_range() {
        assert_eq!(check_k(None).unwrap(), 10);
        assert_eq!(check_k(Some(1000)).unwrap(), 1000);
        for k in [0, -3, 1001] {
            match check_k(Some(k)) {
                Err(ApiError::BadRequest(m)) => assert_eq!(m, format!("k must be within 1..=1000, got {k}")),
                other => panic!("k={k}: {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_placements_list_the_known_ones() {
        let placements = vec![
            Placement { name: "home".into(), ..Placement::default() },
            Placement { name: "pdp".into(), ..Placement::default() },
        ];
        let (index, pdp) = find_placement(&placements, "pdp").unwrap();
        assert_eq!((index, pdp.name.as_str()), (1, "pdp"));
        match find_placement(&placements, "cart") {
            Err(ApiError::BadRequest(m)) => {
                assert_eq!(m, r#"unknown placement "cart"; configured placements: "home", "pdp""#)
            }
            other => panic!("{other:?}"),
        }
        match find_placement(&[], "cart") {
            Err(ApiError::BadRequest(m)) => assert_eq!(m, r#"unknown placement "cart"; none are configured"#),
            other => panic!("{other:?}"),
        }
    }
}
