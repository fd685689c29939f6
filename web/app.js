// The page: loads the recorded model (manifest.json → plan → weights.bin)
// into the WebGPU player, or falls back to the server's `POST /predict` when
// the browser has no WebGPU; then classifies the face in the webcam's guide
// square continuously and the faces of an uploaded photo.
//
// `window.wgfer` is the hook for tests and for pages that embed this:
//   ready      Promise, resolves once classify works (or the page has said why it cannot)
//   backend    "webgpu", "server", or "none" (no WebGPU and no server: classify rejects)
//   classes    class names, in the order of every probability array
//   model      the model's name (`fer7`, `fer5`, or its weights file's name)
//   adapter    the GPU adapter's name (webgpu) or a description of the backend
//   classify(pixels)         Uint8Array of side×side gray values → Promise of probabilities
//   classifyBatch(list)      array of such Uint8Arrays → Promise of arrays (uses the largest batch plan)
//   stats      { webcamFrames, fps, last }: what the webcam loop has done

import { openDevice, Player } from './player.js';

const $ = (id) => document.getElementById(id);

const hook = {
  backend: null,
  classes: [],
  model: '',
  adapter: '',
  side: 48,
  stats: { webcamFrames: 0, fps: 0, last: null },
  classify: () => Promise.reject(new Error('not ready yet: await wgfer.ready')),
  classifyBatch: () => Promise.reject(new Error('not ready yet: await wgfer.ready')),
};
window.wgfer = hook;
hook.ready = start().catch((e) => {
  showNotice(`The page could not start: ${e.message}`);
  setBackend('none', '');
});

async function start() {
  const manifest = await fetchJson('manifest.json').catch(() => null);
  let webgpuError;
  if (manifest) {
    try {
      await startWebGpu(manifest);
    } catch (e) {
      webgpuError = e;
      console.warn('WebGPU unavailable:', e);
    }
  } else {
    webgpuError = new Error('the site has no manifest.json (write it with `wgfer export-web`)');
  }
  if (webgpuError) await startServer(webgpuError, manifest);
  buildBars();
  wireCamera();
  wirePhoto();
}

// ------------------------------------------------------------ backends

async function startWebGpu(manifest) {
  const { device, adapterName } = await openDevice();
  device.lost?.then((info) => {
    if (info.reason !== 'destroyed') showNotice(`The GPU device was lost: ${info.message}`);
  });
  const weights = await fetchBytes(manifest.weights);
  const plans = [...manifest.plans].sort((a, b) => a.batch - b.batch);
  const single = await loadPlayer(device, plans[0], weights);
  // The largest plan serves batches; it is built on first use.
  let batched = null;
  const batchPlayer = () => {
    batched ??= plans.length > 1 ? loadPlayer(device, plans[plans.length - 1], weights) : Promise.resolve(single);
    return batched;
  };
  hook.classes = single.classes;
  setModel(manifest.model);
  hook.side = single.plan.image_side;
  hook.classify = async (pixels) => (await runBatch(single, [pixels]))[0];
  hook.classifyBatch = async (list) => runBatch(list.length > 1 ? await batchPlayer() : single, list);
  setBackend('webgpu', adapterName);
}

async function loadPlayer(device, entry, weights) {
  const plan = await fetchJson(entry.file);
  return Player.create(device, plan, weights);
}

/** Classify any number of faces with a player of batch B: B at a time, the
 *  last run padded with blank images. */
async function runBatch(player, list) {
  const values = player.inputLength / player.batch;
  const k = player.classes.length;
  const out = [];
  for (let start = 0; start < list.length; start += player.batch) {
    const input = new Float32Array(player.inputLength);
    const chunk = list.slice(start, start + player.batch);
    chunk.forEach((pixels, i) => {
      if (pixels.length !== values) {
        throw new Error(`a face must have ${values} gray values; got ${pixels.length}`);
      }
      for (let j = 0; j < values; j++) input[i * values + j] = pixels[j] / 255;
    });
    const probs = await player.run(input);
    chunk.forEach((_, i) => out.push(Array.from(probs.subarray(i * k, (i + 1) * k))));
  }
  return out;
}

