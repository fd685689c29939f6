//! Per-column sums of an [m, c] matrix in two stages (see `shaders/reduce.wgsl`):
//! bias gradients and the batch-norm statistics.

use anyhow::Result;
use bytemuck::{Pod, Zeroable};

use crate::ops::ShaderPair;
use crate::{Gpu, Tensor, shader_pair};

const SHADERS: ShaderPair = shader_pair!("reduce", "../../shaders/reduce.wgsl");

/// What each column accumulates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sum {
    /// Σ x
    Plain,
    /// Σ (x − mean)², with `stats` = [mean | ...]
    Squares,
    /// [Σ dy | Σ dy·(x − mean)·invstd], with `stats` = [mean | invstd]
    BatchNormBackward,
    /// The same with dy masked where the fused batch-norm + ReLU output is 0.
    BatchNormReluBackward,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    m: u32,
    c: u32,
    rows_per_chunk: u32,
    chunks: u32,
    mode: u32,
    pad: [u32; 3],
}

/// Chunks of at least 128 rows, at most 64 chunks: enough workgroups for
/// every core, few enough partial rows for `finish`.
fn chunking(m: usize) -> (usize, usize) {
    let chunks = m.div_ceil(128).clamp(1, 64);
    (m.div_ceil(chunks), chunks)
}

/// Column sums of `x` ([m, c] as a flat tensor). Returns [c], or [2, c] for
/// the batch-norm backward sums; `relu_out` is the fused output for
/// `Sum::BatchNormReluBackward`.
pub fn column_sums(
    gpu: &Gpu,
    mode: Sum,
    x: &Tensor,
    dy: Option<&Tensor>,
    stats: Option<&Tensor>,
    relu_out: Option<&Tensor>,
    c: usize,
) -> Result<Tensor> {
    let m = x.len() / c;
    let (rows_per_chunk, chunks) = chunking(m);
    let outputs = if matches!(mode, Sum::BatchNormBackward | Sum::BatchNormReluBackward) {
        2
    } else {
        1
    };
    let part = gpu.empty(&[outputs, chunks, c])?;
    // Columns in vec4s when they come in whole vec4s.
    let vec4 = c.is_multiple_of(4);
    let cv = if vec4 { c / 4 } else { c };
    let shader = SHADERS.pick(vec4);
    let mut params = Params {
        m: m as u32,
        c: cv as u32,
        rows_per_chunk: rows_per_chunk as u32,
        chunks: chunks as u32,
        mode: mode as u32,
        pad: [0; 3],
    };
    let partial = gpu.kernel(shader, "partial", &[]);
    // The `partial` entry point uses every binding (its modes do), so absent
    // inputs are bound to a dummy.
    let dummy = gpu.dummy()?;
    let bindings = [
        (1, x),
        (2, dy.unwrap_or(&dummy)),
        (3, stats.unwrap_or(&dummy)),
        (4, &part),
        (5, relu_out.unwrap_or(&dummy)),
    ];
    let groups = cv.div_ceil(32) as u32;
    gpu.dispatch_xyz(
        &partial,
        bytemuck::bytes_of(&params),
        &bindings,
        [groups, chunks as u32, 1],
    )?;

    let shape = if outputs == 2 { vec![2, c] } else { vec![c] };
    let out = gpu.empty(&shape)?;
    params.mode = 0;
    let finish = gpu.kernel(shader, "finish", &[]);
    gpu.dispatch_xyz(
        &finish,
        bytemuck::bytes_of(&params),
        &[(1, &part), (4, &out)],
        [groups, outputs as u32, 1],
    )?;
    Ok(out)
}

/// CPU reference: Σ over rows of an [m, c] matrix.
pub fn cpu_column_sums(x: &[f64], c: usize) -> Vec<f64> {
    let mut s = vec![0.0; c];
    for (i, v) in x.iter().enumerate() {
        s[i % c] += v;
    }
    s
}
