// Runs a KernelPlan on the GPU: buffers exactly as planned (their bytes are the plan's peak),
// every pipeline compiled once, bind groups made once (every slice is static), and one command
// encoder per step. Only the loss is read back (and, under loss scaling, the overflow count, in
// the same 8-byte copy).
import type { KernelPlan, Resident, Slice } from '../codegen/kernel-plan.ts';
import { LorafaError } from '../ir/errors.ts';
import type { Tensor } from '../ir/shape.ts';
import { numel, type DType } from '../ir/types.ts';
import { deviceBytes, fromDevice, toDevice } from '../ir/half.ts';
import { acquireGpu, checked, PipelineCache, quietly, readBuffer, type Gpu } from './gpu.ts';
import { OVERFLOW_OUTPUT } from '../passes/loss-scale.ts';

/** What one step reads back. */
export interface StepResult {
  readonly loss: number;
  /**
   * Under loss scaling (a plan with an `overflow` output), on a step that ran its update: the
   * count of non-finite gradient elements; > 0 means the update was skipped on the GPU.
   */
  readonly overflow?: number;
}

export class StepRunner {
  private constructor(
    readonly gpu: Gpu,
    readonly plan: KernelPlan,
    private readonly buffers: readonly GPUBuffer[],
    private readonly passes: readonly { pipeline: GPUComputePipeline; bind: GPUBindGroup; workgroups: readonly [number, number, number] }[],
    private readonly staging: GPUBuffer,
  ) {}

  /** Bytes of GPU buffers this runner allocated (equals the plan's peak, plus a 4- or 8-byte readback buffer). */
  get allocatedBytes(): number {
    return this.buffers.reduce((s, b) => s + b.size, 0);
  }

