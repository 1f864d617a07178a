//! The API of a process in a group that scales out with state: feature
//! reads (answered here, or forwarded to the process that runs the
//! entity's task, see `crate::group::reads`), recommendations (answered
//! here, from this process's replica of the recommender), forgetting a user
//! or an item (a tombstone in the source topic, which the task of its
//! partition and every replica read in order with its events; an item's
//! task passes it on to the repartitioned task that keeps the item's
//! features) and the operations endpoints.
//!
//! Every answer says which process gave it (`x-freshet-served-by`, an
//! advertised address). A forwarded request carries `x-freshet-forwarded`,
//! and a process never forwards such a request again: if the group moved
//! the task meanwhile, the answer is a 503 to retry, not a loop.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use freshet_engine::features::Entity;
use metrics_exporter_prometheus::PrometheusHandle;

use super::error::ApiError;
use super::features::entity_features;
use super::forget::{accepted, send_tombstone};
use super::recommend::{SimilarParams, no_recommender, recommend_from, similar_from};
use crate::group::reads::{Located, Reads, Recommender};
use crate::topology::Recommending;

/// Marks a request forwarded by another member.
const FORWARDED: &str = "x-freshet-forwarded";
/// Names the member that answered.
const SERVED_BY: &str = "x-freshet-served-by";
/// How long a forwarded read may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// What the group API's handlers share.
#[derive(Clone)]
pub struct GroupState {
    reads: Arc<Reads>,
    prometheus: PrometheusHandle,
    client: reqwest::Client,
}

/// The group API's routes.
pub fn router(reads: Arc<Reads>, prometheus: PrometheusHandle) -> Router {
    let client = reqwest::Client::builder().timeout(FORWARD_TIMEOUT).build().unwrap_or_default();
    Router::new()
        .route("/v1/users/{id}/features", get(user))
        .route("/v1/items/{id}/features", get(item))
        .route("/v1/recommend", post(recommend))
        .route("/v1/items/{id}/similar", get(similar))
        .route("/v1/users/{id}", delete(forget_user))
        .route("/metrics", get(metrics))
        .route("/healthz", get(super::ops::healthz))
        .route("/v1/events", post(not_in_a_group))
        .route("/v1/items/{id}", delete(forget_item))
        .fallback(super::ops::no_endpoint)
        .method_not_allowed_fallback(super::ops::wrong_method)
        .layer(axum::middleware::from_fn(super::record_latency))
        .with_state(GroupState { reads, prometheus, client })
}

async fn user(State(s): State<GroupState>, Path(id): Path<String>, headers: HeaderMap, uri: Uri) -> Response {
    read(&s, Entity::User, &id, &headers, &uri).await
}

async fn item(State(s): State<GroupState>, Path(id): Path<String>, headers: HeaderMap, uri: Uri) -> Response {
    read(&s, Entity::Item, &id, &headers, &uri).await
}

async fn recommend(State(s): State<GroupState>, body: Bytes) -> Response {
    let answer = replica(&s).and_then(|rec| recommend_from(&rec, &body));
    served_by(answer.map_or_else(IntoResponse::into_response, IntoResponse::into_response), s.reads.advertised())
}

async fn similar(
    State(s): State<GroupState>,
    Path(id): Path<String>,
    params: Result<Query<SimilarParams>, QueryRejection>,
) -> Response {
    let answer = replica(&s).and_then(|rec| similar_from(&rec, id, params));
    served_by(answer.map_or_else(IntoResponse::into_response, IntoResponse::into_response), s.reads.advertised())
}

/// `DELETE /v1/users/{id}`: 202 once the user's tombstone is in the source
/// topic; the user is gone from reads once its task and the replicas reach it.
async fn forget_user(state: State<GroupState>, id: Path<String>) -> Response {
    forget(state, id, Entity::User).await
}

