// WebGPU through Dawn's Node bindings (npm `webgpu`): device acquisition, a pipeline cache with
// explicit bind group layouts, and errors that name the kernel.
import { quietDawn } from './quiet-dawn.ts';
import { tmpdir } from 'node:os';
import { LorafaError } from '../ir/errors.ts';
import { fixedSubgroupSize } from '../codegen/kernel-plan.ts';
import { isCpuAdapter, probeAdapter } from './device.ts';

export interface Gpu {
  readonly device: GPUDevice;
  readonly adapter: GPUAdapter;
  readonly limits: GPUSupportedLimits;
  readonly description: string;
  /** The subgroup size when the device has the feature and a fixed size (the fast matmul needs it). */
  readonly subgroupSize?: number;
  /** The device has shader-f16: f16 storage is array<f16> (else packed in u32). */
  readonly shaderF16: boolean;
  /** A software adapter on the CPU (lavapipe, SwiftShader): the matmul heuristic avoids barriers there. */
  readonly cpuAdapter: boolean;
  /** Who the adapter is, as tuning results are keyed (src/train/tuning.ts). */
  readonly identity: AdapterIdentity;
  /** Bytes of GPU buffers, counted at every createBuffer and destroy on this device. */
  readonly memory: BufferMeter;
}

/**
 * Counts GPU buffer bytes by wrapping the device's createBuffer and each buffer's destroy: what
 * is measured is what was asked of the driver, whoever asked (the runner, a readback, a test).
 * A buffer dropped without destroy() stays counted, as the driver keeps it until collected.
 */
export class BufferMeter {
  live = 0;
  peak = 0;
  buffers = 0;
  private readonly sizes = new WeakMap<GPUBuffer, number>();

  constructor(device: GPUDevice) {
    const create = device.createBuffer.bind(device);
    device.createBuffer = (desc: GPUBufferDescriptor): GPUBuffer => {
      const buffer = create(desc);
      this.sizes.set(buffer, desc.size);
      this.live += desc.size;
      this.buffers++;
      this.peak = Math.max(this.peak, this.live);
      const destroy = buffer.destroy.bind(buffer);
      buffer.destroy = () => {
        const size = this.sizes.get(buffer);
        if (size !== undefined) {
          this.sizes.delete(buffer);
          this.live -= size;
          this.buffers--;
        }
        destroy();
      };
      return buffer;
    };
  }

  /** Starts a new peak from the bytes live now; returns them. */
  resetPeak(): number {
    this.peak = this.live;
    return this.live;
  }
}

/**
 * An adapter as tuning results are keyed: what WebGPU's GPUAdapterInfo says of it. Dawn's Node
 * binding has no driver version; its description carries the driver's name and, for Mesa, its
 * version (lavapipe: "Mesa 25.0.7 (LLVM 19.1.7)").
 */
export interface AdapterIdentity {
  readonly vendor: string;
  readonly architecture: string;
  readonly device: string;
  readonly description: string;
}

export function adapterIdentity(info: Partial<AdapterIdentity>): AdapterIdentity {
  return { vendor: info.vendor ?? '', architecture: info.architecture ?? '', device: info.device ?? '', description: info.description ?? '' };
}

const SETUP = 'run `bash scripts/setup.sh` (it installs Mesa lavapipe when no adapter is found), then `npx lorafa doctor`';

let shared: Promise<Gpu> | undefined;
let instance: GPU | undefined;

/**
 * A device with the adapter's own storage limits (the defaults are far lower: 128 MiB bindings,
 * 8 storage buffers per stage). One device per process; later calls share it.
 */
