// The float64 reference interpreter: the oracle for every other test. It runs any graph on the
// CPU with each op's `ref`, straight from the registry.
import { LorafaError } from '../ir/errors.ts';
import { opDef } from '../ir/ops.ts';
import type { Tensor } from '../ir/shape.ts';
import { fmtType, numel, type Graph } from '../ir/types.ts';
import { initParams, resolveDerived } from './init.ts';

export interface ReferenceOptions {
  /** Data inputs by name. */
  readonly feeds: Readonly<Record<string, ArrayLike<number>>>;
  /** Parameter values by name; any not given are initialised from `seed`. */
  readonly params?: ReadonlyMap<string, Tensor>;
  readonly seed?: number;
}

export interface ReferenceResult {
  readonly outputs: Record<string, Tensor>;
  /** Every value the run computed, by id. */
  readonly values: ReadonlyMap<number, Tensor>;
  readonly params: ReadonlyMap<string, Tensor>;
}

export function runReference(g: Graph, opts: ReferenceOptions): ReferenceResult {
  const values = new Map<number, Tensor>();
  for (const i of g.inputs) {
    const name = i.value.name;
    const feed = opts.feeds[name];
    const n = numel(i.value.type.shape);
    if (!feed) throw new LorafaError(name, `no data fed for input "${name}" ${fmtType(i.value.type)}`);
    if (feed.length !== n) {
      throw new LorafaError(name, `input "${name}" ${fmtType(i.value.type)} needs ${n} values, got ${feed.length}`);
    }
    const data = Float64Array.from(feed);
    if (i.value.type.dtype === 'i32' && data.some((x) => !Number.isInteger(x))) {
      throw new LorafaError(name, `input "${name}" is i32 but holds non-integers`);
    }
    values.set(i.value.id, { shape: i.value.type.shape, data });
  }
  const missing = g.params.filter((p) => !opts.params?.has(p.value.name));
  const derived = missing.filter((p) => p.init.kind === 'gram_inverse');
  const initial = missing.length ? initParams({ ...g, params: missing.filter((p) => !derived.includes(p)) }, { seed: opts.seed ?? 0 }) : new Map<string, Tensor>();
  // Derived parameters not given are computed from the values this run uses (given or initial).
  resolveDerived(
    g.params.map((p) => ({ name: p.value.name, shape: p.value.type.shape, init: derived.includes(p) ? p.init : { kind: 'zeros' as const } })),
    (n) => (opts.params?.get(n) ?? initial.get(n))?.data,
    (n, data) => initial.set(n, { shape: g.params.find((p) => p.value.name === n)!.value.type.shape, data }),
  );
  const params = new Map<string, Tensor>();
  for (const p of g.params) {
    const t = opts.params?.get(p.value.name) ?? initial.get(p.value.name)!;
    if (t.data.length !== numel(p.value.type.shape)) {
      throw new LorafaError(p.value.name, `parameter value has ${t.data.length} elements, ${fmtType(p.value.type)} needs ${numel(p.value.type.shape)}`);
    }
    params.set(p.value.name, t);
    values.set(p.value.id, { shape: p.value.type.shape, data: t.data });
  }
  for (const n of g.nodes) {
    const ins = n.inputs.map((x) => values.get(x.id)!);
    const data = opDef(n.op).ref(ins, n.attrs, n.out.type);
    values.set(n.out.id, { shape: n.out.type.shape, data });
  }
  const outputs: Record<string, Tensor> = {};
  for (const [name, v] of Object.entries(g.outputs)) outputs[name] = values.get(v.id)!;
  return { outputs, values, params };
}

export interface StepOptions {
  /**
   * Default true. False: a micro-step of gradient accumulation that does not update (see
   * accumFeeds): only the write-backs into gradient accumulators are applied; parameters and
   * optimizer state keep their values.
   */
  readonly update?: boolean;
}

/**
 * One training step: runs the graph and applies its write-backs (optimizer updates) to a copy of
 * the parameter map, which it returns with the outputs.
 */
export function referenceStep(
  g: Graph,
  opts: ReferenceOptions,
  step: StepOptions = {},
): { outputs: Record<string, Tensor>; params: Map<string, Tensor> } {
  const r = runReference(g, opts);
  const params = new Map(r.params);
  const accumulators = new Set(g.params.filter((p) => p.role === 'grad_accumulator').map((p) => p.value.name));
  for (const u of g.updates) {
    if (step.update === false && !accumulators.has(u.target)) continue;
    params.set(u.target, r.values.get(u.value.id)!);
  }
  return { outputs: r.outputs, params };
}
