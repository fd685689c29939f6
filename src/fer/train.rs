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
use crate::fer::checkpoint::{self, NamedTensor};
use crate::fer::data::{self, Dataset, LoadOptions, PIXELS};
use crate::fer::eval::{self, Evaluation};
use crate::fer::files::write_atomic;
use crate::fer::infer::Tta;
use crate::fer::model::{ArchKind, Architecture, Model, group};
use crate::fer::provenance::TrainedOn;
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
    /// Lower the learning rate along a half cosine from `lr` towards 0 over
    /// the run's epochs (one value per epoch); off in the tutorial.
    #[serde(default)]
    pub cosine: bool,
    /// The layer graph trained (runs from before it existed: the tutorial's).
    #[serde(default)]
    pub arch: ArchKind,
    /// Label smoothing ε of the training targets (0 = one-hot, as in the tutorial;
    /// validation and test always score against the true labels).
    #[serde(default)]
    pub label_smoothing: f32,
    /// Start from these weights instead of the seeded initial ones (a
    /// fine-tune; the optimizer starts afresh). None = from scratch.
    #[serde(default)]
    pub init: Option<PathBuf>,
    /// The `--init` file's own training recipe, read when the run starts (so that
    /// resuming needs only the run directory); None without one.
    #[serde(default)]
    pub init_recipe: Option<serde_json::Value>,
    /// Also keep each epoch's weights as `epoch-NNN.safetensors` (for `wgfer average`).
    #[serde(default)]
    pub keep_epochs: bool,
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

    /// The learning rate epoch `epoch` (0-based) starts with, before any
    /// plateau reductions: `lr`, or with `cosine` lr · ½(1 + cos(π · epoch / epochs)).
    pub fn scheduled_lr(&self, epoch: usize) -> f32 {
        if !self.cosine {
            return self.lr;
        }
        let progress = epoch as f64 / self.epochs.max(1) as f64;
        (self.lr as f64 * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())) as f32
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
        if self.stopped_early(config) {
            said.push(format!(
                "early stopping: no better validation loss for {} epochs",
                config.patience
            ));
        }
        said
    }

    /// Early stopping, judged by the patience in force: on resume a larger one
    /// continues a run it ended (resume files from before this kept a
    /// `stopped_early` flag, which is ignored).
    fn stopped_early(&self, config: &RunConfig) -> bool {
        self.wait >= config.patience
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
    /// Resume: stop after this many epochs without a better validation loss
    /// instead of the saved patience (continues a run early stopping ended).
    pub patience_override: Option<usize>,
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
    let (config, created) = prepare_dir(&req)?;
    let result = train_in(&req, config);
    if result.is_err() {
        remove_unfinished_dir(&req.out, created.as_deref());
    }
    result
}

/// The whole run in a prepared directory: data, GPU, trainer, epochs, the test split.
fn train_in(req: &TrainRequest, mut config: RunConfig) -> Result<Outcome> {
    if let Some(e) = req.epochs_override {
        config.epochs = e;
    }
    if let Some(p) = req.patience_override {
        config.patience = p;
    }
    let log = Log { quiet: req.quiet };
    let data = load_data(&mut config, &log)?;
    let gpu = Gpu::new(req.adapter.as_deref())?;
    log.say(
        gpu.software_notice()
            .unwrap_or_else(|| format!("adapter: {}", gpu.adapter())),
    );
    let arch = Architecture::of_kind(config.arch, config.class_names.len());
    check_limits(&gpu, &arch, config.batch_size)?;
    ensure!(
        data.train.len() >= config.batch_size,
        "the training split has {} faces, fewer than one batch of {}; lower --batch-size",
        data.train.len(),
        config.batch_size
    );
    write_atomic(
        &req.out.join(CONFIG),
        serde_json::to_string_pretty(&config)?.as_bytes(),
    )?;
    let (mut trainer, mut state) = open_trainer(req, &gpu, &config, arch, &data, &log)?;
    plot_samples(&req.out, &data.train, &config.class_names)?;
    let run = Session {
        req,
        config: &config,
        data: &data,
        log,
    };
    match run.epochs(&mut trainer, &mut state)? {
        Ended::Interrupted => Ok(Outcome::Interrupted),
        Ended::Trained => run.test_best(&gpu, &state),
    }
}

