//! Every kernel, forward and backward, against its CPU reference on fresh
//! random inputs: awkward shapes (odd sizes, batch 1, stride 2, 1×1 / 3×3 /
//! 7×7 kernels, channels not a multiple of 4) and the tutorial ResNet's own.

mod common;

use common::*;
use rand::rngs::StdRng;
use wgfer::engine::ops::batchnorm::{BatchNorm, BnParams};
use wgfer::engine::ops::conv2d::{Columns, Conv2d, Epilogue, Padding};
use wgfer::engine::ops::dense::Dense;
use wgfer::engine::ops::gemm::{Gemm, Strides};
use wgfer::engine::ops::gemm_sg::{self, SubgroupTile};
use wgfer::engine::ops::pool::Pool2d;
use wgfer::engine::ops::{
    adam, batchnorm, bn_fold, conv2d, dense, elementwise, gemm, pool, reduce, softmax_xent,
    transpose,
};
use wgfer::engine::{Gpu, Kernels, Shader};

/// (input NHWC, cout, kernel, stride, padding)
fn conv_cases() -> Vec<([usize; 4], usize, usize, usize, Padding)> {
    vec![
        ([1, 5, 7, 3], 5, 3, 1, Padding::Same),
        ([2, 9, 8, 5], 7, 3, 2, Padding::Valid),
        ([3, 6, 6, 6], 10, 1, 1, Padding::Valid),
        ([1, 11, 11, 2], 3, 1, 2, Padding::Valid),
        ([2, 13, 12, 1], 6, 7, 2, Padding::Zeros(3)),
        ([1, 4, 5, 9], 4, 3, 1, Padding::Zeros(2)),
        ([2, 6, 7, 3], 5, 7, 1, Padding::Same),
        // An even kernel ('same' pads one side only), and padding wider than
        // the kernel.
        ([2, 6, 5, 4], 3, 2, 1, Padding::Same),
        ([1, 4, 5, 3], 4, 3, 1, Padding::Zeros(3)),
        // More images than a workgroup's 8 (im2col, col2im loop over them).
        ([9, 5, 5, 8], 4, 3, 1, Padding::Same),
        ([10, 6, 5, 3], 5, 3, 2, Padding::Valid),
        ([9, 7, 6, 1], 4, 5, 2, Padding::Valid),
        // One input channel with vec4s out (the implicit kernel's gray path),
        // kernels 3, 5 and 9 wide (one, two and three vec4s of columns).
        ([1, 9, 10, 1], 8, 3, 1, Padding::Same),
        ([2, 7, 6, 1], 4, 5, 2, Padding::Valid),
        ([1, 12, 11, 1], 4, 9, 2, Padding::Zeros(4)),
        // The tutorial ResNet's convolutions (batch 2).
        ([2, 48, 48, 1], 64, 7, 2, Padding::Zeros(3)),
        ([2, 11, 11, 64], 64, 1, 1, Padding::Valid),
        ([2, 5, 5, 64], 64, 3, 1, Padding::Same),
        ([2, 5, 5, 64], 256, 1, 1, Padding::Valid),
        ([2, 11, 11, 64], 256, 1, 1, Padding::Valid),
        ([2, 5, 5, 256], 64, 1, 1, Padding::Valid),
        ([2, 5, 5, 256], 128, 1, 1, Padding::Valid),
        ([2, 2, 2, 128], 128, 3, 1, Padding::Same),
        ([2, 2, 2, 128], 512, 1, 1, Padding::Valid),
        ([2, 5, 5, 256], 512, 1, 1, Padding::Valid),
        ([2, 2, 2, 512], 128, 1, 1, Padding::Valid),
        // Channels in whole tiles (the implicit weight gradient's rows) with
        // strides, padding and a kernel tap per tile row block.
        ([3, 7, 6, 32], 12, 3, 2, Padding::Same),
        ([1, 9, 8, 64], 8, 3, 1, Padding::Zeros(2)),
        ([2, 6, 6, 32], 36, 5, 2, Padding::Valid),
    ]
}

#[test]
fn conv2d_forward_grad_input_grad_weight_grad_bias() {
    let gpu = gpu();
    let mut rng = rng();
    let mut implicit = 0;
    for (input, cout, k, stride, padding) in conv_cases() {
        let c = Conv2d::new(&input, cout, [k, k], stride, padding).unwrap();
        let what = format!("{input:?} -> {cout}, {k}x{k}/{stride} {padding:?}");
        implicit += check_conv(&gpu, &mut rng, c, &what) as usize;
    }
    // Adapters with the subgroup kernels train without im2col where the
    // channels fill whole tiles: the cases above must reach that path.
    if matches!(gpu.fixed_subgroup_size(), Some(8 | 16)) {
        assert!(
            implicit >= 5,
            "only {implicit} cases took the implicit path"
        );
    }
}

/// Convolutions computing only the top-left part of their output (what a
/// following max-pool reads): the 1×1 ones stop being pointwise and go
/// through im2col / col2im; skipped outputs must leave zero gradient behind.
#[test]
fn conv2d_cropped_output() {
    let gpu = gpu();
    let mut rng = rng();
    for (input, cout, k, stride, padding, [oh, ow]) in [
        ([2, 5, 5, 8], 12, 1, 1, Padding::Valid, [4, 4]),
        ([1, 5, 5, 3], 4, 1, 1, Padding::Valid, [4, 5]),
        ([2, 7, 6, 3], 5, 3, 2, Padding::Same, [3, 2]),
        // The tutorial ResNet's convolution blocks (batch 2).
        ([2, 11, 11, 64], 256, 1, 1, Padding::Valid, [10, 10]),
        ([2, 5, 5, 256], 512, 1, 1, Padding::Valid, [4, 4]),
        ([2, 5, 5, 256], 128, 1, 1, Padding::Valid, [4, 4]),
    ] {
        let c = Conv2d::new(&input, cout, [k, k], stride, padding)
            .unwrap()
            .cropped(oh, ow)
            .unwrap();
        let what =
            format!("{input:?} -> {cout}, {k}x{k}/{stride} {padding:?} cropped to {oh}x{ow}");
        check_conv(&gpu, &mut rng, c, &what);
    }
    let c = Conv2d::new(&[1, 5, 5, 3], 4, [1, 1], 1, Padding::Valid).unwrap();
    assert!(c.cropped(6, 5).is_err() && c.cropped(0, 5).is_err());
}

