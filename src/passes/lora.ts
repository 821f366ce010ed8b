// LoRA: wrap each targeted linear layer y = x·W (+ bias) as y = x·W + s·(x·A)·B (+ bias).
//
// 1. Resolve the targets against the graph's linear modules, as PEFT's `target_modules` does: a
//    list matches a module whose name equals an entry or ends with `.entry`; a RegExp must match
//    the whole name. An entry that matches nothing is an error listing the linears that exist.
// 2. For each target, add A [in, r] (kaiming-uniform a=√5, as PEFT) and B [r, out] (zeros), both
//    trainable, and insert right after the base matmul: xA, s·xA, (s·xA)·B, x·W + that.
//    The scale multiplies the r-wide x·A, the cheapest place, and what backward saves for dB.
// 3. Redirect every use of x·W to the sum; freeze every other parameter (except `modulesToSave`).
import { Builder } from '../ir/builder.ts';
import { LorafaError } from '../ir/errors.ts';
import type { Graph, LinearModule, LoraAdapter, Node, Param, Value } from '../ir/types.ts';

export interface LoraOptions {
  readonly rank: number;
  readonly alpha: number;
  /** Module names or suffixes (`q,v`), or a RegExp that must match the whole module name. */
  readonly targets: readonly string[] | RegExp;
  /** rsLoRA: scale alpha/√r instead of alpha/r. */
  readonly rslora?: boolean;
  /** Parameters (by name prefix) that stay trainable, as PEFT's modules_to_save (a classifier head). */
  readonly modulesToSave?: readonly string[];
}

export interface LoraReport {
  readonly adapters: readonly LoraAdapter[];
  readonly frozen: readonly string[];
  readonly trainable: readonly string[];
}

export function listLinears(g: Graph): string {
  return g.linears.map((l) => `${l.name} (${l.inFeatures}→${l.outFeatures})`).join(', ');
}

export function resolveTargets(g: Graph, targets: readonly string[] | RegExp): LinearModule[] {
  const where = g.file ?? g.name;
  if (targets instanceof RegExp) {
    const full = new RegExp(`^(?:${targets.source})$`, targets.flags.replace('g', ''));
    const hits = g.linears.filter((l) => full.test(l.name));
    if (!hits.length) {
      throw new LorafaError(where, `LoRA target pattern /${targets.source}/ matches no linear layer`, `the linear layers are: ${listLinears(g)}`);
    }
    return hits;
  }
  if (!targets.length) throw new LorafaError(where, 'no LoRA targets given', `name some of: ${listLinears(g)}`);
  const hits = new Set<LinearModule>();
  for (const t of targets) {
    const m = g.linears.filter((l) => l.name === t || l.name.endsWith(`.${t}`));
    if (!m.length) {
      const names = [...new Set(g.linears.map((l) => l.name.split('.').pop()))].join(', ');
      throw new LorafaError(
        where,
        `unknown LoRA target "${t}": no linear layer is named "${t}" or ends with ".${t}"`,
        `target one of the linear layer names: ${names} (all layers: ${listLinears(g)})`,
      );
    }
    m.forEach((l) => hits.add(l));
  }
  return g.linears.filter((l) => hits.has(l));
}

export function checkRank(g: Graph, rank: number, alpha: number, layers: readonly LinearModule[]): void {
  const where = g.file ?? g.name;
  if (!Number.isInteger(rank) || rank < 1) throw new LorafaError(where, `LoRA rank must be a positive integer, got ${rank}`, 'use e.g. --rank 8');
  if (!(alpha > 0)) throw new LorafaError(where, `LoRA alpha must be positive, got ${alpha}`, 'use e.g. --alpha 16');
  for (const l of layers) {
    if (rank > Math.min(l.inFeatures, l.outFeatures)) {
      throw new LorafaError(
        where,
        `LoRA rank ${rank} exceeds layer "${l.name}" (${l.inFeatures}→${l.outFeatures}); a rank above min(in, out) = ${Math.min(l.inFeatures, l.outFeatures)} adds nothing`,
        `use a rank ≤ ${Math.min(l.inFeatures, l.outFeatures)}, or leave "${l.name}" out of the targets`,
      );
    }
  }
}

export function applyLora(g: Graph, opts: LoraOptions): { graph: Graph; report: LoraReport } {
  const layers = resolveTargets(g, opts.targets);
  checkRank(g, opts.rank, opts.alpha, layers);
  const scale = opts.rslora ? opts.alpha / Math.sqrt(opts.rank) : opts.alpha / opts.rank;
  const byMatmul = new Map(layers.map((l) => [l.matmulOut, l]));
  const b = Builder.extending(g, 'forward');
  const subst = new Map<number, Value>();
  const nodes: Node[] = [];
  const adapters: LoraAdapter[] = [];
  const newParams: Param[] = [];
  const sub = (v: Value) => subst.get(v.id) ?? v;

  for (const n of g.nodes) {
    const rewired = n.inputs.some((x) => subst.has(x.id)) ? { ...n, inputs: n.inputs.map(sub) } : n;
    nodes.push(rewired);
    const layer = byMatmul.get(n.out.id);
    if (!layer) continue;
    const x = rewired.inputs[0];
    const { A, B, sxa, y } = b.on(layer.src, layer.name, () => {
      const A = b.param('lora_A', [layer.inFeatures, opts.rank], {
        init: { kind: 'kaiming_uniform', a: Math.sqrt(5), fanIn: layer.inFeatures },
        role: 'lora_A',
      });
      const B = b.param('lora_B', [opts.rank, layer.outFeatures], { init: { kind: 'zeros' }, role: 'lora_B' });
      const xa = b.emit('matmul', [x, A], { transA: false, transB: false }, 'lora.xA');
      const s = b.emit('fill', [], { value: scale, shape: [], dtype: 'f32' }, 'lora.scale');
      const sxa = b.emit('mul', [xa, s], {}, 'lora.sxA');
      const delta = b.emit('matmul', [sxa, B], { transA: false, transB: false }, 'lora.sxAB');
      const y = b.emit('add', [n.out, delta], {}, 'lora.out');
      return { A, B, sxa, y };
    });
    const added = b.takeAdditions();
    nodes.push(...added.nodes);
    newParams.push(...added.params);
    subst.set(n.out.id, y);
    adapters.push({ module: layer.name, A: A.name, B: B.name, rank: opts.rank, alpha: opts.alpha, scale, input: x.id, projected: sxa.id });
  }
  const keep = opts.modulesToSave ?? [];
  const saved = (name: string) => keep.some((k) => name === k || name.startsWith(`${k}.`));
  const params: Param[] = [
    // A module to save keeps what the model declared; everything else is frozen.
    ...g.params.map((p) => ({ ...p, trainable: p.trainable && saved(p.value.name) && p.role !== 'buffer' })),
    ...newParams,
  ];
  const outputs = Object.fromEntries(Object.entries(g.outputs).map(([k, v]) => [k, sub(v)]));
  const graph: Graph = { ...g, nodes, params, outputs, adapters: [...g.adapters, ...adapters], nextId: b.takeAdditions().nextId };
  return {
    graph,
    report: {
      adapters,
      frozen: params.filter((p) => !p.trainable).map((p) => p.value.name),
      trainable: params.filter((p) => p.trainable).map((p) => p.value.name),
    },
  };
}
