// The step runner's error path: a validation failure during a step names the kernel and IR node.
import { expect, test } from 'vitest';
import { buildKernelPlan } from '../src/codegen/kernel-plan.ts';
import { LorafaError } from '../src/ir/errors.ts';
import { compileTraining } from '../src/passes/compile.ts';
import { LIMIT_PRESETS, planMemory } from '../src/passes/memory-plan.ts';
import { optimizerFeeds } from '../src/passes/optimizer.ts';
import { StepRunner } from '../src/runtime/executor.ts';
import { feedsFor, toyModel } from './helpers.ts';

test('a dispatch that fails validation is reported by its IR node and kernel, not as "a training step"', async () => {
  const { model, graph } = await toyModel('mlp');
  const opt = { kind: 'sgd' as const };
  const c = compileTraining(graph, { mode: 'lora-fa', optimizer: opt, lora: { rank: 2, alpha: 4, targets: model.def.defaultTargets!, modulesToSave: model.def.modulesToSave } });
  const plan = planMemory(c.step!, { limits: LIMIT_PRESETS.webgpu, gradients: c.gradients });
  const kp = buildKernelPlan(c.step!, plan);
  // Tamper with one dispatch: more workgroups than any adapter allows in x.
  const victim = 3;
  const bad = { ...kp, dispatches: kp.dispatches.map((d, i) => (i === victim ? { ...d, workgroups: [70000, 1, 1] as const } : d)) };
  const runner = await StepRunner.create(bad);
  try {
    const feeds = { ...feedsFor(c.step!, 1, (n) => (n === 'labels' ? 3 : 2)), ...optimizerFeeds(opt, 0.1, 1) };
    const err = await runner.step(feeds).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(LorafaError);
    const e = err as LorafaError;
    expect(e.where).toBe(`dispatch ${victim} (IR node ${kp.dispatches[victim].label}; kernel ${kp.kernels[kp.dispatches[victim].kernel].label})`);
    expect(e.problem).toMatch(/WebGPU validation error: .*70000/s);
  } finally {
    runner.destroy();
  }
  // The untampered plan runs.
  const good = await StepRunner.create(kp);
  try {
    const loss = await good.step({ ...feedsFor(c.step!, 1, (n) => (n === 'labels' ? 3 : 2)), ...optimizerFeeds(opt, 0.1, 1) });
    expect(Number.isFinite(loss)).toBe(true);
  } finally {
    good.destroy();
  }
});
