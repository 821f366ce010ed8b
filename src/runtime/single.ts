// Runs one node's kernel on its own buffers: the unit of the GPU parity tests, and a debugging aid.
import { emitKernel } from '../codegen/wgsl.ts';
import type { Tensor } from '../ir/shape.ts';
import { numel, type Node } from '../ir/types.ts';
import { acquireGpu, checked, PipelineCache, readBuffer } from './gpu.ts';

let cache: PipelineCache | undefined;

function upload(device: GPUDevice, data: Float64Array, dtype: 'f32' | 'i32' | string): GPUBuffer {
  const bytes = Math.max(4, data.length * 4);
  const buf = device.createBuffer({ size: bytes, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST });
  const host = dtype === 'i32' ? Int32Array.from(data) : Float32Array.from(data);
  if (data.length) device.queue.writeBuffer(buf, 0, host);
  return buf;
}

/** The node's output computed on the GPU from float64 inputs (rounded to f32 / i32). */
export async function runNodeOnGpu(node: Node, inputs: ReadonlyMap<number, Tensor>): Promise<Float64Array> {
  const gpu = await acquireGpu();
  const device = gpu.device;
  cache ??= new PipelineCache(device);
  const constants = new Map<number, number>();
  for (const v of node.inputs) {
    const t = inputs.get(v.id)!;
    if (v.type.shape.length === 0 && node.op !== 'reshape') constants.set(v.id, t.data[0]);
  }
  const k = emitKernel(node, { constants, maxWorkgroupsPerDimension: gpu.limits.maxComputeWorkgroupsPerDimension });
  const buffers = k.bound.map((v) => upload(device, inputs.get(v.id)!.data, v.type.dtype));
  const n = numel(node.out.type.shape);
  const out = device.createBuffer({ size: Math.max(4, n * 4), usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC });
  const compiled = await cache.get(k.wgsl, k.bound.length + 1, `${node.op} ${node.out.name}`);
  await checked(device, `kernel ${node.op} (${node.out.name})`, () => {
    const bind = device.createBindGroup({
      layout: compiled.layout,
      entries: [...buffers, out].map((buffer, i) => ({ binding: i, resource: { buffer } })),
    });
    const enc = device.createCommandEncoder();
    const pass = enc.beginComputePass();
    pass.setPipeline(compiled.pipeline);
    pass.setBindGroup(0, bind);
    pass.dispatchWorkgroups(...k.workgroups);
    pass.end();
    device.queue.submit([enc.finish()]);
  });
  const raw = await readBuffer(device, out, 0, Math.max(4, n * 4));
  for (const b of [...buffers, out]) b.destroy();
  const view = node.out.type.dtype === 'i32' ? new Int32Array(raw, 0, n) : new Float32Array(raw, 0, n);
  return Float64Array.from(view);
}
