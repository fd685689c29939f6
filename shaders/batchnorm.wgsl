// Batch normalisation over the rows of an [m, c] matrix (NHWC activations
// flattened), with Keras semantics: biased batch variance, epsilon, and
// moving averages `moving = momentum · moving + (1 − momentum) · batch`.
// Training takes two dispatches per direction: `moments` (forward) or
// `grad_sums` (backward) reduce chunks of rows, then `normalize_train` or
// `grad_input` add the chunks up, each workgroup for its own columns, and
// apply them to the rows of one chunk (grid (ceil(c / 32), chunks)). A layer
// of one chunk (few rows) skips the reduction: its workgroups compute the
// statistics themselves, as on a CPU's Vulkan a dispatch costs ≈ 60 µs
// whatever it does. The first row of workgroups also writes what later passes
// need. `stats` is [mean | invstd], invstd = 1/sqrt(var + eps).
// Lanes own channels; c counts V's (f32 or vec4<f32>, see `ShaderPair`). With
// RELU the layer is batch norm followed by ReLU, fused: the forward clamps at
// zero, and the backward masks dy with the fused output y (binding 9).

struct Params {
  m: u32, c: u32, eps: f32, momentum: f32,
  chunks: u32, rows_per_chunk: u32,  // how the training kernels split the rows (`BatchNorm::split`)
  gamma_at: u32,  // grad_input: where Σdy·xhat starts in `out2` (after Σdy, aligned for a view)
  pad0: u32,
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
@group(0) @binding(10) var<storage, read_write> stats_out: array<V>;

override RELU: bool = false;
override RESIDUAL: bool = false;
// grad_input also writes dy masked by the ReLU (the residual shortcut's gradient) to out3.
override SHORTCUT: bool = false;

const ROWS: u32 = 32u;

// Chunk i's rows: [start, end).
fn chunk_range(i: u32) -> vec2<u32> {
  let start = i * p.rows_per_chunk;
  return vec2<u32>(start, min(start + p.rows_per_chunk, p.m));
}

// How many rows chunk i has.
fn chunk_rows(i: u32) -> f32 {
  let rows = chunk_range(i);
  return f32(rows.y - rows.x);
}

// A chunk's two per-column results into out = [2, chunks, c].
fn store_chunk(i: u32, col: u32, r: array<V, 2>) {
  out[i * p.c + col] = r[0];
  out[(p.chunks + i) * p.c + col] = r[1];
}

// [mean, Σ (x − mean)²] of column col over rows [start, end) of x (b): two
// passes, the second finds the rows in cache.
fn moments_of(col: u32, start: u32, end: u32) -> array<V, 2> {
  var s = V(0.0);
  for (var r = start; r < end; r++) { s += b[r * p.c + col]; }
  let mean = s / f32(max(end, start + 1u) - start);
  var m2 = V(0.0);
  for (var r = start; r < end; r++) { let d = b[r * p.c + col] - mean; m2 += d * d; }
  return array<V, 2>(mean, m2);
}

// [Σ g, Σ g·xhat] over rows [start, end): g = dy (b), masked where the fused
// ReLU's output (relu_out) is zero; xhat from x (a) and stats (c3).
fn grad_sums_of(col: u32, start: u32, end: u32) -> array<V, 2> {
  let mean = c3[col];
  let invstd = c3[p.c + col];
  var s0 = V(0.0);
  var s1 = V(0.0);
  for (var r = start; r < end; r++) {
    let i = r * p.c + col;
    var g = b[i];
    if (RELU) { g = select(V(0.0), g, relu_out[i] > V(0.0)); }
    s0 += g;
    s1 += g * (a[i] - mean) * invstd;
  }
  return array<V, 2>(s0, s1);
}

// Per chunk of rows: out = [2, chunks, c] of moments_of (x in b).
@compute @workgroup_size(32)
fn moments(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let col = wg.x * 32u + li;
  if (col >= p.c) { return; }
  let rows = chunk_range(wg.y);
  store_chunk(wg.y, col, moments_of(col, rows.x, rows.y));
}

// Per chunk of rows: out = [2, chunks, c] of grad_sums_of (x in a, dy in b).
@compute @workgroup_size(32)
fn grad_sums(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let col = wg.x * 32u + li;
  if (col >= p.c) { return; }
  let rows = chunk_range(wg.y);
  store_chunk(wg.y, col, grad_sums_of(col, rows.x, rows.y));
}

// The batch's [mean, biased variance] of column col: from the moments of x
// (b) itself with one chunk, else from the chunks' moments in `a`, combined
// as in Chan et al.: M2 = Σ M2_i + n_i (mean_i − mean)², with no cancellation.
fn batch_moments(col: u32) -> array<V, 2> {
  if (p.chunks == 1u) {
    let r = moments_of(col, 0u, p.m);
    return array<V, 2>(r[0], r[1] / f32(p.m));
  }
  var mean = V(0.0);
  for (var i = 0u; i < p.chunks; i++) { mean += a[i * p.c + col] * chunk_rows(i); }
  mean /= f32(p.m);
  var m2 = V(0.0);
  for (var i = 0u; i < p.chunks; i++) {
    let d = a[i * p.c + col] - mean;
    m2 += a[(p.chunks + i) * p.c + col] + chunk_rows(i) * d * d;
  }
  return array<V, 2>(mean, m2 / f32(p.m));
}

// Training forward: y = BN(x) with the batch's statistics (+ e5, then the
// ReLU, as `normalize`). a = per-chunk moments of x (`moments`; unread with
// one chunk), b = x, c3 = gamma,
// d4 = beta → out = y; the first row of workgroups also writes stats_out =
// [mean | invstd] and updates out2 = moving mean, out3 = moving variance.
@compute @workgroup_size(32)
fn normalize_train(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let col = wg.x * 32u + li;
  if (col >= p.c) { return; }
  let moments = batch_moments(col);
  let mean = moments[0];
  let invstd = V(1.0) / sqrt(moments[1] + V(p.eps));
  if (wg.y == 0u) {
    stats_out[col] = mean;
    stats_out[p.c + col] = invstd;
    out2[col] = p.momentum * out2[col] + (1.0 - p.momentum) * mean;
    out3[col] = p.momentum * out3[col] + (1.0 - p.momentum) * moments[1];
  }
  let scale = invstd * c3[col];
  let shift = d4[col] - mean * scale;
  let rows = chunk_range(wg.y);
  for (var r = rows.x; r < rows.y; r++) {
    let i = r * p.c + col;
    var v = b[i] * scale + shift;
    if (RESIDUAL) { v += e5[i]; }
    if (RELU) { v = max(v, V(0.0)); }
    out[i] = v;
  }
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
// a = x, b = dy, c3 = stats, d4 = gamma, e5 = per-chunk [Σdy | Σdy·xhat]
// (`grad_sums`, added up here; unread with one chunk) → out = dx; the first row of
// workgroups also writes the sums to out2 (Σdy at 0, Σdy·xhat at gamma_at:
// the gradients of beta and gamma). With RELU, dy is first masked where
// relu_out is zero; with SHORTCUT that masked dy is written to out3 too.
@compute @workgroup_size(32)
fn grad_input(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let col = wg.x * 32u + li;
  if (col >= p.c) { return; }
  var sdy = V(0.0);
  var sdyx = V(0.0);
  if (p.chunks == 1u) {
    let r = grad_sums_of(col, 0u, p.m);
    sdy = r[0];
    sdyx = r[1];
  } else {
    for (var i = 0u; i < p.chunks; i++) {
      sdy += e5[i * p.c + col];
      sdyx += e5[(p.chunks + i) * p.c + col];
    }
  }
  if (wg.y == 0u) {
    out2[col] = sdy;
    out2[p.gamma_at + col] = sdyx;
  }
  let mean = c3[col];
  let invstd = c3[p.c + col];
  let mdy = sdy / f32(p.m);
  let mdyx = sdyx / f32(p.m);
  let k = d4[col] * invstd;
  let rows = chunk_range(wg.y);
  for (var r = rows.x; r < rows.y; r++) {
    let i = r * p.c + col;
    let xhat = (a[i] - mean) * invstd;
    var g = b[i];
    if (RELU) { g = select(V(0.0), g, relu_out[i] > V(0.0)); }
    if (SHORTCUT) { out3[i] = g; }
    out[i] = k * (g - mdy - xhat * mdyx);
  }
}
