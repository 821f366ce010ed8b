// The fused attention op against the composition it replaces (b.attentionComposed), in float64:
// forward and gradients on random shapes (grouped-query, causal, key masks); each backward op's
// reference against its piece of the composition's gradient; rows of padding; what the forward
// keeps for backward (in the IR and in the memory plan). On the GPU: a step whose freed bytes are
// poisoned with NaN between forward and backward gives the same gradients, bit for bit.
import fc from 'fast-check';
import { beforeAll, describe, expect, it } from 'vitest';
import { buildKernelPlan } from '../src/codegen/kernel-plan.ts';
import { Builder } from '../src/ir/builder.ts';
import { OPS } from '../src/ir/ops.ts';
import { numel, type Graph, type Value } from '../src/ir/types.ts';
import { L_COLUMNS } from '../src/ir/attention.ts';
import { verify } from '../src/ir/verify.ts';
import { autodiff, gradName } from '../src/passes/autodiff.ts';
import { compileTraining } from '../src/passes/compile.ts';
import { LIMIT_PRESETS, planMemory } from '../src/passes/memory-plan.ts';
import { acquireGpu, type Gpu } from '../src/runtime/gpu.ts';
import { StepRunner } from '../src/runtime/executor.ts';
import { runReference } from '../src/runtime/reference.ts';
import { feedsFor as modelFeeds, intBoundsFor, modelFiles, paramsWithRandomB, poisoned, property, sample, toyConfigName, toyModel } from './helpers.ts';

interface Shape {
  readonly b: number;
  readonly h: number;
  readonly hkv: number;
  readonly sq: number;
  readonly sk: number;
  readonly dk: number;
  readonly dv: number;
  readonly causal: boolean;
  readonly masked: boolean;
  readonly seed: number;
}

const shapeArb: fc.Arbitrary<Shape> = fc
  .record({
    b: fc.integer({ min: 1, max: 2 }),
    hkv: fc.integer({ min: 1, max: 2 }),
    ratio: fc.constantFrom(1, 2, 4),
    sq: fc.integer({ min: 1, max: 9 }),
    sk: fc.integer({ min: 1, max: 9 }),
    dk: fc.integer({ min: 1, max: 20 }),
    dv: fc.integer({ min: 1, max: 20 }),
    causal: fc.boolean(),
    masked: fc.boolean(),
    seed: fc.integer({ min: 0, max: 0x7fffffff }),
  })
  .map(({ ratio, ...r }) => ({ ...r, h: r.hkv * ratio, sk: r.causal ? r.sq : r.sk }));

/**
 * Feeds for q, k, v, the mask and the output cotangent c. With `realKey`, every query has a real
 * key it may see (key 0 is real when causal); otherwise whole rows of padding occur too.
 */
function feedsFor(s: Shape, realKey: boolean): Record<string, Float64Array> {
  const f: Record<string, Float64Array> = {
    q: sample(s.b * s.h * s.sq * s.dk, { kind: 'real' }, s.seed + 1),
    k: sample(s.b * s.hkv * s.sk * s.dk, { kind: 'real' }, s.seed + 2),
    v: sample(s.b * s.hkv * s.sk * s.dv, { kind: 'real' }, s.seed + 3),
    c: sample(s.b * s.h * s.sq * s.dv, { kind: 'real' }, s.seed + 4),
  };
  if (s.masked) {
    const m = sample(s.b * s.sk, { kind: 'mask', row: s.sk }, s.seed + 5);
    for (let r = 0; r < s.b; r++) {
      if (realKey && s.causal) m[r * s.sk] = 1;
      if (!realKey && r === 0) m.fill(0, 0, s.sk);
    }
    f.mask = m;
  }
  return f;
}

/** loss = Σ attention(q, k, v)·c, fused or composed; gradients of q, k, v. */
function run(s: Shape, feeds: Record<string, Float64Array>, composed: boolean) {
  const b = new Builder({ name: composed ? 'composed' : 'fused', attention: 'fused' });
  const q = b.input('q', [s.b, s.h, s.sq, s.dk]);
  const k = b.input('k', [s.b, s.hkv, s.sk, s.dk]);
  const v = b.input('v', [s.b, s.hkv, s.sk, s.dv]);
  const keyMask = s.masked ? b.input('mask', [s.b, s.sk]) : undefined;
  const o = (composed ? b.attentionComposed : b.attention).call(b, q, k, v, { causal: s.causal, keyMask });
  b.output('o', o);
  b.loss(b.sum(b.mul(o, b.input('c', o.type.shape))));
  const { graph } = autodiff(verify(b.build()), { wrt: [q, k, v] });
  verify(graph);
  const out = runReference(graph, { feeds }).outputs;
  return { graph, o: out.o.data, dq: out[gradName('q')].data, dk: out[gradName('k')].data, dv: out[gradName('v')].data };
}

