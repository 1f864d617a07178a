//! Event time: per-partition watermarks, idleness, and the combined watermark
//! an operator sees.
//!
//! Conventions follow Flink: a watermark `w` says that no event with
//! `ts <= w` is still expected, so a partition's watermark is
//! `max_ts - max_out_of_orderness - 1`, and a window `[start, end)` is
//! complete once `w >= end - 1`. The combined watermark is the minimum over
//! partitions that are neither idle nor finished; it never goes back. Wall
//! time is passed in by the runtime (milliseconds), never read here.
//!
//! A partition goes idle when it says so (an upstream's idle marker) or, for
//! a source that is not bounded, after the idle timeout without event times.
//! A bounded source's partitions never go idle by the clock: each ends with
//! its input, and one that is only slow to deliver (a busy broker, a slow
//! first fetch) must not let the others' watermark pass its events, or a
//! replay's results would depend on its speed.

use hashbrown::HashMap;

/// The watermark before any event: nothing is complete.
pub const WATERMARK_MIN: i64 = i64::MIN;
/// The watermark at end of input: everything is complete.
pub const WATERMARK_MAX: i64 = i64::MAX;

/// The latest event time accepted: 2^53 ms, about 285,000 years after 1970
/// (and the largest integer a JSON reader using doubles keeps exactly).
/// Event times and durations are bounded so that window, session, lateness
/// and watermark arithmetic (a time plus or minus a few durations) stays far
/// from `i64` overflow; the decoder rejects events outside the range.
pub const MAX_EVENT_TIME: i64 = 1 << 53;
/// The earliest event time accepted: -2^53 ms.
pub const MIN_EVENT_TIME: i64 = -MAX_EVENT_TIME;
/// The longest window size, slide, session gap, allowed lateness or
/// out-of-orderness: 2^53 ms.
pub const MAX_DURATION_MS: i64 = 1 << 53;

/// Bound on every time a state holds (event times, pane and window bounds,
/// session ends plus lateness, watermarks other than the two extremes):
/// with event times and durations bounded as above they stay within ±2^56,
/// so restore refuses snapshots with times outside it.
pub(crate) const STATE_TIME_LIMIT: i64 = 1 << 56;

/// Whether `t` can be a time in a state (see [`STATE_TIME_LIMIT`]).
pub(crate) fn in_state_range(t: i64) -> bool {
    (-STATE_TIME_LIMIT..=STATE_TIME_LIMIT).contains(&t)
}

/// Identifies a source partition: (source index, partition number).
pub type PartitionId = (u16, u32);

#[derive(Debug, Clone, Copy)]
struct PartitionClock {
    max_ts: i64,
    last_active_ms: i64,
    finished: bool,
    /// Said idle, until its next event time.
    said_idle: bool,
    /// Of a bounded source: never idle by the clock.
    bounded: bool,
}

/// Tracks every partition's progress and derives the combined watermark.
#[derive(Debug, Clone)]
pub struct Watermarks {
    partitions: HashMap<PartitionId, PartitionClock>,
    out_of_orderness: i64,
    idle_timeout_ms: i64,
    /// Sources whose partitions never go idle by the clock (sorted).
    bounded_sources: Vec<u16>,
    current: i64,
}

impl Watermarks {
    /// Watermarks with a bounded out-of-orderness and an idle timeout (both
    /// ms); the partitions of `bounded_sources` never go idle by the clock.
    pub fn new(out_of_orderness: i64, idle_timeout_ms: i64, bounded_sources: &[u16]) -> Self {
        let mut bounded_sources = bounded_sources.to_vec();
        bounded_sources.sort_unstable();
        Self { partitions: HashMap::new(), out_of_orderness, idle_timeout_ms, bounded_sources, current: WATERMARK_MIN }
    }

    /// `partition`'s clock, created active at `now_ms` when new.
    fn clock(&mut self, partition: PartitionId, now_ms: i64) -> &mut PartitionClock {
        let bounded = self.bounded_sources.binary_search(&partition.0).is_ok();
        self.partitions.entry(partition).or_insert(PartitionClock {
            max_ts: i64::MIN,
            last_active_ms: now_ms,
            finished: false,
            said_idle: false,
            bounded,
        })
    }

