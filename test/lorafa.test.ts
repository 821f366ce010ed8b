// LoRA-FA's promises, checked on every model in models/ and on random MLP-like graphs:
// - dB (and every other gradient both modes train) is the same as under LoRA;
// - A is frozen: no grad.<A> output and no backward node computing dA;
// - an adapted layer's full-rank input x is read by no backward node, unless another op's
//   gradient needs it (and then the report says which);
// - reports.pruned lists exactly those inputs, once per distinct tensor, with their bytes.
import fc from 'fast-check';
import { beforeAll, describe, expect, test } from 'vitest';
import type { LoadedModel } from '../src/model/load.ts';
import { Builder } from '../src/ir/builder.ts';
import { byteSize, fmtType, type Graph, type LoraAdapter, type Node, type Value } from '../src/ir/types.ts';
import type { ModelConfig } from '../src/model/define.ts';
import { compileTraining, type Compiled } from '../src/passes/compile.ts';
import type { LoraOptions } from '../src/passes/lora.ts';
import { adapterInputs, savedActivations } from '../src/passes/lora-fa.ts';
import { runReference } from '../src/runtime/reference.ts';
import { directional, feedsFor, intBoundsFor, modelFiles, paramsWithRandomB, property, toyConfigName, toyModel } from './helpers.ts';

// ---------------------------------------------------------------------------------------------
// shared checks

function compileBoth(graph: Graph, lora: LoraOptions): { lora: Compiled; fa: Compiled } {
  return {
    lora: compileTraining(graph, { mode: 'lora', lora, verify: true }),
    fa: compileTraining(graph, { mode: 'lora-fa', lora, verify: true }),
  };
}

const backwardNodes = (g: Graph) => g.nodes.filter((n) => n.phase !== 'forward');
const readersOf = (g: Graph, id: number) => backwardNodes(g).filter((n) => n.inputs.some((x) => x.id === id));
const gradNames = (g: Graph) => Object.keys(g.outputs).filter((k) => k.startsWith('grad.'));
const isGraphInput = (g: Graph, id: number) => g.inputs.some((i) => i.value.id === id);

/** The backward node that computes dA in the LoRA joint graph: the producer of output grad.<A>. */
function dANode(lora: Graph, a: LoraAdapter): Node {
  const v = lora.outputs[`grad.${a.A}`];
  const n = lora.nodes.find((m) => m.out === v);
  if (!n) throw new Error(`no node produces grad.${a.A}`);
  return n;
}

/** Same op, attributes, result type, name and first operand: the same product. */
function sameProduct(n: Node, m: Node): boolean {
  return (
    n.op === m.op &&
    JSON.stringify(n.attrs) === JSON.stringify(m.attrs) &&
    fmtType(n.out.type) === fmtType(m.out.type) &&
    n.out.name === m.out.name &&
    n.inputs[0]?.id === m.inputs[0]?.id
  );
}

/** Runs both joint graphs on the same (random-B) weights and data; gradients both train must agree. */
function expectSharedGradsEqual(
  c: { lora: Compiled; fa: Compiled },
  intBound: (input: string) => number,
  seed: number,
  nonzeroDB = true,
) {
  const feeds = feedsFor(c.lora.joint, seed, intBound);
  const params = paramsWithRandomB(c.lora.forward, seed);
  const lora = runReference(c.lora.joint, { feeds, params }).outputs;
  const fa = runReference(c.fa.joint, { feeds, params }).outputs;
  expect(fa.loss.data[0]).toBe(lora.loss.data[0]);
  const shared = gradNames(c.fa.joint);
  expect(shared.length).toBeGreaterThan(0);
  for (const k of shared) {
    expect(lora[k], k).toBeDefined();
    const a = fa[k].data;
    const b = lora[k].data;
    let worst = 0;
    let scale = 1;
    for (let i = 0; i < a.length; i++) {
      worst = Math.max(worst, Math.abs(a[i] - b[i]));
      scale = Math.max(scale, Math.abs(b[i]));
    }
    expect(worst, `${k}: LoRA-FA vs LoRA`).toBeLessThanOrEqual(1e-12 * scale);
  }
  // dB is not trivially zero (B is random, and every adapter reaches the loss). Random nets may
  // legitimately zero it (a dead ReLU, cross-entropy over one class), so they opt out.
  if (nonzeroDB) for (const a of c.fa.forward.adapters) expect(Math.max(...fa[`grad.${a.B}`].data.map(Math.abs)), a.B).toBeGreaterThan(0);
}

