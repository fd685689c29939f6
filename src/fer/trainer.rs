//! One training step on the GPU: the input buffers,
//! the tape, the loss, Adam. A steady-state step allocates no GPU memory and
//! reads back three numbers (loss, correct count, non-finite flag).

use std::sync::Arc;

use anyhow::{Result, ensure};

use crate::engine::nn;
use crate::engine::ops::adam::AdamConfig;
use crate::engine::optim::Adam;
use crate::engine::tape::Tape;
use crate::engine::{Gpu, Tensor};
use crate::fer::data::{PIXELS, SIDE};
use crate::fer::model::Model;

/// A mean cross-entropy above this means the true class gets a probability
/// of e^-10000 on average: the run has diverged even if every number is
/// still finite (with softmax folded into the loss, logits of 1e9 give a
/// finite, absurd loss rather than a NaN).
pub const EXPLODED_LOSS: f32 = 1e4;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepResult {
    /// Mean cross-entropy of the batch (before the update).
    pub loss: f32,
    /// Correct predictions in the batch.
    pub correct: usize,
    /// False when the loss, a gradient or an updated parameter is NaN or
    /// infinite, or the loss exploded past `EXPLODED_LOSS`.
    pub finite: bool,
}

pub struct Trainer {
    pub model: Model,
    pub adam: Adam,
    pub batch: usize,
    /// Label smoothing ε: the targets give the true class 1 - ε + ε/K and every
    /// other class ε/K (0 = one-hot, as in the tutorial).
    pub label_smoothing: f32,
    images: Tensor,
    targets: Tensor,
    /// [loss, correct, flag] gathered for one read-back.
    report: Tensor,
    one: Tensor,
    /// Profile labels of the loss and of the optimizer's update.
    loss_label: Arc<str>,
    adam_label: Arc<str>,
}

impl Trainer {
    pub fn new(model: Model, batch: usize, config: AdamConfig) -> Result<Trainer> {
        let gpu = model.gpu.clone();
        ensure!(batch > 0, "the batch size must be at least 1");
        let adam = Adam::new(&gpu, model.trainable.len(), config)?;
        let classes = model.arch.num_classes;
        let images = gpu
            .persistent(batch * PIXELS)?
            .reshape(&[batch, SIDE, SIDE, 1]);
        let targets = gpu.persistent(batch * classes)?.reshape(&[batch, classes]);
        let report = gpu.persistent(3)?;
        let one = gpu.persistent(1)?;
        gpu.write(&one, &[1.0])?;
        Ok(Trainer {
            model,
            adam,
            batch,
            label_smoothing: 0.0,
            images,
            targets,
            report,
            one,
            loss_label: Arc::from("softmax_xent loss"),
            adam_label: Arc::from("adam"),
        })
    }

    pub fn gpu(&self) -> &Gpu {
        &self.model.gpu
    }

    /// One step on `images` (batch × 2304 values in [0, 1]) and `labels`.
    pub fn step(&mut self, images: &[f32], labels: &[u8]) -> Result<StepResult> {
        let gpu = self.model.gpu.clone();
        ensure!(
            labels.len() == self.batch && images.len() == self.batch * PIXELS,
            "a training batch must hold {} images",
            self.batch
        );
        gpu.write(&self.images, images)?;
        let classes = self.model.arch.num_classes;
        gpu.write(
            &self.targets,
            &smoothed_targets(labels, classes, self.label_smoothing)?,
        )?;
        gpu.write(&self.adam.flag, &[0.0])?;
        self.adam.prepare(&gpu)?;

        let tape = Tape::new(&gpu);
        for (_, view) in self.model.trainable_views() {
            tape.watch(view);
        }
        let logits = self.model.forward(&tape, &self.images, true)?;
        gpu.set_scope(&self.loss_label, "forward");
        let (_, metrics) = nn::softmax_cross_entropy(&tape, &logits, &self.targets)?;
        let grads = tape.backward(&metrics, self.one.clone())?;
        gpu.set_scope(&self.adam_label, "step");
        self.adam.step(&gpu, &self.model.param_set(), &grads)?;
        drop(grads);
        gpu.copy(&metrics, 0, &self.report, 0, 2)?;
        gpu.copy(&self.adam.flag, 0, &self.report, 2, 1)?;
        let r = gpu.read(&self.report)?;
        Ok(StepResult {
            loss: r[0],
            correct: r[1] as usize,
            finite: r[2].to_bits() == 0 && r[0].is_finite() && r[0] <= EXPLODED_LOSS,
        })
    }
}

/// The targets of `labels` [n × classes]: one-hot with `smoothing` 0, else each
/// row `smoothing / classes` everywhere plus `1 - smoothing` on the true class
/// (still a distribution whose argmax is the label, so the step's correct count holds).
pub fn smoothed_targets(labels: &[u8], classes: usize, smoothing: f32) -> Result<Vec<f32>> {
    let mut t = vec![smoothing / classes as f32; labels.len() * classes];
    for (i, &l) in labels.iter().enumerate() {
        ensure!(
            (l as usize) < classes,
            "label {l} is out of range for {classes} classes"
        );
        t[i * classes + l as usize] += 1.0 - smoothing;
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothed_targets_are_distributions_peaked_at_the_label() {
        assert_eq!(
            smoothed_targets(&[2, 0], 3, 0.0).unwrap(),
            [0.0, 0.0, 1.0, 1.0, 0.0, 0.0]
        );
        let t = smoothed_targets(&[1], 4, 0.2).unwrap();
        assert_eq!(t, [0.05, 0.85, 0.05, 0.05]);
        assert!((t.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(smoothed_targets(&[4], 4, 0.1).is_err());
    }
}
