//! `POST /v1/events`: one JSON event, or an NDJSON batch, into the pipeline.
//!
//! The answer is 202 once the batch is in the durable ingest log (with a data
//! directory; see `topology::ingest`) or in the pipeline's bounded queue;
//! validation happens there, and rejected lines go to the dead-letter sink.
//! A full pipeline makes the request wait (up to 5 s), then answers 429; a
//! failed log write answers 503. Neither leaves a trace of the batch.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};

use super::AppState;
use super::error::ApiError;

pub(super) async fn ingest(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let Some(ingest) = state.ingest.clone() else {
        return Err(ApiError::NotFound("this pipeline has no http source".into()));
    };
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let single = content_type.starts_with("application/json");
    let body = body.to_vec();
    let taken = tokio::task::spawn_blocking(move || ingest.submit(body, single, Duration::from_secs(5)))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    let n = taken?;
    metrics::counter!(crate::metrics::HTTP_INGESTED).increment(n);
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({ "accepted": n }))))
}
