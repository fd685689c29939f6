//! On-the-fly augmentation with the semantics of Keras'
//! `ImageDataGenerator(rotation_range=15, width_shift_range=0.1, height_shift_range=0.1,
//! shear_range=0.1, zoom_range=0.1, horizontal_flip=False, fill_mode='nearest')`,
//! interpolation order 1 (bilinear), as re-implemented by the PyTorch peer
//! used for the speed comparison (`KerasLikeAugment` in
//! `../shared/peers/torch_fer.py`, beside this repository, not in it).
//!
//! Conventions (those of Keras' `apply_affine_transform` after its axis-permutation fix):
//! - The matrix `M = offset(c) · R(theta) · T(tx, ty) · Sh(shear) · Z(zx, zy) · offset(-c)`,
//!   `c = side / 2 - 0.5`, maps an OUTPUT pixel `(x = column, y = row)` to the INPUT pixel
//!   it samples: `x_in = M00 x + M01 y + M02`, `y_in = M10 x + M11 y + M12`.
//! - `tx` (drawn as `height_shift * rows`, as Keras does) therefore offsets the input
//!   COLUMN and `ty` (`width_shift * cols`) the input ROW: a pure `tx = +1` gives
//!   `out[r][c] = in[r][c + 1]`, i.e. the content moves one pixel LEFT (towards column 0).
//!   This is Keras' well-known quirk (height_shift_range moves images sideways); we keep it.
//! - Positive `theta` rotates the content counter-clockwise on screen (row 0 at the top).
//! - Shear is in DEGREES (Keras passes the drawn value through `deg2rad`).
//! - `zx` and `zy` are drawn independently from `[1 - zoom, 1 + zoom]`; `zx > 1` samples a
//!   wider area, i.e. zooms OUT.
//! - Fill mode 'nearest': sampling coordinates are clamped to `[0, side - 1]` (the same as
//!   scipy's `mode='nearest'` at order 1 and grid_sample's `padding_mode='border'`).
//! - A horizontal flip (if enabled, probability 0.5) mirrors the transformed image, as Keras
//!   flips after the affine transform; it is folded into the matrix.

use anyhow::{Result, bail};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::fer::data::{PIXELS, SIDE, STREAM_AUGMENT, stream_seed};

/// Augmentation ranges (Keras ImageDataGenerator arguments).
#[derive(Clone, Debug)]
pub struct AugmentConfig {
    /// `rotation_range`: theta drawn from [-r, r] degrees.
    pub rotation_deg: f32,
    /// `width_shift_range`, a fraction of the width: `ty` drawn from [-w, w] * side.
    pub width_shift: f32,
    /// `height_shift_range`, a fraction of the height: `tx` drawn from [-h, h] * side.
    pub height_shift: f32,
    /// `shear_range`, in degrees as Keras reads it.
    pub shear_deg: f32,
    /// `zoom_range`: zx and zy drawn independently from [1 - z, 1 + z].
    pub zoom: f32,
    /// `horizontal_flip`: mirror with probability 0.5.
    pub horizontal_flip: bool,
}

impl Default for AugmentConfig {
    /// The tutorial's values (flip off).
    fn default() -> Self {
        AugmentConfig {
            rotation_deg: 15.0,
            width_shift: 0.1,
            height_shift: 0.1,
            shear_deg: 0.1,
            zoom: 0.1,
            horizontal_flip: false,
        }
    }
}

impl AugmentConfig {
    /// Check that the ranges are finite and sensible (for user-supplied values).
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("rotation", self.rotation_deg),
            ("width shift", self.width_shift),
            ("height shift", self.height_shift),
            ("shear", self.shear_deg),
            ("zoom", self.zoom),
        ] {
            if !v.is_finite() || v < 0.0 {
                bail!("augmentation {name} range must be a finite number >= 0, got {v}");
            }
        }
        if self.zoom >= 1.0 {
            bail!(
                "augmentation zoom range must be below 1 (zoom factors come from [1 - z, 1 + z]), got {}",
                self.zoom
            );
        }
        if self.width_shift > 1.0 || self.height_shift > 1.0 {
            bail!("augmentation shifts are fractions of the image size and must be at most 1");
        }
        Ok(())
    }
}

