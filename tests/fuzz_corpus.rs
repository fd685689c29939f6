//! The fuzz targets' seed corpora (`fuzz/seeds/<target>`) and the crashes
//! they found once fixed (`fuzz/regressions/<target>`, made when the first
//! one is: none so far), replayed as plain tests: each input may be refused,
//! none may panic.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut count = 0;
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&bytes));
            assert!(
                outcome.is_ok(),
                "the {target} fuzz target panics on {}",
                path.display()
            );
            count += 1;
        }
    }
    assert!(
        count >= 5,
        "the {target} corpus is missing: expected inputs under fuzz/seeds/{target}"
    );
}

#[test]
fn csv_corpus_never_panics() {
    replay("csv", wgfer::fer::fuzzing::csv);
}

#[test]
fn weights_corpus_never_panics() {
    replay("weights", wgfer::fer::fuzzing::weights);
}

#[test]
fn the_seed_corpora_reach_the_success_paths() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let good = std::fs::read(root.join("weights/good.safetensors")).unwrap();
    let w =
        wgfer::fer::checkpoint::load_bytes(&good, "good", &wgfer::fer::fuzzing::expected_weights())
            .unwrap();
    assert_eq!(w.tensors[1].data, [0.0, 1.0, 2.0]);
    let csv = std::fs::read(root.join("csv/kaggle.csv")).unwrap();
    let ds = wgfer::fer::data::read_csv(&csv[..], "kaggle.csv", &Default::default()).unwrap();
    assert_eq!((ds.len(), ds.num_classes), (3, 7));
}
