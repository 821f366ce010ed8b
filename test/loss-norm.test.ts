// Cross-entropy with integer targets, RMSNorm and LayerNorm as primitives (issue 14), beyond the
// registry-driven tables (grad.test.ts, gpu-ops.test.ts, ops.test.ts):
// - the ops against the compositions they replaced (crossEntropyComposed, rmsNormComposed,
//   layerNormComposed): loss and every gradient equal in float64 on a LLaMA-like block and an MLP
//   classifier;
// - the ignore index −100: the mean is over the other rows; all rows ignored is loss 0 and zero
//   gradients (PyTorch gives NaN); a label outside [0, C) on the GPU reads nothing out of bounds;
// - `wants`: frozen norm weights build no dweight;
// - the plan: a LLaMA under LoRA-FA saves no one-hot, no [tokens, vocab] tensor but the logits,
//   and no normalised intermediates;
// - poison: after the forward on the GPU, every arena byte the plan does not keep for backward is
//   overwritten with NaN, and the step's result does not change by a bit.
import { beforeAll, describe, expect, it, test } from 'vitest';
import { buildKernelPlan, type KernelPlan } from '../src/codegen/kernel-plan.ts';
import { Builder } from '../src/ir/builder.ts';
import { IGNORE_INDEX } from '../src/ir/ops.ts';
import type { Tensor } from '../src/ir/shape.ts';
import { numel, type Graph, type Value } from '../src/ir/types.ts';
import { verify } from '../src/ir/verify.ts';
import { loadModel, trace } from '../src/model/load.ts';
import { autodiff, gradName } from '../src/passes/autodiff.ts';
import { compileTraining, type Mode } from '../src/passes/compile.ts';
import { LIMIT_PRESETS, planMemory, type MemoryPlan } from '../src/passes/memory-plan.ts';
import { optimizerFeeds } from '../src/passes/optimizer.ts';
import { StepRunner } from '../src/runtime/executor.ts';
import { acquireGpu, type Gpu } from '../src/runtime/gpu.ts';
import { rng } from '../src/runtime/init.ts';
import { runReference } from '../src/runtime/reference.ts';
import { runNodeOnGpu } from '../src/runtime/single.ts';
import { deviceValues, feedsFor, intBoundsFor, poisoned, ROOT, toyModel } from './helpers.ts';
import { resolve } from 'node:path';

const uniform = (n: number, seed: number, lo = -1, hi = 1) => {
  const u = rng(seed);
  return new Float64Array(n).map(() => lo + (hi - lo) * u());
};

/** |a − b| ≤ tol·max(1, max|b|), element by element. */
function expectSame(a: ArrayLike<number>, b: ArrayLike<number>, tol: number, what: string): void {
  expect(a.length, what).toBe(b.length);
  let scale = 1;
  for (let i = 0; i < b.length; i++) scale = Math.max(scale, Math.abs(b[i]));
  for (let i = 0; i < b.length; i++) {
    if (!(Math.abs(a[i] - b[i]) <= tol * scale)) expect.fail(`${what}[${i}]: ${a[i]} vs ${b[i]} (scale ${scale})`);
  }
}

// ---------------------------------------------------------------------------------------------
// the ops against the compositions they replaced

type Variant = 'ops' | 'composed';

