//! `wgfer bench`: every kernel at the model's shapes, the training step and inference.

use std::process::ExitCode;

use anyhow::Result;

use super::{count, open_gpu};
use wgfer::fer::bench;
use wgfer::fer::model::ArchKind;

/// Time the real training step and inference pass, and profile every kernel in them.
#[derive(clap::Args)]
pub struct Args {
    /// Training batch size.
    #[arg(long, default_value_t = 64, value_parser = count, allow_negative_numbers = true)]
    batch_size: usize,
    /// Inference batch size.
    #[arg(long, default_value_t = 256, value_parser = count, allow_negative_numbers = true)]
    infer_batch_size: usize,
    /// Timed repetitions per figure (the median is reported).
    #[arg(long, default_value_t = 5, value_parser = count, allow_negative_numbers = true)]
    reps: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// The layer graph to time: `tutorial` (the tutorial's ResNet, what PyTorch's peer script runs)
    /// or `fine` (see `wgfer train --help`).
    #[arg(long, value_enum, default_value_t = ArchKind::Tutorial)]
    arch: ArchKind,
    /// Adapter to use: a case-insensitive part of its name (see `wgfer info`).
    #[arg(long, value_name = "NAME")]
    adapter: Option<String>,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let gpu = open_gpu(a.adapter.as_deref())?;
    let report = bench::run(
        &gpu,
        a.arch,
        a.batch_size,
        a.infer_batch_size,
        a.reps,
        !a.json,
    )?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(ExitCode::SUCCESS)
}