export function acquireGpu(): Promise<Gpu> {
  shared ??= (async () => {
    process.env.XDG_RUNTIME_DIR ||= tmpdir();
    let webgpu: typeof import('webgpu');
    try {
      webgpu = await import('webgpu');
    } catch (e) {
      throw new LorafaError('webgpu', `cannot load Dawn (npm webgpu): ${(e as Error).message}`, SETUP);
    }
    Object.assign(globalThis, webgpu.globals);
    // Keep the GPU instance reachable for the life of the device: if it is collected, Dawn frees
    // state the device still uses and the process crashes (seen as SIGSEGV).
    // Dawn rounds timestamp queries to 65.536 µs (a browser's guard against timing attacks), which
    // reads every small kernel of a profile (profile.ts) as 0 or 65 µs; lorafa is no web page.
    instance = webgpu.create(['disable-dawn-features=timestamp_quantization']);
    const gpuInstance = instance;
    const adapter = await quietDawn(() => gpuInstance.requestAdapter());
    if (!adapter) {
      const r = await probeAdapter();
      throw new LorafaError('webgpu', `no WebGPU adapter: ${r.ok ? 'requestAdapter() returned null' : r.reason}`, SETUP);
    }
    const want = [
      'maxStorageBufferBindingSize',
      'maxBufferSize',
      'maxStorageBuffersPerShaderStage',
      'maxComputeWorkgroupsPerDimension',
      'maxComputeInvocationsPerWorkgroup',
      'maxComputeWorkgroupStorageSize',
    ] as const;
    const requiredLimits: Record<string, number> = {};
    for (const k of want) requiredLimits[k] = adapter.limits[k];
    // Alignments are "better" when smaller; the default (256) would reject a plan made with
    // `--limits adapter` on an adapter that allows less (lavapipe: 16).
    requiredLimits.minStorageBufferOffsetAlignment = adapter.limits.minStorageBufferOffsetAlignment;
    // Subgroups let the matmul share loads across a subgroup (2× on lavapipe); timestamp queries
    // let a profile (profile.ts) time kernels; shader-f16 lets an f16 plan store array<f16> rather than
    // packed u32 (codegen/storage.ts). Each is asked for when offered.
    const requiredFeatures = (['subgroups', 'timestamp-query', 'shader-f16'] as const).filter((f) => adapter.features.has(f)) as GPUFeatureName[];
    const device = await adapter.requestDevice({ requiredLimits, requiredFeatures });
    const info = adapter.info;
    const memory = new BufferMeter(device);
    return {
      device,
      memory,
      adapter,
      limits: device.limits,
      description: `${info.vendor} ${info.architecture} ${info.device} ${info.description}`.trim(),
      subgroupSize: fixedSubgroupSize(device, info as { subgroupMinSize?: number; subgroupMaxSize?: number }),
      shaderF16: device.features.has('shader-f16'),
      cpuAdapter: isCpuAdapter(info, (info as { isFallbackAdapter?: boolean }).isFallbackAdapter),
      identity: adapterIdentity(info),
    };
  })();
  return shared;
}

export interface CompiledKernel {
  readonly pipeline: GPUComputePipeline;
  readonly layout: GPUBindGroupLayout;
}

/** Compiles each distinct WGSL text once, with an explicit layout of `bindings` storage buffers. */
export class PipelineCache {
  private readonly cache = new Map<string, Promise<CompiledKernel>>();
  constructor(private readonly device: GPUDevice) {}

  get size(): number {
    return this.cache.size;
  }

  get(wgsl: string, bindings: number, label: string): Promise<CompiledKernel> {
    let hit = this.cache.get(wgsl);
    if (!hit) {
      // Error scopes are per device, not per call: compiles run one at a time, or concurrent ones
      // would pop each other's scopes (a good kernel blamed for a broken one).
      const run = this.queue.then(() => this.compile(wgsl, bindings, label));
      this.queue = run.catch(() => undefined);
      hit = run;
      this.cache.set(wgsl, hit);
    }
    return hit;
  }

  private queue: Promise<unknown> = Promise.resolve();

  private async compile(wgsl: string, bindings: number, label: string): Promise<CompiledKernel> {
    const device = this.device;
    device.pushErrorScope('validation');
    const module = device.createShaderModule({ code: wgsl, label });
    const layout = device.createBindGroupLayout({
      label,
      entries: Array.from({ length: bindings }, (_, i) => ({
        binding: i,
        visibility: GPUShaderStage.COMPUTE,
        buffer: { type: 'storage' as const },
      })),
    });
    let pipeline: GPUComputePipeline | undefined;
    let failure: string | undefined;
    try {
      pipeline = await device.createComputePipelineAsync({
        label,
        layout: device.createPipelineLayout({ bindGroupLayouts: [layout] }),
        compute: { module, entryPoint: 'main' },
      });
    } catch (e) {
      failure = (e as Error).message;
    }
    const scoped = await device.popErrorScope();
    const err = failure ?? scoped?.message;
    if (err || !pipeline) {
      const info = await module.getCompilationInfo();
      const msgs = info.messages.map((m) => `${m.type} at line ${m.lineNum}:${m.linePos}: ${m.message}`).join('\n');
      throw new LorafaError(`kernel ${label}`, `WGSL failed to compile: ${err}${msgs ? `\n${msgs}` : ''}`, 'this is a lorafa codegen bug: report it with `lorafa compile --emit ir`');
    }
    return { pipeline, layout };
  }
}

