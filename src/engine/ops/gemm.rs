//! Matrix product `C = A·B (+ bias) (+ C)`: the work-horse of convolution and
//! the dense layer. Two kernels: `gemm_sg8.wgsl` for adapters with 8-lane
//! subgroups (lavapipe), which covers the model's products, and `gemm.wgsl`
//! for every other shape and adapter.

use anyhow::{Result, ensure};
use bytemuck::{Pod, Zeroable};

use crate::engine::ops::reduce::column_sums;
use crate::engine::{Gpu, Shader, Tensor};

const SHADER: Shader = Shader {
    name: "gemm",
    source: include_str!("../../../shaders/gemm.wgsl"),
};
const SHADER_SG8: Shader = Shader {
    name: "gemm_sg8",
    source: include_str!("../../../shaders/gemm_sg8.wgsl"),
};
const ROWS: usize = 16;
const COLS: usize = 64;
const SG8_COLS: usize = 32;
const SG8_ROWS: usize = 16;

/// How A is read: element (i, p) of the logical [m, k] matrix is at
/// `i * row + p * col`, so a transposed matrix is just strides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Strides {
    pub row: usize,
    pub col: usize,
}

impl Strides {
    /// A row-major matrix whose rows are `ld` apart.
    pub fn rows(ld: usize) -> Self {
        Strides { row: ld, col: 1 }
    }
    /// The transpose of a row-major matrix whose rows are `ld` apart.
    pub fn transposed(ld: usize) -> Self {
        Strides { row: 1, col: ld }
    }
}

/// One matrix product. `b` is row-major [k, n]; `c` row-major [m, n].
#[derive(Clone, Copy, Debug)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: Strides,
    pub accumulate: bool,
    /// Row-major A whose columns from k up to its row stride are zeros (im2col
    /// pads them), so a kernel may read A in whole vec4s.
    pub a_padded: bool,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    ldb: u32,
    a_rs: u32,
    a_cs: u32,
    ldc: u32,
    flags: u32,
    col_blocks: u32,
    tiles: u32,
    pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Sg8Params {
    m: u32,
    n: u32,
    k: u32,
    lda: u32,
    flags: u32,
    col_blocks: u32,
    tiles: u32,
    pad: u32,
}

impl Gemm {
    /// A product of row-major matrices.
    pub fn new(m: usize, n: usize, k: usize, a: Strides) -> Self {
        Gemm {
            m,
            n,
            k,
            a,
            accumulate: false,
            a_padded: false,
        }
    }

    pub fn flops(&self) -> f64 {
        2.0 * (self.m * self.n * self.k) as f64
    }

    /// The 8-lane-subgroup kernel takes A in whole vec4s: row-major with its
    /// rows 16-byte aligned and zero-padded, or transposed with aligned rows.
    fn sg8_layout(&self, gpu: &Gpu) -> Option<bool> {
        if gpu.subgroup_sizes() != Some((8, 8)) || self.accumulate || !self.n.is_multiple_of(4) {
            return None;
        }
        let Strides { row, col } = self.a;
        if col == 1 && row.is_multiple_of(4) && (self.k.is_multiple_of(4) || self.a_padded) {
            Some(true)
        } else if row == 1 && col.is_multiple_of(4) {
            Some(false)
        } else {
            None
        }
    }

    /// Encode `c = a·b (+ bias) (+ c if accumulate)`.
    pub fn run(
        &self,
        gpu: &Gpu,
        a: &Tensor,
        b: &Tensor,
        bias: Option<&Tensor>,
        c: &Tensor,
    ) -> Result<()> {
        self.encode(gpu, [a, b, c], bias, None)
    }

    /// `run` without bias, also returning the column sums of B ([n]): for
    /// dW = xᵀ·dy they are the bias gradient. The 8-lane kernel adds them
    /// up while it reads B for a transposed A; otherwise a reduction does.
    pub fn run_summing_b(&self, gpu: &Gpu, a: &Tensor, b: &Tensor, c: &Tensor) -> Result<Tensor> {
        ensure!(
            b.len() == self.k * self.n,
            "gemm: B holds {} values, summing its columns needs exactly {}x{}",
            b.len(),
            self.k,
            self.n
        );
        if self.sg8_layout(gpu) == Some(false) {
            let sums = gpu.empty(&[self.n])?;
            self.encode(gpu, [a, b, c], None, Some(&sums))?;
            return Ok(sums);
        }
        self.run(gpu, a, b, None, c)?;
        column_sums(gpu, b, self.n)
    }

