//! The autograd tape (`tape`, `nn`) and the optimiser: a small residual network's
//! gradients against the CPU references chained by hand, fan-out summing,
//! untracked inputs, Adam driving a separable problem to zero loss, and a
//! steady-state training step that allocates nothing.

mod common;

use common::*;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use wgfer::engine::ops::adam::{self, AdamConfig};
use wgfer::engine::ops::batchnorm::{self, BnParams};
use wgfer::engine::ops::conv2d::{self, Conv2d, Padding};
use wgfer::engine::ops::dense::{self, Dense};
use wgfer::engine::ops::pool::{self, Pool2d};
use wgfer::engine::ops::{elementwise, reduce, softmax_xent};
use wgfer::engine::tape::Tape;
use wgfer::engine::{Gpu, Tensor, nn};
use wgfer::fer::data::PIXELS;
use wgfer::fer::model::{Architecture, Model};
use wgfer::fer::trainer::Trainer;

fn one_hot(rng: &mut StdRng, n: usize, k: usize) -> Vec<f32> {
    let mut t = vec![0.0; n * k];
    for row in t.chunks_mut(k) {
        row[rng.random_range(0..k)] = 1.0;
    }
    t
}

/// `len` values in ±[margin, 1) of random sign: never near ReLU's kink.
fn away_from_zero(rng: &mut StdRng, len: usize, margin: f32) -> Vec<f32> {
    (0..len)
        .map(|_| {
            let v = rng.random_range(margin..1.0);
            if rng.random_bool(0.5) { v } else { -v }
        })
        .collect()
}

// ------------------------------------------------------------------ 1. a residual network

const N: usize = 2;
const SIDE: usize = 6;
const C: usize = 3;
const MID: usize = 4;
const CLASSES: usize = 5;
const FLAT: usize = 3 * 3 * C;

/// The network's host-side values.
struct Values {
    x: Vec<f32>,
    w1: Vec<f32>,
    b1: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    w2: Vec<f32>,
    b2: Vec<f32>,
    wd: Vec<f32>,
    bd: Vec<f32>,
    targets: Vec<f32>,
}

/// Every intermediate of the f64 forward pass.
struct Forward {
    h1: Vec<f64>,
    bn: Vec<f64>,
    r1: Vec<f64>,
    sum: Vec<f64>,
    r2: Vec<f64>,
    pooled: Vec<f64>,
    logits: Vec<f64>,
    loss: f64,
}

struct Geometry {
    conv1: Conv2d,
    conv2: Conv2d,
    pool: Pool2d,
    dense: Dense,
}

fn geometry() -> Geometry {
    Geometry {
        conv1: Conv2d::new(&[N, SIDE, SIDE, C], MID, [3, 3], 1, Padding::Same).unwrap(),
        conv2: Conv2d::new(&[N, SIDE, SIDE, MID], C, [1, 1], 1, Padding::Valid).unwrap(),
        pool: Pool2d::new(&[N, SIDE, SIDE, C], 2, 2).unwrap(),
        dense: Dense::new(&[N, FLAT], CLASSES).unwrap(),
    }
}

fn cpu_forward(g: &Geometry, v: &Values) -> Forward {
    let eps = batchnorm::EPSILON as f64;
    let h1 = conv2d::cpu::forward(&g.conv1, &f64s(&v.x), &f64s(&v.w1), &f64s(&v.b1));
    let (bn, _, _) = batchnorm::cpu::forward_train(&h1, MID, &f64s(&v.gamma), &f64s(&v.beta), eps);
    let r1 = elementwise::cpu::relu(&bn);
    let h2 = conv2d::cpu::forward(&g.conv2, &r1, &f64s(&v.w2), &f64s(&v.b2));
    let sum = elementwise::cpu::add(&h2, &f64s(&v.x));
    let r2 = elementwise::cpu::relu(&sum);
    let pooled = pool::cpu::avg_forward(&g.pool, &r2);
    let logits = dense::cpu::forward(&g.dense, &pooled, &f64s(&v.wd), &f64s(&v.bd));
    let loss = softmax_xent::cpu::softmax_xent(&logits, &f64s(&v.targets), CLASSES);
    Forward {
        h1,
        bn,
        r1,
        sum,
        r2,
        pooled,
        logits,
        loss,
    }
}

