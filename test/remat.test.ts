// Rematerialisation under a budget (src/passes/remat.ts) and the batch that fits (src/passes/fit.ts).
// - Random models, random modes and budgets between the smallest reachable peak and the plain one:
//   the recomputing step gives exactly (float64 ===) the plain step's loss, gradients and updated
//   parameters through the reference interpreter; it verifies; its peak fits; recompute nodes run
//   in backward, after the plain step's backward start; a budget one byte below the smallest
//   named in the error throws, and that named budget succeeds.
// - A real model (the toy LLaMA): a budget lowers the saved activations and inserts `.remat` nodes.
// - --fit is exact: the batch it reports fits and the next does not, without and with remat.
// - The SVG draws the budget line.
// - On the GPU (Dawn): a recomputing toy-LLaMA step updates its parameters as the plain step does,
//   within f32 tolerance (SGD, lr 1: the update is the gradient).
import { resolve } from 'node:path';
import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import { Builder } from '../src/ir/builder.ts';
import { LorafaError } from '../src/ir/errors.ts';
import { fmtBytes } from '../src/ir/format.ts';
import { printGraph } from '../src/ir/print.ts';
import type { Graph, Value } from '../src/ir/types.ts';
import { verify } from '../src/ir/verify.ts';
import { loadModel, trace } from '../src/model/load.ts';
import { compileTraining, type Mode } from '../src/passes/compile.ts';
import { fitBatches } from '../src/passes/fit.ts';
import { planMemory, type Limits } from '../src/passes/memory-plan.ts';
import { planStep } from '../src/passes/plan-step.ts';
import { flopsOf, minimumPeak, rematerialize } from '../src/passes/remat.ts';
import { planSvgText } from '../src/report/plan.ts';
import { runReference } from '../src/runtime/reference.ts';
import { buildKernelPlan } from '../src/codegen/kernel-plan.ts';
import { optimizerFeeds } from '../src/passes/optimizer.ts';
import { StepRunner } from '../src/runtime/executor.ts';
import { acquireGpu } from '../src/runtime/gpu.ts';
import { deviceValues, feedsFor, paramsWithRandomB, property, ROOT } from './helpers.ts';

const LIMITS: Limits = { alignment: 4, maxBindingSize: Number.MAX_SAFE_INTEGER, maxBufferSize: Number.MAX_SAFE_INTEGER };

interface Spec {
  readonly batch: number;
  readonly width: number;
  readonly blocks: readonly { kind: 'plain' | 'residual' | 'norm' | 'shared' | 'view'; width: number; act: 'relu' | 'tanh' | 'gelu' | 'none' }[];
  readonly ce: boolean;
  readonly mode: Mode;
  readonly targetBits: number;
}

const specArb: fc.Arbitrary<Spec> = fc.record({
  batch: fc.integer({ min: 1, max: 6 }),
  width: fc.integer({ min: 2, max: 16 }),
  blocks: fc.array(
    fc.record({
      kind: fc.constantFrom('plain', 'residual', 'norm', 'shared', 'view'),
      width: fc.integer({ min: 2, max: 16 }),
      act: fc.constantFrom('relu', 'tanh', 'gelu', 'none'),
    }),
    { minLength: 1, maxLength: 6 },
  ),
  ce: fc.boolean(),
  mode: fc.constantFrom<Mode>('full', 'lora', 'lora-fa'),
  targetBits: fc.nat(),
});

function build(spec: Spec): Graph {
  const b = new Builder({ name: 'random' });
  let h = b.input('x', [spec.batch, spec.width]);
  let w = spec.width;
  const act = (a: Spec['blocks'][number]['act'], v: Value) => (a === 'none' ? v : b[a](v));
  spec.blocks.forEach((blk, i) =>
    b.scope(`blk${i}`, () => {
      if (blk.kind === 'plain') {
        h = act(blk.act, b.linear(h, 'l', blk.width));
        w = blk.width;
      } else if (blk.kind === 'residual') {
        h = b.add(h, b.linear(act(blk.act, b.linear(h, 'up', blk.width)), 'down', w, { bias: false }));
      } else if (blk.kind === 'norm') {
        h = b.add(h, b.linear(b.rmsNorm(h, 'norm'), 'l', w));
      } else if (blk.kind === 'shared') {
        h = b.mul(b.linear(h, 'q', blk.width), act(blk.act, b.linear(h, 'g', blk.width, { bias: false })));
        w = blk.width;
      } else {
        h = b.reshape(b.reshape(h, [spec.batch * w]), [spec.batch, w]);
        h = act(blk.act, b.linear(h, 'l', blk.width));
        w = blk.width;
      }
    }),
  );
  const out = 2 + (spec.width % 4);
  h = b.linear(h, 'head', out);
  if (spec.ce) b.loss(b.crossEntropy(h, b.input('labels', [spec.batch], 'i32')));
  else b.loss(b.mse(h, b.input('target', [spec.batch, out])));
  return b.build();
}

