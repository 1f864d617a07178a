//! Synthetic workload generator: the personalization event stream of
//! `shared/workload/gen_events.py`, ported to Rust for speed.
//!
//! It owns the line formats (interaction, `item_upsert` catalog, malformed and
//! duplicate lines), the knobs and the statistical model (Zipf users and
//! items, popularity drift, sessions, event-time clock with bounded
//! disorder). It mirrors `gen_events.py` knob for knob and line shape for line
//! shape, but draws from its own deterministic RNG (`Pcg64Mcg`), so the bytes
//! differ from the Python's while the distributions match. It is a
//! hand-written piece because no crate generates this workload; it does no
//! I/O except in [`write_events`], and never reads a clock.
//!
//! One deliberate difference: the Python re-emits any of the last 1000 lines
//! as a duplicate, which can break the ordering guarantee when the copied line
//! had a large jitter and the clock has moved on. Here a duplicate is drawn
//! only among those recent lines whose `ts` still satisfies the guarantee, so
//! it holds for every line: `ts > max(earlier ts) - max(disorder_ms, 1)`
//! (with `disorder_ms = 0`, `ts` never decreases).

use std::io::Write;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;

/// Interaction types, picked by one uniform draw against [`TYPE_CUM`].
const TYPES: [&[u8]; 4] = [b"view", b"click", b"add_to_cart", b"purchase"];
/// Cumulative shares of view / click / add_to_cart (purchase takes the rest).
const TYPE_CUM: [f64; 3] = [0.80, 0.92, 0.97];
/// Session devices, drawn uniformly: 50 / 33 / 17 %.
const DEVICES: [&[u8]; 6] = [b"mobile", b"mobile", b"mobile", b"desktop", b"desktop", b"tv"];
/// Placements, drawn uniformly per event: 40 / 40 / 20 %.
const PLACEMENTS: [&[u8]; 5] = [b"home", b"home", b"search", b"search", b"pdp"];
/// A user's session ends after more than this much base-clock inactivity.
const SESSION_GAP_MS: f64 = 30.0 * 60.0 * 1000.0;
/// Fraction of lines that are catalog `item_upsert` events.
const CATALOG_RATE: f64 = 0.01;
/// Popularity drift happens every this many lines (all kinds).
const DRIFT_EVERY: u64 = 100_000;
/// Items promoted into the top ranks at each drift step.
const DRIFT_PROMOTE: usize = 5;
/// Promoted items land at ranks `[0, DRIFT_TOP)`.
const DRIFT_TOP: usize = 20;
/// New items enter the ranking at a rank in `[items / NEW_ITEM_FROM, items)`.
const NEW_ITEM_FROM: usize = 20;
/// Duplicates re-emit one of the last this many (non-duplicate) lines.
const DUP_MAX_BACK: usize = 1000;
/// Duplicate draws rejected for breaking the ordering guarantee before falling
/// back to the newest line, which always satisfies it.
const DUP_TRIES: usize = 16;
/// Zipf exponent of the user distribution.
const USER_EXPONENT: f64 = 0.8;
/// Zipf exponent of the item distribution.
const ITEM_EXPONENT: f64 = 1.1;
/// Title words of catalog items: two of these, then a noun.
const WORDS: [&[u8]; 15] = [
    b"red",
    b"blue",
    b"classic",
    b"ultra",
    b"mini",
    b"pro",
    b"eco",
    b"smart",
    b"vintage",
    b"wireless",
    b"organic",
    b"deluxe",
    b"compact",
    b"travel",
    b"home",
];
/// Title nouns of catalog items.
const NOUNS: [&[u8]; 14] = [
    b"lamp",
    b"chair",
    b"phone",
    b"jacket",
    b"kettle",
    b"speaker",
    b"backpack",
    b"watch",
    b"mug",
    b"sneakers",
    b"blender",
    b"camera",
    b"desk",
    b"novel",
];
/// Sort key of lines that carry no integer `ts` (they are never late).
const NO_TS: i64 = i64::MAX;
/// Output is handed to the writer in chunks of about this size.
const WRITE_CHUNK: usize = 1 << 18;

/// Knobs of the generator; defaults equal gen_events.py's.
#[derive(Debug, Clone, PartialEq)]
pub struct GenOptions {
    /// Total lines written, all kinds (`--events`, default 1,000,000);
    /// `u64::MAX` means unbounded.
    pub events: u64,
    /// Number of users, drawn Zipf(0.8) over a fixed permutation (`--users`, default 100,000).
    pub users: u64,
    /// Initial catalog size, drawn Zipf(1.1) over a drifting ranking (`--items`, default 50,000).
    pub items: u64,
    /// Seed of the single RNG (`--seed`, default 42).
    pub seed: u64,
    /// Fraction of malformed lines (`--malformed-rate`, default 0.001).
    pub malformed_rate: f64,
    /// Fraction of lines re-emitting one of the last 1000 lines (`--duplicate-rate`, default 0).
    pub duplicate_rate: f64,
    /// `ts` = base clock minus an integer jitter uniform in `[0, disorder_ms)`
    /// (`--disorder-ms`, default 5000).
    pub disorder_ms: i64,
    /// Event-time rate: the base clock advances by exponential inter-arrival
    /// times of mean `1000 / rate_per_s` ms (`--rate-per-s`, default 1000).
    pub rate_per_s: f64,
    /// Base clock start, epoch ms (`--start-ms`, default 1767225600000 = 2026-01-01T00:00:00Z).
    pub start_ms: i64,
}

impl Default for GenOptions {
    fn default() -> Self {
        Self {
            events: 1_000_000,
            users: 100_000,
            items: 50_000,
            seed: 42,
            malformed_rate: 0.001,
            duplicate_rate: 0.0,
            disorder_ms: 5000,
            rate_per_s: 1000.0,
            start_ms: 1_767_225_600_000,
        }
    }
}

