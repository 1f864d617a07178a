//! Predicates on events: the `when` of a flow, filter stages and feature filters.
//!
//! A predicate is a small tree built at planning time from config; evaluating
//! it reads fields through [`Event::get`] and allocates nothing.

use crate::event::{Event, FieldPath};
use crate::json::Kind;

/// A constant compared with a field.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// A JSON string.
    Str(String),
    /// A JSON number.
    Num(f64),
    /// A JSON boolean.
    Bool(bool),
    /// JSON null.
    Null,
}

/// How a field is compared with numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ordering {
    /// `>`
    Gt,
    /// `>=`
    Gte,
    /// `<`
    Lt,
    /// `<=`
    Lte,
}

/// A condition on an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Predicate {
    /// Always true.
    True,
    /// The field equals the literal (same JSON type and value).
    Eq(FieldPath, Literal),
    /// The field equals one of the literals.
    In(FieldPath, Vec<Literal>),
    /// The field is a number that compares with the bound as given.
    Compare(FieldPath, Ordering, f64),
    /// The field is present (any value, null included).
    Exists(FieldPath),
    /// The string field starts with the prefix.
    Prefix(FieldPath, String),
    /// All hold.
    All(Vec<Predicate>),
    /// At least one holds.
    Any(Vec<Predicate>),
    /// Does not hold.
    Not(Box<Predicate>),
}

fn literal_matches(ev: &mut Event<'_>, path: &FieldPath, lit: &Literal, scratch: &mut String) -> bool {
    let Some(v) = ev.get(path) else { return false };
    match lit {
        Literal::Str(s) => v.str_eq(s, scratch),
        Literal::Num(n) => v.as_f64() == Some(*n),
        Literal::Bool(b) => v.kind == Kind::Bool && (v.raw == b"true") == *b,
        Literal::Null => v.kind == Kind::Null,
    }
}

impl Predicate {
    /// Evaluates the predicate on `ev`. `scratch` is reused for unescaping.
    pub fn eval(&self, ev: &mut Event<'_>, scratch: &mut String) -> bool {
        match self {
            Predicate::True => true,
            Predicate::Eq(p, lit) => literal_matches(ev, p, lit, scratch),
            Predicate::In(p, lits) => lits.iter().any(|l| literal_matches(ev, p, l, scratch)),
            Predicate::Compare(p, op, bound) => match ev.get(p).and_then(|v| v.as_f64()) {
                Some(x) => match op {
                    Ordering::Gt => x > *bound,
                    Ordering::Gte => x >= *bound,
                    Ordering::Lt => x < *bound,
                    Ordering::Lte => x <= *bound,
                },
                None => false,
            },
            Predicate::Exists(p) => ev.get(p).is_some(),
            Predicate::Prefix(p, prefix) => match ev.get(p) {
                Some(v) if v.kind == Kind::String => {
                    let mut out = Vec::new();
                    v.write_text(&mut out, scratch) && out.starts_with(prefix.as_bytes())
                }
                _ => false,
            },
            Predicate::All(ps) => ps.iter().all(|p| p.eval(ev, scratch)),
            Predicate::Any(ps) => ps.iter().any(|p| p.eval(ev, scratch)),
            Predicate::Not(p) => !p.eval(ev, scratch),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Fields;

    fn p(s: &str) -> FieldPath {
        FieldPath::parse(s).unwrap()
    }

    #[test]
    fn evaluates_comparisons_membership_and_logic() {
        let line = br#"{"type":"view","price":12.5,"ctx":{"d":"tv"},"n":null,"ok":true}"#;
        let mut f = Fields::default();
        let mut ev = f.decode(line, 64).unwrap();
        let s = &mut String::new();
        let view = Literal::Str("view".into());
        assert!(Predicate::Eq(p("type"), view.clone()).eval(&mut ev, s));
        assert!(Predicate::In(p("type"), vec![Literal::Str("click".into()), view]).eval(&mut ev, s));
        assert!(Predicate::Compare(p("price"), Ordering::Gt, 10.0).eval(&mut ev, s));
        assert!(!Predicate::Compare(p("type"), Ordering::Gt, 10.0).eval(&mut ev, s));
        assert!(Predicate::Eq(p("ctx.d"), Literal::Str("tv".into())).eval(&mut ev, s));
        assert!(Predicate::Eq(p("n"), Literal::Null).eval(&mut ev, s));
        assert!(Predicate::Eq(p("ok"), Literal::Bool(true)).eval(&mut ev, s));
        assert!(Predicate::Not(Box::new(Predicate::Exists(p("missing")))).eval(&mut ev, s));
        assert!(Predicate::Prefix(p("type"), "vi".into()).eval(&mut ev, s));
        assert!(!Predicate::All(vec![Predicate::True, Predicate::Exists(p("zz"))]).eval(&mut ev, s));
        // A number is never equal to a string with the same text.
        assert!(!Predicate::Eq(p("price"), Literal::Str("12.5".into())).eval(&mut ev, s));
    }
}
