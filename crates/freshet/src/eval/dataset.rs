//! Loading an interaction log into the canonical stream of the prequential
//! protocol (peer README, "Protocol", steps 1–2): files read in the order
//! given, rows in file order with a running input index, stable sort by
//! (timestamp, input index), users and items numbered densely by first
//! appearance in that order.
//!
//! Parsing follows `prequential_eval.py` field for field: delimited formats
//! are read like Python's `csv.reader` (quote `"`, doubled quotes, no
//! trimming), `ml-dat` like `line.rstrip("\r\n").split("::")`, ids and header
//! names are `str.strip()`ped, timestamps and ratings are Python `float`s,
//! and empty rows are skipped. Unlike the peer, a malformed row is an error
//! naming the file, line and column rather than a traceback, and a NaN
//! timestamp (which has no place in the order) is refused.
//!
//! This module owns no protocol logic beyond the order: eligibility and the
//! evaluation segment live in `protocol`.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use csv::StringRecord;
use rustc_hash::FxHashMap;

use super::pytext;
use crate::cli::TimeUnit;

/// The layouts of interaction logs the peer evaluator reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// MovieLens `ratings.csv`: comma, header `userId,movieId,rating,timestamp`.
    MlCsv,
    /// MovieLens 100K `u.data`: tab, no header: user, item, rating, timestamp.
    MlUdata,
    /// MovieLens 1M `ratings.dat`: `::`, no header: user, item, rating, timestamp.
    MlDat,
    /// session-rec files: tab, header with `SessionId`, `ItemId`, `Time`; the session is the user.
    SessionRec,
    /// Any delimited file with a header; columns chosen by name.
    Csv,
}

impl Format {
    /// The format names, for messages.
    pub const NAMES: &'static str = "ml-csv, ml-udata, ml-dat, sessionrec, csv";

    /// Parses a format name as the peer spells it.
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "ml-csv" => Self::MlCsv,
            "ml-udata" => Self::MlUdata,
            "ml-dat" => Self::MlDat,
            "sessionrec" => Self::SessionRec,
            "csv" => Self::Csv,
            other => bail!("unknown dataset format {other:?}; choose one of {}", Self::NAMES),
        })
    }

    /// The format's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::MlCsv => "ml-csv",
            Self::MlUdata => "ml-udata",
            Self::MlDat => "ml-dat",
            Self::SessionRec => "sessionrec",
            Self::Csv => "csv",
        }
    }
}

/// The generic `csv` format's separator and column names; `None` takes the
/// peer's defaults (`,`, `user`, `item`, `timestamp`, no rating column).
#[derive(Clone, Debug, Default)]
pub struct CsvColumns {
    /// One-byte field separator (`\t` written as two characters also means tab).
    pub sep: Option<String>,
    /// User column name.
    pub user: Option<String>,
    /// Item column name.
    pub item: Option<String>,
    /// Timestamp column name.
    pub time: Option<String>,
    /// Rating column name (only used by `--min-rating`).
    pub rating: Option<String>,
}

impl CsvColumns {
    fn any(&self) -> bool {
        [&self.sep, &self.user, &self.item, &self.time, &self.rating].iter().any(|o| o.is_some())
    }
}

/// How to read the files.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// The layout.
    pub format: Format,
    /// Separator and columns of the `csv` format (an error with the others).
    pub columns: CsvColumns,
    /// Drop rows whose rating is below this, before indexing.
    pub min_rating: Option<f64>,
}

/// The canonical stream: position `p` is the `p`-th event in (timestamp,
/// input index) order; user and item indices are dense, by first appearance.
#[derive(Clone, Debug, Default)]
pub struct Stream {
    /// User index at each position.
    pub users: Vec<u32>,
    /// Item index at each position.
    pub items: Vec<u32>,
    /// Timestamp at each position (non-decreasing).
    pub timestamps: Vec<f64>,
    /// Dataset id of each user index.
    pub user_names: Vec<String>,
    /// Dataset id of each item index.
    pub item_names: Vec<String>,
}