    /// Whether `p` holds the watermark back at wall time `now_ms`.
    fn holds(&self, p: &PartitionClock, now_ms: i64) -> bool {
        !p.finished && !p.said_idle && (p.bounded || now_ms.saturating_sub(p.last_active_ms) < self.idle_timeout_ms)
    }

    /// Records that `partition` delivered data (maybe without event times) at wall time `now_ms`.
    pub fn observe(&mut self, partition: PartitionId, max_ts: Option<i64>, now_ms: i64) {
        let p = self.clock(partition, now_ms);
        if let Some(ts) = max_ts {
            p.max_ts = p.max_ts.max(ts);
            p.last_active_ms = now_ms;
            p.said_idle = false;
        }
    }

    /// Marks a partition idle (its upstream said so): it no longer holds the
    /// watermark back until it delivers an event time again.
    pub fn idle(&mut self, partition: PartitionId, now_ms: i64) {
        self.clock(partition, now_ms).said_idle = true;
    }

    /// Marks a partition as finished (end of input): it no longer holds the watermark back.
    pub fn finish(&mut self, partition: PartitionId) {
        self.clock(partition, 0).finished = true;
    }

    /// Recomputes the combined watermark at wall time `now_ms` and returns it.
    pub fn advance(&mut self, now_ms: i64) -> i64 {
        let mut min: Option<i64> = None;
        let mut all_finished = !self.partitions.is_empty();
        for p in self.partitions.values() {
            if p.finished {
                continue;
            }
            all_finished = false;
            if !self.holds(p, now_ms) {
                continue;
            }
            let w = self.partition_watermark(p.max_ts);
            min = Some(min.map_or(w, |m: i64| m.min(w)));
        }
        let next = if all_finished { WATERMARK_MAX } else { min.unwrap_or(self.current) };
        self.current = self.current.max(next);
        self.current
    }

    /// The watermark `partition` gives when its largest event time is `max_ts`.
    #[inline]
    pub fn partition_watermark(&self, max_ts: i64) -> i64 {
        if max_ts == i64::MIN { WATERMARK_MIN } else { max_ts - self.out_of_orderness - 1 }
    }

    /// Largest event time seen on `partition` so far.
    pub fn partition_max(&self, partition: PartitionId) -> i64 {
        self.partitions.get(&partition).map_or(i64::MIN, |p| p.max_ts)
    }

    /// Minimum watermark over active partitions other than `partition`
    /// (`WATERMARK_MAX` when there are none).
    pub fn others_min(&self, partition: PartitionId, now_ms: i64) -> i64 {
        let mut min = WATERMARK_MAX;
        for (id, p) in &self.partitions {
            if *id == partition || !self.holds(p, now_ms) {
                continue;
            }
            min = min.min(self.partition_watermark(p.max_ts));
        }
        min
    }

    /// Raises the combined watermark to at least `wm` (never lowers it).
    pub fn raise(&mut self, wm: i64) {
        self.current = self.current.max(wm);
    }

    /// The combined watermark as last computed.
    pub fn current(&self) -> i64 {
        self.current
    }

    /// Every partition's progress: (partition, max event time, finished), for snapshots.
    pub fn progress(&self) -> Vec<(PartitionId, i64, bool)> {
        let mut v: Vec<_> = self.partitions.iter().map(|(id, p)| (*id, p.max_ts, p.finished)).collect();
        v.sort_unstable_by_key(|(id, _, _)| *id);
        v
    }

    /// Restores progress saved by [`Watermarks::progress`] and the combined watermark.
    pub fn restore(&mut self, progress: &[(PartitionId, i64, bool)], current: i64, now_ms: i64) {
        for &(id, max_ts, finished) in progress {
            let p = self.clock(id, now_ms);
            (p.max_ts, p.last_active_ms, p.finished) = (max_ts, now_ms, finished);
        }
        self.current = self.current.max(current);
    }

