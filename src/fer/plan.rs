//! One plan of the model: the forward pass as an ordered list of steps, with
//! the model's rewrites decided once, here:
//!
//! - a ZeroPadding2D passes its input through and the convolution reading it
//!   pads instead;
//! - a 1×1 convolution whose only reader is an unpadded max-pool computes only
//!   the rows and columns the pool reads (`Conv2d::cropped`);
//! - a batch norm whose only reader is a ReLU runs fused with it;
//! - at inference (`Plan::inference`), a batch norm whose input is a
//!   convolution that nothing else reads is folded into that convolution's
//!   weights and bias, and the ReLU after it into the product's epilogue; so
//!   are a residual add and its ReLU when the shortcut is ready before the
//!   convolution runs (the identity blocks), and a 2×2 max-pool that is a
//!   convolution's only reader (the convolution blocks' 1×1 convolutions).
//!
//! `Model::forward` runs the plan (and so the training step records it on the
//! tape), `wgfer bench` profiles that run, and anything that needs the model's
//! sequence of dispatches reads it from here: nothing re-enacts the model.

use std::sync::Arc;

use crate::engine::ops::conv2d::Padding;
use crate::fer::model::{Architecture, Layer, Op};

/// What one step computes. Parameter fields index `Architecture::params`.
#[derive(Clone, Debug, PartialEq)]
pub enum StepOp {
    /// The batch of images.
    Input,
    /// The output is the input: a padding layer (its convolution pads) or a
    /// ReLU fused into the batch norm before it.
    Alias,
    Conv {
        kernel: [usize; 2],
        stride: usize,
        padding: Padding,
        /// The output rows and columns computed (all of them unless a pool
        /// leaves some unread).
        crop: [usize; 2],
        weight: usize,
        bias: usize,
        /// The batch norm folded into this convolution (inference plans).
        folded: Option<FoldedBn>,
        /// The step's second input is added to the output before the ReLU
        /// (a residual add folded in; inference plans).
        residual: bool,
        /// The 2×2, stride-2 max-pool reading this convolution runs in its
        /// epilogue (inference plans).
        pool: bool,
    },
    /// gamma, beta, moving mean, moving variance.
    BatchNorm {
        params: [usize; 4],
        relu: bool,
        /// The step's second input is added before the ReLU (a residual add
        /// folded in; inference plans).
        residual: bool,
    },
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
        weight: usize,
        bias: usize,
    },
}

/// A batch norm on its moving statistics folded into the convolution before
/// it, and whether the ReLU after it (or after the residual add) runs in the
/// product's epilogue.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FoldedBn {
    /// gamma, beta, moving mean, moving variance.
    pub params: [usize; 4],
    pub relu: bool,
}

#[derive(Clone, Debug)]
pub struct Step {
    /// The Keras layer this step computes (step i is layer i).
    pub layer: String,
    /// The profile label: the op and the layer, e.g. `conv2d res_2_conv_b`.
    pub label: Arc<str>,
    pub op: StepOp,
    /// The steps whose outputs this one reads.
    pub inputs: Vec<usize>,
    /// Outputs that no later step reads: dropped after this step so that
    /// their buffers go back to the pool.
    pub last_use: Vec<usize>,
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub steps: Vec<Step>,
}

impl Plan {
    /// The plan for training (and for inference where no batch norm can be
    /// folded): a residual block's last batch norm adds the shortcut and
    /// applies the ReLU (`batchnorm+add+relu`).
    pub fn of(arch: &Architecture) -> Plan {
        let mut plan = Plan::unfused(arch);
        for add in 0..plan.steps.len() {
            plan.fold_residual_add(add);
        }
        mark_last_uses(&mut plan.steps);
        plan
    }

    /// One step per layer, with the rewrites every plan makes (padding,
    /// cropping, batch norm + ReLU).
    fn unfused(arch: &Architecture) -> Plan {
        let steps: Vec<Step> = arch
            .layers
            .iter()
            .enumerate()
            .map(|(i, layer)| {
                let op = step_op(arch, i);
                Step {
                    layer: layer.name.clone(),
                    label: Arc::from(format!("{} {}", op_name(&op), layer.name)),
                    op,
                    inputs: layer.inputs.clone(),
                    last_use: vec![],
                }
            })
            .collect();
        Plan { steps }
    }

