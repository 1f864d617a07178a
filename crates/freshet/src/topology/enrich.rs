//! The I/O runtime of enrichment stages: one small tokio runtime per job
//! that has any, one [`HttpEnricher`] per stage (its own in-flight bound,
//! retries, breaker and cache, shared by every decoder), and the
//! [`Enricher`] each decoder thread calls with a chunk's requests.
//!
//! Identical requests of one chunk (same stage, URL and body) share one
//! call: they are lookups made at the same moment, and popular keys repeat
//! a lot within a chunk (58 % of the calls of the generated workload), so
//! this more than halves the calls without changing any answer.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use freshet_engine::enrich::{EnrichRequest, Enricher};
use freshet_io::enrich::{self as io, HttpEnricher};

use crate::config::plan::Plan;

/// Runtime threads: HTTP calls are mostly waiting, and the decoders, shards
/// and the API need the cores.
const RUNTIME_THREADS: usize = 2;

/// The enrichment runtime and clients of a job.
pub(crate) struct Enrichment {
    runtime: Option<tokio::runtime::Runtime>,
    clients: Vec<HttpEnricher>,
}

impl Enrichment {
    /// Starts the runtime and builds every stage's client; `None` when the
    /// job has no enrichment stage.
    pub fn start(plan: &Plan) -> Result<Option<Arc<Self>>> {
        if plan.enrich.is_empty() {
            return Ok(None);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_THREADS)
            .thread_name("enrich-io")
            .enable_all()
            .build()
            .context("starting the enrichment runtime")?;
        let clients = plan
            .enrich
            .iter()
            .map(|c| {
                HttpEnricher::new(c.clone(), runtime.handle().clone())
                    .with_context(|| format!("enrichment stage {}", c.stage))
            })
            .collect::<Result<_>>()?;
        Ok(Some(Arc::new(Self { runtime: Some(runtime), clients })))
    }

    /// The calls of one decoder thread.
    pub fn calls(self: &Arc<Self>) -> Calls {
        Calls { enrichment: self.clone() }
    }
}

impl Drop for Enrichment {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside another runtime
        // (the API's); nothing is in flight once the decoders are gone.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// A decoder thread's handle on the enrichment runtime.
pub(crate) struct Calls {
    enrichment: Arc<Enrichment>,
}

impl Enricher for Calls {
    fn call(&mut self, requests: Vec<EnrichRequest>) -> Vec<Result<Vec<u8>, String>> {
        let e = &self.enrichment;
        let Some(rt) = &e.runtime else { return Vec::new() };
        // slots[i]: the call that answers request i.
        let mut calls: HashMap<&EnrichRequest, usize> = HashMap::with_capacity(requests.len());
        let mut unique = Vec::new();
        let slots: Vec<usize> = requests
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let next = calls.len();
                *calls.entry(r).or_insert_with(|| {
                    unique.push(i);
                    next
                })
            })
            .collect();
        let tasks: Vec<_> = unique
            .into_iter()
            .map(|i| {
                let r = requests[i].clone();
                let client = e.clients[r.stage as usize].clone();
                rt.spawn(async move {
                    let request = io::EnrichRequest { url: r.url, body: r.body };
                    client.call(&request).await.map(|b| b.to_vec()).map_err(|e| e.to_string())
                })
            })
            .collect();
        let answers: Vec<Result<Vec<u8>, String>> = tasks
            .into_iter()
            .map(|t| rt.block_on(t).unwrap_or_else(|e| Err(format!("the enrichment task failed: {e}"))))
            .collect();
        slots.into_iter().map(|s| answers[s].clone()).collect()
    }
}
