//! HTTP ingest through the durable log: clients post batches concurrently
//! while the process is killed with SIGKILL and started again on the same
//! data directory, several times. Every event whose batch got a 202 must be
//! in the output exactly once; no event whose batch got an error (or whose
//! connection was refused) may be; an event whose request was cut off by the
//! kill (no answer) may be there at most once. A torn log tail (a crash
//! mid-write) and a corrupt record in the middle are detected, reported and
//! survived.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::support;

/// The pipeline: every event of the http source is written to `accepted.ndjson`
/// (an exactly-once file sink) and counted per user. Tiny log segments and
/// frequent checkpoints, so that segments are deleted while the test runs.
const CONFIG: &str = r#"
[pipeline]
shards = 2
decoders = 2
checkpoint_interval = "${FRESHET_CHECKPOINT_INTERVAL:-150ms}"
dead_letter = "dlq"

[sources.events]
type = "http"
segment_bytes = 8192

[sinks.accepted]
type = "file"
path = "${FRESHET_OUTPUT}/accepted.ndjson"

[sinks.dlq]
type = "file"
path = "${FRESHET_OUTPUT}/dlq.ndjson"

[[flows]]
name = "events"
fields = { event_id = "string", user_id = "string", ts = "integer" }
stages = [{ type = "route", sink = "accepted" }]

[[features]]
name = "events_per_user"
flow = "events"
key = ["user_id"]
window = { type = "global" }
"#;

/// What a client learned about one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// 202: it must be counted exactly once.
    Accepted,
    /// An error status, or the connection was refused: it must not be counted.
    Refused,
    /// Sent, but no answer (the process died): at most once.
    Unknown,
}

/// A batch's event ids and what its client learned.
type Posted = (Vec<String>, Outcome);

/// A `freshet run` child and the address it listens on.
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(config: &Path, data_dir: &Path, out: &Path, stderr: &Path) -> Server {
    start_with(config, data_dir, out, stderr, "150ms")
}

fn start_with(config: &Path, data_dir: &Path, out: &Path, stderr: &Path, checkpoint_interval: &str) -> Server {
    let log = OpenOptions::new().create(true).append(true).open(stderr).unwrap();
    let mut child = support::freshet()
        .args(["run", "--listen", "127.0.0.1:0", "--config"])
        .arg(config)
        .arg("--data-dir")
        .arg(data_dir)
        .env("FRESHET_OUTPUT", out)
        .env("FRESHET_CHECKPOINT_INTERVAL", checkpoint_interval)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("starting freshet run");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let Some(Ok(line)) = lines.next() else {
            panic!("freshet run exited before printing its address; stderr:\n{}", read(stderr))
        };
        if let Some(rest) = line.split("http://").nth(1)
            && line.contains("send events")
        {
            break rest.split('/').next().unwrap().to_owned();
        }
    };
    // Keep draining stdout so the child never blocks on it.
    thread::spawn(move || for _ in lines {});
    Server { child, addr }
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

/// Posts one NDJSON batch; the outcome as the client sees it.
fn post(addr: &str, body: &str) -> Outcome {
    let Ok(mut s) = TcpStream::connect(addr) else { return Outcome::Refused };
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/x-ndjson\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    if s.write_all(head.as_bytes()).and_then(|()| s.write_all(body.as_bytes())).is_err() {
        return Outcome::Unknown;
    }
    let mut response = String::new();
    if s.read_to_string(&mut response).is_err() {
        return Outcome::Unknown;
    }
    match response.split(' ').nth(1).and_then(|c| c.parse::<u16>().ok()) {
        Some(202) => Outcome::Accepted,
        Some(_) => Outcome::Refused,
        None => Outcome::Unknown,
    }
}

/// The event ids of a batch: client `c`, batch `b`, `n` events.
fn batch(c: usize, b: usize, n: usize) -> (Vec<String>, String) {
    let mut ids = Vec::new();
    let mut body = String::new();
    for i in 0..n {
        let id = format!("c{c}-b{b}-e{i}");
        body.push_str(&format!(
            "{{\"event_id\":\"{id}\",\"user_id\":\"u{}\",\"type\":\"view\",\"ts\":{}}}\n",
            (b * n + i) % 97,
            1_767_225_600_000u64 + (b * n + i) as u64
        ));
        ids.push(id);
    }
    (ids, body)
}

/// Event ids in the sink file, with how often each occurs. The file is read
/// while the job writes it, and a read may see half of a write (Linux does
/// not make them atomic to each other): a last line without its newline is
/// still in flight and is left for the next read.
fn counted(path: &Path) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    let text = read(path);
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    for line in complete.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("bad output line {line:?}: {e}"));
        *seen.entry(v["event_id"].as_str().unwrap().to_owned()).or_insert(0) += 1;
    }
    seen
}

struct Setup {
    _tmp: tempfile::TempDir,
    config: PathBuf,
    data: PathBuf,
    out: PathBuf,
    stderr: PathBuf,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("ingest.toml");
    fs::write(&config, CONFIG).unwrap();
    let (data, out) = (tmp.path().join("data"), tmp.path().join("out"));
    fs::create_dir_all(&out).unwrap();
    let stderr = tmp.path().join("stderr.log");
    Setup { config, data, out, stderr, _tmp: tmp }
}

