//! `wgfer predict`: class probabilities for face images and CSV rows.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};

use super::{Tta, open_gpu};
use wgfer::fer::model::Model;
use wgfer::fer::predict;

/// Classify face images (PNG or JPEG, any size; made grayscale 48×48) or the rows of CSV files.
#[derive(clap::Args)]
pub struct Args {
    /// Images and/or CSV files.
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<PathBuf>,
    /// Weights file (default: the shipped models/fer5.safetensors).
    #[arg(long, value_name = "FILE")]
    weights: Option<PathBuf>,
    /// Test-time augmentation.
    #[arg(long, value_enum, default_value_t = Tta::None)]
    tta: Tta,
    /// Print a JSON array instead of lines.
    #[arg(long)]
    json: bool,
    /// Adapter to use: a case-insensitive part of its name (see `wgfer info`).
    #[arg(long, value_name = "NAME")]
    adapter: Option<String>,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let weights = match a.weights {
        Some(w) => w,
        None => predict::default_weights()?,
    };
    let (faces, errors) = predict::gather(&a.inputs);
    for e in &errors {
        eprintln!("error: {e}");
    }
    if faces.is_empty() {
        bail!("none of the inputs could be read");
    }
    let gpu = open_gpu(a.adapter.as_deref())?;
    let (model, class_names) = Model::load(&gpu, &weights)?;
    let answers = predict::run(&model, &faces, a.tta == Tta::Flip)?;
    if a.json {
        let list: Vec<_> = answers.iter().map(|p| p.to_json(&class_names)).collect();
        println!("{}", serde_json::Value::Array(list));
    } else {
        for p in &answers {
            println!("{}", p.line(&class_names));
        }
    }
    Ok(if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
