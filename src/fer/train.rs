//! `wgfer train`: the tutorial's recipe end to end. Loads the CSV, splits it,
//! trains with augmentation, validates every epoch, keeps the best weights,
//! and finally evaluates them on the test split and draws the pictures.
//!
//! Everything a run needs to continue lives in `DIR/resume.safetensors`
//! (weights, Adam moments, and the loop's state as metadata), written
//! atomically, so a run killed at any instant resumes exactly.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail, ensure};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::engine::Gpu;
use crate::engine::ops::adam::AdamConfig;
use crate::fer::augment::{AugmentConfig, Augmenter, to_f32};
use crate::fer::checkpoint::{self, NamedTensor, write_atomic};
use crate::fer::data::{self, Dataset, LoadOptions, PIXELS};
use crate::fer::eval::{self, Evaluation};
use crate::fer::model::{Architecture, Model};
use crate::fer::report;
use crate::fer::trainer::Trainer;

/// Set by the Ctrl-C handler; the loop saves and stops at the next step.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The settings of a run, saved as `DIR/config.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunConfig {
    pub data: PathBuf,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f32,
    pub seed: u64,
    pub patience: usize,
    pub augment: bool,
    pub flip: bool,
    pub classes: Option<usize>,
    pub class_names: Vec<String>,
    pub skip_bad_rows: bool,
    pub limit: Option<usize>,
    /// At most this many steps per epoch (quick runs); None = all full batches.
    pub steps_per_epoch: Option<usize>,
    /// Halve the learning rate after this many epochs without a better
    /// validation loss (Keras' ReduceLROnPlateau, factor 0.5); None = off, as
    /// in the tutorial.
    #[serde(default)]
    pub reduce_lr_patience: Option<usize>,
}

impl RunConfig {
    /// The config of the training run in `dir` (its `config.json`).
    pub fn read(dir: &Path) -> Result<RunConfig> {
        let path = dir.join(CONFIG);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "{} is not a training run (cannot read {CONFIG})",
                dir.display()
            )
        })?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a wgfer run config", path.display()))
    }

    /// How the run read its CSV.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            skip_bad_rows: self.skip_bad_rows,
            classes: self.classes,
            limit: self.limit,
        }
    }
}

/// ReduceLROnPlateau: the factor and the floor.
const LR_FACTOR: f32 = 0.5;
const MIN_LR: f32 = 1e-5;

/// One finished epoch.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EpochRecord {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_acc: f64,
    pub val_loss: f64,
    pub val_acc: f64,
    pub seconds: f64,
    pub images_per_s: f64,
    /// The learning rate the epoch trained with.
    #[serde(default)]
    pub lr: f32,
}

/// Where the loop stands; saved with the weights in `resume.safetensors`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
struct LoopState {
    /// The epoch in progress (0-based) and the steps of it already done.
    epoch: usize,
    step: usize,
    loss_sum: f64,
    correct: u64,
    seen: u64,
    seconds: f64,
    best_val_loss: Option<f64>,
    best_epoch: Option<usize>,
    /// Epochs since the best one (early stopping).
    wait: usize,
    adam_t: u64,
    history: Vec<EpochRecord>,
    stopped_early: bool,
    /// The learning rate now, when ReduceLROnPlateau lowered it.
    #[serde(default)]
    lr: Option<f32>,
    /// Epochs since the last improvement or reduction.
    #[serde(default)]
    plateau: usize,
}

impl LoopState {
    /// Book a finished epoch: the best loss, early stopping's and
    /// ReduceLROnPlateau's counters, the next learning rate. Returns what to
    /// tell the user. (Pure bookkeeping: the caller saves the files.)
    fn end_epoch(&mut self, record: EpochRecord, config: &RunConfig) -> Vec<String> {
        let mut said = vec![];
        if self.best_val_loss.is_none_or(|b| record.val_loss < b) {
            self.best_val_loss = Some(record.val_loss);
            self.best_epoch = Some(record.epoch);
            self.wait = 0;
            self.plateau = 0;
        } else {
            self.wait += 1;
            self.plateau += 1;
        }
        let lr = record.lr;
        if config.reduce_lr_patience.is_some_and(|p| self.plateau >= p) && lr > MIN_LR {
            let lower = (lr * LR_FACTOR).max(MIN_LR);
            self.lr = Some(lower);
            self.plateau = 0;
            said.push(format!("reducing the learning rate to {lower:e}"));
        }
        self.history.push(record);
        self.epoch += 1;
        self.step = 0;
        (self.loss_sum, self.correct, self.seen, self.seconds) = (0.0, 0, 0, 0.0);
        if self.wait >= config.patience {
            self.stopped_early = true;
            said.push(format!(
                "early stopping: no better validation loss for {} epochs",
                config.patience
            ));
        }
        said
    }
}

