//! `examples/enrich-job.toml` run by the binary against a real HTTP service:
//! an axum server on a loopback socket, started by the test, that answers
//! `GET /items/{id}` with the item's category and misbehaves on purpose —
//! latency, 503 once then fine, 404, answers slower than the timeout, a full
//! outage and its recovery — and a port where nothing listens. Every case
//! checks that each input line ends exactly once: enriched (with the
//! category the service gave), passed on per policy, or in the dead-letter
//! file with a reason.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::Value;

use crate::support::{self, DLQ};

const DEADLINE: Duration = Duration::from_secs(120);

/// How the service treats an item, by the last digits of its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    /// 200 after 1 ms.
    Healthy,
    /// 200 after 20 ms.
    Slow,
    /// 503 on the first call for the item, then 200.
    FlakyOnce,
    /// 404 always: not retried.
    Missing,
    /// Never answers within the job's timeout.
    Hangs,
}

fn behaviour(item: &str) -> Behaviour {
    let n: u64 = item.trim_start_matches('i').parse().unwrap_or(0);
    match n % 100 {
        7 | 17 => Behaviour::Slow,
        23 | 53 => Behaviour::FlakyOnce,
        13 => Behaviour::Missing,
        99 => Behaviour::Hangs,
        _ => Behaviour::Healthy,
    }
}

fn category(item: &str) -> String {
    format!("cat-{}", item.len() + item.bytes().map(u64::from).sum::<u64>() as usize % 7)
}

#[derive(Default)]
struct Service {
    calls: AtomicU64,
    /// Calls per item, to check retries and the 404's single attempt.
    per_item: std::sync::Mutex<HashMap<String, u64>>,
    /// While set, every call answers 500.
    outage: AtomicBool,
    /// Calls answered during the outage.
    outage_calls: AtomicU64,
    /// Every item healthy (no scripted misbehaviour).
    all_healthy: AtomicBool,
}

async fn item(State(s): State<Arc<Service>>, UrlPath(id): UrlPath<String>) -> (StatusCode, String) {
    s.calls.fetch_add(1, Ordering::SeqCst);
    let seen = {
        let mut per = s.per_item.lock().unwrap();
        let n = per.entry(id.clone()).or_default();
        *n += 1;
        *n
    };
    if s.outage.load(Ordering::SeqCst) {
        s.outage_calls.fetch_add(1, Ordering::SeqCst);
        return (StatusCode::INTERNAL_SERVER_ERROR, "down".into());
    }
    let b = if s.all_healthy.load(Ordering::SeqCst) { Behaviour::Healthy } else { behaviour(&id) };
    let delay = match b {
        Behaviour::Slow => 20,
        Behaviour::Hangs => 1_000,
        _ => 1,
    };
    tokio::time::sleep(Duration::from_millis(delay)).await;
    match b {
        Behaviour::FlakyOnce if seen == 1 => (StatusCode::SERVICE_UNAVAILABLE, "busy".into()),
        Behaviour::Missing => (StatusCode::NOT_FOUND, "no such item".into()),
        _ => (StatusCode::OK, serde_json::json!({"item_id": id, "category": category(&id)}).to_string()),
    }
}

/// The service on a loopback port, with its runtime.
struct Running {
    url: String,
    state: Arc<Service>,
    _runtime: tokio::runtime::Runtime,
}

fn start_service() -> Running {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a test runtime");
    let state = Arc::new(Service::default());
    let app = axum::Router::new().route("/items/{id}", get(item)).with_state(state.clone());
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("binding a loopback port");
    let url = format!("http://{}", listener.local_addr().expect("a local address"));
    runtime.spawn(async move { axum::serve(listener, app).await });
    Running { url, state, _runtime: runtime }
}

/// A port nothing listens on.
fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    let addr = listener.local_addr().expect("a local address");
    drop(listener);
    format!("http://{addr}")
}

fn example() -> PathBuf {
    let path = support::repo_root().join("examples/enrich-job.toml");
    assert!(path.is_file(), "{} does not exist", path.display());
    path
}

