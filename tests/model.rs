//! The tutorial's ResNet: parameter counts, every layer's output shape, the
//! summary, and a forward pass on the GPU.

mod common;

use wgfer::engine::tape::Tape;
use wgfer::fer::model::{ArchKind, Architecture, Model, initial_values};
use wgfer::fer::plan::Plan;

#[test]
fn parameter_count_matches_keras() {
    let arch = Architecture::resnet(5);
    let (trainable, frozen) = arch.param_count();
    assert_eq!(trainable + frozen, 1_174_021, "total parameters");
    assert_eq!(frozen, 8_576, "batch-norm moving statistics");
}

/// The per-image output shape of the layer called `name`.
fn output_shape(arch: &Architecture, name: &str) -> Vec<usize> {
    arch.layers
        .iter()
        .find(|l| l.name == name)
        .unwrap_or_else(|| panic!("no layer {name}"))
        .output_shape
        .clone()
}

#[test]
fn every_layer_has_the_keras_output_shape() {
    let arch = Architecture::resnet(5);
    let shape = |name: &str| output_shape(&arch, name);
    assert_eq!(shape("input_1"), [48, 48, 1]);
    assert_eq!(shape("zero_padding2d"), [54, 54, 1]);
    assert_eq!(shape("conv1"), [24, 24, 64]);
    assert_eq!(shape("max_pooling2d"), [11, 11, 64]);
    assert_eq!(shape("res_2_conv_a"), [11, 11, 64]);
    assert_eq!(shape("max_pooling2d_1"), [5, 5, 64]);
    assert_eq!(shape("res_2_conv_b"), [5, 5, 64]);
    assert_eq!(shape("res_2_conv_copy"), [11, 11, 256]);
    assert_eq!(shape("activation_9"), [5, 5, 256], "end of stage 2");
    assert_eq!(shape("res_3_conv_a"), [5, 5, 128]);
    assert_eq!(shape("res_3_conv_b"), [2, 2, 128]);
    assert_eq!(shape("activation_18"), [2, 2, 512], "end of stage 3");
    assert_eq!(shape("Averagea_Pooling"), [1, 1, 512]);
    assert_eq!(shape("flatten"), [512]);
    assert_eq!(shape("Dense_final"), [5]);
    // Keras' layer counts: 21 convolutions, 21 batch norms, 6 adds, 19 activations.
    let count = |t: &str| {
        arch.layers
            .iter()
            .filter(|l| l.op.keras_type() == t)
            .count()
    };
    assert_eq!(
        (
            count("Conv2D"),
            count("BatchNormalization"),
            count("Add"),
            count("Activation")
        ),
        (21, 21, 6, 19)
    );
}

/// The fine variant: the same blocks and parameter names, no stem max-pool
/// and half the filters, so its stages run at 12×12 and 6×6.
#[test]
fn the_fine_variant_keeps_the_names_and_the_pixels() {
    let arch = Architecture::of_kind(ArchKind::Fine, 7);
    let shape = |name: &str| output_shape(&arch, name);
    assert_eq!(shape("conv1"), [24, 24, 64]);
    assert_eq!(shape("res_2_conv_a"), [24, 24, 32], "no stem max-pool");
    assert_eq!(shape("res_2_conv_b"), [12, 12, 32]);
    assert_eq!(shape("activation_9"), [12, 12, 128], "end of stage 2");
    assert_eq!(shape("res_3_conv_b"), [6, 6, 64]);
    assert_eq!(shape("activation_18"), [6, 6, 256], "end of stage 3");
    assert_eq!(shape("flatten"), [2304]);
    assert_eq!(shape("Dense_final"), [7]);
    let names = |a: &Architecture| a.params.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&arch),
        names(&Architecture::resnet(7)),
        "the tutorial's parameter names, in its order"
    );
    // By hand, with the batch norms: conv1 3,456; stage 2 (32, 32, 128 filters) 25,152 for
    // the convolution block + 2 × 18,368; stage 3 (64, 64, 256) 97,408 + 2 × 71,552;
    // Dense_final 2,304 × 7 + 7.
    let (trainable, frozen) = arch.param_count();
    assert_eq!(trainable + frozen, 321_991);
    assert_eq!(
        frozen, 4_352,
        "the moving means and variances: half of 8,704"
    );
    assert!(arch.summary().starts_with("Model: \"Resnet18_fine\""));
}

