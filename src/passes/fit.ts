// The largest batch whose training step fits a memory size, for each mode, without and with
// recomputation (remat.ts), as `lorafa plan --fit` prints it.
//
// 1. Peak is nearly linear in the batch: the persistent buffers (weights, trainable parameters,
//    optimizer state) do not depend on it and the arena grows with it. One exact plan at the
//    reference batch gives the first estimate, (size − persistent) ÷ (arena per row).
// 2. Exact plans then settle it: the smallest batch known not to fit and the largest known to fit
//    close in, each new guess on the line through the two latest plans, until they are adjacent
//    (usually two plans: the batch and the next). Peak is assumed to grow with the batch.
// 3. "With recomputation" asks the same question of what `--budget` accepts: the plain plan up
//    to the plain batch, the most aggressive recomputation past it (starting from the batch after
//    the plain one, already compiled), and at the batch found reports the overhead of the
//    recomputation `--budget <size>` chooses there. When the persistent buffers alone pass the
//    size, no batch fits and nothing more is planned.
import { LorafaError } from '../ir/errors.ts';
import type { Graph } from '../ir/types.ts';
import { compileTraining, type Mode } from './compile.ts';
import type { LoraOptions } from './lora.ts';
import { persistentBytesOf, planMemory, type MemoryPlan, type PlanOptions } from './memory-plan.ts';
import type { OptimizerOptions } from './optimizer.ts';
import { aggressivePeak, rematerialize, type RematReport } from './remat.ts';

export interface FitOptions {
  readonly size: number;
  /** The graph traced at a batch size. */
  readonly graphAt: (batch: number) => Graph;
  /** The batch the first plan is made at. */
  readonly reference: number;
  readonly modes: readonly Mode[];
  readonly lora?: LoraOptions;
  readonly optimizer: OptimizerOptions;
  /** Loss scaling compiled in (the f16 default: compile.ts lossScaling). */
  readonly lossScaling?: boolean;
  readonly plan: Omit<PlanOptions, 'gradients' | 'dominating'>;
}

export interface FitResult {
  readonly mode: Mode;
  /** Largest batch whose plain plan fits (0: none), its peak and the next batch's. */
  readonly plain: { readonly batch: number; readonly peak?: number; readonly nextPeak: number };
  /** Largest batch that fits with recomputation, its smallest peak and the next batch's. */
  readonly remat: { readonly batch: number; readonly peak?: number; readonly nextPeak: number; readonly report?: RematReport };
  /** Bytes of the persistent buffers (weights, trainable parameters, optimizer state, inputs). */
  readonly persistent: number;
  /** Exact plans made. */
  readonly plans: number;
}

/**
 * Largest b ≥ 1 with peakAt(b) ≤ size (0 when even 1 does not fit), peak assumed to grow with b.
 * `known` are exact points already planned; each guess lies on the line through the two latest.
 */
function largest(peakAt: (b: number) => number, size: number, known: readonly [number, number][], first: number, cap = Infinity): number {
  let lo = 0;
  let hi = Infinity;
  const pts: [number, number][] = [];
  const record = (b: number, p: number) => {
    pts.push([b, p]);
    if (p <= size) lo = Math.max(lo, b);
    else hi = Math.min(hi, b);
  };
  for (const [b, p] of known) record(b, p);
  let guess = Math.max(1, Math.min(first, cap));
  while (!(hi === 1 || hi === lo + 1)) {
    if (guess <= lo || guess >= hi) guess = lo + 1;
    const p = peakAt(guess);
    record(guess, p);
    if (hi === 1 || hi === lo + 1) break;
    let next: number;
    const [a, b] = pts.filter(([, q]) => Number.isFinite(q)).slice(-2);
    if (!Number.isFinite(p)) next = Math.floor((lo + guess) / 2);
    else if (a && b && a[0] !== b[0] && b[1] !== a[1]) next = Math.floor(b[0] + ((size - b[1]) * (b[0] - a[0])) / (b[1] - a[1]));
    else next = p <= size ? guess + 1 : guess - 1;
    next = Math.min(next, Math.max(cap, lo + 1));
    // Converge on the pair (lo, lo + 1): after a fit that the line says is the last, try the next.
    if (p <= size && next <= guess) next = guess + 1;
    if (p > size && next >= guess) next = guess - 1;
    next = Math.min(Math.max(next, lo + 1), hi === Infinity ? 2 * Math.max(lo, 1) + 64 : hi - 1);
    guess = next;
  }
  return lo;
}

/** The largest tensor's bytes in the step (f32 where the planner keeps f32 is not told apart: an estimate). */
function largestTensor(g: Graph, dtype: string | undefined): number {
  let most = 0;
  for (const n of g.nodes) {
    const size = n.out.type.shape.reduce((a, d) => a * d, 1) * (n.out.type.dtype === 'i32' || !dtype || dtype === 'f32' ? 4 : 2);
    if (size > most) most = size;
  }
  return most;
}


