//! The client commands for quick tries against a running Freshet:
//! `freshet recommend` (`POST /v1/recommend`) and `freshet similar`
//! (`GET /v1/items/{id}/similar`). Each sends one request and prints the
//! JSON answer, pretty, on stdout; an error answer becomes the command's
//! error (exit 1) with the server's message.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};

use crate::cli::{RecommendArgs, SimilarArgs};

/// How long one request may take, connection included.
const TIMEOUT: Duration = Duration::from_secs(30);

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().timeout_global(Some(TIMEOUT)).http_status_as_error(false).build().into()
}

/// The request body of `freshet recommend`: only what was given, so the server's defaults apply.
fn recommend_body(args: &RecommendArgs) -> Value {
    let mut body = Map::new();
    if let Some(user) = &args.user {
        body.insert("user_id".into(), json!(user));
    }
    body.insert("k".into(), json!(args.k));
    if let Some(placement) = &args.placement {
        body.insert("placement".into(), json!(placement));
    }
    if !args.context.is_empty() {
        body.insert("context".into(), json!(args.context));
    }
    if !args.exclude.is_empty() {
        body.insert("exclude".into(), json!(args.exclude));
    }
    if !args.category.is_empty() {
        body.insert("filters".into(), json!({ "category": args.category }));
    }
    Value::Object(body)
}

/// `freshet recommend`.
pub fn recommend(args: &RecommendArgs) -> Result<()> {
    let url = format!("{}/v1/recommend", args.server.url.trim_end_matches('/'));
    let body = recommend_body(args).to_string();
    let response = agent().post(&url).header("content-type", "application/json").send(body.as_str());
    print_answer(&url, response)
}

/// `freshet similar`.
pub fn similar(args: &SimilarArgs) -> Result<()> {
    let url = format!("{}/v1/items/{}/similar", args.server.url.trim_end_matches('/'), path_segment(&args.item));
    let response = agent().get(&url).query("k", args.k.to_string()).call();
    print_answer(&url, response)
}

/// Prints a 2xx answer's JSON, pretty; anything else is an error with the server's message.
fn print_answer(url: &str, response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<()> {
    let mut response = response.with_context(|| {
        format!("cannot reach Freshet at {url} (is `freshet run` running? set --url or FRESHET_URL)")
    })?;
    let status = response.status();
    let text = response.body_mut().read_to_string().with_context(|| format!("reading the answer of {url}"))?;
    let json: Option<Value> = serde_json::from_str(&text).ok();
    if !status.is_success() {
        let message = json.as_ref().and_then(|v| v["error"].as_str()).unwrap_or(text.trim());
        bail!("{url} answered {status}: {message}");
    }
    if json.is_none() {
        bail!("{url} answered {status} with a body that is not JSON: {text}");
    }
    println!("{}", pretty(&text));
    Ok(())
}

/// Valid JSON text indented by two spaces, keys in the server's order
/// (a `serde_json::Value` would sort them).
fn pretty(json: &str) -> String {
    let mut out = String::with_capacity(json.len() * 2);
    let mut depth = 0usize;
    let (mut in_string, mut escaped) = (false, false);
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.extend(std::iter::repeat_n("  ", depth));
    };
    let mut chars = json.chars().peekable();
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                while chars.peek().is_some_and(|c| c.is_ascii_whitespace()) {
                    chars.next();
                }
                if matches!(chars.peek(), Some('}' | ']')) {
                    // An empty object or array stays on its line.
                    out.extend(chars.next());
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_ascii_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

/// `s` percent-encoded as one path segment (every byte but RFC 3986's unreserved characters).
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::ServerArgs;

    #[test]
    fn pretty_printing_keeps_the_order_of_keys() {
        let text = r#"{"z":1,"a":[{"s":"x,\"{y}:"},[],{}],"m":{ }}"#;
        let printed = pretty(text);
        assert_eq!(
            printed,
            "{\n  \"z\": 1,\n  \"a\": [\n    {\n      \"s\": \"x,\\\"{y}:\"\n    },\n    [],\n    {}\n  ],\n  \"m\": {}\n}"
        );
        let reparsed: Value = serde_json::from_str(&printed).unwrap();
        assert_eq!(reparsed, serde_json::from_str::<Value>(text).unwrap());
    }

    #[test]
    fn item_ids_are_one_path_segment() {
        assert_eq!(path_segment("i-1.x_~"), "i-1.x_~");
        assert_eq!(path_segment("a/b c?d"), "a%2Fb%20c%3Fd");
        assert_eq!(path_segment("é"), "%C3%A9");
    }

    #[test]
    fn the_body_holds_only_what_was_given() {
        let mut args = RecommendArgs {
            user: None,
            k: 5,
            placement: None,
            context: vec![],
            exclude: vec![],
            category: vec![],
            server: ServerArgs { url: "http://x".into() },
        };
        assert_eq!(recommend_body(&args), json!({ "k": 5 }));
        args.user = Some("u1".into());
        args.placement = Some("home".into());
        args.context = vec!["i1".into(), "i2".into()];
        args.exclude = vec!["i3".into()];
        args.category = vec!["c1".into()];
        assert_eq!(
            recommend_body(&args),
            json!({ "user_id": "u1", "k": 5, "placement": "home", "context": ["i1", "i2"], "exclude": ["i3"],
                    "filters": { "category": ["c1"] } })
        );
    }
}
