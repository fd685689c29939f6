//! The command line: one module per subcommand, each a clap `Args` struct and
//! a small `run` that calls into the tool (`wgfer::fer`). Nothing else lives here.

pub mod bench;
pub mod eval;
pub mod export_web;
pub mod info;
pub mod predict;
pub mod summary;
pub mod train;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};

use wgfer::engine::Gpu;

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
}

#[derive(Subcommand)]
enum Command {
    Train(train::Args),
    Eval(eval::Args),
    Predict(predict::Args),
    Summary(summary::Args),
    Bench(bench::Args),
    Info(info::Args),
    ExportWeb(export_web::Args),
}

impl Cli {
    pub fn run(self) -> Result<ExitCode> {
        match self.command {
            Command::Train(a) => train::run(a),
            Command::Eval(a) => eval::run(a),
            Command::Predict(a) => predict::run(a),
            Command::Summary(a) => summary::run(a),
            Command::Bench(a) => bench::run(a),
            Command::Info(a) => info::run(a),
            Command::ExportWeb(a) => export_web::run(a),
        }
    }
}

/// Test-time augmentation.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum Tta {
    /// The image alone.
    None,
    /// Average the prediction over the image and its mirror.
    Flip,
}

/// The GPU, with a one-line notice on stderr when it is a software adapter.
pub fn open_gpu(adapter: Option<&str>) -> Result<Gpu> {
    let gpu = Gpu::new(adapter)?;
    if let Some(notice) = gpu.software_notice() {
        eprintln!("{notice}");
    }
    Ok(gpu)
}
