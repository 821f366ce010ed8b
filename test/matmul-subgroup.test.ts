// The subgroup matmul variants (src/codegen/matmul.ts), which only a device with fixed 8-wide
// subgroups gets (lavapipe): row lanes (each lane its own rows of C, op(B) loaded once per
// subgroup and broadcast) where k and n are multiples of 4 and m spans half a subgroup's rows,
// column lanes (op(A) broadcast) otherwise. The portable kernel is covered by gpu-ops.test.ts;
// here each variant runs on a device created with 'subgroups', on shapes off its block, every
// transpose flag and batch broadcast, against the float64 matmul. Skipped (with a note) where
// the adapter has no such subgroups.
import { tmpdir } from 'node:os';
import fc from 'fast-check';
import { beforeAll, describe, expect, it } from 'vitest';
import { emitMatmul } from '../src/codegen/matmul.ts';
import { Builder } from '../src/ir/builder.ts';
import { OPS } from '../src/ir/ops.ts';
import { numel } from '../src/ir/types.ts';
import { PipelineCache, readBuffer } from '../src/runtime/gpu.ts';
import { rng } from '../src/runtime/init.ts';
import { propertyAsync } from './helpers.ts';
import { FC_RUNS } from './setup.ts';

let device: GPUDevice | undefined;
let cache: PipelineCache;
let keep: unknown;
let why = '';
beforeAll(async () => {
  process.env.XDG_RUNTIME_DIR ||= tmpdir();
  const webgpu = await import('webgpu');
  Object.assign(globalThis, webgpu.globals);
  const gpu = webgpu.create([]);
  keep = gpu;
  const adapter = await gpu.requestAdapter();
  const info = adapter?.info as (GPUAdapterInfo & { subgroupMinSize?: number; subgroupMaxSize?: number }) | undefined;
  if (!adapter || !adapter.features.has('subgroups') || info?.subgroupMinSize !== 8 || info.subgroupMaxSize !== 8) {
    why = 'no adapter with fixed 8-wide subgroups';
    return;
  }
  device = await adapter.requestDevice({ requiredFeatures: ['subgroups' as GPUFeatureName] });
  cache = new PipelineCache(device);
});

async function run(ashape: number[], bshape: number[], transA: boolean, transB: boolean, seed: number) {
  const dev = device!;
  const b = new Builder();
  const x = b.input('a', ashape);
  const w = b.input('w', bshape);
  b.matmul(x, w, { transA, transB });
  const node = b.build().nodes.at(-1)!;
  const u = rng(seed);
  const data = [ashape, bshape].map((s) => Float64Array.from({ length: numel(s) }, () => Math.fround(2 * u() - 1)));
  const k = emitMatmul(node, { constants: new Map(), maxWorkgroupsPerDimension: 65535, subgroupSize: 8 });
  const bufs = data.map((d) => {
    const buf = dev.createBuffer({ size: Math.max(16, d.length * 4), usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST });
    dev.queue.writeBuffer(buf, 0, Float32Array.from(d));
    return buf;
  });
  const n = numel(node.out.type.shape);
  const out = dev.createBuffer({ size: Math.max(16, n * 4), usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC });
  const { pipeline, layout } = await cache.get(k.wgsl, 3, 'matmul');
  dev.pushErrorScope('validation');
  const enc = dev.createCommandEncoder();
  const pass = enc.beginComputePass();
  pass.setPipeline(pipeline);
  pass.setBindGroup(0, dev.createBindGroup({ layout, entries: [...bufs, out].map((buffer, i) => ({ binding: i, resource: { buffer } })) }));
  pass.dispatchWorkgroups(...k.workgroups);
  pass.end();
  dev.queue.submit([enc.finish()]);
  expect(await dev.popErrorScope()).toBeNull();
  const got = new Float32Array(await readBuffer(dev, out, 0, n * 4));
  for (const x of [...bufs, out]) x.destroy();
  const tensors = [ashape, bshape].map((s, i) => ({ shape: s, data: data[i] }));
  const ref = OPS.matmul.ref(tensors, node.attrs as never, node.out.type);
  const abs = OPS.matmul.ref(tensors.map((t) => ({ ...t, data: t.data.map(Math.abs) })), node.attrs as never, node.out.type);
  const kk = transA ? ashape.at(-2)! : ashape.at(-1)!;
  const variant = k.wgsl.startsWith('// lorafa matmul: row lanes') ? 'row' : k.wgsl.includes('subgroupBroadcast') ? 'column' : 'portable';
  return { variant, got, ref, bound: (i: number) => (kk + 1) * 2 ** -23 * abs[i] };
}

/** Transpose flags, a batch on either side or both, a seed: every property's layout of a case. */
const LAYOUT = {
  transA: fc.boolean(),
  transB: fc.boolean(),
  batch: fc.constantFrom<number[]>([], [2], [3]),
  side: fc.constantFrom('both', 'a', 'b'),
  seed: fc.integer({ min: 1, max: 1e6 }),
};

