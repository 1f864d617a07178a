//! Checkpoints on local disk: what a complete checkpoint holds, how it is
//! written atomically, and how the last good one is found at start.
//!
//! A checkpoint is complete when every shard has snapshotted at barrier `n`
//! and the writer has flushed and synced every sink up to it. It records the
//! sources' positions (where to resume), each shard's state, and each sink's
//! committed position (recovery truncates a file sink there, so rows written after
//! the checkpoint are written again exactly once). The file is
//! `magic | format version | payload length | CRC-32 | postcard payload`,
//! written to a temp file, fsynced, renamed, and the directory fsynced; the
//! last `keep` are kept. A file that fails its checks is reported and skipped
//! for the previous one; a checkpoint of another pipeline is refused.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 8] = b"FRSHCKPT";
/// Version of the checkpoint file layout (2 added lookup tables, 3 Kafka
/// partition offsets; files of versions 1 and 2 are still read).
pub const FORMAT_VERSION: u32 = 3;

/// Where a source stands at a barrier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcePosition {
    /// Byte position of the next line (file sources).
    pub position: u64,
    /// Offset (line number) of the next line.
    pub line: u64,
    /// Whether the source had ended.
    pub finished: bool,
    /// Kafka sources: the next offset of each partition read so far.
    pub partitions: Vec<(u32, u64)>,
}

impl SourcePosition {
    /// The start of a source.
    pub fn start() -> Self {
        Self { position: 0, line: 0, finished: false, partitions: Vec::new() }
    }

    /// Moves past `chunk` (of this source).
    pub fn advance(&mut self, chunk: &freshet_engine::decode::Chunk, partitioned: bool) {
        if partitioned {
            match self.partitions.iter_mut().find(|(p, _)| *p == chunk.partition) {
                Some((_, next)) => *next = chunk.end_offset,
                None => self.partitions.push((chunk.partition, chunk.end_offset)),
            }
        } else {
            *self = Self {
                position: chunk.end_position,
                line: chunk.end_offset,
                finished: chunk.end_of_partition,
                partitions: Vec::new(),
            };
        }
    }
}

/// A source position in format versions 1 and 2 (no partitions).
#[derive(Deserialize)]
struct SourcePositionV2 {
    position: u64,
    line: u64,
    finished: bool,
}

impl From<SourcePositionV2> for SourcePosition {
    fn from(p: SourcePositionV2) -> Self {
        Self { position: p.position, line: p.line, finished: p.finished, partitions: Vec::new() }
    }
}

/// One complete checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Its number, increasing.
    pub id: u64,
    /// Describes the pipeline that wrote it; restore refuses another.
    pub fingerprint: String,
    /// Per source (in plan order).
    pub sources: Vec<SourcePosition>,
    /// Per shard, the engine's snapshot bytes.
    #[serde(with = "byte_blocks")]
    pub shards: Vec<Vec<u8>>,
    /// Per sink (in plan order), its committed position: a file's length in
    /// bytes, a Kafka topic's records written.
    pub sinks: Vec<u64>,
    /// The lookup tables' snapshot (empty without tables).
    #[serde(with = "serde_bytes")]
    pub tables: Vec<u8>,
}

