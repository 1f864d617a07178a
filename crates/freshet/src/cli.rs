//! The command line: subcommands and process knobs (flags with env fallbacks).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::telemetry::LogFormat;

/// Freshet: streaming features and recommendations in one binary.
#[derive(Debug, Parser)]
#[command(name = "freshet", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "FRESHET_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Command.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a pipeline (with no --config: the embedded default with HTTP ingest).
    Run(RunArgs),
    /// Work with config files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Write a synthetic event stream (the schema of shared/workload/gen_events.py).
    Gen(GenArgs),
    /// Run a bounded pipeline and report events/s, latency and memory as JSON.
    Bench(BenchArgs),
    /// Ask a running Freshet for a user's recommendations (POST /v1/recommend) and print them.
    Recommend(RecommendArgs),
    /// Ask a running Freshet for the items similar to one (GET /v1/items/{id}/similar) and print them.
    Similar(SimilarArgs),
    /// Prequential evaluation of a recommender on an interaction log (the
    /// peer protocol): hit@K, NDCG@K, MRR@K and coverage as a JSON line.
    Eval(EvalArgs),
    /// Kafka tools for tests, backfills and benchmarks: create a topic,
    /// produce an NDJSON file, consume a topic to its end.
    #[command(subcommand)]
    Kafka(KafkaCommand),
}

/// `freshet kafka ...`.
#[derive(Debug, Subcommand)]
pub enum KafkaCommand {
    /// Create a topic (a no-op when it exists).
    CreateTopic {
        /// Bootstrap servers.
        #[arg(long, env = "KAFKA_BROKERS")]
        brokers: String,
        /// Topic name.
        #[arg(long)]
        topic: String,
        /// Partitions.
        #[arg(long, default_value_t = 1)]
        partitions: i32,
        /// Keep only the last record of each key (cleanup.policy=compact).
        #[arg(long)]
        compacted: bool,
    },
    /// Produce each line of an NDJSON file as one record (idempotent producer), keyed by a field.
    Produce {
        /// Bootstrap servers.
        #[arg(long, env = "KAFKA_BROKERS")]
        brokers: String,
        /// Topic name.
        #[arg(long)]
        topic: String,
        /// The top-level field whose value keys each record (records without it have no key).
        #[arg(long)]
        key_field: Option<String>,
        /// Records per second (0: as fast as the broker takes them).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// NDJSON file ('-' for stdin).
        file: PathBuf,
    },
    /// Read a topic from its beginning to the end offsets seen at start and
    /// print each record (`key<TAB>value`, or the value alone).
    Consume {
        /// Bootstrap servers.
        #[arg(long, env = "KAFKA_BROKERS")]
        brokers: String,
        /// Topic name.
        #[arg(long)]
        topic: String,
        /// Print values only.
        #[arg(long)]
        values: bool,
        /// Keep only the last record of each key (what a compacted topic keeps).
        #[arg(long)]
        dedup_by_key: bool,
        /// Print only a JSON line with the record count, bytes and rate (a bare consumer's throughput).
        #[arg(long)]
        count: bool,
        /// Produce every record read, key and value, into this topic too (a
        /// bare consume → produce pipe: the peer of a job that writes as it reads).
        #[arg(long)]
        pipe_to: Option<String>,
    },
    /// End-to-end latency through a running job: produce an NDJSON file at a
    /// steady rate into one topic while reading another, match records by an
    /// id field, and print the latency percentiles (produce call → record
    /// read from the output topic) as a JSON line.
    Latency {
        /// Bootstrap servers.
        #[arg(long, env = "KAFKA_BROKERS")]
        brokers: String,
        /// The topic the job reads.
        #[arg(long)]
        input: String,
        /// The topic the job writes each event to.
        #[arg(long)]
        output: String,
        /// The field that identifies an event in both topics.
        #[arg(long, default_value = "event_id")]
        id_field: String,
        /// The field that keys input records.
        #[arg(long, default_value = "user_id")]
        key_field: String,
        /// Events per second.
        #[arg(long, default_value_t = 10_000.0)]
        rate: f64,
        /// Seconds at the start left out of the percentiles (clients connecting, the first fetches).
        #[arg(long, default_value_t = 1.0)]
        warmup_s: f64,
        /// NDJSON file of events.
        file: PathBuf,
    },
}

/// `freshet config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate config files without running them; exit 2 on problems.
    Check {
        /// Files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// Process knobs shared by run and bench.
#[derive(Debug, Args, Clone)]
pub struct ProcessArgs {
    /// Address of the HTTP API (ingest, features, metrics).
    #[arg(long, env = "FRESHET_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The address (host:port) other processes of a group that scales out
    /// with state forward reads to. Default: the --listen address.
    #[arg(long, env = "FRESHET_ADVERTISE")]
    pub advertise: Option<String>,
    /// Directory for checkpoints and the embedded default's files. Given,
    /// state is checkpointed there and restored from there at start; not
    /// given, the embedded default writes to ./freshet-data and nothing is
    /// checkpointed.
    #[arg(long, env = "FRESHET_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Delete the data directory's checkpoints and start from scratch.
    #[arg(long)]
    pub reset_state: bool,
}

impl ProcessArgs {
    /// The data directory, or the embedded default's.
    pub fn data_dir_or_default(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| PathBuf::from("freshet-data"))
    }
}

/// `freshet run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Pipeline config (TOML). Without it, the embedded default runs.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Add a generator source so features change at once (a live demo).
    #[arg(long)]
    pub demo: bool,
    /// Demo events per second.
    #[arg(long, default_value_t = 200.0)]
    pub demo_rate: f64,
    /// Serve the HTTP API even for a bounded job (it always runs for unbounded ones).
    #[arg(long)]
    pub serve: bool,
    /// Process knobs.
    #[command(flatten)]
    pub process: ProcessArgs,
}

