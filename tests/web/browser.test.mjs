// The page in headless Chromium: WebGPU on SwiftShader gives wgfer predict's
// probabilities, the (fake) webcam gets live predictions, the page is not
// blank; and a Chromium without WebGPU says so instead of showing nothing.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { chromium } from 'playwright-core';

import { assertAgree, expected, faces, readJson, serveSite } from './common.mjs';

const executablePath = process.env.CHROMIUM ?? '/usr/lib/chromium/chromium';
const BASE_FLAGS = [
  '--headless', '--no-sandbox', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--disable-quic',
  '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
];

let site;
const dirs = [];
before(async () => {
  site = await serveSite();
});
after(() => {
  site?.close();
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

async function openPage(webgpu, url = site.url) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wgfer-chromium-'));
  dirs.push(dir);
  const browser = await chromium.launchPersistentContext(dir, {
    executablePath,
    headless: true,
    args: [...BASE_FLAGS, ...(webgpu ? ['--enable-unsafe-webgpu'] : [])],
    viewport: { width: 1100, height: 760 },
  });
  const page = browser.pages()[0] ?? (await browser.newPage());
  const log = [];
  page.on('console', (m) => log.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => log.push(`pageerror: ${e.message}`));
  await page.goto(url);
  await page.evaluate(() => window.wgfer.ready);
  return { browser, page, log };
}

/** Distinct colours in a PNG screenshot, counted by the page's own decoder. */
async function distinctColours(page, png) {
  return page.evaluate(async (b64) => {
    const blob = await (await fetch(`data:image/png;base64,${b64}`)).blob();
    const bmp = await createImageBitmap(blob);
    const c = new OffscreenCanvas(bmp.width, bmp.height);
    const ctx = c.getContext('2d');
    ctx.drawImage(bmp, 0, 0);
    const d = ctx.getImageData(0, 0, bmp.width, bmp.height).data;
    const seen = new Set();
    for (let i = 0; i < d.length; i += 4) seen.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
    return seen.size;
  }, png.toString('base64'));
}

test('with WebGPU: the page classifies as wgfer predict does, live from the webcam', async (t) => {
  const { browser, page, log } = await openPage(true);
  try {
    const state = await page.evaluate(() => ({
      backend: wgfer.backend, classes: wgfer.classes, adapter: wgfer.adapter, model: wgfer.model,
    }));
    assert.equal(state.backend, 'webgpu', `backend; console: ${log.join(' | ')}`);
    t.diagnostic(`adapter: ${state.adapter}`);
    // The page names the model the site was written with.
    const { model } = readJson('manifest.json');
    assert.ok(model, 'manifest.json names the model');
    assert.equal(state.model, model);
    assert.equal(await page.textContent('#model'), `model ${model}`);

    const list = faces().map((f) => Array.from(f));
    assert.ok(list.length >= 20);
    const one = await page.evaluate(async (all) => {
      const out = [];
      for (const f of all) out.push(await wgfer.classify(Uint8Array.from(f)));
      return out;
    }, list);
    const want = expected(state.classes);
    t.diagnostic(`classify: largest difference ${assertAgree(one, want).toExponential(2)} over ${list.length} faces`);
    const batched = await page.evaluate((all) => wgfer.classifyBatch(all.map((f) => Uint8Array.from(f))), list);
    t.diagnostic(`classifyBatch: largest difference ${assertAgree(batched, want).toExponential(2)}`);

    // Speed, for benches/NOTES.md (a shared, noisy machine: one figure, not a test).
    const speed = await page.evaluate(async (f) => {
      const face = Uint8Array.from(f);
      let t0 = performance.now();
      for (let i = 0; i < 10; i++) await wgfer.classify(face);
      const b1 = 10000 / (performance.now() - t0);
      const many = Array.from({ length: 64 }, () => face);
      t0 = performance.now();
      await wgfer.classifyBatch(many);
      const b32 = 64000 / (performance.now() - t0);
      return { b1, b32 };
    }, list[0]);
    t.diagnostic(`speed: ${speed.b1.toFixed(1)} classifications/s at batch 1, ${speed.b32.toFixed(1)} at batch 32`);

    await page.click('#camera-button');
    await page.waitForFunction(() => wgfer.stats.webcamFrames >= 5, null, { timeout: 60_000 });
    const live = await page.evaluate(() => ({ ...wgfer.stats, bars: document.querySelectorAll('#bars li.best').length }));
    assert.equal(live.last.length, state.classes.length);
    assert.ok(Math.abs(live.last.reduce((a, b) => a + b, 0) - 1) < 1e-3, 'webcam probabilities sum to 1');
    assert.equal(live.bars, 1, 'one bar marked best');
    assert.match(await page.textContent('#fps'), /frames\/s/);
    t.diagnostic(`webcam: ${live.fps.toFixed(1)} frames/s`);

    // A photo on a static host (no /predict): its centre square, which is
    // the face itself, is classified in the browser.
    const label = await uploadAndLabel(page, await photoOfFace(page, faces()[0]));
    const top = state.classes[want[0].indexOf(Math.max(...want[0]))];
    assert.match(label, new RegExp(`^1\\. ${escape(top)} `), `photo result ${label}`);

    const shot = await page.screenshot({ path: process.env.WGFER_WEB_SCREENSHOT });
    const colours = await distinctColours(page, shot);
    assert.ok(colours > 50, `the screenshot has only ${colours} colours`);
    assert.deepEqual(log.filter((l) => l.startsWith('pageerror')), []);
  } finally {
    await browser.close();
  }
});

/** A stand-in for `wgfer serve`'s API beside the site: /health, and
 *  /predict answering `probabilities` (in its own key order) for one face,
 *  the whole image with detect=false, else the box `box`. Records the posts. */
async function standIn(classes, probabilities, box) {
  const posted = [];
  const api = await serveSite((req, res) => {
    const url = new URL(req.url, 'http://x');
    const json = (body) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    if (url.pathname === '/health') {
      json({ status: 'ok', adapter: 'test stand-in', classes });
      return true;
    }
    if (url.pathname !== '/predict' || req.method !== 'POST') return false;
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      posted.push({ query: url.search, body: Buffer.concat(chunks) });
      const whole = url.searchParams.get('detect') === 'false';
      json({
        width: 48, height: 48,
        faces: [{ box: whole ? [0, 0, 48, 48] : box, score: null, prediction: 'x', probabilities }],
      });
    });
    return true;
  });
  return { ...api, posted };
}

