// The WebGPU player: replays a recorded pass ("wgfer-web-1" plan, written by
// `wgfer export-web`) on a GPUDevice. It knows nothing of the model: the plan
// names the WGSL shaders, the buffers and their sizes, which ranges of the
// weights file fill which buffers, where the input and output live, and the
// dispatches and copies in order. Everything is created once; each run only
// uploads the input, encodes the recorded commands and reads the output back.
//
// Works in a browser (navigator.gpu) and in Node with the npm `webgpu`
// package: `Object.assign(globalThis, globals)`, then pass `create([])` as
// `gpu`, and keep a reference to it while the device is in use (Dawn's
// instance dies with it, and the process with it).

export const FORMAT = 'wgfer-web-1';

// Limits a plan may need above WebGPU's defaults; the device asks the adapter
// for its own values of these (never more than the adapter has).
const LIMITS = [
  'maxStorageBufferBindingSize',
  'maxBufferSize',
  'maxStorageBuffersPerShaderStage',
  'maxComputeWorkgroupStorageSize',
  'maxComputeInvocationsPerWorkgroup',
  'maxComputeWorkgroupSizeX',
  'maxComputeWorkgroupSizeY',
  'maxComputeWorkgroupSizeZ',
];

/** Open an adapter and a device with the adapter's own limits.
 *  Resolves to { device, adapterName }; rejects with a readable reason. */
export async function openDevice(gpu = globalThis.navigator?.gpu, options = {}) {
  if (!gpu) throw new Error('this browser has no WebGPU (navigator.gpu is missing)');
  const adapter = await gpu.requestAdapter(options);
  if (!adapter) throw new Error('WebGPU is present but no GPU adapter is available');
  const requiredLimits = {};
  for (const key of LIMITS) {
    if (adapter.limits[key] !== undefined) requiredLimits[key] = adapter.limits[key];
  }
  const device = await adapter.requestDevice({ requiredLimits });
  const info = adapter.info ?? {};
  const adapterName = info.description || [info.vendor, info.architecture, info.device]
    .filter((s) => s)
    .join(' ') || 'unknown adapter';
  return { device, adapterName };
}

export class Player {
  /** Build every buffer, pipeline and bind group of `plan` on `device`, and
   *  upload the weights (`weights`: ArrayBuffer of the site's weights.bin). */
  static async create(device, plan, weights) {
    if (plan.format !== FORMAT) {
      throw new Error(`unknown plan format ${plan.format} (this player reads ${FORMAT})`);
    }
    const player = new Player(device, plan);
    device.pushErrorScope('validation');
    player.#makeBuffers(weights);
    const steps = player.#makeSteps();
    const error = await device.popErrorScope();
    if (error) throw new Error(`the plan does not run on this device: ${error.message}`);
    player.steps = steps;
    return player;
  }

  constructor(device, plan) {
    this.device = device;
    this.plan = plan;
    /** Images per run. */
    this.batch = plan.batch;
    this.classes = plan.classes;
    /** Input floats per run (batch × image values). */
    this.inputLength = plan.input.size / 4;
    /** Output floats per run (batch × classes). */
    this.outputLength = plan.output.size / 4;
    this.queue = Promise.resolve();
  }