/// Snapshot bytes encoded as byte blocks: postcard writes the same bytes as
/// for a `Vec<Vec<u8>>` (lengths, then bytes) but copies each block at once
/// instead of serialising it byte by byte.
mod byte_blocks {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    pub fn serialize<S: Serializer>(blocks: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(blocks.iter().map(|b| Bytes::new(b)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        Ok(Vec::<ByteBuf>::deserialize(d)?.into_iter().map(ByteBuf::into_vec).collect())
    }
}

/// The layout of format version 1 (no tables).
#[derive(Deserialize)]
struct CheckpointV1 {
    id: u64,
    fingerprint: String,
    sources: Vec<SourcePositionV2>,
    #[serde(with = "byte_blocks")]
    shards: Vec<Vec<u8>>,
    sinks: Vec<u64>,
}

/// The layout of format version 2 (no partition offsets).
#[derive(Deserialize)]
struct CheckpointV2 {
    id: u64,
    fingerprint: String,
    sources: Vec<SourcePositionV2>,
    #[serde(with = "byte_blocks")]
    shards: Vec<Vec<u8>>,
    sinks: Vec<u64>,
    #[serde(with = "serde_bytes")]
    tables: Vec<u8>,
}

/// The checkpoint directory.
pub struct Store {
    dir: PathBuf,
    keep: usize,
}

fn file_name(id: u64) -> String {
    format!("checkpoint-{id:020}.bin")
}

impl Store {
    /// Opens (creating) `data_dir/checkpoints`.
    pub fn open(data_dir: &Path, keep: usize) -> Result<Store> {
        let dir = data_dir.join("checkpoints");
        fs::create_dir_all(&dir).with_context(|| format!("creating checkpoint directory {}", dir.display()))?;
        Ok(Store { dir, keep: keep.max(1) })
    }

    /// How many complete checkpoints are kept.
    pub fn keep(&self) -> usize {
        self.keep
    }

    /// Removes every checkpoint (`--reset-state`).
    pub fn reset(&self) -> Result<()> {
        for (_, path) in self.list()? {
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        Ok(())
    }

    fn list(&self) -> Result<Vec<(u64, PathBuf)>> {
        let mut found = Vec::new();
        for entry in fs::read_dir(&self.dir).with_context(|| format!("reading {}", self.dir.display()))? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if let Some(id) = name.strip_prefix("checkpoint-").and_then(|r| r.strip_suffix(".bin")) {
                if let Ok(id) = id.parse::<u64>() {
                    found.push((id, path));
                }
            } else if name.ends_with(".tmp") {
                // A write that never completed.
                let _ = fs::remove_file(&path);
            }
        }
        found.sort_unstable_by_key(|(id, _)| std::cmp::Reverse(*id));
        Ok(found)
    }

    /// Whether it holds no checkpoint at all.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.list()?.is_empty())
    }

    /// Writes `cp` atomically and drops the oldest beyond `keep`; returns its size.
    pub fn write(&self, cp: &Checkpoint) -> Result<u64> {
        // The payload is encoded after room for the header, which is then filled in.
        let size = 24 + cp.shards.iter().chain([&cp.tables]).map(|b| b.len() + 10).sum::<usize>() + 4096;
        let mut bytes = Vec::with_capacity(size);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes.resize(24, 0);
        let mut bytes = postcard::to_extend(cp, bytes).context("encoding checkpoint")?;
        let payload_len = (bytes.len() - 24) as u64;
        let crc = crc32fast::hash(&bytes[24..]);
        bytes[12..20].copy_from_slice(&payload_len.to_le_bytes());
        bytes[20..24].copy_from_slice(&crc.to_le_bytes());
        let path = self.dir.join(file_name(cp.id));
        let tmp = path.with_extension("bin.tmp");
        let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(&bytes).with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all().with_context(|| format!("syncing {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("publishing {}", path.display()))?;
        File::open(&self.dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", self.dir.display()))?;
        for (_, old) in self.list()?.into_iter().skip(self.keep) {
            let _ = fs::remove_file(old);
        }
        Ok(bytes.len() as u64)
    }

    /// The newest checkpoint that passes its checks, skipping (and reporting) bad ones.
    pub fn latest(&self, fingerprint: &str) -> Result<Option<Checkpoint>> {
        for (id, path) in self.list()? {
            match read(&path) {
                Ok(cp) if cp.fingerprint == fingerprint => return Ok(Some(cp)),
                Ok(cp) => bail!(
                    "{} holds the state of another pipeline (checkpoint {id}):\n  it was: {}\n  it is:  {}\n\
                     Run with the old config, use another --data-dir, or pass --reset-state to start over.",
                    self.dir.display(),
                    cp.fingerprint,
                    fingerprint
                ),
                Err(e) => {
                    tracing::warn!(checkpoint = %path.display(), error = %format!("{e:#}"), "Checkpoint is corrupt; falling back to the previous one.");
                }
            }
        }
        Ok(None)
    }
}

/// Reads and checks one checkpoint file.
fn read(path: &Path) -> Result<Checkpoint> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    decode(&bytes)
}

/// Checks and decodes the bytes of a checkpoint file (header, length,
/// checksum, payload). Any bytes give a checkpoint or an error, never a panic.
pub fn decode(bytes: &[u8]) -> Result<Checkpoint> {
    if bytes.len() < 24 || &bytes[..8] != MAGIC {
        bail!("not a checkpoint file (bad magic or truncated header)");
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into()?);
    if !(1..=FORMAT_VERSION).contains(&version) {
        bail!(
            "format version {version}, this build reads {FORMAT_VERSION}; run the version that wrote it or --reset-state"
        );
    }
    let len = u64::from_le_bytes(bytes[12..20].try_into()?);
    let crc = u32::from_le_bytes(bytes[20..24].try_into()?);
    let payload = usize::try_from(len)
        .ok()
        .and_then(|len| bytes.get(24..).and_then(|rest| rest.get(..len)))
        .context("truncated payload")?;
    if crc32fast::hash(payload) != crc {
        bail!("checksum mismatch");
    }
    if version == 1 {
        let v1: CheckpointV1 = postcard::from_bytes(payload).context("invalid payload")?;
        let CheckpointV1 { id, fingerprint, sources, shards, sinks } = v1;
        let sources = sources.into_iter().map(SourcePosition::from).collect();
        return Ok(Checkpoint { id, fingerprint, sources, shards, sinks, tables: Vec::new() });
    }
    if version == 2 {
        let v2: CheckpointV2 = postcard::from_bytes(payload).context("invalid payload")?;
        let CheckpointV2 { id, fingerprint, sources, shards, sinks, tables } = v2;
        let sources = sources.into_iter().map(SourcePosition::from).collect();
        return Ok(Checkpoint { id, fingerprint, sources, shards, sinks, tables });
    }
    postcard::from_bytes(payload).context("invalid payload")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp(id: u64) -> Checkpoint {
        Checkpoint {
            id,
            fingerprint: "p".into(),
            sources: vec![
                SourcePosition { position: 10 * id, line: id, finished: false, partitions: Vec::new() },
                SourcePosition { position: 0, line: 0, finished: false, partitions: vec![(0, id), (3, 7 * id)] },
            ],
            shards: vec![vec![1, 2, 3], vec![]],
            tables: vec![],
            sinks: vec![42],
        }
    }

    #[test]
    fn writes_atomically_keeps_the_last_k_and_reads_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 2).unwrap();
        assert_eq!(store.latest("p").unwrap(), None);
        for id in 1..=4 {
            store.write(&cp(id)).unwrap();
        }
        assert_eq!(store.list().unwrap().len(), 2);
        assert_eq!(store.latest("p").unwrap(), Some(cp(4)));
    }

    /// Byte blocks encode as plain byte vectors did, so files written before
    /// `serde_bytes` read back unchanged (and the other way round).
    #[test]
    fn byte_blocks_encode_as_byte_vectors() {
        #[derive(Serialize)]
        struct Plain {
            id: u64,
            fingerprint: String,
            sources: Vec<SourcePosition>,
            shards: Vec<Vec<u8>>,
            sinks: Vec<u64>,
            tables: Vec<u8>,
        }
        let mut c = cp(3);
        c.shards = vec![(0..=255).collect(), vec![], vec![7; 300]];
        c.tables = vec![9; 200];
        let plain = Plain {
            id: c.id,
            fingerprint: c.fingerprint.clone(),
            sources: c.sources.clone(),
            shards: c.shards.clone(),
            sinks: c.sinks.clone(),
            tables: c.tables.clone(),
        };
        let bytes = postcard::to_stdvec(&plain).unwrap();
        assert_eq!(postcard::to_stdvec(&c).unwrap(), bytes);
        assert_eq!(postcard::from_bytes::<Checkpoint>(&bytes).unwrap(), c);
    }

    /// Checkpoints written before Kafka sources (format 2) are still restored.
    #[test]
    fn format_2_files_are_read_with_no_partition_offsets() {
        #[derive(Serialize)]
        struct V2 {
            id: u64,
            fingerprint: String,
            sources: Vec<(u64, u64, bool)>,
            shards: Vec<Vec<u8>>,
            sinks: Vec<u64>,
            tables: Vec<u8>,
        }
        let payload = postcard::to_stdvec(&V2 {
            id: 9,
            fingerprint: "p".into(),
            sources: vec![(120, 12, true)],
            shards: vec![vec![1]],
            sinks: vec![5],
            tables: vec![7],
        })
        .unwrap();
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&2u32.to_le_bytes());
        bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        let cp = decode(&bytes).unwrap();
        assert_eq!(cp.sources, vec![SourcePosition { position: 120, line: 12, finished: true, partitions: vec![] }]);
        assert_eq!((cp.id, cp.tables, cp.sinks), (9, vec![7], vec![5]));
    }

