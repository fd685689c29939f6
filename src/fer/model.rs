//! The tutorial's ResNet ("Resnet18" in the Keras tutorial), as data: a list
//! of layers in Keras' creation order, each naming the layer(s) it reads.
//! `forward` walks the list; `summary` prints it as Keras' `model.summary()`.
//! Parameters live in two flat GPU vectors (trainable, and the batch-norm
//! moving statistics) so that Adam is one dispatch and a checkpoint is two
//! read-backs.

use std::collections::HashMap;
use std::sync::Mutex;

use anyhow::{Result, bail, ensure};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::engine::nn;
use crate::engine::ops::batchnorm::{self, BnParams};
use crate::engine::ops::bn_fold;
use crate::engine::ops::conv2d::{Conv2d, Epilogue, Padding};
use crate::engine::optim::ParamSet;
use crate::engine::tape::Tape;
use crate::engine::{Gpu, Tensor};
use crate::fer::checkpoint::{self, NamedTensor};
use crate::fer::data::SIDE;
use crate::fer::plan::{FoldedBn, Plan, StepOp};

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Input,
    /// Folded into the convolution that reads it (the tensor passes unpadded).
    ZeroPad(usize),
    Conv {
        filters: usize,
        kernel: usize,
        stride: usize,
        padding: Padding,
    },
    BatchNorm,
    Relu,
    MaxPool {
        size: usize,
        stride: usize,
    },
    AvgPool {
        size: usize,
        stride: usize,
    },
    Add,
    Flatten,
    Dense {
        units: usize,
    },
}

impl Op {
    /// Keras' class name, for the summary.
    pub fn keras_type(&self) -> &'static str {
        match self {
            Op::Input => "InputLayer",
            Op::ZeroPad(_) => "ZeroPadding2D",
            Op::Conv { .. } => "Conv2D",
            Op::BatchNorm => "BatchNormalization",
            Op::Relu => "Activation",
            Op::MaxPool { .. } => "MaxPooling2D",
            Op::AvgPool { .. } => "AveragePooling2D",
            Op::Add => "Add",
            Op::Flatten => "Flatten",
            Op::Dense { .. } => "Dense",
        }
    }

    /// The default layer-name stem Keras gives this class.
    fn keras_stem(&self) -> &'static str {
        match self {
            Op::Input => "input",
            Op::ZeroPad(_) => "zero_padding2d",
            Op::Conv { .. } => "conv2d",
            Op::BatchNorm => "batch_normalization",
            Op::Relu => "activation",
            Op::MaxPool { .. } => "max_pooling2d",
            Op::AvgPool { .. } => "average_pooling2d",
            Op::Add => "add",
            Op::Flatten => "flatten",
            Op::Dense { .. } => "dense",
        }
    }
}

/// Where one named parameter tensor lives.
#[derive(Clone, Debug)]
pub struct ParamInfo {
    /// `<layer>.kernel`, `.bias`, `.gamma`, `.beta`, `.moving_mean`, `.moving_variance`.
    pub name: String,
    pub shape: Vec<usize>,
    pub trainable: bool,
    /// Offset in the trainable or the moving-statistics vector (elements).
    pub offset: usize,
}

impl ParamInfo {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Clone, Debug)]
pub struct Layer {
    pub name: String,
    pub op: Op,
    pub inputs: Vec<usize>,
    /// Per image (no batch axis), e.g. [24, 24, 64] or [5].
    pub output_shape: Vec<usize>,
    /// Indices into `Architecture::params`.
    pub params: Vec<usize>,
}

/// Which layer graph: the tutorial's, or a finer-grained variant of it.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum ArchKind {
    /// The tutorial's ResNet: 48 → 24 (conv1) → 11 (max-pool) → 5 → 2 pixels, 1.2 M parameters.
    #[default]
    Tutorial,
    /// The same blocks and names without the stem's max-pool and half as wide:
    /// 48 → 24 → 12 → 6 pixels, so the residual stages see 4× (res_2) and 9×
    /// (res_3) more positions.
    Fine,
}

