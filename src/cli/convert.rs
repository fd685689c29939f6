//! `wgfer convert`: a Keras model file to wgfer's weights format.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, anyhow, bail};

use wgfer::fer::{checkpoint, files, keras};

/// Convert the tutorial's model saved by Keras into wgfer's weights file (safetensors).
///
/// Reads the formats Keras writes, recognised by their content whatever the file's name:
/// Keras 3's `model.save('x.keras')` (a zip archive) and `model.save_weights('x.weights.h5')`;
/// the HDF5 model of `model.save('x.h5')` (Keras 2 and 3); Keras 2's `model.save_weights('x.h5')`.
/// The layers are matched by the tutorial's layer names (conv1, bn_conv1, …, Dense_final), or by
/// Keras' layer order where the file does not name them; a file of another model is refused,
/// naming the layers that do not fit. `--model` of eval, predict, serve and export-web also takes these files
/// directly: converting once saves the conversion at every start and lets you name the classes.
#[derive(clap::Args)]
pub struct Args {
    /// The Keras file (.keras, .weights.h5, .h5, .hdf5).
    #[arg(value_name = "IN")]
    input: PathBuf,
    /// The weights file to write (safetensors; replaced if it exists).
    #[arg(value_name = "OUT.safetensors")]
    output: PathBuf,
    /// Class names, comma-separated, in the model's output order (Keras files carry none; default:
    /// the tutorial's anger,disgust,sad,happiness,surprise for 5 classes, FER-2013's 7 for 7).
    #[arg(long, value_name = "A,B,...")]
    classes: Option<String>,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let origin = a.input.display().to_string();
    let bytes = std::fs::read(&a.input).map_err(|e| anyhow!("{origin}: cannot read: {e}"))?;
    if !keras::is_keras(&bytes) {
        bail!(
            "{origin}: not a Keras file (neither HDF5 nor a .keras zip archive){}",
            if checkpoint::peek(&bytes, &origin).is_ok() {
                "; it is already a safetensors file, which --model reads as it is"
            } else {
                ""
            }
        );
    }
    if same_file(&a.input, &a.output) {
        bail!("{origin}: OUT is the input file; refusing to overwrite the Keras file");
    }
    let converted = keras::convert(&bytes, &origin, a.classes.as_deref())?;
    files::write_atomic(&a.output, &converted.bytes)?;
    println!(
        "{}: {}, {} layers with weights, classes {} -> {}",
        origin,
        converted.format,
        converted.layers,
        converted.classes.join(","),
        a.output.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// True when both paths name the same existing file.
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
