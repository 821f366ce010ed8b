// The kernel profile (src/runtime/profile.ts) and `--profile` on the GPU (lavapipe):
// - the rows cover every dispatch of the kernel plan exactly once, shares add up to 100%, and a
//   matmul row's bytes are its operands and output;
// - the profile's matmul FLOPs (read from kernel labels) equal 2·m·n·k over the graph's matmul
//   nodes, transposed and batched ones included, and attention's equal flopsOf over its nodes;
// - a profiled training run gives bit for bit the losses and parameters of an unprofiled one with
//   the same seed, with timestamp queries, with the wall clock and with gradient accumulation;
// - without 'timestamp-query' the profile falls back to the wall clock and says so;
// - `lorafa train … --profile` and `lorafa finetune … --profile` print the table and report it.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test, vi } from 'vitest';
import { main } from '../src/cli/main.ts';
import { numel, type Graph, type Node } from '../src/ir/types.ts';
import { optimizerFeeds, type OptimizerOptions } from '../src/passes/optimizer.ts';
import { flopsOf } from '../src/passes/remat.ts';
import { StepRunner } from '../src/runtime/executor.ts';
import { acquireGpu, type Gpu } from '../src/runtime/gpu.ts';
import { initParams } from '../src/runtime/init.ts';
import { kernelFlops, profileSteps, profileTable, StepProfiler, type StepProfile } from '../src/runtime/profile.ts';
import { planStepForGpu } from '../src/runtime/session.ts';
import { finetune, type FinetuneOptions } from '../src/train/finetune.ts';
import { feedsFor, ROOT, toyModel } from './helpers.ts';

