//! Enrichment: `type = "enrich_http"` stages, planned into the engine's
//! [`EnrichHttp`] (what to ask, what to take, what to do on failure) and the
//! I/O client's [`HttpEnrichConfig`] (how to call: timeout, in-flight bound,
//! retries, breaker, cache); and `[tables.NAME]` with the
//! `type = "enrich_lookup"` stages that read them.

use std::collections::BTreeMap;
use std::time::Duration;

use freshet_engine::enrich::{EnrichHttp, FailurePolicy, Part, Template};
use freshet_engine::features::emit::write_json_str;
use freshet_engine::lookup::{EnrichLookup, Missing, TableSpec};
use freshet_io::enrich::{self as io, HttpEnrichConfig, Method};
use serde::Deserialize;

use super::plan::Planner;

/// An `enrich_http` stage.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrichHttpConfig {
    /// Stage name, for metrics, logs, the DLQ reason and the skip mark; unique
    /// in the pipeline. Default: `<flow>_enrich_<stage index>`.
    pub name: Option<String>,
    /// The URL: `{field}` is an event field's text, percent-encoded
    /// (`"${ENRICH_URL}/items/{item_id}"`). Required.
    pub url: String,
    /// "GET", "POST" or "PUT". Default: "GET".
    pub method: Option<String>,
    /// Request headers (values may use `${VAR}`). Default: none.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// JSON body (POST and PUT): a table whose string values that are
    /// exactly `"{field}"` become that field's JSON value, and whose other
    /// strings may hold `{field}` texts. Default: none.
    pub body: Option<toml::Value>,
    /// Event field ← JSON pointer into the response
    /// (`{ "item.category" = "/category" }`). At least one. Required.
    pub fields: BTreeMap<String, String>,
    /// Per attempt. Default: "1s".
    pub timeout: Option<String>,
    /// Calls in flight at most (across decoders); more wait. Default: 256.
    pub max_in_flight: Option<usize>,
    /// When the call fails for good: "dlq" (the event goes to the
    /// dead-letter sink with the reason), "skip" (it goes on without the
    /// fields, marked) or "fail" (the job stops). Default: "dlq".
    pub on_failure: Option<String>,
    /// With `on_failure = "skip"`, the field set to the stage's name. Default: "enrich_skipped".
    pub mark: Option<String>,
    /// Retries of timeouts, connection errors, 429 and 5xx.
    #[serde(default)]
    pub retry: RetryConfig,
    /// The circuit breaker.
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// A response cache keyed by the rendered request. Default: none.
    pub cache: Option<CacheConfig>,
}

/// `retry`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Retries after the first attempt. Default: 3.
    pub max_retries: Option<usize>,
    /// First backoff. Default: "10ms".
    pub min_delay: Option<String>,
    /// Longest backoff. Default: "1s".
    pub max_delay: Option<String>,
    /// Randomise each backoff. Default: true.
    pub jitter: Option<bool>,
}

/// `breaker`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Default: true.
    pub enabled: Option<bool>,
    /// Calls in the sliding window. Default: 100.
    pub window: Option<usize>,
    /// Calls recorded before the rate is judged. Default: 20.
    pub min_calls: Option<usize>,
    /// Failure rate (0–1) that opens the breaker. Default: 0.5.
    pub failure_rate: Option<f64>,
    /// How long it stays open before probing. Default: "5s".
    pub open_for: Option<String>,
    /// Trial calls when half-open. Default: 5.
    pub half_open_probes: Option<usize>,
}

/// `cache`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// How long an answer is reused. Default: "60s".
    pub ttl: Option<String>,
    /// Entries kept at most. Default: 100000.
    pub max_entries: Option<u64>,
}

fn duration(p: &mut Planner, path: &str, text: Option<&str>, default_ms: i64) -> Duration {
    Duration::from_millis(p.duration_ms(path, text, default_ms).max(0) as u64)
}

