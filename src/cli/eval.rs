//! `wgfer eval`: metrics of weights on labelled faces.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use super::{class_count, model_choice, open_gpu, whole};
use wgfer::fer::data::{self, DataFingerprint, Dataset, LoadOptions, SplitName};
use wgfer::fer::eval;
use wgfer::fer::infer::Tta;
use wgfer::fer::model::Model;
use wgfer::fer::models::{self, ModelChoice, ResolvedModel};
use wgfer::fer::provenance::TrainedOn;
use wgfer::fer::train::{self, RunConfig};

/// Evaluate weights on labelled faces: loss, accuracy, per-class precision / recall / F1, confusion matrix.
#[derive(clap::Args)]
pub struct Args {
    /// The model: `fer5` (the tutorial's 5 classes), `fer7` (FER-2013's 7), or a weights
    /// FILE. Default: DIR/best.safetensors with --run, else the shipped model with the data's
    /// classes (fer5 for the tutorial's file, fer7 for Kaggle's layout); WGFER_MODEL replaces
    /// that default.
    #[arg(long, visible_alias = "weights", value_name = "NAME|FILE", value_parser = model_choice)]
    model: Option<ModelChoice>,
    /// Labelled faces: a CSV, gzipped or not, or a tar(.gz) archive holding one.
    #[arg(long, value_name = "FILE", required_unless_present = "run")]
    data: Option<PathBuf>,
    /// A training run's directory: evaluate on that run's own split of its data.
    #[arg(long, value_name = "DIR")]
    run: Option<PathBuf>,
    /// Which part of the data (default: test with --run, all rows otherwise).
    #[arg(long, value_enum)]
    split: Option<SplitName>,
    /// Seed of the split when --split is used without --run.
    #[arg(long, default_value_t = 0, value_parser = whole::<u64>, allow_negative_numbers = true)]
    seed: u64,
    /// The data's number of classes, when its labels are the weights' class numbers
    /// although the file looks otherwise (default: from the file: its largest label + 1,
    /// at least 5, or 7 with a Usage column). Weights and data with other classes are refused.
    #[arg(long, value_name = "N", value_parser = class_count, allow_negative_numbers = true)]
    classes: Option<usize>,
    /// Test-time augmentation.
    #[arg(long, value_enum, default_value_t = Tta::None)]
    tta: Tta,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
    /// Also write confusion.png and predictions.png into DIR.
    #[arg(long, value_name = "DIR")]
    pictures: Option<PathBuf>,
    /// Skip (and count) malformed CSV rows.
    #[arg(long)]
    skip_bad_rows: bool,
    /// Adapter to use: a case-insensitive part of its name (see `wgfer info`).
    #[arg(long, value_name = "NAME")]
    adapter: Option<String>,
}

/// What to evaluate: the data, which part of it, how to read it, and the weights
/// (None: the shipped model with the data's classes, unless WGFER_MODEL says).
struct Target {
    data: PathBuf,
    split: SplitName,
    seed: u64,
    opts: LoadOptions,
    model: Option<ModelChoice>,
}

/// `--run DIR` takes the run's data, seed and best weights; otherwise the flags
/// (and the data's classes) say it all.
fn target(a: &Args) -> Result<Target> {
    if let Some(dir) = &a.run {
        let cfg = RunConfig::read(dir)?;
        return Ok(Target {
            data: a.data.clone().unwrap_or_else(|| cfg.data.clone()),
            split: a.split.unwrap_or(SplitName::Test),
            seed: cfg.seed,
            opts: cfg.load_options(),
            model: Some(
                a.model
                    .clone()
                    .unwrap_or_else(|| ModelChoice::File(dir.join("best.safetensors"))),
            ),
        });
    }
    Ok(Target {
        data: a.data.clone().context("--data is required without --run")?,
        split: a.split.unwrap_or(SplitName::All),
        seed: a.seed,
        opts: LoadOptions {
            skip_bad_rows: a.skip_bad_rows,
            ..LoadOptions::default()
        },
        model: a.model.clone(),
    })
}

