//! What each subcommand does: run, config check, gen, bench.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::cli::{BenchArgs, GenArgs, RunArgs};
use crate::config::plan::{Plan, SourceKind, SourcePlan};
use crate::config::{self, ConfigError};
use crate::telemetry::{self, LogFormat};
use crate::topology::{Job, JobSummary};

fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Adds the demo generator to a plan.
fn add_demo(plan: &mut Plan, rate: f64) {
    let options = freshet_io::generator::GenOptions {
        events: u64::MAX,
        users: 1000,
        items: 500,
        start_ms: crate::topology::wall_ms(),
        ..Default::default()
    };
    plan.sources.push(SourcePlan { name: "demo".into(), kind: SourceKind::Generator { options, emit_per_s: rate } });
    plan.pipeline.sources.push("demo".into());
}

/// `freshet run`.
pub fn run(args: RunArgs, log_format: LogFormat) -> Result<()> {
    let embedded = args.config.is_none();
    let mut plan = match &args.config {
        Some(path) => config::plan_file(path, cores())?,
        None => config::plan_default(&args.process.data_dir_or_default(), cores())?,
    };
    if args.demo {
        add_demo(&mut plan, args.demo_rate);
    }
    let serve = args.serve || !plan.bounded();
    // Logs start after the plan is valid, so a config error is the only output.
    telemetry::init_logs(log_format, "info");
    let prometheus = telemetry::init_metrics()?;
    let plan = Arc::new(plan);
    let listener =
        if serve {
            Some(std::net::TcpListener::bind(args.process.listen).with_context(|| {
                format!("cannot listen on {} (is the port in use? set --listen)", args.process.listen)
            })?)
        } else {
            None
        };
    let data_dir = args.process.data_dir.as_deref();
    if let Some((i, _)) = crate::group::grouped_source(&plan) {
        let (Some(dir), Some(path)) = (data_dir, &args.config) else {
            anyhow::bail!(
                "source {} scales out with state: its tasks keep checkpoints in a data directory, \
                 pass --config and --data-dir (one per process)",
                plan.sources[i].name
            );
        };
        let path = path.clone();
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        // Each task runs one shard and one decoder: a process runs several tasks.
        let planner = move |edit: &dyn Fn(&mut config::model::Config)| {
            config::plan_text_with(&text, &path, 1, edit).map_err(anyhow::Error::from)
        };
        let (server, reads) = match listener {
            Some(l) => {
                let advertised = advertised(&l, args.process.advertise.as_deref())?;
                let reads = crate::group::reads::Reads::new(&plan, advertised.clone());
                let server = crate::http::Server::group(l, reads.clone(), prometheus)?;
                let recommendations = match plan.pipeline.recommender {
                    Some(_) => format!(", recommendations: POST http://{advertised}/v1/recommend"),
                    None => String::new(),
                };
                println!(
                    "Freshet runs its share of group tasks; features: http://{advertised}/v1/users/ID/features\
                     {recommendations}, metrics: http://{}/metrics",
                    server.addr()
                );
                (Some(server), Some(reads))
            }
            None => (None, None),
        };
        let result = crate::group::run(&plan, Arc::new(planner), dir, job_stopper(), reads);
        if let Some(s) = server {
            s.stop();
        }
        return result;
    }
    // A bounded job ends by itself (Ctrl-C ends the process as usual);
    // otherwise Ctrl-C stops the job, or a start waiting for its brokers.
    let stop = if plan.bounded() { Arc::new(std::sync::atomic::AtomicBool::new(false)) } else { job_stopper() };
    let mut job = Job::start_until(plan.clone(), data_dir, args.process.reset_state, stop.clone())?;
    let mut server = match listener {
        Some(l) => Some(crate::http::Server::start(l, &job, prometheus.clone())?),
        None => None,
    };
    if let Some(s) = &server {
        print_where_to_look(s.addr(), embedded, args.demo, &args.process.data_dir_or_default(), &plan);
    }
    let mut restarts = Restarts::new();
    loop {
        while !plan.bounded() && !stop.load(std::sync::atomic::Ordering::SeqCst) && !job.stopped() {
            std::thread::sleep(Duration::from_millis(100));
        }
        let stopped_by_user = stop.load(std::sync::atomic::Ordering::SeqCst);
        if !plan.bounded() && stopped_by_user {
            tracing::info!("Stopping: open windows are not emitted.");
            job.stop();
        }
        let addr = server.as_ref().map(crate::http::Server::addr);
        match job.wait() {
            Ok(summary) => {
                if let Some(s) = server {
                    s.stop();
                }
                report(&summary);
                return Ok(());
            }
            // The user's stop reached a sink before the job's own stop flag
            // did: a stop all the same (see `Shared::fail`).
            Err(e) if stopped_by_user && crate::topology::gave_up_on_stop(&e) => {
                tracing::info!(reason = %format!("{e:#}"), "Stopped before every result was written.");
                if let Some(s) = server {
                    s.stop();
                }
                return Ok(());
            }
            Err(e) if data_dir.is_some() && !stopped_by_user && external(&e) => {
                let delay = restarts.next_delay();
                tracing::error!(
                    error = %format!("{e:#}"),
                    restart = restarts.count,
                    "The job failed for an outside reason; restarting from the last checkpoint in {:.1} s.",
                    delay.as_secs_f64()
                );
                metrics::counter!(crate::metrics::JOB_RESTARTS).increment(1);
                if let Some(s) = server.take() {
                    s.stop();
                }
                sleep_unless(&stop, delay);
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    return Err(e);
                }
                job = Job::start_until(plan.clone(), data_dir, false, stop.clone())?;
                if let Some(addr) = addr {
                    let listener = std::net::TcpListener::bind(addr)
                        .with_context(|| format!("listening on {addr} again after the restart"))?;
                    server = Some(crate::http::Server::start(listener, &job, prometheus.clone())?);
                }
            }
            Err(e) => {
                if let Some(s) = server {
                    s.stop();
                }
                return Err(e);
            }
        }
    }
}

