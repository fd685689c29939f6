//! The dense (fully connected) layer: `y = x·W + b` with x [n, in], W [in, out]
//! (Keras' layout). All three products run on the gemm kernel.

use anyhow::{Result, bail, ensure};

use crate::engine::ops::gemm::{Gemm, Strides};
use crate::engine::ops::reduce::column_sums;
use crate::engine::ops::transpose::transpose;
use crate::engine::{Gpu, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dense {
    pub n: usize,
    pub inputs: usize,
    pub outputs: usize,
}

impl Dense {
    pub fn new(input: &[usize], outputs: usize) -> Result<Self> {
        let &[n, inputs] = input else {
            bail!("dense expects [batch, features], got {input:?}")
        };
        ensure!(
            n > 0 && inputs > 0 && outputs > 0,
            "dense: empty shape {input:?} -> {outputs}"
        );
        Ok(Dense { n, inputs, outputs })
    }

    pub fn forward(&self, gpu: &Gpu, x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
        ensure!(
            x.shape() == [self.n, self.inputs],
            "dense: input {:?} for {self:?}",
            x.shape()
        );
        ensure!(
            w.shape() == [self.inputs, self.outputs],
            "dense: kernel {:?} for {self:?}",
            w.shape()
        );
        let y = gpu.empty(&[self.n, self.outputs])?;
        Gemm::new(
            self.n,
            self.outputs,
            self.inputs,
            Strides::rows(self.inputs),
        )
        .run(gpu, x, w, Some(b), &y)?;
        Ok(y)
    }

    /// dx = dy·Wᵀ (Wᵀ made explicit so the product reads it row by row).
    pub fn grad_input(&self, gpu: &Gpu, dy: &Tensor, w: &Tensor) -> Result<Tensor> {
        let wt = transpose(gpu, w, self.inputs, self.outputs)?;
        let dx = gpu.empty(&[self.n, self.inputs])?;
        Gemm::new(
            self.n,
            self.inputs,
            self.outputs,
            Strides::rows(self.outputs),
        )
        .run(gpu, dy, &wt, None, &dx)?;
        Ok(dx)
    }

    /// dW = xᵀ·dy.
    pub fn grad_weight(&self, gpu: &Gpu, x: &Tensor, dy: &Tensor) -> Result<Tensor> {
        let dw = gpu.empty(&[self.inputs, self.outputs])?;
        Gemm::new(
            self.inputs,
            self.outputs,
            self.n,
            Strides::transposed(self.inputs),
        )
        .run(gpu, x, dy, None, &dw)?;
        Ok(dw)
    }

    pub fn grad_bias(&self, gpu: &Gpu, dy: &Tensor) -> Result<Tensor> {
        column_sums(gpu, dy, self.outputs)
    }
}

/// CPU references (f64).
pub mod cpu {
    use super::Dense;

    pub fn forward(d: &Dense, x: &[f64], w: &[f64], b: &[f64]) -> Vec<f64> {
        let mut y = vec![0.0; d.n * d.outputs];
        for i in 0..d.n {
            for j in 0..d.outputs {
                y[i * d.outputs + j] = b[j]
                    + (0..d.inputs)
                        .map(|k| x[i * d.inputs + k] * w[k * d.outputs + j])
                        .sum::<f64>();
            }
        }
        y
    }

    pub fn grad_input(d: &Dense, dy: &[f64], w: &[f64]) -> Vec<f64> {
        let mut dx = vec![0.0; d.n * d.inputs];
        for i in 0..d.n {
            for k in 0..d.inputs {
                dx[i * d.inputs + k] = (0..d.outputs)
                    .map(|j| dy[i * d.outputs + j] * w[k * d.outputs + j])
                    .sum();
            }
        }
        dx
    }

    pub fn grad_weight(d: &Dense, x: &[f64], dy: &[f64]) -> Vec<f64> {
        let mut dw = vec![0.0; d.inputs * d.outputs];
        for k in 0..d.inputs {
            for j in 0..d.outputs {
                dw[k * d.outputs + j] = (0..d.n)
                    .map(|i| x[i * d.inputs + k] * dy[i * d.outputs + j])
                    .sum();
            }
        }
        dw
    }
}