/// `DELETE /v1/items/{id}`: 202 once the item's tombstone is in the source
/// topic; the item is gone from reads once the task of the tombstone's
/// partition passed it on to the item's repartitioned task, and that task
/// reached it.
async fn forget_item(state: State<GroupState>, id: Path<String>) -> Response {
    forget(state, id, Entity::Item).await
}

async fn forget(State(s): State<GroupState>, Path(id): Path<String>, entity: Entity) -> Response {
    let me = s.reads.advertised().to_owned();
    let (name, field) = (entity.name(), format!("{}_id", entity.name()));
    let answer = if s.reads.forgets() != Some(entity) {
        Err(ApiError::NotFound(format!(
            "this group forgets through tombstones in its source topic, each of one kind of entity: \
             set forget_on_tombstone = \"{name}\" on the source to forget a {name} (docs/config.md)"
        )))
    } else if id.is_empty() {
        Err(ApiError::BadRequest("empty id".into()))
    } else {
        match s.reads.tombstones() {
            Some(t) => send_tombstone(t, id.clone()).await.map(|()| accepted(&field, id).into_response()),
            None => Err(ApiError::Unavailable("this process has not joined its group yet".into())),
        }
    };
    served_by(answer.unwrap_or_else(IntoResponse::into_response), &me)
}

/// What a single process serves and a group does not (yet).
async fn not_in_a_group(State(s): State<GroupState>) -> Response {
    let why = "a group reads its events from its Kafka topic: produce them there";
    served_by(ApiError::NotFound(why.into()).into_response(), s.reads.advertised())
}

/// This process's replica of the recommender, which answers every recommendation asked of it.
fn replica(s: &GroupState) -> Result<Recommending, ApiError> {
    match s.reads.recommender() {
        Recommender::Ready(r) => Ok(r),
        Recommender::Starting => Err(ApiError::Unavailable(
            "this process's replica of the recommender is starting (restoring its checkpoint): retry".into(),
        )),
        Recommender::Absent => Err(no_recommender()),
    }
}

async fn metrics(State(s): State<GroupState>) -> impl IntoResponse {
    if let Recommender::Ready(rec) = s.reads.recommender() {
        crate::metrics::export_attribution(&rec.view, &rec.placements);
    }
    super::ops::prometheus_text(&s.prometheus)
}

async fn read(s: &GroupState, entity: Entity, id: &str, headers: &HeaderMap, uri: &Uri) -> Response {
    let me = s.reads.advertised();
    let answer = match s.reads.locate(entity, id) {
        Located::Here(views) => entity_features(&views, entity, id).map(|v| Json(v).into_response()),
        Located::At(owner) if headers.contains_key(FORWARDED) => Err(ApiError::Unavailable(format!(
            "{me} was sent this read as the owner of its task, which is now at {owner}: the group is rebalancing, retry"
        ))),
        Located::At(owner) => return forward(s, &owner, uri).await,
        Located::Unavailable(why) => Err(ApiError::Unavailable(why)),
    };
    served_by(answer.unwrap_or_else(IntoResponse::into_response), me)
}

/// Sends the read to `owner` and returns its answer as it is.
async fn forward(s: &GroupState, owner: &str, uri: &Uri) -> Response {
    let me = s.reads.advertised();
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let sent = s.client.get(format!("http://{owner}{path}")).header(FORWARDED, me).send().await;
    let failed = |e: reqwest::Error| {
        ApiError::Unavailable(format!("the owner of this read's task, {owner}, did not answer: {e}")).into_response()
    };
    let response = match sent {
        Ok(r) => r,
        Err(e) => return served_by(failed(e), me),
    };
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let by = response.headers().get(SERVED_BY).cloned();
    match response.bytes().await {
        Ok(body) => {
            let mut answer = (status, [(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response();
            if let Some(by) = by {
                answer.headers_mut().insert(SERVED_BY, by);
            }
            answer
        }
        Err(e) => served_by(failed(e), me),
    }
}

fn served_by(mut response: Response, me: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(me) {
        response.headers_mut().insert(SERVED_BY, v);
    }
    response
}