#[test]
fn every_parameter_has_its_keras_name_and_layout() {
    let arch = Architecture::resnet(5);
    let find = |n: &str| {
        arch.params
            .iter()
            .find(|p| p.name == n)
            .unwrap_or_else(|| panic!("no parameter {n}"))
    };
    assert_eq!(find("conv1.kernel").shape, [7, 7, 1, 64]);
    assert_eq!(find("res_2_identity_1_b.kernel").shape, [3, 3, 64, 64]);
    assert_eq!(find("res_3_conv_copy.kernel").shape, [1, 1, 256, 512]);
    assert_eq!(find("bn_3_identity_2_c.moving_variance").shape, [512]);
    assert_eq!(find("Dense_final.kernel").shape, [512, 5]);
    assert!(!find("bn_conv1.moving_mean").trainable);
    assert!(find("bn_conv1.gamma").trainable);
}

#[test]
fn summary_prints_the_totals() {
    let s = Architecture::resnet(5).summary();
    assert!(s.contains("Total params: 1,174,021"), "{s}");
    assert!(s.contains("Trainable params: 1,165,445"), "{s}");
    assert!(s.contains("Non-trainable params: 8,576"), "{s}");
    assert!(s.contains("res_3_identity_2_c (Conv2D)"), "{s}");
}

#[test]
fn initial_weights_follow_keras() {
    let arch = Architecture::resnet(5);
    let (t, m) = wgfer::fer::model::initial_values(&arch, 7);
    let p = arch
        .params
        .iter()
        .find(|p| p.name == "res_2_conv_b.kernel")
        .unwrap();
    let limit = (6.0f32 / (9.0 * 64.0 + 9.0 * 64.0)).sqrt();
    let w = &t[p.offset..p.offset + p.len()];
    assert!(
        w.iter().all(|v| v.abs() <= limit) && w.iter().any(|v| v.abs() > 0.9 * limit),
        "Glorot-uniform range"
    );
    let g = arch
        .params
        .iter()
        .find(|p| p.name == "bn_conv1.gamma")
        .unwrap();
    assert!(t[g.offset..g.offset + 64].iter().all(|&v| v == 1.0));
    let v = arch
        .params
        .iter()
        .find(|p| p.name == "bn_conv1.moving_variance")
        .unwrap();
    assert!(m[v.offset..v.offset + 64].iter().all(|&x| x == 1.0));
    let b = arch.params.iter().find(|p| p.name == "conv1.bias").unwrap();
    assert!(t[b.offset..b.offset + 64].iter().all(|&x| x == 0.0));
}

#[test]
fn forward_gives_a_probability_row_per_image() {
    let gpu = common::gpu();
    let model = Model::new(&gpu, Architecture::resnet(5), 0).unwrap();
    let x = common::random(&mut common::rng(), 3 * 48 * 48)
        .iter()
        .map(|v| v.abs())
        .collect::<Vec<_>>();
    let images = gpu.upload(&[3, 48, 48, 1], &x).unwrap();
    for training in [false, true] {
        let tape = Tape::new(&gpu);
        let logits = model.forward(&tape, &images, training).unwrap();
        assert_eq!(logits.shape(), [3, 5]);
        let p = common::read(
            &gpu,
            &wgfer::engine::ops::softmax_xent::softmax(&gpu, &logits).unwrap(),
        );
        for row in p.chunks(5) {
            approx::assert_relative_eq!(row.iter().sum::<f32>(), 1.0, epsilon = 1e-5);
        }
    }
}

