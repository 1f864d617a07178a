//! The file source: NDJSON (optionally gzip) read in large blocks and cut into
//! chunks of whole lines, with line offsets.
//!
//! Blocks are read with `read` into a fresh buffer (as fast as `mmap` here,
//! and it keeps RSS honest: shared PERFORMANCE.md). A line longer than the
//! maximum event size is never buffered whole: its first bytes are kept for
//! the dead-letter record and the rest is skipped, so a 10 MiB line costs a
//! scan, not memory. The source is bounded: the last chunk says so.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use freshet_engine::decode::{Chunk, Oversized};

use crate::error::{IoError, Result};

/// Bytes of an oversized line kept for its dead-letter record.
pub(crate) const OVERSIZED_PREFIX: usize = 4096;

/// Reads one file as chunks of lines.
pub struct FileSource {
    path: PathBuf,
    reader: Box<dyn Read + Send>,
    block: usize,
    max_line: usize,
    carry: Vec<u8>,
    offset: u64,
    /// Bytes read from the (decompressed) stream so far.
    read_bytes: u64,
    pending_oversized: Vec<Oversized>,
    done: bool,
}

impl FileSource {
    /// Opens `path`; gzip is detected by its magic bytes. `block` is the read
    /// size, `max_line` the longest line buffered whole.
    pub fn open(path: &Path, block: usize, max_line: usize) -> Result<Self> {
        let open = |p: &Path| File::open(p).map_err(|source| IoError::Open { path: p.to_owned(), source });
        let mut f = open(path)?;
        let mut magic = [0u8; 2];
        let n = f.read(&mut magic).map_err(|source| IoError::Read { path: path.to_owned(), source })?;
        let f = open(path)?;
        let reader: Box<dyn Read + Send> = if n == 2 && magic == [0x1f, 0x8b] {
            Box::new(MultiGzDecoder::new(BufReader::with_capacity(1 << 16, f)))
        } else {
            Box::new(f)
        };
        Ok(Self::from_reader(path.to_owned(), reader, block, max_line))
    }

    /// Opens `path` to resume at byte `position` (a chunk's `end_position`),
    /// whose first line has offset `line`. Plain files seek; gzip files are
    /// decompressed and skipped up to the position.
    pub fn open_at(path: &Path, block: usize, max_line: usize, position: u64, line: u64) -> Result<Self> {
        let mut src = Self::open(path, block, max_line)?;
        let mut skipped = 0u64;
        let mut sink = vec![0u8; 1 << 16];
        while skipped < position {
            let want = (position - skipped).min(sink.len() as u64) as usize;
            let n =
                src.reader.read(&mut sink[..want]).map_err(|source| IoError::Read { path: path.to_owned(), source })?;
            if n == 0 {
                return Err(IoError::Read {
                    path: path.to_owned(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "resume position beyond the end of the file",
                    ),
                });
            }
            skipped += n as u64;
        }
        src.read_bytes = position;
        src.offset = line;
        Ok(src)
    }

    /// A source over any reader (tests, stdin).
    pub fn from_reader(path: PathBuf, reader: Box<dyn Read + Send>, block: usize, max_line: usize) -> Self {
        Self {
            path,
            reader,
            block: block.max(4096),
            max_line: max_line.max(1),
            carry: Vec::new(),
            offset: 0,
            read_bytes: 0,
            pending_oversized: Vec::new(),
            done: false,
        }
    }

    fn read_some(&mut self, buf: &mut Vec<u8>, want: usize) -> Result<usize> {
        let start = buf.len();
        buf.resize(start + want, 0);
        let n = loop {
            match self.reader.read(&mut buf[start..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    buf.truncate(start);
                    return Err(IoError::Read { path: self.path.clone(), source });
                }
            }
        };
        buf.truncate(start + n);
        self.read_bytes += n as u64;
        Ok(n)
    }

    /// Skips the rest of an oversized line whose first `seen` bytes are in
    /// `prefix`; returns the bytes after its newline.
    fn skip_oversized(&mut self, mut prefix: Vec<u8>) -> Result<Vec<u8>> {
        let mut len = prefix.len() as u64;
        prefix.truncate(OVERSIZED_PREFIX);
        let mut block = Vec::with_capacity(self.block);
        loop {
            block.clear();
            if self.read_some(&mut block, self.block)? == 0 {
                self.done = true;
                self.pending_oversized.push(Oversized { offset: self.offset, len, prefix });
                self.offset += 1;
                return Ok(Vec::new());
            }
            if let Some(i) = memchr::memchr(b'\n', &block) {
                len += i as u64;
                self.pending_oversized.push(Oversized { offset: self.offset, len, prefix });
                self.offset += 1;
                return Ok(block[i + 1..].to_vec());
            }
            len += block.len() as u64;
        }
    }

    /// The next chunk, or `None` after the last one (which has `end_of_partition`).
    ///
    /// An oversized line can only begin a chunk (a chunk is cut at its last
    /// newline, so a line without one is the carry), hence the chunk's lines
    /// are: its oversized lines, then the lines of `data`.
    pub fn next_chunk(&mut self) -> Result<Option<Chunk>> {
        if self.done && self.carry.is_empty() {
            return Ok(None);
        }
        let first_offset = self.offset;
        let mut data = std::mem::take(&mut self.carry);
        data.reserve(self.block);
        let mut oversized = Vec::new();
        loop {
            if !self.done && self.read_some(&mut data, self.block)? == 0 {
                self.done = true;
            }
            match memchr::memrchr(b'\n', &data) {
                Some(i) => {
                    self.carry = data[i + 1..].to_vec();
                    data.truncate(i + 1);
                    break;
                }
                None if self.done => break,
                None if data.len() > self.max_line => {
                    // A line too long to keep: set it aside and continue after it.
                    data = self.skip_oversized(std::mem::take(&mut data))?;
                    oversized.append(&mut self.pending_oversized);
                    if self.done && data.is_empty() {
                        break;
                    }
                }
                None => {}
            }
        }
        let unterminated = u64::from(data.last().is_some_and(|&b| b != b'\n'));
        let lines = memchr::memchr_iter(b'\n', &data).count() as u64 + unterminated;
        self.offset = first_offset + oversized.len() as u64 + lines;
        Ok(Some(Chunk {
            source: 0,
            partition: 0,
            first_offset,
            data,
            oversized,
            ingest_ms: 0,
            ingest_us: 0,
            end_of_partition: self.done && self.carry.is_empty(),
            end_position: self.read_bytes - self.carry.len() as u64,
            end_offset: self.offset,
            forget: None,
            watermark: None,
            idle: false,
        }))
    }
}