/// Random values whose ReLU inputs all keep 1e-4 from zero, so that the f32
/// GPU pass and the f64 reference take the same side of every kink.
fn draw_values(rng: &mut StdRng, g: &Geometry) -> (Values, Forward) {
    for _ in 0..1000 {
        let v = Values {
            x: random(rng, N * SIDE * SIDE * C),
            w1: random(rng, g.conv1.k() * MID),
            b1: random(rng, MID),
            gamma: random(rng, MID).iter().map(|v| v + 1.5).collect(),
            beta: random(rng, MID),
            w2: random(rng, MID * C),
            b2: random(rng, C),
            wd: random(rng, FLAT * CLASSES),
            bd: random(rng, CLASSES),
            targets: one_hot(rng, N, CLASSES),
        };
        let f = cpu_forward(g, &v);
        if f.bn.iter().chain(&f.sum).all(|z| z.abs() > 1e-4) {
            return (v, f);
        }
    }
    panic!("no draw kept the ReLU inputs away from zero");
}

/// Reference gradients, chained by hand in reverse:
/// (dx, dw1, db1, dgamma, dbeta, dw2, db2, dwd, dbd), and the gradient of
/// conv1's output (h1).
fn cpu_backward(g: &Geometry, v: &Values, f: &Forward) -> ([Vec<f64>; 9], Vec<f64>) {
    let eps = batchnorm::EPSILON as f64;
    let dlogits = softmax_xent::cpu::softmax_xent_backward(&f.logits, &f64s(&v.targets), CLASSES);
    let dwd = dense::cpu::grad_weight(&g.dense, &f.pooled, &dlogits);
    let dbd = reduce::cpu_column_sums(&dlogits, CLASSES);
    let dpooled = dense::cpu::grad_input(&g.dense, &dlogits, &f64s(&v.wd));
    let dr2 = pool::cpu::avg_backward(&g.pool, &dpooled);
    // The add hands dsum to both the 1x1 convolution and the shortcut.
    let dsum = elementwise::cpu::relu_backward(&f.r2, &dr2);
    let dw2 = conv2d::cpu::grad_weight(&g.conv2, &f.r1, &dsum);
    let db2 = conv2d::cpu::grad_bias(&g.conv2, &dsum);
    let dr1 = conv2d::cpu::grad_input(&g.conv2, &dsum, &f64s(&v.w2));
    let dbn = elementwise::cpu::relu_backward(&f.r1, &dr1);
    let (dh1, dgamma, dbeta) = batchnorm::cpu::backward(&f.h1, &dbn, MID, &f64s(&v.gamma), eps);
    let x = f64s(&v.x);
    let dw1 = conv2d::cpu::grad_weight(&g.conv1, &x, &dh1);
    let db1 = conv2d::cpu::grad_bias(&g.conv1, &dh1);
    let dx_conv = conv2d::cpu::grad_input(&g.conv1, &dh1, &f64s(&v.w1));
    // x fans out: the convolution's gradient plus the shortcut's.
    let dx = elementwise::cpu::add(&dx_conv, &dsum);
    ([dx, dw1, db1, dgamma, dbeta, dw2, db2, dwd, dbd], dh1)
}