function expectNear(got: ArrayLike<number>, want: ArrayLike<number>, what: string, tol = 1e-12): void {
  expect(got.length, what).toBe(want.length);
  let top = 0;
  for (let i = 0; i < want.length; i++) top = Math.max(top, Math.abs(want[i]));
  for (let i = 0; i < want.length; i++) {
    if (!(Math.abs(got[i] - want[i]) <= tol * (1 + top))) throw new Error(`${what}[${i}]: ${got[i]} vs ${want[i]} (max |x| ${top})`);
  }
}

const describeShape = (s: Shape) => JSON.stringify(s);

describe('fused attention equals the composition (float64)', () => {
  it('forward and the gradients of q, k, v, where every query has a real key', () => {
    property('attention/fused=composed', shapeArb, (s) => {
      const feeds = feedsFor(s, true);
      const f = run(s, feeds, false);
      const c = run(s, feeds, true);
      for (const key of ['o', 'dq', 'dk', 'dv'] as const) expectNear(f[key], c[key], `${describeShape(s)} ${key}`);
    });
  });

  it('rows whose every key is padding (not causal): both average the values uniformly, no gradient to q, k', () => {
    property('attention/padding-rows', shapeArb.map((s) => ({ ...s, masked: true, causal: false })), (s) => {
      const feeds = feedsFor(s, false);
      const f = run(s, feeds, false);
      const c = run(s, feeds, true);
      for (const key of ['o', 'dq', 'dk', 'dv'] as const) expectNear(f[key], c[key], `${describeShape(s)} ${key}`);
    });
  });

  it('causal rows whose every allowed key is padding average the keys j ≤ i (not −1e9 keys past i, as the composition)', () => {
    const s: Shape = { b: 1, h: 1, hkv: 1, sq: 3, sk: 3, dk: 2, dv: 1, causal: true, masked: true, seed: 1 };
    const feeds: Record<string, Float64Array> = { ...feedsFor(s, true), v: Float64Array.of(3, 6, 12), mask: Float64Array.of(0, 0, 0) };
    const f = run(s, feeds, false);
    expectNear(f.o, [3, 4.5, 7], 'fused');
    expectNear(run(s, feeds, true).o, [7, 7, 7], 'composed');
    // dv = Σ_i P_ij·c_i with P_ij = 1/(i+1) for j ≤ i; q and k get nothing from padding.
    const [c0, c1, c2] = feeds.c;
    expectNear(f.dv, [c0 + c1 / 2 + c2 / 3, c1 / 2 + c2 / 3, c2 / 3], 'dv');
    expect([...f.dq, ...f.dk].every((x) => x === 0)).toBe(true);
  });
});

describe('whole models: the fused op and the composition give the same loss and gradients (float64)', () => {
  it.each(modelFiles())('%s (toy config, LoRA-FA and full)', async (name) => {
    const fused = await toyModel(name, undefined, { attention: 'fused' });
    const config = toyConfigName(fused.model.def);
    const m = fused.model;
    const graphs = {
      fused: (await toyModel(name, config, { attention: 'fused' })).graph,
      composed: (await toyModel(name, config, { attention: 'composed' })).graph,
    };
    const hasAttention = graphs.fused.nodes.some((n) => n.op === 'attention');
    if (!hasAttention) return; // the MLP
    expect(graphs.composed.nodes.some((n) => n.op === 'attention')).toBe(false);
    for (const mode of ['lora-fa', 'full'] as const) {
      const compile = (g: Graph) => compileTraining(g, { mode, lora: { rank: 2, alpha: 4, targets: m.def.defaultTargets ?? [], modulesToSave: m.def.modulesToSave } });
      const [cf, cc] = [compile(graphs.fused), compile(graphs.composed)];
      // The same feeds and parameters (by name) for both: seeds follow value ids, which differ.
      const feeds = modelFeeds(cc.joint, 11, intBoundsFor(m.def.configs[config]));
      const params = paramsWithRandomB(cc.forward, 11);
      const a = runReference(cf.joint, { feeds, params }).outputs;
      const b = runReference(cc.joint, { feeds, params }).outputs;
      const keys = Object.keys(b).filter((k) => k === 'loss' || k.startsWith('grad.'));
      expect(Object.keys(a).filter((k) => k === 'loss' || k.startsWith('grad.')).sort()).toEqual([...keys].sort());
      for (const k of keys) expectNear(a[k].data, b[k].data, `${name} ${mode} ${k}`, 1e-10);
    }
  });
});

