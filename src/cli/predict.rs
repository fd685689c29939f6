//! `wgfer predict`: find the faces in photos and classify each.

use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};

use super::{model_choice, open_gpu};
use wgfer::fer::annotate;
use wgfer::fer::faces::AnalyzeOptions;
use wgfer::fer::infer::Tta;
use wgfer::fer::model::Model;
use wgfer::fer::models::{self, ModelChoice};
use wgfer::fer::predict::{self, Answer, Predictor};

/// Find the faces in photos and classify the expression of each.
#[derive(clap::Args)]
#[command(
    long_about = "Find the faces in photos and classify the expression of each.\n\n\
    Pictures (PNG, JPEG, WebP, BMP; a JPEG's EXIF orientation is applied) are searched for faces \
    (the SeetaFace detector, built in); each face is cropped to a square 1.1 times the detector's box, \
    made gray and 48x48, and classified. Faces come largest first. When no face is found, the \
    picture is searched once more, padded and enlarged; a small picture (both sides at most 128 \
    pixels) that still shows none is classified whole (marked `whole_image`), a larger one reports \
    no face. CSV files in the training layout give one face per row. Pictures over 100 megapixels \
    are refused before decoding. An input that cannot be read gives an error (an object with \
    `error` in JSON) and makes the exit status 1; the others are still answered."
)]
pub struct Args {
    /// Pictures, directories (searched recursively for .png/.jpg/.jpeg/.webp/.bmp), CSV files,
    /// or `-` to read paths from stdin, one per line.
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<PathBuf>,
    /// The model: `fer7` (FER-2013's 7 classes, neutral included: the default, made for
    /// photos), `fer5` (the tutorial's 5 classes: the default when every input is a CSV in
    /// the tutorial's layout), or a weights FILE. WGFER_MODEL replaces the default.
    #[arg(long, visible_alias = "weights", value_name = "NAME|FILE", value_parser = model_choice)]
    model: Option<ModelChoice>,
    /// Test-time augmentation.
    #[arg(long, value_enum, default_value_t = Tta::None)]
    tta: Tta,
    /// Print one JSON array (an object per input) instead of a table.
    #[arg(long, conflicts_with = "jsonl")]
    json: bool,
    /// Print one JSON object per line as each input is done (for many pictures).
    #[arg(long)]
    jsonl: bool,
    /// Do not look for faces: classify each whole picture (its centred square).
    #[arg(long)]
    no_detect: bool,
    /// Write DIR/<input name>.png for each picture: its faces boxed and labelled.
    #[arg(long, value_name = "DIR")]
    annotate: Option<PathBuf>,
    /// Threads that decode pictures and search them for faces (default: one per core, at most 8).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=256))]
    threads: Option<u32>,
    /// Adapter to use: a case-insensitive part of its name (see `wgfer info`).
    #[arg(long, value_name = "NAME")]
    adapter: Option<String>,
}

/// Inputs from which a progress bar is drawn.
const PROGRESS_FROM: usize = 5;

pub fn run(a: Args) -> Result<ExitCode> {
    let inputs = predict::expand_inputs(&a.inputs, std::io::stdin().lock())?;
    if inputs.is_empty() {
        bail!("no inputs: the directories hold no pictures and stdin gave no paths");
    }
    let chosen = models::choose(a.model.as_ref(), || Ok(models::default_for_inputs(&inputs)))?;
    if let Some(dir) = &a.annotate {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the --annotate directory {}", dir.display()))?;
    }
    let gpu = open_gpu(a.adapter.as_deref())?;
    let (model, class_names) = Model::load(&gpu, &chosen.path)?;
    let predictor = Predictor {
        model: &model,
        model_name: &chosen.name,
        class_names: &class_names,
        options: AnalyzeOptions {
            detect: !a.no_detect,
            keep_image: a.annotate.is_some(),
        },
        tta: a.tta,
        workers: match a.threads {
            Some(n) => n as usize,
            None => std::thread::available_parallelism().map_or(1, |n| n.get().min(8)),
        },
    };
    let bar = progress_bar(inputs.len(), super::quiet());
    let mut out = Output::new(&a);
    let summary = predictor.run(
        &inputs,
        |answer, faces| {
            bar.suspend(|| out.emit(answer))?;
            if let (Some(dir), Answer::Image(r), Some(picture)) =
                (&a.annotate, answer, faces.and_then(|f| f.image.as_ref()))
            {
                let drawn = annotate::annotate(picture, &r.faces, &class_names, &chosen.name)?;
                annotate::save_png(&drawn, &out.annotated_path(dir, &r.input))?;
            }
            Ok(())
        },
        || bar.inc(1),
    )?;
    bar.finish_and_clear();
    out.finish()?;
    if summary.without_face > 0 {
        eprintln!(
            "note: no face found in {} of {} pictures; --no-detect classifies whole pictures",
            summary.without_face, summary.inputs
        );
    }
    if summary.errors > 0 {
        eprintln!(
            "{} of {} inputs could not be read",
            summary.errors, summary.inputs
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn progress_bar(n: usize, quiet: bool) -> ProgressBar {
    if quiet || n < PROGRESS_FROM || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(n as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {pos}/{len} pictures  {elapsed} (eta {eta})")
    {
        bar.set_style(style);
    }
    bar
}

/// Where answers go: a table, JSON lines, or a JSON array at the end.
struct Output {
    json: bool,
    jsonl: bool,
    answers: Vec<Answer>,
    /// Annotated file names used so far (two inputs with one stem get -2, -3...).
    written: HashSet<PathBuf>,
}

impl Output {
    fn new(a: &Args) -> Self {
        Output {
            json: a.json,
            jsonl: a.jsonl,
            answers: vec![],
            written: HashSet::new(),
        }
    }

    fn emit(&mut self, answer: &Answer) -> Result<()> {
        if let Answer::Error(e) = answer {
            eprintln!("error: {}: {}", e.input, e.error);
        }
        let mut stdout = std::io::stdout().lock();
        if self.jsonl {
            serde_json::to_writer(&mut stdout, answer)?;
            writeln!(stdout)?;
        } else if self.json {
            self.answers.push(answer.clone());
        } else if let Answer::Image(_) = answer {
            for line in answer.lines() {
                writeln!(stdout, "{line}")?;
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        if self.json {
            let mut stdout = std::io::stdout().lock();
            serde_json::to_writer(&mut stdout, &self.answers)?;
            writeln!(stdout)?;
        }
        Ok(())
    }

    /// DIR/<stem>.png, or DIR/<stem>-2.png ... when an earlier input had that stem.
    fn annotated_path(&mut self, dir: &Path, input: &str) -> PathBuf {
        let stem = Path::new(input)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "picture".to_string());
        let mut path = dir.join(format!("{stem}.png"));
        let mut n = 1;
        while self.written.contains(&path) {
            n += 1;
            path = dir.join(format!("{stem}-{n}.png"));
        }
        self.written.insert(path.clone());
        path
    }
}
