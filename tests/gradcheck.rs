//! Every CPU backward reference (`ops::*::cpu`) against central finite
//! differences of its own forward reference, in f64. The GPU kernels are
//! checked against these references in `kernels.rs`; this file checks that the
//! references themselves are the derivatives they claim to be.
//!
//! Method: a random projection r turns the op into a scalar L(x) = Σ r·f(x)
//! (or the op already is a scalar loss); the analytic gradient is the
//! backward reference at dy = r, the numeric one is
//! (L(x + h·eᵢ) − L(x − h·eᵢ)) / 2h for every element i of every input.
//!
//! Tolerance: with h = 1e-6 the truncation error of the central difference is
//! O(h²·L''') ≈ 1e-12 and the rounding error ≈ ε·|L| / h ≈ 1e-10·|L|, so for
//! the small, O(1) cases below the two gradients agree to ~1e-8 or better;
//! 1e-6 leaves room while still catching any wrong term (those show up as
//! errors of 1e-2 or more). Max pooling and ReLU are piecewise linear: the
//! inputs keep every value at least 1e-3 from a kink (ties, zero), far beyond
//! the 1e-6 step, so the finite difference never crosses one.

mod common;

use common::rng;
use rand::RngExt;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use wgfer::engine::ops::conv2d::{Conv2d, Padding};
use wgfer::engine::ops::dense::Dense;
use wgfer::engine::ops::pool::Pool2d;
use wgfer::engine::ops::{batchnorm, conv2d, dense, elementwise, pool, reduce, softmax_xent};

const H: f64 = 1e-6;
const TOLERANCE: f64 = 1e-6;

/// Uniform values in [lo, hi).
fn uniform(rng: &mut StdRng, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

/// Values in ±[lo, hi) of random sign: never (nearly) zero, so that a
/// gradient built from a few of them cannot vanish by chance.
fn signed(rng: &mut StdRng, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..n)
        .map(|_| if rng.random_bool(0.5) { 1.0 } else { -1.0 } * rng.random_range(lo..hi))
        .collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "projection and output differ in length");
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Central differences of the scalar `loss` at `x`, one element at a time.
fn numeric_gradient(x: &[f64], loss: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|i| {
            xp[i] = x[i] + H;
            let up = loss(&xp);
            xp[i] = x[i] - H;
            let down = loss(&xp);
            xp[i] = x[i];
            (up - down) / (2.0 * H)
        })
        .collect()
}

/// ‖analytic − numeric‖ / ‖numeric‖ ≤ TOLERANCE; a zero numeric gradient
/// would make the check vacuous, so it fails too.
fn assert_gradient(what: &str, analytic: &[f64], numeric: &[f64]) {
    assert_eq!(
        analytic.len(),
        numeric.len(),
        "{what}: gradient lengths differ"
    );
    assert!(
        analytic.iter().all(|v| v.is_finite()),
        "{what}: non-finite analytic gradient"
    );
    let den = numeric.iter().map(|v| v * v).sum::<f64>().sqrt();
    assert!(
        den > 1e-3,
        "{what}: the numeric gradient is (nearly) zero, the check would prove nothing"
    );
    let num = analytic
        .iter()
        .zip(numeric)
        .map(|(a, n)| (a - n).powi(2))
        .sum::<f64>()
        .sqrt();
    let e = num / den;
    eprintln!("{what}: relative error {e:.2e}");
    assert!(
        e <= TOLERANCE,
        "{what}: relative error {e:.3e} > {TOLERANCE:e}"
    );
}

// ------------------------------------------------------------------ conv2d

/// (input NHWC, cout, kernel, stride, padding): 1×1, 3×3 and 7×7 kernels,
/// stride 2, 'same' (odd padding at the bottom/right with stride 2), explicit
/// zeros, 'valid', channels not a multiple of 4, batch 1 and 2.
fn conv_cases() -> Vec<([usize; 4], usize, usize, usize, Padding)> {
    vec![
        ([1, 5, 6, 3], 5, 3, 1, Padding::Same),
        ([2, 7, 6, 3], 5, 3, 2, Padding::Same),
        ([2, 5, 5, 5], 3, 1, 1, Padding::Valid),
        ([1, 6, 7, 2], 3, 1, 2, Padding::Valid),
        ([1, 4, 5, 1], 2, 3, 1, Padding::Zeros(2)),
        ([2, 6, 5, 6], 7, 3, 2, Padding::Valid),
        ([1, 9, 8, 2], 3, 7, 2, Padding::Zeros(3)),
        ([2, 6, 7, 3], 2, 7, 1, Padding::Same),
    ]
}

