//! `freshet eval`: prequential (test-then-train) evaluation of a streaming
//! recommender on an interaction log, exactly per the peer protocol
//! (`shared/peers/quality/README.md`, "Protocol"), so its numbers stand
//! beside the peer's baselines.

mod baselines;
mod command;
mod cooccur;
mod dataset;
mod model;
mod models;
mod protocol;
mod pytext;
mod replay;

pub use command::run;
pub(crate) use pytext::float as parse_py_float;
