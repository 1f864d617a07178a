//! Errors of the I/O edges, with the domain that tells a caller whether to
//! retry, fix its input, or report a bug.

use std::path::PathBuf;

/// Who is at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    /// The user's input or configuration: fix it, do not retry.
    User,
    /// Something outside the process (disk, network): retrying may help.
    External,
}

/// An I/O edge failed.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// A file could not be opened for reading. Check the path.
    #[error("cannot read {}: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file could not be created for writing. Check the directory and permissions.
    #[error("cannot write {}: {source}", path.display())]
    Create {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Reading failed midway (disk error, corrupt gzip). The job stops.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Writing failed (disk full). The job stops.
    #[error("writing {name}: {source}")]
    Write {
        /// The sink's name.
        name: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A component's configuration is invalid. Fix the configuration; every
    /// problem is listed with its key.
    #[error("invalid configuration of {component}: {problems}")]
    Config {
        /// The component, e.g. `enrichment stage geo`.
        component: String,
        /// Every problem found, `key: what is wrong`, joined with `; `.
        problems: String,
    },
    /// An HTTP client could not be built (system resources, the platform's
    /// network setup). Retrying the build may help; the config is not at fault.
    #[error("building the HTTP client of {component}: {source}")]
    HttpClient {
        /// The component, e.g. `enrichment stage geo`.
        component: String,
        /// The cause.
        source: reqwest::Error,
    },
    /// A Kafka client failed (brokers, topics, credentials, delivery).
    #[error("{component}: {message}")]
    Kafka {
        /// The component, e.g. `source events` or `sink results`.
        component: String,
        /// What failed, with librdkafka's reason.
        message: String,
    },
    /// The job was stopped while a component waited (a sink for room in its
    /// queue or for acknowledgements): nothing failed; what it had not
    /// written is written again after a restart from the last checkpoint.
    #[error("{component}: stopped while waiting for {waiting_for}")]
    Stopped {
        /// The component, e.g. `sink results`.
        component: String,
        /// What it waited for.
        waiting_for: String,
    },
}

impl IoError {
    /// The error's domain.
    pub fn domain(&self) -> Domain {
        match self {
            IoError::Open { .. } | IoError::Create { .. } | IoError::Config { .. } => Domain::User,
            IoError::Read { .. }
            | IoError::Write { .. }
            | IoError::HttpClient { .. }
            | IoError::Kafka { .. }
            | IoError::Stopped { .. } => Domain::External,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = IoError> = std::result::Result<T, E>;
