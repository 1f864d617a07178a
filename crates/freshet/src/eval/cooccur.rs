//! Item-item co-occurrence counts for the item-kNN baseline: `C[a][b]`, the
//! number of distinct users who interacted with both `a` and `b`.
//!
//! Two layouts with the same answers: a dense `u32` matrix when the catalog
//! is small enough (the peer's layout; MovieLens-latest-small's 9,724 items
//! take 378 MB, and a row is a contiguous scan), and one hash map per item
//! otherwise (memory in proportion to the pairs that occur). Only counting
//! and reading rows live here; scoring is `baselines`' business.

use rustc_hash::FxHashMap;

/// The largest dense matrix, in bytes; larger catalogs use hash maps.
pub const DENSE_MAX_BYTES: usize = 512 << 20;

/// Symmetric co-occurrence counts.
pub enum CoCounts {
    /// Row-major `items × items` matrix.
    Dense {
        /// Items per row (the fixed catalog size).
        items: usize,
        /// `counts[a * items + b]`.
        counts: Vec<u32>,
    },
    /// `rows[a][b]`, absent meaning 0.
    Sparse(Vec<FxHashMap<u32, u32>>),
}

impl CoCounts {
    /// Counts for a catalog of `items` items: dense if that fits in
    /// `dense_max_bytes`, sparse (and growing as needed) otherwise.
    pub fn new(items: usize, dense_max_bytes: usize) -> Self {
        match items.checked_mul(items).and_then(|cells| cells.checked_mul(4)) {
            Some(bytes) if items > 0 && bytes <= dense_max_bytes => {
                Self::Dense { items, counts: vec![0; items * items] }
            }
            _ => Self::Sparse(Vec::new()),
        }
    }

    /// Adds one user who has both `a` and `b` (`a != b`), in both directions.
    ///
    /// # Panics
    /// In the dense layout, if an item is not below the catalog size given to
    /// [`CoCounts::new`].
    #[inline]
    pub fn add_pair(&mut self, a: u32, b: u32) {
        let (a, b) = (a as usize, b as usize);
        match self {
            Self::Dense { items, counts } => {
                counts[a * *items + b] += 1;
                counts[b * *items + a] += 1;
            }
            Self::Sparse(rows) => {
                let needed = a.max(b) + 1;
                if rows.len() < needed {
                    rows.resize_with(needed, FxHashMap::default);
                }
                *rows[a].entry(b as u32).or_default() += 1;
                *rows[b].entry(a as u32).or_default() += 1;
            }
        }
    }

    /// Adds `sum over j in rows (in order) of C[j][c] / sqrt(n[j])` to
    /// `score[c]` for every item `c < score.len()`, in float64 and in the
    /// order of `rows`, and appends to `touched` every `c` that gets a
    /// non-zero sum. `n[j]` bounds row j's counts and `sqrt_n[j]` is its
    /// square root; `score` must be all zeros on entry; `weight` is scratch.
    pub fn sum_rows(
        &self,
        rows: &[u32],
        (n, sqrt_n): (&[u32], &[f64]),
        weight: &mut Vec<f64>,
        score: &mut [f64],
        touched: &mut Vec<u32>,
    ) {
        // Per row j, `weight[offset + count]` is `count / sqrt(n[j])`, the
        // same division as per cell (so the same bits), once per count: a
        // count is at most n[j].
        weight.clear();
        let mut offsets = Vec::with_capacity(rows.len());
        for &j in rows {
            let (n_j, norm) = (n[j as usize], sqrt_n[j as usize]);
            offsets.push(weight.len());
            weight.extend((0..=n_j).map(|count| f64::from(count) / norm));
        }
        match self {
            Self::Dense { items, counts } => {
                // Column blocks, rows summed in order inside each column: the
                // score array is written once, and a zero count adds an
                // exact 0.0, so no branch is needed.
                const LANES: usize = 8;
                let starts: Vec<(usize, usize)> =
                    rows.iter().zip(&offsets).map(|(&j, &offset)| (j as usize * items, offset)).collect();
                let block = |c: usize, out: &mut [f64]| {
                    let mut acc = [0.0f64; LANES];
                    for &(row, offset) in &starts {
                        let cells = &counts[row + c..row + c + out.len()];
                        let table = &weight[offset..];
                        for (a, &count) in acc.iter_mut().zip(cells) {
                            *a += table[count as usize];
                        }
                    }
                    for (s, a) in out.iter_mut().zip(acc) {
                        *s += a;
                    }
                };
                let (head, rest) = score.split_at_mut(score.len() / LANES * LANES);
                for (b, out) in head.chunks_exact_mut(LANES).enumerate() {
                    // A fixed width, so the lanes stay in registers.
                    let out: &mut [f64; LANES] = out.try_into().expect("chunks_exact_mut yields LANES");
                    let c = b * LANES;
                    let mut acc = [0.0f64; LANES];
                    for &(row, offset) in &starts {
                        let cells: &[u32; LANES] =
                            counts[row + c..row + c + LANES].try_into().expect("a slice of LANES cells");
                        let table = &weight[offset..];
                        for l in 0..LANES {
                            acc[l] += table[cells[l] as usize];
                        }
                    }
                    for l in 0..LANES {
                        out[l] += acc[l];
                    }
                }
                block(head.len(), rest);
                touched.extend(score.iter().enumerate().filter(|(_, s)| **s != 0.0).map(|(c, _)| c as u32));
            }
            Self::Sparse(maps) => {
                for (&j, &offset) in rows.iter().zip(&offsets) {
                    let Some(row) = maps.get(j as usize) else { continue };
                    for (&c, &count) in row {
                        if let Some(s) = score.get_mut(c as usize) {
                            if *s == 0.0 {
                                touched.push(c);
                            }
                            *s += weight[offset + count as usize];
                        }
                    }
                }
            }
        }
    }

    /// `C[a][b]`.
    #[cfg(test)]
    pub fn get(&self, a: u32, b: u32) -> u32 {
        match self {
            Self::Dense { items, counts } => counts[a as usize * items + b as usize],
            Self::Sparse(rows) => rows.get(a as usize).and_then(|r| r.get(&b)).copied().unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_and_sparse_count_and_read_the_same() {
        let mut dense = CoCounts::new(5, DENSE_MAX_BYTES);
        let mut sparse = CoCounts::new(5, 0);
        assert!(matches!(dense, CoCounts::Dense { .. }));
        assert!(matches!(sparse, CoCounts::Sparse(_)));
        for (a, b) in [(0, 1), (1, 0), (2, 4), (0, 1), (3, 1)] {
            dense.add_pair(a, b);
            sparse.add_pair(a, b);
        }
        assert_eq!(dense.get(0, 1), 3);
        assert_eq!(sparse.get(1, 0), 3);
        let n = [3, 4, 1, 1, 1]; // bounds on each row's counts
        let sqrt_n = n.map(|x: u32| f64::from(x).sqrt());
        for rows in [&[0u32][..], &[1, 0], &[4, 2, 3, 1]] {
            let (mut sd, mut ss) = (vec![0.0; 4], vec![0.0; 4]);
            let (mut td, mut ts, mut w) = (Vec::new(), Vec::new(), Vec::new());
            dense.sum_rows(rows, (&n, &sqrt_n), &mut w, &mut sd, &mut td);
            sparse.sum_rows(rows, (&n, &sqrt_n), &mut w, &mut ss, &mut ts);
            ts.sort_unstable();
            assert_eq!((&sd, &td), (&ss, &ts), "rows {rows:?}");
        }
    }
}
