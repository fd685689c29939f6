//! `wgfer eval`: metrics of weights on labelled faces.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use super::{Tta, class_count, open_gpu, whole};
use wgfer::fer::data::{self, DataFingerprint, Dataset, LoadOptions, SplitName};
use wgfer::fer::model::Model;
use wgfer::fer::provenance::TrainedOn;
use wgfer::fer::train::{self, RunConfig};
use wgfer::fer::{eval, predict};

/// Evaluate weights on labelled faces: loss, accuracy, per-class precision / recall / F1, confusion matrix.
#[derive(clap::Args)]
pub struct Args {
    /// Weights file (default: DIR/best.safetensors with --run, else the shipped models/fer5.safetensors).
    #[arg(long, value_name = "FILE")]
    weights: Option<PathBuf>,
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

/// What to evaluate: the data, which part of it, how to read it, and the weights.
struct Target {
    data: PathBuf,
    split: SplitName,
    seed: u64,
    opts: LoadOptions,
    weights: PathBuf,
}

/// `--run DIR` takes the run's data, seed and best weights; otherwise the flags
/// (and the shipped model) say it all.
fn target(a: &Args) -> Result<Target> {
    if let Some(dir) = &a.run {
        let cfg = RunConfig::read(dir)?;
        return Ok(Target {
            data: a.data.clone().unwrap_or_else(|| cfg.data.clone()),
            split: a.split.unwrap_or(SplitName::Test),
            seed: cfg.seed,
            opts: cfg.load_options(),
            weights: a
                .weights
                .clone()
                .unwrap_or_else(|| dir.join("best.safetensors")),
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
        weights: match &a.weights {
            Some(w) => w.clone(),
            None => predict::default_weights()?,
        },
    })
}

pub fn run(a: Args) -> Result<ExitCode> {
    let t = target(&a)?;
    if let Some(dir) = a.run.as_ref().filter(|_| a.weights.is_none()) {
        check_an_epoch_finished(dir)?;
    }
    let gpu = open_gpu(a.adapter.as_deref())?;
    let (model, class_names) = Model::load(&gpu, &t.weights)?;
    let (ds, fingerprint) = load_data(&a, &t, &class_names)?;
    let overlap = overlap_with_training(&t, &ds, &fingerprint)?;
    let ds = data::select(ds, t.split, t.seed)?;
    if ds.is_empty() {
        bail!("no faces to evaluate in {}", t.data.display());
    }
    let e = eval::evaluate(&model, &ds, &class_names, a.tta == Tta::Flip)?;
    if a.json {
        let mut j = serde_json::to_value(e.to_json())?;
        // true / false, or null when the weights do not record their training data.
        j["overlaps_training"] = overlap.map(|o| o.is_some()).into();
        println!("{j}");
    } else {
        println!(
            "weights {}\ndata {} ({:?} split)   adapter {}\n{}",
            t.weights.display(),
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
fn check_an_epoch_finished(dir: &std::path::Path) -> Result<()> {
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
                ", or evaluate its unfinished weights with `--weights {}`",
                last.display()
            )
        } else {
            String::new()
        }
    )
}

/// The data and its fingerprint, refused when its classes are not the weights'
/// (unless `--classes` says they are).
fn load_data(a: &Args, t: &Target, weights: &[String]) -> Result<(Dataset, DataFingerprint)> {
    // The count declared by --classes, or by the run's own --classes with --run.
    let declared = a.classes.or(t.opts.classes);
    let opts = LoadOptions {
        classes: declared,
        ..t.opts.clone()
    };
    let (mut ds, fingerprint) = data::load_csv_fingerprinted(&t.data, &opts)?;
    match declared {
        Some(n) if n != weights.len() => bail!(
            "--classes {n}, but the weights have {} classes ({})",
            weights.len(),
            weights.join(", ")
        ),
        Some(_) => {}
        None => data::check_classes(weights, &ds)
            .with_context(|| format!("{} and {}", t.weights.display(), t.data.display()))?,
    }
    // Every label is below the weights' count now: score over the weights' classes.
    ds.num_classes = weights.len();
    Ok((ds, fingerprint))
}

/// Whether the faces to score include the model's training faces: `Some(reason)` when
/// they do (said on stderr with the fix), `Some(None)` when not, `None` when the weights do
/// not record what they were trained on.
fn overlap_with_training(
    t: &Target,
    ds: &Dataset,
    fingerprint: &DataFingerprint,
) -> Result<Option<Option<String>>> {
    let Some(trained_on) = TrainedOn::read(&t.weights)? else {
        return Ok(None);
    };
    let overlap = trained_on.overlap(fingerprint, ds.len(), t.split, t.seed);
    if let Some(why) = overlap.as_ref().filter(|_| !super::quiet()) {
        eprintln!(
            "warning: {} was trained on {}, and {why}: the scores are optimistic. Score its \
             held-out faces with {}",
            t.weights.display(),
            t.data.display(),
            trained_on.fix(ds.len())
        );
    }
    Ok(Some(overlap))
}
