//! Freshet's I/O edges on the data path: the file source, sink writers (files,
//! stdout, the dead-letter file) and the deterministic workload generator.
//!
//! Nothing here knows about flows or state: sources produce
//! [`freshet_engine::decode::Chunk`]s of raw lines, sinks take formatted
//! bytes. Kafka, HTTP enrichment and the durable ingest log will live here too.

pub mod error;
pub mod file;
pub mod generator;
pub mod sink;

pub use error::{Domain, IoError, Result};

#[cfg(test)]
mod tests;
