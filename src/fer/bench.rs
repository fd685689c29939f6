//! Benchmarks (`wgfer bench`, `cargo bench`): the real training step
//! (augmentation of a fresh batch included) and the real inference pass,
//! timed end to end, then profiled dispatch by dispatch with timestamp
//! queries. Every kernel row is a (layer, pass, kernel) of that real run, so
//! the rows' shares add up to the GPU's part of the step. Wall times are
//! medians of several windows after a warm-up; a window ends by waiting for
//! the GPU queue to drain, so it measures work done, not work submitted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

use crate::engine::ops::gemm::{Gemm, Strides};
use crate::engine::ops::softmax_xent;
use crate::engine::profile::DispatchTime;
use crate::engine::tape::Tape;
use crate::engine::{Gpu, Tensor};
use crate::fer::augment::{AugmentConfig, Augmenter};
use crate::fer::data::{PIXELS, SIDE};
use crate::fer::model::{ArchKind, Architecture, Model};
use crate::fer::predict::{PhotoBench, bench_photos};
use crate::fer::trainer::Trainer;

/// One (layer, pass, kernel) of a profiled run.
#[derive(Clone, Debug, Serialize)]
pub struct KernelRow {
    /// The op and the layer it serves, e.g. `conv2d res_2_conv_b`.
    pub name: String,
    /// forward, backward or step.
    pub pass: &'static str,
    /// The shader and entry point, e.g. `gemm_sg8::main`.
    pub kernel: String,
    /// Dispatches of this kernel in this (layer, pass), per run.
    pub dispatches: usize,
    /// GPU time per run (median over the profiled runs).
    pub median_ms: f64,
    pub gflops: Option<f64>,
    /// `median_ms` as a fraction of the whole run's wall time.
    pub step_share: f64,
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub adapter: String,
    /// The layer graph measured (`tutorial` unless `--arch` says otherwise).
    pub arch: ArchKind,
    pub batch_size: usize,
    pub infer_batch_size: usize,
    /// Our matrix product on a large square problem.
    pub ceiling_gflops: f64,
    pub train_step_ms: f64,
    pub train_images_per_s: f64,
    pub infer_ms: f64,
    pub infer_images_per_s: f64,
    /// The training step's kernels; their `step_share`s add up to `train_gpu_share`.
    pub kernels: Vec<KernelRow>,
    pub train_gpu_share: f64,
    /// The inference pass's kernels, shares of `infer_ms`.
    pub infer_kernels: Vec<KernelRow>,
    pub infer_gpu_share: f64,
    /// The photo path of `wgfer predict`: detection, and a photo end to end.
    pub photo: PhotoBench,
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
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Run every benchmark. `print` writes the tables to stderr.
pub fn run(
    gpu: &Gpu,
    arch: ArchKind,
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
    say(format!(
        "adapter: {}; layer graph: {}",
        gpu.adapter(),
        arch.name()
    ));
    let mut rng = StdRng::seed_from_u64(1);
    let ceiling_gflops = gemm_ceiling(gpu, &mut rng, reps)?;
    say(format!(
        "ceiling: gemm 1024x1024x1024 = {ceiling_gflops:.2} GFLOP/s"
    ));

    let mut step = TrainingStep::new(gpu, arch, batch, &mut rng)?;
    let train_step_ms = wall_ms(reps, || step.run())?;
    let train = profile(gpu, reps, train_step_ms, || step.run())?;

    let model = &step.trainer.model;
    let x = random_tensor(gpu, &mut rng, &[infer_batch, SIDE, SIDE, 1])?;
    let mut infer = || infer_once(model, &x);
    let infer_ms = time_ms(gpu, reps, &mut infer)?;
    let inference = profile(gpu, reps, infer_ms, &mut infer)?;
    let photo = bench_photos(model, reps)?;

    let report = BenchReport {
        adapter: gpu.adapter().to_string(),
        arch,
        batch_size: batch,
        infer_batch_size: infer_batch,
        ceiling_gflops,
        train_step_ms,
        train_images_per_s: batch as f64 * 1e3 / train_step_ms,
        infer_ms,
        infer_images_per_s: infer_batch as f64 * 1e3 / infer_ms,
        train_gpu_share: total_share(&train),
        kernels: train,
        infer_gpu_share: total_share(&inference),
        infer_kernels: inference,
        photo,
    };
    if print {
        eprint!("{}", report.table());
    }
    Ok(report)
}

/// GFLOP/s of our matrix product on a 1024³ problem: what the kernel rows'
/// GFLOP/s compare with.
fn gemm_ceiling(gpu: &Gpu, rng: &mut StdRng, reps: usize) -> Result<f64> {
    let n = 1024;
    let a = random_tensor(gpu, rng, &[n, n])?;
    let b = random_tensor(gpu, rng, &[n, n])?;
    let c = gpu.empty(&[n, n])?;
    let g = Gemm::new(n, n, n, Strides::rows(n));
    let ms = time_ms(gpu, reps, || g.run(gpu, &a, &b, None, &c))?;
    Ok(g.flops() / ms / 1e6)
}

fn random_tensor(gpu: &Gpu, rng: &mut StdRng, shape: &[usize]) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    gpu.upload(shape, &data)
}