/** Runs op(A)[m, k] · op(B)[k, n] laid out as `r` says. */
function runLayout(r: { transA: boolean; transB: boolean; batch: number[]; side: string; seed: number }, m: number, k: number, n: number) {
  const [ba, bb] = r.side === 'a' ? [r.batch, []] : r.side === 'b' ? [[], r.batch] : [r.batch, r.batch];
  return run([...ba, ...(r.transA ? [k, m] : [m, k])], [...bb, ...(r.transB ? [n, k] : [k, n])], r.transA, r.transB, r.seed);
}

/** Every element within its f32 bound of the float64 product. */
function expectWithinBound(res: Awaited<ReturnType<typeof run>>): void {
  for (let i = 0; i < res.ref.length; i++) {
    if (!(Math.abs(res.got[i] - res.ref[i]) <= res.bound(i))) expect.fail(`element ${i}: gpu ${res.got[i]} vs ${res.ref[i]} (bound ${res.bound(i)})`);
  }
}

describe('matmul, subgroup variants', () => {
  it('row lanes: off the 32×16 block, narrow C, batch broadcast on either side, every transpose flag', async (ctx) => {
    if (!device) return ctx.skip(why);
    // k and n multiples of 4 (the variant's condition), m ≥ 16 (a multiple of 4 when A is
    // transposed); m, k and n off the 32-row, 16-column block, and C narrower than 16 and 8.
    const arb = fc.record({
      m: fc.constantFrom(16, 20, 33, 64, 100),
      k: fc.constantFrom(4, 8, 12, 36),
      n: fc.constantFrom(4, 8, 12, 16, 20, 36, 100),
      ...LAYOUT,
    });
    await propertyAsync(
      'gpu/matmul/row-lanes',
      arb,
      async (r) => {
        const m = r.transA && r.m % 4 ? r.m + (4 - (r.m % 4)) : r.m;
        // a transposed A with ≥ 8 column blocks of 8 goes to column lanes (see emitMatmul)
        const n = r.transA && r.n > 56 ? 36 : r.n;
        const res = await runLayout(r, m, r.k, n);
        expect(res.variant).toBe('row');
        expectWithinBound(res);
      },
      { numRuns: Math.max(4, Math.round(FC_RUNS / 8)) },
    );
  }, 180_000);

  it('column lanes: off the 8×8 block, batch broadcast on either side, every transpose flag', async (ctx) => {
    if (!device) return ctx.skip(why);
    // n spans ≥ 8 column blocks of 8 (the variant's condition); m and k (multiples of 4 where A
    // is read along them) are off the block; m < 16 or n not a multiple of 4 (else row lanes).
    const arb = fc.record({
      m: fc.constantFrom(4, 8, 12, 20, 36),
      k: fc.constantFrom(4, 8, 13, 36),
      n: fc.constantFrom(64, 65, 70, 100),
      narrow: fc.boolean(),
      ...LAYOUT,
    });
    await propertyAsync(
      'gpu/matmul/subgroup',
      arb,
      async (r) => {
        const k = !r.transA && r.k % 4 ? r.k + (4 - (r.k % 4)) : r.k; // A along k must be vec4
        // keep out of the row-lane variant's shapes: m < 16, or n (or k) not a multiple of 4
        const m = r.narrow ? r.m % 16 || 12 : r.m;
        const n = !r.narrow && r.n % 4 === 0 && k % 4 === 0 && m >= 16 ? r.n + 1 : r.n;
        const res = await runLayout(r, m, k, n);
        expect(res.variant).toBe('column');
        expectWithinBound(res);
      },
      { numRuns: Math.max(4, Math.round(FC_RUNS / 8)) },
    );
  }, 180_000);

  it('W1 shapes (x·W, dy·Wᵀ, xᵀ·dy, the LoRA products) take the expected variant and are correct', async (ctx) => {
    if (!device) return ctx.skip(why);
    void keep;
    for (const [m, k, n, ta, tb, variant] of [
      [128, 96, 96, false, false, 'row'], // x·W
      [128, 96, 96, false, true, 'row'], // dy·Wᵀ
      [96, 128, 96, true, false, 'column'], // xᵀ·dy (dW under full fine-tuning)
      [128, 96, 8, false, false, 'row'], // x·A
      [128, 8, 96, false, false, 'row'], // (x·A)·B
      [128, 96, 8, false, true, 'row'], // dy·Bᵀ
      [128, 8, 96, false, true, 'row'], // (dy·Bᵀ)·Aᵀ
      [96, 128, 8, true, false, 'row'], // xᵀ·(dy·Bᵀ) (dA under LoRA)
      [8, 128, 96, true, false, 'column'], // (x·A)ᵀ·dy (dB)
    ] as const) {
      const res = await run(ta ? [k, m] : [m, k], tb ? [n, k] : [k, n], ta, tb, m + k + n);
      expect(res.variant, `${m}×${k}·${k}×${n} transA ${ta} transB ${tb}`).toBe(variant);
      let bad = 0;
      for (let i = 0; i < res.ref.length; i++) if (!(Math.abs(res.got[i] - res.ref[i]) <= res.bound(i))) bad++;
      expect(bad, `${m}×${k}·${k}×${n} transA ${ta} transB ${tb}`).toBe(0);
    }
  });
});
