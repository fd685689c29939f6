//! The `wgfer` command line: train, eval, predict, summary, bench, info.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};

use wgfer::data::{self, LoadOptions};
use wgfer::eval;
use wgfer::model::{Architecture, Model};
use wgfer::train::{self, RunConfig, TrainRequest};
use wgfer::{Gpu, bench, predict};

#[derive(Parser)]
#[command(
    name = "wgfer",
    version,
    about = "Facial-expression recognition (FER-2013) with a ResNet trained on hand-written WGSL kernels (wgpu).",
    long_about = "Facial-expression recognition (FER-2013) with a ResNet trained on hand-written WGSL kernels \
                  (wgpu: Vulkan, Metal, DX12, or a software Vulkan driver such as Mesa's lavapipe).\n\n\
                  Environment: WGPU_BACKEND (vulkan, metal, dx12, gl) limits the backends tried; \
                  WGPU_ADAPTER_NAME picks an adapter by name, like --adapter."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum Tta {
    /// The image alone.
    None,
    /// Average the prediction over the image and its mirror.
    Flip,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum SplitName {
    All,
    Train,
    Validation,
    Test,
}

#[derive(Subcommand)]
enum Command {
    /// Train the tutorial's ResNet with its recipe (Adam, batch 64, 20 epochs, augmentation).
    ///
    /// Writes into DIR: best.safetensors (lowest validation loss), last.safetensors,
    /// resume.safetensors (everything needed to continue), config.json, history.csv,
    /// history.png, samples.png, and after training test_metrics.json, confusion.png
    /// and predictions.png for the test split. Ctrl-C saves and stops; --resume DIR continues.
    Train {
        /// The CSV: `emotion, pixels` (the tutorial's file) or Kaggle's fer2013.csv with a Usage column.
        #[arg(long, value_name = "FILE", required_unless_present = "resume")]
        data: Option<PathBuf>,
        /// The run directory for weights, history and pictures.
        #[arg(long, value_name = "DIR", required_unless_present = "resume")]
        out: Option<PathBuf>,
        /// Continue the interrupted (or finished, with more --epochs) run in DIR.
        #[arg(long, value_name = "DIR", conflicts_with = "out")]
        resume: Option<PathBuf>,
        /// Overwrite a run already in --out.
        #[arg(long)]
        force: bool,
        /// Training epochs.
        #[arg(long, default_value_t = 20)]
        epochs: usize,
        /// Images per training step.
        #[arg(long, default_value_t = 64)]
        batch_size: usize,
        /// Adam's learning rate (Keras' default).
        #[arg(long, default_value_t = 1e-3)]
        lr: f32,
        /// Seed of the split, the initial weights, the data order and the augmentation.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Stop after this many epochs without a better validation loss.
        #[arg(long, default_value_t = 20)]
        patience: usize,
        /// Halve the learning rate after N epochs without a better validation
        /// loss (Keras' ReduceLROnPlateau; down to 1e-5). Off by default, as in the tutorial.
        #[arg(long, value_name = "N")]
        reduce_lr_patience: Option<usize>,
        /// Train on the images as they are (no rotation, shift, shear or zoom).
        #[arg(long)]
        no_augment: bool,
        /// Also mirror images at random (off in the tutorial).
        #[arg(long)]
        flip: bool,
        /// Number of classes (default: from the data: 5 for the tutorial's file, 7 for fer2013.csv).
        #[arg(long)]
        classes: Option<usize>,
        /// Class names, comma-separated (default: the tutorial's five or FER-2013's seven).
        #[arg(long, value_name = "A,B,...")]
        class_names: Option<String>,
        /// Skip (and count) malformed CSV rows instead of stopping at the first.
        #[arg(long)]
        skip_bad_rows: bool,
        /// Read at most this many rows of the CSV.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// At most this many steps per epoch (for quick runs).
        #[arg(long, value_name = "N")]
        steps_per_epoch: Option<usize>,
        /// Adapter to use: a case-insensitive part of its name (see `wgfer info`).
        #[arg(long, value_name = "NAME")]
        adapter: Option<String>,
        /// Print nothing but errors.
        #[arg(long, short)]
        quiet: bool,
        /// Testing aid: behave as if Ctrl-C came after N steps.
        #[arg(long, value_name = "N", hide = true)]
        interrupt_after: Option<usize>,
    },
    /// Evaluate weights on labelled faces: loss, accuracy, per-class precision / recall / F1, confusion matrix.
    Eval {
        /// Weights file (default: DIR/best.safetensors with --run, else the shipped models/fer5.safetensors).
        #[arg(long, value_name = "FILE")]
        weights: Option<PathBuf>,
        /// A CSV of labelled faces.
        #[arg(long, value_name = "FILE", required_unless_present = "run")]
        data: Option<PathBuf>,
        /// A training run's directory: evaluate on that run's own split of its data.
        #[arg(long, value_name = "DIR")]
        run: Option<PathBuf>,
        /// Which part of the data (default: test with --run, all rows otherwise).
        #[arg(long, value_enum)]
        split: Option<SplitName>,
        /// Seed of the split when --split is used without --run.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Test-time augmentation.
        #[arg(long, value_enum, default_value_t = Tta::None)]
        tta: Tta,
        /// Print one JSON object instead of tables.
        #[arg(long)]
        json: bool,
        /// Also write confusion.png and predictions.png into DIR.
        #[arg(long, value_name = "DIR")]
        pictures: Option<PathBuf>,
        /// Skip (and count) malformed CSV rows.
        #[arg(long)]
        skip_bad_rows: bool,
        #[arg(long, value_name = "NAME")]
        adapter: Option<String>,
    },
    /// Classify face images (PNG or JPEG, any size; made grayscale 48×48) or the rows of CSV files.
    Predict {
        /// Images and/or CSV files.
        #[arg(required = true, value_name = "INPUT")]
        inputs: Vec<PathBuf>,
        /// Weights file (default: the shipped models/fer5.safetensors).
        #[arg(long, value_name = "FILE")]
        weights: Option<PathBuf>,
        /// Test-time augmentation.
        #[arg(long, value_enum, default_value_t = Tta::None)]
        tta: Tta,
        /// Print a JSON array instead of lines.
        #[arg(long)]
        json: bool,
        #[arg(long, value_name = "NAME")]
        adapter: Option<String>,
    },
    /// Print the model's layers and parameter counts, as Keras' model.summary().
    Summary {
        #[arg(long, default_value_t = 5)]
        classes: usize,
    },
    /// Time every kernel at the model's shapes, a training step and inference.
    Bench {
        /// Training batch size.
        #[arg(long, default_value_t = 64)]
        batch_size: usize,
        /// Inference batch size.
        #[arg(long, default_value_t = 256)]
        infer_batch_size: usize,
        /// Timed repetitions per figure (the median is reported).
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        #[arg(long, value_name = "NAME")]
        adapter: Option<String>,
    },
    /// List the GPU adapters wgpu finds, and which one wgfer would use.
    Info,
}

fn main() -> ExitCode {
    quiet_wayland_probe();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Vulkan's window-system probing prints a warning when XDG_RUNTIME_DIR is
/// unset (a headless box); compute needs no display, so point it somewhere.
fn quiet_wayland_probe() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        // SAFETY: first thing in main, before any other thread exists.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir()) };
    }
}

