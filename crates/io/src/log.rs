//! The durable ingest log: an append-only, segmented file log that HTTP
//! ingest writes (and syncs) before it answers, and that the job replays
//! from a checkpoint's position after a restart.
//!
//! Layout: a directory of segment files named by the log position of their
//! first byte (`00000000000000000000.log`); a position is a byte offset in
//! the concatenation of all segments, so it stays valid when old segments
//! are deleted. A record is `length u32 LE | CRC-32 u32 LE | payload`; the
//! length's top bit marks a control record (an operation such as forgetting
//! a user, ordered with the events around it), and the CRC covers that bit
//! and the payload. A new segment starts once the active one passes the size
//! limit.
//!
//! Faults: a torn tail (the last records of the last segment cut short or
//! failing their checksum, as a crash mid-write leaves them) is cut off when
//! the log is opened for writing, and reported; such records were never
//! acknowledged when the writer syncs before answering. A record in the
//! middle that fails its checksum is handed to the reader as
//! [`Entry::Corrupt`], so it can be reported and quarantined while every
//! other record is still read. A length no segment could hold ends that
//! segment (the reader goes on with the next one).
//!
//! Hand-written because it is small, sits on the ingest path, and no crate
//! offers this exact contract (positions that survive segment deletion,
//! group commit by the caller, tail repair with a report).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Bytes before each payload: length and checksum.
pub const HEADER_BYTES: u64 = 8;

/// The largest payload a record may hold (larger lengths are corruption).
pub const MAX_RECORD_BYTES: u64 = 1 << 30;

/// The length field's bit that marks a control record.
const CONTROL_BIT: u32 = 1 << 31;

fn checksum(control: bool, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&[u8::from(control)]);
    h.update(payload);
    h.finalize()
}

const SUFFIX: &str = ".log";

/// What opening the log for writing found and repaired.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OpenReport {
    /// Segments present.
    pub segments: usize,
    /// Log position after the last good record.
    pub end: u64,
    /// Bytes cut from the last segment's torn tail.
    pub truncated_bytes: u64,
}

/// The writing end of the log.
pub struct LogWriter {
    dir: PathBuf,
    segment_bytes: u64,
    active: File,
    active_base: u64,
    end: u64,
    synced: u64,
    /// A new segment was created since the last sync (the directory needs syncing too).
    dir_dirty: bool,
}

impl LogWriter {
    /// Opens (creating) the log in `dir`, repairing a torn tail; segments roll
    /// over once they exceed `segment_bytes`.
    pub fn open(dir: &Path, segment_bytes: u64) -> io::Result<(LogWriter, OpenReport)> {
        fs::create_dir_all(dir)?;
        let segments = list_segments(dir)?;
        let mut report = OpenReport { segments: segments.len(), ..OpenReport::default() };
        let (active_base, active) = match segments.last() {
            Some(&(base, ref path)) => {
                let mut file = OpenOptions::new().read(true).write(true).open(path)?;
                let mut bytes = Vec::new();
                file.read_to_end(&mut bytes)?;
                let good = good_prefix(&bytes);
                if good < bytes.len() as u64 {
                    report.truncated_bytes = bytes.len() as u64 - good;
                    file.set_len(good)?;
                    file.sync_all()?;
                }
                file.seek(SeekFrom::Start(good))?;
                report.end = base + good;
                (base, file)
            }
            None => {
                let file = create_segment(dir, 0)?;
                report.segments = 1;
                (0, file)
            }
        };
        let end = report.end;
        let writer = LogWriter {
            dir: dir.to_path_buf(),
            segment_bytes: segment_bytes.max(HEADER_BYTES + 1),
            active,
            active_base,
            end,
            synced: end,
            dir_dirty: true,
        };
        Ok((writer, report))
    }

    /// Appends one data record; returns the log position after it. Not
    /// durable until [`LogWriter::sync`].
    pub fn append(&mut self, payload: &[u8]) -> io::Result<u64> {
        self.append_record(false, payload)
    }

    /// Appends one control record; returns the log position after it.
    pub fn append_control(&mut self, payload: &[u8]) -> io::Result<u64> {
        self.append_record(true, payload)
    }

