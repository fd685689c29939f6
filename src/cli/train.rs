//! `wgfer train`: train the tutorial's ResNet, or resume a run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result};

use super::{class_count, count, fraction, positive, whole};
use wgfer::fer::data;
use wgfer::fer::model::ArchKind;
use wgfer::fer::train::{self, RunConfig, TrainRequest};

/// Train the tutorial's ResNet with its recipe (Adam, batch 64, 20 epochs, augmentation).
///
/// Writes into DIR: best.safetensors (lowest validation loss), last.safetensors,
/// resume.safetensors (everything needed to continue), config.json, history.csv,
/// history.png, samples.png, and after training test_metrics.json, confusion.png
/// and predictions.png for the test split. Ctrl-C saves and stops; --resume DIR continues.
#[derive(clap::Args)]
pub struct Args {
    /// The CSV: `emotion, pixels` (the tutorial's file) or Kaggle's fer2013.csv with a Usage column.
    #[arg(long, value_name = "FILE", required_unless_present = "resume")]
    data: Option<PathBuf>,
    /// The run directory for weights, history and pictures.
    #[arg(long, value_name = "DIR", required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// Continue the interrupted (or finished, with more --epochs; or early
    /// stopped, with a larger --patience) run in DIR.
    #[arg(long, value_name = "DIR", conflicts_with = "out")]
    resume: Option<PathBuf>,
    /// Overwrite a run already in --out.
    #[arg(long)]
    force: bool,
    /// Training epochs.
    #[arg(long, default_value_t = 20, value_parser = count, allow_negative_numbers = true)]
    epochs: usize,
    /// Images per training step.
    #[arg(long, default_value_t = 64, value_parser = count, allow_negative_numbers = true)]
    batch_size: usize,
    /// Adam's learning rate (Keras' default).
    #[arg(long, default_value_t = 1e-3, value_parser = positive, allow_negative_numbers = true)]
    lr: f32,
    /// Seed of the split, the initial weights, the data order and the augmentation.
    #[arg(long, default_value_t = 0, value_parser = whole::<u64>, allow_negative_numbers = true)]
    seed: u64,
    /// Stop after this many epochs without a better validation loss (with
    /// --resume: replaces the run's, so a larger one continues a run it stopped).
    #[arg(long, default_value_t = 20, value_parser = count, allow_negative_numbers = true)]
    patience: usize,
    /// Halve the learning rate after N epochs without a better validation
    /// loss (Keras' ReduceLROnPlateau; down to 1e-5). Off by default, as in the tutorial.
    #[arg(long, value_name = "N", value_parser = count, allow_negative_numbers = true)]
    reduce_lr_patience: Option<usize>,
    /// Lower the learning rate along a half cosine from --lr towards 0 over
    /// the --epochs (once per epoch). Not with --reduce-lr-patience.
    #[arg(long, conflicts_with = "reduce_lr_patience")]
    cosine: bool,
    /// The layer graph: `tutorial` (the tutorial's ResNet) or `fine` (the
    /// same blocks without the stem's max-pool, half as wide: 48 → 24 → 12 → 6
    /// pixels, about twice the tutorial's work per image).
    #[arg(long, value_enum, default_value_t = ArchKind::Tutorial)]
    arch: ArchKind,
    /// Label smoothing: train towards 1 - E + E/K on the true class and E/K on
    /// each of the K classes (0 = one-hot, the tutorial's). Validation and test
    /// loss stay plain cross-entropy on the true labels.
    #[arg(long, value_name = "E", default_value_t = 0.0, value_parser = fraction)]
    label_smoothing: f32,
    /// Start from these weights (a model file: `fer5`, `fer7`'s path, a run's
    /// best.safetensors) instead of seeded random ones: a fine-tune. Its layer
    /// graph and classes must be the run's (--arch, the data's classes); Adam
    /// starts afresh.
    #[arg(long, value_name = "FILE", conflicts_with = "resume")]
    init: Option<PathBuf>,
    /// Also keep each epoch's weights as epoch-001.safetensors, epoch-002... in
    /// the run directory (for `wgfer average`).
    #[arg(long)]
    keep_epochs: bool,
    /// Train on the images as they are (no rotation, shift, shear or zoom).
    #[arg(long)]
    no_augment: bool,
    /// Also mirror images at random (off in the tutorial).
    #[arg(long)]
    flip: bool,
    /// Number of classes (default: from the data: 5 for the tutorial's file, 7 for fer2013.csv).
    #[arg(long, value_parser = class_count, allow_negative_numbers = true)]
    classes: Option<usize>,
    /// Class names, comma-separated (default: the tutorial's five or FER-2013's seven).
    #[arg(long, value_name = "A,B,...")]
    class_names: Option<String>,
    /// Skip (and count) malformed CSV rows instead of stopping at the first.
    #[arg(long)]
    skip_bad_rows: bool,
    /// Read at most this many rows of the CSV.
    #[arg(long, value_name = "N", value_parser = count, allow_negative_numbers = true)]
    limit: Option<usize>,
    /// At most this many steps per epoch (for quick runs).
    #[arg(long, value_name = "N", value_parser = count, allow_negative_numbers = true)]
    steps_per_epoch: Option<usize>,
    /// Adapter to use: a case-insensitive part of its name (see `wgfer info`).
    #[arg(long, value_name = "NAME")]
    adapter: Option<String>,
    /// Testing aid: behave as if Ctrl-C came after N steps.
    #[arg(long, value_name = "N", hide = true, value_parser = whole::<usize>, allow_negative_numbers = true)]
    interrupt_after: Option<usize>,
}

