//! 2-D convolution of NHWC activations with kernels [kh, kw, cin, cout]
//! (Keras' layout) and a bias, as a matrix product over im2col columns:
//! `y[m, co] = Σ_k cols[m, k] · W[k, co] + b[co]`, m = (n, oy, ox), k = (ky, kx, ci).
//! A 1×1, stride-1, unpadded convolution needs no im2col: x already is cols.
//! Adapters with the subgroup kernels skip the im2col pass: at inference
//! (`infer`) the product reads x in place (`gemm_sg::conv_source`), and in
//! training too where the weight gradient can read x the same way
//! (`gemm_sg::conv_weight_source`: input channels in whole tiles).

use std::sync::LazyLock;

use anyhow::{Result, bail, ensure};
use bytemuck::{Pod, Zeroable};

use crate::engine::ops::elementwise;
use crate::engine::ops::gemm::{Gemm, RowsInto, SG8_TILE, SG16_TILE, Strides};
use crate::engine::ops::gemm_sg::{self, SubgroupTile};
use crate::engine::ops::pool::Pool2d;
use crate::engine::ops::reduce::column_sums;
use crate::engine::ops::shader_pair;
use crate::engine::ops::transpose::transpose;
use crate::engine::ops::{ShaderPair, image_groups};
use crate::engine::{Gpu, Shader, Tensor};

const SHADERS: ShaderPair = shader_pair!(
    "conv2d",
    "../../../shaders/common.wgsl",
    "../../../shaders/conv2d.wgsl"
);

/// The implicit-im2col kernels' names, by subgroup width.
pub const IMPLICIT_SG8: &str = "conv_sg8";
pub const IMPLICIT_SG16: &str = "conv_sg16";

/// An implicit-im2col kernel, with the tile of the gemm kernel for the same
/// subgroup width.
struct ImplicitKernel {
    name: &'static str,
    tile: SubgroupTile,
    source: LazyLock<String>,
}

static IMPLICIT: [ImplicitKernel; 2] = [
    ImplicitKernel {
        name: IMPLICIT_SG8,
        tile: SG8_TILE,
        source: LazyLock::new(|| gemm_sg::conv_source(SG8_TILE)),
    },
    ImplicitKernel {
        name: IMPLICIT_SG16,
        tile: SG16_TILE,
        source: LazyLock::new(|| gemm_sg::conv_source(SG16_TILE)),
    },
];

/// The weight-gradient kernels that read x in place of the im2col matrix
/// (`gemm_sg::conv_weight_source`), by subgroup width.
static IMPLICIT_WEIGHT_GRAD: [ImplicitKernel; 2] = [
    ImplicitKernel {
        name: "conv_dw_sg8",
        tile: SG8_TILE,
        source: LazyLock::new(|| gemm_sg::conv_weight_source(SG8_TILE)),
    },
    ImplicitKernel {
        name: "conv_dw_sg16",
        tile: SG16_TILE,
        source: LazyLock::new(|| gemm_sg::conv_weight_source(SG16_TILE)),
    },
];

/// What a training forward keeps for the weight gradient.
pub enum Columns {
    /// The im2col matrix [m, ld] (x itself for a pointwise convolution).
    Matrix(Tensor),
    /// x, which the implicit kernels read as if it were the im2col matrix.
    Implicit(Tensor),
}

/// The convolution's shape as every conv kernel reads it, after its own
/// first fields; `cin_v` counts vec4s of channels (or channels when
/// cin % 4 != 0, which only im2col and col2im take).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Geometry {
    h: u32,
    w: u32,
    cin_v: u32,
    oh: u32,
    ow: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    pad_top: u32,
    pad_left: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct WeightGradParams {
    m: u32,
    n: u32,
    k: u32,
    flags: u32,
    col_blocks: u32,
    tiles: u32,
    geometry: Geometry,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ImplicitParams {
    m: u32,
    n: u32,
    flags: u32,
    col_blocks: u32,
    tiles: u32,
    geometry: Geometry,
    /// Kernel columns this far apart in x (1; 4 for the gray path).
    dil_x: u32,
}

/// What `Conv2d::infer` applies after the product and the bias.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    /// Added before the ReLU: a residual block's shortcut.
    pub residual: Option<&'a Tensor>,
    pub relu: bool,
    /// Max-pool the output 2×2, stride 2 (oh and ow even; not with a
    /// residual): the output is [n, oh / 2, ow / 2, cout].
    pub pool: bool,
}