/// Checks every product of `c` against the reference; true when its forward
/// kept x rather than the im2col matrix (`Columns::Implicit`).
fn check_conv(gpu: &Gpu, rng: &mut StdRng, c: Conv2d, what: &str) -> bool {
    let (input, cout) = ([c.n, c.h, c.w, c.cin], c.cout);
    let x = random(rng, input.iter().product());
    let w = random(rng, c.k() * cout);
    let b = random(rng, cout);
    let dy = random(rng, c.m() * cout);
    let (xt, wt, bt) = (
        upload(gpu, &input, &x),
        upload(gpu, &c.weight_shape(), &w),
        upload(gpu, &[cout], &b),
    );
    let dyt = upload(gpu, &c.output_shape(), &dy);
    let (y, cols) = c.forward(gpu, &xt, &wt, &bt).unwrap();
    check(
        &format!("conv2d_forward {what}"),
        &read(gpu, &y),
        &conv2d::cpu::forward(&c, &f64s(&x), &f64s(&w), &f64s(&b)),
    );
    let dx = c.grad_input(gpu, &dyt, &wt, None).unwrap();
    check(
        &format!("conv2d_grad_input {what}"),
        &read(gpu, &dx),
        &conv2d::cpu::grad_input(&c, &f64s(&dy), &f64s(&w)),
    );
    let dw = c.grad_weight(gpu, &cols, &dyt).unwrap();
    check(
        &format!("conv2d_grad_weight {what}"),
        &read(gpu, &dw),
        &conv2d::cpu::grad_weight(&c, &f64s(&x), &f64s(&dy)),
    );
    let db = c.grad_bias(gpu, &dyt).unwrap();
    check(
        &format!("conv2d_grad_bias {what}"),
        &read(gpu, &db),
        &conv2d::cpu::grad_bias(&c, &f64s(&dy)),
    );
    let (dw, db) = c.grad_weight_and_bias(gpu, &cols, &dyt).unwrap();
    check(
        &format!("conv2d_grad_weight_and_bias (weight) {what}"),
        &read(gpu, &dw),
        &conv2d::cpu::grad_weight(&c, &f64s(&x), &f64s(&dy)),
    );
    check(
        &format!("conv2d_grad_weight_and_bias (bias) {what}"),
        &read(gpu, &db),
        &conv2d::cpu::grad_bias(&c, &f64s(&dy)),
    );
    matches!(cols, Columns::Implicit(_))
}

#[test]
fn conv2d_first_layer_at_batch_64() {
    let gpu = gpu();
    let mut rng = rng();
    let c = Conv2d::new(&[64, 48, 48, 1], 64, [7, 7], 2, Padding::Zeros(3)).unwrap();
    let x = random(&mut rng, 64 * 48 * 48);
    let w = random(&mut rng, c.k() * 64);
    let b = random(&mut rng, 64);
    let (y, _) = c
        .forward(
            &gpu,
            &upload(&gpu, &[64, 48, 48, 1], &x),
            &upload(&gpu, &c.weight_shape(), &w),
            &upload(&gpu, &[64], &b),
        )
        .unwrap();
    check(
        "conv2d_forward conv1 batch 64",
        &read(&gpu, &y),
        &conv2d::cpu::forward(&c, &f64s(&x), &f64s(&w), &f64s(&b)),
    );
}

#[test]
fn gemm_shapes_and_transposed_a_and_accumulate() {
    let gpu = gpu();
    let mut rng = rng();
    for (m, k, n) in [
        (1, 1, 1),
        (17, 3, 5),
        (33, 65, 64),
        (100, 7, 130),
        (5, 300, 12),
        (64, 512, 5),
        // Shapes the subgroup kernels take (n % 4 == 0, k and m % 4 == 0 for
        // vec4 rows), with remainders of their 24 × 32 and 16 × 64 tiles.
        (37, 20, 36),
        (19, 16, 8),
        (48, 8, 64),
        (52, 24, 100),
    ] {
        for transposed in [false, true] {
            for accumulate in [false, true] {
                let a = random(&mut rng, m * k);
                let b = random(&mut rng, k * n);
                let bias = random(&mut rng, n);
                let c0 = random(&mut rng, m * n);
                let strides = if transposed {
                    Strides::transposed(m)
                } else {
                    Strides::rows(k)
                };
                let g = Gemm {
                    accumulate,
                    ..Gemm::new(m, n, k, strides)
                };
                let ct = upload(&gpu, &[m, n], &c0);
                g.run(
                    &gpu,
                    &upload(&gpu, &[m * k], &a),
                    &upload(&gpu, &[k, n], &b),
                    Some(&upload(&gpu, &[n], &bias)),
                    &ct,
                )
                .unwrap();
                let mut want: Vec<f32> = c0.clone();
                gemm::cpu(&g, &a, &b, Some(&bias), &mut want);
                check(
                    &format!("gemm {m}x{k}x{n} transposed={transposed} acc={accumulate}"),
                    &read(&gpu, &ct),
                    &f64s(&want),
                );
            }
        }
    }
}

/// The product that also returns the column sums of B (dW and db in one
/// pass): the 8-lane kernel's fused sums for a transposed A with m and n
/// multiples of 4, a reduction otherwise. k not a multiple of 8 exercises
/// the rows past k that the kernel must leave out.
#[test]
fn gemm_summing_b_columns() {
    let gpu = gpu();
    let mut rng = rng();
    for (m, k, n) in [
        (16, 37, 8),
        (52, 100, 64),
        (48, 8, 36),
        (20, 9, 12),
        (7, 30, 5),
    ] {
        let g = Gemm::new(m, n, k, Strides::transposed(m));
        let a = random(&mut rng, m * k);
        let b = random(&mut rng, k * n);
        let ct = gpu.empty(&[m, n]).unwrap();
        let sums = g
            .run_summing_b(
                &gpu,
                &upload(&gpu, &[m * k], &a),
                &upload(&gpu, &[k, n], &b),
                &ct,
            )
            .unwrap();
        let mut want = vec![0.0; m * n];
        gemm::cpu(&g, &a, &b, None, &mut want);
        check(
            &format!("gemm summing B {m}x{k}x{n}"),
            &read(&gpu, &ct),
            &f64s(&want),
        );
        check(
            &format!("gemm's column sums of B {m}x{k}x{n}"),
            &read(&gpu, &sums),
            &reduce::cpu_column_sums(&f64s(&b), n),
        );
    }
}

fn pool_cases() -> Vec<([usize; 4], usize, usize)> {
    vec![
        ([1, 5, 5, 3], 2, 2),
        ([2, 7, 9, 5], 3, 2),
        ([1, 4, 4, 1], 1, 1),
        ([2, 6, 5, 7], 3, 1),
        // Stride 2 with overlapping windows (2×2 blocks of pixels per
        // invocation): odd and even sides, windows past the last pixel pair.
        ([1, 8, 7, 4], 3, 2),
        ([2, 9, 10, 3], 4, 2),
        ([1, 6, 9, 8], 4, 2),
        // The model's: stem max-pool 3/2, the blocks' 2/2, the final average 2/2.
        ([2, 24, 24, 64], 3, 2),
        ([2, 11, 11, 64], 2, 2),
        ([2, 11, 11, 256], 2, 2),
        ([2, 5, 5, 128], 2, 2),
        ([2, 5, 5, 512], 2, 2),
        ([2, 2, 2, 512], 2, 2),
        // More images than a workgroup's 8 (each loops over every 8th).
        ([9, 5, 5, 3], 2, 2),
        ([17, 11, 11, 8], 3, 2),
    ]
}

#[test]
fn max_pool_forward_backward() {
    let gpu = gpu();
    let mut rng = rng();
    for (input, size, stride) in pool_cases() {
        let p = Pool2d::new(&input, size, stride).unwrap();
        let x = random(&mut rng, input.iter().product());
        let dy = random(&mut rng, p.output_shape().iter().product());
        let (y, arg) = p.max_forward(&gpu, &upload(&gpu, &input, &x)).unwrap();
        let (want, _) = pool::cpu::max_forward(&p, &f64s(&x));
        check(
            &format!("max_pool_forward {input:?} {size}/{stride}"),
            &read(&gpu, &y),
            &want,
        );
        let values = p.max_values(&gpu, &upload(&gpu, &input, &x)).unwrap();
        check(
            &format!("max_pool_values {input:?} {size}/{stride}"),
            &read(&gpu, &values),
            &want,
        );
        let dx = p
            .max_backward(&gpu, &upload(&gpu, &p.output_shape(), &dy), &arg)
            .unwrap();
        let want = pool::cpu::max_backward(&p, &f64s(&x), &f64s(&dy));
        check(
            &format!("max_pool_backward {input:?} {size}/{stride}"),
            &read(&gpu, &dx),
            &want,
        );
    }
}

