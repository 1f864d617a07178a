//! Typed field rules: the fast, per-flow validation of decoded events, and
//! JSON Schema for flows that declare one.
//!
//! A rule names a field path, the JSON type it must have (checked, never
//! coerced) and whether it is required. A failed rule is not an error: it is
//! a [`Rejection`] whose reason goes to the dead-letter sink.

use crate::event::{Event, FieldPath};
use crate::json::Kind;

/// The JSON type a field must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// A JSON string.
    String,
    /// A JSON number without fraction or exponent that fits in i64.
    Integer,
    /// Any JSON number.
    Number,
    /// `true` or `false`.
    Boolean,
    /// An object.
    Object,
    /// An array.
    Array,
    /// Any value.
    Any,
}

impl FieldType {
    /// The name used in config and in reasons.
    pub fn name(self) -> &'static str {
        match self {
            FieldType::String => "string",
            FieldType::Integer => "integer",
            FieldType::Number => "number",
            FieldType::Boolean => "boolean",
            FieldType::Object => "object",
            FieldType::Array => "array",
            FieldType::Any => "any",
        }
    }
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::String => "string",
        Kind::Integer => "integer",
        Kind::Float => "number",
        Kind::Bool => "boolean",
        Kind::Null => "null",
        Kind::Object => "object",
        Kind::Array => "array",
    }
}

/// One rule: `path` must have type `ty` (and be present when `required`).
#[derive(Debug, Clone, PartialEq)]
pub struct FieldRule {
    /// The field.
    pub path: FieldPath,
    /// Its type.
    pub ty: FieldType,
    /// Whether it must be present.
    pub required: bool,
}

/// Why an event was rejected; the text goes to the DLQ as `reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection(pub String);

impl FieldRule {
    /// Checks the rule; `Err` carries the reason.
    pub fn check(&self, ev: &mut Event<'_>) -> Result<(), Rejection> {
        let Some(v) = ev.get(&self.path) else {
            return if self.required { Err(Rejection(format!("missing field {}", self.path))) } else { Ok(()) };
        };
        let ok = match self.ty {
            FieldType::String => v.kind == Kind::String,
            FieldType::Integer => v.as_i64().is_some(),
            FieldType::Number => matches!(v.kind, Kind::Integer | Kind::Float),
            FieldType::Boolean => v.kind == Kind::Bool,
            FieldType::Object => v.kind == Kind::Object,
            FieldType::Array => v.kind == Kind::Array,
            FieldType::Any => true,
        };
        if ok {
            Ok(())
        } else if self.ty == FieldType::Integer && v.kind == Kind::Integer {
            Err(Rejection(format!("field {}: integer out of range", self.path)))
        } else {
            Err(Rejection(format!("field {}: expected {}, got {}", self.path, self.ty.name(), kind_name(v.kind))))
        }
    }
}

/// A compiled JSON Schema. Checking one needs a DOM of the event, so it costs
/// more than typed rules; flows that need speed should prefer the rules.
pub struct Schema {
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Schema")
    }
}

impl Schema {
    /// Compiles a schema document once.
    pub fn compile(schema: &serde_json::Value) -> Result<Self, String> {
        jsonschema::validator_for(schema).map(|validator| Self { validator }).map_err(|e| e.to_string())
    }

    /// Validates the event's JSON text.
    pub fn check(&self, json: &[u8]) -> Result<(), Rejection> {
        let doc: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| Rejection(format!("schema: invalid JSON: {e}")))?;
        match self.validator.iter_errors(&doc).next() {
            None => Ok(()),
            Some(e) => Err(Rejection(format!("schema: {} at {}", e, e.instance_path()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Fields;

    fn rule(p: &str, ty: FieldType) -> FieldRule {
        FieldRule { path: FieldPath::parse(p).unwrap(), ty, required: true }
    }

    #[test]
    fn checks_types_without_coercion() {
        let line = br#"{"user_id":"u1","ts":"123","n":1.5,"big":99999999999999999999}"#;
        let mut f = Fields::default();
        let mut ev = f.decode(line, 64).unwrap();
        assert!(rule("user_id", FieldType::String).check(&mut ev).is_ok());
        assert_eq!(
            rule("ts", FieldType::Integer).check(&mut ev).unwrap_err().0,
            "field ts: expected integer, got string"
        );
        assert_eq!(
            rule("n", FieldType::Integer).check(&mut ev).unwrap_err().0,
            "field n: expected integer, got number"
        );
        assert!(rule("n", FieldType::Number).check(&mut ev).is_ok());
        assert_eq!(rule("big", FieldType::Integer).check(&mut ev).unwrap_err().0, "field big: integer out of range");
        assert_eq!(rule("item_id", FieldType::String).check(&mut ev).unwrap_err().0, "missing field item_id");
        let optional = FieldRule { required: false, ..rule("item_id", FieldType::String) };
        assert!(optional.check(&mut ev).is_ok());
    }

    #[test]
    fn schema_rejects_with_a_reason() {
        let schema = Schema::compile(&serde_json::json!({
            "type": "object", "required": ["user_id"], "properties": {"user_id": {"type": "string"}}
        }))
        .unwrap();
        assert!(schema.check(br#"{"user_id":"u1"}"#).is_ok());
        let r = schema.check(br#"{"user_id":7}"#).unwrap_err();
        assert!(r.0.contains("user_id"), "{}", r.0);
    }
}
