//! Bad and odd input through the reference job's file source, written by hand
//! byte for byte. Each bad line must reach the dead-letter file with a reason
//! while the job goes on: the valid lines around it are counted and the job
//! exits 0. Valid oddities (CRLF, blanks, Unicode escapes, unknown fields,
//! field order, a last line without terminator) must be accepted and counted.
//!
//! Expected job (a) rows are written out explicitly; `oracle` is also run on
//! each input, to guard that the hand-written lines are what the reference
//! rule says they are.

use std::time::Duration;

use crate::oracle;
use crate::support::{self, DlqRecord, Finished, OUTPUT_A, OUTPUT_B, RawCheck};

/// The default maximum event size of the file source.
const MAX_EVENT_BYTES: usize = 1 << 20;

/// How long the job may take over a 10 MiB line plus two small ones.
const OVERSIZED_DEADLINE: Duration = Duration::from_secs(30);

/// A valid view before the bad lines, and one after.
const BEFORE: &str = r#"{"type":"view","user_id":"before","item_id":"i1","ts":1767225600100}"#;
const AFTER: &str = r#"{"type":"view","user_id":"after","item_id":"i1","ts":1767225600200}"#;

/// Job (a)'s rows for `BEFORE` and `AFTER`, byte-sorted.
const SURROUNDING_ROWS_A: [&str; 2] =
    ["1767225600000,1767225900000,after,view,1", "1767225600000,1767225900000,before,view,1"];

/// Job (b)'s rows for `BEFORE` and `AFTER`: both views of `i1` lie in the
/// 5-minute slice starting at 1767225600000, hence in the 12 one-hour windows
/// starting there and at the 11 slides before it.
fn surrounding_rows_b() -> Vec<String> {
    let slice = 1_767_225_600_000_i64;
    let mut rows: Vec<String> = (0..12)
        .map(|k| {
            let start = slice - k * 300_000;
            format!("{start},{},i1,2", start + 3_600_000)
        })
        .collect();
    rows.sort_unstable();
    rows
}

/// What one run of the job over hand-written bytes produced.
struct HandRun {
    run: Finished,
    lines_a: Vec<String>,
    lines_b: Vec<String>,
    dlq: Vec<DlqRecord>,
    _dir: tempfile::TempDir,
}

/// Writes `input` to a file, runs the reference job over it within
/// `deadline`, requires exit 0, and reads the three outputs.
fn run_job_on_bytes(input: &[u8], deadline: Duration) -> HandRun {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.ndjson");
    std::fs::write(&path, input).unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let run = support::run_reference_job(&path, &out, deadline);
    run.assert_success();
    HandRun {
        lines_a: support::read_sorted_csv(&out.join(OUTPUT_A)),
        lines_b: support::read_sorted_csv(&out.join(OUTPUT_B)),
        dlq: support::read_dlq(&out.join(support::DLQ)),
        run,
        _dir: dir,
    }
}

/// Puts `bad` lines between `BEFORE` and `AFTER` (each terminated by `\n`),
/// runs the job, and requires: exit 0 within `deadline`; one dead-letter
/// record per bad line at its offset (`raw` compared where it is UTF-8 and
/// within the size limit); the surrounding views counted in (a) and (b).
fn assert_dead_lettered_between_valid_lines(what: &str, bad: &[&[u8]], deadline: Duration) {
    let mut input = Vec::new();
    for line in [BEFORE.as_bytes()].iter().chain(bad).chain([AFTER.as_bytes()].iter()) {
        input.extend_from_slice(line);
        input.push(b'\n');
    }
    let bad_offsets: Vec<usize> = (1..=bad.len()).collect();
    if bad.iter().all(|line| line.len() <= MAX_EVENT_BYTES) {
        assert_eq!(
            oracle::compute(&input).malformed,
            bad_offsets,
            "{what}: test input is wrong: the reference rule must call exactly the bad lines malformed"
        );
    }

    let job = run_job_on_bytes(&input, deadline);
    let lines = support::input_lines(&input);
    support::assert_dlq(what, &job.dlq, &lines, &bad_offsets, |offset| {
        let line = lines[offset];
        if line.len() <= MAX_EVENT_BYTES && std::str::from_utf8(line).is_ok() {
            RawCheck::Exact
        } else {
            RawCheck::Unchecked
        }
    });
    let expected_a: Vec<String> = SURROUNDING_ROWS_A.map(String::from).to_vec();
    support::assert_same_lines(
        &format!("{what}: job (a) rows of the valid lines around the bad ones"),
        &job.lines_a,
        &expected_a,
    );
    support::assert_same_lines(
        &format!("{what}: job (b) rows of the valid lines around the bad ones"),
        &job.lines_b,
        &surrounding_rows_b(),
    );
}