#[test]
fn max_pool_ties_go_to_the_first_maximum() {
    let gpu = gpu();
    let p = Pool2d::new(&[1, 2, 2, 1], 2, 2).unwrap();
    let (_, arg) = p
        .max_forward(&gpu, &upload(&gpu, &[1, 2, 2, 1], &[0.5, 1.0, 1.0, 1.0]))
        .unwrap();
    let dx = p
        .max_backward(&gpu, &upload(&gpu, &[1, 1, 1, 1], &[3.0]), &arg)
        .unwrap();
    assert_eq!(read(&gpu, &dx), vec![0.0, 3.0, 0.0, 0.0]);
}

#[test]
fn average_pool_forward_backward() {
    let gpu = gpu();
    let mut rng = rng();
    for (input, size, stride) in pool_cases() {
        let p = Pool2d::new(&input, size, stride).unwrap();
        let x = random(&mut rng, input.iter().product());
        let dy = random(&mut rng, p.output_shape().iter().product());
        let y = p.avg_forward(&gpu, &upload(&gpu, &input, &x)).unwrap();
        check(
            &format!("avg_pool_forward {input:?} {size}/{stride}"),
            &read(&gpu, &y),
            &pool::cpu::avg_forward(&p, &f64s(&x)),
        );
        let dx = p
            .avg_backward(&gpu, &upload(&gpu, &p.output_shape(), &dy))
            .unwrap();
        check(
            &format!("avg_pool_backward {input:?} {size}/{stride}"),
            &read(&gpu, &dx),
            &pool::cpu::avg_backward(&p, &f64s(&dy)),
        );
    }
}

fn bn_cases() -> Vec<(usize, usize)> {
    // (rows = n·h·w, channels)
    vec![
        (1, 3),
        (7, 5),
        (30, 13),
        (300, 6),
        (2 * 24 * 24, 64),
        (64 * 25, 256),
        (64 * 4, 512),
        (64 * 121, 64),
        // Past 512 rows the statistics take a reduction of their own: 64
        // chunks, the last one shorter.
        (9000, 8),
    ]
}

#[test]
fn batchnorm_forward_train_infer_backward() {
    let gpu = gpu();
    let mut rng = rng();
    for (m, c) in bn_cases() {
        let bn = BatchNorm::new(c);
        // A shifted, scaled input so that the variance is not trivially 1/3.
        let x: Vec<f32> = random(&mut rng, m * c)
            .iter()
            .map(|v| 3.0 * v + 0.5)
            .collect();
        let gamma = random(&mut rng, c);
        let beta = random(&mut rng, c);
        let mm = random(&mut rng, c);
        let mv: Vec<f32> = random(&mut rng, c).iter().map(|v| v.abs() + 0.1).collect();
        let dy = random(&mut rng, m * c);
        let (gt, bt) = (upload(&gpu, &[c], &gamma), upload(&gpu, &[c], &beta));
        let (mmt, mvt) = (upload(&gpu, &[c], &mm), upload(&gpu, &[c], &mv));
        let params = BnParams {
            gamma: &gt,
            beta: &bt,
            moving_mean: &mmt,
            moving_var: &mvt,
        };
        let xt = upload(&gpu, &[m, c], &x);
        let eps = batchnorm::EPSILON as f64;

        let y = bn.forward_infer(&gpu, &xt, &params).unwrap();
        let want = batchnorm::cpu::normalize(
            &f64s(&x),
            c,
            &f64s(&mm),
            &f64s(&mv),
            &f64s(&gamma),
            &f64s(&beta),
            eps,
        );
        check(
            &format!("batchnorm_forward_infer {m}x{c}"),
            &read(&gpu, &y),
            &want,
        );
        // With a residual added, then with the ReLU after the sum too.
        let r = random(&mut rng, m * c);
        let rt = upload(&gpu, &[m, c], &r);
        let plus = elementwise::cpu::add(&want, &f64s(&r));
        for (op, want) in [
            (bn, plus.clone()),
            (BatchNorm::with_relu(c), elementwise::cpu::relu(&plus)),
        ] {
            let y = op.forward_infer_add(&gpu, &xt, &params, &rt).unwrap();
            let what = format!("batchnorm_forward_infer_add {m}x{c} relu={}", op.relu);
            check(&what, &read(&gpu, &y), &want);
        }
        let short = upload(&gpu, &[c], &gamma);
        let e = bn
            .forward_infer_add(&gpu, &xt, &params, &short)
            .unwrap_err();
        assert!(e.to_string().contains("residual"), "{e}");

        let (y, stats) = bn.forward_train(&gpu, &xt, &params).unwrap();
        let (want, mean, var) =
            batchnorm::cpu::forward_train(&f64s(&x), c, &f64s(&gamma), &f64s(&beta), eps);
        check(
            &format!("batchnorm_forward_train {m}x{c}"),
            &read(&gpu, &y),
            &want,
        );
        let mom = batchnorm::MOMENTUM as f64;
        let want_mm: Vec<f64> = mm
            .iter()
            .zip(&mean)
            .map(|(o, b)| mom * *o as f64 + (1.0 - mom) * b)
            .collect();
        let want_mv: Vec<f64> = mv
            .iter()
            .zip(&var)
            .map(|(o, b)| mom * *o as f64 + (1.0 - mom) * b)
            .collect();
        check(
            &format!("batchnorm moving mean {m}x{c}"),
            &read(&gpu, &mmt),
            &want_mm,
        );
        check(
            &format!("batchnorm moving variance {m}x{c}"),
            &read(&gpu, &mvt),
            &want_mv,
        );

        let g = bn
            .backward(&gpu, &xt, &y, &upload(&gpu, &[m, c], &dy), &stats, &gt)
            .unwrap();
        assert!(g.dshortcut.is_none());
        let (dx, dgamma, dbeta) =
            batchnorm::cpu::backward(&f64s(&x), &f64s(&dy), c, &f64s(&gamma), eps);
        // With one row, x − mean is 0 and dx is exactly 0.
        if m > 1 {
            check(
                &format!("batchnorm_grad_input {m}x{c}"),
                &read(&gpu, &g.dx),
                &dx,
            );
            check(
                &format!("batchnorm_grad_gamma {m}x{c}"),
                &read(&gpu, &g.dgamma),
                &dgamma,
            );
        }
        check(
            &format!("batchnorm_grad_beta {m}x{c}"),
            &read(&gpu, &g.dbeta),
            &dbeta,
        );
    }
}

