//! Per-column sums of an [m, c] matrix in two stages (see `shaders/reduce.wgsl`):
//! bias gradients where the products cannot sum them themselves. `Chunks`
//! also splits the batch norm's rows.

use anyhow::Result;
use bytemuck::{Pod, Zeroable};

use crate::engine::ops::ShaderPair;
use crate::engine::ops::shader_pair;
use crate::engine::{Gpu, Tensor};

const SHADERS: ShaderPair = shader_pair!("reduce", "../../../shaders/reduce.wgsl");

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    m: u32,
    c: u32,
    rows_per_chunk: u32,
    chunks: u32,
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

/// Column sums of `x` ([m, c] as a flat tensor): [c].
pub fn column_sums(gpu: &Gpu, x: &Tensor, c: usize) -> Result<Tensor> {
    let m = x.len() / c;
    let split = Chunks::of(m);
    let params = Params {
        m: m as u32,
        c: columns(c) as u32,
        rows_per_chunk: split.rows_per_chunk as u32,
        chunks: split.chunks as u32,
    };
    let shaders = SHADERS.pick(c.is_multiple_of(4));
    let groups = columns(c).div_ceil(32) as u32;
    let part = gpu.empty(&[split.chunks, c])?;
    gpu.dispatch_xyz(
        &gpu.kernel(shaders, "partial", &[]),
        bytemuck::bytes_of(&params),
        &[(1, x), (4, &part)],
        [groups, split.chunks as u32, 1],
    )?;
    let out = gpu.empty(&[c])?;
    gpu.dispatch_xyz(
        &gpu.kernel(shaders, "finish", &[]),
        bytemuck::bytes_of(&params),
        &[(1, &part), (4, &out)],
        [groups, 1, 1],
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

    /// `batchnorm.wgsl`'s `batch_moments` weighs each chunk by its row
    /// count: an empty chunk would divide by zero in `moments`.
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
