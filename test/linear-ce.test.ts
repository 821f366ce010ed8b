// A frozen head + cross-entropy fused into linear_cross_entropy (src/passes/linear-ce.ts):
// - the pass fuses exactly the frozen heads (untied [d, V] and tied [V, d]), never a trainable or
//   LoRA-adapted one;
// - the fused joint graph's loss and gradients equal the unfused graph's in float64 (1e-12), with
//   the backward in one chunk and in several uneven ones;
// - the training step keeps no [tokens, vocab] tensor, and at most one chunk's logits and their
//   gradient are live at any step of the plan;
// - on the GPU, one SGD step through the forward kernel and the chunked backward matches the
//   float64 reference.
// The op's own reference, VJP (finite differences) and kernel (GPU parity, the 2-D grid fold) are
// checked with every registry op in grad.test.ts and gpu-ops.test.ts.
import { beforeAll, describe, expect, it } from 'vitest';
import { buildKernelPlan } from '../src/codegen/kernel-plan.ts';
import { emitKernel } from '../src/codegen/wgsl.ts';
import { OPS } from '../src/ir/ops.ts';
import type { Tensor } from '../src/ir/shape.ts';
import { Builder } from '../src/ir/builder.ts';
import { IGNORE_INDEX } from '../src/ir/ops.ts';
import { numel, type Graph } from '../src/ir/types.ts';
import { verify } from '../src/ir/verify.ts';
import { autodiff, gradName } from '../src/passes/autodiff.ts';
import { compileTraining, type CompileOptions } from '../src/passes/compile.ts';
import { LIMIT_PRESETS, planMemory } from '../src/passes/memory-plan.ts';
import { optimizerFeeds } from '../src/passes/optimizer.ts';
import { StepRunner } from '../src/runtime/executor.ts';
import { acquireGpu, type Gpu } from '../src/runtime/gpu.ts';
import { referenceStep, runReference } from '../src/runtime/reference.ts';
import { deviceValues, feedsFor, runKernelOnGpu, sample } from './helpers.ts';

/** x → tanh(linear 'proj', trainable) → a head of `v` classes (frozen unless said) → cross-entropy. */
function lmTail(n: number, d: number, v: number, head: 'frozen' | 'tied' | 'trainable'): Graph {
  const b = new Builder({ name: `lm_tail_${head}` });
  const x = b.input('x', [n, d]);
  const labels = b.input('labels', [n], 'i32');
  const h = b.tanh(b.linear(x, 'proj', d));
  const logits =
    head === 'tied'
      ? b.tiedLinear(h, 'lm_head', b.param('wte', [v, d], { init: { kind: 'normal', std: 0.7 }, trainable: false }))
      : b.linear(h, 'lm_head', v, { bias: false, trainable: head === 'trainable' });
  b.output('logits', logits);
  b.loss(b.crossEntropy(logits, labels));
  return verify(b.build());
}

/** Feeds with labels in [0, v) and two rows ignored (−100). */
function feeds(g: Graph, v: number, seed: number): Record<string, Float64Array> {
  const f = feedsFor(g, seed, () => v);
  f.labels[1] = IGNORE_INDEX;
  f.labels[f.labels.length - 1] = IGNORE_INDEX;
  return f;
}

const compile = (g: Graph, extra: Partial<CompileOptions> = {}) => compileTraining(g, { mode: 'full', optimizer: { kind: 'sgd' }, verify: true, ...extra });

