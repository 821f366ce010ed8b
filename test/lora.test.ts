// The lora pass: target resolution (PEFT's target_modules semantics), adapter shapes and inits,
// the scale (alpha/r, rsLoRA's alpha/√r), the forward it computes, what it freezes, and its errors.
import { describe, expect, test } from 'vitest';
import { Builder } from '../src/ir/builder.ts';
import { LorafaError } from '../src/ir/errors.ts';
import type { Tensor } from '../src/ir/shape.ts';
import { numel, type Graph, type LoraAdapter } from '../src/ir/types.ts';
import { verify } from '../src/ir/verify.ts';
import { applyLora, checkModulesToSave, inModulesToSave, type LoraOptions } from '../src/passes/lora.ts';
import { initParams, rng } from '../src/runtime/init.ts';
import { runReference } from '../src/runtime/reference.ts';
import { feedsFor, intBoundsFor, modelFiles, paramsWithRandomB, toyConfigName, toyModel } from './helpers.ts';

const lora = (g: Graph, opts: Partial<LoraOptions> & Pick<LoraOptions, 'targets'>) =>
  applyLora(g, { rank: 2, alpha: 4, ...opts });
const modules = (g: Graph) => g.adapters.map((a) => a.module);

function thrown(fn: () => unknown): LorafaError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(LorafaError);
    return e as LorafaError;
  }
  throw new Error('expected an error, none was thrown');
}

/** Layers fc1, xfc1 and blk.fc1: `fc1` must match fc1 and blk.fc1 but never xfc1. */
function nameGraph(): Graph {
  const b = new Builder({ name: 'names' });
  const x = b.input('x', [2, 4]);
  const h1 = b.linear(x, 'fc1', 4);
  const h2 = b.linear(h1, 'xfc1', 4);
  const h3 = b.scope('blk', () => b.linear(h2, 'fc1', 3));
  b.loss(b.mean(h3));
  return b.build();
}

describe('targets', async () => {
  const { graph: llama } = await toyModel('llama', 'toy');
  const { graph: mlp } = await toyModel('mlp', 'toy');

  test('a list entry matches a module by its exact name or a `.suffix`', () => {
    expect(modules(lora(llama, { targets: ['q_proj'] }).graph)).toEqual(['layers.0.self_attn.q_proj', 'layers.1.self_attn.q_proj']);
    expect(modules(lora(llama, { targets: ['layers.1.self_attn.v_proj'] }).graph)).toEqual(['layers.1.self_attn.v_proj']);
    expect(modules(lora(llama, { targets: ['self_attn.v_proj', 'mlp.up_proj'] }).graph)).toEqual([
      'layers.0.self_attn.v_proj',
      'layers.0.mlp.up_proj',
      'layers.1.self_attn.v_proj',
      'layers.1.mlp.up_proj',
    ]);
    expect(modules(lora(llama, { targets: ['lm_head'] }).graph)).toEqual(['lm_head']);
    // Listed twice, adapted once.
    expect(modules(lora(llama, { targets: ['q_proj', 'layers.0.self_attn.q_proj'] }).graph)).toHaveLength(2);
  });

  test('a suffix matches only at a `.` boundary', () => {
    expect(modules(lora(nameGraph(), { targets: ['fc1'] }).graph)).toEqual(['fc1', 'blk.fc1']);
    expect(modules(lora(nameGraph(), { targets: ['xfc1'] }).graph)).toEqual(['xfc1']);
    const e = thrown(() => lora(llama, { targets: ['proj'] }));
    expect(e.message).toContain('unknown LoRA target "proj"');
    expect(e.message).toContain('q_proj');
  });

  test('all-linear (PEFT\'s meaning): every linear layer but the output layer and modules_to_save', async () => {
    // The causal LM: everything but lm_head, which makes the logits.
    const lm = modules(lora(llama, { targets: ['all-linear'] }).graph);
    expect(lm).toHaveLength(14);
    expect(lm).not.toContain('lm_head');
    // The classifier: everything but its head `score` (the output layer, and in modules_to_save).
    const { graph: cls } = await toyModel('llama', 'spam');
    const c = modules(lora(cls, { targets: ['all-linear'], modulesToSave: ['score'] }).graph);
    expect(c).toHaveLength(21);
    expect(c).not.toContain('score');
    // The MLP with a bias on its output layer: the add after fc3's x·W makes the logits.
    expect(modules(lora(mlp, { targets: ['all-linear'] }).graph)).toEqual(['fc1', 'fc2']);
    // RoBERTa's head: classifier.dense is in modules_to_save, classifier.out_proj the output layer.
    const { graph: roberta } = await toyModel('bert', 'roberta-toy');
    const r = modules(lora(roberta, { targets: ['all-linear'], modulesToSave: ['classifier'] }).graph);
    expect(r.filter((n) => n.startsWith('classifier'))).toEqual([]);
    expect(r).toHaveLength(2 * 6);
    expect(thrown(() => lora(llama, { targets: ['all-linear', 'q_proj'] })).message).toContain('"all-linear" already takes every linear layer');
  });

  test('a RegExp must match the whole module name', () => {
    expect(modules(lora(llama, { targets: /.*\.q_proj/ }).graph)).toEqual(['layers.0.self_attn.q_proj', 'layers.1.self_attn.q_proj']);
    expect(modules(lora(llama, { targets: /layers\.0\..*/ }).graph)).toHaveLength(7);
    expect(modules(lora(mlp, { targets: /fc[13]/ }).graph)).toEqual(['fc1', 'fc3']);
    // A global flag must not make matching stateful (RegExp.test with /g advances lastIndex).
    // (layer 0's seven linears are consecutive: a stateful /g would skip every second one).
    expect(modules(lora(llama, { targets: /layers\.0\..*/g }).graph)).toHaveLength(7);
    const e = thrown(() => lora(llama, { targets: /q_proj/ }));
    expect(e.message).toContain('matches no linear layer');
    expect(e.message).toContain('q_proj ×2');
    expect(thrown(() => lora(mlp, { targets: /fc/ })).message).toContain('matches no linear layer');
  });
});