describe('each backward op’s reference is its piece of the composition’s gradient', () => {
  it('delta = rowsum(dO∘O) − ctL, dq, and dk | dv (summed over the query heads of each kv head)', () => {
    property('attention/backward-pieces', shapeArb, (s) => {
      const feeds = feedsFor(s, true);
      const c = run(s, feeds, true);
      const attrs = { causal: s.causal, scale: 1 / Math.sqrt(s.dk), masked: s.masked };
      const t = (shape: number[], data: Float64Array) => ({ shape, data });
      const ins = [
        t([s.b, s.h, s.sq, s.dk], feeds.q),
        t([s.b, s.hkv, s.sk, s.dk], feeds.k),
        t([s.b, s.hkv, s.sk, s.dv], feeds.v),
        ...(s.masked ? [t([s.b, s.sk], feeds.mask)] : []),
      ];
      const w = s.dv + L_COLUMNS;
      const packedShape = [s.b, s.h, s.sq, w];
      const packed = OPS.attention.ref(ins, attrs, { dtype: 'f32', shape: packedShape });
      const rows = s.b * s.h * s.sq;
      // L's low part is 0 in float64 (it holds what half-precision storage rounds off L).
      for (let r = 0; r < rows; r++) expect(packed[r * w + s.dv + 1]).toBe(0);
      // The cotangent of the packed output: c on O, a random ctL on L, and a random one on L's
      // low part, which is no function of the inputs and must be ignored.
      const ctL = sample(rows, { kind: 'real' }, s.seed + 9);
      const ctLo = sample(rows, { kind: 'real' }, s.seed + 10);
      const ct = new Float64Array(rows * w);
      for (let r = 0; r < rows; r++) {
        ct.set(feeds.c.subarray(r * s.dv, (r + 1) * s.dv), r * w);
        ct[r * w + s.dv] = ctL[r];
        ct[r * w + s.dv + 1] = ctLo[r];
      }
      const delta = OPS.attention_delta.ref([t(packedShape, packed), t(packedShape, ct)], {}, { dtype: 'f32', shape: [s.b, s.h, s.sq] });
      const want = new Float64Array(rows).map((_, r) => {
        let d = 0;
        for (let j = 0; j < s.dv; j++) d += feeds.c[r * s.dv + j] * c.o[r * s.dv + j];
        return d - ctL[r];
      });
      expectNear(delta, want, 'delta');
      // dq, dk, dv at ctL = 0 are the composition's gradients of Σ O·c.
      const ct0 = ct.map((x, i) => (i % w === s.dv ? 0 : x));
      const delta0 = delta.map((x, r) => x + ctL[r]);
      const args = [...ins, t(packedShape, packed), t(packedShape, ct0), t([s.b, s.h, s.sq], delta0)];
      expectNear(OPS.attention_dq.ref(args, attrs, { dtype: 'f32', shape: [s.b, s.h, s.sq, s.dk] }), c.dq, 'dq');
      const dkv = OPS.attention_dkv.ref(args, attrs, { dtype: 'f32', shape: [s.b, s.hkv, s.sk, s.dk + s.dv] });
      const krows = s.b * s.hkv * s.sk;
      const dk = new Float64Array(krows * s.dk);
      const dv = new Float64Array(krows * s.dv);
      for (let r = 0; r < krows; r++) {
        dk.set(dkv.subarray(r * (s.dk + s.dv), r * (s.dk + s.dv) + s.dk), r * s.dk);
        dv.set(dkv.subarray(r * (s.dk + s.dv) + s.dk, (r + 1) * (s.dk + s.dv)), r * s.dv);
      }
      expectNear(dk, c.dk, 'dk');
      expectNear(dv, c.dv, 'dv');
    });
  });
});

