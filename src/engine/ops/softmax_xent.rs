//! Softmax over classes, categorical cross-entropy (mean over the batch) and
//! the two fused. Targets are one-hot (or soft) rows [n, k]. The loss comes
//! back with the batch's correct-prediction count as `metrics` = [loss, correct].

use anyhow::{Result, ensure};
use bytemuck::{Pod, Zeroable};

use crate::engine::{Gpu, Shader, Tensor};

const SHADER: Shader = Shader {
    name: "softmax_xent",
    source: include_str!("../../../shaders/softmax_xent.wgsl"),
};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    k: u32,
    pad: [u32; 2],
}

fn params(x: &Tensor) -> Result<(Params, usize)> {
    let &[n, k] = x.shape() else {
        anyhow::bail!("softmax expects [batch, classes], got {:?}", x.shape())
    };
    ensure!(n > 0 && k > 0, "softmax of an empty batch");
    Ok((
        Params {
            n: n as u32,
            k: k as u32,
            pad: [0; 2],
        },
        n,
    ))
}

fn row_groups(n: usize) -> u32 {
    n.div_ceil(64) as u32
}

pub fn softmax(gpu: &Gpu, logits: &Tensor) -> Result<Tensor> {
    let (p, n) = params(logits)?;
    let y = gpu.empty(logits.shape())?;
    let k = gpu.kernel(&SHADER, "softmax", &[]);
    gpu.dispatch(
        &k,
        bytemuck::bytes_of(&p),
        &[(1, logits), (4, &y)],
        row_groups(n),
    )?;
    Ok(y)
}

pub fn softmax_backward(gpu: &Gpu, y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let (p, n) = params(y)?;
    let dx = gpu.empty(y.shape())?;
    let k = gpu.kernel(&SHADER, "softmax_backward", &[]);
    gpu.dispatch(
        &k,
        bytemuck::bytes_of(&p),
        &[(1, y), (2, dy), (4, &dx)],
        row_groups(n),
    )?;
    Ok(dx)
}

/// Cross-entropy of probabilities against targets: metrics [mean loss, correct].
pub fn xent(gpu: &Gpu, probs: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (p, _) = params(probs)?;
    ensure!(
        probs.shape() == targets.shape(),
        "cross-entropy: {:?} vs targets {:?}",
        probs.shape(),
        targets.shape()
    );
    let metrics = gpu.empty(&[2])?;
    let k = gpu.kernel(&SHADER, "xent", &[]);
    gpu.dispatch(
        &k,
        bytemuck::bytes_of(&p),
        &[(1, probs), (2, targets), (5, &metrics)],
        1,
    )?;
    Ok(metrics)
}

/// d loss / d probs, scaled by `dloss` (one value).
pub fn xent_backward(
    gpu: &Gpu,
    probs: &Tensor,
    targets: &Tensor,
    dloss: &Tensor,
) -> Result<Tensor> {
    let (p, n) = params(probs)?;
    let dp = gpu.empty(probs.shape())?;
    let k = gpu.kernel(&SHADER, "xent_backward", &[]);
    gpu.dispatch(
        &k,
        bytemuck::bytes_of(&p),
        &[(1, probs), (2, targets), (3, dloss), (4, &dp)],
        row_groups(n),
    )?;
    Ok(dp)
}

/// Fused softmax + cross-entropy from logits: (probabilities, metrics [mean loss, correct]).
pub fn softmax_xent(gpu: &Gpu, logits: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor)> {
    let (p, _) = params(logits)?;
    ensure!(
        logits.shape() == targets.shape(),
        "cross-entropy: {:?} vs targets {:?}",
        logits.shape(),
        targets.shape()
    );
    let probs = gpu.empty(logits.shape())?;
    let metrics = gpu.empty(&[2])?;
    let k = gpu.kernel(&SHADER, "softmax_xent", &[]);
    gpu.dispatch(
        &k,
        bytemuck::bytes_of(&p),
        &[(1, logits), (2, targets), (4, &probs), (5, &metrics)],
        1,
    )?;
    Ok((probs, metrics))
}