describe('adapters', async () => {
  const { graph: mlp } = await toyModel('mlp', 'toy');

  test('A is [in, r] kaiming-uniform(a=√5, fan_in=in), B is [r, out] zeros, both trainable', () => {
    const r = 3;
    const { graph } = lora(mlp, { rank: r, targets: ['fc1', 'fc2', 'fc3'] });
    verify(graph, 'lora');
    const values = initParams(graph, { seed: 11 });
    expect(graph.adapters).toHaveLength(3);
    for (const a of graph.adapters) {
      const layer = mlp.linears.find((l) => l.name === a.module)!;
      const A = graph.params.find((p) => p.value.name === a.A)!;
      const B = graph.params.find((p) => p.value.name === a.B)!;
      expect(a.A).toBe(`${a.module}.lora_A`);
      expect(a.B).toBe(`${a.module}.lora_B`);
      expect(A.value.type).toEqual({ dtype: 'f32', shape: [layer.inFeatures, r] });
      expect(B.value.type).toEqual({ dtype: 'f32', shape: [r, layer.outFeatures] });
      expect(A.init).toEqual({ kind: 'kaiming_uniform', a: Math.sqrt(5), fanIn: layer.inFeatures });
      expect(B.init).toEqual({ kind: 'zeros' });
      expect([A.role, A.trainable, B.role, B.trainable]).toEqual(['lora_A', true, 'lora_B', true]);
      // kaiming_uniform(a=√5): bound = √(6 / ((1 + 5)·fan_in)) = 1/√in, as PEFT's nn.init call.
      const bound = 1 / Math.sqrt(layer.inFeatures);
      const av = values.get(a.A)!.data;
      expect(Math.max(...av.map(Math.abs))).toBeLessThanOrEqual(bound);
      expect(Math.max(...av.map(Math.abs))).toBeGreaterThan(0.5 * bound);
      expect(values.get(a.B)!.data.every((v) => v === 0)).toBe(true);
      expect(a.rank).toBe(r);
    }
  });

  test.each([
    [false, 6 / 4],
    [true, 6 / 2],
  ])('rslora=%s: the scale constant is alpha/r or alpha/√r (rank 4, alpha 6)', (rslora, scale) => {
    const { graph } = applyLora(mlp, { rank: 4, alpha: 6, rslora, targets: ['fc1', 'fc2'] });
    for (const a of graph.adapters) {
      expect(a.scale).toBe(scale);
      expect(a.alpha).toBe(6);
      // s multiplies the r-wide x·A: the node behind `projected` is mul(x·A, fill(s)).
      const sxa = graph.nodes.find((n) => n.out.id === a.projected)!;
      expect(sxa.op).toBe('mul');
      expect(sxa.out.type.shape).toEqual([4, 4]);
      const xa = graph.nodes.find((n) => n.out.id === sxa.inputs[0].id)!;
      expect(xa.op).toBe('matmul');
      expect(xa.inputs.map((v) => v.id)).toEqual([a.input, graph.params.find((p) => p.value.name === a.A)!.value.id]);
      const c = graph.nodes.find((n) => n.out.id === sxa.inputs[1].id)!;
      expect(c.op).toBe('fill');
      expect(c.attrs.value).toBe(scale);
    }
  });
});

