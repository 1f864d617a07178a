//! The models `freshet eval --model freshet` replays: the Freshet
//! recommender, and with `--ablation` one variant per candidate generator.
//! This is the one place that builds them from a config; the replay only
//! sees [`StreamRecommender`]s.

use std::path::Path;

use anyhow::Result;

use super::baselines::{ItemKnn, Pop};
use super::dataset::Stream;
use super::model::StreamRecommender;

/// The models `freshet eval` replays: the main one, and with `ablation` one per generator.
#[allow(clippy::type_complexity)]
pub fn freshet_models(
    config: Option<&Path>,
    ablation: bool,
    stream: &Stream,
) -> Result<(Box<dyn StreamRecommender>, Vec<(String, Box<dyn StreamRecommender>)>)> {
    // Replaced by the recommender
    let _ = config;
    let main: Box<dyn StreamRecommender> = Box::new(ItemKnn::new(stream.n_items()));
    let mut ablations: Vec<(String, Box<dyn StreamRecommender>)> = Vec::new();
    if ablation {
        ablations.push(("pop".into(), Box::new(Pop::new())));
        ablations.push(("itemknn".into(), Box::new(ItemKnn::new(stream.n_items()))));
    }
    Ok((main, ablations))
}
