// Softmax over the classes of each row of logits [n, k], categorical
// cross-entropy against one-hot (or soft) targets [n, k], and the two fused
// (the fused backward is simply (softmax - target) / n). Batch sums run in
// one workgroup: the batch is small and it keeps the result deterministic.

struct Params {
  n: u32, k: u32, pad0: u32, pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> dl: array<f32>;   // the loss gradient (one value)
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> metrics: array<f32>;

var<workgroup> loss_part: array<f32, 64>;
var<workgroup> hit_part: array<f32, 64>;

fn softmax_row(row: u32) {
  var mx = a[row * p.k];
  for (var j = 1u; j < p.k; j++) { mx = max(mx, a[row * p.k + j]); }
  var s = 0.0;
  for (var j = 0u; j < p.k; j++) { s += exp(a[row * p.k + j] - mx); }
  for (var j = 0u; j < p.k; j++) { out[row * p.k + j] = exp(a[row * p.k + j] - mx) / s; }
}

// a = logits, out = probabilities. Linear grid over rows.
@compute @workgroup_size(64)
fn softmax(@builtin(global_invocation_id) gid: vec3<u32>) {
  if (gid.x >= p.n) { return; }
  softmax_row(gid.x);
}

// dx = y * (dy - sum(dy * y)); a = y (probabilities), b = dy.
@compute @workgroup_size(64)
fn softmax_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
  let row = gid.x;
  if (row >= p.n) { return; }
  // dx_i = y_i (dy_i - sum_j y_j dy_j) = y_i sum_j y_j (dy_i - dy_j) since the y's sum to 1: the
  // second form has no cancellation when one class takes nearly all the probability.
  for (var i = 0u; i < p.k; i++) {
    let dyi = b[row * p.k + i];
    var g = 0.0;
    for (var j = 0u; j < p.k; j++) { g += a[row * p.k + j] * (dyi - b[row * p.k + j]); }
    out[row * p.k + i] = a[row * p.k + i] * g;
  }
}

// log(1 + u), accurate when u is tiny: a confident right answer has a loss of about |u|,
// and log(1.0 + u) would round u to f32's spacing near 1 (and WGSL only promises log an
// absolute error of 2^-21 there). For |u| < 1/4 a short odd series in z = u / (2 + u)
// (|z| < 1/7) is exact to f32; beyond it log's own error is small against the result.
fn log1p(u: f32) -> f32 {
  if (abs(u) >= 0.25) { return log(1.0 + u); }
  let z = u / (2.0 + u);
  let z2 = z * z;
  return 2.0 * z * (1.0 + z2 * (1.0 / 3.0 + z2 * (1.0 / 5.0 + z2 * (1.0 / 7.0 + z2 / 9.0))));
}

// Per row: loss = -sum target * log(prob) (prob clipped like Keras to
// [1e-7, 1 - 1e-7]) and hit = argmax(prob) == argmax(target).
fn row_loss(row: u32, from_logits: bool) -> vec2<f32> {
  var mx = a[row * p.k];
  var best = 0u;
  var tbest = 0u;
  for (var j = 1u; j < p.k; j++) {
    let v = a[row * p.k + j];
    if (v > mx) { mx = v; best = j; }
    if (b[row * p.k + j] > b[row * p.k + tbest]) { tbest = j; }
  }
  var loss = 0.0;
  if (from_logits) {
    // log-sum-exp = mx + log(1 + rest), rest summed without the maximum's exact 1.
    var rest = 0.0;
    for (var j = 0u; j < p.k; j++) {
      if (j != best) { rest += exp(a[row * p.k + j] - mx); }
    }
    let lse_minus_mx = log1p(rest);
    for (var j = 0u; j < p.k; j++) {
      loss += b[row * p.k + j] * ((mx - a[row * p.k + j]) + lse_minus_mx);
    }
  } else {
    for (var j = 0u; j < p.k; j++) {
      // -log(q) = -log1p(q - 1) for q >= 1/2 (q - 1 is exact there), plain log below.
      let q = clamp(a[row * p.k + j], 1e-7, 1.0 - 1e-7);
      var nll = -log(q);
      if (q >= 0.5) { nll = -log1p(q - 1.0); }
      loss += b[row * p.k + j] * nll;
    }
  }
  return vec2<f32>(loss, select(0.0, 1.0, best == tbest));
}

fn batch_metrics(li: u32, from_logits: bool) {
  var l = 0.0;
  var h = 0.0;
  for (var row = li; row < p.n; row += 64u) {
    let r = row_loss(row, from_logits);
    l += r.x;
    h += r.y;
  }
  loss_part[li] = l;
  hit_part[li] = h;
  workgroupBarrier();
  if (li == 0u) {
    var tl = 0.0;
    var th = 0.0;
    for (var i = 0u; i < 64u; i++) { tl += loss_part[i]; th += hit_part[i]; }
    metrics[0] = tl / f32(p.n);
    metrics[1] = th;
  }
}

// a = probabilities, b = targets: metrics = [mean loss, correct count]. One workgroup.
@compute @workgroup_size(64)
fn xent(@builtin(local_invocation_index) li: u32) {
  batch_metrics(li, false);
}

// d loss / d prob = -target / prob / n (zero where Keras' clip is active); a = probs, b = targets.
@compute @workgroup_size(64)
fn xent_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
  let row = gid.x;
  if (row >= p.n) { return; }
  for (var j = 0u; j < p.k; j++) {
    let q = a[row * p.k + j];
    var g = 0.0;
    if (q > 1e-7 && q < 1.0 - 1e-7) { g = -b[row * p.k + j] / q; }
    out[row * p.k + j] = g * dl[0] / f32(p.n);
  }
}

// a = logits, b = targets: out = probabilities, metrics = [mean loss, correct count]. One workgroup.
@compute @workgroup_size(64)
fn softmax_xent(@builtin(local_invocation_index) li: u32) {
  for (var row = li; row < p.n; row += 64u) { softmax_row(row); }
  batch_metrics(li, true);
}

// a = probabilities, b = targets: d loss / d logits = (prob - target) * dloss / n.
@compute @workgroup_size(64)
fn softmax_xent_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
  let row = gid.x;
  if (row >= p.n) { return; }
  for (var j = 0u; j < p.k; j++) {
    let i = row * p.k + j;
    out[i] = (a[i] - b[i]) * dl[0] / f32(p.n);
  }
}