#[test]
fn malformed_json_lines_go_to_dlq_and_job_continues() {
    assert_dead_lettered_between_valid_lines(
        "malformed JSON",
        &[
            br#"{"type":"view","user_id":"t1","item_id":"i1","ts":1767225600150"#,
            br#"{"type":"view","user_id":"t2","item_"#,
            br#"{"#,
            br#"not json at all"#,
            br#"{"type":"view","user_id":"t3","item_id":"i1","ts":1767225600150}}"#,
            br#"{"type":"view","user_id":"t4","item_id":"i1","ts":1767225600150} x"#,
            br#"{"type":"view","user_id":"t5","item_id":"i1","ts":1767225600150}{"type":"view"}"#,
            br#"{"type":"view","user_id":"t6","item_id":"i1","ts":1767225600150,}"#,
            br#"{'type':'view','user_id':'t7','item_id':'i1','ts':1767225600150}"#,
            br#"{type:"view",user_id:"t8",item_id:"i1",ts:1767225600150}"#,
            b"{\"type\":\"view\",\"user_id\":\"t\t9\",\"item_id\":\"i1\",\"ts\":1767225600150}",
            br#"{"type":"view","user_id":"t10\x","item_id":"i1","ts":1767225600150}"#,
        ],
        support::JOB_DEADLINE,
    );
}

#[test]
fn ts_as_string_is_rejected_not_coerced() {
    assert_dead_lettered_between_valid_lines(
        "ts as a string",
        &[
            br#"{"type":"view","user_id":"s1","item_id":"i1","ts":"123"}"#,
            br#"{"type":"view","user_id":"s2","item_id":"i1","ts":"1767225600150"}"#,
        ],
        support::JOB_DEADLINE,
    );
}

#[test]
fn wrong_field_types_are_rejected() {
    assert_dead_lettered_between_valid_lines(
        "wrong field types",
        &[
            br#"{"type":"view","user_id":75111,"item_id":"i1","ts":1767225600150}"#,
            br#"{"type":"view","user_id":"w2","item_id":41323,"ts":1767225600150}"#,
            br#"{"type":"view","user_id":null,"item_id":"i1","ts":1767225600150}"#,
            br#"{"type":"view","user_id":{"id":"w4"},"item_id":"i1","ts":1767225600150}"#,
            br#"{"type":"view","user_id":["w5"],"item_id":"i1","ts":1767225600150}"#,
            br#"{"type":1,"user_id":"w6","item_id":"i1","ts":1767225600150}"#,
            br#"{"type":"View","user_id":"w7","item_id":"i1","ts":1767225600150}"#,
            br#"{"type":"share","user_id":"w8","item_id":"i1","ts":1767225600150}"#,
            br#"{"type":"view","user_id":"w9","item_id":"i1","ts":1767225600150.0}"#,
            br#"{"type":"view","user_id":"w10","item_id":"i1","ts":1.76722560015e12}"#,
            br#"{"type":"view","user_id":"w11","item_id":"i1","ts":true}"#,
            br#"{"type":"view","user_id":"w12","item_id":"i1","ts":null}"#,
            br#"{"type":"view","user_id":"w13","item_id":"i1","ts":[1767225600150]}"#,
        ],
        support::JOB_DEADLINE,
    );
}

