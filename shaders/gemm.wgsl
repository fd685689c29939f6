// C[m, n] = sum_k A[m, k] * B[k, n]  (+ bias[n]) (+ C[m, n] when accumulating), then max(·, 0) with flag 4
//
// Shaped for lavapipe (llvmpipe), which runs 8 invocations in one 256-bit
// vector and loads a non-uniform address lane by lane, but a workgroup-uniform
// address once: a workgroup owns 16 rows of C; all its lanes read the same A
// values (uniform loads, any strides, so A may be a transposed view) and each
// lane owns 4 adjacent columns, read from B as one vec4. Sixteen rows per vec4
// of B amortise the expensive per-lane load; the loop body is unrolled by
// hand because the shader compiler does not keep an indexed array in registers.
// (benches/NOTES.md has the variants measured.)
//
// B is row-major [k, ldb] and read as vec4: the vec4 path needs n % 4 == 0
// and ldb % 4 == 0; otherwise (VEC4 = false) columns are read one by one.
// Rows past m and columns past n are clamped for loading and skipped for
// storing, so any shape works.

struct Params {
  m: u32, n: u32, k: u32, ldb: u32,
  a_rs: u32, a_cs: u32, ldc: u32, flags: u32,  // flags: 1 = add bias, 2 = accumulate into C, 4 = ReLU
  col_blocks: u32, tiles: u32, pad0: u32, pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

override VEC4: bool = true;

const ROWS: u32 = 16u;   // rows of C per workgroup
const LANES: u32 = 16u;  // lanes per workgroup, 4 columns each

// Four consecutive elements of B's row `k` from column `col` (clamped to n).
fn load_b(k: u32, col: u32) -> vec4<f32> {
  if (VEC4) {
    return b[(k * p.ldb + col) / 4u];
  }
  let last = p.n - 1u;
  var v: vec4<f32>;
  for (var j = 0u; j < 4u; j++) {
    let i = k * p.ldb + min(col + j, last);
    v[j] = b[i / 4u][i % 4u];
  }
  return v;
}

fn store_row(row: u32, col: u32, s: vec4<f32>) {
  if (row >= p.m) { return; }
  for (var j = 0u; j < 4u; j++) {
    let cj = col + j;
    if (cj < p.n) {
      var v = s[j];
      if ((p.flags & 1u) != 0u) { v += bias[cj]; }
      let i = row * p.ldc + cj;
      if ((p.flags & 2u) != 0u) { v += c[i]; }
      if ((p.flags & 4u) != 0u) { v = max(v, 0.0); }
      c[i] = v;
    }
  }
}

@compute @workgroup_size(16)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let tile = wg.x + wg.y * nwg.x;
  if (tile >= p.tiles) { return; }
  let row0 = (tile / p.col_blocks) * ROWS;
  let col = min(((tile % p.col_blocks) * LANES + li) * 4u, ((p.n - 1u) / 4u) * 4u);
  let last = p.m - 1u;
  let a0 = min(row0 + 0u, last) * p.a_rs;
  let a1 = min(row0 + 1u, last) * p.a_rs;
  let a2 = min(row0 + 2u, last) * p.a_rs;
  let a3 = min(row0 + 3u, last) * p.a_rs;
  let a4 = min(row0 + 4u, last) * p.a_rs;
  let a5 = min(row0 + 5u, last) * p.a_rs;
  let a6 = min(row0 + 6u, last) * p.a_rs;
  let a7 = min(row0 + 7u, last) * p.a_rs;
  let a8 = min(row0 + 8u, last) * p.a_rs;
  let a9 = min(row0 + 9u, last) * p.a_rs;
  let a10 = min(row0 + 10u, last) * p.a_rs;
  let a11 = min(row0 + 11u, last) * p.a_rs;
  let a12 = min(row0 + 12u, last) * p.a_rs;
  let a13 = min(row0 + 13u, last) * p.a_rs;
  let a14 = min(row0 + 14u, last) * p.a_rs;
  let a15 = min(row0 + 15u, last) * p.a_rs;
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
  for (var k = 0u; k < p.k; k++) {
    let bv = load_b(k, col);
    let ak = k * p.a_cs;
    s0 += a[a0 + ak] * bv;
    s1 += a[a1 + ak] * bv;
    s2 += a[a2 + ak] * bv;
    s3 += a[a3 + ak] * bv;
    s4 += a[a4 + ak] * bv;
    s5 += a[a5 + ak] * bv;
    s6 += a[a6 + ak] * bv;
    s7 += a[a7 + ak] * bv;
    s8 += a[a8 + ak] * bv;
    s9 += a[a9 + ak] * bv;
    s10 += a[a10 + ak] * bv;
    s11 += a[a11 + ak] * bv;
    s12 += a[a12 + ak] * bv;
    s13 += a[a13 + ak] * bv;
    s14 += a[a14 + ak] * bv;
    s15 += a[a15 + ak] * bv;
  }
  let mine = ((tile % p.col_blocks) * LANES + li) * 4u;
  if (mine >= p.n) { return; }
  store_row(row0 + 0u, mine, s0);
  store_row(row0 + 1u, mine, s1);
  store_row(row0 + 2u, mine, s2);
  store_row(row0 + 3u, mine, s3);
  store_row(row0 + 4u, mine, s4);
  store_row(row0 + 5u, mine, s5);
  store_row(row0 + 6u, mine, s6);
  store_row(row0 + 7u, mine, s7);
  store_row(row0 + 8u, mine, s8);
  store_row(row0 + 9u, mine, s9);
  store_row(row0 + 10u, mine, s10);
  store_row(row0 + 11u, mine, s11);
  store_row(row0 + 12u, mine, s12);
  store_row(row0 + 13u, mine, s13);
  store_row(row0 + 14u, mine, s14);
  store_row(row0 + 15u, mine, s15);
}