/** A is frozen and nothing computes dA; LoRA does compute it, so the check has teeth. */
function expectNoDA(c: { lora: Compiled; fa: Compiled }) {
  const fa = c.fa.joint;
  const lora = c.lora.joint;
  const frozen = new Set(fa.params.filter((p) => !p.trainable).map((p) => p.value.name));
  for (const p of fa.params) {
    if (p.role === 'lora_A') expect(p.trainable, `${p.value.name} under lora-fa`).toBe(false);
    if (p.role === 'lora_B') expect(p.trainable, `${p.value.name} under lora-fa`).toBe(true);
  }
  for (const p of c.lora.forward.params) if (p.role === 'lora_A') expect(p.trainable, `${p.value.name} under lora`).toBe(true);
  expect(c.fa.reports.loraFa?.frozenA.slice().sort()).toEqual(fa.adapters.map((a) => a.A).sort());

  for (const k of gradNames(fa)) {
    expect(k).not.toMatch(/lora_A$/);
    expect(frozen.has(k.slice('grad.'.length)), `${k} is a frozen parameter`).toBe(false);
  }
  for (const n of fa.nodes) expect(n.out.name, 'a value named like a gradient of A').not.toMatch(/^grad\..*lora_A/);

  for (const a of fa.adapters) {
    const dA = dANode(lora, a);
    // In LoRA, dA = xᵀ·ct is a backward matmul reading the adapter's input x.
    expect(dA.phase).toBe('backward');
    expect(dA.op).toBe('matmul');
    expect(dA.inputs[0].id).toBe(a.input);
    expect(backwardNodes(fa).filter((n) => sameProduct(n, dA)), `dA of ${a.module} under lora-fa`).toEqual([]);
  }
  expect(backwardNodes(fa).length).toBeLessThan(backwardNodes(lora).length);
  expect(c.fa.reports.pruned!.prunedNodes.length).toBe(backwardNodes(lora).length - backwardNodes(fa).length);
}

/** Distinct adapter inputs, in order of first appearance. */
function distinctInputs(g: Graph): number[] {
  return [...new Set(g.adapters.map((a) => a.input))];
}

// ---------------------------------------------------------------------------------------------
// every shipped model, default targets

const models = modelFiles();

describe.each(models)('model %s (default targets, rank 2, alpha 4)', (name) => {
  let model: LoadedModel;
  let graph: Graph;
  let cfg: ModelConfig;
  let c: { lora: Compiled; fa: Compiled };
  beforeAll(async () => {
    const first = await toyModel(name);
    model = first.model;
    const config = toyConfigName(model.def);
    graph = config === model.def.defaultConfig ? first.graph : (await toyModel(name, config)).graph;
    cfg = model.def.configs[config];
    c = compileBoth(graph, { rank: 2, alpha: 4, targets: model.def.defaultTargets ?? [], modulesToSave: model.def.modulesToSave });
  });

  test('dB (and every other gradient LoRA-FA trains) equals LoRA\'s for the same weights and data', () => {
    expectSharedGradsEqual(c, intBoundsFor(cfg), 3);
  });

  test('A is frozen; no grad for A or a frozen W; no backward node computes dA; fewer backward nodes', () => {
    expectNoDA(c);
  });

  test('no backward node reads an adapted layer\'s input x under lora-fa; lora does', () => {
    const fa = c.fa.joint;
    const lora = c.lora.joint;
    expect(fa.adapters.length).toBeGreaterThan(0);
    for (const a of fa.adapters) {
      expect(readersOf(fa, a.input).map((n) => n.out.name), `backward readers of ${a.module}'s input`).toEqual([]);
      expect(readersOf(lora, a.input).length, `backward readers of ${a.module}'s input under lora`).toBeGreaterThan(0);
    }
    const faSaved = savedActivations(fa);
    const loraSaved = savedActivations(lora);
    for (const s of adapterInputs(fa)) {
      expect(s.saved, `${s.module} under lora-fa`).toBe(false);
      expect(s.reasons).toEqual([]);
      expect(faSaved.has(s.input.id)).toBe(false);
    }
    // Under LoRA, every input that is an activation (not fed data) is saved, for dA.
    for (const s of adapterInputs(lora)) {
      if (isGraphInput(lora, s.input.id)) continue;
      expect(s.saved, `${s.module} under lora`).toBe(true);
      expect(loraSaved.has(s.input.id)).toBe(true);
      expect(s.reasons.some((r) => r.includes(`${s.module}.lora.xA`)), s.reasons.join('; ')).toBe(true);
    }
    expect(c.fa.reports.pruned!.inputs).toEqual(adapterInputs(fa));
  });

  test('reports.pruned: exactly the distinct adapted inputs, and their bytes', () => {
    const p = c.fa.reports.pruned!;
    const fa = c.fa.joint;
    const expected = distinctInputs(fa).filter((id) => !isGraphInput(fa, id));
    const ids = p.prunedActivations.map((v) => v.id);
    expect(new Set(ids).size).toBe(ids.length);
    expect(ids.slice().sort((x, y) => x - y)).toEqual(expected.slice().sort((x, y) => x - y));
    expect(p.prunedBytes).toBe(p.prunedActivations.reduce((s, v) => s + byteSize(v.type), 0));
    expect(p.prunedBytes).toBeGreaterThan(0);
  });
});

