//! Configuration and environment errors of the binary: `freshet config check`
//! accepts the reference job's config and rejects an unknown key or an unset
//! `${VAR}` with exit status 2 and a message naming it; `freshet run` with a
//! missing input file or an unwritable output directory fails cleanly, with a
//! message instead of a panic.
//!
//! The configs are edited copies of `examples/reference-job.toml`, so these
//! tests follow the example as it evolves.

use std::ops::Range;
use std::path::Path;

use crate::support::{self, Finished};

/// A variable no environment sets.
const UNSET_VARIABLE: &str = "FRESHET_IT_SURELY_UNSET_VARIABLE";

/// The reference config's text.
fn reference_config_text() -> String {
    let path = support::reference_config();
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Runs `freshet config check <dir>/job.toml` on `toml`, with the job's
/// input and output variables pointing at existing paths in `dir`.
fn config_check(dir: &Path, toml: &str) -> Finished {
    let config = dir.join("job.toml");
    std::fs::write(&config, toml).unwrap();
    let input = dir.join("in.ndjson");
    std::fs::write(&input, b"").unwrap();
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let mut cmd = support::freshet();
    cmd.args(["config", "check"])
        .arg(&config)
        .env("FRESHET_INPUT", &input)
        .env("FRESHET_OUTPUT", &out)
        .env_remove(UNSET_VARIABLE);
    support::run_with_deadline(&mut cmd, support::JOB_DEADLINE)
}

/// Fails the test unless the process exited with `code`.
fn assert_exit_code(run: &Finished, code: i32) {
    assert_eq!(run.status.code(), Some(code), "{}", run.describe());
}

/// Fails the test if the process panicked.
fn assert_no_panic(run: &Finished) {
    assert!(!run.stderr_text().contains("panicked"), "the binary panicked: {}", run.describe());
}

/// Adds `bogus = 1` as the first key of the first `[[features]]` table.
fn with_unknown_feature_key(toml: &str) -> String {
    let mut out = String::new();
    let mut inserted = false;
    for line in toml.lines() {
        out.push_str(line);
        out.push('\n');
        if !inserted && line.trim() == "[[features]]" {
            out.push_str("bogus = 1\n");
            inserted = true;
        }
    }
    assert!(inserted, "examples/reference-job.toml has no `[[features]]` table to put an unknown key in");
    out
}

/// Replaces the first `${...}` outside a comment with `${UNSET_VARIABLE}`;
/// if there is none, the first quoted string value instead.
fn with_unset_variable(toml: &str) -> String {
    let reference = format!("${{{UNSET_VARIABLE}}}");
    let substitution = |line: &str| {
        let start = line.find("${")?;
        let len = line[start..].find('}')?;
        Some(start..start + len + 1)
    };
    let string_value = |line: &str| {
        let start = line.find("= \"")? + 3;
        let len = line[start..].find('"')?;
        Some(start..start + len)
    };
    replace_first_outside_comments(toml, substitution, &reference)
        .or_else(|| replace_first_outside_comments(toml, string_value, &reference))
        .expect("examples/reference-job.toml has neither a ${VAR} nor a string value to put one in")
}

/// Replaces the first range `find` reports on a non-comment line of `toml`
/// with `with`; `None` if `find` reports nothing.
fn replace_first_outside_comments(
    toml: &str,
    find: impl Fn(&str) -> Option<Range<usize>>,
    with: &str,
) -> Option<String> {
    let mut lines: Vec<String> = toml.lines().map(str::to_owned).collect();
    let (line, range) = lines
        .iter_mut()
        .filter(|line| !line.trim_start().starts_with('#'))
        .find_map(|line| find(line).map(|range| (line, range)))?;
    line.replace_range(range, with);
    Some(lines.join("\n") + "\n")
}

#[test]
fn config_check_accepts_reference_job_config() {
    let dir = tempfile::tempdir().unwrap();
    let run = config_check(dir.path(), &reference_config_text());
    assert_exit_code(&run, 0);
}

#[test]
fn config_check_rejects_unknown_key_naming_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let run = config_check(dir.path(), &with_unknown_feature_key(&reference_config_text()));
    assert_exit_code(&run, 2);
    assert_no_panic(&run);
    let stderr = run.stderr_text();
    assert!(
        stderr.contains("bogus") && stderr.contains("features"),
        "stderr must name the key path (features…bogus): {}",
        run.describe()
    );
}

#[test]
fn config_check_rejects_unset_variable_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let run = config_check(dir.path(), &with_unset_variable(&reference_config_text()));
    assert_exit_code(&run, 2);
    assert_no_panic(&run);
    assert!(
        run.stderr_text().contains(UNSET_VARIABLE),
        "stderr must name the unset variable {UNSET_VARIABLE}: {}",
        run.describe()
    );
}

#[test]
fn run_with_missing_input_file_fails_with_one_line_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-input.ndjson");
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let run = support::run_reference_job(&missing, &out, support::JOB_DEADLINE);
    assert!(!run.status.success(), "{}", run.describe());
    assert_no_panic(&run);
    let stderr = run.stderr_text();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        lines.len() == 1 && lines[0].contains(&missing.display().to_string()),
        "stderr must be one line naming {}: {}",
        missing.display(),
        run.describe()
    );
}

#[test]
fn run_with_unwritable_output_dir_fails_without_panic() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.ndjson");
    std::fs::write(&input, concat!(r#"{"type":"view","user_id":"u1","item_id":"i1","ts":1767225600100}"#, "\n"))
        .unwrap();
    let run = support::run_reference_job(&input, Path::new("/proc/nonexistent"), support::JOB_DEADLINE);
    assert!(!run.status.success(), "{}", run.describe());
    assert_no_panic(&run);
    assert!(!run.stderr_text().trim().is_empty(), "a failed run must say why on stderr");
}
