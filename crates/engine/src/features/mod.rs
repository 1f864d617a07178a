//! Windowed, keyed features: their definition, keys, per-shard state and
//! its expiry (TTL, forgetting), result formatting and serving views.

pub mod emit;
mod expiry;
pub mod keys;
mod prefix;
mod serving;
mod snapshot;
mod spec;
mod state;
pub mod view;

#[cfg(test)]
mod tests;

pub use emit::{Outputs, SinkBuffer, write_update};
pub use snapshot::{FeatureSnapshot, RestoreError, SNAPSHOT_VERSION};
pub use spec::{Entity, FeatureSpec, Format};
pub use state::FeatureState;
pub use view::{EntityView, FeatureView, GroupView, Views, WindowValue};