/** A LLaMA-like decoder layer (RMSNorm, RoPE, causal attention, SwiGLU), final norm, LM head. */
function llamaBlock(v: Variant): Graph {
  const b = new Builder({ name: `llama_block_${v}` });
  const [batch, seq, d, heads, ffn, vocab] = [2, 5, 12, 3, 20, 11];
  const ids = b.input('ids', [batch * seq], 'i32');
  const labels = b.input('labels', [batch * seq], 'i32');
  const norm = (x: Value, name: string) => (v === 'ops' ? b.rmsNorm(x, name, { eps: 1e-5 }) : b.rmsNormComposed(x, name, { eps: 1e-5 }));
  let h = b.embedding(ids, 'embed', vocab, d);
  b.scope('layer', () => {
    const a = norm(h, 'input_layernorm');
    const [q, k, vv] = ['q', 'k', 'v'].map((n) => b.splitHeads(b.linear(a, n, d, { bias: false }), batch, seq, heads));
    const att = b.attention(b.rope(q), b.rope(k), vv, { causal: true });
    h = b.add(h, b.linear(b.mergeHeads(att), 'o', d, { bias: false }));
    const m = norm(h, 'post_attention_layernorm');
    const [gate, upIn] = [b.linear(m, 'gate', ffn, { bias: false }), b.linear(m, 'up', ffn, { bias: false })];
    const up = v === 'ops' ? b.swiglu(gate, upIn) : b.mul(b.silu(gate), upIn);
    h = b.add(h, b.linear(up, 'down', d, { bias: false }));
  });
  const logits = b.linear(norm(h, 'norm'), 'lm_head', vocab, { bias: false });
  b.loss(v === 'ops' ? b.crossEntropy(logits, labels) : b.crossEntropyComposed(logits, labels));
  return verify(b.build());
}

/** An MLP classifier with a LayerNorm of odd width. */
function mlpClassifier(v: Variant): Graph {
  const b = new Builder({ name: `mlp_${v}` });
  const x = b.input('x', [6, 7]);
  const labels = b.input('labels', [6], 'i32');
  let h = b.linear(x, 'fc1', 9);
  h = v === 'ops' ? b.layerNorm(h, 'ln', { eps: 1e-5 }) : b.layerNormComposed(h, 'ln', { eps: 1e-5 });
  const logits = b.linear(b.relu(h), 'fc2', 4);
  b.loss(v === 'ops' ? b.crossEntropy(logits, labels) : b.crossEntropyComposed(logits, labels));
  return verify(b.build());
}

/** Loss and the gradient of every trainable parameter, with norm weights and biases made random. */
function lossAndGrads(g: Graph, feeds: Record<string, Float64Array>, params?: Map<string, Tensor>) {
  const wrt = g.params.filter((p) => p.trainable).map((p) => p.value);
  const { graph } = autodiff(g, { wrt });
  verify(graph);
  let ps = params;
  if (!ps) {
    ps = new Map(runReference(g, { feeds, seed: 3 }).params);
    let k = 0;
    for (const [name, t] of ps) {
      if (/(layernorm|norm|ln)\.(weight|bias)$/.test(name)) ps.set(name, { shape: t.shape, data: uniform(t.data.length, 100 + k++, 0.5, 1.5) });
    }
  }
  const run = runReference(graph, { feeds, params: ps });
  return { params: ps, loss: run.outputs.loss.data[0], grads: new Map(wrt.map((w) => [w.name, run.outputs[gradName(w.name)].data])) };
}

describe('the ops equal the compositions they replaced, in float64', () => {
  it.each([
    ['LLaMA-like block (rms_norm ×3, cross_entropy)', llamaBlock, { ids: 11, labels: 11 }],
    ['MLP classifier (layer_norm of width 9, cross_entropy over 4 classes)', mlpClassifier, { labels: 4 }],
  ] as const)('%s: loss and every gradient within 1e-12', (_what, build, bounds) => {
    const ops = build('ops');
    const composed = build('composed');
    // The ops really replaced the compositions.
    const opNames = new Set(ops.nodes.map((n) => n.op));
    expect(opNames.has('cross_entropy')).toBe(true);
    expect(opNames.has('one_hot')).toBe(false);
    expect(opNames.has('rms_norm') || opNames.has('layer_norm')).toBe(true);
    expect(composed.nodes.some((n) => n.op === 'rms_norm' || n.op === 'layer_norm' || n.op === 'cross_entropy')).toBe(false);
    const feeds = feedsFor(ops, 7, (n) => bounds[n as keyof typeof bounds]);
    const a = lossAndGrads(ops, feeds);
    const c = lossAndGrads(composed, feeds, a.params);
    expect(a.grads.size).toBeGreaterThan(3);
    expectSame([a.loss], [c.loss], 1e-12, 'loss');
    for (const [name, g] of a.grads) expectSame(g, c.grads.get(name)!, 1e-12, `grad.${name}`);
    // Norm weights (and LayerNorm's bias) have gradients, and they are not trivially zero.
    const normGrads = [...a.grads].filter(([n]) => /(layernorm|norm|ln)\./.test(n));
    expect(normGrads.length).toBeGreaterThan(0);
    for (const [n, g] of normGrads) expect(g.some((x) => Math.abs(x) > 1e-6), n).toBe(true);
  });
});

