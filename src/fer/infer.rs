//! Inference: class probabilities for 48x48 u8 faces, in batches, batch
//! norm on its moving statistics. `eval`, `predict` and `serve` all classify
//! through here, with or without test-time augmentation.

use anyhow::Result;

use crate::engine::Gpu;
use crate::engine::ops::softmax_xent;
use crate::engine::tape::Tape;
use crate::fer::augment::to_f32;
use crate::fer::data::{PIXELS, SIDE};
use crate::fer::model::Model;

/// Test-time augmentation: which views of each face the prediction averages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Tta {
    /// The image alone.
    #[default]
    None,
    /// Average the prediction over the image and its mirror (2 views).
    Flip,
    /// The image and its mirror, each also moved by 2 pixels left, right, up and down
    /// (edges repeated, as the training augmentation fills): 10 views.
    Shift,
}

/// How far `Tta::Shift` moves a view: about half the training augmentation's
/// largest shift (10 % of 48 pixels).
const SHIFT: isize = 2;

/// One view of a face: mirrored or not, then moved `dx` pixels right and `dy` down.
#[derive(Clone, Copy, Debug, PartialEq)]
struct View {
    mirror: bool,
    dx: isize,
    dy: isize,
}

impl Tta {
    fn views(self) -> Vec<View> {
        let mirrors: &[bool] = match self {
            Tta::None => &[false],
            Tta::Flip | Tta::Shift => &[false, true],
        };
        let moves: &[(isize, isize)] = match self {
            Tta::Shift => &[(0, 0), (-SHIFT, 0), (SHIFT, 0), (0, -SHIFT), (0, SHIFT)],
            _ => &[(0, 0)],
        };
        let mut views = vec![];
        for &mirror in mirrors {
            for &(dx, dy) in moves {
                views.push(View { mirror, dx, dy });
            }
        }
        views
    }
}

/// `face` (48x48) seen through `view`, into `out`: out(y, x) = face(y - dy, x - dx) of
/// the (mirrored) face, coordinates clamped to the border.
fn look(face: &[f32], view: View, out: &mut [f32]) {
    let clamp = |v: isize| v.clamp(0, SIDE as isize - 1) as usize;
    for y in 0..SIDE {
        let sy = clamp(y as isize - view.dy);
        for x in 0..SIDE {
            let mut sx = clamp(x as isize - view.dx);
            if view.mirror {
                sx = SIDE - 1 - sx;
            }
            out[y * SIDE + x] = face[sy * SIDE + sx];
        }
    }
}

/// Class probabilities [n × classes] for u8 images (n × 2304), in batches,
/// batch-norm on its moving statistics, each the mean over the views of `tta`.
pub fn probabilities(model: &Model, pixels: &[u8], batch: usize, tta: Tta) -> Result<Vec<f32>> {
    let n = pixels.len() / PIXELS;
    let gpu = &model.gpu;
    let views = tta.views();
    let mut probs = Vec::with_capacity(n * model.arch.num_classes);
    let mut faces_buf = vec![0f32; batch.min(n.max(1)) * PIXELS];
    let mut seen_buf = faces_buf.clone();
    for start in (0..n).step_by(batch.max(1)) {
        let count = batch.min(n - start);
        let chunk = &pixels[start * PIXELS..(start + count) * PIXELS];
        let faces = &mut faces_buf[..count * PIXELS];
        let seen = &mut seen_buf[..count * PIXELS];
        to_f32(chunk, faces);
        let mut sum = vec![0f32; count * model.arch.num_classes];
        for &view in &views {
            // The plain view is a copy too: 2,304 values a face, nothing beside the model.
            for (face, out) in faces.chunks(PIXELS).zip(seen.chunks_mut(PIXELS)) {
                look(face, view, out);
            }
            let p = infer(model, gpu, seen, count)?;
            sum.iter_mut().zip(p).for_each(|(s, q)| *s += q);
        }
        probs.extend(sum.into_iter().map(|s| s / views.len() as f32));
    }
    Ok(probs)
}

fn infer(model: &Model, gpu: &Gpu, x: &[f32], count: usize) -> Result<Vec<f32>> {
    let images = gpu.upload(&[count, SIDE, SIDE, 1], x)?;
    let tape = Tape::new(gpu);
    let logits = model.forward(&tape, &images, false)?;
    gpu.read(&softmax_xent::softmax(gpu, &logits)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(mirror: bool, dx: isize, dy: isize) -> View {
        View { mirror, dx, dy }
    }

    #[test]
    fn the_views_of_each_mode() {
        assert_eq!(Tta::None.views().len(), 1);
        assert_eq!(Tta::Flip.views().len(), 2);
        let shift = Tta::Shift.views();
        assert_eq!(shift.len(), 10);
        assert_eq!(shift.iter().filter(|v| v.mirror).count(), 5);
        assert!(shift.contains(&view(true, 0, -SHIFT)));
    }

    #[test]
    fn a_view_mirrors_then_moves_with_the_border_repeated() {
        let face: Vec<f32> = (0..PIXELS).map(|i| i as f32).collect();
        let at = |img: &[f32], y: usize, x: usize| img[y * SIDE + x];
        let mut out = vec![f32::NAN; PIXELS];
        look(&face, view(false, 0, 0), &mut out);
        assert_eq!(out, face);
        look(&face, view(true, 0, 0), &mut out);
        assert_eq!(at(&out, 3, 0), at(&face, 3, SIDE - 1));
        // Moved 2 right and 2 up: the left columns repeat column 0, the bottom rows the last row.
        look(&face, view(false, 2, -2), &mut out);
        assert_eq!(at(&out, 10, 5), at(&face, 12, 3));
        assert_eq!(at(&out, 10, 0), at(&face, 12, 0));
        assert_eq!(at(&out, 10, 1), at(&face, 12, 0));
        assert_eq!(at(&out, SIDE - 1, 7), at(&face, SIDE - 1, 5));
        // Mirrored and moved 2 right: out(y, x) = mirror(y, x - 2).
        look(&face, view(true, 2, 0), &mut out);
        assert_eq!(at(&out, 4, 9), at(&face, 4, SIDE - 1 - 7));
    }
}