pub struct TrainRequest {
    pub out: PathBuf,
    /// None when resuming: the saved config is used.
    pub config: Option<RunConfig>,
    pub resume: bool,
    pub force: bool,
    pub adapter: Option<String>,
    pub quiet: bool,
    /// Resume: train up to this many epochs instead of the saved number.
    pub epochs_override: Option<usize>,
    /// Act as if Ctrl-C came after this many steps (tests of resume).
    pub interrupt_after: Option<usize>,
}

/// How a training call ended.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Finished { test_accuracy: f64 },
    Interrupted,
}

const CONFIG: &str = "config.json";
const RESUME: &str = "resume.safetensors";
const BEST: &str = "best.safetensors";
const LAST: &str = "last.safetensors";

pub fn run(req: TrainRequest) -> Result<Outcome> {
    let out = req.out.clone();
    let mut config = prepare_dir(&req)?;
    if let Some(e) = req.epochs_override {
        config.epochs = e;
    }
    let say = |s: String| {
        if !req.quiet {
            eprintln!("{s}");
        }
    };

    // Data: load, split, class names.
    let t0 = Instant::now();
    let ds = data::load_csv(&config.data, &config.load_options())?;
    let splits = data::split(&ds, config.seed)?;
    let classes = ds.num_classes;
    if config.class_names.is_empty() {
        config.class_names = data::default_class_names(classes);
    }
    ensure!(
        config.class_names.len() == classes,
        "{} class names for {classes} classes",
        config.class_names.len()
    );
    let (train, val, test) = (
        ds.subset(&splits.train),
        ds.subset(&splits.validation),
        ds.subset(&splits.test),
    );
    say(format!(
        "data: {} faces from {} in {:.1}s{}; train {}, validation {}, test {}",
        ds.len(),
        config.data.display(),
        t0.elapsed().as_secs_f64(),
        if ds.skipped_rows > 0 {
            format!(" ({} bad rows skipped)", ds.skipped_rows)
        } else {
            String::new()
        },
        train.len(),
        val.len(),
        test.len()
    ));
    let gpu = Gpu::new(req.adapter.as_deref())?;
    say(gpu
        .software_notice()
        .unwrap_or_else(|| format!("adapter: {}", gpu.adapter())));
    let arch = Architecture::resnet(classes);
    check_limits(&gpu, &arch, config.batch_size)?;
    ensure!(
        train.len() >= config.batch_size,
        "the training split has {} faces, fewer than one batch of {}; lower --batch-size",
        train.len(),
        config.batch_size
    );
    write_atomic(
        &out.join(CONFIG),
        serde_json::to_string_pretty(&config)?.as_bytes(),
    )?;

    let adam = AdamConfig {
        lr: config.lr,
        ..AdamConfig::default()
    };

    let (mut trainer, mut state) = if req.resume && out.join(RESUME).exists() {
        let (model, state, m, v) = load_resume(&gpu, &out.join(RESUME), arch)?;
        say(format!(
            "resuming at epoch {} step {}",
            state.epoch + 1,
            state.step
        ));
        let mut trainer = Trainer::new(model, config.batch_size, adam)?;
        trainer.adam.load_state(&gpu, state.adam_t, &m, &v)?;
        (trainer, state)
    } else {
        let model = Model::new(&gpu, arch, config.seed)?;
        (
            Trainer::new(model, config.batch_size, adam)?,
            LoopState::default(),
        )
    };

    let samples: Vec<&[u8]> = (0..classes)
        .map(|c| {
            train
                .labels
                .iter()
                .position(|&l| l as usize == c)
                .map(|i| train.image(i))
        })
        .map(|o| o.unwrap_or(&[0u8; PIXELS][..]))
        .collect();
    report::plot_class_samples(&out.join("samples.png"), &samples, &config.class_names)?;

    let aug_config = AugmentConfig {
        horizontal_flip: config.flip,
        ..AugmentConfig::default()
    };
    let batch = config.batch_size;
    let steps = (train.len() / batch)
        .min(config.steps_per_epoch.unwrap_or(usize::MAX))
        .max(1);
    let mut pixels = vec![0u8; batch * PIXELS];
    let mut images = vec![0f32; batch * PIXELS];
    let mut labels = vec![0u8; batch];

    let mut steps_run = 0;
    while state.epoch < config.epochs && !state.stopped_early {
        let epoch = state.epoch;
        trainer.adam.config.lr = state.lr.unwrap_or(config.lr);
        let order = data::epoch_order(train.len(), config.seed, epoch);
        let mut augmenter = Augmenter::new(aug_config.clone(), config.seed, epoch);
        // A resumed epoch skips the transforms its finished steps consumed.
        for _ in 0..state.step * batch {
            augmenter.draw();
        }
        let bar = progress_bar(req.quiet, steps, epoch, config.epochs);
        bar.set_position(state.step as u64);
        let started = Instant::now();
        let seconds_before = state.seconds;
        let first_step = state.step;
        while state.step < steps {
            let stop_now = req.interrupt_after.is_some_and(|n| steps_run >= n);
            if INTERRUPTED.load(Ordering::Relaxed) || stop_now {
                bar.abandon();
                state.seconds = seconds_before + started.elapsed().as_secs_f64();
                save_progress(&out, &trainer, &mut state, &config, epoch)?;
                say(format!(
                    "interrupted: saved {} and the history; continue with `wgfer train --resume {}`",
                    out.join(LAST).display(),
                    out.display()
                ));
                return Ok(Outcome::Interrupted);
            }
            let idx = &order[state.step * batch..(state.step + 1) * batch];
            for (j, &i) in idx.iter().enumerate() {
                pixels[j * PIXELS..(j + 1) * PIXELS].copy_from_slice(train.image(i));
                labels[j] = train.labels[i];
            }
            if config.augment {
                augmenter.augment_batch(&pixels, &mut images);
            } else {
                to_f32(&pixels, &mut images);
            }
            let r = trainer.step(&images, &labels)?;
            steps_run += 1;
            if !r.finite {
                bar.abandon();
                bail!(
                    "training diverged at epoch {}, step {}: the loss, a gradient or a weight is not \
                     finite, or the loss exploded (loss {:e}). The last good weights are in {} (if an \
                     epoch finished); try a smaller --lr",
                    epoch + 1,
                    state.step + 1,
                    r.loss,
                    out.join(LAST).display()
                );
            }
            state.step += 1;
            state.loss_sum += r.loss as f64 * batch as f64;
            state.correct += r.correct as u64;
            state.seen += batch as u64;
            bar.set_message(format!(
                "loss {:.4} acc {:.4} {:.0} img/s",
                state.loss_sum / state.seen as f64,
                state.correct as f64 / state.seen as f64,
                ((state.step - first_step) * batch) as f64
                    / started.elapsed().as_secs_f64().max(1e-9)
            ));
            bar.inc(1);
            if !req.quiet && bar.is_hidden() && state.step % 50 == 0 {
                eprintln!(
                    "  epoch {} step {}/{steps}: loss {:.4} acc {:.4}",
                    epoch + 1,
                    state.step,
                    state.loss_sum / state.seen as f64,
                    state.correct as f64 / state.seen as f64
                );
            }
        }
        bar.finish_and_clear();
        let train_seconds = seconds_before + started.elapsed().as_secs_f64();
        let v = eval::evaluate(&trainer.model, &val, &config.class_names, false)?;
        let record = EpochRecord {
            epoch: epoch + 1,
            train_loss: state.loss_sum / state.seen as f64,
            train_acc: state.correct as f64 / state.seen as f64,
            val_loss: v.loss,
            val_acc: v.accuracy,
            seconds: seconds_before + started.elapsed().as_secs_f64(),
            images_per_s: state.seen as f64 / train_seconds.max(1e-9),
            lr: trainer.adam.config.lr,
        };
        let improved = state.best_val_loss.is_none_or(|b| v.loss < b);
        say(format!(
            "epoch {:>3}/{}  {:6.1}s  {:5.0} img/s  loss {:.4}  acc {:.4}  val_loss {:.4}  val_acc {:.4}{}",
            record.epoch,
            config.epochs,
            record.seconds,
            record.images_per_s,
            record.train_loss,
            record.train_acc,
            record.val_loss,
            record.val_acc,
            if improved { "  *best" } else { "" }
        ));
        if improved {
            let tag = [("epoch", record.epoch.to_string())];
            trainer
                .model
                .save(&out.join(BEST), &config.class_names, &tag)?;
        }
        for message in state.end_epoch(record, &config) {
            say(message);
        }
        let epochs_done = state.epoch;
        save_progress(&out, &trainer, &mut state, &config, epochs_done)?;
    }

    // The best weights on the test split.
    let (best, _) = Model::load(&gpu, &out.join(BEST))?;
    let result = eval::evaluate(&best, &test, &config.class_names, false)?;
    say(format!(
        "best epoch {} (val_loss {:.4}); test split:\n{}",
        state.best_epoch.unwrap_or(0),
        state.best_val_loss.unwrap_or(f64::NAN),
        result.table()
    ));
    write_atomic(
        &out.join("test_metrics.json"),
        serde_json::to_string_pretty(&result.to_json())?.as_bytes(),
    )?;
    write_pictures(&out, &test, &result)?;
    Ok(Outcome::Finished {
        test_accuracy: result.accuracy,
    })
}

