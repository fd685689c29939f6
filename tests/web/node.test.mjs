// The player in Node through Dawn (npm `webgpu`): the recorded plans give the
// probabilities `wgfer predict --json` gives, at batch 1 and batch 32.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { create, globals } from 'webgpu';

import { assertAgree, expected, faces, readJson, readWeights } from './common.mjs';

Object.assign(globalThis, globals);
const { openDevice, Player } = await import('../../web/player.js');

// Dawn's instance lives as long as this reference: keep it for the whole file.
const gpu = create([]);
let device;
let adapterName;
before(async () => {
  ({ device, adapterName } = await openDevice(gpu));
});
after(() => device?.destroy());

/** Every face through `player`, `player.batch` at a time (the last run padded). */
async function classifyAll(player, list) {
  const per = player.inputLength / player.batch;
  const k = player.classes.length;
  const out = [];
  for (let s = 0; s < list.length; s += player.batch) {
    const input = new Float32Array(player.inputLength);
    const chunk = list.slice(s, s + player.batch);
    chunk.forEach((px, i) => input.set(Array.from(px, (v) => v / 255), i * per));
    const probs = await player.run(input);
    chunk.forEach((_, i) => out.push(Array.from(probs.subarray(i * k, (i + 1) * k))));
  }
  return out;
}

for (const batch of [1, 32]) {
  test(`the player at batch ${batch} agrees with wgfer predict`, async (t) => {
    const plan = readJson(`plan-b${batch}.json`);
    const player = await Player.create(device, plan, readWeights());
    const list = faces();
    assert.ok(list.length >= 20, 'at least 20 faces');
    const got = await classifyAll(player, list);
    const worst = assertAgree(got, expected(plan.classes));
    t.diagnostic(`${adapterName}: ${list.length} faces, largest difference ${worst.toExponential(2)}`);
    // Speed, for benches/NOTES.md (a shared, noisy machine: one figure, not a test).
    const runs = batch === 1 ? 20 : 3;
    const input = new Float32Array(player.inputLength).fill(0.5);
    const t0 = performance.now();
    for (let i = 0; i < runs; i++) await player.run(input);
    const perSecond = (runs * batch * 1000) / (performance.now() - t0);
    t.diagnostic(`speed: ${perSecond.toFixed(1)} classifications/s at batch ${batch}`);
    player.destroy();
  });
}

test('a plan of another format is refused', async () => {
  const plan = { ...readJson('plan-b1.json'), format: 'something-else' };
  await assert.rejects(Player.create(device, plan, readWeights()), /unknown plan format/);
});

test('a weights file too short for the plan is refused', async () => {
  await assert.rejects(Player.create(device, readJson('plan-b1.json'), new ArrayBuffer(64)), /too short/);
});

test('an input of the wrong length is refused', async () => {
  const player = await Player.create(device, readJson('plan-b1.json'), readWeights());
  await assert.rejects(player.run(new Float32Array(10)), /this plan takes/);
  player.destroy();
});