impl ArchKind {
    /// The name in weights files' `arch` metadata and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ArchKind::Tutorial => "tutorial",
            ArchKind::Fine => "fine",
        }
    }

    /// The kind called `s` (a weights file's `arch` metadata).
    pub fn parse(s: &str) -> Result<ArchKind> {
        let all = <ArchKind as clap::ValueEnum>::value_variants();
        match all.iter().find(|k| k.name() == s) {
            Some(k) => Ok(*k),
            None => {
                let known: Vec<_> = all.iter().map(|k| format!("`{}`", k.name())).collect();
                bail!(
                    "unknown architecture `{s}` (wgfer knows {})",
                    known.join(" and ")
                )
            }
        }
    }

    /// The summary's model name and the weights files' `architecture` line.
    fn titles(self) -> (&'static str, &'static str) {
        match self {
            ArchKind::Tutorial => ("Resnet18", "Resnet18 (Keras Emotion AI tutorial)"),
            ArchKind::Fine => (
                "Resnet18_fine",
                "Resnet18 (Keras Emotion AI tutorial) without the stem max-pool, half width",
            ),
        }
    }

    /// Filters of the first residual stage (the second has twice as many) and
    /// whether the stem ends in a 3×3 max-pool.
    fn shape(self) -> (usize, bool) {
        match self {
            ArchKind::Tutorial => (64, true),
            ArchKind::Fine => (32, false),
        }
    }
}

/// The layer graph and the parameter layout, with no GPU state.
#[derive(Clone, Debug)]
pub struct Architecture {
    pub kind: ArchKind,
    pub layers: Vec<Layer>,
    pub params: Vec<ParamInfo>,
    pub num_classes: usize,
    /// Lengths of the two flat vectors (with alignment padding).
    pub trainable_len: usize,
    pub moving_len: usize,
}

/// Views into flat vectors must start on 256-byte boundaries to be bound.
const ALIGN: usize = 64;

struct Builder {
    arch: Architecture,
    counts: HashMap<&'static str, usize>,
}

impl Builder {
    fn layer(&mut self, name: Option<String>, op: Op, inputs: &[usize]) -> usize {
        let name = name.unwrap_or_else(|| {
            let stem = op.keras_stem();
            let n = self.counts.entry(stem).or_default();
            let name = if *n == 0 {
                stem.to_string()
            } else {
                format!("{stem}_{n}")
            };
            *n += 1;
            name
        });
        let input_shape = inputs
            .first()
            .map(|&i| self.arch.layers[i].output_shape.clone())
            .unwrap_or_default();
        let (output_shape, params) = match &op {
            Op::Input => (vec![SIDE, SIDE, 1], vec![]),
            Op::ZeroPad(p) => (
                vec![
                    input_shape[0] + 2 * p,
                    input_shape[1] + 2 * p,
                    input_shape[2],
                ],
                vec![],
            ),
            Op::Conv {
                filters,
                kernel,
                stride,
                padding,
            } => {
                let [h, w, c] = input_shape[..] else {
                    unreachable!("conv input is HWC")
                };
                let size = |x: usize| match padding {
                    Padding::Valid => (x - kernel) / stride + 1,
                    Padding::Same => x.div_ceil(*stride),
                    Padding::Zeros(p) => (x + 2 * p - kernel) / stride + 1,
                };
                (
                    vec![size(h), size(w), *filters],
                    vec![
                        (".kernel", vec![*kernel, *kernel, c, *filters], true),
                        (".bias", vec![*filters], true),
                    ],
                )
            }
            Op::BatchNorm => {
                let c = *input_shape.last().unwrap();
                let params = [
                    (".gamma", true),
                    (".beta", true),
                    (".moving_mean", false),
                    (".moving_variance", false),
                ];
                (
                    input_shape.clone(),
                    params.iter().map(|(s, t)| (*s, vec![c], *t)).collect(),
                )
            }
            Op::Relu | Op::Add => (input_shape.clone(), vec![]),
            Op::MaxPool { size, stride } | Op::AvgPool { size, stride } => {
                let [h, w, c] = input_shape[..] else {
                    unreachable!("pool input is HWC")
                };
                (
                    vec![(h - size) / stride + 1, (w - size) / stride + 1, c],
                    vec![],
                )
            }
            Op::Flatten => (vec![input_shape.iter().product()], vec![]),
            Op::Dense { units } => (
                vec![*units],
                vec![
                    (".kernel", vec![input_shape[0], *units], true),
                    (".bias", vec![*units], true),
                ],
            ),
        };
        let mut indices = vec![];
        for (suffix, shape, trainable) in params {
            let len: usize = shape.iter().product();
            let slot = if trainable {
                &mut self.arch.trainable_len
            } else {
                &mut self.arch.moving_len
            };
            let offset = *slot;
            *slot += len.div_ceil(ALIGN) * ALIGN;
            indices.push(self.arch.params.len());
            self.arch.params.push(ParamInfo {
                name: format!("{name}{suffix}"),
                shape,
                trainable,
                offset,
            });
        }
        self.arch.layers.push(Layer {
            name,
            op,
            inputs: inputs.to_vec(),
            output_shape,
            params: indices,
        });
        self.arch.layers.len() - 1
    }

