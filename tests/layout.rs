//! The one rule of the layout: the engine (`src/engine/`) knows nothing of the
//! application. Its files may name no path of the tool (`crate::fer`,
//! `crate::cli`, or anything under `crate::` but `crate::engine`), no word of
//! facial expressions, and no files or command line (`std::fs`, `clap`).

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src/engine") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every line of `text` that breaks the rule, with the reason.
fn leaks(text: &str) -> Vec<String> {
    const WORDS: [&str; 7] = [
        "face",
        "emotion",
        "expression",
        "tutorial",
        "fer2013",
        "fer-2013",
        "resnet",
    ];
    const PATHS: [&str; 5] = ["crate::fer", "crate::cli", "wgfer::", "std::fs", "clap"];
    let mut found = vec![];
    for (i, line) in text.lines().enumerate() {
        let lower = line.to_lowercase();
        for w in WORDS {
            if lower.contains(w) {
                found.push(format!("line {}: names `{w}`: {line}", i + 1));
            }
        }
        for p in PATHS {
            if line.contains(p) {
                found.push(format!("line {}: uses `{p}`: {line}", i + 1));
            }
        }
        // Any `crate::` path must stay inside the engine.
        for (at, _) in line.match_indices("crate::") {
            if !line[at..].starts_with("crate::engine") {
                found.push(format!("line {}: a path outside the engine: {line}", i + 1));
            }
        }
    }
    found
}

#[test]
fn the_engine_names_nothing_of_the_application() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/engine");
    let mut files = vec![];
    rust_files(&root, &mut files);
    assert!(files.len() >= 10, "src/engine/ holds {} files", files.len());
    let mut report = vec![];
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read a source file");
        for leak in leaks(&text) {
            report.push(format!("{}: {leak}", f.display()));
        }
    }
    assert!(
        report.is_empty(),
        "the engine leaks:\n{}",
        report.join("\n")
    );
}

#[test]
fn the_checker_sees_a_leak() {
    assert_eq!(
        leaks("use crate::engine::Gpu;\n// a plain comment").len(),
        0
    );
    assert_eq!(leaks("use crate::fer::model::Model;").len(), 2);
    assert_eq!(leaks("use crate::shader_pair;").len(), 1);
    assert_eq!(leaks("/// 48x48 faces").len(), 1);
    assert_eq!(leaks("let f = std::fs::read(p);").len(), 1);
}
