// C[i, j] = sum_p A(i, p) * B[p, j]  (+ bias[j]), for adapters whose subgroups
// are 8 lanes wide (lavapipe on AVX2). See gemm.wgsl for the general kernel.
//
// Why this shape (benches/NOTES.md has the measurements): llvmpipe runs the 8
// lanes of a subgroup in one 256-bit vector. A load whose address differs
// per lane costs a loop over the lanes, but it fetches a whole vec4 per lane,
// and a load whose address is the same for all lanes is no cheaper per value.
// subgroupBroadcast, though, is a register shuffle. So every lane loads a
// different vec4 of A (8 rows × 4 p's, or 8 p's × 4 rows), and broadcasts hand
// each A value to all lanes; each lane owns 4 columns of C and loads its vec4
// of B once per p. One subgroup computes a 16 × 32 tile.
//
// A_ROWS (A row-major [i, lda], p contiguous): lane l loads A[i0 + 8g + l, p..p+3].
// A transposed (A stored [p, lda], i contiguous): lane l loads A[p + l, i0..i0+15].
// Requirements (checked by the host): lda % 4 == 0, n % 4 == 0; for A_ROWS the
// columns of A past k up to the next multiple of 4 hold zeros. The loop body
// is unrolled by shaders/gemm_sg8.py, which writes this file: edit that, not
// this. (WGSL has no way to name 16 accumulators in a loop that the shader
// compiler keeps in registers.)

