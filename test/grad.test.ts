// Gradient checks generated from the op registry: one `describe` per op in OP_NAMES, so a new op
// is covered without anyone adding a row. For a differentiable op, the VJP (through the autodiff
// driver and the reference interpreter) must match float64 central finite differences of
// f(x) = ⟨op_ref(x), c⟩ element by element, and satisfy ⟨J·t, c⟩ = ⟨t, Jᵀ·c⟩. For a 'nondiff' op,
// no cotangent may flow through it.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { autodiff, gradName } from '../src/passes/autodiff.ts';
import { dce } from '../src/passes/dce.ts';
import { Builder } from '../src/ir/builder.ts';
import { OP_NAMES, OPS, type Domain, type OpCase, type OpDef, type OpName } from '../src/ir/ops.ts';
import type { Tensor } from '../src/ir/shape.ts';
import { fmtType, numel, type Graph, type Value } from '../src/ir/types.ts';
import { verify } from '../src/ir/verify.ts';
import { runReference } from '../src/runtime/reference.ts';
import { caseGen, close, dot, property, sample } from './helpers.ts';
import { FC_RUNS } from './setup.ts';

/**
 * Step of the central differences. In float64 the truncation error is eps²/6·|f'''| (≤ 1e-8 even
 * for div near its 0.1 bound) and the rounding error about ε_mach·Σ|terms|/eps ≈ 2e-10·Σ|terms|.
 */
const EPS = 1e-6;
const RTOL = 1e-5;
/**
 * Absolute tolerance: 1e-7 plus 1e-9 per unit of Σ|c_j·y_j| (≈ 5× the rounding error above).
 * Measured: tolerances 10× tighter still pass 10,000 cases per op; 100× tighter fail (exp, sqrt…),
 * while a VJP off by a factor 1.001 fails within the default 60.
 */
const atolFor = (scale: number) => 1e-7 + 1e-9 * scale;

/** Long fuzz runs (LORAFA_RUNS=10000) need more than the default per-test timeout. */
const TIMEOUT = Math.max(120_000, FC_RUNS * 100);

const SEED = fc.integer({ min: 0, max: 0x7fffffff });

const anyDef = (op: OpName) => OPS[op] as OpDef<any>;

/** A float input whose values are discrete (where's condition): it gets no derivative. */
const discrete = (d: Domain, dtype: string) => dtype === 'i32' || d.kind === 'int' || d.kind === 'mask';

interface Built {
  readonly op: OpName;
  readonly oc: OpCase<any>;
  readonly seed: number;
  readonly graph: Graph;
  readonly ins: readonly Value[];
  readonly y: Value;
  readonly feeds: Record<string, Float64Array>;
  readonly tensors: readonly Tensor[];
  readonly c: Float64Array;
  /** Indices of the inputs that are smooth float inputs (finite-differenced). */
  readonly smooth: readonly number[];
  /** What a failure message starts with: op, shapes, attrs, seed. */
  readonly desc: string;
}

function describeCase(op: OpName, oc: OpCase<any>, seed: number): string {
  const ins = oc.inputs.map((x, i) => `x${i}: ${fmtType(x.type)} ${x.domain.kind}`).join(', ');
  return `${op}(${ins}) attrs ${JSON.stringify(oc.attrs)} value seed ${seed}`;
}

/** x0…xn = inputs, y = op(x…), c = an input of y's shape, loss = sum(y·c). */
function buildCase(op: OpName, oc: OpCase<any>, seed: number): Built {
  const b = new Builder({ name: `grad_${op}` });
  const ins = oc.inputs.map((x, i) => b.input(`x${i}`, x.type.shape, x.type.dtype));
  const y = b.emit(op, ins, oc.attrs);
  const cv = b.input('c', y.type.shape);
  b.loss(b.sum(b.mul(y, cv)));
  const graph = verify(b.build(), 'build');
  const feeds: Record<string, Float64Array> = {};
  const tensors = oc.inputs.map((x, i) => {
    const data = sample(numel(x.type.shape), x.domain, (seed + 7919 * (i + 1)) >>> 0);
    feeds[`x${i}`] = data;
    return { shape: x.type.shape, data };
  });
  const c = sample(numel(y.type.shape), { kind: 'real' }, (seed ^ 0x5bd1e995) >>> 0);
  feeds.c = c;
  const smooth = oc.inputs.flatMap((x, i) => (discrete(x.domain, x.type.dtype) ? [] : [i]));
  return { op, oc, seed, graph, ins, y, feeds, tensors, c, smooth, desc: describeCase(op, oc, seed) };
}

