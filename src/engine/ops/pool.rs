//! Max and average pooling of NHWC activations: square window, stride,
//! padding 'valid' (Keras' default; stride defaults to the window size).

use anyhow::{Result, bail, ensure};
use bytemuck::{Pod, Zeroable};

use crate::engine::ops::shader_pair;
use crate::engine::ops::{ShaderPair, image_groups};
use crate::engine::{Gpu, Tensor};

const SHADERS: ShaderPair = shader_pair!(
    "pool",
    "../../../shaders/common.wgsl",
    "../../../shaders/pool.wgsl"
);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2d {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub size: usize,
    pub stride: usize,
    pub oh: usize,
    pub ow: usize,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    h: u32,
    w: u32,
    c: u32,
    oh: u32,
    ow: u32,
    size: u32,
    stride: u32,
}

impl Pool2d {
    pub fn new(input: &[usize], size: usize, stride: usize) -> Result<Self> {
        let &[n, h, w, c] = input else {
            bail!("pooling expects an NHWC input, got shape {input:?}")
        };
        ensure!(
            size > 0 && stride > 0,
            "pooling: window and stride must be positive"
        );
        ensure!(
            h >= size && w >= size,
            "a {size}x{size} pooling window does not fit a {h}x{w} input"
        );
        ensure!(w * c < 1 << 24, "pooling: image rows too wide");
        Ok(Pool2d {
            n,
            h,
            w,
            c,
            size,
            stride,
            oh: (h - size) / stride + 1,
            ow: (w - size) / stride + 1,
        })
    }

    pub fn output_shape(&self) -> [usize; 4] {
        [self.n, self.oh, self.ow, self.c]
    }

    /// Channels in the kernels' units: vec4s when c % 4 == 0.
    fn cv(&self) -> usize {
        if self.c.is_multiple_of(4) {
            self.c / 4
        } else {
            self.c
        }
    }

    fn params(&self) -> Params {
        Params {
            n: self.n as u32,
            h: self.h as u32,
            w: self.w as u32,
            c: self.cv() as u32,
            oh: self.oh as u32,
            ow: self.ow as u32,
            size: self.size as u32,
            stride: self.stride as u32,
        }
    }

    /// Grid for one invocation per (column, channel V) of `cols` columns,
    /// one workgroup row per image row of `rows`, and groups of images
    /// (`ops::image_groups`; see `shaders/pool.wgsl`).
    fn grid(&self, cols: usize, rows: usize) -> [u32; 3] {
        [
            (cols * self.cv()).div_ceil(64) as u32,
            rows as u32,
            image_groups(self.n),
        ]
    }

    fn out_grid(&self) -> [u32; 3] {
        self.grid(self.ow, self.oh)
    }

    fn in_grid(&self) -> [u32; 3] {
        self.grid(self.w, self.h)
    }

    /// Returns y and the winning tap of every output (for the backward pass).
    pub fn max_forward(&self, gpu: &Gpu, x: &Tensor) -> Result<(Tensor, Tensor)> {
        ensure!(
            x.shape() == [self.n, self.h, self.w, self.c],
            "max pool: input {:?} for {self:?}",
            x.shape()
        );
        let y = gpu.empty(&self.output_shape())?;
        let arg = gpu.empty(&self.output_shape())?;
        let k = gpu.kernel(SHADERS.pick(self.c.is_multiple_of(4)), "max_forward", &[]);
        gpu.dispatch_xyz(
            &k,
            bytemuck::bytes_of(&self.params()),
            &[(1, x), (3, &y), (4, &arg)],
            self.out_grid(),
        )?;
        Ok((y, arg))
    }

    /// y alone, for inference (no winning taps kept).
    pub fn max_values(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        ensure!(
            x.shape() == [self.n, self.h, self.w, self.c],
            "max pool: input {:?} for {self:?}",
            x.shape()
        );
        let y = gpu.empty(&self.output_shape())?;
        let k = gpu.kernel(
            SHADERS.pick(self.c.is_multiple_of(4)),
            "max_forward_values",
            &[],
        );
        // Pairs of horizontal neighbours per invocation.
        gpu.dispatch_xyz(
            &k,
            bytemuck::bytes_of(&self.params()),
            &[(1, x), (3, &y)],
            self.grid(self.ow.div_ceil(2), self.oh),
        )?;
        Ok(y)
    }

