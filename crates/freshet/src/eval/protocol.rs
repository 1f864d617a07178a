//! The prequential protocol's fixed parts, as the peer's README ("Protocol",
//! steps 3–5, 7 and 8) defines them: where the evaluation segment starts,
//! which events are eligible and evaluated, the `eval_positions_sha256` check
//! value, and the per-event metrics.
//!
//! Everything here is a function of the canonical stream alone; no model is
//! involved, so two implementations that agree here measure the same events.

use anyhow::{Result, bail};
use rustc_hash::FxHashSet;
use sha2::{Digest, Sha256};

use super::dataset::Stream;
use super::pytext;

/// The evaluated fraction as the exact rational the peer uses:
/// `Fraction(str(float(text)))`, i.e. the shortest decimal of the double.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EvalFrac {
    /// The number as parsed.
    pub value: f64,
    /// Significant decimal digits.
    digits: u64,
    /// Power of ten the digits are scaled by (`<= 0` in range).
    exponent: i32,
}

impl EvalFrac {
    /// Parses a fraction in `[0, 1]` with Python's `float()` rules.
    pub fn parse(text: &str) -> Result<Self> {
        let Some(x) = pytext::float(text) else { bail!("--eval-frac {text:?} is not a number") };
        if !(0.0..=1.0).contains(&x) {
            bail!("--eval-frac {text:?} must be between 0 and 1");
        }
        // -0.0 is 0: the peer's Fraction reads "-0.0" as zero too.
        let (digits, exponent) = pytext::shortest_decimal(if x == 0.0 { 0.0 } else { x });
        Ok(Self { value: x, digits, exponent })
    }

    /// `floor(n * (1 - frac))` in exact arithmetic, i.e. `n - ceil(n * frac)`;
    /// for 0.2 this is `(4 * n) div 5`.
    pub fn segment_start(self, n: usize) -> usize {
        // In [0, 1] the shortest decimal is d * 10^-s with s >= 0, or exactly 1.
        if self.exponent >= 0 {
            return if self.digits == 0 { n } else { 0 };
        }
        let scale = self.exponent.unsigned_abs();
        // n < 2^64 and digits < 10^17 < 2^57: the product fits in u128.
        let numerator = n as u128 * self.digits as u128;
        let taken = match 10u128.checked_pow(scale) {
            Some(denominator) => numerator.div_ceil(denominator),
            // 10^scale > 2^127 > numerator: the ceiling is 1 unless zero.
            None => u128::from(numerator > 0),
        };
        n - taken as usize
    }
}

/// Which positions are measured: the outcome of steps 3–5.
#[derive(Clone, Debug)]
pub struct Protocol {
    /// First position of the evaluation segment.
    pub start: usize,
    /// Number of eligible events (user seen before, item new to the user).
    pub eligible: usize,
    /// Evaluated positions (every `stride`-th eligible one), ascending.
    pub evaluated: Vec<usize>,
}

impl Protocol {
    /// Marks the eligible and evaluated events of `stream`.
    ///
    /// # Panics
    /// If `stride` is 0.
    pub fn new(stream: &Stream, frac: EvalFrac, stride: usize) -> Self {
        assert!(stride > 0, "the stride must be positive");
        let start = frac.segment_start(stream.len());
        let mut seen: Vec<FxHashSet<u32>> = vec![FxHashSet::default(); stream.n_users()];
        let (mut eligible, mut evaluated) = (0, Vec::new());
        for (p, (&u, &i)) in stream.users.iter().zip(&stream.items).enumerate() {
            let user_items = &mut seen[u as usize];
            if p >= start && !user_items.is_empty() && !user_items.contains(&i) {
                if eligible % stride == 0 {
                    evaluated.push(p);
                }
                eligible += 1;
            }
            user_items.insert(i);
        }
        Self { start, eligible, evaluated }
    }

    /// SHA-256, in lowercase hex, of each evaluated position in decimal
    /// followed by `\n`.
    pub fn positions_sha256(&self) -> String {
        let mut hasher = Sha256::new();
        for p in &self.evaluated {
            hasher.update(format!("{p}\n").as_bytes());
        }
        hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// `(hit, NDCG, reciprocal rank)` of a list where the target is at 0-based
/// `index` (`None`: absent): `1`, `1/log2(rank+1)`, `1/rank` with rank
/// starting at 1, or zeros.
pub fn rank_metrics(index: Option<usize>) -> (f64, f64, f64) {
    match index {
        None => (0.0, 0.0, 0.0),
        Some(i) => {
            let rank = (i + 1) as f64;
            (1.0, 1.0 / (rank + 1.0).log2(), 1.0 / rank)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(frac: &str, n: usize) -> usize {
        EvalFrac::parse(frac).unwrap().segment_start(n)
    }

    #[test]
    fn default_fraction_is_four_fifths_floor() {
        for n in [0, 1, 4, 5, 6, 9, 10, 100_836, 83_846] {
            assert_eq!(start("0.2", n), 4 * n / 5, "n = {n}");
        }
        assert_eq!(start("0.2", 100_836), 80_668);
        assert_eq!(start("0.2", 83_846), 67_076);
    }

    #[test]
    fn fraction_is_the_decimal_not_the_binary_double() {
        // 0.3 as a double is below 3/10; the peer uses 3/10 exactly:
        // floor(10 * 0.7) = 7, while floor(10 * (1 - 0.29999999999999999)) in
        // doubles is also 7, but n = 10^16 separates them.
        assert_eq!(start("0.3", 10), 7);
        assert_eq!(start("0.3", 10_000_000_000_000_000), 7_000_000_000_000_000);
        assert_eq!(start("0.1", 7), 6);
        assert_eq!(start("1e-1", 7), 6);
        // A literal with more digits than the double keeps is read as the peer
        // does: through float, so as 0.3.
        assert_eq!(start("0.30000000000000001", 10), 7);
    }

    #[test]
    fn edges_of_the_range() {
        assert_eq!(start("0", 10), 10);
        assert_eq!(start("-0.0", 10), 10);
        assert_eq!(start("1", 10), 0);
        assert_eq!(start("1.0", 10), 0);
        assert_eq!(start("1e-300", 10), 9);
        assert_eq!(start("1e-300", 0), 0);
        assert_eq!(start("0.999", 1000), 1);
        for bad in ["1.5", "-0.1", "nan", "inf", "x"] {
            assert!(EvalFrac::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn metrics_of_ranks() {
        assert_eq!(rank_metrics(None), (0.0, 0.0, 0.0));
        assert_eq!(rank_metrics(Some(0)), (1.0, 1.0, 1.0));
        let (h, n, r) = rank_metrics(Some(2));
        assert_eq!(h, 1.0);
        assert!((n - 0.5).abs() < 1e-15);
        assert!((r - 1.0 / 3.0).abs() < 1e-15);
    }
}
