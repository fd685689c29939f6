// Max and average pooling, NHWC, square window `size`, `stride`, padding
// 'valid'. Max pooling records which tap won (0 .. size² - 1, the first of
// equal maxima, as TensorFlow does) so that its backward routes each
// gradient to that tap. Backward passes gather (each input pixel sums the
// windows that cover it), so no atomics are needed.
// Grids are (ceil(width·c / 64), rows, ceil(images / 8)): each workgroup
// loops over every 8th image from its own, as a workgroup costs about a
// microsecond on a CPU's Vulkan and a (row, image) each made thousands of
// them. c counts V's (f32 or vec4<f32>, see `ShaderPair`), and the taps are
// stored per element.

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
fn max_forward(
  @builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32,
  @builtin(num_workgroups) nwg: vec3<u32>) {
  let t = wg.x * 64u + li;
  if (t >= p.ow * p.c) { return; }
  let oy = wg.y;
  let ox_c = divmod(t, p.c);
  for (var n = wg.z; n < p.n; n += nwg.z) {
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
}

// y[n, oy, ox, c] = max over the window, without the taps: for inference,
// where no backward pass reads them (a stream of stores and selects less).
// One invocation computes two horizontal neighbours (ox = 2j, 2j + 1): with
// overlapping windows (stride < size) they share columns, read once (15
// loads instead of 18 for the stem's 3×3/2). Grid (ceil(ceil(ow / 2)·c / 64), oh, ceil(n / 8)).
@compute @workgroup_size(64)
fn max_forward_values(
  @builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32,
  @builtin(num_workgroups) nwg: vec3<u32>) {
  let pairs = (p.ow + 1u) / 2u;
  let t = wg.x * 64u + li;
  if (t >= pairs * p.c) { return; }
  let oy = wg.y;
  let j_c = divmod(t, p.c);
  let ox = 2u * j_c.x;
  let second = ox + 1u < p.ow;
  for (var n = wg.z; n < p.n; n += nwg.z) {
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
fn max_backward_tiled(
  @builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32,
  @builtin(num_workgroups) nwg: vec3<u32>) {
  let t = wg.x * 64u + li;
  if (t >= p.w * p.c) { return; }
  let ix_c = divmod(t, p.c);
  let qy = divmod(wg.y, p.stride);
  let qx = divmod(ix_c.x, p.stride);
  for (var n = wg.z; n < p.n; n += nwg.z) {
    var v = V(0.0);
    if (qy.x < p.oh && qx.x < p.ow) {
      let o = ((n * p.oh + qy.x) * p.ow + qx.x) * p.c + ix_c.y;
      v = select(V(0.0), x[o], arg[o] == V(f32(qy.y * p.size + qx.y)));
    }
    y[((n * p.h + wg.y) * p.w) * p.c + t] = v;
  }
}

// dx[n, iy, ix, c] = sum of dy over the windows whose winning tap is this pixel.
// x = dy, arg = winning taps, y = dx. The windows covering a pixel are found
// by range arithmetic: at most ceil(size / stride)² of them, one when the
// windows do not overlap.
@compute @workgroup_size(64)
fn max_backward(
  @builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32,
  @builtin(num_workgroups) nwg: vec3<u32>) {
  let t = wg.x * 64u + li;
  if (t >= p.w * p.c) { return; }
  let iy = wg.y;
  let ix_c = divmod(t, p.c);
  let ry = covering(iy, p.oh);
  let rx = covering(ix_c.x, p.ow);
  for (var n = wg.z; n < p.n; n += nwg.z) {
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
}

// Overlapping windows at stride 2 (size 3 or 4, the stem's 3×3/2): one
// invocation owns the 2×2 block of input pixels (2a + dy, 2b + dx), which
// only windows a - 1, a (rows) and b - 1, b (columns) can cover, so each of
// those windows' dy and tap is loaded once for the four pixels (8 loads and 4
// stores, against 2 loads per covering window and a store per pixel).
// x = dy, arg = winning taps, y = dx. Grid (ceil(ceil(w / 2)·c / 64), ceil(h / 2), ceil(n / 8)).
@compute @workgroup_size(64)
fn max_backward_s2(
  @builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32,
  @builtin(num_workgroups) nwg: vec3<u32>) {
  let t = wg.x * 64u + li;
  if (t >= (p.w + 1u) / 2u * p.c) { return; }
  let a = wg.y;
  let b_c = divmod(t, p.c);
  let b = b_c.x;
  for (var n = wg.z; n < p.n; n += nwg.z) {
    var s00 = V(0.0);
    var s01 = V(0.0);
    var s10 = V(0.0);
    var s11 = V(0.0);
    for (var wy = 0u; wy < 2u; wy++) {
      let oy = a + wy - 1u;  // wraps past oh when a == 0 and wy == 0
      for (var wx = 0u; wx < 2u; wx++) {
        let ox = b + wx - 1u;
        if (oy < p.oh && ox < p.ow) {
          let o = ((n * p.oh + oy) * p.ow + ox) * p.c + b_c.y;
          let g = x[o];
          let tap = arg[o];
          // The block's top-left pixel is tap (ky, kx) of this window; the
          // others are one row / column further (when still inside it).
          let ky = 2u - 2u * wy;
          let kx = 2u - 2u * wx;
          // A pixel outside the window compares with tap -1, which never won.
          let right = kx + 1u < p.size;
          let below = ky + 1u < p.size;
          let t00 = f32(ky * p.size + kx);
          let t01 = select(-1.0, t00 + 1.0, right);
          let t10 = select(-1.0, t00 + f32(p.size), below);
          let t11 = select(-1.0, t00 + f32(p.size + 1u), right && below);
          s00 += select(V(0.0), g, tap == V(t00));
          s01 += select(V(0.0), g, tap == V(t01));
          s10 += select(V(0.0), g, tap == V(t10));
          s11 += select(V(0.0), g, tap == V(t11));
        }
      }
    }
    let iy = 2u * a;
    let ix = 2u * b;
    let o = ((n * p.h + iy) * p.w + ix) * p.c + b_c.y;
    y[o] = s00;
    if (ix + 1u < p.w) { y[o + p.c] = s01; }
    if (iy + 1u < p.h) {
      y[o + p.w * p.c] = s10;
      if (ix + 1u < p.w) { y[o + (p.w + 1u) * p.c] = s11; }
    }
  }
}

@compute @workgroup_size(64)
fn avg_forward(
  @builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32,
  @builtin(num_workgroups) nwg: vec3<u32>) {
  let t = wg.x * 64u + li;
  if (t >= p.ow * p.c) { return; }
  let oy = wg.y;
  let ox_c = divmod(t, p.c);
  for (var n = wg.z; n < p.n; n += nwg.z) {
    var s = V(0.0);
    for (var ky = 0u; ky < p.size; ky++) {
      let row = (n * p.h + oy * p.stride + ky) * p.w;
      for (var kx = 0u; kx < p.size; kx++) {
        s += x[(row + ox_c.x * p.stride + kx) * p.c + ox_c.y];
      }
    }
    y[((n * p.oh + oy) * p.ow) * p.c + t] = s / f32(p.size * p.size);
  }
}

// x = dy, y = dx.
@compute @workgroup_size(64)
fn avg_backward(
  @builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32,
  @builtin(num_workgroups) nwg: vec3<u32>) {
  let t = wg.x * 64u + li;
  if (t >= p.w * p.c) { return; }
  let iy = wg.y;
  let ix_c = divmod(t, p.c);
  let ry = covering(iy, p.oh);
  let rx = covering(ix_c.x, p.ow);
  for (var n = wg.z; n < p.n; n += nwg.z) {
    var s = V(0.0);
    for (var oy = ry.x; oy <= ry.y; oy++) {
      for (var ox = rx.x; ox <= rx.y; ox++) {
        s += x[((n * p.oh + oy) * p.ow + ox) * p.c + ix_c.y];
      }
    }
    y[((n * p.h + iy) * p.w) * p.c + t] = s / f32(p.size * p.size);
  }
}