#[test]
fn relu_forward_backward_and_add() {
    let gpu = gpu();
    let mut rng = rng();
    for len in [1, 7, 255, 256, 257, 64 * 24 * 24 * 64] {
        let x = random(&mut rng, len);
        let b = random(&mut rng, len);
        let xt = upload(&gpu, &[len], &x);
        let y = elementwise::relu(&gpu, &xt).unwrap();
        let yv = read(&gpu, &y);
        check(
            &format!("relu_forward {len}"),
            &yv,
            &elementwise::cpu::relu(&f64s(&x)),
        );
        let dx = elementwise::relu_backward(&gpu, &y, &upload(&gpu, &[len], &b)).unwrap();
        check(
            &format!("relu_backward {len}"),
            &read(&gpu, &dx),
            &elementwise::cpu::relu_backward(&f64s(&yv), &f64s(&b)),
        );
        let s = elementwise::add(&gpu, &xt, &upload(&gpu, &[len], &b)).unwrap();
        check(
            &format!("add_forward {len}"),
            &read(&gpu, &s),
            &elementwise::cpu::add(&f64s(&x), &f64s(&b)),
        );
    }
}

#[test]
fn dense_forward_grad_input_grad_weight_grad_bias() {
    let gpu = gpu();
    let mut rng = rng();
    for (n, i, o) in [
        (1, 1, 1),
        (3, 7, 5),
        (64, 512, 5),
        (17, 33, 12),
        (256, 512, 7),
    ] {
        let d = Dense::new(&[n, i], o).unwrap();
        let x = random(&mut rng, n * i);
        let w = random(&mut rng, i * o);
        let b = random(&mut rng, o);
        let dy = random(&mut rng, n * o);
        let (xt, wt) = (upload(&gpu, &[n, i], &x), upload(&gpu, &[i, o], &w));
        let dyt = upload(&gpu, &[n, o], &dy);
        let y = d.forward(&gpu, &xt, &wt, &upload(&gpu, &[o], &b)).unwrap();
        check(
            &format!("dense_forward {n}x{i}->{o}"),
            &read(&gpu, &y),
            &dense::cpu::forward(&d, &f64s(&x), &f64s(&w), &f64s(&b)),
        );
        let dx = d.grad_input(&gpu, &dyt, &wt).unwrap();
        check(
            &format!("dense_grad_input {n}x{i}->{o}"),
            &read(&gpu, &dx),
            &dense::cpu::grad_input(&d, &f64s(&dy), &f64s(&w)),
        );
        let dw = d.grad_weight(&gpu, &xt, &dyt).unwrap();
        check(
            &format!("dense_grad_weight {n}x{i}->{o}"),
            &read(&gpu, &dw),
            &dense::cpu::grad_weight(&d, &f64s(&x), &f64s(&dy)),
        );
        let db = d.grad_bias(&gpu, &dyt).unwrap();
        check(
            &format!("dense_grad_bias {n}x{i}->{o}"),
            &read(&gpu, &db),
            &reduce::cpu_column_sums(&f64s(&dy), o),
        );
    }
}

fn one_hot(rng: &mut rand::rngs::StdRng, n: usize, k: usize) -> Vec<f32> {
    use rand::RngExt;
    let mut t = vec![0.0; n * k];
    for r in 0..n {
        t[r * k + rng.random_range(0..k)] = 1.0;
    }
    t
}

#[test]
fn softmax_and_cross_entropy_forward_backward() {
    let gpu = gpu();
    let mut rng = rng();
    for (n, k) in [(1, 2), (1, 5), (3, 7), (64, 5), (100, 3), (257, 5)] {
        let x: Vec<f32> = random(&mut rng, n * k).iter().map(|v| 4.0 * v).collect();
        let t = one_hot(&mut rng, n, k);
        let dy = random(&mut rng, n * k);
        let (xt, tt) = (upload(&gpu, &[n, k], &x), upload(&gpu, &[n, k], &t));
        let one = upload(&gpu, &[1], &[1.0]);
        let what = format!("{n}x{k}");

        let y = softmax_xent::softmax(&gpu, &xt).unwrap();
        let yv = read(&gpu, &y);
        check(
            &format!("softmax_forward {what}"),
            &yv,
            &softmax_xent::cpu::softmax(&f64s(&x), k),
        );
        let dx = softmax_xent::softmax_backward(&gpu, &y, &upload(&gpu, &[n, k], &dy)).unwrap();
        check(
            &format!("softmax_backward {what}"),
            &read(&gpu, &dx),
            &softmax_xent::cpu::softmax_backward(&f64s(&yv), &f64s(&dy), k),
        );

        let metrics = softmax_xent::xent(&gpu, &y, &tt).unwrap();
        let mv = read(&gpu, &metrics);
        check(
            &format!("xent_forward {what}"),
            &mv[..1],
            &[softmax_xent::cpu::xent(&f64s(&yv), &f64s(&t), k)],
        );
        assert_eq!(
            mv[1] as usize,
            softmax_xent::cpu::correct(&f64s(&x), &f64s(&t), k),
            "correct count {what}"
        );
        let dp = softmax_xent::xent_backward(&gpu, &y, &tt, &one).unwrap();
        check(
            &format!("xent_backward {what}"),
            &read(&gpu, &dp),
            &softmax_xent::cpu::xent_backward(&f64s(&yv), &f64s(&t), k),
        );

        let (probs, metrics) = softmax_xent::softmax_xent(&gpu, &xt, &tt).unwrap();
        let mv = read(&gpu, &metrics);
        check(
            &format!("softmax_xent_forward {what}"),
            &mv[..1],
            &[softmax_xent::cpu::softmax_xent(&f64s(&x), &f64s(&t), k)],
        );
        assert_eq!(
            mv[1] as usize,
            softmax_xent::cpu::correct(&f64s(&x), &f64s(&t), k),
            "correct count {what}"
        );
        let dl = softmax_xent::softmax_xent_backward(&gpu, &probs, &tt, &one).unwrap();
        let want = softmax_xent::cpu::softmax_xent_backward(&f64s(&x), &f64s(&t), k);
        check(
            &format!("softmax_xent_backward {what}"),
            &read(&gpu, &dl),
            &want,
        );
    }
}

/// A confident right answer has a loss near e^-margin: computed as log(1 + tiny) in f32 it
/// would keep only a digit or two (CI once drew a 1x2 batch with a 3e-4 loss and failed).
#[test]
fn cross_entropy_of_confident_right_answers_keeps_its_digits() {
    let gpu = gpu();
    for margin in [3.0f32, 8.0, 12.0, 16.0] {
        let (x, t) = ([0.0, margin, -1.0], [0.0, 1.0, 0.0]);
        let (xt, tt) = (upload(&gpu, &[1, 3], &x), upload(&gpu, &[1, 3], &t));
        let (probs, metrics) = softmax_xent::softmax_xent(&gpu, &xt, &tt).unwrap();
        check(
            &format!("softmax_xent_forward margin {margin}"),
            &read(&gpu, &metrics)[..1],
            &[softmax_xent::cpu::softmax_xent(&f64s(&x), &f64s(&t), 3)],
        );
        let pv = read(&gpu, &probs);
        let metrics = softmax_xent::xent(&gpu, &probs, &tt).unwrap();
        check(
            &format!("xent_forward margin {margin}"),
            &read(&gpu, &metrics)[..1],
            &[softmax_xent::cpu::xent(&f64s(&pv), &f64s(&t), 3)],
        );
    }
}