#[test]
fn residual_network_gradients_match_cpu_references() {
    let gpu = gpu();
    let mut rng = rng();
    let g = geometry();
    let (v, f) = draw_values(&mut rng, &g);

    let x = upload(&gpu, &[N, SIDE, SIDE, C], &v.x);
    let w1 = upload(&gpu, &g.conv1.weight_shape(), &v.w1);
    let b1 = upload(&gpu, &[MID], &v.b1);
    let gamma = upload(&gpu, &[MID], &v.gamma);
    let beta = upload(&gpu, &[MID], &v.beta);
    let moving_mean = upload(&gpu, &[MID], &[0.0; MID]);
    let moving_var = upload(&gpu, &[MID], &[1.0; MID]);
    let w2 = upload(&gpu, &g.conv2.weight_shape(), &v.w2);
    let b2 = upload(&gpu, &[C], &v.b2);
    let wd = upload(&gpu, &[FLAT, CLASSES], &v.wd);
    let bd = upload(&gpu, &[CLASSES], &v.bd);
    let targets = upload(&gpu, &[N, CLASSES], &v.targets);

    let tape = Tape::new(&gpu);
    let watched = [&x, &w1, &b1, &gamma, &beta, &w2, &b2, &wd, &bd];
    for t in watched {
        tape.watch(t);
    }
    let h1 = nn::conv2d(&tape, &x, &w1, &b1, 1, Padding::Same).unwrap();
    let bn_params = BnParams {
        gamma: &gamma,
        beta: &beta,
        moving_mean: &moving_mean,
        moving_var: &moving_var,
    };
    let bn = nn::batch_norm(&tape, &h1, &bn_params, true).unwrap();
    let r1 = nn::relu(&tape, &bn).unwrap();
    let h2 = nn::conv2d(&tape, &r1, &w2, &b2, 1, Padding::Valid).unwrap();
    let sum = nn::add(&tape, &h2, &x).unwrap();
    let r2 = nn::relu(&tape, &sum).unwrap();
    let pooled = nn::avg_pool(&tape, &r2, 2, 2).unwrap();
    let flat = pooled.reshape(&[N, FLAT]);
    let logits = nn::dense(&tape, &flat, &wd, &bd).unwrap();
    let (_, metrics) = nn::softmax_cross_entropy(&tape, &logits, &targets).unwrap();

    check("network logits", &read(&gpu, &logits), &f.logits);
    let m = read(&gpu, &metrics);
    check("network loss", &m[..1], &[f.loss]);
    let correct = softmax_xent::cpu::correct(&f.logits, &f64s(&v.targets), CLASSES);
    assert_eq!(m[1] as usize, correct, "correct count");

    let grads = tape.backward(&metrics, upload(&gpu, &[1], &[1.0])).unwrap();
    let (want, dh1) = cpu_backward(&g, &v, &f);
    let dh1_norm = dh1.iter().map(|v| v * v).sum::<f64>().sqrt();
    let names = [
        "x",
        "conv1 kernel",
        "conv1 bias",
        "gamma",
        "beta",
        "conv2 kernel",
        "conv2 bias",
        "dense kernel",
        "dense bias",
    ];
    for ((t, name), want) in watched.iter().zip(names).zip(&want) {
        let got = grads
            .get(t)
            .unwrap_or_else(|| panic!("no gradient reached {name}"));
        assert_eq!(
            got.len(),
            t.len(),
            "gradient of {name} has shape {:?}, the tensor {:?}",
            got.shape(),
            t.shape()
        );
        let got = read(&gpu, got);
        if name == "conv1 bias" {
            // Batch norm removes any per-channel shift of its input, so the
            // bias before it has a zero gradient: the reference is rounding
            // noise, and the GPU's column sums of dh1 must cancel to the
            // rounding level of the terms summed.
            let scale = dh1_norm;
            assert!(
                want.iter().all(|w| w.abs() <= 1e-9 * scale),
                "reference bias gradient {want:?} is not zero"
            );
            let norm = got.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
            assert!(
                got.iter().all(|v| v.is_finite()) && norm <= 1e-4 * scale,
                "conv1 bias gradient {got:?} should vanish (|dh1| = {scale:.3e})"
            );
        } else {
            eprintln!(
                "gradient of {name}: relative error {:.2e}",
                rel_err(&got, want)
            );
            check(&format!("network gradient of {name}"), &got, want);
        }
    }
    // Only watched leaves come back, not intermediates.
    for (t, name) in [
        (&h1, "conv1 output"),
        (&sum, "residual sum"),
        (&logits, "logits"),
    ] {
        assert!(
            grads.get(t).is_none(),
            "the {name} is an intermediate but got a gradient"
        );
    }
}

// ------------------------------------------------------------------ 1b. a block's end, fused