/** y = a(x); z = b(y): adapting `a` must change what `b` reads. */
function twoLayer(): Graph {
  const b = new Builder({ name: 'two' });
  const x = b.input('x', [3, 5]);
  const y = b.linear(x, 'a', 4);
  const z = b.linear(y, 'b', 2, { bias: false });
  b.output('y', y);
  b.output('z', z);
  b.loss(b.mean(z));
  return b.build();
}

/** Row-major [m, k]·[k, n]. */
function mm(a: Tensor, b: Tensor): Tensor {
  const [m, k] = a.shape;
  const n = b.shape[1];
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) for (let p = 0; p < k; p++) out[i * n + j] += a.data[i * k + p] * b.data[p * n + j];
  return { shape: [m, n], data: out };
}

describe('forward', () => {
  test.each([false, true])('rslora=%s: with random B, y = x·W + s·(x·A)·B + bias, and the next layer reads that y', (rslora) => {
    const base = twoLayer();
    const rank = 2;
    const alpha = 3;
    const { graph } = applyLora(base, { rank, alpha, rslora, targets: ['a'] });
    const s = rslora ? alpha / Math.sqrt(rank) : alpha / rank;
    const u = rng(99);
    const params = new Map<string, Tensor>();
    for (const p of graph.params) {
      params.set(p.value.name, { shape: p.value.type.shape, data: new Float64Array(numel(p.value.type.shape)).map(() => 2 * u() - 1) });
    }
    const feeds = feedsFor(graph, 5, () => 1);
    const out = runReference(graph, { feeds, params }).outputs;

    const x = { shape: [3, 5], data: Float64Array.from(feeds.x) };
    const P = (n: string) => params.get(n)!;
    const xw = mm(x, P('a.weight'));
    const delta = mm(mm(x, P('a.lora_A')), P('a.lora_B'));
    const bias = P('a.bias').data;
    const y = xw.data.map((v, i) => v + s * delta.data[i] + bias[i % 4]);
    const z = mm({ shape: [3, 4], data: y }, P('b.weight'));
    const worst = (a: ArrayLike<number>, b: ArrayLike<number>) => Math.max(...Array.from(a, (v, i) => Math.abs(v - b[i])));
    expect(worst(out.y.data, y)).toBeLessThan(1e-12);
    expect(worst(out.z.data, z.data)).toBeLessThan(1e-12);
    // The adapter term is not negligible: without it y would be off by far more than the tolerance.
    expect(worst(delta.data, new Float64Array(delta.data.length)) * s).toBeGreaterThan(1e-2);
  });

  test.each(modelFiles())('%s: with B at its zero init, LoRA changes no output, bit for bit', async (name) => {
    const { model } = await toyModel(name);
    const config = toyConfigName(model.def);
    const { graph } = await toyModel(name, config);
    const { graph: g } = applyLora(graph, { rank: 2, alpha: 4, targets: model.def.defaultTargets ?? [], modulesToSave: model.def.modulesToSave });
    const cfg = model.def.configs[config];
    const feeds = feedsFor(graph, 2, intBoundsFor(cfg));
    const params = initParams(g, { seed: 4 });
    const before = runReference(graph, { feeds, params }).outputs;
    const after = runReference(g, { feeds, params }).outputs;
    expect(Object.keys(after).sort()).toEqual(Object.keys(before).sort());
    for (const k of Object.keys(before)) {
      expect(after[k].shape).toEqual(before[k].shape);
      const diff = before[k].data.filter((v, i) => v !== after[k].data[i]);
      expect(diff, `output ${k}`).toHaveLength(0);
    }
    // …while a nonzero B does change them, so the comparison above is not vacuous.
    const randomB = runReference(g, { feeds, params: paramsWithRandomB(g, 4) }).outputs;
    expect(randomB.loss.data[0]).not.toBe(before.loss.data[0]);
  });
});