export function fitBatches(o: FitOptions): FitResult[] {
  const graphs = new Map<number, Graph>();
  const graphAt = (b: number) => {
    let g = graphs.get(b);
    if (!g) graphs.set(b, (g = o.graphAt(b)));
    return g;
  };
  return o.modes.map((mode) => {
    let plans = 0;
    // Searches run on quick plans (PlanOptions.quick: the reference plan's schedule and packing
    // order only, a third of the work); every answer is then confirmed with full plans, which are
    // what `lorafa plan --batch b` makes: b fits and b + 1 does not.
    let hint: PlanOptions['quick'];
    // Per batch: the step, its planning functions and (planned when first asked) its plain plans.
    interface AtBatch {
      readonly step: Graph;
      readonly exact: (g: Graph) => MemoryPlan;
      readonly quick: (g: Graph) => MemoryPlan;
      plain?: MemoryPlan | null;
      plainExact?: MemoryPlan | null;
    }
    const steps = new Map<number, AtBatch>();
    const at = (b: number) => {
      let s = steps.get(b);
      if (!s) {
        const c = compileTraining(graphAt(b), { mode, lora: mode === 'full' ? undefined : o.lora, optimizer: o.optimizer, lossScaling: o.lossScaling, explain: false });
        s = {
          step: c.step!,
          exact: (g: Graph) => (plans++, planMemory(g, { ...o.plan, gradients: c.gradients })),
          quick: (g: Graph) => (plans++, planMemory(g, { ...o.plan, gradients: c.gradients, quick: hint })),
        };
        steps.set(b, s);
      }
      return s;
    };
    // A tensor past the binding or buffer limit: this batch does not fit, at any budget.
    const orInfinity = (f: () => number) => {
      try {
        return f();
      } catch (e) {
        if (e instanceof LorafaError) return Infinity;
        throw e;
      }
    };
    const plainPlan = (b: number, exact = false) => {
      const s = at(b);
      const key = exact || !hint ? 'plainExact' : 'plain';
      if (s[key] === undefined) {
        try {
          s[key] = (key === 'plainExact' ? s.exact : s.quick)(s.step);
        } catch (e) {
          if (!(e instanceof LorafaError)) throw e;
          s[key] = null;
        }
      }
      return s[key] ?? undefined;
    };
    const plainAt = (b: number) => plainPlan(b)?.peak ?? Infinity;
    const plainExactAt = (b: number) => plainPlan(b, true)?.peak ?? Infinity;
    const aggressive = new Map<string, number>();
    const aggressiveAt = (b: number, exact = false) => {
      let m = aggressive.get(`${b}${exact}`);
      if (m === undefined) {
        const s = at(b);
        aggressive.set(`${b}${exact}`, (m = orInfinity(() => aggressivePeak(s.step, exact ? s.exact : s.quick))));
      }
      return m;
    };
    // The persistent buffers (weights, trainable parameters, optimizer state) do not depend on the
    // batch, and are known without planning: over the size (full fine-tuning of a 7B model at
    // 80 GB), no batch fits, with or without remat, and nothing is planned.
    const early = persistentBytesOf(at(o.reference).step, o.plan);
    if (early > o.size) return { mode, plain: { batch: 0, nextPeak: early }, remat: { batch: 0, nextPeak: early }, persistent: early, plans };
    const ref = plainPlan(o.reference, true);
    if (ref && ref.packing >= 0) hint = { schedule: ref.scheduleName, packing: ref.packing };
    const persistent = ref ? early : Infinity;
    const result = (plain: FitResult['plain'], remat: FitResult['remat']): FitResult => ({ mode, plain, remat, persistent, plans });
    const estimate = (b: number, peak: number) => {
      const perRow = (peak - persistent) / b;
      return perRow > 0 ? Math.floor((o.size - persistent) / perRow) : b + 1;
    };
    /** The search's answer confirmed with full plans: the largest b with peakAt(b) ≤ size near it. */
    const confirm = (b0: number, peakAt: (b: number) => number) => {
      let b = b0;
      while (peakAt(b + 1) <= o.size) b++;
      while (b >= 1 && !(peakAt(b) <= o.size)) b--;
      return b;
    };
    const plainBatch = confirm(largest(plainAt, o.size, ref ? [[o.reference, ref.peak]] : [], ref ? estimate(o.reference, ref.peak) : 1), plainExactAt);
    // Past plainBatch the plain plan does not fit (peak grows with the batch), so what --budget
    // accepts there is the most aggressive recomputation's peak.
    const rematPeakAt = (b: number) => (b <= plainBatch ? plainAt(b) : aggressiveAt(b));
    const rematExactAt = (b: number) => (b <= plainBatch ? plainExactAt(b) : Math.min(plainExactAt(b), aggressiveAt(b, true)));
    const start = plainBatch + 1;
    const startPeak = rematPeakAt(start);
    // Past some batch one tensor passes the binding limit whatever the budget: the largest tensor
    // grows linearly with the batch, so two compiled batches give a cap for the guesses.
    const limit = o.plan.limits?.maxBindingSize ?? Infinity;
    const [t0, t1] = [largestTensor(at(o.reference).step, o.plan.dtype), largestTensor(at(start).step, o.plan.dtype)];
    const cap = start !== o.reference && t1 > t0 ? Math.floor(o.reference + ((limit - t0) * (start - o.reference)) / (t1 - t0)) : Infinity;
    const rematBatch = confirm(largest(rematPeakAt, o.size, [[start, startPeak]], Number.isFinite(startPeak) ? estimate(start, startPeak) : plainBatch, cap), rematExactAt);
    let report: RematReport | undefined;
    if (rematBatch > plainBatch) {
      const s = at(rematBatch);
      // The cheapest recomputation that fits, searched on quick plans like the batches were.
      report = rematerialize(s.step, { budget: o.size, plan: s.quick, plain: plainPlan(rematBatch) }).report;
    }
    return result(
      { batch: plainBatch, peak: plainBatch ? plainExactAt(plainBatch) : undefined, nextPeak: plainExactAt(plainBatch + 1) },
      { batch: rematBatch, peak: rematBatch ? rematExactAt(rematBatch) : undefined, nextPeak: rematExactAt(rematBatch + 1), report },
    );
  });
}
