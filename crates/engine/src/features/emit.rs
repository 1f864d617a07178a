//! Writing feature results and late events into sink buffers as CSV or NDJSON.
//!
//! Rows are formatted straight into the byte buffer of their sink; the
//! runtime ships whole buffers to the writers, so nothing here allocates per
//! row beyond the buffer's growth.

use std::io::Write;

use super::keys::parts;
use super::spec::{FeatureSpec, Format};
use super::view::{GroupView, WindowValue};
use crate::aggregate::AggValue;

/// Bytes and row count bound for one sink.
#[derive(Debug, Default)]
pub struct SinkBuffer {
    /// Formatted rows, each ending with `\n`.
    pub data: Vec<u8>,
    /// Number of rows in `data`.
    pub rows: u64,
}

/// Per-sink buffers filled by operators, indexed by sink id.
#[derive(Debug, Default)]
pub struct Outputs {
    /// One buffer per sink.
    pub sinks: Vec<SinkBuffer>,
    /// Events dropped as too late, by feature index.
    pub late: Vec<u64>,
}

impl Outputs {
    /// Buffers for `sinks` sinks and `features` features.
    pub fn new(sinks: usize, features: usize) -> Self {
        Self { sinks: (0..sinks).map(|_| SinkBuffer::default()).collect(), late: vec![0; features] }
    }

    /// Whether any buffer holds data.
    pub fn has_data(&self) -> bool {
        self.sinks.iter().any(|s| !s.data.is_empty())
    }
}

/// Writes `s` as a CSV field, quoted only when it must be (RFC 4180).
pub fn write_csv_field(out: &mut Vec<u8>, s: &[u8]) {
    if s.iter().any(|&b| matches!(b, b',' | b'"' | b'\n' | b'\r')) {
        out.push(b'"');
        for &b in s {
            if b == b'"' {
                out.push(b'"');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(s);
    }
}

/// Writes `s` as a JSON string (lossy for invalid UTF-8).
pub fn write_json_str(out: &mut Vec<u8>, s: &[u8]) {
    match std::str::from_utf8(s) {
        Ok(text) => write_json_text(out, text),
        Err(_) => write_json_text(out, &String::from_utf8_lossy(s)),
    }
}

fn write_json_text(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[run..i]);
        if esc.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.extend_from_slice(esc);
        }
        run = i + 1;
    }
    out.extend_from_slice(&bytes[run..]);
    out.push(b'"');
}

fn write_value_json(out: &mut Vec<u8>, v: &AggValue) {
    match v {
        AggValue::Int(n) => {
            let _ = write!(out, "{n}");
        }
        AggValue::Float(x) if x.is_finite() => {
            let _ = write!(out, "{x}");
        }
        // JSON has no infinity or NaN (a sum past f64::MAX, a number like 1e400): null, as serde_json writes them.
        AggValue::Float(_) => out.extend_from_slice(b"null"),
        AggValue::List(items) => {
            out.push(b'[');
            for (i, s) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json_text(out, s);
            }
            out.push(b']');
        }
    }
}

/// Appends one closed-window row of `spec` for `key` to `buf`.
pub fn write_row(
    buf: &mut SinkBuffer,
    format: Format,
    spec: &FeatureSpec,
    start: i64,
    end: i64,
    key: &[u8],
    value: &AggValue,
) {
    let out = &mut buf.data;
    match format {
        Format::Csv => {
            let mut num = itoa::Buffer::new();
            out.extend_from_slice(num.format(start).as_bytes());
            out.push(b',');
            out.extend_from_slice(num.format(end).as_bytes());
            for part in parts(key) {
                out.push(b',');
                write_csv_field(out, part);
            }
            out.push(b',');
            match value {
                AggValue::List(items) => write_csv_field(out, items.join("|").as_bytes()),
                AggValue::Int(n) => out.extend_from_slice(num.format(*n).as_bytes()),
                v => {
                    let _ = write!(out, "{v}");
                }
            }
        }
        Format::Ndjson => {
            out.extend_from_slice(b"{\"feature\":");
            write_json_text(out, &spec.name);
            let _ = write!(out, ",\"window_start\":{start},\"window_end\":{end},\"key\":{{");
            for (i, (part, path)) in parts(key).zip(&spec.key).enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json_text(out, path.as_str());
                out.push(b':');
                write_json_str(out, part);
            }
            out.extend_from_slice(b"},\"value\":");
            write_value_json(out, value);
            out.push(b'}');
        }
    }
    out.push(b'\n');
    buf.rows += 1;
}