impl GenOptions {
    /// Checks the knobs as `gen_events.py`'s `parse_args` does, with its messages.
    pub fn validate(&self) -> Result<(), String> {
        if self.users < 1 || self.items < 1 {
            return Err("--events must be >= 0, --users and --items >= 1".into());
        }
        // Python accepts NaN here (`nan <= 0` is false); it would stall the clock.
        if self.disorder_ms < 0 || self.rate_per_s.is_nan() || self.rate_per_s <= 0.0 {
            return Err("--disorder-ms must be >= 0 and --rate-per-s > 0".into());
        }
        for (name, v) in [("malformed-rate", self.malformed_rate), ("duplicate-rate", self.duplicate_rate)] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("--{name} must be in [0, 1]"));
            }
        }
        if self.malformed_rate + self.duplicate_rate + CATALOG_RATE > 1.0 {
            return Err("--malformed-rate + --duplicate-rate must leave room for events".into());
        }
        Ok(())
    }
}

/// A user's open session, indexed by the user's Zipf rank.
#[derive(Clone, Copy)]
struct Session {
    /// Session number (`s<id>`), or `u64::MAX` before the user's first event.
    id: u64,
    /// Base clock of the user's last event.
    last: f64,
    /// Index into [`DEVICES`], fixed for the session.
    device: u8,
}

/// The last [`DUP_MAX_BACK`] non-duplicate lines, with their `ts`, in reused buffers.
struct Recent {
    lines: Vec<Vec<u8>>,
    ts: Vec<i64>,
    /// Slot the next line goes to once the ring is full; also the oldest line.
    head: usize,
}

impl Recent {
    fn push(&mut self, line: &[u8], ts: i64) {
        if self.lines.len() < DUP_MAX_BACK {
            let mut buf = Vec::with_capacity(line.len().max(256));
            buf.extend_from_slice(line);
            self.lines.push(buf);
            self.ts.push(ts);
        } else {
            let slot = &mut self.lines[self.head];
            slot.clear();
            slot.extend_from_slice(line);
            self.ts[self.head] = ts;
            self.head = (self.head + 1) % DUP_MAX_BACK;
        }
    }

    /// Slot of the most recently pushed line; the ring must not be empty.
    fn newest(&self) -> usize {
        if self.lines.len() < DUP_MAX_BACK {
            self.lines.len() - 1
        } else {
            (self.head + DUP_MAX_BACK - 1) % DUP_MAX_BACK
        }
    }
}

/// Deterministic generator of the workload, one line at a time.
pub struct Generator {
    opts: GenOptions,
    rng: Pcg64Mcg,
    /// User id at each Zipf rank (a fixed random permutation).
    user_perm: Vec<u32>,
    users_zipf: Zipf,
    /// Item number at each popularity rank; its length stays `items`.
    ranking: Ranking,
    items_zipf: Zipf,
    next_item: u64,
    /// Events per ms of event time.
    lam: f64,
    /// Base clock, ms; never decreases.
    base: f64,
    /// Largest `ts` emitted so far (`i64::MIN` before the first).
    max_ts: i64,
    /// Thresholds on one uniform draw deciding the line kind.
    t_dup: f64,
    t_bad: f64,
    t_cat: f64,
    sessions: Vec<Session>,
    next_session: u64,
    /// Present iff `duplicate_rate > 0`.
    recent: Option<Recent>,
    next_event_id: u64,
    lines: u64,
}

impl Generator {
    /// Validates `opts` and builds the user and item tables (O(users + items)).
    pub fn new(opts: GenOptions) -> Result<Self, String> {
        opts.validate()?;
        let n_users = u32::try_from(opts.users).map_err(|_| format!("--users must be <= {}", u32::MAX))?;
        let n_items = usize::try_from(opts.items)
            .ok()
            .filter(|&n| n <= u32::MAX as usize)
            .ok_or_else(|| format!("--items must be <= {}", u32::MAX))?;
        let mut rng = Pcg64Mcg::seed_from_u64(opts.seed);
        let mut user_perm: Vec<u32> = (0..n_users).collect();
        user_perm.shuffle(&mut rng);
        let mut ranking: Vec<u64> = (0..opts.items).collect();
        ranking.shuffle(&mut rng);
        let ranking = Ranking::new(&ranking);
        let t_dup = opts.duplicate_rate;
        let t_bad = t_dup + opts.malformed_rate;
        let recent = (t_dup > 0.0).then(|| Recent {
            lines: Vec::with_capacity(DUP_MAX_BACK),
            ts: Vec::with_capacity(DUP_MAX_BACK),
            head: 0,
        });
        let empty = Session { id: u64::MAX, last: 0.0, device: 0 };
        Ok(Self {
            rng,
            users_zipf: Zipf::new(n_users as usize, USER_EXPONENT),
            sessions: vec![empty; n_users as usize],
            user_perm,
            ranking,
            items_zipf: Zipf::new(n_items, ITEM_EXPONENT),
            next_item: opts.items,
            lam: opts.rate_per_s / 1000.0,
            base: opts.start_ms as f64,
            max_ts: i64::MIN,
            t_dup,
            t_bad,
            t_cat: t_bad + CATALOG_RATE,
            next_session: 0,
            recent,
            next_event_id: 0,
            lines: 0,
            opts,
        })
    }

    /// Appends the next line (with its trailing '\n') to `out`; returns false when `events` lines were written.
    ///
    /// Allocates nothing beyond growing `out` (and, with duplicates on, filling
    /// the 1000-line duplicate ring during the first 1000 lines).
    pub fn next_line(&mut self, out: &mut Vec<u8>) -> bool {
        if self.lines >= self.opts.events {
            return false;
        }
        let line_no = self.lines;
        self.lines += 1;
        if line_no != 0 && line_no.is_multiple_of(DRIFT_EVERY) {
            self.drift();
        }
        let r: f64 = self.rng.random();
        if r < self.t_dup && self.duplicate(out) {
            // Verbatim re-emission: no new event id, clock unchanged.
            return true;
        }

        // -ln(1 - u) with u in [0, 1) is finite: Python's expovariate.
        let u: f64 = self.rng.random();
        self.base += -(1.0 - u).ln() / self.lam;
        let disorder = self.opts.disorder_ms;
        let jitter = if disorder > 0 { self.rng.random_range(0..disorder) } else { 0 };
        // `as` truncates toward zero like Python's int(), and saturates.
        let ts = (self.base as i64).saturating_sub(jitter).max(0);
        self.max_ts = self.max_ts.max(ts);

        let start = out.len();
        let visible_ts = if self.t_bad <= r && r < self.t_cat {
            self.catalog(ts, out);
            ts
        } else {
            self.interaction(ts, self.t_dup <= r && r < self.t_bad, out)
        };
        if let Some(recent) = &mut self.recent {
            recent.push(&out[start..], visible_ts);
        }
        true
    }

