//! Crash recovery of the reference job: `freshet run --data-dir DIR` with
//! `FRESHET_CHECKPOINT_INTERVAL` checkpoints into DIR, and a run started again
//! after SIGKILL (same arguments, environment and DIR) resumes from the last
//! complete checkpoint, or from scratch if there is none. When a run finally
//! exits 0, the three output files hold exactly the rows of an uninterrupted
//! run: none lost, none repeated. A finished job run again on its DIR changes
//! nothing, and a corrupt newest checkpoint is reported and survived.
//!
//! The kills are real `SIGKILL`s of the child process at moments drawn from a
//! seeded xorshift generator, so a failing sequence can be replayed; each
//! test prints what it did (kills, runs, sleeps).

use std::fs::{self, File};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use crate::oracle::{self, Expected};
use crate::support::{self, DLQ, OUTPUT_A, OUTPUT_B, RawCheck};

/// The files the reference job writes into `$FRESHET_OUTPUT`.
const OUTPUTS: [&str; 3] = [OUTPUT_A, OUTPUT_B, DLQ];

/// Kills wanted while the job is still running, in the random-kill test.
const MIN_KILLS: usize = 10;

/// Kills attempted at most: twice as many as needed, so that the later ones
/// may reach the end of the input (or find the job finished).
const KILL_ATTEMPTS: usize = 20;

/// Shortest pause between a start and its kill.
const MIN_SLEEP: Duration = Duration::from_millis(30);

/// Longest pause between a start and its kill.
const MAX_SLEEP: Duration = Duration::from_millis(1500);

/// A small deterministic generator (xorshift64), so kill moments replay.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        // xorshift must not start at 0.
        Self(seed.max(1))
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1_u64 << 53) as f64
    }

    /// Log-uniform in [lo, hi]: as many short pauses (kills during start-up
    /// and restore) as long ones (kills deep into a run).
    fn log_uniform(&mut self, lo: Duration, hi: Duration) -> Duration {
        let (lo, hi) = (lo.as_secs_f64().ln(), hi.as_secs_f64().max(lo.as_secs_f64()).ln());
        Duration::from_secs_f64((lo + self.unit() * (hi - lo)).exp())
    }
}

/// `gen_events.py` arguments for the crash tests' workloads.
fn generator_args(seed: u64, events: u64) -> Vec<String> {
    support::workload_args(seed, events, &["--duplicate-rate", "0.0"])
}

/// One job's files: its input, output folder, data dir, and a folder for the
/// stdout and stderr of runs that are killed.
struct Job {
    input: PathBuf,
    out: PathBuf,
    data_dir: PathBuf,
    logs: PathBuf,
    interval: &'static str,
}

impl Job {
    /// Names the files of a job under `root`, creating the output and log
    /// folders (not the data dir: the binary is told where it is and makes it).
    fn new(root: &Path, name: &str, input: &Path, interval: &'static str) -> Self {
        let job = Self {
            input: input.to_owned(),
            out: root.join(format!("{name}-out")),
            data_dir: root.join(format!("{name}-data")),
            logs: root.join(format!("{name}-logs")),
            interval,
        };
        fs::create_dir(&job.out).unwrap();
        fs::create_dir(&job.logs).unwrap();
        job
    }

    /// The same command line and environment for every run of this job.
    fn command(&self) -> Command {
        let mut cmd = support::freshet();
        cmd.arg("run")
            .arg("--config")
            .arg(support::reference_config())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .env("FRESHET_INPUT", &self.input)
            .env("FRESHET_OUTPUT", &self.out)
            .env("FRESHET_CHECKPOINT_INTERVAL", self.interval);
        cmd
    }

    /// Runs the job to its end (or the deadline), capturing its output.
    fn run_to_end(&self) -> support::Finished {
        support::run_with_deadline(&mut self.command(), support::JOB_DEADLINE)
    }

    /// Starts run number `run` in the background, its stdout and stderr going
    /// to files (a pipe nobody reads could stall it).
    fn spawn(&self, run: usize) -> Child {
        let stdout = File::create(self.stdout_log(run)).unwrap();
        let stderr = File::create(self.stderr_log(run)).unwrap();
        self.command()
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", self.command()))
    }

    fn stdout_log(&self, run: usize) -> PathBuf {
        self.logs.join(format!("run-{run}.stdout"))
    }

    fn stderr_log(&self, run: usize) -> PathBuf {
        self.logs.join(format!("run-{run}.stderr"))
    }

    /// The tail of a background run's stderr, for messages.
    fn stderr_tail(&self, run: usize) -> String {
        let text = fs::read_to_string(self.stderr_log(run)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].iter().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
    }