test('toy llama, q_proj + v_proj: one [b·s, d] f32 input per layer is pruned (q and v share it)', async () => {
  const { model, graph } = await toyModel('llama', 'toy');
  const cfg = model.def.configs.toy as ModelConfig & { seq: number; d: number; layers: number };
  const { fa } = compileBoth(graph, { rank: 2, alpha: 4, targets: ['q_proj', 'v_proj'] });
  const p = fa.reports.pruned!;
  expect(fa.forward.adapters.length).toBe(2 * cfg.layers);
  expect(p.prunedActivations.length).toBe(cfg.layers);
  for (const v of p.prunedActivations) expect(fmtType(v.type)).toBe(`f32[${cfg.batch * cfg.seq},${cfg.d}]`);
  expect(p.prunedBytes).toBe(cfg.layers * cfg.batch * cfg.seq * cfg.d * 4);
  // Each pruned tensor is the input both q_proj and v_proj of one layer read.
  for (let i = 0; i < cfg.layers; i++) {
    const q = fa.forward.adapters.find((a) => a.module === `layers.${i}.self_attn.q_proj`)!;
    const v = fa.forward.adapters.find((a) => a.module === `layers.${i}.self_attn.v_proj`)!;
    expect(q.input).toBe(v.input);
    expect(p.prunedActivations.filter((x) => x.id === q.input)).toHaveLength(1);
  }
});

// ---------------------------------------------------------------------------------------------
// where x stays saved, and why

test('encoder: an adapted classifier layer whose W is trained (modulesToSave) keeps its input, with the reasons', async () => {
  const { model, graph } = await toyModel('encoder', 'toy');
  const c = compileBoth(graph, { rank: 2, alpha: 4, targets: ['query', 'value', 'out_proj'], modulesToSave: ['classifier'] });
  const inputs = c.fa.reports.pruned!.inputs;
  const head = inputs.find((s) => s.module === 'classifier.out_proj')!;
  expect(head.saved).toBe(true);
  // out_proj.weight is trainable (modulesToSave): dW = xᵀ·dy reads x; tanh's backward reads its own output, x.
  expect(head.reasons.some((r) => r.includes('backward of "classifier.out_proj.xW"')), head.reasons.join('; ')).toBe(true);
  expect(head.reasons.some((r) => r.includes('backward of "classifier.tanh"')), head.reasons.join('; ')).toBe(true);
  // None of the reasons is dA (LoRA-FA computes none).
  expect(head.reasons.some((r) => r.includes('lora.xA')), head.reasons.join('; ')).toBe(false);
  expect(c.fa.reports.pruned!.prunedActivations.map((v) => v.id)).not.toContain(head.input.id);
  // The attention inputs are still pruned.
  for (const s of inputs.filter((t) => t.module !== 'classifier.out_proj')) expect(s.saved, s.module).toBe(false);
  expect(c.fa.reports.pruned!.prunedActivations).toHaveLength(model.def.configs.toy.layers as number);
  expectSharedGradsEqual(c, intBoundsFor(model.def.configs.toy), 5);
  expectNoDA(c);
});

