// Whole-model gradient checks: every model in models/ (at its toy size), in full, LoRA and LoRA-FA
// modes. The reference interpreter's gradients (the joint graph's `grad.*` outputs) are checked
// against central finite differences of the loss, element-wise and along a random direction.
// LoRA B is randomised: at its zero init dA ≡ 0 and the whole A path would go unchecked.
import { beforeAll, describe, expect, test } from 'vitest';
import type { LoadedModel } from '../src/model/load.ts';
import type { Tensor } from '../src/ir/shape.ts';
import { numel, type Graph } from '../src/ir/types.ts';
import type { ModelConfig } from '../src/model/define.ts';
import { compileTraining, MODES, type Mode } from '../src/passes/compile.ts';
import { rng } from '../src/runtime/init.ts';
import { runReference } from '../src/runtime/reference.ts';
import { close, directional, dot, feedsFor, intBoundsFor, modelFiles, paramsWithRandomB, toyConfigName, toyModel } from './helpers.ts';

const RANK = 2;
const ALPHA = 4;
const EPS = 1e-6;
// Float64 central differences with eps 1e-6: truncation ~1e-12, rounding ~1e-10 of the loss.
const RTOL = 1e-6;
const ATOL = 1e-8;

function compile(m: LoadedModel, graph: Graph, mode: Mode) {
  return compileTraining(graph, {
    mode,
    lora: { rank: RANK, alpha: ALPHA, targets: m.def.defaultTargets ?? [], modulesToSave: m.def.modulesToSave },
    verify: true,
  });
}

/** The linear layers a PEFT-style target list names: exact name or `.suffix`. */
function targetedLinears(graph: Graph, targets: readonly string[]): string[] {
  return graph.linears.filter((l) => targets.some((t) => l.name === t || l.name.endsWith(`.${t}`))).map((l) => l.name);
}

/** The trainable parameter names each mode must produce gradients for, derived from the traced model alone. */
function expectedTrainable(m: LoadedModel, graph: Graph, mode: Mode): string[] {
  const declared = graph.params.filter((p) => p.trainable).map((p) => p.value.name);
  if (mode === 'full') return declared.sort();
  const keep = m.def.modulesToSave ?? [];
  const saved = declared.filter((n) => keep.some((k) => n === k || n.startsWith(`${k}.`)));
  const layers = targetedLinears(graph, m.def.defaultTargets ?? []);
  const adapters = layers.flatMap((l) => (mode === 'lora' ? [`${l}.lora_A`, `${l}.lora_B`] : [`${l}.lora_B`]));
  return [...saved, ...adapters].sort();
}

const models = modelFiles();

test('models/ holds the three shipped models (and any new one is picked up)', () => {
  expect(models).toEqual(expect.arrayContaining(['encoder', 'llama', 'mlp']));
});

describe.each(models)('model %s', (name) => {
  let model: LoadedModel;
  let graph: Graph;
  let cfg: ModelConfig;
  beforeAll(async () => {
    // Attention as the fused op (at toy sizes 'auto' would pick the composition, which
    // attention.test.ts checks equal to it on every model).
    const loaded = await toyModel(name, undefined, { attention: 'fused' });
    model = loaded.model;
    const config = toyConfigName(model.def);
    graph = config === model.def.defaultConfig ? loaded.graph : (await toyModel(name, config, { attention: 'fused' })).graph;
    cfg = model.def.configs[config];
  });

  test.each(MODES)('%s: grad.* outputs are exactly the trainable parameters', (mode) => {
    const c = compile(model, graph, mode);
    const grads = Object.keys(c.joint.outputs)
      .filter((k) => k.startsWith('grad.'))
      .map((k) => k.slice('grad.'.length))
      .sort();
    const expected = expectedTrainable(model, graph, mode);
    expect(expected.length).toBeGreaterThan(0);
    expect(grads).toEqual(expected);
    // …and the forward graph agrees on which parameters are trainable.
    expect(c.forward.params.filter((p) => p.trainable).map((p) => p.value.name).sort()).toEqual(expected);
    if (mode !== 'full') expect(c.forward.adapters.length).toBe(targetedLinears(graph, model.def.defaultTargets ?? []).length);
  });

  test.each(MODES)('%s: gradients match central finite differences of the loss', (mode) => {
    const c = compile(model, graph, mode);
    const seed = 17 + MODES.indexOf(mode);
    const feeds = feedsFor(c.joint, seed, intBoundsFor(cfg));
    const params = paramsWithRandomB(c.forward, seed);
    const grads = runReference(c.joint, { feeds, params }).outputs;
    const u = rng(seed * 31 + 5);

    const lossWith = (pname: string, data: Float64Array): number => {
      const p = new Map(params);
      p.set(pname, { shape: params.get(pname)!.shape, data });
      return runReference(c.forward, { feeds, params: p }).outputs.loss.data[0];
    };

    // The checked loss is the joint graph's own forward value.
    expect(runReference(c.forward, { feeds, params }).outputs.loss.data[0]).toBe(grads.loss.data[0]);

    let checked = 0;
    for (const p of c.forward.params.filter((q) => q.trainable)) {
      const pname = p.value.name;
      const x = params.get(pname)!.data;
      const g: Tensor = grads[`grad.${pname}`];
      expect(g, `grad.${pname}`).toBeDefined();
      expect(g.data.length).toBe(numel(p.value.type.shape));
      const f = (d: Float64Array) => lossWith(pname, d);

      // Element-wise: the largest-magnitude gradient element plus two random ones.
      let argmax = 0;
      g.data.forEach((v, i) => (Math.abs(v) > Math.abs(g.data[argmax]) ? (argmax = i) : 0));
      const elements = [argmax, Math.floor(u() * x.length), Math.floor(u() * x.length)];
      for (const i of elements) {
        const e = new Float64Array(x.length);
        e[i] = 1;
        const fd = directional(f, x, e, EPS);
        expect(close(g.data[i], fd, RTOL, ATOL), `${mode} ${pname}[${i}]: analytic ${g.data[i]} vs finite difference ${fd}`).toBe(true);
      }

      // Directional, over the whole parameter: ⟨∇, t⟩ against the difference quotient along t.
      const t = new Float64Array(x.length).map(() => 2 * u() - 1);
      const fd = directional(f, x, t, EPS);
      const an = dot(g.data, t);
      expect(close(an, fd, RTOL, ATOL), `${mode} ${pname} along a random direction: analytic ${an} vs finite difference ${fd}`).toBe(true);
      checked++;
    }
    expect(checked).toBe(expectedTrainable(model, graph, mode).length);

    // Random B must make the A path live: a zero dA would mean the check above proved nothing.
    if (mode === 'lora') {
      for (const a of c.forward.adapters) {
        const dA = grads[`grad.${a.A}`].data;
        expect(Math.max(...dA.map(Math.abs)), `grad.${a.A}`).toBeGreaterThan(1e-6);
      }
    }
  });
});
