// Runs one node's kernel on its own buffers: the unit of the GPU parity tests, and a debugging aid.
// The output is followed by a guard region pre-filled with a sentinel, so a kernel that writes
// past its output (a missing bounds check) is caught instead of clobbering a neighbour.
import { emitKernel } from '../codegen/wgsl.ts';
import type { Tensor } from '../ir/shape.ts';
import { numel, type DType, type Node, type Value } from '../ir/types.ts';
import type { KernelSource } from '../codegen/kernel.ts';
import { defaultElem, type ElemKind } from '../codegen/storage.ts';
import { deviceBytes, fromDevice, toDevice } from '../ir/half.ts';
import { acquireGpu, checked, PipelineCache, readBuffer } from './gpu.ts';

let cache: PipelineCache | undefined;

export interface KernelRunOptions {
  /**
   * Initial contents of the output buffer. An operand whose storage is the output's (an in-place
   * update) is not bound: the kernel reads it from `out`, so the buffer must start as that operand.
   * Default: NaN (i32: −2³¹), so an element the kernel never writes cannot pass for a zero.
   */
  readonly outInit?: ArrayLike<number>;
  /**
   * How each value is stored (codegen/storage.ts), as the kernel was emitted with: f16 / f16p /
   * bf16 values are uploaded as half bits and the output widened back. Default: f32 / i32.
   */
  readonly elem?: (v: Value) => ElemKind;
}

/** The dtype a storage kind holds (packed f16 holds f16). */
const dtypeOf = (kind: ElemKind): DType => (kind === 'f16p' ? 'f16' : kind);

/**
 * Runs kernel `k` (emitted for `node`) once: binding i < k.bound.length holds `inputs` of
 * k.bound[i], the last binding the output. Returns the output as float64.
 *
 * The output binding is followed by a guard region as long again, inside the binding (so WebGPU's
 * robust access does not clamp or drop a stray store): a kernel that writes past the end of its
 * output (a missing bounds check) throws. In an arena such a write would clobber the next tensor.
 */
export async function runKernelOnGpu(
  node: Node,
  k: KernelSource,
  inputs: ReadonlyMap<number, Tensor>,
  opts: KernelRunOptions = {},
): Promise<Float64Array> {
  const gpu = await acquireGpu();
  const device = gpu.device;
  cache ??= new PipelineCache(device);
  const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
  const elem = opts.elem ?? defaultElem;
  const upload = (data: ArrayLike<number>, kind: ElemKind) => {
    const host = toDevice(dtypeOf(kind), data);
    const buf = device.createBuffer({ size: Math.max(4, host.byteLength), usage });
    if (data.length) device.queue.writeBuffer(buf, 0, host);
    return buf;
  };
  const bound = k.bound.map((v) => {
    const t = inputs.get(v.id);
    if (!t) throw new Error(`runKernelOnGpu: no data for bound value %${v.id} "${v.name}"`);
    return upload(t.data, elem(v));
  });
  const n = numel(node.out.type.shape);
  const guard = Math.max(64, n + (n % 2));
  const sentinel = node.out.type.dtype === 'i32' ? -(2 ** 31) : NaN;
  const init = new Float64Array(n + guard).fill(sentinel);
  if (opts.outInit) init.set(opts.outInit);
  const outKind = elem(node.out);
  const out = upload(init, outKind);
  const compiled = await cache.get(k.wgsl, k.bound.length + 1, `${node.op} ${node.out.name}`);
  await checked(device, `kernel ${node.op} (${node.out.name})`, () => {
    const bind = device.createBindGroup({
      layout: compiled.layout,
      entries: [...bound, out].map((buffer, i) => ({ binding: i, resource: { buffer } })),
    });
    const enc = device.createCommandEncoder();
    const pass = enc.beginComputePass();
    pass.setPipeline(compiled.pipeline);
    pass.setBindGroup(0, bind);
    pass.dispatchWorkgroups(...k.workgroups);
    pass.end();
    device.queue.submit([enc.finish()]);
  });
  const raw = await readBuffer(device, out, 0, deviceBytes(dtypeOf(outKind), n + guard));
  for (const b of [...bound, out]) b.destroy();
  const all = Float64Array.from(fromDevice(dtypeOf(outKind), raw, n + guard));
  for (let j = n; j < n + guard; j++) {
    if (!Object.is(all[j], sentinel)) throw new Error(`kernel ${node.op} (${node.out.name}) wrote ${all[j]} at element ${j}, past its ${n}-element output`);
  }
  return all.subarray(0, n);
}

/** The node's output computed on the GPU from float64 inputs (rounded to f32 / i32), scalars inlined. */
export async function runNodeOnGpu(node: Node, inputs: ReadonlyMap<number, Tensor>, opts: Pick<KernelRunOptions, 'elem'> & { readonly subgroupSize?: number } = {}): Promise<Float64Array> {
  const gpu = await acquireGpu();
  const constants = new Map<number, number>();
  for (const v of node.inputs) if (v.type.shape.length === 0) constants.set(v.id, inputs.get(v.id)!.data[0]);
  const k = emitKernel(node, { constants, maxWorkgroupsPerDimension: gpu.limits.maxComputeWorkgroupsPerDimension, elem: opts.elem, subgroupSize: opts.subgroupSize });
  return runKernelOnGpu(node, k, inputs, { elem: opts.elem });
}
