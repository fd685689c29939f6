//! Benchmarks (`wgfer bench`, `cargo bench`): every kernel, forward and each
//! backward, at the tutorial ResNet's own shapes, then the whole training
//! step and inference. Each figure is the median of several timed windows
//! after a warm-up; a window ends by waiting for the GPU queue to drain, so
//! it measures work done, not work submitted.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Instant;

use anyhow::Result;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::json;

use crate::engine::ops::batchnorm::{BatchNorm, BnParams};
use crate::engine::ops::conv2d::Conv2d;
use crate::engine::ops::dense::Dense;
use crate::engine::ops::gemm::{Gemm, Strides};
use crate::engine::ops::pool::Pool2d;
use crate::engine::ops::{adam, elementwise, softmax_xent};
use crate::engine::tape::Tape;
use crate::engine::{Gpu, Tensor};
use crate::fer::augment::{AugmentConfig, Augmenter};
use crate::fer::data::{PIXELS, SIDE};
use crate::fer::model::{Architecture, Model, Op};
use crate::fer::trainer::Trainer;

#[derive(Clone, Debug)]
pub struct KernelTiming {
    /// The op and the layer it serves, e.g. `conv2d res_2_conv_b`.
    pub name: String,
    /// forward, grad_input, grad_weight, grad_bias, backward, step.
    pub pass: &'static str,
    pub shape: String,
    pub median_ms: f64,
    pub gflops: Option<f64>,
    pub gbps: Option<f64>,
}

pub struct BenchReport {
    pub adapter: String,
    pub batch: usize,
    pub infer_batch: usize,
    pub ceiling_gflops: f64,
    pub kernels: Vec<KernelTiming>,
    pub train_step_ms: f64,
    pub train_images_per_s: f64,
    pub infer_images_per_s: f64,
}

/// Median of `reps` windows of `f`, in ms per call. A window repeats `f`
/// enough to last ~30 ms so that short kernels are not lost in timer noise.
pub fn time_ms(gpu: &Gpu, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    gpu.sync()?;
    let t = Instant::now();
    f()?;
    gpu.sync()?;
    let once = t.elapsed().as_secs_f64();
    let inner = ((0.03 / once.max(1e-6)) as usize).clamp(1, 200);
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        for _ in 0..inner {
            f()?;
        }
        gpu.sync()?;
        times.push(t.elapsed().as_secs_f64() * 1e3 / inner as f64);
    }
    Ok(median(&mut times))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

struct Bench<'a> {
    gpu: &'a Gpu,
    rng: StdRng,
    reps: usize,
    print: bool,
    out: Vec<KernelTiming>,
    /// Same geometry, same figure: identity blocks repeat their layers.
    seen: HashMap<String, (f64, Option<f64>, Option<f64>)>,
}

impl Bench<'_> {
    fn tensor(&mut self, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| self.rng.random_range(-1.0f32..1.0))
            .collect();
        self.gpu.upload(shape, &data)
    }

    /// Time `f` and record it; `flops` for compute-bound ops, `bytes` for memory-bound ones.
    fn record(
        &mut self,
        name: &str,
        pass: &'static str,
        shape: String,
        flops: Option<f64>,
        bytes: Option<f64>,
        f: impl FnMut() -> Result<()>,
    ) -> Result<()> {
        let key = format!("{}|{pass}|{shape}", name.split(' ').next().unwrap_or(name));
        let (ms, gflops, gbps) = match self.seen.get(&key) {
            Some(v) => *v,
            None => {
                let ms = time_ms(self.gpu, self.reps, f)?;
                let v = (ms, flops.map(|f| f / ms / 1e6), bytes.map(|b| b / ms / 1e6));
                self.seen.insert(key, v);
                v
            }
        };
        if self.print && std::io::stderr().is_terminal() {
            eprint!("\r  measuring {:<60}", format!("{name} {pass}"));
        }
        self.out.push(KernelTiming {
            name: name.to_string(),
            pass,
            shape,
            median_ms: ms,
            gflops,
            gbps,
        });
        Ok(())
    }
}