// ---------------------------------------------------------------------------------------------
// the ignore index

function ceGraph(rows: number, classes: number, composed = false) {
  const b = new Builder({ name: 'ce' });
  const logits = b.input('logits', [rows, classes]);
  const labels = b.input('labels', [rows], 'i32');
  b.loss(composed ? b.crossEntropyComposed(logits, labels) : b.crossEntropy(logits, labels));
  const g = verify(b.build());
  const { graph } = autodiff(g, { wrt: [logits] });
  return verify(graph);
}

describe('ignore index −100 (PyTorch reduction="mean")', () => {
  it('the mean is over the rows not ignored; ignored rows get exactly zero gradient', () => {
    const labels = [2, IGNORE_INDEX, 0, IGNORE_INDEX, 3];
    const logits = uniform(5 * 4, 1, -2, 2);
    const run = runReference(ceGraph(5, 4), { feeds: { logits, labels } });
    // The composition on the three labelled rows alone.
    const keep = [0, 2, 4];
    const sub = runReference(ceGraph(3, 4, true), {
      feeds: { logits: keep.flatMap((r) => Array.from(logits.subarray(4 * r, 4 * r + 4))), labels: keep.map((r) => labels[r]) },
    });
    expectSame(run.outputs.loss.data, sub.outputs.loss.data, 1e-14, 'loss');
    const grad = run.outputs['grad.logits'].data;
    keep.forEach((r, k) => expectSame(grad.subarray(4 * r, 4 * r + 4), sub.outputs['grad.logits'].data.subarray(4 * k, 4 * k + 4), 1e-14, `row ${r}`));
    for (const r of [1, 3]) expect(Array.from(grad.subarray(4 * r, 4 * r + 4))).toEqual([0, 0, 0, 0]);
  });

  it('every row ignored: loss 0 and gradient 0, not NaN (defined behaviour; PyTorch gives NaN)', () => {
    const run = runReference(ceGraph(3, 5), { feeds: { logits: uniform(15, 2), labels: [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX] } });
    expect(run.outputs.loss.data[0]).toBe(0);
    expect(Array.from(run.outputs['grad.logits'].data).every((x) => x === 0)).toBe(true);
  });

  it('labels at 0 and C − 1, one class, and a rank-3 batch all match the composition', () => {
    for (const [shape, labels] of [
      [[4, 3], [0, 2, 2, 0]],
      [[2, 1], [0, 0]],
    ] as const) {
      const [rows, c] = shape;
      const logits = uniform(rows * c, 5);
      const a = runReference(ceGraph(rows, c), { feeds: { logits, labels } });
      const e = runReference(ceGraph(rows, c, true), { feeds: { logits, labels } });
      expectSame(a.outputs.loss.data, e.outputs.loss.data, 1e-14, `loss ${shape}`);
      expectSame(a.outputs['grad.logits'].data, e.outputs['grad.logits'].data, 1e-14, `grad ${shape}`);
    }
    const b = new Builder();
    const logits = b.input('logits', [2, 3, 4]);
    b.loss(b.crossEntropy(logits, b.input('labels', [2, 3], 'i32')));
    const { graph } = autodiff(verify(b.build()), { wrt: [logits] });
    const b2 = new Builder();
    const l2 = b2.input('logits', [2, 3, 4]);
    b2.loss(b2.crossEntropyComposed(l2, b2.input('labels', [2, 3], 'i32')));
    const { graph: g2 } = autodiff(verify(b2.build()), { wrt: [l2] });
    const feeds = { logits: uniform(24, 9), labels: [0, 3, 1, 2, 3, 0] };
    expectSame(runReference(graph, { feeds }).outputs['grad.logits'].data, runReference(g2, { feeds }).outputs['grad.logits'].data, 1e-14, 'rank 3');
  });

  it('the reference refuses a label outside [0, C) that is not −100', () => {
    expect(() => runReference(ceGraph(2, 3), { feeds: { logits: uniform(6, 3), labels: [1, 3] } })).toThrow(/cross_entropy: label 3 outside \[0, 3\) and not the ignore index -100/);
  });
});