/** Runs `fn` inside validation and out-of-memory error scopes; rejects with an error naming `what`. */
export async function checked<T>(device: GPUDevice, what: string, fn: () => T): Promise<T> {
  device.pushErrorScope('out-of-memory');
  device.pushErrorScope('validation');
  const result = fn();
  const validation = await quietly(() => device.popErrorScope());
  const oom = await quietly(() => device.popErrorScope());
  if (oom) throw new LorafaError(what, `the GPU is out of memory: ${oom.message}`, 'plan a smaller step (--batch, --seq, --dtype) and compare with `lorafa plan`');
  if (validation) throw new LorafaError(what, `WebGPU validation error: ${validation.message}`, 'this is a lorafa bug: report it with the model and command');
  return result;
}

/**
 * Awaits a GPU promise (mapAsync, onSubmittedWorkDone, popErrorScope) without spinning a CPU
 * core through the wait. Dawn's Node bindings resolve these promises by calling
 * wgpuInstanceProcessEvents from `setImmediate`, rescheduled until nothing is pending
 * (src/dawn/node/binding/AsyncRunner.cpp; its TODO, crbug.com/dawn/1127, says the frequency
 * should come down): a busy loop on the JS thread for as long as the GPU works. On lavapipe the
 * GPU *is* the CPU's cores, so that loop takes one of them from the kernels, and each dispatch
 * waits for its slowest thread: W1's step took 2–3× as long. The bindings look `setImmediate`
 * up on the global object each time, so while lorafa waits it is replaced by one that polls
 * every millisecond (setTimeout) once the wait is past its first `SPIN_MS` (short waits keep
 * their latency); the original is restored when the last wait ends. Other code calling
 * setImmediate during such a wait gets a timer instead (the same callback, ≤ 1 ms later; and
 * clearImmediate cancels it, as it would the immediate).
 */
export async function quietly<T>(start: () => Promise<T>): Promise<T> {
  if (quietWaits++ === 0) {
    const immediate = globalThis.setImmediate;
    const clear = globalThis.clearImmediate;
    const timers = new WeakSet<object>();
    const t0 = performance.now();
    saved = { immediate, clear };
    globalThis.setImmediate = ((fn: (...a: unknown[]) => void, ...args: unknown[]) => {
      if (performance.now() - t0 < SPIN_MS) return immediate(fn, ...args);
      const t = setTimeout(fn, 1, ...args);
      timers.add(t);
      return t;
    }) as typeof setImmediate;
    globalThis.clearImmediate = ((h?: NodeJS.Immediate | NodeJS.Timeout) => {
      if (h && timers.has(h)) clearTimeout(h as NodeJS.Timeout);
      else clear(h as NodeJS.Immediate | undefined);
    }) as typeof clearImmediate;
  }
  try {
    return await start();
  } finally {
    if (--quietWaits === 0 && saved) {
      globalThis.setImmediate = saved.immediate;
      globalThis.clearImmediate = saved.clear;
    }
  }
}

/** How long a wait may spin before it polls by timer (ms). */
const SPIN_MS = 1;
let quietWaits = 0;
let saved: { immediate: typeof setImmediate; clear: typeof clearImmediate } | undefined;

/** Reads `size` bytes at `offset` of a STORAGE|COPY_SRC buffer. */
export async function readBuffer(device: GPUDevice, src: GPUBuffer, offset: number, size: number): Promise<ArrayBuffer> {
  const staging = device.createBuffer({ size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const enc = device.createCommandEncoder();
  enc.copyBufferToBuffer(src, offset, staging, 0, size);
  device.queue.submit([enc.finish()]);
  await quietly(() => staging.mapAsync(GPUMapMode.READ));
  const copy = staging.getMappedRange().slice(0);
  staging.unmap();
  staging.destroy();
  return copy;
}
