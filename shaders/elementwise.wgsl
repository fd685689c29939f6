// Element-by-element kernels over flat tensors: one lane, one V (f32 or
// vec4<f32>, see `ShaderPair`). Grids are linear (split over x and y by
// `Gpu::grid`); `len` counts V's.

struct Params {
  len: u32, pad0: u32, pad1: u32, pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<V>;
@group(0) @binding(2) var<storage, read> b: array<V>;
@group(0) @binding(3) var<storage, read_write> out: array<V>;

fn index(wg: vec3<u32>, nwg: vec3<u32>, li: u32) -> u32 {
  return (wg.x + wg.y * nwg.x) * 256u + li;
}

@compute @workgroup_size(256)
fn relu(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let i = index(wg, nwg, li);
  if (i >= p.len) { return; }
  out[i] = max(a[i], V(0.0));
}

// a = y (the forward output), b = dy: the gradient passes where y > 0.
@compute @workgroup_size(256)
fn relu_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let i = index(wg, nwg, li);
  if (i >= p.len) { return; }
  out[i] = select(V(0.0), b[i], a[i] > V(0.0));
}

@compute @workgroup_size(256)
fn add(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let i = index(wg, nwg, li);
  if (i >= p.len) { return; }
  out[i] = a[i] + b[i];
}