impl Stream {
    /// Milliseconds per unit of the timestamps, and the unit's name: `unit`,
    /// or with [`TimeUnit::Auto`] the one that makes the largest timestamp
    /// an epoch time of this century (from 1e14 microseconds, from 1e11
    /// milliseconds, else seconds; relative times count as seconds).
    pub fn ms_per_unit(&self, unit: TimeUnit) -> (f64, &'static str) {
        let largest = self.timestamps.iter().fold(0.0f64, |m, t| m.max(t.abs()));
        let unit = match unit {
            TimeUnit::Auto if largest >= 1e14 => TimeUnit::Us,
            TimeUnit::Auto if largest >= 1e11 => TimeUnit::Ms,
            TimeUnit::Auto => TimeUnit::S,
            given => given,
        };
        match unit {
            TimeUnit::Us => (0.001, "us"),
            TimeUnit::Ms => (1.0, "ms"),
            TimeUnit::S | TimeUnit::Auto => (1000.0, "s"),
        }
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether there are no events.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Number of distinct users.
    pub fn n_users(&self) -> usize {
        self.user_names.len()
    }

    /// Number of distinct items.
    pub fn n_items(&self) -> usize {
        self.item_names.len()
    }
}

/// Reads `paths` in order into the canonical stream.
pub fn load(paths: &[PathBuf], options: &LoadOptions) -> Result<Stream> {
    let spec = Spec::new(options)?;
    let mut rows = Rows::default();
    for path in paths {
        read_file(path, &spec, options.min_rating, &mut rows).with_context(|| format!("reading {}", path.display()))?;
    }
    Ok(rows.into_stream())
}

/// Where a value comes from: a header name or a 0-based position.
#[derive(Clone, Debug)]
enum Col {
    Named(String),
    Index(usize),
}

#[derive(Clone, Copy, Debug)]
enum Delimiter {
    Byte(u8),
    /// `::`, read line by line without quoting (the peer's `ml-dat`).
    DoubleColon,
}

/// A format resolved to a separator and column choices.
#[derive(Debug)]
struct Spec {
    delimiter: Delimiter,
    header: bool,
    user: Col,
    item: Col,
    time: Col,
    rating: Option<Col>,
}

impl Spec {
    fn new(options: &LoadOptions) -> Result<Self> {
        let named = |s: &str| Col::Named(s.to_owned());
        let c = &options.columns;
        if options.format != Format::Csv && c.any() {
            bail!("--sep and the --*-col options apply to --dataset csv:… only, not {}", options.format.name());
        }
        let spec = match options.format {
            Format::MlCsv => Spec {
                delimiter: Delimiter::Byte(b','),
                header: true,
                user: named("userId"),
                item: named("movieId"),
                time: named("timestamp"),
                rating: Some(named("rating")),
            },
            Format::MlUdata | Format::MlDat => Spec {
                delimiter: if options.format == Format::MlDat {
                    Delimiter::DoubleColon
                } else {
                    Delimiter::Byte(b'\t')
                },
                header: false,
                user: Col::Index(0),
                item: Col::Index(1),
                time: Col::Index(3),
                rating: Some(Col::Index(2)),
            },
            Format::SessionRec => Spec {
                delimiter: Delimiter::Byte(b'\t'),
                header: true,
                user: named("SessionId"),
                item: named("ItemId"),
                time: named("Time"),
                rating: None,
            },
            Format::Csv => Spec {
                delimiter: Delimiter::Byte(separator(c.sep.as_deref())?),
                header: true,
                user: named(c.user.as_deref().unwrap_or("user")),
                item: named(c.item.as_deref().unwrap_or("item")),
                time: named(c.time.as_deref().unwrap_or("timestamp")),
                rating: c.rating.as_deref().map(named),
            },
        };
        if options.min_rating.is_some() && spec.rating.is_none() {
            bail!(
                "--min-rating needs a rating column: {} has none (for csv, give --rating-col)",
                options.format.name()
            );
        }
        Ok(spec)
    }
}

/// The `csv` format's separator: one byte, `,` by default, `\t` spelled out
/// also accepted.
fn separator(sep: Option<&str>) -> Result<u8> {
    match sep {
        None => Ok(b','),
        Some("\\t") => Ok(b'\t'),
        Some(s) if s.len() == 1 => Ok(s.as_bytes()[0]),
        Some(s) => bail!("--sep {s:?} must be a single one-byte character"),
    }
}

/// The columns of one file, as positions.
struct Resolved {
    user: usize,
    item: usize,
    time: usize,
    rating: Option<usize>,
}

/// What each column is called in messages.
const NAMES: [&str; 4] = ["user", "item", "timestamp", "rating"];

/// Column positions from the header (or the format's fixed positions). Like
/// the peer, a named rating column must exist even without `--min-rating`.
fn resolve(spec: &Spec, header: Option<&StringRecord>) -> Result<Resolved> {
    let names: Vec<String> =
        header.map(|h| h.iter().enumerate().map(|(n, f)| column_name(n, f)).collect()).unwrap_or_default();
    let find = |col: &Col, what: &str| -> Result<usize> {
        match col {
            Col::Index(i) => Ok(*i),
            Col::Named(name) => names
                .iter()
                .position(|h| h == name)
                .with_context(|| format!("line 1: no {what} column {name:?} in the header {names:?}")),
        }
    };
    Ok(Resolved {
        user: find(&spec.user, NAMES[0])?,
        item: find(&spec.item, NAMES[1])?,
        time: find(&spec.time, NAMES[2])?,
        rating: spec.rating.as_ref().map(|col| find(col, NAMES[3])).transpose()?,
    })
}

/// A header name as the peer compares it: stripped (and, unlike the peer,
/// without a UTF-8 byte-order mark on the first one).
fn column_name(n: usize, field: &str) -> String {
    let field = if n == 0 { field.strip_prefix('\u{feff}').unwrap_or(field) } else { field };
    pytext::strip(field).to_owned()
}

/// Events in input order, ids interned in input order.
#[derive(Default)]
struct Rows {
    timestamps: Vec<f64>,
    users: Vec<u32>,
    items: Vec<u32>,
    user_ids: Interner,
    item_ids: Interner,
}

#[derive(Default)]
struct Interner {
    index: FxHashMap<String, u32>,
    names: Vec<String>,
}

impl Interner {
    fn intern(&mut self, name: &str) -> Result<u32> {
        if let Some(&i) = self.index.get(name) {
            return Ok(i);
        }
        let i = u32::try_from(self.names.len()).ok().filter(|&i| i < u32::MAX).context("more than 2^32-1 ids")?;
        self.index.insert(name.to_owned(), i);
        self.names.push(name.to_owned());
        Ok(i)
    }
}

impl Rows {
    /// Sorts stably by timestamp and renumbers ids by first appearance.
    fn into_stream(self) -> Stream {
        let n = self.timestamps.len();
        let mut order: Vec<u32> = (0..n as u32).collect();
        // (timestamp, input index); NaN was refused on input, and -0.0 ties
        // with 0.0 as in Python.
        order.sort_unstable_by(|&a, &b| {
            let (ta, tb) = (self.timestamps[a as usize], self.timestamps[b as usize]);
            ta.partial_cmp(&tb).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b))
        });
        let renumber = |ids: &[u32], interner: Interner, users_or_items: &mut Vec<u32>| -> Vec<String> {
            let mut canonical = vec![u32::MAX; interner.names.len()];
            let mut names_in = interner.names.into_iter().map(Some).collect::<Vec<_>>();
            let mut names = Vec::with_capacity(names_in.len());
            users_or_items.reserve(n);
            for &row in &order {
                let raw = ids[row as usize] as usize;
                if canonical[raw] == u32::MAX {
                    canonical[raw] = names.len() as u32;
                    names.push(names_in[raw].take().expect("each id is renumbered once"));
                }
                users_or_items.push(canonical[raw]);
            }
            names
        };
        let mut stream = Stream::default();
        stream.user_names = renumber(&self.users, self.user_ids, &mut stream.users);
        stream.item_names = renumber(&self.items, self.item_ids, &mut stream.items);
        stream.timestamps = order.iter().map(|&row| self.timestamps[row as usize]).collect();
        stream
    }
}

