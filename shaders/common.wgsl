// Helpers for the kernels that need them: `shader_pair!` (src/engine/ops/mod.rs)
// puts this file before the kernel's own source.

// (x / d, x % d) for x < 2^24 without an integer division, which llvmpipe
// runs lane by lane: the float quotient is off by at most one, then fixed up.
fn divmod(x: u32, d: u32) -> vec2<u32> {
  var q = i32(f32(x) / f32(d));
  var r = i32(x) - q * i32(d);
  if (r < 0) { q -= 1; r += i32(d); }
  if (r >= i32(d)) { q += 1; r -= i32(d); }
  return vec2<u32>(u32(q), u32(r));
}