/// Plans stage `c` at key path `path` (`id`: its index among enrichment
/// stages; `default_name`: the name when none is given).
pub fn plan(
    c: &EnrichHttpConfig,
    path: &str,
    id: u16,
    default_name: String,
    has_dead_letter: bool,
    p: &mut Planner,
) -> (EnrichHttp, HttpEnrichConfig) {
    let name = c.name.clone().unwrap_or(default_name);
    let url = Template::url(&c.url).unwrap_or_else(|e| {
        p.err(format!("{path}.url"), e);
        Template::url("").unwrap_or_else(|_| unreachable!("an empty template parses"))
    });
    if !(c.url.starts_with("http://") || c.url.starts_with("https://")) {
        p.err(format!("{path}.url"), format!("expected an http:// or https:// URL, got {:?}", c.url));
    }
    let method = match c.method.as_deref().map(str::to_ascii_uppercase).as_deref() {
        None | Some("GET") => Method::Get,
        Some("POST") => Method::Post,
        Some("PUT") => Method::Put,
        Some(other) => {
            p.err(format!("{path}.method"), format!("expected GET, POST or PUT, got {other:?}"));
            Method::Get
        }
    };
    let body = c.body.as_ref().map(|b| {
        if method == Method::Get {
            p.err(format!("{path}.body"), "a GET request has no body; use method = \"POST\" or \"PUT\"");
        }
        let mut parts = Vec::new();
        body_template(b, &format!("{path}.body"), &mut parts, p);
        Template::json(merge_literals(parts))
    });
    if c.fields.is_empty() {
        p.err(format!("{path}.fields"), "at least one `field = \"/json/pointer\"` is required");
    }
    let fields = c
        .fields
        .iter()
        .map(|(field, pointer)| {
            if !(pointer.is_empty() || pointer.starts_with('/')) {
                p.err(
                    format!("{path}.fields.{field}"),
                    format!("expected a JSON pointer like \"/category\", got {pointer:?}"),
                );
            }
            (p.field(&format!("{path}.fields.{field}"), field), pointer.clone())
        })
        .collect();
    let on_failure = match c.on_failure.as_deref() {
        None | Some("dlq") => FailurePolicy::DeadLetter,
        Some("skip") => FailurePolicy::Skip,
        Some("fail") => FailurePolicy::Fail,
        Some(other) => {
            p.err(format!("{path}.on_failure"), format!("expected \"dlq\", \"skip\" or \"fail\", got {other:?}"));
            FailurePolicy::DeadLetter
        }
    };
    if on_failure == FailurePolicy::DeadLetter && !has_dead_letter {
        p.err(
            format!("{path}.on_failure"),
            "\"dlq\" needs a dead-letter sink (`pipeline.dead_letter`); or choose \"skip\" or \"fail\"",
        );
    }
    let mark = p.field(&format!("{path}.mark"), c.mark.as_deref().unwrap_or("enrich_skipped"));
    let timeout = duration(p, &format!("{path}.timeout"), c.timeout.as_deref(), 1000);
    if timeout.is_zero() {
        p.err(format!("{path}.timeout"), "must be > 0");
    }
    let max_in_flight = c.max_in_flight.unwrap_or(256);
    if max_in_flight == 0 {
        p.err(format!("{path}.max_in_flight"), "must be >= 1");
    }
    let r = &c.retry;
    let retry = io::RetryConfig {
        max_retries: r.max_retries.unwrap_or(3),
        min_delay: duration(p, &format!("{path}.retry.min_delay"), r.min_delay.as_deref(), 10),
        max_delay: duration(p, &format!("{path}.retry.max_delay"), r.max_delay.as_deref(), 1000),
        jitter: r.jitter.unwrap_or(true),
    };
    if retry.max_delay < retry.min_delay {
        p.err(format!("{path}.retry.max_delay"), "must be >= retry.min_delay");
    }
    let b = &c.breaker;
    let breaker = b.enabled.unwrap_or(true).then(|| {
        let plan = io::BreakerConfig {
            window: b.window.unwrap_or(100),
            min_calls: b.min_calls.unwrap_or(20),
            failure_rate: b.failure_rate.unwrap_or(0.5),
            open_for: duration(p, &format!("{path}.breaker.open_for"), b.open_for.as_deref(), 5000),
            half_open_probes: b.half_open_probes.unwrap_or(5),
        };
        if plan.window == 0 {
            p.err(format!("{path}.breaker.window"), "must be >= 1");
        }
        if plan.min_calls == 0 || plan.min_calls > plan.window {
            p.err(format!("{path}.breaker.min_calls"), "must be between 1 and breaker.window");
        }
        if !(plan.failure_rate > 0.0 && plan.failure_rate <= 1.0) {
            p.err(format!("{path}.breaker.failure_rate"), "must be > 0 and <= 1");
        }
        if plan.half_open_probes == 0 {
            p.err(format!("{path}.breaker.half_open_probes"), "must be >= 1");
        }
        plan
    });
    let cache = c.cache.as_ref().map(|k| {
        let plan = io::CacheConfig {
            ttl: duration(p, &format!("{path}.cache.ttl"), k.ttl.as_deref(), 60_000),
            max_entries: k.max_entries.unwrap_or(100_000),
        };
        if plan.ttl.is_zero() {
            p.err(format!("{path}.cache.ttl"), "must be > 0");
        }
        if plan.max_entries == 0 {
            p.err(format!("{path}.cache.max_entries"), "must be >= 1");
        }
        plan
    });
    let stage = EnrichHttp { id, name: name.clone(), url, body, fields, on_failure, mark };
    let client = HttpEnrichConfig {
        stage: name,
        method,
        headers: c.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        timeout,
        max_in_flight: max_in_flight.max(1),
        retry,
        breaker,
        cache,
    };
    (stage, client)
}