function fail(bc: Built, what: string): never {
  throw new Error(`${bc.desc}: ${what}`);
}

/** f(x) = ⟨op_ref(x), c⟩ in float64, with input i replaced by `data`. */
function objective(bc: Built, replace: ReadonlyMap<number, Float64Array>): number {
  const ts = bc.tensors.map((t, j) => ({ shape: t.shape, data: replace.get(j) ?? t.data }));
  return dot(anyDef(bc.op).ref(ts, bc.oc.attrs, bc.y.type), bc.c);
}

/** Σ|c_j·y_j|: the scale of f's rounding error. */
function termScale(bc: Built): number {
  const y = anyDef(bc.op).ref(bc.tensors, bc.oc.attrs, bc.y.type);
  let s = 0;
  for (let j = 0; j < y.length; j++) s += Math.abs(y[j] * bc.c[j]);
  return s;
}

/** Central difference of f along direction `t` (a map from input index to that input's direction). */
function fdAlong(bc: Built, t: ReadonlyMap<number, Float64Array>): number {
  const shifted = (sign: number) =>
    new Map([...t].map(([i, dir]) => [i, bc.tensors[i].data.map((v, k) => v + sign * EPS * dir[k])] as const));
  return (objective(bc, shifted(1)) - objective(bc, shifted(-1))) / (2 * EPS);
}

function differentiate(bc: Built, wrtIdx: readonly number[]) {
  const { graph, report } = autodiff(bc.graph, { wrt: wrtIdx.map((i) => bc.ins[i]) });
  verify(graph, 'autodiff');
  const run = runReference(graph, { feeds: bc.feeds });
  return { graph, report, run };
}

/**
 * max is the one differentiable op with kinks on its test domain (ties): a central difference
 * within EPS of a tie is not a derivative, so such draws are skipped (probability ~1e-4).
 */
function nearTie(bc: Built): boolean {
  if (bc.op !== 'max') return false;
  const x = bc.tensors[0];
  const top = OPS.max.ref([x], bc.oc.attrs, bc.y.type);
  const axes = bc.oc.attrs.axes as readonly number[];
  const shape = x.shape;
  /** Flat index of element `flat`'s reduction group, i.e. its index in the output. */
  const group = (flat: number) => {
    let o = 0;
    let m = 1;
    for (let d = shape.length - 1; d >= 0; d--) {
      const i = flat % shape[d];
      flat = Math.floor(flat / shape[d]);
      if (!axes.includes(d)) {
        o += i * m;
        m *= shape[d];
      }
    }
    return o;
  };
  const atMax = new Map<number, number>();
  for (let k = 0; k < x.data.length; k++) {
    const g = group(k);
    const gap = top[g] - x.data[k];
    if (gap === 0) atMax.set(g, (atMax.get(g) ?? 0) + 1);
    else if (gap < 1e-4) return true;
  }
  return [...atMax.values()].some((n) => n > 1);
}

