//! Enrichment stages as the engine sees them: what to ask an HTTP service
//! (a request rendered from the event), what to take from its answer (JSON
//! pointers into the response, written to event fields), and what to do when
//! no answer comes (the failure policy).
//!
//! The call itself is not here: the engine has no sockets and no async
//! runtime. The decoder hands every request of a chunk to an [`Enricher`]
//! (the binary's, on its I/O runtime, with retries, a circuit breaker and a
//! cache), waits until each has settled, and then runs the chunk's lines in
//! order with the answers in hand. So events leave an enrichment stage in
//! input order, and a checkpoint barrier never finds a call in flight.

use std::io::Write;

use crate::event::{Event, FieldPath};
use crate::features::emit::write_json_str;
use crate::json::Kind;

/// What happens to an event whose call failed (retries spent, breaker open,
/// a 4xx, an answer that is not JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// The event goes to the dead-letter sink with the reason and the last
    /// error, and goes no further.
    DeadLetter,
    /// The event goes on without the fields, marked with the stage's name in
    /// the stage's `mark` field.
    Skip,
    /// The pipeline stops: for flows where an unenriched event is worse than none.
    Fail,
}

/// One piece of a request template.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    /// Literal bytes, copied as they are.
    Literal(Vec<u8>),
    /// A field's text: percent-encoded in a URL, JSON-escaped inside a body string.
    Text(FieldPath),
    /// A field's JSON value as it is (body only; a missing field renders `null`).
    Json(FieldPath),
}

/// How a template's field texts are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// URL: field texts are percent-encoded (all but RFC 3986's unreserved bytes).
    Url,
    /// JSON body: field texts are the content of a JSON string.
    Json,
}

/// A request URL or body with holes for event fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    /// The pieces, in order.
    pub parts: Vec<Part>,
    /// How field texts are encoded.
    pub encoding: Encoding,
}