fn open(path: &Path) -> Result<Box<dyn BufRead>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let read: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    Ok(Box::new(BufReader::with_capacity(1 << 16, read)))
}

/// Reads one file's rows into `rows`.
fn read_file(path: &Path, spec: &Spec, min_rating: Option<f64>, rows: &mut Rows) -> Result<()> {
    let mut columns: Option<Resolved> = if spec.header { None } else { Some(resolve(spec, None)?) };
    for_each_record(path, spec.delimiter, |line, record| {
        let Some(cols) = &columns else {
            columns = Some(resolve(spec, Some(record))?);
            return Ok(());
        };
        if record.is_empty() || (record.len() == 1 && pytext::strip(&record[0]).is_empty()) {
            return Ok(());
        }
        let field = |i: usize, what: &str| {
            record.get(i).with_context(|| {
                format!("line {line}: no column {} ({what}): the row has {} fields", i + 1, record.len())
            })
        };
        let number = |i: usize, what: &str| -> Result<f64> {
            let text = field(i, what)?;
            pytext::float(text)
                .with_context(|| format!("line {line}, column {} ({what}): {text:?} is not a number", i + 1))
        };
        if let (Some(min), Some(r)) = (min_rating, cols.rating)
            && number(r, NAMES[3])? < min
        {
            return Ok(());
        }
        let t = number(cols.time, NAMES[2])?;
        if t.is_nan() {
            bail!("line {line}, column {} ({}): NaN timestamp", cols.time + 1, NAMES[2]);
        }
        let user = rows.user_ids.intern(pytext::strip(field(cols.user, NAMES[0])?))?;
        let item = rows.item_ids.intern(pytext::strip(field(cols.item, NAMES[1])?))?;
        rows.timestamps.push(t);
        rows.users.push(user);
        rows.items.push(item);
        Ok(())
    })?;
    if columns.is_none() {
        bail!("the file is empty: no header row");
    }
    Ok(())
}

