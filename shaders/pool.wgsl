// Max and average pooling, NHWC, square window `size`, `stride`, padding
// 'valid'. Max pooling records which tap won (0 .. size² - 1, the first of
// equal maxima, as TensorFlow does) so that its backward routes each
// gradient to that tap. Backward passes gather (each input pixel sums the
// windows that cover it), so no atomics are needed.
// Grids are (ceil(width·c / 64), rows, images) as in conv2d.wgsl; c counts V's
// (f32 or vec4<f32>, see `ShaderPair`), and the taps are stored per element.

struct Params {
  n: u32, h: u32, w: u32, c: u32,
  oh: u32, ow: u32, size: u32, stride: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<V>;
@group(0) @binding(2) var<storage, read> arg: array<V>;
@group(0) @binding(3) var<storage, read_write> y: array<V>;
@group(0) @binding(4) var<storage, read_write> arg_out: array<V>;

// y[n, oy, ox, c] = max over the window; arg_out = the winning tap.
@compute @workgroup_size(64)
fn max_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let t = wg.x * 64u + li;
  if (t >= p.ow * p.c) { return; }
  let oy = wg.y;
  let n = wg.z;
  let ox_c = divmod(t, p.c);
  var best = V(-3.40282346e38); // -f32 max; Tint rejects -3.4028235e38 as past it
  var best_tap = V(0.0);
  for (var ky = 0u; ky < p.size; ky++) {
    let row = (n * p.h + oy * p.stride + ky) * p.w;
    for (var kx = 0u; kx < p.size; kx++) {
      let v = x[(row + ox_c.x * p.stride + kx) * p.c + ox_c.y];
      let better = v > best;
      best = select(best, v, better);
      best_tap = select(best_tap, V(f32(ky * p.size + kx)), better);
    }
  }
  let o = ((n * p.oh + oy) * p.ow) * p.c + t;
  y[o] = best;
  arg_out[o] = best_tap;
}

// y[n, oy, ox, c] = max over the window, without the taps: for inference,
// where no backward pass reads them (a stream of stores and selects less).
// One invocation computes two horizontal neighbours (ox = 2j, 2j + 1): with
// overlapping windows (stride < size) they share columns, read once (15
// loads instead of 18 for the stem's 3×3/2). Grid (ceil(ceil(ow / 2)·c / 64), oh, n).
@compute @workgroup_size(64)
fn max_forward_values(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let pairs = (p.ow + 1u) / 2u;
  let t = wg.x * 64u + li;
  if (t >= pairs * p.c) { return; }
  let oy = wg.y;
  let n = wg.z;
  let j_c = divmod(t, p.c);
  let ox = 2u * j_c.x;
  let second = ox + 1u < p.ow;
  // The second window's last column: past the image when it does not exist.
  let span = select(p.size, p.stride + p.size, second);
  var best0 = V(-3.40282346e38);
  var best1 = V(-3.40282346e38);
  for (var ky = 0u; ky < p.size; ky++) {
    let row = (n * p.h + oy * p.stride + ky) * p.w + ox * p.stride;
    for (var kx = 0u; kx < span; kx++) {
      let v = x[(row + kx) * p.c + j_c.y];
      if (kx < p.size) { best0 = max(best0, v); }
      if (kx >= p.stride) { best1 = max(best1, v); }
    }
  }
  let o = ((n * p.oh + oy) * p.ow + ox) * p.c + j_c.y;
  y[o] = best0;
  if (second) { y[o + p.c] = best1; }
}

// The windows covering input index i along one axis: o in [lo, hi] (empty when lo > hi).
fn covering(i: u32, out_size: u32) -> vec2<u32> {
  let hi = min(divmod(i, p.stride).x, out_size - 1u);
  var lo = 0u;
  if (i + 1u > p.size) { lo = divmod(i + p.stride - p.size, p.stride).x; }
  return vec2<u32>(lo, hi);
}

// Windows that tile the input (size == stride): each pixel lies in at most
// one window, so its gradient is that window's dy or zero.
@compute @workgroup_size(64)
fn max_backward_tiled(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let t = wg.x * 64u + li;
  if (t >= p.w * p.c) { return; }
  let n = wg.z;
  let ix_c = divmod(t, p.c);
  let qy = divmod(wg.y, p.stride);
  let qx = divmod(ix_c.x, p.stride);
  var v = V(0.0);
  if (qy.x < p.oh && qx.x < p.ow) {
    let o = ((n * p.oh + qy.x) * p.ow + qx.x) * p.c + ix_c.y;
    v = select(V(0.0), x[o], arg[o] == V(f32(qy.y * p.size + qx.y)));
  }
  y[((n * p.h + wg.y) * p.w) * p.c + t] = v;
}

// dx[n, iy, ix, c] = sum of dy over the windows whose winning tap is this pixel.
// x = dy, arg = winning taps, y = dx. The windows covering a pixel are found
// by range arithmetic: at most ceil(size / stride)² of them, one when the
// windows do not overlap.
@compute @workgroup_size(64)
fn max_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let t = wg.x * 64u + li;
  if (t >= p.w * p.c) { return; }
  let iy = wg.y;
  let n = wg.z;
  let ix_c = divmod(t, p.c);
  let ry = covering(iy, p.oh);
  let rx = covering(ix_c.x, p.ow);
  var s = V(0.0);
  for (var oy = ry.x; oy <= ry.y; oy++) {
    let ky = iy - oy * p.stride;
    for (var ox = rx.x; ox <= rx.y; ox++) {
      let o = ((n * p.oh + oy) * p.ow + ox) * p.c + ix_c.y;
      s += select(V(0.0), x[o], arg[o] == V(f32(ky * p.size + ix_c.x - ox * p.stride)));
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
  var s = V(0.0);
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
  let ry = covering(iy, p.oh);
  let rx = covering(ix_c.x, p.ow);
  var s = V(0.0);
  for (var oy = ry.x; oy <= ry.y; oy++) {
    for (var ox = rx.x; ox <= rx.y; ox++) {
      s += x[((n * p.oh + oy) * p.ow + ox) * p.c + ix_c.y];
    }
  }
  y[((n * p.h + iy) * p.w) * p.c + t] = s / f32(p.size * p.size);
}
