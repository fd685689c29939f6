//! What a weights file was trained on, recorded in its metadata under `training`, so that
//! an evaluation can tell when it is scoring a model on its own training rows.
//!
//! The record names the data by content (the SHA-256 and size of the CSV once decompressed,
//! see [`DataFingerprint`]), the split (Kaggle's Usage column, or the seeded 90/5/5 split with
//! its seed and the row count it was drawn from), and the recipe (the run's settings).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::fer::data::{DataFingerprint, Dataset, SplitName};
use crate::fer::train::RunConfig;

/// The metadata key of the record (a JSON object).
pub const META_TRAINING: &str = "training";

/// What a model was trained on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainedOn {
    /// The data file's name, for people (the fingerprint identifies it).
    pub file: String,
    pub data: DataFingerprint,
    /// Faces loaded (after `--limit` and skipped rows): the seeded split depends on it.
    pub rows: usize,
    pub split: SplitRecipe,
    /// The run's settings (its `config.json` less the data path): epochs, lr, batch, flip, ...
    /// Kept as JSON so that a later wgfer still reads the record of an older one.
    pub recipe: serde_json::Value,
}

/// A path's last part, as records name files for people (empty when there is none).
pub fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// How the rows were split into train / validation / test.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SplitRecipe {
    /// Kaggle's Usage column: Training / PublicTest / PrivateTest.
    Usage,
    /// The tutorial's seeded random split; `fractions` are train, validation, test.
    Seeded { seed: u64, fractions: [f64; 3] },
}

impl TrainedOn {
    /// The record of a run with `config` on `ds` (loaded from the file `data` fingerprints).
    pub fn new(config: &RunConfig, data: &DataFingerprint, ds: &Dataset) -> Result<TrainedOn> {
        let mut recipe = serde_json::to_value(config)?;
        if let Some(map) = recipe.as_object_mut() {
            map.remove("data");
            let init_recipe = map.remove("init_recipe");
            if let Some(init) = &config.init {
                let (file, recipe) = (file_name(init), init_recipe.unwrap_or_default());
                map.insert(
                    "init".into(),
                    serde_json::json!({"file": file, "recipe": recipe}),
                );
            }
        }
        Ok(TrainedOn {
            file: file_name(&config.data),
            data: data.clone(),
            rows: ds.len(),
            split: match ds.usage {
                Some(_) => SplitRecipe::Usage,
                None => SplitRecipe::Seeded {
                    seed: config.seed,
                    fractions: [0.9, 0.05, 0.05],
                },
            },
            recipe,
        })
    }

    /// The metadata entry, for [`crate::fer::model::Model::save`]'s `extra`.
    pub fn entry(&self) -> Result<(&'static str, String)> {
        Ok((META_TRAINING, serde_json::to_string(self)?))
    }

    /// The record in a weights file's metadata; `None` when the file has none (weights from
    /// elsewhere, or saved before wgfer recorded it).
    pub fn from_metadata(meta: &BTreeMap<String, String>, origin: &str) -> Result<Option<Self>> {
        meta.get(META_TRAINING)
            .map(|s| serde_json::from_str(s))
            .transpose()
            .with_context(|| format!("{origin}: the `{META_TRAINING}` metadata is unreadable"))
    }

    /// The record in the weights file at `path` (see [`TrainedOn::from_metadata`]); a
    /// Keras file, converted as `Model::load` converts it, records none.
    pub fn read(path: &Path) -> Result<Option<Self>> {
        let meta = crate::fer::model::read_metadata(path)?;
        Self::from_metadata(&meta, &path.display().to_string())
    }

    /// Why an evaluation of the `split` part (drawn with `seed` from `rows` faces) of the
    /// data `data` includes rows this model was trained on; `None` when it does not.
    pub fn overlap(
        &self,
        data: &DataFingerprint,
        rows: usize,
        split: SplitName,
        seed: u64,
    ) -> Option<String> {
        if *data != self.data {
            return None;
        }
        let held_out = match split {
            SplitName::All => return Some("all its rows are scored".into()),
            SplitName::Train => return Some("its training split is scored".into()),
            SplitName::Validation => "validation",
            SplitName::Test => "test",
        };
        match self.split {
            SplitRecipe::Usage => None,
            SplitRecipe::Seeded { seed: s, .. } if s == seed && rows == self.rows => None,
            SplitRecipe::Seeded { seed: s, .. } => Some(format!(
                "this {held_out} split is drawn with seed {seed} from {rows} faces, the model's \
                 with seed {s} from {} faces, so most of these faces were training faces",
                self.rows
            )),
        }
    }

