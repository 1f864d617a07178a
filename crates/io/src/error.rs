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
}

impl IoError {
    /// The error's domain.
    pub fn domain(&self) -> Domain {
        match self {
            IoError::Open { .. } | IoError::Create { .. } => Domain::User,
            IoError::Read { .. } | IoError::Write { .. } => Domain::External,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = IoError> = std::result::Result<T, E>;