/// The example with `edits` (from, to) applied, written into `dir`.
fn edited_example(dir: &Path, edits: &[(&str, &str)]) -> PathBuf {
    let mut text = std::fs::read_to_string(example()).expect("reading the example");
    for (from, to) in edits {
        assert!(text.contains(from), "the example no longer contains {from:?}");
        text = text.replace(from, to);
    }
    let path = dir.join("enrich-job.toml");
    std::fs::write(&path, text).expect("writing the edited example");
    path
}

fn workload(dir: &Path, events: u64) -> (PathBuf, Vec<String>) {
    let input = dir.join("events.ndjson");
    support::generate_events(
        &input,
        &["--events".into(), events.to_string(), "--items".into(), "3000".into(), "--seed".into(), "11".into()],
    );
    let bytes = std::fs::read(&input).expect("reading the workload");
    let lines = support::input_lines(&bytes).iter().map(|l| String::from_utf8_lossy(l).into_owned()).collect();
    (input, lines)
}

fn run(config: &Path, input: &Path, out: &Path, url: &str, env: &[(&str, &str)]) -> support::Finished {
    let mut cmd = support::freshet();
    cmd.arg("run")
        .arg("--config")
        .arg(config)
        .env("FRESHET_INPUT", input)
        .env("FRESHET_OUTPUT", out)
        .env("FRESHET_ENRICH_URL", url)
        .env("RUST_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    support::run_with_deadline(&mut cmd, DEADLINE)
}

fn read_ndjson(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .enumerate()
        .map(|(n, l)| serde_json::from_str(l).unwrap_or_else(|e| panic!("{} line {n}: {e}: {l}", path.display())))
        .collect()
}

/// Where each input line ended.
#[derive(Debug, Default)]
struct Ends {
    /// Enriched (or passed-on) events, in output order, by event_id.
    out: Vec<Value>,
    /// Dead letters by input offset: (reason, raw).
    dlq: BTreeMap<u64, (String, String)>,
}

/// Reads both outputs and checks that every input line is in exactly one of
/// them: output events by event_id (unique in the workload), dead letters by
/// offset, with `raw` equal to the input line.
fn ends_exactly_once(input: &[String], out_dir: &Path) -> Ends {
    ends_exactly_once_as(input, out_dir, true)
}

/// [`ends_exactly_once`]; without `exact_raw`, a dead letter's `raw` need
/// only have its input line's event_id (the generator source paces event
/// time by the wall clock, so its lines differ from `freshet gen`'s in `ts`).
fn ends_exactly_once_as(input: &[String], out_dir: &Path, exact_raw: bool) -> Ends {
    let out = read_ndjson(&out_dir.join("enriched.ndjson"));
    let dlq = support::read_dlq(&out_dir.join(DLQ));
    let mut ends = Ends::default();
    let ids: HashMap<String, u64> = input
        .iter()
        .enumerate()
        .filter_map(|(i, l)| {
            let v: Value = serde_json::from_str(l).ok()?;
            Some((v.get("event_id")?.as_str()?.to_string(), i as u64))
        })
        .collect();
    let mut seen = BTreeSet::new();
    for ev in &out {
        let id = ev["event_id"].as_str().unwrap_or_else(|| panic!("an output event has no event_id: {ev}"));
        let offset = *ids.get(id).unwrap_or_else(|| panic!("output event {id} is not in the input"));
        assert!(seen.insert(offset), "input line {offset} ({id}) was written twice");
    }
    for r in &dlq {
        assert!(seen.insert(r.offset), "input line {} ended twice (output and/or DLQ): {}", r.offset, r.reason);
        let line = &input[r.offset as usize];
        if exact_raw {
            assert_eq!(&r.raw, line, "dead letter {}'s raw is not the input line", r.offset);
        } else if let Some(id) =
            serde_json::from_str::<Value>(line).ok().and_then(|v| v["event_id"].as_str().map(String::from))
        {
            assert!(r.raw.contains(&format!("\"event_id\":\"{id}\"")), "dead letter {} is not event {id}", r.offset);
        }
        assert!(!r.reason.is_empty(), "dead letter {} has no reason", r.offset);
        ends.dlq.insert(r.offset, (r.reason.clone(), r.raw.clone()));
    }
    let lost: Vec<usize> = (0..input.len()).filter(|i| !seen.contains(&(*i as u64))).take(5).collect();
    assert!(lost.is_empty(), "input lines lost (first few): {lost:?} of {}", input.len());
    ends.out = out;
    ends
}

fn item_of(raw: &str) -> Option<String> {
    let v: Value = serde_json::from_str(raw).ok()?;
    Some(v.get("item_id")?.as_str()?.to_string())
}

fn is_interaction(ev: &Value) -> bool {
    matches!(ev["type"].as_str(), Some("view" | "click" | "add_to_cart" | "purchase"))
}

#[test]
fn every_event_is_enriched_retried_or_dead_lettered_exactly_once_in_input_order() {
    let service = start_service();
    let dir = tempfile::tempdir().unwrap();
    let (input, lines) = workload(dir.path(), 6_000);
    // Without the breaker every call gets its full retries (the breaker has its own test).
    let config = edited_example(dir.path(), &[("breaker = { window", "breaker = { enabled = false, window")]);
    let finished = run(&config, &input, dir.path(), &service.url, &[("FRESHET_ENRICH_TIMEOUT", "300ms")]);
    finished.assert_success();
    let ends = ends_exactly_once(&lines, dir.path());

    // Enriched interactions carry the category the service gave; order is the input's.
    let mut last = None;
    for ev in &ends.out {
        let id = ev["event_id"].as_str().unwrap();
        let offset = lines.iter().position(|l| l.contains(&format!("\"event_id\":\"{id}\""))).unwrap();
        assert!(last < Some(offset), "event {id} is out of input order");
        last = Some(offset);
        if is_interaction(ev) {
            let item = ev["item_id"].as_str().unwrap();
            assert!(matches!(behaviour(item), Behaviour::Healthy | Behaviour::Slow | Behaviour::FlakyOnce), "{ev}");
            assert_eq!(ev["item"]["category"], Value::String(category(item)), "{ev}");
        }
    }
    // Failed calls are dead letters with the error; everything else the service can answer was enriched.
    let mut by_reason: BTreeMap<&str, usize> = BTreeMap::new();
    for (reason, raw) in ends.dlq.values() {
        let Some(item) = item_of(raw) else { continue };
        match behaviour(&item) {
            Behaviour::Missing => {
                assert!(reason.contains("item_category") && reason.contains("404"), "{reason}");
                *by_reason.entry("404").or_default() += 1;
            }
            Behaviour::Hangs => {
                assert!(reason.contains("timed out"), "{reason}");
                *by_reason.entry("timeout").or_default() += 1;
            }
            // Only invalid lines (field rules, event time) may fail for other items.
            _ => assert!(!reason.contains("enrich"), "item {item} should have been enriched: {reason}"),
        }
    }
    assert!(by_reason.get("404").copied().unwrap_or(0) > 10, "{by_reason:?}");
    assert!(by_reason.get("timeout").copied().unwrap_or(0) > 10, "{by_reason:?}");
    // Identical requests of a chunk share a call, so an item is asked at most once per event:
    // a 404 once per call (not retried), a hanging item four times per call (3 retries),
    // a flaky one at least once more than its first call (the 503's retry).
    let mut interactions_of: HashMap<String, u64> = HashMap::new();
    for v in lines.iter().filter_map(|l| serde_json::from_str::<Value>(l).ok()) {
        let valid = is_interaction(&v) && v["user_id"].is_string() && v["ts"].is_i64();
        if let (true, Some(item)) = (valid, v["item_id"].as_str()) {
            *interactions_of.entry(item.to_string()).or_default() += 1;
        }
    }
    let per_item = service.state.per_item.lock().unwrap();
    assert_eq!(per_item.len(), interactions_of.len(), "every item with a valid interaction is asked for, no other");
    let total: u64 = per_item.values().sum();
    let events: u64 = interactions_of.values().sum();
    assert!(total < events, "identical requests of a chunk should share calls: {total} calls for {events} events");
    for (item, calls) in per_item.iter() {
        let interactions = interactions_of[item];
        match behaviour(item) {
            Behaviour::Missing => assert!(*calls <= interactions, "404s are not retried: {item}: {calls}"),
            Behaviour::Hangs => assert!(calls % 4 == 0 && *calls <= 4 * interactions, "{item}: {calls}"),
            // More only if an attempt timed out on a loaded machine.
            Behaviour::FlakyOnce => assert!(*calls >= 2 && *calls <= 2 * interactions + 1, "{item}: {calls}"),
            _ => assert!(*calls >= 1 && *calls <= 2 * interactions, "{item}: {calls} calls"),
        }
    }
}

#[test]
fn an_outage_opens_the_breaker_healthy_traffic_resumes_when_it_closes() {
    let service = start_service();
    service.state.all_healthy.store(true, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    // Paced input (the generator at 5000 events/s, 3 s), so that the job
    // outlives the outage: a file would be read at full speed, and with the
    // breaker open the rest of it would fail fast within a moment.
    let input = dir.path().join("events.ndjson");
    let gen_args = ["--events", "15000", "--items", "3000", "--seed", "11"];
    support::run_with_deadline(support::freshet().arg("gen").args(gen_args).arg("--out").arg(&input), DEADLINE)
        .assert_success();
    let lines: Vec<String> = std::fs::read_to_string(&input).unwrap().lines().map(String::from).collect();
    let config = edited_example(
        dir.path(),
        &[(
            "type = \"file\"\npath = \"${FRESHET_INPUT}\"",
            "type = \"generator\"\nevents = 15000\nitems = 3000\nseed = 11\nemit_per_s = 5000\nstart_now = false",
        )],
    );
    let state = service.state.clone();
    let flipper = std::thread::spawn(move || {
        let started = Instant::now();
        while state.calls.load(Ordering::SeqCst) < 3_000 && started.elapsed() < DEADLINE {
            std::thread::sleep(Duration::from_millis(2));
        }
        state.outage.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(300));
        state.outage.store(false, Ordering::SeqCst);
        state.calls.load(Ordering::SeqCst)
    });
    let finished = run(&config, &input, dir.path(), &service.url, &[("FRESHET_ENRICH_OPEN_FOR", "100ms")]);
    finished.assert_success();
    let calls_at_recovery = flipper.join().unwrap();
    let ends = ends_exactly_once_as(&lines, dir.path(), false);
    let stderr = finished.stderr_text();
    assert!(stderr.contains("Circuit breaker opened"), "the breaker never opened:\n{}", finished.describe());
    assert!(stderr.contains("Circuit breaker closed"), "the breaker never closed again:\n{}", finished.describe());
    let open_rejections = ends.dlq.values().filter(|(r, _)| r.contains("circuit open")).count();
    assert!(open_rejections > 100, "events should fail fast while open, got {open_rejections}");
    // While open the service is spared: far fewer calls than events in the outage.
    let outage_calls = service.state.outage_calls.load(Ordering::SeqCst);
    assert!(outage_calls < open_rejections as u64, "{outage_calls} calls reached the dead service");
    // After recovery, events are enriched again, to the end of the input.
    assert!(service.state.calls.load(Ordering::SeqCst) > calls_at_recovery + 3000, "traffic did not resume");
    let last = ends.out.iter().rev().filter(|e| is_interaction(e)).take(1000);
    assert!(last.clone().all(|e| e.get("item").is_some()), "the last events should all be enriched");
}

#[test]
fn connection_refused_dead_letters_every_interaction_with_the_error_and_the_job_ends() {
    let dir = tempfile::tempdir().unwrap();
    let (input, lines) = workload(dir.path(), 2_000);
    let config = edited_example(dir.path(), &[]);
    let finished = run(&config, &input, dir.path(), &closed_port_url(), &[]);
    finished.assert_success();
    let ends = ends_exactly_once(&lines, dir.path());
    assert!(ends.out.iter().all(|e| !is_interaction(e)), "no interaction can be enriched");
    let refused = ends.dlq.values().filter(|(r, _)| r.contains("item_category")).count();
    assert!(refused > 1_500, "{refused}");
    assert!(finished.stderr_text().contains("Circuit breaker opened"), "{}", finished.describe());
}

#[test]
fn skip_policy_passes_failed_events_on_marked() {
    let service = start_service();
    let dir = tempfile::tempdir().unwrap();
    let (input, lines) = workload(dir.path(), 3_000);
    // The breaker is off: on a loaded machine the hanging items' timeouts could open it and skip healthy ones too.
    let config = edited_example(
        dir.path(),
        &[
            ("on_failure = \"dlq\"", "on_failure = \"skip\""),
            ("breaker = { window", "breaker = { enabled = false, window"),
        ],
    );
    let finished = run(&config, &input, dir.path(), &service.url, &[("FRESHET_ENRICH_TIMEOUT", "300ms")]);
    finished.assert_success();
    let ends = ends_exactly_once(&lines, dir.path());
    let mut marked = 0;
    for ev in ends.out.iter().filter(|e| is_interaction(e)) {
        let item = ev["item_id"].as_str().unwrap();
        match behaviour(item) {
            Behaviour::Missing | Behaviour::Hangs => {
                assert_eq!(ev["enrich_skipped"], "item_category", "{ev}");
                assert!(ev.get("item").is_none(), "{ev}");
                marked += 1;
            }
            _ => assert_eq!(ev["item"]["category"], Value::String(category(item)), "{ev}"),
        }
    }
    assert!(marked > 20, "{marked}");
    assert!(ends.dlq.values().all(|(r, _)| !r.contains("enrich")), "skip sends nothing to the DLQ");
}

#[test]
fn fail_policy_stops_the_job_with_an_error_naming_the_stage() {
    let dir = tempfile::tempdir().unwrap();
    let (input, _) = workload(dir.path(), 500);
    let config = edited_example(dir.path(), &[("on_failure = \"dlq\"", "on_failure = \"fail\"")]);
    let finished = run(&config, &input, dir.path(), &closed_port_url(), &[]);
    assert!(!finished.status.success(), "the job should fail:\n{}", finished.describe());
    let stderr = finished.stderr_text();
    assert!(stderr.contains("item_category") && stderr.contains("on_failure"), "{}", finished.describe());
}

/// A lookup job (catalog rows joined into interactions) over `n` items:
/// item i<k> is upserted with category c<k> just before its view, and
/// re-upserted with category d<k> (no tags) just before its click, after
/// all the views; then one click on an unknown item. Returns (config, input).
fn lookup_job(dir: &Path, n: usize) -> (PathBuf, PathBuf) {
    let config = dir.join("lookup.toml");
    std::fs::write(
        &config,
        r#"
        [pipeline]
        dead_letter = "dlq"
        checkpoint_interval = "20ms"
        [sources.events]
        type = "file"
        path = "${FRESHET_INPUT}"
        [sinks.out]
        type = "file"
        path = "${FRESHET_OUTPUT}/enriched.ndjson"
        [sinks.dlq]
        type = "file"
        path = "${FRESHET_OUTPUT}/dlq.ndjson"
        [tables.items]
        flow = "catalog"
        key = "item_id"
        columns = ["category", "tags"]
        [[flows]]
        name = "catalog"
        when = { field = "type", eq = "item_upsert" }
        [[flows]]
        name = "interactions"
        when = { field = "type", in = ["view", "click"] }
        stages = [
          { type = "enrich_lookup", name = "item", table = "items", key = "item_id", fields = { "item.category" = "category", "item.tags" = "tags" }, on_missing = "dlq" },
          { type = "route", sink = "out" },
        ]
        "#,
    )
    .unwrap();
    let mut lines = Vec::new();
    for k in 0..n {
        lines.push(format!(r#"{{"type":"item_upsert","item_id":"i{k}","category":"c{k}","tags":["t{k}"],"ts":{k}}}"#));
        lines.push(format!(r#"{{"type":"view","user_id":"u{k}","item_id":"i{k}","ts":{k}}}"#));
    }
    for k in 0..n {
        lines.push(format!(r#"{{"type":"item_upsert","item_id":"i{k}","category":"d{k}","ts":{k}}}"#));
        lines.push(format!(r#"{{"type":"click","user_id":"u{k}","item_id":"i{k}","ts":{k}}}"#));
    }
    lines.push(r#"{"type":"click","user_id":"u0","item_id":"nope","ts":1}"#.to_string());
    let input = dir.join("events.ndjson");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    (config, input)
}

fn lookup_command(config: &Path, input: &Path, out: &Path, data: &Path) -> std::process::Command {
    let mut cmd = support::freshet();
    cmd.arg("run")
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .env("FRESHET_INPUT", input)
        .env("FRESHET_OUTPUT", out)
        .env("RUST_LOG", "warn");
    cmd
}

#[test]
fn lookup_joins_each_interaction_with_the_catalog_row_as_of_its_position_in_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let n = 20_000;
    let (config, input) = lookup_job(dir.path(), n);
    let data = dir.path().join("data");
    support::run_with_deadline(&mut lookup_command(&config, &input, dir.path(), &data), DEADLINE).assert_success();
    let out = read_ndjson(&dir.path().join("enriched.ndjson"));
    assert_eq!(out.len(), 2 * n, "every interaction but the unknown item's is written");
    for (i, ev) in out.iter().enumerate() {
        let k = i % n;
        let (category, tags) = if i < n {
            (format!("c{k}"), serde_json::json!([format!("t{k}")]))
        } else {
            (format!("d{k}"), Value::Null)
        };
        assert_eq!(ev["item_id"], format!("i{k}"), "output order is input order");
        assert_eq!(ev["item"]["category"], Value::String(category), "{ev}");
        assert_eq!(ev["item"].get("tags").cloned().unwrap_or(Value::Null), tags, "{ev}");
    }
    let dlq = support::read_dlq(&dir.path().join(DLQ));
    assert_eq!(dlq.len(), 1);
    assert!(
        dlq[0].reason.contains("lookup stage item: no row for item_id = \"nope\" in table items"),
        "{}",
        dlq[0].reason
    );
}

/// The tables are checkpointed with the rest: a job killed (SIGKILL) again
/// and again and restarted on its data dir writes exactly what an
/// uninterrupted run writes. Without restored tables, the views after a
/// restart would miss their rows and go to the DLQ.
#[test]
fn lookup_tables_survive_kills_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (config, input) = lookup_job(dir.path(), 150_000);
    let (clean, killed) = (dir.path().join("clean"), dir.path().join("killed"));
    std::fs::create_dir_all(&clean).unwrap();
    std::fs::create_dir_all(&killed).unwrap();
    let mut cmd = lookup_command(&config, &input, &clean, &dir.path().join("clean-data"));
    support::run_with_deadline(&mut cmd, DEADLINE).assert_success();

    let started = Instant::now();
    let (mut kills, mut finished) = (0, false);
    while !finished && started.elapsed() < DEADLINE {
        let mut child = lookup_command(&config, &input, &killed, &dir.path().join("killed-data"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting freshet");
        std::thread::sleep(Duration::from_millis(300 + 150 * kills as u64));
        match child.try_wait().expect("polling freshet") {
            Some(status) => {
                assert!(status.success(), "a run failed after {kills} kills: {status}");
                finished = true;
            }
            None => {
                child.kill().expect("killing freshet");
                child.wait().expect("reaping freshet");
                kills += 1;
            }
        }
    }
    assert!(finished, "the job did not finish after {kills} kills");
    assert!(kills >= 2, "the job finished before it could be killed twice ({kills}); make the input larger");
    for file in ["enriched.ndjson", DLQ] {
        let a = std::fs::read(clean.join(file)).unwrap();
        let b = std::fs::read(killed.join(file)).unwrap();
        assert!(a == b, "{file} differs after {kills} kills: {} vs {} bytes", a.len(), b.len());
    }
}
