//! Metric names of the I/O edges and the handles each component records
//! through, registered once when the component is built.
//!
//! Names follow `freshet_<subsystem>_<what>_<unit|total>`; labels are config
//! names (stages) and fixed words (outcomes, states), never URLs or entity ids.
//! The binary installs the exporter; without one, recording is a no-op.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use tracing::{debug, info, warn};

use crate::enrich::{BreakerState, EnrichStats, ErrorKind, Transition};

/// Enrichment attempts, by stage and outcome: `ok`, `retryable_error`
/// (timeouts, connection failures, 429, 5xx), `error` (anything else).
pub const ENRICH_CALLS: &str = "freshet_enrich_calls_total";
/// Enrichment retries (attempts after the first), by stage.
pub const ENRICH_RETRIES: &str = "freshet_enrich_retries_total";
/// Circuit breaker state, by stage: 0 closed, 1 open, 2 half-open.
pub const ENRICH_BREAKER_STATE: &str = "freshet_enrich_breaker_state";
/// Circuit breaker transitions, by stage and the state entered (`to`).
pub const ENRICH_BREAKER_TRANSITIONS: &str = "freshet_enrich_breaker_transitions_total";
/// Requests the circuit breaker failed fast, by stage.
pub const ENRICH_BREAKER_REJECTIONS: &str = "freshet_enrich_breaker_rejections_total";
/// Requests answered by the response cache (or by an identical request in
/// flight), by stage.
pub const ENRICH_CACHE_HITS: &str = "freshet_enrich_cache_hits_total";
/// Requests that called the service though a cache is configured, by stage.
pub const ENRICH_CACHE_MISSES: &str = "freshet_enrich_cache_misses_total";
/// Duration of one enrichment attempt (not counting the wait for an
/// in-flight slot or between retries), by stage.
pub const ENRICH_CALL_SECONDS: &str = "freshet_enrich_call_seconds";

/// Errors a Kafka client reported (connection, authentication, broker), by
/// component (`source NAME`, `sink NAME`).
pub const KAFKA_CLIENT_ERRORS: &str = "freshet_kafka_client_errors_total";
/// Records a Kafka sink could not deliver (the job stops), by sink.
pub const KAFKA_PRODUCER_ERRORS: &str = "freshet_kafka_producer_errors_total";
/// Records produced and acknowledged, by sink.
pub const KAFKA_PRODUCED: &str = "freshet_kafka_produced_total";
/// Consumer lag of a source partition: the partition's high watermark minus
/// the next offset the source reads, by source and partition.
pub const KAFKA_CONSUMER_LAG: &str = "freshet_kafka_consumer_lag";
/// Partition assignments a `scale_out` source received from its group, by source.
pub const KAFKA_REBALANCES: &str = "freshet_kafka_rebalances_total";
/// Partitions a `scale_out` source owns now, by source.
pub const KAFKA_ASSIGNED_PARTITIONS: &str = "freshet_kafka_assigned_partitions";

/// An enrichment stage's metric handles, log helpers and the plain counters
/// behind [`HttpEnricher::stats`](crate::enrich::HttpEnricher::stats).
pub(crate) struct EnrichMetrics {
    stage: String,
    ok: Counter,
    retryable_error: Counter,
    error: Counter,
    retries: Counter,
    state: Gauge,
    to_closed: Counter,
    to_open: Counter,
    to_half_open: Counter,
    rejections: Counter,
    hits: Counter,
    misses: Counter,
    seconds: Histogram,
    stats: Stats,
}

/// The counters of [`EnrichStats`], updated with relaxed atomics.
#[derive(Default)]
struct Stats {
    calls: AtomicU64,
    successes: AtomicU64,
    failures: AtomicU64,
    retries: AtomicU64,
    breaker_rejections: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
}

