//! `freshet eval` against the peer evaluator (`shared/peers/quality/`) on
//! both shared datasets and on MovieLens 100k (fetched from PyPI): the
//! evaluated-event set (count, segment start, SHA-256) equals the peer's
//! published one; the `pop` and `itemknn` baselines reproduce the peer's
//! published metrics; other strides, fractions and `--min-rating` pick the
//! same events as the peer script run with `--models none`; and the peer's
//! `--score-recs` scores a `--write-recs` file the same as `freshet eval`
//! does.
//!
//! Running the peer script needs Python with numpy: `$FRESHET_PYTHON`
//! (scripts/test.sh makes a venv and sets it), else `python3` if it can
//! import numpy. Without either these tests fail; they never skip.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

use crate::support::{self, Finished};

/// How long one `freshet eval` may take (item-kNN on MovieLens replays
/// 100k events with 20k top-10 queries over 9.7k items).
const EVAL_DEADLINE: Duration = Duration::from_secs(300);

/// The metrics must match the peer's 4-decimal rounding to within this.
const METRIC_TOLERANCE: f64 = 0.00006;

/// A shared dataset and the peer's published numbers for it.
struct Dataset {
    /// Name of the peer's results file (and of the dataset folder).
    name: &'static str,
    format: &'static str,
    files: &'static [&'static str],
    events: u64,
    users: u64,
    items: u64,
    eval_start: u64,
    evaluated: u64,
    sha256: &'static str,
}

/// The table "Protocol" of shared/peers/quality/README.md.
const MOVIELENS: Dataset = Dataset {
    name: "movielens-latest-small",
    format: "ml-csv",
    files: &["ratings.csv"],
    events: 100_836,
    users: 610,
    items: 9_724,
    eval_start: 80_668,
    evaluated: 20_080,
    sha256: "714af8fc9a9ed4cc5609b1924ecb1f2e173ddbc9628cddc8ad7b190121cfb8bb",
};

const YOOCHOOSE: Dataset = Dataset {
    name: "yoochoose-rsc15-100k",
    format: "sessionrec",
    files: &["yoochoose-clicks-100k_train_full.txt", "yoochoose-clicks-100k_test.txt"],
    events: 83_846,
    users: 21_210,
    items: 2_933,
    eval_start: 67_076,
    evaluated: 8_359,
    sha256: "01645b43f81bec51d04d73cec099688b463a58642044a9ed83719b4ff37f245a",
};

impl Dataset {
    fn paths(&self) -> Vec<PathBuf> {
        self.files.iter().map(|f| support::shared_file(&format!("datasets/{}/{f}", self.name))).collect()
    }

    /// `--dataset FORMAT:PATH,PATH`.
    fn spec(&self) -> String {
        let paths: Vec<String> = self.paths().iter().map(|p| p.display().to_string()).collect();
        format!("{}:{}", self.format, paths.join(","))
    }

    /// The peer's `--data ... --format ...` arguments.
    fn peer_args(&self) -> Vec<String> {
        let mut args = vec!["--data".to_owned()];
        args.extend(self.paths().iter().map(|p| p.display().to_string()));
        args.extend(["--format".to_owned(), self.format.to_owned()]);
        args
    }

    /// `results` of the peer's published run.
    fn peer_results(&self) -> Value {
        let path = support::shared_file(&format!("peers/quality/results/{}.json", self.name));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let json: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
        json["results"].clone()
    }
}

/// Runs `freshet eval --dataset <dataset> <args>`, checks it succeeded, and
/// returns the JSON object on its last stdout line.
fn freshet_eval(dataset: &Dataset, args: &[&str]) -> Value {
    eval_spec(&dataset.spec(), args)
}

/// Runs `freshet eval --dataset <spec> <args>` (see [`freshet_eval`]).
fn eval_spec(spec: &str, args: &[&str]) -> Value {
    let mut cmd = support::freshet();
    cmd.arg("eval").arg("--dataset").arg(spec).args(args);
    let run = support::run_with_deadline(&mut cmd, EVAL_DEADLINE);
    run.assert_success();
    last_json_line(&run)
}

