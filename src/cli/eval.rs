//! `wgfer eval`: metrics of weights on labelled faces.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use super::{Tta, open_gpu};
use wgfer::fer::data::{self, LoadOptions, SplitName};
use wgfer::fer::model::Model;
use wgfer::fer::train::{self, RunConfig};
use wgfer::fer::{eval, predict};

/// Evaluate weights on labelled faces: loss, accuracy, per-class precision / recall / F1, confusion matrix.
#[derive(clap::Args)]
pub struct Args {
    /// Weights file (default: DIR/best.safetensors with --run, else the shipped models/fer5.safetensors).
    #[arg(long, value_name = "FILE")]
    weights: Option<PathBuf>,
    /// A CSV of labelled faces.
    #[arg(long, value_name = "FILE", required_unless_present = "run")]
    data: Option<PathBuf>,
    /// A training run's directory: evaluate on that run's own split of its data.
    #[arg(long, value_name = "DIR")]
    run: Option<PathBuf>,
    /// Which part of the data (default: test with --run, all rows otherwise).
    #[arg(long, value_enum)]
    split: Option<SplitName>,
    /// Seed of the split when --split is used without --run.
    #[arg(long, default_value_t = 0)]
    seed: u64,
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
    let gpu = open_gpu(a.adapter.as_deref())?;
    let (model, class_names) = Model::load(&gpu, &t.weights)?;
    let opts = LoadOptions {
        classes: Some(model.arch.num_classes),
        ..t.opts
    };
    let ds = data::select(data::load_csv(&t.data, &opts)?, t.split, t.seed)?;
    if ds.is_empty() {
        bail!("no faces to evaluate in {}", t.data.display());
    }
    let e = eval::evaluate(&model, &ds, &class_names, a.tta == Tta::Flip)?;
    if a.json {
        println!("{}", serde_json::to_string(&e.to_json())?);
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