/// Progress and results on stderr, unless `--quiet`.
#[derive(Clone, Copy)]
struct Log {
    quiet: bool,
}

impl Log {
    fn say(&self, s: impl std::fmt::Display) {
        if !self.quiet {
            eprintln!("{s}");
        }
    }
}

/// The run's data, split, and the record of it saved in every weights file.
struct RunData {
    train: Dataset,
    val: Dataset,
    test: Dataset,
    trained_on: TrainedOn,
}

/// Load and split the data, settle the class names, and say what was understood.
fn load_data(config: &mut RunConfig, log: &Log) -> Result<RunData> {
    let t0 = Instant::now();
    let (ds, fingerprint) = data::load_csv_fingerprinted(&config.data, &config.load_options())?;
    let splits = data::split(&ds, config.seed)?;
    if config.class_names.is_empty() {
        config.class_names = data::default_class_names(ds.num_classes);
    }
    if config.classes.is_none() {
        // The names came from the data when the run started; on resume the file may
        // have changed since.
        data::check_classes(&config.class_names, &ds)?;
    }
    ensure!(
        config.class_names.len() == ds.num_classes,
        "{} class names for {} classes",
        config.class_names.len(),
        ds.num_classes
    );
    let how = match &ds.usage {
        Some(u) if !u.contains(&data::Usage::PrivateTest) => format!(
            "split from the Usage column (no PrivateTest rows: PublicTest halved, seed {})",
            config.seed
        ),
        Some(_) => "split from the Usage column".to_string(),
        None => format!("seeded 90/5/5 split (seed {})", config.seed),
    };
    log.say(format!(
        "data: {} faces from {} in {:.1}s{}\n  {} classes ({}), {how}: train {} / validation {} / test {}",
        group(ds.len()),
        config.data.display(),
        t0.elapsed().as_secs_f64(),
        if ds.skipped_rows > 0 {
            format!(" ({} bad rows skipped)", group(ds.skipped_rows))
        } else {
            String::new()
        },
        ds.num_classes,
        config.class_names.join(", "),
        group(splits.train.len()),
        group(splits.validation.len()),
        group(splits.test.len()),
    ));
    Ok(RunData {
        trained_on: TrainedOn::new(config, &fingerprint, &ds)?,
        train: ds.subset(&splits.train),
        val: ds.subset(&splits.validation),
        test: ds.subset(&splits.test),
    })
}

/// A fresh trainer, or the one saved in `resume.safetensors` when resuming.
fn open_trainer(
    req: &TrainRequest,
    gpu: &Gpu,
    config: &RunConfig,
    arch: Architecture,
    data: &RunData,
    log: &Log,
) -> Result<(Trainer, LoopState)> {
    let adam = AdamConfig {
        lr: config.lr,
        ..AdamConfig::default()
    };
    let trainer_of = |model| -> Result<Trainer> {
        let mut trainer = Trainer::new(model, config.batch_size, adam)?;
        trainer.label_smoothing = config.label_smoothing;
        Ok(trainer)
    };
    let resume = req.out.join(RESUME);
    if !(req.resume && resume.exists()) {
        let model = match &config.init {
            Some(path) => initial_model(gpu, path, &arch, &config.class_names)?,
            None => Model::new(gpu, arch, config.seed)?,
        };
        return Ok((trainer_of(model)?, LoopState::default()));
    }
    let (model, state, m, v, trained_on) = load_resume(gpu, &resume, arch)?;
    if let Some(then) = trained_on.filter(|t| t.data != data.trained_on.data) {
        bail!(
            "{} has changed since the run in {} started ({} bytes then, {} now; SHA-256 {} then, \
             {} now): its split and its faces would not be the run's. Start a new run with --force",
            config.data.display(),
            req.out.display(),
            then.data.bytes,
            data.trained_on.data.bytes,
            then.data.sha256,
            data.trained_on.data.sha256
        );
    }
    log.say(format!(
        "resuming at epoch {} step {}",
        state.epoch + 1,
        state.step
    ));
    if state.stopped_early(config) && state.epoch < config.epochs {
        log.say(format!(
            "early stopping ended this run ({} epochs without a better validation loss); \
             --patience N with N above {} continues it",
            state.wait, state.wait
        ));
    }
    let mut trainer = trainer_of(model)?;
    trainer.adam.load_state(gpu, state.adam_t, &m, &v)?;
    Ok((trainer, state))
}