    /// Lines written so far.
    pub fn lines_written(&self) -> u64 {
        self.lines
    }

    /// Popularity drift: promotes a few random items from outside the top
    /// [`DRIFT_TOP`] to random ranks inside it.
    fn drift(&mut self) {
        let n = self.ranking.len();
        let lo = DRIFT_TOP.min(n - 1);
        for _ in 0..DRIFT_PROMOTE.min(n) {
            let src = self.rng.random_range(lo..n);
            let item = self.ranking.remove(src);
            let dst = self.rng.random_range(0..DRIFT_TOP.min(n));
            self.ranking.insert(dst, item);
        }
    }

    /// Re-emits one of the recent lines whose `ts` keeps the ordering
    /// guarantee; false when there is no recent line yet.
    fn duplicate(&mut self, out: &mut Vec<u8>) -> bool {
        let Some(recent) = &self.recent else {
            return false;
        };
        if recent.lines.is_empty() {
            return false;
        }
        // Lines at or below this bound would be late; the newest line never is
        // (its ts >= floor(base) - disorder + 1 and max_ts <= floor(base)).
        let bound = self.max_ts.saturating_sub(self.opts.disorder_ms.max(1));
        let mut slot = recent.newest();
        for _ in 0..DUP_TRIES {
            let pick = self.rng.random_range(0..recent.lines.len());
            if recent.ts[pick] > bound {
                slot = pick;
                break;
            }
        }
        out.extend_from_slice(&recent.lines[slot]);
        true
    }

    /// Writes a catalog line introducing the next item id, which enters the
    /// ranking at a random rank outside the top 5 % (the last-ranked item
    /// drops out).
    fn catalog(&mut self, ts: i64, out: &mut Vec<u8>) {
        let item = self.next_item;
        self.next_item += 1;
        let rng = &mut self.rng;
        out.extend_from_slice(b"{\"event_id\":\"e");
        push_u64(out, self.next_event_id);
        self.next_event_id += 1;
        out.extend_from_slice(b"\",\"type\":\"item_upsert\",\"item_id\":\"i");
        push_u64(out, item);
        out.extend_from_slice(b"\",\"ts\":");
        push_u64(out, ts as u64);
        out.extend_from_slice(b",\"category\":\"c");
        push_u64(out, rng.random_range(0..50u64));
        out.extend_from_slice(b"\",\"tags\":[");
        let ntags = 1 + rng.random_range(0..3u32);
        for i in 0..ntags {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"\"t");
            push_u64(out, rng.random_range(0..200u64));
            out.push(b'"');
        }
        out.extend_from_slice(b"],\"title\":\"");
        out.extend_from_slice(WORDS[rng.random_range(0..WORDS.len())]);
        out.push(b' ');
        out.extend_from_slice(WORDS[rng.random_range(0..WORDS.len())]);
        out.push(b' ');
        out.extend_from_slice(NOUNS[rng.random_range(0..NOUNS.len())]);
        out.extend_from_slice(b"\"}\n");

        let n = self.ranking.len();
        self.ranking.remove(n - 1);
        let rank = rng.random_range(n / NEW_ITEM_FROM..n);
        self.ranking.insert(rank, item);
    }

    /// Writes an interaction line, spoiled in one of four ways if `malformed`
    /// (the session is updated either way). Returns the line's integer `ts`,
    /// or [`NO_TS`] if the line has none.
    fn interaction(&mut self, ts: i64, malformed: bool, out: &mut Vec<u8>) -> i64 {
        let rng = &mut self.rng;
        let user_rank = self.users_zipf.rank(rng.random());
        let user = self.user_perm[user_rank];
        let item = self.ranking.get(self.items_zipf.rank(rng.random()));
        let t: f64 = rng.random();
        let etype = TYPE_CUM.iter().position(|&c| t < c).unwrap_or(3);
        let session = &mut self.sessions[user_rank];
        if session.id == u64::MAX || self.base - session.last > SESSION_GAP_MS {
            session.id = self.next_session;
            self.next_session += 1;
            session.device = rng.random_range(0..DEVICES.len()) as u8;
        }
        session.last = self.base;
        let placement = rng.random_range(0..PLACEMENTS.len());
        // 0: truncated, 1: user_id missing, 2: ts as letters, 3: numeric item_id.
        let kind = if malformed { rng.random_range(0..4u8) } else { u8::MAX };

        let start = out.len();
        out.extend_from_slice(b"{\"event_id\":\"e");
        push_u64(out, self.next_event_id);
        self.next_event_id += 1;
        out.extend_from_slice(b"\",\"type\":\"");
        out.extend_from_slice(TYPES[etype]);
        out.push(b'"');
        if kind != 1 {
            out.extend_from_slice(b",\"user_id\":\"u");
            push_u64(out, u64::from(user));
            out.push(b'"');
        }
        if kind == 3 {
            out.extend_from_slice(b",\"item_id\":");
            push_u64(out, item);
        } else {
            out.extend_from_slice(b",\"item_id\":\"i");
            push_u64(out, item);
            out.push(b'"');
        }
        out.extend_from_slice(b",\"session_id\":\"s");
        push_u64(out, session.id);
        out.extend_from_slice(b"\",\"ts\":");
        if kind == 2 {
            out.push(b'"');
            for _ in 0..8 {
                out.push(b'a' + rng.random_range(0..26u8));
            }
            out.push(b'"');
        } else {
            push_u64(out, ts as u64);
        }
        out.extend_from_slice(b",\"context\":{\"device\":\"");
        out.extend_from_slice(DEVICES[usize::from(session.device)]);
        out.extend_from_slice(b"\",\"placement\":\"");
        out.extend_from_slice(PLACEMENTS[placement]);
        out.extend_from_slice(b"\"}");
        if etype == 3 {
            out.extend_from_slice(b",\"price\":");
            let cents = item_price_cents(item);
            push_u64(out, cents / 100);
            out.push(b'.');
            out.extend_from_slice(&DIGIT_PAIRS[(cents % 100) as usize]);
        }
        out.extend_from_slice(b"}\n");

        if kind == 0 {
            // Keep a prefix of length in [1, len - 3]: never valid JSON.
            let len = out.len() - start;
            let keep = rng.random_range(1..len - 2);
            out.truncate(start + keep);
            out.push(b'\n');
        }
        if kind == 0 || kind == 2 { NO_TS } else { ts }
    }
}

