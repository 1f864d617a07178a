//! Kafka end to end against a real broker: tansu 0.6.0 with sqlite storage
//! (shared/peers/kafka), which each test starts on its own loopback port and
//! state directory, so tests run in parallel and one may restart its broker.
//! scripts/test.sh installs tansu when it is missing; a test that finds no
//! tansu fails saying so.
//!
//! Workloads come from shared/workload/gen_events.py and are produced into a
//! 4-partition topic keyed by user_id with `freshet kafka produce`; results
//! are read back with `freshet kafka consume --dedup-by-key` (what a
//! compacted topic keeps) and checked against the oracle and
//! shared/peers/flink/check_ref_job.py.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::oracle::{self, Expected};
use crate::support;

/// The broker binary: `$TANSU_BIN`, else cargo's bin directory.
fn tansu_bin() -> PathBuf {
    let bin = match std::env::var_os("TANSU_BIN") {
        Some(b) => PathBuf::from(b),
        None => {
            let home = std::env::var_os("CARGO_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo"));
            home.join("bin/tansu")
        }
    };
    assert!(
        bin.is_file(),
        "the Kafka test broker is not installed at {} (set TANSU_BIN); scripts/test.sh installs it: \
         cargo install tansu --version 0.6.0 --locked --features dynostore,libsql",
        bin.display()
    );
    bin
}

/// A tansu broker of this test, with durable (sqlite) storage in its own directory.
pub struct Broker {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    external: Option<String>,
    /// Clients must authenticate (SASL SCRAM).
    authentication: bool,
}

impl Broker {
    /// Starts a broker on a free loopback port, storing in `dir`.
    pub fn start(dir: &Path) -> Broker {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        std::fs::create_dir_all(dir).unwrap();
        let mut broker = Broker { child: None, port, dir: dir.to_owned(), external: None, authentication: false };
        broker.spawn();
        broker
    }

    /// Requires SASL SCRAM-SHA-512 authentication from now on, with `users`
    /// (name, password) created first; `freshet kafka` cannot authenticate, so
    /// topics and records are made before this.
    pub fn require_authentication(&mut self, users: &[(&str, &str)]) {
        for (name, password) in users {
            let mut cmd = Command::new(tansu_bin());
            cmd.args(["user", "create", name, password, "--broker", &format!("tcp://{}", self.addr())]);
            let run = support::run_with_deadline(&mut cmd, Duration::from_secs(30));
            assert!(run.status.success(), "creating user {name}: {}", run.describe());
        }
        self.stop();
        self.authentication = true;
        self.spawn();
    }

    /// A broker this test did not start (`host:port`).
    pub fn external(addr: &str) -> Broker {
        Broker { child: None, port: 0, dir: PathBuf::new(), external: Some(addr.to_owned()), authentication: false }
    }

    /// `host:port` for clients.
    pub fn addr(&self) -> String {
        match &self.external {
            Some(addr) => addr.clone(),
            None => format!("127.0.0.1:{}", self.port),
        }
    }

    fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("tansu.log")).unwrap();
        let child = Command::new(tansu_bin())
            .current_dir(&self.dir)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .args(self.authentication.then_some("--authentication"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting tansu");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not listen on {} within 30 s; {}",
                self.port,
                self.log_tail()
            );
            thread::sleep(Duration::from_millis(50));
        }
        // Ready when a Kafka request works, not only the port (the tools cannot authenticate).
        if self.authentication {
            return;
        }
        loop {
            let mut cmd = support::freshet();
            cmd.args(["kafka", "create-topic", "--brokers", &self.addr(), "--topic", "ready-probe"]);
            if support::run_with_deadline(&mut cmd, Duration::from_secs(20)).status.success() {
                return;
            }
            assert!(Instant::now() < deadline, "tansu did not answer within 30 s; {}", self.log_tail());
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops the broker (SIGTERM, then SIGKILL after 5 s); its data stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the stopped broker again on the same port and storage.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("tansu.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!("broker log tail:\n{}", lines[lines.len().saturating_sub(20)..].join("\n"))
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `freshet kafka ARGS` against `broker`; fails the test unless it succeeds.
pub fn kafka_tool(broker: &Broker, args: &[&str]) -> support::Finished {
    let mut cmd = support::freshet();
    cmd.arg("kafka").arg(args[0]).arg("--brokers").arg(broker.addr()).args(&args[1..]);
    let run = support::run_with_deadline(&mut cmd, Duration::from_secs(300));
    assert!(run.status.success(), "{}", run.describe());
    run
}

/// A generated reference workload in `dir`, its oracle, and the topic it was produced to (4 partitions, keyed by user_id).
pub fn workload(broker: &Broker, dir: &Path, topic: &str, seed: u64, events: u64) -> (PathBuf, Expected) {
    let input = dir.join("in.ndjson");
    // 100 events per second of event time: windows close all through the
    // run, so results are produced (and checkpointed) as it goes.
    let args = support::workload_args(seed, events, &["--rate-per-s", "100"]);
    support::generate_events(&input, &args);
    let expected = oracle::compute(&std::fs::read(&input).unwrap());
    // The checker groups plainly: that equals Flink only when nothing is late.
    assert_eq!(expected.late_events, 0, "the workload must have no late events");
    assert!(!expected.malformed.is_empty(), "the workload should carry malformed lines");
    kafka_tool(broker, &["create-topic", "--topic", topic, "--partitions", "4"]);
    kafka_tool(broker, &["produce", "--topic", topic, "--key-field", "user_id", input.to_str().unwrap()]);
    (input, expected)
}

/// The reference job over Kafka on `broker`, as a command (not started).
fn kafka_job(broker: &Broker, topic: &str, data_dir: &Path) -> Command {
    kafka_job_of(&support::repo_root().join("examples/kafka-reference-job.toml"), broker, topic, data_dir)
}

/// Job `config` (the reference job's, maybe edited) over Kafka on `broker`, as a command.
fn kafka_job_of(config: &Path, broker: &Broker, topic: &str, data_dir: &Path) -> Command {
    let mut cmd = support::freshet();
    cmd.arg("run")
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .env("KAFKA_BROKERS", broker.addr())
        .env("FRESHET_TOPIC", topic)
        .env("FRESHET_GROUP", format!("{topic}-group"))
        .env("FRESHET_CHECKPOINT_INTERVAL", "300ms");
    cmd
}

/// The values of `topic` deduplicated by key, sorted.
fn results(broker: &Broker, topic: &str) -> Vec<String> {
    let run = kafka_tool(broker, &["consume", "--topic", topic, "--values", "--dedup-by-key"]);
    let mut lines: Vec<String> = run.stdout_text().lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

/// Checks the job's output topics against the oracle and check_ref_job.py,
/// and its dead-letter topic against the malformed lines.
pub fn check_outputs(broker: &Broker, topic: &str, input: &Path, expected: &Expected, dir: &Path) {
    let a = results(broker, &format!("{topic}-user-type-5m"));
    let b = results(broker, &format!("{topic}-item-views-1h"));
    support::assert_same_lines("job (a) over Kafka vs oracle", &a, &expected.lines_a);
    support::assert_same_lines("job (b) over Kafka vs oracle", &b, &expected.lines_b);
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join(support::OUTPUT_A), a.join("\n") + "\n").unwrap();
    std::fs::write(out.join(support::OUTPUT_B), b.join("\n") + "\n").unwrap();
    let checker = support::shared_file("peers/flink/check_ref_job.py");
    let mut cmd = Command::new("python3");
    cmd.arg(checker)
        .arg("--input")
        .arg(input)
        .arg("--expect-dir")
        .arg(dir.join("exp"))
        .arg("--actual-a")
        .arg(out.join(support::OUTPUT_A))
        .arg("--actual-b")
        .arg(out.join(support::OUTPUT_B));
    let run = support::run_with_deadline(&mut cmd, support::PYTHON_DEADLINE);
    assert!(run.status.success(), "check_ref_job.py rejects the Kafka job's output: {}", run.describe());

    let dlq = results(broker, &format!("{topic}-dlq"));
    assert_eq!(dlq.len(), expected.malformed.len(), "one dead letter per malformed line");
    for record in &dlq {
        let v: serde_json::Value = serde_json::from_str(record).unwrap();
        assert!(v["partition"].as_u64().is_some_and(|p| p < 4), "dead letter without a partition: {record}");
        assert!(v["offset"].as_u64().is_some(), "dead letter without an offset: {record}");
    }
}

/// Runs `cmd` to its end within the deadline; fails the test unless it exits 0.
fn finish(cmd: &mut Command, what: &str) {
    let run = support::run_with_deadline(cmd, support::JOB_DEADLINE);
    assert!(run.status.success(), "{what}: {}", run.describe());
}

#[test]
fn kafka_reference_job_killed_and_restarted_matches_the_flink_checker() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("broker"));
    let topic = "ref-kill";
    let (input, expected) = workload(&broker, dir.path(), topic, 11, 200_000);
    let data = dir.path().join("data");
    // Two SIGKILLs mid-run (the first at 1 s, while it reads or produces; the
    // second once that run has written a checkpoint of its own, or at 10 s), then
    // a run to the end on the same data dir. Most of a run here is producing
    // results: the test broker takes about 30k records/s, and a checkpoint
    // completes once every record before it is acknowledged.
    // The newest checkpoint's number (files are checkpoint-<id>.bin; the last few are kept).
    let checkpoints = || -> u64 {
        let Ok(dir) = std::fs::read_dir(data.join("checkpoints")) else { return 0 };
        dir.filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_prefix("checkpoint-")?.strip_suffix(".bin")?.parse().ok()
        })
        .max()
        .unwrap_or(0)
    };
    for (i, (wait_for_checkpoint, at_most)) in [(false, 1000), (true, 10_000)].into_iter().enumerate() {
        let before = checkpoints();
        let mut child = kafka_job(&broker, topic, &data).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(at_most) && !(wait_for_checkpoint && checkpoints() > before) {
            thread::sleep(Duration::from_millis(20));
        }
        assert!(child.try_wait().unwrap().is_none(), "run {i} ended before it could be killed mid-run");
        child.kill().unwrap();
        child.wait().unwrap();
        eprintln!("kill {i}: after {:?}, {} checkpoint(s) of this run", started.elapsed(), checkpoints() - before);
    }
    finish(&mut kafka_job(&broker, topic, &data), "the run after the kills");
    check_outputs(&broker, topic, &input, &expected, dir.path());
}