/// `nn::batch_norm_add_relu` (training mode) against the three ops it
/// replaces, batch_norm → add → relu: the same output and the same gradients
/// for x, gamma, beta and the shortcut, from a random dy. The shortcut keeps
/// every ReLU input 0.05 from zero (the two orders of summation may differ
/// in the last bits).
#[test]
fn batch_norm_add_relu_equals_its_three_ops() {
    let gpu = gpu();
    let mut rng = rng();
    for (m, c) in [(50, 8), (37, 3), (200, 64)] {
        let eps = batchnorm::EPSILON as f64;
        let x: Vec<f32> = random(&mut rng, m * c)
            .iter()
            .map(|v| 2.0 * v + 0.3)
            .collect();
        let (gamma, beta) = (random(&mut rng, c), random(&mut rng, c));
        // The shortcut, nudged where the sum would come near zero.
        let (bn, _, _) =
            batchnorm::cpu::forward_train(&f64s(&x), c, &f64s(&gamma), &f64s(&beta), eps);
        let r: Vec<f32> = random(&mut rng, m * c)
            .iter()
            .zip(&bn)
            .map(|(&r, &b)| match b + r as f64 {
                s if s.abs() < 0.05 => r + 0.1 * s.signum() as f32,
                _ => r,
            })
            .collect();
        let dy = random(&mut rng, m * c);
        let run = |fused: bool| {
            let t = |v: &[f32], shape: &[usize]| upload(&gpu, shape, v);
            let (xt, rt) = (t(&x, &[m, c]), t(&r, &[m, c]));
            let (gt, bt) = (t(&gamma, &[c]), t(&beta, &[c]));
            let (mm, mv) = (t(&vec![0.0; c], &[c]), t(&vec![1.0; c], &[c]));
            let p = BnParams {
                gamma: &gt,
                beta: &bt,
                moving_mean: &mm,
                moving_var: &mv,
            };
            let tape = Tape::new(&gpu);
            for w in [&xt, &rt, &gt, &bt] {
                tape.watch(w);
            }
            let y = if fused {
                nn::batch_norm_add_relu(&tape, &xt, &rt, &p, true).unwrap()
            } else {
                let bn = nn::batch_norm(&tape, &xt, &p, true).unwrap();
                let sum = nn::add(&tape, &bn, &rt).unwrap();
                nn::relu(&tape, &sum).unwrap()
            };
            let values = read(&gpu, &y);
            let grads = tape.backward(&y, upload(&gpu, &[m, c], &dy)).unwrap();
            let g = [&xt, &gt, &bt, &rt].map(|w| read(&gpu, grads.get(w).unwrap()));
            (values, g, read(&gpu, &mm))
        };
        let (y, g, moving) = run(true);
        let (want_y, want_g, want_moving) = run(false);
        let f = |v: &[f32]| f64s(v);
        check(&format!("fused block end {m}x{c}"), &y, &f(&want_y));
        check(&format!("moving mean {m}x{c}"), &moving, &f(&want_moving));
        for (name, (got, want)) in ["x", "gamma", "beta", "shortcut"]
            .iter()
            .zip(g.iter().zip(&want_g))
        {
            check(
                &format!("fused block end {m}x{c}: gradient of {name}"),
                got,
                &f(want),
            );
        }
    }
}

// ------------------------------------------------------------------ 2. fan-out

/// z = add(add(relu(x), x), relu(x)) with one relu node: relu(x) and x both
/// reach two consumers, so dz/dx = r·(1 + 2·[x > 0]); and add(x, x) = 2r.
#[test]
fn gradients_reaching_a_tensor_twice_are_summed() {
    let gpu = gpu();
    let mut rng = rng();
    let len = 300;
    let xv = away_from_zero(&mut rng, len, 1e-3);
    let r = random(&mut rng, len);
    let x = upload(&gpu, &[len], &xv);

    let tape = Tape::new(&gpu);
    tape.watch(&x);
    let a = nn::relu(&tape, &x).unwrap();
    let y = nn::add(&tape, &a, &x).unwrap();
    let z = nn::add(&tape, &y, &a).unwrap();
    let grads = tape.backward(&z, upload(&gpu, &[len], &r)).unwrap();
    let want: Vec<f64> = xv
        .iter()
        .zip(&r)
        .map(|(x, r)| *r as f64 * if *x > 0.0 { 3.0 } else { 1.0 })
        .collect();
    check(
        "d add(add(relu(x), x), relu(x)) / dx",
        &read(&gpu, grads.get(&x).expect("gradient of x")),
        &want,
    );

    let tape = Tape::new(&gpu);
    tape.watch(&x);
    let y = nn::add(&tape, &x, &x).unwrap();
    let grads = tape.backward(&y, upload(&gpu, &[len], &r)).unwrap();
    let want: Vec<f64> = r.iter().map(|r| 2.0 * *r as f64).collect();
    check(
        "d add(x, x) / dx",
        &read(&gpu, grads.get(&x).expect("gradient of x")),
        &want,
    );
}