struct Params {
  m: u32, n: u32, k: u32, lda: u32,
  flags: u32, col_blocks: u32, tiles: u32, pad: u32,  // flags: 1 = add bias, 2 = sum B's columns
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bias: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> c: array<vec4<f32>>;
// With flag 2 (A transposed only): the column sums of B, which the first row
// of tiles adds up on the way (they load every row of B). For dW = xᵀ·dy
// that is the bias gradient, without a dispatch of its own.
@group(0) @binding(5) var<storage, read_write> colsum: array<vec4<f32>>;

override A_ROWS: bool = true;

fn store(row: u32, col4: u32, s: vec4<f32>) {
  if (row < p.m) {
    var v = s;
    if ((p.flags & 1u) != 0u) { v += bias[col4]; }
    c[row * (p.n / 4u) + col4] = v;
  }
}

@compute @workgroup_size(8)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(subgroup_invocation_id) lane: u32) {
  let tile = wg.x + wg.y * nwg.x;
  if (tile >= p.tiles) { return; }
  let i0 = (tile / p.col_blocks) * 16u;
  let n4 = p.n / 4u;
  let mine = (tile % p.col_blocks) * 8u + lane;   // this lane's vec4 column
  let col4 = min(mine, n4 - 1u);
  let lda4 = p.lda / 4u;
  let klast = p.k - 1u;
  var s0 = vec4<f32>();
  var s1 = vec4<f32>();
  var s2 = vec4<f32>();
  var s3 = vec4<f32>();
  var s4 = vec4<f32>();
  var s5 = vec4<f32>();
  var s6 = vec4<f32>();
  var s7 = vec4<f32>();
  var s8 = vec4<f32>();
  var s9 = vec4<f32>();
  var s10 = vec4<f32>();
  var s11 = vec4<f32>();
  var s12 = vec4<f32>();
  var s13 = vec4<f32>();
  var s14 = vec4<f32>();
  var s15 = vec4<f32>();
  if (A_ROWS) {
    let r0 = min(i0 + 0u + lane, p.m - 1u) * lda4;
    let r1 = min(i0 + 8u + lane, p.m - 1u) * lda4;
    for (var q = 0u; q < (p.k + 3u) / 4u; q++) {
      let a0 = a[r0 + q];
      let a1 = a[r1 + q];
      let k0 = q * 4u;
      let b0 = b[k0 * n4 + col4];
      let b1 = b[min(k0 + 1u, klast) * n4 + col4];
      let b2 = b[min(k0 + 2u, klast) * n4 + col4];
      let b3 = b[min(k0 + 3u, klast) * n4 + col4];
      s0 += subgroupBroadcast(a0.x, 0u) * b0;
      s8 += subgroupBroadcast(a1.x, 0u) * b0;
      s1 += subgroupBroadcast(a0.x, 1u) * b0;
      s9 += subgroupBroadcast(a1.x, 1u) * b0;
      s2 += subgroupBroadcast(a0.x, 2u) * b0;
      s10 += subgroupBroadcast(a1.x, 2u) * b0;
      s3 += subgroupBroadcast(a0.x, 3u) * b0;
      s11 += subgroupBroadcast(a1.x, 3u) * b0;
      s4 += subgroupBroadcast(a0.x, 4u) * b0;
      s12 += subgroupBroadcast(a1.x, 4u) * b0;
      s5 += subgroupBroadcast(a0.x, 5u) * b0;
      s13 += subgroupBroadcast(a1.x, 5u) * b0;
      s6 += subgroupBroadcast(a0.x, 6u) * b0;
      s14 += subgroupBroadcast(a1.x, 6u) * b0;
      s7 += subgroupBroadcast(a0.x, 7u) * b0;
      s15 += subgroupBroadcast(a1.x, 7u) * b0;
      s0 += subgroupBroadcast(a0.y, 0u) * b1;
      s8 += subgroupBroadcast(a1.y, 0u) * b1;
      s1 += subgroupBroadcast(a0.y, 1u) * b1;
      s9 += subgroupBroadcast(a1.y, 1u) * b1;
      s2 += subgroupBroadcast(a0.y, 2u) * b1;
      s10 += subgroupBroadcast(a1.y, 2u) * b1;
      s3 += subgroupBroadcast(a0.y, 3u) * b1;
      s11 += subgroupBroadcast(a1.y, 3u) * b1;
      s4 += subgroupBroadcast(a0.y, 4u) * b1;
      s12 += subgroupBroadcast(a1.y, 4u) * b1;
      s5 += subgroupBroadcast(a0.y, 5u) * b1;
      s13 += subgroupBroadcast(a1.y, 5u) * b1;
      s6 += subgroupBroadcast(a0.y, 6u) * b1;
      s14 += subgroupBroadcast(a1.y, 6u) * b1;
      s7 += subgroupBroadcast(a0.y, 7u) * b1;
      s15 += subgroupBroadcast(a1.y, 7u) * b1;
      s0 += subgroupBroadcast(a0.z, 0u) * b2;
      s8 += subgroupBroadcast(a1.z, 0u) * b2;
      s1 += subgroupBroadcast(a0.z, 1u) * b2;
      s9 += subgroupBroadcast(a1.z, 1u) * b2;
      s2 += subgroupBroadcast(a0.z, 2u) * b2;
      s10 += subgroupBroadcast(a1.z, 2u) * b2;
      s3 += subgroupBroadcast(a0.z, 3u) * b2;
      s11 += subgroupBroadcast(a1.z, 3u) * b2;
      s4 += subgroupBroadcast(a0.z, 4u) * b2;
      s12 += subgroupBroadcast(a1.z, 4u) * b2;
      s5 += subgroupBroadcast(a0.z, 5u) * b2;
      s13 += subgroupBroadcast(a1.z, 5u) * b2;
      s6 += subgroupBroadcast(a0.z, 6u) * b2;
      s14 += subgroupBroadcast(a1.z, 6u) * b2;
      s7 += subgroupBroadcast(a0.z, 7u) * b2;
      s15 += subgroupBroadcast(a1.z, 7u) * b2;
      s0 += subgroupBroadcast(a0.w, 0u) * b3;
      s8 += subgroupBroadcast(a1.w, 0u) * b3;
      s1 += subgroupBroadcast(a0.w, 1u) * b3;
      s9 += subgroupBroadcast(a1.w, 1u) * b3;
      s2 += subgroupBroadcast(a0.w, 2u) * b3;
      s10 += subgroupBroadcast(a1.w, 2u) * b3;
      s3 += subgroupBroadcast(a0.w, 3u) * b3;
      s11 += subgroupBroadcast(a1.w, 3u) * b3;
      s4 += subgroupBroadcast(a0.w, 4u) * b3;
      s12 += subgroupBroadcast(a1.w, 4u) * b3;
      s5 += subgroupBroadcast(a0.w, 5u) * b3;
      s13 += subgroupBroadcast(a1.w, 5u) * b3;
      s6 += subgroupBroadcast(a0.w, 6u) * b3;
      s14 += subgroupBroadcast(a1.w, 6u) * b3;
      s7 += subgroupBroadcast(a0.w, 7u) * b3;
      s15 += subgroupBroadcast(a1.w, 7u) * b3;
    }
  } else {
    let ia = i0 / 4u;
    let sum_b = (p.flags & 2u) != 0u && i0 == 0u;
    var sb = vec4<f32>();
    for (var k0 = 0u; k0 < p.k; k0 += 8u) {
      let kr = min(k0 + lane, klast) * lda4 + ia;
      // Rows of A past k are clamped to the last one: zero their share.
      let live = select(0.0, 1.0, k0 + lane < p.k);
      let a0 = a[kr + 0u] * live;
      let a1 = a[kr + 1u] * live;
      let a2 = a[kr + 2u] * live;
      let a3 = a[kr + 3u] * live;
      let b0 = b[min(k0 + 0u, klast) * n4 + col4];
      let b1 = b[min(k0 + 1u, klast) * n4 + col4];
      let b2 = b[min(k0 + 2u, klast) * n4 + col4];
      let b3 = b[min(k0 + 3u, klast) * n4 + col4];
      let b4 = b[min(k0 + 4u, klast) * n4 + col4];
      let b5 = b[min(k0 + 5u, klast) * n4 + col4];
      let b6 = b[min(k0 + 6u, klast) * n4 + col4];
      let b7 = b[min(k0 + 7u, klast) * n4 + col4];
      if (sum_b) {
        // Rows past k repeat the last one: leave them out.
        sb += select(vec4<f32>(), b0, k0 + 0u < p.k) + select(vec4<f32>(), b1, k0 + 1u < p.k) + select(vec4<f32>(), b2, k0 + 2u < p.k) + select(vec4<f32>(), b3, k0 + 3u < p.k);
        sb += select(vec4<f32>(), b4, k0 + 4u < p.k) + select(vec4<f32>(), b5, k0 + 5u < p.k) + select(vec4<f32>(), b6, k0 + 6u < p.k) + select(vec4<f32>(), b7, k0 + 7u < p.k);
      }
      s0 += subgroupBroadcast(a0.x, 0u) * b0;
      s1 += subgroupBroadcast(a0.y, 0u) * b0;
      s2 += subgroupBroadcast(a0.z, 0u) * b0;
      s3 += subgroupBroadcast(a0.w, 0u) * b0;
      s4 += subgroupBroadcast(a1.x, 0u) * b0;
      s5 += subgroupBroadcast(a1.y, 0u) * b0;
      s6 += subgroupBroadcast(a1.z, 0u) * b0;
      s7 += subgroupBroadcast(a1.w, 0u) * b0;
      s8 += subgroupBroadcast(a2.x, 0u) * b0;
      s9 += subgroupBroadcast(a2.y, 0u) * b0;
      s10 += subgroupBroadcast(a2.z, 0u) * b0;
      s11 += subgroupBroadcast(a2.w, 0u) * b0;
      s12 += subgroupBroadcast(a3.x, 0u) * b0;
      s13 += subgroupBroadcast(a3.y, 0u) * b0;
      s14 += subgroupBroadcast(a3.z, 0u) * b0;
      s15 += subgroupBroadcast(a3.w, 0u) * b0;
      s0 += subgroupBroadcast(a0.x, 1u) * b1;
      s1 += subgroupBroadcast(a0.y, 1u) * b1;
      s2 += subgroupBroadcast(a0.z, 1u) * b1;
      s3 += subgroupBroadcast(a0.w, 1u) * b1;
      s4 += subgroupBroadcast(a1.x, 1u) * b1;
      s5 += subgroupBroadcast(a1.y, 1u) * b1;
      s6 += subgroupBroadcast(a1.z, 1u) * b1;
      s7 += subgroupBroadcast(a1.w, 1u) * b1;
      s8 += subgroupBroadcast(a2.x, 1u) * b1;
      s9 += subgroupBroadcast(a2.y, 1u) * b1;
      s10 += subgroupBroadcast(a2.z, 1u) * b1;
      s11 += subgroupBroadcast(a2.w, 1u) * b1;
      s12 += subgroupBroadcast(a3.x, 1u) * b1;
      s13 += subgroupBroadcast(a3.y, 1u) * b1;
      s14 += subgroupBroadcast(a3.z, 1u) * b1;
      s15 += subgroupBroadcast(a3.w, 1u) * b1;
      s0 += subgroupBroadcast(a0.x, 2u) * b2;
      s1 += subgroupBroadcast(a0.y, 2u) * b2;
      s2 += subgroupBroadcast(a0.z, 2u) * b2;
      s3 += subgroupBroadcast(a0.w, 2u) * b2;
      s4 += subgroupBroadcast(a1.x, 2u) * b2;
      s5 += subgroupBroadcast(a1.y, 2u) * b2;
      s6 += subgroupBroadcast(a1.z, 2u) * b2;
      s7 += subgroupBroadcast(a1.w, 2u) * b2;
      s8 += subgroupBroadcast(a2.x, 2u) * b2;
      s9 += subgroupBroadcast(a2.y, 2u) * b2;
      s10 += subgroupBroadcast(a2.z, 2u) * b2;
      s11 += subgroupBroadcast(a2.w, 2u) * b2;
      s12 += subgroupBroadcast(a3.x, 2u) * b2;
      s13 += subgroupBroadcast(a3.y, 2u) * b2;
      s14 += subgroupBroadcast(a3.z, 2u) * b2;
      s15 += subgroupBroadcast(a3.w, 2u) * b2;
      s0 += subgroupBroadcast(a0.x, 3u) * b3;
      s1 += subgroupBroadcast(a0.y, 3u) * b3;
      s2 += subgroupBroadcast(a0.z, 3u) * b3;
      s3 += subgroupBroadcast(a0.w, 3u) * b3;
      s4 += subgroupBroadcast(a1.x, 3u) * b3;
      s5 += subgroupBroadcast(a1.y, 3u) * b3;
      s6 += subgroupBroadcast(a1.z, 3u) * b3;
      s7 += subgroupBroadcast(a1.w, 3u) * b3;
      s8 += subgroupBroadcast(a2.x, 3u) * b3;
      s9 += subgroupBroadcast(a2.y, 3u) * b3;
      s10 += subgroupBroadcast(a2.z, 3u) * b3;
      s11 += subgroupBroadcast(a2.w, 3u) * b3;
      s12 += subgroupBroadcast(a3.x, 3u) * b3;
      s13 += subgroupBroadcast(a3.y, 3u) * b3;
      s14 += subgroupBroadcast(a3.z, 3u) * b3;
      s15 += subgroupBroadcast(a3.w, 3u) * b3;
      s0 += subgroupBroadcast(a0.x, 4u) * b4;
      s1 += subgroupBroadcast(a0.y, 4u) * b4;
      s2 += subgroupBroadcast(a0.z, 4u) * b4;
      s3 += subgroupBroadcast(a0.w, 4u) * b4;
      s4 += subgroupBroadcast(a1.x, 4u) * b4;
      s5 += subgroupBroadcast(a1.y, 4u) * b4;
      s6 += subgroupBroadcast(a1.z, 4u) * b4;
      s7 += subgroupBroadcast(a1.w, 4u) * b4;
      s8 += subgroupBroadcast(a2.x, 4u) * b4;
      s9 += subgroupBroadcast(a2.y, 4u) * b4;
      s10 += subgroupBroadcast(a2.z, 4u) * b4;
      s11 += subgroupBroadcast(a2.w, 4u) * b4;
      s12 += subgroupBroadcast(a3.x, 4u) * b4;
      s13 += subgroupBroadcast(a3.y, 4u) * b4;
      s14 += subgroupBroadcast(a3.z, 4u) * b4;
      s15 += subgroupBroadcast(a3.w, 4u) * b4;
      s0 += subgroupBroadcast(a0.x, 5u) * b5;
      s1 += subgroupBroadcast(a0.y, 5u) * b5;
      s2 += subgroupBroadcast(a0.z, 5u) * b5;
      s3 += subgroupBroadcast(a0.w, 5u) * b5;
      s4 += subgroupBroadcast(a1.x, 5u) * b5;
      s5 += subgroupBroadcast(a1.y, 5u) * b5;
      s6 += subgroupBroadcast(a1.z, 5u) * b5;
      s7 += subgroupBroadcast(a1.w, 5u) * b5;
      s8 += subgroupBroadcast(a2.x, 5u) * b5;
      s9 += subgroupBroadcast(a2.y, 5u) * b5;
      s10 += subgroupBroadcast(a2.z, 5u) * b5;
      s11 += subgroupBroadcast(a2.w, 5u) * b5;
      s12 += subgroupBroadcast(a3.x, 5u) * b5;
      s13 += subgroupBroadcast(a3.y, 5u) * b5;
      s14 += subgroupBroadcast(a3.z, 5u) * b5;
      s15 += subgroupBroadcast(a3.w, 5u) * b5;
      s0 += subgroupBroadcast(a0.x, 6u) * b6;
      s1 += subgroupBroadcast(a0.y, 6u) * b6;
      s2 += subgroupBroadcast(a0.z, 6u) * b6;
      s3 += subgroupBroadcast(a0.w, 6u) * b6;
      s4 += subgroupBroadcast(a1.x, 6u) * b6;
      s5 += subgroupBroadcast(a1.y, 6u) * b6;
      s6 += subgroupBroadcast(a1.z, 6u) * b6;
      s7 += subgroupBroadcast(a1.w, 6u) * b6;
      s8 += subgroupBroadcast(a2.x, 6u) * b6;
      s9 += subgroupBroadcast(a2.y, 6u) * b6;
      s10 += subgroupBroadcast(a2.z, 6u) * b6;
      s11 += subgroupBroadcast(a2.w, 6u) * b6;
      s12 += subgroupBroadcast(a3.x, 6u) * b6;
      s13 += subgroupBroadcast(a3.y, 6u) * b6;
      s14 += subgroupBroadcast(a3.z, 6u) * b6;
      s15 += subgroupBroadcast(a3.w, 6u) * b6;
      s0 += subgroupBroadcast(a0.x, 7u) * b7;
      s1 += subgroupBroadcast(a0.y, 7u) * b7;
      s2 += subgroupBroadcast(a0.z, 7u) * b7;
      s3 += subgroupBroadcast(a0.w, 7u) * b7;
      s4 += subgroupBroadcast(a1.x, 7u) * b7;
      s5 += subgroupBroadcast(a1.y, 7u) * b7;
      s6 += subgroupBroadcast(a1.z, 7u) * b7;
      s7 += subgroupBroadcast(a1.w, 7u) * b7;
      s8 += subgroupBroadcast(a2.x, 7u) * b7;
      s9 += subgroupBroadcast(a2.y, 7u) * b7;
      s10 += subgroupBroadcast(a2.z, 7u) * b7;
      s11 += subgroupBroadcast(a2.w, 7u) * b7;
      s12 += subgroupBroadcast(a3.x, 7u) * b7;
      s13 += subgroupBroadcast(a3.y, 7u) * b7;
      s14 += subgroupBroadcast(a3.z, 7u) * b7;
      s15 += subgroupBroadcast(a3.w, 7u) * b7;
    }
    if (sum_b && mine < n4) { colsum[col4] = sb; }
  }
  if (mine >= n4) { return; }
  store(i0 + 0u, col4, s0);
  store(i0 + 1u, col4, s1);
  store(i0 + 2u, col4, s2);
  store(i0 + 3u, col4, s3);
  store(i0 + 4u, col4, s4);
  store(i0 + 5u, col4, s5);
  store(i0 + 6u, col4, s6);
  store(i0 + 7u, col4, s7);
  store(i0 + 8u, col4, s8);
  store(i0 + 9u, col4, s9);
  store(i0 + 10u, col4, s10);
  store(i0 + 11u, col4, s11);
  store(i0 + 12u, col4, s12);
  store(i0 + 13u, col4, s13);
  store(i0 + 14u, col4, s14);
  store(i0 + 15u, col4, s15);
}
