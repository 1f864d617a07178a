//! Configuration: the file model, loading with variable substitution, and
//! planning into a runnable [`plan::Plan`].

pub mod load;
pub mod model;
pub mod plan;

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

/// Plans the embedded default with `data_dir` for its files.
pub fn plan_default(data_dir: &Path, cores: usize) -> Result<Plan, ConfigError> {
    let dir = data_dir.display().to_string();
    let env = move |name: &str| if name == "FRESHET_DATA_DIR" { Some(dir.clone()) } else { std::env::var(name).ok() };
    let config = load::parse(DEFAULT_CONFIG, "built-in default", &env)?;
    plan::plan(&config, "built-in default", cores, data_dir)
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
                // Paths are set; everything else takes its `${VAR:-default}`.
                let env = |name: &str| name.ends_with("_INPUT") || name.ends_with("_OUTPUT") || name.ends_with("_DIR");
                let env = move |name: &str| env(name).then(|| "/tmp/x".to_string());
                let config = load::parse(&text, "example", &env).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                plan::plan(&config, "example", 2, path.parent().unwrap())
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
        }
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
        let config = load::parse(text, "t", &|_| None).unwrap();
        let err = plan::plan(&config, "t", 2, Path::new(".")).unwrap_err();
        let paths: Vec<_> = err.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["features[0].window.gap"], "{err}");
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
        let config = load::parse(text, "t", &|_| None).unwrap();
        let err = plan::plan(&config, "t", 2, Path::new(".")).unwrap_err();
        let paths: Vec<_> = err.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            ["flows[0].when", "features[0].flow", "features[0].window", "features[0].field", "features[0].sink"],
            "{err}"
        );
    }
}
