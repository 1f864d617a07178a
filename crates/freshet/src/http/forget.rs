//! `DELETE /v1/users/{id}` and `DELETE /v1/items/{id}`: forget an entity in
//! every feature of its kind (state, unfired windows, served values).
//!
//! The request travels with the ingested events (through the durable log
//! when there is one), so it applies after every event accepted before it,
//! survives a crash, and the next checkpoint covers it. The answer is 202
//! once it is in the log; the entity is gone from reads once the pipeline
//! reaches it (milliseconds). Rows already written to sinks are not touched.
//! A pipeline without an http source forgets through a Kafka source's topic
//! when it forgets on tombstones: the answer is 202 once the broker has the
//! entity's tombstone, and the source reads it in order with the entity's
//! events.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use freshet_engine::features::Entity;
use freshet_io::kafka::tombstones::Tombstones;

use super::AppState;
use super::error::ApiError;

/// How long a forget waits to be taken (by the log, or by the broker).
const WAIT: Duration = Duration::from_secs(5);

pub(super) async fn user(
    state: State<AppState>,
    id: Path<String>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    forget(state, id, Entity::User, "user_id").await
}

pub(super) async fn item(
    state: State<AppState>,
    id: Path<String>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    forget(state, id, Entity::Item, "item_id").await
}

async fn forget(
    State(state): State<AppState>,
    Path(id): Path<String>,
    entity: Entity,
    field: &str,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    if id.is_empty() {
        return Err(ApiError::BadRequest("empty id".into()));
    }
    if let Some(ingest) = state.ingest.clone() {
        let id = id.clone();
        tokio::task::spawn_blocking(move || ingest.forget(entity, &id, WAIT))
            .await
            .map_err(|e| ApiError::Internal(e.into()))??;
    } else if let Some(forgets) = state.forgets.clone().filter(|f| f.entity == entity) {
        send_tombstone(forgets.tombstones, id.clone()).await?;
    } else {
        return Err(ApiError::NotFound(format!(
            "this pipeline has no http source, which orders a forget with the events around it, \
             nor a kafka source with forget_on_tombstone = \"{field}\"",
            field = entity.name()
        )));
    }
    Ok(accepted(field, id))
}

/// Produces `id`'s tombstone off the async threads; 503 unless the broker took it in time.
pub(super) async fn send_tombstone(tombstones: Arc<Tombstones>, id: String) -> Result<(), ApiError> {
    tokio::task::spawn_blocking(move || tombstones.send(&id, WAIT))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        .map_err(|e| ApiError::Unavailable(e.to_string()))
}

/// The answer to a forget taken: 202, counted.
pub(super) fn accepted(field: &str, id: String) -> (StatusCode, Json<serde_json::Value>) {
    metrics::counter!(crate::metrics::FORGET_REQUESTS).increment(1);
    (StatusCode::ACCEPTED, Json(serde_json::json!({ field: id, "forget": "accepted" })))
}
