//! `wgfer average`: the mean of several weights files (stochastic weight averaging).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use wgfer::fer::average;

/// Average the weights of one run's epochs (stochastic weight averaging).
///
/// Go on training a model at a constant learning rate, keeping each epoch
/// (`train --init MODEL --lr 2e-4 --keep-epochs ...`), then average those epochs'
/// files: the mean usually scores better than any one of them.
/// The files must share the layer graph, the classes and the training data;
/// batch-norm moving statistics are averaged too. Score the result with
/// `wgfer eval --model FILE --split validation` before you prefer it.
#[derive(clap::Args)]
pub struct Args {
    /// The weights files to average (two or more).
    #[arg(value_name = "FILE", num_args = 2.., required = true)]
    files: Vec<PathBuf>,
    /// Where to write the averaged weights.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let averaged = average::average(&a.files)?;
    averaged.save(&a.out)?;
    if !super::quiet() {
        eprintln!(
            "wrote {}: the mean of {} `{}` models",
            a.out.display(),
            a.files.len(),
            averaged.arch.kind.name()
        );
    }
    Ok(ExitCode::SUCCESS)
}
