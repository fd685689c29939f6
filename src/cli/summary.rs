//! `wgfer summary`: the layer table, as Keras' `model.summary()`.

use std::process::ExitCode;

use anyhow::Result;

use wgfer::fer::model::Architecture;

/// Print the model's layers and parameter counts, as Keras' model.summary().
#[derive(clap::Args)]
pub struct Args {
    /// Number of output classes (2 to 256).
    #[arg(long, default_value_t = 5, value_parser = super::class_count, allow_negative_numbers = true)]
    classes: usize,
}

pub fn run(a: Args) -> Result<ExitCode> {
    print!("{}", Architecture::resnet(a.classes).summary());
    Ok(ExitCode::SUCCESS)
}
