//! Operations endpoints: `/metrics` (Prometheus text), `/healthz`, `/readyz`.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use metrics_exporter_prometheus::PrometheusHandle;

use super::AppState;

pub(super) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
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
