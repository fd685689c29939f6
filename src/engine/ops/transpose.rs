//! Row-major matrices transposed (see `shaders/transpose.wgsl`): the weights
//! of the input-gradient products, several in one dispatch.

use anyhow::{Result, ensure};
use bytemuck::{Pod, Zeroable};

use crate::engine::{Gpu, Shader, Tensor};

const SHADER: Shader = Shader {
    name: "transpose",
    source: include_str!("../../../shaders/transpose.wgsl"),
};

/// Matrices per dispatch (the kernel's table).
const MAX_MATRICES: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    count: u32,
    pad: [u32; 3],
    matrices: [[u32; 4]; MAX_MATRICES],
}

/// A row-major [rows, cols] matrix transposed to [cols, rows].
pub fn transpose(gpu: &Gpu, x: &Tensor, rows: usize, cols: usize) -> Result<Tensor> {
    Ok(transpose_many(gpu, &[(x, rows, cols)])?.remove(0))
}

/// Each (x, rows, cols) transposed to [cols, rows], in one dispatch per
/// buffer the matrices live in (and kind, and 64 matrices): in 4 × 4 blocks
/// of vec4s where rows, cols and x's offset are multiples of 4, else value
/// by value. The results are views of one new buffer per dispatch.
pub fn transpose_many(gpu: &Gpu, matrices: &[(&Tensor, usize, usize)]) -> Result<Vec<Tensor>> {
    for &(x, rows, cols) in matrices {
        ensure!(
            x.len() == rows * cols,
            "transpose: {:?} is not {rows}x{cols}",
            x.shape()
        );
    }
    let blocks = |&(x, rows, cols): &(&Tensor, usize, usize)| {
        rows.is_multiple_of(4) && cols.is_multiple_of(4) && x.byte_offset().is_multiple_of(16)
    };
    let mut out: Vec<Option<Tensor>> = vec![None; matrices.len()];
    let mut todo: Vec<usize> = (0..matrices.len()).collect();
    while let Some(&first) = todo.first() {
        let kind = (matrices[first].0.storage_id(), blocks(&matrices[first]));
        let (group, rest): (Vec<usize>, Vec<usize>) = todo
            .iter()
            .partition(|&&i| (matrices[i].0.storage_id(), blocks(&matrices[i])) == kind);
        for chunk in group.chunks(MAX_MATRICES) {
            let views = dispatch(gpu, matrices, chunk, kind.1)?;
            for (&i, view) in chunk.iter().zip(views) {
                out[i] = Some(view);
            }
        }
        todo = rest;
    }
    Ok(out
        .into_iter()
        .map(|t| t.expect("every matrix transposed"))
        .collect())
}

/// One dispatch for the matrices `chunk` picks, all in one buffer.
fn dispatch(
    gpu: &Gpu,
    matrices: &[(&Tensor, usize, usize)],
    chunk: &[usize],
    blocks: bool,
) -> Result<Vec<Tensor>> {
    // Each result starts on a 64-float boundary, so that it can be bound.
    let mut at = vec![];
    let mut total = 0;
    for &i in chunk {
        at.push(total);
        total += (matrices[i].1 * matrices[i].2).next_multiple_of(64);
    }
    let dst = gpu.empty(&[total])?;
    let unit = if blocks { 4 } else { 1 };
    let mut params = Params::zeroed();
    params.count = chunk.len() as u32;
    let mut work = 0;
    for (slot, (&i, &dst_at)) in chunk.iter().zip(&at).enumerate() {
        let (x, rows, cols) = matrices[i];
        let src_at = x.byte_offset() as usize / 4;
        params.matrices[slot] = [
            (src_at / unit) as u32,
            (dst_at / unit) as u32,
            rows as u32,
            cols as u32,
        ];
        work += rows * cols / (unit * unit);
    }
    let src = matrices[chunk[0]].0.whole_buffer();
    let (entry, bindings) = match blocks {
        true => ("blocks", [(3, &src), (4, &dst)]),
        false => ("values", [(1, &src), (2, &dst)]),
    };
    gpu.dispatch_xyz(
        &gpu.kernel(&SHADER, entry, &[]),
        bytemuck::bytes_of(&params),
        &bindings,
        [work.div_ceil(64).clamp(1, 16) as u32, 1, 1],
    )?;
    Ok(chunk
        .iter()
        .zip(at)
        .map(|(&i, dst_at)| {
            let (_, rows, cols) = matrices[i];
            dst.view(dst_at, &[cols, rows])
        })
        .collect())
}

/// CPU reference: [rows, cols] → [cols, rows].
pub fn cpu_transpose(x: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    (0..rows * cols)
        .map(|o| x[(o % rows) * cols + o / rows])
        .collect()
}
