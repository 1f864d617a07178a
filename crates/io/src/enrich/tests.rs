//! Tests of [`HttpEnricher`] against a real HTTP server: an axum app on
//! 127.0.0.1:0, started by each test, whose replies the test scripts and which
//! counts what it saw. Assertions are on those counts, not on timing; the
//! breaker's transitions with exact times are unit-tested in `breaker.rs`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use tokio::runtime::Handle;

use super::*;
use crate::error::IoError;

/// What the server answers: a status after a delay.
#[derive(Debug, Clone, Copy)]
struct Reply {
    status: u16,
    delay: Duration,
}

const OK: Reply = Reply { status: 200, delay: Duration::ZERO };

fn status(status: u16) -> Reply {
    Reply { status, delay: Duration::ZERO }
}

fn slow(delay: Duration) -> Reply {
    Reply { status: 200, delay }
}

/// The server's script and what it saw.
struct Server {
    /// Requests received.
    requests: AtomicUsize,
    in_flight: AtomicUsize,
    /// Most requests being handled at once.
    max_in_flight: AtomicUsize,
    /// Replies to the next requests, in order.
    script: Mutex<VecDeque<Reply>>,
    /// The reply once the script is used up.
    fallback: Mutex<Reply>,
}

impl Server {
    fn requests(&self) -> usize {
        self.requests.load(SeqCst)
    }

    fn set_fallback(&self, reply: Reply) {
        *self.fallback.lock().unwrap() = reply;
    }
}

/// Counts a request out of flight when its handler ends or is dropped.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

/// Answers any request with the next scripted reply (a path `/status/N`
/// always answers N) and a body `METHOD PATH X-TAG BODY`.
async fn handle(
    State(server): State<Arc<Server>>,
    method: axum::http::Method,
    headers: HeaderMap,
    uri: Uri,
    body: axum::body::Bytes,
) -> (StatusCode, String) {
    server.requests.fetch_add(1, SeqCst);
    let now = server.in_flight.fetch_add(1, SeqCst) + 1;
    server.max_in_flight.fetch_max(now, SeqCst);
    let _guard = InFlight(&server.in_flight);
    let scripted = server.script.lock().unwrap().pop_front();
    let mut reply = scripted.unwrap_or_else(|| *server.fallback.lock().unwrap());
    if let Some(code) = uri.path().strip_prefix("/status/") {
        reply = status(code.parse().unwrap());
    }
    tokio::time::sleep(reply.delay).await;
    let tag = headers.get("x-tag").map_or("-", |v| v.to_str().unwrap());
    let text = format!("{method} {} {tag} {}", uri.path(), String::from_utf8_lossy(&body));
    (StatusCode::from_u16(reply.status).unwrap(), text)
}

