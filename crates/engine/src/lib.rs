//! Freshet's engine: the pure core of the pipeline.
//!
//! What it is: JSON decoding and validation, flows of stateless stages,
//! event-time watermarks, windowed keyed aggregations (tumbling, hopping,
//! session, global; count, sum, min, max, mean, distinct, last-N, decayed
//! count) held in single-threaded shards with keyed dedup, state TTL and
//! forgetting an entity (all in event time), and the lock-free views that
//! serve their values.
//!
//! What it is not: it has no threads, no async runtime, no sockets or files,
//! and no wall clock. The binary (`freshet`) wires sources, decoder threads,
//! shard threads and sinks around it and passes time in.
//!
//! Limits: event time is integer epoch milliseconds within ±2^53
//! (`time::MAX_EVENT_TIME`), durations at most `time::MAX_DURATION_MS`; a
//! JSON line is at most `Limits::max_event_bytes` and nests at most
//! `Limits::max_depth` levels.
//!
//! ```
//! use freshet_engine::event::{Fields, FieldPath};
//! let mut fields = Fields::default();
//! let mut ev = fields.decode(br#"{"user_id":"u1","ts":5}"#, 64).unwrap();
//! let ts = ev.get(&FieldPath::parse("ts").unwrap()).and_then(|v| v.as_i64());
//! assert_eq!(ts, Some(5));
//! ```

pub mod aggregate;
pub mod decode;
pub mod dedup;
pub mod enrich;
pub mod event;
pub mod features;
pub mod flow;
pub mod json;
pub mod lookup;
pub mod pipeline;
pub mod predicate;
pub mod recommend;
pub mod record;
pub mod shard;
pub mod time;
pub mod validate;
pub mod window;
