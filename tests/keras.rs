//! Keras files read directly and through `wgfer convert`, checked against
//! files Keras itself wrote (tests/data/keras and models/fer5-stretched.keras,
//! made by tests/data/keras/make_fixtures.py; no TensorFlow is needed here).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use wgfer::fer::checkpoint;
use wgfer::fer::data::{self, LoadOptions};
use wgfer::fer::infer;
use wgfer::fer::keras::{self, Format};
use wgfer::fer::model::{self, Architecture, Model};

/// A file Keras wrote: the small ones in tests/data/keras, the full model
/// (`FULL`) among the models.
fn fixture(name: &str) -> PathBuf {
    let dir = match name {
        FULL => "models",
        _ => "tests/data/keras",
    };
    Path::new(env!("CARGO_MANIFEST_DIR")).join(dir).join(name)
}

/// A weights file in wgfer's own format.
fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fer5.safetensors")
}

/// The full tutorial model (the weights wgfer shipped before its retraining
/// on the original pixels), as Keras 3 saved it; kept in models/ with the
/// other model files.
const FULL: &str = "fer5-stretched.keras";

/// The small files: three of the tutorial's layers, one file per layout and
/// Keras version (3.3 does not name layers in its weights files; 3.15 does).
const SMALL: [(&str, Format); 6] = [
    ("small-keras3.weights.h5", Format::Weights3),
    ("small-keras3.3.weights.h5", Format::Weights3),
    ("small-keras3.3.keras", Format::Archive),
    ("small-keras3-legacy.h5", Format::LegacyModel),
    ("small-keras2.h5", Format::LegacyModel),
    ("small-keras2-weights.h5", Format::LegacyWeights),
];

/// Keras' own probabilities on the first faces of the sample CSV.
#[derive(Deserialize)]
struct KerasPredictions {
    probabilities: Vec<Vec<f32>>,
}

fn keras_predictions() -> Vec<Vec<f32>> {
    let text = std::fs::read_to_string(fixture("predictions.json")).unwrap();
    serde_json::from_str::<KerasPredictions>(&text)
        .unwrap()
        .probabilities
}

/// The first `n` faces of the sample CSV, as u8 pixels.
fn faces(n: usize) -> Vec<u8> {
    let csv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/emotion-sample.csv");
    let ds = data::load_csv(&csv, &LoadOptions::default()).unwrap();
    (0..n).flat_map(|i| ds.image(i).to_vec()).collect()
}

fn predict(weights: &Path) -> Vec<f32> {
    let gpu = common::gpu();
    let (model, _) = Model::load(&gpu, weights).unwrap_or_else(|e| panic!("{e:#}"));
    let n = keras_predictions().len();
    infer::probabilities(&model, &faces(n), 64, infer::Tta::None).unwrap()
}

/// The values make_fixtures.py gave the k-th weight tensor of the small model.
fn pattern(k: usize, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((((i * 37 + k * 101) % 997) as f64) / 997.0 - 0.5) as f32)
        .collect()
}

/// The tensors of the full Keras file, its layers matched by their names.
fn named_tensors() -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(fixture(FULL)).unwrap();
    let file = keras::read(&bytes, FULL).unwrap();
    keras::model_tensors(&file, FULL)
        .unwrap()
        .1
        .into_iter()
        .map(|t| (t.name, (t.shape, t.data)))
        .collect()
}

#[test]
fn a_keras_model_predicts_what_keras_predicted() {
    let want = keras_predictions();
    let got = predict(&fixture(FULL));
    assert_eq!(got.len(), want.len() * 5);
    let mut largest = 0f32;
    for (i, (row, keras)) in got.chunks(5).zip(&want).enumerate() {
        for (j, (g, k)) in row.iter().zip(keras).enumerate() {
            largest = largest.max((g - k).abs());
            assert!(
                (g - k).abs() <= 1e-4,
                "face {i}, class {j}: wgfer {g}, Keras {k}"
            );
        }
    }
    eprintln!("largest difference from Keras' probabilities: {largest:e}");
}

