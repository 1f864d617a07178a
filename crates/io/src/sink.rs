//! Sink writers: files and stdout, fed whole buffers of formatted rows.
//!
//! Rows are formatted by the engine; a writer only appends bytes, flushes
//! when asked (periodically for live jobs, at the end for bounded ones) and
//! reports failures with the sink's name. The dead-letter sink is a file
//! sink like any other.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{IoError, Result};

/// Where a sink writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A file, created or truncated at start.
    File(PathBuf),
    /// Standard output.
    Stdout,
}

/// An open sink.
pub struct SinkWriter {
    name: String,
    out: BufWriter<Box<dyn Write + Send>>,
    rows: u64,
    bytes: u64,
}

impl SinkWriter {
    /// Opens `target` for the sink `name`; missing parent directories are created.
    pub fn open(name: &str, target: &Target) -> Result<Self> {
        let out: Box<dyn Write + Send> = match target {
            Target::Stdout => Box::new(std::io::stdout()),
            Target::File(path) => Box::new(create(path)?),
        };
        Ok(Self { name: name.to_owned(), out: BufWriter::with_capacity(1 << 18, out), rows: 0, bytes: 0 })
    }

    /// Appends formatted rows.
    pub fn write(&mut self, data: &[u8], rows: u64) -> Result<()> {
        self.out.write_all(data).map_err(|source| IoError::Write { name: self.name.clone(), source })?;
        self.rows += rows;
        self.bytes += data.len() as u64;
        Ok(())
    }

    /// Flushes buffered bytes to the target.
    pub fn flush(&mut self) -> Result<()> {
        self.out.flush().map_err(|source| IoError::Write { name: self.name.clone(), source })
    }

    /// The sink's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

fn create(path: &Path) -> Result<File> {
    let err = |source| IoError::Create { path: path.to_owned(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    File::create(path).map_err(err)
}