describe('on the GPU, a label outside [0, C) reads nothing out of bounds', () => {
  it('cross_entropy gives (0, L, 0) for it, as for −100; cross_entropy_grad zero but through L', async () => {
    const b = new Builder();
    const logits = b.input('logits', [5, 3]);
    const labels = b.input('labels', [5], 'i32');
    const stats = b.emit('cross_entropy', [logits, labels], {});
    const ct = b.input('ct', [5, 3]);
    b.emit('cross_entropy_grad', [logits, labels, stats, ct], {});
    const g = b.build();
    const x = deviceValues(uniform(15, 4, -2, 2), 'f32');
    const lab = Float64Array.from([3, -7, 1, 1 << 30, IGNORE_INDEX]);
    const st = await runNodeOnGpu(g.nodes[0], new Map([[logits.id, { shape: [5, 3], data: x }], [labels.id, { shape: [5], data: lab }]]));
    for (const r of [0, 1, 3, 4]) {
      expect(st[3 * r], `row ${r} loss`).toBe(0);
      expect(st[3 * r + 2], `row ${r} weight`).toBe(0);
    }
    const row = x.subarray(6, 9);
    const lse = Math.log(row.reduce((s, v) => s + Math.exp(v), 0));
    for (let r = 0; r < 5; r++) {
      const rr = x.subarray(3 * r, 3 * r + 3);
      expect(Math.abs(st[3 * r + 1] - Math.log(rr.reduce((s, v) => s + Math.exp(v), 0)))).toBeLessThan(1e-6);
    }
    expect(Math.abs(st[6] - (lse - row[1]))).toBeLessThan(1e-6);
    expect(st[8]).toBe(1);
    // The backward kernel: ct = (1, 0, ·) on every row; rows without a valid label get exactly 0.
    const ctv = Float64Array.from({ length: 15 }, (_, i) => (i % 3 === 0 ? 1 : 0));
    const stv = deviceValues(st, 'f32');
    const dl = await runNodeOnGpu(g.nodes[1], new Map([
      [logits.id, { shape: [5, 3], data: x }],
      [labels.id, { shape: [5], data: lab }],
      [stats.id, { shape: [5, 3], data: stv }],
      [ct.id, { shape: [5, 3], data: ctv }],
    ]));
    for (const r of [0, 1, 3, 4]) expect(Array.from(dl.subarray(3 * r, 3 * r + 3))).toEqual([0, 0, 0]);
    const p = Array.from(row, (v) => Math.exp(v - lse));
    p.forEach((pj, j) => expect(Math.abs(dl[6 + j] - (pj - (j === 1 ? 1 : 0)))).toBeLessThan(1e-6));
  });
});

// ---------------------------------------------------------------------------------------------
// wants: a frozen norm builds no dweight

describe('frozen norm weights (LoRA, LoRA-FA) build no dweight', () => {
  it.each(['lora', 'lora-fa', 'full'] as const)('toy LLaMA, %s', async (mode) => {
    const { model, graph } = await toyModel('llama');
    const c = compileTraining(graph, { mode, lora: { rank: 2, alpha: 4, targets: model.def.defaultTargets! }, verify: true });
    const g = c.step ?? c.stages.at(-1)!.graph;
    const back = g.nodes.filter((n) => n.phase === 'backward');
    // Each norm's dx kernel is there (the adapters upstream need it)…
    expect(back.filter((n) => n.op === 'rms_norm_grad').length).toBeGreaterThan(0);
    // …and x̂ for dweight is recomputed only where the weight trains.
    const recomputed = back.filter((n) => n.op === 'rms_norm').length;
    const norms = graph.nodes.filter((n) => n.op === 'rms_norm').length;
    expect(recomputed).toBe(mode === 'full' ? norms : 0);
    expect(back.some((n) => n.op === 'one_hot' || n.op === 'exp')).toBe(false);
  });
});

// ---------------------------------------------------------------------------------------------
// the plan