    /// The plan for inference: `of`'s, with every batch norm whose input is
    /// a convolution read by nothing else folded into it (batch norms after a
    /// max-pool stay: folding through the pool needs positive scales).
    pub fn inference(arch: &Architecture) -> Plan {
        let mut plan = Plan::unfused(arch);
        for i in 0..plan.steps.len() {
            let StepOp::BatchNorm { params, relu, .. } = plan.steps[i].op else {
                continue;
            };
            let [conv] = plan.steps[i].inputs[..] else {
                continue;
            };
            let only_reader = plan
                .steps
                .iter()
                .filter(|s| s.inputs.contains(&conv))
                .count()
                == 1;
            let step = &mut plan.steps[conv];
            if let (StepOp::Conv { folded, .. }, true) = (&mut step.op, only_reader) {
                *folded = Some(FoldedBn { params, relu });
                step.label = Arc::from(format!("{} {}", op_name(&step.op), step.layer));
                plan.steps[i].op = StepOp::Alias;
            }
        }
        for add in 0..plan.steps.len() {
            plan.fold_residual_add(add);
        }
        for pool in 0..plan.steps.len() {
            plan.fold_max_pool(pool);
        }
        mark_last_uses(&mut plan.steps);
        plan
    }

    /// If step `pool` is a 2×2, stride-2 max-pool of a convolution that
    /// nothing else reads and that adds no residual: the convolution pools
    /// its own output and the pool becomes an alias.
    fn fold_max_pool(&mut self, pool: usize) {
        let (StepOp::MaxPool { size: 2, stride: 2 }, &[conv]) =
            (&self.steps[pool].op, &self.steps[pool].inputs[..])
        else {
            return;
        };
        let sole_reader = self.readers(conv).len() == 1;
        let step = &mut self.steps[conv];
        let StepOp::Conv {
            residual: false,
            pool: pooled,
            crop,
            ..
        } = &mut step.op
        else {
            return;
        };
        if !sole_reader || crop.iter().any(|c| !c.is_multiple_of(2)) {
            return;
        }
        *pooled = true;
        step.label = Arc::from(format!("{} {}", op_name(&step.op), step.layer));
        self.steps[pool].op = StepOp::Alias;
    }

    /// Steps reading step `j`'s output.
    fn readers(&self, j: usize) -> Vec<usize> {
        (0..self.steps.len())
            .filter(|&i| self.steps[i].inputs.contains(&j))
            .collect()
    }

    /// If step `add` adds a folded convolution or a batch norm (reached
    /// through aliases read by nothing else) to a shortcut computed before
    /// it, and only a ReLU reads the sum: that step adds the shortcut and
    /// applies the ReLU itself, and the add and the ReLU become aliases.
    fn fold_residual_add(&mut self, add: usize) {
        let (StepOp::Add, &[a, b]) = (&self.steps[add].op, &self.steps[add].inputs[..]) else {
            return;
        };
        let [relu] = self.readers(add)[..] else {
            return;
        };
        if self.steps[relu].op != StepOp::Relu {
            return;
        }
        for (main, shortcut) in [(a, b), (b, a)] {
            let mut conv = main;
            while self.steps[conv].op == StepOp::Alias && self.readers(conv).len() == 1 {
                conv = self.steps[conv].inputs[0];
            }
            let sole_reader = self.readers(conv).len() == 1;
            let step = &mut self.steps[conv];
            let (then_relu, residual) = match &mut step.op {
                StepOp::Conv {
                    folded: Some(fold),
                    residual,
                    pool: false,
                    ..
                } => (&mut fold.relu, residual),
                StepOp::BatchNorm { relu, residual, .. } => (relu, residual),
                _ => continue,
            };
            if *then_relu || *residual || !sole_reader || shortcut > conv {
                continue;
            }
            *then_relu = true;
            *residual = true;
            step.inputs.push(shortcut);
            step.label = Arc::from(format!("{} {}", op_name(&step.op), step.layer));
            self.steps[add].op = StepOp::Alias;
            self.steps[add].inputs = vec![main];
            self.steps[relu].op = StepOp::Alias;
            return;
        }
    }
}