fn conv_case(input: [usize; 4], cout: usize, k: usize, stride: usize, padding: Padding) -> Conv2d {
    Conv2d::new(&input, cout, [k, k], stride, padding).unwrap()
}

/// Random x, w, b, r for one convolution.
fn conv_inputs(rng: &mut StdRng, c: &Conv2d) -> [Vec<f64>; 4] {
    let x = uniform(rng, c.n * c.h * c.w * c.cin, -1.0, 1.0);
    let w = uniform(rng, c.k() * c.cout, -1.0, 1.0);
    let b = uniform(rng, c.cout, -1.0, 1.0);
    let r = uniform(rng, c.m() * c.cout, -1.0, 1.0);
    [x, w, b, r]
}

#[test]
fn conv2d_grad_input_matches_finite_differences() {
    let mut rng = rng();
    for (input, cout, k, stride, padding) in conv_cases() {
        let c = conv_case(input, cout, k, stride, padding);
        let [x, w, b, r] = conv_inputs(&mut rng, &c);
        let analytic = conv2d::cpu::grad_input(&c, &r, &w);
        let numeric = numeric_gradient(&x, |x| dot(&r, &conv2d::cpu::forward(&c, x, &w, &b)));
        assert_gradient(
            &format!("conv2d grad_input {input:?} -> {cout}, {k}x{k}/{stride} {padding:?}"),
            &analytic,
            &numeric,
        );
    }
}

#[test]
fn conv2d_grad_weight_matches_finite_differences() {
    let mut rng = rng();
    for (input, cout, k, stride, padding) in conv_cases() {
        let c = conv_case(input, cout, k, stride, padding);
        let [x, w, b, r] = conv_inputs(&mut rng, &c);
        let analytic = conv2d::cpu::grad_weight(&c, &x, &r);
        let numeric = numeric_gradient(&w, |w| dot(&r, &conv2d::cpu::forward(&c, &x, w, &b)));
        assert_gradient(
            &format!("conv2d grad_weight {input:?} -> {cout}, {k}x{k}/{stride} {padding:?}"),
            &analytic,
            &numeric,
        );
    }
}

#[test]
fn conv2d_grad_bias_matches_finite_differences() {
    let mut rng = rng();
    for (input, cout, k, stride, padding) in conv_cases() {
        let c = conv_case(input, cout, k, stride, padding);
        let [x, w, b, r] = conv_inputs(&mut rng, &c);
        let analytic = conv2d::cpu::grad_bias(&c, &r);
        let numeric = numeric_gradient(&b, |b| dot(&r, &conv2d::cpu::forward(&c, &x, &w, b)));
        assert_gradient(
            &format!("conv2d grad_bias {input:?} -> {cout}, {k}x{k}/{stride} {padding:?}"),
            &analytic,
            &numeric,
        );
    }
}

/// Convolutions computing only the top-left part of their output (as before
/// a max-pool that leaves the last row and column unread).
#[test]
fn conv2d_cropped_gradients_match_finite_differences() {
    let mut rng = rng();
    for (input, cout, k, stride, padding, [oh, ow]) in [
        ([2, 5, 5, 3], 4, 1, 1, Padding::Valid, [4, 4]),
        ([1, 7, 6, 3], 5, 3, 2, Padding::Same, [3, 2]),
    ] {
        let c = conv_case(input, cout, k, stride, padding)
            .cropped(oh, ow)
            .unwrap();
        let what =
            format!("{input:?} -> {cout}, {k}x{k}/{stride} {padding:?} cropped to {oh}x{ow}");
        let [x, w, b, r] = conv_inputs(&mut rng, &c);
        let loss = |x: &[f64], w: &[f64], b: &[f64]| dot(&r, &conv2d::cpu::forward(&c, x, w, b));
        assert_gradient(
            &format!("conv2d grad_input {what}"),
            &conv2d::cpu::grad_input(&c, &r, &w),
            &numeric_gradient(&x, |x| loss(x, &w, &b)),
        );
        assert_gradient(
            &format!("conv2d grad_weight {what}"),
            &conv2d::cpu::grad_weight(&c, &x, &r),
            &numeric_gradient(&w, |w| loss(&x, w, &b)),
        );
        assert_gradient(
            &format!("conv2d grad_bias {what}"),
            &conv2d::cpu::grad_bias(&c, &r),
            &numeric_gradient(&b, |b| loss(&x, &w, b)),
        );
    }
}

// ------------------------------------------------------------------ pooling

