//! Adam over the model's flat trainable vector: its moments, the flat
//! gradient the tape's per-parameter gradients are gathered into, and the
//! per-step scalars. All of it lives on the GPU; nothing is allocated per step.

use anyhow::{Result, bail, ensure};

use crate::model::Model;
use crate::ops::adam::{self, AdamConfig};
use crate::tape::Grads;
use crate::{Gpu, Tensor};

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
    pub fn new(gpu: &Gpu, model: &Model, config: AdamConfig) -> Result<Adam> {
        let len = model.trainable.len();
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
    pub fn step(&mut self, gpu: &Gpu, model: &Model, grads: &Grads) -> Result<()> {
        for (info, view) in model.trainable_views() {
            let Some(g) = grads.get(view) else {
                bail!("no gradient reached parameter {}", info.name);
            };
            gpu.copy(g, 0, &self.grad, info.offset, info.len())?;
        }
        adam::step(
            gpu,
            &self.config,
            &model.trainable,
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