/// `[tables.NAME]`: rows kept from a flow's events.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// The flow whose accepted events upsert rows (before its stages). Required.
    pub flow: String,
    /// The row key field of those events. Required.
    pub key: String,
    /// Fields of those events kept as columns. Required, at least one.
    pub columns: Vec<String>,
}

/// An `enrich_lookup` stage.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrichLookupConfig {
    /// Stage name, for the DLQ reason and metrics. Default: `<flow>_lookup_<stage index>`.
    pub name: Option<String>,
    /// The table (`[tables.NAME]`). Required.
    pub table: String,
    /// This event's field holding the row key. Required.
    pub key: String,
    /// Event field ← table column (`{ "item.category" = "category" }`). Required.
    pub fields: BTreeMap<String, String>,
    /// No row for the key: "pass" (the event goes on without the fields) or
    /// "dlq" (it goes to the dead-letter sink with the reason). Default: "pass".
    pub on_missing: Option<String>,
}

/// Plans `[tables]` (flow names are resolved against `flows`, in config order).
pub fn plan_tables(
    tables: &BTreeMap<String, TableConfig>,
    flows: &[super::model::FlowConfig],
    p: &mut Planner,
) -> Vec<TableSpec> {
    tables
        .iter()
        .map(|(name, t)| {
            let path = format!("tables.{name}");
            let flow = flows.iter().position(|f| f.name == t.flow).unwrap_or_else(|| {
                p.err(format!("{path}.flow"), format!("no flow named {:?}", t.flow));
                0
            });
            if t.columns.is_empty() {
                p.err(format!("{path}.columns"), "at least one column is required");
            }
            TableSpec {
                name: name.clone(),
                flow,
                key: p.field(&format!("{path}.key"), &t.key),
                columns: t
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(i, c)| p.field(&format!("{path}.columns[{i}]"), c))
                    .collect(),
            }
        })
        .collect()
}

/// Plans lookup stage `c` at `path` (`id`: its index among lookup stages).
pub fn plan_lookup(
    c: &EnrichLookupConfig,
    path: &str,
    id: u16,
    default_name: String,
    tables: &[TableSpec],
    has_dead_letter: bool,
    p: &mut Planner,
) -> EnrichLookup {
    let table = tables.iter().position(|t| t.name == c.table).unwrap_or_else(|| {
        let known: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
        p.err(format!("{path}.table"), format!("no table named {:?} (tables: {known:?})", c.table));
        0
    });
    if c.fields.is_empty() {
        p.err(format!("{path}.fields"), "at least one `field = \"column\"` is required");
    }
    let fields = c
        .fields
        .iter()
        .map(|(field, column)| {
            let columns = tables.get(table).map(|t| &t.columns[..]).unwrap_or_default();
            let index = columns.iter().position(|k| k.as_str() == column).unwrap_or_else(|| {
                p.err(format!("{path}.fields.{field}"), format!("table {:?} has no column {column:?}", c.table));
                0
            });
            (p.field(&format!("{path}.fields.{field}"), field), index)
        })
        .collect();
    let on_missing = match c.on_missing.as_deref() {
        None | Some("pass") => Missing::Pass,
        Some("dlq") => {
            if !has_dead_letter {
                p.err(format!("{path}.on_missing"), "\"dlq\" needs a dead-letter sink (`pipeline.dead_letter`)");
            }
            Missing::DeadLetter
        }
        Some(other) => {
            p.err(format!("{path}.on_missing"), format!("expected \"pass\" or \"dlq\", got {other:?}"));
            Missing::Pass
        }
    };
    EnrichLookup {
        id,
        name: c.name.clone().unwrap_or(default_name),
        table: table as u16,
        key: p.field(&format!("{path}.key"), &c.key),
        fields,
        on_missing,
    }
}