/// The model in `path` (`--init`), which must have the run's layer graph and classes.
fn initial_model(
    gpu: &Gpu,
    path: &Path,
    arch: &Architecture,
    class_names: &[String],
) -> Result<Model> {
    let (model, names) = Model::load(gpu, path)?;
    let have = &model.arch;
    ensure!(
        have.kind == arch.kind && have.num_classes == arch.num_classes,
        "--init {}: its layer graph is `{}` with {} classes, this run's `{}` with {}",
        path.display(),
        have.kind.name(),
        have.num_classes,
        arch.kind.name(),
        arch.num_classes
    );
    ensure!(
        names == class_names,
        "--init {}: its classes are {}, this run's {}",
        path.display(),
        names.join(","),
        class_names.join(",")
    );
    Ok(model)
}

/// `samples.png`: the first training face of each class.
fn plot_samples(out: &Path, train: &Dataset, class_names: &[String]) -> Result<()> {
    let samples: Vec<&[u8]> = (0..class_names.len())
        .map(|c| {
            train
                .labels
                .iter()
                .position(|&l| l as usize == c)
                .map(|i| train.image(i))
        })
        .map(|o| o.unwrap_or(&[0u8; PIXELS][..]))
        .collect();
    report::plot_class_samples(&out.join("samples.png"), &samples, class_names)
}

/// Everything the epoch loop reads.
struct Session<'a> {
    req: &'a TrainRequest,
    config: &'a RunConfig,
    data: &'a RunData,
    log: Log,
}

/// How an epoch's training, or the whole loop, ended.
enum Ended {
    Trained,
    Interrupted,
}