async function startServer(webgpuError, manifest) {
  const health = await fetchJson('health').catch(() => null);
  if (!health || !Array.isArray(health.classes)) {
    showNotice(
      `This browser cannot run the model here: ${webgpuError.message}. ` +
      'Try a browser with WebGPU (recent Chrome, Edge or Safari), or open this page from `wgfer serve`, ' +
      'which can classify on the server instead.',
    );
    hook.classes = manifest?.classes ?? [];
    setModel(manifest?.model);
    const fail = () => Promise.reject(new Error(`no backend: ${webgpuError.message}`));
    hook.classify = fail;
    hook.classifyBatch = fail;
    setBackend('none', '');
    return;
  }
  showNotice(`No WebGPU here (${webgpuError.message}): faces are sent to the server to be classified.`);
  hook.classes = health.classes;
  setModel(health.model);
  hook.classify = (pixels) => classifyOnServer(pixels);
  hook.classifyBatch = (list) => Promise.all(list.map(classifyOnServer));
  setBackend('server', `server: ${health.adapter ?? 'wgfer serve'}`);
}

/** One face to `POST /predict?detect=false` as a PNG; probabilities in class order. */
async function classifyOnServer(pixels) {
  const answer = await postImage(await grayPng(pixels), false);
  const face = answer.faces?.[0];
  if (!face) throw new Error('the server found no face');
  return hook.classes.map((c) => face.probabilities[c]);
}

async function postImage(blob, detect) {
  const r = await fetch(`predict${detect ? '' : '?detect=false'}`, { method: 'POST', body: blob });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw Object.assign(new Error(body.error ?? `the server answered ${r.status}`), { status: r.status });
  return body;
}

function grayPng(pixels) {
  const side = hook.side;
  const canvas = document.createElement('canvas');
  canvas.width = canvas.height = side;
  const ctx = canvas.getContext('2d');
  const img = ctx.createImageData(side, side);
  for (let i = 0; i < side * side; i++) {
    img.data.set([pixels[i], pixels[i], pixels[i], 255], i * 4);
  }
  ctx.putImageData(img, 0, 0);
  return new Promise((resolve) => canvas.toBlob(resolve, 'image/png'));
}

// ------------------------------------------------------------ faces from pixels

const faceCanvas = document.createElement('canvas');

/** The square (sx, sy, size) of `source` as side×side gray values (luma). */
function grayFace(source, sx, sy, size) {
  const side = hook.side;
  faceCanvas.width = faceCanvas.height = side;
  const ctx = faceCanvas.getContext('2d', { willReadFrequently: true });
  ctx.imageSmoothingQuality = 'high';
  ctx.drawImage(source, sx, sy, size, size, 0, 0, side, side);
  const rgba = ctx.getImageData(0, 0, side, side).data;
  const gray = new Uint8Array(side * side);
  for (let i = 0; i < gray.length; i++) {
    gray[i] = Math.round(0.299 * rgba[4 * i] + 0.587 * rgba[4 * i + 1] + 0.114 * rgba[4 * i + 2]);
  }
  return gray;
}

// ------------------------------------------------------------ the bars

function buildBars() {
  $('bars').replaceChildren(...hook.classes.map((name) => {
    const li = document.createElement('li');
    li.innerHTML = '<span class="name"></span><span class="track"><span class="fill"></span></span><span class="pct"></span>';
    li.querySelector('.name').textContent = name;
    return li;
  }));
  showBars(null, '');
}

function showBars(probs, source) {
  const best = probs ? probs.indexOf(Math.max(...probs)) : -1;
  [...$('bars').children].forEach((li, i) => {
    const p = probs ? probs[i] : 0;
    li.classList.toggle('best', i === best);
    li.querySelector('.fill').style.width = `${(100 * p).toFixed(1)}%`;
    li.querySelector('.pct').textContent = probs ? `${(100 * p).toFixed(0)} %` : '';
  });
  $('result-source').textContent = source;
}

// ------------------------------------------------------------ webcam

function wireCamera() {
  const button = $('camera-button');
  if (hook.backend === 'none') {
    button.disabled = true;
    return;
  }
  if (hook.backend === 'server') $('camera-hint').innerHTML = 'Put your face in the square.<br>Each frame is sent to the server.';
  let stream = null;
  button.addEventListener('click', async () => {
    if (stream) {
      stream.getTracks().forEach((t) => t.stop());
      stream = null;
      button.textContent = 'Start camera';
      return;
    }
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: 'user' }, audio: false });
    } catch (e) {
      showNotice(`The camera could not be opened: ${e.message}`);
      return;
    }
    button.textContent = 'Stop camera';
    $('camera-hint').hidden = true;
    runCamera(stream, () => stream);
  });
}

