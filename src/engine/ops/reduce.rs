//! Per-column sums of an [m, c] matrix in two stages (see `shaders/reduce.wgsl`):
//! bias gradients and the batch-norm statistics.

use anyhow::{Result, ensure};
use bytemuck::{Pod, Zeroable};

use crate::engine::ops::ShaderPair;
use crate::engine::ops::shader_pair;
use crate::engine::{Gpu, Tensor};

const SHADERS: ShaderPair = shader_pair!("reduce", "../../../shaders/reduce.wgsl");

/// What each column accumulates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sum {
    /// Σ x
    Plain,
    /// Per chunk: [mean | Σ (x − mean)²] of the chunk's rows, which
    /// `batchnorm.wgsl`'s `normalize_train` combines into the batch's mean and variance
    /// (one pass over x instead of two, no cancellation).
    Moments,
    /// [Σ dy | Σ dy·(x − mean)·invstd], with `stats` = [mean | invstd]
    BatchNormBackward,
    /// The same with dy masked where the fused batch-norm + ReLU output is 0.
    BatchNormReluBackward,
}

impl Sum {
    /// How many values per column each chunk produces.
    fn outputs(self) -> usize {
        match self {
            Sum::Plain => 1,
            Sum::Moments | Sum::BatchNormBackward | Sum::BatchNormReluBackward => 2,
        }
    }
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

impl Params {
    /// For an [m, c] matrix split into `split`; c counts floats.
    fn new(m: usize, c: usize, split: Chunks, mode: Sum) -> Self {
        Params {
            m: m as u32,
            c: columns(c) as u32,
            rows_per_chunk: split.rows_per_chunk as u32,
            chunks: split.chunks as u32,
            mode: mode as u32,
            pad: [0; 3],
        }
    }
}

/// Columns in the kernels' units: vec4s when they come in whole vec4s.
fn columns(c: usize) -> usize {
    if c.is_multiple_of(4) { c / 4 } else { c }
}

/// How the rows of an [m, c] matrix are split: chunks of at least 128 rows,
/// at most 64 chunks: enough workgroups for every core, few enough partial
/// rows to add up afterwards. No chunk is empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunks {
    pub rows_per_chunk: usize,
    pub chunks: usize,
}

impl Chunks {
    pub fn of(m: usize) -> Self {
        let chunks = m.div_ceil(128).clamp(1, 64);
        Chunks {
            rows_per_chunk: m.div_ceil(chunks),
            chunks,
        }
    }
}

/// The per-chunk results [outputs, chunks, c] of `mode` over `x` ([m, c] as
/// a flat tensor); `relu_out` is the fused output for
/// `Sum::BatchNormReluBackward`.
pub fn column_partials(
    gpu: &Gpu,
    mode: Sum,
    x: &Tensor,
    dy: Option<&Tensor>,
    stats: Option<&Tensor>,
    relu_out: Option<&Tensor>,
    c: usize,
) -> Result<(Tensor, Chunks)> {
    let m = x.len() / c;
    let split = Chunks::of(m);
    let part = gpu.empty(&[mode.outputs(), split.chunks, c])?;
    let params = Params::new(m, c, split, mode);
    let partial = gpu.kernel(SHADERS.pick(c.is_multiple_of(4)), "partial", &[]);
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
    gpu.dispatch_xyz(
        &partial,
        bytemuck::bytes_of(&params),
        &bindings,
        [columns(c).div_ceil(32) as u32, split.chunks as u32, 1],
    )?;
    Ok((part, split))
}

/// Column sums of `x` ([m, c] as a flat tensor): [c].
pub fn column_sums(gpu: &Gpu, x: &Tensor, c: usize) -> Result<Tensor> {
    let (part, split) = column_partials(gpu, Sum::Plain, x, None, None, None, c)?;
    add_up_chunks(gpu, &part, split, c)
}

/// The chunks of `column_partials` added up: [c], or [2, c] for two outputs.
/// (Not for the batch norm's modes, whose chunks `batchnorm.wgsl` adds up.)
pub fn add_up_chunks(gpu: &Gpu, part: &Tensor, split: Chunks, c: usize) -> Result<Tensor> {
    let outputs = part.len() / (split.chunks * c);
    ensure!(
        part.len() == outputs * split.chunks * c && (1..=2).contains(&outputs),
        "add_up_chunks: {:?} is not [1 or 2, {}, {c}]",
        part.shape(),
        split.chunks
    );
    let shape = if outputs == 2 { vec![2, c] } else { vec![c] };
    let out = gpu.empty(&shape)?;
    // `finish` reads only chunks and columns.
    let m = split.chunks * split.rows_per_chunk;
    let params = Params::new(m, c, split, Sum::Plain);
    let finish = gpu.kernel(SHADERS.pick(c.is_multiple_of(4)), "finish", &[]);
    gpu.dispatch_xyz(
        &finish,
        bytemuck::bytes_of(&params),
        &[(1, part), (4, &out)],
        [columns(c).div_ceil(32) as u32, outputs as u32, 1],
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

#[cfg(test)]
mod tests {
    use super::Chunks;

    /// `batchnorm.wgsl`'s `stats` weighs each chunk by its row count: an
    /// empty chunk would divide by zero in `partial`.
    #[test]
    fn chunks_cover_the_rows_and_none_is_empty() {
        for m in 1..200_000 {
            let Chunks {
                rows_per_chunk,
                chunks,
            } = Chunks::of(m);
            assert!((1..=64).contains(&chunks), "m {m}: {chunks} chunks");
            assert!(rows_per_chunk * chunks >= m, "m {m}: rows left over");
            assert!(
                rows_per_chunk * (chunks - 1) < m,
                "m {m}: the last chunk is empty"
            );
        }
    }
}
