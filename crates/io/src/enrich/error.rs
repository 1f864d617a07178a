//! How an enrichment call failed: the [`ErrorKind`] that the retry loop, the
//! circuit breaker and the engine's failure policy branch on, and the message
//! an operator reads in the dead-letter file. Classification lives here, once,
//! so the three agree; nothing here calls anything.

use std::fmt;
use std::time::Duration;

/// Most bytes of an error response's body quoted in a [`CallError`]'s message.
const BODY_EXCERPT: usize = 200;

/// What went wrong, coarse enough to branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// An attempt outlasted the stage's timeout. Retryable.
    Timeout,
    /// The connection could not be made, or broke before a whole response
    /// arrived. Retryable.
    Connect,
    /// The service answered with this non-2xx status. Retryable for 429 and
    /// 5xx; other statuses (404, 400) will answer the same again.
    Status(u16),
    /// The circuit breaker is open: no attempt was made, or retrying stopped
    /// when it opened. Not retryable now; the service is failing.
    BreakerOpen,
    /// Anything else: an invalid URL, a response that could not be read.
    /// Not retryable.
    Other,
}

impl ErrorKind {
    /// Whether another attempt may succeed: timeouts, connection failures,
    /// HTTP 429 and 5xx. The same classification makes an attempt a failure
    /// for the circuit breaker.
    pub fn retryable(&self) -> bool {
        matches!(self, ErrorKind::Timeout | ErrorKind::Connect | ErrorKind::Status(429 | 500..=599))
    }
}

/// A request that did not produce a body, after retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError {
    /// What went wrong (the last attempt's failure, or the open breaker).
    pub kind: ErrorKind,
    /// HTTP attempts made; 0 when the breaker rejected the request outright or
    /// the URL was invalid.
    pub attempts: u32,
    /// For people: `HTTP 503 after 4 attempts: <first 200 bytes of the body>`,
    /// `timed out after 50ms (3 attempts)`, `circuit open`.
    pub message: String,
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CallError {}

impl CallError {
    /// The URL could not be parsed; no attempt was made.
    pub(crate) fn invalid_url(url: &str, error: impl fmt::Display) -> Self {
        CallError { kind: ErrorKind::Other, attempts: 0, message: format!("invalid URL {url:?}: {error}") }
    }

    /// The breaker rejected the request. `last` is the previous attempt's
    /// failure when the breaker opened between retries: its message is kept,
    /// followed by `; circuit open`.
    pub(crate) fn circuit_open(last: Option<&Failure>, attempts: u32) -> Self {
        let message = match last {
            None => "circuit open".to_owned(),
            Some(failure) => format!("{}; circuit open", failure.describe(attempts)),
        };
        CallError { kind: ErrorKind::BreakerOpen, attempts, message }
    }

    /// The task running the request ended without an outcome (it panicked,
    /// or the runtime shut down).
    pub(crate) fn task_lost(error: impl fmt::Display) -> Self {
        CallError {
            kind: ErrorKind::Other,
            attempts: 0,
            message: format!("enrichment task ended without an outcome: {error}"),
        }
    }
}

/// How one attempt failed, with the detail its message needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Outlasted this timeout.
    Timeout(Duration),
    /// The connection failed; the cause chain.
    Connect(String),
    /// A non-2xx status and the start of its body.
    Status(u16, String),
    /// Anything else; the cause chain.
    Other(String),
}

impl Failure {
    /// Classifies a client error (one that is not our timeout).
    pub(crate) fn from_reqwest(error: reqwest::Error) -> Self {
        // The URL may carry credentials in its query; the caller knows it anyway.
        let error = error.without_url();
        let detail = cause_chain(&error);
        if error.is_connect() || error.is_request() || error.is_body() {
            Failure::Connect(detail)
        } else if error.is_timeout() {
            Failure::Other(format!("client timeout: {detail}"))
        } else {
            Failure::Other(detail)
        }
    }

    /// A non-2xx response.
    pub(crate) fn status(status: u16, body: &[u8]) -> Self {
        Failure::Status(status, excerpt(body))
    }

