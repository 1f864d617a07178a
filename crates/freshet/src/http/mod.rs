//! The HTTP API: one module per resource, one router, one error type.
//!
//! Handlers never touch the write path: ingest hands bodies to the pipeline's
//! bounded channel (waiting off the async threads), and feature reads and
//! recommendations go to the lock-free serving views.

mod error;
mod events;
mod features;
mod forget;
mod group;
mod ops;
mod recommend;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post};
use freshet_engine::features::Views;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::topology::sources::Forgets;
use crate::topology::{IngestHandle, Job, Recommending};

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    views: Views,
    recommending: Option<Recommending>,
    ingest: Option<IngestHandle>,
    /// A Kafka source's tombstones, which forget without an http source.
    forgets: Option<Forgets>,
    prometheus: PrometheusHandle,
    ready: Arc<dyn Fn() -> bool + Send + Sync>,
}

impl AppState {
    /// What the handlers of `job`'s API share.
    pub fn new(job: &Job, prometheus: PrometheusHandle) -> Self {
        AppState {
            views: job.views(),
            recommending: job.recommending(),
            ingest: job.ingest(),
            forgets: job.forgets(),
            prometheus,
            ready: job.ready_probe(),
        }
    }
}

/// Largest accepted request body.
const MAX_BODY: usize = 64 << 20;

/// The API's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/events", post(events::ingest))
        .route("/v1/users/{id}/features", get(features::user))
        .route("/v1/items/{id}/features", get(features::item))
        .route("/v1/recommend", post(recommend::recommend))
        .route("/v1/items/{id}/similar", get(recommend::similar))
        .route("/v1/users/{id}", delete(forget::user))
        .route("/v1/items/{id}", delete(forget::item))
        .route("/metrics", get(ops::metrics))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .fallback(ops::no_endpoint)
        .method_not_allowed_fallback(ops::wrong_method)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(record_latency))
        .with_state(state)
}

async fn record_latency(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let res = next.run(req).await;
    let status = res.status().as_u16().to_string();
    metrics::histogram!(crate::metrics::HTTP_DURATION, "route" => route, "status" => status)
        .record(start.elapsed().as_secs_f64());
    res
}

/// A running HTTP server.
pub struct Server {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Serves the API for `job` on `listener` from a background runtime.
    pub fn start(listener: std::net::TcpListener, job: &Job, prometheus: PrometheusHandle) -> Result<Server> {
        Self::serve(listener, router(AppState::new(job, prometheus)))
    }

    /// Serves the API of a process of a group that scales out with state:
    /// its tasks' features (read here or at their owner's) and the
    /// operations endpoints.
    pub fn group(
        listener: std::net::TcpListener,
        reads: Arc<crate::group::reads::Reads>,
        prometheus: PrometheusHandle,
    ) -> Result<Server> {
        Self::serve(listener, group::router(reads, prometheus))
    }

    fn serve(listener: std::net::TcpListener, app: Router) -> Result<Server> {
        let addr = listener.local_addr().context("reading the listen address")?;
        listener.set_nonblocking(true).context("configuring the listener")?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("http")
            .enable_all()
            .build()
            .context("starting the HTTP runtime")?;
        let thread = std::thread::Builder::new()
            .name("http-server".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => return tracing::error!(%e, "Cannot serve HTTP."),
                    };
                    let shutdown = async move {
                        let _ = rx.await;
                    };
                    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
                        tracing::error!(%e, "HTTP server failed.");
                    }
                });
            })
            .context("spawning the HTTP thread")?;
        tracing::info!(%addr, "Serving HTTP.");
        Ok(Server { addr, shutdown: Some(tx), thread: Some(thread) })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and waits for in-flight requests.
    pub fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests;
