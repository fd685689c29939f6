//! The WGSL of the subgroup matrix product (`gemm_sg8` in `gemm.rs`), written
//! out for one subgroup width and tile height.
//!
//! The kernel keeps one accumulator per row of its tile, and WGSL has no way
//! to index that many accumulators in a loop that the shader compiler keeps in
//! registers, so its loop body is unrolled here rather than written by hand.
//! The generated source's own header explains the kernel; `gemm.rs` checks
//! the shapes it accepts and dispatches it.

use std::fmt::Write;

/// The tile one subgroup computes: `rows` rows of C by `4 * lanes` columns
/// (each lane owns a vec4 of columns), for subgroups of exactly `lanes` lanes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubgroupTile {
    pub lanes: usize,
    pub rows: usize,
}

impl SubgroupTile {
    /// `lanes` a multiple of 4 (the column sums of B are added four rows at a
    /// time) and `rows` a multiple of `lanes` (each lane loads one row of A
    /// per group of `lanes` rows). Checked when the tile is a `const`.
    pub const fn new(lanes: usize, rows: usize) -> Self {
        assert!(
            lanes >= 4 && lanes.is_multiple_of(4),
            "lanes: a multiple of 4"
        );
        assert!(
            rows >= lanes && rows.is_multiple_of(lanes),
            "rows: a multiple of lanes"
        );
        SubgroupTile { lanes, rows }
    }

    /// Columns of C per tile.
    pub const fn cols(&self) -> usize {
        4 * self.lanes
    }
}

/// `emit!(out, "...", args)`: one line of WGSL.
macro_rules! emit {
    ($out:expr, $($fmt:tt)*) => {{
        // Writing into a String cannot fail.
        let _ = writeln!($out, $($fmt)*);
    }};
}

/// The kernel's WGSL source for `tile`.
pub fn source(tile: SubgroupTile) -> String {
    let mut out = String::new();
    header(&mut out, tile);
    accumulate_rows_layout(&mut out, tile);
    accumulate_transposed(&mut out, tile);
    end_of_products(&mut out);
    for r in 0..tile.rows {
        emit!(out, "  store(i0 + {r}u, col4, s{r}, bias_v);");
    }
    emit!(out, "}}");
    out
}