  static async create(plan: KernelPlan, gpu?: Gpu): Promise<StepRunner> {
    gpu ??= await acquireGpu();
    const device = gpu.device;
    for (const b of plan.buffers) {
      if (b.bytes > gpu.limits.maxBufferSize) {
        throw new LorafaError(
          `buffer ${b.index}`,
          `the plan needs a ${b.bytes}-byte buffer; this adapter allows ${gpu.limits.maxBufferSize}`,
          'plan with --limits adapter so buffers split to fit this device',
        );
      }
    }
    const align = gpu.limits.minStorageBufferOffsetAlignment;
    const misaligned = plan.dispatches.flatMap((d) => d.bindings).find((s) => s.offset % align !== 0);
    if (misaligned) {
      throw new LorafaError(
        `buffer ${misaligned.buffer}`,
        `the plan binds at offset ${misaligned.offset}, which this device's storage offset alignment (${align} B) does not allow`,
        'plan with --limits adapter, or --alignment ' + align,
      );
    }
    if (plan.kernels.some((k) => /^\s*enable f16;/m.test(k.wgsl)) && !device.features.has('shader-f16')) {
      throw new LorafaError(
        'kernel plan',
        'these kernels store f16 natively (WGSL `enable f16`), which needs the shader-f16 feature this device does not offer',
        're-run `lorafa compile … -o` on the machine that trains (it packs f16 in u32 where shader-f16 is missing), or use --dtype bf16',
      );
    }
    if (plan.kernels.some((k) => /^\s*enable subgroups;/m.test(k.wgsl)) && !device.features.has('subgroups')) {
      throw new LorafaError(
        'kernel plan',
        'these kernels use WGSL subgroups, which this device does not offer',
        're-run `lorafa compile … -o` on the machine that trains (it picks the portable matmul where subgroups are missing)',
      );
    }
    const buffers = await checked(device, 'allocating the plan buffers', () =>
      plan.buffers.map((b) =>
        device.createBuffer({
          label: `lorafa ${b.region} ${b.index}`,
          size: b.bytes,
          usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
        }),
      ),
    );
    const cache = new PipelineCache(device);
    const compiled = await Promise.all(plan.kernels.map((k) => cache.get(k.wgsl, k.bindings, k.label)));
    const passes = await checked(device, 'creating bind groups', () =>
      plan.dispatches.map((d) => ({
        pipeline: compiled[d.kernel].pipeline,
        bind: device.createBindGroup({
          label: d.label,
          layout: compiled[d.kernel].layout,
          entries: d.bindings.map((s, i) => ({ binding: i, resource: { buffer: buffers[s.buffer], offset: s.offset, size: s.size } })),
        }),
        workgroups: d.workgroups,
      })),
    );
    const staging = device.createBuffer({ size: plan.outputs[OVERFLOW_OUTPUT] ? 8 : 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    return new StepRunner(gpu, plan, buffers, passes, staging);
  }

  private write(r: Resident, data: ArrayLike<number>): void {
    const n = numel(r.shape);
    if (data.length !== n) throw new LorafaError(r.name, `expected ${n} values for [${r.shape.join(',')}], got ${data.length}`);
    const host = toDevice(r.dtype, data);
    this.gpu.device.queue.writeBuffer(this.buffers[r.slice.buffer], r.slice.offset, host);
  }

  /** Uploads parameter (and optimizer state) values by name; names not given keep their bytes. */
  writeParams(values: ReadonlyMap<string, Tensor | { data: ArrayLike<number> }>): void {
    for (const p of this.plan.params) {
      const v = values.get(p.name);
      if (v) this.write(p, v.data);
    }
  }

  writeInputs(feeds: Readonly<Record<string, ArrayLike<number>>>): void {
    for (const i of this.plan.inputs) {
      const f = feeds[i.name];
      if (!f) throw new LorafaError(i.name, `no data fed for input "${i.name}"`, 'feed every input of the step, optimizer scalars included');
      this.write(i, f);
    }
  }

  /**
   * One training step on the inputs written; resolves to the loss. With `update: false` (a
   * micro-step of gradient accumulation that does not end an optimizer step; see accumFeeds) only
   * the forward, backward and accumulation dispatches run: parameters and optimizer state keep
   * their bytes, and each accumulator takes in this micro-batch's gradient.
   */
  async step(feeds?: Readonly<Record<string, ArrayLike<number>>>, opts: { readonly update?: boolean } = {}): Promise<number> {
    return (await this.runStep(feeds, opts)).loss;
  }

  /** step(), with the overflow count of a loss-scaled plan (see StepResult). */
  async runStep(feeds?: Readonly<Record<string, ArrayLike<number>>>, opts: { readonly update?: boolean } = {}): Promise<StepResult> {
    const update = this.beginStep(feeds, opts);
    try {
      await this.encodeStep(update);
    } catch (e) {
      // The whole step failed validation: find the kernel, so the error names it and its IR node.
      if (e instanceof LorafaError && /validation/.test(e.problem)) await this.diagnose(e);
      throw e;
    }
    return this.readResult(update);
  }

  /**
   * What every step does before its dispatches: checks `update` against the plan and writes the
   * feeds. Returns whether the update's dispatches run. runStep and the profiler (profile.ts) share
   * this, encodeDispatch, encodeReadback and readResult, so a profiled step computes what runStep does.
   */
  beginStep(feeds: Readonly<Record<string, ArrayLike<number>>> | undefined, opts: { readonly update?: boolean } = {}): boolean {
    const update = opts.update ?? true;
    if (!update && !this.plan.params.some((p) => p.role === 'grad_accumulator')) {
      throw new LorafaError(
        'step',
        'a step without its update was asked of a plan that has no gradient accumulators: its gradients would be lost',
        'compile with gradAccum (--grad-accum K), or run every step with its update',
      );
    }
    if (feeds) this.writeInputs(feeds);
    return update;
  }

  /** Whether dispatch `i` runs in a step: a micro-step without its update skips the update's dispatches. */
  runs(i: number, update: boolean): boolean {
    return update || !this.plan.dispatches[i].update;
  }

  /** Records dispatch `i` of the plan into a compute pass. */
  encodeDispatch(pass: GPUComputePassEncoder, i: number): void {
    const p = this.passes[i];
    pass.setPipeline(p.pipeline);
    pass.setBindGroup(0, p.bind);
    pass.dispatchWorkgroups(p.workgroups[0], p.workgroups[1], p.workgroups[2]);
  }

  /** The last commands of a step: the loss (and, on an update, the overflow count) into the readback buffer. */
  encodeReadback(enc: GPUCommandEncoder, update: boolean): void {
    const loss = this.plan.loss;
    enc.copyBufferToBuffer(this.buffers[loss.buffer], loss.offset, this.staging, 0, 4);
    const overflow = this.plan.outputs[OVERFLOW_OUTPUT];
    if (overflow && update) enc.copyBufferToBuffer(this.buffers[overflow.slice.buffer], overflow.slice.offset, this.staging, 4, 4);
  }

  /** Waits for the submitted step and reads what encodeReadback copied. */
  async readResult(update: boolean): Promise<StepResult> {
    await quietly(() => this.staging.mapAsync(GPUMapMode.READ));
    const [loss, overflow] = new Float32Array(this.staging.getMappedRange().slice(0));
    this.staging.unmap();
    return update && this.plan.outputs[OVERFLOW_OUTPUT] ? { loss, overflow } : { loss };
  }

  private encodeStep(update: boolean): Promise<void> {
    const device = this.gpu.device;
    return checked(device, 'a training step', () => {
      const enc = device.createCommandEncoder({ label: 'lorafa step' });
      const pass = enc.beginComputePass();
      for (let i = 0; i < this.passes.length; i++) if (this.runs(i, update)) this.encodeDispatch(pass, i);
      pass.end();
      this.encodeReadback(enc, update);
      device.queue.submit([enc.finish()]);
    });
  }

  /** Re-encodes the dispatches one at a time; throws for the first that fails validation. */
  private async diagnose(cause: LorafaError): Promise<void> {
    const device = this.gpu.device;
    for (let i = 0; i < this.passes.length; i++) {
      const d = this.plan.dispatches[i];
      device.pushErrorScope('validation');
      const enc = device.createCommandEncoder();
      const pass = enc.beginComputePass();
      this.encodeDispatch(pass, i);
      pass.end();
      enc.finish();
      const err = await device.popErrorScope();
      if (err) {
        throw new LorafaError(
          `dispatch ${i} (IR node ${d.label}; kernel ${this.plan.kernels[d.kernel].label})`,
          `WebGPU validation error: ${err.message}`,
          cause.fix,
        );
      }
    }
  }

  /** n elements at `slice`, stored as `dtype` (half storage comes back widened to f32). */
  async read(slice: Slice, dtype: DType, n: number): Promise<Float32Array | Int32Array> {
    return fromDevice(dtype, await readBuffer(this.gpu.device, this.buffers[slice.buffer], slice.offset, deviceBytes(dtype, n)), n);
  }

  /** The value of a graph output (e.g. `logits`) after the last step. */
  async readOutput(name: string): Promise<Float32Array | Int32Array> {
    const o = this.plan.outputs[name];
    if (!o) throw new LorafaError(name, `the plan has no output "${name}"`, `outputs: ${Object.keys(this.plan.outputs).join(', ')}`);
    return this.read(o.slice, o.dtype, numel(o.shape));
  }

  /** Current values of every parameter and optimizer state tensor. */
  async readParams(): Promise<Map<string, Float32Array>> {
    const out = new Map<string, Float32Array>();
    for (const p of this.plan.params) out.set(p.name, (await this.read(p.slice, p.dtype, numel(p.shape))) as Float32Array);
    return out;
  }

  destroy(): void {
    for (const b of this.buffers) b.destroy();
    this.staging.destroy();
  }
}