function compileSpec(spec: Spec, graph: Graph) {
  const names = graph.linears.map((l) => l.name);
  const targets = names.filter((_, k) => (spec.targetBits >> k) & 1);
  const lora = { rank: 1, alpha: 2, targets: targets.length ? targets : [names[0]] };
  return compileTraining(graph, { mode: spec.mode, lora, optimizer: { kind: 'sgd', momentum: 0.9 }, verify: true });
}

/** Loss, every final gradient and every written-back value, by name, in float64. */
function results(step: Graph, gradients: ReadonlySet<number>, feeds: Record<string, Float64Array>): Map<string, Float64Array> {
  const r = runReference(step, { feeds, seed: 7 });
  const out = new Map<string, Float64Array>([['loss', r.outputs.loss.data]]);
  for (const id of gradients) out.set(`grad %${id}`, r.values.get(id)!.data);
  for (const u of step.updates) out.set(`update ${u.target}`, r.values.get(u.value.id)!.data);
  return out;
}

describe('remat on random models', () => {
  test('property: exact losses and gradients, peak ≤ budget, recompute in backward, the smallest budget named and met', () => {
    let rematted = 0;
    property(
      'remat/random',
      fc.tuple(specArb, fc.double({ min: 0, max: 1, noNaN: true })),
      ([spec, where]) => {
        const graph = build(spec);
        const c = compileSpec(spec, graph);
        const step = c.step!;
        const plan = (g: Graph) => planMemory(g, { limits: LIMITS, gradients: c.gradients });
        const plain = plan(step);
        const min = minimumPeak(step, plan, plain);
        expect(min).toBeLessThanOrEqual(plain.peak);
        if (min === plain.peak) return;
        rematted++;
        const budget = Math.floor(min + where * (plain.peak - 1 - min));
        const r = rematerialize(step, { budget, plan, plain });
        expect(r.report, 'the plain plan does not fit, so something is recomputed').toBeDefined();
        verify(r.graph, 'remat');
        expect(r.plan.peak).toBeLessThanOrEqual(budget);
        expect(r.report!.extraFlops).toBeGreaterThan(-1);
        expect(r.plan.timeline[r.plan.backwardStart].saved).toBe(r.report!.savedAfter);
        // Recompute nodes run after the forward pass, each before its first reader.
        const clones = r.graph.nodes.filter((n) => n.recompute);
        expect(clones.length).toBe(r.report!.recomputeNodes);
        expect(clones.every((n) => n.out.name.endsWith('.remat') && n.phase === 'backward')).toBe(true);
        const stepOf = new Map(r.plan.schedule.map((n, i) => [n.out.id, i]));
        for (const n of clones) expect(stepOf.get(n.out.id)!).toBeGreaterThanOrEqual(r.plan.backwardStart);
        // Exactly the plain step's numbers.
        const feeds = feedsFor(step, 3, () => 2 + (spec.width % 4));
        const want = results(step, c.gradients, feeds);
        const got = results(r.graph, c.gradients, feeds);
        expect([...got.keys()]).toEqual([...want.keys()]);
        for (const [k, v] of want) expect(Array.from(got.get(k)!), k).toEqual(Array.from(v));
        // One byte below the smallest budget: an error naming it; that budget itself fits.
        let error: unknown;
        try {
          rematerialize(step, { budget: min - 1, plan, plain });
        } catch (e) {
          error = e;
        }
        expect(error).toBeInstanceOf(LorafaError);
        expect(String((error as LorafaError).fix)).toContain(`at least ${fmtBytes(min)} (${min} bytes)`);
        expect(rematerialize(step, { budget: min, plan, plain }).plan.peak).toBeLessThanOrEqual(min);
      },
      { numRuns: 40 },
    );
    // Most random models have something worth recomputing.
    expect(rematted).toBeGreaterThan(10);
  });
});

