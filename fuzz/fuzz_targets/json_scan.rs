//! The engine's JSON scanner against serde_json: both must agree on whether
//! a line is a JSON object, and for a valid one the scanned members (keys,
//! kinds, escape flags, value spans, last-wins lookup) must match serde_json's
//! reading of the same line.

#![no_main]

use freshet_engine::json::{self, JsonError, Kind, RawMember};
use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;
use serde_json::Value;

/// Nesting limit for both (serde_json's own limit is 128).
const MAX_DEPTH: u32 = 64;

fuzz_target!(|data: &[u8]| {
    let line = json::trim(data);
    let mut members = Vec::new();
    let ours = json::scan_object(line, MAX_DEPTH, &mut members);
    if matches!(ours, Err(JsonError::TooDeep(_))) {
        return;
    }
    // JSON text is UTF-8 (RFC 8259 section 8.1), which serde_json checks only
    // when reading from a str. IgnoredAny checks the grammar without building
    // values (which would refuse lone surrogate escapes; the grammar allows them).
    let theirs = std::str::from_utf8(line).map(serde_json::from_str::<IgnoredAny>);
    let theirs = match theirs {
        Ok(parsed) => parsed.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let is_object = line.first() == Some(&b'{');
    match (&ours, &theirs) {
        (Ok(()), Ok(_)) => assert!(is_object, "scanner accepted a non-object"),
        (Err(JsonError::NotAnObject), Ok(_)) => assert!(!is_object, "scanner refused an object as not one"),
        (Err(e), Ok(_)) => panic!("scanner refused valid JSON: {e}"),
        (Ok(()), Err(e)) => panic!("scanner accepted invalid JSON ({e})"),
        (Err(_), Err(_)) => {}
    }
    if ours.is_ok() {
        check_members(line, &members);
    }
});

fn check_members(line: &[u8], members: &[RawMember]) {
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(line) else {
        // Lone surrogates: valid grammar, but no Rust string.
        return;
    };
    let mut keys = Vec::new();
    for m in members {
        let raw_key = &line[m.key_start as usize..m.key_end as usize];
        assert_eq!(m.key_escaped, raw_key.contains(&b'\\'), "key escape flag");
        let mut key = String::new();
        assert!(json::unescape_into(raw_key, &mut key), "key of a valid object does not unescape");
        let raw = &line[m.value_start as usize..m.value_end as usize];
        let value: Value = serde_json::from_slice(raw).expect("a member's span is its JSON value");
        let kind_ok = match m.kind {
            Kind::String => value.is_string() && m.value_escaped == raw.contains(&b'\\'),
            Kind::Integer => value.is_number() && !raw.iter().any(|b| matches!(b, b'.' | b'e' | b'E')),
            Kind::Float => value.is_number() && raw.iter().any(|b| matches!(b, b'.' | b'e' | b'E')),
            Kind::Bool => value.is_boolean(),
            Kind::Null => value.is_null(),
            Kind::Object => value.is_object(),
            Kind::Array => value.is_array(),
        };
        assert!(kind_ok, "member {key:?}: kind {:?} for {value}", m.kind);
        assert!(!m.value_escaped || m.kind == Kind::String, "escape flag on a non-string");
        keys.push((key, value, m.value_start as usize, m.value_end as usize));
    }
    let mut distinct: Vec<&str> = keys.iter().map(|(k, ..)| k.as_str()).collect();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), map.len(), "member names");
    for name in distinct {
        // Last wins, in both.
        let (_, value, start, end) = keys.iter().rev().find(|(k, ..)| k == name).expect("a listed key");
        assert_eq!(Some(value), map.get(name), "value of {name:?}");
        let found = json::find_member(line, name).map(|(_, _, s, e)| (s, e));
        assert_eq!(found, Some((*start, *end)), "find_member({name:?})");
    }
}