/// Check the output directory and return the run's config.
fn prepare_dir(req: &TrainRequest) -> Result<RunConfig> {
    let out = &req.out;
    let has_run = [CONFIG, RESUME, BEST, LAST]
        .iter()
        .any(|f| out.join(f).exists());
    if req.resume {
        ensure!(
            out.join(CONFIG).exists(),
            "{} holds no training run to resume (no {CONFIG})",
            out.display()
        );
        let saved = RunConfig::read(out)?;
        return Ok(match &req.config {
            // Data path given again: must be the same run's data (it defines the split).
            Some(c) if c.data != saved.data => bail!(
                "{} was trained on {}; resume it without --data or with the same file",
                out.display(),
                saved.data.display()
            ),
            _ => saved,
        });
    }
    let config = req
        .config
        .clone()
        .ok_or_else(|| anyhow!("--data is required to start a training run"))?;
    ensure!(config.epochs > 0, "--epochs must be at least 1");
    ensure!(config.batch_size > 0, "--batch-size must be at least 1");
    ensure!(
        config.lr.is_finite() && config.lr > 0.0,
        "--lr must be a positive number"
    );
    if has_run && !req.force {
        bail!(
            "{} already holds a training run; use `--resume {}` to continue it or --force to overwrite it",
            out.display(),
            out.display()
        );
    }
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create the output directory {}", out.display()))?;
    if req.force {
        for f in [RESUME, BEST, LAST, "history.csv", "test_metrics.json"] {
            let _ = std::fs::remove_file(out.join(f));
        }
    }
    // Fail now, not after an epoch, if the directory cannot be written.
    let probe = out.join(".wgfer-write-test");
    write_atomic(&probe, b"ok")
        .with_context(|| format!("the output directory {} is not writable", out.display()))?;
    let _ = std::fs::remove_file(probe);
    ensure!(
        config.data.exists(),
        "{}: no such file",
        config.data.display()
    );
    Ok(config)
}

