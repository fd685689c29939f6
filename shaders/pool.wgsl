// Max and average pooling, NHWC, square window `size`, `stride`, padding
// 'valid'. Max pooling records which tap won (0 .. size² - 1, the first of
// equal maxima, as TensorFlow does) so that its backward routes each
// gradient to that tap. Backward passes gather (each input pixel sums the
// windows that cover it), so no atomics are needed.
// Grids are (ceil(width·c / 64), rows, images) as in conv2d.wgsl.

struct Params {
  n: u32, h: u32, w: u32, c: u32,
  oh: u32, ow: u32, size: u32, stride: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> arg: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read_write> arg_out: array<f32>;

// y[n, oy, ox, c] = max over the window; arg_out = the winning tap.
@compute @workgroup_size(64)
fn max_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let t = wg.x * 64u + li;
  if (t >= p.ow * p.c) { return; }
  let oy = wg.y;
  let n = wg.z;
  let ox_c = divmod(t, p.c);
  var best = -3.4028235e38;
  var best_tap = 0u;
  for (var ky = 0u; ky < p.size; ky++) {
    let row = (n * p.h + oy * p.stride + ky) * p.w;
    for (var kx = 0u; kx < p.size; kx++) {
      let v = x[(row + ox_c.x * p.stride + kx) * p.c + ox_c.y];
      if (v > best) { best = v; best_tap = ky * p.size + kx; }
    }
  }
  let o = ((n * p.oh + oy) * p.ow) * p.c + t;
  y[o] = best;
  arg_out[o] = f32(best_tap);
}

// dx[n, iy, ix, c] = sum of dy over the windows whose winning tap is this pixel.
// x = dy, arg = winning taps, y = dx.
@compute @workgroup_size(64)
fn max_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let t = wg.x * 64u + li;
  if (t >= p.w * p.c) { return; }
  let iy = wg.y;
  let n = wg.z;
  let ix_c = divmod(t, p.c);
  var s = 0.0;
  for (var ky = 0u; ky < p.size; ky++) {
    if (ky > iy) { break; }
    let qy = divmod(iy - ky, p.stride);
    if (qy.y != 0u || qy.x >= p.oh) { continue; }
    for (var kx = 0u; kx < p.size; kx++) {
      if (kx > ix_c.x) { break; }
      let qx = divmod(ix_c.x - kx, p.stride);
      if (qx.y != 0u || qx.x >= p.ow) { continue; }
      let o = ((n * p.oh + qy.x) * p.ow + qx.x) * p.c + ix_c.y;
      if (u32(arg[o]) == ky * p.size + kx) { s += x[o]; }
    }
  }
  y[((n * p.h + iy) * p.w) * p.c + t] = s;
}

@compute @workgroup_size(64)
fn avg_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let t = wg.x * 64u + li;
  if (t >= p.ow * p.c) { return; }
  let oy = wg.y;
  let n = wg.z;
  let ox_c = divmod(t, p.c);
  var s = 0.0;
  for (var ky = 0u; ky < p.size; ky++) {
    let row = (n * p.h + oy * p.stride + ky) * p.w;
    for (var kx = 0u; kx < p.size; kx++) {
      s += x[(row + ox_c.x * p.stride + kx) * p.c + ox_c.y];
    }
  }
  y[((n * p.oh + oy) * p.ow) * p.c + t] = s / f32(p.size * p.size);
}

// x = dy, y = dx.
@compute @workgroup_size(64)
fn avg_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let t = wg.x * 64u + li;
  if (t >= p.w * p.c) { return; }
  let iy = wg.y;
  let n = wg.z;
  let ix_c = divmod(t, p.c);
  var s = 0.0;
  for (var ky = 0u; ky < p.size; ky++) {
    if (ky > iy) { break; }
    let qy = divmod(iy - ky, p.stride);
    if (qy.y != 0u || qy.x >= p.oh) { continue; }
    for (var kx = 0u; kx < p.size; kx++) {
      if (kx > ix_c.x) { break; }
      let qx = divmod(ix_c.x - kx, p.stride);
      if (qx.y != 0u || qx.x >= p.ow) { continue; }
      s += x[((n * p.oh + qy.x) * p.ow + qx.x) * p.c + ix_c.y];
    }
  }
  y[((n * p.h + iy) * p.w) * p.c + t] = s / f32(p.size * p.size);
}
