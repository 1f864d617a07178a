//! The reference job (shared/workload/README.md) run end to end by the
//! binary over generated workloads, checked against two oracles: the
//! project's own recompute (`oracle`) on every case, and the Flink-equivalent
//! `check_ref_job.py` on a few. Every case also checks the dead-letter file
//! line by line against the reference validity rule.
//!
//! The cases are a table; each test runs one row, so they run in parallel and
//! a failure names the case.

use std::path::Path;

use crate::oracle;
use crate::support::{self, OUTPUT_A, OUTPUT_B, RawCheck};

/// One generated workload and how to check it.
#[derive(Debug, Clone, Copy)]
struct Case {
    seed: u64,
    events: u64,
    disorder_ms: u64,
    malformed_rate: f64,
    duplicate_rate: f64,
    rate_per_s: f64,
    /// Further `gen_events.py` arguments (e.g. fewer users for hot keys).
    extra_args: &'static [&'static str],
    /// Also run `check_ref_job.py` on the job's output (slow: Python).
    flink_checker: bool,
}

/// Defaults of the generator, which the cases change a few at a time.
const BASE: Case = Case {
    seed: 42,
    events: 20_000,
    disorder_ms: 5000,
    malformed_rate: 0.001,
    duplicate_rate: 0.0,
    rate_per_s: 1000.0,
    extra_args: &[],
    flink_checker: false,
};

impl Case {
    fn generator_args(&self) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--seed".into(),
            self.seed.to_string(),
            "--events".into(),
            self.events.to_string(),
            "--disorder-ms".into(),
            self.disorder_ms.to_string(),
            "--malformed-rate".into(),
            self.malformed_rate.to_string(),
            "--duplicate-rate".into(),
            self.duplicate_rate.to_string(),
            "--rate-per-s".into(),
            self.rate_per_s.to_string(),
        ];
        args.extend(self.extra_args.iter().map(|a| a.to_string()));
        args
    }

    fn label(&self) -> String {
        format!("gen_events.py {}", self.generator_args().join(" "))
    }
}

/// Generates the case's input, runs the job, and checks its outputs and DLQ
/// against the oracle (and `check_ref_job.py` if the case asks for it).
fn check_case(case: Case) {
    let label = case.label();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.ndjson");
    support::generate_events(&input, &case.generator_args());
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();

    let run = support::run_reference_job(&input, &out, support::JOB_DEADLINE);
    assert!(run.status.success(), "[{label}] {}", run.describe());

    let bytes = std::fs::read(&input).unwrap();
    let expected = oracle::compute(&bytes);
    assert!(
        !expected.lines_a.is_empty() && !expected.lines_b.is_empty(),
        "[{label}] the generated input has no interactions; the case is useless"
    );
    let actual_a = support::read_sorted_csv(&out.join(OUTPUT_A));
    support::assert_same_lines(&format!("[{label}] job (a) {OUTPUT_A} vs oracle"), &actual_a, &expected.lines_a);
    let actual_b = support::read_sorted_csv(&out.join(OUTPUT_B));
    support::assert_same_lines(&format!("[{label}] job (b) {OUTPUT_B} vs oracle"), &actual_b, &expected.lines_b);

    let lines = support::input_lines(&bytes);
    let records = support::read_dlq(&out.join(support::DLQ));
    assert_eq!(records.len(), expected.malformed.len(), "[{label}] number of dead-letter records vs malformed lines");
    support::assert_dlq(&label, &records, &lines, &expected.malformed, |_| RawCheck::Exact);

    if case.flink_checker {
        // The checker groups plainly; that equals Flink only when nothing is late.
        assert_eq!(expected.late_events, 0, "[{label}] a checker case must have no late events");
        check_with_flink_checker(&label, &input, &out, &dir.path().join("exp"));
    }
}

/// Runs `check_ref_job.py` on the job's outputs; fails unless it exits 0.
fn check_with_flink_checker(label: &str, input: &Path, out: &Path, expect_dir: &Path) {
    let checker = support::shared_file("peers/flink/check_ref_job.py");
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(checker)
        .arg("--input")
        .arg(input)
        .arg("--expect-dir")
        .arg(expect_dir)
        .arg("--actual-a")
        .arg(out.join(OUTPUT_A))
        .arg("--actual-b")
        .arg(out.join(OUTPUT_B));
    let run = support::run_with_deadline(&mut cmd, support::PYTHON_DEADLINE);
    assert!(
        run.status.success(),
        "[{label}] check_ref_job.py rejects the job's output ({}):\n{}\nstderr:\n{}",
        run.status,
        run.stdout_text(),
        run.stderr_text()
    );
}

#[test]
fn reference_job_matches_oracle_on_clean_in_order_2k_input() {
    check_case(Case { seed: 1, events: 2_000, disorder_ms: 0, malformed_rate: 0.0, ..BASE });
}

#[test]
fn reference_job_matches_oracle_with_1s_disorder_and_rare_malformed_lines() {
    check_case(Case { seed: 2, events: 20_000, disorder_ms: 1000, malformed_rate: 0.001, ..BASE });
}

#[test]
fn reference_job_matches_flink_checker_with_5s_disorder_and_duplicates_on_200k_lines() {
    check_case(Case {
        seed: 3,
        events: 200_000,
        disorder_ms: 5000,
        malformed_rate: 0.001,
        duplicate_rate: 0.02,
        flink_checker: true,
        ..BASE
    });
}

#[test]
fn reference_job_matches_flink_checker_with_5pct_malformed_lines_and_duplicates() {
    check_case(Case {
        seed: 4,
        events: 20_000,
        disorder_ms: 1000,
        malformed_rate: 0.05,
        duplicate_rate: 0.02,
        flink_checker: true,
        ..BASE
    });
}

#[test]
fn reference_job_matches_flink_checker_on_sparse_input_at_5_events_per_s() {
    check_case(Case {
        seed: 5,
        events: 20_000,
        disorder_ms: 5000,
        malformed_rate: 0.05,
        rate_per_s: 5.0,
        flink_checker: true,
        ..BASE
    });
}

#[test]
fn reference_job_matches_oracle_with_mostly_empty_windows_at_one_event_per_100s() {
    check_case(Case {
        seed: 6,
        events: 2_000,
        disorder_ms: 5000,
        malformed_rate: 0.001,
        duplicate_rate: 0.02,
        rate_per_s: 0.01,
        ..BASE
    });
}

#[test]
fn reference_job_matches_oracle_on_hot_keys_at_100k_events_per_s_with_5s_disorder() {
    check_case(Case {
        seed: 7,
        events: 20_000,
        disorder_ms: 5000,
        malformed_rate: 0.001,
        duplicate_rate: 0.02,
        rate_per_s: 100_000.0,
        extra_args: &["--users", "200", "--items", "100"],
        ..BASE
    });
}

#[test]
fn reference_job_matches_oracle_on_200k_in_order_lines_with_5pct_malformed() {
    check_case(Case { seed: 8, events: 200_000, disorder_ms: 0, malformed_rate: 0.05, duplicate_rate: 0.0, ..BASE });
}