/// A bounded replay's partitions never go idle: one slow to deliver (a busy
/// broker, a slow first fetch) holds the watermark back like any other, so
/// the results do not depend on how fast the run goes. The reference job
/// over Kafka with `idle_timeout = "1ms"`, where nearly every wait between
/// two chunks of a partition is longer: were the setting obeyed, each
/// partition's chunks would move the watermark alone past the others'
/// events, and those would be dropped as late.
#[test]
fn a_bounded_kafka_replay_holds_every_partition_whatever_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("broker"));
    let topic = "ref-idle";
    let (input, expected) = workload(&broker, dir.path(), topic, 13, 40_000);
    let job = std::fs::read_to_string(support::repo_root().join("examples/kafka-reference-job.toml")).unwrap();
    let with_idle = job.replacen("[event_time]\n", "[event_time]\nidle_timeout = \"1ms\"\n", 1);
    assert_ne!(job, with_idle, "the example has no [event_time] table to set the idle timeout in");
    let config = dir.path().join("idle.toml");
    std::fs::write(&config, with_idle).unwrap();
    finish(&mut kafka_job_of(&config, &broker, topic, &dir.path().join("data")), "the job with a 1 ms idle timeout");
    check_outputs(&broker, topic, &input, &expected, dir.path());
}

/// The reference job over Kafka with an HTTP source added (so it runs until
/// stopped) and `idle_timeout = "1ms"`, written into `dir`.
fn mixed_job_config(dir: &Path) -> PathBuf {
    let job = std::fs::read_to_string(support::repo_root().join("examples/kafka-reference-job.toml")).unwrap();
    let mixed = job.replacen("[event_time]\n", "[event_time]\nidle_timeout = \"1ms\"\n", 1)
        + "\n[sources.api]\ntype = \"http\"\n";
    assert!(
        mixed.contains("idle_timeout = \"1ms\""),
        "the example has no [event_time] table to set the idle timeout in"
    );
    let config = dir.join("mixed.toml");
    std::fs::write(&config, mixed).unwrap();
    config
}

