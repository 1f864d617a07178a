//! Flows and their stages: the configuration-driven, per-event steps between
//! decoding and keyed state.
//!
//! A flow is chosen by its `when` predicate (first match in config order),
//! checks its field rules (and JSON Schema, if any), then runs its stages in
//! order. Stages are one enum and one `match` (adding one means a variant, a
//! branch and a test). Stateless stages run on the decoder threads. A keyed
//! stage (dedup) needs state: the decoder only reads its key (handing it to
//! the caller of [`Flow::run_stages`]), and the shards that get the event's
//! records decide there whether it is a duplicate, in chunk order. An async
//! stage (HTTP enrichment) is called on the binary's I/O runtime before the
//! decoder runs the chunk (see [`crate::enrich`]); the decoder then applies
//! the answer in place. `Stage::placement` tells the planner which.

use std::ops::ControlFlow;

use crate::enrich::EnrichHttp;
use crate::event::{Event, FieldPath};
use crate::json::Kind;
use crate::predicate::Predicate;
use crate::validate::{FieldRule, Schema};

/// One step of a flow.
#[derive(Debug)]
pub enum Stage {
    /// Keep the event only when the predicate holds.
    Filter(Predicate),
    /// Set a field to a JSON constant (masking replaces a value this way).
    Set {
        /// The field.
        path: FieldPath,
        /// The value's JSON text.
        raw: Vec<u8>,
        /// The value's kind.
        kind: Kind,
    },
    /// Copy a field's value to another path.
    Copy {
        /// Source field.
        from: FieldPath,
        /// Destination field.
        to: FieldPath,
    },
    /// Move a field.
    Rename {
        /// Source field.
        from: FieldPath,
        /// Destination field.
        to: FieldPath,
    },
    /// Remove fields (masking).
    Remove(Vec<FieldPath>),
    /// Write the event (as edited so far) to a sink, and go on.
    Route(u16),
    /// Drop an event whose key was already seen within the TTL (decided on the shards).
    Dedup(Dedup),
    /// Add fields from an HTTP service's answer (called before the chunk runs).
    EnrichHttp(EnrichHttp),
    /// Add fields from a lookup table's row (answered in the chunk's table pass).
    EnrichLookup(crate::lookup::EnrichLookup),
}

/// A dedup stage: events with the same key within `ttl` of event time are one event.
#[derive(Debug, Clone)]
pub struct Dedup {
    /// Index among the pipeline's dedup stages (each has its own table).
    pub id: u16,
    /// Key fields; an event missing one passes unchecked (counted).
    pub key: Vec<FieldPath>,
    /// An event is remembered until the watermark reaches its time plus this (ms).
    pub ttl: i64,
}

impl Dedup {
    /// What shapes this stage's state, for pipeline fingerprints.
    pub fn definition(&self) -> String {
        let key: Vec<&str> = self.key.iter().map(|p| p.as_str()).collect();
        format!("dedup [{}] ttl {}", key.join(", "), crate::window::human_ms(self.ttl))
    }
}

/// Where a stage runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// On the decoder thread, per event.
    Inline,
    /// On the shard that owns the stage's key.
    Keyed,
    /// On the async I/O runtime.
    Async,
}

impl Stage {
    /// Where this stage runs.
    pub fn placement(&self) -> Placement {
        match self {
            Stage::Dedup(_) => Placement::Keyed,
            Stage::EnrichHttp(_) => Placement::Async,
            _ => Placement::Inline,
        }
    }
}

/// What happened to an event in a flow's stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It went through every stage.
    Passed,
    /// A filter dropped it.
    Filtered,
    /// An effect stopped it (an enrichment's failure policy).
    Halted,
}

/// A planned flow.
#[derive(Debug)]
pub struct Flow {
    /// Flow name.
    pub name: String,
    /// Which events it takes.
    pub when: Predicate,
    /// Typed field rules.
    pub rules: Vec<FieldRule>,
    /// Optional JSON Schema.
    pub schema: Option<Schema>,
    /// The field holding event time (epoch ms, integer).
    pub time_field: FieldPath,
    /// Stages in order.
    pub stages: Vec<Stage>,
    /// Features fed by this flow (indices).
    pub features: Vec<u16>,
}

impl Flow {
    /// Whether any stage calls out (the decoder then resolves calls first).
    pub fn enriches(&self) -> bool {
        self.stages.iter().any(|s| s.placement() == Placement::Async)
    }
}

impl Flow {
    /// Runs the stages on `ev`. Stages whose effect is outside the event
    /// (route, dedup, enrichment) are handed to `effect` with the event as
    /// edited so far; it may stop the event.
    pub fn run_stages(
        &self,
        ev: &mut Event<'_>,
        scratch: &mut String,
        mut effect: impl FnMut(&Stage, &mut Event<'_>, &mut String) -> ControlFlow<()>,
    ) -> Outcome {
        for stage in &self.stages {
            match stage {
                Stage::Filter(p) => {
                    if !p.eval(ev, scratch) {
                        return Outcome::Filtered;
                    }
                }
                Stage::Set { path, raw, kind } => ev.set(path, raw, *kind),
                Stage::Copy { from, to } => {
                    if let Some(v) = ev.get(from) {
                        let (raw, kind) = (v.raw.to_vec(), v.kind);
                        ev.set(to, &raw, kind);
                    }
                }
                Stage::Rename { from, to } => {
                    ev.rename(from, to);
                }
                Stage::Remove(paths) => {
                    for p in paths {
                        ev.remove(p);
                    }
                }
                Stage::Route(_) | Stage::Dedup(_) | Stage::EnrichHttp(_) | Stage::EnrichLookup(_) => {
                    if effect(stage, ev, scratch).is_break() {
                        return Outcome::Halted;
                    }
                }
            }
        }
        Outcome::Passed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Fields;
    use crate::predicate::Literal;

    fn p(s: &str) -> FieldPath {
        FieldPath::parse(s).unwrap()
    }

    #[test]
    fn stages_mask_route_and_filter_in_order() {
        let flow = Flow {
            name: "f".into(),
            when: Predicate::True,
            rules: vec![],
            schema: None,
            time_field: p("ts"),
            stages: vec![
                Stage::Remove(vec![p("ip")]),
                Stage::Set { path: p("email"), raw: b"\"***\"".to_vec(), kind: Kind::String },
                Stage::Route(3),
                Stage::Filter(Predicate::Eq(p("type"), Literal::Str("view".into()))),
                Stage::Route(4),
            ],
            features: vec![],
        };
        let line = br#"{"type":"click","ip":"1.1.1.1","email":"a@b"}"#;
        let mut f = Fields::default();
        let mut ev = f.decode(line, 64).unwrap();
        let mut routed = Vec::new();
        let outcome = flow.run_stages(&mut ev, &mut String::new(), |stage, ev, _| {
            let Stage::Route(sink) = stage else { panic!("only routes here") };
            let mut out = Vec::new();
            ev.write_json(&mut out);
            routed.push((*sink, String::from_utf8(out).unwrap()));
            ControlFlow::Continue(())
        });
        assert_eq!(outcome, Outcome::Filtered);
        assert_eq!(routed, vec![(3, r#"{"type":"click","email":"***"}"#.to_string())]);
    }
}