    fn conv(
        &mut self,
        name: String,
        x: usize,
        filters: usize,
        kernel: usize,
        padding: Padding,
    ) -> usize {
        self.layer(
            Some(name),
            Op::Conv {
                filters,
                kernel,
                stride: 1,
                padding,
            },
            &[x],
        )
    }

    fn bn(&mut self, name: String, x: usize) -> usize {
        self.layer(Some(name), Op::BatchNorm, &[x])
    }

    fn relu(&mut self, x: usize) -> usize {
        self.layer(None, Op::Relu, &[x])
    }

    /// The tutorial's `res_block`: a convolution block and two identity blocks.
    fn res_block(&mut self, x: usize, filters: [usize; 3], stage: usize) -> usize {
        let [f1, f2, f3] = filters;
        let n = |s: &str| format!("res_{stage}_{s}");
        let b = |s: &str| format!("bn_{stage}_{s}");
        let copy = x;
        let mut x = self.conv(n("conv_a"), x, f1, 1, Padding::Valid);
        x = self.layer(None, Op::MaxPool { size: 2, stride: 2 }, &[x]);
        x = self.bn(b("conv_a"), x);
        x = self.relu(x);
        x = self.conv(n("conv_b"), x, f2, 3, Padding::Same);
        x = self.bn(b("conv_b"), x);
        x = self.relu(x);
        x = self.conv(n("conv_c"), x, f3, 1, Padding::Valid);
        x = self.bn(b("conv_c"), x);
        let mut s = self.conv(n("conv_copy"), copy, f3, 1, Padding::Valid);
        s = self.layer(None, Op::MaxPool { size: 2, stride: 2 }, &[s]);
        s = self.bn(b("conv_copy"), s);
        x = self.layer(None, Op::Add, &[x, s]);
        x = self.relu(x);
        for k in 1..=2 {
            let copy = x;
            let id = |s: &str| format!("identity_{k}_{s}");
            x = self.conv(n(&id("a")), x, f1, 1, Padding::Valid);
            x = self.bn(b(&id("a")), x);
            x = self.relu(x);
            x = self.conv(n(&id("b")), x, f2, 3, Padding::Same);
            x = self.bn(b(&id("b")), x);
            x = self.relu(x);
            x = self.conv(n(&id("c")), x, f3, 1, Padding::Valid);
            x = self.bn(b(&id("c")), x);
            x = self.layer(None, Op::Add, &[x, copy]);
            x = self.relu(x);
        }
        x
    }
}

impl Architecture {
    /// The tutorial's model for `num_classes` classes (5 in the tutorial).
    pub fn resnet(num_classes: usize) -> Architecture {
        Self::of_kind(ArchKind::Tutorial, num_classes)
    }