pub fn run(a: Args) -> Result<ExitCode> {
    let t = target(&a)?;
    if let Some(dir) = a.run.as_ref().filter(|_| a.model.is_none()) {
        check_an_epoch_finished(dir)?;
    }
    let (mut ds, fingerprint) = load_data(&a, &t)?;
    let weights = models::choose(t.model.as_ref(), || {
        ModelChoice::with_classes(ds.num_classes)
    })?;
    let gpu = open_gpu(a.adapter.as_deref())?;
    let (model, class_names) = Model::load(&gpu, &weights.path)?;
    match_classes(&a, &t, &weights, &mut ds, &class_names)?;
    let overlap = overlap_with_training(&t, &weights.path, &ds, &fingerprint)?;
    let ds = data::select(ds, t.split, t.seed)?;
    if ds.is_empty() {
        bail!("no faces to evaluate in {}", t.data.display());
    }
    let e = eval::evaluate(&model, &ds, &class_names, a.tta)?;
    if a.json {
        let mut j = serde_json::to_value(e.to_json())?;
        // true / false, or null when the weights do not record their training data.
        j["overlaps_training"] = overlap.map(|o| o.is_some()).into();
        j["model"] = weights.name.clone().into();
        println!("{j}");
    } else {
        println!(
            "model {} ({})\ndata {} ({:?} split)   adapter {}\n{}",
            weights.name,
            weights.path.display(),
            t.data.display(),
            t.split,
            gpu.adapter(),
            e.table()
        );
    }
    if let Some(dir) = a.pictures {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        train::write_pictures(&dir, &ds, &e)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `--run DIR` of a run stopped before its first epoch ended has no best weights yet: say
/// so, and what to do, instead of "cannot read the weights file".
fn check_an_epoch_finished(dir: &Path) -> Result<()> {
    let (best, last) = (dir.join("best.safetensors"), dir.join("last.safetensors"));
    if best.exists() || !dir.join("resume.safetensors").exists() {
        return Ok(());
    }
    bail!(
        "no epoch of the run in {} has finished yet, so it has no best weights ({}). Continue it \
         with `wgfer train --resume {}`{}",
        dir.display(),
        best.display(),
        dir.display(),
        if last.exists() {
            format!(
                ", or evaluate its unfinished weights with `--model {}`",
                last.display()
            )
        } else {
            String::new()
        }
    )
}

/// The class count declared by --classes, or by the run's own --classes with --run.
fn declared_classes(a: &Args, t: &Target) -> Option<usize> {
    a.classes.or(t.opts.classes)
}

/// The data (its labels read as the declared class count, if any) and its fingerprint.
fn load_data(a: &Args, t: &Target) -> Result<(Dataset, DataFingerprint)> {
    let opts = LoadOptions {
        classes: declared_classes(a, t),
        ..t.opts.clone()
    };
    data::load_csv_fingerprinted(&t.data, &opts)
}

/// Refuse data whose classes are not the weights' (unless `--classes` says they
/// are); then score over the weights' classes.
fn match_classes(
    a: &Args,
    t: &Target,
    weights: &ResolvedModel,
    ds: &mut Dataset,
    class_names: &[String],
) -> Result<()> {
    match declared_classes(a, t) {
        Some(n) if n != class_names.len() => bail!(
            "--classes {n}, but the weights have {} classes ({})",
            class_names.len(),
            class_names.join(", ")
        ),
        Some(_) => {}
        None => data::check_classes(class_names, ds)
            .with_context(|| format!("{} and {}", weights.path.display(), t.data.display()))?,
    }
    // Every label is below the weights' count now: score over the weights' classes.
    ds.num_classes = class_names.len();
    Ok(())
}

/// Whether the faces to score include the model's training faces: `Some(reason)` when
/// they do (said on stderr with the fix), `Some(None)` when not, `None` when the weights do
/// not record what they were trained on.
fn overlap_with_training(
    t: &Target,
    weights: &Path,
    ds: &Dataset,
    fingerprint: &DataFingerprint,
) -> Result<Option<Option<String>>> {
    let Some(trained_on) = TrainedOn::read(weights)? else {
        return Ok(None);
    };
    let overlap = trained_on.overlap(fingerprint, ds.len(), t.split, t.seed);
    if let Some(why) = overlap.as_ref().filter(|_| !super::quiet()) {
        eprintln!(
            "warning: {} was trained on {}, and {why}: the scores are optimistic. Score its \
             held-out faces with {}",
            weights.display(),
            t.data.display(),
            trained_on.fix(ds.len())
        );
    }
    Ok(Some(overlap))
}
