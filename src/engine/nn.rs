//! Differentiable ops: each runs its forward kernels and records on the tape
//! how to get its inputs' gradients from its output's.

use anyhow::Result;

use crate::engine::Tensor;
use crate::engine::ops::batchnorm::{BatchNorm, BnParams};
use crate::engine::ops::conv2d::{Conv2d, Padding};
use crate::engine::ops::dense::Dense;
use crate::engine::ops::pool::Pool2d;
use crate::engine::ops::{elementwise, softmax_xent};
use crate::engine::tape::Tape;

/// y = conv(x, w) + b; w is [kh, kw, cin, cout].
pub fn conv2d(
    tape: &Tape,
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    stride: usize,
    padding: Padding,
) -> Result<Tensor> {
    let ws = w.shape();
    let conv = Conv2d::new(x.shape(), ws[3], [ws[0], ws[1]], stride, padding)?;
    conv2d_as(tape, conv, x, w, b)
}

/// The convolution `conv` describes (e.g. a `Conv2d::cropped` one), recorded
/// on the tape.
pub fn conv2d_as(tape: &Tape, conv: Conv2d, x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (y, cols) = conv.forward(tape.gpu(), x, w, b)?;
    // dx needs Wᵀ: asked for now, made with the other layers' in one dispatch.
    let wt = tape
        .is_tracked(x)
        .then(|| tape.transpose_later(w, conv.k(), conv.cout));
    let w2 = w.clone();
    // x's gradient so far (a residual shortcut's) is added by the product.
    tape.record_folding(&[x, w, b], &y, move |gpu, dy, needs, prior| {
        let prior = prior.as_ref();
        let dx = match (needs[0], &wt) {
            (false, _) => None,
            (true, Some(wt)) => Some(conv.grad_input_transposed(gpu, dy, &wt.get(gpu)?, prior)?),
            (true, None) => Some(conv.grad_input(gpu, dy, &w2, prior)?),
        };
        let (dw, db) = match (needs[1], needs[2]) {
            (true, true) => {
                let (dw, db) = conv.grad_weight_and_bias(gpu, &cols, dy)?;
                (Some(dw), Some(db))
            }
            (true, false) => (Some(conv.grad_weight(gpu, &cols, dy)?), None),
            (false, true) => (None, Some(conv.grad_bias(gpu, dy)?)),
            (false, false) => (None, None),
        };
        Ok(vec![dx, dw, db])
    });
    Ok(y)
}

/// Batch normalisation over the last axis. Training mode normalises with the
/// batch statistics and updates the moving averages; inference mode uses them.
pub fn batch_norm(tape: &Tape, x: &Tensor, p: &BnParams, training: bool) -> Result<Tensor> {
    batch_norm_as(BatchNorm::new(last_dim(x)), tape, x, p, training)
}

/// Batch normalisation followed by ReLU, in the same kernels (one pass over
/// the activations instead of two, forward and backward).
pub fn batch_norm_relu(tape: &Tape, x: &Tensor, p: &BnParams, training: bool) -> Result<Tensor> {
    batch_norm_as(BatchNorm::with_relu(last_dim(x)), tape, x, p, training)
}

/// relu(BN(x) + shortcut): a residual block's end in one pass forward; the
/// backward masks dy once by the output and hands it to the shortcut and to
/// the batch norm's (ReLU-fused) backward.
pub fn batch_norm_add_relu(
    tape: &Tape,
    x: &Tensor,
    shortcut: &Tensor,
    p: &BnParams,
    training: bool,
) -> Result<Tensor> {
    let bn = BatchNorm::with_relu(last_dim(x));
    if !training {
        return bn.forward_infer_add(tape.gpu(), x, p, shortcut);
    }
    let (y, stats) = bn.forward_train_add(tape.gpu(), x, p, shortcut)?;
    let (x2, y2, gamma) = (x.clone(), y.clone(), p.gamma.clone());
    tape.record(
        &[x, p.gamma, p.beta, shortcut],
        &y,
        move |gpu, dy, needs| {
            let g = match needs[3] {
                true => bn.backward_add(gpu, &x2, &y2, dy, &stats, &gamma)?,
                false => bn.backward(gpu, &x2, &y2, dy, &stats, &gamma)?,
            };
            Ok(vec![Some(g.dx), Some(g.dgamma), Some(g.dbeta), g.dshortcut])
        },
    );
    Ok(y)
}