async function runCamera(stream, current) {
  const video = document.createElement('video');
  video.muted = true;
  video.playsInline = true;
  video.srcObject = stream;
  await video.play();
  const canvas = $('camera');
  const ctx = canvas.getContext('2d');
  const live = () => current() === stream;
  // Drawing runs every animation frame; classification as fast as the
  // backend answers, one frame in flight, so a slow GPU never queues frames.
  const draw = () => {
    if (!live()) return;
    if (video.videoWidth) {
      if (canvas.width !== video.videoWidth) {
        canvas.width = video.videoWidth;
        canvas.height = video.videoHeight;
      }
      drawMirrored(ctx, video);
      drawGuide(ctx, guideSquare(video));
    }
    requestAnimationFrame(draw);
  };
  requestAnimationFrame(draw);
  let last = performance.now();
  while (live()) {
    if (!video.videoWidth) {
      await new Promise((r) => setTimeout(r, 50));
      continue;
    }
    const { x, y, size } = guideSquare(video);
    let probs;
    try {
      probs = await hook.classify(grayFace(video, x, y, size));
    } catch (e) {
      showNotice(`Classifying the webcam failed: ${e.message}`);
      return;
    }
    const now = performance.now();
    const fps = 1000 / Math.max(1, now - last);
    last = now;
    const s = hook.stats;
    s.webcamFrames += 1;
    s.fps = s.webcamFrames === 1 ? fps : 0.9 * s.fps + 0.1 * fps;
    s.last = probs;
    $('fps').textContent = `${s.fps.toFixed(1)} frames/s`;
    showBars(probs, '· webcam');
    await new Promise((r) => setTimeout(r, 0));
  }
}

/** The centred square, 60 % of the frame's short side, in video pixels. */
function guideSquare(video) {
  const size = Math.round(0.6 * Math.min(video.videoWidth, video.videoHeight));
  return {
    x: Math.round((video.videoWidth - size) / 2),
    y: Math.round((video.videoHeight - size) / 2),
    size,
  };
}

// A mirror view, as people expect of their own camera. The square is centred,
// so it is the same region in both the view and the unmirrored frame.
function drawMirrored(ctx, video) {
  ctx.save();
  ctx.translate(ctx.canvas.width, 0);
  ctx.scale(-1, 1);
  ctx.drawImage(video, 0, 0);
  ctx.restore();
}

function drawGuide(ctx, { x, y, size }) {
  const { width, height } = ctx.canvas;
  ctx.fillStyle = 'rgba(8, 12, 24, 0.45)';
  ctx.beginPath();
  ctx.rect(0, 0, width, height);
  ctx.rect(x + size, y, -size, size);
  ctx.fill('evenodd');
  ctx.strokeStyle = '#7dd3fc';
  ctx.lineWidth = Math.max(2, width / 240);
  ctx.strokeRect(x, y, size, size);
}

// ------------------------------------------------------------ photo

function wirePhoto() {
  const input = $('photo-input');
  if (hook.backend === 'none') {
    document.querySelector('label[for="photo-input"]').classList.add('disabled');
    input.disabled = true;
    return;
  }
  input.addEventListener('change', async () => {
    const file = input.files?.[0];
    if (!file) return;
    try {
      await classifyPhoto(file);
    } catch (e) {
      showNotice(`The photo could not be classified: ${e.message}`);
    }
  });
}