describe('what the forward keeps', () => {
  const s: Shape = { b: 2, h: 4, hkv: 2, sq: 6, sk: 6, dk: 3, dv: 5, causal: true, masked: true, seed: 3 };

  it('the backward reads q, k, v, the mask and the packed output, and nothing else of the forward', () => {
    const { graph } = run(s, feedsFor(s, true), false);
    const forward = new Map(graph.nodes.filter((n) => n.phase === 'forward').map((n) => [n.out.id, n]));
    const inputs = new Map(graph.inputs.map((i) => [i.value.id, i.value.name]));
    const read = new Set<string>();
    for (const n of graph.nodes.filter((m) => m.phase === 'backward')) {
      for (const x of n.inputs) {
        if (inputs.has(x.id)) read.add(inputs.get(x.id)!);
        else if (forward.has(x.id)) read.add(forward.get(x.id)!.op);
      }
    }
    // c is read by the loss's own VJP (d(o·c)/do = c); 'attention' is the packed output.
    expect([...read].sort()).toEqual(['attention', 'c', 'k', 'mask', 'q', 'v']);
    const ops = graph.nodes.filter((n) => n.phase === 'backward').map((n) => n.op);
    expect(ops.filter((op) => op.startsWith('attention'))).toEqual(['attention_delta', 'attention_dq', 'attention_dkv']);
  });

  it('emits no dq kernel when q needs no gradient, and no dk/dv kernel when only q does', () => {
    const b = new Builder({ attention: 'fused' });
    const q = b.input('q', [1, 2, 4, 3]);
    const k = b.input('k', [1, 1, 4, 3]);
    const v = b.input('v', [1, 1, 4, 3]);
    b.loss(b.sum(b.attention(q, k, v, { causal: true })));
    const g = verify(b.build());
    const ops = (wrt: Value[]) => autodiff(g, { wrt }).graph.nodes.filter((n) => n.phase === 'backward' && n.op.startsWith('attention')).map((n) => n.op);
    expect(ops([k, v])).toEqual(['attention_delta', 'attention_dkv']);
    expect(ops([q])).toEqual(['attention_delta', 'attention_dq']);
  });

  it('the memory plan saves no [b,h,s,s] tensor, and fewer bytes than the composition', () => {
    const saved = (composed: boolean) => {
      const b = new Builder({ name: 'attn', attention: 'fused' });
      const x = b.input('x', [2, 64, 32]);
      const split = (name: string, heads: number) => b.transpose(b.reshape(b.linear(x, name, heads * 8, { bias: false }), [2, 64, heads, 8]), [0, 2, 1, 3]);
      const o = (composed ? b.attentionComposed : b.attention).call(b, split('q', 4), split('k', 2), split('v', 2), { causal: true });
      b.loss(b.mean(b.mul(o, o)));
      const c = compileTraining(b.build(), { mode: 'full', optimizer: { kind: 'sgd' } });
      const plan = planMemory(c.step!, { gradients: c.gradients });
      return plan.tensors.filter((t) => t.category === 'saved');
    };
    const fused = saved(false);
    const composed = saved(true);
    expect(fused.some((t) => t.shape.length === 4 && t.shape[2] === 64 && t.shape[3] === 64)).toBe(false);
    expect(composed.some((t) => t.shape.length === 4 && t.shape[2] === 64 && t.shape[3] === 64)).toBe(true);
    const bytes = (ts: typeof fused) => ts.reduce((a, t) => a + t.bytes, 0);
    expect(bytes(fused)).toBeLessThan(bytes(composed));
  });
});

// ---------------------------------------------------------------------------------------------
// GPU: poison every byte the plan does not keep for backward, between forward and backward.

