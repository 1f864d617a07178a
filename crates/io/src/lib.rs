//! Freshet's I/O edges on the data path: the file source, sink writers (files,
//! stdout, the dead-letter file) and the deterministic workload generator.
//!
//! Nothing here knows about flows or state: sources produce
//! [`freshet_engine::decode::Chunk`]s of raw lines, sinks take formatted
//! bytes. The durable ingest log ([`log`]) lives here too, and so does the
//! HTTP side of enrichment stages ([`enrich`]: bounded async calls with
//! retries, a circuit breaker and a response cache), and so do Kafka
//! sources and sinks ([`kafka`]).

pub mod enrich;
pub mod error;
pub mod file;
pub mod generator;
pub mod kafka;
pub mod log;
pub mod metrics;
pub mod sink;

pub use error::{Domain, IoError, Result};

#[cfg(test)]
mod tests;