/// Test-time augmentation averages the plain predictions of its views: `Shift`'s ten
/// (the face and its mirror, each as is and moved 2 pixels each way, borders
/// repeated) are built here by hand and classified one by one.
#[test]
fn test_time_augmentation_averages_the_views() {
    use wgfer::fer::infer::{Tta, probabilities};
    let gpu = common::gpu();
    let model = Model::new(&gpu, Architecture::resnet(5), 3).unwrap();
    let mut rng = common::rng();
    let faces: Vec<u8> = (0..2 * 2304)
        .map(|_| rand::RngExt::random::<u8>(&mut rng))
        .collect();
    let px =
        |face: &[u8], y: isize, x: isize| face[(y.clamp(0, 47) * 48 + x.clamp(0, 47)) as usize];
    let view = |face: &[u8], mirror: bool, dx: isize, dy: isize| -> Vec<u8> {
        let m = |y, x| {
            if mirror {
                px(face, y, 47 - x)
            } else {
                px(face, y, x)
            }
        };
        (0..48 * 48).map(|i| m(i / 48 - dy, i % 48 - dx)).collect()
    };
    let plain = |img: &[u8]| probabilities(&model, img, 8, Tta::None).unwrap();
    let moves = [(0, 0), (-2, 0), (2, 0), (0, -2), (0, 2)];
    for (tta, moves) in [(Tta::Flip, &moves[..1]), (Tta::Shift, &moves[..])] {
        let got = probabilities(&model, &faces, 8, tta).unwrap();
        for (face, got) in faces.chunks(2304).zip(got.chunks(5)) {
            let mut want = [0f32; 5];
            let mut views = 0.0;
            for mirror in [false, true] {
                for &(dx, dy) in moves {
                    let p = plain(&view(face, mirror, dx, dy));
                    want.iter_mut().zip(p).for_each(|(w, p)| *w += p);
                    views += 1.0;
                }
            }
            for (g, w) in got.iter().zip(want) {
                approx::assert_relative_eq!(*g, w / views, max_relative = 1e-5);
            }
        }
        let none = probabilities(&model, &faces, 8, Tta::None).unwrap();
        assert!(
            none.iter().zip(&got).any(|(a, b)| (a - b).abs() > 1e-4),
            "{tta:?} changes nothing"
        );
    }
}

/// `wgfer bench` profiles the real training step: every layer that runs a
/// kernel appears with its forward and backward dispatches, products carry
/// GFLOP/s, and each row's share is its GPU time over the step's wall time.
#[test]
fn bench_profiles_every_layer_of_the_real_step() {
    let gpu = common::gpu();
    if !gpu.has_timestamps() {
        eprintln!("SKIPPED: {} has no timestamp queries", gpu.adapter());
        return;
    }
    for kind in [ArchKind::Tutorial, ArchKind::Fine] {
        bench_profiles_every_layer_of(&gpu, kind);
    }
}

fn bench_profiles_every_layer_of(gpu: &wgfer::engine::Gpu, kind: ArchKind) {
    let report = wgfer::fer::bench::run(gpu, kind, 4, 4, 1, false).unwrap();
    assert_eq!(report.arch, kind);
    let has = |name: &str, pass: &str| {
        report
            .kernels
            .iter()
            .any(|k| k.name == name && k.pass == pass)
    };
    for layer in ["conv1", "res_2_conv_b", "res_3_identity_2_c"] {
        let name = format!("conv2d {layer}");
        assert!(has(&name, "forward") && has(&name, "backward"), "{name}");
    }
    assert!(has("batchnorm+relu bn_conv1", "backward"));
    assert!(has("max_pool max_pooling2d", "forward"));
    assert!(has("dense Dense_final", "backward"));
    assert!(has("softmax_xent loss", "forward"));
    assert!(has("adam", "step"));
    // No dispatch is left unlabelled.
    assert!(report.kernels.iter().all(|k| !k.name.is_empty()));
    for k in report.kernels.iter().chain(&report.infer_kernels) {
        assert!(k.median_ms >= 0.0 && k.step_share >= 0.0, "{k:?}");
        if k.kernel.starts_with("gemm") {
            assert!(k.gflops.is_some(), "{k:?}");
        }
    }
    let sum: f64 = report.kernels.iter().map(|k| k.step_share).sum();
    assert!((sum - report.train_gpu_share).abs() < 1e-9);
    assert!(sum > 0.0);
    assert!(
        report
            .infer_kernels
            .iter()
            .any(|k| k.name == "conv2d+bn+relu conv1"),
        "inference runs the folded plan"
    );
    assert!(!report.infer_kernels.iter().any(|k| k.pass == "backward"));
    assert_eq!(report.photo.faces_found, 5, "{:?}", report.photo);
    assert!(report.photo.detect_640x480_ms > 0.0);
}

