//! Helpers shared by the integration tests.
#![allow(dead_code)]

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use wgfer::engine::{Gpu, Tensor};

/// A GPU context that poisons every op output with NaN, so an element a
/// kernel forgets to write makes the comparison fail.
pub fn gpu() -> Gpu {
    let gpu = Gpu::new(None)
        .unwrap_or_else(|e| panic!("tests need a GPU adapter (lavapipe will do): {e:#}"));
    gpu.set_poison_outputs(true);
    gpu
}

/// A fresh generator per call: each run draws new inputs (the seed is printed
/// so a failure can be replayed with WGFER_TEST_SEED).
pub fn rng() -> StdRng {
    let seed = std::env::var("WGFER_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("random inputs from seed {seed} (set WGFER_TEST_SEED={seed} to replay)");
    StdRng::seed_from_u64(seed)
}

pub fn random(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

pub fn f64s(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

pub fn upload(gpu: &Gpu, shape: &[usize], data: &[f32]) -> Tensor {
    gpu.upload(shape, data).expect("upload")
}

pub fn read(gpu: &Gpu, t: &Tensor) -> Vec<f32> {
    gpu.read(t).expect("read back")
}

/// ‖got − want‖ / ‖want‖ (absolute when want is all zeros).
pub fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "lengths differ");
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(g, w)| (*g as f64 - w).powi(2))
        .sum::<f64>()
        .sqrt();
    let den: f64 = want.iter().map(|w| w * w).sum::<f64>().sqrt();
    if den == 0.0 { num } else { num / den }
}

pub const TOLERANCE: f64 = 1e-4;

/// Compare a GPU result with its CPU reference; NaN anywhere fails.
pub fn check(what: &str, got: &[f32], want: &[f64]) {
    if let Some(i) = got.iter().position(|v| !v.is_finite()) {
        panic!(
            "{what}: element {i} of {} is {} (unwritten or overflowed)",
            got.len(),
            got[i]
        );
    }
    let e = rel_err(got, want);
    assert!(
        e <= TOLERANCE,
        "{what}: relative error {e:.3e} > {TOLERANCE:e}"
    );
}

// ------------------------------------------------------------ the binary

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Run the `wgfer` binary built for these tests.
pub fn wgfer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wgfer"))
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .expect("run wgfer")
}

/// stdout and stderr together.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A fresh, empty directory for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wgfer-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `../shared/data/emotion-sample.csv`, or a loud failure naming where it was looked for.
pub fn sample_csv() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/emotion-sample.csv");
    assert!(
        p.exists(),
        "THE TEST DATA IS MISSING: {} not found. These tests need FER-2013's sample beside the repository \
         (../shared/data/emotion-sample.csv).",
        p.display()
    );
    p
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A valid small PNG whose header claims `side` x `side` pixels: the shape of
/// a decompression bomb, to be refused from its header before decoding.
pub fn png_claiming(side: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    image::DynamicImage::ImageLuma8(image::GrayImage::new(4, 4))
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    // IHDR data starts at byte 16: width, height (big-endian u32); its CRC
    // (over the chunk type and data) follows at 29.
    bytes[16..20].copy_from_slice(&side.to_be_bytes());
    bytes[20..24].copy_from_slice(&side.to_be_bytes());
    let crc = crc32(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