/// A tensor read by a 1×1 convolution and by a shortcut (an identity
/// block's input): the convolution's input gradient takes the shortcut's
/// in (`Tape::record_folding`), added by the product as it stores dx (or
/// copied first and accumulated by the portable one), with no add of its own;
/// a 3×3 convolution folds it with an add. Both against the CPU references.
#[test]
fn a_convolution_folds_the_gradient_its_input_already_has() {
    let gpu = gpu();
    let mut rng = rng();
    let (n, side, c) = (3, 5, 8);
    for (k, padding) in [(1, Padding::Valid), (3, Padding::Same)] {
        let conv = Conv2d::new(&[n, side, side, c], c, [k, k], 1, padding).unwrap();
        let xv = random(&mut rng, n * side * side * c);
        let wv = random(&mut rng, k * k * c * c);
        let dyv = random(&mut rng, n * side * side * c);
        let x = upload(&gpu, &[n, side, side, c], &xv);
        let w = upload(&gpu, &conv.weight_shape(), &wv);
        let b = upload(&gpu, &[c], &random(&mut rng, c));
        let tape = Tape::new(&gpu);
        for t in [&x, &w, &b] {
            tape.watch(t);
        }
        let h = nn::conv2d(&tape, &x, &w, &b, 1, padding).unwrap();
        let y = nn::add(&tape, &h, &x).unwrap();
        let adds = gpu.dispatches_of("elementwise") + gpu.dispatches_of("elementwise_vec4");
        let grads = tape.backward(&y, upload(&gpu, y.shape(), &dyv)).unwrap();
        let added = gpu.dispatches_of("elementwise") + gpu.dispatches_of("elementwise_vec4") - adds;
        assert_eq!(added, (k != 1) as u64, "{k}x{k}: adds in the backward pass");
        let want: Vec<f64> = conv2d::cpu::grad_input(&conv, &f64s(&dyv), &f64s(&wv))
            .iter()
            .zip(&dyv)
            .map(|(conv, shortcut)| conv + *shortcut as f64)
            .collect();
        check(
            &format!("d (conv{k}x{k}(x) + x) / dx"),
            &read(&gpu, grads.get(&x).expect("gradient of x")),
            &want,
        );
    }
}

/// The model's convolution blocks compute only the part of a 1×1
/// convolution's output that the following max-pool reads (5×5 → 2×2 reads
/// 4×4). The pooled output and every gradient must be what the full
/// convolution gives.
#[test]
fn a_convolution_cropped_to_what_its_pool_reads_changes_nothing() {
    let gpu = gpu();
    let mut rng = rng();
    let (n, side, cin, cout) = (2, 5, 8, 12);
    let x = upload(
        &gpu,
        &[n, side, side, cin],
        &random(&mut rng, n * side * side * cin),
    );
    let w = upload(&gpu, &[1, 1, cin, cout], &random(&mut rng, cin * cout));
    let b = upload(&gpu, &[cout], &random(&mut rng, cout));
    let r = random(&mut rng, n * 2 * 2 * cout);
    let run = |crop: bool| {
        let tape = Tape::new(&gpu);
        for t in [&x, &w, &b] {
            tape.watch(t);
        }
        let y = if crop {
            let conv = Conv2d::new(x.shape(), cout, [1, 1], 1, Padding::Valid).unwrap();
            nn::conv2d_as(&tape, conv.cropped(4, 4).unwrap(), &x, &w, &b).unwrap()
        } else {
            nn::conv2d(&tape, &x, &w, &b, 1, Padding::Valid).unwrap()
        };
        let pooled = nn::max_pool(&tape, &y, 2, 2).unwrap();
        assert_eq!(pooled.shape(), [n, 2, 2, cout]);
        let out = read(&gpu, &pooled);
        let grads = tape
            .backward(&pooled, upload(&gpu, &[n, 2, 2, cout], &r))
            .unwrap();
        let g = [&x, &w, &b].map(|t| read(&gpu, grads.get(t).expect("a watched gradient")));
        (out, g)
    };
    let (full, full_grads) = run(false);
    let (cropped, cropped_grads) = run(true);
    check("pooled output, cropped convolution", &cropped, &f64s(&full));
    for (name, (got, want)) in ["dx", "dw", "db"]
        .iter()
        .zip(cropped_grads.iter().zip(&full_grads))
    {
        check(&format!("{name}, cropped convolution"), got, &f64s(want));
    }
}