describe('remat on a real model', () => {
  test('toy LLaMA, LoRA-FA: a budget between the smallest peak and the plain one lowers saved activations and inserts .remat nodes', async () => {
    const m = await loadModel(resolve(ROOT, 'models/llama.ts'));
    const graph = trace(m, 'toy');
    const setup = { mode: 'lora-fa' as const, lora: { rank: 8, alpha: 16, targets: ['q_proj', 'v_proj'] }, optimizer: { kind: 'adamw' as const } };
    const limits = { alignment: 256, maxBindingSize: 1 << 30, maxBufferSize: 1 << 30 };
    const plain = planStep(graph, setup, limits);
    const c = plain.compiled;
    const min = minimumPeak(c.step!, (g) => planMemory(g, { limits, dtype: 'f32', gradients: c.gradients }));
    expect(min).toBeLessThan(plain.memory.peak);
    const budget = Math.floor((min + plain.memory.peak) / 2);
    const r = planStep(graph, { ...setup, budget }, limits);
    expect(r.memory.peak).toBeLessThanOrEqual(budget);
    expect(r.remat!.savedAfter).toBeLessThan(r.remat!.savedBefore);
    expect(r.memory.timeline[r.memory.backwardStart].saved).toBeLessThan(plain.memory.timeline[plain.memory.backwardStart].saved);
    const text = printGraph(r.compiled.step!);
    expect(text).toMatch(/# \S+\.remat$/m);
    expect(r.compiled.stages.at(-1)!.pass).toBe('remat');
    // The attention or a matmul is among the recomputed ops, and the overhead is counted from them.
    const clones = r.compiled.step!.nodes.filter((n) => n.recompute);
    expect(clones.reduce((s, n) => s + flopsOf(n), 0)).toBe(r.remat!.extraFlops);
    // A budget the plain step meets changes nothing.
    const roomy = planStep(graph, { ...setup, budget: plain.memory.peak }, limits);
    expect(roomy.remat).toBeUndefined();
    expect(roomy.memory.peak).toBe(plain.memory.peak);
  });

  test('the SVG draws the budget line with its label', async () => {
    const m = await loadModel(resolve(ROOT, 'models/llama.ts'));
    const graph = trace(m, 'toy');
    const limits = { alignment: 256, maxBindingSize: 1 << 30, maxBufferSize: 1 << 30 };
    const p = planStep(graph, { mode: 'lora-fa', lora: { rank: 8, alpha: 16, targets: ['q_proj'] }, optimizer: { kind: 'adamw' } }, limits);
    const ctx = { file: 'llama', config: 'toy', cfg: {}, optimizer: 'AdamW', limitsName: 'x' };
    const svg = planSvgText(ctx, { mode: 'lora-fa', compiled: p.compiled, plan: p.memory, ms: 0 }, { budget: 123456 });
    expect(svg).toContain(`budget ${fmtBytes(123456)}`);
    expect(svg).toMatch(/<line [^>]*stroke="#d50000"[^>]*stroke-dasharray/);
    expect(planSvgText(ctx, { mode: 'lora-fa', compiled: p.compiled, plan: p.memory, ms: 0 })).not.toContain('budget');
  });
});

describe('--fit: the largest batch that fits, exactly', () => {
  test('toy LLaMA: each mode\'s batch fits and the next does not, without and with remat', async () => {
    const m = await loadModel(resolve(ROOT, 'models/llama.ts'));
    const limits = { alignment: 256, maxBindingSize: 1 << 30, maxBufferSize: 1 << 30 };
    const lora = { rank: 8, alpha: 16, targets: ['q_proj', 'v_proj'] };
    const optimizer = { kind: 'adamw' as const };
    const size = 300_000;
    const graphAt = (batch: number) => trace(m, 'toy', { batch });
    const fits = fitBatches({ size, graphAt, reference: 2, modes: ['full', 'lora', 'lora-fa'], lora, optimizer, plan: { limits, dtype: 'f32' } });
    for (const f of fits) {
      const stepAt = (batch: number) => compileTraining(graphAt(batch), { mode: f.mode, lora: f.mode === 'full' ? undefined : lora, optimizer });
      const planFor = (c: ReturnType<typeof stepAt>) => (g: Graph) => planMemory(g, { limits, dtype: 'f32', gradients: c.gradients });
      const peak = (batch: number) => {
        const c = stepAt(batch);
        return planFor(c)(c.step!).peak;
      };
      if (f.plain.batch) expect(peak(f.plain.batch), `${f.mode} plain`).toBeLessThanOrEqual(size);
      expect(peak(f.plain.batch + 1), `${f.mode} plain + 1`).toBeGreaterThan(size);
      expect(f.remat.batch).toBeGreaterThanOrEqual(f.plain.batch);
      const withBudget = (batch: number) => {
        const c = stepAt(batch);
        return rematerialize(c.step!, { budget: size, plan: planFor(c) });
      };
      if (f.remat.batch) expect(withBudget(f.remat.batch).plan.peak, `${f.mode} remat`).toBeLessThanOrEqual(size);
      expect(() => withBudget(f.remat.batch + 1), `${f.mode} remat + 1`).toThrow(/smallest budget this step fits/);
    }
    // Remat lets LoRA-FA fit a larger batch than without it.
    const fa = fits.find((f) => f.mode === 'lora-fa')!;
    expect(fa.remat.batch).toBeGreaterThan(fa.plain.batch);
  });
});

describe('remat on the GPU', () => {
  test('toy LLaMA, LoRA and LoRA-FA: the recomputing step updates the parameters as the plain step does (f32)', async () => {
    const gpu = await acquireGpu();
    const m = await loadModel(resolve(ROOT, 'models/llama.ts'));
    const graph = trace(m, 'toy');
    const limits = { alignment: gpu.limits.minStorageBufferOffsetAlignment, maxBindingSize: 1 << 28, maxBufferSize: 1 << 28 };
    const optimizer = { kind: 'sgd' as const };
    for (const mode of ['lora', 'lora-fa'] as const) {
      const setup = { mode, lora: { rank: 8, alpha: 16, targets: ['q_proj', 'v_proj'] }, optimizer };
      const plain = planStep(graph, setup, limits);
      const c = plain.compiled;
      const min = minimumPeak(c.step!, (g) => planMemory(g, { limits, dtype: 'f32', gradients: c.gradients }));
      const r = planStep(graph, { ...setup, budget: min }, limits);
      expect(r.compiled.step!.nodes.some((n) => n.recompute)).toBe(true);
      const feeds = { ...feedsFor(c.step!, 5, (name) => (name === 'labels' || name === 'input_ids' ? 64 : 2)), ...optimizerFeeds(optimizer, 1, 1) };
      const params = new Map([...paramsWithRandomB(c.step!, 5)].map(([k, v]) => [k, { shape: v.shape, data: deviceValues(v.data, 'f32') }]));
      const run = async (step: Graph, plan: typeof plain.memory) => {
        const runner = await StepRunner.create(buildKernelPlan(step, plan), gpu);
        try {
          runner.writeParams(params);
          const loss = await runner.step(feeds);
          return { loss, after: await runner.readParams() };
        } finally {
          runner.destroy();
        }
      };
      const a = await run(c.step!, plain.memory);
      const b = await run(r.compiled.step!, r.memory);
      expect(Math.abs(b.loss - a.loss)).toBeLessThanOrEqual(1e-5 * (1 + Math.abs(a.loss)));
      const trained = new Set(c.step!.updates.map((u) => u.target));
      expect(trained.size).toBeGreaterThan(0);
      for (const name of trained) {
        const want = a.after.get(name)!;
        const got = b.after.get(name)!;
        const before = params.get(name)!.data;
        // The step moved the parameter (the gradient is not all zero) …
        if (name.endsWith('lora_B')) expect(want.some((x, i) => x !== before[i]), name).toBe(true);
        // … and the recomputing step moved it the same way.
        for (let i = 0; i < want.length; i++) expect(Math.abs(got[i] - want[i]), `${mode} ${name}[${i}]`).toBeLessThanOrEqual(1e-5 * (1 + Math.abs(want[i])));
      }
    }
  });
});

describe('the CLI: plan --budget / --fit / --svg, compile --emit ir --budget', () => {
  async function cli(args: string[]): Promise<{ code: number; out: string }> {
    const { main } = await import('../src/cli/main.ts');
    const out: string[] = [];
    const log = console.log;
    const write = process.stdout.write;
    console.log = (...a: unknown[]) => void out.push(a.join(' ') + '\n');
    process.stdout.write = ((s: string) => (out.push(String(s)), true)) as typeof process.stdout.write;
    try {
      const code = await main(args);
      return { code, out: out.join('') };
    } finally {
      console.log = log;
      process.stdout.write = write;
    }
  }
  const toy = resolve(ROOT, 'models/llama.ts');

  test('plan --budget reports the overhead; --json carries it; a budget too small names the smallest', async () => {
    const text = await cli(['plan', toy, '--budget', '140KiB']);
    expect(text.code).toBe(0);
    expect(text.out).toMatch(/budget {3}140 KiB \(143 KB\): without recomputation the step needs \S+ KiB; with it/);
    expect(text.out).toMatch(/remat {4}\d+ saved values recomputed in backward \(\d+ recompute nodes\): \S+ KiB no longer saved/);
    expect(text.out).toMatch(/overhead \S+ \w*FLOP, \d+\.\d% of the step's/);
    const json = JSON.parse((await cli(['plan', toy, '--budget', '143360', '--json'])).out);
    expect(json.peak).toBeLessThanOrEqual(143360);
    expect(json.remat.recomputed).toBeGreaterThan(0);
    expect(json.remat.extraFlops).toBeGreaterThan(0);
    expect(json.remat.savedBytesDropped).toBeGreaterThan(0);
    const small = await cli(['plan', toy, '--budget', '1KB']);
    expect(small.code).toBe(1);
  });

  test('plan --fit echoes the unit given, and --json gives every mode', async () => {
    const text = await cli(['plan', toy, '--fit', '300KB']);
    expect(text.code).toBe(0);
    expect(text.out).toContain('fits 300 KB (293 KiB)');
    expect(text.out).toMatch(/^lora-fa +\d+ /m);
    const gib = await cli(['plan', toy, '--fit', '0.0003GiB']);
    expect(gib.out).toContain("fits 315 KiB (322 KB)");
    const json = JSON.parse((await cli(['plan', toy, '--fit', '300KB', '--json'])).out);
    expect(json.unit).toBe('GB');
    expect(Object.keys(json.modes)).toEqual(['full', 'lora', 'lora-fa']);
    expect(json.modes['lora-fa'].rematBatch).toBeGreaterThanOrEqual(json.modes['lora-fa'].batch);
  });

  test('--svg with --budget or --fit draws the budget line', async () => {
    const { mkdtempSync, readFileSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const dir = mkdtempSync(resolve(tmpdir(), 'remat-svg-'));
    for (const [flag, size] of [['--budget', '140KiB'], ['--fit', '300KB']]) {
      const file = resolve(dir, `${flag.slice(2)}.svg`);
      expect((await cli(['plan', toy, flag, size, '--svg', file])).code).toBe(0);
      const svg = readFileSync(file, 'utf8');
      expect(svg).toMatch(/<text [^>]*fill="#d50000">budget /);
    }
  });

  test('compile --emit ir --budget prints the recompute nodes (stage remat), which verify', async () => {
    const r = await cli(['compile', toy, '--emit', 'ir', '--budget', '130KiB', '--verify']);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/# \S+\.remat$/m);
    // The step -o would compile: in bf16 (86.5 KiB) it fits 130 KiB without recomputing.
    const half = await cli(['compile', toy, '--emit', 'ir', '--budget', '130KiB', '--dtype', 'bf16']);
    expect(half.code).toBe(0);
    expect(half.out).toMatch(/^graph /);
    expect(half.out).not.toMatch(/\.remat$/m);
  });
});
