//! Recommendations from a real `freshet run` (the embedded default, on a free
//! port): events go in through `POST /v1/events`, answers come out of
//! `POST /v1/recommend` and `GET /v1/items/{id}/similar`. Covers co-visitation,
//! freshness (a user's event is reflected within a second), cold start,
//! new catalog items, availability, placements, catalog embeddings (nearest items, and a
//! wrong dimension dead-lettered while the item is catalogued), strict
//! request checking, forgetting a user, and the `freshet recommend` /
//! `freshet similar` client commands.
//!
//! Latencies are measured from the 202 of the event's POST to the first
//! answer that reflects it, polling every 2 ms, and printed (run with
//! `--no-capture` to see them).

use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::serve::{self, Running};
use crate::support;

/// Event time of the first event (2026-01-01).
const T0: i64 = 1_767_225_600_000;
/// The co-visited pair, and the most popular item (viewed alone).
const A: &str = "covis-a";
const B: &str = "covis-b";
const POP: &str = "pop";

static EVENT_IDS: AtomicU64 = AtomicU64::new(1);

fn event_id() -> String {
    format!("e{}", EVENT_IDS.fetch_add(1, Ordering::Relaxed))
}

/// One interaction event line.
fn view(user: &str, item: &str, ts: i64) -> String {
    json!({ "event_id": event_id(), "type": "view", "user_id": user, "item_id": item, "ts": ts }).to_string()
}

/// One catalog event line.
fn upsert(item: &str, category: &str, ts: i64) -> String {
    json!({ "event_id": event_id(), "type": "item_upsert", "item_id": item, "ts": ts, "category": category,
            "tags": [format!("tag-{category}")], "title": format!("the {item}") })
    .to_string()
}

/// Posts NDJSON lines; fails unless every line is accepted.
fn post_events(addr: &str, lines: &[String]) {
    let body = lines.join("\n");
    let (status, answer) = support::request(addr, "POST", "/v1/events", "application/x-ndjson", &body);
    assert_eq!(status, 202, "{answer}");
    assert!(answer.contains(&format!("\"accepted\":{}", lines.len())), "{answer}");
}

fn parse(status: u16, body: &str) -> (u16, Value) {
    let v = serde_json::from_str(body).unwrap_or_else(|e| panic!("answer {status} is not JSON ({e}): {body}"));
    (status, v)
}

fn recommend(addr: &str, request: &Value) -> (u16, Value) {
    let (status, body) = support::request(addr, "POST", "/v1/recommend", "application/json", &request.to_string());
    parse(status, &body)
}

/// A 200 recommend answer; fails the test otherwise.
fn recommend_ok(addr: &str, request: &Value) -> Value {
    let (status, v) = recommend(addr, request);
    assert_eq!(status, 200, "{request} -> {v}");
    v
}

fn similar(addr: &str, item: &str, query: &str) -> (u16, Value) {
    let (status, body) = support::request(addr, "GET", &format!("/v1/items/{item}/similar{query}"), "text/plain", "");
    parse(status, &body)
}

/// The item ids of an answer, best first.
fn ids(answer: &Value) -> Vec<String> {
    answer["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items in {answer}"))
        .iter()
        .map(|i| i["item_id"].as_str().unwrap().to_owned())
        .collect()
}

/// The reasons (generator names) of `item` in an answer.
fn reasons(answer: &Value, item: &str) -> Vec<String> {
    let entry = answer["items"].as_array().unwrap().iter().find(|i| i["item_id"] == item);
    let entry = entry.unwrap_or_else(|| panic!("{item} is not in {answer}"));
    entry["reasons"].as_array().unwrap().iter().map(|r| r["generator"].as_str().unwrap().to_owned()).collect()
}

