//! Python's text-to-value rules that the peer evaluator (`prequential_eval.py`)
//! applies to every field: `str.strip()` for ids and header names, `float()`
//! for timestamps, ratings and the command-line numbers, and the shortest
//! `repr` of a float that `Fraction(str(x))` reads back.
//!
//! Matching these exactly is what makes `freshet eval` see the same events,
//! ids and evaluation segment as the peer. Nothing here knows about files.

/// Whether Python's `str.isspace()` holds for `c`: Unicode White_Space plus
/// the four ASCII information separators U+001C..U+001F, which Python counts
/// as whitespace and Rust does not.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `s.strip()` in Python.
pub fn strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// `float(s)` in Python: surrounding whitespace allowed, `_` allowed between
/// digits, `inf`/`infinity`/`nan` in any case with an optional sign. `None`
/// where Python raises `ValueError` (non-ASCII digits, which Python also
/// accepts, are rejected here).
pub fn float(s: &str) -> Option<f64> {
    let t = strip(s);
    if !t.contains('_') {
        return t.parse().ok();
    }
    let bytes = t.as_bytes();
    let between_digits =
        |i: usize| i > 0 && bytes[i - 1].is_ascii_digit() && bytes.get(i + 1).is_some_and(u8::is_ascii_digit);
    if (0..bytes.len()).any(|i| bytes[i] == b'_' && !between_digits(i)) {
        return None;
    }
    t.replace('_', "").parse().ok()
}

/// The exact value of `x`'s shortest round-trip decimal form (Python's
/// `str(x)`, Rust's `{:e}`), as `(digits, exponent)` meaning
/// `digits * 10^exponent`, for finite `x >= 0`.
///
/// # Panics
/// If `x` is negative or not finite (callers validate the range first).
pub fn shortest_decimal(x: f64) -> (u64, i32) {
    assert!(x.is_finite() && x >= 0.0, "shortest_decimal needs a finite non-negative number, got {x}");
    let text = format!("{x:e}");
    let (mantissa, exponent) = text.split_once('e').expect("{:e} always writes an exponent");
    let exponent: i32 = exponent.parse().expect("{:e} writes a decimal exponent");
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits: u64 = format!("{whole}{fraction}").parse().expect("at most 17 significant digits fit in u64");
    (digits, exponent - fraction.len() as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_removes_python_whitespace_only() {
        assert_eq!(strip(" \t a b \r\n"), "a b");
        assert_eq!(strip("\u{1c}x\u{1f}"), "x");
        assert_eq!(strip("\u{a0}x\u{3000}"), "x");
        assert_eq!(strip("\u{feff}x"), "\u{feff}x");
    }

    #[test]
    fn float_accepts_what_python_accepts() {
        assert_eq!(float(" 1396437466.94 "), Some(1396437466.94));
        assert_eq!(float("1_000.5"), Some(1000.5));
        assert_eq!(float("1e3"), Some(1000.0));
        assert_eq!(float(".5"), Some(0.5));
        assert_eq!(float("5."), Some(5.0));
        assert_eq!(float("-Infinity"), Some(f64::NEG_INFINITY));
        assert!(float("nan").is_some_and(f64::is_nan));
    }

    #[test]
    fn float_rejects_what_python_rejects() {
        for bad in ["", " ", "1_", "_1", "1__0", "1._5", "0x10", "1,5", "abc", "1 2"] {
            assert_eq!(float(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn shortest_decimal_is_python_str() {
        assert_eq!(shortest_decimal(0.2), (2, -1));
        assert_eq!(shortest_decimal(0.25), (25, -2));
        assert_eq!(shortest_decimal(1.0), (1, 0));
        assert_eq!(shortest_decimal(0.0), (0, 0));
        assert_eq!(shortest_decimal(0.1 + 0.2), (30000000000000004, -17));
        assert_eq!(shortest_decimal(1e-300), (1, -300));
    }
}