async function llamaPlan(mode: Mode, composed = false) {
  const m = await loadModel(resolve(ROOT, 'models', 'llama.ts'));
  const graph = trace(m, 'toy', {}, { composed });
  const c = compileTraining(graph, { mode, lora: { rank: 2, alpha: 4, targets: m.def.defaultTargets! }, optimizer: { kind: 'sgd' }, verify: true });
  const plan = planMemory(c.step!, { limits: LIMIT_PRESETS.none, gradients: c.gradients });
  return { graph, step: c.step!, plan, cfg: m.def.configs.toy as Record<string, number> };
}

describe('plan: a toy LLaMA under LoRA-FA', () => {
  test('saves no one-hot, no [tokens, vocab] tensor, and no normalised intermediates', async () => {
    const { step, plan, cfg } = await llamaPlan('lora-fa');
    const saved = plan.tensors.filter((t) => t.category === 'saved');
    const byId = new Map(step.nodes.map((n) => [n.out.id, n]));
    const tokens = cfg.batch * cfg.seq;
    expect(saved.some((t) => byId.get(t.id)?.op === 'one_hot' || /one_hot|log_softmax/.test(t.name))).toBe(false);
    // No [tokens, vocab] tensor at all: the frozen LM head and the loss are one
    // linear_cross_entropy node, whose backward recomputes the logits from the norm's output.
    const wide = saved.filter((t) => numel(t.shape) === tokens * cfg.vocab);
    expect(wide.map((t) => t.name)).toEqual([]);
    const lce = step.nodes.filter((n) => n.op === 'linear_cross_entropy');
    expect(lce.map((n) => [n.inputs[0].name, n.inputs[1].name])).toEqual([['norm.out', 'lm_head.weight']]);
    expect(step.nodes.some((n) => n.out.name === 'lm_head.xW')).toBe(false);
    // What the cross-entropy saves: its [tokens, 3] rows (loss, L, weight), and the scalar count
    // of labelled rows that the mean divides by (its backward divides by it too).
    const ce = saved.filter((t) => t.name.startsWith('cross_entropy.'));
    expect(ce.map((t) => [t.name, t.shape])).toEqual([
      ['cross_entropy.stats', [tokens, 3]],
      ['cross_entropy.where', []],
    ]);
    // No norm saves anything of its own (no x², mean, rsqrt rows or x·rsqrt): each is one
    // rms_norm node whose backward reads x (the residual stream, saved anyway) and the weight.
    expect(step.nodes.filter((n) => n.op === 'rms_norm').length).toBe(2 * cfg.layers + 1);
    // The one norm output kept is the final norm's: the LM head's input h [tokens, d], which the
    // fused loss recomputes the logits from (instead of keeping [tokens, vocab] logits).
    expect(saved.filter((t) => /(layernorm|^norm)\./.test(t.name)).map((t) => [t.name, t.shape])).toEqual([['norm.out', [tokens, cfg.d]]]);
    const normInputs = new Set(step.nodes.filter((n) => n.op === 'rms_norm_grad').map((n) => n.inputs[0].id));
    expect(saved.filter((t) => normInputs.has(t.id)).length).toBeGreaterThan(0);
  });

  test('SwiGLU keeps gate and up, not silu(gate): the only saved [tokens, ffn] tensors are the two projections', async () => {
    const { step, plan, cfg } = await llamaPlan('lora-fa');
    const tokens = cfg.batch * cfg.seq;
    const wide = plan.tensors.filter((t) => t.category === 'saved' && numel(t.shape) === tokens * cfg.ffn);
    const names = wide.map((t) => t.name.replace(/layers\.\d+\./, 'layers.N.')).sort();
    const expected = Array.from({ length: cfg.layers }, () => ['layers.N.mlp.gate_proj.xW', 'layers.N.mlp.up_proj.xW']).flat().sort();
    expect(names).toEqual(expected);
    expect(step.nodes.filter((n) => n.op === 'swiglu' && n.phase === 'forward').length).toBe(cfg.layers);
    // The composition (silu, then mul) keeps silu(gate) as well: one more [tokens, ffn] per layer.
    const composed = await llamaPlan('lora-fa', true);
    const composedWide = composed.plan.tensors.filter((t) => t.category === 'saved' && numel(t.shape) === tokens * cfg.ffn);
    expect(composedWide.length).toBe(3 * cfg.layers);
  });

  test('saves fewer bytes than the compositions did (the figure in docs/memory.md)', async () => {
    const ops = await llamaPlan('lora-fa');
    const composed = await llamaPlan('lora-fa', true);
    const bytes = (p: MemoryPlan) => p.tensors.filter((t) => t.category === 'saved').reduce((s, t) => s + t.bytes, 0);
    const composedSaved = composed.plan.tensors.filter((t) => t.category === 'saved');
    // The composition saved a one-hot and [tokens, vocab] exponentials, and each norm's rsqrt rows.
    expect(composedSaved.some((t) => /one_hot/.test(t.name))).toBe(true);
    expect(composedSaved.some((t) => /log_softmax\.exp/.test(t.name))).toBe(true);
    expect(composedSaved.some((t) => /layernorm\.rsqrt/.test(t.name))).toBe(true);
    // toy: 54,592 → 50,372 saved bytes, peak 155,136 → 146,432.
    expect(bytes(ops.plan)).toBeLessThan(bytes(composed.plan));
    expect(ops.plan.peak).toBeLessThanOrEqual(composed.plan.peak);
  });
});

