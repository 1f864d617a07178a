//! Events as the pipeline sees them: a validated JSON line plus an overlay of
//! edits made by flow stages, with field access by path.
//!
//! An [`Event`] borrows its line from the source's chunk and its members from
//! a scratch [`Fields`] that the decoder reuses, so decoding and reading a
//! field allocate nothing. Edits (set, rename, remove) write new keys and
//! values into the scratch arena; serialising an unedited event returns the
//! original bytes.

use crate::json::{self, Kind, RawMember};

/// A field path such as `context.device`, split once at planning time.
#[derive(Debug, Clone)]
pub struct FieldPath {
    segments: Box<[Box<str>]>,
    text: Box<str>,
    /// Hash of the first segment: the key of the per-event lookup cache, so
    /// every path naming the same top-level field shares one cached answer.
    id: u64,
}

impl PartialEq for FieldPath {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for FieldPath {}

impl std::hash::Hash for FieldPath {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.text.hash(state);
    }
}

impl FieldPath {
    /// Parses a dotted path. Empty segments are an error.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() || text.split('.').any(str::is_empty) {
            return Err(format!("invalid field path {text:?}: segments must be non-empty"));
        }
        let segments: Box<[Box<str>]> = text.split('.').map(Into::into).collect();
        let id = crate::features::keys::hash_bytes(segments[0].as_bytes());
        Ok(Self { segments, text: text.into(), id })
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The path's segments.
    pub fn segments(&self) -> &[Box<str>] {
        &self.segments
    }
}

impl AsRef<str> for FieldPath {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Display for FieldPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Where a span's bytes live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Home {
    Line,
    Arena,
}

#[derive(Debug, Clone, Copy)]
struct Span {
    home: Home,
    start: u32,
    end: u32,
}

/// One top-level member, possibly edited.
#[derive(Debug, Clone, Copy)]
struct Member {
    key: Span,
    key_escaped: bool,
    value: Span,
    kind: Kind,
    value_escaped: bool,
    removed: bool,
}

/// Entries in the per-event lookup cache.
const CACHED: usize = 8;
/// Cached answer for a field that is absent.
const ABSENT: u32 = u32::MAX;

/// Scratch storage for one event at a time, reused across events.
#[derive(Debug, Default)]
pub struct Fields {
    raw: Vec<RawMember>,
    members: Vec<Member>,
    arena: Vec<u8>,
    edited: bool,
    unescape: String,
    /// Recent top-level lookups of this event: (path id, member index or
    /// `ABSENT`). Flows, rules and features read the same few fields several
    /// times per event; edits clear it.
    cache: [(u64, u32); CACHED],
    cached: usize,
}

/// A read-only view of one value inside an event.
#[derive(Debug, Clone, Copy)]
pub struct Value<'a> {
    /// The JSON type.
    pub kind: Kind,
    /// The raw JSON bytes (strings include their quotes).
    pub raw: &'a [u8],
    /// Whether a string contains escapes.
    pub escaped: bool,
}

impl<'a> Value<'a> {
    /// The string's content without quotes, if it is a string without escapes.
    #[inline]
    pub fn plain_str(&self) -> Option<&'a [u8]> {
        (self.kind == Kind::String && !self.escaped).then(|| &self.raw[1..self.raw.len() - 1])
    }

    /// Appends the value's text form to `out`: a string's unescaped content,
    /// or the JSON text of anything else. Returns false on a lone surrogate.
    pub fn write_text(&self, out: &mut Vec<u8>, scratch: &mut String) -> bool {
        match self.kind {
            Kind::String if !self.escaped => out.extend_from_slice(&self.raw[1..self.raw.len() - 1]),
            Kind::String => {
                scratch.clear();
                if !json::unescape_into(&self.raw[1..self.raw.len() - 1], scratch) {
                    return false;
                }
                out.extend_from_slice(scratch.as_bytes());
            }
            _ => out.extend_from_slice(self.raw),
        }
        true
    }

    /// The value as an integer, if it is a JSON integer in range.
    #[inline]
    pub fn as_i64(&self) -> Option<i64> {
        if self.kind != Kind::Integer {
            return None;
        }
        parse_i64(self.raw)
    }

    /// The value as a float, if it is a JSON number.
    pub fn as_f64(&self) -> Option<f64> {
        match self.kind {
            Kind::Integer | Kind::Float => std::str::from_utf8(self.raw).ok()?.parse().ok(),
            _ => None,
        }
    }

    /// Whether this string value equals `s` (after unescaping).
    pub fn str_eq(&self, s: &str, scratch: &mut String) -> bool {
        if self.kind != Kind::String {
            return false;
        }
        match self.plain_str() {
            Some(b) => b == s.as_bytes(),
            None => {
                scratch.clear();
                json::unescape_into(&self.raw[1..self.raw.len() - 1], scratch) && scratch == s
            }
        }
    }
}