/// A catalog event in year 2286, which neither output of the reference job counts.
const CLOSING_EVENT: &str = r#"{"type":"item_upsert","item_id":"closing","ts":10000000000000}"#;

/// An unbounded job started in the background, its output and log in files.
struct LiveJob {
    child: Child,
    log: PathBuf,
    addr: String,
    deadline: Instant,
}

impl LiveJob {
    /// Starts job `config` over `topic` and waits until it says where it listens.
    fn start(config: &Path, broker: &Broker, topic: &str, dir: &Path) -> LiveJob {
        let (out, log) = (dir.join("job.out"), dir.join("job.log"));
        let child = kafka_job_of(config, broker, topic, &dir.join("data"))
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut job = LiveJob { child, log, addr: String::new(), deadline: Instant::now() + support::JOB_DEADLINE };
        loop {
            let printed = std::fs::read_to_string(&out).unwrap_or_default();
            if let Some(addr) = printed.split("http://").nth(1).and_then(|r| r.split('/').next()) {
                job.addr = addr.to_owned();
                return job;
            }
            job.wait("starting");
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A pause while it is still `what`; fails the test if it ended or the deadline passed.
    fn wait(&mut self, what: &str) {
        assert!(self.child.try_wait().unwrap().is_none(), "the job ended while {what}: {}", self.log());
        assert!(Instant::now() < self.deadline, "the job was still {what} at the deadline: {}", self.log());
        thread::sleep(Duration::from_millis(50));
    }

    fn metrics(&self) -> String {
        support::request(&self.addr, "GET", "/metrics", "text/plain", "").1
    }

    fn post(&self, events: &str) {
        let (status, body) = support::request(&self.addr, "POST", "/v1/events", "application/x-ndjson", events);
        assert_eq!(status, 202, "{body}");
    }

    /// Completed checkpoints.
    fn checkpoints(&self) -> u64 {
        let metrics = self.metrics();
        metrics.lines().find_map(|l| l.strip_prefix("freshet_checkpoints_total ")?.parse().ok()).unwrap_or(0)
    }

    /// Stops it with SIGTERM; its exit status.
    fn terminate(mut self) -> (std::process::ExitStatus, String) {
        assert!(Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap().success());
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, self.log());
            }
            assert!(Instant::now() < self.deadline, "the job did not stop on SIGTERM: {}", self.log());
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for LiveJob {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bounded source beside an unbounded one keeps its partitions from going
/// idle too: the reference job over Kafka with an HTTP source added and
/// `idle_timeout = "1ms"`, where nearly every wait between two chunks of a
/// partition is longer; were the Kafka partitions let go between their
/// chunks, each would move the watermark alone past the others' events. The
/// job never ends (its HTTP source is open): a catalog event far ahead in
/// event time, posted until the watermark follows it (it can only once every
/// Kafka partition has ended; the HTTP partition itself goes idle 1 ms after
/// each), closes every window, and the job is stopped once its results are
/// written. They must be the oracle's.
#[test]
fn a_bounded_source_beside_an_unbounded_one_holds_the_watermark_until_it_ends() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("broker"));
    let topic = "ref-mixed";
    let (input, expected) = workload(&broker, dir.path(), topic, 14, 40_000);
    let mut job = LiveJob::start(&mixed_job_config(dir.path()), &broker, topic, dir.path());
    // Every shard's watermark past the closing event's: wall time minus it is negative.
    let closed = |job: &LiveJob| {
        let lags: Vec<f64> = (job.metrics().lines())
            .filter(|l| l.starts_with("freshet_watermark_lag_seconds{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        !lags.is_empty() && lags.iter().all(|&lag| lag < -1e9)
    };
    while !closed(&job) {
        job.post(CLOSING_EVENT);
        job.wait("reading its input");
        thread::sleep(Duration::from_millis(150));
    }
    // Two more checkpoints: the second began after every window closed, and
    // completes once the broker has acknowledged every result.
    let closed_at = job.checkpoints();
    while job.checkpoints() < closed_at + 2 {
        job.wait("writing its results");
    }
    let (status, log) = job.terminate();
    assert!(status.success(), "exit status after SIGTERM: {status}\n{log}");
    check_outputs(&broker, topic, &input, &expected, dir.path());
}

/// SIGTERM while a Kafka sink waits for its broker is a stop, not a
/// failure: exit status 0, and what was not written is written again from the
/// last checkpoint at the next start. The broker is stopped, one window's
/// result is produced, and the job is stopped while its checkpoint waits for
/// the broker's acknowledgement.
#[test]
fn a_stop_while_a_sink_waits_for_its_broker_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("broker"));
    let topic = "stop-waiting";
    kafka_tool(&broker, &["create-topic", "--topic", topic, "--partitions", "4"]);
    let mut job = LiveJob::start(&mixed_job_config(dir.path()), &broker, topic, dir.path());
    while job.checkpoints() == 0 {
        job.wait("starting");
    }
    broker.stop();
    job.post(&format!("{{\"type\":\"view\",\"user_id\":\"u1\",\"item_id\":\"i1\",\"ts\":1000}}\n{CLOSING_EVENT}"));
    while !job.log().contains("the checkpoint waits") {
        job.wait("producing a result to a stopped broker");
    }
    let (status, log) = job.terminate();
    assert!(status.success(), "exit status after SIGTERM: {status}\n{log}");
    assert!(log.contains("Stopped before every result was written"), "{log}");
}

#[test]
fn kafka_job_waits_through_a_broker_restart_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("broker"));
    let topic = "ref-restart";
    let (input, expected) = workload(&broker, dir.path(), topic, 12, 100_000);
    let data = dir.path().join("data");
    let log = dir.path().join("job.log");
    let stderr = std::fs::File::create(&log).unwrap();
    let mut child = kafka_job(&broker, topic, &data).stdout(Stdio::null()).stderr(stderr).spawn().unwrap();
    // Stop the broker as soon as the job runs (it then reads and produces for seconds).
    let deadline = Instant::now() + support::JOB_DEADLINE;
    while !std::fs::read_to_string(&log).unwrap().contains("Job started") {
        assert!(Instant::now() < deadline, "the job did not start within the deadline");
        assert!(child.try_wait().unwrap().is_none(), "the job ended early: {}", std::fs::read_to_string(&log).unwrap());
        thread::sleep(Duration::from_millis(20));
    }
    broker.stop();
    thread::sleep(Duration::from_secs(3));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the job must wait for the broker, not exit: {}",
        std::fs::read_to_string(&log).unwrap()
    );
    broker.restart();
    let deadline = Instant::now() + support::JOB_DEADLINE;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the job did not finish after the broker came back: {}", std::fs::read_to_string(&log).unwrap());
        }
        thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "the job failed across the broker restart: {status}\n{}",
        std::fs::read_to_string(&log).unwrap()
    );
    let text = std::fs::read_to_string(&log).unwrap();
    eprintln!(
        "restarts from the last checkpoint: {}; waits logged: {}",
        text.matches("restarting from the last checkpoint").count(),
        text.matches("retrying in").count() + text.matches("the checkpoint waits").count()
    );
    check_outputs(&broker, topic, &input, &expected, dir.path());
}