describe('the pass', () => {
  it.each(['frozen', 'tied'] as const)('fuses a %s head: one linear_cross_entropy, no logits matmul in the step', (head) => {
    const c = compile(lmTail(10, 6, 37, head));
    expect(c.reports.linearCe.fused).toEqual(['lm_head.xW']);
    const lce = c.step!.nodes.filter((n) => n.op === 'linear_cross_entropy');
    expect(lce.map((n) => [n.inputs[1].name, n.attrs.transB])).toEqual([[head === 'tied' ? 'wte' : 'lm_head.weight', head === 'tied']]);
    expect(c.step!.nodes.some((n) => n.out.name === 'lm_head.xW')).toBe(false);
    expect(c.step!.nodes.some((n) => n.op === 'cross_entropy')).toBe(false);
    // The joint graph still answers the `logits` output, with the matmul the step does not run.
    expect(c.joint.nodes.some((n) => n.out.name === 'lm_head.xW')).toBe(true);
    expect(c.stages.map((s) => s.pass)).toContain('linear-ce');
  });

  it('leaves a trainable head alone, and a LoRA-adapted one', () => {
    const trainable = compile(lmTail(10, 6, 37, 'trainable'));
    expect(trainable.reports.linearCe.fused).toEqual([]);
    expect(trainable.step!.nodes.some((n) => n.op === 'linear_cross_entropy')).toBe(false);
    expect(trainable.stages.map((s) => s.pass)).not.toContain('linear-ce');
    const adapted = compile(lmTail(10, 6, 37, 'frozen'), { mode: 'lora-fa', lora: { rank: 2, alpha: 4, targets: ['lm_head'] } });
    expect(adapted.reports.linearCe.fused).toEqual([]);
    expect(adapted.step!.nodes.some((n) => n.op === 'cross_entropy')).toBe(true);
  });

  it.each([
    ['one chunk', 1 << 20, 1],
    ['three uneven chunks (4, 4, 2 rows)', 4 * 37 * 4, 3],
  ] as const)('%s: loss and gradients equal the unfused graph in float64 (1e-12)', (_what, chunkBytes, chunks) => {
    for (const head of ['frozen', 'tied'] as const) {
      const c = compile(lmTail(10, 6, 37, head), { linearCeChunkBytes: chunkBytes });
      expect(c.joint.nodes.filter((n) => n.op === 'cross_entropy_grad').length).toBe(chunks);
      const wrt = c.forward.params.filter((p) => p.trainable).map((p) => p.value);
      const unfused = autodiff(c.forward, { wrt }).graph;
      expect(unfused.nodes.some((n) => n.op === 'linear_cross_entropy')).toBe(false);
      const f = feeds(c.forward, 37, 3);
      const params = runReference(c.forward, { feeds: f, seed: 5 }).params;
      const a = runReference(c.joint, { feeds: f, params });
      const b = runReference(unfused, { feeds: f, params });
      expect(Math.abs(a.outputs.loss.data[0] - b.outputs.loss.data[0])).toBeLessThan(1e-12);
      for (const w of wrt) {
        const ga = a.outputs[gradName(w.name)].data;
        const gb = b.outputs[gradName(w.name)].data;
        expect(ga.some((x) => Math.abs(x) > 1e-6), w.name).toBe(true);
        for (let i = 0; i < gb.length; i++) expect(Math.abs(ga[i] - gb[i]), `${head} ${w.name}[${i}]`).toBeLessThan(1e-12);
      }
    }
  });

  it('the plan keeps no [tokens, vocab] tensor, and at most one chunk of logits and its gradient is live at once', () => {
    const [n, v, chunk] = [40, 150, 8];
    const c = compile(lmTail(n, 24, v, 'frozen'), { linearCeChunkBytes: chunk * v * 4 });
    const plan = planMemory(c.step!, { limits: LIMIT_PRESETS.none, gradients: c.gradients });
    expect(plan.tensors.filter((t) => numel(t.shape) >= n * v).map((t) => t.name)).toEqual([]);
    const wide = plan.tensors.filter((t) => t.category !== 'frozen' && t.shape.length === 2 && t.shape[1] === v);
    expect(wide.length).toBe(2 * (n / chunk)); // logits and their gradient, chunk by chunk
    let most = 0;
    for (let s = 0; s < plan.schedule.length; s++) {
      most = Math.max(most, wide.filter((t) => t.start <= s && s <= t.end).reduce((a, t) => a + numel(t.shape), 0));
    }
    expect(most).toBe(2 * chunk * v);
    // The composition this replaces keeps [n, v] logits from the forward to the backward.
    const unfused = compile(lmTail(n, 24, v, 'trainable'));
    const unfusedPlan = planMemory(unfused.step!, { limits: LIMIT_PRESETS.none, gradients: unfused.gradients });
    expect(unfusedPlan.tensors.some((t) => t.category === 'saved' && numel(t.shape) === n * v)).toBe(true);
  });
});