fn last_json_line(run: &Finished) -> Value {
    let stdout = run.stdout_text();
    let line = stdout.lines().last().unwrap_or_else(|| panic!("no stdout; {}", run.describe()));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("last stdout line is not JSON ({e}): {line}"))
}

fn number(json: &Value, key: &str) -> f64 {
    json[key].as_f64().unwrap_or_else(|| panic!("no number {key:?} in {json}"))
}

fn integer(json: &Value, key: &str) -> u64 {
    json[key].as_u64().unwrap_or_else(|| panic!("no integer {key:?} in {json}"))
}

/// Fails unless `actual`'s hit/NDCG/MRR at k are within the tolerance of
/// `expected`'s.
fn assert_metrics_close(what: &str, actual: &Value, expected: &Value) {
    for key in ["hit_at_k", "ndcg_at_k", "mrr_at_k"] {
        let (a, e) = (number(actual, key), number(expected, key));
        assert!((a - e).abs() <= METRIC_TOLERANCE, "{what}: {key} = {a}, the peer has {e}");
    }
}

/// Fails unless the report has the dataset's published counts and hash.
fn assert_published_event_set(dataset: &Dataset, report: &Value) {
    let what = dataset.name;
    assert_eq!(integer(report, "events"), dataset.events, "{what}: events");
    assert_eq!(integer(report, "users"), dataset.users, "{what}: users");
    assert_eq!(integer(report, "items"), dataset.items, "{what}: items");
    assert_eq!(integer(report, "eval_start"), dataset.eval_start, "{what}: eval_start");
    assert_eq!(integer(report, "evaluated"), dataset.evaluated, "{what}: evaluated");
    assert_eq!(report["eval_positions_sha256"], dataset.sha256, "{what}: eval_positions_sha256");
}

/// Both baselines on the dataset: the published event set, the published
/// metrics, and no list the replay had to clean.
fn baselines_match_the_peer(dataset: &Dataset) {
    let published = dataset.peer_results();
    for model in ["itemknn", "pop"] {
        let report = freshet_eval(dataset, &["--model", model]);
        assert_eq!(report["model"], model);
        assert_published_event_set(dataset, &report);
        assert_metrics_close(&format!("{} {model}", dataset.name), &report, &published[model]);
        assert_eq!(integer(&report, "invalid_recommendations"), 0, "{} {model}", dataset.name);
        let coverage = number(&report, "coverage");
        assert!(coverage > 0.0 && coverage <= 1.0, "{} {model}: coverage {coverage}", dataset.name);
        assert!(number(&report, "events_per_s") > 0.0);
    }
}

#[test]
fn movielens_baselines_and_event_set_match_the_peer() {
    baselines_match_the_peer(&MOVIELENS);
}

#[test]
fn yoochoose_baselines_and_event_set_match_the_peer() {
    baselines_match_the_peer(&YOOCHOOSE);
}

