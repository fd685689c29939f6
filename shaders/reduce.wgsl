// Per-column sums of a row-major [m, c] matrix (c counts V's): bias
// gradients on adapters whose products cannot sum them themselves. Two stages
// so that every core gets work: `partial` sums a chunk of rows per workgroup
// into part[chunk, c] (lanes own columns, the workgroup id says which rows),
// `finish` adds the chunks up. (The batch norm's reductions are its own, in
// batchnorm.wgsl.)

struct Params {
  m: u32, c: u32, rows_per_chunk: u32, chunks: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<V>;
@group(0) @binding(4) var<storage, read_write> part: array<V>;

// grid (ceil(c / 32), chunks): part[chunk * c + col] = Σ x over the chunk's rows.
@compute @workgroup_size(32)
fn partial(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let col = wg.x * 32u + li;
  if (col >= p.c) { return; }
  let chunk = wg.y;
  let start = chunk * p.rows_per_chunk;
  let end = min(start + p.rows_per_chunk, p.m);
  var s = V(0.0);
  for (var r = start; r < end; r++) { s += x[r * p.c + col]; }
  part[chunk * p.c + col] = s;
}

// part[col] = Σ over chunks of x[chunk * c + col]; grid (ceil(c / 32)).
@compute @workgroup_size(32)
fn finish(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let col = wg.x * 32u + li;
  if (col >= p.c) { return; }
  var s = V(0.0);
  for (var chunk = 0u; chunk < p.chunks; chunk++) { s += x[chunk * p.c + col]; }
  part[col] = s;
}