impl Session<'_> {
    fn out(&self) -> &Path {
        &self.req.out
    }

    /// Full batches per epoch (at most `--steps-per-epoch`).
    fn steps(&self) -> usize {
        (self.data.train.len() / self.config.batch_size)
            .min(self.config.steps_per_epoch.unwrap_or(usize::MAX))
            .max(1)
    }

    /// Train epoch after epoch until the last one, early stopping, or an interrupt.
    fn epochs(&self, trainer: &mut Trainer, state: &mut LoopState) -> Result<Ended> {
        let mut clock = RunClock::new(self.steps(), self.config.epochs);
        while state.epoch < self.config.epochs && !state.stopped_early(self.config) {
            let started = Instant::now();
            let seconds_before = state.seconds;
            if let Ended::Interrupted = self.train_epoch(trainer, state, &mut clock)? {
                state.seconds = seconds_before + started.elapsed().as_secs_f64();
                let epoch = state.epoch;
                save_progress(self.out(), trainer, state, self.config, self.data, epoch)?;
                self.log.say(format!(
                    "interrupted: saved {} and the history; continue with `wgfer train --resume {}`",
                    self.out().join(LAST).display(),
                    self.out().display()
                ));
                return Ok(Ended::Interrupted);
            }
            let train_seconds = seconds_before + started.elapsed().as_secs_f64();
            self.end_epoch(
                trainer,
                state,
                train_seconds,
                seconds_before,
                started,
                &clock,
            )?;
            // Validation is part of the run's time: the ETA counts it too.
            clock.mark_epoch_end();
        }
        Ok(Ended::Trained)
    }

    /// The remaining steps of the epoch `state.epoch`, from `state.step` on.
    fn train_epoch(
        &self,
        trainer: &mut Trainer,
        state: &mut LoopState,
        clock: &mut RunClock,
    ) -> Result<Ended> {
        let (config, train) = (self.config, &self.data.train);
        let (epoch, steps) = (state.epoch, self.steps());
        trainer.adam.config.lr = state.lr.unwrap_or(config.scheduled_lr(epoch));
        let order = data::epoch_order(train.len(), config.seed, epoch);
        let mut batch = Batch::new(config, epoch, state.step);
        let bar = progress_bar(self.req.quiet, steps, epoch, config.epochs);
        bar.set_position(state.step as u64);
        let (started, first_step) = (Instant::now(), state.step);
        while state.step < steps {
            let stop_now = self
                .req
                .interrupt_after
                .is_some_and(|n| clock.steps_done >= n);
            if INTERRUPTED.load(Ordering::Relaxed) || stop_now {
                bar.abandon();
                return Ok(Ended::Interrupted);
            }
            let size = config.batch_size;
            batch.fill(train, &order[state.step * size..(state.step + 1) * size]);
            let r = trainer.step(&batch.images, &batch.labels)?;
            clock.steps_done += 1;
            if !r.finite {
                bar.abandon();
                bail!(
                    "training diverged at epoch {}, step {}: the loss, a gradient or a weight is not \
                     finite, or the loss exploded (loss {:e}). The last good weights are in {} (if an \
                     epoch finished); try a smaller --lr",
                    epoch + 1,
                    state.step + 1,
                    r.loss,
                    self.out().join(LAST).display()
                );
            }
            state.step += 1;
            state.loss_sum += r.loss as f64 * size as f64;
            state.correct += r.correct as u64;
            state.seen += size as u64;
            let rate = ((state.step - first_step) * size) as f64
                / started.elapsed().as_secs_f64().max(1e-9);
            self.show_progress(&bar, state, rate, &clock.eta(state.epoch, state.step));
        }
        bar.finish_and_clear();
        Ok(Ended::Trained)
    }

    /// The bar's message after a step, or every 50 steps a line when the bar is hidden
    /// (stderr is not a terminal).
    fn show_progress(&self, bar: &ProgressBar, state: &LoopState, rate: f64, eta: &str) {
        let loss = state.loss_sum / state.seen as f64;
        let acc = state.correct as f64 / state.seen as f64;
        bar.set_message(format!(
            "loss {loss:.4} acc {acc:.4} {rate:.0} img/s  run ETA {eta}"
        ));
        bar.inc(1);
        if !self.req.quiet && bar.is_hidden() && state.step.is_multiple_of(50) {
            eprintln!(
                "  epoch {} step {}/{}: loss {loss:.4} acc {acc:.4}  run ETA {eta}",
                state.epoch + 1,
                state.step,
                self.steps()
            );
        }
    }

    /// Validate, report, keep the best weights, book the epoch and save the progress.
    /// The epoch's time (`seconds_before` from earlier sessions, plus this one's since
    /// `started`) includes validation; its images/s (over `train_seconds`) does not.
    fn end_epoch(
        &self,
        trainer: &Trainer,
        state: &mut LoopState,
        train_seconds: f64,
        seconds_before: f64,
        started: Instant,
        clock: &RunClock,
    ) -> Result<()> {
        let config = self.config;
        let v = eval::evaluate(
            &trainer.model,
            &self.data.val,
            &config.class_names,
            Tta::None,
        )?;
        let record = EpochRecord {
            epoch: state.epoch + 1,
            train_loss: state.loss_sum / state.seen as f64,
            train_acc: state.correct as f64 / state.seen as f64,
            val_loss: v.loss,
            val_acc: v.accuracy,
            seconds: seconds_before + started.elapsed().as_secs_f64(),
            images_per_s: state.seen as f64 / train_seconds.max(1e-9),
            lr: trainer.adam.config.lr,
        };
        let improved = state.best_val_loss.is_none_or(|b| v.loss < b);
        let left = if record.epoch < config.epochs {
            format!("  run ETA {}", clock.eta(state.epoch + 1, 0))
        } else {
            String::new()
        };
        self.log.say(format!(
            "epoch {:>3}/{}  {:6.1}s  {:5.0} img/s  loss {:.4}  acc {:.4}  val_loss {:.4}  val_acc {:.4}{}{left}",
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
            let tags = [
                ("epoch", record.epoch.to_string()),
                self.data.trained_on.entry()?,
            ];
            trainer
                .model
                .save(&self.out().join(BEST), &config.class_names, &tags)?;
        }
        for message in state.end_epoch(record, config) {
            self.log.say(message);
        }
        let epochs_done = state.epoch;
        save_progress(self.out(), trainer, state, config, self.data, epochs_done)?;
        if config.keep_epochs {
            let kept = self.out().join(epoch_file(epochs_done));
            std::fs::copy(self.out().join(LAST), &kept)
                .with_context(|| format!("cannot write {}", kept.display()))?;
        }
        Ok(())
    }

    /// The best weights on the test split: the table, test_metrics.json and the pictures.
    fn test_best(&self, gpu: &Gpu, state: &LoopState) -> Result<Outcome> {
        let (out, test) = (self.out(), &self.data.test);
        let (best, _) = Model::load(gpu, &out.join(BEST))?;
        let result = eval::evaluate(&best, test, &self.config.class_names, Tta::None)?;
        self.log.say(format!(
            "best epoch {} (val_loss {:.4}); test split:\n{}",
            state.best_epoch.unwrap_or(0),
            state.best_val_loss.unwrap_or(f64::NAN),
            result.table()
        ));
        write_atomic(
            &out.join("test_metrics.json"),
            serde_json::to_string_pretty(&result.to_json())?.as_bytes(),
        )?;
        write_pictures(out, test, &result)?;
        Ok(Outcome::Finished {
            test_accuracy: result.accuracy,
        })
    }
}