impl Template {
    /// Parses a URL template: `{path}` is a field's text, `{{` and `}}` are
    /// literal braces. Errors name the problem.
    pub fn url(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = Vec::new();
        let mut rest = text;
        while let Some(i) = rest.find(['{', '}']) {
            literal.extend_from_slice(&rest.as_bytes()[..i]);
            let tail = &rest[i..];
            if tail.starts_with("{{") || tail.starts_with("}}") {
                literal.push(tail.as_bytes()[0]);
                rest = &tail[2..];
                continue;
            }
            if tail.starts_with('}') {
                return Err(format!(
                    "unmatched '}}' at byte {} (write '}}}}' for a literal brace)",
                    text.len() - tail.len()
                ));
            }
            let Some(end) = tail.find('}') else {
                return Err(format!("unclosed '{{' at byte {}", text.len() - tail.len()));
            };
            let path = FieldPath::parse(&tail[1..end]).map_err(|e| format!("field {:?}: {e}", &tail[1..end]))?;
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(Part::Text(path));
            rest = &tail[end + 1..];
        }
        literal.extend_from_slice(rest.as_bytes());
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Self { parts, encoding: Encoding::Url })
    }

    /// A JSON body template from its pieces (the planner builds them from a
    /// TOML table: a string that is exactly `{path}` becomes [`Part::Json`],
    /// `{path}` inside a longer string becomes [`Part::Text`]).
    pub fn json(parts: Vec<Part>) -> Self {
        Self { parts, encoding: Encoding::Json }
    }

    /// Fields the template reads.
    pub fn fields(&self) -> impl Iterator<Item = &FieldPath> {
        self.parts.iter().filter_map(|p| match p {
            Part::Text(f) | Part::Json(f) => Some(f),
            Part::Literal(_) => None,
        })
    }

    /// Renders into `out`. A URL field that is missing (or null) is an
    /// error naming it: the call cannot be made.
    pub fn render(&self, ev: &mut Event<'_>, out: &mut Vec<u8>, scratch: &mut String) -> Result<(), String> {
        let mut text = Vec::new();
        for part in &self.parts {
            match part {
                Part::Literal(b) => out.extend_from_slice(b),
                Part::Json(path) => match ev.get(path) {
                    Some(v) => out.extend_from_slice(v.raw),
                    None => out.extend_from_slice(b"null"),
                },
                Part::Text(path) => {
                    text.clear();
                    match ev.get(path) {
                        Some(v) if v.kind != Kind::Null => {
                            if !v.write_text(&mut text, scratch) {
                                return Err(format!("field {path} is not valid text"));
                            }
                        }
                        _ if self.encoding == Encoding::Json => {}
                        _ => return Err(format!("field {path} is missing")),
                    }
                    match self.encoding {
                        Encoding::Url => percent_encode(&text, out),
                        Encoding::Json => {
                            // write_json_str quotes; the template's string supplies them.
                            let start = out.len();
                            write_json_str(out, &text);
                            out.pop();
                            out.remove(start);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Appends `text` percent-encoded: RFC 3986's unreserved bytes stay, every
/// other byte becomes `%XX`.
fn percent_encode(text: &[u8], out: &mut Vec<u8>) {
    for &b in text {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// An HTTP enrichment stage.
#[derive(Debug, Clone)]
pub struct EnrichHttp {
    /// Index among the pipeline's enrichment stages (the [`Enricher`]'s client).
    pub id: u16,
    /// Stage name, for the mark, the DLQ reason and metrics.
    pub name: String,
    /// The request URL.
    pub url: Template,
    /// The request body, if the method has one.
    pub body: Option<Template>,
    /// Event field ← JSON pointer into the response.
    pub fields: Vec<(FieldPath, String)>,
    /// What to do when the call fails.
    pub on_failure: FailurePolicy,
    /// With [`FailurePolicy::Skip`], the field that gets the stage's name.
    pub mark: FieldPath,
}

/// A rendered call, for the [`Enricher`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EnrichRequest {
    /// The stage ([`EnrichHttp::id`]).
    pub stage: u16,
    /// The URL.
    pub url: String,
    /// The body, if any.
    pub body: Option<Vec<u8>>,
}

/// Makes enrichment calls for a decoder.
pub trait Enricher {
    /// Makes every call (concurrently, as the implementation bounds it) and
    /// returns, in request order, each response's body or the last error
    /// once retries are spent or the breaker refused it. Blocks until all
    /// have settled. Identical requests in one batch may share one call
    /// (they are lookups made at the same moment).
    fn call(&mut self, requests: Vec<EnrichRequest>) -> Vec<Result<Vec<u8>, String>>;
}

/// A settled call, as the stage uses it.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The values to write, one per [`EnrichHttp::fields`] entry (`None`
    /// when the response has nothing at that pointer).
    Fields(Vec<Option<(Vec<u8>, Kind)>>),
    /// The call failed; the policy decides.
    Failed(String),
}

impl EnrichHttp {
    /// Turns a response body into the values to write.
    pub fn answer(&self, response: Result<Vec<u8>, String>) -> Answer {
        let body = match response {
            Ok(body) => body,
            Err(e) => return Answer::Failed(e),
        };
        let doc: serde_json::Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                let shown = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
                return Answer::Failed(format!("the response is not JSON ({e}): {shown}"));
            }
        };
        let values = self
            .fields
            .iter()
            .map(|(_, pointer)| {
                let v = doc.pointer(pointer)?;
                let kind = match v {
                    serde_json::Value::Null => Kind::Null,
                    serde_json::Value::Bool(_) => Kind::Bool,
                    serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => Kind::Integer,
                    serde_json::Value::Number(_) => Kind::Float,
                    serde_json::Value::String(_) => Kind::String,
                    serde_json::Value::Array(_) => Kind::Array,
                    serde_json::Value::Object(_) => Kind::Object,
                };
                serde_json::to_vec(v).ok().map(|raw| (raw, kind))
            })
            .collect();
        Answer::Fields(values)
    }

    /// Writes an answer's fields into the event.
    pub fn apply(&self, values: &[Option<(Vec<u8>, Kind)>], ev: &mut Event<'_>) {
        for ((path, _), value) in self.fields.iter().zip(values) {
            if let Some((raw, kind)) = value {
                ev.set(path, raw, *kind);
            }
        }
    }

    /// Marks an event that goes on without this stage's fields.
    pub fn mark(&self, ev: &mut Event<'_>) {
        let mut raw = Vec::with_capacity(self.name.len() + 2);
        write_json_str(&mut raw, self.name.as_bytes());
        ev.set(&self.mark, &raw, Kind::String);
    }

    /// Renders the call for `ev`, or says why it cannot be made.
    pub fn request(&self, ev: &mut Event<'_>, scratch: &mut String) -> Result<EnrichRequest, String> {
        let mut url = Vec::new();
        self.url.render(ev, &mut url, scratch).map_err(|e| format!("URL: {e}"))?;
        let body = match &self.body {
            Some(t) => {
                let mut b = Vec::new();
                t.render(ev, &mut b, scratch).map_err(|e| format!("body: {e}"))?;
                Some(b)
            }
            None => None,
        };
        let url = String::from_utf8(url).map_err(|_| "URL: not UTF-8".to_string())?;
        Ok(EnrichRequest { stage: self.id, url, body })
    }

    /// What shapes this stage, for pipeline fingerprints (the answers are
    /// not state: a restored job calls again).
    pub fn definition(&self) -> String {
        format!("enrich_http {}", self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Fields;

    fn path(s: &str) -> FieldPath {
        FieldPath::parse(s).unwrap()
    }

    #[test]
    fn url_template_percent_encodes_field_text_and_keeps_escaped_braces() {
        let t = Template::url("http://h/items/{item_id}?q={{x}}&u={user.name}").unwrap();
        let mut f = Fields::default();
        let mut ev = f.decode(br#"{"item_id":"a b/c","user":{"name":"\u00e9"}}"#, 8).unwrap();
        let mut out = Vec::new();
        t.render(&mut ev, &mut out, &mut String::new()).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "http://h/items/a%20b%2Fc?q={x}&u=%C3%A9");
    }

    #[test]
    fn url_template_errors_name_the_problem() {
        assert!(Template::url("http://h/{item").unwrap_err().contains("unclosed"));
        assert!(Template::url("http://h/}").unwrap_err().contains("unmatched"));
        let t = Template::url("http://h/{item_id}").unwrap();
        let mut f = Fields::default();
        let mut ev = f.decode(br#"{"x":1}"#, 8).unwrap();
        let err = t.render(&mut ev, &mut Vec::new(), &mut String::new()).unwrap_err();
        assert_eq!(err, "field item_id is missing");
    }

    #[test]
    fn json_body_inserts_values_and_escaped_text() {
        let t = Template::json(vec![
            Part::Literal(br#"{"id":"#.to_vec()),
            Part::Json(path("n")),
            Part::Literal(br#","label":"item-"#.to_vec()),
            Part::Text(path("s")),
            Part::Literal(br#"","none":"#.to_vec()),
            Part::Json(path("missing")),
            Part::Literal(b"}".to_vec()),
        ]);
        let mut f = Fields::default();
        let mut ev = f.decode(br#"{"n":7,"s":"a\"b"}"#, 8).unwrap();
        let mut out = Vec::new();
        t.render(&mut ev, &mut out, &mut String::new()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v, serde_json::json!({"id": 7, "label": "item-a\"b", "none": null}));
    }

    #[test]
    fn answers_take_pointed_values_and_reject_non_json() {
        let stage = EnrichHttp {
            id: 0,
            name: "catalog".into(),
            url: Template::url("http://h/{id}").unwrap(),
            body: None,
            fields: vec![(path("item.category"), "/category".into()), (path("price"), "/offer/price".into())],
            on_failure: FailurePolicy::Skip,
            mark: path("enrich_skipped"),
        };
        let answer = stage.answer(Ok(br#"{"category":"shoes","offer":{}}"#.to_vec()));
        let Answer::Fields(values) = answer else { panic!("expected fields") };
        assert_eq!(values, vec![Some((br#""shoes""#.to_vec(), Kind::String)), None]);
        let mut f = Fields::default();
        let mut ev = f.decode(br#"{"id":"i1"}"#, 8).unwrap();
        stage.apply(&values, &mut ev);
        stage.mark(&mut ev);
        let mut out = Vec::new();
        ev.write_json(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"id":"i1","item":{"category":"shoes"},"enrich_skipped":"catalog"}"#
        );
        let Answer::Failed(why) = stage.answer(Ok(b"<html>".to_vec())) else { panic!("expected a failure") };
        assert!(why.starts_with("the response is not JSON"), "{why}");
    }
}