#[test]
fn unreachable_brokers_and_missing_topics_are_retried_with_a_clear_reason() {
    let dir = tempfile::tempdir().unwrap();
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let broker = Broker::start(&dir.path().join("broker"));
    for (brokers, topic, reason) in [
        (format!("127.0.0.1:{closed}"), "anything", "the brokers"),
        (broker.addr(), "no-such-topic", "topic \"no-such-topic\" does not exist"),
    ] {
        let mut cmd = support::freshet();
        cmd.args(["run", "--config"])
            .arg(support::repo_root().join("examples/kafka-reference-job.toml"))
            .args(["--listen", "127.0.0.1:0"])
            .env("KAFKA_BROKERS", &brokers)
            .env("FRESHET_TOPIC", topic)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        thread::sleep(Duration::from_secs(8));
        let alive = child.try_wait().unwrap().is_none();
        child.kill().unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(alive, "with {brokers} / {topic} the job exited instead of retrying:\n{stderr}");
        assert!(
            stderr.contains(reason) && stderr.contains("retrying in"),
            "with {brokers} / {topic} the log must say {reason:?} and that it retries:\n{stderr}"
        );
        assert!(stderr.matches("retrying in").count() >= 2, "it must keep retrying:\n{stderr}");
    }
}

/// examples/kafka-reference-job.toml with `delivery = "exactly_once"` on its result sinks, written into `dir`.
fn exactly_once_config(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(support::repo_root().join("examples/kafka-reference-job.toml")).unwrap();
    assert!(text.contains("compacted = true"), "the example's result sinks are compacted");
    let path = dir.join("exactly-once.toml");
    std::fs::write(&path, text.replace("compacted = true", "compacted = true\ndelivery = \"exactly_once\"")).unwrap();
    path
}