/// Parses a JSON integer token; `None` when it overflows i64.
#[inline]
pub fn parse_i64(raw: &[u8]) -> Option<i64> {
    let (neg, digits) = match raw.first() {
        Some(b'-') => (true, &raw[1..]),
        _ => (false, raw),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut v: i64 = 0;
    for &d in digits {
        v = v.checked_mul(10)?.checked_add((d - b'0') as i64)?;
    }
    Some(if neg { -v } else { v })
}

/// One event: a line and its (possibly edited) members.
pub struct Event<'a> {
    line: &'a [u8],
    f: &'a mut Fields,
}

impl Fields {
    /// Scans `line` (trimmed) into these fields and returns the event.
    pub fn decode<'a>(&'a mut self, line: &'a [u8], max_depth: u32) -> Result<Event<'a>, json::JsonError> {
        json::scan_object(line, max_depth, &mut self.raw)?;
        self.members.clear();
        self.arena.clear();
        self.edited = false;
        self.cached = 0;
        self.members.extend(self.raw.iter().map(|m| Member {
            key: Span { home: Home::Line, start: m.key_start, end: m.key_end },
            key_escaped: m.key_escaped,
            value: Span { home: Home::Line, start: m.value_start, end: m.value_end },
            kind: m.kind,
            value_escaped: m.value_escaped,
            removed: false,
        }));
        Ok(Event { line, f: self })
    }
}

impl<'a> Event<'a> {
    #[inline]
    fn bytes(&self, s: Span) -> &[u8] {
        match s.home {
            Home::Line => &self.line[s.start as usize..s.end as usize],
            Home::Arena => &self.f.arena[s.start as usize..s.end as usize],
        }
    }

    /// Index of the last live top-level member named `key`.
    fn find_top(&mut self, key: &str) -> Option<usize> {
        for i in (0..self.f.members.len()).rev() {
            let m = self.f.members[i];
            if m.removed {
                continue;
            }
            let kb = match m.key.home {
                Home::Line => &self.line[m.key.start as usize..m.key.end as usize],
                Home::Arena => &self.f.arena[m.key.start as usize..m.key.end as usize],
            };
            let hit = if m.key_escaped {
                self.f.unescape.clear();
                json::unescape_into(kb, &mut self.f.unescape) && self.f.unescape == key
            } else {
                // Length and first byte settle most misses without a memcmp call.
                kb.len() == key.len() && kb.first() == key.as_bytes().first() && kb == key.as_bytes()
            };
            if hit {
                return Some(i);
            }
        }
        None
    }

    /// Index of the top-level member of `path`, through the lookup cache.
    #[inline]
    fn top_index(&mut self, path: &FieldPath) -> Option<usize> {
        let first = &path.segments()[0];
        let id = path.id;
        if let Some(&(_, i)) = self.f.cache[..self.f.cached].iter().find(|(p, _)| *p == id) {
            return (i != ABSENT).then_some(i as usize);
        }
        let found = self.find_top(first);
        if self.f.cached < CACHED {
            self.f.cache[self.f.cached] = (id, found.map_or(ABSENT, |i| i as u32));
            self.f.cached += 1;
        }
        found
    }