    /// The `kind` of model for `num_classes` classes.
    pub fn of_kind(kind: ArchKind, num_classes: usize) -> Architecture {
        let (width, stem_pool) = kind.shape();
        let mut b = Builder {
            arch: Architecture {
                kind,
                layers: vec![],
                params: vec![],
                num_classes,
                trainable_len: 0,
                moving_len: 0,
            },
            counts: HashMap::new(),
        };
        let input = b.layer(Some("input_1".into()), Op::Input, &[]);
        let pad = b.layer(None, Op::ZeroPad(3), &[input]);
        let mut x = b.layer(
            Some("conv1".into()),
            Op::Conv {
                filters: 64,
                kernel: 7,
                stride: 2,
                padding: Padding::Valid,
            },
            &[pad],
        );
        x = b.bn("bn_conv1".into(), x);
        x = b.relu(x);
        if stem_pool {
            x = b.layer(None, Op::MaxPool { size: 3, stride: 2 }, &[x]);
        }
        x = b.res_block(x, [width, width, 4 * width], 2);
        x = b.res_block(x, [2 * width, 2 * width, 8 * width], 3);
        x = b.layer(
            Some("Averagea_Pooling".into()),
            Op::AvgPool { size: 2, stride: 2 },
            &[x],
        );
        x = b.layer(None, Op::Flatten, &[x]);
        b.layer(
            Some("Dense_final".into()),
            Op::Dense { units: num_classes },
            &[x],
        );
        b.arch
    }

    /// Every tensor a weights file holds, in `params` order: (name, shape).
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        self.params
            .iter()
            .map(|p| (p.name.clone(), p.shape.clone()))
            .collect()
    }

    /// The two flat vectors (trainable, moving statistics) filled from
    /// tensors in `params` order, as `checkpoint::load` returns them.
    pub fn scatter(&self, tensors: &[NamedTensor]) -> (Vec<f32>, Vec<f32>) {
        let mut trainable = vec![0.0; self.trainable_len];
        let mut moving = vec![0.0; self.moving_len];
        for (p, t) in self.params.iter().zip(tensors) {
            let dst = if p.trainable {
                &mut trainable
            } else {
                &mut moving
            };
            dst[p.offset..p.offset + p.len()].copy_from_slice(&t.data);
        }
        (trainable, moving)
    }

    /// The inverse of `scatter`: every parameter as a named tensor (Keras
    /// layouts), cut from the two flat vectors.
    pub fn gather(&self, trainable: &[f32], moving: &[f32]) -> Vec<NamedTensor> {
        self.params
            .iter()
            .map(|p| {
                let src = if p.trainable { trainable } else { moving };
                NamedTensor {
                    name: p.name.clone(),
                    shape: p.shape.clone(),
                    data: src[p.offset..p.offset + p.len()].to_vec(),
                }
            })
            .collect()
    }

    pub fn param_count(&self) -> (usize, usize) {
        let trainable = self
            .params
            .iter()
            .filter(|p| p.trainable)
            .map(ParamInfo::len)
            .sum();
        let frozen = self
            .params
            .iter()
            .filter(|p| !p.trainable)
            .map(ParamInfo::len)
            .sum();
        (trainable, frozen)
    }

    /// Keras' `model.summary()`.
    pub fn summary(&self) -> String {
        let line = "=".repeat(86);
        let thin = "_".repeat(86);
        let title = self.kind.titles().0;
        let mut s = format!("Model: \"{title}\"\n{thin}\n");
        s += &format!(
            " {:<40}{:<24}{:>10}   {}\n{line}\n",
            "Layer (type)", "Output Shape", "Param #", "Connected to"
        );
        for layer in &self.layers {
            let shape = format!(
                "(None, {})",
                layer
                    .output_shape
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let count: usize = layer.params.iter().map(|&i| self.params[i].len()).sum();
            let from: Vec<&str> = layer
                .inputs
                .iter()
                .map(|&i| self.layers[i].name.as_str())
                .collect();
            let name = format!("{} ({})", layer.name, layer.op.keras_type());
            s += &format!(" {name:<40}{shape:<24}{count:>10}   {}\n", from.join(", "));
        }
        let (trainable, frozen) = self.param_count();
        s += &format!(
            "{line}\nTotal params: {}\nTrainable params: {}\nNon-trainable params: {}\n{thin}\n",
            group(trainable + frozen),
            group(trainable),
            group(frozen)
        );
        s
    }
}