impl EnrichMetrics {
    /// Registers the stage's handles; sets the breaker gauge to closed.
    pub fn new(stage: &str) -> Self {
        let calls = |outcome: &'static str| counter!(ENRICH_CALLS, "stage" => stage.to_owned(), "outcome" => outcome);
        let to = |state: BreakerState| counter!(ENRICH_BREAKER_TRANSITIONS, "stage" => stage.to_owned(), "to" => state.as_str());
        let m = EnrichMetrics {
            stage: stage.to_owned(),
            ok: calls("ok"),
            retryable_error: calls("retryable_error"),
            error: calls("error"),
            retries: counter!(ENRICH_RETRIES, "stage" => stage.to_owned()),
            state: gauge!(ENRICH_BREAKER_STATE, "stage" => stage.to_owned()),
            to_closed: to(BreakerState::Closed),
            to_open: to(BreakerState::Open),
            to_half_open: to(BreakerState::HalfOpen),
            rejections: counter!(ENRICH_BREAKER_REJECTIONS, "stage" => stage.to_owned()),
            hits: counter!(ENRICH_CACHE_HITS, "stage" => stage.to_owned()),
            misses: counter!(ENRICH_CACHE_MISSES, "stage" => stage.to_owned()),
            seconds: histogram!(ENRICH_CALL_SECONDS, "stage" => stage.to_owned()),
            stats: Stats::default(),
        };
        m.state.set(BreakerState::Closed.gauge());
        m
    }

    /// One attempt ended: `None` if it got a 2xx, else its failure's kind.
    pub fn attempt(&self, failed: Option<ErrorKind>, took: Duration) {
        self.seconds.record(took.as_secs_f64());
        self.stats.calls.fetch_add(1, Relaxed);
        match failed {
            None => {
                self.ok.increment(1);
                self.stats.successes.fetch_add(1, Relaxed);
            }
            Some(kind) => {
                let outcome = if kind.retryable() { &self.retryable_error } else { &self.error };
                outcome.increment(1);
                self.stats.failures.fetch_add(1, Relaxed);
            }
        }
    }

    /// An attempt failed and another follows after `delay`.
    pub fn retry(&self, error: &dyn std::fmt::Display, delay: Duration) {
        self.retries.increment(1);
        self.stats.retries.fetch_add(1, Relaxed);
        // Debug, not warn: an outage would log every retry of every event; the
        // breaker's transitions and the counters tell the story at warn level.
        debug!(stage = %self.stage, %error, ?delay, "Enrichment call failed; will retry.");
    }

    /// The circuit breaker failed a request fast.
    pub fn breaker_rejection(&self) {
        self.rejections.increment(1);
        self.stats.breaker_rejections.fetch_add(1, Relaxed);
    }

    /// A request was answered by the cache (`hit`) or called the service.
    pub fn cache(&self, hit: bool) {
        let (counter, stat) =
            if hit { (&self.hits, &self.stats.cache_hits) } else { (&self.misses, &self.stats.cache_misses) };
        counter.increment(1);
        stat.fetch_add(1, Relaxed);
    }

    /// The breaker changed state: sets the gauge, counts and logs.
    pub fn breaker_transition(&self, t: &Transition, open_for: Duration, probes: usize) {
        self.state.set(t.to.gauge());
        let stage = self.stage.as_str();
        let (from, to, failure_rate) = (t.from.as_str(), t.to.as_str(), t.failure_rate);
        match (t.from, t.to) {
            (_, BreakerState::Closed) => {
                self.to_closed.increment(1);
                info!(stage, from, to, "Circuit breaker closed; calls flow again.");
            }
            (BreakerState::HalfOpen, BreakerState::Open) => {
                self.to_open.increment(1);
                warn!(
                    stage,
                    from, to, failure_rate, "Circuit breaker probe failed; calls fail fast for another {open_for:?}."
                );
            }
            (_, BreakerState::Open) => {
                self.to_open.increment(1);
                warn!(stage, from, to, failure_rate, "Circuit breaker opened; calls fail fast for {open_for:?}.");
            }
            (_, BreakerState::HalfOpen) => {
                self.to_half_open.increment(1);
                info!(stage, from, to, "Circuit breaker half-open; admitting {probes} trial calls.");
            }
        }
    }

    /// A snapshot of the plain counters.
    pub fn stats(&self) -> EnrichStats {
        let s = &self.stats;
        EnrichStats {
            calls: s.calls.load(Relaxed),
            successes: s.successes.load(Relaxed),
            failures: s.failures.load(Relaxed),
            retries: s.retries.load(Relaxed),
            breaker_rejections: s.breaker_rejections.load(Relaxed),
            cache_hits: s.cache_hits.load(Relaxed),
            cache_misses: s.cache_misses.load(Relaxed),
        }
    }
}
