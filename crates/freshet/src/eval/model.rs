//! The interface between the prequential replay and a recommender: the
//! replay asks for a top-k list before each evaluated event and then feeds
//! every event, in canonical order.
//!
//! The trait says nothing about how a model is built or configured; that is
//! `models` (the Freshet model) and `baselines` (the peer's oracles).

/// A recommender driven by the prequential replay. Indices are the dataset's dense
/// user/item indices (first appearance in canonical order).
pub trait StreamRecommender {
    /// Top-k items for `user`, best first, among items seen so far minus the user's own.
    fn recommend(&mut self, user: u32, k: usize, out: &mut Vec<u32>);
    /// Learn one interaction (called for every position, after any recommend for it).
    fn learn(&mut self, user: u32, item: u32, timestamp: f64);
}
