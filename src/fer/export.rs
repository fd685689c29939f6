//! The inference pass as data, for a WebGPU player (the browser page): the
//! real `Model::forward` + softmax at a given batch size, recorded dispatch by
//! dispatch as it runs (`engine::record`), with which buffers hold the input,
//! the probabilities and the weights. Nothing here knows the model's layers:
//! the plan runs, the recording captures it.

use std::sync::Arc;

use anyhow::{Result, bail, ensure};
use serde::Serialize;

use crate::engine::ops::softmax_xent;
use crate::engine::record::Recording;
use crate::engine::tape::Tape;
use crate::engine::{Gpu, Tensor};
use crate::fer::data::{PIXELS, SIDE};
use crate::fer::model::Model;

/// Format tag of `WebPlan`; a player refuses others.
pub const FORMAT: &str = "wgfer-web-1";

/// Where a tensor lives in the recording's buffers.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Slot {
    pub buffer: u64,
    /// Bytes.
    pub offset: u64,
    /// Bytes.
    pub size: u64,
}

/// A range of the weights file to upload into a buffer before the first run.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct WeightFill {
    pub buffer: u64,
    /// Bytes into `weights.bin`.
    pub file_offset: u64,
    pub size: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct WebPlan {
    pub format: &'static str,
    pub batch: usize,
    /// Images are `batch × 48 × 48` gray values in [0, 1], f32, row by row.
    pub image_side: usize,
    pub classes: Vec<String>,
    /// Write the images here before each run.
    pub input: Slot,
    /// Read `batch × classes` probabilities from here after it.
    pub output: Slot,
    pub weights: Vec<WeightFill>,
    pub recording: Recording,
}

/// The model's parameters as the player uploads them: the trainable vector
/// then the moving statistics, f32 little-endian, each as long as its buffer.
pub fn weights_bin(model: &Model) -> Result<Vec<u8>> {
    let mut bytes = vec![];
    for t in [&model.trainable, &model.moving] {
        bytes.extend(bytemuck::cast_slice::<f32, u8>(&model.gpu.read(t)?));
    }
    Ok(bytes)
}

/// Refuse a plan that a browser's WebGPU may not run (subgroup kernels):
/// export from a Gpu with the portable kernels.
pub fn check_portable(plan: &WebPlan) -> Result<()> {
    match plan
        .recording
        .shaders
        .iter()
        .find(|(_, src)| src.contains("enable subgroups"))
    {
        Some((name, _)) => bail!(
            "kernel {name} needs subgroups, which a browser may not have: record with the portable kernels"
        ),
        None => Ok(()),
    }
}

/// Record one inference pass of `batch` images, as the native code runs it.
pub fn record(model: &Model, class_names: &[String], batch: usize) -> Result<WebPlan> {
    ensure!(batch > 0, "the batch size must be at least 1");
    let gpu = &model.gpu;
    let images = gpu.upload(&[batch, SIDE, SIDE, 1], &vec![0.5; batch * PIXELS])?;
    gpu.sync()?;
    // Folded weights made earlier would be buffers the recording never
    // fills: fold again inside it, from the weights the player uploads.
    model.forget_folded();
    gpu.start_recording();
    let probs = forward(model, gpu, &images);
    let recording = gpu.finish_recording()?;
    let probs = probs?;
    gpu.sync()?;
    let mut file_offset = 0;
    let mut weights = vec![];
    for t in [&model.trainable, &model.moving] {
        let size = t.len() as u64 * 4;
        weights.push(WeightFill {
            buffer: t.buffer_id(),
            file_offset,
            size,
        });
        file_offset += size;
    }
    Ok(WebPlan {
        format: FORMAT,
        batch,
        image_side: SIDE,
        classes: class_names.to_vec(),
        input: slot(&images),
        output: slot(&probs),
        weights,
        recording,
    })
}

fn forward(model: &Model, gpu: &Gpu, images: &Tensor) -> Result<Tensor> {
    let logits = model.forward(&Tape::new(gpu), images, false)?;
    gpu.set_scope(&Arc::from("softmax output"), "forward");
    softmax_xent::softmax(gpu, &logits)
}

fn slot(t: &Tensor) -> Slot {
    Slot {
        buffer: t.buffer_id(),
        offset: t.buffer_offset(),
        size: t.len() as u64 * 4,
    }
}