test('llama classifier, all-linear + the token embedding trained (the spam preset): dEmbed is exact, zero on unseen rows, the same as LoRA\'s, and every adapted input is still pruned', async () => {
  const { model, graph } = await toyModel('llama', 'toy-cls');
  const cfg = model.def.configs['toy-cls'];
  const c = compileBoth(graph, { rank: 2, alpha: 4, targets: ['all-linear'], modulesToSave: ['score', 'embed_tokens'] });
  const embed = c.fa.joint.params.find((p) => p.value.name === 'embed_tokens.weight')!;
  expect(embed.trainable).toBe(true);
  expect(gradNames(c.fa.joint)).toContain('grad.embed_tokens.weight');
  expectSharedGradsEqual(c, intBoundsFor(cfg), 7);
  expectNoDA(c);
  // Training the embedding adds no reason to keep an adapted layer's input: the gather's backward
  // reads only the token ids.
  for (const s of c.fa.reports.pruned!.inputs) expect(s.saved, `${s.module}: ${s.reasons.join('; ')}`).toBe(false);

  // dEmbed against float64 central differences of the loss, through the reference interpreter.
  const feeds = feedsFor(c.fa.joint, 7, intBoundsFor(cfg));
  const params = paramsWithRandomB(c.fa.forward, 7);
  const grad = runReference(c.fa.joint, { feeds, params }).outputs['grad.embed_tokens.weight'].data;
  const [vocab, d] = embed.value.type.shape;
  const seen = new Set(Array.from(feeds.input_ids));
  for (let row = 0; row < vocab; row++) {
    if (seen.has(row)) continue;
    for (let j = 0; j < d; j++) expect(grad[row * d + j], `row ${row} (no token) col ${j}`).toBe(0);
  }
  const w = params.get('embed_tokens.weight')!;
  const loss = (x: Float64Array) => runReference(c.fa.joint, { feeds, params: new Map([...params, ['embed_tokens.weight', { shape: w.shape, data: x }]]) }).outputs.loss.data[0];
  const rows = [...seen].slice(0, 3);
  expect(rows.length).toBeGreaterThan(0);
  for (const row of rows) {
    for (const j of [0, d - 1]) {
      const t = new Float64Array(w.data.length);
      t[row * d + j] = 1;
      const fd = directional(loss, w.data, t);
      expect(Math.abs(fd - grad[row * d + j]), `dEmbed[${row}, ${j}]: ${grad[row * d + j]} vs finite difference ${fd}`).toBeLessThanOrEqual(1e-6 * Math.max(1, Math.abs(fd)));
    }
  }
});

/** x → pre (frozen) → h; q(h) and gate(h) both read h; loss = mse(q ⊙ gate, t). */
function sharedInputGraph(): Graph {
  const b = new Builder({ name: 'shared_input' });
  const x = b.input('x', [4, 6]);
  const t = b.input('t', [4, 5]);
  const h = b.linear(x, 'pre', 6);
  const q = b.linear(h, 'q', 5);
  const gate = b.linear(h, 'gate', 5);
  b.loss(b.mse(b.mul(q, gate), t));
  return b.build();
}

describe('a trainable non-LoRA linear sharing x with an adapted one', () => {
  const graph = sharedInputGraph();

  test('x is saved for the other layer\'s dW, and the report says so', () => {
    const c = compileBoth(graph, { rank: 2, alpha: 4, targets: ['q'], modulesToSave: ['gate'] });
    const [s] = c.fa.reports.pruned!.inputs;
    expect(s.module).toBe('q');
    expect(s.saved).toBe(true);
    expect(s.reasons.length).toBeGreaterThan(0);
    expect(s.reasons.every((r) => r.includes('backward of "gate.xW"')), s.reasons.join('; ')).toBe(true);
    // The only backward reader of x is gate's dW (a matmul producing gate.weight's shape).
    const readers = readersOf(c.fa.joint, s.input.id);
    expect(readers.map((n) => `${n.op} ${fmtType(n.out.type)}`)).toEqual(['matmul f32[6,5]']);
    expect(c.fa.reports.pruned!.prunedActivations).toEqual([]);
    expect(c.fa.reports.pruned!.prunedBytes).toBe(0);
    expect(gradNames(c.fa.joint).sort()).toEqual(['grad.gate.bias', 'grad.gate.weight', 'grad.q.lora_B']);
    expectSharedGradsEqual(c, () => 1, 7);
    expectNoDA(c);
  });

  test('without modulesToSave the same x is pruned', () => {
    const c = compileBoth(graph, { rank: 2, alpha: 4, targets: ['q'] });
    const [s] = c.fa.reports.pruned!.inputs;
    expect(s.saved).toBe(false);
    expect(readersOf(c.fa.joint, s.input.id)).toEqual([]);
    const pruned = c.fa.reports.pruned!.prunedActivations;
    expect(pruned.map((v) => v.id)).toEqual([c.fa.forward.adapters[0].input]);
    expect(c.fa.reports.pruned!.prunedBytes).toBe(4 * 6 * 4); // f32[4,6]
  });
});

