//! A lean, fully validating JSON scanner for one event line.
//!
//! It checks a line against the JSON grammar (RFC 8259) and records where each
//! top-level member of the object lies, without building a tree or allocating:
//! the caller passes a reused `Vec<RawMember>`. Nested values are validated in
//! full and kept as byte spans; a nested member is found later by
//! [`find_member`], which rescans only that span.
//!
//! Why hand-written, on the hot path: on lines of ~170 bytes a SIMD DOM parser
//! did not beat a lean validating scanner on this workload (shared
//! PERFORMANCE.md; `benches/decode.rs` measures both), and every line must be
//! validated in full, because malformed lines are cut at random points and
//! stopping after the fields we need would accept them. UTF-8 is validated
//! once per line with `simdutf8` before scanning.
//!
//! This module must not allocate per line, and knows nothing of events.

/// The JSON type of a scanned value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A string; its span includes the quotes.
    String,
    /// A number without fraction or exponent.
    Integer,
    /// A number with a fraction or an exponent.
    Float,
    /// `true` or `false`.
    Bool,
    /// `null`.
    Null,
    /// An object; its span covers the braces.
    Object,
    /// An array; its span covers the brackets.
    Array,
}

/// One top-level member of the scanned object, as byte offsets into the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawMember {
    /// Start of the key's content (after the opening quote).
    pub key_start: u32,
    /// End of the key's content (before the closing quote).
    pub key_end: u32,
    /// Whether the key contains escapes (then it must be unescaped to compare).
    pub key_escaped: bool,
    /// The value's type.
    pub kind: Kind,
    /// Whether a string value contains escapes.
    pub value_escaped: bool,
    /// Start of the value's bytes (strings: the opening quote).
    pub value_start: u32,
    /// End of the value's bytes, exclusive.
    pub value_end: u32,
}

/// Why a line is not a JSON object. The text is the DLQ reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// The line is empty or all blanks.
    #[error("empty line")]
    Empty,
    /// The bytes are not UTF-8.
    #[error("invalid UTF-8")]
    InvalidUtf8,
    /// The line starts with a UTF-8 byte-order mark.
    #[error("byte-order mark at start of line")]
    ByteOrderMark,
    /// Valid JSON, but not an object.
    #[error("not a JSON object")]
    NotAnObject,
    /// Nesting deeper than the limit.
    #[error("JSON nested deeper than {0} levels")]
    TooDeep(u32),
    /// A grammar error at a byte offset.
    #[error("invalid JSON at byte {0}")]
    Syntax(u32),
    /// Characters after the closing brace.
    #[error("trailing characters after JSON at byte {0}")]
    Trailing(u32),
    /// The line is longer than the configured maximum event size.
    #[error("event larger than {0} bytes")]
    TooLarge(u32),
}

/// Deepest nesting accepted; deeper lines are rejected, never recursed into.
pub const DEFAULT_MAX_DEPTH: u32 = 64;

#[inline]
fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Strips JSON whitespace from both ends of a line.
pub fn trim(line: &[u8]) -> &[u8] {
    let mut s = 0;
    let mut e = line.len();
    while s < e && is_ws(line[s]) {
        s += 1;
    }
    while e > s && is_ws(line[e - 1]) {
        e -= 1;
    }
    &line[s..e]
}

