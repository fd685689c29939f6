//! `wgfer average`: stochastic weight averaging (Izmailov et al., 2018). A run
//! that goes on at a constant learning rate wanders around a wide low region
//! of the loss; the mean of the weights it passes through (say, each epoch's
//! `last.safetensors`) lies nearer that region's middle and often scores
//! better on new faces than any one of them. The batch-norm moving statistics
//! are averaged like the weights, so the result loads and runs as it is.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail, ensure};

use crate::fer::checkpoint::{self, NamedTensor};
use crate::fer::model::{self, Architecture};
use crate::fer::provenance::{self, TrainedOn};

/// The mean of several weights files, ready to save.
pub struct Averaged {
    pub arch: Architecture,
    pub class_names: Vec<String>,
    pub tensors: Vec<NamedTensor>,
    /// The files' common training record, its recipe naming the averaged files.
    pub trained_on: Option<TrainedOn>,
}

impl Averaged {
    /// Write as a weights file with the usual metadata.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut meta: BTreeMap<String, String> =
            model::metadata(self.arch.kind, &self.class_names)?;
        if let Some(record) = &self.trained_on {
            let (key, value) = record.entry()?;
            meta.insert(key.to_string(), value);
        }
        checkpoint::save(path, &self.tensors, &meta)
    }
}

/// The mean of the weights in `paths`: they must share the layer graph, the
/// classes and, where they record one, the training data and split.
pub fn average(paths: &[PathBuf]) -> Result<Averaged> {
    ensure!(
        paths.len() >= 2,
        "averaging needs two weights files or more"
    );
    let mut files = Vec::with_capacity(paths.len());
    for path in paths {
        files.push(model::read_weights(path)?);
    }
    let (arch, class_names, _) = &files[0];
    let mut records = Vec::with_capacity(paths.len());
    for (path, (a, names, weights)) in paths.iter().zip(&files) {
        ensure!(
            a.kind == arch.kind && names == class_names,
            "{} is a `{}` model of {}; {} a `{}` model of {}: only models of one layer graph \
             and one class list average",
            path.display(),
            a.kind.name(),
            names.join(","),
            paths[0].display(),
            arch.kind.name(),
            class_names.join(",")
        );
        let origin = path.display().to_string();
        records.push(TrainedOn::from_metadata(&weights.metadata, &origin)?);
    }
    let trained_on = common_record(paths, &records)?;
    let sets: Vec<&[NamedTensor]> = files.iter().map(|(_, _, w)| &w.tensors[..]).collect();
    let tensors = mean_of(&sets);
    let (arch, class_names, _) = files.swap_remove(0);
    Ok(Averaged {
        tensors,
        trained_on,
        arch,
        class_names,
    })
}

/// The element-wise mean (summed in f64) of tensor lists of equal names and shapes.
pub fn mean_of(sets: &[&[NamedTensor]]) -> Vec<NamedTensor> {
    let n = sets.len() as f64;
    (0..sets[0].len())
        .map(|i| {
            let mut sum = vec![0f64; sets[0][i].data.len()];
            for set in sets {
                for (s, &v) in sum.iter_mut().zip(&set[i].data) {
                    *s += v as f64;
                }
            }
            NamedTensor {
                name: sets[0][i].name.clone(),
                shape: sets[0][i].shape.clone(),
                data: sum.iter().map(|s| (s / n) as f32).collect(),
            }
        })
        .collect()
}

/// The first file's training record with `averaged` (the files' names) in its
/// recipe, when every file records the same data and split; none when none
/// records any.
fn common_record(paths: &[PathBuf], records: &[Option<TrainedOn>]) -> Result<Option<TrainedOn>> {
    let first = records[0].as_ref();
    let same_run = |r: Option<&TrainedOn>| match (first, r) {
        (Some(f), Some(r)) => r.data == f.data && r.split == f.split && r.rows == f.rows,
        (f, r) => f.is_none() && r.is_none(),
    };
    if let Some(i) = records.iter().position(|r| !same_run(r.as_ref())) {
        bail!(
            "{} and {} were not trained on the same data and split (or one has no training \
             record): average the weights of one run",
            paths[0].display(),
            paths[i].display()
        );
    }
    let Some(mut record) = first.cloned() else {
        return Ok(None);
    };
    let names: Vec<String> = paths.iter().map(|p| provenance::file_name(p)).collect();
    if let Some(map) = record.recipe.as_object_mut() {
        map.insert("averaged".into(), serde_json::json!(names));
    }
    Ok(Some(record))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(name: &str, data: &[f32]) -> NamedTensor {
        NamedTensor {
            name: name.into(),
            shape: vec![data.len()],
            data: data.to_vec(),
        }
    }

    #[test]
    fn the_mean_is_taken_per_element_and_per_tensor() {
        let a = vec![tensor("w", &[1.0, 2.0]), tensor("b", &[0.0])];
        let b = vec![tensor("w", &[3.0, -2.0]), tensor("b", &[1.0])];
        let c = vec![tensor("w", &[2.0, 3.0]), tensor("b", &[2.0])];
        let mean = mean_of(&[&a, &b, &c]);
        assert_eq!(mean[0], tensor("w", &[2.0, 1.0]));
        assert_eq!(mean[1], tensor("b", &[1.0]));
    }
}
