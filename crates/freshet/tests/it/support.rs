//! Helpers shared by the end-to-end tests: where the repository, the shared
//! folder and the binary are; running a process under a deadline; running the
//! reference job; reading its CSV and dead-letter outputs; and assertions that
//! print the first differing lines instead of whole files.
//!
//! Nothing here knows the job's semantics: that is `oracle`'s business.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long one run of the binary may take before the test fails (the
/// largest generated input is 200k lines, well under a second of work).
pub const JOB_DEADLINE: Duration = Duration::from_secs(120);

/// How long one run of a Python helper may take.
pub const PYTHON_DEADLINE: Duration = Duration::from_secs(300);

/// File names the reference job writes into `$FRESHET_OUTPUT`.
pub const OUTPUT_A: &str = "user_type_5m.csv";
/// Job (b)'s output file.
pub const OUTPUT_B: &str = "item_views_1h.csv";
/// The dead-letter file.
pub const DLQ: &str = "dlq.ndjson";

/// How many differing lines an assertion message shows on each side.
const SHOW_DIFFS: usize = 5;

/// The workspace root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `examples/reference-job.toml`; fails the test if it is missing.
pub fn reference_config() -> PathBuf {
    let path = repo_root().join("examples/reference-job.toml");
    assert!(path.is_file(), "the reference job config {} does not exist", path.display());
    path
}

/// A file inside the shared folder (`$FRESHET_SHARED`, else `<repo>/../shared`).
/// Fails the test, saying where it looked, if the file is not there: a test
/// that needs the shared folder must never pass or skip without it.
pub fn shared_file(relative: &str) -> PathBuf {
    let (root, how) = match std::env::var_os("FRESHET_SHARED") {
        Some(dir) => (PathBuf::from(dir), "from $FRESHET_SHARED"),
        None => (repo_root().join("../shared"), "default <repo>/../shared"),
    };
    let path = root.join(relative);
    assert!(
        path.is_file(),
        "shared folder file {relative} not found at {} ({how}); \
         set FRESHET_SHARED to the folder holding workload/ and peers/",
        path.display()
    );
    path
}

/// A finished child process.
pub struct Finished {
    /// What was run, for messages.
    pub what: String,
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it wrote to stdout.
    pub stdout: Vec<u8>,
    /// Everything it wrote to stderr.
    pub stderr: Vec<u8>,
    /// Wall time from spawn to exit.
    pub elapsed: Duration,
}

impl Finished {
    /// Stderr as text (lossy).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// Stdout as text (lossy).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// A short account for assertion messages: status, time, and the tail of
    /// stderr.
    pub fn describe(&self) -> String {
        format!(
            "{} exited with {} after {:.1?}; stderr (tail):\n{}",
            self.what,
            self.status,
            self.elapsed,
            tail(&self.stderr_text(), 40)
        )
    }

    /// Fails the test unless the process exited with status 0.
    pub fn assert_success(&self) {
        assert!(self.status.success(), "{}", self.describe());
    }
}