    /// The bytes of the three output files; fails the test if one is missing.
    fn output_bytes(&self) -> Vec<Vec<u8>> {
        OUTPUTS
            .iter()
            .map(|name| {
                let path = self.out.join(name);
                fs::read(&path).unwrap_or_else(|e| panic!("the job did not write {}: {e}", path.display()))
            })
            .collect()
    }
}

/// Fails the test unless the job's outputs are the oracle's rows, and its
/// dead-letter file has exactly one record per malformed line.
fn assert_outputs_match_oracle(label: &str, job: &Job, input: &[u8], expected: &Expected) {
    let actual_a = support::read_sorted_csv(&job.out.join(OUTPUT_A));
    support::assert_same_lines(&format!("[{label}] job (a) {OUTPUT_A} vs oracle"), &actual_a, &expected.lines_a);
    let actual_b = support::read_sorted_csv(&job.out.join(OUTPUT_B));
    support::assert_same_lines(&format!("[{label}] job (b) {OUTPUT_B} vs oracle"), &actual_b, &expected.lines_b);
    let records = support::read_dlq(&job.out.join(DLQ));
    let lines = support::input_lines(input);
    // Repeated or missing offsets first: they say more than the counts.
    support::assert_dlq(label, &records, &lines, &expected.malformed, |_| RawCheck::Exact);
    assert_eq!(records.len(), expected.malformed.len(), "[{label}] number of dead-letter records vs malformed lines");
}

/// Fails the test unless each output file of `job` holds the same lines as
/// that of `reference` (as sorted line lists).
fn assert_same_outputs_as(label: &str, job: &Job, reference: &Job) {
    for name in OUTPUTS {
        let actual = support::read_sorted_csv(&job.out.join(name));
        let expected = support::read_sorted_csv(&reference.out.join(name));
        support::assert_same_lines(&format!("[{label}] {name} vs the uninterrupted run's"), &actual, &expected);
    }
}

/// How one background run ended.
enum Ended {
    /// It exited 0 on its own before the kill.
    Finished,
    /// The kill found it running.
    Killed,
}

/// Kills `child` with SIGKILL unless it has already exited; fails the test if
/// it exited on its own with anything but status 0.
fn kill(job: &Job, run: usize, child: &mut Child) -> Ended {
    /// SIGKILL's number.
    const SIGKILL: i32 = 9;
    let failed = |status: ExitStatus, when: &str| -> ! {
        panic!("run {run} of the job failed on its own ({status}, {when}); stderr (tail):\n{}", job.stderr_tail(run))
    };
    if let Some(status) = child.try_wait().expect("try_wait on the job") {
        if status.success() {
            return Ended::Finished;
        }
        failed(status, "before the kill");
    }
    // SIGKILL on Unix. Should the child have exited just now, the kill still
    // succeeds (it is a zombie until reaped) and its own status is reported.
    child.kill().expect("SIGKILL the job");
    let status = child.wait().expect("wait for the killed job");
    if status.success() {
        Ended::Finished
    } else if status.signal() == Some(SIGKILL) {
        Ended::Killed
    } else {
        failed(status, "seen after the kill")
    }
}

/// The regular files under `dir`, recursively, as paths relative to it.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(folder) = stack.pop() {
        let Ok(entries) = fs::read_dir(&folder) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(t) if t.is_file() => found.push(path.strip_prefix(dir).unwrap().to_owned()),
                _ => {}
            }
        }
    }
    found.sort();
    found
}

/// Whether a file under the data dir is (part of) a finished checkpoint: its
/// path names a checkpoint and it is not a temporary file of one being
/// written (which a restart must ignore anyway, so corrupting it tests
/// nothing).
fn is_checkpoint_file(relative: &Path) -> bool {
    let path = relative.to_string_lossy().to_lowercase();
    let name = relative.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    path.contains("checkpoint") && !name.starts_with('.') && !name.contains(".tmp") && !name.ends_with(".partial")
}

