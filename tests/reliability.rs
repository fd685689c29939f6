//! What wgfer promises about runs and files: a run killed at any instant
//! leaves loadable files and resumes; an interrupted and resumed run ends
//! with the same weights as an uninterrupted one; diverging training stops
//! with a message; limits and output paths are checked before training.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{s, sample_csv, temp_dir, text, wgfer};
use wgfer::fer::checkpoint;

/// A short run's arguments: 300 faces, batches of 16, 3 steps an epoch.
fn short_run(data: &Path, out: &Path, epochs: usize) -> Vec<String> {
    [
        "train",
        "--data",
        s(data),
        "--out",
        s(out),
        "--limit",
        "300",
        "--batch-size",
        "16",
        "--steps-per-epoch",
        "3",
        "--seed",
        "5",
        "--quiet",
        "--epochs",
    ]
    .iter()
    .map(|a| a.to_string())
    .chain([epochs.to_string()])
    .collect()
}

fn run_args(args: &[String]) -> Output {
    wgfer(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Every tensor of a weights file, as (name, values).
fn tensors(path: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (_, shapes) =
        checkpoint::peek(&bytes, "t").unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    let w = checkpoint::load_bytes(&bytes, "t", &shapes)
        .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    w.tensors.into_iter().map(|t| (t.name, t.data)).collect()
}

#[test]
fn an_interrupted_and_resumed_run_ends_with_the_same_weights() {
    let dir = temp_dir("resume");
    let data = sample_csv();
    let (a, b) = (dir.join("straight"), dir.join("interrupted"));
    let o = run_args(&short_run(&data, &a, 3));
    assert!(
        o.status.success(),
        "uninterrupted run failed:\n{}",
        text(&o)
    );

    // Interrupted mid-epoch 2 (after 3 + 2 steps), as Ctrl-C would.
    let mut args = short_run(&data, &b, 3);
    args.extend(["--interrupt-after".into(), "5".into()]);
    let o = run_args(&args);
    assert_eq!(
        o.status.code(),
        Some(130),
        "an interrupted run exits with 130:\n{}",
        text(&o)
    );
    assert!(b.join("last.safetensors").exists() && b.join("resume.safetensors").exists());
    // Resumed, it is interrupted once more at an epoch boundary (after 1 more step), then finishes.
    let o = wgfer(&[
        "train",
        "--resume",
        s(&b),
        "--quiet",
        "--interrupt-after",
        "1",
    ]);
    assert_eq!(o.status.code(), Some(130), "{}", text(&o));
    let o = wgfer(&["train", "--resume", s(&b), "--quiet"]);
    assert!(o.status.success(), "resume failed:\n{}", text(&o));

    for f in ["last.safetensors", "best.safetensors"] {
        let (x, y) = (tensors(&a.join(f)), tensors(&b.join(f)));
        assert_eq!(x.len(), y.len());
        for ((n, u), (_, v)) in x.iter().zip(&y) {
            // lavapipe is deterministic: the same kernels in the same order give the same bits.
            assert!(
                u.iter().zip(v).all(|(p, q)| p.to_bits() == q.to_bits()),
                "{f}: tensor {n} differs after resume"
            );
        }
    }
    let strip = |p: &Path| -> Vec<String> {
        std::fs::read_to_string(p.join("history.csv"))
            .unwrap()
            .lines()
            .map(|l| l.split(',').take(5).collect::<Vec<_>>().join(","))
            .collect()
    };
    assert_eq!(
        strip(&a),
        strip(&b),
        "the histories' losses and accuracies differ"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGKILLs short runs at random instants and checks that every file a run
/// left loads and that it resumes to a complete model. Odd rounds wait for
/// the first checkpoint and then kill within about an epoch, while later
/// epochs write over it; at least one of those kills must land while the run
/// is still going, so the test cannot pass on kills that all came before
/// anything was written or after the run ended.
#[test]
fn a_run_killed_at_any_instant_leaves_loadable_files_and_resumes() {
    let dir = temp_dir("kill");
    let data = sample_csv();
    let seed = std::env::var("WGFER_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("kill delays from seed {seed}");
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    let mut mid_run_after_a_checkpoint = 0;
    for round in 0..4 {
        let out = dir.join(format!("run{round}"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_wgfer"))
            .args(short_run(&data, &out, 4))
            .env("XDG_RUNTIME_DIR", std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let after_checkpoint = round % 2 == 1;
        let delay = if after_checkpoint {
            // config.json is written before the first epoch, resume.safetensors
            // after it: the time between is an epoch, and three remain.
            let started = wait_for(&out.join("config.json"), &mut child);
            let epoch = wait_for(&out.join("resume.safetensors"), &mut child) - started;
            rand::RngExt::random_range(&mut rng, 0..epoch.as_millis().max(1) as u64)
        } else {
            rand::RngExt::random_range(&mut rng, 300..6000u64)
        };
        std::thread::sleep(Duration::from_millis(delay));
        let running = child.try_wait().unwrap().is_none();
        child.kill().unwrap(); // SIGKILL: no handler runs
        child.wait().unwrap();
        let when = if after_checkpoint {
            "after the first checkpoint"
        } else {
            "after the start"
        };
        eprintln!(
            "round {round}: killed {delay} ms {when}{}",
            if running { "" } else { " (the run had ended)" }
        );
        if after_checkpoint {
            // Every file is replaced atomically: the checkpoint that was
            // there before the kill is still there, whole.
            assert!(
                out.join("resume.safetensors").exists(),
                "resume.safetensors vanished in a kill {delay} ms {when}"
            );
            mid_run_after_a_checkpoint += running as usize;
        }
        for f in ["best.safetensors", "last.safetensors", "resume.safetensors"] {
            let p = out.join(f);
            if p.exists() {
                let t = tensors(&p);
                assert!(
                    !t.is_empty(),
                    "{f} after a kill {delay} ms {when} holds no tensors"
                );
            }
        }
        if out.join("config.json").exists() {
            let o = wgfer(&["train", "--resume", s(&out), "--quiet"]);
            assert!(
                o.status.success(),
                "resume after a kill {delay} ms {when} failed:\n{}",
                text(&o)
            );
            let expected = wgfer::fer::model::Architecture::resnet(5).params.len();
            assert_eq!(
                tensors(&out.join("last.safetensors")).len(),
                expected,
                "a complete model"
            );
        }
    }
    assert!(
        mid_run_after_a_checkpoint > 0,
        "no kill landed while a run was going with a checkpoint on disk (seed {seed})"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Wait until `path` exists (polling), and return when it was seen. Panics
/// when the child exits first, or after two minutes (killing the child).
fn wait_for(path: &Path, child: &mut std::process::Child) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if path.exists() {
            return Instant::now();
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before writing {}", path.display());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{} did not appear within two minutes", path.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn diverging_training_stops_with_a_message_naming_epoch_and_step() {
    let dir = temp_dir("nan");
    let out = dir.join("run");
    let mut args = short_run(&sample_csv(), &out, 3);
    args.extend(["--lr".into(), "1e6".into()]);
    let o = run_args(&args);
    let t = text(&o);
    assert!(
        !o.status.success(),
        "--lr 1e6 trained without complaint:\n{t}"
    );
    assert!(!t.contains("panicked"), "{t}");
    assert!(t.contains("diverged at epoch") && t.contains("step"), "{t}");
    // Whatever was saved before is intact and finite.
    for f in ["best.safetensors", "last.safetensors"] {
        if out.join(f).exists() {
            tensors(&out.join(f));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn output_paths_and_limits_are_checked_before_training() {
    let dir = temp_dir("paths");
    let data = sample_csv();
    // A path that cannot be a directory.
    let file = dir.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let o = run_args(&short_run(&data, &file.join("run"), 1));
    assert!(!o.status.success());
    assert!(text(&o).contains("output directory"), "{}", text(&o));
    assert!(
        !text(&o).contains("epoch"),
        "it trained before failing:\n{}",
        text(&o)
    );

    // An existing run is kept unless --force.
    let run = dir.join("run");
    assert!(run_args(&short_run(&data, &run, 1)).status.success());
    let o = run_args(&short_run(&data, &run, 1));
    assert!(
        !o.status.success() && text(&o).contains("--force"),
        "{}",
        text(&o)
    );
    let mut forced = short_run(&data, &run, 1);
    forced.push("--force".into());
    let o = run_args(&forced);
    assert!(o.status.success(), "{}", text(&o));

    // A batch beyond the adapter's binding limit is refused, naming the limit.
    let mut big = short_run(&data, &dir.join("big"), 1);
    let at = big.iter().position(|a| a == "--batch-size").unwrap();
    big[at + 1] = "1000000".into();
    let o = run_args(&big);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("max_storage_buffer_binding_size") && text(&o).contains("--batch-size"),
        "{}",
        text(&o)
    );
    // The failed run removed the directories it made, and only those.
    assert!(
        !dir.join("big").exists(),
        "a failed run left its --out behind"
    );
    let mut deeper = big.clone();
    let at = deeper.iter().position(|a| a == "--out").unwrap();
    deeper[at + 1] = s(&dir.join("new").join("deeper")).to_string();
    assert!(!run_args(&deeper).status.success());
    assert!(
        !dir.join("new").exists(),
        "a failed run left its parents behind"
    );
    let kept = dir.join("kept");
    std::fs::create_dir_all(&kept).unwrap();
    deeper[at + 1] = s(&kept).to_string();
    assert!(!run_args(&deeper).status.success());
    assert!(kept.exists(), "a directory that was there before is kept");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_run_stopped_in_its_first_epoch_and_data_changed_under_a_run() {
    let dir = temp_dir("first-epoch");
    let data = dir.join("faces.csv");
    std::fs::copy(sample_csv(), &data).unwrap();
    let run = dir.join("run");
    let mut args = short_run(&data, &run, 2);
    args.extend(["--interrupt-after".into(), "1".into()]);
    let o = run_args(&args);
    assert_eq!(o.status.code(), Some(130), "{}", text(&o));

    // No epoch finished: eval says so and offers what there is.
    let o = wgfer(&["eval", "--run", s(&run)]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains("no epoch of the run")
            && t.contains(&format!("wgfer train --resume {}", run.display()))
            && t.contains("last.safetensors"),
        "{t}"
    );
    assert!(!t.contains("cannot read the weights file"), "{t}");

    // The data file changes: resuming would train on another split, so it is refused.
    let fewer: String = std::fs::read_to_string(&data)
        .unwrap()
        .lines()
        .take(400)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&data, fewer).unwrap();
    let o = wgfer(&["train", "--resume", s(&run), "--quiet"]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("has changed since the run"), "{t}");
    assert!(run.join("resume.safetensors").exists(), "the run is kept");
    let _ = std::fs::remove_dir_all(&dir);
}