impl Epilogue<'_> {
    pub const RELU: Epilogue<'static> = Epilogue {
        residual: None,
        relu: true,
        pool: false,
    };
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    /// No padding.
    Valid,
    /// Keras 'same': output size ceil(in / stride), the odd pixel of padding at the bottom/right.
    Same,
    /// This many zeros on every side.
    Zeros(usize),
}

/// The geometry of one convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2d {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub cin: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub oh: usize,
    pub ow: usize,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    geometry: Geometry,
    k: u32,
    ld: u32,
    pad: [u32; 3],
}

fn out_size(input: usize, k: usize, stride: usize, padding: Padding) -> Result<(usize, usize)> {
    Ok(match padding {
        Padding::Valid => {
            ensure!(
                input >= k,
                "a {k}-wide kernel does not fit a {input}-wide input without padding"
            );
            ((input - k) / stride + 1, 0)
        }
        Padding::Same => {
            let out = input.div_ceil(stride);
            let total = ((out - 1) * stride + k).saturating_sub(input);
            (out, total / 2)
        }
        Padding::Zeros(p) => {
            ensure!(
                input + 2 * p >= k,
                "a {k}-wide kernel does not fit a {input}-wide input padded by {p}"
            );
            ((input + 2 * p - k) / stride + 1, p)
        }
    })
}

impl Conv2d {
    /// `input` is [n, h, w, cin].
    pub fn new(
        input: &[usize],
        cout: usize,
        kernel: [usize; 2],
        stride: usize,
        padding: Padding,
    ) -> Result<Self> {
        let &[n, h, w, cin] = input else {
            bail!("conv2d expects an NHWC input, got shape {input:?}")
        };
        ensure!(
            n > 0 && h > 0 && w > 0 && cin > 0 && cout > 0,
            "conv2d: empty shape {input:?} -> {cout}"
        );
        ensure!(
            stride > 0 && kernel[0] > 0 && kernel[1] > 0,
            "conv2d: kernel and stride must be positive"
        );
        let (oh, pad_top) = out_size(h, kernel[0], stride, padding)?;
        let (ow, pad_left) = out_size(w, kernel[1], stride, padding)?;
        let c = Conv2d {
            n,
            h,
            w,
            cin,
            cout,
            kh: kernel[0],
            kw: kernel[1],
            stride,
            pad_top,
            pad_left,
            oh,
            ow,
        };
        // divmod in the kernels is exact below 2^24.
        ensure!(
            c.ow * c.k() < 1 << 24 && c.w * c.cin < 1 << 24,
            "conv2d: image rows too wide: {c:?}"
        );
        Ok(c)
    }

    /// The same convolution computing only its top-left `oh × ow` outputs:
    /// all that a following unpadded max-pool reads when the map does not
    /// divide evenly (5×5 → 2×2 reads 4×4). The model's 1×1 convolutions
    /// before such pools then skip up to a third of their work, and the
    /// gradients are unchanged: the skipped outputs have none.
    pub fn cropped(self, oh: usize, ow: usize) -> Result<Self> {
        ensure!(
            (1..=self.oh).contains(&oh) && (1..=self.ow).contains(&ow),
            "conv2d: cannot crop a {}x{} output to {oh}x{ow}",
            self.oh,
            self.ow
        );
        Ok(Conv2d { oh, ow, ..self })
    }

    /// Rows of the matrix product: output pixels.
    pub fn m(&self) -> usize {
        self.n * self.oh * self.ow
    }

    /// Depth of the matrix product: kernel taps × input channels.
    pub fn k(&self) -> usize {
        self.kh * self.kw * self.cin
    }

    /// Channels per kernel element: im2col and col2im move vec4s of input
    /// channels when cin % 4 == 0.
    fn width(&self) -> usize {
        if self.cin.is_multiple_of(4) { 4 } else { 1 }
    }

    /// Row length of the im2col matrix: k rounded up to whole vec4s (zeros
    /// past k), so the product can read its rows as vec4s.
    pub fn ld(&self) -> usize {
        if self.is_pointwise() {
            self.k()
        } else {
            self.k().div_ceil(4) * 4
        }
    }

