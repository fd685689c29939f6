//! Adam over a flat parameter vector: its moments, the flat gradient the
//! tape's per-parameter gradients are gathered into, and the per-step
//! scalars. All of it lives on the GPU; nothing is allocated per step.

use anyhow::{Result, bail, ensure};

use crate::engine::ops::adam::{self, AdamConfig};
use crate::engine::tape::Grads;
use crate::engine::{Gpu, Tensor};

/// The parameters an optimizer trains: one flat GPU vector, and the views
/// into it that the forward pass used (so the tape has their gradients).
pub struct ParamSet<'a> {
    pub flat: &'a Tensor,
    /// (name for errors, element offset into `flat`, the view).
    pub views: Vec<(&'a str, usize, &'a Tensor)>,
}

pub struct Adam {
    pub config: AdamConfig,
    /// Steps taken so far (Keras' `iterations`).
    pub t: u64,
    pub m: Tensor,
    pub v: Tensor,
    grad: Tensor,
    alpha: Tensor,
    /// Bit 0 set by the kernel when a gradient was not finite.
    pub flag: Tensor,
}

impl Adam {
    /// An optimizer for `len` parameters, its moments zero.
    pub fn new(gpu: &Gpu, len: usize, config: AdamConfig) -> Result<Adam> {
        let zeros = |n| -> Result<Tensor> {
            let t = gpu.persistent(n)?;
            gpu.write(&t, &vec![0.0; n])?;
            Ok(t)
        };
        Ok(Adam {
            config,
            t: 0,
            m: zeros(len)?,
            v: zeros(len)?,
            grad: zeros(len)?,
            alpha: zeros(1)?,
            flag: zeros(1)?,
        })
    }

    /// Write this step's step size; call before encoding the step (it flushes).
    pub fn prepare(&self, gpu: &Gpu) -> Result<()> {
        gpu.write(&self.alpha, &[self.config.alpha(self.t + 1)])
    }

    /// Gather the parameter gradients into the flat vector and update.
    pub fn step(&mut self, gpu: &Gpu, params: &ParamSet, grads: &Grads) -> Result<()> {
        ensure!(
            params.flat.len() == self.m.len(),
            "the optimizer was made for {} parameters, given {}",
            self.m.len(),
            params.flat.len()
        );
        for &(name, offset, view) in &params.views {
            let Some(g) = grads.get(view) else {
                bail!("no gradient reached parameter {name}");
            };
            gpu.copy(g, 0, &self.grad, offset, view.len())?;
        }
        adam::step(
            gpu,
            &self.config,
            params.flat,
            &self.grad,
            &self.m,
            &self.v,
            &self.alpha,
            &self.flag,
        )?;
        self.t += 1;
        Ok(())
    }

    /// Restore the moments and step count (resume).
    pub fn load_state(&mut self, gpu: &Gpu, t: u64, m: &[f32], v: &[f32]) -> Result<()> {
        ensure!(m.len() == v.len(), "optimizer moments differ in length");
        let mut m = m.to_vec();
        let mut v = v.to_vec();
        ensure!(
            m.len() <= self.m.len(),
            "optimizer state does not fit the model"
        );
        m.resize(self.m.len(), 0.0);
        v.resize(self.v.len(), 0.0);
        gpu.write(&self.m, &m)?;
        gpu.write(&self.v, &v)?;
        self.t = t;
        Ok(())
    }
}
