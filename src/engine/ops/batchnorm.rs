//! Batch normalisation of NHWC activations seen as [m, c] (m = n·h·w), with
//! Keras' semantics and defaults (epsilon 1e-3, momentum 0.99).

use std::sync::Arc;

use anyhow::{Result, ensure};
use bytemuck::{Pod, Zeroable};

use crate::engine::gpu::Kernel;
use crate::engine::ops::ShaderPair;
use crate::engine::ops::reduce::Chunks;
use crate::engine::ops::shader_pair;
use crate::engine::{Gpu, Tensor};

const SHADERS: ShaderPair = shader_pair!("batchnorm", "../../../shaders/batchnorm.wgsl");
/// Rows per workgroup of the inference kernel (`normalize`).
const ROWS: usize = 32;
/// Up to this many rows, training's workgroups (one per 32 channels) compute
/// the statistics themselves instead of a reduction dispatch before them:
/// fewer dispatches for small layers, whose reductions are short anyway.
const ONE_CHUNK_ROWS: usize = 512;

pub const EPSILON: f32 = 1e-3;
pub const MOMENTUM: f32 = 0.99;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    m: u32,
    c: u32,
    eps: f32,
    momentum: f32,
    chunks: u32,
    rows_per_chunk: u32,
    gamma_at: u32,
    pad: u32,
}

#[derive(Clone, Copy, Debug)]
pub struct BatchNorm {
    /// Channels (the last dimension).
    pub c: usize,
    /// Followed by a ReLU, fused into these kernels.
    pub relu: bool,
    pub eps: f32,
    pub momentum: f32,
}

/// The learned and tracked per-channel values of one batch-norm layer.
pub struct BnParams<'a> {
    pub gamma: &'a Tensor,
    pub beta: &'a Tensor,
    pub moving_mean: &'a Tensor,
    pub moving_var: &'a Tensor,
}

pub struct BnGrads {
    pub dx: Tensor,
    pub dgamma: Tensor,
    pub dbeta: Tensor,
    /// dy masked by the fused ReLU, when asked for: the gradient a residual
    /// shortcut added before that ReLU receives.
    pub dshortcut: Option<Tensor>,
}

impl BatchNorm {
    pub fn new(c: usize) -> Self {
        BatchNorm {
            c,
            relu: false,
            eps: EPSILON,
            momentum: MOMENTUM,
        }
    }

    /// Channels in the kernels' units: vec4s when c % 4 == 0.
    fn cv(&self) -> usize {
        if self.c.is_multiple_of(4) {
            self.c / 4
        } else {
            self.c
        }
    }

    /// Batch norm followed by a ReLU: one pass forward, and the ReLU's
    /// backward folded into the batch norm's.
    pub fn with_relu(c: usize) -> Self {
        BatchNorm {
            relu: true,
            ..Self::new(c)
        }
    }

    fn kernel(&self, gpu: &Gpu, entry: &str) -> Arc<Kernel> {
        self.kernel_with(gpu, entry, false)
    }

    /// The kernel, with `normalize` adding a residual when `residual`.
    fn kernel_with(&self, gpu: &Gpu, entry: &str, residual: bool) -> Arc<Kernel> {
        self.kernel_overriding(gpu, entry, &[("RESIDUAL", residual)])
    }

    fn kernel_overriding(&self, gpu: &Gpu, entry: &str, flags: &[(&str, bool)]) -> Arc<Kernel> {
        let mut constants = vec![("RELU", self.relu as u32 as f64)];
        constants.extend(flags.iter().map(|&(name, on)| (name, on as u32 as f64)));
        gpu.kernel(SHADERS.pick(self.c.is_multiple_of(4)), entry, &constants)
    }

    /// Workgroups across the channels (32 lanes each).
    fn groups(&self) -> u32 {
        self.cv().div_ceil(32) as u32
    }

    fn params(&self, m: usize) -> Params {
        let split = Self::split(m);
        Params {
            m: m as u32,
            c: self.cv() as u32,
            eps: self.eps,
            momentum: self.momentum,
            chunks: split.chunks as u32,
            rows_per_chunk: split.rows_per_chunk as u32,
            gamma_at: (self.gamma_at() * self.cv() / self.c) as u32,
            pad: 0,
        }
    }

    /// Where Σdy·xhat (dgamma) starts after Σdy (dbeta) in the backward's
    /// sums: a multiple of 64 floats, so that both can be views.
    fn gamma_at(&self) -> usize {
        self.c.next_multiple_of(64)
    }

    /// How training splits m rows into chunks (one below `ONE_CHUNK_ROWS`).
    fn split(m: usize) -> Chunks {
        match m <= ONE_CHUNK_ROWS {
            true => Chunks {
                rows_per_chunk: m,
                chunks: 1,
            },
            false => Chunks::of(m),
        }
    }

    /// The training kernels' grid: column groups × chunks.
    fn chunk_grid(&self, m: usize) -> [u32; 3] {
        [self.groups(), Self::split(m).chunks as u32, 1]
    }