/// The last `max_lines` lines of `text`, each cut to 300 characters.
fn tail(text: &str, max_lines: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(max_lines);
    lines[start..]
        .iter()
        .map(|line| match line.char_indices().nth(300) {
            Some((cut, _)) => format!("  {}…", &line[..cut]),
            None => format!("  {line}"),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs `cmd` with stdin closed, collecting stdout and stderr; kills it and
/// fails the test if it has not closed its output within `deadline`.
pub fn run_with_deadline(cmd: &mut Command, deadline: Duration) -> Finished {
    let what = format!("{cmd:?}");
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let (done_tx, done_rx) = mpsc::channel::<(bool, Vec<u8>)>();
    let pipes: [(bool, Box<dyn Read + Send>); 2] = [
        (true, Box::new(child.stdout.take().expect("stdout is piped"))),
        (false, Box::new(child.stderr.take().expect("stderr is piped"))),
    ];
    for (is_stdout, mut pipe) in pipes {
        let done_tx = done_tx.clone();
        thread::spawn(move || {
            let mut bytes = Vec::new();
            // A read error just ends the capture; the exit status still tells.
            let _ = pipe.read_to_end(&mut bytes);
            let _ = done_tx.send((is_stdout, bytes));
        });
    }
    drop(done_tx);
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        let remaining = deadline.saturating_sub(started.elapsed());
        match done_rx.recv_timeout(remaining) {
            Ok((true, bytes)) => stdout = bytes,
            Ok((false, bytes)) => stderr = bytes,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not finish within {deadline:?}; killed it");
            }
        }
    }
    let status = child.wait().unwrap_or_else(|e| panic!("cannot wait for {what}: {e}"));
    Finished { what, status, stdout, stderr, elapsed: started.elapsed() }
}

/// The `freshet` binary under test, as a command with no arguments yet.
pub fn freshet() -> Command {
    Command::new(env!("CARGO_BIN_EXE_freshet"))
}

/// Runs the reference job over `input`, writing into the existing `out_dir`,
/// within `deadline`. Does not check the exit status.
pub fn run_reference_job(input: &Path, out_dir: &Path, deadline: Duration) -> Finished {
    let mut cmd = freshet();
    cmd.arg("run").arg("--config").arg(reference_config()).env("FRESHET_INPUT", input).env("FRESHET_OUTPUT", out_dir);
    run_with_deadline(&mut cmd, deadline)
}

/// Runs a Python script from the shared folder with `args`; fails the test
/// (showing its output) unless it exits 0.
pub fn run_python(script: &Path, args: &[String]) -> Finished {
    let mut cmd = Command::new("python3");
    cmd.arg(script).args(args);
    let finished = run_with_deadline(&mut cmd, PYTHON_DEADLINE);
    assert!(finished.status.success(), "{}\nstdout:\n{}", finished.describe(), tail(&finished.stdout_text(), 40));
    finished
}

/// `gen_events.py` arguments of the crash and Kafka tests: `seed`, `events`,
/// 5 s disorder, 0.1% malformed lines, then `extra`.
pub fn workload_args(seed: u64, events: u64, extra: &[&str]) -> Vec<String> {
    let (seed, events) = (seed.to_string(), events.to_string());
    let base = ["--seed", &seed, "--events", &events, "--disorder-ms", "5000", "--malformed-rate", "0.001"];
    base.iter().chain(extra).map(|s| s.to_string()).collect()
}

/// Writes a generated workload to `out` with `gen_events.py` and `args`.
pub fn generate_events(out: &Path, args: &[String]) {
    let script = shared_file("workload/gen_events.py");
    let mut all = args.to_vec();
    all.push("--out".into());
    all.push(out.display().to_string());
    run_python(&script, &all);
}

/// The lines of an NDJSON file as the reference rule sees them: split on
/// `\n`, terminator removed (a `\r` before it stays), a last line without a
/// terminator included, no phantom line after a final `\n`.
pub fn input_lines(bytes: &[u8]) -> Vec<&[u8]> {
    let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    if lines.last() == Some(&&b""[..]) {
        lines.pop();
    }
    lines
}

/// The lines of an output CSV, byte-sorted. Fails the test if the file is
/// missing or not UTF-8.
pub fn read_sorted_csv(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("the job did not write {}: {e}", path.display()));
    let text = String::from_utf8(bytes).unwrap_or_else(|e| panic!("{} is not UTF-8: {e}", path.display()));
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines.sort_unstable();
    lines
}

/// Fails the test unless the two byte-sorted line lists are equal as
/// multisets, showing the first few lines only in one or the other.
pub fn assert_same_lines(what: &str, actual: &[String], expected: &[String]) {
    if actual == expected {
        return;
    }
    let (mut only_actual, mut only_expected) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < actual.len() || j < expected.len() {
        match (actual.get(i), expected.get(j)) {
            (Some(a), Some(e)) if a == e => {
                i += 1;
                j += 1;
            }
            (Some(a), Some(e)) if a < e => {
                only_actual.push(a);
                i += 1;
            }
            (Some(a), None) => {
                only_actual.push(a);
                i += 1;
            }
            (_, Some(e)) => {
                only_expected.push(e);
                j += 1;
            }
            (None, None) => unreachable!("the loop condition excludes this"),
        }
    }
    let show = |lines: &[&String]| {
        if lines.is_empty() {
            return "    (none)".to_owned();
        }
        lines.iter().take(SHOW_DIFFS).map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
    };
    panic!(
        "{what}: {} actual rows, {} expected; {} only in actual, {} only in expected\n  \
         first only in actual:\n{}\n  first only in expected:\n{}",
        actual.len(),
        expected.len(),
        only_actual.len(),
        only_expected.len(),
        show(&only_actual),
        show(&only_expected),
    );
}

/// One dead-letter record, fields checked for presence and type.
#[derive(Debug)]
pub struct DlqRecord {
    /// Why the line was rejected.
    pub reason: String,
    /// The source's name.
    pub source: String,
    /// The source partition.
    pub partition: u64,
    /// The 0-based line index in the input file.
    pub offset: u64,
    /// The line as read, without its terminator.
    pub raw: String,
}

