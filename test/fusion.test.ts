// Elementwise fusion (src/codegen/fuse.ts): which nodes W1 fuses, and that a fused kernel plan
// trains exactly as the unfused one does (the random-graph GPU tests in gpu-graphs.test.ts run
// every plan fused too, against the float64 reference).
import { resolve } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadModel, trace } from '../src/model/load.ts';
import { buildKernelPlan } from '../src/codegen/kernel-plan.ts';
import { planFusion } from '../src/codegen/fuse.ts';
import { sameShape } from '../src/ir/types.ts';
import { compileTraining, type Mode } from '../src/passes/compile.ts';
import { planMemory } from '../src/passes/memory-plan.ts';
import { optimizerFeeds, type OptimizerOptions } from '../src/passes/optimizer.ts';
import { isInlineConstant, isView } from '../src/passes/schedule.ts';
import { StepRunner } from '../src/runtime/executor.ts';
import { acquireGpu, type Gpu } from '../src/runtime/gpu.ts';
import { feedsFor, intBoundsFor, paramsWithRandomB, ROOT } from './helpers.ts';

async function compiled(model: string, config: string, mode: Mode, optimizer: OptimizerOptions = { kind: 'sgd' }, overrides?: Record<string, number>) {
  const m = await loadModel(resolve(ROOT, 'models', `${model}.ts`));
  const g = trace(m, config, overrides);
  const c = compileTraining(g, { mode, optimizer, lora: { rank: 2, alpha: 4, targets: m.def.defaultTargets ?? [], modulesToSave: m.def.modulesToSave } });
  const plan = planMemory(c.step!, { gradients: c.gradients });
  return { m, c, step: c.step!, plan, cfg: m.def.configs[config] };
}

describe('what W1 fuses', () => {
  it('each hidden layer: add + gelu forward, and the GELU backward (gelu_grad) with its incoming sum, as one kernel each', async () => {
    const { step, plan } = await compiled('w1', 'toy', 'lora-fa', { kind: 'sgd' }, { layers: 3 });
    const constants = new Set(plan.schedule.filter(isInlineConstant).map((n) => n.out.id));
    const root = (id: number): number => {
      const a = plan.aliases.get(id);
      return a === undefined || a < 0 ? id : root(a);
    };
    const byId = new Map(plan.tensors.map((t) => [t.id, t]));
    const groups = new Set(
      planFusion(plan.schedule, {
        storage: (v) => root(v.id),
        constants: new Map([...constants].map((id) => [id, 0])),
        dispatched: (n) => !isView(n) && !constants.has(n.out.id),
        bytes: (id) => {
          const t = byId.get(id);
          return t && { buffer: t.buffer, offset: t.offset, size: t.bytes };
        },
        outputs: new Set([root(step.outputs.loss.id)]),
      }).values(),
    );
    const ops = (g: { nodes: readonly { op: string }[] }) => g.nodes.map((n) => n.op);
    // GELU's backward (one gelu_grad node) with the add that sums the incoming gradient (x·W and
    // adapter paths): reads h and two matmul outputs and writes dh only.
    const backward = [...groups].filter((g) => ops(g).join() === 'add,gelu_grad');
    expect(backward).toHaveLength(2);
    for (const g of backward) expect(g.stored).toHaveLength(1);
    const forward = [...groups].filter((g) => ops(g).join() === 'add,gelu');
    expect(forward).toHaveLength(2);
    for (const g of groups) {
      const shape = g.nodes.at(-1)!.out.type.shape;
      expect(g.nodes.every((n) => sameShape(n.out.type.shape, shape))).toBe(true);
      expect(g.stored.every((v) => g.nodes.some((n) => n.out === v))).toBe(true);
    }
    const fused = buildKernelPlan(step, plan);
    const unfused = buildKernelPlan(step, plan, { fuse: false });
    const members = [...groups].reduce((s, g) => s + g.nodes.length, 0);
    expect(fused.dispatches.length).toBe(unfused.dispatches.length - members + groups.size);
    // The same buffers: fusion never changes the plan.
    expect(fused.buffers).toEqual(unfused.buffers);
  });

  it('fusion off gives one dispatch per computing node', async () => {
    const { step, plan } = await compiled('w1', 'toy', 'lora', { kind: 'adamw' });
    const computing = plan.schedule.filter((n) => !isView(n) && !isInlineConstant(n)).length;
    expect(buildKernelPlan(step, plan, { fuse: false }).dispatches.length).toBe(computing);
    expect(buildKernelPlan(step, plan).dispatches.length).toBeLessThan(computing);
  });
});

describe('fused and unfused kernel plans train alike on the GPU', () => {
  let gpu: Gpu;
  beforeAll(async () => {
    gpu = await acquireGpu();
  });

  const cases: [string, string, Mode, OptimizerOptions, Record<string, number>?][] = [
    ['w1', 'toy', 'lora-fa', { kind: 'sgd' }, { batch: 16, d: 24, layers: 3 }],
    ['w1', 'toy', 'full', { kind: 'adamw' }],
    ['llama', 'toy', 'lora-fa', { kind: 'adamw' }],
    ['mlp', 'toy', 'lora', { kind: 'sgd', momentum: 0.9 }],
  ];
  it.each(cases)('%s %s %s: 3 steps, the same losses and parameters', async (model, config, mode, optimizer, overrides) => {
    const { step, plan, cfg } = await compiled(model, config, mode, optimizer, overrides);
    const params = paramsWithRandomB(step, 3);
    const feeds = feedsFor(step, 4, intBoundsFor(cfg));
    const run = async (fuse: boolean) => {
      const runner = await StepRunner.create(buildKernelPlan(step, plan, { fuse, maxWorkgroupsPerDimension: gpu.limits.maxComputeWorkgroupsPerDimension }), gpu);
      runner.writeParams(params);
      const losses: number[] = [];
      for (let t = 1; t <= 3; t++) losses.push(await runner.step({ ...feeds, ...optimizerFeeds(optimizer, 1e-2, t) }));
      const after = await runner.readParams();
      runner.destroy();
      return { losses, after };
    };
    const a = await run(true);
    const b = await run(false);
    expect(a.losses).toEqual(b.losses.map((x) => expect.closeTo(x, 6)));
    for (const [name, v] of b.after) {
      const w = a.after.get(name)!;
      let worst = 0;
      for (let i = 0; i < v.length; i++) worst = Math.max(worst, Math.abs(v[i] - w[i]) / (1e-3 + Math.abs(v[i])));
      expect(worst, name).toBeLessThan(1e-4);
    }
  }, 120_000);
});
