//! The command line: one module per subcommand, each a clap `Args` struct and
//! a small `run` that calls into the tool (`wgfer::fer`). Nothing else lives here.

pub mod average;
pub mod bench;
pub mod convert;
pub mod eval;
pub mod export_web;
pub mod info;
pub mod predict;
pub mod serve;
pub mod summary;
pub mod train;

use std::process::ExitCode;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;
use clap::{Parser, Subcommand};

use wgfer::engine::Gpu;
use wgfer::fer::models::ModelChoice;

#[derive(Parser)]
#[command(
    name = "wgfer",
    version,
    about = "Facial-expression recognition (FER-2013) with a ResNet trained on hand-written WGSL kernels (wgpu).",
    long_about = "Facial-expression recognition (FER-2013) with a ResNet trained on hand-written WGSL kernels \
                  (wgpu: Vulkan, Metal, DX12, or a software Vulkan driver such as Mesa's lavapipe).\n\n\
                  Environment: WGPU_BACKEND (vulkan, metal, dx12, gl) limits the backends tried; \
                  WGPU_ADAPTER_NAME picks an adapter by name, like --adapter; \
                  WGFER_KERNELS=portable forces the kernels every GPU can run."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Print nothing but results and errors (no adapter notice, no progress).
    #[arg(long, short, global = true)]
    quiet: bool,
}

/// `--quiet`, for the few places that print notices (set once, before the command runs).
static QUIET: AtomicBool = AtomicBool::new(false);

/// Whether `-q/--quiet` was given.
pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

#[derive(Subcommand)]
enum Command {
    Train(train::Args),
    Eval(eval::Args),
    Predict(predict::Args),
    Summary(summary::Args),
    Bench(bench::Args),
    Serve(serve::Args),
    Info(info::Args),
    Convert(convert::Args),
    Average(average::Args),
    ExportWeb(export_web::Args),
}

impl Cli {
    pub fn run(self) -> Result<ExitCode> {
        QUIET.store(self.quiet, Ordering::Relaxed);
        match self.command {
            Command::Train(a) => train::run(a),
            Command::Eval(a) => eval::run(a),
            Command::Predict(a) => predict::run(a),
            Command::Summary(a) => summary::run(a),
            Command::Bench(a) => bench::run(a),
            Command::Serve(a) => serve::run(a),
            Command::Info(a) => info::run(a),
            Command::Convert(a) => convert::run(a),
            Command::Average(a) => average::run(a),
            Command::ExportWeb(a) => export_web::run(a),
        }
    }
}

/// The GPU, with a one-line notice on stderr when it is a software adapter (not with
/// `--quiet`).
pub fn open_gpu(adapter: Option<&str>) -> Result<Gpu> {
    let gpu = Gpu::new(adapter)?;
    if let Some(notice) = gpu.software_notice().filter(|_| !quiet()) {
        eprintln!("{notice}");
    }
    Ok(gpu)
}

/// `--model NAME|FILE`: a shipped model's name or a weights file (refused at parse time
/// with the shipped names when it is neither).
pub fn model_choice(s: &str) -> Result<ModelChoice, String> {
    ModelChoice::parse(s).map_err(|e| e.to_string())
}

// Parsers of numeric flags. Each flag that takes them also sets `allow_negative_numbers`,
// so that `--lr -1` reaches its parser (and gets the real reason) instead of being read
// as an unknown flag `-1`.

/// A whole number (`--seed`): refuses negatives and fractions by name.
pub fn whole<T: FromStr>(s: &str) -> Result<T, String> {
    whole_or(s, "a number of 0 or more")
}

/// A whole number, or the reason it is not, `expected` saying what is.
fn whole_or<T: FromStr>(s: &str, expected: &str) -> Result<T, String> {
    let t = s.trim();
    if t.starts_with('-') && t[1..].parse::<f64>().is_ok() {
        return Err(format!("{t} is negative; {expected} is expected"));
    }
    t.parse()
        .map_err(|_| format!("'{t}' is not a whole number; {expected} is expected"))
}

/// A count of at least 1 (`--epochs`, `--batch-size`, ...).
pub fn count(s: &str) -> Result<usize, String> {
    match whole_or::<usize>(s, "a count of at least 1")? {
        0 => Err("0 is too few; a count of at least 1 is expected".into()),
        n => Ok(n),
    }
}

/// A class count: 2 to 256 (labels are bytes, and one class is no classifier).
pub fn class_count(s: &str) -> Result<usize, String> {
    match whole_or::<usize>(s, "a class count from 2 to 256")? {
        n @ 2..=256 => Ok(n),
        n => Err(format!("{n} classes: the model needs 2 to 256")),
    }
}

/// A finite number above 0 (`--lr`).
pub fn positive(s: &str) -> Result<f32, String> {
    let t = s.trim();
    match t.parse::<f32>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        Ok(v) if v.is_finite() => Err(format!("{t} is not above 0; a positive number is expected")),
        Ok(_) => Err(format!("{t} is not a finite number")),
        Err(_) => Err(format!("'{t}' is not a number")),
    }
}

/// A fraction in [0, 1).
pub fn fraction(s: &str) -> Result<f32, String> {
    let t = s.trim();
    match t.parse::<f32>() {
        Ok(v) if (0.0..1.0).contains(&v) => Ok(v),
        Ok(_) => Err(format!("{t} is not in [0, 1)")),
        Err(_) => Err(format!("'{t}' is not a number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_flags_refuse_with_the_reason() {
        assert_eq!(whole::<u64>("7"), Ok(7));
        assert!(whole::<u64>("-1").unwrap_err().contains("negative"));
        assert!(whole::<u64>("1.5").unwrap_err().contains("whole number"));
        assert_eq!(count("3"), Ok(3));
        assert!(count("0").unwrap_err().contains("at least 1"));
        assert!(count("-2").unwrap_err().contains("negative"));
        assert_eq!(class_count("7"), Ok(7));
        assert!(class_count("0").unwrap_err().contains("2 to 256"));
        assert!(class_count("1").is_err() && class_count("257").is_err());
        assert_eq!(positive("1e-3"), Ok(1e-3));
        assert!(positive("-1").unwrap_err().contains("not above 0"));
        assert!(positive("0").is_err() && positive("inf").is_err() && positive("x").is_err());
    }
}