/// Writes all lines to `w` (buffered internally, large writes).
///
/// Returns the number of lines written, `opts.events`; with `events = u64::MAX`
/// it runs until `w` fails. Invalid options are an `InvalidInput` error.
pub fn write_events(opts: &GenOptions, w: &mut impl Write) -> std::io::Result<u64> {
    let mut generator =
        Generator::new(opts.clone()).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut buf = Vec::with_capacity(WRITE_CHUNK + 4096);
    while generator.next_line(&mut buf) {
        if buf.len() >= WRITE_CHUNK {
            w.write_all(&buf)?;
            buf.clear();
        }
    }
    w.write_all(&buf)?;
    w.flush()?;
    Ok(generator.lines_written())
}

/// Zipf-like sampler over ranks `0..n` with weights `1 / (rank + 1)^s`.
///
/// Sampling is Python's `bisect_right(cum, u * total)` over the cumulative
/// weights. A guide table (the answer's range for each of `n` equal slices of
/// `u`) narrows the binary search to a few entries, so a draw costs about two
/// cache misses instead of a chain of `log2(n)`; the result is the same.
struct Zipf {
    /// Cumulative weights, accumulated in rank order as `itertools.accumulate`.
    cum: Vec<f64>,
    /// `guide[k]` = `bisect_right(cum, k / n * total)`, for `k` in `0..=n`.
    guide: Vec<u32>,
}

impl Zipf {
    /// `n` must be in `1..=u32::MAX`.
    fn new(n: usize, s: f64) -> Self {
        let mut acc = 0.0;
        let cum: Vec<f64> = (0..n)
            .map(|r| {
                acc += 1.0 / ((r + 1) as f64).powf(s);
                acc
            })
            .collect();
        let total = acc;
        let mut guide = Vec::with_capacity(n + 1);
        let mut i = 0;
        for k in 0..=n {
            let x = k as f64 / n as f64 * total;
            while i < n && cum[i] <= x {
                i += 1;
            }
            guide.push(i as u32);
        }
        Self { cum, guide }
    }

    /// Rank drawn by a uniform `u` in `[0, 1)`, clamped to the last rank
    /// against rounding.
    fn rank(&self, u: f64) -> usize {
        let cum = &self.cum[..];
        let n = cum.len();
        let x = u * cum[n - 1];
        let k = ((u * n as f64) as usize).min(n - 1);
        let lo = self.guide[k] as usize;
        let hi = (self.guide[k + 1] as usize + 1).min(n);
        let mut i = lo + cum[lo..hi].partition_point(|&c| c <= x);
        // Rounding in `k` or in the guide may put the answer outside [lo, hi].
        if !((i == 0 || cum[i - 1] <= x) && (i == n || cum[i] > x)) {
            i = cum.partition_point(|&c| c <= x);
        }
        i.min(n - 1)
    }
}

/// Item numbers in popularity order, kept in chunks of about `sqrt(n)` so
/// that inserting or removing at a rank moves O(sqrt n) entries instead of
/// O(n); emptied chunks are recycled, so steady state does not allocate.
struct Ranking {
    chunks: Vec<Vec<u64>>,
    /// `starts[c]` is the rank of `chunks[c][0]`; the last entry is the length.
    starts: Vec<usize>,
    /// A chunk is split in two when it grows past `2 * chunk`.
    chunk: usize,
    spare: Vec<Vec<u64>>,
}

impl Ranking {
    fn new(items: &[u64]) -> Self {
        let chunk = (items.len() as f64).sqrt().max(256.0) as usize;
        let mut chunks: Vec<Vec<u64>> = items
            .chunks(chunk)
            .map(|c| {
                let mut v = Vec::with_capacity(2 * chunk + 1);
                v.extend_from_slice(c);
                v
            })
            .collect();
        if chunks.is_empty() {
            chunks.push(Vec::with_capacity(2 * chunk + 1));
        }
        let mut starts = vec![0];
        for c in &chunks {
            starts.push(starts[starts.len() - 1] + c.len());
        }
        Self { chunks, starts, chunk, spare: Vec::new() }
    }

    fn len(&self) -> usize {
        self.starts[self.starts.len() - 1]
    }

    /// Chunk and offset of `rank`; `rank == len()` gives the end of the last chunk.
    fn locate(&self, rank: usize) -> (usize, usize) {
        let c = if rank < self.starts[1] {
            0 // the popular head, most lookups
        } else {
            (self.starts.partition_point(|&s| s <= rank) - 1).min(self.chunks.len() - 1)
        };
        (c, rank - self.starts[c])
    }

    /// Item at `rank`, which must be `< len()`.
    fn get(&self, rank: usize) -> u64 {
        let (c, i) = self.locate(rank);
        self.chunks[c][i]
    }

    /// Removes and returns the item at `rank`, which must be `< len()`.
    fn remove(&mut self, rank: usize) -> u64 {
        let (c, i) = self.locate(rank);
        let item = self.chunks[c].remove(i);
        for s in &mut self.starts[c + 1..] {
            *s -= 1;
        }
        if self.chunks[c].is_empty() && self.chunks.len() > 1 {
            self.spare.push(self.chunks.remove(c));
            self.starts.remove(c);
        }
        item
    }