/// The training step as `wgfer train` runs it: augment a batch, then step.
struct TrainingStep {
    trainer: Trainer,
    augmenter: Augmenter,
    pixels: Vec<u8>,
    labels: Vec<u8>,
    images: Vec<f32>,
}

impl TrainingStep {
    fn new(gpu: &Gpu, arch: ArchKind, batch: usize, rng: &mut StdRng) -> Result<TrainingStep> {
        let model = Model::new(gpu, Architecture::of_kind(arch, 5), 0)?;
        Ok(TrainingStep {
            trainer: Trainer::new(model, batch, Default::default())?,
            augmenter: Augmenter::new(AugmentConfig::default(), 0, 0),
            pixels: (0..batch * PIXELS)
                .map(|_| rng.random_range(0..=255u8))
                .collect(),
            labels: (0..batch).map(|i| (i % 5) as u8).collect(),
            images: vec![0.0; batch * PIXELS],
        })
    }

    fn run(&mut self) -> Result<()> {
        self.augmenter.augment_batch(&self.pixels, &mut self.images);
        self.trainer.step(&self.images, &self.labels).map(drop)
    }
}

/// Inference as `eval` and `predict` run it: forward on the moving
/// statistics, softmax, probabilities read back.
fn infer_once(model: &Model, x: &Tensor) -> Result<()> {
    let gpu = &model.gpu;
    let tape = Tape::new(gpu);
    let logits = model.forward(&tape, x, false)?;
    gpu.set_scope(&Arc::from("softmax output"), "forward");
    gpu.read(&softmax_xent::softmax(gpu, &logits)?).map(drop)
}

/// Median wall time of `f` (which waits for its own results), after a warm-up.
fn wall_ms(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut times = vec![];
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(&mut times))
}

/// Profile `reps` runs of `f` and fold the dispatches into rows, each the
/// median over the runs; shares are of `run_ms`, the unprofiled wall time.
fn profile(
    gpu: &Gpu,
    reps: usize,
    run_ms: f64,
    mut f: impl FnMut() -> Result<()>,
) -> Result<Vec<KernelRow>> {
    let mut runs = vec![];
    for _ in 0..reps.max(1) {
        gpu.sync()?;
        gpu.start_profile()?;
        f()?;
        runs.push(gpu.finish_profile()?);
    }
    Ok(fold(&runs, run_ms))
}

