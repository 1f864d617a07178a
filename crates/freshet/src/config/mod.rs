//! Configuration: the file model, loading with variable substitution, and
//! planning into a runnable [`plan::Plan`].

pub mod enrich;
pub mod kafka;
pub mod load;
pub mod model;
pub mod plan;
pub mod recommender;

use std::path::Path;

pub use load::ConfigError;
use plan::Plan;

/// The embedded default pipeline (`freshet run` with no config).
pub const DEFAULT_CONFIG: &str = include_str!("../default.toml");

/// Loads and plans a config file.
pub fn plan_file(path: &Path, cores: usize) -> Result<Plan, ConfigError> {
    let config = load::load_file(path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    plan::plan(&config, &path.display().to_string(), cores, dir)
}

/// Parses `text`, the config file at `path` as read once at start, lets
/// `edit` change it, and plans it (a group's tasks run parts of the job, see
/// `crate::group`: each task plans the same text, whatever the file says
/// by then).
pub fn plan_text_with(
    text: &str,
    path: &Path,
    cores: usize,
    edit: &dyn Fn(&mut model::Config),
) -> Result<Plan, ConfigError> {
    let mut config = load::parse(text, &path.display().to_string(), &|name| std::env::var(name).ok())?;
    edit(&mut config);
    let dir = path.parent().unwrap_or(Path::new("."));
    plan::plan(&config, &path.display().to_string(), cores, dir)
}

/// Plans the embedded default with `data_dir` for its files.
pub fn plan_default(data_dir: &Path, cores: usize) -> Result<Plan, ConfigError> {
    let dir = data_dir.display().to_string();
    let env = move |name: &str| if name == "FRESHET_DATA_DIR" { Some(dir.clone()) } else { std::env::var(name).ok() };
    let config = load::parse(DEFAULT_CONFIG, "built-in default", &env)?;
    plan::plan(&config, "built-in default", cores, data_dir)
}

/// The recommender spec of a config file's `[recommender]` section (the
/// default spec when the file has none), for `freshet eval --config`.
pub fn recommender_spec_file(path: &Path) -> Result<freshet_engine::recommend::RecommenderSpec, ConfigError> {
    let config = load::load_file(path)?;
    let mut planner = plan::Planner::new();
    let spec = match &config.recommender {
        Some(r) => recommender::spec(r, &mut planner),
        None => freshet_engine::recommend::RecommenderSpec::default(),
    };
    planner.finish(&path.display().to_string())?;
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_and_examples_plan_cleanly() {
        let plan = plan_default(Path::new("/tmp/freshet-test"), 2).unwrap();
        assert!(plan.has_http_source());
        assert!(!plan.bounded());
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        for entry in std::fs::read_dir(examples).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).unwrap();
                // Paths and URLs are set; everything else takes its `${VAR:-default}`.
                let env = |name: &str| match name.rsplit('_').next() {
                    Some("INPUT" | "OUTPUT" | "DIR") => Some("/tmp/x".to_string()),
                    Some("URL") => Some("http://127.0.0.1:9".to_string()),
                    Some("BROKERS") => Some("127.0.0.1:9".to_string()),
                    Some("TOPIC") => Some("events".to_string()),
                    _ => None,
                };
                let config = load::parse(&text, "example", &env).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                plan::plan(&config, "example", 2, path.parent().unwrap())
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
        }
    }

    #[test]
    fn a_bounded_source_never_goes_idle_beside_an_unbounded_one() {
        let job = |source: &str| {
            format!(
                r#"
                [event_time]
                idle_timeout = "2s"
                [sources.k]
                type = "kafka"
                brokers = "127.0.0.1:9"
                topic = "events"
                {source}
                [[flows]]
                name = "f"
                "#
            )
        };
        let event_time = |text: &str| {
            let plan = plan_text(text).unwrap();
            let et = plan.pipeline.event_time;
            let bounded: Vec<&str> =
                et.bounded_sources.iter().map(|&i| plan.sources[i as usize].name.as_str()).collect();
            (et.idle_timeout, bounded.join(","))
        };
        assert_eq!(event_time(&job("bounded = true")), (2_000, "k".into()));
        assert_eq!(event_time(&job("")), (2_000, "".into()));
        // Sources are indexed in name order: "api" before "k", "z" after.
        let mixed = job("bounded = true") + "[sources.api]\ntype = \"http\"\n";
        assert_eq!(event_time(&mixed), (2_000, "k".into()));
        let mixed = job("") + "[sources.z]\ntype = \"file\"\npath = \"events.jsonl\"\n";
        assert_eq!(event_time(&mixed), (2_000, "z".into()));
    }

    #[test]
    fn durations_beyond_the_engine_time_range_are_refused() {
        let text = r#"
            [sources.a]
            type = "http"
            [[flows]]
            name = "f"
            [[features]]
            name = "g"
            flow = "f"
            key = ["user_id"]
            window = { type = "session", gap = "300000years" }
            allowed_lateness = "200000years"
        "#;
        let err = plan_text(text).unwrap_err();
        let paths: Vec<_> = err.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["features[0].window.gap"], "{err}");
    }

    #[test]
    fn scale_out_with_state_needs_a_partition_key_features_keyed_by_it_and_kafka_sinks() {
        let job = |source: &str, sink: &str, features: &str| {
            format!(
                r#"
                [sources.k]
                type = "kafka"
                brokers = "127.0.0.1:9"
                topic = "events"
                scale_out = true
                {source}
                [sinks.out]
                {sink}
                [[flows]]
                name = "f"
                stages = [{{ type = "route", sink = "out" }}]
                {features}
                "#
            )
        };
        let stdout = "type = \"stdout\"";
        let kafka = "type = \"kafka\"\nbrokers = \"127.0.0.1:9\"\ntopic = \"out\"";
        let feature = |key: &str, serve: bool| {
            format!(
                "[[features]]\nname = \"g\"\nflow = \"f\"\nkey = [{key}]\nwindow = {{ type = \"global\" }}\nserve = {serve}\n"
            )
        };
        let paths = |text: &str| -> Vec<String> {
            let err = plan_text(text).unwrap_err();
            err.problems.iter().map(|p| p.path.clone()).collect()
        };
        assert!(plan_text(&job("", stdout, "")).is_ok(), "a stateless job scales out");
        // Bounded or stateful, the group runs tasks, which all write the same outputs.
        assert_eq!(paths(&job("bounded = true", stdout, "")), ["sinks.out.type"]);
        assert!(plan_text(&job("bounded = true", kafka, "")).is_ok());
        let stateful = feature("\"user_id\", \"type\"", false);
        assert_eq!(paths(&job("", kafka, &stateful)), ["sources.k.partition_key"]);
        assert!(plan_text(&job("partition_key = \"user_id\"", kafka, &stateful)).is_ok());
        // Keyed by another field, a feature is fed through a repartition topic (one field per job).
        assert!(plan_text(&job("partition_key = \"user_id\"", kafka, &feature("\"item_id\"", false))).is_ok());
        let two = feature("\"item_id\"", false) + &feature("\"category\"", true).replace("\"g\"", "\"h\"");
        assert_eq!(paths(&job("partition_key = \"user_id\"", kafka, &two)), ["features[1].key"]);
        // Served features are read by their first key field: the partition must follow from it.
        let served = |key: &str| feature(key, true);
        assert!(plan_text(&job("partition_key = \"user_id\"", kafka, &served("\"user_id\", \"type\""))).is_ok());
        assert!(plan_text(&job("partition_key = \"user_id\"", kafka, &served("\"item_id\""))).is_ok());
        assert_eq!(
            paths(&job("partition_key = \"user_id\"", kafka, &served("\"type\", \"user_id\""))),
            ["features[0].key"]
        );
        // Dedup tables move with a group's tasks; a stateless group has no tasks to move them with.
        let dedup = |text: String| {
            let route = r#"stages = [{ type = "route", sink = "out" }]"#;
            assert!(text.contains(route));
            text.replace(
                route,
                r#"stages = [{ type = "route", sink = "out" }, { type = "dedup", key = "id", ttl = "1h" }]"#,
            )
        };
        assert!(plan_text(&dedup(job("partition_key = \"user_id\"", kafka, &stateful))).is_ok());
        assert_eq!(paths(&dedup(job("", stdout, ""))), ["sources.k.scale_out"]);
        // A recommender runs as a replica on every process; the group's tasks write the outputs.
        let recommender = "[recommender]\ninteractions = [\"f\"]\n";
        assert_eq!(paths(&job("", stdout, recommender)), ["sinks.out.type"]);
        assert!(plan_text(&job("", kafka, recommender)).is_ok());
        assert!(plan_text(&job("partition_key = \"user_id\"", kafka, &(stateful.clone() + recommender))).is_ok());
        // A tombstone forgets a user in its partition's task, an item in the
        // repartitioned task its id picks; not an entity spread over every task.
        let forget = |entity: &str| format!("partition_key = \"user_id\"\nforget_on_tombstone = \"{entity}\"");
        assert!(plan_text(&job(&forget("user"), kafka, &stateful)).is_ok());
        assert!(
            plan_text(&job(
                &forget("item"),
                kafka,
                &(stateful.clone() + &feature("\"item_id\"", true).replace("\"g\"", "\"h\""))
            ))
            .is_ok()
        );
        let spread = feature("\"item_id\", \"user_id\"", false);
        assert_eq!(paths(&job(&forget("item"), kafka, &spread)), ["features[0].key"]);
        assert!(plan_text(&job(&forget("user"), kafka, &spread)).is_ok(), "an item's keys are not a user's");
        assert_eq!(paths(&job(&forget("users"), kafka, &stateful)), ["sources.k.forget_on_tombstone"]);
        let unknown = "partition_key = \"user_id\"\npartitioner = \"random\"";
        assert_eq!(paths(&job(unknown, kafka, &stateful)), ["sources.k.partitioner"]);
        // Standby copies are of tasks' checkpoints: a group that runs tasks has them, one that does not, none.
        let standby = "partition_key = \"user_id\"\nstandby = true";
        assert!(plan_text(&job(standby, kafka, &stateful)).is_ok());
        assert_eq!(paths(&job("standby = true", stdout, "")), ["sources.k.standby"]);
        let unscaled = job(standby, kafka, &stateful).replace("scale_out = true", "scale_out = false");
        assert_eq!(paths(&unscaled), ["sources.k.standby"]);
    }

    #[test]
    fn planning_reports_every_problem_with_its_path() {
        let text = r#"
            [sources.a]
            type = "file"
            path = "x"
            [[flows]]
            name = "f"
            when = { field = "type" }
            [[features]]
            name = "g"
            flow = "nope"
            key = ["user_id"]
            window = { type = "hopping", size = "5m", slide = "1h" }
            aggregate = "sum"
            sink = "missing"
        "#;
        let err = plan_text(text).unwrap_err();
        let paths: Vec<_> = err.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            ["flows[0].when", "features[0].flow", "features[0].window", "features[0].field", "features[0].sink"],
            "{err}"
        );
    }

    const DEDUP_TTL: &str = r#"
        [pipeline]
        state_ttl = "7d"
        [sources.a]
        type = "file"
        path = "x"
        [sinks.raw]
        type = "stdout"
        [[flows]]
        name = "f"
        stages = [
          { type = "route", sink = "raw" },
          { type = "dedup", key = "event_id", ttl = "10m" },
          { type = "dedup", key = ["user_id", "session_id"], ttl = "1h" },
        ]
        [[features]]
        name = "clicks"
        flow = "f"
        key = ["user_id"]
        window = { type = "tumbling", size = "5m" }
        [[features]]
        name = "views"
        flow = "f"
        key = ["item_id"]
        window = { type = "tumbling", size = "5m" }
        ttl = "1d"
        [[features]]
        name = "forever"
        flow = "f"
        key = ["item_id"]
        window = { type = "global" }
        ttl = "none"
    "#;

    fn plan_text(text: &str) -> Result<plan::Plan, ConfigError> {
        let config = load::parse(text, "t", &|_| None).unwrap();
        plan::plan(&config, "t", 2, Path::new("."))
    }

    #[test]
    fn dedup_stages_and_ttls_plan_into_the_pipeline() {
        use freshet_engine::flow::{Placement, Stage};
        let plan = plan_text(DEDUP_TTL).unwrap();
        let p = &plan.pipeline;
        let dedups = p.dedups();
        assert_eq!(dedups.len(), 2);
        assert_eq!((dedups[0].id, dedups[0].ttl, dedups[0].key.len()), (0, 600_000, 1));
        assert_eq!((dedups[1].id, dedups[1].ttl, dedups[1].key.len()), (1, 3_600_000, 2));
        assert!(matches!(p.flows[0].stages[1], Stage::Dedup(_)));
        assert_eq!(p.flows[0].stages[1].placement(), Placement::Keyed);
        assert_eq!(p.flows[0].stages[0].placement(), Placement::Inline);
        let ttls: Vec<Option<i64>> = p.features.iter().map(|f| f.ttl).collect();
        assert_eq!(ttls, [Some(7 * 86_400_000), Some(86_400_000), None]);
    }

    #[test]
    fn the_fingerprint_changes_with_dedup_and_ttl_settings() {
        let base = plan_text(DEDUP_TTL).unwrap().fingerprint();
        for (from, to) in [
            (r#"ttl = "10m""#, r#"ttl = "11m""#),
            (r#"key = "event_id""#, r#"key = "id""#),
            (r#"state_ttl = "7d""#, r#"state_ttl = "8d""#),
            (r#"ttl = "1d""#, r#"ttl = "2d""#),
        ] {
            let changed = plan_text(&DEDUP_TTL.replacen(from, to, 1)).unwrap().fingerprint();
            assert_ne!(changed, base, "{from} -> {to}");
        }
    }

    #[test]
    fn bad_dedup_and_ttl_settings_are_reported_with_their_paths() {
        let text = DEDUP_TTL
            .replacen(r#"state_ttl = "7d""#, r#"state_ttl = "0s""#, 1)
            .replacen(r#"ttl = "10m" },"#, r#"ttl = "ten minutes" },"#, 1)
            .replacen(r#"key = ["user_id", "session_id"]"#, "key = []", 1)
            .replacen(r#"ttl = "1d""#, r#"ttl = "0ms""#, 1)
            .replacen(
                r#"{ type = "route", sink = "raw" },"#,
                r#"{ type = "route", sink = "raw" }, { type = "dedup", key = "x", ttl = "1m" }, { type = "route", sink = "raw" },"#,
                1,
            );
        let err = plan_text(&text).unwrap_err();
        let paths: Vec<_> = err.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "flows[0].stages[2]",
                "flows[0].stages[3].ttl",
                "flows[0].stages[4].key",
                "pipeline.state_ttl",
                "features[1].ttl"
            ],
            "{err}"
        );
        let route = &err.problems[0].message;
        assert!(route.contains("flows[0].stages[1]") && route.contains("before"), "{route}");
    }

    #[test]
    fn the_recommender_section_is_planned_and_its_mistakes_named() {
        let ok = r#"
            [sources.a]
            type = "http"
            [[flows]]
            name = "interactions"
            [[flows]]
            name = "catalog"
            [recommender]
            event_weights = { view = 1.0, impression = 0.0 }
            [recommender.trending]
            half_life = "1h"
            [recommender.placements.home]
            pin = [{ item = "i1", position = 2 }]
        "#;
        let plan = plan_text(ok).unwrap();
        let r = plan.pipeline.recommender.expect("a recommender");
        assert_eq!((r.interactions.as_slice(), r.catalog), (&[0][..], Some(1)));
        assert_eq!(r.spec.trending.half_life_ms, 3_600_000);
        assert_eq!(r.spec.event_weight(Some("impression")), 0.0);
        assert_eq!(r.placements[0].name, "home");
        assert_eq!(r.shard, plan.pipeline.shards - 1);
        // No dimension: embeddings are never read.
        assert!(r.embedding.is_none() && r.spec.embedding.dimension.is_none());
        let embedded = ok.replace("[recommender]\n", "[recommender]\nembedding_field = \"vec\"\n")
            + "[recommender.embedding]\ndimension = 8\nsources = 2\n";
        let r = plan_text(&embedded).unwrap().pipeline.recommender.unwrap();
        assert_eq!(r.embedding.as_ref().map(|f| f.as_str()), Some("vec"));
        assert_eq!((r.spec.embedding.dimension, r.spec.embedding.sources), (Some(8), 2));
        assert!(r.spec.enabled(freshet_engine::recommend::Generator::Embedding));
        assert_eq!(r.spec.cooccurrence.normalisation, freshet_engine::recommend::Normalisation::Cosine);
        let llr = ok.to_owned() + "[recommender.cooccurrence]\nnormalisation = \"llr\"\n";
        let r = plan_text(&llr).unwrap().pipeline.recommender.unwrap();
        assert_eq!(r.spec.cooccurrence.normalisation, freshet_engine::recommend::Normalisation::Llr);

        let bad = r#"
            [sources.a]
            type = "http"
            [[flows]]
            name = "f"
            [recommender]
            interactions = ["nope"]
            recency_decay = 1.5
            attributed_answers = 100000000
            [recommender.cooccurrence]
            weight = -1.0
            normalisation = "jaccard"
            [recommender.sequence]
            full_weight_at = 2.0
            [recommender.embedding]
            dimension = 0
            [recommender.placements.home]
            pin = [{ item = "i1", position = 0 }]
        "#;
        let err = plan_text(bad).unwrap_err();
        let paths: Vec<_> = err.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "recommender.recency_decay",
                "recommender.attributed_answers",
                "recommender.cooccurrence.weight",
                "recommender.cooccurrence.normalisation",
                "recommender.sequence.full_weight_at",
                "recommender.embedding.dimension",
                "recommender.interactions[0]",
                "recommender.placements.home.pin[0].position"
            ],
            "{err}"
        );
        let unknown = "[recommender]\nrecent = 3\n";
        let err = load::parse(unknown, "t", &|_: &str| None).unwrap_err().to_string();
        assert!(err.contains("recommender") && err.contains("recent"), "{err}");
    }
}