/// Reads a `dlq.ndjson`, failing the test on a missing file or on any record
/// that lacks one of the five fields or has the wrong JSON type for it.
pub fn read_dlq(path: &Path) -> Vec<DlqRecord> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read dead-letter file {}: {e}", path.display()));
    let mut records = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let short: String = line.chars().take(200).collect();
        let value: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("dlq line {n} is not JSON ({e}): {short}"));
        let field = |name: &str| value.get(name).unwrap_or_else(|| panic!("dlq line {n} has no \"{name}\": {short}"));
        let string = |name: &str| {
            field(name)
                .as_str()
                .unwrap_or_else(|| panic!("dlq line {n}: \"{name}\" is not a string: {short}"))
                .to_owned()
        };
        let integer = |name: &str| {
            field(name)
                .as_u64()
                .unwrap_or_else(|| panic!("dlq line {n}: \"{name}\" is not a non-negative integer: {short}"))
        };
        records.push(DlqRecord {
            reason: string("reason"),
            source: string("source"),
            partition: integer("partition"),
            offset: integer("offset"),
            raw: string("raw"),
        });
    }
    records
}

/// How strictly [`assert_dlq`] compares a record's `raw` with the input line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawCheck {
    /// `raw` must equal the line (lines that are valid UTF-8).
    Exact,
    /// `raw` is not compared (non-UTF-8 or oversized lines, whose rendering
    /// in a JSON string the contract leaves open).
    Unchecked,
}

/// Fails the test unless the dead-letter records are exactly one per offset
/// in `expected_offsets` (ascending), each from source `events`, partition 0,
/// with a non-empty reason and, where `raw_check` says so, `raw` equal to the
/// input line at its offset.
pub fn assert_dlq(
    what: &str,
    records: &[DlqRecord],
    lines: &[&[u8]],
    expected_offsets: &[usize],
    raw_check: impl Fn(usize) -> RawCheck,
) {
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    for record in records {
        let offset = usize::try_from(record.offset).expect("offset fits in usize");
        let context = format!("{what}: dlq record at offset {offset}");
        assert!(!record.reason.trim().is_empty(), "{context} has an empty reason");
        assert_eq!(record.source, "events", "{context}: source");
        assert_eq!(record.partition, 0, "{context}: partition");
        let line = lines.get(offset).unwrap_or_else(|| panic!("{context} is past the input's {} lines", lines.len()));
        if raw_check(offset) == RawCheck::Exact {
            let line = std::str::from_utf8(line).expect("exactly-checked lines are UTF-8");
            assert!(
                record.raw == line,
                "{context}: raw differs from the input line\n  raw:  {:?}\n  line: {:?}",
                record.raw.chars().take(200).collect::<String>(),
                line.chars().take(200).collect::<String>(),
            );
        }
        *seen.entry(record.offset).or_default() += 1;
    }
    let repeated: Vec<(&u64, &usize)> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(repeated.is_empty(), "{what}: offsets dead-lettered more than once (offset, times): {repeated:?}");
    let actual: Vec<usize> = seen.keys().map(|&o| o as usize).collect();
    if actual != expected_offsets {
        let missing: Vec<_> = expected_offsets
            .iter()
            .filter(|o| !seen.contains_key(&(**o as u64)))
            .take(SHOW_DIFFS)
            .map(|&o| (o, String::from_utf8_lossy(lines[o]).chars().take(120).collect::<String>()))
            .collect();
        let extra: Vec<_> = actual
            .iter()
            .filter(|o| expected_offsets.binary_search(o).is_err())
            .take(SHOW_DIFFS)
            .map(|&o| (o, String::from_utf8_lossy(lines[o]).chars().take(120).collect::<String>()))
            .collect();
        panic!(
            "{what}: {} lines dead-lettered, {} malformed by the reference rule\n  \
             first malformed but not dead-lettered (offset, line): {missing:#?}\n  \
             first dead-lettered but valid (offset, line): {extra:#?}",
            actual.len(),
            expected_offsets.len(),
        );
    }
}

/// One HTTP/1.1 request on a fresh connection; returns (status, body).
pub fn request(addr: &str, method: &str, path: &str, content_type: &str, body: &str) -> (u16, String) {
    let (status, _, body) = request_with_headers(addr, method, path, content_type, body);
    (status, body)
}

/// One HTTP/1.1 request on a fresh connection; returns (status, response
/// headers with lowercase names, body).
pub fn request_with_headers(
    addr: &str,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let status = response.split(' ').nth(1).unwrap().parse().unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}
