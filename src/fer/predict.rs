//! `wgfer predict`: class probabilities for face images (PNG / JPEG of any
//! size) and for the rows of CSV files in the training layout.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use serde_json::json;

use crate::fer::data::{self, LoadOptions, PIXELS};
use crate::fer::eval::EVAL_BATCH;
use crate::fer::image_input::load_face;
use crate::fer::model::Model;
use crate::fer::trainer::predict;

/// One answer: where the face came from and its probabilities.
pub struct Prediction {
    pub input: String,
    pub probabilities: Vec<f32>,
}

/// The shipped model, found beside the sources the binary was built from or
/// beside the binary (`target/release/wgfer` → `models/`); `WGFER_MODEL` overrides.
pub fn default_weights() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("WGFER_MODEL") {
        return Ok(PathBuf::from(p));
    }
    let rel = Path::new("models").join("fer5.safetensors");
    let mut candidates = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join(&rel)];
    if let Ok(exe) = std::env::current_exe() {
        candidates.extend(exe.ancestors().skip(1).map(|d| d.join(&rel)));
    }
    candidates.push(rel.clone());
    match candidates.iter().find(|p| p.exists()) {
        Some(p) => Ok(p.clone()),
        None => bail!(
            "no --weights given and the shipped model {} was not found (looked beside the sources and the binary); \
             pass --weights FILE or set WGFER_MODEL",
            rel.display()
        ),
    }
}

/// Faces from every input; a file that cannot be read gives an error entry
/// and the others still get answers.
pub fn gather(inputs: &[PathBuf]) -> (Vec<(String, Vec<u8>)>, Vec<String>) {
    let mut faces = vec![];
    let mut errors = vec![];
    for path in inputs {
        let is_csv = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
        if is_csv {
            match data::load_csv(
                path,
                &LoadOptions {
                    classes: Some(256),
                    ..LoadOptions::default()
                },
            ) {
                Ok(ds) => {
                    for i in 0..ds.len() {
                        faces.push((
                            format!("{}:{}", path.display(), i + 2),
                            ds.image(i).to_vec(),
                        ));
                    }
                }
                Err(e) => errors.push(format!("{e:#}")),
            }
        } else {
            match load_face(path) {
                Ok(px) => faces.push((path.display().to_string(), px)),
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
    }
    (faces, errors)
}

pub fn run(model: &Model, faces: &[(String, Vec<u8>)], tta_flip: bool) -> Result<Vec<Prediction>> {
    let pixels: Vec<u8> = faces.iter().flat_map(|(_, p)| p.iter().copied()).collect();
    debug_assert_eq!(pixels.len(), faces.len() * PIXELS);
    let probs = predict(model, &pixels, EVAL_BATCH, tta_flip)?;
    let k = model.arch.num_classes;
    Ok(faces
        .iter()
        .zip(probs.chunks(k))
        .map(|((input, _), p)| Prediction {
            input: input.clone(),
            probabilities: p.to_vec(),
        })
        .collect())
}

impl Prediction {
    pub fn best(&self) -> usize {
        (0..self.probabilities.len()).fold(0, |b, j| {
            if self.probabilities[j] > self.probabilities[b] {
                j
            } else {
                b
            }
        })
    }

    pub fn to_json(&self, class_names: &[String]) -> serde_json::Value {
        let probs: serde_json::Map<String, serde_json::Value> = class_names
            .iter()
            .zip(&self.probabilities)
            .map(|(c, p)| (c.clone(), json!(p)))
            .collect();
        json!({
            "input": self.input,
            "prediction": class_names[self.best()],
            "probabilities": probs,
        })
    }

    pub fn line(&self, class_names: &[String]) -> String {
        let best = self.best();
        let all: Vec<String> = class_names
            .iter()
            .zip(&self.probabilities)
            .map(|(c, p)| format!("{c} {:.3}", p))
            .collect();
        format!(
            "{}: {} ({:.1} %)   [{}]",
            self.input,
            class_names[best],
            100.0 * self.probabilities[best],
            all.join(", ")
        )
    }
}