fn write_window_json(out: &mut Vec<u8>, w: Option<&WindowValue>) {
    match w {
        None => out.extend_from_slice(b"null"),
        Some(w) => {
            let _ = write!(out, "{{\"start\":{},\"end\":{},\"value\":", w.start, w.end);
            write_value_json(out, &w.value);
            out.push(b'}');
        }
    }
}

/// Appends an entity's values after a change to its updates sink (NDJSON):
/// `{"feature":…,"entity":…,"value":[{"group":[…],"current":{…},"last_closed":{…},"event_time":…}]}`,
/// or `"value":null` when the entity is gone (forgotten or expired). The
/// `value` member comes last, so the row without it identifies the entity
/// (a Kafka sink's record key; a null value becomes a tombstone).
pub fn write_update(buf: &mut SinkBuffer, spec: &FeatureSpec, entity: &[u8], values: Option<&[GroupView]>) {
    let out = &mut buf.data;
    out.extend_from_slice(b"{\"feature\":");
    write_json_text(out, &spec.name);
    out.extend_from_slice(b",\"entity\":");
    write_json_str(out, entity);
    out.extend_from_slice(b",\"value\":");
    match values {
        None => out.extend_from_slice(b"null"),
        Some(groups) => {
            out.push(b'[');
            for (i, g) in groups.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b"{\"group\":[");
                for (j, part) in g.group.iter().enumerate() {
                    if j > 0 {
                        out.push(b',');
                    }
                    write_json_text(out, part);
                }
                out.extend_from_slice(b"],\"current\":");
                write_window_json(out, g.current.as_ref());
                out.extend_from_slice(b",\"last_closed\":");
                write_window_json(out, g.last_closed.as_ref());
                let _ = write!(out, ",\"event_time\":{}}}", g.event_time);
            }
            out.push(b']');
        }
    }
    out.extend_from_slice(b"}\n");
    buf.rows += 1;
}

/// Appends a record of an event dropped as late to `buf` (NDJSON).
pub fn write_late(buf: &mut SinkBuffer, spec: &FeatureSpec, key: &[u8], ts: i64, offset: u64, watermark: i64) {
    let out = &mut buf.data;
    out.extend_from_slice(b"{\"reason\":\"late\",\"feature\":");
    write_json_text(out, &spec.name);
    out.extend_from_slice(b",\"key\":[");
    for (i, part) in parts(key).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json_str(out, part);
    }
    let _ = writeln!(out, "],\"ts\":{ts},\"offset\":{offset},\"watermark\":{watermark}}}");
    buf.rows += 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_only_when_needed_and_json_escapes_controls() {
        let mut out = Vec::new();
        write_csv_field(&mut out, b"u1");
        out.push(b' ');
        write_csv_field(&mut out, b"a,\"b\"");
        assert_eq!(out, b"u1 \"a,\"\"b\"\"\"");
        out.clear();
        write_json_str(&mut out, "ü\"\\\n\u{1}".as_bytes());
        assert_eq!(String::from_utf8(out).unwrap(), r#""ü\"\\\n\u0001""#);
    }

    /// Found by the decode fuzz harness's check that NDJSON rows are JSON (on
    /// a hand-written input): a sum over `1e400`, or past `f64::MAX`, was
    /// written as `"value":inf`.
    #[test]
    fn non_finite_values_are_json_null() {
        let mut out = Vec::new();
        for x in [1.5, f64::INFINITY, f64::NEG_INFINITY, f64::NAN] {
            write_value_json(&mut out, &AggValue::Float(x));
            out.push(b' ');
        }
        assert_eq!(String::from_utf8(out).unwrap(), "1.5 null null null ");
    }
}