/// d loss / d logits = (probs − targets) · dloss / n.
pub fn softmax_xent_backward(
    gpu: &Gpu,
    probs: &Tensor,
    targets: &Tensor,
    dloss: &Tensor,
) -> Result<Tensor> {
    let (p, n) = params(probs)?;
    let dx = gpu.empty(probs.shape())?;
    let k = gpu.kernel(&SHADER, "softmax_xent_backward", &[]);
    gpu.dispatch(
        &k,
        bytemuck::bytes_of(&p),
        &[(1, probs), (2, targets), (3, dloss), (4, &dx)],
        row_groups(n),
    )?;
    Ok(dx)
}

/// CPU references (f64), rows of k classes.
pub mod cpu {
    const CLIP: f64 = 1e-7;

    pub fn softmax(x: &[f64], k: usize) -> Vec<f64> {
        x.chunks(k)
            .flat_map(|row| {
                let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let s: f64 = row.iter().map(|v| (v - mx).exp()).sum();
                row.iter().map(move |v| (v - mx).exp() / s)
            })
            .collect()
    }

    pub fn softmax_backward(y: &[f64], dy: &[f64], k: usize) -> Vec<f64> {
        let mut dx = vec![0.0; y.len()];
        // y_i Σ_j y_j (dy_i − dy_j), the kernel's form: equal to y_i (dy_i − Σ_j y_j dy_j)
        // when the y's sum to 1, without its cancellation when one y is nearly 1.
        for r in 0..y.len() / k {
            let row = r * k..(r + 1) * k;
            for i in row.clone() {
                let g: f64 = row.clone().map(|j| y[j] * (dy[i] - dy[j])).sum();
                dx[i] = y[i] * g;
            }
        }
        dx
    }

    /// Mean cross-entropy of probabilities (clipped like Keras).
    pub fn xent(p: &[f64], t: &[f64], k: usize) -> f64 {
        let n = (p.len() / k) as f64;
        -p.iter()
            .zip(t)
            .map(|(p, t)| t * p.clamp(CLIP, 1.0 - CLIP).ln())
            .sum::<f64>()
            / n
    }

    pub fn xent_backward(p: &[f64], t: &[f64], k: usize) -> Vec<f64> {
        let n = (p.len() / k) as f64;
        p.iter()
            .zip(t)
            .map(|(p, t)| {
                if *p > CLIP && *p < 1.0 - CLIP {
                    -t / p / n
                } else {
                    0.0
                }
            })
            .collect()
    }

    /// Mean cross-entropy from logits.
    pub fn softmax_xent(x: &[f64], t: &[f64], k: usize) -> f64 {
        let n = (x.len() / k) as f64;
        let mut loss = 0.0;
        for (row, trow) in x.chunks(k).zip(t.chunks(k)) {
            let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = mx + row.iter().map(|v| (v - mx).exp()).sum::<f64>().ln();
            loss -= row
                .iter()
                .zip(trow)
                .map(|(v, t)| t * (v - lse))
                .sum::<f64>();
        }
        loss / n
    }

    pub fn softmax_xent_backward(x: &[f64], t: &[f64], k: usize) -> Vec<f64> {
        let n = (x.len() / k) as f64;
        softmax(x, k)
            .iter()
            .zip(t)
            .map(|(p, t)| (p - t) / n)
            .collect()
    }

    /// Rows whose arg-max matches the target's.
    pub fn correct(x: &[f64], t: &[f64], k: usize) -> usize {
        let argmax = |r: &[f64]| (0..k).fold(0, |b, j| if r[j] > r[b] { j } else { b });
        x.chunks(k)
            .zip(t.chunks(k))
            .filter(|(r, t)| argmax(r) == argmax(t))
            .count()
    }
}
