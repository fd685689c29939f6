// Per-column sums of a row-major [m, c] matrix (c counts V's): bias
// gradients and the batch-norm statistics. Two stages so that every core gets
// work: `partial` sums a chunk of rows per workgroup into part[chunk, c]
// (lanes own columns, the workgroup id says which rows), `finish` adds the
// chunks up.

struct Params {
  m: u32, c: u32, rows_per_chunk: u32, chunks: u32,
  mode: u32, pad0: u32, pad1: u32, pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<V>;
@group(0) @binding(2) var<storage, read> dy: array<V>;
// Per-column statistics [2, c]: mean, then 1 / sqrt(var + eps).
@group(0) @binding(3) var<storage, read> stats: array<V>;
@group(0) @binding(4) var<storage, read_write> part: array<V>;
// BN_RELU_BACKWARD: the fused batch-norm + ReLU output; dy counts where it is > 0.
@group(0) @binding(5) var<storage, read> relu_out: array<V>;

const SUM: u32 = 0u;          // part[0] = sum x
const MOMENTS: u32 = 1u;      // part[0] = the chunk's mean, part[1] = its sum of (x - chunk mean)^2
const BN_BACKWARD: u32 = 2u;  // part[0] = sum dy, part[1] = sum dy * (x - mean) * invstd
const BN_RELU_BACKWARD: u32 = 3u;  // the same with dy masked by relu_out > 0

// grid (ceil(c / 32), chunks). Output layout: part[(q * chunks + chunk) * c + col] for q in {0, 1}.
@compute @workgroup_size(32)
fn partial(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let col = wg.x * 32u + li;
  if (col >= p.c) { return; }
  let chunk = wg.y;
  let start = chunk * p.rows_per_chunk;
  let end = min(start + p.rows_per_chunk, p.m);
  var s0 = V(0.0);
  var s1 = V(0.0);
  if (p.mode == SUM) {
    for (var r = start; r < end; r++) { s0 += x[r * p.c + col]; }
  } else if (p.mode == MOMENTS) {
    // Two passes over the chunk; the second finds its rows in cache.
    for (var r = start; r < end; r++) { s0 += x[r * p.c + col]; }
    s0 /= f32(max(end, start + 1u) - start);
    for (var r = start; r < end; r++) { let d = x[r * p.c + col] - s0; s1 += d * d; }
    part[(p.chunks + chunk) * p.c + col] = s1;
  } else {
    let mean = stats[col];
    let invstd = stats[p.c + col];
    let masked = p.mode == BN_RELU_BACKWARD;
    for (var r = start; r < end; r++) {
      let i = r * p.c + col;
      var g = dy[i];
      if (masked) { g = select(V(0.0), g, relu_out[i] > V(0.0)); }
      s0 += g;
      s1 += g * (x[i] - mean) * invstd;
    }
    part[(p.chunks + chunk) * p.c + col] = s1;
  }
  part[chunk * p.c + col] = s0;
}

// out[q * c + col] = sum over chunks of part[(q * chunks + chunk) * c + col]; grid (ceil(c / 32), outputs).
@compute @workgroup_size(32)
fn finish(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let col = wg.x * 32u + li;
  if (col >= p.c) { return; }
  let q = wg.y;
  var s = V(0.0);
  for (var chunk = 0u; chunk < p.chunks; chunk++) { s += x[(q * p.chunks + chunk) * p.c + col]; }
  part[q * p.c + col] = s;
}