#[test]
fn adam_steps_match_reference() {
    let gpu = gpu();
    let mut rng = rng();
    let config = adam::AdamConfig::default();
    for len in [1, 5, 1000, 70_001] {
        let p0 = random(&mut rng, len);
        let (pt, mt, vt) = (
            upload(&gpu, &[len], &p0),
            gpu.zeros(&[len]).unwrap(),
            gpu.zeros(&[len]).unwrap(),
        );
        let alpha = upload(&gpu, &[1], &[0.0]);
        let flag = gpu.zeros(&[1]).unwrap();
        let (mut p, mut m, mut v) = (f64s(&p0), vec![0.0; len], vec![0.0; len]);
        for t in 1..=3u64 {
            let g = random(&mut rng, len);
            gpu.write(&alpha, &[config.alpha(t)]).unwrap();
            adam::step(
                &gpu,
                &config,
                &pt,
                &upload(&gpu, &[len], &g),
                &mt,
                &vt,
                &alpha,
                &flag,
            )
            .unwrap();
            adam::cpu_step(&config, t, &mut p, &f64s(&g), &mut m, &mut v);
        }
        check(&format!("adam_step {len} params"), &read(&gpu, &pt), &p);
        check(
            &format!("adam_step {len} first moment"),
            &read(&gpu, &mt),
            &m,
        );
        assert_eq!(
            read(&gpu, &flag)[0].to_bits(),
            0,
            "finite gradients raised the flag"
        );
    }
}

#[test]
fn adam_flags_a_non_finite_gradient() {
    let gpu = gpu();
    let config = adam::AdamConfig::default();
    let p = upload(&gpu, &[3], &[1.0, 2.0, 3.0]);
    let (m, v) = (gpu.zeros(&[3]).unwrap(), gpu.zeros(&[3]).unwrap());
    let alpha = upload(&gpu, &[1], &[config.alpha(1)]);
    let flag = gpu.zeros(&[1]).unwrap();
    adam::step(
        &gpu,
        &config,
        &p,
        &upload(&gpu, &[3], &[0.1, f32::NAN, 0.2]),
        &m,
        &v,
        &alpha,
        &flag,
    )
    .unwrap();
    assert_eq!(read(&gpu, &flag)[0].to_bits(), 1);
    adam::step(
        &gpu,
        &config,
        &p,
        &upload(&gpu, &[3], &[0.1, f32::INFINITY, 0.2]),
        &m,
        &v,
        &alpha,
        &flag,
    )
    .unwrap();
    assert_eq!(read(&gpu, &flag)[0].to_bits(), 1);
    // A finite gradient whose update overflows a weight raises bit 1.
    let big = upload(&gpu, &[4], &[3e38, 1.0, 2.0, 3.0]);
    let (m4, v4) = (gpu.zeros(&[4]).unwrap(), gpu.zeros(&[4]).unwrap());
    let flag = gpu.zeros(&[1]).unwrap();
    let huge = upload(&gpu, &[1], &[1e38]);
    let g = upload(&gpu, &[4], &[-1.0, 0.1, 0.1, 0.1]);
    adam::step(&gpu, &config, &big, &g, &m4, &v4, &huge, &flag).unwrap();
    assert_eq!(read(&gpu, &flag)[0].to_bits(), 2);
}

#[test]
fn a_dispatch_beyond_the_workgroup_limit_is_split_over_two_dimensions() {
    let gpu = gpu();
    let max = gpu.limits().max_compute_workgroups_per_dimension as usize;
    // An odd length takes the scalar build: one lane per element, 256 per
    // workgroup, so this needs more workgroups than one dimension allows.
    let len = max * 256 + 13;
    let x: Vec<f32> = (0..len).map(|i| (i % 1009) as f32 - 504.0).collect();
    assert!(
        gpu.grid(len.div_ceil(256) as u32).unwrap().1 > 1,
        "the test must need a 2-D grid"
    );
    let y = elementwise::relu(&gpu, &upload(&gpu, &[len], &x)).unwrap();
    let got = read(&gpu, &y);
    let first_wrong = got.iter().zip(&x).position(|(g, v)| *g != v.max(0.0));
    assert_eq!(first_wrong, None, "relu over {len} elements");
}

#[test]
fn work_beyond_the_adapter_limits_is_refused_with_the_limit_named() {
    let gpu = gpu();
    let too_many = gpu.max_binding_elements() + 1;
    let e = gpu.empty(&[too_many]).unwrap_err().to_string();
    assert!(e.contains("max_storage_buffer_binding_size"), "{e}");
    let max = gpu.limits().max_compute_workgroups_per_dimension;
    let e = gpu
        .grid(max.saturating_mul(max).saturating_add(1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("max_compute_workgroups_per_dimension"), "{e}");
    // A batch whose activations would not fit is refused before training.
    let arch = wgfer::fer::model::Architecture::resnet(5);
    let e = wgfer::fer::train::check_limits(&gpu, &arch, 1 << 20)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("max_storage_buffer_binding_size") && e.contains("--batch-size"),
        "{e}"
    );
    assert!(wgfer::fer::train::check_limits(&gpu, &arch, 64).is_ok());
}

#[test]
fn batchnorm_relu_fused_forward_and_backward() {
    let gpu = gpu();
    let mut rng = rng();
    // One chunk up to 512 rows (the statistics inside the row kernels), then several.
    for (m, c) in [
        (7, 5),
        (30, 13),
        (2 * 24 * 24, 64),
        (64 * 25, 256),
        (2500, 12),
        (9000, 64),
    ] {
        let bn = BatchNorm::with_relu(c);
        let x: Vec<f32> = random(&mut rng, m * c)
            .iter()
            .map(|v| 3.0 * v + 0.5)
            .collect();
        let (gamma, beta) = (random(&mut rng, c), random(&mut rng, c));
        let dy = random(&mut rng, m * c);
        let (gt, bt) = (upload(&gpu, &[c], &gamma), upload(&gpu, &[c], &beta));
        let (mmt, mvt) = (gpu.zeros(&[c]).unwrap(), upload(&gpu, &[c], &vec![1.0; c]));
        let params = BnParams {
            gamma: &gt,
            beta: &bt,
            moving_mean: &mmt,
            moving_var: &mvt,
        };
        let xt = upload(&gpu, &[m, c], &x);
        let eps = batchnorm::EPSILON as f64;
        let (y, stats) = bn.forward_train(&gpu, &xt, &params).unwrap();
        let (bn_y, _, _) =
            batchnorm::cpu::forward_train(&f64s(&x), c, &f64s(&gamma), &f64s(&beta), eps);
        let want = elementwise::cpu::relu(&bn_y);
        check(
            &format!("batchnorm_relu_forward {m}x{c}"),
            &read(&gpu, &y),
            &want,
        );
        // The ReLU's backward first, then the batch norm's. The mask is the
        // one the kernels use, the GPU's output: with hundreds of thousands of
        // values, some pre-activation lies within rounding of 0, where the
        // f64 reference and the f32 forward may disagree on the ReLU alone.
        let masked = elementwise::cpu::relu_backward(&f64s(&read(&gpu, &y)), &f64s(&dy));
        let (dx, dgamma, dbeta) =
            batchnorm::cpu::backward(&f64s(&x), &masked, c, &f64s(&gamma), eps);
        let g = bn
            .backward_add(&gpu, &xt, &y, &upload(&gpu, &[m, c], &dy), &stats, &gt)
            .unwrap();
        check(
            &format!("batchnorm_relu_grad_input {m}x{c}"),
            &read(&gpu, &g.dx),
            &dx,
        );
        // The shortcut's gradient: dy through the ReLU alone.
        check(
            &format!("batchnorm_relu_grad_shortcut {m}x{c}"),
            &read(&gpu, g.dshortcut.as_ref().unwrap()),
            &masked,
        );
        check(
            &format!("batchnorm_relu_grad_gamma {m}x{c}"),
            &read(&gpu, &g.dgamma),
            &dgamma,
        );
        check(
            &format!("batchnorm_relu_grad_beta {m}x{c}"),
            &read(&gpu, &g.dbeta),
            &dbeta,
        );
        // Inference normalises with the moving averages forward_train updated.
        let yi = bn.forward_infer(&gpu, &xt, &params).unwrap();
        let want = elementwise::cpu::relu(&batchnorm::cpu::normalize(
            &f64s(&x),
            c,
            &f64s(&read(&gpu, &mmt)),
            &f64s(&read(&gpu, &mvt)),
            &f64s(&gamma),
            &f64s(&beta),
            eps,
        ));
        check(
            &format!("batchnorm_relu_forward_infer {m}x{c}"),
            &read(&gpu, &yi),
            &want,
        );
    }
}