    /// The value at `path`, if present.
    pub fn get(&mut self, path: &FieldPath) -> Option<Value<'_>> {
        let segs = path.segments();
        let i = self.top_index(path)?;
        let m = self.f.members[i];
        let mut v = Value { kind: m.kind, raw: self.bytes(m.value), escaped: m.value_escaped };
        for seg in &segs[1..] {
            if v.kind != Kind::Object {
                return None;
            }
            let (kind, escaped, a, b) = json::find_member(v.raw, seg)?;
            v = Value { kind, raw: &v.raw[a..b], escaped };
        }
        Some(v)
    }

    /// Whether a stage edited this event.
    pub fn is_edited(&self) -> bool {
        self.f.edited
    }

    fn push_arena(&mut self, bytes: &[u8]) -> Span {
        let start = self.f.arena.len() as u32;
        self.f.arena.extend_from_slice(bytes);
        Span { home: Home::Arena, start, end: self.f.arena.len() as u32 }
    }

    /// Sets `path` to a JSON value (`raw` must be valid JSON of `kind`).
    /// Missing parent objects are created.
    pub fn set(&mut self, path: &FieldPath, raw: &[u8], kind: Kind) {
        self.f.edited = true;
        self.f.cached = 0;
        let segs = path.segments();
        let existing = self.find_top(&segs[0]);
        let (value, kind) = if segs.len() == 1 {
            (self.push_arena(raw), kind)
        } else {
            let parent = existing.map(|i| self.f.members[i]).filter(|m| m.kind == Kind::Object);
            let old = parent.map(|m| self.bytes(m.value).to_vec()).unwrap_or_else(|| b"{}".to_vec());
            let mut out = Vec::with_capacity(old.len() + raw.len() + 16);
            rewrite_nested(&old, &segs[1..], Some(raw), &mut out);
            (self.push_arena(&out), Kind::Object)
        };
        if let Some(i) = existing {
            let m = &mut self.f.members[i];
            m.value = value;
            m.kind = kind;
            m.value_escaped = true; // conservative: unknown, forces unescape on read
        } else {
            let key = self.push_arena(segs[0].as_bytes());
            self.f.members.push(Member { key, key_escaped: false, value, kind, value_escaped: true, removed: false });
        }
    }

    /// Removes `path`; returns whether it was present.
    pub fn remove(&mut self, path: &FieldPath) -> bool {
        self.f.cached = 0;
        let segs = path.segments();
        let Some(i) = self.find_top(&segs[0]) else { return false };
        if segs.len() == 1 {
            self.f.members[i].removed = true;
            self.f.edited = true;
            return true;
        }
        let m = self.f.members[i];
        if m.kind != Kind::Object {
            return false;
        }
        let old = self.bytes(m.value).to_vec();
        let mut out = Vec::with_capacity(old.len());
        if !rewrite_nested(&old, &segs[1..], None, &mut out) {
            return false;
        }
        let span = self.push_arena(&out);
        self.f.members[i].value = span;
        self.f.edited = true;
        true
    }

    /// Moves the value at `from` to `to`; returns whether `from` was present.
    pub fn rename(&mut self, from: &FieldPath, to: &FieldPath) -> bool {
        let Some(v) = self.get(from) else { return false };
        let (raw, kind) = (v.raw.to_vec(), v.kind);
        self.remove(from);
        self.set(to, &raw, kind);
        true
    }

    /// Appends the event as one JSON object (no newline) to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        if !self.f.edited {
            out.extend_from_slice(self.line);
            return;
        }
        out.push(b'{');
        let mut first = true;
        for m in self.f.members.iter().filter(|m| !m.removed) {
            if !first {
                out.push(b',');
            }
            first = false;
            out.push(b'"');
            out.extend_from_slice(self.bytes(m.key));
            out.extend_from_slice(b"\":");
            out.extend_from_slice(self.bytes(m.value));
        }
        out.push(b'}');
    }

    /// The original line.
    pub fn line(&self) -> &[u8] {
        self.line
    }
}