const tmp = mkdtempSync(join(tmpdir(), 'lorafa-profile-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const ADAMW: OptimizerOptions = { kind: 'adamw' };

/** A toy model's LoRA-FA step, planned for this GPU, in a runner with seeded parameters and inputs written. */
async function toyRunner(gpu: Gpu, name: string, opts: { attention?: 'fused' } = {}) {
  const { model, graph } = await toyModel(name, undefined, opts);
  const lora = { rank: 2, alpha: 4, targets: model.def.defaultTargets ?? [], modulesToSave: model.def.modulesToSave };
  const { compiled, kernels } = planStepForGpu(graph, { mode: 'lora-fa', lora, optimizer: ADAMW }, gpu);
  const step = compiled.step!;
  const runner = await StepRunner.create(kernels, gpu);
  runner.writeParams(initParams(step, { seed: 1 }));
  const vocab = (n: string) => (n === 'labels' ? 3 : 2);
  runner.writeInputs({ ...feedsFor(step, 2, name === 'llama' ? () => 16 : vocab), ...optimizerFeeds(ADAMW, 1e-3, 1) });
  return { step, plan: kernels, runner };
}

/** 2·m·n·k of a matmul node, from its shapes and transpose flags (batch dimensions included). */
function matmulFlops(n: Node): number {
  const a = n.inputs[0].type.shape;
  const b = n.inputs[1].type.shape;
  const { transA, transB } = n.attrs as { transA: boolean; transB: boolean };
  const m = transA ? a[a.length - 1] : a[a.length - 2];
  const k = transA ? a[a.length - 2] : a[a.length - 1];
  const cols = transB ? b[b.length - 2] : b[b.length - 1];
  const batch = numel(n.out.type.shape) / (m * cols);
  return 2 * batch * m * cols * k;
}

const sumOver = (g: Graph, ops: readonly string[], f: (n: Node) => number) => g.nodes.filter((n) => ops.includes(n.op)).reduce((s, n) => s + f(n), 0);

let gpu: Gpu;
beforeAll(async () => {
  gpu = await acquireGpu();
});

describe('the profile of a step', () => {
  let mlp: Awaited<ReturnType<typeof toyRunner>>;
  let profile: StepProfile;
  beforeAll(async () => {
    mlp = await toyRunner(gpu, 'mlp');
    profile = await profileSteps(mlp.runner, { steps: 3 });
  });
  afterAll(() => mlp.runner.destroy());

  test('covers every dispatch of the plan once, one row per kernel label, with timestamp queries', () => {
    expect(gpu.device.features.has('timestamp-query')).toBe(true);
    expect(profile.clock).toBe('timestamps');
    expect(profile.steps).toBe(3);
    const plan = mlp.plan;
    expect(profile.dispatches).toBe(plan.dispatches.length);
    expect(profile.rows.reduce((s, r) => s + r.dispatches, 0)).toBe(plan.dispatches.length);
    const perLabel = new Map<string, number>();
    for (const d of plan.dispatches) perLabel.set(plan.kernels[d.kernel].label, (perLabel.get(plan.kernels[d.kernel].label) ?? 0) + 1);
    expect(new Map(profile.rows.map((r) => [r.kernel, r.dispatches]))).toEqual(perLabel);
    // Every kernel took time, and the rows are longest first.
    for (const r of profile.rows) expect(r.ms, r.kernel).toBeGreaterThan(0);
    expect(profile.rows.map((r) => r.ms)).toEqual([...profile.rows.map((r) => r.ms)].sort((a, b) => b - a));
  });

  test('shares add up to 100%, kernel time to the rows, and the totals line reads them', () => {
    expect(Math.abs(profile.rows.reduce((s, r) => s + r.share, 0) - 1)).toBeLessThan(0.001);
    expect(profile.kernelMs).toBeCloseTo(profile.rows.reduce((s, r) => s + r.ms, 0), 9);
    expect(profile.wallMs).toBeGreaterThan(0);
    const text = profileTable(profile);
    expect(text).toMatch(/^profile of 3 steps \(each kernel's median; \d+ dispatches a step; timestamp queries, each dispatch in its own compute pass\)$/m);
    expect(text).toMatch(/^kernel +dispatches +ms +share +GFLOP\/s +GB\/s$/m);
    expect(text).toMatch(/^other \(\d+ kernels\) +\d+ /m);
    // The top 15 and the other line.
    expect(text.split('\n').length).toBe(1 + 1 + 15 + 1 + 1);
    expect(text).toMatch(/^step [\d.]+ ms wall \(the median of 3 unprofiled steps\), [\d.]+ ms in kernels; matmuls [\d.]+ GFLOP → [\d.]+ GFLOP\/s$/m);
  });

  test("matmul FLOPs are 2·m·n·k over the graph's matmul nodes; a matmul row's bytes are its operands and output", () => {
    const want = sumOver(mlp.step, ['matmul'], matmulFlops);
    expect(want).toBeGreaterThan(0);
    expect(profile.matmulFlops).toBe(want);
    expect(profile.gflops).toBeCloseTo(want / profile.wallMs / 1e6, 12);
    // Only matmul rows have FLOPs here, and each row's rate is its work over its time.
    for (const r of profile.rows) {
      expect(r.flops !== undefined, r.kernel).toBe(r.matmul);
      if (r.flops !== undefined) expect(r.gflops).toBeCloseTo(r.flops / r.ms / 1e6, 9);
      expect(r.gbps).toBeCloseTo(r.bytes / r.ms / 1e6, 9);
    }
    // The LoRA-FA dB product xᵀ·dy: [4,2]ᵀ·[4,16] → [2,16], f32: k = 4, operands and output read/written once.
    const db = profile.rows.find((r) => r.kernel === 'matmul [4,2][4,16]→[2,16]')!;
    expect(db.flops).toBe(db.dispatches * 2 * 2 * 16 * 4);
    expect(db.bytes).toBe(db.dispatches * 4 * (4 * 2 + 4 * 16 + 2 * 16));
  });

  test("the toy LLaMA's batched and transposed matmuls, and the fused attention's three kernels", async () => {
    const llama = await toyRunner(gpu, 'llama', { attention: 'fused' });
    try {
      const p = await profileSteps(llama.runner, { steps: 1, warmup: 1, wall: { ms: 1, of: 'a test' } });
      expect(p.dispatches).toBe(llama.plan.dispatches.length);
      expect(llama.step.nodes.some((n) => n.op === 'matmul' && ((n.attrs as { transA: boolean }).transA || (n.attrs as { transB: boolean }).transB))).toBe(true);
      expect(p.matmulFlops).toBe(sumOver(llama.step, ['matmul'], matmulFlops));
      const attention = ['attention', 'attention_dq', 'attention_dkv'];
      const want = sumOver(llama.step, attention, flopsOf);
      expect(want).toBeGreaterThan(0);
      expect(p.rows.filter((r) => attention.some((op) => r.kernel.startsWith(`${op} `))).reduce((s, r) => s + r.flops!, 0)).toBe(want);
    } finally {
      llama.runner.destroy();
    }
  });

  test('a plan of more dispatches than one query set holds takes several, with the same rows', async () => {
    // 32 queries: 16 dispatches per set, so the toy MLP's step takes 4 sets (LLaMA-7B's, past
    // WebGPU's 4096 queries, takes 2).
    expect(mlp.plan.dispatches.length).toBeGreaterThan(3 * 16);
    const p = await profileSteps(mlp.runner, { steps: 1, warmup: 0, querySetSize: 32, wall: { ms: 1, of: 'a test' } });
    expect(p.clock).toBe('timestamps');
    expect(new Map(p.rows.map((r) => [r.kernel, r.dispatches]))).toEqual(new Map(profile.rows.map((r) => [r.kernel, r.dispatches])));
    for (const r of p.rows) expect(r.ms, r.kernel).toBeGreaterThan(0);
    expect(() => new StepProfiler(gpu, mlp.plan, { querySetSize: 40 })).toThrow(/multiple of 32/);
  });

  test('kernelFlops reads a label: k from the side of the left operand the output does not take', () => {
    expect(kernelFlops('matmul [8,4][4,6]→[8,6]')).toBe(2 * 8 * 6 * 4);
    expect(kernelFlops('matmul [4,8][4,6]→[8,6]')).toBe(2 * 8 * 6 * 4); // aᵀ·b
    expect(kernelFlops('matmul [8,4][6,4]→[8,6]')).toBe(2 * 8 * 6 * 4); // a·bᵀ
    expect(kernelFlops('matmul [5,5][5,3]→[5,3]')).toBe(2 * 5 * 3 * 5);
    expect(kernelFlops('matmul [2,3,8,4][2,3,4,6]→[2,3,8,6]')).toBe(2 * 6 * 8 * 6 * 4);
    expect(kernelFlops('fused(add,gelu) [512,768]→[512,768]')).toBeUndefined();
    expect(kernelFlops('add [4][4]→[4]')).toBeUndefined();
  });
});

describe('without timestamp queries', () => {
  test("'auto' falls back to the wall clock per dispatch, and the profile says so", async () => {
    const mlp = await toyRunner(gpu, 'mlp');
    // The device as an adapter without 'timestamp-query' shows it; everything else is the real one.
    const device = new Proxy(gpu.device, {
      get: (t, k) => (k === 'features' ? new Set([...t.features].filter((f) => f !== 'timestamp-query')) : typeof t[k as keyof GPUDevice] === 'function' ? (t[k as keyof GPUDevice] as (...a: unknown[]) => unknown).bind(t) : t[k as keyof GPUDevice]),
    });
    const bare = { ...gpu, device };
    try {
      expect(() => new StepProfiler(bare, mlp.plan, { clock: 'timestamps' })).toThrow(/no 'timestamp-query'/);
      const profiler = new StepProfiler(bare, mlp.plan);
      expect(profiler.clock).toBe('wall');
      for (let i = 0; i < 2; i++) await profiler.runStep(mlp.runner);
      const p = profiler.result();
      profiler.destroy();
      expect(p.clock).toBe('wall');
      expect(p.rows.reduce((s, r) => s + r.dispatches, 0)).toBe(mlp.plan.dispatches.length);
      expect(Math.abs(p.rows.reduce((s, r) => s + r.share, 0) - 1)).toBeLessThan(0.001);
      for (const r of p.rows) expect(r.ms, r.kernel).toBeGreaterThan(0);
      expect(profileTable(p)).toMatch(/wall clock, each dispatch submitted alone and waited for \(no 'timestamp-query' here/);
      expect(profileTable(p)).toMatch(/ms wall \(the profiled steps' median, profiling included\)/);
    } finally {
      mlp.runner.destroy();
    }
  });
});

describe('a profiled training run', () => {
  const bits = (a: Float32Array) => new Uint32Array(Float32Array.from(a).buffer);
  const run = (o: Partial<FinetuneOptions>) =>
    finetune({ model: join(ROOT, 'models', 'mlp.ts'), data: 'synthetic', seed: 5, steps: 8, lr: 1e-2, progress: 'none', log: () => {}, compare: false, readFrozen: true, ...o });

  function expectSameRun(a: Awaited<ReturnType<typeof run>>, b: Awaited<ReturnType<typeof run>>) {
    expect(b.losses.map((l) => l.loss)).toEqual(a.losses.map((l) => l.loss));
    expect([...b.params.keys()].sort()).toEqual([...a.params.keys()].sort());
    for (const [k, v] of a.params) expect(bits(b.params.get(k)!), k).toEqual(bits(v));
    expect(b.after).toEqual(a.after);
  }

  test('trains bit for bit as an unprofiled run, with timestamp queries and with the wall clock', async () => {
    const plain = await run({});
    const timed = await run({ profile: 3 });
    expect(plain.profile).toBeUndefined();
    expect(timed.profile?.steps).toBe(3);
    expect(timed.profile?.which).toBe('steps 2–4');
    expect(timed.profile?.clock).toBe('timestamps');
    expect(timed.profile?.wallOf).toBe('the median of 4 unprofiled steps');
    expectSameRun(plain, timed);
    // The parameters moved: equal runs that trained nothing would prove nothing.
    expect(bits(plain.params.get('fc1.lora_B')!)).not.toEqual(bits(plain.initial.get('fc1.lora_B')!));
    const wall = await run({ profile: 7, profileClock: 'wall' });
    expect(wall.profile?.clock).toBe('wall');
    expect(wall.profile?.which).toBe('steps 2–8');
    expectSameRun(plain, wall);
  });

  test('with gradient accumulation: the micro-steps of a step are profiled together, the update once', async () => {
    const plain = await run({ gradAccum: 2, steps: 4 });
    const timed = await run({ gradAccum: 2, steps: 4, profile: 2 });
    expectSameRun(plain, timed);
    const p = timed.program.step;
    const want = p.dispatches.reduce((s, d) => s + (d.update ? 1 : 2), 0);
    expect(p.dispatches.some((d) => d.update)).toBe(true);
    expect(timed.profile!.dispatches).toBe(want);
    expect(timed.profile!.rows.reduce((s, r) => s + r.dispatches, 0)).toBe(want);
  });
});

describe('--profile on the command line', () => {
  const bin = join(ROOT, 'bin', 'lorafa.mjs');
  const lorafa = (args: string[]) => spawnSync(process.execPath, [bin, ...args], { cwd: ROOT, encoding: 'utf8' });
  const trainer = join(tmp, 'trainer');
  beforeAll(async () => {
    const log = vi.spyOn(console, 'log').mockImplementation(() => {});
    try {
      expect(await main(['compile', 'models/mlp.ts', '--mode', 'lora-fa', '--rank', '4', '-o', trainer])).toBe(0);
    } finally {
      log.mockRestore();
    }
  });

  test('lorafa train --profile (3 steps by default) prints the table and the totals, and writes them into report.json and report.md', () => {
    const r = lorafa(['train', trainer, '--data', 'synthetic', '--steps', '8', '--profile', '--progress', 'none']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^profile of steps 2–4 \(each kernel's median; \d+ dispatches a step; timestamp queries, each dispatch in its own compute pass\)$/m);
    expect(r.stdout).toMatch(/^kernel +dispatches +ms +share +GFLOP\/s +GB\/s$/m);
    expect(r.stdout).toMatch(/^matmul \[[\d,]+\]\[[\d,]+\]→\[[\d,]+\] +\d+ +[\d.]+ +[\d.]+% +[\d.]+ +[\d.]+$/m);
    expect(r.stdout).toMatch(/^other \(\d+ kernels\) /m);
    expect(r.stdout).toMatch(/^step [\d.]+ ms wall \(the median of 4 unprofiled steps\), [\d.]+ ms in kernels; matmuls [\d.]+ GFLOP → [\d.]+ GFLOP\/s$/m);
    const report = JSON.parse(readFileSync(join(trainer, 'report.json'), 'utf8')) as { profile: StepProfile };
    expect(report.profile.steps).toBe(3);
    expect(report.profile.rows.reduce((s, r) => s + r.dispatches, 0)).toBe(report.profile.dispatches);
    const md = readFileSync(join(trainer, 'report.md'), 'utf8');
    expect(md).toMatch(/^## Where a step goes$/m);
    expect(md).toMatch(/^\| kernel \| dispatches \| ms \| share \| GFLOP\/s \| GB\/s \|$/m);
  });

  test('lorafa finetune --profile 2; --profile 0 is a usage error', async () => {
    const out = vi.spyOn(process.stdout, 'write').mockImplementation(() => true);
    const err = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    try {
      expect(await main(['finetune', 'models/mlp.ts', '--data', 'synthetic', '--steps', '6', '--profile', '2', '--progress', 'none', '-o', join(tmp, 'finetune')])).toBe(0);
      const text = out.mock.calls.map((c) => String(c[0])).join('');
      expect(text).toMatch(/^profile of steps 2–3 \(/m);
      expect(text).toMatch(/ms wall \(the median of 3 unprofiled steps\)/);
      expect(await main(['finetune', 'models/mlp.ts', '--data', 'synthetic', '--profile', '0'])).toBe(2);
      expect(err.mock.calls.map((c) => String(c[0])).join('')).toMatch(/--profile must be a whole number ≥ 1, got "0"/);
    } finally {
      out.mockRestore();
      err.mockRestore();
    }
  });
});
