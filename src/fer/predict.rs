//! `wgfer predict`: the faces in photos (or whole pictures, or CSV rows),
//! each classified, as JSON objects or table lines.
//!
//! The work for a batch of inputs: each picture is decoded and searched for
//! faces on the CPU (`faces::analyze_image`), then the 48x48 crops of all the
//! pictures gathered so far are classified together on the GPU, `EVAL_BATCH`
//! faces per dispatch chain (`classify_images`). Pictures are taken in chunks
//! so that thousands of photos stream through in bounded memory.
//!
//! For one picture in memory (an HTTP request), `predict_image_bytes` does
//! both steps and returns the object `predict --json` prints for it.

use std::collections::BTreeSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Result, bail, ensure};
use serde::Serialize;
use serde::ser::SerializeMap;

use crate::fer::data::{self, LoadOptions, PIXELS};
use crate::fer::eval::EVAL_BATCH;
use crate::fer::faces::{AnalyzeOptions, FaceDetector, FoundFace, ImageFaces, analyze_image};
use crate::fer::image_input::read_file;
use crate::fer::infer::{self, Tta};
use crate::fer::model::Model;

// ---------------------------------------------------------------------------
// What is printed (JSON by serde; the table from the same structs).

/// Class probabilities in the model's class order, written as a JSON object
/// `{"anger": 0.01, ...}` (a map keeps its order only if we write it so).
#[derive(Clone, Debug, PartialEq)]
pub struct Probabilities(pub Vec<(String, f32)>);

impl Serialize for Probabilities {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (class, p) in &self.0 {
            map.serialize_entry(class, p)?;
        }
        map.end()
    }
}

impl Probabilities {
    /// The most probable class and its probability (the first on ties).
    pub fn best(&self) -> (&str, f32) {
        let mut best = (self.0[0].0.as_str(), self.0[0].1);
        for (c, p) in &self.0[1..] {
            if *p > best.1 {
                best = (c, *p);
            }
        }
        best
    }
}

/// One classified face.
#[derive(Clone, Debug, Serialize)]
pub struct FaceReport {
    /// [x, y, width, height] in the picture's pixels.
    #[serde(rename = "box")]
    pub bbox: [u32; 4],
    /// The detector's score; null for a whole picture or a CSV row.
    pub score: Option<f64>,
    /// True when no detector box is behind this face: `--no-detect`, a small
    /// picture with no face found (classified whole), or a CSV row.
    pub whole_image: bool,
    pub prediction: String,
    pub probabilities: Probabilities,
}

/// What `predict --json` prints for one readable input (and what an HTTP
/// `POST /predict` answers).
#[derive(Clone, Debug, Serialize)]
pub struct ImageReport {
    /// The file (absent in an HTTP answer, which has no file).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub input: String,
    /// The model that classified the faces: `fer5`, `fer7`, or its file's
    /// name (absent when the caller gave none: `predict_image_bytes`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub model: String,
    pub width: u32,
    pub height: u32,
    /// Largest first; empty when no face was found.
    pub faces: Vec<FaceReport>,
}

/// An input that could not be read.
#[derive(Clone, Debug, Serialize)]
pub struct ErrorReport {
    pub input: String,
    pub error: String,
}

/// One JSON object per input.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum Answer {
    Image(ImageReport),
    Error(ErrorReport),
}

impl Answer {
    pub fn input(&self) -> &str {
        match self {
            Answer::Image(r) => &r.input,
            Answer::Error(e) => &e.input,
        }
    }

