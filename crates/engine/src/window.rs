//! Window assignment: tumbling, hopping, session and global windows, and the
//! pane arithmetic that lets hopping windows share per-slice partials.
//!
//! Times are event-time milliseconds since the epoch; windows are aligned to
//! the epoch and half-open, `[start, end)`. A hopping window of `size` sliding
//! by `slide` is made of panes of `gcd(size, slide)`: an event updates one
//! pane, and a window's value is the merge of its panes, so a 1 h window
//! sliding by 1 min keeps one partial per minute, not sixty copies.

use crate::time::MAX_DURATION_MS;

/// A window definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSpec {
    /// Fixed, non-overlapping windows of `size` ms.
    Tumbling {
        /// Window length in ms.
        size: i64,
    },
    /// Windows of `size` ms starting every `slide` ms.
    Hopping {
        /// Window length in ms.
        size: i64,
        /// Distance between window starts in ms.
        slide: i64,
    },
    /// Per-key activity sessions closed by `gap` ms of inactivity.
    Session {
        /// Inactivity gap in ms.
        gap: i64,
    },
    /// One window over all time, closed only at end of input.
    Global,
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Start of the aligned interval of `width` containing `ts`.
#[inline]
pub fn align(ts: i64, width: i64) -> i64 {
    ts - ts.rem_euclid(width)
}

impl WindowSpec {
    /// Checks sizes; the message is for the config key that defined it.
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            WindowSpec::Tumbling { size } if size <= 0 => Err("size must be > 0".into()),
            WindowSpec::Hopping { size, slide } if size <= 0 || slide <= 0 => Err("size and slide must be > 0".into()),
            WindowSpec::Hopping { size, slide } if slide > size => Err("slide must be <= size".into()),
            WindowSpec::Session { gap } if gap <= 0 => Err("gap must be > 0".into()),
            WindowSpec::Tumbling { size } | WindowSpec::Hopping { size, .. } | WindowSpec::Session { gap: size }
                if size > MAX_DURATION_MS =>
            {
                Err("must be at most 2^53 ms (285,000 years)".into())
            }
            _ => Ok(()),
        }
    }

    /// Pane width for tumbling and hopping windows (`None` for the others).
    #[inline]
    pub fn pane_width(&self) -> Option<i64> {
        match *self {
            WindowSpec::Tumbling { size } => Some(size),
            WindowSpec::Hopping { size, slide } => Some(gcd(size, slide)),
            _ => None,
        }
    }

    /// (size, slide) of aligned windows.
    #[inline]
    pub fn size_slide(&self) -> Option<(i64, i64)> {
        match *self {
            WindowSpec::Tumbling { size } => Some((size, size)),
            WindowSpec::Hopping { size, slide } => Some((size, slide)),
            _ => None,
        }
    }

    /// Start of the earliest aligned window that contains time `t`.
    #[inline]
    pub fn first_window_containing(&self, t: i64) -> Option<i64> {
        let (size, slide) = self.size_slide()?;
        Some(align(t - size, slide) + slide)
    }

    /// Start of the latest aligned window that contains time `t`.
    #[inline]
    pub fn last_window_containing(&self, t: i64) -> Option<i64> {
        let (_, slide) = self.size_slide()?;
        Some(align(t, slide))
    }
}

/// Formats milliseconds in the largest whole unit: `5m`, `1h`, `250ms`.
pub fn human_ms(ms: i64) -> String {
    for (unit, size) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)] {
        if ms != 0 && ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

impl std::fmt::Display for WindowSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            WindowSpec::Tumbling { size } => write!(f, "tumbling {}", human_ms(size)),
            WindowSpec::Hopping { size, slide } => write!(f, "hopping {} every {}", human_ms(size), human_ms(slide)),
            WindowSpec::Session { gap } => write!(f, "session gap {}", human_ms(gap)),
            WindowSpec::Global => f.write_str("global"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hopping_windows_share_panes() {
        let w = WindowSpec::Hopping { size: 3_600_000, slide: 300_000 };
        assert_eq!(w.pane_width(), Some(300_000));
        let t = 1_767_225_601_234;
        let first = w.first_window_containing(t).unwrap();
        let last = w.last_window_containing(t).unwrap();
        assert_eq!((last - first) / 300_000 + 1, 12, "an event is in 12 windows");
        assert!(first <= t && t < first + 3_600_000 && first + 3_600_000 - 300_000 <= t);
        let odd = WindowSpec::Hopping { size: 10, slide: 4 };
        assert_eq!(odd.pane_width(), Some(2));
    }

    #[test]
    fn alignment_floors_negative_times() {
        assert_eq!(align(-1, 300_000), -300_000);
        assert_eq!(align(299_999, 300_000), 0);
        let w = WindowSpec::Tumbling { size: 300_000 };
        assert_eq!(w.first_window_containing(-1), Some(-300_000));
        assert_eq!(w.last_window_containing(-1), Some(-300_000));
    }

    #[test]
    fn rejects_bad_sizes() {
        assert!(WindowSpec::Tumbling { size: 0 }.validate().is_err());
        assert!(WindowSpec::Hopping { size: 10, slide: 20 }.validate().is_err());
        assert!(WindowSpec::Session { gap: -1 }.validate().is_err());
        assert!(WindowSpec::Session { gap: MAX_DURATION_MS + 1 }.validate().is_err());
        assert!(WindowSpec::Hopping { size: i64::MAX, slide: 1 }.validate().is_err());
        assert!(WindowSpec::Tumbling { size: MAX_DURATION_MS }.validate().is_ok());
    }
}
