//! The `freshet eval` command: load the log, fix the evaluated events, build
//! the models, replay each one, then report: a progress bar and a summary
//! table on stderr, an optional recommendations file, and as the last stdout
//! line one JSON object.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use serde::Serialize;

use super::baselines::{ItemKnn, Pop};
use super::dataset::{self, CsvColumns, Format, LoadOptions, Stream};
use super::models::{NamedFactory, freshet_models};
use super::protocol::{EvalFrac, Protocol};
use super::replay::{ModelFactory, Outcome, replay};
use crate::cli::{EvalArgs, EvalModel};

/// The JSON report (the last stdout line).
#[derive(Serialize)]
struct Report {
    model: &'static str,
    format: &'static str,
    data: Vec<String>,
    min_rating: Option<f64>,
    time_unit: &'static str,
    events: usize,
    users: usize,
    items: usize,
    eval_frac: f64,
    eval_start: usize,
    eligible: usize,
    evaluated: usize,
    eval_positions_sha256: String,
    k: usize,
    stride: usize,
    #[serde(flatten)]
    scores: Scores,
    invalid_recommendations: u64,
    load_seconds: f64,
    replay_seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    ablation: Option<BTreeMap<String, Scores>>,
}

/// One model's numbers.
#[derive(Serialize, Clone)]
struct Scores {
    hit_at_k: f64,
    ndcg_at_k: f64,
    mrr_at_k: f64,
    coverage: f64,
    events_per_s: f64,
}

impl From<&Outcome> for Scores {
    fn from(o: &Outcome) -> Self {
        Self {
            hit_at_k: o.hit,
            ndcg_at_k: o.ndcg,
            mrr_at_k: o.mrr,
            coverage: o.coverage,
            events_per_s: o.events_per_s.round(),
        }
    }
}

/// `freshet eval`.
pub fn run(args: EvalArgs) -> Result<()> {
    let (format, paths) = parse_dataset(&args.dataset)?;
    if args.model != EvalModel::Freshet && (args.config.is_some() || args.ablation) {
        bail!("--config and --ablation apply to --model freshet only");
    }
    let frac = EvalFrac::parse(&args.eval_frac)?;
    let (k, stride) = (usize::try_from(args.k)?, usize::try_from(args.stride)?);
    let options = LoadOptions {
        format,
        columns: CsvColumns {
            sep: args.sep.clone(),
            user: args.user_col.clone(),
            item: args.item_col.clone(),
            time: args.time_col.clone(),
            rating: args.rating_col.clone(),
        },
        min_rating: args.min_rating,
    };

    let loading = Instant::now();
    let stream = dataset::load(&paths, &options)?;
    if stream.is_empty() {
        bail!("--dataset {}: no events", args.dataset);
    }
    let protocol = Protocol::new(&stream, frac, stride);
    let load_seconds = loading.elapsed().as_secs_f64();
    let (ms_per_unit, time_unit) = stream.ms_per_unit(args.time_unit);
    eprintln!(
        "freshet eval: {} {}: {} events (timestamps in {time_unit}), {} users, {} items; segment from position {}: {} eligible, {} evaluated (stride {stride}), k = {k}",
        format.name(),
        paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
        stream.len(),
        stream.n_users(),
        stream.n_items(),
        protocol.start,
        protocol.eligible,
        protocol.evaluated.len(),
    );

    let threads = match args.threads {
        Some(n) => usize::try_from(n)?,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let (name, main, ablations) = build_models(&args, &stream, ms_per_unit)?;
    let outcome = replay_with_progress(name, &stream, &protocol, k, &*main, threads, args.write_recs.is_some());
    let mut ablation = BTreeMap::new();
    let mut rows = vec![(name.to_owned(), outcome.clone())];
    for (variant, model) in ablations {
        let o = replay_with_progress(&variant, &stream, &protocol, k, &*model, threads, false);
        ablation.insert(variant.clone(), Scores::from(&o));
        rows.push((format!("ablation {variant}"), o));
    }
    print_table(&rows, k);
    if let Some(path) = &args.write_recs {
        write_recs(path, &stream, &outcome.lists).with_context(|| format!("writing {}", path.display()))?;
    }

    let report = Report {
        model: name,
        format: format.name(),
        data: paths.iter().map(|p| p.display().to_string()).collect(),
        min_rating: args.min_rating,
        time_unit,
        events: stream.len(),
        users: stream.n_users(),
        items: stream.n_items(),
        eval_frac: frac.value,
        eval_start: protocol.start,
        eligible: protocol.eligible,
        evaluated: protocol.evaluated.len(),
        eval_positions_sha256: protocol.positions_sha256(),
        k,
        stride,
        scores: Scores::from(&outcome),
        invalid_recommendations: outcome.invalid_recommendations,
        load_seconds: round3(load_seconds),
        replay_seconds: round3(outcome.seconds),
        ablation: args.ablation.then_some(ablation),
    };
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", serde_json::to_string(&report)?).context("writing the report to stdout")?;
    Ok(())
}

/// `FORMAT:PATH[,PATH...]`.
fn parse_dataset(text: &str) -> Result<(Format, Vec<PathBuf>)> {
    let Some((format, paths)) = text.split_once(':') else {
        bail!("--dataset {text:?}: expected FORMAT:PATH[,PATH...] with FORMAT one of {}", Format::NAMES);
    };
    let format = Format::parse(format).with_context(|| format!("--dataset {text:?}"))?;
    let paths: Vec<PathBuf> = paths.split(',').map(PathBuf::from).collect();
    if paths.iter().any(|p| p.as_os_str().is_empty()) {
        bail!("--dataset {text:?}: empty file name");
    }
    Ok((format, paths))
}

type Models<'s> = (&'static str, Box<ModelFactory<'s>>, Vec<NamedFactory<'s>>);