    /// The per-chunk reduction `entry` ([2, chunks, c]) over the bindings,
    /// or None for a single chunk, which the next kernel reduces itself.
    fn chunk_sums(
        &self,
        gpu: &Gpu,
        entry: &str,
        m: usize,
        bindings: &[(u32, &Tensor)],
    ) -> Result<Option<Tensor>> {
        let split = Self::split(m);
        if split.chunks == 1 {
            return Ok(None);
        }
        let part = gpu.empty(&[2, split.chunks, self.c])?;
        let mut bindings = bindings.to_vec();
        bindings.push((6, &part));
        gpu.dispatch_xyz(
            &self.kernel(gpu, entry),
            bytemuck::bytes_of(&self.params(m)),
            &bindings,
            self.chunk_grid(m),
        )?;
        Ok(Some(part))
    }

    fn rows(&self, x: &Tensor) -> Result<usize> {
        ensure!(
            x.shape().last() == Some(&self.c),
            "batch norm over {} channels got a tensor of shape {:?}",
            self.c,
            x.shape()
        );
        Ok(x.len() / self.c)
    }

    /// Training mode: normalise with the batch statistics and update the
    /// moving averages in place. Returns y and the stats [mean | invstd]
    /// that the backward pass needs.
    pub fn forward_train(&self, gpu: &Gpu, x: &Tensor, p: &BnParams) -> Result<(Tensor, Tensor)> {
        self.train(gpu, x, p, None)
    }

    /// Training mode with a residual: BN(x) + residual (then the ReLU when
    /// fused) and the batch statistics. The backward is `backward`'s (with
    /// the ReLU fused, it masks dy by this output, which is right for the sum).
    pub fn forward_train_add(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        p: &BnParams,
        residual: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        self.train(gpu, x, p, Some(residual))
    }

    /// Two dispatches (one for few rows): the chunks' moments, then
    /// `normalize_train`, which combines them, writes the stats, updates the
    /// moving averages and normalises.
    fn train(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        p: &BnParams,
        residual: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let m = self.rows(x)?;
        self.check_residual(x, residual)?;
        let moments = self.chunk_sums(gpu, "moments", m, &[(2, x)])?;
        let stats = gpu.empty(&[2, self.c])?;
        let y = gpu.empty(x.shape())?;
        gpu.dispatch_xyz(
            &self.kernel_with(gpu, "normalize_train", residual.is_some()),
            bytemuck::bytes_of(&self.params(m)),
            &[
                (1, moments.as_ref().unwrap_or(x)),
                (2, x),
                (3, p.gamma),
                (4, p.beta),
                (5, residual.unwrap_or(x)),
                (6, &y),
                (7, p.moving_mean),
                (8, p.moving_var),
                (10, &stats),
            ],
            self.chunk_grid(m),
        )?;
        Ok((y, stats))
    }

    fn check_residual(&self, x: &Tensor, residual: Option<&Tensor>) -> Result<()> {
        if let Some(r) = residual {
            ensure!(
                r.shape() == x.shape(),
                "batch norm: residual {:?} for input {:?}",
                r.shape(),
                x.shape()
            );
        }
        Ok(())
    }

    /// Inference mode: normalise with the moving averages.
    pub fn forward_infer(&self, gpu: &Gpu, x: &Tensor, p: &BnParams) -> Result<Tensor> {
        let m = self.rows(x)?;
        let stats = self.moving_stats(gpu, p, m)?;
        self.apply(gpu, x, &stats, p, None, m)
    }

    /// Inference mode with a residual: BN(x) + residual (then the ReLU when
    /// fused), one pass.
    pub fn forward_infer_add(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        p: &BnParams,
        residual: &Tensor,
    ) -> Result<Tensor> {
        let m = self.rows(x)?;
        let stats = self.moving_stats(gpu, p, m)?;
        self.apply(gpu, x, &stats, p, Some(residual), m)
    }

    /// [mean | invstd] from the moving averages.
    fn moving_stats(&self, gpu: &Gpu, p: &BnParams, m: usize) -> Result<Tensor> {
        let stats = gpu.empty(&[2, self.c])?;
        gpu.dispatch(
            &self.kernel(gpu, "from_moving"),
            bytemuck::bytes_of(&self.params(m)),
            &[(1, p.moving_mean), (2, p.moving_var), (6, &stats)],
            self.groups(),
        )?;
        Ok(stats)
    }

    /// y = BN(x) with `stats` (+ `residual`), then the ReLU when fused.
    fn apply(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        stats: &Tensor,
        p: &BnParams,
        residual: Option<&Tensor>,
        m: usize,
    ) -> Result<Tensor> {
        self.check_residual(x, residual)?;
        let y = gpu.empty(x.shape())?;
        // The kernel's layout has the residual's binding either way: x stands
        // in when the RESIDUAL override leaves it unread.
        gpu.dispatch_xyz(
            &self.kernel_with(gpu, "normalize", residual.is_some()),
            bytemuck::bytes_of(&self.params(m)),
            &[
                (1, x),
                (2, stats),
                (3, p.gamma),
                (4, p.beta),
                (5, residual.unwrap_or(x)),
                (6, &y),
            ],
            [self.groups(), m.div_ceil(ROWS) as u32, 1],
        )?;
        Ok(y)
    }