    /// Table lines: one per face, or one saying there is none / the error.
    pub fn lines(&self) -> Vec<String> {
        let r = match self {
            Answer::Error(e) => return vec![format!("{}: error: {}", e.input, e.error)],
            Answer::Image(r) => r,
        };
        if r.faces.is_empty() {
            return vec![format!(
                "{}: no face found ({}x{}; --no-detect classifies the whole picture)",
                r.input, r.width, r.height
            )];
        }
        r.faces
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let (class, p) = f.probabilities.best();
                let all: Vec<String> = f
                    .probabilities
                    .0
                    .iter()
                    .map(|(c, p)| format!("{c} {p:.3}"))
                    .collect();
                let [x, y, w, h] = f.bbox;
                let how = match f.score {
                    Some(s) => format!("score {s:5.1}"),
                    None => "whole     ".to_string(),
                };
                format!(
                    "{}  face {}  [{x} {y} {w} {h}]  {how}  {class} ({:.1} %)   [{}]",
                    r.input,
                    i + 1,
                    100.0 * p,
                    all.join(", ")
                )
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------
// Classification, batched across pictures.

/// Class probabilities for 48x48 faces, `EVAL_BATCH` per dispatch chain.
pub fn classify(model: &Model, faces: &[&[u8]], tta: Tta) -> Result<Vec<Vec<f32>>> {
    if faces.is_empty() {
        return Ok(vec![]);
    }
    ensure!(
        faces.iter().all(|f| f.len() == PIXELS),
        "a face must have {PIXELS} pixels"
    );
    let pixels: Vec<u8> = faces.concat();
    let probs = infer::probabilities(model, &pixels, EVAL_BATCH, tta)?;
    Ok(probs
        .chunks(model.arch.num_classes)
        .map(<[f32]>::to_vec)
        .collect())
}

/// Probabilities for every face of every picture (per picture, per face),
/// all the faces classified together.
pub fn classify_images(
    model: &Model,
    images: &[&ImageFaces],
    tta: Tta,
) -> Result<Vec<Vec<Vec<f32>>>> {
    let faces: Vec<&[u8]> = images
        .iter()
        .flat_map(|i| i.faces.iter().map(|f| f.pixels.as_slice()))
        .collect();
    let mut probs = classify(model, &faces, tta)?.into_iter();
    Ok(images
        .iter()
        .map(|i| probs.by_ref().take(i.faces.len()).collect())
        .collect())
}

/// The printed object for a picture whose faces were classified by the
/// model called `model`.
pub fn image_report(
    input: &str,
    model: &str,
    image: &ImageFaces,
    probs: &[Vec<f32>],
    class_names: &[String],
) -> ImageReport {
    ImageReport {
        input: input.to_string(),
        model: model.to_string(),
        width: image.width,
        height: image.height,
        faces: image
            .faces
            .iter()
            .zip(probs)
            .map(|(f, p)| face_report(f, p, class_names))
            .collect(),
    }
}

fn face_report(face: &FoundFace, probs: &[f32], class_names: &[String]) -> FaceReport {
    let probabilities = Probabilities(
        class_names
            .iter()
            .cloned()
            .zip(probs.iter().copied())
            .collect(),
    );
    FaceReport {
        bbox: face.bbox,
        score: face.score,
        whole_image: face.whole_image,
        prediction: probabilities.best().0.to_string(),
        probabilities,
    }
}

/// One picture's bytes to its printed object: decode, detect, crop, classify
/// (the object names no model: `image_report` does, given one). A batch of
/// files goes through `Predictor::run` instead, which shares GPU batches
/// between pictures.
pub fn predict_image_bytes(
    input: &str,
    bytes: &[u8],
    detector: &mut FaceDetector,
    model: &Model,
    class_names: &[String],
    opts: AnalyzeOptions,
    tta: Tta,
) -> Result<ImageReport> {
    let image = analyze_image(bytes, detector, opts)?;
    let probs = classify_images(model, &[&image], tta)?;
    Ok(image_report(input, "", &image, &probs[0], class_names))
}

// ---------------------------------------------------------------------------
// Inputs: files, directories, `-`.

/// Extensions of the pictures a directory is searched for.
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "bmp"];

fn has_extension(path: &Path, exts: &[&str]) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| exts.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// The inputs named on the command line, expanded: a directory gives its
/// pictures (recursively, by extension, sorted); `-` gives the paths read from
/// `stdin`, one per line (expanded the same way). Files are kept as given,
/// readable or not: reading them reports their errors.
pub fn expand_inputs(args: &[PathBuf], stdin: impl BufRead) -> Result<Vec<PathBuf>> {
    let mut out = vec![];
    let mut stdin = Some(stdin);
    for arg in args {
        if arg.as_os_str() == "-" {
            let Some(lines) = stdin.take() else {
                bail!("`-` (paths on stdin) can be given only once");
            };
            for line in lines.lines() {
                let line = line?;
                let line = line.trim_end_matches('\r');
                if !line.trim().is_empty() {
                    expand_one(Path::new(line), &mut out)?;
                }
            }
        } else {
            expand_one(arg, &mut out)?;
        }
    }
    Ok(out)
}

fn expand_one(path: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    if !path.is_dir() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    let mut found = BTreeSet::new();
    walk(path, &mut found)?;
    out.extend(found);
    Ok(())
}

fn walk(dir: &Path, found: &mut BTreeSet<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("{}: cannot list the directory: {e}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, found)?;
        } else if has_extension(&path, IMAGE_EXTENSIONS) {
            found.insert(path);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The batch: chunks of pictures, detection on the CPU, classification on the GPU.

/// A chunk is classified once it holds this many faces (a few full GPU
/// batches), this many pictures, or this many kept pixels (with `--annotate`
/// the decoded pictures wait for their labels).
const CHUNK_FACES: usize = 2 * EVAL_BATCH;
const CHUNK_INPUTS: usize = 64;
const CHUNK_KEPT_PIXELS: u64 = 48_000_000;

/// Runs `predict` over many inputs.
pub struct Predictor<'a> {
    pub model: &'a Model,
    /// What the answers call the model (`fer7`, or its file's name).
    pub model_name: &'a str,
    pub class_names: &'a [String],
    pub options: AnalyzeOptions,
    pub tta: Tta,
    /// Threads reading pictures and searching them for faces.
    pub workers: usize,
}

/// Counts for the end of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunSummary {
    pub inputs: usize,
    pub faces: usize,
    pub errors: usize,
    /// Pictures in which no face was found.
    pub without_face: usize,
}

/// An input on its way: its name and its faces (or why it has none).
struct Pending {
    input: String,
    faces: Result<ImageFaces>,
}

impl Predictor<'_> {
    /// Every input in order: `emit` gets each answer (with the decoded
    /// picture when `options.keep_image`), chunk by chunk as they are ready;
    /// `done` is called once per file read (for a progress bar).
    pub fn run(
        &self,
        inputs: &[PathBuf],
        mut emit: impl FnMut(&Answer, Option<&ImageFaces>) -> Result<()>,
        mut done: impl FnMut(),
    ) -> Result<RunSummary> {
        let workers = self.workers.max(1);
        let mut summary = RunSummary::default();
        let mut chunk: Vec<Pending> = vec![];
        // A few files per thread at a time: enough to keep the threads busy,
        // few enough to hold (with --annotate, decoded) in memory.
        for window in inputs.chunks(2 * workers) {
            let analyzed = self.analyze_files(window, workers)?;
            for (path, faces) in window.iter().zip(analyzed) {
                match faces {
                    None => self.csv_rows(path, &mut chunk),
                    Some(faces) => chunk.push(Pending {
                        input: path.display().to_string(),
                        faces,
                    }),
                }
                done();
                if chunk_is_full(&chunk) {
                    self.flush(&mut chunk, &mut emit, &mut summary)?;
                }
            }
        }
        self.flush(&mut chunk, &mut emit, &mut summary)?;
        Ok(summary)
    }