fn build_models<'s>(args: &EvalArgs, stream: &'s Stream, ms_per_unit: f64) -> Result<Models<'s>> {
    Ok(match args.model {
        EvalModel::Freshet => {
            let (main, ablations) = freshet_models(args.config.as_deref(), args.ablation, stream, ms_per_unit)
                .context("building the Freshet recommender")?;
            ("freshet", main, ablations)
        }
        EvalModel::Pop => ("pop", Box::new(|| Box::new(Pop::new())), Vec::new()),
        EvalModel::ItemKnn => ("itemknn", Box::new(|| Box::new(ItemKnn::new(stream.n_items()))), Vec::new()),
    })
}

fn replay_with_progress(
    name: &str,
    stream: &Stream,
    protocol: &Protocol,
    k: usize,
    make: &ModelFactory<'_>,
    threads: usize,
    keep_lists: bool,
) -> Outcome {
    // Drawn only when stderr is a terminal.
    let bar = ProgressBar::with_draw_target(Some(stream.len() as u64), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{prefix:>12} {wide_bar} {human_pos}/{human_len} positions, {rate} [{elapsed_precise}, eta {eta}]",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .with_key("rate", |state: &ProgressState, out: &mut dyn std::fmt::Write| {
        let _ = write!(out, "{:.0} events/s", state.per_sec());
    });
    bar.set_style(style);
    bar.set_prefix(name.to_owned());
    let outcome = replay(stream, protocol, k, make, threads, keep_lists, &bar);
    bar.finish_and_clear();
    outcome
}

fn print_table(rows: &[(String, Outcome)], k: usize) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "| model | evaluated | hit@{k} | NDCG@{k} | MRR@{k} | coverage | events/s | seconds | invalid |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for (name, o) in rows {
        let _ = writeln!(
            err,
            "| {name} | {} | {:.4} | {:.4} | {:.4} | {:.4} | {:.0} | {:.1} | {} |",
            o.evaluated, o.hit, o.ndcg, o.mrr, o.coverage, o.events_per_s, o.seconds, o.invalid_recommendations
        );
    }
}

/// `position,items` with items as dataset ids separated by spaces.
fn write_recs(path: &Path, stream: &Stream, lists: &[(usize, Vec<u32>)]) -> Result<()> {
    let mut out = csv::Writer::from_path(path)?;
    out.write_record(["position", "items"])?;
    let mut items = String::new();
    for (position, list) in lists {
        items.clear();
        for (n, &c) in list.iter().enumerate() {
            if n > 0 {
                items.push(' ');
            }
            items.push_str(&stream.item_names[c as usize]);
        }
        out.write_record([position.to_string().as_str(), items.as_str()])?;
    }
    out.flush()?;
    Ok(())
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
