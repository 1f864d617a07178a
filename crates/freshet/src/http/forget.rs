//! `DELETE /v1/users/{id}` and `DELETE /v1/items/{id}`: forget an entity in
//! every feature of its kind (state, unfired windows, served values).
//!
//! The request travels with the ingested events (through the durable log
//! when there is one), so it applies after every event accepted before it,
//! survives a crash, and the next checkpoint covers it. The answer is 202
//! once it is in the log; the entity is gone from reads once the pipeline
//! reaches it (milliseconds). Rows already written to sinks are not touched.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use freshet_engine::features::Entity;

use super::AppState;
use super::error::ApiError;

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
    let Some(ingest) = state.ingest.clone() else {
        return Err(ApiError::NotFound(
            "this pipeline has no http source, which orders a forget with the events around it".into(),
        ));
    };
    if id.is_empty() {
        return Err(ApiError::BadRequest("empty id".into()));
    }
    let taken = {
        let id = id.clone();
        tokio::task::spawn_blocking(move || ingest.forget(entity, &id, Duration::from_secs(5)))
            .await
            .map_err(|e| ApiError::Internal(e.into()))?
    };
    taken?;
    metrics::counter!(crate::metrics::FORGET_REQUESTS).increment(1);
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({ field: id, "forget": "accepted" }))))
}
