//! Inference: class probabilities for 48x48 u8 faces, in batches, batch
//! norm on its moving statistics. `eval`, `predict` and `serve` all classify
//! through here.

use anyhow::Result;

use crate::engine::Gpu;
use crate::engine::ops::softmax_xent;
use crate::engine::tape::Tape;
use crate::fer::augment::to_f32;
use crate::fer::data::{PIXELS, SIDE};
use crate::fer::model::Model;

/// Class probabilities [n × classes] for u8 images (n × 2304), in batches,
/// batch-norm on its moving statistics. `flip` averages each prediction with
/// that of the mirrored image (test-time augmentation).
pub fn probabilities(model: &Model, pixels: &[u8], batch: usize, flip: bool) -> Result<Vec<f32>> {
    let n = pixels.len() / PIXELS;
    let gpu = &model.gpu;
    let mut probs = Vec::with_capacity(n * model.arch.num_classes);
    let mut input = vec![0f32; batch.min(n.max(1)) * PIXELS];
    for start in (0..n).step_by(batch.max(1)) {
        let count = batch.min(n - start);
        let chunk = &pixels[start * PIXELS..(start + count) * PIXELS];
        let x = &mut input[..count * PIXELS];
        to_f32(chunk, x);
        let mut p = infer(model, gpu, x, count)?;
        if flip {
            for img in x.chunks_mut(PIXELS) {
                for row in img.chunks_mut(SIDE) {
                    row.reverse();
                }
            }
            let q = infer(model, gpu, x, count)?;
            p.iter_mut().zip(q).for_each(|(a, b)| *a = 0.5 * (*a + b));
        }
        probs.extend(p);
    }
    Ok(probs)
}

fn infer(model: &Model, gpu: &Gpu, x: &[f32], count: usize) -> Result<Vec<f32>> {
    let images = gpu.upload(&[count, SIDE, SIDE, 1], x)?;
    let tape = Tape::new(gpu);
    let logits = model.forward(&tape, &images, false)?;
    gpu.read(&softmax_xent::softmax(gpu, &logits)?)
}
