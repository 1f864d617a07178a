//! Operations endpoints: `/metrics` (Prometheus text), `/healthz`, `/readyz`;
//! and the answers to a path or method no endpoint takes (JSON errors like
//! every other, where axum's own have no body).

use axum::Json;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::PrometheusHandle;

use super::AppState;
use super::error::ApiError;

/// A path no endpoint serves.
pub(super) async fn no_endpoint(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no endpoint {method} {} (docs/http-api.md lists them)", uri.path()))
}

/// A path served, asked with a method it does not take.
pub(super) async fn wrong_method(method: Method, uri: Uri) -> Response {
    let error = format!("{} does not take {method} (docs/http-api.md lists its methods)", uri.path());
    (StatusCode::METHOD_NOT_ALLOWED, Json(serde_json::json!({ "error": error }))).into_response()
}

pub(super) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    if let Some(rec) = &state.recommending {
        crate::metrics::export_attribution(&rec.view, &rec.placements);
    }
    prometheus_text(&state.prometheus)
}

/// The `/metrics` page: every metric in Prometheus' text format.
pub(super) fn prometheus_text(prometheus: &PrometheusHandle) -> impl IntoResponse + use<> {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], prometheus.render())
}

pub(super) async fn healthz() -> &'static str {
    "ok"
}

pub(super) async fn readyz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if (state.ready)() { (StatusCode::OK, "ready") } else { (StatusCode::SERVICE_UNAVAILABLE, "stopped") }
}