/// Calls `check` every 2 ms until it returns `Some`, failing after `limit`;
/// returns its value and how long it took.
fn poll<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Result<T, String>) -> (T, Duration) {
    let start = Instant::now();
    loop {
        match check() {
            Ok(v) => return (v, start.elapsed()),
            Err(last) => {
                assert!(start.elapsed() < limit, "{what}: not within {limit:?}; last answer: {last}");
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}

/// Starts the embedded default in a fresh data directory.
fn start() -> (Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let running = serve::start(dir.path());
    (running, dir)
}

/// Starts the embedded default's config with `extra` appended, in a fresh data directory.
fn start_with_config(extra: &str) -> (Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let default = std::fs::read_to_string(support::repo_root().join("crates/freshet/src/default.toml")).unwrap();
    // Outside the embedded default, ${FRESHET_DATA_DIR} is an ordinary environment variable.
    let default = default.replace("${FRESHET_DATA_DIR}", &dir.path().display().to_string());
    let config = dir.path().join("config.toml");
    std::fs::write(&config, format!("{default}\n{extra}")).unwrap();
    let running = serve::start_with(dir.path(), &[OsStr::new("--config"), config.as_os_str()]);
    (running, dir)
}

/// The co-visitation world: 30 users view A then B; 60 others view only POP
/// (so POP is the most popular item, B is not); 20 more view pairs of noise
/// items n0..n9. Waits until the item lists are published (A's similar
/// items hold B).
fn covisitation_world(addr: &str) {
    let mut lines = Vec::new();
    let mut ts = T0;
    for u in 0..30 {
        lines.push(view(&format!("cv{u}"), A, ts));
        lines.push(view(&format!("cv{u}"), B, ts + 1000));
        ts += 2000;
    }
    for u in 0..60 {
        lines.push(view(&format!("pp{u}"), POP, ts));
        ts += 100;
    }
    for u in 0..20 {
        lines.push(view(&format!("nz{u}"), &format!("n{}", u % 10), ts));
        lines.push(view(&format!("nz{u}"), &format!("n{}", (u + 1) % 10), ts + 500));
        ts += 1000;
    }
    post_events(addr, &lines);
    poll("A's similar items to hold B", Duration::from_secs(10), || {
        let (status, v) = similar(addr, A, "");
        if status == 200 && ids(&v).contains(&B.to_owned()) { Ok(()) } else { Err(format!("{status} {v}")) }
    });
}

/// Event time after the world's events.
const LATER: i64 = T0 + 3_600_000;

#[test]
fn co_visited_items_are_recommended_and_seen_or_excluded_ones_never() {
    let (running, _dir) = start();
    let addr = running.addr.as_str();
    covisitation_world(addr);

    // Similar items of A: B first, through co-occurrence; never A itself, never the merely popular.
    let (status, sim) = similar(addr, A, "?k=5");
    assert_eq!(status, 200, "{sim}");
    let sim_ids = ids(&sim);
    assert_eq!(sim_ids.first().map(String::as_str), Some(B), "{sim}");
    assert!(reasons(&sim, B).contains(&"cooccurrence".to_owned()), "{sim}");
    assert!(!sim_ids.contains(&A.to_owned()) && !sim_ids.contains(&POP.to_owned()), "{sim}");
    assert_eq!(sim["item_id"], A);
    assert!(sim["recommendation_id"].as_str().is_some_and(|id| id.starts_with("r-")), "{sim}");

    // A new user who viewed A gets B first, because of co-occurrence.
    post_events(addr, &[view("newbie", A, LATER)]);
    let (answer, _) = poll("newbie's view of A to be reflected", Duration::from_secs(5), || {
        let v = recommend_ok(addr, &json!({ "user_id": "newbie" }));
        if v["cold_start"] == false { Ok(v) } else { Err(v.to_string()) }
    });
    let got = ids(&answer);
    assert_eq!(got.first().map(String::as_str), Some(B), "{answer}");
    let why = reasons(&answer, B);
    assert!(why.contains(&"cooccurrence".to_owned()), "{answer}");
    assert!(!got.contains(&A.to_owned()), "the user's own item came back: {answer}");
    assert_eq!(answer["user_id"], "newbie");
    assert_eq!(got.len(), 10, "trending fills the list to k: {answer}");
    let scores: Vec<f64> = answer["items"].as_array().unwrap().iter().map(|i| i["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "scores are not best first: {scores:?}");

    // exclude removes items, whatever their score.
    let excluded = recommend_ok(addr, &json!({ "user_id": "newbie", "exclude": [B, POP], "k": 20 }));
    let got = ids(&excluded);
    assert!(!got.contains(&B.to_owned()) && !got.contains(&POP.to_owned()), "{excluded}");
    assert!(!got.contains(&A.to_owned()), "{excluded}");
    assert!(!got.is_empty(), "{excluded}");

    // Users who saw both A and B never get either, in any list length.
    for u in 0..5 {
        let v = recommend_ok(addr, &json!({ "user_id": format!("cv{u}"), "k": 1000 }));
        assert_eq!(v["cold_start"], false, "{v}");
        let got = ids(&v);
        assert!(!got.contains(&A.to_owned()) && !got.contains(&B.to_owned()), "cv{u} got a seen item: {v}");
        assert!(got.contains(&POP.to_owned()), "the popular item fills cv{u}'s list: {v}");
    }
    // Each answer has its own id.
    let a = recommend_ok(addr, &json!({ "user_id": "newbie" }));
    let b = recommend_ok(addr, &json!({ "user_id": "newbie" }));
    assert_ne!(a["recommendation_id"], b["recommendation_id"]);

    assert_eq!(recommend_ok(addr, &json!({ "user_id": "stranger" }))["cold_start"], true);
    let (status, metrics) = support::request(addr, "GET", "/metrics", "text/plain", "");
    assert_eq!(status, 200);
    for kind in ["user", "cold_start", "similar"] {
        assert!(
            metrics.contains(&format!("freshet_recommend_requests_total{{kind=\"{kind}\"}}")),
            "no {kind} count in /metrics:\n{metrics}"
        );
    }
}

#[test]
fn a_users_event_is_reflected_within_a_second_and_forgetting_makes_them_cold_and_items_unproposed() {
    let (running, _dir) = start();
    let addr = running.addr.as_str();
    covisitation_world(addr);
    let request = json!({ "user_id": "fresh", "k": 5 });
    assert_eq!(recommend_ok(addr, &request)["cold_start"], true);

    // The view of A: then A is gone from the list and its co-visited B leads it.
    post_events(addr, &[view("fresh", A, LATER)]);
    let (answer, first) = poll("fresh's view of A", Duration::from_secs(3), || {
        let v = recommend_ok(addr, &request);
        let got = ids(&v);
        if v["cold_start"] == false && got.first().map(String::as_str) == Some(B) && !got.contains(&A.to_owned()) {
            Ok(v)
        } else {
            Err(v.to_string())
        }
    });
    assert!(reasons(&answer, B).contains(&"cooccurrence".to_owned()), "{answer}");

    // The view of B: B is gone too.
    post_events(addr, &[view("fresh", B, LATER + 1000)]);
    let (answer, second) = poll("fresh's view of B", Duration::from_secs(3), || {
        let v = recommend_ok(addr, &request);
        if ids(&v).contains(&B.to_owned()) { Err(v.to_string()) } else { Ok(v) }
    });
    assert!(!ids(&answer).contains(&A.to_owned()), "{answer}");
    println!(
        "freshness: event 202 -> reflected in /v1/recommend after {first:.3?} (new user), {second:.3?} (next event)"
    );
    assert!(first <= Duration::from_secs(1), "a user's first event took {first:?} to be reflected");
    assert!(second <= Duration::from_secs(1), "a user's next event took {second:?} to be reflected");

    // Forget: the user is a cold start again, and their items are no longer excluded.
    let (status, body) = support::request(addr, "DELETE", "/v1/users/fresh", "text/plain", "");
    assert_eq!(status, 202, "{body}");
    let (answer, forgot) = poll("fresh to be forgotten", Duration::from_secs(3), || {
        let v = recommend_ok(addr, &json!({ "user_id": "fresh", "k": 1000 }));
        if v["cold_start"] == true { Ok(v) } else { Err(v.to_string()) }
    });
    println!("forget: DELETE 202 -> cold start after {forgot:.3?}");
    assert_eq!(answer["user_id"], "fresh");
    let got = ids(&answer);
    assert!(got.contains(&A.to_owned()) && got.contains(&B.to_owned()), "trending again holds A and B: {answer}");

    // Forget an item: B leaves every list (A's neighbours, A's similar
    // items, trending) within the item publication interval.
    post_events(addr, &[view("after", A, LATER + 2000)]);
    poll("after's view of A", Duration::from_secs(3), || {
        let v = recommend_ok(addr, &json!({ "user_id": "after", "k": 5 }));
        if ids(&v).first().map(String::as_str) == Some(B) { Ok(()) } else { Err(v.to_string()) }
    });
    let (status, body) = support::request(addr, "DELETE", &format!("/v1/items/{B}"), "text/plain", "");
    assert_eq!(status, 202, "{body}");
    let (_, gone) = poll("B to be forgotten", Duration::from_secs(3), || {
        // (A's similar items may now be none: only B's viewers saw A.)
        let answers = [
            recommend_ok(addr, &json!({ "user_id": "after", "k": 1000 })),
            recommend_ok(addr, &json!({ "user_id": "nobody-yet", "k": 1000 })),
            similar(addr, A, "?k=1000").1,
        ];
        let proposed = |v: &Value| ids(v).contains(&B.to_owned()) || (v["user_id"].is_string() && ids(v).is_empty());
        match answers.iter().find(|v| proposed(v)) {
            Some(v) => Err(v.to_string()),
            None => Ok(()),
        }
    });
    println!("forget item: DELETE 202 -> in no list after {gone:.3?}");
}

/// One catalog event line with an availability value.
fn upsert_availability(item: &str, available: Value, ts: i64) -> String {
    json!({ "event_id": event_id(), "type": "item_upsert", "item_id": item, "ts": ts, "category": "c1",
            "available": available })
    .to_string()
}

#[test]
fn an_unavailable_item_leaves_every_list_and_comes_back_with_its_neighbours() {
    let (running, dir) = start();
    let addr = running.addr.as_str();
    covisitation_world(addr);
    post_events(addr, &[view("shopper", A, LATER)]);
    poll("shopper's view of A", Duration::from_secs(3), || {
        let v = recommend_ok(addr, &json!({ "user_id": "shopper", "k": 5 }));
        if ids(&v).first().map(String::as_str) == Some(B) { Ok(()) } else { Err(v.to_string()) }
    });
    // Every list that can hold B, and whether any does.
    let lists = || {
        [
            recommend_ok(addr, &json!({ "user_id": "shopper", "k": 1000 })),
            recommend_ok(addr, &json!({ "user_id": "nobody-yet", "k": 1000 })),
            recommend_ok(addr, &json!({ "context": [A], "k": 1000 })),
            similar(addr, A, "?k=1000").1,
        ]
    };
    let holds_b = |v: &Value| ids(v).contains(&B.to_owned());

    // Out of stock (and an availability that is not a boolean: a dead letter, the item catalogued).
    post_events(
        addr,
        &[upsert_availability(B, json!(false), LATER + 1000), upsert_availability("oddly", json!("no"), LATER + 1000)],
    );
    let (_, gone) =
        poll("B to leave every list", Duration::from_secs(3), || match lists().iter().find(|v| holds_b(v)) {
            Some(v) => Err(v.to_string()),
            None => Ok(()),
        });
    // Still learning while out: more co-visits of A and B.
    let mut lines = Vec::new();
    for u in 0..5 {
        lines.push(view(&format!("later{u}"), A, LATER + 2000 + u * 10));
        lines.push(view(&format!("later{u}"), B, LATER + 2005 + u * 10));
    }
    post_events(addr, &lines);
    std::thread::sleep(Duration::from_millis(600));
    assert!(!lists().iter().any(holds_b), "an interaction brought B back: {:?}", lists());

    // Back in stock: an upsert without the field.
    post_events(addr, &[upsert(B, "c1", LATER + 3000)]);
    let (answers, back) = poll("B to be back in every list", Duration::from_secs(3), || {
        let answers = lists();
        // Only A's viewers saw B: every list but the trending one has it first.
        if answers.iter().all(holds_b) { Ok(answers) } else { Err(format!("{answers:?}")) }
    });
    for v in &answers[..1] {
        assert_eq!(ids(v).first().map(String::as_str), Some(B), "{v}");
        assert!(reasons(v, B).contains(&"cooccurrence".to_owned()), "{v}");
    }
    println!("availability: upsert 202 -> out of every list after {gone:.3?}, back after {back:.3?}");
    assert!(gone <= Duration::from_secs(1) && back <= Duration::from_secs(1), "{gone:?} {back:?}");

    let dlq_path = dir.path().join(support::DLQ);
    let (dlq, _) = poll("the availability's dead letter", Duration::from_secs(5), || {
        let dlq = std::fs::read_to_string(&dlq_path).unwrap_or_default();
        if dlq.ends_with('\n') { Ok(dlq) } else { Err(dlq) }
    });
    let record: Value = serde_json::from_str(dlq.trim()).unwrap_or_else(|e| panic!("{e}: {dlq}"));
    assert_eq!(
        record["reason"],
        "flow catalog: item oddly: available is not true or false; the item is catalogued as available"
    );
    let (_, metrics) = support::request(addr, "GET", "/metrics", "text/plain", "");
    assert!(metrics.contains("freshet_dlq_events_total{reason=\"availability\"} 1"), "{metrics}");
}

#[test]
fn cold_starts_get_trending_items_or_the_contexts_neighbours() {
    let (running, _dir) = start();
    let addr = running.addr.as_str();
    covisitation_world(addr);

    // An unknown user, and no user at all: the popular items, POP first.
    for request in [json!({ "user_id": "ghost" }), json!({}), json!({ "user_id": null, "k": 3 })] {
        let v = recommend_ok(addr, &request);
        assert_eq!(v["cold_start"], true, "{v}");
        let got = ids(&v);
        assert_eq!(got.first().map(String::as_str), Some(POP), "{request} -> {v}");
        assert_eq!(got.len(), request["k"].as_u64().unwrap_or(10) as usize, "{v}");
        assert!(reasons(&v, POP).contains(&"trending".to_owned()), "{v}");
    }
    let v = recommend_ok(addr, &json!({}));
    assert_eq!(v["user_id"], Value::Null);

    // With the page's item as context, its co-visited item comes first, and the context item never.
    let v = recommend_ok(addr, &json!({ "user_id": "ghost", "context": [A] }));
    assert_eq!(v["cold_start"], true);
    let got = ids(&v);
    assert_eq!(got.first().map(String::as_str), Some(B), "{v}");
    assert!(reasons(&v, B).contains(&"cooccurrence".to_owned()), "{v}");
    assert!(!got.contains(&A.to_owned()), "{v}");
    // Unknown context items are no seeds, not errors.
    let v = recommend_ok(addr, &json!({ "context": ["never-seen", A] }));
    assert_eq!(ids(&v).first().map(String::as_str), Some(B), "{v}");

    // The client commands print the server's JSON; errors are the server's message, exit 1.
    let url = format!("http://{addr}");
    let run = support::run_with_deadline(
        support::freshet().args(["similar", "--item", A, "--k", "3", "--url", &url]),
        Duration::from_secs(30),
    );
    run.assert_success();
    let printed: Value = serde_json::from_str(&run.stdout_text()).unwrap();
    assert_eq!(ids(&printed).first().map(String::as_str), Some(B), "{printed}");
    assert!(
        run.stdout_text().starts_with("{\n  \"recommendation_id\": \"r-"),
        "not pretty, or not in the server's order: {}",
        run.stdout_text()
    );
    let run = support::run_with_deadline(
        support::freshet().args(["recommend", "--user", "ghost", "--context", A, "--k", "2"]).env("FRESHET_URL", &url),
        Duration::from_secs(30),
    );
    run.assert_success();
    let printed: Value = serde_json::from_str(&run.stdout_text()).unwrap();
    assert_eq!((printed["cold_start"].as_bool(), ids(&printed).len()), (Some(true), 2), "{printed}");
    assert_eq!(ids(&printed)[0], B, "{printed}");
    let run = support::run_with_deadline(
        support::freshet().args(["recommend", "--user", "ghost", "--k", "0", "--url", &url]),
        Duration::from_secs(30),
    );
    assert_eq!(run.status.code(), Some(1), "{}", run.describe());
    assert!(run.stderr_text().contains("400") && run.stderr_text().contains("k must be within 1..=1000, got 0"));
    let run = support::run_with_deadline(
        support::freshet().args(["similar", "--item", "no such/item", "--url", &url]),
        Duration::from_secs(30),
    );
    assert_eq!(run.status.code(), Some(1), "{}", run.describe());
    assert!(run.stderr_text().contains(r#"item "no such/item" is not known"#), "{}", run.describe());
}

#[test]
fn a_new_catalog_item_is_recommended_and_similar_within_the_item_publish_interval() {
    let (running, _dir) = start();
    let addr = running.addr.as_str();
    // The catalog first, so that the fan's views build an affinity to c9.
    let mut catalog: Vec<String> = (1..=3).map(|i| upsert(&format!("x{i}"), "c9", T0)).collect();
    catalog.extend((1..=6).map(|i| upsert(&format!("y{i}"), "c1", T0)));
    post_events(addr, &catalog);
    let mut lines: Vec<String> = (1..=3).map(|i| view("fan", &format!("x{i}"), T0 + i * 1000)).collect();
    for u in 0..20 {
        lines.push(view(&format!("o{u}"), &format!("y{}", 1 + u % 6), T0 + 10_000 + u * 100));
        lines.push(view(&format!("o{u}"), &format!("y{}", 1 + (u + 1) % 6), T0 + 10_050 + u * 100));
    }
    post_events(addr, &lines);
    poll("x1's similar items to be published", Duration::from_secs(10), || {
        let (status, v) = similar(addr, "x1", "");
        if status == 200 && ids(&v).contains(&"x2".to_owned()) { Ok(()) } else { Err(format!("{status} {v}")) }
    });
    let before = recommend_ok(addr, &json!({ "user_id": "fan" }));
    assert_eq!(before["cold_start"], false, "{before}");
    assert!(!ids(&before).iter().any(|i| i.starts_with('x')), "the fan's own items came back: {before}");

    // The new item, in the fan's favourite category: no interaction with it yet.
    post_events(addr, &[upsert("new1", "c9", T0 + 60_000)]);
    let upserted = Instant::now();
    let mut recommended = None;
    let mut similar_to_x1 = None;
    // Proposed by the content generator, that is: a list short of k items is
    // filled up with other catalogued items (no reasons), and the catalog can
    // reach the view a moment before the category lists that propose new1 do.
    let proposed =
        |v: &Value| ids(v).contains(&"new1".to_owned()) && reasons(v, "new1").contains(&"content".to_owned());
    let (_, _) = poll("new1 in the fan's list and x1's similar items", Duration::from_secs(3), || {
        if recommended.is_none() {
            let v = recommend_ok(addr, &json!({ "user_id": "fan" }));
            if proposed(&v) {
                recommended = Some((upserted.elapsed(), v));
            }
        }
        if similar_to_x1.is_none() {
            let (status, v) = similar(addr, "x1", "");
            if status == 200 && proposed(&v) {
                similar_to_x1 = Some((upserted.elapsed(), v));
            }
        }
        if recommended.is_some() && similar_to_x1.is_some() { Ok(()) } else { Err("not both yet".into()) }
    });
    let (in_list, list) = recommended.unwrap();
    let (in_similar, sim) = similar_to_x1.unwrap();
    println!(
        "new item: upsert 202 -> in the fan's recommendations after {in_list:.3?}, in x1's similar items after \
         {in_similar:.3?} (item lists publish every 500 ms)"
    );
    // The issue's bound (1 s): one item_publish_interval (500 ms) plus slack
    // for a loaded machine's scheduling.
    let limit = Duration::from_millis(1000);
    assert!(in_list <= limit, "new1 took {in_list:?} to reach the fan's list");
    assert!(in_similar <= limit, "new1 took {in_similar:?} to reach x1's similar items");
    assert_eq!(ids(&list).first().map(String::as_str), Some("new1"), "{list}");
    assert!(reasons(&list, "new1").contains(&"content".to_owned()), "{list}");
    assert!(reasons(&sim, "new1").contains(&"content".to_owned()), "{sim}");
    // A category filter keeps only that category's items.
    let v = recommend_ok(addr, &json!({ "user_id": "fan", "filters": { "category": ["c1"] } }));
    let got = ids(&v);
    assert!(!got.is_empty() && got.iter().all(|i| i.starts_with('y')), "{v}");
    let v = recommend_ok(addr, &json!({ "filters": { "category": ["no-such-category"] } }));
    assert!(ids(&v).is_empty(), "{v}");
}

#[test]
fn a_configured_placement_applies_its_rules_and_unknown_ones_are_refused() {
    let placements = r#"
[recommender.placements.home]
exclude_categories = ["c1"]
pin = [{ item = "promo", position = 1 }]
"#;
    let (running, _dir) = start_with_config(placements);
    let addr = running.addr.as_str();
    let mut lines = vec![upsert("p1", "c1", T0), upsert("p2", "c2", T0), upsert("promo", "c3", T0)];
    for u in 0..10 {
        lines.push(view(&format!("v{u}"), "q", T0 + 1000 + u * 10));
        lines.push(view(&format!("v{u}"), "p1", T0 + 1001 + u * 10));
        lines.push(view(&format!("v{u}"), "p2", T0 + 1002 + u * 10));
    }
    post_events(addr, &lines);
    poll("q's similar items", Duration::from_secs(10), || {
        let (status, v) = similar(addr, "q", "");
        if status == 200 && ids(&v).contains(&"p1".to_owned()) { Ok(()) } else { Err(format!("{status} {v}")) }
    });
    let plain = recommend_ok(addr, &json!({ "context": ["q"] }));
    assert!(ids(&plain).contains(&"p1".to_owned()), "{plain}");
    let placed = recommend_ok(addr, &json!({ "context": ["q"], "placement": "home" }));
    let got = ids(&placed);
    assert_eq!(got.first().map(String::as_str), Some("promo"), "the pin leads: {placed}");
    assert!(!got.contains(&"p1".to_owned()) && got.contains(&"p2".to_owned()), "{placed}");
    let (status, v) = recommend(addr, &json!({ "placement": "checkout" }));
    assert_eq!(status, 400);
    assert_eq!(v["error"], r#"unknown placement "checkout"; configured placements: "home""#);
}

/// The value of the metric line that starts with `series` (name and labels) on `/metrics`.
fn metric(addr: &str, series: &str) -> Option<f64> {
    let (status, text) = support::request(addr, "GET", "/metrics", "text/plain", "");
    assert_eq!(status, 200, "{text}");
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Interactions that carry a served list's `recommendation_id` are counted
/// for that list on `/metrics`: by placement and event type, by the item's
/// position, by the generators that proposed it; one with the id of no list
/// served here, and one whose item was not in the list, are counted apart.
#[test]
fn interactions_with_a_recommendation_id_are_attributed_to_the_list_served() {
    let (running, _dir) = start_with_config("[recommender.placements.home]\n");
    let addr = running.addr.as_str();
    covisitation_world(addr);
    post_events(addr, &[view("att", A, LATER)]);
    let (home, _) = poll("att's list to hold B, seen with A", Duration::from_secs(10), || {
        let v = recommend_ok(addr, &json!({ "user_id": "att", "placement": "home" }));
        let covisited = ids(&v).contains(&B.to_owned()) && reasons(&v, B).contains(&"cooccurrence".to_owned());
        if covisited { Ok(v) } else { Err(v.to_string()) }
    });
    let position = ids(&home).iter().position(|i| i == B).unwrap() + 1;
    let generators = reasons(&home, B);
    let (status, similar_to_a) = similar(addr, A, "");
    assert_eq!(status, 200);
    assert!(!ids(&similar_to_a).contains(&POP.to_owned()), "{similar_to_a}");
    let id = |answer: &Value| answer["recommendation_id"].as_str().unwrap().to_owned();
    let with_id = |kind: &str, item: &str, recommendation: &str, ts: i64| {
        json!({ "event_id": event_id(), "type": kind, "user_id": "att", "item_id": item, "ts": ts,
                "recommendation_id": recommendation })
        .to_string()
    };
    post_events(
        addr,
        &[
            with_id("click", B, &id(&home), LATER + 1000),
            with_id("purchase", B, &id(&home), LATER + 2000),
            with_id("view", POP, &id(&similar_to_a), LATER + 3000),
            with_id("view", "n1", "r-1-1", LATER + 4000),
        ],
    );
    let clicks = r#"freshet_recommendation_interactions_total{placement="home",type="click"}"#;
    poll("the click to be attributed", Duration::from_secs(10), || {
        metric(addr, clicks).filter(|&n| n == 1.0).ok_or_else(|| format!("{:?}", metric(addr, clicks)))
    });
    let purchases = r#"freshet_recommendation_interactions_total{placement="home",type="purchase"}"#;
    assert_eq!(metric(addr, purchases), Some(1.0));
    let at = format!(r#"freshet_recommendation_interactions_by_position_total{{position="{position}"}}"#);
    assert_eq!(metric(addr, &at), Some(2.0));
    for generator in &generators {
        let by = format!(r#"freshet_recommendation_interactions_by_generator_total{{generator="{generator}"}}"#);
        assert_eq!(metric(addr, &by), Some(2.0), "{generator}");
    }
    let served = |placement: &str| {
        metric(addr, &format!(r#"freshet_recommendations_served_total{{placement="{placement}"}}"#)).unwrap_or(0.0)
    };
    assert!(served("home") >= 1.0 && served("similar") >= 1.0);
    let unattributed =
        |reason: &str| metric(addr, &format!(r#"freshet_recommendation_unattributed_total{{reason="{reason}"}}"#));
    assert_eq!((unattributed("not_in_list"), unattributed("not_served_here")), (Some(1.0), Some(1.0)));
}

#[test]
fn bad_requests_are_400s_naming_the_problem_and_unknown_items_404s() {
    let (running, _dir) = start();
    let addr = running.addr.as_str();
    post_events(addr, &[view("u1", "i1", T0), view("u1", "i2", T0 + 1)]);
    let raw = |body: &str| {
        let (status, answer) = support::request(addr, "POST", "/v1/recommend", "application/json", body);
        parse(status, &answer)
    };
    let cases: [(&str, &[&str]); 11] = [
        (r#"{"user_id":"u1","k":0}"#, &["k must be within 1..=1000, got 0"]),
        (r#"{"user_id":"u1","k":1001}"#, &["k must be within 1..=1000, got 1001"]),
        (r#"{"k":-5}"#, &["k must be within 1..=1000, got -5"]),
        (r#"{"user_id":"u1","k":"#, &["invalid request body", "EOF while parsing"]),
        ("{user_id: u1}", &["invalid request body", "key must be a string"]),
        (r#"{"user":"u1"}"#, &["unknown field `user`", "expected one of", "`user_id`"]),
        (r#"{"user_id":"u1","placement":"home"}"#, &[r#"unknown placement "home""#, "none are configured"]),
        (r#"{"filters":{"brand":["x"]}}"#, &["filters", "unknown field `brand`", "`category`"]),
        (r#"{"filters":{"category":[]}}"#, &["filters.category must name at least one category"]),
        (r#"{"user_id":""}"#, &["user_id must not be empty"]),
        (r#"{"exclude":"i1"}"#, &["exclude", "invalid type"]),
    ];
    for (body, needles) in cases {
        let (status, v) = raw(body);
        assert_eq!(status, 400, "{body} -> {v}");
        let message = v["error"].as_str().unwrap_or_else(|| panic!("{body}: no error message: {v}"));
        for needle in needles {
            assert!(message.contains(needle), "{body}: {message:?} does not say {needle:?}");
        }
    }
    let (status, v) = similar(addr, "nope", "");
    assert_eq!((status, v["error"].as_str()), (404, Some(r#"item "nope" is not known"#)));
    for (query, needle) in [
        ("?k=0", "k must be within 1..=1000, got 0"),
        ("?k=1001", "k must be within 1..=1000, got 1001"),
        ("?k=ten", "invalid digit"),
        ("?kk=3", "unknown field `kk`"),
    ] {
        let (status, v) = similar(addr, "nope", query);
        assert_eq!(status, 400, "{query} -> {v}");
        assert!(v["error"].as_str().unwrap().contains(needle), "{query}: {v}");
    }
    // The server is still fine.
    let v = recommend_ok(addr, &json!({ "user_id": "u1" }));
    assert!(!ids(&v).contains(&"i1".to_owned()), "{v}");
}

/// One catalog event line with an embedding (any JSON value).
fn upsert_embedded(item: &str, category: &str, embedding: Value, ts: i64) -> String {
    json!({ "event_id": event_id(), "type": "item_upsert", "item_id": item, "ts": ts, "category": category,
            "embedding": embedding })
    .to_string()
}

#[test]
fn catalog_embeddings_propose_the_nearest_items_and_a_wrong_dimension_is_dead_lettered() {
    let (running, dir) = start_with_config("[recommender.embedding]\ndimension = 3\n");
    let addr = running.addr.as_str();

    // Shoes point along x, bags along z; the new item is near shoe 2 but in a category of its own,
    // so only its embedding can relate it to anything.
    let mut lines = Vec::new();
    for i in 0..5 {
        let nudge = f64::from(i) * 0.1;
        lines.push(upsert_embedded(&format!("shoe{i}"), "shoes", json!([1.0, nudge, 0.0]), T0 + i64::from(i)));
        lines.push(upsert_embedded(&format!("bag{i}"), "bags", json!([0.0, nudge, 1.0]), T0 + i64::from(i)));
    }
    lines.push(upsert_embedded("newshoe", "misc", json!([1.0, 0.21, 0.0]), T0 + 10));
    // Wrong dimension, and not numbers: dead letters, but the items are catalogued.
    lines.push(upsert_embedded("oddshoe", "shoes", json!([1.0, 0.0]), T0 + 11));
    lines.push(upsert_embedded("textbag", "bags", json!("0,0,1"), T0 + 12));
    post_events(addr, &lines);

    let (v, took) = poll("newshoe's nearest items", Duration::from_secs(10), || {
        let (status, v) = similar(addr, "newshoe", "?k=3");
        if status == 200 && ids(&v).len() == 3 { Ok(v) } else { Err(format!("{status} {v}")) }
    });
    println!("embedding neighbours of a new item served after {took:?}");
    // By angle: shoe2 (0.2) is 0.6° away, shoe3 (0.3) 4.8°, shoe1 (0.1) 6.1°.
    assert_eq!(ids(&v), ["shoe2", "shoe3", "shoe1"], "{v}");
    for item in ids(&v) {
        assert_eq!(reasons(&v, &item), ["embedding"], "{v}");
    }
    // A user who viewed a bag gets bags first, proposed by their embeddings among others.
    post_events(addr, &[view("eu", "bag0", T0 + 20)]);
    let (v, _) = poll("eu's recommendations", Duration::from_secs(10), || {
        let v = recommend_ok(addr, &json!({ "user_id": "eu", "k": 4 }));
        if ids(&v).first().is_some_and(|i| i.starts_with("bag")) { Ok(v) } else { Err(v.to_string()) }
    });
    let first = ids(&v)[0].clone();
    assert!(reasons(&v, &first).contains(&"embedding".to_owned()), "{v}");

    // The wrong-dimension item is still catalogued: similar to the shoes through its category.
    let (v, _) = poll("oddshoe's similar items", Duration::from_secs(10), || {
        let (status, v) = similar(addr, "oddshoe", "");
        if status == 200 && !ids(&v).is_empty() { Ok(v) } else { Err(format!("{status} {v}")) }
    });
    for item in ids(&v) {
        assert!(item.starts_with("shoe"), "{v}");
        assert_eq!(reasons(&v, &item), ["content"], "{v}");
    }
    let v = recommend_ok(addr, &json!({ "context": ["textbag"] }));
    assert!(ids(&v).iter().any(|i| i.starts_with("bag")), "{v}");

    let dlq_path = dir.path().join(support::DLQ);
    let (dlq, _) = poll("the embeddings' dead letters", Duration::from_secs(5), || {
        let dlq = std::fs::read_to_string(&dlq_path).unwrap_or_default();
        // Complete lines only: the job may be halfway through writing the next.
        if dlq.matches('\n').count() >= 2 { Ok(dlq) } else { Err(dlq) }
    });
    let complete = &dlq[..=dlq.rfind('\n').unwrap()];
    let records: Vec<Value> = complete.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let reason = |item: &str| {
        let r = records.iter().find(|r| r["raw"].as_str().unwrap().contains(&format!("\"{item}\"")));
        r.unwrap_or_else(|| panic!("no dead letter for {item}: {dlq}"))["reason"].as_str().unwrap().to_owned()
    };
    assert_eq!(
        reason("oddshoe"),
        "flow catalog: item oddshoe: embedding has dimension 2, expected 3; the item is catalogued without it"
    );
    assert_eq!(
        reason("textbag"),
        "flow catalog: item textbag: embedding is not an array of numbers; the item is catalogued without it"
    );
    assert_eq!(records.len(), 2, "{dlq}");
    let (_, metrics) = support::request(addr, "GET", "/metrics", "text/plain", "");
    assert!(metrics.contains("freshet_dlq_events_total{reason=\"embedding\"} 2"), "{metrics}");
}

/// The recommender's state is in the checkpoints: killed after a checkpoint
/// that holds every event, a restart restores the item lists and the users'
/// profiles (the ingest log has nothing after it to replay) and serves them
/// at once (the restart's item interval is an hour), and each barrier's stop
/// of a shard is measured.
#[test]
fn a_restart_restores_the_recommenders_lists_and_profiles_from_a_checkpoint() {
    let (running, dir) = start_with_config("");
    let addr = running.addr.clone();
    covisitation_world(&addr);
    post_events(&addr, &[view("newbie", A, LATER)]);
    let (answer, _) = poll("newbie's view of A to be reflected", Duration::from_secs(5), || {
        let v = recommend_ok(&addr, &json!({ "user_id": "newbie" }));
        if v["cold_start"] == false { Ok(v) } else { Err(v.to_string()) }
    });
    let (status, similar_before) = similar(&addr, A, "");
    assert_eq!(status, 200, "{similar_before}");
    // Two more checkpoints: the second began after every event was applied.
    let checkpoints = metric(&addr, "freshet_checkpoints_total").unwrap_or(0.0);
    poll("two more checkpoints", Duration::from_secs(20), || {
        let now = metric(&addr, "freshet_checkpoints_total").unwrap_or(0.0);
        if now >= checkpoints + 2.0 { Ok(()) } else { Err(format!("{now} checkpoints")) }
    });
    let synced = metric(&addr, "freshet_checkpoint_sync_duration_seconds_count{shard=\"0\"}");
    assert!(synced.is_some_and(|n| n >= 2.0), "barriers' stops are counted: {synced:?}");
    drop(running);

    let config = dir.path().join("config.toml");
    let hourly = std::fs::read_to_string(&config).unwrap().replacen(
        "[recommender]",
        "[recommender]\nitem_publish_interval = \"1h\"",
        1,
    );
    std::fs::write(&config, hourly).unwrap();
    let running = serve::start_with(dir.path(), &[OsStr::new("--config"), config.as_os_str()]);
    let addr = running.addr.clone();
    assert!(metric(&addr, "freshet_restore_duration_seconds").is_some(), "this start restored a checkpoint");
    let (again, _) = poll("newbie's list as before", Duration::from_secs(5), || {
        let v = recommend_ok(&addr, &json!({ "user_id": "newbie" }));
        if ids(&v) == ids(&answer) { Ok(v) } else { Err(format!("{v}\nbefore: {answer}")) }
    });
    assert_eq!(again["cold_start"], false, "newbie's profile is back: {again}");
    let (status, similar_again) = similar(&addr, A, "");
    assert_eq!(status, 200, "{similar_again}");
    assert_eq!(ids(&similar_again), ids(&similar_before));
    assert_eq!(ids(&similar_again).first().map(String::as_str), Some(B), "{similar_again}");
}