/** The element-by-element check: every float input's gradient against central differences. */
function checkAgainstFd(op: OpName, oc: OpCase<any>, seed: number): void {
  const bc = buildCase(op, oc, seed);
  fc.pre(!nearTie(bc));
  const wrt = bc.oc.inputs.flatMap((x, i) => (x.type.dtype === 'i32' ? [] : [i]));
  const { run, report } = differentiate(bc, wrt);
  const scale = termScale(bc);
  const loss = run.outputs.loss.data[0];
  if (!close(loss, objective(bc, new Map()), 1e-12, 1e-12)) fail(bc, `loss ${loss} ≠ ⟨ref, c⟩`);
  for (const i of wrt) {
    const grad = run.outputs[gradName(`x${i}`)];
    if (grad.data.length !== bc.tensors[i].data.length) fail(bc, `grad.x${i} has ${grad.data.length} elements`);
    if (!bc.smooth.includes(i)) {
      // A discrete float input (where's condition) has derivative zero almost everywhere.
      if (grad.data.some((v) => v !== 0)) fail(bc, `grad.x${i} of a discrete input is not zero`);
      if (!report.unreachable.includes(`x${i}`)) fail(bc, `x${i} is not reported unreachable`);
      continue;
    }
    const x = bc.tensors[i].data;
    for (let k = 0; k < x.length; k++) {
      const unit = new Float64Array(x.length);
      unit[k] = 1;
      const fd = fdAlong(bc, new Map([[i, unit]]));
      if (!close(grad.data[k], fd, RTOL, atolFor(scale))) {
        fail(bc, `grad.x${i}[${k}] = ${grad.data[k]}, finite difference ${fd}`);
      }
    }
  }
}

/**
 * Fast-check input: a case drawn through fc.gen() (so shapes shrink), a value seed and a direction
 * seed. One flat tuple: nesting this mapped arbitrary in another fc.tuple makes fast-check 4.10
 * shrink to values whose seeds are undefined.
 */
const caseArb = (op: OpName) =>
  fc.tuple(fc.gen(), SEED, SEED).map(([g, seed, tSeed]) => {
    const oc = anyDef(op).testCase(caseGen(g, fc));
    return { oc, seed, tSeed, toString: () => `${describeCase(op, oc, seed)}, direction seed ${tSeed}` };
  });

for (const op of OP_NAMES) {
  const def = anyDef(op);
  describe(op, () => {
    if (def.vjp === 'nondiff') nondiffSuite(op);
    else if (def.vjp === 'backward-only') backwardOnlySuite(op);
    else diffSuite(op);
    // Checks that hold whatever the registry declares, so a rule that changes kind is caught.
    if (op === 'stop_gradient') stopGradientChecks();
    if (op === 'max') maxTieChecks();
  });
}

