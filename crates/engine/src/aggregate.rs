//! Aggregate functions and their mergeable accumulators.
//!
//! Every accumulator can absorb an input, merge another of its kind (panes
//! into windows, sessions into sessions) and report a value. Numeric inputs
//! arrive as `f64`; `distinct` and `last_n` take the field's text.

use std::collections::VecDeque;

use hyperloglogplus::{HyperLogLog, HyperLogLogPlus};

/// What to compute.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AggFn {
    /// Number of events.
    Count,
    /// Sum of a numeric field.
    Sum,
    /// Minimum of a numeric field.
    Min,
    /// Maximum of a numeric field.
    Max,
    /// Mean of a numeric field.
    Mean,
    /// Approximate number of distinct values (HyperLogLog++ at this precision, 4..=18).
    Distinct(u8),
    /// The last `n` values by event time, newest first.
    LastN(usize),
    /// Count decayed exponentially with this half-life in ms, as of the newest event.
    DecayedCount(f64),
}

impl AggFn {
    /// The config name.
    pub fn name(&self) -> &'static str {
        match self {
            AggFn::Count => "count",
            AggFn::Sum => "sum",
            AggFn::Min => "min",
            AggFn::Max => "max",
            AggFn::Mean => "mean",
            AggFn::Distinct(_) => "distinct",
            AggFn::LastN(_) => "last_n",
            AggFn::DecayedCount(_) => "decayed_count",
        }
    }

    /// Whether the function reads a field's value.
    pub fn needs_field(&self) -> bool {
        !matches!(self, AggFn::Count | AggFn::DecayedCount(_))
    }

    /// Whether the field must be numeric.
    pub fn numeric(&self) -> bool {
        matches!(self, AggFn::Sum | AggFn::Min | AggFn::Max | AggFn::Mean)
    }
}

/// Deterministic hasher (SipHash with fixed keys) so that sketches built in
/// different panes, shards or processes merge, and so that sketches snapshot.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct SketchHasher;

impl std::hash::BuildHasher for SketchHasher {
    type Hasher = std::collections::hash_map::DefaultHasher;

    fn build_hasher(&self) -> Self::Hasher {
        std::collections::hash_map::DefaultHasher::new()
    }
}
/// A distinct-count sketch.
pub type Sketch = HyperLogLogPlus<u64, SketchHasher>;

/// Values kept exactly before a distinct count switches to a sketch.
const EXACT_DISTINCT: usize = 64;

/// A distinct count: exact while small (the common case for one key in one
/// pane, where a sketch costs far more), a HyperLogLog++ sketch beyond.
/// The small set is hand-written because no crate offers the switch.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum Distinct {
    /// Up to `EXACT_DISTINCT` 64-bit hashes of the values seen.
    Exact(Vec<u64>),
    /// The sketch.
    Sketch(Box<Sketch>),
}

impl Distinct {
    fn sketch(precision: u8, hashes: &[u64]) -> Box<Sketch> {
        let mut h = Box::new(HyperLogLogPlus::new(precision, SketchHasher).unwrap_or_else(|_| unreachable_precision()));
        for x in hashes {
            h.insert(x);
        }
        h
    }

    fn insert(&mut self, precision: u8, x: u64) {
        match self {
            Distinct::Exact(v) => {
                if !v.contains(&x) {
                    v.push(x);
                    if v.len() > EXACT_DISTINCT {
                        *self = Distinct::Sketch(Self::sketch(precision, v));
                    }
                }
            }
            Distinct::Sketch(h) => h.insert(&x),
        }
    }

    fn merge(&mut self, precision: u8, other: &Distinct) {
        match other {
            Distinct::Exact(xs) => {
                for &x in xs {
                    self.insert(precision, x);
                }
            }
            Distinct::Sketch(theirs) => {
                if let Distinct::Exact(v) = self {
                    *self = Distinct::Sketch(Self::sketch(precision, v));
                }
                if let Distinct::Sketch(h) = self {
                    // Same precision and hasher by construction.
                    let _ = h.merge(theirs);
                }
            }
        }
    }