/// The address other processes of a group reach this one's API at:
/// `--advertise`, else the bound address (an unspecified IP as 127.0.0.1).
fn advertised(listener: &std::net::TcpListener, advertise: Option<&str>) -> Result<String> {
    if let Some(a) = advertise {
        return Ok(a.to_owned());
    }
    let mut addr = listener.local_addr().context("reading the listen address")?;
    if addr.ip().is_unspecified() {
        tracing::warn!(%addr, "Listening on every interface: other processes of the group are told 127.0.0.1; set --advertise when they run elsewhere.");
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    Ok(addr.to_string())
}

/// Whether a job's error came from outside the process (a broker, a disk, a
/// service), where starting again from the last checkpoint may succeed.
fn external(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<freshet_io::IoError>())
        .any(|io| io.domain() == freshet_io::Domain::External)
}

/// Restart delays: exponential from 1 s, capped at 30 s, with jitter (backon's schedule).
struct Restarts {
    count: u64,
    delays: backon::ExponentialBackoff,
}

impl Restarts {
    fn new() -> Self {
        use backon::BackoffBuilder;
        let delays = backon::ExponentialBuilder::new()
            .with_min_delay(Duration::from_secs(1))
            .with_max_delay(Duration::from_secs(30))
            .with_jitter()
            .without_max_times()
            .build();
        Self { count: 0, delays }
    }

    fn next_delay(&mut self) -> Duration {
        self.count += 1;
        self.delays.next().unwrap_or(Duration::from_secs(30))
    }
}

