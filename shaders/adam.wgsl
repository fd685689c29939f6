// One Adam step over the flat parameter vector, as Keras does it:
//   m = m + (g - m)(1 - beta1);  v = v + (g² - v)(1 - beta2)
//   param -= alpha · m / (sqrt(v) + epsilon),  alpha = lr · sqrt(1 - beta2^t) / (1 - beta1^t)
// alpha changes every step, so it comes in a small storage tensor written by
// the host (a uniform would need a new buffer per step). A gradient that is
// not finite (bit 0) or an update that overflows (bit 1) raises a flag the
// trainer reads with the loss. `len` counts V's
// (f32 or vec4<f32>, see `ShaderPair`).

struct Params {
  len: u32, beta1: f32, beta2: f32, epsilon: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> grad: array<V>;
@group(0) @binding(2) var<storage, read> alpha: array<f32>;
@group(0) @binding(3) var<storage, read_write> param: array<V>;
@group(0) @binding(4) var<storage, read_write> m: array<V>;
@group(0) @binding(5) var<storage, read_write> v: array<V>;
@group(0) @binding(6) var<storage, read_write> flag: array<atomic<u32>>;

@compute @workgroup_size(256)
fn step(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let i = (wg.x + wg.y * nwg.x) * 256u + li;
  if (i >= p.len) { return; }
  let g = grad[i];
  // NaN fails every comparison, so this is false for NaN and for ±inf.
  if (any(!(abs(g) <= V(3.4028235e38)))) {
    atomicOr(&flag[0], 1u);
    return;
  }
  let mi = m[i] + (g - m[i]) * (1.0 - p.beta1);
  let vi = v[i] + (g * g - v[i]) * (1.0 - p.beta2);
  m[i] = mi;
  v[i] = vi;
  let next = param[i] - alpha[0] * mi / (sqrt(vi) + p.epsilon);
  // A parameter that overflowed is as fatal as a gradient that did.
  if (any(!(abs(next) <= V(3.4028235e38)))) {
    atomicOr(&flag[0], 2u);
  }
  param[i] = next;
}
