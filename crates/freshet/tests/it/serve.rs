//! The embedded default on a real socket: `freshet run` with no config takes
//! events over HTTP, serves their features, exports metrics, dead-letters bad
//! lines, and stops cleanly on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::support;

/// A running `freshet run` child, killed on drop.
pub(crate) struct Running {
    pub(crate) child: Child,
    pub(crate) addr: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the embedded default on an ephemeral port and reads the address it prints.
pub(crate) fn start(data_dir: &std::path::Path) -> Running {
    start_with(data_dir, &[])
}

/// Like [`start`], with more arguments for `freshet run` (e.g. `--config`).
pub(crate) fn start_with(data_dir: &std::path::Path, extra: &[&std::ffi::OsStr]) -> Running {
    let mut child = support::freshet()
        .args(["run", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting freshet run");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr = loop {
        let line = lines.next().expect("freshet run exited before printing its address").unwrap();
        if let Some(rest) = line.split("http://").nth(1)
            && line.contains("user features")
        {
            break rest.split('/').next().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "no address printed");
    };
    Running { child, addr }
}

#[test]
fn embedded_default_serves_features_of_ingested_events_on_a_real_socket() {
    let dir = tempfile::tempdir().unwrap();
    let mut running = start(dir.path());
    let addr = running.addr.clone();
    let events = [
        r#"{"event_id":"e1","type":"view","user_id":"u42","item_id":"i7","ts":1767225600000}"#,
        r#"{"event_id":"e2","type":"purchase","user_id":"u42","item_id":"i7","ts":1767225601000,"price":12.5}"#,
        r#"{"event_id":"e3","type":"view","user_id":"u42","item_id":"i8","ts":1767225602000}"#,
        r#"this is not json"#,
    ]
    .join("\n");
    let (status, body) = support::request(&addr, "POST", "/v1/events", "application/x-ndjson", &events);
    assert_eq!(status, 202, "{body}");
    assert!(body.contains("\"accepted\":4"), "{body}");

    let deadline = Instant::now() + Duration::from_secs(10);
    let features: serde_json::Value = loop {
        let (status, body) = support::request(&addr, "GET", "/v1/users/u42/features", "text/plain", "");
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        if v["features"]["views_1h"]["current"]["value"] == 2 {
            break v;
        }
        assert!(Instant::now() < deadline, "features never showed both views: {body}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let f = &features["features"];
    assert_eq!(f["distinct_items_1h"]["current"]["value"], 2);
    assert_eq!(f["spend_24h"]["current"]["value"], 12.5);
    assert_eq!(f["recent_items"]["current"]["value"], serde_json::json!(["i8", "i7", "i7"]));
    assert_eq!(f["session_events"]["current"]["value"], 3);

    let (status, metrics) = support::request(&addr, "GET", "/metrics", "text/plain", "");
    assert_eq!(status, 200);
    assert!(metrics.contains("freshet_events_accepted_total 3"), "{metrics}");
    assert!(metrics.contains("freshet_dlq_events_total{reason=\"invalid_json\"} 1"), "{metrics}");
    assert!(metrics.contains("freshet_http_request_duration_seconds"), "{metrics}");

    let dlq = std::fs::read_to_string(dir.path().join("dlq.ndjson")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut dlq = dlq;
    while !dlq.contains("this is not json") {
        assert!(Instant::now() < deadline, "bad line not in the DLQ: {dlq:?}");
        std::thread::sleep(Duration::from_millis(50));
        dlq = std::fs::read_to_string(dir.path().join("dlq.ndjson")).unwrap_or_default();
    }

    // SIGTERM: a clean stop with exit code 0.
    let pid = running.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = running.child.try_wait().unwrap() {
            assert!(status.success(), "exit status after SIGTERM: {status}");
            break;
        }
        assert!(Instant::now() < deadline, "freshet did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_port_in_use_is_one_clear_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let run = support::run_with_deadline(
        support::freshet().args(["run", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"]).arg(dir.path()),
        Duration::from_secs(60),
    );
    assert!(!run.status.success());
    let err = run.stderr_text();
    assert!(err.contains("cannot listen") && err.contains(&port.to_string()), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
