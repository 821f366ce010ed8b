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
import { moduleOf, peftMatches, savedBy } from '../ir/modules.ts';
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

/** The linear layers by their last name segment, counted: `q_proj ×32, k_proj ×32, lm_head`. */
export function listLinears(g: Graph): string {
  const counts = new Map<string, { n: number; shape: string }>();
  for (const l of g.linears) {
    const leaf = l.name.split('.').pop()!;
    const c = counts.get(leaf);
    if (c) c.n++;
    else counts.set(leaf, { n: 1, shape: `${l.inFeatures}→${l.outFeatures}` });
  }
  return [...counts].map(([leaf, c]) => (c.n > 1 ? `${leaf} ×${c.n}` : `${leaf} (${c.shape})`)).join(', ');
}

/**
 * Whether a parameter belongs to a module of modules_to_save (`embed_tokens.weight` to
 * `embed_tokens`), or is named by an entry itself.
 */
export function inModulesToSave(param: string, keep: readonly string[]): boolean {
  return keep.includes(param) || savedBy(moduleOf(param), keep);
}

/**
 * Modules to save that a user named: each must hold a trainable parameter of the graph, else the
 * run would silently train less than asked. The error lists the modules that have weights.
 */
export function checkModulesToSave(g: Graph, keep: readonly string[], where: string): void {
  const weights = g.params.filter((p) => p.role !== 'buffer' && p.trainable);
  for (const k of keep) {
    if (weights.some((p) => inModulesToSave(p.value.name, [k]))) continue;
    const modules = [...new Set(weights.map((p) => moduleOf(p.value.name)))];
    const tops = [...new Set(modules.map((m) => m.replace(/(^|\.)\d+(?=\.)/g, '$1N')))];
    throw new LorafaError(where, `modules_to_save entry "${k}" names no module with weights in ${g.name}`, `name a module (or a suffix of one) of: ${tops.slice(0, 24).join(', ')}${tops.length > 24 ? ', …' : ''}`);
  }
}

/** PEFT's "all-linear": every linear layer but the output layer (the one that makes the logits) and modules_to_save. */
export const ALL_LINEAR = 'all-linear';

function outputLayers(g: Graph): Set<string> {
  const logits = g.outputs.logits;
  if (!logits) return new Set();
  const producer = g.nodes.find((n) => n.out.id === logits.id);
  const feeds = new Set([logits.id, ...(producer?.op === 'add' ? producer.inputs.map((v) => v.id) : [])]);
  return new Set(g.linears.filter((l) => feeds.has(l.matmulOut)).map((l) => l.name));
}

export function resolveTargets(g: Graph, targets: readonly string[] | RegExp, modulesToSave: readonly string[] = []): LinearModule[] {
  const where = g.file ?? g.name;
  if (targets instanceof RegExp) {
    const full = new RegExp(`^(?:${targets.source})$`, targets.flags.replace('g', ''));
    const hits = g.linears.filter((l) => full.test(l.name));
    if (!hits.length) {
      throw new LorafaError(where, `LoRA target pattern /${targets.source}/ matches no linear layer`, `the linear layers are: ${listLinears(g)}`);
    }
    return hits;
  }
  if (!g.linears.length) throw new LorafaError(where, 'the model has no linear layers (b.linear), so LoRA has nothing to adapt', 'train it in full (--mode full), or build its weights with b.linear(…)');
  if (!targets.length) throw new LorafaError(where, 'no LoRA targets given', `name some of: ${listLinears(g)}, or all-linear`);
  if (targets.includes(ALL_LINEAR)) {
    if (targets.length > 1) throw new LorafaError(where, `"${ALL_LINEAR}" already takes every linear layer; it cannot be listed with others`, `pass --targets ${ALL_LINEAR} alone`);
    const out = outputLayers(g);
    const hits = g.linears.filter((l) => !out.has(l.name) && !savedBy(l.name, modulesToSave));
    if (!hits.length) throw new LorafaError(where, `"${ALL_LINEAR}" leaves no layer to adapt: the only linear layers are the output layer and modules_to_save`, `name targets explicitly: ${listLinears(g)}`);
    return hits;
  }
  const hits = new Set<LinearModule>();
  for (const t of targets) {
    const m = g.linears.filter((l) => peftMatches(l.name, [t]));
    if (!m.length) {
      throw new LorafaError(where, `unknown LoRA target "${t}": no linear layer is named "${t}" or ends with ".${t}"`, `target one of the linear layers: ${listLinears(g)}, or ${ALL_LINEAR}`);
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
  const layers = resolveTargets(g, opts.targets, opts.modulesToSave);
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
  const params: Param[] = [
    // A module to save keeps what the model declared; everything else is frozen.
    ...g.params.map((p) => ({ ...p, trainable: p.trainable && inModulesToSave(p.value.name, keep) && p.role !== 'buffer' })),
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