    fn count(&self) -> u64 {
        match self {
            Distinct::Exact(v) => v.len() as u64,
            Distinct::Sketch(h) => h.as_ref().clone().count().round() as u64,
        }
    }
}

/// One input value for an accumulator.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// Nothing (count).
    None,
    /// A number.
    Num(f64),
    /// A value's text.
    Text(&'a [u8]),
}

/// A running aggregate.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum Acc {
    /// Count.
    Count(u64),
    /// Sum.
    Sum(f64),
    /// Min.
    Min(f64),
    /// Max.
    Max(f64),
    /// Sum and count.
    Mean(f64, u64),
    /// Exact small set or sketch.
    Distinct(Box<Distinct>),
    /// (ts, value) newest last, at most n.
    LastN(Box<VecDeque<(i64, Box<str>)>>),
    /// Decayed value as of `at`.
    Decayed {
        /// The value at `at`.
        value: f64,
        /// Event time the value refers to.
        at: i64,
    },
}

/// A reported value.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum AggValue {
    /// An exact count.
    Int(u64),
    /// A float (NaN never; empty means min/max had no input).
    Float(f64),
    /// A list of texts.
    List(Vec<String>),
}

impl std::fmt::Display for AggValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AggValue::Int(n) => write!(f, "{n}"),
            AggValue::Float(x) => write!(f, "{x}"),
            AggValue::List(v) => f.write_str(&v.join("|")),
        }
    }
}

fn decay(value: f64, from: i64, to: i64, half_life: f64) -> f64 {
    if to <= from { value } else { value * (-(to - from) as f64 * std::f64::consts::LN_2 / half_life).exp() }
}

impl Acc {
    /// An empty accumulator for `f`.
    pub fn new(f: &AggFn) -> Acc {
        match *f {
            AggFn::Count => Acc::Count(0),
            AggFn::Sum => Acc::Sum(0.0),
            AggFn::Min => Acc::Min(f64::INFINITY),
            AggFn::Max => Acc::Max(f64::NEG_INFINITY),
            AggFn::Mean => Acc::Mean(0.0, 0),
            AggFn::Distinct(_) => Acc::Distinct(Box::new(Distinct::Exact(Vec::new()))),
            AggFn::LastN(n) => Acc::LastN(Box::new(VecDeque::with_capacity(n.min(16)))),
            AggFn::DecayedCount(_) => Acc::Decayed { value: 0.0, at: i64::MIN },
        }
    }

    /// Absorbs one input at event time `ts`.
    #[inline]
    pub fn update(&mut self, f: &AggFn, ts: i64, input: Input<'_>) {
        match (self, input) {
            (Acc::Count(n), _) => *n += 1,
            (Acc::Sum(s), Input::Num(x)) => *s += x,
            (Acc::Min(m), Input::Num(x)) => *m = m.min(x),
            (Acc::Max(m), Input::Num(x)) => *m = m.max(x),
            (Acc::Mean(s, n), Input::Num(x)) => {
                *s += x;
                *n += 1;
            }
            (Acc::Distinct(d), Input::Text(t)) => {
                let AggFn::Distinct(p) = *f else { return };
                d.insert(p, crate::features::keys::hash_bytes(t));
            }
            (Acc::LastN(q), Input::Text(t)) => {
                let AggFn::LastN(cap) = *f else { return };
                let pos = q.partition_point(|(at, _)| *at <= ts);
                if q.len() < cap || pos > 0 {
                    q.insert(pos, (ts, String::from_utf8_lossy(t).into()));
                    if q.len() > cap {
                        q.pop_front();
                    }
                }
            }
            (Acc::Decayed { value, at }, _) => {
                let AggFn::DecayedCount(h) = *f else { return };
                if *at == i64::MIN {
                    *value = 1.0;
                    *at = ts;
                } else if ts >= *at {
                    *value = decay(*value, *at, ts, h) + 1.0;
                    *at = ts;
                } else {
                    *value += decay(1.0, ts, *at, h);
                }
            }
            _ => {}
        }
    }