/// The explanation, the bindings, `store`, and the entry point up to the
/// accumulators.
fn header(out: &mut String, SubgroupTile { lanes: l, rows: r }: SubgroupTile) {
    let (cols, bits, last) = (4 * l, 32 * l, r - 1);
    emit!(
        out,
        "// C[i, j] = sum_p A(i, p) * B[p, j]  (+ bias[j]) (+ residual[i, j]) (then max(·, 0)), for adapters whose subgroups
// are {l} lanes wide (lavapipe's are 8 on AVX2). See gemm.wgsl for the general kernel.
//
// Why this shape (benches/NOTES.md has the measurements): llvmpipe runs the {l}
// lanes of a subgroup in one {bits}-bit vector. A load whose address differs
// per lane costs a loop over the lanes, but it fetches a whole vec4 per lane,
// and a load whose address is the same for all lanes is no cheaper per value.
// subgroupBroadcast, though, is a register shuffle. So every lane loads a
// different vec4 of A ({l} rows × 4 p's, or {l} p's × 4 rows), and broadcasts hand
// each A value to all lanes; each lane owns 4 columns of C and loads its vec4
// of B once per p. One subgroup computes a {r} × {cols} tile.
//
// A_ROWS (A row-major [i, lda], p contiguous): lane l loads A[i0 + {l}g + l, p..p+3].
// A transposed (A stored [p, lda], i contiguous): lane l loads A[p + l, i0..i0+{last}].
// Requirements (checked by the host): lda % 4 == 0, n % 4 == 0; for A_ROWS the
// columns of A past k up to the next multiple of 4 hold zeros. This source is
// written by src/engine/ops/gemm_sg.rs, which unrolls the loop bodies (WGSL
// has no way to name {r} accumulators in a loop that the shader compiler keeps
// in registers).

struct Params {{
  m: u32, n: u32, k: u32, lda: u32,
  flags: u32, col_blocks: u32, tiles: u32, pad: u32,
  // flags: 1 = add bias, 2 = sum B's columns, 4 = ReLU, 8 = add the residual,
  // 32 = rows into a larger image: row i is stored at row
  // i + (i / into_ow) * into_dw + (i / into_img) * into_dimg of c
  into_ow: u32, into_dw: u32, into_img: u32, into_dimg: u32,
}}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bias: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> c: array<vec4<f32>>;
// With flag 2 (A transposed only): the column sums of B, which the first row
// of tiles adds up on the way (they load every row of B). For dW = xᵀ·dy
// that is the bias gradient, without a dispatch of its own.
@group(0) @binding(5) var<storage, read_write> colsum: array<vec4<f32>>;
// With flag 8: a tensor shaped as C added before the ReLU (a residual
// block's shortcut), so the add and the ReLU after the product need no pass
// of their own.
@group(0) @binding(6) var<storage, read> residual: array<vec4<f32>>;

override A_ROWS: bool = true;

// `bias_v` is bias[col4] or zeros, loaded once per lane rather than once per row (a lane's vec4 load is
// as dear as its FMAs for a dozen rows).
fn store(row: u32, col4: u32, s: vec4<f32>, bias_v: vec4<f32>) {{
  if (row < p.m) {{
    var v = s + bias_v;
    var dest = row;
    if ((p.flags & 32u) != 0u) {{
      dest += row / p.into_ow * p.into_dw + row / p.into_img * p.into_dimg;
    }}
    let i = dest * (p.n / 4u) + col4;
    if ((p.flags & 8u) != 0u) {{ v += residual[i]; }}
    if ((p.flags & 4u) != 0u) {{ v = max(v, vec4<f32>()); }}
    c[i] = v;
  }}
}}

"
    );
    entry_point(out, SubgroupTile { lanes: l, rows: r });
    emit!(
        out,
        "  let lda4 = p.lda / 4u;
  let klast = p.k - 1u;"
    );
    for row in 0..r {
        emit!(out, "  var s{row} = vec4<f32>();");
    }
}

/// The entry point of every subgroup kernel up to the tile's coordinates:
/// one workgroup (one subgroup) per tile of `rows` rows of C by the lanes'
/// vec4 columns; `mine` is this lane's vec4 column, `col4` it clamped to n.
fn entry_point(out: &mut String, SubgroupTile { lanes: l, rows: r }: SubgroupTile) {
    emit!(
        out,
        "@compute @workgroup_size({l})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(subgroup_invocation_id) lane: u32) {{
  let tile = wg.x + wg.y * nwg.x;
  if (tile >= p.tiles) {{ return; }}
  let i0 = (tile / p.col_blocks) * {r}u;
  let n4 = p.n / 4u;
  let mine = (tile % p.col_blocks) * {l}u + lane;   // this lane's vec4 column
  let col4 = min(mine, n4 - 1u);"
    );
}

const COMPONENTS: [char; 4] = ['x', 'y', 'z', 'w'];

/// After the products, in both kernels: lanes past the last column leave, the
/// others load their bias once (`bias_v`, zeros without flag 1) for `store`.
fn end_of_products(out: &mut String) {
    emit!(out, "  if (mine >= n4) {{ return; }}");
    emit!(out, "  var bias_v = vec4<f32>();");
    emit!(
        out,
        "  if ((p.flags & 1u) != 0u) {{ bias_v = bias[col4]; }}"
    );
}