#[test]
fn a_keras_archive_holds_every_tensor_of_the_model() {
    // Their values are checked through the predictions above (Keras' own, to 1e-4).
    let bytes = std::fs::read(fixture(FULL)).unwrap();
    let file = keras::read(&bytes, FULL).unwrap();
    assert_eq!(file.format, Format::Archive);
    let (arch, tensors) = keras::model_tensors(&file, FULL).unwrap();
    assert_eq!(arch.num_classes, 5);
    let want = arch.expected_tensors();
    assert_eq!(tensors.len(), want.len());
    for (t, (name, shape)) in tensors.iter().zip(&want) {
        assert_eq!((&t.name, &t.shape), (name, shape));
        assert!(t.data.iter().all(|v| v.is_finite()), "{}", t.name);
    }
}

#[test]
fn keras_layer_order_names_the_slots_of_a_real_file() {
    // Keras 3 stores layer `res_2_conv_c` as `layers/conv2d_3`: the rank among
    // Conv2D layers in Keras' `model.layers` order. Recent Keras also writes
    // the name beside it; the order must agree with every one.
    let bytes = std::fs::read(fixture(FULL)).unwrap();
    let file = keras::read(&bytes, FULL).unwrap();
    let arch = Architecture::resnet(5);
    let slots = keras::slot_names(keras::keras_order(&arch).into_iter().map(|i| {
        let l = &arch.layers[i];
        (l.op.keras_type(), l.name.as_str())
    }));
    assert_eq!(file.layers.len(), 43);
    for layer in &file.layers {
        let slot = layer.path.strip_prefix("layers/").unwrap();
        assert_eq!(slots.get(slot), layer.name.as_ref(), "{}", layer.path);
    }
    // The convolution blocks' shortcut comes before the main path's last conv.
    assert_eq!(slots["conv2d_3"], "res_2_conv_copy");
    assert_eq!(slots["conv2d_4"], "res_2_conv_c");
}

#[test]
fn a_file_without_layer_names_is_matched_by_keras_order() {
    // As a Keras that does not write layer names leaves it: only the slots.
    let bytes = std::fs::read(fixture(FULL)).unwrap();
    let mut file = keras::read(&bytes, FULL).unwrap();
    file.layers.iter_mut().for_each(|l| l.name = None);
    let (_, tensors) = keras::model_tensors(&file, FULL).unwrap();
    let want = named_tensors();
    for t in &tensors {
        assert_eq!(t.data, want[&t.name].1, "{}", t.name);
    }
}

#[test]
fn each_layout_reads_the_weights_keras_wrote() {
    // (layer, its Keras 3 slot, its weights' shapes), in the model's order.
    let layers = [
        ("conv1", "conv2d", vec![vec![7, 7, 1, 64], vec![64]]),
        ("bn_conv1", "batch_normalization", vec![vec![64]; 4]),
        ("Dense_final", "dense", vec![vec![64, 5], vec![5]]),
    ];
    for (name, format) in SMALL {
        let bytes = std::fs::read(fixture(name)).unwrap();
        let file = keras::read(&bytes, name).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(file.format, format, "{name}");
        assert_eq!(file.layers.len(), layers.len(), "{name}");
        let named = !name.contains("keras3.3.weights");
        let mut k = 0;
        for (layer, slot, shapes) in &layers {
            let found = file
                .layers
                .iter()
                .find(|l| {
                    if named {
                        l.name.as_deref() == Some(*layer)
                    } else {
                        l.name.is_none() && l.path == format!("layers/{slot}")
                    }
                })
                .unwrap_or_else(|| panic!("{name}: no layer {layer}"));
            assert_eq!(found.weights.len(), shapes.len(), "{name} {layer}");
            for (w, shape) in found.weights.iter().zip(shapes) {
                assert_eq!(&w.shape, shape, "{name} {}", w.name);
                assert_eq!(w.data, pattern(k, w.data.len()), "{name} {}", w.name);
                k += 1;
            }
        }
    }
}

#[test]
fn a_misshaped_file_is_refused_naming_the_layer() {
    for (name, _) in SMALL {
        let bytes = std::fs::read(fixture(name)).unwrap();
        let err = format!("{:#}", keras::convert(&bytes, name, None).err().unwrap());
        assert!(
            err.contains("layer `Dense_final`: kernel")
                && err.contains("[64, 5], the model expects [512, 5]"),
            "{name}: {err}"
        );
        assert!(err.contains("layer `res_2_conv_a` is missing"), "{err}");
    }
    let out = common::temp_dir("keras-misshaped").join("x.safetensors");
    let o = common::wgfer(&[
        "convert",
        fixture("small-keras2.h5").to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        common::text(&o).contains("`Dense_final`"),
        "{}",
        common::text(&o)
    );
    assert!(!out.exists());
}

#[test]
fn a_damaged_keras_file_is_refused_without_panicking() {
    for name in ["small-keras3.weights.h5", "small-keras2.h5", FULL] {
        let bytes = std::fs::read(fixture(name)).unwrap();
        for cut in [8, 100, 1000, 3000, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                keras::convert(&bytes[..cut], name, None).is_err(),
                "{name} cut at {cut}"
            );
        }
    }
    assert!(keras::convert(b"\x89HDF\r\n\x1a\nnothing", "x", None).is_err());
    assert!(keras::convert(b"PK\x03\x04nothing", "x", None).is_err());
}