/** Face 0 twice its size in a 144×96 white frame, as PNG bytes (made by the page). */
function photoOfFace(page, face) {
  return page.evaluate(async (f) => {
    const c = new OffscreenCanvas(144, 96);
    const ctx = c.getContext('2d');
    ctx.fillStyle = '#fff';
    ctx.fillRect(0, 0, 144, 96);
    const img = new ImageData(48, 48);
    f.forEach((v, i) => img.data.set([v, v, v, 255], 4 * i));
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(await createImageBitmap(img), 24, 0, 96, 96);
    return Array.from(new Uint8Array(await (await c.convertToBlob({ type: 'image/png' })).arrayBuffer()));
  }, Array.from(face)).then((a) => Buffer.from(a));
}

async function uploadAndLabel(page, png) {
  await page.setInputFiles('#photo-input', { name: 'face.png', mimeType: 'image/png', buffer: png });
  await page.waitForFunction(() => document.querySelectorAll('#faces li').length > 0);
  return page.textContent('#faces li');
}

const CLASSES = ['anger', 'disgust', 'sad', 'happiness', 'surprise'];
const escape = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

test('without WebGPU, served with /predict: the page classifies on the server', async () => {
  const probabilities = { surprise: 0.05, sad: 0.1, anger: 0.2, happiness: 0.6, disgust: 0.05 };
  const api = await standIn(CLASSES, probabilities, [24, 0, 96, 96]);
  const { browser, page } = await openPage(false, api.url);
  try {
    assert.equal(await page.evaluate(() => wgfer.backend), 'server');
    const got = await page.evaluate(() => wgfer.classify(new Uint8Array(2304).fill(128)));
    assert.deepEqual(got, CLASSES.map((c) => probabilities[c]));
    assert.equal(api.posted.length, 1);
    assert.equal(api.posted[0].query, '?detect=false');
    assert.equal(api.posted[0].body.subarray(1, 4).toString(), 'PNG', 'the face is posted as a PNG');
    assert.match(await page.textContent('#notice'), /sent to the server/);
    // A photo: the server's boxes and answers, one request.
    const label = await uploadAndLabel(page, await photoOfFace(page, faces()[0]));
    assert.equal(label, '1. happiness 60 %');
    assert.equal(api.posted.length, 2);
    assert.equal(api.posted[1].query, '');
  } finally {
    await browser.close();
    api.close();
  }
});

test('with WebGPU, served with /predict: the server finds the faces, the browser classifies them', async () => {
  const face = faces()[0];
  // The site's model (fer5 or fer7, see run.sh) names the classes.
  const classes = readJson('plan-b1.json').classes;
  const want = expected(classes)[0];
  const top = classes[want.indexOf(Math.max(...want))];
  // The stand-in's own answer names another class: the label must not use it.
  const other = classes.find((c) => c !== top);
  const probabilities = Object.fromEntries(classes.map((c) => [c, c === other ? 0.96 : 0.01]));
  const api = await standIn(classes, probabilities, [24, 0, 96, 96]);
  const { browser, page } = await openPage(true, api.url);
  try {
    assert.equal(await page.evaluate(() => wgfer.backend), 'webgpu');
    const label = await uploadAndLabel(page, await photoOfFace(page, face));
    assert.match(label, new RegExp(`^1\\. ${escape(top)} `), `photo result ${label}`);
    assert.equal(api.posted.length, 1, 'one request, for the boxes');
  } finally {
    await browser.close();
    api.close();
  }
});

test('without WebGPU: the page says so and is not blank', async () => {
  const { browser, page } = await openPage(false);
  try {
    const backend = await page.evaluate(() => wgfer.backend);
    // A static host has no /predict to fall back to.
    assert.equal(backend, 'none');
    const notice = await page.locator('#notice');
    assert.ok(await notice.isVisible(), 'the notice is shown');
    assert.match(await notice.textContent(), /cannot run the model here/);
    assert.ok(await page.isDisabled('#camera-button'));
    const colours = await distinctColours(page, await page.screenshot());
    assert.ok(colours > 20, `the screenshot has only ${colours} colours`);
    await assert.rejects(page.evaluate(() => wgfer.classify(new Uint8Array(2304))), /no backend/);
  } finally {
    await browser.close();
  }
});