    pub fn output_shape(&self) -> [usize; 4] {
        [self.n, self.oh, self.ow, self.cout]
    }

    pub fn weight_shape(&self) -> [usize; 4] {
        [self.kh, self.kw, self.cin, self.cout]
    }

    /// A 1×1, stride-1, unpadded kernel: each output pixel reads the one
    /// input pixel at its own place.
    fn is_1x1_in_place(&self) -> bool {
        (self.kh, self.kw, self.stride, self.pad_top, self.pad_left) == (1, 1, 1, 0, 0)
    }

    /// True when x itself is the im2col matrix.
    pub fn is_pointwise(&self) -> bool {
        self.is_1x1_in_place() && (self.oh, self.ow) == (self.h, self.w)
    }

    /// A 1×1 in-place kernel computing only the top-left part of its output
    /// (`cropped`): its im2col is a crop of x.
    fn is_cropped_pointwise(&self) -> bool {
        self.is_1x1_in_place() && !self.is_pointwise()
    }

    pub fn flops(&self) -> f64 {
        2.0 * (self.m() * self.k() * self.cout) as f64
    }

    /// The kernels' view of this shape (channels counted in vec4s when
    /// cin % 4 == 0, always so for the implicit kernels).
    fn geometry(&self) -> Geometry {
        Geometry {
            h: self.h as u32,
            w: self.w as u32,
            cin_v: (self.cin / self.width()) as u32,
            oh: self.oh as u32,
            ow: self.ow as u32,
            kh: self.kh as u32,
            kw: self.kw as u32,
            stride: self.stride as u32,
            pad_top: self.pad_top as u32,
            pad_left: self.pad_left as u32,
        }
    }

    /// The grids' third dimension (see `ops::image_groups`).
    fn image_groups(&self) -> u32 {
        image_groups(self.n)
    }

    fn params(&self) -> Params {
        Params {
            n: self.n as u32,
            geometry: self.geometry(),
            k: (self.k() / self.width()) as u32,
            ld: (self.ld() / self.width()) as u32,
            pad: [0; 3],
        }
    }

    /// The im2col matrix [m, k] of x (x itself when pointwise).
    pub fn im2col(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        ensure!(
            x.shape() == [self.n, self.h, self.w, self.cin],
            "conv2d: input {:?} for {self:?}",
            x.shape()
        );
        if self.is_pointwise() {
            return Ok(x.clone());
        }
        let cols = gpu.empty(&[self.m(), self.ld()])?;
        // Both kernels fill one vec4 of a cols row per invocation (ld % 4 == 0):
        // `im2col` over vec4s of channels, `im2col_x4` over four taps.
        let (kernel, bindings) = if self.width() == 4 {
            (
                gpu.kernel(&SHADERS.vec4, "im2col", &[]),
                [(1, x), (2, &cols)],
            )
        } else {
            (
                gpu.kernel(&SHADERS.scalar, "im2col_x4", &[]),
                [(3, x), (4, &cols)],
            )
        };
        let grid = [
            (self.ow * self.ld() / 4).div_ceil(64) as u32,
            self.oh as u32,
            self.image_groups(),
        ];
        gpu.dispatch_xyz(&kernel, bytemuck::bytes_of(&self.params()), &bindings, grid)?;
        Ok(cols)
    }

    /// y = conv(x, w) + b, and what `grad_weight` reads: without the im2col
    /// matrix where the adapter has implicit kernels for both products of
    /// this shape (the forward and the weight gradient), else through it.
    pub fn forward(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
    ) -> Result<(Tensor, Columns)> {
        if let (Some(kernel), Some(_)) = (self.implicit_kernel(gpu), self.weight_grad_kernel(gpu)) {
            let y = self.forward_implicit(
                gpu,
                kernel,
                [x, w, b],
                Epilogue::default(),
                1,
                self.flops(),
            )?;
            return Ok((y, Columns::Implicit(x.clone())));
        }
        let (y, cols) = self.forward_then(gpu, x, w, b, Epilogue::default())?;
        Ok((y, Columns::Matrix(cols)))
    }