/// Each step's `last_use`: the outputs it is the last reader of.
fn mark_last_uses(steps: &mut [Step]) {
    for step in steps.iter_mut() {
        step.last_use.clear();
    }
    for j in 0..steps.len() {
        let last_reader = (0..steps.len())
            .rev()
            .find(|&i| steps[i].inputs.contains(&j));
        if let Some(i) = last_reader {
            steps[i].last_use.push(j);
        }
    }
}

fn step_op(arch: &Architecture, i: usize) -> StepOp {
    let layer = &arch.layers[i];
    match &layer.op {
        Op::Input => StepOp::Input,
        Op::ZeroPad(_) => StepOp::Alias,
        Op::Conv {
            kernel,
            stride,
            padding,
            ..
        } => StepOp::Conv {
            kernel: [*kernel, *kernel],
            stride: *stride,
            padding: conv_padding(arch, layer, *padding),
            crop: conv_output_used(arch, i),
            weight: layer.params[0],
            bias: layer.params[1],
            folded: None,
            residual: false,
            pool: false,
        },
        Op::BatchNorm => StepOp::BatchNorm {
            params: [
                layer.params[0],
                layer.params[1],
                layer.params[2],
                layer.params[3],
            ],
            relu: relu_fused_into(arch, i + 1),
            residual: false,
        },
        Op::Relu if relu_fused_into(arch, i) => StepOp::Alias,
        Op::Relu => StepOp::Relu,
        Op::MaxPool { size, stride } => StepOp::MaxPool {
            size: *size,
            stride: *stride,
        },
        Op::AvgPool { size, stride } => StepOp::AvgPool {
            size: *size,
            stride: *stride,
        },
        Op::Add => StepOp::Add,
        Op::Flatten => StepOp::Flatten,
        Op::Dense { .. } => StepOp::Dense {
            weight: layer.params[0],
            bias: layer.params[1],
        },
    }
}

fn op_name(op: &StepOp) -> &'static str {
    match op {
        StepOp::Input => "input",
        StepOp::Alias => "alias",
        StepOp::Conv {
            folded: None,
            pool: true,
            ..
        } => "conv2d+max_pool",
        StepOp::Conv { folded: None, .. } => "conv2d",
        StepOp::Conv {
            folded: Some(FoldedBn { relu: false, .. }),
            ..
        } => "conv2d+bn",
        StepOp::Conv { residual: true, .. } => "conv2d+bn+add+relu",
        StepOp::Conv {
            folded: Some(FoldedBn { relu: true, .. }),
            ..
        } => "conv2d+bn+relu",
        StepOp::BatchNorm { residual: true, .. } => "batchnorm+add+relu",
        StepOp::BatchNorm { relu: true, .. } => "batchnorm+relu",
        StepOp::BatchNorm { relu: false, .. } => "batchnorm",
        StepOp::Relu => "relu",
        StepOp::MaxPool { .. } => "max_pool",
        StepOp::AvgPool { .. } => "avg_pool",
        StepOp::Add => "add",
        StepOp::Flatten => "flatten",
        StepOp::Dense { .. } => "dense",
    }
}

fn readers(arch: &Architecture, i: usize) -> Vec<&Layer> {
    arch.layers
        .iter()
        .filter(|l| l.inputs.contains(&i))
        .collect()
}

/// The padding a convolution applies: a conv reading a ZeroPadding2D layer
/// pads itself (the padding layer passes its input through).
fn conv_padding(arch: &Architecture, conv: &Layer, own: Padding) -> Padding {
    match arch.layers[conv.inputs[0]].op {
        Op::ZeroPad(p) => Padding::Zeros(p),
        _ => own,
    }
}

