//! The project's own oracle for the reference job: a naive recompute from
//! scratch over the whole input with `serde_json`, sharing no code with the
//! engine. It applies the reference validity rule per line and groups events
//! by window; with the generator's bounded disorder no event is late, so the
//! streaming job must equal this plain grouping.
//!
//! The rule (shared/workload/README.md): a line counts iff it parses as a JSON
//! object with `type` in {view, click, add_to_cart, purchase}, `user_id` and
//! `item_id` JSON strings and `ts` a JSON integer; `type = "item_upsert"` is a
//! catalog event, neither counted nor malformed; everything else is malformed.
//!
//! Known differences from Python's `json` (which `check_ref_job.py` uses),
//! none of which the generator produces: Python accepts `NaN`/`Infinity`,
//! integers beyond 64 bits, nesting deeper than 128 (up to its recursion
//! limit) and a UTF-8 byte-order mark before the first line byte; this oracle,
//! like the contract, rejects them. The `oracle_matches_check_ref_job` test
//! below keeps the two equal on generated inputs.

use std::collections::HashMap;

use serde_json::Value;

use crate::support::{self, input_lines};

/// Tumbling window size of job (a), and slide of job (b), in ms.
pub const FIVE_MINUTES_MS: i128 = 300_000;
/// Hopping window size of job (b), in ms.
pub const ONE_HOUR_MS: i128 = 3_600_000;

/// The interaction types the reference job counts.
const TYPES: [&str; 4] = ["view", "click", "add_to_cart", "purchase"];

/// What the reference rule makes of one line.
#[derive(Debug)]
pub enum LineKind {
    /// A counted event.
    Interaction {
        /// `type`.
        kind: String,
        /// `user_id`, decoded.
        user_id: String,
        /// `item_id`, decoded.
        item_id: String,
        /// `ts`, epoch ms (wide enough for any 64-bit JSON integer).
        ts: i128,
    },
    /// An `item_upsert` line, with its `ts` when that is a JSON integer.
    Catalog {
        /// `ts`, epoch ms.
        ts: Option<i128>,
    },
    /// Anything else: must be dead-lettered.
    Malformed,
}

/// Classifies one line (terminator removed; a trailing `\r` is JSON
/// whitespace and harmless).
pub fn classify(line: &[u8]) -> LineKind {
    let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(line) else {
        return LineKind::Malformed;
    };
    let kind = object.get("type").and_then(Value::as_str);
    let ts = match object.get("ts") {
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => {
            n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from))
        }
        _ => None,
    };
    if kind == Some("item_upsert") {
        return LineKind::Catalog { ts };
    }
    let user_id = object.get("user_id").and_then(Value::as_str);
    let item_id = object.get("item_id").and_then(Value::as_str);
    match (kind, user_id, item_id, ts) {
        (Some(kind), Some(user_id), Some(item_id), Some(ts)) if TYPES.contains(&kind) => LineKind::Interaction {
            kind: kind.to_owned(),
            user_id: user_id.to_owned(),
            item_id: item_id.to_owned(),
            ts,
        },
        _ => LineKind::Malformed,
    }
}

/// The start of the window of size `size` aligned to the epoch holding `ts`.
pub fn window_start(ts: i128, size: i128) -> i128 {
    ts - ts.rem_euclid(size)
}

/// The reference job's expected results for one input.
#[derive(Debug, Default)]
pub struct Expected {
    /// Job (a) lines `ws,we,user_id,type,count`, byte-sorted.
    pub lines_a: Vec<String>,
    /// Job (b) lines `ws,we,item_id,count`, byte-sorted.
    pub lines_b: Vec<String>,
    /// 0-based indices of the malformed lines, ascending.
    pub malformed: Vec<usize>,
    /// Number of counted interactions.
    pub interactions: usize,
    /// Number of catalog lines.
    pub catalog: usize,
    /// Interactions dropped from at least one window as late.
    pub late_events: usize,
}

/// Bounded out-of-orderness of the reference job.
pub const OUT_OF_ORDERNESS_MS: i128 = 5000;

/// The reference job as Flink computes it with a watermark after every event
/// (`max event time so far - 5 s - 1`): a window whose end - 1 is at or below
/// the watermark an event meets does not take that event. When no event is
/// late this equals plain grouping (check_ref_job.py's rule).
pub fn compute(input: &[u8]) -> Expected {
    compute_with(input, true)
}

/// Plain grouping, ignoring lateness: check_ref_job.py's rule.
pub fn compute_grouping(input: &[u8]) -> Expected {
    compute_with(input, false)
}