    fn append_record(&mut self, control: bool, payload: &[u8]) -> io::Result<u64> {
        if payload.len() as u64 > MAX_RECORD_BYTES {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "record larger than 1 GiB"));
        }
        if self.end > self.active_base && self.end - self.active_base >= self.segment_bytes {
            self.roll()?;
        }
        let mut header = [0u8; HEADER_BYTES as usize];
        let len = payload.len() as u32 | if control { CONTROL_BIT } else { 0 };
        header[..4].copy_from_slice(&len.to_le_bytes());
        header[4..].copy_from_slice(&checksum(control, payload).to_le_bytes());
        self.active.write_all(&header)?;
        self.active.write_all(payload)?;
        self.end += HEADER_BYTES + payload.len() as u64;
        Ok(self.end)
    }

    /// Makes every appended record durable (one `fdatasync` for all of them:
    /// callers batch concurrent requests into one sync).
    pub fn sync(&mut self) -> io::Result<()> {
        if self.synced == self.end && !self.dir_dirty {
            return Ok(());
        }
        self.active.sync_data()?;
        if self.dir_dirty {
            File::open(&self.dir)?.sync_all()?;
            self.dir_dirty = false;
        }
        self.synced = self.end;
        Ok(())
    }

    /// The position after the last appended record.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// The position up to which records are durable.
    pub fn synced(&self) -> u64 {
        self.synced
    }

    fn roll(&mut self) -> io::Result<()> {
        // The old segment must be durable before records land in the next one.
        self.active.sync_data()?;
        self.synced = self.end;
        self.active = create_segment(&self.dir, self.end)?;
        self.active_base = self.end;
        self.dir_dirty = true;
        Ok(())
    }
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A record that passed its checksum.
    Record {
        /// Its position.
        start: u64,
        /// The position after it.
        end: u64,
        /// Whether it is a control record.
        control: bool,
        /// The payload.
        payload: Vec<u8>,
    },
    /// Bytes that are not a good record: skipped, to be reported.
    Corrupt {
        /// Where they start.
        start: u64,
        /// Where reading resumes.
        end: u64,
        /// What is wrong.
        reason: String,
        /// The bytes (the payload as stored, when the length was plausible).
        raw: Vec<u8>,
    },
}

/// Reads records in order from a position on, across segments.
pub struct LogReader {
    segments: Vec<(u64, PathBuf)>,
    next_segment: usize,
    current: Option<(u64, Vec<u8>, usize)>,
    from: u64,
}

impl LogReader {
    /// Reads the log in `dir` from position `from` (which must be a record
    /// boundary, such as a checkpointed position). A position before the
    /// first segment (its records deleted) is an error.
    pub fn open(dir: &Path, from: u64) -> io::Result<LogReader> {
        let segments = if dir.exists() { list_segments(dir)? } else { Vec::new() };
        if let Some(&(first, _)) = segments.first()
            && from < first
        {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("log position {from} is before the oldest segment ({first}): its records were deleted"),
            ));
        }
        // Start at the last segment whose base is at or before `from`.
        let start = segments.iter().rposition(|(base, _)| *base <= from).unwrap_or(0);
        Ok(LogReader { segments, next_segment: start, current: None, from })
    }

    /// The next entry, or `None` at the end of the log.
    pub fn next_entry(&mut self) -> io::Result<Option<Entry>> {
        loop {
            if self.current.is_none() {
                let Some((base, path)) = self.segments.get(self.next_segment) else { return Ok(None) };
                let bytes = fs::read(path)?;
                let skip = self.from.saturating_sub(*base) as usize;
                self.current = Some((*base, bytes, skip));
                self.next_segment += 1;
            }
            let Some((base, bytes, at)) = &mut self.current else { continue };
            if *at >= bytes.len() {
                self.current = None;
                continue;
            }
            let start = *base + *at as u64;
            let rest = &bytes[*at..];
            let entry = match parse(rest) {
                Parsed::Good(len, control) => {
                    let payload = rest[HEADER_BYTES as usize..HEADER_BYTES as usize + len].to_vec();
                    *at += HEADER_BYTES as usize + len;
                    Entry::Record { start, end: *base + *at as u64, control, payload }
                }
                Parsed::BadChecksum(len) => {
                    let raw = rest[HEADER_BYTES as usize..HEADER_BYTES as usize + len].to_vec();
                    *at += HEADER_BYTES as usize + len;
                    Entry::Corrupt { start, end: *base + *at as u64, reason: "checksum mismatch".into(), raw }
                }
                Parsed::Cut => {
                    let raw = rest.to_vec();
                    *at = bytes.len();
                    let reason = "record cut short or length corrupt; rest of segment skipped".to_string();
                    Entry::Corrupt { start, end: *base + *at as u64, reason, raw }
                }
            };
            self.from = match &entry {
                Entry::Record { end, .. } | Entry::Corrupt { end, .. } => *end,
            };
            return Ok(Some(entry));
        }
    }
}

