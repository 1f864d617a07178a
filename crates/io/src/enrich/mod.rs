//! HTTP enrichment: the call side of an enrichment stage. Given requests the
//! engine rendered from events (URL and optional body), [`HttpEnricher`]
//! calls an external HTTP service asynchronously with a bounded number of
//! attempts in flight, retries with exponential backoff and jitter, a circuit
//! breaker and a response cache, and returns each 2xx body or a classified
//! [`CallError`]. Mapping the body into the event and the failure policy
//! (dead-letter, skip, fail) are the engine's.
//!
//! The client is `reqwest` over plain HTTP/1.1 with pooled keep-alive
//! connections. It has no TLS (an `https://` URL fails at once with
//! [`ErrorKind::Other`]) because rustls's default crypto provider is a
//! long C build on 2 cores. Proxies from `HTTP_PROXY`/`NO_PROXY` are honoured.
//! Retries also apply to `POST` and `PUT`: an enrichment endpoint must be a
//! lookup that is safe to repeat.
//!
//! - `config.rs`: the stage's configuration and the request type.
//! - `enricher.rs`: [`HttpEnricher`], a request's path through cache,
//!   breaker, in-flight bound, attempts and retries.
//! - `breaker.rs`: the circuit breaker's state machine, with time passed in.
//! - `error.rs`: error kinds, their retry classification and messages.
//! - `tests.rs`: the enricher against a real HTTP server on loopback.

mod breaker;
mod config;
mod enricher;
mod error;

pub use breaker::BreakerState;
pub(crate) use breaker::Transition;
pub use config::{BreakerConfig, CacheConfig, EnrichRequest, HttpEnrichConfig, Method, RetryConfig};
pub use enricher::{EnrichStats, HttpEnricher};
pub use error::{CallError, ErrorKind};

#[cfg(test)]
mod tests;
