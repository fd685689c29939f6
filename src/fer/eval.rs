//! Evaluation: loss, accuracy, per-class precision / recall / F1 and the
//! confusion matrix of a model on a labelled set, as a table or JSON.

use anyhow::Result;
use serde::Serialize;

use crate::fer::data::Dataset;
use crate::fer::infer::{self, Tta};
use crate::fer::model::Model;

/// Inference batch size: large batches amortise per-dispatch costs.
pub const EVAL_BATCH: usize = 256;

#[derive(Clone, Debug, PartialEq)]
pub struct ClassStats {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: u64,
}

#[derive(Clone, Debug)]
pub struct Evaluation {
    pub n: usize,
    /// Mean categorical cross-entropy (probabilities clipped like Keras).
    pub loss: f64,
    pub accuracy: f64,
    pub class_names: Vec<String>,
    /// Rows = true class, columns = predicted.
    pub confusion: Vec<Vec<u64>>,
    pub per_class: Vec<ClassStats>,
    pub predictions: Vec<usize>,
    /// n × classes.
    pub probabilities: Vec<f32>,
}

/// Metrics from probabilities and labels.
pub fn score(probs: &[f32], labels: &[u8], class_names: &[String]) -> Evaluation {
    let k = class_names.len();
    let n = labels.len();
    let mut confusion = vec![vec![0u64; k]; k];
    let mut loss = 0.0;
    let mut predictions = Vec::with_capacity(n);
    for (row, &label) in probs.chunks(k).zip(labels) {
        let pred = (0..k).fold(0, |b, j| if row[j] > row[b] { j } else { b });
        predictions.push(pred);
        confusion[label as usize][pred] += 1;
        loss -= (row[label as usize] as f64).clamp(1e-7, 1.0 - 1e-7).ln();
    }
    let correct: u64 = (0..k).map(|i| confusion[i][i]).sum();
    let per_class = (0..k)
        .map(|c| {
            let tp = confusion[c][c] as f64;
            let support: u64 = confusion[c].iter().sum();
            let predicted: u64 = (0..k).map(|r| confusion[r][c]).sum();
            let precision = if predicted > 0 {
                tp / predicted as f64
            } else {
                0.0
            };
            let recall = if support > 0 {
                tp / support as f64
            } else {
                0.0
            };
            let f1 = if precision + recall > 0.0 {
                2.0 * precision * recall / (precision + recall)
            } else {
                0.0
            };
            ClassStats {
                precision,
                recall,
                f1,
                support,
            }
        })
        .collect();
    Evaluation {
        n,
        loss: if n > 0 { loss / n as f64 } else { f64::NAN },
        accuracy: if n > 0 {
            correct as f64 / n as f64
        } else {
            f64::NAN
        },
        class_names: class_names.to_vec(),
        confusion,
        per_class,
        predictions,
        probabilities: probs.to_vec(),
    }
}

/// Run the model over a dataset and score it.
pub fn evaluate(
    model: &Model,
    ds: &Dataset,
    class_names: &[String],
    tta: Tta,
) -> Result<Evaluation> {
    let probs = infer::probabilities(model, &ds.pixels, EVAL_BATCH, tta)?;
    Ok(score(&probs, &ds.labels, class_names))
}

/// What `wgfer eval --json` prints and `test_metrics.json` holds.
#[derive(Serialize)]
pub struct EvaluationJson<'a> {
    pub n: usize,
    /// Non-finite values (no samples) are written as `null`.
    pub loss: f64,
    pub accuracy: f64,
    pub classes: &'a [String],
    /// Rows = true class, columns = predicted.
    pub confusion: &'a [Vec<u64>],
    pub per_class: Vec<ClassJson<'a>>,
}

/// One class's row of [`EvaluationJson::per_class`].
#[derive(Serialize)]
pub struct ClassJson<'a> {
    pub class: &'a str,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: u64,
}

impl Evaluation {
    /// The metrics in their JSON shape (serialize with `serde_json`).
    pub fn to_json(&self) -> EvaluationJson<'_> {
        let per_class = self
            .class_names
            .iter()
            .zip(&self.per_class)
            .map(|(name, s)| ClassJson {
                class: name,
                precision: s.precision,
                recall: s.recall,
                f1: s.f1,
                support: s.support,
            })
            .collect();
        EvaluationJson {
            n: self.n,
            loss: self.loss,
            accuracy: self.accuracy,
            classes: &self.class_names,
            confusion: &self.confusion,
            per_class,
        }
    }

    /// A human-readable report: totals, per-class table, confusion matrix.
    pub fn table(&self) -> String {
        let w = self
            .class_names
            .iter()
            .map(String::len)
            .max()
            .unwrap_or(5)
            .max(9);
        let mut s = format!(
            "n {}   loss {:.4}   accuracy {:.4} ({:.1} %)\n\n",
            self.n,
            self.loss,
            self.accuracy,
            100.0 * self.accuracy
        );
        s += &format!("{:<w$}  precision  recall     f1  support\n", "class");
        for (name, c) in self.class_names.iter().zip(&self.per_class) {
            s += &format!(
                "{name:<w$}  {:9.3}  {:6.3}  {:5.3}  {:7}\n",
                c.precision, c.recall, c.f1, c.support
            );
        }
        s += &format!("\nconfusion (rows = true, columns = predicted)\n{:<w$}", "");
        for name in &self.class_names {
            s += &format!(" {:>9}", truncate(name, 9));
        }
        s += "\n";
        for (name, row) in self.class_names.iter().zip(&self.confusion) {
            s += &format!("{name:<w$}");
            for v in row {
                s += &format!(" {v:>9}");
            }
            s += "\n";
        }
        s
    }
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["a".to_string(), "b".to_string()]
    }

    #[test]
    fn json_has_the_documented_keys_and_values() {
        // Two faces of class a (one right), one of class b (right).
        let probs = [0.9, 0.1, 0.2, 0.8, 0.3, 0.7];
        let e = score(&probs, &[0, 0, 1], &names());
        let j = serde_json::to_value(e.to_json()).unwrap();
        let keys: Vec<&str> = j.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = ["n", "loss", "accuracy", "classes", "confusion", "per_class"];
        want.sort();
        assert_eq!(keys, want);
        assert_eq!(j["n"], 3);
        assert!((j["accuracy"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(j["classes"], serde_json::json!(["a", "b"]));
        assert_eq!(j["confusion"], serde_json::json!([[1, 1], [0, 1]]));
        let b = &j["per_class"][1];
        assert_eq!(b["class"], "b");
        assert_eq!(b["support"], 1);
        assert!((b["precision"].as_f64().unwrap() - 0.5).abs() < 1e-12);
        assert_eq!(b["recall"], 1.0);
        let keys: Vec<&str> = b.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["class", "f1", "precision", "recall", "support"]);
    }

    #[test]
    fn json_writes_null_for_an_empty_set() {
        let e = score(&[], &[], &names());
        let text = serde_json::to_string(&e.to_json()).unwrap();
        assert!(text.contains("\"loss\":null"), "{text}");
        assert!(text.contains("\"accuracy\":null"), "{text}");
    }
}