/// Waits until `accepted.ndjson` holds every id in `want`, then returns what it holds.
fn wait_for(out: &Path, want: &[&String], deadline: Duration) -> HashMap<String, usize> {
    let start = Instant::now();
    loop {
        let seen = counted(&out.join("accepted.ndjson"));
        if want.iter().all(|id| seen.contains_key(*id)) || start.elapsed() > deadline {
            return seen;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn every_acknowledged_event_is_counted_exactly_once_across_kills() {
    let s = setup();
    let server = Arc::new(Mutex::new(start(&s.config, &s.data, &s.out, &s.stderr)));
    let addr = Arc::new(Mutex::new(server.lock().unwrap().addr.clone()));
    let done = Arc::new(AtomicBool::new(false));
    let outcomes: Arc<Mutex<Vec<Posted>>> = Arc::default();

    // Four clients post batches of 25 events as fast as answers come.
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (addr, done, outcomes) = (addr.clone(), done.clone(), outcomes.clone());
            thread::spawn(move || {
                let mut b = 0;
                while !done.load(Ordering::SeqCst) {
                    let (ids, body) = batch(c, b, 25);
                    let target = addr.lock().unwrap().clone();
                    let outcome = post(&target, &body);
                    outcomes.lock().unwrap().push((ids, outcome));
                    if outcome == Outcome::Refused {
                        thread::sleep(Duration::from_millis(5));
                    }
                    b += 1;
                }
            })
        })
        .collect();

    // Kill and restart five times at uneven moments.
    for (round, pause_ms) in [700u64, 350, 900, 450, 600].into_iter().enumerate() {
        thread::sleep(Duration::from_millis(pause_ms));
        let mut guard = server.lock().unwrap();
        guard.child.kill().unwrap();
        guard.child.wait().unwrap();
        thread::sleep(Duration::from_millis(50 * round as u64));
        *guard = start(&s.config, &s.data, &s.out, &s.stderr);
        *addr.lock().unwrap() = guard.addr.clone();
    }
    thread::sleep(Duration::from_millis(800));
    done.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }

    let outcomes = outcomes.lock().unwrap();
    let mut by_outcome: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, o) in outcomes.iter() {
        *by_outcome.entry(format!("{o:?}").leak()).or_insert(0) += 1;
    }
    eprintln!("batches by outcome: {by_outcome:?}");
    let accepted: Vec<&String> =
        outcomes.iter().filter(|(_, o)| *o == Outcome::Accepted).flat_map(|(ids, _)| ids).collect();
    assert!(accepted.len() >= 2000, "too few accepted events to mean anything: {}", accepted.len());
    assert!(by_outcome.get("Unknown").copied().unwrap_or(0) + by_outcome.get("Refused").copied().unwrap_or(0) > 0);

    let seen = wait_for(&s.out, &accepted, Duration::from_secs(30));
    let missing: Vec<_> = accepted.iter().filter(|id| !seen.contains_key(**id)).take(5).collect();
    assert!(missing.is_empty(), "acknowledged events lost, e.g. {missing:?}; stderr:\n{}", read(&s.stderr));
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(twice.is_empty(), "events counted twice, e.g. {twice:?}");
    let outcome_of: HashMap<&String, Outcome> =
        outcomes.iter().flat_map(|(ids, o)| ids.iter().map(move |id| (id, *o))).collect();
    let refused: Vec<_> =
        seen.keys().filter(|id| outcome_of.get(id).is_none_or(|o| *o == Outcome::Refused)).take(5).collect();
    assert!(refused.is_empty(), "events whose batch got an error were counted, e.g. {refused:?}");

    // Checkpoints covered the log: old segments were deleted.
    let log_bytes: u64 = fs::read_dir(s.data.join("ingest/events"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    let output_bytes = fs::metadata(s.out.join("accepted.ndjson")).unwrap().len();
    assert!(log_bytes < output_bytes / 2, "covered segments are deleted: {log_bytes} log bytes for {output_bytes}");
}

#[test]
fn a_torn_log_tail_and_a_corrupt_record_are_reported_and_survived() {
    let s = setup();
    // No checkpoint covers the batches, so the restart replays the whole log.
    let server = start_with(&s.config, &s.data, &s.out, &s.stderr, "1h");
    let mut accepted = Vec::new();
    for b in 0..6 {
        let (ids, body) = batch(0, b, 10);
        assert_eq!(post(&server.addr, &body), Outcome::Accepted);
        accepted.extend(ids);
    }
    drop(server);
    let log_dir = s.data.join("ingest/events");
    let mut segments: Vec<_> = fs::read_dir(&log_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    segments.sort();
    let last = segments.last().unwrap().clone();

    // A torn tail: half a record appended, as a crash mid-write leaves it.
    let mut f = OpenOptions::new().append(true).open(&last).unwrap();
    f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, b'{', b'"']).unwrap();
    drop(f);
    // A flipped byte inside a record's payload somewhere in the log.
    let victim = &segments[segments.len() / 2];
    let mut bytes = fs::read(victim).unwrap();
    let needle = b"\"user_id\":\"u";
    let at = bytes.windows(needle.len()).position(|w| w == needle).unwrap() + needle.len() - 1;
    bytes[at] = b'U';
    fs::write(victim, &bytes).unwrap();

    let server = start_with(&s.config, &s.data, &s.out, &s.stderr, "1h");
    let (more, body) = batch(1, 0, 10);
    assert_eq!(post(&server.addr, &body), Outcome::Accepted);
    let all: Vec<&String> = accepted.iter().chain(&more).collect();
    // All but one batch of ten is expected; give stragglers a moment after that.
    let started = Instant::now();
    while counted(&s.out.join("accepted.ndjson")).len() < all.len() - 10 && started.elapsed() < Duration::from_secs(60)
    {
        thread::sleep(Duration::from_millis(100));
    }
    thread::sleep(Duration::from_millis(300));
    let seen = counted(&s.out.join("accepted.ndjson"));
    drop(server);

    let stderr = read(&s.stderr);
    assert!(stderr.contains("torn record"), "the torn tail is reported:\n{stderr}");
    assert!(stderr.contains("Corrupt record in the ingest log"), "the corrupt record is reported:\n{stderr}");
    let quarantined = log_dir.join("quarantine").read_dir().map_or(0, |d| d.count());
    assert_eq!(quarantined, 1, "the corrupt record's bytes are kept:\n{stderr}");
    // Everything but the corrupt record's batch (10 events) arrives, once.
    let lost: Vec<_> = all.iter().filter(|id| !seen.contains_key(**id)).collect();
    assert_eq!(lost.len(), 10, "only the corrupt record's events are missing: {lost:?}\nstderr:\n{stderr}");
    assert!(seen.values().all(|n| *n == 1));
}

