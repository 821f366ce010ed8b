// Node WebGPU (Dawn via the npm `webgpu` package) setup plus a GPUBuffer byte meter, shared by
// every WebGPU runner in `npm run bench:peers` (jax-js, TF.js, and lorafa's, which checks it
// against the runtime's own BufferMeter), so all GPU bytes are counted by the same code.
//
// installNodeWebGPU() puts `navigator.gpu` and the WebGPU globals on globalThis and wraps
// GPUDevice.prototype.createBuffer / GPUBuffer.prototype.destroy so every buffer made on any device
// after this call is counted. Call it before the framework requests its device. The GPU object is
// kept reachable for the process lifetime (Dawn segfaults if it is collected).
//
// "alive" = created and neither destroyed nor garbage-collected; "peak" = max of alive over time.
import { packageVersion } from './w1-data.ts';

export interface GpuMeter {
  readonly alive: () => number;
  readonly peak: () => number;
  /** Sets the peak to the current alive bytes (e.g. after setup, to measure a phase). */
  readonly resetPeak: () => void;
  readonly buffers: () => number;
}

export interface NodeWebGPU {
  readonly gpu: GPU;
  readonly meter: GpuMeter;
  readonly version: string | null;
}

let installed: NodeWebGPU | undefined;
const keepAlive: unknown[] = [];

export async function installNodeWebGPU(): Promise<NodeWebGPU> {
  if (installed) return installed;
  process.env.XDG_RUNTIME_DIR ||= '/tmp';
  const { create, globals } = (await import('webgpu')) as { create: (flags: string[]) => GPU; globals: Record<string, any> };
  Object.assign(globalThis, globals);
  if (process.env.PEERS_QUIET_WAITS === '1') {
    // What-if, not the default: Dawn's bindings poll GPU promises through the global setImmediate,
    // a busy loop for the whole wait (lorafa waits through quietly(), src/runtime/gpu.ts). A 1 ms
    // timer in its place for the whole process shows what that loop costs this peer.
    const timer = (fn: (...a: unknown[]) => void, ...args: unknown[]) => setTimeout(fn, 1, ...args);
    globalThis.setImmediate = timer as unknown as typeof setImmediate;
  }
  let alive = 0;
  let peak = 0;
  let count = 0;
  const sizes = new WeakMap<object, number>();
  const released = new WeakSet<object>();
  const collected = new FinalizationRegistry<{ size: number; token: { done: boolean } }>(({ size, token }) => {
    if (!token.done) {
      token.done = true;
      alive -= size;
      count--;
    }
  });
  const tokens = new WeakMap<object, { done: boolean }>();
  const Dev = globals.GPUDevice;
  const Buf = globals.GPUBuffer;
  const createBuffer = Dev.prototype.createBuffer;
  Dev.prototype.createBuffer = function (this: GPUDevice, desc: GPUBufferDescriptor) {
    const buffer = createBuffer.call(this, desc);
    const size = Number(desc.size);
    sizes.set(buffer, size);
    const token = { done: false };
    tokens.set(buffer, token);
    collected.register(buffer, { size, token });
    alive += size;
    count++;
    if (alive > peak) peak = alive;
    return buffer;
  };
  const destroy = Buf.prototype.destroy;
  Buf.prototype.destroy = function (this: GPUBuffer) {
    const token = tokens.get(this);
    if (token && !token.done && !released.has(this)) {
      token.done = true;
      released.add(this);
      alive -= sizes.get(this) ?? 0;
      count--;
    }
    return destroy.call(this);
  };
  const gpu = create([]);
  keepAlive.push(gpu);
  // Some frameworks sniff navigator.userAgent (jax-js: `navigator.userAgent.includes(...)`).
  const prev = (globalThis as any).navigator;
  const userAgent: string = prev?.userAgent ?? `Node.js/${process.versions.node}`;
  Object.defineProperty(globalThis, 'navigator', { value: { userAgent, language: prev?.language ?? 'en-US', gpu }, configurable: true });
  installed = {
    gpu,
    version: packageVersion('webgpu'),
    meter: { alive: () => alive, peak: () => peak, resetPeak: () => { peak = alive; }, buffers: () => count },
  };
  return installed;
}