/// Refuse a batch whose largest tensor would not fit one storage binding.
pub fn check_limits(gpu: &Gpu, arch: &Architecture, batch: usize) -> Result<()> {
    let biggest = arch
        .layers
        .iter()
        .map(|l| l.output_shape.iter().product::<usize>())
        // The first convolution's im2col matrix, the one large tensor that is
        // no layer's output: 24×24 positions by 7·7 taps, roughly (its rows
        // are padded to 52). conv1's own output, 24×24×64, is larger anyway.
        .chain([24 * 24 * 7 * 7 + 64])
        .max()
        .unwrap_or(0);
    let max = gpu.max_binding_elements();
    ensure!(
        biggest * batch <= max,
        "a batch of {batch} needs tensors of {} MiB, over this adapter's max_storage_buffer_binding_size \
         of {} MiB; use --batch-size {} or less",
        (biggest * batch * 4) >> 20,
        (max * 4) >> 20,
        max / biggest
    );
    Ok(())
}

fn progress_bar(quiet: bool, steps: usize, epoch: usize, epochs: usize) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("epoch {}/{}", epoch + 1, epochs));
    bar
}

/// `last.safetensors`, `resume.safetensors` (weights, Adam, loop state) and
/// the history, each written atomically; resume reads only resume.safetensors.
fn save_progress(
    out: &Path,
    trainer: &Trainer,
    state: &mut LoopState,
    config: &RunConfig,
    epoch: usize,
) -> Result<()> {
    state.adam_t = trainer.adam.t;
    trainer.model.save(
        &out.join(LAST),
        &config.class_names,
        &[("epoch", epoch.to_string())],
    )?;
    save_resume(out, trainer, state, config)?;
    write_history(out, &state.history)
}