/// Row-major A: lane `l` of group `g` loads a vec4 of row `i0 + lanes·g + l`
/// (4 p's); each of its values is broadcast to the lanes' vec4 of B.
fn accumulate_rows_layout(out: &mut String, SubgroupTile { lanes, rows }: SubgroupTile) {
    let groups = rows / lanes;
    emit!(out, "  if (A_ROWS) {{");
    for g in 0..groups {
        emit!(
            out,
            "    let r{g} = min(i0 + {}u + lane, p.m - 1u) * lda4;",
            lanes * g
        );
    }
    emit!(out, "    for (var q = 0u; q < (p.k + 3u) / 4u; q++) {{");
    for g in 0..groups {
        emit!(out, "      let a{g} = a[r{g} + q];");
    }
    emit!(out, "      let k0 = q * 4u;");
    for t in 0..4 {
        let row = if t == 0 {
            "k0".to_string()
        } else {
            format!("min(k0 + {t}u, klast)")
        };
        emit!(out, "      let b{t} = b[{row} * n4 + col4];");
    }
    rows_fmas(out, SubgroupTile { lanes, rows }, "      ");
    emit!(out, "    }}");
}

/// The products of one step of 4 p's in the row layout: lane `l` of group
/// `g` holds `a{g}` (4 p's of row `lanes·g + l`), every lane `b0..b3`.
fn rows_fmas(out: &mut String, SubgroupTile { lanes, rows }: SubgroupTile, indent: &str) {
    for j in 0..lanes {
        for g in 0..rows / lanes {
            let terms: Vec<String> = COMPONENTS
                .iter()
                .enumerate()
                .map(|(t, comp)| format!("subgroupBroadcast(a{g}.{comp}, {j}u) * b{t}"))
                .collect();
            emit!(out, "{indent}s{} += {};", lanes * g + j, sum_tree(&terms));
        }
    }
}

/// `terms` added pairwise, `((t0 + t1) + (t2 + t3))`: one update of the
/// accumulator per step instead of one per product. llvmpipe blends every
/// update of a variable carried by a loop with the loop's lane mask (and the
/// accumulators live on the stack), so each update costs a blend, a load and
/// a store; the products and their sums are temporaries in registers.
fn sum_tree(terms: &[String]) -> String {
    match terms {
        [one] => one.clone(),
        _ => {
            let (left, right) = terms.split_at(terms.len() / 2);
            format!("({} + {})", sum_tree(left), sum_tree(right))
        }
    }
}