fn last_dim(x: &Tensor) -> usize {
    *x.shape().last().unwrap_or(&0)
}

fn batch_norm_as(
    bn: BatchNorm,
    tape: &Tape,
    x: &Tensor,
    p: &BnParams,
    training: bool,
) -> Result<Tensor> {
    if !training {
        return bn.forward_infer(tape.gpu(), x, p);
    }
    let (y, stats) = bn.forward_train(tape.gpu(), x, p)?;
    let (x2, y2, gamma) = (x.clone(), y.clone(), p.gamma.clone());
    tape.record(&[x, p.gamma, p.beta], &y, move |gpu, dy, _| {
        let g = bn.backward(gpu, &x2, &y2, dy, &stats, &gamma)?;
        Ok(vec![Some(g.dx), Some(g.dgamma), Some(g.dbeta)])
    });
    Ok(y)
}

pub fn relu(tape: &Tape, x: &Tensor) -> Result<Tensor> {
    let y = elementwise::relu(tape.gpu(), x)?;
    let y2 = y.clone();
    tape.record(&[x], &y, move |gpu, dy, _| {
        Ok(vec![Some(elementwise::relu_backward(gpu, &y2, dy)?)])
    });
    Ok(y)
}

/// a + b; the backward fans the gradient out to both.
pub fn add(tape: &Tape, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let y = elementwise::add(tape.gpu(), a, b)?;
    tape.record(&[a, b], &y, |_, dy, _| {
        Ok(vec![Some(dy.clone()), Some(dy.clone())])
    });
    Ok(y)
}

pub fn max_pool(tape: &Tape, x: &Tensor, size: usize, stride: usize) -> Result<Tensor> {
    let pool = Pool2d::new(x.shape(), size, stride)?;
    if !tape.is_tracked(x) {
        // No gradient will flow back: the winning taps are not needed.
        return pool.max_values(tape.gpu(), x);
    }
    let (y, arg) = pool.max_forward(tape.gpu(), x)?;
    tape.record(&[x], &y, move |gpu, dy, _| {
        Ok(vec![Some(pool.max_backward(gpu, dy, &arg)?)])
    });
    Ok(y)
}

pub fn avg_pool(tape: &Tape, x: &Tensor, size: usize, stride: usize) -> Result<Tensor> {
    let pool = Pool2d::new(x.shape(), size, stride)?;
    let y = pool.avg_forward(tape.gpu(), x)?;
    tape.record(&[x], &y, move |gpu, dy, _| {
        Ok(vec![Some(pool.avg_backward(gpu, dy)?)])
    });
    Ok(y)
}

/// y = x·w + b; x is [n, in], w [in, out].
pub fn dense(tape: &Tape, x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let d = Dense::new(x.shape(), w.shape().get(1).copied().unwrap_or(0))?;
    let y = d.forward(tape.gpu(), x, w, b)?;
    let (x2, w2) = (x.clone(), w.clone());
    tape.record(&[x, w, b], &y, move |gpu, dy, needs| {
        Ok(vec![
            if needs[0] {
                Some(d.grad_input(gpu, dy, &w2)?)
            } else {
                None
            },
            if needs[1] {
                Some(d.grad_weight(gpu, &x2, dy)?)
            } else {
                None
            },
            if needs[2] {
                Some(d.grad_bias(gpu, dy)?)
            } else {
                None
            },
        ])
    });
    Ok(y)
}

/// Softmax + categorical cross-entropy, fused. Returns (probabilities,
/// metrics [mean loss, correct count]); back-propagate from `metrics` with a
/// one-value seed (d loss, usually 1).
pub fn softmax_cross_entropy(
    tape: &Tape,
    logits: &Tensor,
    targets: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let (probs, metrics) = softmax_xent::softmax_xent(tape.gpu(), logits, targets)?;
    let (p2, t2) = (probs.clone(), targets.clone());
    tape.record(&[logits], &metrics, move |gpu, dl, _| {
        Ok(vec![Some(softmax_xent::softmax_xent_backward(
            gpu, &p2, &t2, dl,
        )?)])
    });
    Ok((probs, metrics))
}