function diffSuite(op: OpName): void {
  it(
    'VJP matches central finite differences, element by element',
    () => {
      property(`grad/${op}/vjp=fd`, caseArb(op), ({ oc, seed }) => checkAgainstFd(op, oc, seed));
    },
    TIMEOUT,
  );

  it(
    'satisfies ⟨J·t, c⟩ = ⟨t, Jᵀ·c⟩ along a random direction',
    () => {
      property(`grad/${op}/inner-product`, caseArb(op), ({ oc, seed, tSeed }) => {
        const bc = buildCase(op, oc, seed);
        fc.pre(!nearTie(bc));
        const { run } = differentiate(bc, bc.smooth);
        const t = new Map(
          bc.smooth.map((i) => [i, sample(bc.tensors[i].data.length, { kind: 'real' }, (tSeed + 104729 * i) >>> 0)] as const),
        );
        const jt = fdAlong(bc, t);
        let jtc = 0;
        for (const [i, dir] of t) jtc += dot(dir, run.outputs[gradName(`x${i}`)].data);
        const tNorm = Math.sqrt([...t.values()].reduce((s, d) => s + dot(d, d), 0));
        if (!close(jt, jtc, RTOL, atolFor(termScale(bc)) * Math.max(1, tNorm))) {
          fail(bc, `⟨J·t, c⟩ = ${jt} by finite differences, ⟨t, Jᵀ·c⟩ = ${jtc} (direction seed ${tSeed})`);
        }
      });
    },
    TIMEOUT,
  );

  it(
    'emits nothing for inputs outside wrt: one target at a time gives the same gradient, no dead backward nodes',
    () => {
      property(`grad/${op}/wants`, caseArb(op), ({ oc, seed }) => {
        const bc = buildCase(op, oc, seed);
        // Every float input is a candidate target, discrete ones included (where's condition).
        const floats = bc.oc.inputs.flatMap((x, i) => (x.type.dtype === 'i32' ? [] : [i]));
        const full = differentiate(bc, floats);
        // Single targets: the smooth inputs. A discrete input alone (where's condition) would
        // make autodiff build the chain from the loss down to `where` and then drop it: the
        // driver cannot know that a float operand is not differentiable. Its gradient being
        // exactly zero is checked in the finite-difference property.
        for (const sets of [[floats], bc.smooth.map((i) => [i])]) {
          for (const wrt of sets) {
            const one = wrt === floats ? full : differentiate(bc, wrt);
            const dead = dce(one.graph).report.removed.filter((n) => n.phase === 'backward');
            if (dead.length) {
              fail(bc, `wrt [${wrt.map((i) => `x${i}`)}] builds dead backward nodes: ${dead.map((n) => `${n.op} ${n.out.name}`).join('; ')}`);
            }
            for (const i of wrt) {
              const a = one.run.outputs[gradName(`x${i}`)].data;
              const e = full.run.outputs[gradName(`x${i}`)].data;
              if (a.some((v, k) => !close(v, e[k], 1e-12, 1e-14))) fail(bc, `grad.x${i} with wrt [x${i}] differs from the full gradient`);
            }
          }
        }
      });
    },
    TIMEOUT,
  );

  if (op === 'matmul') {
    it(
      'VJP matches finite differences with the batch broadcast on the left operand too',
      () => {
        // The registry's generator gives the left operand the full batch; swap the batch prefixes
        // so x[m,k] against W[B,k,n] (dx summed over the batch by the driver) is covered as well.
        property('grad/matmul/vjp=fd-left-broadcast', caseArb('matmul'), ({ oc, seed }) => {
          const [a, w] = oc.inputs;
          const batchA = a.type.shape.slice(0, -2);
          const batchB = w.type.shape.slice(0, -2);
          const swapped: OpCase<any> = {
            attrs: oc.attrs,
            inputs: [
              { ...a, type: { ...a.type, shape: [...batchB, ...a.type.shape.slice(-2)] } },
              { ...w, type: { ...w.type, shape: [...batchA, ...w.type.shape.slice(-2)] } },
            ],
          };
          checkAgainstFd('matmul', swapped, seed);
        });
      },
      TIMEOUT,
    );

    it(
      'builds exactly one matmul per wanted operand',
      () => {
        property('grad/matmul/matmul-count', caseArb('matmul'), ({ oc, seed }) => {
          const bc = buildCase('matmul', oc, seed);
          for (const [wrt, count] of [
            [[0], 1],
            [[1], 1],
            [[0, 1], 2],
          ] as const) {
            const { graph } = differentiate(bc, wrt);
            const n = graph.nodes.filter((x) => x.phase === 'backward' && x.op === 'matmul').length;
            if (n !== count) fail(bc, `wrt [${wrt.map((i) => `x${i}`)}]: ${n} backward matmuls, expected ${count}`);
          }
        });
      },
      TIMEOUT,
    );
  }
}

/**
 * A backward-only op (cross_entropy_grad, rms_norm_grad, layer_norm_grad, attention's delta, dq
 * and dk/dv) is a VJP kernel: its ref is checked against finite differences as part of its forward
 * op's VJP (above; for attention also against b.attentionComposed in attention.test.ts). Here: a
 * cotangent that reaches one (a second-order gradient) is refused by name, and its ref is finite.
 */
function backwardOnlySuite(op: OpName): void {
  it(
    'autodiff through it fails with "second-order gradients are not supported"',
    () => {
      property(`grad/${op}/backward-only`, caseArb(op), ({ oc, seed }) => {
        const bc = buildCase(op, oc, seed);
        const floats = bc.oc.inputs.flatMap((x, i) => (x.type.dtype === 'i32' ? [] : [i]));
        expect(() => autodiff(bc.graph, { wrt: floats.map((i) => bc.ins[i]) })).toThrow(new RegExp(`second-order gradients are not supported: a cotangent reached ${op} .*backward-only`));
        expect(anyDef(op).ref(bc.tensors, bc.oc.attrs, bc.y.type).every(Number.isFinite), bc.desc).toBe(true);
      });
    },
    TIMEOUT,
  );
}