/// One drawn set of transform parameters (Keras' `get_random_transform`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Transform {
    /// Rotation, degrees.
    pub theta_deg: f32,
    /// Offset of the input column, pixels (Keras' tx, from height_shift).
    pub tx: f32,
    /// Offset of the input row, pixels (Keras' ty, from width_shift).
    pub ty: f32,
    /// Shear, degrees.
    pub shear_deg: f32,
    pub zx: f32,
    pub zy: f32,
    /// Mirror horizontally after the affine transform.
    pub flip: bool,
}

impl Transform {
    pub fn identity() -> Self {
        Transform {
            theta_deg: 0.0,
            tx: 0.0,
            ty: 0.0,
            shear_deg: 0.0,
            zx: 1.0,
            zy: 1.0,
            flip: false,
        }
    }

    /// 2x3 affine mapping an output pixel (x = column, y = row) to the input pixel it
    /// samples, as used by [`apply`]. Computed in f64, rounded to f32.
    pub fn matrix(&self, side: usize) -> [[f32; 3]; 2] {
        let th = (self.theta_deg as f64).to_radians();
        let sh = (self.shear_deg as f64).to_radians();
        let (tx, ty) = (self.tx as f64, self.ty as f64);
        let (zx, zy) = (self.zx as f64, self.zy as f64);
        let c = side as f64 / 2.0 - 0.5;
        let r = [
            [th.cos(), -th.sin(), 0.0],
            [th.sin(), th.cos(), 0.0],
            [0.0, 0.0, 1.0],
        ];
        let t = [[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]];
        let s = [[1.0, -sh.sin(), 0.0], [0.0, sh.cos(), 0.0], [0.0, 0.0, 1.0]];
        let z = [[zx, 0.0, 0.0], [0.0, zy, 0.0], [0.0, 0.0, 1.0]];
        let o = [[1.0, 0.0, c], [0.0, 1.0, c], [0.0, 0.0, 1.0]];
        let oi = [[1.0, 0.0, -c], [0.0, 1.0, -c], [0.0, 0.0, 1.0]];
        let mut m = mul(&mul(&mul(&mul(&mul(&o, &r), &t), &s), &z), &oi);
        if self.flip {
            // Output column x shows the unflipped output's column side-1-x.
            let f = [
                [-1.0, 0.0, side as f64 - 1.0],
                [0.0, 1.0, 0.0],
                [0.0, 0.0, 1.0],
            ];
            m = mul(&m, &f);
        }
        [
            [m[0][0] as f32, m[0][1] as f32, m[0][2] as f32],
            [m[1][0] as f32, m[1][1] as f32, m[1][2] as f32],
        ]
    }
}