/// The GPU, with a one-line notice on stderr when it is a software adapter.
fn open_gpu(adapter: Option<&str>) -> Result<Gpu> {
    let gpu = Gpu::new(adapter)?;
    if let Some(notice) = gpu.software_notice() {
        eprintln!("{notice}");
    }
    Ok(gpu)
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Train {
            data,
            out,
            resume,
            force,
            epochs,
            batch_size,
            lr,
            seed,
            patience,
            reduce_lr_patience,
            no_augment,
            flip,
            classes,
            class_names,
            skip_bad_rows,
            limit,
            steps_per_epoch,
            adapter,
            quiet,
            interrupt_after,
        } => {
            let class_names = match (&class_names, classes) {
                (Some(s), Some(n)) => data::parse_class_names(s, n)?,
                (Some(s), None) => s.split(',').map(|c| c.trim().to_string()).collect(),
                _ => vec![],
            };
            let config = data.map(|data| RunConfig {
                data,
                epochs,
                batch_size,
                lr,
                seed,
                patience,
                augment: !no_augment,
                flip,
                classes: classes.or((!class_names.is_empty()).then_some(class_names.len())),
                class_names,
                skip_bad_rows,
                limit,
                steps_per_epoch,
                reduce_lr_patience,
            });
            let resuming = resume.is_some();
            let epochs_given =
                std::env::args().any(|a| a == "--epochs" || a.starts_with("--epochs="));
            ctrlc::set_handler(|| {
                if train::INTERRUPTED.swap(true, Ordering::Relaxed) {
                    eprintln!("\ninterrupted twice: exiting without saving");
                    std::process::exit(130);
                }
                eprintln!(
                    "\ninterrupt: saving after this step (press Ctrl-C again to quit at once)"
                );
            })
            .context("cannot install the Ctrl-C handler")?;
            let outcome = train::run(TrainRequest {
                out: resume.or(out).expect("clap requires --out or --resume"),
                config,
                resume: resuming,
                force,
                adapter,
                quiet,
                epochs_override: (resuming && epochs_given).then_some(epochs),
                interrupt_after,
            })?;
            Ok(match outcome {
                train::Outcome::Finished { .. } => ExitCode::SUCCESS,
                train::Outcome::Interrupted => ExitCode::from(130),
            })
        }
        Command::Eval {
            weights,
            data,
            run,
            split,
            seed,
            tta,
            json,
            pictures,
            skip_bad_rows,
            adapter,
        } => {
            let (data_path, seed, split, opts, weights) = match &run {
                Some(dir) => {
                    let cfg: RunConfig = serde_json::from_str(
                        &std::fs::read_to_string(dir.join("config.json")).with_context(|| {
                            format!("{} is not a training run (no config.json)", dir.display())
                        })?,
                    )?;
                    let opts = LoadOptions {
                        skip_bad_rows: cfg.skip_bad_rows,
                        classes: cfg.classes,
                        limit: cfg.limit,
                    };
                    let weights = weights.unwrap_or_else(|| dir.join("best.safetensors"));
                    (
                        data.unwrap_or(cfg.data),
                        cfg.seed,
                        split.unwrap_or(SplitName::Test),
                        opts,
                        weights,
                    )
                }
                None => {
                    let opts = LoadOptions {
                        skip_bad_rows,
                        ..LoadOptions::default()
                    };
                    let weights = match weights {
                        Some(w) => w,
                        None => predict::default_weights()?,
                    };
                    (
                        data.expect("clap requires --data"),
                        seed,
                        split.unwrap_or(SplitName::All),
                        opts,
                        weights,
                    )
                }
            };
            let gpu = open_gpu(adapter.as_deref())?;
            let (model, class_names) = Model::load(&gpu, &weights)?;
            let opts = LoadOptions {
                classes: Some(model.arch.num_classes),
                ..opts
            };
            let ds = data::load_csv(&data_path, &opts)?;
            let ds = match split {
                SplitName::All => ds,
                s => {
                    let sp = data::split(&ds, seed)?;
                    let idx = match s {
                        SplitName::Train => &sp.train,
                        SplitName::Validation => &sp.validation,
                        _ => &sp.test,
                    };
                    ds.subset(idx)
                }
            };
            if ds.is_empty() {
                bail!("no faces to evaluate in {}", data_path.display());
            }
            let e = eval::evaluate(&model, &ds, &class_names, tta == Tta::Flip)?;
            if json {
                println!("{}", e.to_json());
            } else {
                println!(
                    "weights {}\ndata {} ({:?} split)   adapter {}\n{}",
                    weights.display(),
                    data_path.display(),
                    split,
                    gpu.adapter(),
                    e.table()
                );
            }
            if let Some(dir) = pictures {
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                train::write_pictures(&dir, &ds, &e)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Predict {
            inputs,
            weights,
            tta,
            json,
            adapter,
        } => {
            let weights = match weights {
                Some(w) => w,
                None => predict::default_weights()?,
            };
            let (faces, errors) = predict::gather(&inputs);
            for e in &errors {
                eprintln!("error: {e}");
            }
            if faces.is_empty() {
                bail!("none of the inputs could be read");
            }
            let gpu = open_gpu(adapter.as_deref())?;
            let (model, class_names) = Model::load(&gpu, &weights)?;
            let answers = predict::run(&model, &faces, tta == Tta::Flip)?;
            if json {
                let list: Vec<_> = answers.iter().map(|a| a.to_json(&class_names)).collect();
                println!("{}", serde_json::Value::Array(list));
            } else {
                for a in &answers {
                    println!("{}", a.line(&class_names));
                }
            }
            Ok(if errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Summary { classes } => {
            print!("{}", Architecture::resnet(classes).summary());
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            batch_size,
            infer_batch_size,
            reps,
            json,
            adapter,
        } => {
            let gpu = open_gpu(adapter.as_deref())?;
            let report = bench::run(&gpu, batch_size, infer_batch_size, reps, !json)?;
            if json {
                println!("{}", report.to_json());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Info => {
            for line in wgfer::gpu::describe_adapters() {
                println!("{line}");
            }
            let gpu = Gpu::new(None)?;
            let l = gpu.limits();
            println!(
                "wgfer uses: {}\n  max_storage_buffer_binding_size {} MiB, max_buffer_size {} MiB, \
                 max_compute_workgroups_per_dimension {}, timestamp queries {}",
                gpu.adapter(),
                l.max_storage_buffer_binding_size >> 20,
                l.max_buffer_size >> 20,
                l.max_compute_workgroups_per_dimension,
                if gpu.has_timestamps() { "yes" } else { "no" }
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