function nondiffSuite(op: OpName): void {
  it(
    'passes no cotangent: downstream gradients see only the other paths',
    () => {
      property(`grad/${op}/no-cotangent`, caseArb(op), ({ oc, seed }) => {
        // loss = ⟨op(x), c⟩ + Σᵢ ⟨xᵢ, dᵢ⟩ over float inputs: grad.xᵢ must be exactly dᵢ, grad.c
        // exactly op(x), and every input that reaches the loss only through op is unreachable.
        const b = new Builder({ name: `nondiff_${op}` });
        const ins = oc.inputs.map((x, i) => b.input(`x${i}`, x.type.shape, x.type.dtype));
        const y = b.emit(op, ins, oc.attrs);
        const cv = b.input('c', y.type.shape);
        let loss = b.sum(b.mul(y, cv));
        const direct: number[] = [];
        ins.forEach((x, i) => {
          if (x.type.dtype === 'i32') return;
          direct.push(i);
          loss = b.add(loss, b.sum(b.mul(x, b.input(`d${i}`, x.type.shape))));
        });
        b.loss(loss);
        const g = verify(b.build(), 'build');
        const feeds: Record<string, Float64Array> = {};
        const tensors = oc.inputs.map((x, i) => {
          const data = sample(numel(x.type.shape), x.domain, (seed + 7919 * (i + 1)) >>> 0);
          feeds[`x${i}`] = data;
          return { shape: x.type.shape, data };
        });
        feeds.c = sample(numel(y.type.shape), { kind: 'real' }, seed ^ 0x5bd1e995);
        for (const i of direct) feeds[`d${i}`] = sample(numel(ins[i].type.shape), { kind: 'real' }, seed + 31 * i + 1);
        const desc = describeCase(op, oc, seed);

        // (a) every input and c in wrt, both paths present
        const ad = autodiff(g, { wrt: [...ins, cv] });
        verify(ad.graph, 'autodiff');
        const run = runReference(ad.graph, { feeds });
        for (const i of direct) {
          const grad = run.outputs[gradName(`x${i}`)].data;
          if (grad.some((v, k) => v !== feeds[`d${i}`][k])) {
            throw new Error(`${desc}: grad.x${i} = [${[...grad]}] ≠ d${i} = [${[...feeds[`d${i}`]]}]: a cotangent flowed through ${op}`);
          }
        }
        const yRef = anyDef(op).ref(tensors, oc.attrs, y.type);
        if (run.outputs[gradName('c')].data.some((v, k) => v !== yRef[k])) throw new Error(`${desc}: grad.c ≠ ${op}(x)`);
        ins.forEach((x, i) => {
          if (x.type.dtype !== 'i32') return;
          if (!ad.report.unreachable.includes(x.name)) throw new Error(`${desc}: integer input ${x.name} is not reported unreachable`);
          if (run.outputs[gradName(x.name)].data.some((v) => v !== 0)) throw new Error(`${desc}: grad of integer input ${x.name} is not zero`);
        });

        // (b) only op's inputs in wrt, and the loss reaches them only through op
        if (ins.length) {
          const b2 = new Builder({ name: `nondiff_${op}_only` });
          const ins2 = oc.inputs.map((x, i) => b2.input(`x${i}`, x.type.shape, x.type.dtype));
          const c2 = b2.input('c', y.type.shape);
          b2.loss(b2.sum(b2.mul(b2.emit(op, ins2, oc.attrs), c2)));
          const ad2 = autodiff(verify(b2.build(), 'build'), { wrt: ins2 });
          verify(ad2.graph, 'autodiff');
          const names = ins2.map((x) => x.name);
          if (ad2.report.unreachable.join() !== names.join()) {
            throw new Error(`${desc}: unreachable = [${ad2.report.unreachable}], expected [${names}]`);
          }
          // Nothing but the zero gradients themselves: no seed, no VJP.
          const back = ad2.graph.nodes.filter((n) => n.phase === 'backward');
          // (Equal-shaped scalar zeros may share one cached fill node.)
          if (!back.length || back.length > ins2.length || back.some((n) => n.op !== 'fill' || n.attrs.value !== 0)) {
            throw new Error(`${desc}: backward nodes ${back.map((n) => n.op)}; expected one zero fill per target`);
          }
        }

        // (c) the op really is piecewise constant on its test domain (stop_gradient excepted:
        // its forward is the identity, checked separately).
        if (op !== 'stop_gradient') {
          const c = feeds.c;
          const f = (i: number, data: Float64Array) =>
            dot(anyDef(op).ref(tensors.map((t, j) => (j === i ? { shape: t.shape, data } : t)), oc.attrs, y.type), c);
          for (const i of direct) {
            const x = tensors[i].data;
            for (let k = 0; k < x.length; k++) {
              const plus = x.slice();
              const minus = x.slice();
              plus[k] += EPS;
              minus[k] -= EPS;
              const fd = (f(i, plus) - f(i, minus)) / (2 * EPS);
              if (fd !== 0) throw new Error(`${desc}: finite difference of ${op} along x${i}[${k}] is ${fd}, not 0`);
            }
          }
        }
      });
    },
    TIMEOUT,
  );
}