/// 1174021 -> "1,174,021".
pub fn group(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// The model on the GPU: architecture plus its parameter vectors and views.
pub struct Model {
    pub arch: Architecture,
    pub gpu: Gpu,
    /// All trainable parameters, one flat vector (Adam's domain).
    pub trainable: Tensor,
    /// The batch-norm moving means and variances.
    pub moving: Tensor,
    /// One view per `arch.params` entry.
    pub views: Vec<Tensor>,
    /// The forward pass's steps, derived once from `arch`.
    pub plan: Plan,
    /// The same at inference, batch norms folded into convolutions.
    pub inference_plan: Plan,
    /// The folded weights and biases by step, made at the first inference
    /// after the weights last changed (a training step clears them).
    folded: Mutex<HashMap<usize, (Tensor, Tensor)>>,
}

impl Model {
    /// A freshly initialised model: Glorot-uniform kernels, zero biases,
    /// gamma one, beta zero, moving mean zero, moving variance one (Keras).
    pub fn new(gpu: &Gpu, arch: Architecture, seed: u64) -> Result<Model> {
        let (trainable, moving) = initial_values(&arch, seed);
        Self::from_values(gpu, arch, &trainable, &moving)
    }

    /// A model with the given flat vectors (e.g. from a checkpoint).
    pub fn from_values(
        gpu: &Gpu,
        arch: Architecture,
        trainable: &[f32],
        moving: &[f32],
    ) -> Result<Model> {
        ensure!(
            trainable.len() == arch.trainable_len && moving.len() == arch.moving_len,
            "parameter vectors have the wrong length"
        );
        // Padded so that the last view can be bound as whole vec4s.
        let t = gpu.persistent(arch.trainable_len + 4)?;
        let m = gpu.persistent(arch.moving_len + 4)?;
        let mut tv = trainable.to_vec();
        tv.resize(arch.trainable_len + 4, 0.0);
        let mut mv = moving.to_vec();
        mv.resize(arch.moving_len + 4, 0.0);
        gpu.write(&t, &tv)?;
        gpu.write(&m, &mv)?;
        let views = arch
            .params
            .iter()
            .map(|p| (if p.trainable { &t } else { &m }).view(p.offset, &p.shape))
            .collect();
        Ok(Model {
            plan: Plan::of(&arch),
            inference_plan: Plan::inference(&arch),
            folded: Mutex::default(),
            arch,
            gpu: gpu.clone(),
            trainable: t,
            moving: m,
            views,
        })
    }

    /// The trainable parameters as the optimizer sees them.
    pub fn param_set(&self) -> ParamSet<'_> {
        ParamSet {
            flat: &self.trainable,
            views: self
                .trainable_views()
                .map(|(p, v)| (p.name.as_str(), p.offset, v))
                .collect(),
        }
    }

    /// The trainable parameter views (what the tape watches).
    pub fn trainable_views(&self) -> impl Iterator<Item = (&ParamInfo, &Tensor)> {
        self.arch
            .params
            .iter()
            .zip(&self.views)
            .filter(|(p, _)| p.trainable)
    }

    /// Logits [n, classes] for images [n, 48, 48, 1] (NHWC, values in [0, 1]):
    /// the plan's steps in order, each under its profile label.
    /// `training`: batch-norm on batch statistics (and moving averages
    /// updated); otherwise the inference plan, on the moving statistics,
    /// whose folded convolutions record nothing on the tape.
    pub fn forward(&self, tape: &Tape, images: &Tensor, training: bool) -> Result<Tensor> {
        if training {
            // The step about to run changes the weights and statistics.
            self.forget_folded();
            self.forward_with(&self.plan, tape, images, true)
        } else {
            self.forward_with(&self.inference_plan, tape, images, false)
        }
    }

    /// `forward` along the given plan (tests compare the two plans).
    pub fn forward_with(
        &self,
        plan: &Plan,
        tape: &Tape,
        images: &Tensor,
        training: bool,
    ) -> Result<Tensor> {
        let n = images.shape()[0];
        ensure!(
            images.shape() == [n, SIDE, SIDE, 1],
            "the model takes images [n, {SIDE}, {SIDE}, 1], got {:?}",
            images.shape()
        );
        let mut out: Vec<Option<Tensor>> = vec![None; plan.steps.len()];
        for (i, step) in plan.steps.iter().enumerate() {
            let inputs: Vec<&Tensor> = step
                .inputs
                .iter()
                .map(|&j| out[j].as_ref().expect("steps are in order"))
                .collect();
            self.gpu.set_scope(&step.label, "forward");
            let y = self.run_step(tape, i, &step.op, &inputs, images, training)?;
            out[i] = Some(y);
            for &j in &step.last_use {
                out[j] = None;
            }
        }
        match out.pop().flatten() {
            Some(logits) => Ok(logits),
            None => bail!("the model has no layers"),
        }
    }

    /// Drop the folded weights: the next inference folds them anew (call
    /// after writing the parameters other than by a training step).
    pub fn forget_folded(&self) {
        self.folded.lock().unwrap().clear();
    }

    /// Step `i`'s convolution weights and bias with its batch norm folded
    /// in, made once and kept until the weights change.
    fn folded_weights(
        &self,
        i: usize,
        [weight, bias]: [usize; 2],
        fold: FoldedBn,
    ) -> Result<(Tensor, Tensor)> {
        let mut cache = self.folded.lock().unwrap();
        if let Some(wb) = cache.get(&i) {
            return Ok(wb.clone());
        }
        let p = |j: usize| &self.views[j];
        let [gamma, beta, mean, var] = fold.params;
        let bn = BnParams {
            gamma: p(gamma),
            beta: p(beta),
            moving_mean: p(mean),
            moving_var: p(var),
        };
        let wb = bn_fold::fold(&self.gpu, p(weight), p(bias), &bn, batchnorm::EPSILON)?;
        cache.insert(i, wb.clone());
        Ok(wb)
    }

    fn run_step(
        &self,
        tape: &Tape,
        index: usize,
        op: &StepOp,
        inputs: &[&Tensor],
        images: &Tensor,
        training: bool,
    ) -> Result<Tensor> {
        let p = |i: usize| &self.views[i];
        Ok(match *op {
            StepOp::Input => images.clone(),
            StepOp::Alias => inputs[0].clone(),
            StepOp::Conv {
                kernel,
                stride,
                padding,
                crop,
                weight,
                bias,
                folded,
                residual,
                pool,
            } => {
                let (x, w) = (inputs[0], p(weight));
                let conv = Conv2d::new(x.shape(), w.shape()[3], kernel, stride, padding)?
                    .cropped(crop[0], crop[1])?;
                match folded {
                    None if training && !pool => nn::conv2d_as(tape, conv, x, w, p(bias))?,
                    _ if training => bail!(
                        "the inference plan cannot train (folded batch norms, pooling epilogues)"
                    ),
                    // Inference needs no gradients: nothing on the tape.
                    None => {
                        let then = Epilogue {
                            pool,
                            ..Epilogue::default()
                        };
                        conv.infer(&self.gpu, x, w, p(bias), then)?
                    }
                    Some(fold) => {
                        let (w, b) = self.folded_weights(index, [weight, bias], fold)?;
                        let then = Epilogue {
                            residual: residual.then(|| inputs[1]),
                            relu: fold.relu,
                            pool,
                        };
                        conv.infer(&self.gpu, x, &w, &b, then)?
                    }
                }
            }
            StepOp::BatchNorm {
                params,
                relu,
                residual,
            } => {
                let bn = BnParams {
                    gamma: p(params[0]),
                    beta: p(params[1]),
                    moving_mean: p(params[2]),
                    moving_var: p(params[3]),
                };
                if residual {
                    ensure!(relu, "a batch norm adds a residual only before a ReLU");
                    nn::batch_norm_add_relu(tape, inputs[0], inputs[1], &bn, training)?
                } else if relu {
                    nn::batch_norm_relu(tape, inputs[0], &bn, training)?
                } else {
                    nn::batch_norm(tape, inputs[0], &bn, training)?
                }
            }
            StepOp::Relu => nn::relu(tape, inputs[0])?,
            StepOp::MaxPool { size, stride } => nn::max_pool(tape, inputs[0], size, stride)?,
            StepOp::AvgPool { size, stride } => nn::avg_pool(tape, inputs[0], size, stride)?,
            StepOp::Add => nn::add(tape, inputs[0], inputs[1])?,
            StepOp::Flatten => {
                let x = inputs[0];
                let n = x.shape()[0];
                x.reshape(&[n, x.len() / n])
            }
            StepOp::Dense { weight, bias } => nn::dense(tape, inputs[0], p(weight), p(bias))?,
        })
    }

    /// Both flat vectors read back to the host.
    pub fn read_values(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let mut t = self.gpu.read(&self.trainable)?;
        let mut m = self.gpu.read(&self.moving)?;
        t.truncate(self.arch.trainable_len);
        m.truncate(self.arch.moving_len);
        Ok((t, m))
    }
}