#[test]
fn convert_writes_a_file_that_predicts_the_same() {
    let dir = common::temp_dir("keras-convert");
    let out = dir.join("fer5.safetensors");
    let o = common::wgfer(&[
        "convert",
        fixture(FULL).to_str().unwrap(),
        out.to_str().unwrap(),
        "--classes",
        "a,b,c,d,e",
    ]);
    assert!(o.status.success(), "{}", common::text(&o));
    assert_eq!(predict(&out), predict(&fixture(FULL)));
    let gpu = common::gpu();
    let (_, names) = Model::load(&gpu, &out).unwrap();
    assert_eq!(names, ["a", "b", "c", "d", "e"]);

    // Wrong class count, and a file that is not Keras', are refused.
    let o = common::wgfer(&[
        "convert",
        fixture(FULL).to_str().unwrap(),
        out.to_str().unwrap(),
        "--classes",
        "a,b",
    ]);
    assert!(!o.status.success());
    assert!(
        common::text(&o).contains("5 classes"),
        "{}",
        common::text(&o)
    );
    let o = common::wgfer(&[
        "convert",
        shipped().to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert!(
        common::text(&o).contains("already a safetensors file"),
        "{}",
        common::text(&o)
    );
}

/// `eval --model` takes a Keras file as every other command does (its training record,
/// which it has none of, is read through the same conversion).
#[test]
fn eval_scores_a_keras_file() {
    let sample = common::sample_csv();
    let o = common::wgfer(&[
        "eval",
        "--model",
        fixture(FULL).to_str().unwrap(),
        "--data",
        sample.to_str().unwrap(),
        "--json",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", common::text(&o));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(json["accuracy"].as_f64().unwrap() > 0.5, "{json}");
}

#[test]
fn keras_files_are_recognised_by_content_not_name() {
    let dir = common::temp_dir("keras-misnamed");
    let misnamed = dir.join("weights.safetensors");
    std::fs::copy(fixture(FULL), &misnamed).unwrap();
    assert_eq!(predict(&misnamed), predict(&fixture(FULL)));
    // And a safetensors file named like a Keras one is read as safetensors.
    let misnamed = dir.join("model.keras");
    std::fs::copy(shipped(), &misnamed).unwrap();
    let gpu = common::gpu();
    Model::load(&gpu, &misnamed).unwrap_or_else(|e| panic!("{e:#}"));
}

#[test]
fn class_names_may_be_a_comma_separated_string() {
    assert_eq!(
        model::parse_classes("anger,disgust, sad").unwrap(),
        ["anger", "disgust", "sad"]
    );
    assert_eq!(model::parse_classes(r#"["a", "b"]"#).unwrap(), ["a", "b"]);
    assert!(model::parse_classes("a,,b").is_err());
    assert!(model::parse_classes("a,a").is_err());

    // A file as a quick Python export writes it.
    let expected = Architecture::resnet(5).expected_tensors();
    let tensors = checkpoint::load(&shipped(), &expected).unwrap().tensors;
    let meta = BTreeMap::from([(
        "classes".to_string(),
        "anger,disgust,sad,happiness,surprise".to_string(),
    )]);
    let path = common::temp_dir("keras-classes").join("export.safetensors");
    checkpoint::save(&path, &tensors, &meta).unwrap();
    let gpu = common::gpu();
    let (_, names) = Model::load(&gpu, &path).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(names, ["anger", "disgust", "sad", "happiness", "surprise"]);
}

#[test]
fn convert_help_names_the_formats() {
    let help = common::text(&common::wgfer(&["convert", "--help"]));
    for needle in [".keras", ".weights.h5", "model.save('x.h5')", "--classes"] {
        assert!(help.contains(needle), "{needle} missing from:\n{help}");
    }
}
