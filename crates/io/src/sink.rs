//! Sink writers: files, stdout and Kafka topics, fed whole buffers of formatted rows.
//!
//! Rows are formatted by the engine; a writer only appends bytes (or, for
//! Kafka, produces one record per row), flushes when asked (periodically for
//! live jobs, at the end for bounded ones) and reports failures with the
//! sink's name. The dead-letter sink is a sink like any other.

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
    /// A Kafka topic.
    Kafka(crate::kafka::sink::KafkaSinkConfig),
}

/// Where an open sink's bytes go.
enum Out {
    /// A file or stdout, buffered; the file again for fsync (none for stdout).
    Bytes(BufWriter<Box<dyn Write + Send>>, Option<File>),
    /// Records of a Kafka topic.
    Kafka(Box<crate::kafka::sink::KafkaSink>),
}

/// An open sink.
pub struct SinkWriter {
    name: String,
    out: Out,
    rows: u64,
    bytes: u64,
    /// Length the file had when it was opened (resumed sinks).
    base: u64,
}

impl SinkWriter {
    /// Opens `target` for the sink `name`, empty; missing parent directories are created.
    pub fn open(name: &str, target: &Target) -> Result<Self> {
        Self::open_at(name, target, None)
    }

    /// Opens `target` keeping its first `committed` bytes (recovery: what a
    /// checkpoint covered) and dropping the rest; `None` starts it empty.
    pub fn open_at(name: &str, target: &Target, committed: Option<u64>) -> Result<Self> {
        Self::open_with(name, target, committed, std::sync::Arc::new(|| false))
    }

    /// As [`Self::open_at`]; a Kafka sink waits for its topic, and later for
    /// room in its queue and for acknowledgements, until `stop()`.
    pub fn open_with(name: &str, target: &Target, committed: Option<u64>, stop: crate::kafka::Stop) -> Result<Self> {
        let (out, file, base): (Box<dyn Write + Send>, _, _) = match target {
            Target::Kafka(config) => {
                // Rows after the checkpoint are produced again, with the same keys
                // (and, in a repartition topic, the same numbers).
                let mut sink = crate::kafka::sink::KafkaSink::open(name, config, stop)?;
                let base = committed.unwrap_or(0);
                sink.resume_at(base);
                let out = Out::Kafka(Box::new(sink));
                return Ok(Self { name: name.to_owned(), out, rows: 0, bytes: 0, base });
            }
            Target::Stdout => (Box::new(std::io::stdout()), None, 0),
            Target::File(path) => {
                let f = match committed {
                    None => create(path)?,
                    Some(len) => resume(path, len)?,
                };
                let sync = f.try_clone().map_err(|source| IoError::Create { path: path.clone(), source })?;
                (Box::new(f), Some(sync), committed.unwrap_or(0))
            }
        };
        let out = Out::Bytes(BufWriter::with_capacity(1 << 18, out), file);
        Ok(Self { name: name.to_owned(), out, rows: 0, bytes: 0, base })
    }

    /// Flushes and fsyncs the data (a checkpoint's commit point).
    pub fn sync(&mut self) -> Result<()> {
        self.flush()?;
        match &mut self.out {
            Out::Bytes(_, Some(f)) => {
                f.sync_data().map_err(|source| IoError::Write { name: self.name.clone(), source })?;
            }
            Out::Bytes(_, None) => {}
            Out::Kafka(k) => k.sync()?,
        }
        Ok(())
    }

    /// Where the target stands, including what it had when resumed: a
    /// file's length in bytes, a topic's records written (the checkpoint's `sinks`).
    pub fn position(&self) -> u64 {
        match self.out {
            // A topic's position is its records: the next one's number.
            Out::Kafka(_) => self.base + self.rows,
            Out::Bytes(..) => self.base + self.bytes,
        }
    }

    /// Appends formatted rows.
    pub fn write(&mut self, data: &[u8], rows: u64) -> Result<()> {
        match &mut self.out {
            Out::Bytes(out, _) => {
                out.write_all(data).map_err(|source| IoError::Write { name: self.name.clone(), source })?
            }
            Out::Kafka(k) => k.write(data)?,
        }
        self.rows += rows;
        self.bytes += data.len() as u64;
        Ok(())
    }

    /// Passes a forget on where the sink carries it further: a group's
    /// repartition topic (a forget marker, one more record). Other sinks
    /// have nothing to do.
    pub fn forget(&mut self, forget: &freshet_engine::record::Forget) -> Result<()> {
        if let Out::Kafka(k) = &mut self.out
            && k.forget(forget)?
        {
            self.rows += 1;
        }
        Ok(())
    }

    /// Flushes buffered bytes to the target.
    pub fn flush(&mut self) -> Result<()> {
        match &mut self.out {
            Out::Bytes(out, _) => out.flush().map_err(|source| IoError::Write { name: self.name.clone(), source }),
            // Records leave as librdkafka batches them; `sync` waits for their acknowledgement.
            Out::Kafka(k) => k.serve(),
        }
    }

    /// Flushes at the end of a job: a Kafka sink waits for every
    /// acknowledgement (and commits its open transaction).
    pub fn finish(&mut self) -> Result<()> {
        match &mut self.out {
            Out::Bytes(..) => self.flush(),
            Out::Kafka(k) => k.sync(),
        }
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

fn resume(path: &Path, len: u64) -> Result<File> {
    use std::io::{Seek, SeekFrom};
    let err = |source| IoError::Create { path: path.to_owned(), source };
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(path).map_err(err)?;
    f.set_len(len).map_err(err)?;
    f.seek(SeekFrom::End(0)).map_err(err)?;
    Ok(f)
}

fn create(path: &Path) -> Result<File> {
    let err = |source| IoError::Create { path: path.to_owned(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    File::create(path).map_err(err)
}
