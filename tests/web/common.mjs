// Shared by the web tests: the site run.sh wrote, the faces of the small CSV
// and what `wgfer predict --json` answered for each.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';

function need(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run the web tests with tests/web/run.sh`);
  return v;
}

export const siteDir = () => need('WGFER_WEB_SITE');

export function readJson(file) {
  return JSON.parse(fs.readFileSync(path.join(siteDir(), file), 'utf8'));
}

/** The weights file as an ArrayBuffer of its own. */
export function readWeights() {
  const b = fs.readFileSync(path.join(siteDir(), 'weights.bin'));
  return b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength);
}

/** The faces of the CSV (Uint8Array each, row order). */
export function faces() {
  const [header, ...rows] = fs.readFileSync(need('WGFER_WEB_ROWS'), 'utf8').trim().split('\n');
  const col = header.split(',').map((s) => s.trim()).indexOf('pixels');
  assert.ok(col >= 0, 'the CSV has no pixels column');
  return rows.map((r) => Uint8Array.from(r.split(',')[col].trim().split(/\s+/), Number));
}

/** `wgfer predict --json`'s probabilities per row, in `classes` order. Reads
 *  both layouts: an object per row with `probabilities`, or per image with
 *  `faces[0].probabilities`. */
export function expected(classes) {
  const answers = JSON.parse(fs.readFileSync(need('WGFER_WEB_EXPECTED'), 'utf8'));
  return answers.map((a) => {
    const probs = a.probabilities ?? a.faces?.[0]?.probabilities;
    assert.ok(probs, `unexpected predict --json entry: ${JSON.stringify(a).slice(0, 200)}`);
    return classes.map((c) => probs[c]);
  });
}

export const argmax = (v) => v.indexOf(Math.max(...v));

/** Every face within `tol` of the reference, with the same top class. */
export function assertAgree(got, want, tol = 1e-3) {
  assert.equal(got.length, want.length, 'one answer per face');
  let worst = 0;
  got.forEach((g, i) => {
    assert.equal(g.length, want[i].length, `face ${i}: number of classes`);
    g.forEach((v, j) => {
      worst = Math.max(worst, Math.abs(v - want[i][j]));
    });
    assert.equal(argmax(g), argmax(want[i]), `face ${i}: top class ${g} vs ${want[i]}`);
  });
  assert.ok(worst <= tol, `largest difference ${worst} exceeds ${tol}`);
  return worst;
}

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.bin': 'application/octet-stream',
};

/** A static server of the site on 127.0.0.1 (a free port), as any static
 *  host would be: GET files, 404 otherwise, 405 for POST. `api`, when given,
 *  answers first: (req, res) => true when it handled the request. */
export async function serveSite(api = null) {
  const root = siteDir();
  const server = http.createServer((req, res) => {
    if (api?.(req, res)) return;
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405).end();
      return;
    }
    const name = decodeURIComponent(new URL(req.url, 'http://x').pathname).replace(/^\/+/, '') || 'index.html';
    const file = path.join(root, path.normalize(name));
    if (!file.startsWith(root) || !fs.existsSync(file) || !fs.statSync(file).isFile()) {
      res.writeHead(404).end('not found');
      return;
    }
    res.writeHead(200, { 'content-type': TYPES[path.extname(file)] ?? 'application/octet-stream' });
    res.end(fs.readFileSync(file));
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${server.address().port}/`, close: () => server.close() };
}