/// Deletes the segments whose records all end at or before `position` (the
/// active, last segment is never deleted). Returns how many were deleted.
pub fn remove_below(dir: &Path, position: u64) -> io::Result<usize> {
    let segments = list_segments(dir)?;
    let mut removed = 0;
    for pair in segments.windows(2) {
        let (next_base, path) = (pair[1].0, &pair[0].1);
        if next_base > position {
            break;
        }
        fs::remove_file(path)?;
        removed += 1;
    }
    Ok(removed)
}

/// Total bytes of the segments in `dir`.
pub fn disk_bytes(dir: &Path) -> io::Result<u64> {
    let mut total = 0;
    for (_, path) in list_segments(dir)? {
        total += fs::metadata(path)?.len();
    }
    Ok(total)
}

enum Parsed {
    Good(usize, bool),
    BadChecksum(usize),
    Cut,
}

fn parse(bytes: &[u8]) -> Parsed {
    if bytes.len() < HEADER_BYTES as usize {
        return Parsed::Cut;
    }
    let len_and_kind = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let (len, control) = ((len_and_kind & !CONTROL_BIT) as usize, len_and_kind & CONTROL_BIT != 0);
    let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    let body = HEADER_BYTES as usize;
    if len as u64 > MAX_RECORD_BYTES || bytes.len() - body < len {
        return Parsed::Cut;
    }
    if checksum(control, &bytes[body..body + len]) == crc {
        Parsed::Good(len, control)
    } else {
        Parsed::BadChecksum(len)
    }
}

/// Length of the part of a segment to keep: everything up to the end of the
/// last good record that is followed only by good records, or by a record a
/// crash cannot have left (a good one after a bad one means bit rot in the
/// middle, which the reader reports, not a torn tail).
fn good_prefix(bytes: &[u8]) -> u64 {
    let mut at = 0usize;
    let mut keep = 0usize;
    while at < bytes.len() {
        match parse(&bytes[at..]) {
            Parsed::Good(len, _) => {
                at += HEADER_BYTES as usize + len;
                keep = at;
            }
            Parsed::BadChecksum(len) => at += HEADER_BYTES as usize + len,
            Parsed::Cut => break,
        }
    }
    keep as u64
}

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}{SUFFIX}"))
}

fn create_segment(dir: &Path, base: u64) -> io::Result<File> {
    OpenOptions::new().create(true).truncate(false).read(true).write(true).open(segment_path(dir, base))
}

fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        if let Some(base) = name.strip_suffix(SUFFIX).and_then(|n| n.parse::<u64>().ok()) {
            found.push((base, path));
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(dir: &Path, from: u64) -> Vec<Entry> {
        let mut reader = LogReader::open(dir, from).unwrap();
        std::iter::from_fn(|| reader.next_entry().unwrap()).collect()
    }

    fn payloads(entries: &[Entry]) -> Vec<Vec<u8>> {
        entries
            .iter()
            .filter_map(|e| match e {
                Entry::Record { payload, .. } => Some(payload.clone()),
                Entry::Corrupt { .. } => None,
            })
            .collect()
    }

    fn record(i: usize) -> Vec<u8> {
        format!("{{\"n\":{i}}}\n").repeat(i % 7 + 1).into_bytes()
    }

    #[test]
    fn appends_roll_segments_and_read_back_from_any_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, report) = LogWriter::open(dir.path(), 100).unwrap();
        assert_eq!(report.end, 0);
        let mut ends = vec![0];
        for i in 0..50 {
            ends.push(log.append(&record(i)).unwrap());
        }
        log.sync().unwrap();
        assert!(list_segments(dir.path()).unwrap().len() > 5, "small segments roll over");
        let all: Vec<_> = (0..50).map(record).collect();
        for (i, &from) in ends.iter().enumerate() {
            assert_eq!(payloads(&read_all(dir.path(), from)), all[i..], "from record {i}");
        }
        // Reopening continues at the end.
        drop(log);
        let (mut log, report) = LogWriter::open(dir.path(), 100).unwrap();
        assert_eq!((report.end, report.truncated_bytes), (*ends.last().unwrap(), 0));
        log.append(b"more\n").unwrap();
        assert_eq!(payloads(&read_all(dir.path(), report.end)), vec![b"more\n".to_vec()]);
    }

    #[test]
    fn control_records_read_back_as_control_and_their_flag_is_checksummed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = LogWriter::open(dir.path(), 1 << 20).unwrap();
        log.append(b"a\n").unwrap();
        let at = log.end();
        log.append_control(b"forget u1").unwrap();
        log.append(b"b\n").unwrap();
        drop(log);
        let kinds: Vec<_> = read_all(dir.path(), 0)
            .into_iter()
            .map(|e| match e {
                Entry::Record { control, payload, .. } => (control, payload),
                Entry::Corrupt { .. } => panic!("{e:?}"),
            })
            .collect();
        assert_eq!(kinds, vec![(false, b"a\n".to_vec()), (true, b"forget u1".to_vec()), (false, b"b\n".to_vec())]);
        // A flipped kind bit is caught by the checksum.
        let (_, path) = list_segments(dir.path()).unwrap().pop().unwrap();
        let mut bytes = fs::read(&path).unwrap();
        bytes[at as usize + 3] ^= 0x80;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(read_all(dir.path(), at)[0], Entry::Corrupt { .. }));
    }

    #[test]
    fn a_torn_tail_is_cut_and_reported_and_earlier_records_survive() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = LogWriter::open(dir.path(), 1 << 20).unwrap();
        for i in 0..10 {
            log.append(&record(i)).unwrap();
        }
        let end = log.end();
        drop(log);
        let (_, path) = list_segments(dir.path()).unwrap().pop().unwrap();
        for cut in [1, 5, 9, 13] {
            let len = fs::metadata(&path).unwrap().len();
            let f = OpenOptions::new().write(true).open(&path).unwrap();
            f.set_len(len - cut).unwrap();
            drop(f);
            let (log, report) = LogWriter::open(dir.path(), 1 << 20).unwrap();
            assert!(report.truncated_bytes > 0 && report.end < end, "{report:?}");
            assert_eq!(log.end(), report.end);
            let got = payloads(&read_all(dir.path(), 0));
            assert_eq!(got, (0..got.len()).map(record).collect::<Vec<_>>());
            assert!(read_all(dir.path(), 0).iter().all(|e| matches!(e, Entry::Record { .. })));
        }
    }

    #[test]
    fn a_corrupt_record_in_the_middle_is_reported_and_the_rest_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = LogWriter::open(dir.path(), 1 << 20).unwrap();
        let mut ends = vec![0];
        for i in 0..5 {
            ends.push(log.append(&record(i)).unwrap());
        }
        drop(log);
        let (_, path) = list_segments(dir.path()).unwrap().pop().unwrap();
        let mut bytes = fs::read(&path).unwrap();
        bytes[ends[2] as usize + HEADER_BYTES as usize + 3] ^= 0x20;
        fs::write(&path, &bytes).unwrap();
        // Not a torn tail: nothing is cut.
        let (_, report) = LogWriter::open(dir.path(), 1 << 20).unwrap();
        assert_eq!((report.end, report.truncated_bytes), (ends[5], 0));
        let entries = read_all(dir.path(), 0);
        assert_eq!(payloads(&entries), vec![record(0), record(1), record(3), record(4)]);
        let corrupt: Vec<_> = entries.iter().filter(|e| matches!(e, Entry::Corrupt { .. })).collect();
        assert!(
            matches!(corrupt[..], [Entry::Corrupt { start, end, .. }] if *start == ends[2] && *end == ends[3]),
            "{corrupt:?}"
        );
    }

    #[test]
    fn old_segments_are_removed_below_a_position_and_reading_before_them_fails() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = LogWriter::open(dir.path(), 64).unwrap();
        let mut ends = vec![];
        for i in 0..40 {
            ends.push(log.append(&record(i)).unwrap());
        }
        let before = list_segments(dir.path()).unwrap().len();
        let cut = ends[20];
        let removed = remove_below(dir.path(), cut).unwrap();
        assert!(removed > 0 && removed < before);
        // Everything from the cut on is still there.
        assert_eq!(payloads(&read_all(dir.path(), cut)), (21..40).map(record).collect::<Vec<_>>());
        assert!(LogReader::open(dir.path(), 0).is_err());
        // The active segment is never removed.
        remove_below(dir.path(), u64::MAX).unwrap();
        assert_eq!(list_segments(dir.path()).unwrap().len(), 1);
        log.append(b"x\n").unwrap();
    }
}