#[test]
fn missing_required_fields_are_rejected() {
    assert_dead_lettered_between_valid_lines(
        "missing required field",
        &[
            br#"{"user_id":"m1","item_id":"i1","ts":1767225600150}"#,
            br#"{"type":"view","item_id":"i1","ts":1767225600150}"#,
            br#"{"type":"view","user_id":"m3","ts":1767225600150}"#,
            br#"{"type":"view","user_id":"m4","item_id":"i1"}"#,
            br#"{}"#,
        ],
        support::JOB_DEADLINE,
    );
}

#[test]
fn non_utf8_bytes_are_rejected() {
    assert_dead_lettered_between_valid_lines(
        "non-UTF-8 bytes",
        &[
            // Latin-1 "ü" inside a string.
            b"{\"type\":\"view\",\"user_id\":\"\xfc1\",\"item_id\":\"i1\",\"ts\":1767225600150}",
            // A byte never valid in UTF-8.
            b"{\"type\":\"view\",\"user_id\":\"n\xff2\",\"item_id\":\"i1\",\"ts\":1767225600150}",
            // An overlong encoding of '/'.
            b"{\"type\":\"view\",\"user_id\":\"n\xc0\xaf3\",\"item_id\":\"i1\",\"ts\":1767225600150}",
            // A UTF-16 surrogate encoded as UTF-8.
            b"{\"type\":\"view\",\"user_id\":\"n\xed\xa0\x804\",\"item_id\":\"i1\",\"ts\":1767225600150}",
            // A stray continuation byte after a complete object.
            b"{\"type\":\"view\",\"user_id\":\"n5\",\"item_id\":\"i1\",\"ts\":1767225600150}\x80",
        ],
        support::JOB_DEADLINE,
    );
}

#[test]
fn utf8_byte_order_mark_at_line_start_is_rejected() {
    assert_dead_lettered_between_valid_lines(
        "UTF-8 byte-order mark",
        &[b"\xef\xbb\xbf{\"type\":\"view\",\"user_id\":\"bom\",\"item_id\":\"i1\",\"ts\":1767225600150}"],
        support::JOB_DEADLINE,
    );
}

#[test]
fn empty_and_blank_lines_are_rejected() {
    assert_dead_lettered_between_valid_lines("empty line", &[b"", b" \t "], support::JOB_DEADLINE);
}

#[test]
fn deeply_nested_extra_field_is_rejected_without_crashing() {
    let depth = 100_000;
    let mut line = br#"{"type":"view","user_id":"deep","item_id":"i1","ts":1767225600150,"extra":"#.to_vec();
    line.extend(std::iter::repeat_n(b'[', depth));
    line.extend(std::iter::repeat_n(b']', depth));
    line.push(b'}');
    assert_dead_lettered_between_valid_lines("100k nested arrays", &[&line], support::JOB_DEADLINE);
}