describe('freezing', async () => {
  const { graph: encoder } = await toyModel('encoder', 'toy');
  const { graph: llama } = await toyModel('llama', 'toy');
  const trainable = (g: Graph) => g.params.filter((p) => p.trainable).map((p) => p.value.name).sort();
  const adapterParams = (g: Graph) => g.adapters.flatMap((a: LoraAdapter) => [a.A, a.B]);

  test('every non-adapter parameter is frozen', () => {
    const { graph, report } = lora(llama, { targets: ['q_proj', 'v_proj'] });
    expect(trainable(graph)).toEqual(adapterParams(graph).sort());
    expect(report.trainable.slice().sort()).toEqual(trainable(graph));
    expect(report.frozen.slice().sort()).toEqual(graph.params.filter((p) => !p.trainable).map((p) => p.value.name).sort());
    expect(report.frozen.length).toBe(llama.params.length);
  });

  test('except modulesToSave, matched by name prefix at a `.` boundary', () => {
    const head = encoder.params.filter((p) => p.value.name.startsWith('classifier.')).map((p) => p.value.name);
    expect(head).toHaveLength(4);
    const all = lora(encoder, { targets: ['query', 'value'], modulesToSave: ['classifier'] }).graph;
    expect(trainable(all)).toEqual([...adapterParams(all), ...head].sort());
    const dense = lora(encoder, { targets: ['query', 'value'], modulesToSave: ['classifier.dense'] }).graph;
    expect(trainable(dense)).toEqual([...adapterParams(dense), 'classifier.dense.bias', 'classifier.dense.weight'].sort());
    const partial = lora(encoder, { targets: ['query', 'value'], modulesToSave: ['class'] }).graph;
    expect(trainable(partial)).toEqual(adapterParams(partial).sort());
  });

  test('a modulesToSave entry names a module or a `.suffix` of one, in every layer, as PEFT matches it', () => {
    // q_proj in modules_to_save: every layer's q_proj is trained in full, and not adapted.
    const { graph } = lora(llama, { targets: ['all-linear'], modulesToSave: ['q_proj', 'embed_tokens'] });
    const q = llama.params.filter((p) => /^layers\.\d+\.self_attn\.q_proj\./.test(p.value.name)).map((p) => p.value.name);
    expect(q).toHaveLength(2);
    expect(trainable(graph)).toEqual([...adapterParams(graph), ...q, 'embed_tokens.weight'].sort());
    expect(modules(graph).filter((m) => m.endsWith('q_proj'))).toEqual([]);
    // A module above the linears (`mlp` ends layers.N.mlp): all-linear leaves its linears to be
    // trained in full, never both adapted and trained.
    const mlpSaved = lora(llama, { targets: ['all-linear'], modulesToSave: ['mlp'] }).graph;
    expect(modules(mlpSaved).filter((m) => m.includes('.mlp.'))).toEqual([]);
    expect(trainable(mlpSaved).filter((n) => n.includes('.mlp.'))).toHaveLength(2 * 3);
    // Only at a `.` boundary: `proj` is no module's name or suffix.
    const none = lora(llama, { targets: ['v_proj'], modulesToSave: ['proj', 'tokens'] }).graph;
    expect(trainable(none)).toEqual(adapterParams(none).sort());
    expect(inModulesToSave('layers.0.self_attn.q_proj.weight', ['self_attn.q_proj'])).toBe(true);
    expect(inModulesToSave('layers.0.self_attn.q_proj.weight', ['layers.0'])).toBe(true);
    expect(inModulesToSave('layers.0.self_attn.q_proj.weight', ['layers.1'])).toBe(false);
    expect(inModulesToSave('layers.10.mlp.up_proj.weight', ['0.mlp'])).toBe(false);
  });

  test('checkModulesToSave: an entry that trains nothing is an error listing the modules, by layer', () => {
    expect(() => checkModulesToSave(llama, ['embed_tokens', 'q_proj', 'layers.1', 'norm'], '--modules-to-save')).not.toThrow();
    const e = thrown(() => checkModulesToSave(llama, ['embed_tokens', 'embed'], '--modules-to-save'));
    expect(e.message).toContain('--modules-to-save: modules_to_save entry "embed" names no module with weights in llama');
    expect(e.message).toContain('embed_tokens, layers.N.input_layernorm, layers.N.self_attn.q_proj');
    expect(e.message).not.toContain('layers.1.');
    // A module holding only buffers (nothing to train) is no module with weights either.
    const buffers = llama.params.filter((p) => p.role === 'buffer').map((p) => p.value.name.split('.').slice(0, -1).join('.')).filter(Boolean);
    for (const b of new Set(buffers)) if (!llama.params.some((p) => p.role !== 'buffer' && p.value.name.startsWith(b + '.'))) expect(() => checkModulesToSave(llama, [b], 'x'), b).toThrow(/names no module with weights/);
  });

  test('buffers (rotary tables, causal mask) stay frozen even when named in modulesToSave', () => {
    const buffers = llama.params.filter((p) => p.role === 'buffer').map((p) => p.value.name);
    expect(buffers.length).toBeGreaterThan(0);
    const { graph } = lora(llama, { targets: ['q_proj'], modulesToSave: [...buffers, 'rope', 'norm'] });
    for (const p of graph.params.filter((q) => q.role === 'buffer')) expect(p.trainable, p.value.name).toBe(false);
    expect(graph.params.find((p) => p.value.name === 'norm.weight')!.trainable).toBe(true);
  });
});