    /// Found by fuzzing (checkpoint target): a header length near
    /// `u64::MAX` overflowed `24 + len` (a panic in debug builds).
    #[test]
    fn header_lengths_beyond_the_file_are_truncation_not_overflow() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1).unwrap();
        store.write(&cp(1)).unwrap();
        let bytes = fs::read(store.dir.join(file_name(1))).unwrap();
        assert_eq!(decode(&bytes).unwrap(), cp(1));
        for len in [u64::MAX, u64::MAX - 23, bytes.len() as u64] {
            let mut bad = bytes.clone();
            bad[12..20].copy_from_slice(&len.to_le_bytes());
            assert_eq!(decode(&bad).unwrap_err().to_string(), "truncated payload");
        }
    }

    #[test]
    fn corrupt_newest_falls_back_and_foreign_pipelines_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 3).unwrap();
        store.write(&cp(1)).unwrap();
        store.write(&cp(2)).unwrap();
        let newest = store.dir.join(file_name(2));
        let mut bytes = fs::read(&newest).unwrap();
        let mid = bytes.len() - 3;
        bytes[mid] ^= 0xff;
        fs::write(&newest, bytes).unwrap();
        assert_eq!(store.latest("p").unwrap(), Some(cp(1)));
        let err = store.latest("other").unwrap_err().to_string();
        assert!(err.contains("another pipeline") && err.contains("--reset-state"), "{err}");
        store.reset().unwrap();
        assert_eq!(store.latest("p").unwrap(), None);
    }
}
