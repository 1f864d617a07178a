//! Reading a config file: TOML, `${VAR}` and `${VAR:-default}` substitution
//! in string values, and strict deserialisation whose errors name the key
//! path (`features[0].window.size: …`).

use std::fmt;
use std::path::Path;

use super::model::Config;

/// One problem with a config, at a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where: `flows[1].stages[0].sink`, or empty for the file as a whole.
    pub path: String,
    /// What is wrong and what was expected.
    pub message: String,
}

/// Every problem found in a config. Exit code 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or "built-in default").
    pub origin: String,
    /// The problems, in file order where known.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid config {}:", self.origin)?;
        for p in &self.problems {
            if p.path.is_empty() {
                writeln!(f, "  {}", p.message)?;
            } else {
                writeln!(f, "  {}: {}", p.path, p.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// One problem.
    pub fn one(origin: &str, path: impl Into<String>, message: impl Into<String>) -> Self {
        Self { origin: origin.into(), problems: vec![Problem { path: path.into(), message: message.into() }] }
    }
}

/// Reads and parses a config file.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let origin = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|e| ConfigError::one(&origin, "", format!("cannot read file: {e}")))?;
    parse(&text, &origin, &|name| std::env::var(name).ok())
}

/// Parses config text, substituting variables looked up by `env`.
pub fn parse(text: &str, origin: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let msg = e.message().trim().to_owned();
        let at = e.span().map(|s| line_col(text, s.start)).unwrap_or_default();
        ConfigError::one(origin, "", format!("{at}TOML syntax: {msg}"))
    })?;
    let mut value = toml::Value::Table(table);
    let mut problems = Vec::new();
    substitute(&mut value, &mut String::new(), env, &mut problems);
    if !problems.is_empty() {
        return Err(ConfigError { origin: origin.into(), problems });
    }
    serde_path_to_error::deserialize::<_, Config>(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        ConfigError::one(origin, path, e.into_inner().to_string())
    })
}

fn line_col(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    format!("line {line}, column {col}: ")
}

fn substitute(
    v: &mut toml::Value,
    path: &mut String,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) {
    match v {
        toml::Value::String(s) if s.contains("${") => match expand(s, env) {
            Ok(out) => *s = out,
            Err(message) => problems.push(Problem { path: path.clone(), message }),
        },
        toml::Value::Table(t) => {
            for (k, child) in t.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                substitute(child, path, env, problems);
                path.truncate(len);
            }
        }
        toml::Value::Array(a) => {
            for (i, child) in a.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                substitute(child, path, env, problems);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

/// Expands `${NAME}` and `${NAME:-default}`; `$${` is a literal `${`.
fn expand(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        if rest[..i].ends_with('$') {
            out.push_str(&rest[..i - 1]);
            out.push_str("${");
            rest = &rest[i + 2..];
            continue;
        }
        out.push_str(&rest[..i]);
        let Some(end) = rest[i..].find('}') else {
            return Err(format!("unterminated ${{ in {s:?}"));
        };
        let inner = &rest[i + 2..i + end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("invalid variable name {name:?}"));
        }
        match (env(name), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => return Err(format!("environment variable {name} is not set")),
        }
        rest = &rest[i + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "OUT").then(|| "/tmp/o".to_string())
    }

    #[test]
    fn substitutes_variables_and_defaults() {
        assert_eq!(expand("${OUT}/a.csv", &env).unwrap(), "/tmp/o/a.csv");
        assert_eq!(expand("${NOPE:-x}/${OUT}", &env).unwrap(), "x//tmp/o");
        assert_eq!(expand("$${OUT}", &env).unwrap(), "${OUT}");
        assert_eq!(expand("${NOPE}", &env).unwrap_err(), "environment variable NOPE is not set");
    }

    #[test]
    fn unset_variable_is_reported_at_its_key() {
        let err = parse("[sources.events]\ntype = \"file\"\npath = \"${INPUT}\"\n", "t.toml", &env).unwrap_err();
        assert_eq!(err.problems[0].path, "sources.events.path");
        assert!(err.problems[0].message.contains("INPUT"));
    }

    #[test]
    fn unknown_keys_are_reported_with_their_path() {
        let text = "[[features]]\nname = \"a\"\nflow = \"f\"\nkey = [\"user_id\"]\nwindow = { type = \"tumbling\", size = \"5m\" }\nbogus = 1\n";
        let err = parse(text, "t.toml", &env).unwrap_err();
        assert_eq!(err.problems[0].path, "features[0].bogus");
        assert!(err.problems[0].message.contains("bogus"), "{err}");
        let err = parse("[pipeline]\nshards = \"two\"\n", "t.toml", &env).unwrap_err();
        assert_eq!(err.problems[0].path, "pipeline.shards");
    }

    #[test]
    fn syntax_errors_name_line_and_column() {
        let err = parse("[pipeline\n", "t.toml", &env).unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
    }
}