    /// Merges `other` (of the same function) into `self`.
    pub fn merge(&mut self, f: &AggFn, other: &Acc) {
        match (self, other) {
            (Acc::Count(a), Acc::Count(b)) => *a += b,
            (Acc::Sum(a), Acc::Sum(b)) => *a += b,
            (Acc::Min(a), Acc::Min(b)) => *a = a.min(*b),
            (Acc::Max(a), Acc::Max(b)) => *a = a.max(*b),
            (Acc::Mean(s, n), Acc::Mean(s2, n2)) => {
                *s += s2;
                *n += n2;
            }
            (Acc::Distinct(a), Acc::Distinct(b)) => {
                let AggFn::Distinct(p) = *f else { return };
                a.merge(p, b);
            }
            (Acc::LastN(a), Acc::LastN(b)) => {
                let AggFn::LastN(cap) = *f else { return };
                for (ts, v) in b.iter() {
                    let pos = a.partition_point(|(at, _)| *at <= *ts);
                    a.insert(pos, (*ts, v.clone()));
                }
                while a.len() > cap {
                    a.pop_front();
                }
            }
            (Acc::Decayed { value, at }, Acc::Decayed { value: v2, at: at2 }) => {
                let AggFn::DecayedCount(h) = *f else { return };
                if *at2 == i64::MIN {
                } else if *at == i64::MIN {
                    *value = *v2;
                    *at = *at2;
                } else if *at2 > *at {
                    *value = decay(*value, *at, *at2, h) + v2;
                    *at = *at2;
                } else {
                    *value += decay(*v2, *at2, *at, h);
                }
            }
            _ => {}
        }
    }

    /// Whether this accumulator, read back from a snapshot, is one that `f`
    /// makes: the same kind, at most `n` last values, a decay time in range.
    pub fn fits(&self, f: &AggFn) -> bool {
        match (self, f) {
            (Acc::Count(_), AggFn::Count)
            | (Acc::Sum(_), AggFn::Sum)
            | (Acc::Min(_), AggFn::Min)
            | (Acc::Max(_), AggFn::Max)
            | (Acc::Mean(..), AggFn::Mean)
            | (Acc::Distinct(_), AggFn::Distinct(_)) => true,
            (Acc::LastN(q), AggFn::LastN(n)) => q.len() <= *n,
            (Acc::Decayed { at, .. }, AggFn::DecayedCount(_)) => *at == i64::MIN || crate::time::in_state_range(*at),
            _ => false,
        }
    }

    /// The value to report, consuming the accumulator (saves a sketch copy).
    pub fn into_value(self) -> Option<AggValue> {
        match self {
            Acc::Distinct(d) => match *d {
                Distinct::Sketch(mut h) => Some(AggValue::Int(h.count().round() as u64)),
                exact => Some(AggValue::Int(exact.count())),
            },
            other => other.value(),
        }
    }

    /// The value to report. `None` for min/max/mean without input.
    pub fn value(&self) -> Option<AggValue> {
        Some(match self {
            Acc::Count(n) => AggValue::Int(*n),
            Acc::Sum(s) => AggValue::Float(*s),
            Acc::Min(m) | Acc::Max(m) if m.is_infinite() => return None,
            Acc::Min(m) | Acc::Max(m) => AggValue::Float(*m),
            Acc::Mean(_, 0) => return None,
            Acc::Mean(s, n) => AggValue::Float(s / *n as f64),
            Acc::Distinct(d) => AggValue::Int(d.count()),
            Acc::LastN(q) => AggValue::List(q.iter().rev().map(|(_, v)| v.to_string()).collect()),
            Acc::Decayed { at: i64::MIN, .. } => AggValue::Float(0.0),
            Acc::Decayed { value, .. } => AggValue::Float(*value),
        })
    }
}