/// Python with numpy for the peer script: `$FRESHET_PYTHON`, else `python3`
/// if it imports numpy; fails the test otherwise.
fn numpy_python() -> PathBuf {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = PYTHON.get_or_init(|| {
        let candidate = std::env::var_os("FRESHET_PYTHON").map_or_else(|| PathBuf::from("python3"), PathBuf::from);
        let imports_numpy = Command::new(&candidate)
            .args(["-c", "import numpy"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if imports_numpy {
            Ok(candidate)
        } else {
            Err(format!(
                "the peer evaluator needs Python with numpy, and {} cannot import numpy: run scripts/test.sh \
                 (it makes target/pyenv and sets FRESHET_PYTHON) or set FRESHET_PYTHON to a python with numpy",
                candidate.display()
            ))
        }
    });
    found.clone().unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `prequential_eval.py <args>` and returns the JSON on its last stdout line.
fn peer(args: &[String]) -> Value {
    last_json_line(&run_peer(args))
}

/// Runs `prequential_eval.py <args>` and checks it succeeded.
fn run_peer<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Finished {
    let script = support::shared_file("peers/quality/prequential_eval.py");
    let mut cmd = Command::new(numpy_python());
    cmd.arg(script).args(args);
    let run = support::run_with_deadline(&mut cmd, support::PYTHON_DEADLINE);
    run.assert_success();
    run
}

/// `--stride`, `--eval-frac` and `--min-rating` choose the same events as the
/// peer (compared with its `--models none` output).
fn event_set_matches_the_peer(dataset: &Dataset, options: &[&str]) {
    let mut args = dataset.peer_args();
    args.extend(["--models", "none"].map(String::from));
    args.extend(options.iter().map(|s| s.to_string()));
    let info = peer(&args)["info"].clone();
    let mut ours = vec!["--model", "pop"];
    ours.extend(options);
    let report = freshet_eval(dataset, &ours);
    assert_peers_event_set(&format!("{} {options:?}", dataset.name), &report, &info);
}

/// Fails unless our report counts and hashes the same events as the peer's `info`.
fn assert_peers_event_set(what: &str, report: &Value, info: &Value) {
    for (our_key, peer_key) in [
        ("events", "events"),
        ("users", "users"),
        ("items", "items"),
        ("eval_start", "eval_start_position"),
        ("eligible", "eligible_events"),
        ("evaluated", "evaluated_events"),
    ] {
        assert_eq!(integer(report, our_key), integer(info, peer_key), "{what}: {our_key}");
    }
    assert_eq!(report["eval_positions_sha256"], info["eval_positions_sha256"], "{what}: eval_positions_sha256");
}

#[test]
fn stride_and_eval_frac_choose_the_peers_events() {
    event_set_matches_the_peer(&MOVIELENS, &["--stride", "7", "--eval-frac", "0.3"]);
    event_set_matches_the_peer(&YOOCHOOSE, &["--stride", "7", "--eval-frac", "0.3"]);
    event_set_matches_the_peer(&YOOCHOOSE, &["--stride", "3", "--eval-frac", "0.05"]);
}

#[test]
fn min_rating_chooses_the_peers_events() {
    event_set_matches_the_peer(&MOVIELENS, &["--min-rating", "4", "--stride", "2"]);
}

/// `--write-recs` then the peer's `--score-recs` on the same options: the
/// peer accepts the position set and gets our metrics.
fn written_recs_score_the_same(dataset: &Dataset, options: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let recs = dir.path().join("recs.csv");
    let mut ours = options.to_vec();
    let recs_arg = recs.display().to_string();
    ours.extend(["--write-recs", &recs_arg]);
    let report = freshet_eval(dataset, &ours);
    let header = std::fs::read_to_string(&recs).unwrap().lines().next().map(str::to_owned);
    assert_eq!(header.as_deref(), Some("position,items"));

    let mut args = dataset.peer_args();
    args.extend(["--score-recs".to_owned(), recs_arg]);
    // The protocol options (not --model) go to the peer too.
    let mut rest = options.iter();
    while let Some(&flag) = rest.next() {
        let value = rest.next().expect("options come in pairs");
        if flag != "--model" {
            args.extend([flag.to_owned(), value.to_string()]);
        }
    }
    let scored = peer(&args);
    let what = format!("{} {options:?}: peer --score-recs", dataset.name);
    assert_eq!(integer(&scored, "evaluated"), integer(&report, "evaluated"), "{what}");
    assert_metrics_close(&what, &report, &scored);
}

#[test]
fn written_recs_score_the_same_with_the_peer() {
    written_recs_score_the_same(&YOOCHOOSE, &[]);
    written_recs_score_the_same(&MOVIELENS, &["--model", "itemknn", "--stride", "10", "--eval-frac", "0.3"]);
}

/// `--ablation` replays each generator alone, and each such run is exactly
/// the default recommender with the other generators switched off in a
/// `--config` file.
#[test]
fn ablation_replays_each_generator() {
    let report = freshet_eval(&YOOCHOOSE, &["--ablation", "--stride", "5"]);
    let ablation = report["ablation"].as_object().unwrap_or_else(|| panic!("no ablation object: {report}"));
    let names: Vec<&str> = ablation.keys().map(String::as_str).collect();
    // No embedding ablation: eval logs carry no catalog embeddings.
    assert_eq!(names, ["content", "cooccurrence", "sequence", "trending"], "{report}");
    let dir = tempfile::tempdir().unwrap();
    for (generator, scores) in ablation {
        let mut config = String::from("[recommender]\n");
        for other in names.iter().filter(|&&n| n != generator) {
            config.push_str(&format!("[recommender.{other}]\nenabled = false\n"));
        }
        let path = dir.path().join(format!("{generator}.toml"));
        std::fs::write(&path, config).unwrap();
        let alone = freshet_eval(&YOOCHOOSE, &["--config", path.to_str().unwrap(), "--stride", "5"]);
        for key in ["hit_at_k", "ndcg_at_k", "mrr_at_k", "coverage"] {
            assert_eq!(number(scores, key), number(&alone, key), "ablation {generator} {key}");
        }
    }
    // The session data has no categories: content alone proposes nothing,
    // co-occurrence alone is most of the blend.
    assert_eq!(number(&ablation["content"], "hit_at_k"), 0.0);
    assert!(number(&ablation["cooccurrence"], "hit_at_k") > 0.4, "{report}");
    assert!(number(&report, "hit_at_k") >= number(&ablation["cooccurrence"], "hit_at_k"), "{report}");
}

/// The quality floor, on the full protocol (stride 1): the default
/// recommender reaches at least 1.10x the item-kNN baseline's hit@10 and
/// 1.15x its NDCG@10 on every shared dataset (the peer's published numbers,
/// which our item-kNN reproduces).
#[test]
fn default_recommender_beats_item_knn_by_the_floor() {
    for dataset in [&YOOCHOOSE, &MOVIELENS] {
        let ours = freshet_eval(dataset, &[]);
        let knn = &dataset.peer_results()["itemknn"];
        assert_published_event_set(dataset, &ours);
        assert_clears_the_floor(dataset.name, &ours, knn);
        assert_eq!(number(&ours, "invalid_recommendations"), 0.0, "{}", dataset.name);
    }
}

/// Fails unless `ours` has at least 1.10x the hit@10 and 1.15x the NDCG@10 of `knn`.
fn assert_clears_the_floor(what: &str, ours: &Value, knn: &Value) {
    let (hit, knn_hit) = (number(ours, "hit_at_k"), number(knn, "hit_at_k"));
    let (ndcg, knn_ndcg) = (number(ours, "ndcg_at_k"), number(knn, "ndcg_at_k"));
    assert!(hit >= 1.10 * knn_hit, "{what}: hit@10 {hit} < 1.10 x item-kNN {knn_hit}");
    assert!(ndcg >= 1.15 * knn_ndcg, "{what}: NDCG@10 {ndcg} < 1.15 x item-kNN {knn_ndcg}");
}

/// MovieLens 100k's ratings (`ml-udata`): `$FRESHET_ML100K`, else where
/// scripts/test.sh puts them (scripts/fetch-ml-100k.sh fetches them).
fn movielens_100k() -> PathBuf {
    let path = std::env::var_os("FRESHET_ML100K")
        .map_or_else(|| support::repo_root().join("target/datasets/ml-100k/u.data"), PathBuf::from);
    assert!(
        path.is_file(),
        "MovieLens 100k not found at {}: run scripts/test.sh, or scripts/fetch-ml-100k.sh DIR and set \
         FRESHET_ML100K to DIR/u.data",
        path.display()
    );
    path
}

/// A dataset the shared folder does not have, MovieLens 100k in the
/// `ml-udata` format: the peer's run on it evaluates the same events as
/// ours, our item-kNN gets the peer's metrics, and the default recommender
/// clears the floor against them.
#[test]
fn movielens_100k_matches_the_peer_and_clears_the_floor() {
    let path = movielens_100k();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("peer.json");
    let (data, out_arg) = (path.display().to_string(), out.display().to_string());
    run_peer(&["--format", "ml-udata", "--models", "itemknn", "--data", &data, "--out", &out_arg]);
    let peer_run: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let (info, knn) = (&peer_run["info"], &peer_run["results"]["itemknn"]);
    let spec = format!("ml-udata:{}", path.display());
    let ours = eval_spec(&spec, &[]);
    assert_peers_event_set("MovieLens 100k", &ours, info);
    assert_metrics_close("MovieLens 100k itemknn", &eval_spec(&spec, &["--model", "itemknn"]), knn);
    assert_clears_the_floor("MovieLens 100k", &ours, knn);
}

/// The same log with its times in milliseconds, as a generic `csv` (the
/// way RetailRocket's events come): the unit is found, and the recommender
/// scores exactly as on the seconds; told they are seconds, its session gap
/// and trending half-life would shrink a thousandfold, and it scores less.
#[test]
fn millisecond_timestamps_are_found_and_score_as_seconds_do() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("clicks-ms.csv");
    let mut text = String::from("user,item,timestamp\n");
    for path in YOOCHOOSE.paths() {
        let content = std::fs::read_to_string(&path).unwrap();
        for line in content.lines().skip(1) {
            let fields: Vec<&str> = line.split('\t').collect();
            let seconds: f64 = fields[2].parse().unwrap_or_else(|e| panic!("{}: {line}: {e}", path.display()));
            text += &format!("{},{},{}\n", fields[0], fields[1], (seconds * 1000.0).round() as i64);
        }
    }
    std::fs::write(&csv, text).unwrap();
    let spec = format!("csv:{}", csv.display());
    let seconds = freshet_eval(&YOOCHOOSE, &[]);
    assert_eq!(seconds["time_unit"], "s");
    let found = eval_spec(&spec, &[]);
    assert_eq!(found["time_unit"], "ms");
    assert_published_event_set(&YOOCHOOSE, &found);
    for key in ["hit_at_k", "ndcg_at_k", "mrr_at_k"] {
        assert_eq!(number(&found, key), number(&seconds, key), "{key}");
    }
    let misread = eval_spec(&spec, &["--time-unit", "s"]);
    assert!(number(&misread, "ndcg_at_k") < number(&seconds, "ndcg_at_k"), "{misread}");
}

fn eval_failure(args: &[&str]) -> String {
    let mut cmd = support::freshet();
    cmd.arg("eval").args(args);
    let run = support::run_with_deadline(&mut cmd, EVAL_DEADLINE);
    assert!(!run.status.success(), "expected a failure: {}", run.describe());
    run.stderr_text()
}

#[test]
fn bad_input_fails_with_the_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ratings.csv");
    std::fs::write(&path, "userId,movieId,rating,timestamp\n1,2,3.0,100\n1,3,4.0,later\n").unwrap();
    let spec = format!("ml-csv:{}", path.display());
    let err = eval_failure(&["--dataset", &spec]);
    assert!(err.contains("ratings.csv") && err.contains("line 3") && err.contains("column 4"), "{err}");

    let err = eval_failure(&["--dataset", "parquet:x.parquet"]);
    assert!(err.contains("unknown dataset format"), "{err}");
    let err = eval_failure(&["--dataset", &spec, "--eval-frac", "1.5"]);
    assert!(err.contains("--eval-frac"), "{err}");
    let err = eval_failure(&["--dataset", &spec, "--stride", "0"]);
    assert!(err.contains("--stride"), "{err}");
    let err = eval_failure(&["--dataset", &spec, "--model", "pop", "--ablation"]);
    assert!(err.contains("--ablation"), "{err}");
    let missing = dir.path().join("absent.csv");
    let err = eval_failure(&["--dataset", &format!("ml-csv:{}", missing.display())]);
    assert!(err.contains("absent.csv"), "{err}");
}
