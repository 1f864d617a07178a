//! Serving views: feature values published by the shards for lock-free reads.
//!
//! Each feature has one concurrent map from entity id to that entity's
//! values. Shards write only the entities they own, in batches (see
//! `FeatureState::publish`); HTTP handlers read without ever waiting for a
//! shard. The map is `papaya`'s lock-free hash map.

use std::sync::Arc;

use super::spec::{Entity, FeatureSpec};
use crate::aggregate::AggValue;

/// A value over one window.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowValue {
    /// Window start (ms).
    pub start: i64,
    /// Window end (ms, exclusive).
    pub end: i64,
    /// The aggregate.
    pub value: AggValue,
}

/// One key's values (for keys with group fields after the entity).
#[derive(Debug, Clone, PartialEq)]
pub struct GroupView {
    /// The key's parts after the entity (empty when the key is the entity alone).
    pub group: Vec<String>,
    /// Running value of the earliest open window holding the newest event.
    pub current: Option<WindowValue>,
    /// The last closed window's value.
    pub last_closed: Option<WindowValue>,
    /// The newest event time folded in.
    pub event_time: i64,
}

/// All values of one entity for one feature.
pub type EntityView = Vec<GroupView>;

/// The published values of one feature.
pub struct FeatureView {
    /// Feature name.
    pub name: String,
    /// Which resource serves it.
    pub entity: Entity,
    /// Names of the key fields after the entity.
    pub group_fields: Vec<String>,
    /// Aggregate name.
    pub aggregate: &'static str,
    /// Window description for readers.
    pub window: String,
    map: papaya::HashMap<Box<str>, Arc<EntityView>>,
}

/// A serving map whose replaced values are reclaimed in batches of 1,024.
/// Each batch costs a process-wide memory barrier (`membarrier`: an
/// interrupt on every core, the HTTP threads' too); at seize's default of 32
/// that was 4-5 % of a publishing shard's time.
pub(crate) fn serving_map<K, V>() -> papaya::HashMap<K, V> {
    papaya::HashMap::builder().collector(seize::Collector::new().batch_size(1024)).build()
}

impl FeatureView {
    /// An empty view for `spec`.
    pub fn new(spec: &FeatureSpec) -> Self {
        Self {
            name: spec.name.clone(),
            entity: spec.entity,
            group_fields: spec.key.iter().skip(1).map(|p| p.as_str().to_owned()).collect(),
            aggregate: spec.agg.name(),
            window: spec.window.to_string(),
            map: serving_map(),
        }
    }

    /// Publishes an entity's values.
    pub fn publish(&self, entity: Box<str>, view: EntityView) {
        self.map.pin().insert(entity, Arc::new(view));
    }

    /// Removes an entity.
    pub fn remove(&self, entity: &str) {
        self.map.pin().remove(entity);
    }

    /// The entity's values, if any were published.
    pub fn get(&self, entity: &str) -> Option<Arc<EntityView>> {
        self.map.pin().get(entity).cloned()
    }

    /// Number of entities published.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing was published.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Every feature's view, indexed like the features.
pub type Views = Arc<Vec<FeatureView>>;