/// One training batch's buffers, refilled every step, and the epoch's augmentation.
struct Batch {
    pixels: Vec<u8>,
    images: Vec<f32>,
    labels: Vec<u8>,
    /// None with `--no-augment`.
    augmenter: Option<Augmenter>,
}

impl Batch {
    /// Buffers for `config.batch_size` faces; the augmentation stream of `epoch`, past the
    /// transforms its first `step` steps used (a resumed epoch draws what it would have).
    fn new(config: &RunConfig, epoch: usize, step: usize) -> Batch {
        let size = config.batch_size;
        let aug_config = AugmentConfig {
            horizontal_flip: config.flip,
            ..AugmentConfig::default()
        };
        let mut augmenter = Augmenter::new(aug_config, config.seed, epoch);
        for _ in 0..step * size {
            augmenter.draw();
        }
        Batch {
            pixels: vec![0u8; size * PIXELS],
            images: vec![0f32; size * PIXELS],
            labels: vec![0u8; size],
            augmenter: config.augment.then_some(augmenter),
        }
    }

    /// The faces `idx` of `train`, augmented unless `--no-augment`.
    fn fill(&mut self, train: &Dataset, idx: &[usize]) {
        for (j, &i) in idx.iter().enumerate() {
            self.pixels[j * PIXELS..(j + 1) * PIXELS].copy_from_slice(train.image(i));
            self.labels[j] = train.labels[i];
        }
        match &mut self.augmenter {
            Some(a) => a.augment_batch(&self.pixels, &mut self.images),
            None => to_f32(&self.pixels, &mut self.images),
        }
    }
}

/// The whole run's ETA, from the steps this process has run and the wall time they took
/// (validation included once an epoch has ended).
struct RunClock {
    started: Instant,
    steps_done: usize,
    /// Wall time up to the last epoch's end, and the steps it covered.
    at_epoch_end: Option<(f64, usize)>,
    steps_per_epoch: usize,
    epochs: usize,
}

