//! The browser page as a static site: the page and its WebGPU player
//! (`web/`, embedded in the binary), the recorded inference pass at each batch
//! size (`plan-bN.json`, from `fer::export`) and the weights those plans fill
//! their buffers from (`weights.bin`). `wgfer export-web` writes these files
//! to a folder; `wgfer serve` answers them at `/`.

use anyhow::{Context, Result, ensure};
use serde::Serialize;

use crate::fer::export::{self, FORMAT};
use crate::fer::model::Model;

/// One file of the site.
#[derive(Clone, Debug)]
pub struct SiteFile {
    /// Relative path, e.g. `index.html` or `plan-b1.json` (no leading slash).
    pub path: String,
    pub bytes: Vec<u8>,
    /// The `Content-Type` to serve it with.
    pub content_type: &'static str,
}

/// The page's fixed files: path, contents, content type.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "index.html",
        include_str!("../../web/index.html"),
        "text/html; charset=utf-8",
    ),
    (
        "app.js",
        include_str!("../../web/app.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "player.js",
        include_str!("../../web/player.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "style.css",
        include_str!("../../web/style.css"),
        "text/css; charset=utf-8",
    ),
];

/// `manifest.json`: what the page loads first, to learn which plans exist.
#[derive(Serialize)]
struct Manifest<'a> {
    format: &'static str,
    /// The model's name (`fer7`, or its weights file's name), for the page to show.
    model: &'a str,
    classes: &'a [String],
    /// Batch size → plan file.
    plans: Vec<PlanEntry>,
    weights: &'static str,
}

#[derive(Serialize)]
struct PlanEntry {
    batch: usize,
    file: String,
}

/// The plan file name for a batch size.
pub fn plan_file(batch: usize) -> String {
    format!("plan-b{batch}.json")
}

/// Every file of the site for `model` (called `model_name` on the page), with
/// one recorded plan per batch size. The model's Gpu must use kernels a
/// browser can run (no subgroups): a plan that needs more is refused with the
/// reason.
pub fn site(
    model: &Model,
    model_name: &str,
    class_names: &[String],
    batches: &[usize],
) -> Result<Vec<SiteFile>> {
    ensure!(!batches.is_empty(), "give at least one batch size");
    let mut batches = batches.to_vec();
    batches.sort_unstable();
    batches.dedup();
    let mut files: Vec<SiteFile> = ASSETS
        .iter()
        .map(|&(path, text, content_type)| SiteFile {
            path: path.to_string(),
            bytes: text.as_bytes().to_vec(),
            content_type,
        })
        .collect();
    let mut plans = vec![];
    for batch in batches {
        let plan = export::record(model, class_names, batch)
            .with_context(|| format!("recording the inference pass at batch {batch}"))?;
        export::check_portable(&plan)?;
        let file = plan_file(batch);
        files.push(SiteFile {
            path: file.clone(),
            bytes: serde_json::to_vec(&plan)?,
            content_type: "application/json",
        });
        plans.push(PlanEntry { batch, file });
    }
    files.push(SiteFile {
        path: "weights.bin".to_string(),
        bytes: export::weights_bin(model)?,
        content_type: "application/octet-stream",
    });
    let manifest = Manifest {
        format: FORMAT,
        model: model_name,
        classes: class_names,
        plans,
        weights: "weights.bin",
    };
    files.push(SiteFile {
        path: "manifest.json".to_string(),
        bytes: serde_json::to_vec_pretty(&manifest)?,
        content_type: "application/json",
    });
    Ok(files)
}