/// (input NHWC, window, stride): overlapping windows, stride 2, windows that
/// leave a remainder, 1×1, batch 1 and 2.
fn pool_cases() -> Vec<([usize; 4], usize, usize)> {
    vec![
        ([1, 5, 5, 3], 2, 2),
        ([2, 7, 6, 5], 3, 2),
        ([1, 4, 4, 1], 1, 1),
        ([2, 6, 5, 3], 3, 1),
        ([2, 4, 4, 2], 2, 2),
    ]
}

#[test]
fn max_pool_grad_input_matches_finite_differences() {
    let mut rng = rng();
    for (input, size, stride) in pool_cases() {
        let p = Pool2d::new(&input, size, stride).unwrap();
        let len: usize = input.iter().product();
        // Distinct values at least 1e-2 apart (a shuffled ladder plus small
        // jitter): no ties, and a ±1e-6 step never changes a window's winner.
        let mut x: Vec<f64> = (0..len)
            .map(|i| i as f64 * 2e-2 + rng.random_range(0.0..5e-3) - 1.0)
            .collect();
        x.shuffle(&mut rng);
        let r = uniform(&mut rng, p.output_shape().iter().product(), -1.0, 1.0);
        let analytic = pool::cpu::max_backward(&p, &x, &r);
        let numeric = numeric_gradient(&x, |x| dot(&r, &pool::cpu::max_forward(&p, x).0));
        assert_gradient(
            &format!("max_pool grad_input {input:?} {size}/{stride}"),
            &analytic,
            &numeric,
        );
    }
}

#[test]
fn avg_pool_grad_input_matches_finite_differences() {
    let mut rng = rng();
    for (input, size, stride) in pool_cases() {
        let p = Pool2d::new(&input, size, stride).unwrap();
        let x = uniform(&mut rng, input.iter().product(), -1.0, 1.0);
        let r = uniform(&mut rng, p.output_shape().iter().product(), -1.0, 1.0);
        let analytic = pool::cpu::avg_backward(&p, &r);
        let numeric = numeric_gradient(&x, |x| dot(&r, &pool::cpu::avg_forward(&p, x)));
        assert_gradient(
            &format!("avg_pool grad_input {input:?} {size}/{stride}"),
            &analytic,
            &numeric,
        );
    }
}

// ------------------------------------------------------------------ batch norm

/// (rows = n·h·w, channels)
fn bn_cases() -> Vec<(usize, usize)> {
    // Two rows would be degenerate: x̂ = ±√(var/(var+ε)) and dx ∝ ε/var ≈ 0.
    vec![(3, 3), (7, 5), (30, 6), (72, 4)]
}

/// One training-mode batch-norm case: inputs, projection and the
/// reference's gradients at dy = r.
struct BnCase {
    x: Vec<f64>,
    gamma: Vec<f64>,
    beta: Vec<f64>,
    r: Vec<f64>,
    dx: Vec<f64>,
    dgamma: Vec<f64>,
    dbeta: Vec<f64>,
}

fn bn_case(rng: &mut StdRng, m: usize, c: usize) -> BnCase {
    // Shifted and scaled so that the batch statistics are not trivial.
    let x: Vec<f64> = uniform(rng, m * c, -1.0, 1.0)
        .iter()
        .map(|v| 3.0 * v + 0.5)
        .collect();
    let gamma = uniform(rng, c, -1.5, 1.5);
    let beta = uniform(rng, c, -1.0, 1.0);
    let r = uniform(rng, m * c, -1.0, 1.0);
    let (dx, dgamma, dbeta) =
        batchnorm::cpu::backward(&x, &r, c, &gamma, batchnorm::EPSILON as f64);
    BnCase {
        x,
        gamma,
        beta,
        r,
        dx,
        dgamma,
        dbeta,
    }
}

fn bn_loss(x: &[f64], c: usize, gamma: &[f64], beta: &[f64], r: &[f64]) -> f64 {
    dot(
        r,
        &batchnorm::cpu::forward_train(x, c, gamma, beta, batchnorm::EPSILON as f64).0,
    )
}

#[test]
fn batchnorm_grad_input_matches_finite_differences() {
    let mut rng = rng();
    for (m, c) in bn_cases() {
        let BnCase {
            x,
            gamma,
            beta,
            r,
            dx,
            ..
        } = bn_case(&mut rng, m, c);
        let numeric = numeric_gradient(&x, |x| bn_loss(x, c, &gamma, &beta, &r));
        assert_gradient(&format!("batchnorm grad_input {m}x{c}"), &dx, &numeric);
    }
}