  #makeBuffers(weights) {
    const { device, plan } = this;
    const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
    this.buffers = new Map();
    for (const [id, size] of Object.entries(plan.recording.buffers)) {
      this.buffers.set(Number(id), device.createBuffer({ size: align(size, 4), usage }));
    }
    for (const w of plan.weights) {
      if (w.file_offset + w.size > weights.byteLength) {
        throw new Error(`the weights file is too short (${weights.byteLength} bytes) for this plan`);
      }
      device.queue.writeBuffer(this.buffer(w.buffer), 0, weights, w.file_offset, w.size);
    }
    this.staging = device.createBuffer({
      size: align(plan.output.size, 4),
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
  }

  buffer(id) {
    const b = this.buffers.get(id);
    if (!b) throw new Error(`the plan names buffer ${id} but does not list it`);
    return b;
  }

  // Each command becomes a step: a dispatch with its pipeline and bind group
  // (uniforms written once: a plan's parameters never change), or a copy.
  #makeSteps() {
    const { device, plan } = this;
    const modules = new Map();
    for (const [name, code] of Object.entries(plan.recording.shaders)) {
      modules.set(name, device.createShaderModule({ label: name, code }));
    }
    const pipelines = new Map();
    const pipeline = (shader, entry, constants) => {
      const key = `${shader}::${entry}${JSON.stringify(constants)}`;
      if (!pipelines.has(key)) {
        // Not createComputePipelineAsync: Dawn's Node binding (npm webgpu
        // 0.6) crashes in it; pipelines are made once, at load.
        pipelines.set(key, device.createComputePipeline({
          label: key,
          layout: 'auto',
          compute: { module: modules.get(shader), entryPoint: entry, constants },
        }));
      }
      return pipelines.get(key);
    };
    const steps = plan.recording.commands.map((cmd) => {
      if (cmd.kind === 'copy') return { copy: cmd };
      if (cmd.kind !== 'dispatch') throw new Error(`unknown command kind ${cmd.kind}`);
      if (!modules.has(cmd.shader)) throw new Error(`the plan has no shader ${cmd.shader}`);
      return { cmd, pipeline: pipeline(cmd.shader, cmd.entry, cmd.constants) };
    });
    for (const step of steps) {
      if (step.copy) continue;
      step.group = this.#bindGroup(step.pipeline, step.cmd);
    }
    return steps;
  }

  #bindGroup(pipeline, cmd) {
    const { device } = this;
    const words = new Uint32Array(Math.max(4, align(cmd.params.length, 4)));
    words.set(cmd.params);
    const uniform = device.createBuffer({
      size: words.byteLength,
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    });
    device.queue.writeBuffer(uniform, 0, words);
    const entries = [{ binding: 0, resource: { buffer: uniform } }];
    for (const b of cmd.bindings) {
      entries.push({
        binding: b.slot,
        resource: { buffer: this.buffer(b.buffer), offset: b.offset, size: b.size },
      });
    }
    return device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries });
  }

  /** Run the plan once on `input` (Float32Array of `inputLength` values, laid
   *  out as the plan's input says). Resolves to a Float32Array of
   *  `outputLength` values. Concurrent calls run one after another. */
  run(input) {
    const result = this.queue.then(() => this.#runNow(input));
    this.queue = result.catch(() => {});
    return result;
  }

  async #runNow(input) {
    const { device, plan } = this;
    if (input.length !== this.inputLength) {
      throw new Error(`the input has ${input.length} values; this plan takes ${this.inputLength}`);
    }
    device.queue.writeBuffer(this.buffer(plan.input.buffer), plan.input.offset, input);
    const enc = device.createCommandEncoder();
    // Consecutive dispatches share one compute pass (each dispatch sees the
    // writes of the ones before it); copies go between passes.
    let pass = null;
    for (const step of this.steps) {
      if (step.copy) {
        pass?.end();
        pass = null;
        const c = step.copy;
        enc.copyBufferToBuffer(this.buffer(c.src), c.src_offset, this.buffer(c.dst), c.dst_offset, c.size);
        continue;
      }
      pass ??= enc.beginComputePass();
      pass.setPipeline(step.pipeline);
      pass.setBindGroup(0, step.group);
      pass.dispatchWorkgroups(...step.cmd.grid);
    }
    pass?.end();
    enc.copyBufferToBuffer(this.buffer(plan.output.buffer), plan.output.offset, this.staging, 0, plan.output.size);
    device.pushErrorScope('validation');
    device.queue.submit([enc.finish()]);
    const error = await device.popErrorScope();
    if (error) throw new Error(`running the plan failed: ${error.message}`);
    await this.staging.mapAsync(GPUMapMode.READ);
    const out = new Float32Array(this.staging.getMappedRange().slice(0));
    this.staging.unmap();
    return out;
  }

  /** Release the GPU buffers. */
  destroy() {
    for (const b of this.buffers.values()) b.destroy();
    this.staging.destroy();
  }
}

function align(n, to) {
  return Math.ceil(n / to) * to;
}
