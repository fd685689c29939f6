//! `wgfer export-web`: the browser page with the model, as a static site.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

use super::{model_choice, quiet};
use wgfer::engine::{Gpu, Kernels};
use wgfer::fer::model::Model;
use wgfer::fer::models::{self, FER7, ModelChoice};
use wgfer::fer::web;

/// Write the browser page (webcam and photo classification on the visitor's own GPU through
/// WebGPU) to a folder that any static web server can serve.
#[derive(clap::Args)]
pub struct Args {
    /// Folder to write the site to (created if missing; files of the same names are replaced).
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    /// The model: `fer7` (FER-2013's 7 classes, neutral included: the default, made for
    /// webcams and photos), `fer5` (the tutorial's 5 classes), or a weights FILE.
    /// WGFER_MODEL replaces the default.
    #[arg(long, visible_alias = "weights", value_name = "NAME|FILE", value_parser = model_choice)]
    model: Option<ModelChoice>,
    /// Batch sizes to record the inference pass at (one plan file each).
    #[arg(long, value_name = "N,N", value_delimiter = ',', default_values_t = [1, 32])]
    batch: Vec<usize>,
    /// Adapter to record on: a case-insensitive part of its name (see `wgfer info`).
    #[arg(long, value_name = "NAME")]
    adapter: Option<String>,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let chosen = models::choose(a.model.as_ref(), || ModelChoice::named(FER7))?;
    // A browser may lack subgroups (and has its own widths): record the
    // kernels every adapter runs, whatever this one offers.
    let gpu = Gpu::with_kernels(a.adapter.as_deref(), Kernels::Portable)?;
    if let Some(notice) = gpu.software_notice().filter(|_| !quiet()) {
        eprintln!("{notice}");
    }
    let (model, class_names) = Model::load(&gpu, &chosen.path)?;
    let files = web::site(&model, &chosen.name, &class_names, &a.batch)?;
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let mut total = 0;
    for f in &files {
        let path = a.dir.join(&f.path);
        std::fs::write(&path, &f.bytes).with_context(|| format!("writing {}", path.display()))?;
        total += f.bytes.len();
    }
    println!(
        "wrote {} files ({:.1} MB, model {}) to {}; serve that folder with any static web server and \
         open index.html",
        files.len(),
        total as f64 / 1e6,
        chosen.name,
        a.dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