/// The part of convolution layer `i`'s output that the forward pass
/// computes: all of it, except before an unpadded max-pool (its only reader)
/// that leaves the last rows and columns unread, as the pools after the 1×1
/// convolutions of the convolution blocks do (11×11 → 5×5 reads 10×10).
fn conv_output_used(arch: &Architecture, i: usize) -> [usize; 2] {
    let layer = &arch.layers[i];
    let full = [layer.output_shape[0], layer.output_shape[1]];
    match readers(arch, i)[..] {
        [pool] => match pool.op {
            Op::MaxPool { size, stride } => {
                let read = |out: usize| (out - 1) * stride + size;
                [read(pool.output_shape[0]), read(pool.output_shape[1])]
            }
            _ => full,
        },
        _ => full,
    }
}

/// True when layer `i` is a ReLU whose only input is a batch norm that
/// nothing else reads: the two run as one fused op.
fn relu_fused_into(arch: &Architecture, i: usize) -> bool {
    let Some(layer) = arch.layers.get(i) else {
        return false;
    };
    let [bn] = layer.inputs[..] else { return false };
    layer.op == Op::Relu && arch.layers[bn].op == Op::BatchNorm && readers(arch, bn).len() == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rewrites_of_the_tutorial_model() {
        let arch = Architecture::resnet(5);
        let plan = Plan::of(&arch);
        let step = |name: &str| plan.steps.iter().find(|s| s.layer == name).unwrap();
        // conv1 pads itself; the padding layer is an alias.
        assert!(matches!(
            step("conv1").op,
            StepOp::Conv {
                padding: Padding::Zeros(3),
                ..
            }
        ));
        assert_eq!(step("zero_padding2d").op, StepOp::Alias);
        // The convolution block's 1×1 conv before a 2×2 pool: 11×11 → 10×10.
        let StepOp::Conv { crop, .. } = step("res_2_conv_a").op else {
            panic!("res_2_conv_a is a convolution")
        };
        assert_eq!(crop, [10, 10]);
        // bn_conv1 is fused with the ReLU after it, which becomes an alias.
        assert!(matches!(
            step("bn_conv1").op,
            StepOp::BatchNorm { relu: true, .. }
        ));
        assert_eq!(step("activation").op, StepOp::Alias);
        // Of a convolution block's two batch norms before its Add, the later
        // one (the shortcut's) adds the other's output and applies the ReLU;
        // in an identity block, the last batch norm adds the block's input.
        assert!(matches!(
            step("bn_2_conv_c").op,
            StepOp::BatchNorm {
                relu: false,
                residual: false,
                ..
            }
        ));
        for bn in ["bn_2_conv_copy", "bn_2_identity_1_c", "bn_3_identity_2_c"] {
            assert!(
                matches!(
                    step(bn).op,
                    StepOp::BatchNorm {
                        relu: true,
                        residual: true,
                        ..
                    }
                ),
                "{bn}"
            );
            assert_eq!(step(bn).inputs.len(), 2, "{bn}");
        }
        assert_eq!(step("add_1").op, StepOp::Alias);
        let count = |f: fn(&StepOp) -> bool| plan.steps.iter().filter(|s| f(&s.op)).count();
        let fused = count(|op| matches!(op, StepOp::BatchNorm { relu: true, .. }));
        let residuals = count(|op| matches!(op, StepOp::BatchNorm { residual: true, .. }));
        let aliases = count(|op| *op == StepOp::Alias);
        assert_eq!(residuals, 6, "every add of the model");
        assert_eq!(
            aliases,
            fused + residuals + 1,
            "each fused ReLU, each folded add and the padding are aliases"
        );
    }

    #[test]
    fn the_inference_plan_folds_batch_norms_into_the_convolutions_before_them() {
        let arch = Architecture::resnet(5);
        let (train, infer) = (Plan::of(&arch), Plan::inference(&arch));
        let step = |name: &str| infer.steps.iter().find(|s| s.layer == name).unwrap();
        let folded = |name: &str| match step(name).op {
            StepOp::Conv { folded, .. } => folded,
            ref op => panic!("{name} is {op:?}"),
        };
        // conv1 → bn_conv1 → ReLU: both folded, the ReLU into the epilogue.
        assert!(matches!(folded("conv1"), Some(FoldedBn { relu: true, .. })));
        assert_eq!(step("bn_conv1").op, StepOp::Alias);
        assert_eq!(&*step("conv1").label, "conv2d+bn+relu conv1");
        // Before an Add: folded without the ReLU.
        assert!(matches!(
            folded("res_2_conv_c"),
            Some(FoldedBn { relu: false, .. })
        ));
        // A 1×1 conv → max-pool → batch norm: not folded, but the conv pools
        // its own output (the four 2×2 pools; the stem's 3×3 pool stays).
        assert_eq!(folded("res_2_conv_a"), None);
        assert!(matches!(step("bn_2_conv_a").op, StepOp::BatchNorm { .. }));
        assert!(matches!(
            step("res_2_conv_a").op,
            StepOp::Conv { pool: true, .. }
        ));
        assert_eq!(&*step("res_2_conv_a").label, "conv2d+max_pool res_2_conv_a");
        assert_eq!(step("max_pooling2d_1").op, StepOp::Alias);
        let pooled = |p: &Plan| {
            let convs = p
                .steps
                .iter()
                .filter(|s| matches!(s.op, StepOp::Conv { pool: true, .. }));
            let pools = p
                .steps
                .iter()
                .filter(|s| matches!(s.op, StepOp::MaxPool { .. }));
            (convs.count(), pools.count())
        };
        assert_eq!(pooled(&train), (0, 5));
        assert_eq!(pooled(&infer), (4, 1));
        // A convolution block's add: its pooled shortcut's batch norm adds
        // the main path (ready before it) and applies the ReLU.
        assert!(matches!(
            step("bn_2_conv_copy").op,
            StepOp::BatchNorm {
                relu: true,
                residual: true,
                ..
            }
        ));
        assert_eq!(
            &*step("bn_2_conv_copy").label,
            "batchnorm+add+relu bn_2_conv_copy"
        );
        assert_eq!(step("add").op, StepOp::Alias);
        assert_eq!(step("activation_3").op, StepOp::Alias);
        let residuals = infer.steps.iter().filter(|s| {
            matches!(
                s.op,
                StepOp::Conv { residual: true, .. } | StepOp::BatchNorm { residual: true, .. }
            )
        });
        assert_eq!(residuals.count(), 6, "every add of the model is folded");
        // Every other step is unchanged.
        let bns = |p: &Plan| {
            p.steps
                .iter()
                .filter(|s| matches!(s.op, StepOp::BatchNorm { .. }))
                .count()
        };
        let folds = infer
            .steps
            .iter()
            .filter(|s| {
                matches!(
                    s.op,
                    StepOp::Conv {
                        folded: Some(_),
                        ..
                    }
                )
            })
            .count();
        assert_eq!(bns(&train), bns(&infer) + folds);
        assert_eq!(folds, 17, "conv1 and eight convolutions per stage");
    }

    #[test]
    fn every_output_is_released_once_after_its_last_reader() {
        for plan in [
            Plan::of(&Architecture::resnet(5)),
            Plan::inference(&Architecture::resnet(5)),
        ] {
            released_once(&plan);
        }
    }

    fn released_once(plan: &Plan) {
        let n = plan.steps.len();
        let mut released = vec![0; n];
        for (i, s) in plan.steps.iter().enumerate() {
            for &j in &s.last_use {
                released[j] += 1;
                assert!(j < i);
                assert!(plan.steps[i + 1..].iter().all(|l| !l.inputs.contains(&j)));
            }
        }
        // Everything but the logits is read by someone.
        assert!(released[..n - 1].iter().all(|&r| r == 1), "{released:?}");
        assert_eq!(released[n - 1], 0);
    }
}
