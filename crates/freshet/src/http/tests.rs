//! The API through the router (`oneshot`), against a real running job.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::{AppState, router};
use crate::config::{load, plan};
use crate::topology::Job;

const PIPELINE: &str = r#"
[pipeline]
dead_letter = "dlq"
publish_interval = "1ms"
[sources.ingest]
type = "http"
[sinks.dlq]
type = "file"
path = "${DIR}/dlq.ndjson"
[[flows]]
name = "interactions"
when = { field = "type", in = ["view", "click"] }
fields = { user_id = "string", item_id = "string", ts = "integer" }
[[features]]
name = "by_type_5m"
flow = "interactions"
key = ["user_id", "type"]
window = { type = "tumbling", size = "5m" }
[[features]]
name = "item_views"
flow = "interactions"
filter = { field = "type", eq = "view" }
key = ["item_id"]
window = { type = "hopping", size = "1h", slide = "5m" }
"#;

struct Harness {
    job: Option<Job>,
    state: AppState,
    dir: tempfile::TempDir,
}

fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let config = load::parse(PIPELINE, "test", &move |_| Some(d.clone())).unwrap();
    let plan = Arc::new(plan::plan(&config, "test", 2, dir.path()).unwrap());
    let job = Job::start(plan.clone(), None, false).unwrap();
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder().handle();
    let state = AppState::new(&job, prometheus);
    Harness { job: Some(job), state, dir }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(job) = self.job.take() {
            job.stop();
            let _ = job.wait();
        }
    }
}

async fn call(state: &AppState, req: Request<Body>) -> (StatusCode, serde_json::Value) {
    let res = router(state.clone()).oneshot(req).await.unwrap();
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

fn post(body: &str, content_type: &str) -> Request<Body> {
    Request::post("/v1/events").header("content-type", content_type).body(Body::from(body.to_owned())).unwrap()
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

/// Polls a features URI until `ready` holds for its JSON (views publish asynchronously).
async fn wait_for(state: &AppState, uri: &str, ready: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let (status, body) = call(state, get(uri)).await;
        assert_eq!(status, StatusCode::OK);
        if ready(&body) {
            return body;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{uri} never became ready: {body}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingested_events_become_readable_features() {
    let h = harness();
    let batch = [
        r#"{"type":"view","user_id":"u1","item_id":"i9","ts":1000}"#,
        r#"{"type":"view","user_id":"u1","item_id":"i9","ts":2000}"#,
        r#"{"type":"click","user_id":"u1","item_id":"i9","ts":3000}"#,
    ]
    .join("\n");
    let (status, body) = call(&h.state, post(&batch, "application/x-ndjson")).await;
    assert_eq!((status, body["accepted"].as_u64()), (StatusCode::ACCEPTED, Some(3)));
    // A single pretty-printed JSON document is one event.
    let single = "{\n  \"type\": \"view\", \"user_id\": \"u1\",\n  \"item_id\": \"i9\", \"ts\": 4000\n}";
    let (status, body) = call(&h.state, post(single, "application/json")).await;
    assert_eq!((status, body["accepted"].as_u64()), (StatusCode::ACCEPTED, Some(1)));

    let user = wait_for(&h.state, "/v1/users/u1/features", |b| {
        b["features"]["by_type_5m"]["groups"].as_array().is_some_and(|g| {
            g.iter().any(|g| g["key"]["type"] == "view" && g["current"]["value"] == 3)
                && g.iter().any(|g| g["key"]["type"] == "click" && g["current"]["value"] == 1)
        })
    })
    .await;
    let groups = user["features"]["by_type_5m"]["groups"].as_array().unwrap();
    let view = groups.iter().find(|g| g["key"]["type"] == "view").unwrap();
    assert_eq!(view["current"]["window_start"], 0);
    assert_eq!(view["current"]["window_end"], 300_000);
    assert_eq!(view["event_time"], 4000);
    assert_eq!(user["found"], true);

    let item =
        wait_for(&h.state, "/v1/items/i9/features", |b| b["features"]["item_views"]["current"]["value"] == 3).await;
    // The earliest open window holding ts 4000 among 1 h windows sliding by 5 min starts at -3.3 M.
    assert_eq!(item["features"]["item_views"]["current"]["window_start"], -3_300_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_entities_are_found_false_and_bad_lines_go_to_the_dlq() {
    let h = harness();
    let (status, body) = call(&h.state, get("/v1/users/nobody/features")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["found"], false);
    assert!(body["features"]["by_type_5m"]["groups"].as_array().unwrap().is_empty());
    let (status, _) = call(
        &h.state,
        post("{not json}\n{\"type\":\"view\",\"user_id\":7,\"item_id\":\"i\",\"ts\":1}", "application/x-ndjson"),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let dlq = h.dir.path().join("dlq.ndjson");
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(&dlq).unwrap_or_default();
        if text.lines().count() == 2 {
            let reasons: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
            assert!(reasons.iter().any(|r| r["reason"].as_str().unwrap().contains("invalid JSON")), "{text}");
            assert!(
                reasons.iter().any(|r| r["reason"].as_str().unwrap().contains("user_id: expected string")),
                "{text}"
            );
            assert!(reasons.iter().all(|r| r["source"] == "ingest"), "{text}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "DLQ has {text:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_answer() {
    let h = harness();
    let res = router(h.state.clone()).oneshot(get("/healthz")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = router(h.state.clone()).oneshot(get("/readyz")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = router(h.state.clone()).oneshot(get("/metrics")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = router(h.state.clone()).oneshot(get("/v1/nope")).await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    h.job.as_ref().unwrap().stop();
    let res = router(h.state.clone()).oneshot(get("/readyz")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let (status, body) = call(&h.state, post("{}", "application/json")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_without_a_recommender_answers_404_saying_so() {
    let h = harness();
    let req = Request::post("/v1/recommend").body(Body::from(r#"{"user_id":"u1"}"#)).unwrap();
    let (status, body) = call(&h.state, req).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].as_str().unwrap().contains("no recommender"), "{body}");
    let (status, body) = call(&h.state, get("/v1/items/i9/similar")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].as_str().unwrap().contains("no recommender"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_path_or_method_gets_a_json_error_that_names_it() {
    let h = harness();
    let (status, body) = call(&h.state, get("/v1/nothing")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].as_str().is_some_and(|e| e.contains("GET /v1/nothing")), "{body}");
    let put = Request::put("/v1/recommend").body(Body::empty()).unwrap();
    let res = router(h.state.clone()).oneshot(put).await.unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(res.headers().get("allow").and_then(|v| v.to_str().ok()), Some("POST"));
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert!(body["error"].as_str().is_some_and(|e| e.contains("/v1/recommend does not take PUT")), "{body}");
}