fn mul(a: &[[f64; 3]; 3], b: &[[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let mut out = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            out[i][j] = (0..3).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    out
}

/// Draws transforms from a seeded stream.
#[derive(Debug)]
pub struct Augmenter {
    cfg: AugmentConfig,
    rng: StdRng,
    scratch: Vec<f32>,
}

impl Augmenter {
    /// Deterministic stream per (seed, epoch): a resumed run recreates it.
    pub fn new(cfg: AugmentConfig, seed: u64, epoch: usize) -> Self {
        Augmenter {
            cfg,
            rng: StdRng::seed_from_u64(stream_seed(seed, STREAM_AUGMENT, epoch as u64)),
            scratch: Vec::new(),
        }
    }

    pub fn config(&self) -> &AugmentConfig {
        &self.cfg
    }

    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.rng.random::<f64>()
    }

    /// Draw one transform. Always consumes the same number of random values, whatever the
    /// config, so streams stay aligned.
    pub fn draw(&mut self) -> Transform {
        let side = SIDE as f64;
        let rot = self.cfg.rotation_deg as f64;
        let hs = self.cfg.height_shift as f64;
        let ws = self.cfg.width_shift as f64;
        let sh = self.cfg.shear_deg as f64;
        let z = self.cfg.zoom as f64;
        let theta = self.uniform(-rot, rot);
        let tx = self.uniform(-hs, hs) * side;
        let ty = self.uniform(-ws, ws) * side;
        let shear = self.uniform(-sh, sh);
        let zx = self.uniform(1.0 - z, 1.0 + z);
        let zy = self.uniform(1.0 - z, 1.0 + z);
        let flip = self.rng.random::<f64>() < 0.5 && self.cfg.horizontal_flip;
        Transform {
            theta_deg: theta as f32,
            tx: tx as f32,
            ty: ty as f32,
            shear_deg: shear as f32,
            zx: zx as f32,
            zy: zy as f32,
            flip,
        }
    }

    /// Augment a batch: `src` holds u8 images (each `PIXELS` long) back to back; writes f32
    /// pixels scaled to [0, 1] into `dst` (same count). One fresh transform per image.
    /// Panics if the lengths differ or are not a multiple of `PIXELS` (a programming error).
    pub fn augment_batch(&mut self, src: &[u8], dst: &mut [f32]) {
        assert_eq!(
            src.len(),
            dst.len(),
            "augment_batch: src and dst lengths differ"
        );
        assert_eq!(src.len() % PIXELS, 0, "augment_batch: not whole images");
        for (s, d) in src.chunks_exact(PIXELS).zip(dst.chunks_exact_mut(PIXELS)) {
            let t = self.draw();
            apply_with_scratch(&t, s, d, SIDE, &mut self.scratch);
        }
    }
}

/// Apply one transform to one `side` x `side` image (u8 in, f32 in [0, 1] out), bilinear,
/// 'nearest' fill. Panics if `src` or `dst` is not `side * side` long (a programming error).
pub fn apply(t: &Transform, src: &[u8], dst: &mut [f32], side: usize) {
    apply_with_scratch(t, src, dst, side, &mut Vec::new());
}

/// [`apply`] reusing `scratch` for the edge-padded f32 copy of `src`.
fn apply_with_scratch(
    t: &Transform,
    src: &[u8],
    dst: &mut [f32],
    side: usize,
    scratch: &mut Vec<f32>,
) {
    assert_eq!(src.len(), side * side, "apply: src is not side*side");
    assert_eq!(dst.len(), side * side, "apply: dst is not side*side");
    if side == 0 {
        return;
    }
    // (side+1)^2 copy scaled to [0, 1] (exactly as `to_f32`), the last row and column
    // repeating the edge, so the bilinear neighbours x0+1, y0+1 always exist.
    let w = side + 1;
    scratch.clear();
    scratch.reserve(w * w);
    for r in 0..w {
        let row = &src[r.min(side - 1) * side..][..side];
        scratch.extend(row.iter().map(|&v| v as f32 / 255.0));
        scratch.push(row[side - 1] as f32 / 255.0);
    }
    let pad = &scratch[..];

    let [[a, b, c], [d, e, f]] = t.matrix(side);
    let maxc = (side - 1) as f32;
    for (y, row) in dst.chunks_exact_mut(side).enumerate() {
        let yf = y as f32;
        let bx = b * yf + c;
        let by = e * yf + f;
        for (x, out) in row.iter_mut().enumerate() {
            let xf = x as f32;
            // Clamping = fill_mode 'nearest' (max/min also map a NaN, impossible with a
            // validated config, to 0 rather than panicking).
            let ix = (a * xf + bx).max(0.0).min(maxc);
            let iy = (d * xf + by).max(0.0).min(maxc);
            // Non-negative after the clamp, so truncation is floor.
            let x0 = ix as i32;
            let y0 = iy as i32;
            let fx = ix - x0 as f32;
            let fy = iy - y0 as f32;
            let (x0, y0) = (x0 as usize, y0 as usize);
            let q = &pad[y0 * w + x0..][..w + 2];
            let top = q[0] + fx * (q[1] - q[0]);
            let bot = q[w] + fx * (q[w + 1] - q[w]);
            *out = top + fy * (bot - top);
        }
    }
}

/// No augmentation: u8 -> f32 / 255. Panics if the lengths differ (a programming error).
pub fn to_f32(src: &[u8], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "to_f32: src and dst lengths differ");
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = s as f32 / 255.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: usize = SIDE;

    /// An asymmetric image: every pixel distinct-ish, no symmetry.
    fn img() -> Vec<u8> {
        (0..PIXELS)
            .map(|i| {
                let (r, c) = (i / S, i % S);
                ((r * 5 + c * 3 + (r * c) % 7) % 256) as u8
            })
            .collect()
    }

    fn run(t: &Transform, src: &[u8]) -> Vec<f32> {
        let mut out = vec![0.0; src.len()];
        apply(t, src, &mut out, S);
        out
    }

    fn px(src: &[u8], r: usize, c: usize) -> f32 {
        src[r * S + c] as f32 / 255.0
    }

    #[test]
    fn identity_is_exact() {
        let src = img();
        let mut want = vec![0.0; PIXELS];
        to_f32(&src, &mut want);
        assert_eq!(run(&Transform::identity(), &src), want);
        assert_eq!(
            Transform::identity().matrix(S),
            [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
        );
        // Zoom 1, shear 0, rotation 0, shift 0 written explicitly: still the identity.
        let t = Transform {
            theta_deg: 0.0,
            tx: 0.0,
            ty: 0.0,
            shear_deg: 0.0,
            zx: 1.0,
            zy: 1.0,
            flip: false,
        };
        assert_eq!(run(&t, &src), want);
    }

    #[test]
    fn shift_by_one_pixel() {
        // Keras convention (see module docs): tx offsets the input column, so tx = +1 gives
        // out[r][c] = in[r][c + 1] (content moves one pixel left), the last column repeats
        // the edge. ty offsets the input row: out[r][c] = in[r + 1][c] (content moves up).
        let src = img();
        let out = run(
            &Transform {
                tx: 1.0,
                ..Transform::identity()
            },
            &src,
        );
        for r in 0..S {
            for c in 0..S {
                assert_eq!(out[r * S + c], px(&src, r, (c + 1).min(S - 1)), "({r},{c})");
            }
        }
        let out = run(
            &Transform {
                ty: 1.0,
                ..Transform::identity()
            },
            &src,
        );
        for r in 0..S {
            for c in 0..S {
                assert_eq!(out[r * S + c], px(&src, (r + 1).min(S - 1), c), "({r},{c})");
            }
        }
        // A negative shift moves the content the other way and repeats column 0.
        let out = run(
            &Transform {
                tx: -2.0,
                ..Transform::identity()
            },
            &src,
        );
        assert_eq!(out[5 * S], px(&src, 5, 0));
        assert_eq!(out[5 * S + 1], px(&src, 5, 0));
        assert_eq!(out[5 * S + 10], px(&src, 5, 8));
    }

    #[test]
    fn rotation_90_degrees() {
        // x_in = c - (y - c) = 47 - y, y_in = x: out[y][x] = in[x][47 - y]; e.g. the top-right
        // input pixel lands at the top-left (counter-clockwise on screen).
        let src = img();
        let out = run(
            &Transform {
                theta_deg: 90.0,
                ..Transform::identity()
            },
            &src,
        );
        for y in 0..S {
            for x in 0..S {
                let want = px(&src, x, S - 1 - y);
                assert!((out[y * S + x] - want).abs() < 1e-5, "({y},{x})");
            }
        }
        let mut dot = vec![0u8; PIXELS];
        dot[S - 1] = 255; // row 0, column 47
        let out = run(
            &Transform {
                theta_deg: 90.0,
                ..Transform::identity()
            },
            &dot,
        );
        assert!((out[0] - 1.0).abs() < 1e-5);
    }

    #[test]
    fn zoom_and_shear_pieces() {
        // zx = 2 about the centre: x_in = c + 2 (x - c); at x = 23, c = 23.5: x_in = 22.5.
        let src = img();
        let out = run(
            &Transform {
                zx: 2.0,
                ..Transform::identity()
            },
            &src,
        );
        let want = (px(&src, 10, 22) + px(&src, 10, 23)) / 2.0;
        assert!((out[10 * S + 23] - want).abs() < 1e-6);
        // Shear only: x_in = x - sin(s) (y - c) + ..., y_in = c + cos(s) (y - c).
        let t = Transform {
            shear_deg: 30.0,
            ..Transform::identity()
        };
        let m = t.matrix(S);
        assert!((m[0][1] + 0.5).abs() < 1e-6);
        assert!((m[1][1] - 30f32.to_radians().cos()).abs() < 1e-6);
        assert_eq!(m[0][0], 1.0);
        assert_eq!(m[1][0], 0.0);
    }

    #[test]
    fn matrix_matches_independent_f64() {
        let mut aug = Augmenter::new(
            AugmentConfig {
                horizontal_flip: true,
                ..AugmentConfig::default()
            },
            11,
            0,
        );
        for _ in 0..50 {
            let t = aug.draw();
            // Closed form: A = R Sh Z, t = R (tx, ty) + c - A (c, c).
            let th = (t.theta_deg as f64).to_radians();
            let sh = (t.shear_deg as f64).to_radians();
            let (co, si) = (th.cos(), th.sin());
            let (zx, zy) = (t.zx as f64, t.zy as f64);
            let a00 = co * zx;
            let a01 = (-co * sh.sin() - si * sh.cos()) * zy;
            let a10 = si * zx;
            let a11 = (-si * sh.sin() + co * sh.cos()) * zy;
            let c = S as f64 / 2.0 - 0.5;
            let mut t0 = co * t.tx as f64 - si * t.ty as f64 + c - (a00 + a01) * c;
            let t1 = si * t.tx as f64 + co * t.ty as f64 + c - (a10 + a11) * c;
            let (mut b00, mut b10) = (a00, a10);
            if t.flip {
                // x -> S-1-x: column 0 negated, translation gains A[:,0] (S-1).
                t0 += a00 * (S as f64 - 1.0);
                b00 = -a00;
                b10 = -a10;
            }
            let t1 = if t.flip {
                t1 + a10 * (S as f64 - 1.0)
            } else {
                t1
            };
            let want = [[b00, a01, t0], [b10, a11, t1]];
            let got = t.matrix(S);
            for i in 0..2 {
                for j in 0..3 {
                    assert!(
                        (got[i][j] as f64 - want[i][j]).abs() < 1e-5,
                        "{t:?} [{i}][{j}] {} vs {}",
                        got[i][j],
                        want[i][j]
                    );
                }
            }
        }
    }

    #[test]
    fn nearest_fill_replicates_edges() {
        let src = img();
        let out = run(
            &Transform {
                tx: 100.0,
                ..Transform::identity()
            },
            &src,
        );
        for r in 0..S {
            for c in 0..S {
                assert_eq!(out[r * S + c], px(&src, r, S - 1));
            }
        }
        let out = run(
            &Transform {
                ty: -100.0,
                ..Transform::identity()
            },
            &src,
        );
        for r in 0..S {
            for c in 0..S {
                assert_eq!(out[r * S + c], px(&src, 0, c));
            }
        }
        // Zooming out replicates the border too: the corners are exact corner pixels.
        let out = run(
            &Transform {
                zx: 1.5,
                zy: 1.5,
                ..Transform::identity()
            },
            &src,
        );
        assert_eq!(out[0], px(&src, 0, 0));
        assert_eq!(out[PIXELS - 1], px(&src, S - 1, S - 1));
        assert!(out.iter().all(|v| (0.0..=1.0).contains(v)));
    }

    #[test]
    fn flip_mirrors() {
        let src = img();
        let out = run(
            &Transform {
                flip: true,
                ..Transform::identity()
            },
            &src,
        );
        for r in 0..S {
            for c in 0..S {
                assert_eq!(out[r * S + c], px(&src, r, S - 1 - c));
            }
        }
        let mut on = Augmenter::new(
            AugmentConfig {
                horizontal_flip: true,
                ..AugmentConfig::default()
            },
            5,
            0,
        );
        let flips = (0..2000).filter(|_| on.draw().flip).count();
        assert!((850..1150).contains(&flips), "{flips}");
        let mut off = Augmenter::new(AugmentConfig::default(), 5, 0);
        assert!((0..2000).all(|_| !off.draw().flip));
    }

    #[test]
    fn deterministic_per_seed_and_epoch() {
        let draws = |seed, epoch| {
            let mut a = Augmenter::new(AugmentConfig::default(), seed, epoch);
            (0..20).map(|_| a.draw()).collect::<Vec<_>>()
        };
        assert_eq!(draws(1, 3), draws(1, 3));
        assert_ne!(draws(1, 3), draws(1, 4));
        assert_ne!(draws(1, 3), draws(2, 3));

        let src: Vec<u8> = [img(), img(), img()].concat();
        let batch = |epoch| {
            let mut a = Augmenter::new(AugmentConfig::default(), 9, epoch);
            let mut dst = vec![0.0; src.len()];
            a.augment_batch(&src, &mut dst);
            dst
        };
        let b = batch(0);
        assert_eq!(b, batch(0));
        assert_ne!(b, batch(1));
        // A fresh transform per image: identical inputs give different outputs.
        assert_ne!(b[..PIXELS], b[PIXELS..2 * PIXELS]);
        assert!(b.iter().all(|v| (0.0..=1.0).contains(v)));
    }

    #[test]
    fn drawn_parameters_in_range() {
        let cfg = AugmentConfig::default();
        cfg.validate().unwrap();
        let mut a = Augmenter::new(cfg.clone(), 3, 2);
        let s = S as f32;
        let (mut tmin, mut tmax) = (f32::MAX, f32::MIN);
        for _ in 0..5000 {
            let t = a.draw();
            assert!(t.theta_deg.abs() <= 15.0);
            assert!(t.tx.abs() <= 0.1 * s + 1e-4);
            assert!(t.ty.abs() <= 0.1 * s + 1e-4);
            assert!(t.shear_deg.abs() <= 0.1);
            assert!((0.9..=1.1).contains(&t.zx));
            assert!((0.9..=1.1).contains(&t.zy));
            tmin = tmin.min(t.theta_deg);
            tmax = tmax.max(t.theta_deg);
        }
        // The whole range is used.
        assert!(tmin < -14.0 && tmax > 14.0);
        // No augmentation at all: every draw is the identity.
        let mut none = Augmenter::new(
            AugmentConfig {
                rotation_deg: 0.0,
                width_shift: 0.0,
                height_shift: 0.0,
                shear_deg: 0.0,
                zoom: 0.0,
                horizontal_flip: false,
            },
            1,
            1,
        );
        assert_eq!(none.draw(), Transform::identity());
        assert!(
            AugmentConfig {
                zoom: f32::NAN,
                ..cfg.clone()
            }
            .validate()
            .is_err()
        );
        assert!(
            AugmentConfig {
                rotation_deg: -1.0,
                ..cfg
            }
            .validate()
            .is_err()
        );
    }
}
