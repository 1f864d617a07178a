//! Flows and their stages: the configuration-driven, per-event steps between
//! decoding and keyed state.
//!
//! A flow is chosen by its `when` predicate (first match in config order),
//! checks its field rules (and JSON Schema, if any), then runs its stages in
//! order. Stages are one enum and one `match` (adding one means a variant, a
//! branch and a test). Every stage here is stateless and runs on the decoder
//! threads. Where later stages go: a keyed stage (dedup) runs on the shard
//! that owns its key, an async stage (HTTP enrichment) is handed to the I/O
//! runtime with a bounded number in flight; `Stage::placement` tells the
//! planner which, so a flow is cut into segments at those points.

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
        Placement::Inline
    }
}

/// What happened to an event in a flow's stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It went through every stage.
    Passed,
    /// A filter dropped it.
    Filtered,
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
    /// Runs the stages on `ev`; routed copies are appended via `route(sink, ev)`.
    pub fn run_stages(
        &self,
        ev: &mut Event<'_>,
        scratch: &mut String,
        mut route: impl FnMut(u16, &Event<'_>),
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
                Stage::Route(sink) => route(*sink, ev),
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
        let outcome = flow.run_stages(&mut ev, &mut String::new(), |sink, ev| {
            let mut out = Vec::new();
            ev.write_json(&mut out);
            routed.push((sink, String::from_utf8(out).unwrap()));
        });
        assert_eq!(outcome, Outcome::Filtered);
        assert_eq!(routed, vec![(3, r#"{"type":"click","email":"***"}"#.to_string())]);
    }
}