/// Lists the files under `dir` with their sizes, for messages.
fn list_files(dir: &Path) -> String {
    let files = files_under(dir);
    if files.is_empty() {
        return format!("  {} holds no files (or does not exist)", dir.display());
    }
    files
        .iter()
        .map(|f| {
            let len = fs::metadata(dir.join(f)).map(|m| m.len()).unwrap_or(0);
            format!("  {} ({len} bytes)", f.display())
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn reference_job_killed_at_random_moments_recovers_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.ndjson");
    support::generate_events(&input, &generator_args(101, 1_000_000));

    // An uninterrupted run first: the rows recovery must reproduce, and how
    // long the job takes here, which bounds the pauses before the kills.
    let baseline = Job::new(dir.path(), "baseline", &input, "100ms");
    let run = baseline.run_to_end();
    assert!(run.status.success(), "[uninterrupted run] {}", run.describe());
    let bytes = fs::read(&input).unwrap();
    let expected = oracle::compute(&bytes);
    assert_outputs_match_oracle("uninterrupted run", &baseline, &bytes, &expected);

    // Pauses are log-uniform in [30 ms, max], with max a fifth of the
    // uninterrupted run (at most 1.5 s): the first ten pauses add up to less
    // than the run, and each restart also spends its start-up and redoes the
    // work since the last checkpoint, so ten kills land mid-run however fast
    // the machine is; the later ones may reach the end of the input.
    let max_sleep = (run.elapsed / 5).clamp(MIN_SLEEP * 3, MAX_SLEEP);
    let job = Job::new(dir.path(), "crashed", &input, "100ms");
    let mut rng = XorShift::new(0x5eed_f00d_cafe_0001);
    let (mut kills, mut runs, mut finished) = (0, 0, false);
    let mut history = Vec::new();
    let crash_started = Instant::now();
    while kills < KILL_ATTEMPTS {
        runs += 1;
        let pause = rng.log_uniform(MIN_SLEEP, max_sleep);
        let mut child = job.spawn(runs);
        thread::sleep(pause);
        match kill(&job, runs, &mut child) {
            Ended::Killed => {
                kills += 1;
                history.push(format!("run {runs}: killed after {} ms", pause.as_millis()));
            }
            Ended::Finished => {
                finished = true;
                history.push(format!("run {runs}: finished before its kill at {} ms", pause.as_millis()));
                break;
            }
        }
    }
    if !finished {
        runs += 1;
        let last = job.run_to_end();
        history.push(format!("run {runs}: ran to its end in {:.1?}", last.elapsed));
        assert!(
            last.status.success(),
            "[after {kills} kills] the last run failed; history:\n  {}\n{}",
            history.join("\n  "),
            last.describe()
        );
    }
    let summary = format!(
        "{kills} kills mid-run, {runs} runs in {:.1?} (uninterrupted: {:.1?}, pauses up to {} ms)",
        crash_started.elapsed(),
        run.elapsed,
        max_sleep.as_millis()
    );
    println!("{summary}\n  {}", history.join("\n  "));

    let label = format!("after {summary}");
    assert_outputs_match_oracle(&label, &job, &bytes, &expected);
    assert_same_outputs_as(&label, &job, &baseline);
    assert!(
        kills >= MIN_KILLS,
        "only {kills} of the kills found the job still running (need {MIN_KILLS}): the job is too fast for this \
         input here; give the test more events. History:\n  {}",
        history.join("\n  ")
    );
}

#[test]
fn finished_job_rerun_on_same_data_dir_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.ndjson");
    support::generate_events(&input, &generator_args(202, 20_000));
    let job = Job::new(dir.path(), "job", &input, "100ms");

    let first = job.run_to_end();
    assert!(first.status.success(), "[first run] {}", first.describe());
    let bytes = fs::read(&input).unwrap();
    assert_outputs_match_oracle("first run", &job, &bytes, &oracle::compute(&bytes));
    let before = job.output_bytes();

    let second = job.run_to_end();
    assert!(second.status.success(), "[rerun on the finished job's data dir] {}", second.describe());
    let after = job.output_bytes();
    for ((name, old), new) in OUTPUTS.iter().zip(&before).zip(&after) {
        if old == new {
            continue;
        }
        let (old_lines, new_lines): (Vec<&[u8]>, Vec<&[u8]>) =
            (old.split(|&b| b == b'\n').collect(), new.split(|&b| b == b'\n').collect());
        let at =
            old_lines.iter().zip(&new_lines).position(|(a, b)| a != b).unwrap_or(old_lines.len().min(new_lines.len()));
        let show = |lines: &[&[u8]]| lines.get(at).map(|l| String::from_utf8_lossy(l).into_owned());
        panic!(
            "the rerun changed {name}: {} bytes before, {} after; first difference at line {at}:\n  \
             before: {:?}\n  after:  {:?}\nrerun stderr:\n{}",
            old.len(),
            new.len(),
            show(&old_lines),
            show(&new_lines),
            second.stderr_text()
        );
    }
}

#[test]
fn corrupt_latest_checkpoint_falls_back_or_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.ndjson");
    support::generate_events(&input, &generator_args(303, 600_000));
    let job = Job::new(dir.path(), "job", &input, "50ms");

    // Kill 150 ms after the first checkpoint file appears (a loaded machine
    // may take a while to write it; a fast one must not finish the job first).
    let mut child = job.spawn(1);
    let started = Instant::now();
    let mut first_checkpoint_seen: Option<Instant> = None;
    while started.elapsed() < Duration::from_secs(10) {
        if first_checkpoint_seen.is_none() && files_under(&job.data_dir).iter().any(|f| is_checkpoint_file(f)) {
            first_checkpoint_seen = Some(Instant::now());
        }
        if first_checkpoint_seen.is_some_and(|t| t.elapsed() >= Duration::from_millis(150)) {
            break;
        }
        thread::sleep(Duration::from_millis(5));
    }
    let killed_after = started.elapsed();
    match kill(&job, 1, &mut child) {
        Ended::Killed => {}
        Ended::Finished => {
            panic!("the job finished within {killed_after:.0?}, before it could be killed; give this test more input")
        }
    }

    // Corrupt the newest checkpoint file: flip up to 16 bytes in its middle.
    let newest = files_under(&job.data_dir)
        .into_iter()
        .filter(|f| is_checkpoint_file(f))
        .filter_map(|f| {
            let meta = fs::metadata(job.data_dir.join(&f)).ok()?;
            (meta.len() > 0).then(|| (meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), f))
        })
        .max()
        .map(|(_, f)| f)
        .unwrap_or_else(|| {
            panic!(
                "no non-empty checkpoint file (a path under the data dir containing \"checkpoint\") after \
                 killing the job at {killed_after:.0?} with a 50 ms interval; the data dir holds:\n{}\n\
                 stderr (tail):\n{}",
                list_files(&job.data_dir),
                job.stderr_tail(1)
            )
        });
    let path = job.data_dir.join(&newest);
    let mut content = fs::read(&path).unwrap();
    let middle = content.len() / 2;
    let span = middle.saturating_sub(8)..(middle + 8).min(content.len());
    for byte in &mut content[span.clone()] {
        *byte ^= 0xA5;
    }
    fs::write(&path, &content).unwrap();
    println!(
        "killed after {killed_after:.0?}; corrupted bytes {span:?} of {} ({} bytes); data dir:\n{}",
        newest.display(),
        content.len(),
        list_files(&job.data_dir)
    );

    let label = format!("restart after corrupting {}", newest.display());
    let restart = job.run_to_end();
    assert!(restart.status.success(), "[{label}] {}", restart.describe());
    let bytes = fs::read(&input).unwrap();
    assert_outputs_match_oracle(&label, &job, &bytes, &oracle::compute(&bytes));
    let stderr = restart.stderr_text().to_lowercase();
    assert!(
        stderr.contains("checkpoint") && ["corrupt", "checksum", "invalid"].iter().any(|w| stderr.contains(w)),
        "[{label}] the restart succeeded but its stderr does not report the corrupt checkpoint (wanted \
         \"checkpoint\" and one of \"corrupt\", \"checksum\", \"invalid\"); stderr:\n{}",
        restart.stderr_text()
    );
}

