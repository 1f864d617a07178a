//! Tests of the file source's chunking and the sink writers on real files.

use std::io::Write;

use crate::file::FileSource;
use crate::sink::{SinkWriter, Target};

/// What reading a whole input gave: (offset, line), (offset, length) of oversized lines, chunks.
type ReadAll = (Vec<(u64, Vec<u8>)>, Vec<(u64, u64)>, usize);

/// Reads every chunk and returns (offset, line) pairs plus oversized offsets.
fn read_all(bytes: &[u8], block: usize, max_line: usize) -> ReadAll {
    let reader = Box::new(std::io::Cursor::new(bytes.to_vec()));
    let mut src = FileSource::from_reader("mem".into(), reader, block, max_line);
    let (mut lines, mut big, mut chunks) = (Vec::new(), Vec::new(), 0);
    let mut saw_end = false;
    while let Some(c) = src.next_chunk().unwrap() {
        assert!(!saw_end, "chunk after end of partition");
        saw_end = c.end_of_partition;
        chunks += 1;
        let mut off = c.first_offset + c.oversized.len() as u64;
        for o in &c.oversized {
            big.push((o.offset, o.len));
        }
        if !c.data.is_empty() {
            let body = c.data.strip_suffix(b"\n").unwrap_or(&c.data);
            for l in body.split(|&b| b == b'\n') {
                lines.push((off, l.to_vec()));
                off += 1;
            }
        }
    }
    assert!(saw_end, "no chunk said end of partition");
    (lines, big, chunks)
}

#[test]
fn chunks_cover_every_line_once_with_offsets() {
    let text: String = (0..5000).map(|i| format!("{{\"n\":{i}}}\n")).collect();
    let (lines, big, chunks) = read_all(text.as_bytes(), 4096, 1024);
    assert!(chunks > 10);
    assert!(big.is_empty());
    assert_eq!(lines.len(), 5000);
    for (i, (off, l)) in lines.iter().enumerate() {
        assert_eq!(*off, i as u64);
        assert_eq!(l, format!("{{\"n\":{i}}}").as_bytes());
    }
}

#[test]
fn oversized_lines_are_cut_and_counted_without_buffering() {
    let mut text = b"a\n".to_vec();
    text.extend(std::iter::repeat_n(b'x', 10 << 20));
    text.extend_from_slice(b"\nb\nc");
    let (lines, big, _) = read_all(&text, 1 << 16, 1 << 20);
    assert_eq!(lines, vec![(0, b"a".to_vec()), (2, b"b".to_vec()), (3, b"c".to_vec())]);
    assert_eq!(big, vec![(1, 10 << 20)]);
}

#[test]
fn oversized_last_line_without_newline_is_reported() {
    let mut text = b"a\n".to_vec();
    text.extend(std::iter::repeat_n(b'y', 300_000));
    let (lines, big, _) = read_all(&text, 4096, 100_000);
    assert_eq!(lines, vec![(0, b"a".to_vec())]);
    assert_eq!(big, vec![(1, 300_000)]);
}

#[test]
fn reads_gzip_files_by_magic_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.ndjson.gz");
    let mut gz = flate2::write::GzEncoder::new(std::fs::File::create(&path).unwrap(), flate2::Compression::fast());
    for i in 0..1000 {
        writeln!(gz, "{{\"i\":{i}}}").unwrap();
    }
    gz.finish().unwrap();
    let mut src = FileSource::open(&path, 1 << 16, 1 << 20).unwrap();
    let mut n = 0;
    while let Some(c) = src.next_chunk().unwrap() {
        n += memchr::memchr_iter(b'\n', &c.data).count();
    }
    assert_eq!(n, 1000);
}

#[test]
fn missing_file_names_the_path() {
    let err = FileSource::open("/nonexistent/x.ndjson".as_ref(), 4096, 4096).err().unwrap();
    assert!(err.to_string().contains("/nonexistent/x.ndjson"), "{err}");
}

#[test]
fn sink_writes_files_and_reports_unwritable_paths() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/out.csv");
    let mut w = SinkWriter::open("out", &Target::File(path.clone())).unwrap();
    w.write(b"1,2\n3,4\n", 2).unwrap();
    w.flush().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"1,2\n3,4\n");
    assert_eq!(w.rows(), 2);
    let err = SinkWriter::open("x", &Target::File("/proc/nonexistent/x.csv".into())).err().unwrap();
    assert!(err.to_string().contains("/proc/nonexistent"), "{err}");
}

#[test]
fn resuming_at_a_chunk_end_position_reads_exactly_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.ndjson");
    let text: String = (0..3000).map(|i| format!("{{\"n\":{i}}}\n")).collect();
    std::fs::write(&path, &text).unwrap();
    let mut src = FileSource::open(&path, 4096, 1024).unwrap();
    let first = src.next_chunk().unwrap().unwrap();
    let second = src.next_chunk().unwrap().unwrap();
    let line = second.first_offset + memchr::memchr_iter(b'\n', &second.data).count() as u64;
    let mut resumed = FileSource::open_at(&path, 4096, 1024, second.end_position, line).unwrap();
    let mut rest = Vec::new();
    let mut first_offset = None;
    while let Some(c) = resumed.next_chunk().unwrap() {
        first_offset.get_or_insert(c.first_offset);
        rest.extend_from_slice(&c.data);
    }
    let consumed = first.data.len() + second.data.len();
    assert_eq!(rest, text.as_bytes()[consumed..]);
    assert_eq!(first_offset, Some(line));
}

#[test]
fn resumed_sinks_keep_the_committed_prefix_and_drop_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.csv");
    let mut w = SinkWriter::open("out", &Target::File(path.clone())).unwrap();
    w.write(b"a\nb\n", 2).unwrap();
    w.sync().unwrap();
    let committed = w.position();
    w.write(b"c\n", 1).unwrap();
    w.flush().unwrap();
    drop(w);
    let mut w = SinkWriter::open_at("out", &Target::File(path.clone()), Some(committed)).unwrap();
    w.write(b"C\n", 1).unwrap();
    w.flush().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"a\nb\nC\n");
    assert_eq!(w.position(), 6);
}