fn save_resume(out: &Path, trainer: &Trainer, state: &LoopState, config: &RunConfig) -> Result<()> {
    let gpu = trainer.gpu();
    let mut tensors = trainer.model.named_tensors()?;
    let len = trainer.model.arch.trainable_len;
    let mut m = gpu.read(&trainer.adam.m)?;
    let mut v = gpu.read(&trainer.adam.v)?;
    m.truncate(len);
    v.truncate(len);
    tensors.push(NamedTensor {
        name: "optimizer.m".into(),
        shape: vec![len],
        data: m,
    });
    tensors.push(NamedTensor {
        name: "optimizer.v".into(),
        shape: vec![len],
        data: v,
    });
    let mut meta = BTreeMap::new();
    meta.insert("state".to_string(), serde_json::to_string(state)?);
    meta.insert("config".to_string(), serde_json::to_string(config)?);
    checkpoint::save(&out.join(RESUME), &tensors, &meta)
}

fn load_resume(
    gpu: &Gpu,
    path: &Path,
    arch: Architecture,
) -> Result<(Model, LoopState, Vec<f32>, Vec<f32>)> {
    let len = arch.trainable_len;
    let mut expected: Vec<(String, Vec<usize>)> = arch
        .params
        .iter()
        .map(|p| (p.name.clone(), p.shape.clone()))
        .collect();
    expected.push(("optimizer.m".into(), vec![len]));
    expected.push(("optimizer.v".into(), vec![len]));
    let w = checkpoint::load(path, &expected)?;
    let state: LoopState =
        serde_json::from_str(w.metadata.get("state").map(String::as_str).unwrap_or(""))
            .with_context(|| {
                format!(
                    "{}: the saved loop state is missing or unreadable",
                    path.display()
                )
            })?;
    let mut trainable = vec![0.0; arch.trainable_len];
    let mut moving = vec![0.0; arch.moving_len];
    for (p, t) in arch.params.iter().zip(&w.tensors) {
        let dst = if p.trainable {
            &mut trainable
        } else {
            &mut moving
        };
        dst[p.offset..p.offset + p.len()].copy_from_slice(&t.data);
    }
    let n = w.tensors.len();
    let (m, v) = (w.tensors[n - 2].data.clone(), w.tensors[n - 1].data.clone());
    Ok((
        Model::from_values(gpu, arch, &trainable, &moving)?,
        state,
        m,
        v,
    ))
}