/// The WGSL of a convolution as one subgroup product whose loads do the
/// im2col: row i of A is output pixel (n, oy, ox), and the vec4 of A at
/// p = 4q is four channels of one input pixel, read straight from the NHWC
/// input (zeros where the tap falls in the padding). For inference, where
/// no gradient needs the im2col matrix: it is never written.
pub fn conv_source(tile: SubgroupTile) -> String {
    let SubgroupTile { lanes: l, rows: r } = tile;
    let mut out = String::new();
    emit!(
        out,
        "// y[i, j] = sum_p x(i, p) * W[p, j] + bias[j] (then max(·, 0) with flag 4): a
// convolution of NHWC x with kernels W [kh, kw, cin, cout], as the product of
// gemm_sg{l} (its header in src/engine/ops/gemm_sg.rs explains the {r} × {cols}
// tile per {l}-lane subgroup) with A = im2col(x) read in place: lane l of group
// g owns output pixel i0 + {l}g + l and loads the vec4 of 4 channels of each
// tap from x (cin % 4 == 0, cout % 4 == 0; checked by the host).
//
// With flag 16 the output is max-pooled 2×2, stride 2 (oh and ow even): row i
// is then tap i % 4 of pooling window i / 4, so each window's four pixels are
// four rows of one tile, and the tile stores {pooled} pooled rows, not {r}.
// Written by src/engine/ops/gemm_sg.rs.

struct Params {{
  m: u32, n: u32, flags: u32, col_blocks: u32,  // flags: 1 = add bias, 4 = ReLU, 16 = 2×2 max-pool
  tiles: u32, h: u32, w: u32, cin4: u32,
  oh: u32, ow: u32, kh: u32, kw: u32,
  stride: u32, pad_top: u32, pad_left: u32, dil_x: u32,  // dil_x: kernel columns this far apart
}}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bias: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> c: array<vec4<f32>>;

// cin4 == 1 (the gray path): no loop over the channel vec4s.
override ONE_VEC4: bool = false;

// Row `row` of `rows` (the pooled rows with flag 16). The bias and the ReLU
// commute with the max-pool, so they come after it.
fn store(row: u32, rows: u32, col4: u32, s: vec4<f32>, bias_v: vec4<f32>) {{
  if (row < rows) {{
    var v = s + bias_v;
    if ((p.flags & 4u) != 0u) {{ v = max(v, vec4<f32>()); }}
    c[row * (p.n / 4u) + col4] = v;
  }}
}}

",
        cols = 4 * l,
        pooled = r / 4
    );
    entry_point(&mut out, tile);
    for row in 0..r {
        emit!(out, "  var s{row} = vec4<f32>();");
    }
    let groups = r / l;
    emit!(out, "  let pooled = (p.flags & 16u) != 0u;");
    for g in 0..groups {
        emit!(out, "  let m{g} = min(i0 + {}u + lane, p.m - 1u);", l * g);
        emit!(out, "  var ox{g} = m{g} % p.ow;");
        emit!(out, "  var oy{g} = (m{g} / p.ow) % p.oh;");
        emit!(out, "  var img{g} = m{g} / (p.ow * p.oh) * p.h;");
        emit!(out, "  if (pooled) {{");
        emit!(out, "    let win = m{g} / 4u;");
        emit!(out, "    let pw = p.ow / 2u;");
        emit!(out, "    let ph = p.oh / 2u;");
        emit!(out, "    ox{g} = win % pw * 2u + m{g} % 2u;");
        emit!(out, "    oy{g} = win / pw % ph * 2u + m{g} / 2u % 2u;");
        emit!(out, "    img{g} = win / (pw * ph) * p.h;");
        emit!(out, "  }}");
        emit!(out, "  let iy{g} = i32(oy{g} * p.stride) - i32(p.pad_top);");
        emit!(
            out,
            "  let ix{g} = i32(ox{g} * p.stride) - i32(p.pad_left);"
        );
    }
    emit!(out, "  for (var ky = 0u; ky < p.kh; ky++) {{");
    emit!(out, "    for (var kx = 0u; kx < p.kw; kx++) {{");
    for g in 0..groups {
        emit!(out, "      let y{g} = iy{g} + i32(ky);");
        emit!(out, "      let x{g} = ix{g} + i32(kx * p.dil_x);");
        emit!(
            out,
            "      let inside{g} = y{g} >= 0 && y{g} < i32(p.h) && x{g} >= 0 && x{g} < i32(p.w);"
        );
        emit!(
            out,
            "      let px{g} = select(0u, ((img{g} + u32(y{g})) * p.w + u32(x{g})) * p.cin4, inside{g});"
        );
        emit!(out, "      let live{g} = select(0.0, 1.0, inside{g});");
    }
    emit!(out, "      let tap = (ky * p.kw + kx) * p.cin4;");
    // With one vec4 of channels (the gray path's x4) a loop over them costs
    // as much as the products it holds: the pipeline is specialised instead.
    emit!(out, "      if (ONE_VEC4) {{");
    tap_products(&mut out, tile, "0u", "        ");
    emit!(out, "      }} else {{");
    emit!(out, "      for (var q = 0u; q < p.cin4; q++) {{");
    tap_products(&mut out, tile, "q", "        ");
    emit!(out, "      }}");
    emit!(out, "      }}");
    emit!(out, "    }}");
    emit!(out, "  }}");
    end_of_products(&mut out);
    emit!(out, "  if (pooled) {{");
    for w in 0..r / 4 {
        let [a, b, c, d] = [4 * w, 4 * w + 1, 4 * w + 2, 4 * w + 3];
        emit!(
            out,
            "    store(i0 / 4u + {w}u, p.m / 4u, col4, max(max(s{a}, s{b}), max(s{c}, s{d})), bias_v);"
        );
    }
    emit!(out, "    return;");
    emit!(out, "  }}");
    for row in 0..r {
        emit!(out, "  store(i0 + {row}u, p.m, col4, s{row}, bias_v);");
    }
    emit!(out, "}}");
    out
}