/// Keras' initial values, drawn from `seed`.
pub fn initial_values(arch: &Architecture, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut trainable = vec![0.0; arch.trainable_len];
    let mut moving = vec![0.0; arch.moving_len];
    for p in &arch.params {
        let (vec, range) = if p.trainable {
            (&mut trainable, p.offset..p.offset + p.len())
        } else {
            (&mut moving, p.offset..p.offset + p.len())
        };
        let dst = &mut vec[range];
        if p.name.ends_with(".kernel") {
            // Glorot uniform: fans count the receptive field (kh·kw·in, kh·kw·out).
            let receptive: usize = p.shape[..p.shape.len() - 2].iter().product();
            let fan_in = receptive * p.shape[p.shape.len() - 2];
            let fan_out = receptive * p.shape[p.shape.len() - 1];
            let limit = (6.0 / (fan_in + fan_out) as f64).sqrt() as f32;
            dst.iter_mut()
                .for_each(|v| *v = rng.random_range(-limit..limit));
        } else if p.name.ends_with(".gamma") || p.name.ends_with(".moving_variance") {
            dst.fill(1.0);
        }
    }
    (trainable, moving)
}

/// The metadata key holding the class names (a JSON list).
pub const META_CLASSES: &str = "classes";

/// The metadata key naming the layer graph (`ArchKind::name`); files
/// without it hold the tutorial's.
pub const META_ARCH: &str = "arch";