#[test]
fn exactly_once_on_a_broker_without_transactions_fails_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("broker"));
    kafka_tool(&broker, &["create-topic", "--topic", "txn", "--partitions", "1"]);
    let input = dir.path().join("in.ndjson");
    support::generate_events(&input, &["--seed".into(), "5".into(), "--events".into(), "2000".into()]);
    kafka_tool(&broker, &["produce", "--topic", "txn", "--key-field", "user_id", input.to_str().unwrap()]);
    let mut cmd = support::freshet();
    cmd.args(["run", "--config"])
        .arg(exactly_once_config(dir.path()))
        .args(["--listen", "127.0.0.1:0"])
        .env("KAFKA_BROKERS", broker.addr())
        .env("FRESHET_TOPIC", "txn");
    let run = support::run_with_deadline(&mut cmd, support::JOB_DEADLINE);
    assert!(!run.status.success(), "tansu has no transactions: the job must fail\n{}", run.describe());
    assert!(
        run.stderr_text().contains("needs brokers with transactions"),
        "the error must say why: {}",
        run.describe()
    );
}

/// Opt-in: `FRESHET_KAFKA_TXN_BROKERS` names a broker with transactions
/// (Apache Kafka, Redpanda; none can be installed on the CI machines).
#[test]
#[ignore = "needs a broker with transactions: set FRESHET_KAFKA_TXN_BROKERS and run with --ignored"]
fn exactly_once_reference_job_on_a_broker_with_transactions() {
    let brokers = std::env::var("FRESHET_KAFKA_TXN_BROKERS")
        .expect("FRESHET_KAFKA_TXN_BROKERS must name a broker with transactions (host:port)");
    let dir = tempfile::tempdir().unwrap();
    let topic = format!("txn-{}", std::process::id());
    let broker = Broker::external(&brokers);
    let (input, expected) = workload(&broker, dir.path(), &topic, 13, 40_000);
    let data = dir.path().join("data");
    let config = exactly_once_config(dir.path());
    let job = |cmd: &mut Command| {
        cmd.args(["run", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen", "127.0.0.1:0"])
            .env("KAFKA_BROKERS", &brokers)
            .env("FRESHET_TOPIC", &topic)
            .env("FRESHET_CHECKPOINT_INTERVAL", "300ms");
    };
    let mut cmd = support::freshet();
    job(&mut cmd);
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    thread::sleep(Duration::from_millis(1500));
    child.kill().unwrap();
    child.wait().unwrap();
    let mut cmd = support::freshet();
    job(&mut cmd);
    finish(&mut cmd, "the run after the kill");
    check_outputs(&broker, &topic, &input, &expected, dir.path());
}

/// A live job: a Kafka source, an http source for control (forget), and a
/// feature whose updates go to a compacted topic.
const UPDATES_JOB: &str = r#"
[pipeline]
publish_interval = "5ms"

[event_time]
field = "ts"

[sources.events]
type = "kafka"
brokers = "${KAFKA_BROKERS}"
topic = "${FRESHET_TOPIC}"

[sources.control]
type = "http"

[sinks.profiles]
type = "kafka"
brokers = "${KAFKA_BROKERS}"
topic = "${FRESHET_TOPIC}-profiles"
partitions = 2
compacted = true

[[flows]]
name = "interactions"
when = { field = "type", in = ["view", "click", "add_to_cart", "purchase"] }
fields = { user_id = "string", ts = "integer" }

[[features]]
name = "user_counts"
flow = "interactions"
key = ["user_id", "type"]
window = { type = "tumbling", size = "1h" }
aggregate = "count"
updates_sink = "profiles"
"#;

/// Every record of `topic` as (key, value), in order per partition.
fn records(broker: &Broker, topic: &str) -> Vec<(String, String)> {
    let run = kafka_tool(broker, &["consume", "--topic", topic]);
    run.stdout_text()
        .lines()
        .map(|l| {
            let (k, v) = l.split_once('\t').unwrap_or((l, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

#[test]
fn feature_updates_reach_a_compacted_topic_and_forget_writes_a_tombstone() {
    updates_then_forget(UPDATES_JOB, "upd");
}

/// The same job without an http source: `DELETE /v1/users/{id}` goes through
/// the Kafka source's topic as a tombstone (`forget_on_tombstone`), which
/// the source reads in order with the user's events.
#[test]
fn without_an_http_source_forget_goes_through_the_topic_as_a_tombstone() {
    let job = UPDATES_JOB.replace("[sources.control]\ntype = \"http\"\n", "");
    let job = job.replace(
        "topic = \"${FRESHET_TOPIC}\"\n\n",
        "topic = \"${FRESHET_TOPIC}\"\nforget_on_tombstone = \"user\"\n\n",
    );
    assert!(!job.contains("type = \"http\"") && job.contains("forget_on_tombstone"), "{job}");
    updates_then_forget(&job, "upd-tomb");
}

/// Runs `job` on events of u1 and u2 in `topic`: u1's feature updates reach
/// the compacted topic, and after `DELETE /v1/users/u1` its tombstone does.
fn updates_then_forget(job: &str, topic: &str) {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("broker"));
    kafka_tool(&broker, &["create-topic", "--topic", topic, "--partitions", "2"]);
    let events = dir.path().join("events.ndjson");
    let lines = [
        r#"{"type":"view","user_id":"u1","item_id":"i1","ts":1000}"#,
        r#"{"type":"view","user_id":"u1","item_id":"i2","ts":2000}"#,
        r#"{"type":"click","user_id":"u1","item_id":"i2","ts":3000}"#,
        r#"{"type":"view","user_id":"u2","item_id":"i1","ts":4000}"#,
    ];
    std::fs::write(&events, lines.join("\n") + "\n").unwrap();
    kafka_tool(&broker, &["produce", "--topic", topic, "--key-field", "user_id", events.to_str().unwrap()]);
    let config = dir.path().join("updates.toml");
    std::fs::write(&config, job).unwrap();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let mut job = support::freshet()
        .args(["run", "--config"])
        .arg(&config)
        .args(["--listen", &addr])
        .env("KAFKA_BROKERS", broker.addr())
        .env("FRESHET_TOPIC", topic)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let profiles = format!("{topic}-profiles");
    let latest = |entity: &str| -> Option<String> {
        let key = format!(r#"{{"feature":"user_counts","entity":"{entity}"}}"#);
        records(&broker, &profiles).into_iter().rev().find(|(k, _)| *k == key).map(|(_, v)| v)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let u1 = loop {
        let u1 = latest("u1").filter(|v| v.contains(r#""group":["view"]"#) && v.contains(r#""group":["click"]"#));
        if let (Some(u1), Some(_)) = (u1, latest("u2")) {
            break u1;
        }
        assert!(Instant::now() < deadline, "no updates for u1 and u2 within 60 s");
        assert!(job.try_wait().unwrap().is_none(), "the job exited");
        thread::sleep(Duration::from_millis(200));
    };
    let v: serde_json::Value = serde_json::from_str(&u1).unwrap();
    let counts: Vec<(String, i64)> = v["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["group"][0].as_str().unwrap().to_owned(), g["current"]["value"].as_i64().unwrap()))
        .collect();
    assert_eq!(counts, [("click".to_owned(), 1), ("view".to_owned(), 2)], "u1's latest update: {u1}");

    let (status, body) = support::request(&addr, "DELETE", "/v1/users/u1", "application/json", "");
    assert!(status == 202 || status == 200, "forget answered {status}: {body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while latest("u1").as_deref() != Some("") {
        assert!(Instant::now() < deadline, "no tombstone for u1 within 30 s; latest {:?}", latest("u1"));
        thread::sleep(Duration::from_millis(200));
    }
    assert!(latest("u2").is_some_and(|v| !v.is_empty()), "u2 stays");

    let (_, metrics) = support::request(&addr, "GET", "/metrics", "text/plain", "");
    for name in ["freshet_kafka_consumer_lag{", "freshet_kafka_produced_total{"] {
        assert!(metrics.contains(name), "/metrics lacks {name}");
    }
    job.kill().unwrap();
    job.wait().unwrap();
}

#[test]
fn the_bare_pipe_tool_copies_every_record_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("broker"));
    let events = dir.path().join("events.ndjson");
    let lines = [r#"{"user_id":"u1","n":1}"#, r#"{"user_id":"u2","n":2}"#, r#"{"user_id":"u1","n":3}"#];
    std::fs::write(&events, lines.join("\n") + "\n").unwrap();
    kafka_tool(&broker, &["create-topic", "--topic", "from", "--partitions", "2"]);
    kafka_tool(&broker, &["create-topic", "--topic", "to", "--partitions", "2"]);
    kafka_tool(&broker, &["produce", "--topic", "from", "--key-field", "user_id", events.to_str().unwrap()]);
    let run = kafka_tool(&broker, &["consume", "--topic", "from", "--count", "--pipe-to", "to"]);
    assert!(run.stdout_text().contains(r#""records":3"#), "{}", run.describe());
    let mut copied: Vec<(String, String)> = records(&broker, "to");
    copied.sort();
    let mut want: Vec<(String, String)> = lines
        .iter()
        .map(|l| {
            (
                serde_json::from_str::<serde_json::Value>(l).unwrap()["user_id"].as_str().unwrap().to_owned(),
                l.to_string(),
            )
        })
        .collect();
    want.sort();
    assert_eq!(copied, want);
}

/// A bounded job reading `topic` with SASL SCRAM-SHA-512 as `alice` with
/// `password`, routing every event to `out/routed.ndjson`.
const SASL_JOB: &str = r#"
[sources.events]
type = "kafka"
brokers = "${KAFKA_BROKERS}"
topic = "secured"
bounded = true
[sources.events.properties]
"security.protocol" = "SASL_PLAINTEXT"
"sasl.mechanism" = "SCRAM-SHA-512"
"sasl.username" = "alice"
"sasl.password" = "${KAFKA_PASSWORD}"

[sinks.routed]
type = "file"
path = "${FRESHET_OUTPUT}/routed.ndjson"

[[flows]]
name = "events"
fields = { user_id = "string" }
stages = [{ type = "route", sink = "routed" }]
"#;

#[test]
fn sasl_credentials_pass_through_and_wrong_ones_are_reported_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("broker"));
    let events = dir.path().join("events.ndjson");
    let lines = [r#"{"user_id":"u1","ts":1000}"#, r#"{"user_id":"u2","ts":2000}"#];
    std::fs::write(&events, lines.join("\n") + "\n").unwrap();
    kafka_tool(&broker, &["create-topic", "--topic", "secured", "--partitions", "1"]);
    kafka_tool(&broker, &["produce", "--topic", "secured", events.to_str().unwrap()]);
    broker.require_authentication(&[("alice", "s3cret")]);
    let config = dir.path().join("sasl.toml");
    std::fs::write(&config, SASL_JOB).unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let job = |password: &str| {
        let mut cmd = support::freshet();
        cmd.args(["run", "--config"])
            .arg(&config)
            .env("KAFKA_BROKERS", broker.addr())
            .env("KAFKA_PASSWORD", password)
            .env("FRESHET_OUTPUT", &out);
        cmd
    };

    // The right password: the job reads the topic to its end.
    finish(&mut job("s3cret"), "the job with the right password");
    let routed = std::fs::read_to_string(out.join("routed.ndjson")).unwrap();
    assert_eq!(routed.lines().count(), 2, "both events routed: {routed}");

    // A wrong one: the reason is logged, the job keeps retrying, it never exits by itself.
    let log = dir.path().join("wrong.log");
    let mut child = job("wrong").stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("SASL authentication error") && text.matches("retrying in").count() >= 2 {
            break text;
        }
        assert!(Instant::now() < deadline, "no authentication error and retries within 60 s:\n{text}");
        assert!(child.try_wait().unwrap().is_none(), "the job exited:\n{text}");
        thread::sleep(Duration::from_millis(100));
    };
    assert!(child.try_wait().unwrap().is_none(), "the job must keep retrying:\n{text}");
    child.kill().unwrap();
    child.wait().unwrap();
}