/// The products of channel vec4 `q` of one tap (`conv_source`).
fn tap_products(out: &mut String, tile: SubgroupTile, q: &str, indent: &str) {
    for g in 0..tile.rows / tile.lanes {
        emit!(out, "{indent}let a{g} = x[px{g} + {q}] * live{g};");
    }
    emit!(out, "{indent}let k0 = (tap + {q}) * 4u;");
    for t in 0..4 {
        emit!(out, "{indent}let b{t} = b[(k0 + {t}u) * n4 + col4];");
    }
    rows_fmas(out, tile, indent);
}

/// Transposed A: lane `l` loads the `rows` values of row `k0 + l` as vec4s;
/// each is broadcast to the lanes' vec4 of B's row `k0 + l`. With flag 2 the
/// first row of tiles also adds up B's columns.
fn accumulate_transposed(out: &mut String, tile: SubgroupTile) {
    emit!(out, "  }} else {{");
    emit!(out, "    let ia = i0 / 4u;");
    transposed_loop(out, tile, TransposedA::Matrix);
    emit!(out, "  }}");
}

/// Where a transposed product's lane finds its row `k0 + lane` of A.
enum TransposedA {
    /// In the matrix `a` ([k, lda], i contiguous), from column `ia`.
    Matrix,
    /// Read from NHWC `x` as im2col would have written it (`conv_weight_source`).
    Conv,
}

/// The loop over k of the transposed layout, then B's column sums (flag 2).
fn transposed_loop(out: &mut String, SubgroupTile { lanes, rows }: SubgroupTile, a: TransposedA) {
    emit!(out, "    let sum_b = (p.flags & 2u) != 0u && i0 == 0u;");
    emit!(out, "    var sb = vec4<f32>();");
    emit!(out, "    for (var k0 = 0u; k0 < p.k; k0 += {lanes}u) {{");
    match a {
        TransposedA::Matrix => {
            emit!(out, "      let kr = min(k0 + lane, klast) * lda4 + ia;");
            emit!(
                out,
                "      // Rows of A past k are clamped to the last one: zero their share."
            );
            emit!(out, "      let live = select(0.0, 1.0, k0 + lane < p.k);");
            for q in 0..rows / 4 {
                emit!(out, "      let a{q} = a[kr + {q}u] * live;");
            }
        }
        TransposedA::Conv => {
            emit!(
                out,
                "      let pix = k0 + lane;   // this lane's output pixel"
            );
            emit!(out, "      let ox = pix % p.ow;");
            emit!(out, "      let oy = pix / p.ow % p.oh;");
            emit!(out, "      let img = pix / (p.ow * p.oh);");
            emit!(
                out,
                "      let iy = i32(oy * p.stride + ky) - i32(p.pad_top);"
            );
            emit!(
                out,
                "      let ix = i32(ox * p.stride + kx) - i32(p.pad_left);"
            );
            emit!(
                out,
                "      let inside = pix < p.k && iy >= 0 && iy < i32(p.h) && ix >= 0 && ix < i32(p.w);"
            );
            emit!(
                out,
                "      let xr = select(0u, ((img * p.h + u32(iy)) * p.w + u32(ix)) * p.cin4 + c4, inside);"
            );
            for q in 0..rows / 4 {
                emit!(
                    out,
                    "      let a{q} = select(vec4<f32>(), x[xr + {q}u], inside);"
                );
            }
        }
    }
    for t in 0..lanes {
        emit!(
            out,
            "      let b{t} = b[min(k0 + {t}u, klast) * n4 + col4];"
        );
    }
    emit!(out, "      if (sum_b) {{");
    emit!(
        out,
        "        // Rows past k repeat the last one: leave them out."
    );
    for first in (0..lanes).step_by(4) {
        let terms: Vec<String> = (first..first + 4)
            .map(|t| format!("select(vec4<f32>(), b{t}, k0 + {t}u < p.k)"))
            .collect();
        emit!(out, "        sb += {};", terms.join(" + "));
    }
    emit!(out, "      }}");
    for q in 0..rows / 4 {
        for (cc, comp) in COMPONENTS.iter().enumerate() {
            let terms: Vec<String> = (0..lanes)
                .map(|t| format!("subgroupBroadcast(a{q}.{comp}, {t}u) * b{t}"))
                .collect();
            emit!(out, "      s{} += {};", 4 * q + cc, sum_tree(&terms));
        }
    }
    emit!(out, "    }}");
    emit!(out, "    if (sum_b && mine < n4) {{ colsum[col4] = sb; }}");
}