impl Args {
    /// The run's settings from the flags; None when resuming without --data.
    fn config(&self) -> Result<Option<RunConfig>> {
        let class_names = match (&self.class_names, self.classes) {
            (Some(s), Some(n)) => data::parse_class_names(s, n)?,
            (Some(s), None) => s.split(',').map(|c| c.trim().to_string()).collect(),
            _ => vec![],
        };
        Ok(self.data.clone().map(|data| RunConfig {
            data,
            epochs: self.epochs,
            batch_size: self.batch_size,
            lr: self.lr,
            seed: self.seed,
            patience: self.patience,
            augment: !self.no_augment,
            flip: self.flip,
            classes: self
                .classes
                .or((!class_names.is_empty()).then_some(class_names.len())),
            class_names,
            skip_bad_rows: self.skip_bad_rows,
            limit: self.limit,
            steps_per_epoch: self.steps_per_epoch,
            reduce_lr_patience: self.reduce_lr_patience,
            cosine: self.cosine,
            arch: self.arch,
            label_smoothing: self.label_smoothing,
            init: self.init.clone(),
            init_recipe: None,
            keep_epochs: self.keep_epochs,
        }))
    }
}

pub fn run(a: Args) -> Result<ExitCode> {
    let config = a.config()?;
    let resuming = a.resume.is_some();
    let given =
        |flag: &str| std::env::args().any(|s| s == flag || s.starts_with(&format!("{flag}=")));
    install_ctrlc()?;
    let outcome = train::run(TrainRequest {
        out: a
            .resume
            .or(a.out)
            .context("--out or --resume is required")?,
        config,
        resume: resuming,
        force: a.force,
        adapter: a.adapter,
        quiet: super::quiet(),
        epochs_override: (resuming && given("--epochs")).then_some(a.epochs),
        patience_override: (resuming && given("--patience")).then_some(a.patience),
        interrupt_after: a.interrupt_after,
    })?;
    Ok(match outcome {
        train::Outcome::Finished { .. } => ExitCode::SUCCESS,
        train::Outcome::Interrupted => ExitCode::from(130),
    })
}

/// The first Ctrl-C asks the loop to save and stop; a second quits at once.
fn install_ctrlc() -> Result<()> {
    ctrlc::set_handler(|| {
        if train::INTERRUPTED.swap(true, Ordering::Relaxed) {
            eprintln!("\ninterrupted twice: exiting without saving");
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: saving after this step (press Ctrl-C again to quit at once)");
    })
    .context("cannot install the Ctrl-C handler")
}