/// Scans `line` (already trimmed) as a JSON object and records its top-level
/// members into `out` (cleared first). Nested values are validated up to
/// `max_depth` levels.
pub fn scan_object(line: &[u8], max_depth: u32, out: &mut Vec<RawMember>) -> Result<(), JsonError> {
    out.clear();
    if line.is_empty() {
        return Err(JsonError::Empty);
    }
    if line.starts_with(&[0xEF, 0xBB, 0xBF]) {
        return Err(JsonError::ByteOrderMark);
    }
    if simdutf8::basic::from_utf8(line).is_err() {
        return Err(JsonError::InvalidUtf8);
    }
    let mut s = Scanner { b: line, i: 0, max_depth };
    if line[0] != b'{' {
        // Valid JSON that is not an object is "not an object"; anything else a syntax error.
        s.value(0)?;
        s.skip_ws();
        return Err(if s.i == line.len() { JsonError::NotAnObject } else { JsonError::Trailing(s.i as u32) });
    }
    s.i = 1;
    s.skip_ws();
    if s.peek() == Some(b'}') {
        s.i += 1;
    } else {
        loop {
            s.skip_ws();
            if s.peek() != Some(b'"') {
                return Err(s.err());
            }
            let key_start = s.i + 1;
            let key_escaped = s.string()?;
            let key_end = s.i - 1;
            s.skip_ws();
            if s.peek() != Some(b':') {
                return Err(s.err());
            }
            s.i += 1;
            s.skip_ws();
            let value_start = s.i;
            let (kind, value_escaped) = s.value(1)?;
            out.push(RawMember {
                key_start: key_start as u32,
                key_end: key_end as u32,
                key_escaped,
                kind,
                value_escaped,
                value_start: value_start as u32,
                value_end: s.i as u32,
            });
            s.skip_ws();
            match s.peek() {
                Some(b',') => s.i += 1,
                Some(b'}') => {
                    s.i += 1;
                    break;
                }
                _ => return Err(s.err()),
            }
        }
    }
    s.skip_ws();
    if s.i != line.len() {
        return Err(JsonError::Trailing(s.i as u32));
    }
    Ok(())
}

/// Finds the last member named `key` in an object span that was validated by
/// [`scan_object`] (last wins, as in most JSON readers). Returns its kind and
/// value span relative to `object`.
pub fn find_member(object: &[u8], key: &str) -> Option<(Kind, bool, usize, usize)> {
    let mut s = Scanner { b: object, i: 0, max_depth: u32::MAX };
    if s.peek() != Some(b'{') {
        return None;
    }
    s.i = 1;
    let mut found = None;
    let mut scratch = String::new();
    loop {
        s.skip_ws();
        match s.peek() {
            Some(b'"') => {}
            _ => return found,
        }
        let ks = s.i + 1;
        let escaped = s.string().ok()?;
        let ke = s.i - 1;
        s.skip_ws();
        s.i += 1; // ':'
        s.skip_ws();
        let vs = s.i;
        let (kind, vesc) = s.value(1).ok()?;
        let matches = if escaped {
            scratch.clear();
            unescape_into(&object[ks..ke], &mut scratch) && scratch == key
        } else {
            &object[ks..ke] == key.as_bytes()
        };
        if matches {
            found = Some((kind, vesc, vs, s.i));
        }
        s.skip_ws();
        if s.peek() == Some(b',') {
            s.i += 1;
        } else {
            return found;
        }
    }
}

/// Appends the unescaped content of a validated JSON string body (without
/// quotes) to `out`. Returns false if an escape is a lone surrogate.
pub fn unescape_into(body: &[u8], out: &mut String) -> bool {
    let mut i = 0;
    let mut run = 0;
    while i < body.len() {
        if body[i] != b'\\' {
            i += 1;
            continue;
        }
        // The scanner validated UTF-8 and escapes, so runs split at ASCII are valid str.
        out.push_str(std::str::from_utf8(&body[run..i]).unwrap_or_default());
        let c = body[i + 1];
        i += 2;
        match c {
            b'"' => out.push('"'),
            b'\\' => out.push('\\'),
            b'/' => out.push('/'),
            b'b' => out.push('\u{8}'),
            b'f' => out.push('\u{c}'),
            b'n' => out.push('\n'),
            b'r' => out.push('\r'),
            b't' => out.push('\t'),
            _ => {
                let hi = hex4(&body[i..i + 4]);
                i += 4;
                let cp = if (0xD800..0xDC00).contains(&hi) {
                    if body.len() < i + 6 || body[i] != b'\\' || body[i + 1] != b'u' {
                        return false;
                    }
                    let lo = hex4(&body[i + 2..i + 6]);
                    if !(0xDC00..0xE000).contains(&lo) {
                        return false;
                    }
                    i += 6;
                    0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                } else {
                    hi
                };
                match char::from_u32(cp) {
                    Some(ch) => out.push(ch),
                    None => return false,
                }
            }
        }
        run = i;
    }
    out.push_str(std::str::from_utf8(&body[run..]).unwrap_or_default());
    true
}