describe('GPU: a step whose freed bytes are NaN between forward and backward', () => {
  let gpu: Gpu;
  beforeAll(async () => {
    gpu = await acquireGpu();
  });

  /** Two heads per kv head, causal with a key mask, seq 70 (two query blocks, several key tiles). */
  function model(composed: boolean): Graph {
    const b = new Builder({ name: 'poison', attention: 'fused' });
    const [batch, seq, d] = [2, 70, 16];
    const x = b.input('x', [batch * seq, d]);
    const mask = b.input('attention_mask', [batch, seq]);
    const q = b.splitHeads(b.linear(x, 'q', 4 * 8), batch, seq, 4);
    const k = b.splitHeads(b.linear(x, 'k', 2 * 8), batch, seq, 2);
    const v = b.splitHeads(b.linear(x, 'v', 2 * 8), batch, seq, 2);
    const o = (composed ? b.attentionComposed : b.attention).call(b, q, k, v, { causal: true, keyMask: mask });
    const y = b.linear(b.mergeHeads(o), 'o', d);
    b.loss(b.mean(b.mul(y, y)));
    return verify(b.build());
  }

  async function gradients(g: Graph, poison: 'none' | 'freed' | 'freed+packed') {
    const c = compileTraining(g, { mode: 'full' });
    const plan = planMemory(c.joint, { limits: { ...LIMIT_PRESETS.webgpu, alignment: gpu.limits.minStorageBufferOffsetAlignment } });
    const kp = buildKernelPlan(c.joint, plan, { fuse: false, maxWorkgroupsPerDimension: gpu.limits.maxComputeWorkgroupsPerDimension, subgroupSize: gpu.subgroupSize });
    const packed = plan.tensors.find((t) => /sdpa\.packed$/.test(t.name));
    const slicedOut = plan.tensors.find((t) => /sdpa\.out$/.test(t.name));
    // NaN in every arena byte the plan does not keep across the forward/backward boundary (and,
    // for the teeth, in the packed output too), written by dispatches inserted where backward starts.
    const dirty = poison === 'none' ? undefined : poisoned(kp, plan, gpu.limits.minStorageBufferOffsetAlignment, new Set(poison === 'freed+packed' && packed ? [packed.id] : []));
    const holes = dirty?.gaps ?? [];
    const runner = await StepRunner.create(dirty?.kp ?? kp, gpu);
    try {
      const feeds: Record<string, Float64Array> = {
        x: sample(2 * 70 * 16, { kind: 'real' }, 5),
        attention_mask: sample(2 * 70, { kind: 'mask', row: 70 }, 6).map((m, i) => (i % 70 === 0 ? 1 : m)),
      };
      const params = new Map(c.joint.params.map((p, i) => [p.value.name, { data: sample(numel(p.value.type.shape), { kind: 'real' }, 10 + i).map((x) => x / 4) }]));
      runner.writeParams(params);
      await runner.step(feeds);
      const grads = new Map<string, Float32Array>();
      for (const name of Object.keys(kp.outputs).filter((o) => o.startsWith('grad.'))) grads.set(name, (await runner.readOutput(name)) as Float32Array);
      const poisonedBytes = holes.reduce((a, h) => a + h.bytes, 0);
      const covers = (t: typeof packed) => t !== undefined && holes.some((h) => h.buffer === t.buffer && h.offset <= t.offset && t.offset + t.bytes <= h.offset + h.bytes);
      return { grads, poisoned: poisonedBytes, before: dirty?.at ?? 0, dispatches: kp.dispatches.length, slicedOutPoisoned: covers(slicedOut) };
    } finally {
      runner.destroy();
    }
  }

  it('fused attention: the gradients are unchanged, bit for bit', async () => {
    const g = model(false);
    const clean = await gradients(g, 'none');
    const dirty = await gradients(g, 'freed');
    expect(dirty.before).toBeGreaterThan(0);
    expect(dirty.before).toBeLessThan(dirty.dispatches);
    expect(dirty.poisoned).toBeGreaterThan(0);
    // The O slice (a forward copy of the packed output) is not kept: its bytes are poisoned.
    expect(dirty.slicedOutPoisoned).toBe(true);
    expect([...clean.grads.keys()].sort()).toEqual(['grad.k.bias', 'grad.k.weight', 'grad.o.bias', 'grad.o.weight', 'grad.q.bias', 'grad.q.weight', 'grad.v.bias', 'grad.v.weight']);
    for (const [name, want] of clean.grads) {
      expect(want.every(Number.isFinite), name).toBe(true);
      expect(Array.from(dirty.grads.get(name)!), name).toEqual(Array.from(want));
    }
  });

  it('teeth: a backward that read a poisoned tensor (here the packed output, poisoned too) gets NaN gradients', async () => {
    const g = model(false);
    const dirty = await gradients(g, 'freed+packed');
    for (const name of ['grad.q.weight', 'grad.k.weight', 'grad.v.weight']) expect(dirty.grads.get(name)!.some(Number.isNaN), name).toBe(true);
  });
});