    /// Gradients for x, gamma and beta (training-mode statistics). `dy` is
    /// the gradient of this layer's output: after the ReLU when fused, and
    /// then `y` is that output (it says where the ReLU passed the gradient).
    pub fn backward(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        y: &Tensor,
        dy: &Tensor,
        stats: &Tensor,
        gamma: &Tensor,
    ) -> Result<BnGrads> {
        self.grads(gpu, [x, y, dy, stats, gamma], false)
    }

    /// `backward` of `forward_train_add` with the ReLU fused: also dy masked
    /// by that ReLU (`dshortcut`), the gradient of the residual.
    pub fn backward_add(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        y: &Tensor,
        dy: &Tensor,
        stats: &Tensor,
        gamma: &Tensor,
    ) -> Result<BnGrads> {
        self.grads(gpu, [x, y, dy, stats, gamma], true)
    }

    /// Two dispatches (one for few rows): the chunks' sums, then
    /// `grad_input`, which adds them up, writes dbeta and dgamma, computes dx
    /// and, with `shortcut`, writes the masked dy.
    fn grads(&self, gpu: &Gpu, tensors: [&Tensor; 5], shortcut: bool) -> Result<BnGrads> {
        let [x, y, dy, stats, gamma] = tensors;
        ensure!(
            self.relu || !shortcut,
            "batch norm: a shortcut's gradient needs the fused ReLU"
        );
        let m = self.rows(x)?;
        let c = self.c;
        let part = self.chunk_sums(gpu, "grad_sums", m, &[(1, x), (2, dy), (3, stats), (9, y)])?;
        let sums = gpu.empty(&[self.gamma_at() + c])?;
        let dx = gpu.empty(x.shape())?;
        let dshortcut = if shortcut {
            Some(gpu.empty(x.shape())?)
        } else {
            None
        };
        let sink = gpu.sink()?;
        gpu.dispatch_xyz(
            &self.kernel_overriding(gpu, "grad_input", &[("SHORTCUT", shortcut)]),
            bytemuck::bytes_of(&self.params(m)),
            &[
                (1, x),
                (2, dy),
                (3, stats),
                (4, gamma),
                (5, part.as_ref().unwrap_or(x)),
                (6, &dx),
                (7, &sums),
                (8, dshortcut.as_ref().unwrap_or(&sink)),
                (9, y),
            ],
            self.chunk_grid(m),
        )?;
        Ok(BnGrads {
            dx,
            dbeta: sums.view(0, &[c]),
            dgamma: sums.view(self.gamma_at(), &[c]),
            dshortcut,
        })
    }
}

/// CPU references (f64), rows × channels.
pub mod cpu {
    /// Returns (y, mean, biased variance).
    pub fn forward_train(
        x: &[f64],
        c: usize,
        gamma: &[f64],
        beta: &[f64],
        eps: f64,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let m = x.len() / c;
        let mut mean = vec![0.0; c];
        let mut var = vec![0.0; c];
        for (i, v) in x.iter().enumerate() {
            mean[i % c] += v / m as f64;
        }
        for (i, v) in x.iter().enumerate() {
            var[i % c] += (v - mean[i % c]).powi(2) / m as f64;
        }
        let y = normalize(x, c, &mean, &var, gamma, beta, eps);
        (y, mean, var)
    }

    pub fn normalize(
        x: &[f64],
        c: usize,
        mean: &[f64],
        var: &[f64],
        gamma: &[f64],
        beta: &[f64],
        eps: f64,
    ) -> Vec<f64> {
        x.iter()
            .enumerate()
            .map(|(i, v)| {
                let j = i % c;
                (v - mean[j]) / (var[j] + eps).sqrt() * gamma[j] + beta[j]
            })
            .collect()
    }

    /// Returns (dx, dgamma, dbeta) for training-mode batch norm.
    pub fn backward(
        x: &[f64],
        dy: &[f64],
        c: usize,
        gamma: &[f64],
        eps: f64,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let m = (x.len() / c) as f64;
        let ones = vec![1.0; c];
        let zeros = vec![0.0; c];
        let (xhat, mean, var) = forward_train(x, c, &ones, &zeros, eps);
        let _ = mean;
        let mut dbeta = vec![0.0; c];
        let mut dgamma = vec![0.0; c];
        for i in 0..x.len() {
            dbeta[i % c] += dy[i];
            dgamma[i % c] += dy[i] * xhat[i];
        }
        let dx = (0..x.len())
            .map(|i| {
                let j = i % c;
                gamma[j] / (var[j] + eps).sqrt() * (dy[i] - dbeta[j] / m - xhat[i] * dgamma[j] / m)
            })
            .collect();
        (dx, dgamma, dbeta)
    }
}