describe('bad rank and alpha', async () => {
  const { graph: mlp } = await toyModel('mlp', 'toy');

  test.each([0, -2, 1.5, Number.NaN])('rank %s is rejected', (rank) => {
    const e = thrown(() => applyLora(mlp, { rank, alpha: 4, targets: ['fc1'] }));
    expect(e.message).toContain(`LoRA rank must be a positive integer, got ${rank}`);
    expect(e.message).toMatch(/\n {2}fix: \S/);
  });

  test('a rank above min(in, out) names the layer that is too small', () => {
    // fc1 is 12→16, fc2 16→16, fc3 16→3: rank 4 only breaks fc3.
    const e = thrown(() => applyLora(mlp, { rank: 4, alpha: 8, targets: ['fc1', 'fc2', 'fc3'] }));
    expect(e.message).toContain('LoRA rank 4 exceeds layer "fc3" (16→3)');
    expect(e.message).toContain('min(in, out) = 3');
    expect(e.message).toMatch(/fix: use a rank ≤ 3, or leave "fc3" out of the targets/);
    expect(e.message).not.toContain('"fc1"');
    // …and rank = min(in, out) is fine, as is a rank that only untargeted layers could not take.
    expect(applyLora(mlp, { rank: 3, alpha: 8, targets: ['fc1', 'fc2', 'fc3'] }).graph.adapters).toHaveLength(3);
    expect(applyLora(mlp, { rank: 12, alpha: 8, targets: ['fc1', 'fc2'] }).graph.adapters).toHaveLength(2);
    expect(thrown(() => applyLora(mlp, { rank: 13, alpha: 8, targets: ['fc1', 'fc2'] })).message).toContain('layer "fc1" (12→16)');
  });

  test.each([0, -1])('alpha %s is rejected', (alpha) => {
    const e = thrown(() => applyLora(mlp, { rank: 2, alpha, targets: ['fc1'] }));
    expect(e.message).toContain(`LoRA alpha must be positive, got ${alpha}`);
    expect(e.message).toMatch(/\n {2}fix: \S/);
  });
});
