// The largest batch whose training step fits a memory size, for each mode, without and with
// recomputation (remat.ts), as `lorafa plan --fit` prints it.
//
// 1. Peak is nearly linear in the batch: the persistent buffers (weights, trainable parameters,
//    optimizer state) do not depend on it and the arena grows with it. One exact plan at the
//    reference batch gives the first estimate, (size − persistent) ÷ (arena per row).
// 2. Exact plans then settle it: the smallest batch known not to fit and the largest known to fit
//    close in, each new guess on the line through the two latest plans, until they are adjacent
//    (usually two plans: the batch and the next). Peak is assumed to grow with the batch.
// 3. "With recomputation" asks the same question of the smallest peak remat reaches
//    (minimumPeak: what `--budget` accepts), and at the batch found reports the overhead of the
//    recomputation `--budget <size>` chooses there.
import { LorafaError } from '../ir/errors.ts';
import type { Graph } from '../ir/types.ts';
import { compileTraining, type Mode } from './compile.ts';
import type { LoraOptions } from './lora.ts';
import { planMemory, type MemoryPlan, type PlanOptions } from './memory-plan.ts';
import type { OptimizerOptions } from './optimizer.ts';
import { minimumPeak, rematerialize, type RematReport } from './remat.ts';

export interface FitOptions {
  readonly size: number;
  /** The graph traced at a batch size. */
  readonly graphAt: (batch: number) => Graph;
  /** The batch the first plan is made at. */
  readonly reference: number;
  readonly modes: readonly Mode[];
  readonly lora?: LoraOptions;
  readonly optimizer: OptimizerOptions;
  readonly plan: Omit<PlanOptions, 'gradients' | 'dominating'>;
}

export interface FitResult {
  readonly mode: Mode;
  /** Largest batch whose plain plan fits (0: none), its peak and the next batch's. */
  readonly plain: { readonly batch: number; readonly peak?: number; readonly nextPeak: number };
  /** Largest batch that fits with recomputation, its smallest peak and the next batch's. */
  readonly remat: { readonly batch: number; readonly peak?: number; readonly nextPeak: number; readonly report?: RematReport };
  /** Exact plans made. */
  readonly plans: number;
}

/** Largest b ≥ 1 with peakAt(b) ≤ size (0 when even 1 does not fit), from an estimate. */
function largest(peakAt: (b: number) => number, size: number, first: number): number {
  let lo = 0;
  let hi = Infinity;
  const pts: [number, number][] = [];
  let guess = Math.max(1, first);
  for (;;) {
    const p = peakAt(guess);
    pts.push([guess, p]);
    if (p <= size) lo = Math.max(lo, guess);
    else hi = Math.min(hi, guess);
    if (hi === 1 || hi === lo + 1) return lo;
    let next: number;
    const [a, b] = pts.slice(-2);
    if (!Number.isFinite(p)) next = Math.floor((lo + guess) / 2);
    else if (b && Number.isFinite(a[1]) && a[0] !== b[0] && b[1] !== a[1]) next = Math.floor(b[0] + ((size - b[1]) * (b[0] - a[0])) / (b[1] - a[1]));
    else next = p <= size ? guess + 1 : guess - 1;
    // Converge on the pair (lo, lo + 1): after a fit, also try the next batch.
    if (p <= size && next <= guess) next = guess + 1;
    next = Math.min(Math.max(next, lo + 1), hi === Infinity ? Number.MAX_SAFE_INTEGER : hi - 1);
    if (next > lo + 1 && hi === Infinity && p <= size && next > 2 * guess + 64) next = 2 * guess + 64;
    guess = next;
  }
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
    const steps = new Map<number, { step: Graph; plan: (g: Graph) => MemoryPlan; plain?: MemoryPlan }>();
    const at = (b: number) => {
      let s = steps.get(b);
      if (!s) {
        const c = compileTraining(graphAt(b), { mode, lora: mode === 'full' ? undefined : o.lora, optimizer: o.optimizer });
        const plan = (g: Graph) => (plans++, planMemory(g, { ...o.plan, gradients: c.gradients }));
        let plain: MemoryPlan | undefined;
        try {
          plain = plan(c.step!);
        } catch (e) {
          // A tensor past the binding or buffer limit: this batch does not fit, at any budget.
          if (!(e instanceof LorafaError)) throw e;
        }
        s = { step: c.step!, plan, plain };
        steps.set(b, s);
      }
      return s;
    };
    const plainAt = (b: number) => at(b).plain?.peak ?? Infinity;
    const minimum = new Map<number, number>();
    const minAt = (b: number) => {
      let m = minimum.get(b);
      if (m === undefined) {
        const s = at(b);
        minimum.set(b, (m = s.plain ? minimumPeak(s.step, s.plan, s.plain) : Infinity));
      }
      return m;
    };
    const estimate = (peak: number, plain: MemoryPlan) => {
      const persistent = plain.buffers.filter((x) => x.region === 'persistent').reduce((t, x) => t + x.bytes, 0);
      const perRow = (peak - persistent) / o.reference;
      return perRow > 0 ? Math.floor((o.size - persistent) / perRow) : o.reference;
    };
    const ref = at(o.reference).plain;
    const plainBatch = largest(plainAt, o.size, ref ? estimate(ref.peak, ref) : 1);
    const rematBatch = largest(minAt, o.size, Math.max(plainBatch, ref ? estimate(minAt(o.reference), ref) : 1));
    let report: RematReport | undefined;
    if (rematBatch > 0) {
      const s = at(rematBatch);
      report = rematerialize(s.step, { budget: o.size, plan: s.plan, plain: s.plain! }).report;
    }
    return {
      mode,
      plain: { batch: plainBatch, peak: plainBatch ? plainAt(plainBatch) : undefined, nextPeak: plainAt(plainBatch + 1) },
      remat: { batch: rematBatch, peak: rematBatch ? minAt(rematBatch) : undefined, nextPeak: minAt(rematBatch + 1), report },
      plans,
    };
  });
}