// ------------------------------------------------------------------ 3. untracked inputs

/// conv → relu → dense → softmax cross-entropy on a tape watching `watch`;
/// returns the gradients of (x, conv kernel, dense kernel) and the number of
/// dispatches the backward pass encoded.
fn small_net_backward(
    gpu: &Gpu,
    rng: &mut StdRng,
    watch: [bool; 3],
) -> ([Option<Vec<f32>>; 3], u64) {
    let c = Conv2d::new(&[2, 5, 5, 3], 4, [3, 3], 1, Padding::Valid).unwrap();
    let x = upload(gpu, &[2, 5, 5, 3], &random(rng, 150));
    let w = upload(gpu, &c.weight_shape(), &random(rng, c.k() * 4));
    let b = upload(gpu, &[4], &random(rng, 4));
    let wd = upload(gpu, &[36, 3], &random(rng, 36 * 3));
    let bd = upload(gpu, &[3], &random(rng, 3));
    let targets = upload(gpu, &[2, 3], &one_hot(rng, 2, 3));
    let tape = Tape::new(gpu);
    let leaves = [&x, &w, &wd];
    for (t, on) in leaves.iter().zip(watch) {
        if on {
            tape.watch(t);
        }
    }
    let h = nn::conv2d(&tape, &x, &w, &b, 1, Padding::Valid).unwrap();
    let h = nn::relu(&tape, &h).unwrap();
    let logits = nn::dense(&tape, &h.reshape(&[2, 36]), &wd, &bd).unwrap();
    let (_, metrics) = nn::softmax_cross_entropy(&tape, &logits, &targets).unwrap();
    let seed = upload(gpu, &[1], &[1.0]);
    let before = gpu.stats().dispatches;
    let grads = tape.backward(&metrics, seed).unwrap();
    let dispatches = gpu.stats().dispatches - before;
    let got = leaves.map(|t| grads.get(t).map(|g| read(gpu, g)));
    // The unwatched biases never get a gradient either.
    assert!(
        grads.get(&b).is_none() && grads.get(&bd).is_none(),
        "an unwatched bias got a gradient"
    );
    (got, dispatches)
}

#[test]
fn untracked_inputs_get_no_gradient_and_cost_nothing() {
    let gpu = gpu();
    let seed: u64 = rng().random();
    let draw = || StdRng::seed_from_u64(seed);

    // Nothing watched: nothing recorded, so the backward pass encodes nothing.
    let (none, dispatches) = small_net_backward(&gpu, &mut draw(), [false; 3]);
    assert!(
        none.iter().all(Option::is_none),
        "an unwatched tensor got a gradient"
    );
    assert_eq!(
        dispatches, 0,
        "a tape with nothing watched still ran backward kernels"
    );

    // Parameters watched, the input not: the input gets no gradient, the
    // parameters the same ones as when it is watched, and the convolution's
    // grad_input (transpose, product, col2im) is never run.
    let ([dx, dw, dwd], params_only) = small_net_backward(&gpu, &mut draw(), [false, true, true]);
    let ([dx_all, dw_all, dwd_all], all) = small_net_backward(&gpu, &mut draw(), [true; 3]);
    assert!(dx.is_none(), "the unwatched input got a gradient");
    assert!(dx_all.is_some(), "the watched input got no gradient");
    let (dw, dwd) = (
        dw.expect("conv kernel gradient"),
        dwd.expect("dense kernel gradient"),
    );
    check(
        "conv kernel gradient without x watched",
        &dw,
        &f64s(&dw_all.expect("conv kernel gradient")),
    );
    check(
        "dense kernel gradient without x watched",
        &dwd,
        &f64s(&dwd_all.expect("dense kernel gradient")),
    );
    assert!(
        params_only > 0,
        "the parameters' backward pass ran no kernels"
    );
    assert!(
        params_only + 2 <= all,
        "backward ran {params_only} dispatches without x watched, {all} with: the input's gradient was not skipped"
    );
}