impl RunClock {
    fn new(steps_per_epoch: usize, epochs: usize) -> RunClock {
        RunClock {
            started: Instant::now(),
            steps_done: 0,
            at_epoch_end: None,
            steps_per_epoch,
            epochs,
        }
    }

    fn mark_epoch_end(&mut self) {
        self.at_epoch_end = Some((self.started.elapsed().as_secs_f64(), self.steps_done));
    }

    /// Time left when the run stands at `step` of the 0-based `epoch` (early stopping
    /// may end it sooner).
    fn eta(&self, epoch: usize, step: usize) -> String {
        let (seconds, steps) = self
            .at_epoch_end
            .unwrap_or((self.started.elapsed().as_secs_f64(), self.steps_done));
        let left = (self.epochs.saturating_sub(epoch) * self.steps_per_epoch).saturating_sub(step);
        match run_eta(seconds, steps, left) {
            Some(s) => duration(s),
            None => "?".into(),
        }
    }
}

/// Seconds left for `left` steps at the pace of `steps` steps in `seconds`.
fn run_eta(seconds: f64, steps: usize, left: usize) -> Option<f64> {
    (steps > 0).then(|| seconds / steps as f64 * left as f64)
}

/// `1h 05m`, `41m 20s`, `35s`.
fn duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, min, sec) => format!("{min}m {sec:02}s"),
        (h, min, _) => format!("{h}h {min:02}m"),
    }
}

/// Check the output directory and return the run's config, and the topmost directory this
/// call created for it (None when `--out` existed): what a failed run may remove.
fn prepare_dir(req: &TrainRequest) -> Result<(RunConfig, Option<PathBuf>)> {
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
            _ => (saved, None),
        });
    }
    let mut config = req
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
    ensure!(
        config.data.exists(),
        "{}: no such file",
        config.data.display()
    );
    if let Some(init) = &config.init {
        ensure!(init.exists(), "--init {}: no such file", init.display());
        config.init_recipe = TrainedOn::read(init)?.map(|r| r.recipe);
    }
    let created = make_out_dir(out, req.force)?;
    Ok((config, created))
}

/// Create `out` (and its parents) for a fresh run and check that it can be written; with
/// `--force`, clear the old run's weights. Returns the topmost directory created.
fn make_out_dir(out: &Path, force: bool) -> Result<Option<PathBuf>> {
    // (A relative path's last ancestor is "", which never "exists".)
    let created = out
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .last()
        .map(Path::to_path_buf);
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create the output directory {}", out.display()))?;
    if force {
        for f in [RESUME, BEST, LAST, "history.csv", "test_metrics.json"] {
            let _ = std::fs::remove_file(out.join(f));
        }
        // An old run's epochs would otherwise be averaged with the new one's.
        let kept = std::fs::read_dir(out).into_iter().flatten().flatten();
        for entry in kept.filter(|e| is_epoch_file(&e.file_name().to_string_lossy())) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    // Fail now, not after an epoch, if the directory cannot be written.
    let probe = out.join(".wgfer-write-test");
    let writable = write_atomic(&probe, b"ok");
    let _ = std::fs::remove_file(probe);
    if let Err(e) = writable {
        remove_unfinished_dir(out, created.as_deref());
        return Err(e.context(format!(
            "the output directory {} is not writable",
            out.display()
        )));
    }
    Ok(created)
}

/// After a failed run: when no epoch saved weights, remove what the run wrote before its
/// first epoch and the directories it created (`created` is the topmost); never a file it
/// did not write, and nothing when the directory was there before.
fn remove_unfinished_dir(out: &Path, created: Option<&Path>) {
    let Some(created) = created else { return };
    if [RESUME, BEST, LAST].iter().any(|f| out.join(f).exists()) {
        return;
    }
    for f in [CONFIG, "samples.png"] {
        let _ = std::fs::remove_file(out.join(f));
    }
    // remove_dir only removes empty directories, so nothing else is lost.
    for dir in out.ancestors() {
        if std::fs::remove_dir(dir).is_err() || dir == created {
            break;
        }
    }
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
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} epoch ETA {eta}  {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("epoch {}/{}", epoch + 1, epochs));
    bar
}