#[test]
fn batchnorm_grad_gamma_matches_finite_differences() {
    let mut rng = rng();
    for (m, c) in bn_cases() {
        let BnCase {
            x,
            gamma,
            beta,
            r,
            dgamma,
            ..
        } = bn_case(&mut rng, m, c);
        let numeric = numeric_gradient(&gamma, |g| bn_loss(&x, c, g, &beta, &r));
        assert_gradient(&format!("batchnorm grad_gamma {m}x{c}"), &dgamma, &numeric);
    }
}

#[test]
fn batchnorm_grad_beta_matches_finite_differences() {
    let mut rng = rng();
    for (m, c) in bn_cases() {
        let BnCase {
            x,
            gamma,
            beta,
            r,
            dbeta,
            ..
        } = bn_case(&mut rng, m, c);
        let numeric = numeric_gradient(&beta, |b| bn_loss(&x, c, &gamma, b, &r));
        assert_gradient(&format!("batchnorm grad_beta {m}x{c}"), &dbeta, &numeric);
    }
}

// ------------------------------------------------------------------ elementwise

#[test]
fn relu_grad_input_matches_finite_differences() {
    let mut rng = rng();
    for len in [1, 7, 64, 257] {
        // Both signs, every value at least 1e-3 from the kink at zero.
        let mut x = signed(&mut rng, len, 1e-3, 1.0);
        // The first one on the side that passes the gradient.
        x[0] = x[0].abs();
        let r = signed(&mut rng, len, 0.1, 1.0);
        let y = elementwise::cpu::relu(&x);
        let analytic = elementwise::cpu::relu_backward(&y, &r);
        let numeric = numeric_gradient(&x, |x| dot(&r, &elementwise::cpu::relu(x)));
        assert_gradient(&format!("relu grad_input {len}"), &analytic, &numeric);
    }
}

/// `nn::add`'s backward hands dy to both inputs unchanged.
#[test]
fn add_grad_inputs_match_finite_differences() {
    let mut rng = rng();
    for len in [1, 7, 64, 257] {
        let a = uniform(&mut rng, len, -1.0, 1.0);
        let b = uniform(&mut rng, len, -1.0, 1.0);
        let r = signed(&mut rng, len, 0.1, 1.0);
        let da = numeric_gradient(&a, |a| dot(&r, &elementwise::cpu::add(a, &b)));
        let db = numeric_gradient(&b, |b| dot(&r, &elementwise::cpu::add(&a, b)));
        assert_gradient(&format!("add grad_a {len}"), &r, &da);
        assert_gradient(&format!("add grad_b {len}"), &r, &db);
    }
}

// ------------------------------------------------------------------ dense

fn dense_cases() -> Vec<(usize, usize, usize)> {
    vec![(1, 1, 1), (3, 7, 5), (17, 9, 4), (2, 27, 5)]
}

fn dense_setup(rng: &mut StdRng, n: usize, i: usize, o: usize) -> (Dense, [Vec<f64>; 4]) {
    let d = Dense::new(&[n, i], o).unwrap();
    // Away from zero: the 1x1x1 case's gradients are single products.
    let x = signed(rng, n * i, 0.1, 1.0);
    let w = signed(rng, i * o, 0.1, 1.0);
    let b = signed(rng, o, 0.1, 1.0);
    let r = signed(rng, n * o, 0.1, 1.0);
    (d, [x, w, b, r])
}

#[test]
fn dense_grad_input_matches_finite_differences() {
    let mut rng = rng();
    for (n, i, o) in dense_cases() {
        let (d, [x, w, b, r]) = dense_setup(&mut rng, n, i, o);
        let analytic = dense::cpu::grad_input(&d, &r, &w);
        let numeric = numeric_gradient(&x, |x| dot(&r, &dense::cpu::forward(&d, x, &w, &b)));
        assert_gradient(
            &format!("dense grad_input {n}x{i}->{o}"),
            &analytic,
            &numeric,
        );
    }
}

#[test]
fn dense_grad_weight_matches_finite_differences() {
    let mut rng = rng();
    for (n, i, o) in dense_cases() {
        let (d, [x, w, b, r]) = dense_setup(&mut rng, n, i, o);
        let analytic = dense::cpu::grad_weight(&d, &x, &r);
        let numeric = numeric_gradient(&w, |w| dot(&r, &dense::cpu::forward(&d, &x, w, &b)));
        assert_gradient(
            &format!("dense grad_weight {n}x{i}->{o}"),
            &analytic,
            &numeric,
        );
    }
}