async function classifyPhoto(file) {
  const bitmap = await createImageBitmap(file);
  const faces = await findFaces(file, bitmap);
  const canvas = $('photo');
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const ctx = canvas.getContext('2d');
  ctx.drawImage(bitmap, 0, 0);
  $('photo-hint').hidden = true;
  const crops = faces.map((f) => grayFace(bitmap, ...faceSquare(f, bitmap)));
  // On the server backend, the detector's answer already holds each face's
  // probabilities; otherwise the faces are classified here.
  const probs = faces.every((f) => f.probabilities) && hook.backend === 'server'
    ? faces.map((f) => hook.classes.map((c) => f.probabilities[c]))
    : crops.length ? await hook.classifyBatch(crops) : [];
  const list = $('faces');
  list.replaceChildren();
  faces.forEach(({ box }, i) => {
    const best = probs[i].indexOf(Math.max(...probs[i]));
    const label = `${i + 1}. ${hook.classes[best]} ${(100 * probs[i][best]).toFixed(0)} %`;
    drawBox(ctx, box, label);
    const li = document.createElement('li');
    li.textContent = label;
    li.addEventListener('click', () => showBars(probs[i], `· photo, face ${i + 1}`));
    list.append(li);
  });
  if (!faces.length) list.append(Object.assign(document.createElement('li'), { textContent: 'No face found.' }));
  if (probs.length) showBars(probs[0], '· photo, face 1');
}

/** Faces as { box: [x, y, w, h], probabilities? }: from the server's
 *  detector when there is one, else the photo's centre square. */
/** The square [x, y, side] to classify for a face: a detector's box widened
 *  1.10x about its centre, as `wgfer predict` frames faces like the training
 *  faces (kept inside the photo here, where predict repeats the edge pixels);
 *  a whole-image face as it is. */
function faceSquare({ box: [x, y, w, h], whole_image: whole }, bitmap) {
  if (whole) return [x, y, Math.max(w, h)];
  const side = Math.min(Math.round(Math.max(w, h) * 1.1), bitmap.width, bitmap.height);
  const clamp = (v, hi) => Math.min(Math.max(0, v), hi);
  return [
    clamp(Math.round(x + w / 2 - side / 2), bitmap.width - side),
    clamp(Math.round(y + h / 2 - side / 2), bitmap.height - side),
    side,
  ];
}

let serverDetects = null; // unknown until the first photo

async function findFaces(file, bitmap) {
  if (serverDetects !== false) {
    try {
      const answer = await postImage(file, true);
      serverDetects = true;
      return answer.faces;
    } catch (e) {
      // A static host has no /predict (404, 405, 501); the server refusing
      // this photo (400, 413) is an answer to show.
      if (e.status === 400 || e.status === 413) throw e;
      serverDetects = false;
      console.info('no face detector on the server; using the centre square:', e.message);
    }
  }
  const size = Math.min(bitmap.width, bitmap.height);
  return [{ box: [(bitmap.width - size) >> 1, (bitmap.height - size) >> 1, size, size], whole_image: true }];
}

function drawBox(ctx, [x, y, w, h], label) {
  const line = Math.max(2, ctx.canvas.width / 300);
  ctx.strokeStyle = '#7dd3fc';
  ctx.lineWidth = line;
  ctx.strokeRect(x, y, w, h);
  ctx.font = `${Math.max(14, Math.round(ctx.canvas.width / 40))}px system-ui, sans-serif`;
  const textH = parseInt(ctx.font, 10) * 1.3;
  const textW = ctx.measureText(label).width + 2 * line;
  // Above the box, else below it, else inside its top edge.
  let ty = y - textH;
  if (ty < 0) ty = y + h + textH <= ctx.canvas.height ? y + h : y;
  ctx.fillStyle = '#0c4a6e';
  ctx.fillRect(x, ty, textW, textH);
  ctx.fillStyle = '#f0f9ff';
  ctx.fillText(label, x + line, ty + textH * 0.78);
}

// ------------------------------------------------------------ page state

function setBackend(backend, adapter) {
  hook.backend = backend;
  hook.adapter = adapter;
  const badge = $('backend');
  badge.textContent = { webgpu: 'WebGPU', server: 'server', none: 'unavailable' }[backend];
  badge.className = `badge ${backend}`;
  $('adapter').textContent = adapter;
  document.body.dataset.backend = backend;
}

/** Shows which model classifies (sites written before it was recorded have none). */
function setModel(name) {
  hook.model = name ?? '';
  $('model').textContent = hook.model ? `model ${hook.model}` : '';
}

function showNotice(text) {
  const n = $('notice');
  n.textContent = text;
  n.hidden = false;
}

async function fetchJson(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: ${r.status}`);
  return r.json();
}

async function fetchBytes(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: ${r.status}`);
  return r.arrayBuffer();
}