    /// Inserts `item` at `rank`, which must be `<= len()`.
    fn insert(&mut self, rank: usize, item: u64) {
        let (c, i) = self.locate(rank);
        self.chunks[c].insert(i, item);
        for s in &mut self.starts[c + 1..] {
            *s += 1;
        }
        if self.chunks[c].len() > 2 * self.chunk {
            let mut tail = self.spare.pop().unwrap_or_else(|| Vec::with_capacity(2 * self.chunk + 1));
            tail.extend_from_slice(&self.chunks[c][self.chunk..]);
            self.chunks[c].truncate(self.chunk);
            self.chunks.insert(c + 1, tail);
            self.starts.insert(c + 1, self.starts[c] + self.chunk);
        }
    }

    #[cfg(test)]
    fn to_vec(&self) -> Vec<u64> {
        self.chunks.concat()
    }
}

/// Deterministic per-item price in cents, in [500, 49999]: gen_events.py's
/// `5.0 + ((n * 2654435761) % 49500) / 100.0`, exact in integers.
fn item_price_cents(item: u64) -> u64 {
    500 + (u128::from(item) * 2_654_435_761 % 49_500) as u64
}

/// "00", "01", ..., "99".
const DIGIT_PAIRS: [[u8; 2]; 100] = {
    let mut t = [[0u8; 2]; 100];
    let mut i = 0;
    while i < 100 {
        t[i] = [b'0' + (i / 10) as u8, b'0' + (i % 10) as u8];
        i += 1;
    }
    t
};

