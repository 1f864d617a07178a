//! A stand-in item service for enrichment benchmarks and demos (not part of
//! the product): `GET /items/{id}` answers `{"item_id": id, "category": …}`
//! after `--delay-ms` (default 1), on `--listen` (default 127.0.0.1:18290),
//! loopback only. `--fail` answers every call with 503 (a dead service).
//! `GET /stats` answers the number of item requests served so far.
//!
//!     cargo run --release -p freshet --example item-service -- --delay-ms 1

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;

#[derive(Clone)]
struct Behaviour {
    delay: Duration,
    fail: bool,
    served: Arc<AtomicU64>,
}

async fn stats(State(b): State<Behaviour>) -> String {
    b.served.load(Ordering::Relaxed).to_string()
}

async fn item(State(b): State<Behaviour>, Path(id): Path<String>) -> (StatusCode, String) {
    b.served.fetch_add(1, Ordering::Relaxed);
    if !b.delay.is_zero() {
        tokio::time::sleep(b.delay).await;
    }
    if b.fail {
        return (StatusCode::SERVICE_UNAVAILABLE, "down".into());
    }
    let category = format!("c{}", id.bytes().map(u32::from).sum::<u32>() % 50);
    (StatusCode::OK, serde_json::json!({ "item_id": id, "category": category }).to_string())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let listen = value("--listen").unwrap_or_else(|| "127.0.0.1:18290".into());
    let delay_ms: u64 = value("--delay-ms").map_or(Ok(1), |v| v.parse())?;
    let threads: usize = value("--threads").map_or(Ok(1), |v| v.parse())?;
    let fail = args.iter().any(|a| a == "--fail");
    let behaviour = Behaviour { delay: Duration::from_millis(delay_ms), fail, served: Arc::default() };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen).await?;
        eprintln!("item service on http://{listen} (delay {delay_ms} ms, fail {fail})");
        let app = axum::Router::new().route("/items/{id}", get(item)).route("/stats", get(stats)).with_state(behaviour);
        axum::serve(listener, app).await?;
        anyhow::Ok(())
    })
}
