//! `wgfer summary`: the layer table, as Keras' `model.summary()`.

use std::process::ExitCode;

use anyhow::Result;

use super::model_choice;
use wgfer::fer::model::{self, ArchKind, Architecture};
use wgfer::fer::models::ModelChoice;

/// Print the model's layers and parameter counts, as Keras' model.summary().
///
/// Without --model: the layer graph --arch builds for --classes classes. With --model: the graph
/// of that weights file (its `arch` and `classes` metadata; the values are not read).
#[derive(clap::Args)]
pub struct Args {
    /// Number of output classes (2 to 256).
    #[arg(long, default_value_t = 5, value_parser = super::class_count, allow_negative_numbers = true)]
    classes: usize,
    /// The layer graph: `tutorial` (the tutorial's ResNet) or `fine` (no stem max-pool, half
    /// as wide; see `wgfer train --help`).
    #[arg(long, value_enum, default_value_t = ArchKind::Tutorial, conflicts_with = "model")]
    arch: ArchKind,
    /// A shipped model (`fer5`, `fer7`) or a weights FILE: print its layer graph.
    #[arg(long, value_name = "NAME|FILE", value_parser = model_choice, conflicts_with = "classes")]
    model: Option<ModelChoice>,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let arch = match &a.model {
        Some(choice) => model::describe(&choice.resolve()?.path)?.0,
        None => Architecture::of_kind(a.arch, a.classes),
    };
    print!("{}", arch.summary());
    Ok(ExitCode::SUCCESS)
}
