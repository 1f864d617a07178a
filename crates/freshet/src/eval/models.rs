//! The models `freshet eval --model freshet` replays: the Freshet
//! recommender, and with `--ablation` one variant per candidate generator.
//! This is the one place that builds them from a config; the replay only
//! sees [`StreamRecommender`]s.
//!
//! The adapter drives the same `Recommender` and `rank` the pipeline's shard
//! and HTTP API use, on the live model (test, then train): users and items
//! go in by their names in the log, as events would, and ranked items come
//! back as the dataset's indices.

use std::path::Path;

use anyhow::{Context, Result};
use freshet_engine::recommend::{Generator, Query, Ranking, Recommender, RecommenderSpec, rank};

use super::dataset::Stream;
use super::model::StreamRecommender;
use super::replay::ModelFactory;

/// A named model factory, one per replay.
pub type NamedFactory<'s> = (String, Box<ModelFactory<'s>>);

/// The models `freshet eval` replays: the main one, and with `ablation` one per generator.
/// `ms_per_unit` turns the log's timestamps into the model's milliseconds.
pub fn freshet_models<'s>(
    config: Option<&Path>,
    ablation: bool,
    stream: &'s Stream,
    ms_per_unit: f64,
) -> Result<(Box<ModelFactory<'s>>, Vec<NamedFactory<'s>>)> {
    let spec = match config {
        Some(path) => crate::config::recommender_spec_file(path)
            .with_context(|| format!("reading the recommender of {}", path.display()))?,
        None => RecommenderSpec::default(),
    };
    let mut ablations: Vec<NamedFactory<'s>> = Vec::new();
    if ablation {
        for generator in Generator::ALL {
            // Logs carry no embeddings: that generator could only ever propose nothing.
            if generator == Generator::Embedding {
                continue;
            }
            ablations.push((generator.name().to_string(), factory(spec.only(generator), stream, ms_per_unit)));
        }
    }
    Ok((factory(spec, stream, ms_per_unit), ablations))
}

/// Builds Freshet models of `spec` over `stream`.
fn factory<'s>(spec: RecommenderSpec, stream: &'s Stream, ms_per_unit: f64) -> Box<ModelFactory<'s>> {
    Box::new(move || Box::new(FreshetModel::new(spec.clone(), stream, ms_per_unit)))
}

/// The Freshet recommender behind the replay's interface.
struct FreshetModel<'s> {
    model: Recommender,
    stream: &'s Stream,
    ranking: Ranking,
    /// The dataset index of each model item index (items are interned by the
    /// model in the order it first learns them).
    to_dataset: Vec<u32>,
    /// Milliseconds per unit of the log's timestamps.
    ms_per_unit: f64,
}

impl<'s> FreshetModel<'s> {
    fn new(spec: RecommenderSpec, stream: &'s Stream, ms_per_unit: f64) -> Self {
        let (ranking, to_dataset) = (Ranking::default(), Vec::new());
        FreshetModel { model: Recommender::new(spec), stream, ranking, to_dataset, ms_per_unit }
    }
}

impl StreamRecommender for FreshetModel<'_> {
    fn recommend(&mut self, user: u32, k: usize, out: &mut Vec<u32>) {
        out.clear();
        let query = Query::for_user(&self.stream.user_names[user as usize], k);
        rank(&self.model, &query, &mut self.ranking);
        out.extend(self.ranking.items.iter().map(|scored| self.to_dataset[scored.item as usize]));
    }

    fn learn(&mut self, user: u32, item: u32, timestamp: f64) {
        let time_ms = (timestamp * self.ms_per_unit).round() as i64;
        self.model.interaction(
            &self.stream.user_names[user as usize],
            &self.stream.item_names[item as usize],
            None,
            time_ms,
        );
        if self.model.item_count() > self.to_dataset.len() {
            self.to_dataset.push(item);
        }
    }
}