/// Writes `object` with the member at `path` replaced by `value` (or removed
/// when `value` is None) into `out`. Returns whether anything changed.
fn rewrite_nested(object: &[u8], path: &[Box<str>], value: Option<&[u8]>, out: &mut Vec<u8>) -> bool {
    let key = &path[0];
    let mut members: Vec<(&[u8], &[u8], Kind)> = Vec::new();
    let mut raw = Vec::new();
    if json::scan_object(object, u32::MAX, &mut raw).is_ok() {
        for m in &raw {
            members.push((
                &object[m.key_start as usize..m.key_end as usize],
                &object[m.value_start as usize..m.value_end as usize],
                m.kind,
            ));
        }
    }
    let mut changed = false;
    let mut replaced: Option<Vec<u8>> = None;
    let hit = members.iter().rposition(|(k, _, _)| *k == key.as_bytes());
    if path.len() > 1 {
        let child = hit.map(|i| members[i]).filter(|m| m.2 == Kind::Object).map(|m| m.1).unwrap_or(b"{}");
        let mut inner = Vec::new();
        changed = rewrite_nested(child, &path[1..], value, &mut inner);
        replaced = Some(inner);
    } else if let Some(v) = value {
        replaced = Some(v.to_vec());
        changed = true;
    } else if hit.is_some() {
        changed = true;
    }
    out.push(b'{');
    let mut first = true;
    let mut emit = |out: &mut Vec<u8>, k: &[u8], v: &[u8]| {
        if !first {
            out.push(b',');
        }
        first = false;
        out.push(b'"');
        out.extend_from_slice(k);
        out.extend_from_slice(b"\":");
        out.extend_from_slice(v);
    };
    for (i, (k, v, _)) in members.iter().enumerate() {
        if Some(i) == hit {
            if let Some(r) = &replaced {
                emit(out, k, r);
            }
        } else if *k != key.as_bytes() {
            emit(out, k, v);
        }
    }
    if hit.is_none()
        && let Some(r) = &replaced
    {
        emit(out, key.as_bytes(), r);
    }
    out.push(b'}');
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(s: &str) -> FieldPath {
        FieldPath::parse(s).unwrap()
    }

    #[test]
    fn reads_top_level_and_nested_fields_last_wins() {
        let line = br#"{"a":1,"ctx":{"d":"tv","x":{"y":true}},"a":"two"}"#;
        let mut f = Fields::default();
        let mut ev = f.decode(line, 64).unwrap();
        assert_eq!(ev.get(&path("a")).unwrap().raw, b"\"two\"");
        assert_eq!(ev.get(&path("ctx.d")).unwrap().plain_str(), Some(&b"tv"[..]));
        assert_eq!(ev.get(&path("ctx.x.y")).unwrap().kind, Kind::Bool);
        assert!(ev.get(&path("ctx.nope")).is_none());
        assert!(ev.get(&path("a.b")).is_none());
    }

    #[test]
    fn escaped_keys_and_values_compare_unescaped() {
        let line = br#"{"\u0074ype":"v\u0069ew"}"#;
        let mut f = Fields::default();
        let mut ev = f.decode(line, 64).unwrap();
        let mut s = String::new();
        let v = ev.get(&path("type")).unwrap();
        assert!(v.str_eq("view", &mut s));
        let mut out = Vec::new();
        assert!(v.write_text(&mut out, &mut s));
        assert_eq!(out, b"view");
    }

    #[test]
    fn edits_serialise_and_unedited_events_are_verbatim() {
        let line = br#"{"user_id":"u1","ip":"1.2.3.4","ctx":{"d":"tv","ip":"x"}}"#;
        let mut f = Fields::default();
        let mut ev = f.decode(line, 64).unwrap();
        let mut out = Vec::new();
        ev.write_json(&mut out);
        assert_eq!(out, line);
        assert!(ev.remove(&path("ip")));
        assert!(ev.remove(&path("ctx.ip")));
        assert!(ev.rename(&path("user_id"), &path("uid")));
        ev.set(&path("meta.src"), b"\"web\"", Kind::String);
        out.clear();
        ev.write_json(&mut out);
        let got: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(got, serde_json::json!({"ctx":{"d":"tv"},"uid":"u1","meta":{"src":"web"}}));
    }

    #[test]
    fn parses_integers_and_rejects_overflow() {
        assert_eq!(parse_i64(b"-17"), Some(-17));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64(b"9223372036854775808"), None);
    }
}
