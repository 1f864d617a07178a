//! A dedup stage through the binary: the reference job with a `dedup` stage
//! on `event_id`, over a generated workload whose duplicates repeat earlier
//! lines verbatim, writes exactly what the plain reference job writes over
//! the same workload with the duplicates taken out, also while
//! checkpointing its dedup tables every few milliseconds.

use std::collections::HashSet;
use std::path::Path;

use crate::oracle::{self, LineKind};
use crate::support::{self, OUTPUT_A, OUTPUT_B};

/// The reference config with a dedup stage in the interactions flow.
fn dedup_config() -> String {
    with_dedup_stage(&support::reference_config())
}

/// The reference job's config at `path` with a dedup stage on `event_id`
/// in its interactions flow.
pub fn with_dedup_stage(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let rules = "fields = { user_id = \"string\", item_id = \"string\", ts = \"integer\" }\n";
    assert!(text.contains(rules), "{}: the interactions flow changed; update this test", path.display());
    text.replacen(rules, &format!("{rules}stages = [{{ type = \"dedup\", key = \"event_id\", ttl = \"1h\" }}]\n"), 1)
}

/// The input without the lines that repeat an earlier interaction's `event_id`.
pub fn without_duplicates(bytes: &[u8]) -> (Vec<u8>, usize) {
    let mut seen = HashSet::new();
    let (mut out, mut dropped) = (Vec::new(), 0);
    for line in support::input_lines(bytes) {
        if matches!(oracle::classify(line), LineKind::Interaction { .. }) {
            let v: serde_json::Value = serde_json::from_slice(line).unwrap();
            if let Some(id) = v.get("event_id").and_then(|x| x.as_str())
                && !seen.insert(id.to_owned())
            {
                dropped += 1;
                continue;
            }
        }
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    (out, dropped)
}

fn run(config: &Path, input: &Path, out: &Path, data_dir: Option<&Path>) {
    std::fs::create_dir_all(out).unwrap();
    let mut cmd = support::freshet();
    cmd.arg("run").arg("--config").arg(config).env("FRESHET_INPUT", input).env("FRESHET_OUTPUT", out);
    if let Some(dir) = data_dir {
        cmd.arg("--data-dir").arg(dir).env("FRESHET_CHECKPOINT_INTERVAL", "5ms");
    }
    support::run_with_deadline(&mut cmd, support::JOB_DEADLINE).assert_success();
}

#[test]
fn dedup_on_event_id_equals_the_job_over_the_input_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.ndjson");
    let args = ["--events", "40000", "--seed", "7", "--duplicate-rate", "0.05", "--users", "300", "--items", "200"];
    support::generate_events(&input, &args.map(String::from));
    let (clean, dropped) = without_duplicates(&std::fs::read(&input).unwrap());
    assert!(dropped > 1000, "the workload has only {dropped} duplicates; the test is weak");
    let clean_input = dir.path().join("clean.ndjson");
    std::fs::write(&clean_input, clean).unwrap();

    let config = dir.path().join("dedup.toml");
    std::fs::write(&config, dedup_config()).unwrap();
    let expected = dir.path().join("expected");
    run(&support::reference_config(), &clean_input, &expected, None);
    for (name, data_dir) in [("plain", None), ("checkpointed", Some(dir.path().join("data")))] {
        let out = dir.path().join(name);
        run(&config, &input, &out, data_dir.as_deref());
        for file in [OUTPUT_A, OUTPUT_B] {
            support::assert_same_lines(
                &format!("{name} run, {file}: dedup over duplicates vs no dedup over the clean input"),
                &support::read_sorted_csv(&out.join(file)),
                &support::read_sorted_csv(&expected.join(file)),
            );
        }
    }
}
