//! A batch norm on its moving statistics folded into the linear map before
//! it (a convolution or dense layer with weights [k, c] and bias [c]): at
//! inference `bn(x·W + b)` is `x·W' + b'`, one product instead of a product
//! and a pass over the activations.

use anyhow::{Result, ensure};
use bytemuck::{Pod, Zeroable};

use crate::engine::ops::batchnorm::BnParams;
use crate::engine::{Gpu, Shader, Tensor};

const SHADER: Shader = Shader {
    name: "bn_fold",
    source: include_str!("../../../shaders/bn_fold.wgsl"),
};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    len: u32,
    c: u32,
    eps: f32,
    pad: u32,
}

/// (W', b') for weights `w` whose last dimension is the batch norm's `c`
/// channels, bias `b` [c], and the batch norm's parameters.
pub fn fold(
    gpu: &Gpu,
    w: &Tensor,
    b: &Tensor,
    bn: &BnParams,
    eps: f32,
) -> Result<(Tensor, Tensor)> {
    let c = b.len();
    ensure!(
        c > 0 && w.len().is_multiple_of(c) && w.shape().last() == Some(&c),
        "bn_fold: weights {:?} do not end in the bias's {c} channels",
        w.shape()
    );
    for (name, t) in [
        ("gamma", bn.gamma),
        ("beta", bn.beta),
        ("moving mean", bn.moving_mean),
        ("moving variance", bn.moving_var),
    ] {
        ensure!(
            t.len() == c,
            "bn_fold: {name} holds {} values, expected {c}",
            t.len()
        );
    }
    let (w_out, b_out) = (gpu.empty(w.shape())?, gpu.empty(b.shape())?);
    let params = Params {
        len: w.len() as u32,
        c: c as u32,
        eps,
        pad: 0,
    };
    let kernel = gpu.kernel(&SHADER, "fold", &[]);
    gpu.dispatch(
        &kernel,
        bytemuck::bytes_of(&params),
        &[
            (1, w),
            (2, b),
            (3, bn.gamma),
            (4, bn.beta),
            (5, bn.moving_mean),
            (6, bn.moving_var),
            (7, &w_out),
            (8, &b_out),
        ],
        w.len().div_ceil(256) as u32,
    )?;
    Ok((w_out, b_out))
}

/// CPU reference. `bn` = [gamma, beta, moving mean, moving variance].
pub fn cpu(w: &[f64], b: &[f64], bn: [&[f64]; 4], eps: f64) -> (Vec<f64>, Vec<f64>) {
    let [gamma, beta, mean, var] = bn;
    let c = b.len();
    let s: Vec<f64> = (0..c).map(|j| gamma[j] / (var[j] + eps).sqrt()).collect();
    let w_out = w.iter().enumerate().map(|(i, v)| v * s[i % c]).collect();
    let b_out = (0..c).map(|j| (b[j] - mean[j]) * s[j] + beta[j]).collect();
    (w_out, b_out)
}
