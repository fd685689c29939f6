"""Writes gemm_sg8.wgsl: the 8-lane-subgroup matrix product, its loop body
unrolled (WGSL cannot index 16 named accumulators in a loop that the shader
compiler keeps in registers).

    python3 shaders/gemm_sg8.py [ROWS [OUT]]   # ROWS: tile rows, a multiple of 8 (16)
"""
import os
import sys

R = int(sys.argv[1]) if len(sys.argv) > 1 else 16
G = R // 8
out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "gemm_sg8.wgsl")
L = []
L.append(f"""// C[i, j] = sum_p A(i, p) * B[p, j]  (+ bias[j]), for adapters whose subgroups
// are 8 lanes wide (lavapipe on AVX2). See gemm.wgsl for the general kernel.
//
// Why this shape (benches/NOTES.md has the measurements): llvmpipe runs the 8
// lanes of a subgroup in one 256-bit vector. A load whose address differs
// per lane costs a loop over the lanes, but it fetches a whole vec4 per lane,
// and a load whose address is the same for all lanes is no cheaper per value.
// subgroupBroadcast, though, is a register shuffle. So every lane loads a
// different vec4 of A (8 rows × 4 p's, or 8 p's × 4 rows), and broadcasts hand
// each A value to all lanes; each lane owns 4 columns of C and loads its vec4
// of B once per p. One subgroup computes a {R} × 32 tile.
//
// A_ROWS (A row-major [i, lda], p contiguous): lane l loads A[i0 + 8g + l, p..p+3].
// A transposed (A stored [p, lda], i contiguous): lane l loads A[p + l, i0..i0+{R-1}].
// Requirements (checked by the host): lda % 4 == 0, n % 4 == 0; for A_ROWS the
// columns of A past k up to the next multiple of 4 hold zeros. The loop body
// is unrolled by shaders/gemm_sg8.py, which writes this file: edit that, not
// this. (WGSL has no way to name {R} accumulators in a loop that the shader
// compiler keeps in registers.)

struct Params {{
  m: u32, n: u32, k: u32, lda: u32,
  flags: u32, col_blocks: u32, tiles: u32, pad: u32,  // flags: 1 = add bias, 2 = sum B's columns
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

override A_ROWS: bool = true;

fn store(row: u32, col4: u32, s: vec4<f32>) {{
  if (row < p.m) {{
    var v = s;
    if ((p.flags & 1u) != 0u) {{ v += bias[col4]; }}
    c[row * (p.n / 4u) + col4] = v;
  }}
}}

@compute @workgroup_size(8)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(subgroup_invocation_id) lane: u32) {{
  let tile = wg.x + wg.y * nwg.x;
  if (tile >= p.tiles) {{ return; }}
  let i0 = (tile / p.col_blocks) * {R}u;
  let n4 = p.n / 4u;
  let mine = (tile % p.col_blocks) * 8u + lane;   // this lane's vec4 column
  let col4 = min(mine, n4 - 1u);
  let lda4 = p.lda / 4u;
  let klast = p.k - 1u;""")
for r in range(R):
    L.append(f"  var s{r} = vec4<f32>();")
L.append("  if (A_ROWS) {")
for g in range(G):
    L.append(f"    let r{g} = min(i0 + {8*g}u + lane, p.m - 1u) * lda4;")
L.append("    for (var q = 0u; q < (p.k + 3u) / 4u; q++) {")
for g in range(G):
    L.append(f"      let a{g} = a[r{g} + q];")
L.append("      let k0 = q * 4u;")
for t in range(4):
    kk = "k0" if t == 0 else f"min(k0 + {t}u, klast)"
    L.append(f"      let b{t} = b[{kk} * n4 + col4];")
comp = "xyzw"
for t in range(4):
    for j in range(8):
        for g in range(G):
            L.append(f"      s{8*g+j} += subgroupBroadcast(a{g}.{comp[t]}, {j}u) * b{t};")
L.append("    }")
L.append("  } else {")
L.append("    let ia = i0 / 4u;")
L.append("    let sum_b = (p.flags & 2u) != 0u && i0 == 0u;")
L.append("    var sb = vec4<f32>();")
L.append("    for (var k0 = 0u; k0 < p.k; k0 += 8u) {")
L.append("      let kr = min(k0 + lane, klast) * lda4 + ia;")
L.append("      // Rows of A past k are clamped to the last one: zero their share.")
L.append("      let live = select(0.0, 1.0, k0 + lane < p.k);")
for q in range(R // 4):
    L.append(f"      let a{q} = a[kr + {q}u] * live;")
for t in range(8):
    L.append(f"      let b{t} = b[min(k0 + {t}u, klast) * n4 + col4];")
L.append("      if (sum_b) {")
L.append("        // Rows past k repeat the last one: leave them out.")
L.append("        sb += " + " + ".join(f"select(vec4<f32>(), b{t}, k0 + {t}u < p.k)" for t in range(4)) + ";")
L.append("        sb += " + " + ".join(f"select(vec4<f32>(), b{t}, k0 + {t}u < p.k)" for t in range(4, 8)) + ";")
L.append("      }")
for t in range(8):
    for q in range(R // 4):
        for cc in range(4):
            L.append(f"      s{4*q+cc} += subgroupBroadcast(a{q}.{comp[cc]}, {t}u) * b{t};")
L.append("    }")
L.append("    if (sum_b && mine < n4) { colsum[col4] = sb; }")
L.append("  }")
L.append("  if (mine >= n4) { return; }")
for r in range(R):
    L.append(f"  store(i0 + {r}u, col4, s{r});")
L.append("}")
open(out,"w").write("\n".join(L) + "\n")
