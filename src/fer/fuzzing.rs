//! Entry points of the fuzz targets (`fuzz/`), kept in the library so that
//! `tests/fuzz_corpus.rs` replays their corpora as plain tests.

use crate::fer::checkpoint;
use crate::fer::data::{LoadOptions, read_csv};

/// Parse bytes as a training CSV, with and without `--skip-bad-rows` and a
/// class count; any error is fine, a panic is a bug.
pub fn csv(data: &[u8]) {
    for opts in [
        LoadOptions::default(),
        LoadOptions {
            skip_bad_rows: true,
            classes: Some(5),
            limit: Some(3),
        },
    ] {
        if let Ok(ds) = read_csv(data, "fuzz.csv", &opts) {
            assert_eq!(ds.pixels.len(), ds.labels.len() * crate::fer::data::PIXELS);
            assert!(ds.labels.iter().all(|&l| (l as usize) < ds.num_classes));
            let _ = crate::fer::data::split(&ds, 0);
        }
    }
}

/// The tensors the weights target expects: small, so that the fuzzer can
/// also reach the paths of a file that fits.
pub fn expected_weights() -> Vec<(String, Vec<usize>)> {
    vec![
        ("conv.kernel".into(), vec![1, 2, 1, 3]),
        ("conv.bias".into(), vec![3]),
    ]
}

/// Read bytes as a weights file: header checks, then the tensors against a
/// model; any error is fine, a panic is a bug.
pub fn weights(data: &[u8]) {
    let _ = checkpoint::peek(data, "fuzz.safetensors");
    if let Ok(w) = checkpoint::load_bytes(data, "fuzz.safetensors", &expected_weights()) {
        assert_eq!(w.tensors.len(), 2);
        assert!(
            w.tensors
                .iter()
                .all(|t| t.data.iter().all(|v| v.is_finite()))
        );
    }
}