/// `freshet gen` (same knobs as gen_events.py).
#[derive(Debug, Args)]
pub struct GenArgs {
    /// Total lines written.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Users.
    #[arg(long, default_value_t = 100_000)]
    pub users: u64,
    /// Initial items.
    #[arg(long, default_value_t = 50_000)]
    pub items: u64,
    /// Seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Fraction of malformed lines.
    #[arg(long, default_value_t = 0.001)]
    pub malformed_rate: f64,
    /// Fraction of duplicated lines.
    #[arg(long, default_value_t = 0.0)]
    pub duplicate_rate: f64,
    /// Max out-of-orderness in ms.
    #[arg(long, default_value_t = 5000)]
    pub disorder_ms: i64,
    /// Event-time rate (events per second of event time).
    #[arg(long, default_value_t = 1000.0)]
    pub rate_per_s: f64,
    /// Event-time start (epoch ms).
    #[arg(long, default_value_t = 1_767_225_600_000)]
    pub start_ms: i64,
    /// Output file; '-' for stdout.
    #[arg(long, default_value = "-")]
    pub out: PathBuf,
}

/// `freshet bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A bounded pipeline config (e.g. examples/reference-job.toml with FRESHET_INPUT set).
    #[arg(long, short)]
    pub config: PathBuf,
    /// Repetitions; the report gives each run and the best.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
}

/// Where a running Freshet answers (the client commands).
#[derive(Debug, Args, Clone)]
pub struct ServerArgs {
    /// Base URL of the running Freshet's HTTP API.
    #[arg(long, env = "FRESHET_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
}

/// `freshet recommend`.
#[derive(Debug, Args)]
pub struct RecommendArgs {
    /// The user; without it, an anonymous (cold-start) request.
    #[arg(long)]
    pub user: Option<String>,
    /// How many items (1..=1000).
    #[arg(long, default_value_t = 10)]
    pub k: i64,
    /// A placement configured under [recommender.placements].
    #[arg(long)]
    pub placement: Option<String>,
    /// Items of the page or cart, newest first (comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    pub context: Vec<String>,
    /// Items never to return (comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    pub exclude: Vec<String>,
    /// Only items of these categories (comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    pub category: Vec<String>,
    /// The server.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `freshet similar`.
#[derive(Debug, Args)]
pub struct SimilarArgs {
    /// The item.
    #[arg(long)]
    pub item: String,
    /// How many items (1..=1000).
    #[arg(long, default_value_t = 10)]
    pub k: i64,
    /// The server.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Which recommender `freshet eval` replays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EvalModel {
    /// The Freshet recommender (with --ablation, also one run per generator).
    Freshet,
    /// The peer's popularity baseline.
    Pop,
    /// The peer's incremental item-kNN baseline.
    #[value(name = "itemknn")]
    ItemKnn,
}

/// What a dataset's timestamps count, for the recommender's windows (session
/// gap, trending half-life); the protocol only orders by them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TimeUnit {
    /// From the largest timestamp: from 1e14 microseconds, from 1e11
    /// milliseconds, else seconds (epoch times of this century in each).
    Auto,
    /// Seconds (MovieLens, YOOCHOOSE).
    S,
    /// Milliseconds.
    Ms,
    /// Microseconds.
    Us,
}

/// `freshet eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Interaction log as FORMAT:PATH[,PATH...], files read in the given order
    /// (.gz is decompressed). Formats: ml-csv, ml-udata, ml-dat, sessionrec, csv.
    #[arg(long, value_name = "FORMAT:PATH[,PATH...]")]
    pub dataset: String,
    /// Recommender config (TOML) for --model freshet.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Recommender to replay.
    #[arg(long, value_enum, default_value = "freshet")]
    pub model: EvalModel,
    /// List length K of hit@K, NDCG@K and MRR@K.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub k: u64,
    /// Evaluate every N-th eligible event.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub stride: u64,
    /// Evaluation segment: the last fraction of positions (exact decimal, as the peer).
    #[arg(long, default_value = "0.2")]
    pub eval_frac: String,
    /// Drop rows with a rating below this before indexing.
    #[arg(long, value_parser = parse_number)]
    pub min_rating: Option<f64>,
    /// Field separator of --dataset csv:... (one character; default ,).
    #[arg(long)]
    pub sep: Option<String>,
    /// User column of --dataset csv:... (default user).
    #[arg(long)]
    pub user_col: Option<String>,
    /// Item column of --dataset csv:... (default item).
    #[arg(long)]
    pub item_col: Option<String>,
    /// Timestamp column of --dataset csv:... (default timestamp).
    #[arg(long)]
    pub time_col: Option<String>,
    /// Rating column of --dataset csv:... (needed by --min-rating).
    #[arg(long)]
    pub rating_col: Option<String>,
    /// What the timestamps count.
    #[arg(long, value_enum, default_value = "auto")]
    pub time_unit: TimeUnit,
    /// Also replay one model per candidate generator (--model freshet only).
    #[arg(long)]
    pub ablation: bool,
    /// Write the main model's lists as CSV `position,items` (dataset ids,
    /// space-separated, best first), for prequential_eval.py --score-recs.
    #[arg(long, value_name = "FILE")]
    pub write_recs: Option<PathBuf>,
    /// Replay threads (default: the machine's cores). Each has its own copy
    /// of the model and ranks one run of the evaluated events, learning up to
    /// where the next thread takes over; the numbers are the same for any count.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub threads: Option<u64>,
}

/// A number as Python's `float()` reads it (the peer's command line).
fn parse_number(text: &str) -> Result<f64, String> {
    crate::eval::parse_py_float(text).ok_or_else(|| format!("{text:?} is not a number"))
}