/// The file `--keep-epochs` writes after `epoch` (1-based).
fn epoch_file(epoch: usize) -> String {
    format!("epoch-{epoch:03}.safetensors")
}

fn is_epoch_file(name: &str) -> bool {
    name.strip_prefix("epoch-")
        .and_then(|r| r.strip_suffix(".safetensors"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// `last.safetensors`, `resume.safetensors` (weights, Adam, loop state) and
/// the history, each written atomically; resume reads only resume.safetensors.
fn save_progress(
    out: &Path,
    trainer: &Trainer,
    state: &mut LoopState,
    config: &RunConfig,
    data: &RunData,
    epoch: usize,
) -> Result<()> {
    state.adam_t = trainer.adam.t;
    let trained_on = data.trained_on.entry()?;
    trainer.model.save(
        &out.join(LAST),
        &config.class_names,
        &[("epoch", epoch.to_string()), trained_on.clone()],
    )?;
    save_resume(out, trainer, state, config, trained_on)?;
    write_history(out, &state.history)
}

fn save_resume(
    out: &Path,
    trainer: &Trainer,
    state: &LoopState,
    config: &RunConfig,
    trained_on: (&str, String),
) -> Result<()> {
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
    meta.insert(trained_on.0.to_string(), trained_on.1);
    checkpoint::save(&out.join(RESUME), &tensors, &meta)
}

/// What `resume.safetensors` holds: the model, the loop state, Adam's moments m and v,
/// and the record of the data (None in files from before wgfer kept it).
type Resumed = (Model, LoopState, Vec<f32>, Vec<f32>, Option<TrainedOn>);

fn load_resume(gpu: &Gpu, path: &Path, arch: Architecture) -> Result<Resumed> {
    let len = arch.trainable_len;
    let mut expected = arch.expected_tensors();
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
    let (trainable, moving) = arch.scatter(&w.tensors);
    let n = w.tensors.len();
    let (m, v) = (w.tensors[n - 2].data.clone(), w.tensors[n - 1].data.clone());
    let trained_on = TrainedOn::from_metadata(&w.metadata, &path.display().to_string())?;
    Ok((
        Model::from_values(gpu, arch, &trainable, &moving)?,
        state,
        m,
        v,
        trained_on,
    ))
}

/// One row of `history.csv`, rounded as the file has always been.
#[derive(Serialize)]
struct HistoryRow {
    epoch: usize,
    #[serde(serialize_with = "decimals::<6, _>")]
    train_loss: f64,
    #[serde(serialize_with = "decimals::<6, _>")]
    train_acc: f64,
    #[serde(serialize_with = "decimals::<6, _>")]
    val_loss: f64,
    #[serde(serialize_with = "decimals::<6, _>")]
    val_acc: f64,
    #[serde(serialize_with = "decimals::<2, _>")]
    seconds: f64,
    #[serde(serialize_with = "decimals::<1, _>")]
    images_per_s: f64,
    #[serde(serialize_with = "scientific")]
    lr: f32,
}

/// `history.csv`'s header: written even before the first epoch ends (the
/// `csv` writer only writes a header with a first row). A test checks that it
/// matches [`HistoryRow`].
const HISTORY_HEADER: [&str; 8] = [
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "seconds",
    "images_per_s",
    "lr",
];

impl From<&EpochRecord> for HistoryRow {
    fn from(r: &EpochRecord) -> Self {
        HistoryRow {
            epoch: r.epoch,
            train_loss: r.train_loss,
            train_acc: r.train_acc,
            val_loss: r.val_loss,
            val_acc: r.val_acc,
            seconds: r.seconds,
            images_per_s: r.images_per_s,
            lr: r.lr,
        }
    }
}

fn decimals<const D: usize, S: serde::Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{v:.D$}"))
}

fn scientific<S: serde::Serializer>(v: &f32, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{v:e}"))
}

/// The history as CSV, header first.
fn history_csv(history: &[EpochRecord]) -> Result<Vec<u8>> {
    let mut csv = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(Vec::new());
    csv.write_record(HISTORY_HEADER)?;
    for r in history {
        csv.serialize(HistoryRow::from(r))?;
    }
    csv.into_inner()
        .map_err(|e| anyhow!("cannot write the history as CSV: {}", e.error()))
}

fn write_history(out: &Path, history: &[EpochRecord]) -> Result<()> {
    write_atomic(&out.join("history.csv"), &history_csv(history)?)?;
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
            cosine: false,
            arch: ArchKind::Tutorial,
            label_smoothing: 0.0,
            init: None,
            init_recipe: None,
            keep_epochs: false,
        }
    }

    #[test]
    fn the_cosine_schedule_falls_from_lr_towards_zero_once_per_epoch() {
        let mut c = config(20, None);
        assert_eq!(c.scheduled_lr(7), 1e-3, "constant without --cosine");
        c.cosine = true;
        let rates: Vec<f32> = (0..c.epochs).map(|e| c.scheduled_lr(e)).collect();
        assert_eq!(rates[0], 1e-3);
        assert!((rates[5] - 5e-4).abs() < 1e-9, "half way: {}", rates[5]);
        assert!(rates.windows(2).all(|w| w[1] < w[0]), "{rates:?}");
        assert!(
            rates[9] > 0.0 && rates[9] < 3e-5,
            "last epoch: {}",
            rates[9]
        );
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
            s.stopped_early(&c) && said[0].contains("early stopping"),
            "{said:?}"
        );
        assert_eq!(s.history.len(), 4);
        assert!(
            !s.stopped_early(&config(3, None)),
            "a larger patience continues the run"
        );
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

    #[test]
    fn history_csv_keeps_its_header_and_rounding() {
        let record = EpochRecord {
            epoch: 3,
            train_loss: 1.23456789,
            train_acc: 0.5,
            val_loss: f64::NAN,
            val_acc: 0.25,
            seconds: 12.345,
            images_per_s: 170.06,
            lr: 0.001,
        };
        let text = String::from_utf8(history_csv(std::slice::from_ref(&record)).unwrap()).unwrap();
        assert_eq!(
            text,
            "epoch,train_loss,train_acc,val_loss,val_acc,seconds,images_per_s,lr\n\
             3,1.234568,0.500000,NaN,0.250000,12.35,170.1,1e-3\n"
        );
        assert_eq!(
            String::from_utf8(history_csv(&[]).unwrap())
                .unwrap()
                .lines()
                .count(),
            1
        );
        // The fixed header is the one serde derives from the row.
        let mut derived = csv::Writer::from_writer(Vec::new());
        derived.serialize(HistoryRow::from(&record)).unwrap();
        let derived = String::from_utf8(derived.into_inner().unwrap()).unwrap();
        assert_eq!(derived.lines().next(), text.lines().next());
    }

    #[test]
    fn the_run_eta_counts_every_step_left() {
        // 100 steps took 50 s: 1,000 more take 500 s.
        assert_eq!(run_eta(50.0, 100, 1000), Some(500.0));
        assert_eq!(run_eta(5.0, 0, 10), None);
        let mut clock = RunClock::new(10, 3);
        clock.steps_done = 4;
        clock.at_epoch_end = Some((8.0, 4));
        // At step 6 of the second epoch (0-based 1): 4 + 10 steps left, 2 s each.
        assert_eq!(clock.eta(1, 6), "28s");
        assert_eq!(duration(41.0 * 60.0 + 7.0), "41m 07s");
        assert_eq!(duration(3600.0 + 5.0 * 60.0 + 30.0), "1h 05m");
    }
}