fn hex4(b: &[u8]) -> u32 {
    b.iter().fold(0, |acc, &c| {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => c - b'A' + 10,
        };
        acc * 16 + d as u32
    })
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Marks (high bit of each byte) the bytes of `w` equal to zero; exact for the lowest marked byte.
#[inline]
fn zero_bytes(w: u64) -> u64 {
    w.wrapping_sub(ONES) & !w & HIGHS
}

/// Index of the first byte at or after `i` that ends a plain run inside a
/// JSON string: a quote, a backslash, or a control byte. Eight bytes at a
/// time (SWAR); bytes of multi-byte UTF-8 characters are never marked.
#[inline]
fn skip_plain(b: &[u8], mut i: usize) -> usize {
    while let Some(chunk) = b.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        let control = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
        let marks = control | zero_bytes(w ^ (ONES * b'"' as u64)) | zero_bytes(w ^ (ONES * b'\\' as u64));
        if marks != 0 {
            return i + (marks.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&c) = b.get(i) {
        if c == b'"' || c == b'\\' || c < 0x20 {
            break;
        }
        i += 1;
    }
    i
}

/// Cursor over validated UTF-8 bytes.
struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
    max_depth: u32,
}

impl Scanner<'_> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    #[inline]
    fn err(&self) -> JsonError {
        JsonError::Syntax(self.i as u32)
    }

    #[inline]
    fn skip_ws(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            if !is_ws(c) {
                break;
            }
            self.i += 1;
        }
    }

    /// Scans a string starting at the opening quote; returns whether it has escapes.
    #[inline]
    fn string(&mut self) -> Result<bool, JsonError> {
        self.i += 1;
        let mut escaped = false;
        loop {
            self.i = skip_plain(self.b, self.i);
            let c = *self.b.get(self.i).ok_or(JsonError::Syntax(self.i as u32))?;
            match c {
                b'"' => {
                    self.i += 1;
                    return Ok(escaped);
                }
                b'\\' => {
                    escaped = true;
                    let e = *self.b.get(self.i + 1).ok_or(JsonError::Syntax(self.i as u32))?;
                    match e {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 2,
                        b'u' => {
                            let hex = self.b.get(self.i + 2..self.i + 6).ok_or(self.err())?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return Err(self.err());
                            }
                            self.i += 6;
                        }
                        _ => return Err(self.err()),
                    }
                }
                0..=0x1F => return Err(self.err()),
                _ => self.i += 1,
            }
        }
    }

    fn digits(&mut self) -> usize {
        let s = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        self.i - s
    }

    fn number(&mut self) -> Result<Kind, JsonError> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.err()),
        }
        let mut kind = Kind::Integer;
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(self.err());
            }
            kind = Kind::Float;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(self.err());
            }
            kind = Kind::Float;
        }
        Ok(kind)
    }

    fn literal(&mut self, word: &[u8], kind: Kind) -> Result<Kind, JsonError> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(kind)
        } else {
            Err(self.err())
        }
    }

    /// Scans any value at nesting `depth` (the top-level object's members are at 1).
    fn value(&mut self, depth: u32) -> Result<(Kind, bool), JsonError> {
        let c = self.peek().ok_or(self.err())?;
        let kind = match c {
            b'"' => return Ok((Kind::String, self.string()?)),
            b'{' | b'[' => {
                self.container(depth)?;
                if c == b'{' { Kind::Object } else { Kind::Array }
            }
            b't' => self.literal(b"true", Kind::Bool)?,
            b'f' => self.literal(b"false", Kind::Bool)?,
            b'n' => self.literal(b"null", Kind::Null)?,
            b'-' | b'0'..=b'9' => self.number()?,
            _ => return Err(self.err()),
        };
        Ok((kind, false))
    }

    /// Scans nested objects and arrays iteratively with an explicit stack of
    /// closers (a bit per level), so deep input cannot overflow the call stack.
    fn container(&mut self, depth: u32) -> Result<(), JsonError> {
        // closers[level]: true for '}' (object), false for ']'.
        let mut closers: smallvec::SmallVec<[bool; 16]> = smallvec::SmallVec::new();
        loop {
            // At an opening bracket, or at the start of a value inside a container.
            match self.peek() {
                Some(b'{') | Some(b'[') => {
                    let obj = self.peek() == Some(b'{');
                    if depth + closers.len() as u32 >= self.max_depth {
                        return Err(JsonError::TooDeep(self.max_depth));
                    }
                    closers.push(obj);
                    self.i += 1;
                    self.skip_ws();
                    let close = if obj { b'}' } else { b']' };
                    if self.peek() == Some(close) {
                        self.i += 1;
                        closers.pop();
                        if self.after_value(&mut closers)? {
                            return Ok(());
                        }
                        continue;
                    }
                    if obj {
                        self.member_key()?;
                    }
                }
                _ => {
                    let c = self.peek().ok_or(self.err())?;
                    match c {
                        b'"' => {
                            self.string()?;
                        }
                        b't' => {
                            self.literal(b"true", Kind::Bool)?;
                        }
                        b'f' => {
                            self.literal(b"false", Kind::Bool)?;
                        }
                        b'n' => {
                            self.literal(b"null", Kind::Null)?;
                        }
                        b'-' | b'0'..=b'9' => {
                            self.number()?;
                        }
                        _ => return Err(self.err()),
                    }
                    if self.after_value(&mut closers)? {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Scans `"key" :` inside an object and leaves the cursor at the value.
    fn member_key(&mut self) -> Result<(), JsonError> {
        self.skip_ws();
        if self.peek() != Some(b'"') {
            return Err(self.err());
        }
        self.string()?;
        self.skip_ws();
        if self.peek() != Some(b':') {
            return Err(self.err());
        }
        self.i += 1;
        self.skip_ws();
        Ok(())
    }

    /// After a value inside containers: consumes `,` (and the next key) or
    /// closers. Returns true when the outermost container has closed.
    fn after_value(&mut self, closers: &mut smallvec::SmallVec<[bool; 16]>) -> Result<bool, JsonError> {
        loop {
            let Some(&obj) = closers.last() else {
                return Ok(true);
            };
            self.skip_ws();
            match self.peek() {
                Some(b',') => {
                    self.i += 1;
                    self.skip_ws();
                    if obj {
                        self.member_key()?;
                    }
                    return Ok(false);
                }
                Some(b'}') if obj => {
                    self.i += 1;
                    closers.pop();
                }
                Some(b']') if !obj => {
                    self.i += 1;
                    closers.pop();
                }
                _ => return Err(self.err()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn scan(s: &str) -> Result<Vec<RawMember>, JsonError> {
        let mut v = Vec::new();
        scan_object(s.as_bytes(), DEFAULT_MAX_DEPTH, &mut v).map(|_| v)
    }

    fn key_of<'a>(s: &'a str, m: &RawMember) -> &'a str {
        &s[m.key_start as usize..m.key_end as usize]
    }

    #[test]
    fn scans_generator_line_members_in_order() {
        let s = r#"{"event_id":"e1","type":"view","user_id":"u7","ts":1767225595779,"context":{"device":"tv","placement":"search"},"price":1.5}"#;
        let m = scan(s).unwrap();
        let keys: Vec<_> = m.iter().map(|m| key_of(s, m)).collect();
        assert_eq!(keys, ["event_id", "type", "user_id", "ts", "context", "price"]);
        assert_eq!(m[3].kind, Kind::Integer);
        assert_eq!(m[4].kind, Kind::Object);
        assert_eq!(m[5].kind, Kind::Float);
        let ctx = &s.as_bytes()[m[4].value_start as usize..m[4].value_end as usize];
        let (k, _, a, b) = find_member(ctx, "placement").unwrap();
        assert_eq!((k, &ctx[a..b]), (Kind::String, &b"\"search\""[..]));
    }

    #[test]
    fn rejects_truncated_lines_at_every_cut() {
        let s = r#"{"event_id":"e1","type":"view","user_id":"u7","ts":17672,"context":{"device":"tv"}}"#;
        for cut in 1..s.len() {
            assert!(scan(&s[..cut]).is_err(), "accepted truncated {:?}", &s[..cut]);
        }
    }

    #[test]
    fn classifies_non_objects_and_bad_bytes() {
        assert_eq!(scan("").unwrap_err(), JsonError::Empty);
        assert_eq!(scan("[1,2]").unwrap_err(), JsonError::NotAnObject);
        assert_eq!(scan("42").unwrap_err(), JsonError::NotAnObject);
        assert_eq!(scan("\u{feff}{}").unwrap_err(), JsonError::ByteOrderMark);
        let mut v = Vec::new();
        assert_eq!(scan_object(b"{\"a\":\"\xff\"}", 8, &mut v).unwrap_err(), JsonError::InvalidUtf8);
        assert!(matches!(scan(r#"{"a":1} x"#).unwrap_err(), JsonError::Trailing(_)));
    }

    #[test]
    fn skip_plain_stops_at_the_first_special_byte() {
        for text in ["abcdefghijklmnop\"", "ab\\cdefghijklmnopq", "üüüüüüüü\u{1}x", "abcdefgh", "", "abcdefg\""]
        {
            let b = text.as_bytes();
            let expected = b.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20).unwrap_or(b.len());
            assert_eq!(skip_plain(b, 0), expected, "{text:?}");
        }
    }

    #[test]
    fn deep_nesting_is_rejected_without_recursion() {
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(200_000), "]".repeat(200_000));
        assert_eq!(scan(&deep).unwrap_err(), JsonError::TooDeep(DEFAULT_MAX_DEPTH));
        let ok = format!("{{\"a\":{}{}}}", "[".repeat(10), "]".repeat(10));
        assert!(scan(&ok).is_ok());
    }

    #[test]
    fn unescapes_pairs_and_rejects_lone_surrogates() {
        let mut out = String::new();
        assert!(unescape_into(br"\u00fc1\ud83d\ude00\n", &mut out));
        assert_eq!(out, "ü1😀\n");
        out.clear();
        assert!(!unescape_into(br"\ud800x", &mut out));
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            (-1e6f64..1e6).prop_map(serde_json::Value::from),
            "[a-zA-Z0-9 ü\"\\\\/\n\t]{0,8}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map("[a-z]{1,3}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// The oracle: serde_json accepts exactly what the scanner accepts,
        /// on valid documents and on every corruption of them.
        #[test]
        fn agrees_with_serde_json(v in json_value(), cut in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let text = serde_json::json!({"k": v}).to_string();
            prop_assert!(scan(&text).is_ok(), "rejected valid {}", text);
            let mut bad = text.clone().into_bytes();
            let i = cut.index(bad.len());
            bad[i] = byte;
            let ours = scan_object(&bad, 1000, &mut Vec::new()).is_ok();
            let parsed = serde_json::from_slice::<serde_json::Value>(&bad);
            // serde_json refuses numbers beyond f64 (1e309); the grammar, and Python, accept them.
            prop_assume!(!matches!(&parsed, Err(e) if e.to_string().contains("number out of range")));
            let theirs = matches!(parsed, Ok(serde_json::Value::Object(_)));
            prop_assert_eq!(ours, theirs, "disagree on {:?}", String::from_utf8_lossy(&bad));
        }
    }
}