fn write_history(out: &Path, history: &[EpochRecord]) -> Result<()> {
    let mut csv =
        String::from("epoch,train_loss,train_acc,val_loss,val_acc,seconds,images_per_s,lr\n");
    for r in history {
        csv += &format!(
            "{},{:.6},{:.6},{:.6},{:.6},{:.2},{:.1},{:e}\n",
            r.epoch,
            r.train_loss,
            r.train_acc,
            r.val_loss,
            r.val_acc,
            r.seconds,
            r.images_per_s,
            r.lr
        );
    }
    write_atomic(&out.join("history.csv"), csv.as_bytes())?;
    let points: Vec<report::EpochPoint> = history
        .iter()
        .map(|r| report::EpochPoint {
            epoch: r.epoch,
            train_loss: r.train_loss,
            train_acc: r.train_acc,
            val_loss: r.val_loss,
            val_acc: r.val_acc,
        })
        .collect();
    if !points.is_empty() {
        report::plot_history(&out.join("history.png"), &points)?;
    }
    Ok(())
}

/// The confusion heat map and a 5×5 grid of faces with predicted / true labels.
pub fn write_pictures(out: &Path, ds: &Dataset, e: &Evaluation) -> Result<()> {
    report::plot_confusion(&out.join("confusion.png"), &e.confusion, &e.class_names)?;
    let n = ds.len().min(25);
    let faces: Vec<&[u8]> = (0..n).map(|i| ds.image(i)).collect();
    let titles: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "pred: {} / true: {}",
                e.class_names[e.predictions[i]], e.class_names[ds.labels[i] as usize]
            )
        })
        .collect();
    let correct: Vec<bool> = (0..n)
        .map(|i| e.predictions[i] == ds.labels[i] as usize)
        .collect();
    report::plot_face_grid(&out.join("predictions.png"), &faces, &titles, &correct, 5)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(patience: usize, reduce: Option<usize>) -> RunConfig {
        RunConfig {
            data: PathBuf::from("x.csv"),
            epochs: 10,
            batch_size: 64,
            lr: 1e-3,
            seed: 0,
            patience,
            augment: true,
            flip: false,
            classes: None,
            class_names: vec![],
            skip_bad_rows: false,
            limit: None,
            steps_per_epoch: None,
            reduce_lr_patience: reduce,
        }
    }

    fn epoch(state: &LoopState, val_loss: f64) -> EpochRecord {
        EpochRecord {
            epoch: state.epoch + 1,
            train_loss: 1.0,
            train_acc: 0.5,
            val_loss,
            val_acc: 0.5,
            seconds: 1.0,
            images_per_s: 1.0,
            lr: state.lr.unwrap_or(1e-3),
        }
    }

    #[test]
    fn the_best_epoch_and_early_stopping_follow_the_validation_loss() {
        let c = config(2, None);
        let mut s = LoopState {
            step: 7,
            seen: 9,
            ..LoopState::default()
        };
        for loss in [1.0, 0.8, 0.9] {
            let r = epoch(&s, loss);
            assert!(s.end_epoch(r, &c).is_empty());
        }
        assert_eq!(
            (
                s.best_epoch,
                s.best_val_loss,
                s.wait,
                s.epoch,
                s.step,
                s.seen
            ),
            (Some(2), Some(0.8), 1, 3, 0, 0)
        );
        let r = epoch(&s, 0.85);
        let said = s.end_epoch(r, &c);
        assert!(
            s.stopped_early && said[0].contains("early stopping"),
            "{said:?}"
        );
        assert_eq!(s.history.len(), 4);
    }

    #[test]
    fn reduce_lr_on_plateau_halves_down_to_the_floor() {
        let c = config(100, Some(2));
        let mut s = LoopState::default();
        let mut rates = vec![];
        for loss in [1.0, 1.1, 1.2, 0.9, 1.0, 1.0, 1.0, 1.0] {
            let r = epoch(&s, loss);
            rates.push(r.lr);
            s.end_epoch(r, &c);
        }
        // Two epochs without improvement halve the rate; an improvement resets the count.
        assert_eq!(rates, [1e-3, 1e-3, 1e-3, 5e-4, 5e-4, 5e-4, 2.5e-4, 2.5e-4]);
        let mut s = LoopState {
            lr: Some(1.5e-5),
            ..LoopState::default()
        };
        for _ in 0..4 {
            let r = epoch(&s, 2.0 + s.epoch as f64);
            s.end_epoch(r, &c);
        }
        assert_eq!(s.lr, Some(MIN_LR));
    }
}