// ---------------------------------------------------------------------------------------------
// poison: a VJP reads only what the plan keeps

describe('poison: after the forward, NaN in every byte the plan does not keep for backward changes nothing', () => {
  let gpu: Gpu;
  beforeAll(async () => {
    gpu = await acquireGpu();
  });

  it.each([
    ['llama', 'lora-fa'],
    ['llama', 'full'],
    ['encoder', 'lora'],
  ] as const)('toy %s, %s: loss and updated parameters bit for bit', async (name, mode) => {
    const { model, graph } = await toyModel(name);
    const opt = { kind: 'sgd' as const };
    const c = compileTraining(graph, { mode, lora: { rank: 2, alpha: 4, targets: model.def.defaultTargets!, modulesToSave: model.def.modulesToSave }, optimizer: opt });
    const align = gpu.limits.minStorageBufferOffsetAlignment;
    const plan = planMemory(c.step!, { limits: { ...LIMIT_PRESETS.webgpu, alignment: align }, gradients: c.gradients });
    // Unfused: a fused group may run forward members at a backward position (fuse.ts rule 4 keeps
    // their operands for it), which is the kernel plan's business, not what a VJP reads.
    const kp = buildKernelPlan(c.step!, plan, { maxWorkgroupsPerDimension: gpu.limits.maxComputeWorkgroupsPerDimension, subgroupSize: gpu.subgroupSize, fuse: false });
    const feeds = { ...feedsFor(c.step!, 5, intBoundsFor(model.def.configs[model.def.defaultConfig!] as never)), ...optimizerFeeds(opt, 0.1, 1) };
    const init = new Map([...runReference(c.forward, { feeds, seed: 9 }).params].map(([k, v]) => [k, { shape: v.shape, data: deviceValues(v.data, 'f32') }]));
    const run = async (p: KernelPlan) => {
      const runner = await StepRunner.create(p, gpu);
      try {
        runner.writeParams(init);
        const loss = await runner.step(feeds);
        return { loss, params: await runner.readParams() };
      } finally {
        runner.destroy();
      }
    };
    const clean = await run(kp);
    expect(Number.isFinite(clean.loss)).toBe(true);
    const dirty = await run(poisoned(kp, plan, align).kp);
    expect(dirty.loss).toBe(clean.loss);
    for (const [n, v] of clean.params) expect(Array.from(dirty.params.get(n)!), n).toEqual(Array.from(v));
    // Teeth: poisoning what cross-entropy keeps (its stats) does reach the parameters.
    const stats = plan.tensors.find((t) => t.name === 'cross_entropy.stats')!;
    expect(stats.category).toBe('saved');
    const bitten = await run(poisoned(kp, plan, align, new Set([stats.id])).kp);
    expect([...bitten.params.values()].some((v) => v.some(Number.isNaN))).toBe(true);
  }, 300_000);
});