/// The dense bias gradient is the column sum of dy (`reduce::cpu_column_sums`).
#[test]
fn dense_grad_bias_matches_finite_differences() {
    let mut rng = rng();
    for (n, i, o) in dense_cases() {
        let (d, [x, w, b, r]) = dense_setup(&mut rng, n, i, o);
        let analytic = reduce::cpu_column_sums(&r, o);
        let numeric = numeric_gradient(&b, |b| dot(&r, &dense::cpu::forward(&d, &x, &w, b)));
        assert_gradient(
            &format!("dense grad_bias {n}x{i}->{o}"),
            &analytic,
            &numeric,
        );
    }
}

// ------------------------------------------------------------------ softmax, cross-entropy

/// (rows, classes)
fn class_cases() -> Vec<(usize, usize)> {
    vec![(1, 2), (1, 5), (3, 7), (8, 5), (5, 3)]
}

/// Soft targets (rows summing to 1) or one-hot ones.
fn targets(rng: &mut StdRng, n: usize, k: usize, soft: bool) -> Vec<f64> {
    let mut t = vec![0.0; n * k];
    for row in t.chunks_mut(k) {
        if soft {
            row.iter_mut()
                .for_each(|v| *v = rng.random_range(0.05..1.0));
            let s: f64 = row.iter().sum();
            row.iter_mut().for_each(|v| *v /= s);
        } else {
            row[rng.random_range(0..k)] = 1.0;
        }
    }
    t
}

#[test]
fn softmax_grad_input_matches_finite_differences() {
    let mut rng = rng();
    for (n, k) in class_cases() {
        // Logits in ±2 keep y(1 − y) ≥ 0.018, and each row's projection
        // spans [-1, 1], so that no row's gradient (y ⊙ (r − y·r)) vanishes.
        let x = uniform(&mut rng, n * k, -2.0, 2.0);
        let mut r = uniform(&mut rng, n * k, -1.0, 1.0);
        for row in r.chunks_mut(k) {
            (row[0], row[1]) = (1.0, -1.0);
        }
        let y = softmax_xent::cpu::softmax(&x, k);
        let analytic = softmax_xent::cpu::softmax_backward(&y, &r, k);
        let numeric = numeric_gradient(&x, |x| dot(&r, &softmax_xent::cpu::softmax(x, k)));
        assert_gradient(&format!("softmax grad_input {n}x{k}"), &analytic, &numeric);
    }
}

#[test]
fn xent_grad_probabilities_matches_finite_differences() {
    let mut rng = rng();
    for (n, k) in class_cases() {
        for soft in [false, true] {
            // Probabilities well inside the clip [1e-7, 1 − 1e-7]: rows of a
            // softmax of logits in ±1.5, so p ≥ e⁻³/7 ≈ 7e-3 and the
            // truncation error of ln p (h²/3p³, relative h²/3p²) stays ~1e-8.
            let p = softmax_xent::cpu::softmax(&uniform(&mut rng, n * k, -1.5, 1.5), k);
            assert!(p.iter().all(|v| *v > 5e-3 && *v < 1.0 - 5e-3));
            let t = targets(&mut rng, n, k, soft);
            let analytic = softmax_xent::cpu::xent_backward(&p, &t, k);
            let numeric = numeric_gradient(&p, |p| softmax_xent::cpu::xent(p, &t, k));
            assert_gradient(
                &format!("xent grad_probabilities {n}x{k} soft={soft}"),
                &analytic,
                &numeric,
            );
        }
    }
}

#[test]
fn softmax_xent_grad_logits_matches_finite_differences() {
    let mut rng = rng();
    for (n, k) in class_cases() {
        for soft in [false, true] {
            // Logits in ±2: no probability within 0.018 of its target.
            let x = uniform(&mut rng, n * k, -2.0, 2.0);
            let p = softmax_xent::cpu::softmax(&x, k);
            // Soft targets that happen to match the probabilities give a
            // zero gradient: draw again until every row is clearly off.
            let off = |t: &[f64]| {
                p.chunks(k)
                    .zip(t.chunks(k))
                    .all(|(p, t)| p.iter().zip(t).map(|(p, t)| (p - t).abs()).sum::<f64>() > 0.05)
            };
            let t = std::iter::repeat_with(|| targets(&mut rng, n, k, soft))
                .find(|t| off(t))
                .unwrap();
            let analytic = softmax_xent::cpu::softmax_xent_backward(&x, &t, k);
            let numeric = numeric_gradient(&x, |x| softmax_xent::cpu::softmax_xent(x, &t, k));
            assert_gradient(
                &format!("softmax_xent grad_logits {n}x{k} soft={soft}"),
                &analytic,
                &numeric,
            );
        }
    }
}
