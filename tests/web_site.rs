//! The browser page as files (`fer::web::site`, `wgfer export-web`): every
//! file the page loads is there, the manifest names the plans, each plan is
//! the portable inference pass at its batch size, and the weights file holds
//! what the plans' fills read. The page itself is tested in tests/web/.

use std::collections::BTreeSet;
use std::process::Command;

use wgfer::engine::{Gpu, Kernels};
use wgfer::fer::data::default_class_names;
use wgfer::fer::model::{Architecture, Model};
use wgfer::fer::web::{self, SiteFile};

fn portable_model() -> Model {
    let gpu = Gpu::with_kernels(None, Kernels::Portable)
        .unwrap_or_else(|e| panic!("tests need a GPU adapter (lavapipe will do): {e:#}"));
    Model::new(&gpu, Architecture::resnet(5), 3).unwrap()
}

fn file<'a>(files: &'a [SiteFile], path: &str) -> &'a SiteFile {
    files
        .iter()
        .find(|f| f.path == path)
        .unwrap_or_else(|| panic!("the site has no {path}"))
}

fn json(f: &SiteFile) -> serde_json::Value {
    serde_json::from_slice(&f.bytes).unwrap()
}

#[test]
fn the_site_has_the_page_the_plans_and_the_weights() {
    let model = portable_model();
    let names = default_class_names(5);
    let files = web::site(&model, "mine.safetensors", &names, &[2, 1, 2]).unwrap();
    let paths: BTreeSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
    let want = [
        "app.js",
        "index.html",
        "manifest.json",
        "plan-b1.json",
        "plan-b2.json",
        "player.js",
        "style.css",
        "weights.bin",
    ];
    assert_eq!(paths, want.into_iter().collect(), "each batch size once");
    assert!(
        file(&files, "index.html")
            .content_type
            .starts_with("text/html")
    );
    assert!(
        file(&files, "app.js")
            .content_type
            .starts_with("text/javascript")
    );

    // What the page fetches and imports is served.
    let html = String::from_utf8(file(&files, "index.html").bytes.clone()).unwrap();
    assert!(html.contains("src=\"app.js\"") && html.contains("href=\"style.css\""));
    let app = String::from_utf8(file(&files, "app.js").bytes.clone()).unwrap();
    assert!(app.contains("from './player.js'") && app.contains("'manifest.json'"));

    let manifest = json(file(&files, "manifest.json"));
    assert_eq!(manifest["format"], "wgfer-web-1");
    assert_eq!(manifest["model"], "mine.safetensors");
    assert_eq!(manifest["classes"], serde_json::json!(names));
    assert_eq!(manifest["weights"], "weights.bin");
    let weights_len = file(&files, "weights.bin").bytes.len() as u64;
    for entry in manifest["plans"].as_array().unwrap() {
        let batch = entry["batch"].as_u64().unwrap();
        let plan = json(file(&files, entry["file"].as_str().unwrap()));
        assert_eq!(plan["batch"].as_u64(), Some(batch));
        assert_eq!(plan["input"]["size"].as_u64(), Some(batch * 48 * 48 * 4));
        assert_eq!(plan["output"]["size"].as_u64(), Some(batch * 5 * 4));
        let shaders = plan["recording"]["shaders"].as_object().unwrap();
        assert!(
            shaders
                .values()
                .all(|s| !s.as_str().unwrap().contains("enable subgroups")),
            "a browser plan uses the portable kernels"
        );
        let filled: u64 = plan["weights"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["size"].as_u64().unwrap())
            .sum();
        assert_eq!(filled, weights_len, "the fills read the whole weights file");
    }
    assert!(web::site(&model, "mine.safetensors", &names, &[]).is_err());
}

#[test]
fn export_web_writes_the_site_to_a_folder() {
    let dir = std::env::temp_dir().join(format!("wgfer-export-web-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(env!("CARGO_BIN_EXE_wgfer"))
        .args(["export-web", "--batch", "1"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "export-web failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in [
        "index.html",
        "app.js",
        "player.js",
        "style.css",
        "manifest.json",
        "plan-b1.json",
        "weights.bin",
    ] {
        assert!(dir.join(name).is_file(), "{name} missing");
    }
    assert!(
        !dir.join("plan-b32.json").exists(),
        "only the batch asked for"
    );
    // The model for webcams and photos by default, named for the page.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["model"], "fer7");
    assert_eq!(manifest["classes"].as_array().unwrap().len(), 7);
    let _ = std::fs::remove_dir_all(&dir);
}