#[cold]
fn unreachable_precision() -> Sketch {
    // Planning rejects precisions outside 4..=18; 14 is a safe fallback.
    HyperLogLogPlus::new(14, SketchHasher).unwrap_or_else(|_| panic!("HLL precision 14 is valid"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(f: AggFn, xs: &[(i64, f64)]) -> Acc {
        let mut a = Acc::new(&f);
        for &(ts, x) in xs {
            a.update(&f, ts, Input::Num(x));
        }
        a
    }

    #[test]
    fn last_n_keeps_newest_by_event_time() {
        let f = AggFn::LastN(2);
        let mut a = Acc::new(&f);
        for (ts, v) in [(3, "c"), (1, "a"), (2, "b")] {
            a.update(&f, ts, Input::Text(v.as_bytes()));
        }
        assert_eq!(a.value(), Some(AggValue::List(vec!["c".into(), "b".into()])));
    }

    #[test]
    fn distinct_counts_approximately_and_merges() {
        let f = AggFn::Distinct(14);
        let (mut a, mut b) = (Acc::new(&f), Acc::new(&f));
        for i in 0..5000 {
            a.update(&f, 0, Input::Text(format!("u{i}").as_bytes()));
            b.update(&f, 0, Input::Text(format!("u{}", i + 2500).as_bytes()));
        }
        a.merge(&f, &b);
        let Some(AggValue::Int(n)) = a.value() else { panic!() };
        assert!((7300..7700).contains(&n), "{n}");
    }

    #[test]
    fn distinct_is_exact_while_small_and_switches_to_a_sketch() {
        let f = AggFn::Distinct(12);
        let mut a = Acc::new(&f);
        for i in 0..50 {
            a.update(&f, 0, Input::Text(format!("i{}", i % 40).as_bytes()));
        }
        assert_eq!(a.value(), Some(AggValue::Int(40)));
        let mut b = Acc::new(&f);
        for i in 0..1000 {
            b.update(&f, 0, Input::Text(format!("i{i}").as_bytes()));
        }
        assert!(matches!(&b, Acc::Distinct(d) if matches!(**d, Distinct::Sketch(_))));
        a.merge(&f, &b);
        let Some(AggValue::Int(n)) = a.into_value() else { panic!() };
        assert!((960..1040).contains(&n), "{n}");
    }

    #[test]
    fn decayed_count_halves_per_half_life() {
        let f = AggFn::DecayedCount(1000.0);
        let mut a = Acc::new(&f);
        a.update(&f, 0, Input::None);
        a.update(&f, 1000, Input::None);
        let Some(AggValue::Float(v)) = a.value() else { panic!() };
        assert!((v - 1.5).abs() < 1e-9, "{v}");
    }

    proptest! {
        /// Merging partials of any split equals aggregating everything at once.
        #[test]
        fn merge_of_split_equals_whole(xs in prop::collection::vec((0i64..10_000, -1e3f64..1e3), 1..60), cut in any::<prop::sample::Index>()) {
            let cut = cut.index(xs.len());
            for f in [AggFn::Count, AggFn::Sum, AggFn::Min, AggFn::Max, AggFn::Mean, AggFn::DecayedCount(500.0)] {
                let whole = run(f, &xs);
                let mut left = run(f, &xs[..cut]);
                left.merge(&f, &run(f, &xs[cut..]));
                match (whole.value(), left.value()) {
                    (Some(AggValue::Float(a)), Some(AggValue::Float(b))) => prop_assert!((a - b).abs() <= 1e-6 * a.abs().max(1.0), "{f:?}: {a} vs {b}"),
                    (a, b) => prop_assert_eq!(a, b),
                }
            }
        }
    }
}
