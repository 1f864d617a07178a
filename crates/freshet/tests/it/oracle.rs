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
    /// An `item_upsert` line.
    Catalog,
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
    if kind == Some("item_upsert") {
        return LineKind::Catalog;
    }
    let ts = match object.get("ts") {
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => {
            n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from))
        }
        _ => None,
    };
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
}

/// Recomputes the reference job over the whole input.
pub fn compute(input: &[u8]) -> Expected {
    let mut expected = Expected::default();
    let mut per_user_type: HashMap<(i128, String, String), u64> = HashMap::new();
    let mut views_per_slice: HashMap<(i128, String), u64> = HashMap::new();
    for (offset, line) in input_lines(input).into_iter().enumerate() {
        match classify(line) {
            LineKind::Malformed => expected.malformed.push(offset),
            LineKind::Catalog => expected.catalog += 1,
            LineKind::Interaction { kind, user_id, item_id, ts } => {
                expected.interactions += 1;
                if kind == "view" {
                    let slice = window_start(ts, FIVE_MINUTES_MS);
                    *views_per_slice.entry((slice, item_id)).or_default() += 1;
                }
                let start = window_start(ts, FIVE_MINUTES_MS);
                *per_user_type.entry((start, user_id, kind)).or_default() += 1;
            }
        }
    }
    expected.lines_a = per_user_type
        .into_iter()
        .map(|((start, user, kind), count)| format!("{start},{},{user},{kind},{count}", start + FIVE_MINUTES_MS))
        .collect();
    // Each 5-minute slice of views lies in the 12 hopping windows that start
    // at the slice and at the 11 slides before it.
    let mut per_item_window: HashMap<(i128, &str), u64> = HashMap::new();
    for ((slice, item), count) in &views_per_slice {
        for k in 0..ONE_HOUR_MS / FIVE_MINUTES_MS {
            *per_item_window.entry((slice - k * FIVE_MINUTES_MS, item.as_str())).or_default() += count;
        }
    }
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

    let ours = compute(&std::fs::read(&input).unwrap());
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