/// A data dir written by one pipeline is refused by another, with a message
/// naming what differs and how to proceed; `--reset-state` starts over.
#[test]
fn another_pipelines_checkpoint_is_refused_until_reset_state() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.ndjson");
    support::generate_events(&input, &["--events".into(), "5000".into(), "--seed".into(), "3".into()]);
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let data = dir.path().join("data");
    let changed = dir.path().join("changed.toml");
    let text = std::fs::read_to_string(support::reference_config()).unwrap();
    std::fs::write(&changed, text.replace(r#"size = "5m""#, r#"size = "10m""#)).unwrap();
    let run = |config: &Path, extra: &[&str]| {
        let mut cmd = support::freshet();
        cmd.arg("run").arg("--config").arg(config).arg("--data-dir").arg(&data).args(extra);
        cmd.env("FRESHET_INPUT", &input).env("FRESHET_OUTPUT", &out);
        support::run_with_deadline(&mut cmd, Duration::from_secs(120))
    };
    let first = run(&support::reference_config(), &[]);
    assert!(first.status.success(), "{}", first.describe());
    let refused = run(&changed, &[]);
    assert!(!refused.status.success(), "a changed pipeline restored another's state: {}", refused.describe());
    let err = refused.stderr_text();
    assert!(err.contains("another pipeline") && err.contains("--reset-state"), "{err}");
    assert!(err.contains("tumbling 5m") && err.contains("tumbling 10m"), "the message should name what differs: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let reset = run(&changed, &["--reset-state"]);
    assert!(reset.status.success(), "{}", reset.describe());
}