/// `events_per_user` of `user` as served: `None` when the user is unknown.
fn served_count(addr: &str, user: &str) -> Option<i64> {
    let (status, body) = support::request(addr, "GET", &format!("/v1/users/{user}/features"), "text/plain", "");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    if v["found"] == false {
        return None;
    }
    v["features"]["events_per_user"]["current"]["value"].as_i64()
}

/// Polls until `user`'s served count is `want`.
fn wait_count(addr: &str, user: &str, want: Option<i64>, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = served_count(addr, user);
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {user} has {got:?}, want {want:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_forgotten_user_is_gone_from_every_feature_and_stays_gone_after_crashes() {
    let s = setup();
    let events = |user: &str, n: usize, from: usize| -> String {
        (from..from + n)
            .map(|i| {
                format!(
                    "{{\"event_id\":\"{user}-{i}\",\"user_id\":\"{user}\",\"ts\":{}}}\n",
                    1_767_225_600_000u64 + i as u64
                )
            })
            .collect()
    };
    // Without checkpoints, a restart replays the log, forget included.
    let server = start_with(&s.config, &s.data, &s.out, &s.stderr, "1h");
    assert_eq!(post(&server.addr, &(events("alice", 5, 0) + &events("bob", 3, 0))), Outcome::Accepted);
    // Each shard publishes its own view: wait for both users, who may live on different shards.
    wait_count(&server.addr, "alice", Some(5), "before the forget");
    wait_count(&server.addr, "bob", Some(3), "before the forget");
    let (status, body) = support::request(&server.addr, "DELETE", "/v1/users/alice", "text/plain", "");
    assert_eq!(status, 202, "{body}");
    wait_count(&server.addr, "alice", None, "after the forget");
    assert_eq!(served_count(&server.addr, "bob"), Some(3), "others are untouched");
    // Events after the forget start the user afresh.
    assert_eq!(post(&server.addr, &events("alice", 2, 100)), Outcome::Accepted);
    wait_count(&server.addr, "alice", Some(2), "events after the forget");
    drop(server);

    let server = start_with(&s.config, &s.data, &s.out, &s.stderr, "1h");
    wait_count(&server.addr, "bob", Some(3), "replayed");
    wait_count(&server.addr, "alice", Some(2), "replayed with the forget in its place");
    assert_eq!(support::request(&server.addr, "DELETE", "/v1/users/alice", "text/plain", "").0, 202);
    wait_count(&server.addr, "alice", None, "forgotten again");
    drop(server);

    // With checkpoints: the forget is in the restored state itself.
    let server = start_with(&s.config, &s.data, &s.out, &s.stderr, "100ms");
    wait_count(&server.addr, "bob", Some(3), "replayed");
    wait_count(&server.addr, "alice", None, "replayed");
    thread::sleep(Duration::from_millis(600));
    drop(server);
    let stderr_before = read(&s.stderr).len();
    let server = start_with(&s.config, &s.data, &s.out, &s.stderr, "100ms");
    wait_count(&server.addr, "bob", Some(3), "restored from a checkpoint");
    assert_eq!(served_count(&server.addr, "alice"), None, "restored without alice");
    assert!(read(&s.stderr)[stderr_before..].contains("Restored"), "this start restored a checkpoint");
}
