// Convolution as a matrix product, NHWC activations, kernels [kh, kw, cin, cout].
//
// im2col: cols[m, k] with m = (n, oy, ox) and k = (ky, kx, ci) is the input
// pixel the kernel tap k sees for output pixel m (zero in the padding), so
// the convolution is cols · W. col2im is its adjoint: each input pixel sums
// the columns that read it (a gather, so no atomics are needed).
//
// Grids are (ceil(width·channels / 64), rows, ceil(images / 8)): the
// workgroup id supplies the row and the first image, so lanes only split a
// short run of one image row, and `divmod` stays exact and cheap; each
// workgroup loops over every 8th image from its own (a workgroup costs about
// a microsecond on a CPU's Vulkan, and one per row and image made thousands). Channel counts (cin, k, ld) count
// V's (f32, or vec4<f32> when cin % 4 == 0; see `ShaderPair`).

struct Params {
  n: u32, h: u32, w: u32, cin: u32,
  oh: u32, ow: u32, kh: u32, kw: u32,
  stride: u32, pad_top: u32, pad_left: u32, k: u32,  // k = kh * kw * cin
  ld: u32, pad0: u32, pad1: u32, pad2: u32,          // ld: row length of cols (k rounded up to 4)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<V>;
@group(0) @binding(2) var<storage, read_write> dst: array<V>;

// One workgroup: a run of 64 (ox, k) pairs of output row (n, oy). Columns
// from k to ld are zero, so the product may read rows in whole vec4s.
@compute @workgroup_size(64)
fn im2col(
  @builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32,
  @builtin(num_workgroups) nwg: vec3<u32>) {
  let t = wg.x * 64u + li;
  if (t >= p.ow * p.ld) { return; }
  let oy = wg.y;
  let ox_k = divmod(t, p.ld);
  let ox = ox_k.x;
  for (var n = wg.z; n < p.n; n += nwg.z) {
    let row = ((n * p.oh + oy) * p.ow) * p.ld;
    if (ox_k.y >= p.k) {
      dst[row + t] = V(0.0);
      return;
    }
    let tap_ci = divmod(ox_k.y, p.cin);
    let ky_kx = divmod(tap_ci.x, p.kw);
    // Signed: the padding makes the first taps fall before the image.
    let iy = i32(oy * p.stride + ky_kx.x) - i32(p.pad_top);
    let ix = i32(ox * p.stride + ky_kx.y) - i32(p.pad_left);
    var v = V(0.0);
    if (iy >= 0 && iy < i32(p.h) && ix >= 0 && ix < i32(p.w)) {
      v = src[((n * p.h + u32(iy)) * p.w + u32(ix)) * p.cin + tap_ci.y];
    }
    dst[row + t] = v;
  }
}

// im2col for inputs whose channels do not come in vec4s (the first layer's
// single gray channel): one invocation fills one vec4 of a cols row, so four
// taps share the index arithmetic and leave in one store; per-tap `divmod`s
// and a store per float made the plain kernel cost as much as the product
// after it. Reads `image` (f32) and writes `cols4` whatever V is.
@group(0) @binding(3) var<storage, read> image: array<f32>;
@group(0) @binding(4) var<storage, read_write> cols4: array<vec4<f32>>;

// The pixel that tap (ky, kx, ci) of column k sees for output (n, oy, ox),
// zero in the padding and past k. Branch-free: a select of a clamped load,
// so that the lanes of a subgroup never diverge.
fn tap_x4(n: u32, oy: u32, ox: u32, k: u32, t: vec3<u32>) -> f32 {
  let iy = i32(oy * p.stride + t.x) - i32(p.pad_top);
  let ix = i32(ox * p.stride + t.y) - i32(p.pad_left);
  let inside = k < p.k && iy >= 0 && iy < i32(p.h) && ix >= 0 && ix < i32(p.w);
  let at = ((n * p.h + u32(max(iy, 0))) * p.w + u32(max(ix, 0))) * p.cin + t.z;
  return select(0.0, image[select(0u, at, inside)], inside);
}

// The tap after (ky, kx, ci): channel, then kernel column, then kernel row.
fn next_tap(t: vec3<u32>) -> vec3<u32> {
  var u = t + vec3<u32>(0u, 0u, 1u);
  if (u.z == p.cin) { u = vec3<u32>(u.x, u.y + 1u, 0u); }
  if (u.y == p.kw) { u = vec3<u32>(u.x + 1u, 0u, u.z); }
  return u;
}

@compute @workgroup_size(64)
fn im2col_x4(
  @builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32,
  @builtin(num_workgroups) nwg: vec3<u32>) {
  let ld4 = p.ld / 4u;  // p.ld counts floats here (a multiple of 4)
  let t = wg.x * 64u + li;
  if (t >= p.ow * ld4) { return; }
  let oy = wg.y;
  let ox_j = divmod(t, ld4);
  let ox = ox_j.x;
  let k0 = ox_j.y * 4u;
  let tap_ci = divmod(k0, p.cin);
  let ky_kx = divmod(tap_ci.x, p.kw);
  for (var n = wg.z; n < p.n; n += nwg.z) {
    // Four taps unrolled with fixed components: a vec4 indexed by a loop
    // counter would live in memory.
    let t0 = vec3<u32>(ky_kx.x, ky_kx.y, tap_ci.y);
    let t1 = next_tap(t0);
    let t2 = next_tap(t1);
    let t3 = next_tap(t2);
    let v = vec4<f32>(
      tap_x4(n, oy, ox, k0, t0),
      tap_x4(n, oy, ox, k0 + 1u, t1),
      tap_x4(n, oy, ox, k0 + 2u, t2),
      tap_x4(n, oy, ox, k0 + 3u, t3),
    );
    cols4[((n * p.oh + oy) * p.ow + ox) * ld4 + ox_j.y] = v;
  }
}

// The gray input (cin = 1) as vec4s of four horizontal neighbours over the
// padded image: x4[n, y, x] = image(y − pad_top, x − pad_left + 0..3), zeros
// outside. A convolution then reads four taps of a kernel row as one vec4
// (kernel columns in fours, dilation 4; see `Conv2d::infer`) instead of
// through an im2col matrix 52 floats wide per pixel. Here oh, ow are x4's
// (padded) height and width; grid (ceil(ow / 64), oh, ceil(n / 8)).
@compute @workgroup_size(64)
fn taps_x4(
  @builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32,
  @builtin(num_workgroups) nwg: vec3<u32>) {
  let x = wg.x * 64u + li;
  if (x >= p.ow) { return; }
  let y = wg.y;
  for (var n = wg.z; n < p.n; n += nwg.z) {
    let t = vec3<u32>(y, x, 0u);
    let v = vec4<f32>(
      tap_x4(n, 0u, 0u, 0u, t),
      tap_x4(n, 0u, 0u, 0u, t + vec3<u32>(0u, 1u, 0u)),
      tap_x4(n, 0u, 0u, 0u, t + vec3<u32>(0u, 2u, 0u)),
      tap_x4(n, 0u, 0u, 0u, t + vec3<u32>(0u, 3u, 0u)),
    );
    cols4[(n * p.oh + y) * p.ow + x] = v;
  }
}

// A gray kernel's rows padded with zero columns to a multiple of 4:
// w4[ky, kx, co] = w[ky, kx, co] for kx < kw, else 0 (cin = 1, co in vec4s
// of src4 and cols4). Here k = the padded row length, ld = cout / 4.
// Explicitly vec4 (src4, cols4), so it compiles in both builds.
@group(0) @binding(5) var<storage, read> src4: array<vec4<f32>>;

@compute @workgroup_size(64)
fn pad_taps(@builtin(global_invocation_id) gid: vec3<u32>) {
  let t = gid.x;
  if (t >= p.kh * p.k * p.ld) { return; }
  let co4 = t % p.ld;
  let tap = t / p.ld;
  let kx = tap % p.k;
  let ky = tap / p.k;
  let src_at = (ky * p.kw + min(kx, p.kw - 1u)) * p.ld + co4;
  cols4[t] = select(vec4<f32>(), src4[src_at], kx < p.kw);
}

// One workgroup: a run of 64 (ix, ci) pairs of input row (n, iy).
@compute @workgroup_size(64)
fn col2im(
  @builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32,
  @builtin(num_workgroups) nwg: vec3<u32>) {
  let t = wg.x * 64u + li;
  if (t >= p.w * p.cin) { return; }
  let iy = wg.y;
  let ix_ci = divmod(t, p.cin);
  for (var n = wg.z; n < p.n; n += nwg.z) {
    var s = V(0.0);
    for (var ky = 0u; ky < p.kh; ky++) {
      // Output row oy reads input row iy through tap ky when oy·stride + ky - pad = iy.
      let y = i32(iy + p.pad_top) - i32(ky);
      if (y < 0) { break; }
      let qy = divmod(u32(y), p.stride);
      if (qy.y != 0u || qy.x >= p.oh) { continue; }
      for (var kx = 0u; kx < p.kw; kx++) {
        let x = i32(ix_ci.x + p.pad_left) - i32(kx);
        if (x < 0) { break; }
        let qx = divmod(u32(x), p.stride);
        if (qx.y != 0u || qx.x >= p.ow) { continue; }
        let m = (n * p.oh + qy.x) * p.ow + qx.x;
        s += src[m * p.k + (ky * p.kw + kx) * p.cin + ix_ci.y];
      }
    }
    dst[((n * p.h + iy) * p.w) * p.cin + t] = s;
  }
}