// ---------------------------------------------------------------------------------------------
// random MLP-like graphs

type Act = 'relu' | 'tanh' | 'gelu' | 'none';
interface LayerSpec {
  readonly act: Act;
  readonly side: boolean;
  readonly bias: boolean;
}
interface NetSpec {
  readonly batch: number;
  readonly widths: readonly number[];
  readonly layers: readonly LayerSpec[];
  readonly targetMask: readonly boolean[];
  readonly saveMask: readonly boolean[];
  readonly rankPick: number;
  readonly alpha: number;
  readonly ce: boolean;
}

const netArb: fc.Arbitrary<NetSpec> = fc.integer({ min: 1, max: 3 }).chain((depth) =>
  fc.record({
    batch: fc.integer({ min: 1, max: 3 }),
    widths: fc.array(fc.integer({ min: 1, max: 5 }), { minLength: depth + 1, maxLength: depth + 1 }),
    layers: fc.array(
      fc.record({ act: fc.constantFrom<Act>('relu', 'tanh', 'gelu', 'none'), side: fc.boolean(), bias: fc.boolean() }),
      { minLength: depth, maxLength: depth },
    ),
    targetMask: fc.array(fc.boolean(), { minLength: 2 * depth, maxLength: 2 * depth }),
    saveMask: fc.array(fc.boolean(), { minLength: 2 * depth, maxLength: 2 * depth }),
    rankPick: fc.nat({ max: 4 }),
    alpha: fc.constantFrom(1, 2, 3.5, 8),
    ce: fc.boolean(),
  }),
);

/** Layer i: y = l_i(h) [+ s_i(h)], h' = act(y). s_i shares its input with l_i. */
function buildNet(spec: NetSpec) {
  const b = new Builder({ name: 'random_mlp' });
  const depth = spec.layers.length;
  let h = b.input('x', [spec.batch, spec.widths[0]]);
  const layerInput = new Map<string, number>();
  for (let i = 0; i < depth; i++) {
    const { act, side, bias } = spec.layers[i];
    layerInput.set(`l${i}`, h.id);
    let y = b.linear(h, `l${i}`, spec.widths[i + 1], { bias });
    if (side) {
      layerInput.set(`s${i}`, h.id);
      y = b.add(y, b.linear(h, `s${i}`, spec.widths[i + 1], { bias: false }));
    }
    h = act === 'none' ? y : b[act](y);
  }
  if (spec.ce) b.loss(b.crossEntropy(h, b.input('labels', [spec.batch], 'i32')));
  else b.loss(b.mse(h, b.input('target', [spec.batch, spec.widths[depth]])));
  const names = spec.layers.flatMap((l, i) => [`l${i}`, ...(l.side ? [`s${i}`] : [])]);
  const pick = (mask: readonly boolean[]) =>
    spec.layers.flatMap((l, i) => [...(mask[2 * i] ? [`l${i}`] : []), ...(l.side && mask[2 * i + 1] ? [`s${i}`] : [])]);
  let targets = pick(spec.targetMask);
  if (!targets.length) targets = [names[names.length - 1]];
  const toSave = pick(spec.saveMask);
  const dims = (n: string) => {
    const i = Number(n.slice(1));
    return Math.min(spec.widths[i], spec.widths[i + 1]);
  };
  const maxRank = Math.min(...targets.map(dims));
  const rank = 1 + (spec.rankPick % maxRank);
  return { graph: b.build(), targets, toSave, rank, layerInput };
}

