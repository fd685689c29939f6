//! Matrix product `C = A·B (+ bias) (+ C)`: the work-horse of convolution and
//! the dense layer. See `shaders/gemm.wgsl` for the kernel's shape.

use anyhow::{Result, ensure};
use bytemuck::{Pod, Zeroable};

use crate::{Gpu, Shader, Tensor};

const SHADER: Shader = Shader {
    name: "gemm",
    source: include_str!("../../shaders/gemm.wgsl"),
};
const ROWS: usize = 16;
const COLS: usize = 64;

/// How A is read: element (i, k) of the logical [m, k] matrix is at
/// `i * row_stride + k * col_stride`, so a transposed matrix is just strides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Strides {
    pub row: usize,
    pub col: usize,
}

impl Strides {
    /// A row-major [m, k] matrix.
    pub fn rows(k: usize) -> Self {
        Strides { row: k, col: 1 }
    }
    /// The transpose of a row-major [k, m] matrix.
    pub fn transposed(m: usize) -> Self {
        Strides { row: 1, col: m }
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

impl Gemm {
    pub fn flops(&self) -> f64 {
        2.0 * (self.m * self.n * self.k) as f64
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
        let Gemm {
            m,
            n,
            k,
            a: s,
            accumulate,
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
        let vec4 = n % 4 == 0;
        let kernel = gpu.kernel(&SHADER, "main", &[("VEC4", vec4 as u32 as f64)]);
        let dummy;
        let bias = match bias {
            Some(b) => b,
            None => {
                dummy = gpu.dummy()?;
                &dummy
            }
        };
        gpu.dispatch(
            &kernel,
            bytemuck::bytes_of(&params),
            &[(1, a), (2, b), (3, bias), (4, c)],
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