    /// conv(x, w) + b (+ a residual of y's shape), then max(·, 0) if `relu`,
    /// then a 2×2 max-pool if `pool`, all in the product's epilogue, for
    /// inference: without the im2col matrix where the adapter has the
    /// implicit-im2col kernel for this shape (and no residual), else through
    /// it and, for the pool, a pass of its own.
    pub fn infer(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        then: Epilogue,
    ) -> Result<Tensor> {
        ensure!(
            !then.pool
                || (then.residual.is_none()
                    && self.oh.is_multiple_of(2)
                    && self.ow.is_multiple_of(2)),
            "conv2d: a 2×2 pool in the epilogue needs an even output ({}×{}) and no residual",
            self.oh,
            self.ow
        );
        if let (Some(kernel), None) = (self.implicit_kernel(gpu), then.residual) {
            if self.cin == 1 {
                return self.forward_gray(gpu, kernel, [x, w, b], then);
            }
            return self.forward_implicit(gpu, kernel, [x, w, b], then, 1, self.flops());
        }
        let y = self.forward_then(gpu, x, w, b, then)?.0;
        if !then.pool {
            return Ok(y);
        }
        Pool2d::new(y.shape(), 2, 2)?.max_values(gpu, &y)
    }

    /// The implicit-im2col kernel for this adapter and shape: subgroups of a
    /// width it is written for, vec4s of channels (or one, `forward_gray`) in
    /// and vec4s out, and an im2col to save (a pointwise convolution has none).
    fn implicit_kernel(&self, gpu: &Gpu) -> Option<&'static ImplicitKernel> {
        let lanes = gpu.fixed_subgroup_size()? as usize;
        let shape_fits = (self.cin.is_multiple_of(4) || self.cin == 1)
            && self.cout.is_multiple_of(4)
            && !self.is_pointwise();
        IMPLICIT
            .iter()
            .find(|k| k.tile.lanes == lanes && shape_fits)
    }

    fn forward_implicit(
        &self,
        gpu: &Gpu,
        &ImplicitKernel {
            name,
            tile,
            ref source,
        }: &'static ImplicitKernel,
        [x, w, b]: [&Tensor; 3],
        then: Epilogue,
        dil_x: usize,
        flops: f64,
    ) -> Result<Tensor> {
        ensure!(
            x.shape() == [self.n, self.h, self.w, self.cin]
                && w.shape() == self.weight_shape()
                && b.len() == self.cout,
            "conv2d: input {:?}, kernel {:?}, bias {:?} for {self:?}",
            x.shape(),
            w.shape(),
            b.shape()
        );
        let shape = self.output_shape();
        let y = match then.pool {
            false => gpu.empty(&shape)?,
            true => gpu.empty(&[shape[0], shape[1] / 2, shape[2] / 2, shape[3]])?,
        };
        let col_blocks = self.cout.div_ceil(tile.cols());
        let tiles = self.m().div_ceil(tile.rows) * col_blocks;
        let params = ImplicitParams {
            m: self.m() as u32,
            n: self.cout as u32,
            flags: 1 | (then.relu as u32) << 2 | (then.pool as u32) << 4,
            col_blocks: col_blocks as u32,
            tiles: tiles as u32,
            geometry: self.geometry(),
            dil_x: dil_x as u32,
        };
        let shader = Shader { name, source };
        let one_vec4 = (self.cin == 4) as u32 as f64;
        let kernel = gpu.kernel(&shader, "main", &[("ONE_VEC4", one_vec4)]);
        gpu.note_flops(flops);
        gpu.dispatch(
            &kernel,
            bytemuck::bytes_of(&params),
            &[(1, x), (2, w), (3, b), (4, &y)],
            tiles as u32,
        )?;
        Ok(y)
    }

    /// One input channel (the gray image): the implicit kernel reads `x4`,
    /// vec4s of four horizontal neighbours of the padded image (`taps_x4`),
    /// as a 4-channel input with the kernel's columns in fours, 4 apart
    /// (dilation 4), and the kernel's rows padded with zeros to match
    /// (`pad_taps`). Two small passes instead of the im2col matrix.
    fn forward_gray(
        &self,
        gpu: &Gpu,
        kernel: &'static ImplicitKernel,
        [x, w, b]: [&Tensor; 3],
        then: Epilogue,
    ) -> Result<Tensor> {
        ensure!(
            x.shape() == [self.n, self.h, self.w, 1] && w.shape() == self.weight_shape(),
            "conv2d: input {:?}, kernel {:?} for {self:?}",
            x.shape(),
            w.shape()
        );
        let cols = self.kw.div_ceil(4);
        // The padded image x4 reads: the taps of every output, in vec4s.
        let (hp, wp) = (
            (self.oh - 1) * self.stride + self.kh,
            (self.ow - 1) * self.stride + 4 * (cols - 1) + 1,
        );
        let x4 = gpu.empty(&[self.n, hp, wp, 4])?;
        let params = Params {
            geometry: Geometry {
                oh: hp as u32,
                ow: wp as u32,
                ..self.geometry()
            },
            k: 1,
            ..self.params()
        };
        gpu.dispatch_xyz(
            &gpu.kernel(&SHADERS.scalar, "taps_x4", &[]),
            bytemuck::bytes_of(&params),
            &[(3, x), (4, &x4)],
            [wp.div_ceil(64) as u32, hp as u32, self.image_groups()],
        )?;
        let w4 = gpu.empty(&[self.kh, cols, 4, self.cout])?;
        let params = Params {
            k: (4 * cols) as u32,
            ld: (self.cout / 4) as u32,
            ..self.params()
        };
        gpu.dispatch(
            &gpu.kernel(&SHADERS.scalar, "pad_taps", &[]),
            bytemuck::bytes_of(&params),
            &[(5, w), (4, &w4)],
            (w4.len() / 4).div_ceil(64) as u32,
        )?;
        let over_x4 = Conv2d {
            h: hp,
            w: wp,
            cin: 4,
            kw: cols,
            pad_top: 0,
            pad_left: 0,
            ..*self
        };
        // The padded columns' zeros are not counted as work.
        over_x4.forward_implicit(gpu, kernel, [&x4, &w4, b], then, 4, self.flops())
    }

    fn forward_then(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        then: Epilogue,
    ) -> Result<(Tensor, Tensor)> {
        ensure!(
            w.shape() == self.weight_shape(),
            "conv2d: kernel {:?}, expected {:?}",
            w.shape(),
            self.weight_shape()
        );
        let cols = self.im2col(gpu, x)?;
        let y = gpu.empty(&self.output_shape())?;
        let product = self.product(then.relu);
        match then.residual {
            None => product.run(gpu, &cols, w, Some(b), &y)?,
            Some(residual) => {
                ensure!(
                    residual.shape() == self.output_shape(),
                    "conv2d: residual {:?} for output {:?}",
                    residual.shape(),
                    self.output_shape()
                );
                product.run_plus(gpu, [&cols, w, b, residual], &y)?
            }
        }
        Ok((y, cols))
    }

    /// cols · W: the forward product.
    fn product(&self, relu: bool) -> Gemm {
        Gemm {
            a_padded: true,
            relu,
            ..Gemm::new(self.m(), self.cout, self.k(), Strides::rows(self.ld()))
        }
    }

    /// dx from dy: dcols = dy · Wᵀ, then col2im; plus `prior` (see
    /// `grad_input_transposed`).
    pub fn grad_input(
        &self,
        gpu: &Gpu,
        dy: &Tensor,
        w: &Tensor,
        prior: Option<&Tensor>,
    ) -> Result<Tensor> {
        // Wᵀ [cout, k] so that the product reads it row by row.
        let wt = transpose(gpu, w, self.k(), self.cout)?;
        self.grad_input_transposed(gpu, dy, &wt, prior)
    }

    /// `grad_input` given Wᵀ ([cout, k], e.g. from `Tape::transpose_later`),
    /// plus `prior` (a gradient x already has, see `Tape::record_folding`):
    /// added by the product where dcols is dx (an uncropped 1×1 convolution;
    /// see `Gemm::run_adding`), else by an add after it.
    pub fn grad_input_transposed(
        &self,
        gpu: &Gpu,
        dy: &Tensor,
        wt: &Tensor,
        prior: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (k, cout) = (self.k(), self.cout);
        ensure!(
            wt.shape() == [cout, k],
            "conv2d: transposed kernel {:?}, expected [{cout}, {k}]",
            wt.shape()
        );
        let x_shape = [self.n, self.h, self.w, self.cin];
        if let Some(p) = prior {
            ensure!(
                p.len() == x_shape.iter().product::<usize>(),
                "conv2d: a prior gradient {:?} for an input {x_shape:?}",
                p.shape()
            );
        }
        let g = Gemm::new(self.m(), k, cout, Strides::rows(cout));
        if let (Some(p), true) = (prior, self.is_pointwise()) {
            let dx = gpu.empty(&x_shape)?;
            g.run_adding(gpu, [dy, wt, p], &dx)?;
            return Ok(dx);
        }
        let dx = self.grad_input_alone(gpu, g, dy, wt)?;
        match prior {
            Some(p) => elementwise::add(gpu, p, &dx.reshape(p.shape())),
            None => Ok(dx),
        }
    }

    /// dx = col2im(dy · Wᵀ) by the product `g` (dcols = dy · Wᵀ).
    fn grad_input_alone(&self, gpu: &Gpu, g: Gemm, dy: &Tensor, wt: &Tensor) -> Result<Tensor> {
        if self.is_cropped_pointwise() && g.on_subgroups(gpu) {
            // dcols is dx's top-left pixels: stored there, the rest zeros.
            let dx = gpu.zeros(&[self.n, self.h, self.w, self.cin])?;
            let (oh, ow, h, w) = (self.oh, self.ow, self.h, self.w);
            let into = Gemm {
                rows_into: Some(RowsInto { oh, ow, h, w }),
                ..g
            };
            into.run(gpu, dy, wt, None, &dx)?;
            return Ok(dx);
        }
        let dcols = gpu.empty(&[self.m(), self.k()])?;
        g.run(gpu, dy, wt, None, &dcols)?;
        if self.is_pointwise() {
            return Ok(dcols.reshape(&[self.n, self.h, self.w, self.cin]));
        }
        let dx = gpu.empty(&[self.n, self.h, self.w, self.cin])?;
        let col2im = gpu.kernel(SHADERS.pick(self.width() == 4), "col2im", &[]);
        let grid = [
            (self.w * self.cin / self.width()).div_ceil(64) as u32,
            self.h as u32,
            self.image_groups(),
        ];
        gpu.dispatch_xyz(
            &col2im,
            bytemuck::bytes_of(&self.params()),
            &[(1, &dcols), (2, &dx)],
            grid,
        )?;
        Ok(dx)
    }

    /// dW = colsᵀ · dy, shaped [kh, kw, cin, cout].
    pub fn grad_weight(&self, gpu: &Gpu, cols: &Columns, dy: &Tensor) -> Result<Tensor> {
        let dw = gpu.empty(&self.weight_shape())?;
        match cols {
            Columns::Matrix(cols) => self.weight_product().run(gpu, cols, dy, None, &dw)?,
            Columns::Implicit(x) => self.grad_weight_implicit(gpu, x, dy, &dw, None)?,
        }
        Ok(dw)
    }

    /// dW and db together: the product sums dy's columns as it reads them
    /// where it can (see `Gemm::run_summing_b`), saving the bias reduction.
    pub fn grad_weight_and_bias(
        &self,
        gpu: &Gpu,
        cols: &Columns,
        dy: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let dw = gpu.empty(&self.weight_shape())?;
        let db = match cols {
            Columns::Matrix(cols) => self.weight_product().run_summing_b(gpu, cols, dy, &dw)?,
            Columns::Implicit(x) => {
                let db = gpu.empty(&[self.cout])?;
                self.grad_weight_implicit(gpu, x, dy, &dw, Some(&db))?;
                db
            }
        };
        Ok((dw, db))
    }

    /// colsᵀ · dy: the product behind dW.
    fn weight_product(&self) -> Gemm {
        Gemm::new(
            self.k(),
            self.cout,
            self.m(),
            Strides::transposed(self.ld()),
        )
    }

    /// The weight-gradient kernel that reads x in place for this adapter and
    /// shape: a tile's rows must be channels of one kernel tap.
    fn weight_grad_kernel(&self, gpu: &Gpu) -> Option<&'static ImplicitKernel> {
        let lanes = gpu.fixed_subgroup_size()? as usize;
        IMPLICIT_WEIGHT_GRAD.iter().find(|k| {
            k.tile.lanes == lanes
                && self.cin.is_multiple_of(k.tile.rows)
                && self.cout.is_multiple_of(4)
                && !self.is_pointwise()
        })
    }

    /// dW (and db into `db`) from x and dy, without the im2col matrix.
    fn grad_weight_implicit(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        dy: &Tensor,
        dw: &Tensor,
        db: Option<&Tensor>,
    ) -> Result<()> {
        let Some(&ImplicitKernel {
            name,
            tile,
            ref source,
        }) = self.weight_grad_kernel(gpu)
        else {
            bail!("conv2d: no implicit weight-gradient kernel for {self:?} on this adapter")
        };
        ensure!(
            x.shape() == [self.n, self.h, self.w, self.cin] && dy.shape() == self.output_shape(),
            "conv2d: input {:?}, dy {:?} for {self:?}",
            x.shape(),
            dy.shape()
        );
        let col_blocks = self.cout.div_ceil(tile.cols());
        let tiles = self.k().div_ceil(tile.rows) * col_blocks;
        let params = WeightGradParams {
            m: self.k() as u32,
            n: self.cout as u32,
            k: self.m() as u32,
            flags: (db.is_some() as u32) << 1,
            col_blocks: col_blocks as u32,
            tiles: tiles as u32,
            geometry: self.geometry(),
        };
        let kernel = gpu.kernel(&Shader { name, source }, "main", &[]);
        let sink = gpu.sink()?;
        gpu.note_flops(self.flops());
        gpu.dispatch(
            &kernel,
            bytemuck::bytes_of(&params),
            &[(1, x), (2, dy), (4, dw), (5, db.unwrap_or(&sink))],
            tiles as u32,
        )
    }

    /// db = Σ over output pixels of dy.
    pub fn grad_bias(&self, gpu: &Gpu, dy: &Tensor) -> Result<Tensor> {
        column_sums(gpu, dy, self.cout)
    }
}

