//! The running value of a hopping window whose panes are costly to merge
//! (distinct counts: one sketch per pane), from a per-key cache of its older
//! panes' merge.
//!
//! A served feature republishes a changed key's running window, and with
//! events near wall time only the newest pane changes between two
//! publications. Merging every pane again (12 sketches for a 1 h window
//! sliding by 5 min) was most of a busy shard's publishing time; with the
//! older panes' merge kept, a publication is one copy and one merge. The
//! cache belongs to no snapshot: it is rebuilt from the panes on demand.
//!
//! A cached merge covers the window starting at `from`, over its panes that
//! start before `until`. It stays valid while those panes do: an event into
//! any pane but a key's newest drops it (`FeatureState::apply_aligned`), and
//! a refresh counts the panes it covers, so a pane removed or inserted there
//! is caught too. Only sketches are kept: exact sets merge cheaply, and
//! keeping one per key would cost memory for nothing.

use super::state::{FeatureState, Pane};
use crate::aggregate::{Acc, AggFn, AggValue, Distinct};

/// The merge of a key's older panes in one window.
#[derive(Debug, Clone)]
pub(super) struct Prefix {
    from: i64,
    until: i64,
    panes: usize,
    acc: Acc,
}

impl FeatureState {
    /// Whether running values are computed through [`Prefix`]es: hopping
    /// windows of distinct counts.
    pub(super) fn keeps_prefixes(&self) -> bool {
        matches!(self.spec.agg, AggFn::Distinct(_))
            && self.spec.window.size_slide().is_some_and(|(size, slide)| size > slide)
    }

    /// The value of key `id`'s window `[start, end)` (as `merged`), merging
    /// its newest pane into the cached merge of the others.
    pub(super) fn merged_through_prefix(&mut self, id: u32, start: i64, end: i64) -> Option<AggValue> {
        let in_window = |p: &Pane| p.start >= start && p.start < end && p.end <= start;
        let panes = &self.entries[id as usize].panes;
        let newest = panes.iter().rposition(in_window)?;
        let until = panes[newest].start;
        let older = || panes[..newest].iter().filter(|p| in_window(p));
        let agg = self.spec.agg;
        let cached = self.prefixes.remove(&id).filter(|c| {
            c.from == start && c.until <= until && older().filter(|p| p.start < c.until).count() == c.panes
        });
        let prefix = match cached {
            Some(mut c) => {
                for p in older().filter(|p| p.start >= c.until) {
                    c.acc.merge(&agg, &p.acc);
                    c.panes += 1;
                }
                c.until = until;
                c
            }
            None => {
                let mut it = older();
                let Some(first) = it.next() else { return panes[newest].acc.value() };
                let mut acc = first.acc.clone();
                let mut n = 1;
                for p in it {
                    acc.merge(&agg, &p.acc);
                    n += 1;
                }
                Prefix { from: start, until, panes: n, acc }
            }
        };
        let mut acc = prefix.acc.clone();
        acc.merge(&agg, &panes[newest].acc);
        if matches!(&prefix.acc, Acc::Distinct(d) if matches!(**d, Distinct::Sketch(_))) {
            self.prefixes.insert(id, prefix);
        }
        acc.into_value()
    }

    /// Drops key `id`'s cached merge (a pane it may cover changed).
    #[inline]
    pub(super) fn forget_prefix(&mut self, id: u32) {
        if !self.prefixes.is_empty() {
            self.prefixes.remove(&id);
        }
    }

    /// Approximate heap bytes of the cache (the sketches aside, as panes' are).
    pub(super) fn prefix_bytes(&self) -> usize {
        self.prefixes.capacity() * (std::mem::size_of::<Prefix>() + 8)
    }
}