/// The WGSL of a convolution's weight gradient, dW = colsᵀ · dy, as the
/// transposed product of gemm_sg with cols = im2col(x) read in place: lane l
/// loads row (output pixel) k0 + l of cols straight from NHWC x. A tile's
/// rows are consecutive input channels of one kernel tap (cin % rows == 0,
/// checked by the host), so the tap is the tile's and only the pixel is the
/// lane's. For training, where the forward reads x in place too
/// (`conv_source`): the im2col matrix is never written.
pub fn conv_weight_source(tile: SubgroupTile) -> String {
    let SubgroupTile { lanes: l, rows: r } = tile;
    let mut out = String::new();
    emit!(
        out,
        "// dW[i, j] = sum_p cols(p, i) * dy[p, j] (and, with flag 2, db[j] = sum_p dy[p, j]): the
// weight gradient of a convolution of NHWC x, W [kh, kw, cin, cout], as the transposed product of
// gemm_sg{l} (its header in src/engine/ops/gemm_sg.rs explains the {r} × {cols} tile per
// {l}-lane subgroup) with cols = im2col(x) read in place: lane l loads row k0 + l of cols, i.e.
// output pixel k0 + l, from x; the tile's {r} rows of dW are channels c .. c + {last} of one
// kernel tap (cin % {r} == 0, cout % 4 == 0; checked by the host).
// Written by src/engine/ops/gemm_sg.rs.

struct Params {{
  m: u32, n: u32, k: u32, flags: u32,  // m = kh·kw·cin, n = cout, k = output pixels; flags: 2 = db
  col_blocks: u32, tiles: u32, h: u32, w: u32,
  cin4: u32, oh: u32, ow: u32, kh: u32,
  kw: u32, stride: u32, pad_top: u32, pad_left: u32,
}}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;   // dy
@group(0) @binding(4) var<storage, read_write> c: array<vec4<f32>>;   // dW
@group(0) @binding(5) var<storage, read_write> colsum: array<vec4<f32>>;   // db

",
        cols = 4 * l,
        last = r - 1
    );
    entry_point(&mut out, tile);
    emit!(
        out,
        "  let klast = p.k - 1u;
  let cin = p.cin4 * 4u;
  let tap = i0 / cin;
  let c4 = i0 % cin / 4u;
  let ky = tap / p.kw;
  let kx = tap % p.kw;"
    );
    for row in 0..r {
        emit!(out, "  var s{row} = vec4<f32>();");
    }
    transposed_loop(&mut out, tile, TransposedA::Conv);
    emit!(out, "  if (mine >= n4) {{ return; }}");
    for row in 0..r {
        emit!(
            out,
            "  if (i0 + {row}u < p.m) {{ c[(i0 + {row}u) * n4 + col4] = s{row}; }}"
        );
    }
    emit!(out, "}}");
    out
}