describe('on the GPU', () => {
  let gpu: Gpu;
  beforeAll(async () => {
    gpu = await acquireGpu();
  });

  it('teeth: a row guard off by one writes past the output; a vocab tile skipped gives a wrong L', async () => {
    // 20 rows: the second workgroup of 16 has 12 rows past the end; V = 130: three tiles, the last of 2 columns.
    const [n, d, v] = [20, 9, 130];
    const b = new Builder({ name: 'lce' });
    const ins = [b.input('h', [n, d]), b.input('w', [d, v]), b.input('labels', [n], 'i32')];
    const node = (() => {
      b.emit('linear_cross_entropy', ins, { transB: false, chunk: n });
      const g = b.build();
      return g.nodes[g.nodes.length - 1];
    })();
    const labels = Float64Array.from({ length: n }, (_, i) => (i * 37) % v);
    const data = new Map<number, Tensor>([
      [ins[0].id, { shape: [n, d], data: deviceValues(sample(n * d, { kind: 'real' }, 1), 'f32') }],
      [ins[1].id, { shape: [d, v], data: deviceValues(sample(d * v, { kind: 'real' }, 2), 'f32') }],
      [ins[2].id, { shape: [n], data: labels }],
    ]);
    const want = OPS.linear_cross_entropy.ref([...data.values()], node.attrs as never, node.out.type);
    const k = emitKernel(node, { constants: new Map(), maxWorkgroupsPerDimension: 65535 });
    const close = (got: Float64Array) => got.every((x, i) => Math.abs(x - want[i]) < 1e-4 * (1 + Math.abs(want[i])));
    expect(close(await runKernelOnGpu(node, k, data))).toBe(true);
    const guard = { ...k, wgsl: k.wgsl.replace('r0 + lid < N;', 'r0 + lid < N + 1u;') };
    expect(guard.wgsl).not.toBe(k.wgsl);
    await expect(runKernelOnGpu(node, guard, data)).rejects.toThrow(/past its \d+-element output/);
    const skip = { ...k, wgsl: k.wgsl.replace('for (var c0 = 0u; c0 < V;', 'for (var c0 = 0u; c0 + 64u < V;') };
    expect(skip.wgsl).not.toBe(k.wgsl);
    expect(close(await runKernelOnGpu(node, skip, data))).toBe(false);
  });

  it.each(['frozen', 'tied'] as const)('%s head, 3 row workgroups × 3 vocab tiles, 3 uneven chunks: one SGD step matches float64', async (head) => {
    const [n, d, v] = [40, 24, 150];
    const c = compile(lmTail(n, d, v, head), { linearCeChunkBytes: 16 * v * 4 });
    expect(c.step!.nodes.filter((node) => node.op === 'cross_entropy_grad').length).toBe(3);
    const align = gpu.limits.minStorageBufferOffsetAlignment;
    const plan = planMemory(c.step!, { limits: { ...LIMIT_PRESETS.webgpu, alignment: align }, gradients: c.gradients });
    const kp = buildKernelPlan(c.step!, plan, { maxWorkgroupsPerDimension: gpu.limits.maxComputeWorkgroupsPerDimension, subgroupSize: gpu.subgroupSize });
    const f = { ...feeds(c.step!, v, 11), ...optimizerFeeds({ kind: 'sgd' }, 0.5, 1) };
    const init = new Map([...runReference(c.forward, { feeds: feeds(c.forward, v, 11), seed: 4 }).params].map(([k, t]) => [k, { shape: t.shape, data: deviceValues(t.data, 'f32') }]));
    const ref = referenceStep(c.step!, { feeds: f, params: init });
    const runner = await StepRunner.create(kp, gpu);
    try {
      runner.writeParams(init);
      const loss = await runner.step(f);
      expect(Math.abs(loss - ref.outputs.loss.data[0])).toBeLessThan(1e-5 * (1 + Math.abs(ref.outputs.loss.data[0])));
      const after = await runner.readParams();
      for (const name of ['proj.weight', 'proj.bias']) {
        const want = ref.params.get(name)!.data;
        const before = init.get(name)!.data;
        const got = after.get(name)!;
        // The step moved the weights (the gradient is not zero), and the GPU moved them the same.
        expect(want.some((x, i) => Math.abs(x - before[i]) > 1e-4), name).toBe(true);
        for (let i = 0; i < want.length; i++) expect(Math.abs(got[i] - want[i]), `${name}[${i}]`).toBeLessThan(1e-5 * (1 + Math.abs(want[i])));
      }
    } finally {
      runner.destroy();
    }
  }, 120_000);
});
