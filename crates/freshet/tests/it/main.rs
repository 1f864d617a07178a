//! End-to-end tests of the `freshet` binary, in one test binary (one link on
//! 2-core machines): the reference job against two oracles over generated
//! workloads, bad and odd input through the file source, and configuration
//! and environment errors; recommendations served by a running process;
//! enrichment against a real HTTP service the test starts; Kafka sources
//! and sinks against a real broker (tansu) each test starts, and a group of
//! processes sharing a topic.
//!
//! They run the built binary as a child process; generated inputs and the
//! Flink-equivalent checker come from the shared folder (`$FRESHET_SHARED`,
//! else `<repo>/../shared`) and need `python3` on PATH. `freshet eval` is
//! checked against the peer evaluator on the shared datasets, which needs
//! Python with numpy (`$FRESHET_PYTHON`, set by scripts/test.sh).

mod bad_input;
mod config_errors;
mod dedup;
mod durable_ingest;
mod enrich;
mod eval;
mod kafka;
mod kafka_group;
mod oracle;
mod recommend;
mod recovery;
mod reference_job;
mod serve;
mod support;