function stopGradientChecks(): void {
  it('is the identity forward, bit for bit', () => {
    property('grad/stop_gradient/identity', caseArb('stop_gradient'), ({ oc, seed }) => {
      const x = sample(numel(oc.inputs[0].type.shape), oc.inputs[0].domain, seed);
      const y = OPS.stop_gradient.ref([{ shape: oc.inputs[0].type.shape, data: x }], oc.attrs, oc.inputs[0].type);
      expect(Array.from(y)).toEqual(Array.from(x));
    });
  });

  it('has zero gradient even though its forward is the identity', () => {
    const b = new Builder();
    const x = b.input('x', [3]);
    b.loss(b.sum(b.mul(b.stopGradient(x), b.stopGradient(x))));
    const { graph, report } = autodiff(verify(b.build()), { wrt: [x] });
    verify(graph);
    const run = runReference(graph, { feeds: { x: [1, -2, 3] } });
    expect(run.outputs.loss.data[0]).toBe(14);
    expect(Array.from(run.outputs['grad.x'].data)).toEqual([0, 0, 0]);
    expect(report.unreachable).toEqual(['x']);
  });
}

/** Ties, which the finite-difference properties avoid: the cotangent is shared evenly (torch.amax). */
function maxTieChecks(): void {
  const grad = (shape: number[], axes: number[], keepdims: boolean, x: number[], ct?: number[]) => {
    const b = new Builder();
    const xv = b.input('x', shape);
    const y = b.max(xv, axes, keepdims);
    const c = b.input('c', y.type.shape);
    b.loss(b.sum(b.mul(y, c)));
    const { graph } = autodiff(verify(b.build()), { wrt: [xv] });
    verify(graph);
    const run = runReference(graph, { feeds: { x, c: ct ?? new Array(numel(y.type.shape)).fill(1) } });
    return Array.from(run.outputs['grad.x'].data);
  };

  it('splits the cotangent evenly between tied maxima', () => {
    expect(grad([3], [0], false, [1, 3, 3])).toEqual([0, 0.5, 0.5]);
    expect(grad([4], [0], false, [2, 2, 2, 2])).toEqual([0.25, 0.25, 0.25, 0.25]);
  });

  it('counts ties per reduction group, with keepdims and a weighted cotangent', () => {
    // rows [5,5,1] and [0,2,2] reduced over axis 1; c = [2, 4]
    expect(grad([2, 3], [1], true, [5, 5, 1, 0, 2, 2], [2, 4])).toEqual([1, 1, 0, 0, 2, 2]);
    // columns [5,0], [5,2], [1,1] reduced over axis 0; c = [1, 2, 3]: only the last column ties
    expect(grad([2, 3], [0], false, [5, 5, 1, 0, 2, 1], [1, 2, 3])).toEqual([1, 2, 1.5, 0, 0, 1.5]);
  });
}
