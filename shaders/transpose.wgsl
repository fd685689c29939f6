// Row-major matrices transposed, several in one dispatch: dst = srcᵀ for each
// matrix that `p` lists (offsets into the two bound buffers, and sizes). A
// training step transposes every convolution's weights for its input
// gradients; one dispatch for all of them instead of one each (a dispatch
// costs ≈ 60 µs on a CPU's Vulkan whatever it does). Every lane of every
// workgroup takes part in each matrix in turn; grid (min(ceil(units / 64), 16)).

struct Params {
  count: u32, pad0: u32, pad1: u32, pad2: u32,
  // (src offset, dst offset, rows, cols): in vec4s and 4 × 4 blocks for
  // `blocks`, in floats for `values`.
  matrices: array<vec4<u32>, 64>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@group(0) @binding(3) var<storage, read> src4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> dst4: array<vec4<f32>>;

// rows and cols multiples of 4: one invocation loads four vec4s of src (rows
// 4bi .. 4bi + 3) and stores four vec4s of dst, 8 lane loads and stores per
// 16 values instead of 32.
@compute @workgroup_size(64)
fn blocks(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  for (var e = 0u; e < p.count; e++) {
    let t = p.matrices[e];
    let h4 = t.z / 4u;
    let w4 = t.w / 4u;
    for (var b = gid.x; b < w4 * h4; b += nwg.x * 64u) {
      let bi = b / w4;
      let bj = b % w4;
      let r0 = src4[t.x + (4u * bi) * w4 + bj];
      let r1 = src4[t.x + (4u * bi + 1u) * w4 + bj];
      let r2 = src4[t.x + (4u * bi + 2u) * w4 + bj];
      let r3 = src4[t.x + (4u * bi + 3u) * w4 + bj];
      dst4[t.y + (4u * bj) * h4 + bi] = vec4<f32>(r0.x, r1.x, r2.x, r3.x);
      dst4[t.y + (4u * bj + 1u) * h4 + bi] = vec4<f32>(r0.y, r1.y, r2.y, r3.y);
      dst4[t.y + (4u * bj + 2u) * h4 + bi] = vec4<f32>(r0.z, r1.z, r2.z, r3.z);
      dst4[t.y + (4u * bj + 3u) * h4 + bi] = vec4<f32>(r0.w, r1.w, r2.w, r3.w);
    }
  }
}

// Any sizes, one value per lane.
@compute @workgroup_size(64)
fn values(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  for (var e = 0u; e < p.count; e++) {
    let t = p.matrices[e];
    for (var o = gid.x; o < t.z * t.w; o += nwg.x * 64u) {
      dst[t.y + (o % t.w) * t.z + o / t.w] = src[t.x + o];
    }
  }
}