// ------------------------------------------------------------------ 4. Adam

/// 64 points in [-1, 1]² split by the line x + y/2 = 0 with a margin of 0.25;
/// one dense layer trained with Adam (lr 0.05) through the tape.
#[test]
fn adam_fits_a_separable_problem() {
    let gpu = gpu();
    let mut rng = rng();
    let n = 64;
    let (mut points, mut labels) = (Vec::new(), Vec::new());
    while points.len() < 2 * n {
        let (a, b) = (
            rng.random_range(-1.0f32..1.0),
            rng.random_range(-1.0f32..1.0),
        );
        let s = a + 0.5 * b;
        if s.abs() >= 0.25 {
            points.extend([a, b]);
            labels.extend(if s > 0.0 { [0.0, 1.0] } else { [1.0, 0.0] });
        }
    }
    let x = upload(&gpu, &[n, 2], &points);
    let targets = upload(&gpu, &[n, 2], &labels);
    let config = AdamConfig {
        lr: 0.05,
        ..AdamConfig::default()
    };
    let w = upload(
        &gpu,
        &[2, 2],
        &random(&mut rng, 4)
            .iter()
            .map(|v| 0.1 * v)
            .collect::<Vec<_>>(),
    );
    let b = upload(&gpu, &[2], &[0.0, 0.0]);
    let (mw, vw, mb, vb) = (
        gpu.zeros(&[2, 2]).unwrap(),
        gpu.zeros(&[2, 2]).unwrap(),
        gpu.zeros(&[2]).unwrap(),
        gpu.zeros(&[2]).unwrap(),
    );
    let alpha = upload(&gpu, &[1], &[0.0]);
    let flag = gpu.zeros(&[1]).unwrap();
    let one = upload(&gpu, &[1], &[1.0]);

    let evaluate = |tape: &Tape| -> Tensor {
        let logits = nn::dense(tape, &x, &w, &b).unwrap();
        nn::softmax_cross_entropy(tape, &logits, &targets)
            .unwrap()
            .1
    };
    let initial = read(&gpu, &evaluate(&Tape::new(&gpu)));
    for t in 1..=300 {
        gpu.write(&alpha, &[config.alpha(t)]).unwrap();
        let tape = Tape::new(&gpu);
        tape.watch(&w);
        tape.watch(&b);
        let metrics = evaluate(&tape);
        let grads = tape.backward(&metrics, one.clone()).unwrap();
        adam::step(
            &gpu,
            &config,
            &w,
            grads.get(&w).expect("dw"),
            &mw,
            &vw,
            &alpha,
            &flag,
        )
        .unwrap();
        adam::step(
            &gpu,
            &config,
            &b,
            grads.get(&b).expect("db"),
            &mb,
            &vb,
            &alpha,
            &flag,
        )
        .unwrap();
    }
    let last = read(&gpu, &evaluate(&Tape::new(&gpu)));
    eprintln!(
        "loss {} -> {}, correct {} -> {} of {n}",
        initial[0], last[0], initial[1], last[1]
    );
    assert!(
        initial[0] > 0.3,
        "the initial loss {} is already low: the test proves nothing",
        initial[0]
    );
    assert!(
        last[0] < 0.05,
        "300 Adam steps left the loss at {} (from {})",
        last[0],
        initial[0]
    );
    assert_eq!(
        last[1] as usize, n,
        "not every point is classified correctly"
    );
    assert_eq!(
        read(&gpu, &flag)[0].to_bits(),
        0,
        "a gradient was not finite"
    );
}