/// Rows keyed by (label, pass, kernel), in the order the first run met them.
fn fold(runs: &[Vec<DispatchTime>], run_ms: f64) -> Vec<KernelRow> {
    type Key = (String, &'static str, String);
    let mut order: Vec<Key> = vec![];
    // Per key: per run (ms, dispatches, flops).
    let mut sums: BTreeMap<Key, Vec<(f64, usize, Option<f64>)>> = BTreeMap::new();
    for (r, run) in runs.iter().enumerate() {
        for d in run {
            let key = (d.label.to_string(), d.pass, d.kernel.clone());
            let per_run = sums.entry(key.clone()).or_insert_with(|| {
                order.push(key);
                vec![]
            });
            per_run.resize(runs.len(), (0.0, 0, None));
            let (ms, count, flops) = &mut per_run[r];
            *ms += d.ms;
            *count += 1;
            *flops = match (*flops, d.flops) {
                (a, None) => a,
                (a, Some(f)) => Some(a.unwrap_or(0.0) + f),
            };
        }
    }
    order
        .into_iter()
        .map(|key| {
            let per_run = &sums[&key];
            let mut ms: Vec<f64> = per_run.iter().map(|p| p.0).collect();
            let median_ms = median(&mut ms);
            let (_, dispatches, flops) = per_run[0];
            KernelRow {
                name: key.0,
                pass: key.1,
                kernel: key.2,
                dispatches,
                median_ms,
                gflops: flops
                    .filter(|_| median_ms > 0.0)
                    .map(|f| f / median_ms / 1e6),
                step_share: median_ms / run_ms,
            }
        })
        .collect()
}

fn total_share(rows: &[KernelRow]) -> f64 {
    rows.iter().map(|r| r.step_share).sum()
}

impl BenchReport {
    /// The tables `wgfer bench` prints.
    pub fn table(&self) -> String {
        let mut s = format!(
            "\ntraining step, batch {} (augmentation included): {:.1} ms = {:.1} images/s; \
             its kernels take {:.0} % of it\n",
            self.batch_size,
            self.train_step_ms,
            self.train_images_per_s,
            100.0 * self.train_gpu_share
        );
        s += &rows_table(&self.kernels);
        s += &format!(
            "\ninference, batch {}: {:.1} ms = {:.1} images/s; its kernels take {:.0} % of it\n",
            self.infer_batch_size,
            self.infer_ms,
            self.infer_images_per_s,
            100.0 * self.infer_gpu_share
        );
        s += &rows_table(&self.infer_kernels);
        let p = &self.photo;
        s += &format!(
            "\nphoto: face detection on 640x480 {:.1} ms (one core); a 1920x1280 JPEG with five faces \
             end to end {:.1} ms (decode {:.1}, detect {:.1}, crop {:.1}, classify {:.1}; {} faces found)\n",
            p.detect_640x480_ms,
            p.end_to_end_1920x1280_ms,
            p.decode_ms,
            p.detect_ms,
            p.crop_ms,
            p.classify_ms,
            p.faces_found
        );
        s += &format!(
            "\nceiling: gemm 1024x1024x1024 = {:.2} GFLOP/s; adapter {}\n",
            self.ceiling_gflops, self.adapter
        );
        s
    }
}

fn rows_table(rows: &[KernelRow]) -> String {
    let mut s = String::new();
    for r in rows {
        let rate = r
            .gflops
            .map(|g| format!("{g:7.2} GFLOP/s"))
            .unwrap_or_default();
        s += &format!(
            "  {:<36} {:<9} {:<28} {:>3}x {:9.3} ms {:5.1} %  {rate}\n",
            r.name,
            r.pass,
            r.kernel,
            r.dispatches,
            r.median_ms,
            100.0 * r.step_share
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(label: &str, kernel: &str, ms: f64, flops: Option<f64>) -> DispatchTime {
        DispatchTime {
            label: Arc::from(label),
            pass: "forward",
            kernel: kernel.into(),
            flops,
            ms,
        }
    }

    #[test]
    fn fold_sums_a_runs_dispatches_and_takes_the_median_over_runs() {
        let runs = vec![
            vec![
                d("conv2d a", "gemm::main", 1.0, Some(2e6)),
                d("conv2d a", "gemm::main", 1.0, Some(2e6)),
                d("relu b", "relu::main", 0.5, None),
            ],
            vec![
                d("conv2d a", "gemm::main", 3.0, Some(2e6)),
                d("conv2d a", "gemm::main", 3.0, Some(2e6)),
                d("relu b", "relu::main", 0.1, None),
            ],
            vec![
                d("conv2d a", "gemm::main", 2.0, Some(2e6)),
                d("conv2d a", "gemm::main", 2.0, Some(2e6)),
                d("relu b", "relu::main", 0.3, None),
            ],
        ];
        let rows = fold(&runs, 10.0);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].name, "conv2d a");
        assert_eq!(rows[0].dispatches, 2);
        assert_eq!(rows[0].median_ms, 4.0);
        assert_eq!(rows[0].step_share, 0.4);
        // 4e6 flops in 4 ms = 1 GFLOP/s.
        assert!((rows[0].gflops.unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(rows[1].median_ms, 0.3);
        assert_eq!(rows[1].gflops, None);
        assert!((total_share(&rows) - 0.43).abs() < 1e-12);
    }
}