    /// The pictures among `paths` read and searched for faces on `workers`
    /// threads (each with its own detector), answers in the order of `paths`;
    /// None for CSV files (their rows are faces already).
    fn analyze_files(
        &self,
        paths: &[PathBuf],
        workers: usize,
    ) -> Result<Vec<Option<Result<ImageFaces>>>> {
        let options = self.options;
        let work = |first: usize| -> Result<Vec<(usize, Result<ImageFaces>)>> {
            let mut detector = FaceDetector::new()?;
            Ok(paths
                .iter()
                .enumerate()
                .skip(first)
                .step_by(workers)
                .filter(|(_, p)| !has_extension(p, &["csv"]))
                .map(|(i, p)| (i, analyze_file(p, &mut detector, options)))
                .collect())
        };
        let mut out: Vec<Option<Result<ImageFaces>>> = paths.iter().map(|_| None).collect();
        std::thread::scope(|scope| -> Result<()> {
            let threads: Vec<_> = (0..workers.min(paths.len()))
                .map(|w| scope.spawn(move || work(w)))
                .collect();
            for t in threads {
                let done = t
                    .join()
                    .map_err(|_| anyhow::anyhow!("a face detection thread failed"))??;
                for (i, faces) in done {
                    out[i] = Some(faces);
                }
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// A CSV file's rows as 48x48 faces named `file:line`.
    fn csv_rows(&self, path: &Path, chunk: &mut Vec<Pending>) {
        let options = LoadOptions {
            classes: Some(256),
            ..LoadOptions::default()
        };
        let ds = match data::load_csv(path, &options) {
            Ok(ds) => ds,
            Err(e) => {
                return chunk.push(Pending {
                    input: path.display().to_string(),
                    faces: Err(e),
                });
            }
        };
        let side = crate::fer::data::SIDE as u32;
        for i in 0..ds.len() {
            chunk.push(Pending {
                // Line numbers count the header.
                input: format!("{}:{}", path.display(), i + 2),
                faces: Ok(ImageFaces {
                    width: side,
                    height: side,
                    faces: vec![FoundFace {
                        bbox: [0, 0, side, side],
                        score: None,
                        whole_image: true,
                        pixels: ds.image(i).to_vec(),
                    }],
                    image: None,
                }),
            });
        }
    }

    /// Classify the chunk's faces in one go, emit its answers in order.
    fn flush(
        &self,
        chunk: &mut Vec<Pending>,
        emit: &mut impl FnMut(&Answer, Option<&ImageFaces>) -> Result<()>,
        summary: &mut RunSummary,
    ) -> Result<()> {
        let ok: Vec<&ImageFaces> = chunk.iter().filter_map(|p| p.faces.as_ref().ok()).collect();
        let mut probs = classify_images(self.model, &ok, self.tta)?.into_iter();
        for p in chunk.drain(..) {
            summary.inputs += 1;
            match p.faces {
                Ok(image) => {
                    let probs = probs.next().unwrap_or_default();
                    let report =
                        image_report(&p.input, self.model_name, &image, &probs, self.class_names);
                    summary.faces += report.faces.len();
                    summary.without_face += report.faces.is_empty() as usize;
                    emit(&Answer::Image(report), Some(&image))?;
                }
                Err(e) => {
                    summary.errors += 1;
                    let error = format!("{e:#}");
                    // The message names the file already; keep the bare reason.
                    let prefix = format!("{}: ", p.input);
                    let error = error.strip_prefix(&prefix).unwrap_or(&error).to_string();
                    emit(
                        &Answer::Error(ErrorReport {
                            input: p.input,
                            error,
                        }),
                        None,
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// A picture file's faces; errors name the file.
fn analyze_file(
    path: &Path,
    detector: &mut FaceDetector,
    options: AnalyzeOptions,
) -> Result<ImageFaces> {
    let bytes = read_file(path)?;
    analyze_image(&bytes, detector, options)
        .map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))
}

fn chunk_is_full(chunk: &[Pending]) -> bool {
    let ok = chunk.iter().filter_map(|p| p.faces.as_ref().ok());
    let faces: usize = ok.clone().map(|i| i.faces.len()).sum();
    let kept: u64 = ok
        .filter_map(|i| i.image.as_ref())
        .map(|im| im.width() as u64 * im.height() as u64)
        .sum();
    faces >= CHUNK_FACES || chunk.len() >= CHUNK_INPUTS || kept >= CHUNK_KEPT_PIXELS
}

// ---------------------------------------------------------------------------
// The "photo" row of `wgfer bench`.

/// Speed of the photo path, in milliseconds (medians over the repetitions).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct PhotoBench {
    /// Face detection alone on a 640x480 photo (one core).
    pub detect_640x480_ms: f64,
    /// A 1920x1280 JPEG with five faces: decode + detect + crop + classify,
    /// as `predict` runs it.
    pub end_to_end_1920x1280_ms: f64,
    /// Where that time goes: JPEG decoding (and the grayscale copy) ...
    pub decode_ms: f64,
    /// ... face detection ...
    pub detect_ms: f64,
    /// ... the five 48x48 crops ...
    pub crop_ms: f64,
    /// ... and their classification on the GPU (one batch).
    pub classify_ms: f64,
    /// Faces found in that photo (5 expected).
    pub faces_found: usize,
}

/// Time the photo path on pictures built from the committed test photos
/// (`faces::sample_photo_640x480` and `faces::collage_jpeg`).
pub fn bench_photos(model: &Model, reps: usize) -> Result<PhotoBench> {
    use crate::fer::faces::{collage_jpeg, crop_face, sample_photo_640x480};
    ensure!(reps > 0, "at least one repetition");
    let mut detector = FaceDetector::new()?;
    let small = image::imageops::grayscale(&sample_photo_640x480()?);
    let big = collage_jpeg()?;
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    let mut times: [Vec<f64>; 6] = Default::default();
    let mut faces_found = 0;
    for _ in 0..reps {
        let t = Instant::now();
        std::hint::black_box(detector.detect(&small));
        times[0].push(ms(t));

        let t = Instant::now();
        let image = analyze_image(&big, &mut detector, AnalyzeOptions::default())?;
        classify_images(model, &[&image], Tta::None)?;
        times[1].push(ms(t));
        faces_found = image.faces.len();

        // The same steps one by one.
        let t = Instant::now();
        let gray = crate::fer::image_input::decode(&big)?.to_luma8();
        times[2].push(ms(t));
        let t = Instant::now();
        let found = detector.detect_with_retry(&gray);
        times[3].push(ms(t));
        let t = Instant::now();
        let crops: Vec<Vec<u8>> = found.iter().map(|d| crop_face(&gray, d)).collect();
        times[4].push(ms(t));
        let t = Instant::now();
        classify(
            model,
            &crops.iter().map(Vec::as_slice).collect::<Vec<_>>(),
            Tta::None,
        )?;
        times[5].push(ms(t));
    }
    let [detect_small, end_to_end, decode, detect, crop, class] = times.map(|mut v| median(&mut v));
    Ok(PhotoBench {
        detect_640x480_ms: detect_small,
        end_to_end_1920x1280_ms: end_to_end,
        decode_ms: decode,
        detect_ms: detect,
        crop_ms: crop,
        classify_ms: class,
        faces_found,
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