/// Appends `v` in decimal without allocating.
fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let len = v.checked_ilog10().unwrap_or(0) as usize + 1;
    let mut buf = [0u8; 20];
    let mut i = len;
    while v >= 100 {
        i -= 2;
        buf[i..i + 2].copy_from_slice(&DIGIT_PAIRS[(v % 100) as usize]);
        v /= 100;
    }
    if v >= 10 {
        buf[..2].copy_from_slice(&DIGIT_PAIRS[v as usize]);
    } else {
        buf[0] = b'0' + v as u8;
    }
    // A fixed-size copy is inlined; a variable one would call memcpy.
    let end = out.len() + len;
    out.extend_from_slice(&buf);
    out.truncate(end);
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet, VecDeque};
    use std::fmt::Write as _;

    use serde_json::Value;

    use super::*;

    fn opts(events: u64) -> GenOptions {
        GenOptions { events, ..GenOptions::default() }
    }

    fn generate(opts: &GenOptions) -> Vec<u8> {
        let mut out = Vec::new();
        let n = write_events(opts, &mut out).unwrap();
        assert_eq!(n, opts.events);
        out
    }

    fn lines(bytes: &[u8]) -> Vec<&str> {
        let text = std::str::from_utf8(bytes).unwrap();
        assert!(text.is_empty() || text.ends_with('\n'));
        text.lines().collect()
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    enum Kind {
        Interaction,
        Catalog,
        Truncated,
        NoUserId,
        LetterTs,
        NumericItemId,
    }

    /// The line an interaction-like object would be written as, keys in the
    /// generator's order (absent keys skipped), so comparing it with the raw
    /// line checks key order, spacing and the 2-decimal price at once.
    fn canonical_interaction(v: &Value) -> String {
        let mut s = String::from("{");
        for key in ["event_id", "type", "user_id", "item_id", "session_id", "ts"] {
            if let Some(x) = v.get(key) {
                write!(s, "\"{key}\":{x},").unwrap();
            }
        }
        let ctx = &v["context"];
        assert_eq!(ctx.as_object().unwrap().len(), 2, "{v}");
        write!(s, "\"context\":{{\"device\":{},\"placement\":{}}}", ctx["device"], ctx["placement"]).unwrap();
        if let Some(price) = v.get("price") {
            write!(s, ",\"price\":{:.2}", price.as_f64().unwrap()).unwrap();
        }
        s.push('}');
        s
    }

    fn canonical_catalog(v: &Value) -> String {
        let mut s = String::from("{");
        for key in ["event_id", "type", "item_id", "ts", "category", "tags", "title"] {
            write!(s, "\"{key}\":{},", v[key]).unwrap();
        }
        s.pop();
        s.push('}');
        s
    }

    fn id_number(v: &Value, prefix: char) -> u64 {
        let s = v.as_str().unwrap();
        assert!(s.starts_with(prefix), "{s}");
        s[1..].parse().unwrap()
    }

    /// Classifies a line and asserts its exact shape.
    fn classify(line: &str, o: &GenOptions) -> (Kind, Option<Value>) {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            assert!(line.starts_with('{') && line.len() < 300, "{line}");
            return (Kind::Truncated, None);
        };
        if v["type"] == "item_upsert" {
            assert_eq!(line, canonical_catalog(&v));
            assert_eq!(v.as_object().unwrap().len(), 7);
            id_number(&v["event_id"], 'e');
            assert!(id_number(&v["item_id"], 'i') >= o.items);
            assert!(v["ts"].is_u64());
            assert!(id_number(&v["category"], 'c') < 50);
            let tags = v["tags"].as_array().unwrap();
            assert!((1..=3).contains(&tags.len()), "{line}");
            for t in tags {
                assert!(id_number(t, 't') < 200);
            }
            let title: Vec<&str> = v["title"].as_str().unwrap().split(' ').collect();
            assert_eq!(title.len(), 3);
            assert!(WORDS.contains(&title[0].as_bytes()) && WORDS.contains(&title[1].as_bytes()));
            assert!(NOUNS.contains(&title[2].as_bytes()));
            return (Kind::Catalog, Some(v));
        }
        assert_eq!(line, canonical_interaction(&v));
        id_number(&v["event_id"], 'e');
        id_number(&v["session_id"], 's');
        let etype = v["type"].as_str().unwrap();
        assert!(TYPES.contains(&etype.as_bytes()), "{line}");
        assert!(DEVICES.contains(&v["context"]["device"].as_str().unwrap().as_bytes()));
        assert!(PLACEMENTS.contains(&v["context"]["placement"].as_str().unwrap().as_bytes()));
        let kind = if v.get("user_id").is_none() {
            Kind::NoUserId
        } else if let Some(letters) = v["ts"].as_str() {
            assert!(letters.len() == 8 && letters.bytes().all(|b| b.is_ascii_lowercase()));
            Kind::LetterTs
        } else if v["item_id"].is_u64() {
            Kind::NumericItemId
        } else {
            Kind::Interaction
        };
        if kind != Kind::NoUserId {
            assert!(id_number(&v["user_id"], 'u') < o.users);
        }
        if kind != Kind::LetterTs {
            assert!(v["ts"].is_u64());
        }
        let item = match &v["item_id"] {
            Value::Number(n) => n.as_u64().unwrap(),
            x => id_number(x, 'i'),
        };
        let n_keys = v.as_object().unwrap().len();
        let expect_keys = 7 + usize::from(etype == "purchase") - usize::from(kind == Kind::NoUserId);
        assert_eq!(n_keys, expect_keys, "{line}");
        if etype == "purchase" {
            let price = v["price"].as_f64().unwrap();
            assert_eq!((price * 100.0).round() as u64, item_price_cents(item));
            assert!((5.0..500.0).contains(&price));
        }
        (kind, Some(v))
    }

    #[test]
    fn generator_same_options_give_same_bytes_and_another_seed_changes_them() {
        let o = GenOptions { events: 50_000, malformed_rate: 0.01, duplicate_rate: 0.01, ..GenOptions::default() };
        let a = generate(&o);
        assert_eq!(a, generate(&o));
        assert_eq!(lines(&a).len(), 50_000);
        // next_line gives the same bytes as write_events.
        let mut g = Generator::new(o.clone()).unwrap();
        let mut b = Vec::new();
        while g.next_line(&mut b) {}
        assert_eq!(g.lines_written(), 50_000);
        assert_eq!(a, b);
        let other = generate(&GenOptions { seed: 43, ..o });
        assert_ne!(a, other);
    }

    #[test]
    fn generator_lines_have_exact_shapes_and_malformed_kinds_occur_at_the_rate() {
        let o = GenOptions { events: 200_000, malformed_rate: 0.01, ..GenOptions::default() };
        let out = generate(&o);
        let mut counts: HashMap<Kind, u64> = HashMap::new();
        let mut next_eid = 0;
        for line in lines(&out) {
            let (kind, v) = classify(line, &o);
            *counts.entry(kind).or_default() += 1;
            if let Some(v) = v {
                // Event ids count every (non-duplicate) line.
                let eid = id_number(&v["event_id"], 'e');
                assert!(eid >= next_eid);
                next_eid = eid + 1;
            }
        }
        let malformed: u64 = [Kind::Truncated, Kind::NoUserId, Kind::LetterTs, Kind::NumericItemId]
            .iter()
            .map(|k| {
                let n = counts.get(k).copied().unwrap_or(0);
                // 500 expected for each kind; sd about 22.
                assert!((400..=600).contains(&n), "{k:?}: {n}");
                n
            })
            .sum();
        // 2000 expected; sd about 45.
        assert!((1800..=2200).contains(&malformed), "{malformed}");

        // The default rate: 200 malformed lines expected out of 200k; sd about 14.
        let out = generate(&opts(200_000));
        let bad = lines(&out)
            .iter()
            .filter(|l| {
                let k = classify(l, &o).0;
                k != Kind::Interaction && k != Kind::Catalog
            })
            .count();
        assert!((140..=260).contains(&bad), "{bad}");
    }

    #[test]
    fn generator_duplicates_repeat_one_of_the_previous_1000_lines_verbatim() {
        let o = GenOptions { events: 200_000, duplicate_rate: 0.05, malformed_rate: 0.01, ..GenOptions::default() };
        let mut g = Generator::new(o.clone()).unwrap();
        let mut recent: VecDeque<Vec<u8>> = VecDeque::new();
        let mut seen: HashSet<Vec<u8>> = HashSet::new();
        let mut buf = Vec::new();
        let (mut dups, mut differs_from_newest) = (0u64, 0u64);
        loop {
            let (eid, base) = (g.next_event_id, g.base);
            buf.clear();
            if !g.next_line(&mut buf) {
                break;
            }
            assert_eq!(buf.iter().filter(|&&b| b == b'\n').count(), 1);
            if g.next_event_id == eid {
                dups += 1;
                assert_eq!(g.base, base, "a duplicate does not advance the clock");
                assert!(recent.contains(&buf), "not among the last 1000 lines");
                differs_from_newest += u64::from(recent.back() != Some(&buf));
                continue;
            }
            assert_eq!(g.next_event_id, eid + 1);
            if buf.len() > 20 {
                // Long enough to hold its unique event id.
                assert!(seen.insert(buf.clone()), "fresh line seen before");
            }
            recent.push_back(buf.clone());
            if recent.len() > DUP_MAX_BACK {
                recent.pop_front();
            }
        }
        // 10,000 expected; sd about 100.
        assert!((9_500..=10_500).contains(&dups), "{dups}");
        // Picks are spread over the window, not stuck on the newest line.
        assert!(differs_from_newest > dups * 9 / 10, "{differs_from_newest}");
    }

    fn assert_ordering_guarantee(o: &GenOptions) {
        let out = generate(o);
        let mut max_ts = i64::MIN;
        let mut behind = 0u64;
        for line in lines(&out) {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let Some(ts) = v["ts"].as_i64() else {
                continue;
            };
            if max_ts != i64::MIN {
                if o.disorder_ms == 0 {
                    assert!(ts >= max_ts, "{line} behind max ts {max_ts}");
                } else {
                    assert!(ts > max_ts - o.disorder_ms, "{line} late for max ts {max_ts}");
                }
                behind += u64::from(ts < max_ts);
            }
            max_ts = max_ts.max(ts);
        }
        if o.disorder_ms >= 1000 {
            assert!(behind > o.events / 4, "disorder must show: {behind}");
        }
    }

    #[test]
    fn generator_ordering_guarantee_holds_with_disorder_5000_and_0() {
        let base = GenOptions { events: 200_000, malformed_rate: 0.01, ..GenOptions::default() };
        assert_ordering_guarantee(&base);
        assert_ordering_guarantee(&GenOptions { disorder_ms: 0, ..base.clone() });
        // Duplicates keep it too, even when 1000 lines span far more than the
        // disorder (1 event/s), where copying any recent line would not.
        for disorder_ms in [5000, 0] {
            for rate_per_s in [1000.0, 1.0] {
                assert_ordering_guarantee(&GenOptions {
                    disorder_ms,
                    rate_per_s,
                    duplicate_rate: 0.05,
                    ..base.clone()
                });
            }
        }
        // The first ts may be up to disorder - 1 before start; never below 0.
        let early = generate(&GenOptions { events: 1000, start_ms: 0, ..base.clone() });
        for line in lines(&early) {
            if let Ok(v) = serde_json::from_str::<Value>(line) {
                assert!(v["ts"].as_i64().is_none_or(|ts| ts >= 0));
            }
        }
    }

    #[test]
    fn generator_type_mix_and_catalog_rate_match_and_new_items_start_at_items() {
        let o = GenOptions { events: 200_000, items: 20_000, ..GenOptions::default() };
        let out = generate(&o);
        let mut types: HashMap<String, u64> = HashMap::new();
        let mut new_item_hits = 0u64;
        let mut interactions = 0u64;
        let mut next_new = o.items;
        for line in lines(&out) {
            let (kind, v) = classify(line, &o);
            let Some(v) = v else { continue };
            match kind {
                Kind::Catalog => {
                    assert_eq!(id_number(&v["item_id"], 'i'), next_new);
                    next_new += 1;
                }
                Kind::Interaction => {
                    interactions += 1;
                    *types.entry(v["type"].as_str().unwrap().into()).or_default() += 1;
                    new_item_hits += u64::from(id_number(&v["item_id"], 'i') >= o.items);
                }
                _ => {}
            }
        }
        let catalog = (next_new - o.items) as f64 / o.events as f64;
        assert!((catalog - 0.01).abs() < 0.0015, "catalog {catalog}");
        for (etype, share) in [("view", 0.80), ("click", 0.12), ("add_to_cart", 0.05), ("purchase", 0.03)] {
            let got = types[etype] as f64 / interactions as f64;
            assert!((got - share).abs() < 0.005, "{etype}: {got}");
        }
        // New items enter the ranking and get a few interactions.
        assert!(new_item_hits > 100, "{new_item_hits}");
    }

    #[test]
    fn generator_users_and_items_follow_zipf_and_drift_promotes_into_top_ranks() {
        let o = opts(100_000);
        let mut g = Generator::new(o.clone()).unwrap();
        let top20: Vec<u64> = g.ranking.to_vec()[..DRIFT_TOP].to_vec();
        let mut out = Vec::new();
        while g.next_line(&mut out) {}
        let (mut users, mut items): (HashMap<String, u64>, HashMap<String, u64>) = Default::default();
        let mut n = 0u64;
        for line in lines(&out) {
            if let (Kind::Interaction, Some(v)) = classify(line, &o) {
                n += 1;
                *users.entry(v["user_id"].as_str().unwrap().into()).or_default() += 1;
                *items.entry(v["item_id"].as_str().unwrap().into()).or_default() += 1;
            }
        }
        // Zipf(0.8) over 100k users: the top user about 2.2 %; Zipf(1.1) over 50k
        // items: the top item about 13.9 %.
        let top_user = *users.values().max().unwrap() as f64 / n as f64;
        assert!((0.018..0.026).contains(&top_user), "{top_user}");
        let top_item = *items.values().max().unwrap() as f64 / n as f64;
        assert!((0.13..0.15).contains(&top_item), "{top_item}");
        // No drift before line 100,000: the top 20 are untouched by catalog inserts.
        assert_eq!(g.ranking.to_vec()[..DRIFT_TOP], top20[..]);
        assert_eq!(g.ranking.len(), 50_000);

        g.opts.events += 1;
        assert!(g.next_line(&mut out));
        let promoted = g.ranking.to_vec()[..DRIFT_TOP].iter().filter(|i| !top20.contains(i)).count();
        assert!((1..=DRIFT_PROMOTE).contains(&promoted), "{promoted}");
        assert_eq!(g.ranking.len(), 50_000);
    }

    #[test]
    fn generator_sessions_fix_the_device_and_placements_follow_the_mix() {
        let o = GenOptions { events: 200_000, users: 1000, rate_per_s: 2.0, ..GenOptions::default() };
        let out = generate(&o);
        let mut sessions: HashMap<String, (String, String)> = HashMap::new();
        let mut user_sessions: HashMap<String, HashSet<String>> = HashMap::new();
        let mut placements: HashMap<String, u64> = HashMap::new();
        let mut n = 0u64;
        for line in lines(&out) {
            let (Kind::Interaction, Some(v)) = classify(line, &o) else {
                continue;
            };
            n += 1;
            let user = v["user_id"].as_str().unwrap().to_string();
            let device = v["context"]["device"].as_str().unwrap().to_string();
            let sid = v["session_id"].as_str().unwrap().to_string();
            let entry = sessions.entry(sid.clone()).or_insert((user.clone(), device.clone()));
            assert_eq!(*entry, (user.clone(), device), "session keeps user and device");
            user_sessions.entry(user).or_default().insert(sid);
            *placements.entry(v["context"]["placement"].as_str().unwrap().into()).or_default() += 1;
        }
        // 100,000 s of event time over 1000 users: sessions break on > 30 min gaps.
        assert!(sessions.len() > 5 * user_sessions.len(), "{}", sessions.len());
        let mut devices: HashMap<&str, u64> = HashMap::new();
        for (_, device) in sessions.values() {
            *devices.entry(device.as_str()).or_default() += 1;
        }
        let m = sessions.len() as f64;
        for (device, share) in [("mobile", 0.5), ("desktop", 1.0 / 3.0), ("tv", 1.0 / 6.0)] {
            let got = devices[device] as f64 / m;
            assert!((got - share).abs() < 0.03, "{device}: {got}");
        }
        for (placement, share) in [("home", 0.4), ("search", 0.4), ("pdp", 0.2)] {
            let got = placements[placement] as f64 / n as f64;
            assert!((got - share).abs() < 0.005, "{placement}: {got}");
        }
    }

    #[test]
    fn generator_validate_matches_parse_args() {
        assert_eq!(GenOptions::default().validate(), Ok(()));
        assert_eq!(
            GenOptions::default(),
            GenOptions {
                events: 1_000_000,
                users: 100_000,
                items: 50_000,
                seed: 42,
                malformed_rate: 0.001,
                duplicate_rate: 0.0,
                disorder_ms: 5000,
                rate_per_s: 1000.0,
                start_ms: 1_767_225_600_000,
            }
        );
        let err = |o: GenOptions| o.validate().unwrap_err();
        let d = GenOptions::default;
        assert_eq!(err(GenOptions { users: 0, ..d() }), "--events must be >= 0, --users and --items >= 1");
        assert_eq!(err(GenOptions { items: 0, ..d() }), "--events must be >= 0, --users and --items >= 1");
        let clock = "--disorder-ms must be >= 0 and --rate-per-s > 0";
        assert_eq!(err(GenOptions { disorder_ms: -1, ..d() }), clock);
        assert_eq!(err(GenOptions { rate_per_s: 0.0, ..d() }), clock);
        assert_eq!(err(GenOptions { rate_per_s: f64::NAN, ..d() }), clock);
        assert_eq!(err(GenOptions { malformed_rate: 1.5, ..d() }), "--malformed-rate must be in [0, 1]");
        assert_eq!(err(GenOptions { duplicate_rate: -0.1, ..d() }), "--duplicate-rate must be in [0, 1]");
        assert_eq!(
            err(GenOptions { malformed_rate: 0.5, duplicate_rate: 0.5, ..d() }),
            "--malformed-rate + --duplicate-rate must leave room for events"
        );
        assert!(Generator::new(GenOptions { users: 0, ..d() }).is_err());
        assert!(Generator::new(GenOptions { events: 0, ..d() }).is_ok());
        assert_eq!(generate(&GenOptions { events: 0, ..d() }), b"");
    }

    #[test]
    fn generator_unbounded_and_tiny_catalogs_keep_going() {
        let mut g = Generator::new(GenOptions {
            events: u64::MAX,
            users: 1,
            items: 1,
            malformed_rate: 0.1,
            duplicate_rate: 0.1,
            ..GenOptions::default()
        })
        .unwrap();
        let mut out = Vec::new();
        for _ in 0..250_000 {
            assert!(g.next_line(&mut out));
        }
        assert_eq!(g.lines_written(), 250_000);
        assert_eq!(g.ranking.len(), 1);
    }

    #[test]
    fn generator_zipf_rank_equals_bisect_right_over_cumulative_weights() {
        let mut rng = Pcg64Mcg::seed_from_u64(1);
        for n in [1, 2, 7, 1000, 100_000] {
            for s in [USER_EXPONENT, ITEM_EXPONENT] {
                let z = Zipf::new(n, s);
                let total = z.cum[n - 1];
                let bisect = |u: f64| z.cum.partition_point(|&c| c <= u * total).min(n - 1);
                let edges = (0..=n.min(1000)).flat_map(|k| {
                    let u = k as f64 / n as f64;
                    [u, u.next_down(), u.next_up()]
                });
                let randoms = (0..100_000).map(|_| rng.random::<f64>());
                for u in edges.chain(randoms).filter(|u| (0.0..1.0).contains(u)) {
                    assert_eq!(z.rank(u), bisect(u), "n {n} s {s} u {u}");
                }
                assert_eq!(z.rank(1.0f64.next_down()), n - 1);
            }
        }
    }

    #[test]
    fn generator_ranking_behaves_like_a_vec_under_inserts_and_removes() {
        let mut rng = Pcg64Mcg::seed_from_u64(2);
        for n in [1usize, 5, 300, 5000] {
            let mut expect: Vec<u64> = (0..n as u64).collect();
            let mut r = Ranking::new(&expect);
            let mut next = n as u64;
            for step in 0..20_000 {
                // As the generator: drop the last, insert anywhere; sometimes
                // move one from anywhere to the front.
                if step % 7 == 0 {
                    let src = rng.random_range(0..n);
                    let item = expect.remove(src);
                    assert_eq!(r.remove(src), item);
                    let dst = rng.random_range(0..n.min(20));
                    r.insert(dst, item);
                    expect.insert(dst, item);
                } else {
                    assert_eq!(r.remove(n - 1), expect.pop().unwrap());
                    let dst = rng.random_range(0..n);
                    r.insert(dst, next);
                    expect.insert(dst, next);
                    next += 1;
                }
                assert_eq!(r.len(), n);
                let probe = rng.random_range(0..n);
                assert_eq!(r.get(probe), expect[probe]);
            }
            assert_eq!(r.to_vec(), expect);
            assert!(r.chunks.iter().all(|c| c.len() <= 2 * r.chunk && c.capacity() <= 2 * r.chunk + 1));
        }
    }

    #[test]
    fn generator_push_u64_writes_decimal() {
        for v in [0, 7, 10, 99, 100, 101, 12_345, 1_767_225_600_000, u64::MAX] {
            let mut out = b"x".to_vec();
            push_u64(&mut out, v);
            assert_eq!(out, format!("x{v}").into_bytes());
        }
    }

    /// Throughput with the defaults; run with
    /// `cargo test -p freshet-io --release generator_throughput -- --ignored --nocapture`.
    #[test]
    #[ignore = "timing, prints lines/s"]
    fn generator_throughput() {
        let o = opts(10_000_000);
        let mut sink = std::io::sink();
        let start = std::time::Instant::now();
        let n = write_events(&o, &mut sink).unwrap();
        let secs = start.elapsed().as_secs_f64();
        let bytes: usize = {
            let mut g = Generator::new(opts(100_000)).unwrap();
            let mut out = Vec::new();
            while g.next_line(&mut out) {}
            out.len()
        };
        println!(
            "{n} lines in {secs:.2} s: {:.2} M lines/s, about {:.0} MB/s",
            n as f64 / secs / 1e6,
            n as f64 / secs * bytes as f64 / 100_000.0 / 1e6
        );
    }
}