/// Label smoothing reaches the step: the loss is linear in the targets, so from one
/// model and batch the loss with ε = 0.5 is the mean of those with one-hot (ε = 0) and
/// uniform (ε = 1) targets, and the two differ.
#[test]
fn label_smoothing_sets_the_targets_of_the_step() {
    let gpu = common::gpu();
    let mut rng = rng();
    let batch = 4;
    let images: Vec<f32> = (0..batch * PIXELS)
        .map(|_| rng.random_range(0.0..1.0))
        .collect();
    let labels: Vec<u8> = (0..batch).map(|_| rng.random_range(0..5u8)).collect();
    let loss = |smoothing: f32| {
        let model = Model::new(&gpu, Architecture::resnet(5), 0).unwrap();
        let mut trainer = Trainer::new(model, batch, AdamConfig::default()).unwrap();
        trainer.label_smoothing = smoothing;
        trainer.step(&images, &labels).unwrap().loss as f64
    };
    let (one_hot, half, uniform) = (loss(0.0), loss(0.5), loss(1.0));
    assert!((one_hot - uniform).abs() > 1e-3, "{one_hot} {uniform}");
    approx::assert_relative_eq!(half, 0.5 * (one_hot + uniform), max_relative = 1e-4);
}

// ------------------------------------------------------------------ 5. steady state

#[test]
fn steady_state_training_steps_allocate_nothing() {
    // No poisoning: it would add a copy per output (the counts must be the trainer's own).
    let gpu = Gpu::new(None)
        .unwrap_or_else(|e| panic!("tests need a GPU adapter (lavapipe will do): {e:#}"));
    eprintln!("adapter: {}", gpu.adapter());
    let mut rng = rng();
    let model = Model::new(&gpu, Architecture::resnet(5), 0).unwrap();
    let batch = 4;
    let mut trainer = Trainer::new(model, batch, AdamConfig::default()).unwrap();
    let mut step = |trainer: &mut Trainer| {
        let images: Vec<f32> = (0..batch * PIXELS)
            .map(|_| rng.random_range(0.0..1.0))
            .collect();
        let labels: Vec<u8> = (0..batch).map(|_| rng.random_range(0..5u8)).collect();
        let r = trainer.step(&images, &labels).unwrap();
        assert!(
            r.finite && r.loss.is_finite() && r.loss > 0.0,
            "step result {r:?}"
        );
        assert!(r.correct <= batch, "{} correct of {batch}", r.correct);
    };
    for _ in 0..3 {
        step(&mut trainer);
    }
    let before = gpu.stats();
    let transposes = gpu.dispatches_of("transpose");
    let adds = gpu.dispatches_of("elementwise") + gpu.dispatches_of("elementwise_vec4");
    for _ in 0..2 {
        step(&mut trainer);
    }
    let after = gpu.stats();
    // Per step: every convolution's weights (views of one flat vector) in one
    // dispatch, the dense layer's (5 columns, by value) in another.
    assert_eq!(
        gpu.dispatches_of("transpose") - transposes,
        2 * 2,
        "the weight transposes of a step should take two dispatches"
    );
    // The gradients that reach a tensor twice are added by the products,
    // except where two cropped 1×1 convolutions (a stage's first block)
    // read the same tensor: one add per stage.
    assert_eq!(
        gpu.dispatches_of("elementwise") + gpu.dispatches_of("elementwise_vec4") - adds,
        2 * 2,
        "a step's gradient adds"
    );
    eprintln!("before {before:?}\nafter  {after:?}");
    assert_eq!(
        after.buffers_created, before.buffers_created,
        "steady-state steps created buffers"
    );
    assert_eq!(
        after.bind_groups_created, before.bind_groups_created,
        "steady-state steps created bind groups"
    );
    assert_eq!(
        after.pipelines_created, before.pipelines_created,
        "steady-state steps created pipelines"
    );
    assert_eq!(
        after.submits,
        before.submits + 2,
        "a step should submit exactly once"
    );
    assert!(
        after.dispatches > before.dispatches,
        "the steps dispatched nothing"
    );
    assert_eq!(
        (after.dispatches - before.dispatches) % 2,
        0,
        "the two steps dispatched different amounts of work"
    );
}