/// CPU references (f64), same layouts.
pub mod cpu {
    use super::Conv2d;

    /// Calls f(m, k, x_index) for every (output pixel, tap) that reads x.
    fn taps(c: &Conv2d, mut f: impl FnMut(usize, usize, usize)) {
        for n in 0..c.n {
            for oy in 0..c.oh {
                for ox in 0..c.ow {
                    let m = (n * c.oh + oy) * c.ow + ox;
                    for ky in 0..c.kh {
                        for kx in 0..c.kw {
                            let iy = (oy * c.stride + ky) as isize - c.pad_top as isize;
                            let ix = (ox * c.stride + kx) as isize - c.pad_left as isize;
                            if iy < 0 || ix < 0 || iy >= c.h as isize || ix >= c.w as isize {
                                continue;
                            }
                            for ci in 0..c.cin {
                                let k = (ky * c.kw + kx) * c.cin + ci;
                                f(
                                    m,
                                    k,
                                    ((n * c.h + iy as usize) * c.w + ix as usize) * c.cin + ci,
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    pub fn forward(c: &Conv2d, x: &[f64], w: &[f64], b: &[f64]) -> Vec<f64> {
        let mut y: Vec<f64> = (0..c.m() * c.cout).map(|i| b[i % c.cout]).collect();
        taps(c, |m, k, xi| {
            for co in 0..c.cout {
                y[m * c.cout + co] += x[xi] * w[k * c.cout + co];
            }
        });
        y
    }

    pub fn grad_input(c: &Conv2d, dy: &[f64], w: &[f64]) -> Vec<f64> {
        let mut dx = vec![0.0; c.n * c.h * c.w * c.cin];
        taps(c, |m, k, xi| {
            for co in 0..c.cout {
                dx[xi] += dy[m * c.cout + co] * w[k * c.cout + co];
            }
        });
        dx
    }

    pub fn grad_weight(c: &Conv2d, x: &[f64], dy: &[f64]) -> Vec<f64> {
        let mut dw = vec![0.0; c.k() * c.cout];
        taps(c, |m, k, xi| {
            for co in 0..c.cout {
                dw[k * c.cout + co] += x[xi] * dy[m * c.cout + co];
            }
        });
        dw
    }

    pub fn grad_bias(c: &Conv2d, dy: &[f64]) -> Vec<f64> {
        crate::engine::ops::reduce::cpu_column_sums(dy, c.cout)
    }
}