/// Sleeps `delay`, or less if `stop` turns true.
fn sleep_unless(stop: &std::sync::atomic::AtomicBool, delay: Duration) {
    let until = std::time::Instant::now() + delay;
    while std::time::Instant::now() < until && !stop.load(std::sync::atomic::Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A flag set on Ctrl-C or SIGTERM.
fn job_stopper() -> Arc<std::sync::atomic::AtomicBool> {
    let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f = flag.clone();
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        rt.block_on(async {
            #[cfg(unix)]
            {
                let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(t) => t,
                    Err(_) => return,
                };
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            #[cfg(not(unix))]
            let _ = tokio::signal::ctrl_c().await;
        });
        f.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    flag
}

fn print_where_to_look(
    addr: std::net::SocketAddr,
    embedded: bool,
    demo: bool,
    data_dir: &std::path::Path,
    plan: &Plan,
) {
    let mut o = std::io::stdout().lock();
    let what = if embedded { "the embedded default pipeline" } else { "your pipeline" };
    let _ = writeln!(o, "Freshet is running {what}{}.", if demo { " with a demo generator" } else { "" });
    if plan.has_http_source() {
        let _ = writeln!(o, "  send events:    curl -X POST http://{addr}/v1/events --data-binary @events.ndjson");
    }
    let _ = writeln!(o, "  user features:  curl http://{addr}/v1/users/u1/features");
    let _ = writeln!(o, "  item features:  curl http://{addr}/v1/items/i1/features");
    if plan.pipeline.recommender.is_some() {
        let _ = writeln!(
            o,
            "  recommend:      curl -X POST http://{addr}/v1/recommend -d '{{\"user_id\":\"u1\",\"k\":10}}'   (or: freshet recommend --user u1)"
        );
        let _ = writeln!(
            o,
            "  similar items:  curl http://{addr}/v1/items/i1/similar?k=10   (or: freshet similar --item i1)"
        );
    }
    let _ = writeln!(o, "  metrics:        curl http://{addr}/metrics");
    let _ = writeln!(o, "  health:         curl http://{addr}/healthz");
    if embedded {
        let _ = writeln!(o, "  dead letters:   {}", data_dir.join("dlq.ndjson").display());
    }
    if demo {
        let _ =
            writeln!(o, "  demo users are u0..u999 and items i0..i499; try: curl http://{addr}/v1/users/u1/features");
    }
    let _ = writeln!(o, "Press Ctrl-C to stop.");
    let _ = o.flush();
}

fn report(s: &JobSummary) {
    let rate = s.lines as f64 / s.elapsed.as_secs_f64().max(1e-9);
    tracing::info!(
        lines = s.lines,
        accepted = s.accepted,
        rejected = s.rejected,
        seconds = format!("{:.3}", s.elapsed.as_secs_f64()),
        events_per_s = rate as u64,
        "Job finished."
    );
}

/// `freshet config check`.
pub fn check(files: &[PathBuf]) -> Result<()> {
    let mut problems: Vec<ConfigError> = Vec::new();
    for f in files {
        match config::plan_file(f, cores()) {
            Ok(plan) => println!(
                "{}: ok ({} sources, {} flows, {} features, {} sinks)",
                f.display(),
                plan.sources.len(),
                plan.pipeline.flows.len(),
                plan.pipeline.features.len(),
                plan.sinks.len()
            ),
            Err(e) => problems.push(e),
        }
    }
    match problems.len() {
        0 => Ok(()),
        1 => Err(problems.remove(0).into()),
        _ => {
            let mut all = problems.remove(0);
            for p in problems {
                eprint!("{all}");
                all = p;
            }
            Err(all.into())
        }
    }
}

/// `freshet gen`.
pub fn gen_events(a: GenArgs) -> Result<()> {
    let opts = freshet_io::generator::GenOptions {
        events: a.events,
        users: a.users,
        items: a.items,
        seed: a.seed,
        malformed_rate: a.malformed_rate,
        duplicate_rate: a.duplicate_rate,
        disorder_ms: a.disorder_ms,
        rate_per_s: a.rate_per_s,
        start_ms: a.start_ms,
    };
    opts.validate().map_err(|e| ConfigError::one("freshet gen", "", e))?;
    if a.out.as_os_str() == "-" {
        let mut out = std::io::stdout().lock();
        match freshet_io::generator::write_events(&opts, &mut out) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            r => r.map(|_| ()).context("writing events to stdout"),
        }
    } else {
        let mut f = std::fs::File::create(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
        freshet_io::generator::write_events(&opts, &mut f).with_context(|| format!("writing {}", a.out.display()))?;
        Ok(())
    }
}

/// Peak resident set size of this process, from /proc (Linux).
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// `freshet bench`.
pub fn bench(args: BenchArgs, log_format: LogFormat) -> Result<()> {
    let plan = Arc::new(config::plan_file(&args.config, cores())?);
    if !plan.bounded() {
        anyhow::bail!("{}: bench needs a bounded pipeline (file or finite generator sources)", args.config.display());
    }
    telemetry::init_logs(log_format, "warn");
    let _ = telemetry::init_metrics()?;
    let mut runs = Vec::new();
    for i in 0..args.runs.max(1) {
        let plan = Arc::new(config::plan_file(&args.config, cores())?);
        let t = Instant::now();
        let summary = Job::start(plan, None, false)?.wait()?;
        let secs = t.elapsed().as_secs_f64();
        let mut lat = summary.latencies_us.clone();
        lat.sort_unstable();
        let run = serde_json::json!({
            "run": i + 1,
            "lines": summary.lines,
            "accepted": summary.accepted,
            "rejected": summary.rejected,
            "seconds": (secs * 1000.0).round() / 1000.0,
            "events_per_s": (summary.lines as f64 / secs).round(),
            "latency_p50_ms": percentile(&lat, 0.5) as f64 / 1000.0,
            "latency_p99_ms": percentile(&lat, 0.99) as f64 / 1000.0,
            "sink_rows": summary.sink_rows.iter().map(|(n, r)| (n.clone(), serde_json::json!(r))).collect::<serde_json::Map<_, _>>(),
        });
        eprintln!("{run}");
        runs.push(run);
    }
    let best = runs
        .iter()
        .max_by(|a, b| {
            a["events_per_s"].as_f64().partial_cmp(&b["events_per_s"].as_f64()).unwrap_or(std::cmp::Ordering::Equal)
        })
        .cloned()
        .unwrap_or_default();
    let report = serde_json::json!({
        "config": args.config.display().to_string(),
        "threads": { "decoders": plan.decoders, "shards": plan.pipeline.shards },
        "cores": cores(),
        "best": best,
        "peak_rss_mb": peak_rss_bytes().map(|b| (b as f64 / 1048576.0 * 10.0).round() / 10.0),
        "runs": runs,
    });
    println!("{report}");
    Ok(())
}
