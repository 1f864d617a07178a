//! [`HttpEnricher`]: one stage's client, in-flight bound, breaker and cache,
//! and the path of one request through them. It returns a body or a
//! classified error; what the body means for an event, and what a failure
//! does to it (dead-letter, skip, stop), is the engine's business.
//!
//! A request goes: cache (hit: done) → for each attempt: breaker (open: fail
//! fast) → in-flight slot → attempt with timeout → record in the breaker →
//! retry after a backoff delay if the failure is retryable and retries are
//! left. Retries are a plain loop over [`backon`]'s delay schedule rather than
//! its `Retryable` adapter, so that the breaker is consulted before every
//! attempt and the attempt count and last failure are at hand for the error.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use bytes::Bytes;
use moka::future::Cache;
use reqwest::Url;
use tokio::runtime::Handle;
use tokio::sync::Semaphore;

use super::breaker::{Breaker, BreakerState, Permit};
use super::error::{CallError, ErrorKind, Failure};
use super::{EnrichRequest, HttpEnrichConfig, Method};
use crate::error::IoError;
use crate::metrics::EnrichMetrics;

/// Plain counters of one enricher (shared by its clones) since it was built.
/// Attempts are `calls`; `successes + failures == calls`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EnrichStats {
    /// HTTP attempts made.
    pub calls: u64,
    /// Attempts answered with a 2xx.
    pub successes: u64,
    /// Attempts that failed in any way (including non-2xx statuses).
    pub failures: u64,
    /// Attempts after the first of their request.
    pub retries: u64,
    /// Times the circuit breaker failed a request fast.
    pub breaker_rejections: u64,
    /// Requests that made no call of their own: answered from the cache, or
    /// by an identical request in flight (whatever its outcome).
    pub cache_hits: u64,
    /// Requests that called the service though a cache is configured.
    pub cache_misses: u64,
}

/// The HTTP side of one enrichment stage. Cheap to clone; clones share the
/// connection pool, the in-flight bound, the breaker, the cache and the
/// counters.
#[derive(Clone)]
pub struct HttpEnricher {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for HttpEnricher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpEnricher")
            .field("stage", &self.inner.stage)
            .field("method", &self.inner.method)
            .field("breaker", &self.breaker_state())
            .finish_non_exhaustive()
    }
}

struct Inner {
    stage: String,
    method: Method,
    client: reqwest::Client,
    timeout: Duration,
    in_flight: Semaphore,
    backoff: ExponentialBuilder,
    breaker: Option<Breaker>,
    cache: Option<Cache<CacheKey, Bytes>>,
    metrics: Arc<EnrichMetrics>,
    runtime: Handle,
}

/// What makes two requests the same for the cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    method: Method,
    url: String,
    body: Option<Vec<u8>>,
}