    pub fn max_backward(&self, gpu: &Gpu, dy: &Tensor, arg: &Tensor) -> Result<Tensor> {
        let dx = gpu.empty(&[self.n, self.h, self.w, self.c])?;
        let (entry, grid) = match (self.size, self.stride) {
            (size, stride) if size == stride => ("max_backward_tiled", self.in_grid()),
            // 2×2 blocks of pixels, each covered by at most 2×2 windows.
            (3 | 4, 2) => (
                "max_backward_s2",
                self.grid(self.w.div_ceil(2), self.h.div_ceil(2)),
            ),
            _ => ("max_backward", self.in_grid()),
        };
        let k = gpu.kernel(SHADERS.pick(self.c.is_multiple_of(4)), entry, &[]);
        gpu.dispatch_xyz(
            &k,
            bytemuck::bytes_of(&self.params()),
            &[(1, dy), (2, arg), (3, &dx)],
            grid,
        )?;
        Ok(dx)
    }

    pub fn avg_forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        ensure!(
            x.shape() == [self.n, self.h, self.w, self.c],
            "average pool: input {:?} for {self:?}",
            x.shape()
        );
        let y = gpu.empty(&self.output_shape())?;
        let k = gpu.kernel(SHADERS.pick(self.c.is_multiple_of(4)), "avg_forward", &[]);
        gpu.dispatch_xyz(
            &k,
            bytemuck::bytes_of(&self.params()),
            &[(1, x), (3, &y)],
            self.out_grid(),
        )?;
        Ok(y)
    }

    pub fn avg_backward(&self, gpu: &Gpu, dy: &Tensor) -> Result<Tensor> {
        let dx = gpu.empty(&[self.n, self.h, self.w, self.c])?;
        let k = gpu.kernel(SHADERS.pick(self.c.is_multiple_of(4)), "avg_backward", &[]);
        gpu.dispatch_xyz(
            &k,
            bytemuck::bytes_of(&self.params()),
            &[(1, dy), (3, &dx)],
            self.in_grid(),
        )?;
        Ok(dx)
    }
}

/// CPU references (f64).
pub mod cpu {
    use super::Pool2d;

    /// Calls f(output index, tap, input index) for every window tap.
    fn windows(p: &Pool2d, mut f: impl FnMut(usize, usize, usize)) {
        for n in 0..p.n {
            for oy in 0..p.oh {
                for ox in 0..p.ow {
                    for c in 0..p.c {
                        let o = ((n * p.oh + oy) * p.ow + ox) * p.c + c;
                        for ky in 0..p.size {
                            for kx in 0..p.size {
                                let i = ((n * p.h + oy * p.stride + ky) * p.w + ox * p.stride + kx)
                                    * p.c
                                    + c;
                                f(o, ky * p.size + kx, i);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Returns (y, winning tap); the first of equal maxima wins.
    pub fn max_forward(p: &Pool2d, x: &[f64]) -> (Vec<f64>, Vec<usize>) {
        let len = p.n * p.oh * p.ow * p.c;
        let mut y = vec![f64::NEG_INFINITY; len];
        let mut arg = vec![0; len];
        windows(p, |o, tap, i| {
            if x[i] > y[o] {
                y[o] = x[i];
                arg[o] = tap;
            }
        });
        (y, arg)
    }

    pub fn max_backward(p: &Pool2d, x: &[f64], dy: &[f64]) -> Vec<f64> {
        let (_, arg) = max_forward(p, x);
        let mut dx = vec![0.0; x.len()];
        windows(p, |o, tap, i| {
            if arg[o] == tap {
                dx[i] += dy[o];
            }
        });
        dx
    }

    pub fn avg_forward(p: &Pool2d, x: &[f64]) -> Vec<f64> {
        let mut y = vec![0.0; p.n * p.oh * p.ow * p.c];
        let area = (p.size * p.size) as f64;
        windows(p, |o, _, i| y[o] += x[i] / area);
        y
    }

    pub fn avg_backward(p: &Pool2d, dy: &[f64]) -> Vec<f64> {
        let mut dx = vec![0.0; p.n * p.h * p.w * p.c];
        let area = (p.size * p.size) as f64;
        windows(p, |o, _, i| dx[i] += dy[o] / area);
        dx
    }
}