    /// How to score this model's held-out test faces of its data, when `rows` faces of it
    /// were loaded.
    pub fn fix(&self, rows: usize) -> String {
        match self.split {
            SplitRecipe::Usage => "`--split test`".into(),
            SplitRecipe::Seeded { seed, .. } if rows == self.rows => {
                format!("`--split test --seed {seed}`")
            }
            SplitRecipe::Seeded { .. } => format!(
                "`wgfer eval --run DIR` on the model's run directory (it split only {} faces)",
                self.rows
            ),
        }
    }
}

/// The metadata entry recording what a run with `config` trained on: the lead's way to
/// re-save weights with their record. `ds` and `data` are what
/// [`crate::fer::data::load_csv_fingerprinted`] returns for `config.data` and
/// `config.load_options()`.
pub fn training_metadata(
    config: &RunConfig,
    data: &DataFingerprint,
    ds: &Dataset,
) -> Result<(&'static str, String)> {
    TrainedOn::new(config, data, ds)?.entry()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fer::data::PIXELS;

    fn record(split: SplitRecipe) -> TrainedOn {
        TrainedOn {
            file: "emotion.csv.gz".into(),
            data: fp("a"),
            rows: 1000,
            split,
            recipe: serde_json::json!({"epochs": 20}),
        }
    }

    fn fp(tag: &str) -> DataFingerprint {
        DataFingerprint {
            sha256: tag.repeat(64),
            bytes: 10,
        }
    }

    #[test]
    fn overlap_with_the_training_rows() {
        let seeded = record(SplitRecipe::Seeded {
            seed: 0,
            fractions: [0.9, 0.05, 0.05],
        });
        let same = fp("a");
        assert!(seeded.overlap(&same, 1000, SplitName::All, 0).is_some());
        assert!(seeded.overlap(&same, 1000, SplitName::Train, 0).is_some());
        assert_eq!(seeded.overlap(&same, 1000, SplitName::Test, 0), None);
        assert_eq!(seeded.overlap(&same, 1000, SplitName::Validation, 0), None);
        // Another seed or another row count draws another split.
        assert!(seeded.overlap(&same, 1000, SplitName::Test, 1).is_some());
        assert!(seeded.overlap(&same, 999, SplitName::Test, 0).is_some());
        // Other data: no overlap.
        assert_eq!(seeded.overlap(&fp("b"), 1000, SplitName::All, 0), None);
        // The Usage split does not depend on the seed.
        let usage = record(SplitRecipe::Usage);
        assert_eq!(usage.overlap(&same, 5, SplitName::Test, 9), None);
        assert!(usage.overlap(&same, 5, SplitName::All, 9).is_some());
        assert_eq!(seeded.fix(1000), "`--split test --seed 0`");
        assert!(seeded.fix(999).contains("--run"));
    }

    #[test]
    fn the_record_round_trips_through_metadata() {
        let config: RunConfig = serde_json::from_value(serde_json::json!({
            "data": "/somewhere/emotion.csv.gz", "epochs": 30, "batch_size": 64, "lr": 0.001,
            "seed": 7, "patience": 20, "augment": true, "flip": true, "classes": null,
            "class_names": [], "skip_bad_rows": false, "limit": null, "steps_per_epoch": null,
            "reduce_lr_patience": 3
        }))
        .unwrap();
        let ds = Dataset {
            pixels: vec![0; 3 * PIXELS],
            labels: vec![0, 1, 2],
            usage: None,
            num_classes: 5,
            skipped_rows: 0,
        };
        let (key, value) = training_metadata(&config, &fp("c"), &ds).unwrap();
        let meta = BTreeMap::from([(key.to_string(), value)]);
        let back = TrainedOn::from_metadata(&meta, "x").unwrap().unwrap();
        assert_eq!(back.file, "emotion.csv.gz");
        assert_eq!((back.rows, &back.data), (3, &fp("c")));
        assert_eq!(
            back.split,
            SplitRecipe::Seeded {
                seed: 7,
                fractions: [0.9, 0.05, 0.05]
            }
        );
        assert_eq!(back.recipe["flip"], true);
        assert_eq!(back.recipe["reduce_lr_patience"], 3);
        assert!(back.recipe.get("data").is_none());
        assert_eq!(
            TrainedOn::from_metadata(&BTreeMap::new(), "x").unwrap(),
            None
        );
    }
}