    /// Whether every known partition has finished.
    pub fn all_finished(&self) -> bool {
        !self.partitions.is_empty() && self.partitions.values().all(|p| p.finished)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combined_watermark_is_min_over_active_partitions() {
        let mut w = Watermarks::new(5000, 30_000, &[]);
        w.observe((0, 0), Some(100_000), 0);
        w.observe((0, 1), Some(50_000), 0);
        assert_eq!(w.advance(0), 50_000 - 5001);
        // Partition 1 falls idle: it stops holding the watermark back.
        w.observe((0, 0), Some(200_000), 40_000);
        assert_eq!(w.advance(40_000), 200_000 - 5001);
        // It never goes back when partition 1 wakes up behind.
        w.observe((0, 1), Some(60_000), 41_000);
        assert_eq!(w.advance(41_000), 200_000 - 5001);
    }

    #[test]
    fn a_partition_said_idle_stops_holding_until_it_delivers_again() {
        // A timeout that never passes by itself (a group's repartition reader).
        let mut w = Watermarks::new(0, i64::MAX / 4, &[]);
        w.observe((0, 0), Some(100_000), 1_000);
        w.observe((0, 1), Some(10_000), 1_000);
        assert_eq!(w.advance(1_000), 9_999);
        w.idle((0, 1), 2_000);
        assert_eq!(w.advance(2_000), 99_999);
        // Its next event time makes it count again (the watermark stays).
        w.observe((0, 1), Some(20_000), 3_000);
        w.observe((0, 0), Some(300_000), 3_000);
        assert_eq!(w.advance(3_000), 99_999);
        w.observe((0, 1), Some(200_000), 4_000);
        assert_eq!(w.advance(4_000), 199_999);
        // A partition said idle before it delivered anything holds nothing.
        w.idle((0, 2), 5_000);
        assert_eq!(w.advance(5_000), 199_999);
    }

    #[test]
    fn progress_restores_into_fresh_watermarks() {
        let mut w = Watermarks::new(5000, 30_000, &[]);
        w.observe((0, 0), Some(100_000), 0);
        w.observe((1, 3), Some(90_000), 0);
        w.finish((1, 3));
        let wm = w.advance(0);
        let mut fresh = Watermarks::new(5000, 30_000, &[]);
        fresh.restore(&w.progress(), wm, 50_000);
        assert_eq!(fresh.current(), wm);
        assert_eq!(fresh.progress(), w.progress());
        // Restored partitions count as active again from the restore time.
        assert_eq!(fresh.advance(50_000), 100_000 - 5001);
    }

    #[test]
    fn a_bounded_source_holds_the_watermark_however_long_it_is_silent() {
        // Source 1 is bounded, source 0 is not; a 10 ms timeout.
        let mut w = Watermarks::new(0, 10, &[1]);
        w.observe((0, 0), Some(100_000), 0);
        w.observe((1, 0), Some(10_000), 0);
        w.observe((1, 1), Some(20_000), 0);
        // An hour without a record: the bounded partitions still hold it.
        w.observe((0, 0), Some(200_000), 3_600_000);
        assert_eq!(w.advance(3_600_000), 9_999);
        assert_eq!(w.others_min((0, 0), 3_600_000), 9_999);
        // The unbounded one goes idle as usual.
        w.observe((1, 0), Some(30_000), 3_600_000);
        w.observe((1, 1), Some(40_000), 3_600_000);
        assert_eq!(w.advance(3_600_100), 29_999);
        // A bounded partition lets go when it ends, or when it is said idle.
        w.finish((1, 0));
        assert_eq!(w.advance(3_600_100), 39_999);
        w.idle((1, 1), 3_600_100);
        assert_eq!(w.advance(3_600_100), 39_999, "the idle unbounded partition does not count");
        w.observe((0, 0), Some(300_000), 3_600_200);
        assert_eq!(w.advance(3_600_200), 299_999);
        // A restored bounded partition is bounded still.
        let mut fresh = Watermarks::new(0, 10, &[1]);
        fresh.restore(&[((0, 0), 400_000, false), ((1, 1), 50_000, false)], 0, 0);
        assert_eq!(fresh.advance(1_000_000), 49_999);
    }

    #[test]
    fn all_idle_holds_and_all_finished_releases_everything() {
        let mut w = Watermarks::new(0, 10, &[]);
        w.observe((0, 0), Some(1000), 0);
        assert_eq!(w.advance(0), 999);
        assert_eq!(w.advance(100), 999);
        w.finish((0, 0));
        assert_eq!(w.advance(100), WATERMARK_MAX);
        assert!(w.all_finished());
    }
}