/// Which gemm kernel runs. By default the subgroup kernel written for the
/// adapter's width wherever every subgroup has it (lavapipe: 8 lanes at 256
/// bits, 16 with `LP_NATIVE_VECTOR_WIDTH=512`; SwiftShader's 4 have none);
/// with `Kernels::Portable` (`WGFER_KERNELS=portable`) the portable one,
/// everywhere. Both match the CPU reference.
#[test]
fn gemm_kernel_choice_follows_the_subgroup_width_and_wgfer_kernels() {
    let mut rng = rng();
    for choice in [Kernels::Fastest, Kernels::Portable] {
        let gpu = Gpu::with_kernels(None, choice).unwrap();
        gpu.set_poison_outputs(true);
        let width = gpu.fixed_subgroup_size();
        if gpu.adapter().name.contains("llvmpipe") && choice == Kernels::Fastest {
            assert!(
                matches!(width, Some(8 | 16)),
                "lavapipe reports subgroups of {:?} lanes, expected 8 or 16 (a CPU without AVX?)",
                gpu.subgroup_sizes()
            );
        }
        // A shape the subgroup kernels take in both layouts of A, with
        // partial tiles in both directions.
        let (m, k, n) = (36, 20, 44);
        for strides in [Strides::rows(k), Strides::transposed(m)] {
            let g = Gemm::new(m, n, k, strides);
            let (a, b) = (random(&mut rng, m * k), random(&mut rng, k * n));
            let c = gpu.empty(&[m, n]).unwrap();
            g.run(
                &gpu,
                &upload(&gpu, &[m * k], &a),
                &upload(&gpu, &[k, n], &b),
                None,
                &c,
            )
            .unwrap();
            let mut want = vec![0.0; m * n];
            gemm::cpu(&g, &a, &b, None, &mut want);
            check(
                &format!("gemm {choice:?} {strides:?}"),
                &read(&gpu, &c),
                &f64s(&want),
            );
        }
        let ran = (
            gpu.dispatches_of(gemm::SG8_KERNEL),
            gpu.dispatches_of(gemm::SG16_KERNEL),
            gpu.dispatches_of(gemm::PORTABLE_KERNEL),
        );
        let expected = match width {
            Some(8) => (2, 0, 0),
            Some(16) => (0, 2, 0),
            _ => (0, 0, 2),
        };
        assert_eq!(
            ran,
            expected,
            "(8-lane, 16-lane, portable) gemm dispatches with {choice:?} on {}, subgroups {:?}",
            gpu.adapter(),
            gpu.subgroup_sizes()
        );
    }
}

#[test]
fn wgfer_kernels_accepts_portable_and_fastest_and_names_them_otherwise() {
    assert_eq!(Kernels::parse(None).unwrap(), Kernels::Fastest);
    assert_eq!(Kernels::parse(Some("")).unwrap(), Kernels::Fastest);
    assert_eq!(Kernels::parse(Some("fastest")).unwrap(), Kernels::Fastest);
    assert_eq!(Kernels::parse(Some("portable")).unwrap(), Kernels::Portable);
    let e = Kernels::parse(Some("Portable")).unwrap_err().to_string();
    assert!(
        e.contains("WGFER_KERNELS=Portable") && e.contains("`portable`") && e.contains("`fastest`"),
        "{e}"
    );
}

/// The subgroup kernel's source is generated for one width and tile; the
/// widths other adapters have (4, 16, 32 lanes) must give WGSL that compiles,
/// for both layouts of A (a shader that does not compile panics).
#[test]
fn gemm_subgroup_source_compiles_for_other_widths() {
    let gpu = gpu();
    if gpu.subgroup_sizes().is_none() {
        eprintln!("this adapter has no subgroup operations: nothing to compile");
        return;
    }
    for (lanes, rows) in [(4, 16), (8, 16), (8, 24), (16, 16), (32, 32)] {
        let tile = SubgroupTile::new(lanes, rows);
        // A Shader holds 'static strings (compiled shaders are kept for the
        // program's life); a test may leak a few.
        let shader = Shader {
            name: Box::leak(format!("gemm_sg{lanes}x{rows}").into_boxed_str()),
            source: Box::leak(gemm_sg::source(tile).into_boxed_str()),
        };
        for a_rows in [1.0, 0.0] {
            gpu.kernel(&shader, "main", &[("A_ROWS", a_rows)]);
        }
        gpu.check().unwrap();
    }
}

/// A batch norm folded into the weights and bias before it, on several
/// shapes (a 3×3 convolution's [3, 3, cin, cout], a dense layer's [k, c]).
#[test]
fn bn_fold_matches_its_reference() {
    let gpu = gpu();
    gpu.set_poison_outputs(true);
    let mut rng = rng();
    for shape in [
        vec![3, 3, 5, 7],
        vec![1, 1, 64, 256],
        vec![9, 1],
        vec![4, 130],
    ] {
        let c = *shape.last().unwrap();
        let len: usize = shape.iter().product();
        let (w, b) = (random(&mut rng, len), random(&mut rng, c));
        let (gamma, beta, mean) = (
            random(&mut rng, c),
            random(&mut rng, c),
            random(&mut rng, c),
        );
        let var: Vec<f32> = random(&mut rng, c).iter().map(|v| v.abs() + 0.1).collect();
        let t = |v: &[f32]| upload(&gpu, &[v.len()], v);
        let (gt, bt, mt, vt) = (t(&gamma), t(&beta), t(&mean), t(&var));
        let bn = BnParams {
            gamma: &gt,
            beta: &bt,
            moving_mean: &mt,
            moving_var: &vt,
        };
        let (w_out, b_out) = bn_fold::fold(
            &gpu,
            &upload(&gpu, &shape, &w),
            &t(&b),
            &bn,
            batchnorm::EPSILON,
        )
        .unwrap();
        let (want_w, want_b) = bn_fold::cpu(
            &f64s(&w),
            &f64s(&b),
            [&f64s(&gamma), &f64s(&beta), &f64s(&mean), &f64s(&var)],
            batchnorm::EPSILON as f64,
        );
        check(
            &format!("bn_fold W' {shape:?}"),
            &read(&gpu, &w_out),
            &want_w,
        );
        check(
            &format!("bn_fold b' {shape:?}"),
            &read(&gpu, &b_out),
            &want_b,
        );
    }
    let w = upload(&gpu, &[3, 4], &[0.0; 12]);
    let short = upload(&gpu, &[3], &[1.0; 3]);
    let b = upload(&gpu, &[4], &[0.0; 4]);
    let bn = BnParams {
        gamma: &short,
        beta: &b,
        moving_mean: &b,
        moving_var: &b,
    };
    let e = bn_fold::fold(&gpu, &w, &b, &bn, 1e-3)
        .unwrap_err()
        .to_string();
    assert!(e.contains("gamma holds 3 values, expected 4"), "{e}");
}

