// A batch norm on its moving statistics folded into the linear map before it:
// y = ((x·W + b) − mean) · s + beta with s = gamma / sqrt(var + eps) is
// x·W' + b' with W'[k, c] = W[k, c] · s[c] and b'[c] = (b[c] − mean[c]) · s[c] + beta[c].
// One lane per element of W; the first `c` lanes also write b'.

struct Params {
  len: u32, c: u32, eps: f32, pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> gamma: array<f32>;
@group(0) @binding(4) var<storage, read> beta: array<f32>;
@group(0) @binding(5) var<storage, read> mean: array<f32>;
@group(0) @binding(6) var<storage, read> variance: array<f32>;
@group(0) @binding(7) var<storage, read_write> w_out: array<f32>;
@group(0) @binding(8) var<storage, read_write> b_out: array<f32>;

@compute @workgroup_size(256)
fn fold(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let i = (wg.x + wg.y * nwg.x) * 256u + li;
  if (i >= p.len) { return; }
  let ch = i % p.c;
  let s = gamma[ch] / sqrt(variance[ch] + p.eps);
  w_out[i] = w[i] * s;
  if (i < p.c) {
    b_out[i] = (b[i] - mean[i]) * s + beta[i];
  }
}
