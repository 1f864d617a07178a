//! The API's one error type and its mapping to status codes. Internal errors
//! are logged with a request id and never echoed.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::topology::ingest::IngestError;

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is wrong; the message says how.
    #[error("{0}")]
    BadRequest(String),
    /// Nothing at that path.
    #[error("{0}")]
    NotFound(String),
    /// The pipeline is full; retry later.
    #[error("{0}")]
    Busy(String),
    /// The pipeline is not running.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected failure.
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Busy => ApiError::Busy(e.to_string()),
            IngestError::Stopped | IngestError::Log(_) => ApiError::Unavailable(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(e) => {
                let id = REQUEST_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::error!(request_id = id, error = %format!("{e:#}"), "Request failed.");
                let body = serde_json::json!({ "error": "internal error", "request_id": id });
                return (StatusCode::INTERNAL_SERVER_ERROR, Json(body)).into_response();
            }
        };
        (status, Json(serde_json::json!({ "error": self.to_string() }))).into_response()
    }
}

static REQUEST_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