    /// The kind callers branch on.
    pub(crate) fn kind(&self) -> ErrorKind {
        match self {
            Failure::Timeout(_) => ErrorKind::Timeout,
            Failure::Connect(_) => ErrorKind::Connect,
            Failure::Status(code, _) => ErrorKind::Status(*code),
            Failure::Other(_) => ErrorKind::Other,
        }
    }

    /// The message after `attempts` attempts, the last of which failed so.
    pub(crate) fn describe(&self, attempts: u32) -> String {
        let n = Plural(attempts);
        match self {
            Failure::Timeout(limit) => format!("timed out after {limit:?} ({n})"),
            Failure::Connect(detail) => format!("connection failed ({n}): {detail}"),
            Failure::Status(code, body) if body.is_empty() => format!("HTTP {code} after {n}"),
            Failure::Status(code, body) => format!("HTTP {code} after {n}: {body}"),
            Failure::Other(detail) => format!("{detail} ({n})"),
        }
    }

    /// The request's error after `attempts` attempts.
    pub(crate) fn into_error(self, attempts: u32) -> CallError {
        CallError { kind: self.kind(), attempts, message: self.describe(attempts) }
    }
}

/// `1 attempt`, `3 attempts`.
struct Plural(u32);

impl fmt::Display for Plural {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = if self.0 == 1 { "" } else { "s" };
        write!(f, "{} attempt{s}", self.0)
    }
}

/// An error and its sources, `outer: inner: root`.
fn cause_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The first [`BODY_EXCERPT`] bytes of a body as text, cut at a character
/// boundary, trimmed.
fn excerpt(body: &[u8]) -> String {
    let head = &body[..body.len().min(BODY_EXCERPT)];
    let head = match std::str::from_utf8(head) {
        // A character cut in two at the end: drop its first bytes.
        Err(e) if e.error_len().is_none() => &head[..e.valid_up_to()],
        _ => head,
    };
    String::from_utf8_lossy(head).trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_connect_429_and_5xx_are_retryable_other_statuses_are_not() {
        for kind in [ErrorKind::Timeout, ErrorKind::Connect, ErrorKind::Status(429)] {
            assert!(kind.retryable(), "{kind:?}");
        }
        for code in [500, 502, 503, 504, 599] {
            assert!(ErrorKind::Status(code).retryable(), "{code}");
        }
        for kind in [ErrorKind::BreakerOpen, ErrorKind::Other] {
            assert!(!kind.retryable(), "{kind:?}");
        }
        for code in [200, 301, 400, 401, 403, 404, 409, 422, 600] {
            assert!(!ErrorKind::Status(code).retryable(), "{code}");
        }
    }

    #[test]
    fn messages_name_the_cause_and_the_attempts() {
        let e = Failure::status(503, b"  overloaded\n").into_error(4);
        assert_eq!(e.to_string(), "HTTP 503 after 4 attempts: overloaded");
        assert_eq!(e.kind, ErrorKind::Status(503));
        let e = Failure::status(404, b"").into_error(1);
        assert_eq!(e.to_string(), "HTTP 404 after 1 attempt");
        let e = Failure::Timeout(Duration::from_millis(50)).into_error(3);
        assert_eq!(e.to_string(), "timed out after 50ms (3 attempts)");
        assert_eq!(CallError::circuit_open(None, 0).to_string(), "circuit open");
        let last = Failure::status(500, b"boom");
        let e = CallError::circuit_open(Some(&last), 2);
        assert_eq!(e.to_string(), "HTTP 500 after 2 attempts: boom; circuit open");
        assert_eq!((e.kind, e.attempts), (ErrorKind::BreakerOpen, 2));
    }

    #[test]
    fn body_excerpt_is_at_most_200_bytes_and_whole_characters() {
        let long = "é".repeat(150); // 300 bytes; byte 200 falls inside no character
        assert_eq!(excerpt(long.as_bytes()), "é".repeat(100));
        let odd = format!("a{}", "é".repeat(150)); // byte 200 splits a character
        assert_eq!(excerpt(odd.as_bytes()), format!("a{}", "é".repeat(99)));
        assert_eq!(excerpt(&[0xff, b'x']), "\u{fffd}x");
    }
}