/// Run every benchmark. `print` writes the table to stderr as it goes.
pub fn run(
    gpu: &Gpu,
    batch: usize,
    infer_batch: usize,
    reps: usize,
    print: bool,
) -> Result<BenchReport> {
    let say = |s: String| {
        if print {
            eprintln!("{s}");
        }
    };
    say(format!("adapter: {}", gpu.adapter()));
    let mut b = Bench {
        gpu,
        rng: StdRng::seed_from_u64(1),
        reps,
        print,
        out: vec![],
        seen: HashMap::new(),
    };

    // The ceiling: our matrix product on a large square problem.
    let n = 1024;
    let (a, bm, c) = (b.tensor(&[n, n])?, b.tensor(&[n, n])?, gpu.empty(&[n, n])?);
    let g = Gemm::new(n, n, n, Strides::rows(n));
    let ms = time_ms(gpu, reps, || g.run(gpu, &a, &bm, None, &c))?;
    let ceiling = g.flops() / ms / 1e6;
    say(format!(
        "ceiling: gemm {n}x{n}x{n} {ms:.1} ms = {ceiling:.2} GFLOP/s\n"
    ));
    drop((a, bm, c));

    say(format!("kernels at the model's shapes, batch {batch}:"));
    let arch = Architecture::resnet(5);
    for (i, layer) in arch.layers.iter().enumerate() {
        let input_shape: Vec<usize> = layer
            .inputs
            .first()
            .map(|&i| arch.layers[i].output_shape.clone())
            .unwrap_or_default();
        let mut x_shape = vec![batch];
        x_shape.extend(&input_shape);
        // A convolution computes only what its reader uses (a pool's rows).
        if let Some(&j) = layer.inputs.first()
            && matches!(arch.layers[j].op, Op::Conv { .. })
        {
            let [h, w] = arch.conv_output_used(j);
            (x_shape[1], x_shape[2]) = (h, w);
        }
        let name = &layer.name;
        let shape = format!("{:?}", x_shape);
        match &layer.op {
            Op::Conv {
                filters,
                kernel,
                stride,
                padding,
            } => {
                let padding = arch.conv_padding(layer, *padding);
                // The padding layer passes the unpadded image through.
                if let Op::ZeroPad(p) = arch.layers[layer.inputs[0]].op {
                    x_shape[1] -= 2 * p;
                    x_shape[2] -= 2 * p;
                }
                // As the training step runs it: only the outputs a pool reads.
                let [oh, ow] = arch.conv_output_used(i);
                let conv = Conv2d::new(&x_shape, *filters, [*kernel, *kernel], *stride, padding)?
                    .cropped(oh, ow)?;
                let shape = format!(
                    "{}x{}x{}->{}x{}x{} {k}x{k}/{s}",
                    conv.h,
                    conv.w,
                    conv.cin,
                    conv.oh,
                    conv.ow,
                    conv.cout,
                    k = kernel,
                    s = stride
                );
                let (x, w, bias) = (
                    b.tensor(&x_shape)?,
                    b.tensor(&conv.weight_shape())?,
                    b.tensor(&[conv.cout])?,
                );
                let dy = b.tensor(&conv.output_shape())?;
                let flops = Some(conv.flops());
                let label = format!("conv2d {name}");
                b.record(&label, "forward", shape.clone(), flops, None, || {
                    conv.forward(gpu, &x, &w, &bias).map(drop)
                })?;
                let cols = conv.im2col(gpu, &x)?;
                if layer.name != "conv1" {
                    b.record(&label, "grad_input", shape.clone(), flops, None, || {
                        conv.grad_input(gpu, &dy, &w).map(drop)
                    })?;
                }
                // As the training step runs them: one product that also sums dy.
                b.record(&label, "grad_weight_and_bias", shape, flops, None, || {
                    conv.grad_weight_and_bias(gpu, &cols, &dy).map(drop)
                })?;
            }
            Op::BatchNorm => {
                let c = *x_shape.last().unwrap();
                // As the training step runs it: fused with the ReLU that follows.
                let fused = arch.relu_fused_into(i + 1);
                let bn = if fused {
                    BatchNorm::with_relu(c)
                } else {
                    BatchNorm::new(c)
                };
                let x = b.tensor(&x_shape)?;
                let dy = b.tensor(&x_shape)?;
                let (gamma, beta, mm) = (b.tensor(&[c])?, b.tensor(&[c])?, b.tensor(&[c])?);
                let mv = gpu.upload(&[c], &vec![1.0; c])?;
                let p = BnParams {
                    gamma: &gamma,
                    beta: &beta,
                    moving_mean: &mm,
                    moving_var: &mv,
                };
                let (y, stats) = bn.forward_train(gpu, &x, &p)?;
                let bytes = 4.0 * x.len() as f64;
                let label = format!(
                    "{} {name}",
                    if fused { "batchnorm+relu" } else { "batchnorm" }
                );
                b.record(
                    &label,
                    "forward",
                    shape.clone(),
                    None,
                    Some(4.0 * bytes),
                    || bn.forward_train(gpu, &x, &p).map(drop),
                )?;
                b.record(&label, "backward", shape, None, Some(5.0 * bytes), || {
                    bn.backward(gpu, &x, &y, &dy, &stats, &gamma).map(drop)
                })?;
            }
            Op::Relu if arch.relu_fused_into(i) => {}
            Op::Relu => {
                let x = b.tensor(&x_shape)?;
                let bytes = 4.0 * x.len() as f64;
                let label = format!("relu {name}");
                b.record(
                    &label,
                    "forward",
                    shape.clone(),
                    None,
                    Some(2.0 * bytes),
                    || elementwise::relu(gpu, &x).map(drop),
                )?;
                b.record(&label, "backward", shape, None, Some(3.0 * bytes), || {
                    elementwise::relu_backward(gpu, &x, &x).map(drop)
                })?;
            }
            Op::Add => {
                let (x, y) = (b.tensor(&x_shape)?, b.tensor(&x_shape)?);
                let bytes = 12.0 * x.len() as f64;
                b.record(
                    &format!("add {name}"),
                    "forward",
                    shape,
                    None,
                    Some(bytes),
                    || elementwise::add(gpu, &x, &y).map(drop),
                )?;
            }
            Op::MaxPool { size, stride } | Op::AvgPool { size, stride } => {
                let pool = Pool2d::new(&x_shape, *size, *stride)?;
                let x = b.tensor(&x_shape)?;
                let dy = b.tensor(&pool.output_shape())?;
                let bytes = 4.0 * (x.len() + 2 * dy.len()) as f64;
                if matches!(layer.op, Op::MaxPool { .. }) {
                    let (_, arg) = pool.max_forward(gpu, &x)?;
                    let label = format!("max_pool {name}");
                    b.record(&label, "forward", shape.clone(), None, Some(bytes), || {
                        pool.max_forward(gpu, &x).map(drop)
                    })?;
                    b.record(&label, "backward", shape, None, Some(bytes), || {
                        pool.max_backward(gpu, &dy, &arg).map(drop)
                    })?;
                } else {
                    let label = format!("avg_pool {name}");
                    b.record(&label, "forward", shape.clone(), None, Some(bytes), || {
                        pool.avg_forward(gpu, &x).map(drop)
                    })?;
                    b.record(&label, "backward", shape, None, Some(bytes), || {
                        pool.avg_backward(gpu, &dy).map(drop)
                    })?;
                }
            }
            Op::Dense { units } => {
                let d = Dense::new(&x_shape, *units)?;
                let (x, w, bias, dy) = (
                    b.tensor(&x_shape)?,
                    b.tensor(&[d.inputs, d.outputs])?,
                    b.tensor(&[*units])?,
                    b.tensor(&[batch, *units])?,
                );
                let flops = Some(2.0 * (d.n * d.inputs * d.outputs) as f64);
                let label = format!("dense {name}");
                b.record(&label, "forward", shape.clone(), flops, None, || {
                    d.forward(gpu, &x, &w, &bias).map(drop)
                })?;
                b.record(&label, "grad_input", shape.clone(), flops, None, || {
                    d.grad_input(gpu, &dy, &w).map(drop)
                })?;
                b.record(&label, "grad_weight", shape, flops, None, || {
                    d.grad_weight(gpu, &x, &dy).map(drop)
                })?;
                let targets = gpu.upload(
                    &[batch, *units],
                    &crate::fer::trainer::one_hot(&vec![0; batch], *units)?,
                )?;
                let logits = b.tensor(&[batch, *units])?;
                let one = gpu.upload(&[1], &[1.0])?;
                let (probs, _) = softmax_xent::softmax_xent(gpu, &logits, &targets)?;
                let s = format!("[{batch}, {units}]");
                let bytes = Some(12.0 * logits.len() as f64);
                b.record(
                    "softmax_xent loss",
                    "forward",
                    s.clone(),
                    None,
                    bytes,
                    || softmax_xent::softmax_xent(gpu, &logits, &targets).map(drop),
                )?;
                b.record("softmax_xent loss", "backward", s, None, bytes, || {
                    softmax_xent::softmax_xent_backward(gpu, &probs, &targets, &one).map(drop)
                })?;
            }
            Op::Input | Op::ZeroPad(_) | Op::Flatten => {}
        }
    }
    let len = arch.trainable_len;
    let (p, g, m, v) = (
        b.tensor(&[len])?,
        b.tensor(&[len])?,
        gpu.zeros(&[len])?,
        gpu.zeros(&[len])?,
    );
    let (alpha, flag) = (gpu.upload(&[1], &[1e-3])?, gpu.zeros(&[1])?);
    let cfg = adam::AdamConfig::default();
    b.record(
        "adam",
        "step",
        format!("[{len}]"),
        None,
        Some(28.0 * len as f64),
        || adam::step(gpu, &cfg, &p, &g, &m, &v, &alpha, &flag),
    )?;
    drop((p, g, m, v));

    // The whole training step, augmentation of a fresh batch included.
    let model = Model::new(gpu, Architecture::resnet(5), 0)?;
    let mut trainer = Trainer::new(model, batch, Default::default())?;
    let pixels: Vec<u8> = (0..batch * PIXELS)
        .map(|_| b.rng.random_range(0..=255u8))
        .collect();
    let labels: Vec<u8> = (0..batch).map(|i| (i % 5) as u8).collect();
    let mut augmenter = Augmenter::new(AugmentConfig::default(), 0, 0);
    let mut images = vec![0f32; batch * PIXELS];
    let mut step = || -> Result<()> {
        augmenter.augment_batch(&pixels, &mut images);
        trainer.step(&images, &labels).map(drop)
    };
    step()?;
    let mut times = vec![];
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        step()?;
        step()?;
        times.push(t.elapsed().as_secs_f64() * 1e3 / 2.0);
    }
    let train_step_ms = median(&mut times);
    let train_images_per_s = batch as f64 * 1e3 / train_step_ms;

    // Inference: forward on moving statistics, softmax, probabilities read back.
    let model = &trainer.model;
    let x = b.tensor(&[infer_batch, SIDE, SIDE, 1])?;
    let infer_ms = time_ms(gpu, reps, || {
        let tape = Tape::new(gpu);
        let logits = model.forward(&tape, &x, false)?;
        gpu.read(&softmax_xent::softmax(gpu, &logits)?).map(drop)
    })?;
    let infer_images_per_s = infer_batch as f64 * 1e3 / infer_ms;

    let kernels_ms: f64 = b.out.iter().map(|k| k.median_ms).sum();
    if print {
        if std::io::stderr().is_terminal() {
            eprint!("\r{:<80}\r", "");
        }
        for k in &b.out {
            let rate = match (k.gflops, k.gbps) {
                (Some(g), _) => format!("{g:7.2} GFLOP/s"),
                (_, Some(b)) => format!("{b:7.2} GB/s    "),
                _ => String::new(),
            };
            let share = 100.0 * k.median_ms / train_step_ms;
            eprintln!(
                "  {:<36} {:<12} {:<28} {:9.3} ms  {rate}  {share:5.1} % of a step",
                k.name, k.pass, k.shape, k.median_ms
            );
        }
    }
    say(format!(
        "\ntraining step, batch {batch} (augmentation included): {train_step_ms:.1} ms = {train_images_per_s:.1} images/s \
         (its kernels timed alone sum to {kernels_ms:.1} ms)"
    ));
    say(format!(
        "inference, batch {infer_batch}: {infer_ms:.1} ms = {infer_images_per_s:.1} images/s"
    ));
    Ok(BenchReport {
        adapter: gpu.adapter().to_string(),
        batch,
        infer_batch,
        ceiling_gflops: ceiling,
        kernels: b.out,
        train_step_ms,
        train_images_per_s,
        infer_images_per_s,
    })
}

impl BenchReport {
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "adapter": self.adapter,
            "batch_size": self.batch,
            "infer_batch_size": self.infer_batch,
            "ceiling_gflops": self.ceiling_gflops,
            "train_step_ms": self.train_step_ms,
            "train_images_per_s": self.train_images_per_s,
            "infer_images_per_s": self.infer_images_per_s,
            "kernels": self.kernels.iter().map(|k| json!({
                "name": k.name,
                "pass": k.pass,
                "shape": k.shape,
                "median_ms": k.median_ms,
                "gflops": k.gflops,
                "gbps": k.gbps,
                "share": k.median_ms / self.train_step_ms,
            })).collect::<Vec<_>>(),
        })
    }
}
