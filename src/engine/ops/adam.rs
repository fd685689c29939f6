//! The Adam update on the GPU over one flat parameter vector, with Keras'
//! defaults (lr 1e-3, beta1 0.9, beta2 0.999, epsilon 1e-7).

use anyhow::{Result, ensure};
use bytemuck::{Pod, Zeroable};

use crate::engine::ops::ShaderPair;
use crate::engine::ops::shader_pair;
use crate::engine::{Gpu, Tensor};

const SHADERS: ShaderPair = shader_pair!("adam", "../../../shaders/adam.wgsl");

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamConfig {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub epsilon: f32,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-7,
        }
    }
}

impl AdamConfig {
    /// The step size of step `t` (1-based), bias corrections folded in.
    pub fn alpha(&self, t: u64) -> f32 {
        let t = t as i32;
        (self.lr as f64 * (1.0 - (self.beta2 as f64).powi(t)).sqrt()
            / (1.0 - (self.beta1 as f64).powi(t))) as f32
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    len: u32,
    beta1: f32,
    beta2: f32,
    epsilon: f32,
}

/// Encode one update. `alpha` holds `config.alpha(t)` (written by the host
/// before the step); `flag[0]` gets bit 0 set when a gradient is not finite.
#[allow(clippy::too_many_arguments)]
pub fn step(
    gpu: &Gpu,
    config: &AdamConfig,
    param: &Tensor,
    grad: &Tensor,
    m: &Tensor,
    v: &Tensor,
    alpha: &Tensor,
    flag: &Tensor,
) -> Result<()> {
    let len = param.len();
    ensure!(
        grad.len() == len && m.len() == len && v.len() == len,
        "adam: parameter, gradient and moments differ in size"
    );
    let vec4 = len.is_multiple_of(4);
    let units = if vec4 { len / 4 } else { len };
    let p = Params {
        len: units as u32,
        beta1: config.beta1,
        beta2: config.beta2,
        epsilon: config.epsilon,
    };
    let k = gpu.kernel(SHADERS.pick(vec4), "step", &[]);
    gpu.dispatch(
        &k,
        bytemuck::bytes_of(&p),
        &[(1, grad), (2, alpha), (3, param), (4, m), (5, v), (6, flag)],
        units.div_ceil(256) as u32,
    )
}

/// CPU reference of one step `t` (1-based), in place.
pub fn cpu_step(
    c: &AdamConfig,
    t: u64,
    param: &mut [f64],
    grad: &[f64],
    m: &mut [f64],
    v: &mut [f64],
) {
    let (b1, b2) = (c.beta1 as f64, c.beta2 as f64);
    let alpha = c.lr as f64 * (1.0 - b2.powi(t as i32)).sqrt() / (1.0 - b1.powi(t as i32));
    for i in 0..param.len() {
        m[i] += (grad[i] - m[i]) * (1.0 - b1);
        v[i] += (grad[i] * grad[i] - v[i]) * (1.0 - b2);
        param[i] -= alpha * m[i] / (v[i].sqrt() + c.epsilon as f64);
    }
}
