//! A windowed feature as planned from config: what it reads, how it keys,
//! windows and aggregates, and where results go.

use crate::aggregate::AggFn;
use crate::event::FieldPath;
use crate::predicate::Predicate;
use crate::window::WindowSpec;

/// Which serving resource a feature belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity {
    /// `/v1/users/{id}/features`.
    User,
    /// `/v1/items/{id}/features`.
    Item,
    /// Not served per entity.
    None,
}

impl Entity {
    /// Its name, as configs, the API and a group's forget markers spell it.
    pub fn name(self) -> &'static str {
        match self {
            Entity::User => "user",
            Entity::Item => "item",
            Entity::None => "none",
        }
    }

    /// The entity [`Entity::name`] spells `name`, if any.
    pub fn from_name(name: &str) -> Option<Entity> {
        [Entity::User, Entity::Item, Entity::None].into_iter().find(|e| e.name() == name)
    }
}

/// Output format of a sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `window_start,window_end,key...,value`, no header.
    Csv,
    /// One JSON object per line.
    Ndjson,
}

/// One windowed, keyed aggregation.
#[derive(Debug, Clone)]
pub struct FeatureSpec {
    /// Unique name.
    pub name: String,
    /// Index of the flow whose events feed it.
    pub flow: usize,
    /// Key fields; the first is the entity.
    pub key: Vec<FieldPath>,
    /// Serving resource.
    pub entity: Entity,
    /// Optional extra condition on the flow's events.
    pub filter: Option<Predicate>,
    /// The window.
    pub window: WindowSpec,
    /// The aggregate.
    pub agg: AggFn,
    /// The field aggregated, when the function reads one.
    pub field: Option<FieldPath>,
    /// Sink index and format for closed-window results.
    pub sink: Option<(u16, Format)>,
    /// Sink index for events too late for every window they belong to.
    pub late_sink: Option<u16>,
    /// Allowed lateness in ms: closed windows still accept (and re-emit) late events this long.
    pub allowed_lateness: i64,
    /// Whether values are published for serving reads.
    pub serve: bool,
    /// Sink index for the entity's values on every change (NDJSON rows,
    /// `"value": null` when the entity is forgotten or expires).
    pub updates_sink: Option<u16>,
    /// State TTL in ms: a key whose newest event is this much older than the
    /// watermark, and that has no window left to fire or to take late events,
    /// is removed with its serving value. `None` keeps keys forever.
    pub ttl: Option<i64>,
}

impl FeatureSpec {
    /// Whether entities' changes are tracked (for serving or for an updates sink).
    pub fn tracked(&self) -> bool {
        self.serve || self.updates_sink.is_some()
    }

    /// What shapes this feature's state (key, window, aggregate, field,
    /// lateness, TTL): a snapshot or checkpoint taken under another
    /// definition is refused.
    pub fn definition(&self) -> String {
        let key: Vec<&str> = self.key.iter().map(|p| p.as_str()).collect();
        let field = self.field.as_ref().map_or("-", |f| f.as_str());
        let ttl = self.ttl.map_or(String::new(), |t| format!(", ttl {}", crate::window::human_ms(t)));
        format!(
            "key [{}], {}, {} of {field}, lateness {}{ttl}",
            key.join(", "),
            self.window,
            self.agg.name(),
            crate::window::human_ms(self.allowed_lateness)
        )
    }
}
