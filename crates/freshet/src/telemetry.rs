//! Logs and metrics, installed once at start: `tracing` to stderr (text or
//! JSON) and the Prometheus recorder whose text `/metrics` renders.

use std::io::IsTerminal;

use anyhow::{Context, Result};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::metrics::{
    CHECKPOINT_DURATION, CHECKPOINT_SYNC_SECONDS, HTTP_DURATION, INGEST_LOG_SYNC_SECONDS, LATENCY_BUCKETS,
    PIPELINE_LATENCY,
};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the log subscriber. `RUST_LOG` overrides `default_level`.
/// Text is coloured on a terminal only: a log file gets plain lines.
pub fn init_logs(format: LogFormat, default_level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Installs the global metrics recorder and returns the handle that renders it.
pub fn init_metrics() -> Result<PrometheusHandle> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(PIPELINE_LATENCY.into()), LATENCY_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(HTTP_DURATION.into()), LATENCY_BUCKETS))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(CHECKPOINT_DURATION.into()), LATENCY_BUCKETS))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(CHECKPOINT_SYNC_SECONDS.into()), LATENCY_BUCKETS))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(INGEST_LOG_SYNC_SECONDS.into()), LATENCY_BUCKETS))
        .context("configuring metrics buckets")?
        .install_recorder()
        .context("installing the metrics recorder")
}
