// Batch normalisation over the rows of an [m, c] matrix (NHWC activations
// flattened), with Keras semantics: biased batch variance, epsilon, and
// moving averages `moving = momentum · moving + (1 − momentum) · batch`.
// Column sums and per-chunk moments come from reduce.wgsl; these kernels turn
// them into statistics and apply them. `stats` is [mean | invstd], invstd = 1/sqrt(var + eps).
// Row kernels: lanes own channels, a workgroup owns ROWS rows (grid (ceil(c / 32), ceil(m / ROWS))).
// c counts V's (f32 or vec4<f32>, see `ShaderPair`). With RELU the layer is
// batch norm followed by ReLU, fused: normalize clamps at zero, and the
// backward pass masks dy with the fused output y (binding 9) on the fly.

struct Params {
  m: u32, c: u32, eps: f32, momentum: f32,
  chunks: u32, rows_per_chunk: u32, pad0: u32, pad1: u32,  // how reduce.wgsl split the rows
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<V>;
@group(0) @binding(2) var<storage, read> b: array<V>;
@group(0) @binding(3) var<storage, read> c3: array<V>;
@group(0) @binding(4) var<storage, read> d4: array<V>;
@group(0) @binding(5) var<storage, read> e5: array<V>;
@group(0) @binding(6) var<storage, read_write> out: array<V>;
@group(0) @binding(7) var<storage, read_write> out2: array<V>;
@group(0) @binding(8) var<storage, read_write> out3: array<V>;
@group(0) @binding(9) var<storage, read> relu_out: array<V>;

override RELU: bool = false;
override RESIDUAL: bool = false;

const ROWS: u32 = 32u;

// Rows in chunk i of reduce.wgsl's split.
fn chunk_rows(i: u32) -> f32 {
  return f32(min(p.rows_per_chunk, p.m - i * p.rows_per_chunk));
}

// a = per-chunk [mean | Σ(x − chunk mean)²] (reduce.wgsl, MOMENTS) → out = stats;
// out2 = moving mean, out3 = moving variance, updated. The chunks combine as
// in Chan et al.: M2 = Σ M2_i + n_i (mean_i − mean)², with no cancellation.
@compute @workgroup_size(32)
fn stats(@builtin(global_invocation_id) gid: vec3<u32>) {
  let col = gid.x;
  if (col >= p.c) { return; }
  var mean = V(0.0);
  for (var i = 0u; i < p.chunks; i++) { mean += a[i * p.c + col] * chunk_rows(i); }
  mean /= f32(p.m);
  var m2 = V(0.0);
  for (var i = 0u; i < p.chunks; i++) {
    let d = a[i * p.c + col] - mean;
    m2 += a[(p.chunks + i) * p.c + col] + chunk_rows(i) * d * d;
  }
  let var_ = m2 / f32(p.m);
  out[col] = mean;
  out[p.c + col] = V(1.0) / sqrt(var_ + V(p.eps));
  out2[col] = p.momentum * out2[col] + (1.0 - p.momentum) * mean;
  out3[col] = p.momentum * out3[col] + (1.0 - p.momentum) * var_;
}

// Inference: a = moving mean, b = moving variance → out = stats.
@compute @workgroup_size(32)
fn from_moving(@builtin(global_invocation_id) gid: vec3<u32>) {
  let col = gid.x;
  if (col >= p.c) { return; }
  out[col] = a[col];
  out[p.c + col] = V(1.0) / sqrt(b[col] + V(p.eps));
}

// y = (x − mean) · invstd · gamma + beta (+ e5 with RESIDUAL: a residual
// block's other branch, added before the ReLU). a = x, b = stats, c3 = gamma,
// d4 = beta → out = y.
@compute @workgroup_size(32)
fn normalize(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let col = wg.x * 32u + li;
  if (col >= p.c) { return; }
  let scale = b[p.c + col] * c3[col];
  let shift = d4[col] - b[col] * scale;
  let start = wg.y * ROWS;
  let end = min(start + ROWS, p.m);
  for (var r = start; r < end; r++) {
    let i = r * p.c + col;
    var v = a[i] * scale + shift;
    if (RESIDUAL) { v += e5[i]; }
    if (RELU) { v = max(v, V(0.0)); }
    out[i] = v;
  }
}

// dx = gamma · invstd · (dy − Σdy / m − xhat · Σ(dy·xhat) / m).
// a = x, b = dy, c3 = stats, d4 = gamma, e5 = [Σdy | Σdy·xhat] → out = dx;
// with RELU, dy is first masked where relu_out is zero.
@compute @workgroup_size(32)
fn grad_input(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let col = wg.x * 32u + li;
  if (col >= p.c) { return; }
  let mean = c3[col];
  let invstd = c3[p.c + col];
  let mdy = e5[col] / f32(p.m);
  let mdyx = e5[p.c + col] / f32(p.m);
  let k = d4[col] * invstd;
  let start = wg.y * ROWS;
  let end = min(start + ROWS, p.m);
  for (var r = start; r < end; r++) {
    let i = r * p.c + col;
    let xhat = (a[i] - mean) * invstd;
    var g = b[i];
    if (RELU) { g = select(V(0.0), g, relu_out[i] > V(0.0)); }
    out[i] = k * (g - mdy - xhat * mdyx);
  }
}