/// Turns a TOML body into template parts (see [`EnrichHttpConfig::body`]).
fn body_template(v: &toml::Value, path: &str, out: &mut Vec<Part>, p: &mut Planner) {
    let lit = |out: &mut Vec<Part>, b: &[u8]| out.push(Part::Literal(b.to_vec()));
    match v {
        toml::Value::String(s) => {
            let whole = s.strip_prefix('{').and_then(|r| r.strip_suffix('}'));
            if let Some(field) = whole.filter(|f| !f.contains(['{', '}'])) {
                out.push(Part::Json(p.field(path, field)));
                return;
            }
            match Template::url(s) {
                Ok(t) => {
                    lit(out, b"\"");
                    for part in t.parts {
                        match part {
                            Part::Literal(b) => {
                                let mut quoted = Vec::new();
                                write_json_str(&mut quoted, &b);
                                out.push(Part::Literal(quoted[1..quoted.len() - 1].to_vec()));
                            }
                            other => out.push(other),
                        }
                    }
                    lit(out, b"\"");
                }
                Err(e) => p.err(path, e),
            }
        }
        toml::Value::Array(items) => {
            lit(out, b"[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    lit(out, b",");
                }
                body_template(item, &format!("{path}[{i}]"), out, p);
            }
            lit(out, b"]");
        }
        toml::Value::Table(t) => {
            lit(out, b"{");
            for (i, (k, item)) in t.iter().enumerate() {
                let mut key = Vec::new();
                if i > 0 {
                    key.push(b',');
                }
                write_json_str(&mut key, k.as_bytes());
                key.push(b':');
                out.push(Part::Literal(key));
                body_template(item, &format!("{path}.{k}"), out, p);
            }
            lit(out, b"}");
        }
        other => out.push(Part::Literal(serde_json::to_vec(other).unwrap_or_else(|_| b"null".to_vec()))),
    }
}

/// Joins adjacent literals.
fn merge_literals(parts: Vec<Part>) -> Vec<Part> {
    let mut out: Vec<Part> = Vec::with_capacity(parts.len());
    for part in parts {
        match (out.last_mut(), part) {
            (Some(Part::Literal(a)), Part::Literal(b)) => a.extend_from_slice(&b),
            (_, part) => out.push(part),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use freshet_engine::event::Fields;

    fn config(text: &str) -> EnrichHttpConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn body_table_renders_values_and_texts() {
        let c = config(
            r#"
            url = "http://h/x"
            method = "post"
            body = { item = "{item_id}", label = "id {item_id}!", n = 3, list = ["{ts}", true] }
            fields = { "category" = "/category" }
            "#,
        );
        let mut p = Planner::new();
        let (stage, client) = plan(&c, "flows[0].stages[0]", 0, "f_enrich_0".into(), true, &mut p);
        p.finish("test").unwrap();
        assert_eq!(client.method, Method::Post);
        let mut f = Fields::default();
        let mut ev = f.decode(br#"{"item_id":"i\"1","ts":5}"#, 8).unwrap();
        let request = stage.request(&mut ev, &mut String::new()).unwrap();
        let body: serde_json::Value = serde_json::from_slice(&request.body.unwrap()).unwrap();
        assert_eq!(body, serde_json::json!({"item": "i\"1", "label": "id i\"1!", "n": 3, "list": [5, true]}));
    }

    #[test]
    fn bad_settings_name_their_keys() {
        let c = config(
            r#"
            url = "items/{item_id"
            method = "PATCH"
            fields = { "category" = "category" }
            on_failure = "retry"
            breaker = { min_calls = 500 }
            "#,
        );
        let mut p = Planner::new();
        plan(&c, "flows[1].stages[2]", 0, "x".into(), false, &mut p);
        let text = p.finish("test").unwrap_err().to_string();
        for key in [".url:", ".method:", ".fields.category:", ".on_failure:", ".breaker.min_calls:"] {
            assert!(text.contains(&format!("flows[1].stages[2]{key}")), "{key} missing from:\n{text}");
        }
    }
}