/// The ReLU epilogue of both gemm kernels (the subgroup one where the
/// adapter has it, the portable one everywhere), with a bias, and through a
/// convolution (`Conv2d::infer`).
#[test]
fn gemm_and_conv_with_the_relu_epilogue() {
    let mut rng = rng();
    for choice in [Kernels::Fastest, Kernels::Portable] {
        let gpu = Gpu::with_kernels(None, choice).unwrap();
        gpu.set_poison_outputs(true);
        for (m, k, n) in [(37, 20, 36), (5, 7, 3), (50, 64, 64)] {
            let g = Gemm {
                relu: true,
                ..Gemm::new(m, n, k, Strides::rows(k))
            };
            let (a, b, mut bias) = (
                random(&mut rng, m * k),
                random(&mut rng, k * n),
                random(&mut rng, n),
            );
            // One column all below zero and one all above, whatever the draw (a 5x3
            // product can come out all one sign): both sides of the ReLU are checked.
            (bias[0], bias[1]) = (-100.0, 100.0);
            let c = gpu.empty(&[m, n]).unwrap();
            g.run(
                &gpu,
                &upload(&gpu, &[m * k], &a),
                &upload(&gpu, &[k, n], &b),
                Some(&upload(&gpu, &[n], &bias)),
                &c,
            )
            .unwrap();
            let mut want = vec![0.0; m * n];
            gemm::cpu(&g, &a, &b, Some(&bias), &mut want);
            assert!(want.contains(&0.0) && want.iter().any(|&v| v > 0.0));
            check(
                &format!("gemm+relu {choice:?} {m}x{k}x{n}"),
                &read(&gpu, &c),
                &f64s(&want),
            );
        }
        let c = Conv2d::new(&[2, 5, 5, 8], 12, [3, 3], 1, Padding::Same).unwrap();
        let (x, w, b) = (
            random(&mut rng, 2 * 5 * 5 * 8),
            random(&mut rng, c.k() * 12),
            random(&mut rng, 12),
        );
        let y = c
            .infer(
                &gpu,
                &upload(&gpu, &[2, 5, 5, 8], &x),
                &upload(&gpu, &c.weight_shape(), &w),
                &upload(&gpu, &[12], &b),
                Epilogue::RELU,
            )
            .unwrap();
        let want =
            elementwise::cpu::relu(&conv2d::cpu::forward(&c, &f64s(&x), &f64s(&w), &f64s(&b)));
        check(&format!("conv2d+relu {choice:?}"), &read(&gpu, &y), &want);
    }
}

/// `Conv2d::infer` (inference: bias, optional ReLU, no im2col matrix kept)
/// on every convolution case, cropped ones included, against the CPU
/// reference. Where the adapter has subgroups of 8 or 16 lanes the shapes
/// with vec4s of channels run the implicit-im2col kernel (counted), the
/// others im2col and the product; with portable kernels, always the latter.
#[test]
fn conv2d_inference_with_and_without_im2col() {
    let mut rng = rng();
    for choice in [Kernels::Fastest, Kernels::Portable] {
        let gpu = Gpu::with_kernels(None, choice).unwrap();
        gpu.set_poison_outputs(true);
        let mut implicit_shapes = 0;
        for (input, cout, k, stride, padding) in conv_cases() {
            let full = Conv2d::new(&input, cout, [k, k], stride, padding).unwrap();
            let cropped = full.cropped(full.oh.div_ceil(2), full.ow).unwrap();
            for (c, relu) in [(full, false), (full, true), (cropped, true)] {
                let x = random(&mut rng, input.iter().product());
                let w = random(&mut rng, c.k() * cout);
                let b = random(&mut rng, cout);
                let y = c
                    .infer(
                        &gpu,
                        &upload(&gpu, &input, &x),
                        &upload(&gpu, &c.weight_shape(), &w),
                        &upload(&gpu, &[cout], &b),
                        Epilogue {
                            relu,
                            ..Epilogue::default()
                        },
                    )
                    .unwrap();
                let mut want = conv2d::cpu::forward(&c, &f64s(&x), &f64s(&w), &f64s(&b));
                if relu {
                    want = elementwise::cpu::relu(&want);
                }
                let what = format!("infer {choice:?} {c:?} relu={relu}");
                check(&what, &read(&gpu, &y), &want);
                if (input[3] % 4 == 0 || input[3] == 1) && cout % 4 == 0 && !c.is_pointwise() {
                    implicit_shapes += 1;
                }
            }
        }
        let ran =
            gpu.dispatches_of(conv2d::IMPLICIT_SG8) + gpu.dispatches_of(conv2d::IMPLICIT_SG16);
        let expected = match (choice, gpu.fixed_subgroup_size()) {
            (Kernels::Fastest, Some(8 | 16)) => implicit_shapes,
            _ => 0,
        };
        assert!(implicit_shapes > 10);
        assert_eq!(
            ran,
            expected,
            "implicit-im2col dispatches with {choice:?} on {}",
            gpu.adapter()
        );
    }
}

/// `transpose::transpose` (the kernels' transposes for grad_input): the 4 × 4
/// block kernel where both sizes are multiples of 4, the value kernel elsewhere.
#[test]
fn transpose_in_blocks_and_by_value() {
    let gpu = gpu();
    let mut rng = rng();
    for (rows, cols) in [
        (4, 8),
        (576, 64),
        (8, 260),
        (1152, 128),
        (5, 7),
        (49, 64),
        (12, 3),
        // More blocks (values) than 16 workgroups' lanes: each lane loops.
        (2304, 516),
        (1031, 7),
    ] {
        let x = random(&mut rng, rows * cols);
        let y = transpose::transpose(&gpu, &upload(&gpu, &[rows, cols], &x), rows, cols).unwrap();
        assert_eq!(y.shape(), [cols, rows]);
        let want = transpose::cpu_transpose(&f64s(&x), rows, cols);
        check(&format!("transpose {rows}x{cols}"), &read(&gpu, &y), &want);
    }
}