    /// `operands` = [a, b, c].
    fn encode(
        &self,
        gpu: &Gpu,
        [a, b, c]: [&Tensor; 3],
        bias: Option<&Tensor>,
        b_sums: Option<&Tensor>,
    ) -> Result<()> {
        let Gemm {
            m,
            n,
            k,
            a: s,
            accumulate,
            ..
        } = *self;
        ensure!(m > 0 && n > 0 && k > 0, "gemm: empty product {m}x{k}x{n}");
        ensure!(
            a.len() > (m - 1) * s.row + (k - 1) * s.col,
            "gemm: A too small for {m}x{k}"
        );
        ensure!(
            b.len() >= k * n,
            "gemm: B holds {} values, needs {k}x{n}",
            b.len()
        );
        ensure!(
            c.len() >= m * n,
            "gemm: C holds {} values, needs {m}x{n}",
            c.len()
        );
        if let Some(bias) = bias {
            ensure!(
                bias.len() >= n,
                "gemm: bias holds {} values, needs {n}",
                bias.len()
            );
        }
        let dummy = gpu.dummy()?;
        let bindings = [(1, a), (2, b), (3, bias.unwrap_or(&dummy)), (4, c)];
        if let Some(rows_layout) = self.sg8_layout(gpu) {
            let sink = gpu.sink()?;
            let col_blocks = n.div_ceil(SG8_COLS);
            let tiles = m.div_ceil(SG8_ROWS) * col_blocks;
            let params = Sg8Params {
                m: m as u32,
                n: n as u32,
                k: k as u32,
                lda: if rows_layout { s.row } else { s.col } as u32,
                flags: bias.is_some() as u32 | (b_sums.is_some() as u32) << 1,
                col_blocks: col_blocks as u32,
                tiles: tiles as u32,
                pad: 0,
            };
            let kernel = gpu.kernel(
                &SHADER_SG8,
                "main",
                &[("A_ROWS", rows_layout as u32 as f64)],
            );
            gpu.note_flops(self.flops());
            return gpu.dispatch(
                &kernel,
                bytemuck::bytes_of(&params),
                &[
                    bindings[0],
                    bindings[1],
                    bindings[2],
                    bindings[3],
                    (5, b_sums.unwrap_or(&sink)),
                ],
                tiles as u32,
            );
        }
        ensure!(b_sums.is_none(), "gemm: only the 8-lane kernel sums B");
        let col_blocks = n.div_ceil(COLS);
        let tiles = m.div_ceil(ROWS) * col_blocks;
        let params = Params {
            m: m as u32,
            n: n as u32,
            k: k as u32,
            ldb: n as u32,
            a_rs: s.row as u32,
            a_cs: s.col as u32,
            ldc: n as u32,
            flags: bias.is_some() as u32 | (accumulate as u32) << 1,
            col_blocks: col_blocks as u32,
            tiles: tiles as u32,
            pad: [0; 2],
        };
        let kernel = gpu.kernel(&SHADER, "main", &[("VEC4", (n % 4 == 0) as u32 as f64)]);
        gpu.note_flops(self.flops());
        gpu.dispatch(
            &kernel,
            bytemuck::bytes_of(&params),
            &bindings,
            tiles as u32,
        )
    }
}

/// CPU reference: `c = a·b (+ bias) (+ c)` with the same conventions.
pub fn cpu(g: &Gemm, a: &[f32], b: &[f32], bias: Option<&[f32]>, c: &mut [f32]) {
    for i in 0..g.m {
        for j in 0..g.n {
            let mut s = 0f64;
            for kk in 0..g.k {
                s += a[i * g.a.row + kk * g.a.col] as f64 * b[kk * g.n + j] as f64;
            }
            if let Some(bias) = bias {
                s += bias[j] as f64;
            }
            if g.accumulate {
                s += c[i * g.n + j] as f64;
            }
            c[i * g.n + j] = s as f32;
        }
    }
}