/// Calls `f(line, record)` for every record of the file: `csv.reader`
/// records for a one-byte delimiter (empty lines are skipped by the reader),
/// `::`-split lines (universal newlines, as Python's text mode) otherwise.
fn for_each_record(
    path: &Path,
    delimiter: Delimiter,
    mut f: impl FnMut(u64, &StringRecord) -> Result<()>,
) -> Result<()> {
    let input = open(path)?;
    match delimiter {
        Delimiter::Byte(sep) => {
            let mut reader = csv::ReaderBuilder::new()
                .delimiter(sep)
                .has_headers(false)
                .flexible(true)
                .quote(b'"')
                .double_quote(true)
                .escape(None)
                .comment(None)
                .trim(csv::Trim::None)
                .from_reader(input);
            let mut record = StringRecord::new();
            loop {
                match reader.read_record(&mut record) {
                    Ok(true) => {}
                    Ok(false) => return Ok(()),
                    Err(e) => bail!("line {}: {e}", e.position().map_or(0, |p| p.line())),
                }
                f(record.position().map_or(0, |p| p.line()), &record)?;
            }
        }
        Delimiter::DoubleColon => {
            let mut input = input;
            let (mut bytes, mut record, mut line) = (Vec::new(), StringRecord::new(), 0u64);
            loop {
                bytes.clear();
                if input.read_until(b'\n', &mut bytes).context("reading")? == 0 {
                    return Ok(());
                }
                for part in universal_lines(&bytes) {
                    line += 1;
                    let text = std::str::from_utf8(part).map_err(|e| anyhow::anyhow!("line {line}: not UTF-8: {e}"))?;
                    record.clear();
                    for field in text.trim_end_matches(['\r', '\n']).split("::") {
                        record.push_field(field);
                    }
                    f(line, &record)?;
                }
            }
        }
    }
}

/// Splits a chunk ending at `\n` (or at the end of the input) into the lines
/// Python's universal newlines see: a lone `\r` also ends a line.
fn universal_lines(chunk: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = chunk;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = (0..rest.len())
            .find(|&i| rest[i] == b'\r' && rest.get(i + 1) != Some(&b'\n'))
            .map_or(rest.len(), |i| i + 1);
        let (line, tail) = rest.split_at(end);
        rest = tail;
        Some(line)
    })
}

#[cfg(test)]
mod tests;