/// Recomputes the reference job over the whole input, from scratch.
fn compute_with(input: &[u8], lateness: bool) -> Expected {
    let mut expected = Expected::default();
    let mut per_user_type: HashMap<(i128, String, String), u64> = HashMap::new();
    let mut per_item_window: HashMap<(i128, String), u64> = HashMap::new();
    let mut max_ts: Option<i128> = None;
    for (offset, line) in input_lines(input).into_iter().enumerate() {
        match classify(line) {
            LineKind::Malformed => expected.malformed.push(offset),
            LineKind::Catalog { ts } => {
                expected.catalog += 1;
                if let Some(ts) = ts {
                    max_ts = Some(max_ts.map_or(ts, |m| m.max(ts)));
                }
            }
            LineKind::Interaction { kind, user_id, item_id, ts } => {
                expected.interactions += 1;
                let watermark = match (lateness, max_ts) {
                    (true, Some(m)) => m - OUT_OF_ORDERNESS_MS - 1,
                    _ => i128::MIN,
                };
                let mut late = false;
                if kind == "view" {
                    let slice = window_start(ts, FIVE_MINUTES_MS);
                    for k in 0..ONE_HOUR_MS / FIVE_MINUTES_MS {
                        let start = slice - k * FIVE_MINUTES_MS;
                        if start + ONE_HOUR_MS - 1 <= watermark {
                            late = true;
                            continue;
                        }
                        *per_item_window.entry((start, item_id.clone())).or_default() += 1;
                    }
                }
                let start = window_start(ts, FIVE_MINUTES_MS);
                if start + FIVE_MINUTES_MS - 1 <= watermark {
                    late = true;
                } else {
                    *per_user_type.entry((start, user_id, kind)).or_default() += 1;
                }
                expected.late_events += usize::from(late);
                max_ts = Some(max_ts.map_or(ts, |m| m.max(ts)));
            }
        }
    }
    expected.lines_a = per_user_type
        .into_iter()
        .map(|((start, user, kind), count)| format!("{start},{},{user},{kind},{count}", start + FIVE_MINUTES_MS))
        .collect();
    // Each 5-minute slice of views lies in the 12 hopping windows that start
    // at the slice and at the 11 slides before it.
    expected.lines_b = per_item_window
        .into_iter()
        .map(|((start, item), count)| format!("{start},{},{item},{count}", start + ONE_HOUR_MS))
        .collect();
    expected.lines_a.sort_unstable();
    expected.lines_b.sort_unstable();
    expected
}

/// Guards the oracle: on a generated input with every kind of line
/// (malformed, duplicates, catalog, 5 s disorder), its results equal those of
/// `check_ref_job.py`, whose output equals Apache Flink's.
#[test]
fn oracle_matches_check_ref_job() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.ndjson");
    let args: Vec<String> = [
        "--events",
        "30000",
        "--seed",
        "11",
        "--disorder-ms",
        "5000",
        "--malformed-rate",
        "0.05",
        "--duplicate-rate",
        "0.02",
        "--users",
        "3000",
        "--items",
        "500",
    ]
    .map(String::from)
    .to_vec();
    support::generate_events(&input, &args);
    let expect_dir = dir.path().join("exp");
    let checker = support::shared_file("peers/flink/check_ref_job.py");
    let run = support::run_python(
        &checker,
        &["--input".into(), input.display().to_string(), "--expect-dir".into(), expect_dir.display().to_string()],
    );

    let ours = compute_grouping(&std::fs::read(&input).unwrap());
    let theirs_a = support::read_sorted_csv(&expect_dir.join("expected_a.csv"));
    let theirs_b = support::read_sorted_csv(&expect_dir.join("expected_b.csv"));
    support::assert_same_lines("job (a): oracle vs check_ref_job.py", &ours.lines_a, &theirs_a);
    support::assert_same_lines("job (b): oracle vs check_ref_job.py", &ours.lines_b, &theirs_b);
    let stats =
        format!("interactions={} catalog={} malformed={}", ours.interactions, ours.catalog, ours.malformed.len());
    assert!(
        run.stdout_text().contains(&stats),
        "line counts differ: oracle has {stats}; check_ref_job.py printed:\n{}",
        run.stdout_text()
    );
    assert!(
        ours.malformed.len() > 1000 && ours.catalog > 100,
        "the input should exercise malformed and catalog lines: {stats}"
    );
}

/// The window arithmetic floors towards negative infinity, like Python's `%`.
#[test]
fn oracle_window_start_floors_negative_timestamps() {
    assert_eq!(window_start(1_767_225_600_000, FIVE_MINUTES_MS), 1_767_225_600_000);
    assert_eq!(window_start(1_767_225_899_999, FIVE_MINUTES_MS), 1_767_225_600_000);
    assert_eq!(window_start(-1, FIVE_MINUTES_MS), -300_000);
    assert_eq!(window_start(0, ONE_HOUR_MS), 0);
}

#[test]
fn oracle_drops_events_only_from_windows_the_watermark_has_passed() {
    let line = |ty: &str, ts: i64| format!(r#"{{"type":"{ty}","user_id":"u1","item_id":"i1","ts":{ts}}}"#);
    // 1_000_000 drives the watermark to 994_999; the view at 600_000 is then
    // late for tumbling window [600000, 900000) but on time for the hopping
    // windows ending after 994_999 (those starting at 0 and later).
    let input = [line("view", 1_000_000), line("view", 600_000)].join("\n");
    let e = compute(input.as_bytes());
    assert_eq!(e.late_events, 1);
    assert_eq!(e.lines_a, vec!["900000,1200000,u1,view,1".to_string()]);
    assert!(e.lines_b.contains(&"0,3600000,i1,2".to_string()), "{:?}", e.lines_b);
    assert!(!e.lines_b.iter().any(|l| l.starts_with("-2700000,")), "{:?}", e.lines_b);
    let g = compute_grouping(input.as_bytes());
    assert_eq!(g.late_events, 0);
    assert_eq!(g.lines_a.len(), 2);
}
