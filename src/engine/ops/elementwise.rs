//! ReLU and the residual add: one lane per element, or per vec4 of
//! elements when the length allows.

use anyhow::{Result, ensure};
use bytemuck::{Pod, Zeroable};

use crate::engine::ops::ShaderPair;
use crate::engine::ops::shader_pair;
use crate::engine::{Gpu, Tensor};

const SHADERS: ShaderPair = shader_pair!("elementwise", "../../../shaders/elementwise.wgsl");

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    len: u32,
    pad: [u32; 3],
}

fn run(gpu: &Gpu, entry: &str, inputs: &[&Tensor], out: &Tensor) -> Result<()> {
    let len = out.len();
    for t in inputs {
        ensure!(
            t.len() == len,
            "{entry}: shapes {:?} and {:?} differ",
            t.shape(),
            out.shape()
        );
    }
    let vec4 = len.is_multiple_of(4);
    let len = if vec4 { len / 4 } else { len };
    let kernel = gpu.kernel(SHADERS.pick(vec4), entry, &[]);
    let params = Params {
        len: len as u32,
        pad: [0; 3],
    };
    let mut bindings: Vec<(u32, &Tensor)> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| (i as u32 + 1, *t))
        .collect();
    bindings.push((3, out));
    gpu.dispatch(
        &kernel,
        bytemuck::bytes_of(&params),
        &bindings,
        len.div_ceil(256) as u32,
    )
}

pub fn relu(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    let y = gpu.empty(x.shape())?;
    run(gpu, "relu", &[x], &y)?;
    Ok(y)
}

/// The gradient of ReLU from its output `y`: dy where y > 0.
pub fn relu_backward(gpu: &Gpu, y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let dx = gpu.empty(y.shape())?;
    run(gpu, "relu_backward", &[y, dy], &dx)?;
    Ok(dx)
}

pub fn add(gpu: &Gpu, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    ensure!(
        a.shape() == b.shape(),
        "add: shapes {:?} and {:?} differ",
        a.shape(),
        b.shape()
    );
    let y = gpu.empty(a.shape())?;
    run(gpu, "add", &[a, b], &y)?;
    Ok(y)
}

/// CPU references.
pub mod cpu {
    pub fn relu(x: &[f64]) -> Vec<f64> {
        x.iter().map(|v| v.max(0.0)).collect()
    }
    pub fn relu_backward(y: &[f64], dy: &[f64]) -> Vec<f64> {
        y.iter()
            .zip(dy)
            .map(|(y, g)| if *y > 0.0 { *g } else { 0.0 })
            .collect()
    }
    pub fn add(a: &[f64], b: &[f64]) -> Vec<f64> {
        a.iter().zip(b).map(|(a, b)| a + b).collect()
    }
}