/// The metadata every weights file wgfer writes carries.
pub fn metadata(
    kind: ArchKind,
    class_names: &[String],
) -> Result<std::collections::BTreeMap<String, String>> {
    let mut meta = std::collections::BTreeMap::new();
    meta.insert("format".to_string(), "wgfer-1".to_string());
    meta.insert("architecture".to_string(), kind.titles().1.to_string());
    meta.insert(META_ARCH.to_string(), kind.name().to_string());
    meta.insert("input_shape".to_string(), format!("[{SIDE}, {SIDE}, 1]"));
    meta.insert(
        META_CLASSES.to_string(),
        serde_json::to_string(class_names)?,
    );
    Ok(meta)
}

/// Class names from metadata: a JSON list, or the comma-separated string a
/// quick Python export writes (`anger,disgust,sad,happiness,surprise`).
pub fn parse_classes(s: &str) -> Result<Vec<String>> {
    if s.trim_start().starts_with('[') {
        return serde_json::from_str(s)
            .map_err(|e| anyhow::anyhow!("metadata `classes` is not a JSON list of names: {e}"));
    }
    crate::fer::data::parse_class_names(s, s.split(',').count())
        .map_err(|e| anyhow::anyhow!("metadata `classes`: {e}"))
}

impl Model {
    /// Every parameter as a named tensor (Keras layouts), read back from the GPU.
    pub fn named_tensors(&self) -> Result<Vec<NamedTensor>> {
        let (t, m) = self.read_values()?;
        Ok(self.arch.gather(&t, &m))
    }