impl HttpEnricher {
    /// Checks `config` and builds the stage's client. Calls run on
    /// `runtime` (which must be a multi-thread runtime for [`call_all`]).
    ///
    /// Fails with [`IoError::Config`] listing every invalid value, or
    /// [`IoError::HttpClient`] if the client cannot be built.
    ///
    /// [`call_all`]: HttpEnricher::call_all
    pub fn new(config: HttpEnrichConfig, runtime: Handle) -> Result<Self, IoError> {
        let component = || format!("enrichment stage {:?}", config.stage);
        let headers = config
            .check()
            .map_err(|problems| IoError::Config { component: component(), problems: problems.join("; ") })?;
        let client = reqwest::Client::builder()
            .user_agent(concat!("freshet/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            .pool_max_idle_per_host(config.max_in_flight)
            .build()
            .map_err(|source| IoError::HttpClient { component: component(), source })?;
        let retry = &config.retry;
        let mut backoff = ExponentialBuilder::new()
            .with_min_delay(retry.min_delay)
            .with_max_delay(retry.max_delay)
            .with_max_times(retry.max_retries);
        if retry.jitter {
            backoff = backoff.with_jitter();
        }
        let metrics = Arc::new(EnrichMetrics::new(&config.stage));
        let breaker = config.breaker.map(|b| {
            let (open_for, probes) = (b.open_for, b.half_open_probes);
            let metrics = Arc::clone(&metrics);
            Breaker::new(b, Box::new(move |t| metrics.breaker_transition(t, open_for, probes)))
        });
        let cache = config.cache.map(|c| Cache::builder().max_capacity(c.max_entries).time_to_live(c.ttl).build());
        Ok(HttpEnricher {
            inner: Arc::new(Inner {
                stage: config.stage,
                method: config.method,
                client,
                timeout: config.timeout,
                in_flight: Semaphore::new(config.max_in_flight),
                backoff,
                breaker,
                cache,
                metrics,
                runtime,
            }),
        })
    }

    /// Calls the service for `req`: from the cache if it holds a fresh body
    /// (identical requests in flight share one call), else with retries,
    /// the breaker and the in-flight bound. Returns the 2xx response's body.
    ///
    /// If the breaker opens between two retries, retrying stops with
    /// [`ErrorKind::BreakerOpen`], `attempts`
    /// made so far and the last real failure's message followed by
    /// `; circuit open`.
    pub async fn call(&self, req: &EnrichRequest) -> Result<Bytes, CallError> {
        let url = Url::parse(&req.url).map_err(|e| CallError::invalid_url(&req.url, e))?;
        if url.scheme() != "http" {
            let problem = "only http:// is supported (built without TLS)";
            return Err(CallError::invalid_url(&req.url, problem));
        }
        let body = req.body.as_deref().map(Bytes::copy_from_slice);
        let inner = &*self.inner;
        let Some(cache) = &inner.cache else {
            return inner.call_uncached(url, body).await;
        };
        let key = CacheKey { method: inner.method, url: req.url.clone(), body: req.body.clone() };
        let called = AtomicBool::new(false);
        let result = cache
            .try_get_with(key, async {
                called.store(true, Relaxed);
                inner.call_uncached(url, body).await
            })
            .await;
        inner.metrics.cache(!called.load(Relaxed));
        result.map_err(|shared| (*shared).clone())
    }

    /// Blocking, for a plain (non-tokio) thread: runs every request
    /// concurrently on the runtime (bounded by `max_in_flight`, shared with
    /// every other caller), waits until each has settled (a body, or an error
    /// after retries or from the breaker), and returns the outcomes in
    /// request order.
    ///
    /// # Panics
    ///
    /// If called from inside an async context (a tokio worker thread or a
    /// `block_on`): blocking there could starve the runtime.
    pub fn call_all(&self, requests: Vec<EnrichRequest>) -> Vec<Result<Vec<u8>, CallError>> {
        let tasks: Vec<_> = requests
            .into_iter()
            .map(|req| {
                let this = self.clone();
                self.inner.runtime.spawn(async move { this.call(&req).await.map(Vec::from) })
            })
            .collect();
        self.inner.runtime.block_on(async move {
            let mut outcomes = Vec::with_capacity(tasks.len());
            for task in tasks {
                outcomes.push(task.await.unwrap_or_else(|e| Err(CallError::task_lost(e))));
            }
            outcomes
        })
    }

    /// The circuit breaker's state; always Closed without a breaker. An Open
    /// breaker whose `open_for` has passed says Open until the next call
    /// half-opens it.
    pub fn breaker_state(&self) -> BreakerState {
        self.inner.breaker.as_ref().map_or(BreakerState::Closed, Breaker::state)
    }

    /// The counters since the enricher was built.
    pub fn stats(&self) -> EnrichStats {
        self.inner.metrics.stats()
    }

    /// Applies the cache's pending evictions and returns how many bodies it
    /// holds (0 without a cache).
    #[cfg(test)]
    pub(crate) async fn cache_len(&self) -> u64 {
        match &self.inner.cache {
            Some(cache) => {
                cache.run_pending_tasks().await;
                cache.entry_count()
            }
            None => 0,
        }
    }
}

impl Inner {
    /// Attempts until success, a non-retryable failure, the last retry or an
    /// open breaker.
    async fn call_uncached(&self, url: Url, body: Option<Bytes>) -> Result<Bytes, CallError> {
        let mut delays = self.backoff.build();
        let mut attempts: u32 = 0;
        let mut last: Option<Failure> = None;
        loop {
            let Some(permit) = self.admit().await? else {
                self.metrics.breaker_rejection();
                return Err(CallError::circuit_open(last.as_ref(), attempts));
            };
            attempts = attempts.saturating_add(1);
            let started = Instant::now();
            let outcome = self.attempt(&url, body.clone()).await;
            drop(permit.slot);
            let kind = outcome.as_ref().err().map(Failure::kind);
            self.metrics.attempt(kind, started.elapsed());
            if let Some(p) = permit.breaker {
                match kind {
                    // Failed on our side (an unreadable response, a redirect
                    // loop): says nothing about the service's health.
                    Some(ErrorKind::Other) => drop(p),
                    _ => p.record(!kind.is_some_and(|k| k.retryable()), Instant::now()),
                }
            }
            let failure = match outcome {
                Ok(body) => return Ok(body),
                Err(f) => f,
            };
            match delays.next() {
                Some(delay) if failure.kind().retryable() => {
                    self.metrics.retry(&failure.describe(attempts), delay);
                    last = Some(failure);
                    tokio::time::sleep(delay).await;
                }
                _ => return Err(failure.into_error(attempts)),
            }
        }
    }

    /// Waits for leave to make one attempt: `None` if the breaker rejects it.
    /// Checks the breaker before queueing for a slot (fail fast while open)
    /// and again once a slot is held (it may have opened meanwhile).
    async fn admit(&self) -> Result<Option<Admission<'_>>, CallError> {
        if self.breaker.as_ref().is_some_and(|b| b.rejects(Instant::now())) {
            return Ok(None);
        }
        let slot =
            self.in_flight.acquire().await.map_err(|e| CallError::task_lost(format!("stage {}: {e}", self.stage)))?;
        let breaker = match &self.breaker {
            None => None,
            Some(b) => match b.try_acquire(Instant::now()) {
                Some(permit) => Some(permit),
                None => return Ok(None),
            },
        };
        Ok(Some(Admission { slot, breaker }))
    }

    /// One attempt, bounded by the timeout: send, then read the whole body.
    async fn attempt(&self, url: &Url, body: Option<Bytes>) -> Result<Bytes, Failure> {
        let mut request = self.client.request(self.method.to_reqwest(), url.clone());
        if let Some(body) = body {
            request = request.body(body);
        }
        let exchange = async {
            let response = request.send().await?;
            let status = response.status();
            Ok::<_, reqwest::Error>((status, response.bytes().await?))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => Err(Failure::Timeout(self.timeout)),
            Ok(Err(e)) => Err(Failure::from_reqwest(e)),
            Ok(Ok((status, body))) if status.is_success() => Ok(body),
            Ok(Ok((status, body))) => Err(Failure::status(status.as_u16(), &body)),
        }
    }
}

/// Leave for one attempt: an in-flight slot and, with a breaker, its permit.
struct Admission<'a> {
    slot: tokio::sync::SemaphorePermit<'a>,
    breaker: Option<Permit<'a>>,
}