/// `transpose_many`: matrices that are views of one buffer (as a model's
/// weights are) in one dispatch, blocks and values mixed, a second buffer
/// apart, more than the kernel's 64 per dispatch, results against the
/// reference (and views that can be bound: the next product reads them).
#[test]
fn transpose_many_views_of_one_buffer() {
    let gpu = gpu();
    let mut rng = rng();
    let shapes: [(usize, usize); 6] = [(576, 64), (4, 8), (5, 7), (64, 256), (12, 3), (1152, 128)];
    // Each matrix at a 64-float boundary of one flat buffer, as `ParamSet` lays them out.
    let mut at = vec![];
    let mut len: usize = 0;
    for (r, c) in shapes {
        at.push(len);
        len += (r * c).next_multiple_of(64);
    }
    let flat = random(&mut rng, len);
    let flat_t = upload(&gpu, &[len], &flat);
    let other = random(&mut rng, 16 * 12);
    let other_t = upload(&gpu, &[16, 12], &other);
    let mut matrices: Vec<(wgfer::engine::Tensor, usize, usize, Vec<f32>)> = shapes
        .iter()
        .zip(&at)
        .map(|(&(r, c), &a)| (flat_t.view(a, &[r, c]), r, c, flat[a..a + r * c].to_vec()))
        .collect();
    matrices.push((other_t.clone(), 16, 12, other.clone()));
    // 70 small ones: past one dispatch's table.
    for i in 0..70 {
        let (r, c) = (4 + 4 * (i % 3), 8);
        let x = random(&mut rng, r * c);
        matrices.push((upload(&gpu, &[r, c], &x), r, c, x));
    }
    let args: Vec<_> = matrices.iter().map(|(t, r, c, _)| (t, *r, *c)).collect();
    let before = gpu.dispatches_of("transpose");
    let out = transpose::transpose_many(&gpu, &args).unwrap();
    assert_eq!(out.len(), matrices.len());
    // The flat buffer's blocks and values, the other buffer, the 70 alone.
    assert_eq!(gpu.dispatches_of("transpose") - before, 2 + 1 + 70);
    for ((_, r, c, x), y) in matrices.iter().zip(&out) {
        assert_eq!(y.shape(), [*c, *r]);
        let want = transpose::cpu_transpose(&f64s(x), *r, *c);
        check(&format!("transpose_many {r}x{c}"), &read(&gpu, y), &want);
    }
}

/// A 2×2, stride-2 max-pool in the convolution's epilogue (`Conv2d::infer`
/// with `Epilogue::pool`): in the implicit-im2col kernel where the adapter
/// has it (counted), a pool pass after the product elsewhere; both equal
/// pool(relu?(conv(x) + b)). Odd outputs and residuals are refused.
#[test]
fn conv2d_inference_max_pools_its_output() {
    let mut rng = rng();
    for choice in [Kernels::Fastest, Kernels::Portable] {
        let gpu = Gpu::with_kernels(None, choice).unwrap();
        gpu.set_poison_outputs(true);
        let mut cases = 0;
        for (input, cout, k, crop) in [
            // The convolution blocks' cropped 1×1 convolutions, small.
            ([2, 11, 11, 16], 40, 1, [10, 10]),
            ([3, 5, 5, 12], 8, 1, [4, 4]),
            ([1, 6, 8, 8], 12, 3, [6, 8]),
            ([2, 7, 5, 4], 4, 3, [6, 4]),
        ] {
            let full = Conv2d::new(&input, cout, [k, k], 1, Padding::Same).unwrap();
            let c = full.cropped(crop[0], crop[1]).unwrap();
            let x = random(&mut rng, input.iter().product());
            let w = random(&mut rng, c.k() * cout);
            let b = random(&mut rng, cout);
            for relu in [false, true] {
                let then = Epilogue {
                    relu,
                    pool: true,
                    ..Epilogue::default()
                };
                let (xt, wt, bt) = (
                    upload(&gpu, &input, &x),
                    upload(&gpu, &c.weight_shape(), &w),
                    upload(&gpu, &[cout], &b),
                );
                let y = c.infer(&gpu, &xt, &wt, &bt, then).unwrap();
                let mut conv = conv2d::cpu::forward(&c, &f64s(&x), &f64s(&w), &f64s(&b));
                if relu {
                    conv = elementwise::cpu::relu(&conv);
                }
                let p = Pool2d::new(&c.output_shape(), 2, 2).unwrap();
                let (want, _) = pool::cpu::max_forward(&p, &conv);
                assert_eq!(y.shape(), p.output_shape());
                let what = format!("infer+max_pool {choice:?} {c:?} relu={relu}");
                check(&what, &read(&gpu, &y), &want);
                cases += 1;
            }
        }
        let ran =
            gpu.dispatches_of(conv2d::IMPLICIT_SG8) + gpu.dispatches_of(conv2d::IMPLICIT_SG16);
        let expected = match (choice, gpu.fixed_subgroup_size()) {
            (Kernels::Fastest, Some(8 | 16)) => cases,
            _ => 0,
        };
        assert_eq!(ran, expected, "pooling implicit dispatches, {choice:?}");

        let odd = Conv2d::new(&[1, 5, 5, 4], 4, [1, 1], 1, Padding::Valid).unwrap();
        let (x, w, b) = (
            gpu.zeros(&[1, 5, 5, 4]).unwrap(),
            gpu.zeros(&odd.weight_shape()).unwrap(),
            gpu.zeros(&[4]).unwrap(),
        );
        let pool = Epilogue {
            pool: true,
            ..Epilogue::default()
        };
        let e = odd.infer(&gpu, &x, &w, &b, pool).unwrap_err().to_string();
        assert!(e.contains("even output (5×5)"), "{e}");
        let r = gpu.zeros(&odd.output_shape()).unwrap();
        let with_residual = Epilogue {
            residual: Some(&r),
            ..pool
        };
        let e = odd
            .cropped(4, 4)
            .unwrap()
            .infer(&gpu, &x, &w, &b, with_residual);
        assert!(e.unwrap_err().to_string().contains("no residual"));
    }
}

/// A residual add (and ReLU) in the convolution's epilogue
/// (`Conv2d::infer` with `Epilogue::residual`): one pass on adapters with the
/// subgroup gemm, a copy and an accumulating product elsewhere; both equal
/// max(conv(x) + b + r, 0) and conv(x) + b + r.
#[test]
fn conv2d_inference_adds_a_residual() {
    let mut rng = rng();
    for choice in [Kernels::Fastest, Kernels::Portable] {
        let gpu = Gpu::with_kernels(None, choice).unwrap();
        gpu.set_poison_outputs(true);
        for (input, cout, k, padding) in [
            ([2, 5, 5, 64], 256, 1, Padding::Valid),
            ([1, 5, 6, 8], 12, 3, Padding::Same),
            ([3, 2, 2, 5], 6, 1, Padding::Valid),
        ] {
            let c = Conv2d::new(&input, cout, [k, k], 1, padding).unwrap();
            let x = random(&mut rng, input.iter().product());
            let w = random(&mut rng, c.k() * cout);
            let b = random(&mut rng, cout);
            let r = random(&mut rng, c.m() * cout);
            let rt = upload(&gpu, &c.output_shape(), &r);
            for relu in [false, true] {
                let y = c
                    .infer(
                        &gpu,
                        &upload(&gpu, &input, &x),
                        &upload(&gpu, &c.weight_shape(), &w),
                        &upload(&gpu, &[cout], &b),
                        Epilogue {
                            residual: Some(&rt),
                            relu,
                            pool: false,
                        },
                    )
                    .unwrap();
                let conv = conv2d::cpu::forward(&c, &f64s(&x), &f64s(&w), &f64s(&b));
                let mut want = elementwise::cpu::add(&conv, &f64s(&r));
                if relu {
                    want = elementwise::cpu::relu(&want);
                }
                check(
                    &format!("infer+residual {choice:?} {input:?}->{cout} relu={relu}"),
                    &read(&gpu, &y),
                    &want,
                );
            }
        }
    }
}