test('property: on random MLP-like graphs LoRA-FA keeps dB, drops dA, and prunes exactly the unneeded adapted inputs', () => {
  // How often each branch of the oracle ran: a property that never meets a case proves nothing about it.
  const seen = { pruned: 0, keptForDW: 0, keptForTanh: 0, sharedInput: 0 };
  property('lora-fa invariants on random MLP-like graphs', netArb, (spec) => {
    const net = buildNet(spec);
    const { graph, targets, toSave } = net;
    const c = compileBoth(graph, { rank: net.rank, alpha: spec.alpha, targets, modulesToSave: toSave });
    const fa = c.fa.joint;

    expectSharedGradsEqual(c, () => spec.widths[spec.widths.length - 1], spec.batch, false);
    expectNoDA(c);
    expect(gradNames(fa).sort()).toEqual(
      [
        ...targets.map((t) => `grad.${t}.lora_B`),
        ...graph.params.filter((p) => toSave.some((s) => p.value.name.startsWith(`${s}.`))).map((p) => `grad.${p.value.name}`),
      ].sort(),
    );

    // Oracle: which adapted inputs LoRA-FA's backward still needs, from the net's structure alone.
    // Layer i's input h_i is read by (a) the dW of any layer reading h_i whose weight trains
    // (modulesToSave), or (b) tanh's backward (it reads its output, h_i) when layer i−1's
    // pre-activation needs a cotangent, i.e. some parameter at a layer < i trains.
    const trainsAt = (i: number) => [`l${i}`, `s${i}`].some((n) => targets.includes(n) || toSave.includes(n));
    const needed = (i: number): string[] => {
      const why = [`l${i}`, `s${i}`].filter((n) => net.layerInput.has(n) && toSave.includes(n)).map((n) => `${n}.xW`);
      if (i > 0 && spec.layers[i - 1].act === 'tanh' && Array.from({ length: i }, (_, j) => trainsAt(j)).some(Boolean)) why.push('tanh');
      return why;
    };
    const adaptedLayers = new Set(targets.map((t) => Number(t.slice(1))));
    const expectedPruned: number[] = [];
    // Layer i's input as the LoRA graph has it (an adapted layer before it rewires x·W to the sum).
    const inputOf = (layer: string): Value => {
      const lin = c.fa.forward.linears.find((l) => l.name === layer)!;
      return c.fa.forward.nodes.find((n) => n.out.id === lin.matmulOut)!.inputs[0];
    };
    for (const a of c.fa.forward.adapters) expect(a.input, a.module).toBe(inputOf(a.module).id);
    for (const i of adaptedLayers) {
      const x = inputOf(`l${i}`);
      if (spec.layers[i].side) expect(inputOf(`s${i}`).id).toBe(x.id);
      const why = needed(i);
      if (why.some((w) => w.endsWith('.xW'))) seen.keptForDW++;
      if (why.includes('tanh')) seen.keptForTanh++;
      if (!why.length && i > 0) seen.pruned++;
      if (targets.includes(`l${i}`) && targets.includes(`s${i}`)) seen.sharedInput++;
      const readers = readersOf(fa, x.id);
      if (why.length) expect(readers.length, `layer ${i} input: ${why.join(', ')}`).toBeGreaterThan(0);
      else expect(readers.map((n) => n.out.name), `layer ${i} input`).toEqual([]);
      if (!why.length && i > 0) expectedPruned.push(x.id);
      for (const s of c.fa.reports.pruned!.inputs.filter((t) => t.input.id === x.id)) {
        if (i === 0) continue; // fed data, not an activation: never counted as saved
        expect(s.saved, `${s.module}: ${why.join(', ')}`).toBe(why.length > 0);
        for (const w of why) expect(s.reasons.some((r) => r.includes(w)), `${s.module} reasons ${s.reasons.join('; ')} lack ${w}`).toBe(true);
      }
    }
    const pruned = c.fa.reports.pruned!.prunedActivations.map((v) => v.id);
    expect(new Set(pruned).size).toBe(pruned.length);
    expect(pruned.slice().sort((p, q) => p - q)).toEqual(expectedPruned.sort((p, q) => p - q));
    expect(c.fa.reports.pruned!.prunedBytes).toBe(c.fa.reports.pruned!.prunedActivations.reduce((s, v) => s + byteSize(v.type), 0));
  });
  if ((fc.readConfigureGlobal().numRuns ?? 100) >= 30) {
    for (const [k, n] of Object.entries(seen)) expect(n, `cases where ${k}`).toBeGreaterThan(0);
  }
});