/// Starts a server on the current runtime that answers `script`, then `fallback`.
/// Returns its base URL.
async fn serve(script: &[Reply], fallback: Reply) -> (String, Arc<Server>) {
    let server = Arc::new(Server {
        requests: AtomicUsize::new(0),
        in_flight: AtomicUsize::new(0),
        max_in_flight: AtomicUsize::new(0),
        script: Mutex::new(script.iter().copied().collect()),
        fallback: Mutex::new(fallback),
    });
    let app = Router::new().fallback(handle).with_state(Arc::clone(&server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, server)
}

/// A stage with fast retries (3, 1–5 ms), a 2 s timeout, no breaker, no cache.
fn config() -> HttpEnrichConfig {
    HttpEnrichConfig {
        stage: "test".into(),
        method: Method::Get,
        headers: Vec::new(),
        timeout: Duration::from_secs(2),
        max_in_flight: 8,
        retry: RetryConfig {
            max_retries: 3,
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
            jitter: true,
        },
        breaker: None,
        cache: None,
    }
}

fn enricher(config: HttpEnrichConfig) -> HttpEnricher {
    HttpEnricher::new(config, Handle::current()).unwrap()
}

fn get(url: String) -> EnrichRequest {
    EnrichRequest { url, body: None }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returns_the_2xx_body_and_sends_method_headers_and_body() {
    let (base, server) = serve(&[], OK).await;
    let e =
        enricher(HttpEnrichConfig { method: Method::Post, headers: vec![("X-Tag".into(), "abc".into())], ..config() });
    let req = EnrichRequest { url: format!("{base}/lookup"), body: Some(b"user=7".to_vec()) };
    let body = e.call(&req).await.unwrap();
    assert_eq!(&body[..], b"POST /lookup abc user=7");
    assert_eq!(server.requests(), 1);
    let s = e.stats();
    assert_eq!((s.calls, s.successes, s.failures, s.retries), (1, 1, 0, 0));
    assert_eq!(e.breaker_state(), BreakerState::Closed, "no breaker configured");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_until_the_service_recovers() {
    let (base, server) = serve(&[status(500), status(503)], OK).await;
    let e = enricher(config());
    let body = e.call(&get(format!("{base}/x"))).await.unwrap();
    assert_eq!(&body[..], b"GET /x - ");
    assert_eq!(server.requests(), 3);
    let s = e.stats();
    assert_eq!((s.calls, s.successes, s.failures, s.retries), (3, 1, 2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_requests_is_retried() {
    let (base, server) = serve(&[status(429)], OK).await;
    let e = enricher(config());
    assert!(e.call(&get(format!("{base}/x"))).await.is_ok());
    assert_eq!(server.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stop_after_max_retries_with_the_last_status_and_body() {
    let (base, server) = serve(&[], status(503)).await;
    let mut c = config();
    c.retry.max_retries = 2;
    let err = enricher(c).call(&get(format!("{base}/down"))).await.unwrap_err();
    assert_eq!((err.kind, err.attempts), (ErrorKind::Status(503), 3));
    assert_eq!(err.to_string(), "HTTP 503 after 3 attempts: GET /down -");
    assert_eq!(server.requests(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_is_not_retried() {
    let (base, server) = serve(&[], status(404)).await;
    let e = enricher(config());
    let err = e.call(&get(format!("{base}/nobody"))).await.unwrap_err();
    assert_eq!((err.kind, err.attempts), (ErrorKind::Status(404), 1));
    assert_eq!(server.requests(), 1, "the server saw exactly one attempt");
    assert_eq!(e.stats().retries, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_slower_than_the_timeout_times_out_on_every_attempt() {
    let (base, server) = serve(&[], slow(Duration::from_secs(5))).await;
    let mut c = config();
    c.timeout = Duration::from_millis(100);
    c.retry.max_retries = 2;
    let err = enricher(c).call(&get(format!("{base}/slow"))).await.unwrap_err();
    assert_eq!((err.kind, err.attempts), (ErrorKind::Timeout, 3));
    assert_eq!(err.to_string(), "timed out after 100ms (3 attempts)");
    assert_eq!(server.requests(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_retried_then_reported() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut c = config();
    c.retry.max_retries = 2;
    let err = enricher(c).call(&get(format!("http://{addr}/x"))).await.unwrap_err();
    assert_eq!((err.kind, err.attempts), (ErrorKind::Connect, 3));
    assert!(err.message.starts_with("connection failed (3 attempts): "), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_and_https_urls_fail_without_an_attempt() {
    let e = enricher(config());
    for url in ["not a url", "https://127.0.0.1:1/x"] {
        let err = e.call(&get(url.into())).await.unwrap_err();
        assert_eq!((err.kind, err.attempts), (ErrorKind::Other, 0), "{url}: {err}");
    }
    assert_eq!(e.stats().calls, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_opens_the_breaker_and_recovery_closes_it() {
    let (base, server) = serve(&[], status(503)).await;
    let open_for = Duration::from_millis(500);
    let mut c = config();
    c.retry.max_retries = 0;
    c.breaker = Some(BreakerConfig { window: 4, min_calls: 4, failure_rate: 0.5, open_for, half_open_probes: 2 });
    let e = enricher(c);
    let req = get(format!("{base}/x"));
    for _ in 0..4 {
        assert_eq!(e.call(&req).await.unwrap_err().kind, ErrorKind::Status(503));
    }
    assert_eq!(e.breaker_state(), BreakerState::Open);
    for _ in 0..20 {
        let err = e.call(&req).await.unwrap_err();
        assert_eq!((err.kind, err.attempts), (ErrorKind::BreakerOpen, 0));
        assert_eq!(err.to_string(), "circuit open");
    }
    assert_eq!(server.requests(), 4, "no call reached the server while open");
    assert_eq!(e.stats().breaker_rejections, 20);

    server.set_fallback(OK);
    tokio::time::sleep(open_for + Duration::from_millis(100)).await;
    assert!(e.call(&req).await.is_ok(), "first probe");
    assert_eq!(e.breaker_state(), BreakerState::HalfOpen);
    assert!(e.call(&req).await.is_ok(), "second probe");
    assert_eq!(e.breaker_state(), BreakerState::Closed);
    assert_eq!(server.requests(), 6);
}

/// The breaker's state gauge and transition counters, read from a
/// recorder installed for this test binary (the other tests' stages have
/// other names).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_state_and_transitions_are_exported_as_metrics() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
    static SNAPSHOTTER: std::sync::OnceLock<Snapshotter> = std::sync::OnceLock::new();
    let snapshotter = SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder.install().expect("no other recorder in this test binary");
        snapshotter
    });
    // Counters read as their change since the previous snapshot, so each
    // phase takes one snapshot and reads everything from it.
    type Entries = Vec<(metrics_util::CompositeKey, Option<metrics::Unit>, Option<metrics::SharedString>, DebugValue)>;
    let metric = |entries: &Entries, name: &str, to: Option<&str>| -> Option<f64> {
        entries.iter().find_map(|(key, _, _, value)| {
            let key = key.key();
            let labels: Vec<(&str, &str)> = key.labels().map(|l| (l.key(), l.value())).collect();
            let wanted = key.name() == name
                && labels.contains(&("stage", "metrics_probe"))
                && to.is_none_or(|to| labels.contains(&("to", to)));
            match value {
                DebugValue::Gauge(g) if wanted => Some(g.into_inner()),
                DebugValue::Counter(c) if wanted => Some(*c as f64),
                _ => None,
            }
        })
    };
    let (base, server) = serve(&[], status(503)).await;
    let open_for = Duration::from_millis(300);
    let mut c = config();
    c.stage = "metrics_probe".into();
    c.retry.max_retries = 0;
    c.breaker = Some(BreakerConfig { window: 2, min_calls: 2, failure_rate: 0.5, open_for, half_open_probes: 1 });
    let e = enricher(c);
    let req = get(format!("{base}/x"));
    for _ in 0..3 {
        let _ = e.call(&req).await;
    }
    let opened: Entries = snapshotter.snapshot().into_vec();
    assert_eq!(metric(&opened, crate::metrics::ENRICH_BREAKER_STATE, None), Some(1.0), "open");
    assert_eq!(metric(&opened, crate::metrics::ENRICH_BREAKER_TRANSITIONS, Some("open")), Some(1.0));
    server.set_fallback(OK);
    tokio::time::sleep(open_for + Duration::from_millis(100)).await;
    assert!(e.call(&req).await.is_ok(), "the probe");
    let closed: Entries = snapshotter.snapshot().into_vec();
    assert_eq!(metric(&closed, crate::metrics::ENRICH_BREAKER_STATE, None), Some(0.0), "closed again");
    assert_eq!(metric(&closed, crate::metrics::ENRICH_BREAKER_TRANSITIONS, Some("half_open")), Some(1.0));
    assert_eq!(metric(&closed, crate::metrics::ENRICH_BREAKER_TRANSITIONS, Some("closed")), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opening_between_retries_stops_retrying() {
    let (base, server) = serve(&[], status(500)).await;
    let mut c = config();
    c.retry.max_retries = 5;
    c.breaker = Some(BreakerConfig {
        window: 2,
        min_calls: 2,
        failure_rate: 1.0,
        open_for: Duration::from_secs(60),
        half_open_probes: 1,
    });
    let err = enricher(c).call(&get(format!("{base}/x"))).await.unwrap_err();
    assert_eq!((err.kind, err.attempts), (ErrorKind::BreakerOpen, 2));
    assert_eq!(err.to_string(), "HTTP 500 after 2 attempts: GET /x -; circuit open");
    assert_eq!(server.requests(), 2);
}

/// A stage with a cache and no retries.
fn cached(ttl: Duration, max_entries: u64) -> HttpEnrichConfig {
    let mut c = config();
    c.retry.max_retries = 0;
    c.cache = Some(CacheConfig { ttl, max_entries });
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_answers_repeats_within_the_ttl_and_calls_again_after_it() {
    let (base, server) = serve(&[], OK).await;
    let ttl = Duration::from_millis(300);
    let e = enricher(cached(ttl, 100));
    let req = get(format!("{base}/a"));
    let first = e.call(&req).await.unwrap();
    assert_eq!(e.call(&req).await.unwrap(), first);
    assert_eq!(server.requests(), 1, "the repeat was served from the cache");
    let with_body = EnrichRequest { body: Some(b"b".to_vec()), ..req.clone() };
    e.call(&with_body).await.unwrap();
    assert_eq!(server.requests(), 2, "a different body is a different key");

    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    e.call(&req).await.unwrap();
    assert_eq!(server.requests(), 3, "expired after the ttl");
    let s = e.stats();
    assert_eq!((s.cache_hits, s.cache_misses), (1, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_keeps_no_errors() {
    let (base, server) = serve(&[], status(404)).await;
    let e = enricher(cached(Duration::from_secs(60), 100));
    let req = get(format!("{base}/missing"));
    assert!(e.call(&req).await.is_err());
    assert!(e.call(&req).await.is_err());
    assert_eq!(server.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_concurrent_misses_share_one_call() {
    let (base, server) = serve(&[], slow(Duration::from_millis(200))).await;
    let e = enricher(cached(Duration::from_secs(60), 100));
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (e, req) = (e.clone(), get(format!("{base}/same")));
            tokio::spawn(async move { e.call(&req).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(&task.await.unwrap().unwrap()[..], b"GET /same - ");
    }
    assert_eq!(server.requests(), 1);
    let s = e.stats();
    assert_eq!((s.cache_hits, s.cache_misses), (9, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_holds_at_most_max_entries() {
    let (base, server) = serve(&[], OK).await;
    let e = enricher(cached(Duration::from_secs(60), 3));
    let urls: Vec<_> = (0..10).map(|i| format!("{base}/{i}")).collect();
    for url in &urls {
        e.call(&get(url.clone())).await.unwrap();
    }
    assert!(e.cache_len().await <= 3);
    for url in &urls {
        e.call(&get(url.clone())).await.unwrap();
    }
    assert!(server.requests() >= 17, "at most 3 of 10 repeats were cached: {}", server.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_lists_every_problem() {
    let mut c = config();
    c.timeout = Duration::ZERO;
    c.max_in_flight = 0;
    c.headers = vec![("bad name".into(), "v".into())];
    c.breaker = Some(BreakerConfig { min_calls: 30, ..BreakerConfig::default() });
    let Err(IoError::Config { problems, .. }) = HttpEnricher::new(c, Handle::current()) else {
        panic!("expected a config error");
    };
    for key in ["timeout:", "max_in_flight:", "headers[0]:", "breaker.min_calls:"] {
        assert!(problems.contains(key), "{key} missing from {problems}");
    }
}

/// From plain threads, as the engine calls: two threads share one stage
/// bounded to 3 in flight; each gets its outcomes in request order.
#[test]
fn call_all_from_plain_threads_respects_max_in_flight_and_request_order() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (base, server) = rt.block_on(serve(&[], slow(Duration::from_millis(30))));
    let e = HttpEnricher::new(HttpEnrichConfig { max_in_flight: 3, ..config() }, rt.handle().clone()).unwrap();
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let (e, base) = (e.clone(), base.clone());
            std::thread::spawn(move || {
                let mut requests: Vec<_> = (0..12).map(|i| get(format!("{base}/{t}/{i}"))).collect();
                requests.push(get(format!("{base}/status/404")));
                requests.push(get("nonsense".into()));
                let outcomes = e.call_all(requests);
                assert_eq!(outcomes.len(), 14);
                for (i, outcome) in outcomes[..12].iter().enumerate() {
                    assert_eq!(outcome.as_ref().unwrap(), format!("GET /{t}/{i} - ").as_bytes());
                }
                assert_eq!(outcomes[12].as_ref().unwrap_err().kind, ErrorKind::Status(404));
                assert_eq!(outcomes[13].as_ref().unwrap_err().kind, ErrorKind::Other);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(server.requests(), 26);
    let most = server.max_in_flight.load(SeqCst);
    assert!(most <= 3, "the server saw {most} requests at once");
    assert!(most >= 2, "the calls were not concurrent: {most}");
}