/// Inference runs the plan with batch norms folded into the convolutions
/// (`Plan::inference`): the same logits as the unfolded plan to 1e-5, with
/// batch-norm statistics far from their initial values, and again after a
/// training step has changed the weights (the folded ones are made anew).
#[test]
fn folded_inference_equals_the_unfolded_plan() {
    for kind in [ArchKind::Tutorial, ArchKind::Fine] {
        folded_inference_equals_the_unfolded_plan_of(kind);
    }
}

fn folded_inference_equals_the_unfolded_plan_of(kind: ArchKind) {
    let gpu = common::gpu();
    let arch = Architecture::of_kind(kind, 5);
    let mut rng = common::rng();
    let (trainable, _) = initial_values(&arch, 0);
    // Random gammas, betas, means and variances (> 0) instead of 1, 0, 0, 1.
    let mut t = trainable.clone();
    for p in arch
        .params
        .iter()
        .filter(|p| p.trainable && p.name.starts_with("bn"))
    {
        let r = common::random(&mut rng, p.len());
        t[p.offset..p.offset + p.len()].copy_from_slice(&r);
    }
    let moving: Vec<f32> = common::random(&mut rng, arch.moving_len)
        .iter()
        .map(|v| v.abs() + 0.2)
        .collect();
    let model = Model::from_values(&gpu, arch.clone(), &t, &moving).unwrap();
    let x: Vec<f32> = common::random(&mut rng, 4 * 48 * 48)
        .iter()
        .map(|v| v.abs())
        .collect();
    let images = gpu.upload(&[4, 48, 48, 1], &x).unwrap();
    let unfolded = Plan::of(&arch);
    for round in ["fresh weights", "after a training step"] {
        let folded = common::read(
            &gpu,
            &model.forward(&Tape::new(&gpu), &images, false).unwrap(),
        );
        let reference = common::read(
            &gpu,
            &model
                .forward_with(&unfolded, &Tape::new(&gpu), &images, false)
                .unwrap(),
        );
        common::check(
            &format!("{kind:?}: folded logits, {round}"),
            &folded,
            &common::f64s(&reference),
        );
        assert!(
            common::rel_err(&folded, &common::f64s(&reference)) < 1e-5,
            "{kind:?}: {round}"
        );
        // A training-mode forward moves the moving statistics: the next
        // inference must not reuse the folded weights made above.
        model.forward(&Tape::new(&gpu), &images, true).unwrap();
    }
}

/// A weights file names its layer graph: a fine model saved and loaded again
/// is a fine model with the same outputs, and a file naming a graph wgfer does
/// not know is refused by name.
#[test]
fn weights_files_carry_their_architecture() {
    let gpu = common::gpu();
    let dir = common::temp_dir("model-arch");
    let path = dir.join("fine.safetensors");
    let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    let model = Model::new(&gpu, Architecture::of_kind(ArchKind::Fine, 3), 1).unwrap();
    model.save(&path, &names, &[]).unwrap();
    let (arch, read_names) = wgfer::fer::model::describe(&path).unwrap();
    assert_eq!(
        (arch.kind, read_names.clone()),
        (ArchKind::Fine, names.clone())
    );
    let (loaded, _) = Model::load(&gpu, &path).unwrap();
    assert_eq!(loaded.arch.kind, ArchKind::Fine);
    let x: Vec<f32> = (0..2 * 48 * 48).map(|i| (i % 251) as f32 / 251.0).collect();
    let images = gpu.upload(&[2, 48, 48, 1], &x).unwrap();
    let logits =
        |m: &Model| common::read(&gpu, &m.forward(&Tape::new(&gpu), &images, false).unwrap());
    assert_eq!(logits(&model), logits(&loaded));

    let mut meta = wgfer::fer::model::metadata(ArchKind::Fine, &names).unwrap();
    meta.insert("arch".into(), "huge".into());
    let odd = dir.join("odd.safetensors");
    wgfer::fer::checkpoint::save(&odd, &model.named_tensors().unwrap(), &meta).unwrap();
    let e = Model::load(&gpu, &odd)
        .err()
        .expect("an unknown arch must be refused")
        .to_string();
    assert!(
        e.contains("unknown architecture `huge`") && e.contains("odd.safetensors"),
        "{e}"
    );
}
