//! Configuration of an HTTP enrichment stage and the request it sends: plain
//! data that the binary's config layer fills in (it owns serde, defaults from
//! TOML and key paths), checked once by [`HttpEnricher::new`]. Nothing here
//! holds a resource.
//!
//! [`HttpEnricher::new`]: super::HttpEnricher::new

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

/// The HTTP method of an enrichment call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// `GET`: the usual lookup by URL.
    Get,
    /// `POST`: a lookup whose key travels in the body.
    Post,
    /// `PUT`.
    Put,
}

impl Method {
    /// The method's name as sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
        }
    }

    pub(crate) fn to_reqwest(self) -> reqwest::Method {
        match self {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
        }
    }
}

/// How one enrichment stage calls its service.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpEnrichConfig {
    /// The stage's name: the `stage` label of its metrics and field of its logs.
    pub stage: String,
    /// The HTTP method of every call.
    pub method: Method,
    /// Headers sent with every call (`Content-Type`, an API key). They
    /// override the default `User-Agent: freshet/<version>`.
    pub headers: Vec<(String, String)>,
    /// Limit on one attempt: connecting, sending and reading the whole body.
    pub timeout: Duration,
    /// Most attempts of this stage in flight at once, across every caller of
    /// the enricher and its clones. Attempts beyond it wait for a slot; the
    /// wait does not count against `timeout`.
    pub max_in_flight: usize,
    /// Retries of retryable failures.
    pub retry: RetryConfig,
    /// Circuit breaker; `None` calls the service whatever its failure rate.
    pub breaker: Option<BreakerConfig>,
    /// Response cache; `None` calls the service for every request.
    pub cache: Option<CacheConfig>,
}

/// Retries of failures that may pass (timeouts, connection failures, HTTP 429
/// and 5xx), with exponential backoff: the first retry waits `min_delay`, each
/// next one twice as long, at most `max_delay`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Retries after the first attempt; `0` never retries. Default 3.
    pub max_retries: usize,
    /// Wait before the first retry. Default 100 ms.
    pub min_delay: Duration,
    /// Longest wait between two attempts, before jitter. Default 5 s.
    pub max_delay: Duration,
    /// Adds a random 0–100 % to each wait, so that callers that failed
    /// together do not retry together (a wait can reach `2 × max_delay`).
    /// Default true.
    pub jitter: bool,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_retries: 3,
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            jitter: true,
        }
    }
}

/// A count-based circuit breaker (Resilience4j's semantics): over the last
/// `window` recorded attempts, once at least `min_calls` are recorded, a
/// failure rate at or above `failure_rate` opens the circuit for `open_for`;
/// then `half_open_probes` trial attempts decide between closing and
/// reopening.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Number of most recent attempts the failure rate is computed over. Default 20.
    pub window: usize,
    /// Attempts the window must hold before the breaker may open (at most
    /// `window`). Default 10.
    pub min_calls: usize,
    /// Failure rate, in (0, 1], at or above which the breaker opens. Default 0.5.
    pub failure_rate: f64,
    /// How long an open breaker rejects calls before it half-opens. Default 30 s.
    pub open_for: Duration,
    /// Trial attempts a half-open breaker admits (others are rejected); all
    /// must succeed to close it, one failure reopens it. Default 3.
    pub half_open_probes: usize,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            window: 20,
            min_calls: 10,
            failure_rate: 0.5,
            open_for: Duration::from_secs(30),
            half_open_probes: 3,
        }
    }
}

/// A cache of successful (2xx) response bodies, keyed by method, URL and body.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    /// How long a body is served from the cache after it was fetched. Default 60 s.
    pub ttl: Duration,
    /// Most bodies kept; beyond it the least valuable are evicted. Default 10 000.
    pub max_entries: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig { ttl: Duration::from_secs(60), max_entries: 10_000 }
    }
}

/// One rendered call: the engine fills in the URL (and body) from an event.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EnrichRequest {
    /// Absolute `http://` URL.
    pub url: String,
    /// Request body, if any (`POST`/`PUT` lookups).
    pub body: Option<Vec<u8>>,
}

impl HttpEnrichConfig {
    /// Checks every value and builds the header map; returns the headers or
    /// every problem found, as `key: what is wrong`.
    pub(crate) fn check(&self) -> Result<HeaderMap, Vec<String>> {
        let mut problems = Vec::new();
        let mut must = |ok: bool, problem: &str| {
            if !ok {
                problems.push(problem.to_owned());
            }
        };
        must(!self.stage.is_empty(), "stage: must not be empty");
        must(!self.timeout.is_zero(), "timeout: must be > 0");
        must(self.max_in_flight > 0, "max_in_flight: must be > 0");
        must(self.max_in_flight <= tokio::sync::Semaphore::MAX_PERMITS, "max_in_flight: too large");
        must(self.retry.min_delay <= self.retry.max_delay, "retry.max_delay: must be >= retry.min_delay");
        if let Some(b) = &self.breaker {
            must(b.window > 0, "breaker.window: must be > 0");
            must(b.min_calls > 0 && b.min_calls <= b.window, "breaker.min_calls: must be between 1 and breaker.window");
            must(b.failure_rate > 0.0 && b.failure_rate <= 1.0, "breaker.failure_rate: must be in (0, 1]");
            must(!b.open_for.is_zero(), "breaker.open_for: must be > 0");
            must(b.half_open_probes > 0, "breaker.half_open_probes: must be > 0");
        }
        if let Some(c) = &self.cache {
            must(!c.ttl.is_zero(), "cache.ttl: must be > 0");
            must(c.max_entries > 0, "cache.max_entries: must be > 0");
        }
        let mut headers = HeaderMap::new();
        for (i, (name, value)) in self.headers.iter().enumerate() {
            match (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
                (Ok(name), Ok(value)) => {
                    headers.append(name, value);
                }
                (Err(_), _) => problems.push(format!("headers[{i}]: invalid name {name:?}")),
                (_, Err(_)) => problems.push(format!("headers[{i}] ({name}): invalid value")),
            }
        }
        if problems.is_empty() { Ok(headers) } else { Err(problems) }
    }
}