    /// Save as safetensors (atomically) with the class names and input shape.
    pub fn save(
        &self,
        path: &std::path::Path,
        class_names: &[String],
        extra: &[(&str, String)],
    ) -> Result<()> {
        let mut meta = metadata(self.arch.kind, class_names)?;
        for (k, v) in extra {
            meta.insert(k.to_string(), v.clone());
        }
        checkpoint::save(path, &self.named_tensors()?, &meta)
    }

    /// Load a weights file; the layer graph and the class count come from
    /// its metadata (or, for files converted from elsewhere, the tutorial's
    /// graph and the shape of `Dense_final.bias`). Every tensor is checked
    /// against the model before the GPU sees any. Keras files (recognised by
    /// content, whatever their name) are converted first; see `fer::keras`.
    pub fn load(gpu: &Gpu, path: &std::path::Path) -> Result<(Model, Vec<String>)> {
        let (arch, names, weights) = read_weights(path)?;
        let (trainable, moving) = arch.scatter(&weights.tensors);
        Ok((Model::from_values(gpu, arch, &trainable, &moving)?, names))
    }
}

/// A weights file's layer graph, class names and checked tensors (in `params`
/// order), without a GPU: what [`Model::load`] uploads.
pub fn read_weights(
    path: &std::path::Path,
) -> Result<(Architecture, Vec<String>, checkpoint::Weights)> {
    let (bytes, origin) = weights_bytes(path)?;
    let (arch, names) = architecture_of(&bytes, &origin)?;
    let weights = checkpoint::load_bytes(&bytes, &origin, &arch.expected_tensors())?;
    Ok((arch, names, weights))
}

/// A weights file's metadata (a Keras file converted first), without reading
/// its tensors further than their shapes.
pub fn read_metadata(path: &std::path::Path) -> Result<std::collections::BTreeMap<String, String>> {
    let (bytes, origin) = weights_bytes(path)?;
    Ok(checkpoint::peek(&bytes, &origin)?.0)
}

/// A weights file's bytes as safetensors (Keras files converted) and the
/// name its errors give it.
fn weights_bytes(path: &std::path::Path) -> Result<(Vec<u8>, String)> {
    let origin = path.display().to_string();
    let bytes = std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("{origin}: cannot read the weights file: {e}"))?;
    let bytes = if crate::fer::keras::is_keras(&bytes) {
        crate::fer::keras::convert(&bytes, &origin, None)?.bytes
    } else {
        bytes
    };
    Ok((bytes, origin))
}

/// The layer graph and class names a weights file declares, without reading
/// its values: for `summary --model` and before loading.
pub fn describe(path: &std::path::Path) -> Result<(Architecture, Vec<String>)> {
    let (bytes, origin) = weights_bytes(path)?;
    architecture_of(&bytes, &origin)
}

fn architecture_of(bytes: &[u8], origin: &str) -> Result<(Architecture, Vec<String>)> {
    let (meta, shapes) = checkpoint::peek(bytes, origin)?;
    let names: Option<Vec<String>> = match meta.get(META_CLASSES) {
        Some(s) => Some(parse_classes(s).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?),
        None => None,
    };
    let num_classes = match &names {
        Some(n) => n.len(),
        None => shapes
            .iter()
            .find(|(n, _)| n == "Dense_final.bias")
            .and_then(|(_, s)| s.first().copied())
            .ok_or_else(|| {
                anyhow::anyhow!("{origin}: no `classes` metadata and no `Dense_final.bias` tensor")
            })?,
    };
    ensure!(
        (2..=256).contains(&num_classes),
        "{origin}: {num_classes} classes is not a classifier wgfer can build"
    );
    let names = names.unwrap_or_else(|| crate::fer::data::default_class_names(num_classes));
    let kind = match meta.get(META_ARCH) {
        Some(s) => ArchKind::parse(s).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?,
        None => ArchKind::Tutorial,
    };
    Ok((Architecture::of_kind(kind, num_classes), names))
}