#[test]
fn line_over_max_event_size_is_rejected_and_job_finishes_promptly() {
    // A well-formed, valid view: only its size (10 MiB) makes it bad.
    let mut line = br#"{"type":"view","user_id":"huge","item_id":"i1","ts":1767225600150,"pad":""#.to_vec();
    line.extend(std::iter::repeat_n(b'x', 10 << 20));
    line.extend_from_slice(br#""}"#);
    assert_dead_lettered_between_valid_lines("10 MiB line", &[&line], OVERSIZED_DEADLINE);
}

#[test]
fn json_array_or_scalar_instead_of_object_is_rejected() {
    assert_dead_lettered_between_valid_lines(
        "not an object",
        &[
            br#"[]"#,
            br#"[{"type":"view","user_id":"a1","item_id":"i1","ts":1767225600150}]"#,
            br#""view""#,
            br#"42"#,
            br#"null"#,
            br#"true"#,
        ],
        support::JOB_DEADLINE,
    );
}

#[test]
fn valid_oddities_are_accepted_and_counted() {
    // Timestamps never go back by more than the 5 s out-of-orderness, so no
    // line is late.
    let input = concat!(
        // CRLF line ending.
        r#"{"type":"view","user_id":"u1","item_id":"i1","ts":1767225600001}"#,
        "\r\n",
        // Blanks and tabs around the object.
        " \t ",
        r#"{"type":"view","user_id":"u1","item_id":"i1","ts":1767225600002}"#,
        "\t \n",
        // The same user ü1, escaped then raw.
        r#"{"type":"click","user_id":"\u00fc1","item_id":"i2","ts":1767225600003}"#,
        "\n",
        r#"{"type":"click","user_id":"ü1","item_id":"i2","ts":1767225600004}"#,
        "\n",
        // The same user 😀, as a surrogate-pair escape then raw.
        r#"{"type":"view","user_id":"\ud83d\ude00","item_id":"i1","ts":1767225600005}"#,
        "\n",
        r#"{"type":"view","user_id":"😀","item_id":"i1","ts":1767225600006}"#,
        "\n",
        // Escaped ASCII: user u1, item i1.
        r#"{"type":"view","user_id":"u\u0031","item_id":"\u00691","ts":1767225600007}"#,
        "\n",
        // Unknown fields, nested values, a price.
        r#"{"event_id":"e9","type":"purchase","user_id":"u2","item_id":"i3","session_id":"s1","ts":1767225600008,"context":{"device":"tv","tags":[1,{"a":null}]},"price":12.5,"flag":true}"#,
        "\n",
        // Fields in another order, blanks inside.
        r#"{ "ts" : 1767225600009 , "item_id" : "i3" , "user_id" : "u2" , "type" : "add_to_cart" }"#,
        "\n",
        // A catalog event: neither counted nor dead-lettered.
        r#"{"event_id":"e10","type":"item_upsert","item_id":"i9","ts":1767225600010,"category":"c1","tags":["t1"],"title":"red lamp"}"#,
        "\n",
        // A blank before CRLF.
        r#"{"type":"purchase","user_id":"u2","item_id":"i3","ts":1767225600011} "#,
        "\r\n",
        // Exactly at the next 5-minute window's start.
        r#"{"type":"view","user_id":"u1","item_id":"i1","ts":1767225900000}"#,
        "\n",
        // The last line has no terminator.
        r#"{"type":"click","user_id":"u3","item_id":"i4","ts":1767225900001}"#,
    );
    let expected_a: Vec<String> = [
        "1767225600000,1767225900000,u1,view,3",
        "1767225600000,1767225900000,u2,add_to_cart,1",
        "1767225600000,1767225900000,u2,purchase,2",
        "1767225600000,1767225900000,ü1,click,2",
        "1767225600000,1767225900000,😀,view,2",
        "1767225900000,1767226200000,u1,view,1",
        "1767225900000,1767226200000,u3,click,1",
    ]
    .map(String::from)
    .to_vec();
    let oracle = oracle::compute(input.as_bytes());
    support::assert_same_lines("valid oddities: test's expected rows vs oracle", &oracle.lines_a, &expected_a);
    assert!(oracle.malformed.is_empty(), "test input is wrong: {oracle:?}");

    let job = run_job_on_bytes(input.as_bytes(), support::JOB_DEADLINE);
    support::assert_same_lines("valid oddities: job (a)", &job.lines_a, &expected_a);
    support::assert_same_lines("valid oddities: job (b)", &job.lines_b, &oracle.lines_b);
    assert!(
        job.dlq.is_empty(),
        "valid oddities: nothing may be dead-lettered, got {:?}\n{}",
        job.dlq.iter().take(5).collect::<Vec<_>>(),
        job.run.describe()
    );
}
