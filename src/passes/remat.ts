// Rematerialisation under a memory budget: backward recomputes some forward values instead of
// keeping them from the forward pass.
//
// 1. Saved values (S0): the storage roots of forward values that a non-forward node reads
//    (through views). Keeping a set S ⊆ S0 decides everything: a forward value is available to
//    backward when it is persistent, an inlined scalar, or a view of a root in S; any other value a
//    backward node reads is recomputed, from available values or other recomputed ones.
// 2. Recompute nodes are clones of the forward nodes (`<name>.remat`, phase backward), one per
//    forward value, placed just before the first backward node that needs them; backward readers
//    are rewired to them. The result is an ordinary graph: it verifies, prints and plans.
// 3. Candidates, cheapest first (PyTorch's partitioner orders its knapsack the same way):
//    a. every saved root that is not a segment boundary, by bytes saved per FLOP of its own
//       recomputation (from S0), largest first: fills and views cost nothing, elementwise ops and
//       norms little, matmuls and attention the most per byte;
//    b. segment boundaries (Chen et al.'s √n checkpointing): forward values that are the only
//       large value live across their step (a transformer's residual stream). They are dropped
//       in stride levels, every 2nd, then every 4th, 8th…, so the kept boundaries thin out and
//       backward recomputes longer segments from them.
//    The most aggressive prefix is the level end with the smallest estimated activations (kept
//    bytes + the largest segment's recomputed bytes), so it is found without planning.
// 4. The exact planner (planMemory) is the judge: the most aggressive prefix must fit the budget,
//    else a LorafaError names its peak as the smallest budget. Otherwise a search (regula falsi
//    in the saved bytes dropped, with halvings) finds the shortest prefix whose peak
//    fits, assuming peak falls as the prefix grows (it does, though not always strictly), or one
//    whose recomputation costs at most 0.1% of the step's FLOPs more than the longest
//    prefix known not to fit (SEARCH_TOLERANCE): planning is the expensive part.
import { LorafaError } from '../ir/errors.ts';
import { fmtBytes, fmtDecimalBytes } from '../ir/format.ts';
import { numel, type Graph, type Node, type Value } from '../ir/types.ts';
import type { MemoryPlan } from './memory-plan.ts';
import { isInlineConstant, isView } from './schedule.ts';

/** FLOPs of one node: matmul 2·m·n·k, attention 2·b·h·sq·sk·(dk + dv), views 0, else ~numel. */
export function flopsOf(n: Node): number {
  const out = numel(n.out.type.shape);
  const shape = (i: number) => n.inputs[i].type.shape;
  switch (n.op) {
    case 'reshape':
    case 'stop_gradient':
      return 0;
    case 'fill':
      return n.out.type.shape.length === 0 ? 0 : out;
    case 'matmul': {
      const a = shape(0);
      const k = (n.attrs as { transA: boolean }).transA ? a[a.length - 2] : a[a.length - 1];
      return 2 * out * k;
    }
    case 'attention':
    case 'attention_dq':
    case 'attention_dkv': {
      const [b, h, sq, dk] = shape(0);
      const sk = shape(1)[2];
      const dv = shape(2)[3];
      // Forward: QKᵀ and PV; each backward kernel recomputes P and does two more products.
      return (n.op === 'attention' ? 2 : 3) * b * h * sq * sk * (dk + dv);
    }
    case 'linear_cross_entropy': {
      const [rows, d] = shape(0);
      const w = shape(1);
      const vocab = w[0] === d ? w[1] : w[0];
      return 2 * rows * d * vocab + 4 * rows * vocab;
    }
    case 'sum':
    case 'max':
    case 'cross_entropy':
    case 'cross_entropy_grad':
      return 4 * numel(shape(0));
    case 'rms_norm':
    case 'rms_norm_grad':
    case 'layer_norm':
    case 'layer_norm_grad':
      return 8 * numel(shape(0));
    default:
      return out;
  }
}

export function graphFlops(g: Graph): number {
  let s = 0;
  for (const n of g.nodes) s += flopsOf(n);
  return s;
}

/** What recomputation did to a step. */
export interface RematReport {
  /** Saved values (storage roots) no longer kept from the forward pass. */
  readonly dropped: readonly string[];
  /** Recompute nodes inserted (`<name>.remat`). */
  readonly recomputeNodes: number;
  readonly extraFlops: number;
  /** FLOPs of the step without recomputation. */
  readonly stepFlops: number;
  /** Saved-activation bytes when backward starts: without and with recomputation. */
  readonly savedBefore: number;
  readonly savedAfter: number;
  readonly budget: number;
  /** Peak without recomputation, and the smallest peak this planner reaches (its most aggressive choice). */
  readonly plainPeak: number;
  readonly minPeak: number;
}

/** The recomputation's extra FLOPs as a percentage of the step's (0 when nothing was recomputed), to 3 decimals. */
export function overheadPercent(r: RematReport | undefined): number {
  return r ? Number(((100 * r.extraFlops) / r.stepFlops).toFixed(3)) : 0;
}

interface Structure {
  readonly producer: ReadonlyMap<number, Node>;
  readonly rootOf: (id: number) => number;
  /** S0: roots of forward values read by non-forward nodes, with their element counts. */
  readonly saved: ReadonlyMap<number, number>;
  readonly persistent: ReadonlySet<number>;
}

function structure(g: Graph): Structure {
  const producer = new Map(g.nodes.map((n) => [n.out.id, n]));
  const viewOf = new Map<number, number>();
  for (const n of g.nodes) if (isView(n)) viewOf.set(n.out.id, n.inputs[0].id);
  const rootOf = (id: number): number => {
    const v = viewOf.get(id);
    return v === undefined ? id : rootOf(v);
  };
  const persistent = new Set([...g.params.map((p) => p.value.id), ...g.inputs.map((i) => i.value.id)]);
  const fixed = new Set([...Object.values(g.outputs), ...g.updates.map((u) => u.value)].map((v) => rootOf(v.id)));
  const saved = new Map<number, number>();
  for (const n of g.nodes) {
    if (n.phase === 'forward') continue;
    for (const x of n.inputs) {
      const r = rootOf(x.id);
      const p = producer.get(r);
      if (!p || p.phase !== 'forward' || isInlineConstant(p) || fixed.has(r)) continue;
      saved.set(r, numel(p.out.type.shape));
    }
  }
  return { producer, rootOf, saved, persistent };
}

/**
 * The step with the given saved roots recomputed in backward (see 1–2 above). Returns the graph
 * and the number and FLOPs of the recompute nodes it inserted.
 */
export function applyRemat(g: Graph, drop: ReadonlySet<number>, st: Structure = structure(g)): { graph: Graph; nodes: number; flops: number } {
  if (!drop.size) return { graph: g, nodes: 0, flops: 0 };
  const { producer, rootOf, saved, persistent } = st;
  const available = (v: Value) => {
    if (persistent.has(v.id)) return true;
    const p = producer.get(v.id);
    if (!p || p.phase !== 'forward' || isInlineConstant(p)) return true;
    const r = rootOf(v.id);
    // A view of a parameter, an input or an inlined scalar owns no bytes: nothing to recompute.
    const root = producer.get(r);
    if (persistent.has(r) || (root && isInlineConstant(root))) return true;
    return saved.has(r) && !drop.has(r);
  };
  let nextId = g.nextId;
  const clones = new Map<number, Value>();
  const cloneNodes = new Map<number, Node>();
  let flops = 0;
  const clone = (v: Value): Value => {
    const hit = clones.get(v.id);
    if (hit) return hit;
    const n = producer.get(v.id)!;
    const inputs = n.inputs.map((x) => (available(x) ? x : clone(x)));
    const out: Value = { id: nextId++, type: v.type, name: `${v.name}.remat` };
    clones.set(v.id, out);
    cloneNodes.set(v.id, { ...n, inputs, out, phase: 'backward', recompute: true });
    flops += flopsOf(n);
    return out;
  };
  const emitted = new Set<number>();
  const nodes: Node[] = [];
  // Clones in dependency order, just before the node that first needs them.
  const emit = (origId: number) => {
    if (emitted.has(origId)) return;
    emitted.add(origId);
    for (const x of producer.get(origId)!.inputs) if (!available(x)) emit(x.id);
    nodes.push(cloneNodes.get(origId)!);
  };
  for (const n of g.nodes) {
    if (n.phase === 'forward' || n.inputs.every(available)) {
      nodes.push(n);
      continue;
    }
    const inputs = n.inputs.map((x) => (available(x) ? x : clone(x)));
    for (const x of n.inputs) if (!available(x)) emit(x.id);
    nodes.push({ ...n, inputs });
  }
  return { graph: { ...g, nodes, nextId }, nodes: cloneNodes.size, flops };
}

interface Candidates {
  /** Saved roots in the order they are dropped. */
  readonly order: readonly number[];
  /** Prefix lengths worth judging: the end of each level (non-boundaries, then each stride). */
  readonly levels: readonly number[];
  /** The level end with the smallest estimated activations. */
  readonly aggressive: number;
}

function candidates(g: Graph, st: Structure): Candidates {
  const { producer, rootOf, saved, persistent } = st;
  const position = new Map<number, number>();
  const forward = g.nodes.filter((n) => n.phase === 'forward');
  forward.forEach((n, i) => position.set(n.out.id, i));
  // Segment boundaries: at root r's step no other large value (≥ ¼ of r) defined earlier is read
  // by a later forward node.
  const lastRead = new Map<number, number>();
  forward.forEach((n, i) => {
    for (const x of n.inputs) if (!persistent.has(x.id)) lastRead.set(rootOf(x.id), i);
  });
  const boundaries: number[] = [];
  const open: { size: number; last: number }[] = [];
  forward.forEach((n, i) => {
    const r = n.out.id;
    if (saved.has(r) && lastRead.has(r)) {
      const size = saved.get(r)!;
      if (!open.some((o) => o.last > i && o.size * 4 >= size)) boundaries.push(r);
    }
    if (!isView(n) && !isInlineConstant(n)) open.push({ size: numel(n.out.type.shape), last: lastRead.get(r) ?? i });
    // Keep the scan linear: drop values no longer read.
    if (open.length > 64) for (let k = open.length - 1; k >= 0; k--) if (open[k].last <= i) open.splice(k, 1);
  });
  const isBoundary = new Set(boundaries);
  const cost = new Map<number, number>();
  for (const r of saved.keys()) cost.set(r, applyCost(st, r));
  const ratio = (r: number) => saved.get(r)! / Math.max(cost.get(r)!, 1);
  const byRatio = (a: number, b: number) => ratio(b) - ratio(a) || saved.get(b)! - saved.get(a)! || position.get(a)! - position.get(b)!;
  const inner = [...saved.keys()].filter((r) => !isBoundary.has(r)).sort(byRatio);
  const order = [...inner];
  const levels = inner.length ? [inner.length] : [];
  for (let stride = 2; stride / 2 < boundaries.length; stride *= 2) {
    const level = boundaries.filter((_, i) => (i + 1) % stride !== 0 && (i + 1) % (stride / 2) === 0).sort(byRatio);
    if (!level.length) continue;
    order.push(...level);
    levels.push(order.length);
  }
  // Estimated activations at each level end: what stays saved, plus the largest run of saved
  // values between two kept boundaries (recomputed and live together in that segment's backward).
  let best = 0;
  let bestEstimate = Infinity;
  for (const end of levels) {
    const dropped = new Set(order.slice(0, end));
    let kept = 0;
    let segment = 0;
    let worst = 0;
    for (const n of forward) {
      const r = n.out.id;
      if (!saved.has(r)) continue;
      if (!dropped.has(r)) {
        kept += saved.get(r)!;
        if (isBoundary.has(r)) segment = 0;
      } else worst = Math.max(worst, (segment += saved.get(r)!));
    }
    if (kept + worst < bestEstimate) {
      bestEstimate = kept + worst;
      best = end;
    }
  }
  return { order, levels, aggressive: best };
}

function applyCost(st: Structure, r: number): number {
  // FLOPs to recompute r when every other saved value is kept.
  let flops = 0;
  const seen = new Set<number>();
  const visit = (id: number) => {
    if (seen.has(id) || st.persistent.has(id)) return;
    seen.add(id);
    const n = st.producer.get(id);
    if (!n || n.phase !== 'forward' || isInlineConstant(n)) return;
    const root = st.rootOf(id);
    if (id !== r && root !== r && st.saved.has(root)) return;
    flops += flopsOf(n);
    for (const x of n.inputs) visit(x.id);
  };
  visit(r);
  return flops;
}

export interface RematOptions {
  /** Bytes the plan's peak (MemoryPlan.peak: persistent buffers + arena) must not pass. */
  readonly budget: number;
  /** Plans a step graph (planMemory with the caller's limits, dtype and gradients). */
  readonly plan: (g: Graph) => MemoryPlan;
  /** The step's plan without recomputation, when the caller has it. */
  readonly plain?: MemoryPlan;
  /** Named in the error when no choice fits. */
  readonly what?: string;
}

interface Judged {
  readonly graph: Graph;
  readonly plan: MemoryPlan;
  readonly nodes: number;
  readonly flops: number;
}

/** Per step graph and planning function: its structure, candidates and every prefix planned. */
const judgedCache = new WeakMap<Graph, { st: Structure; c: Candidates; byPlan: WeakMap<(g: Graph) => MemoryPlan, Map<number, Judged>> }>();

function analysis(g: Graph, plan: (g: Graph) => MemoryPlan) {
  let a = judgedCache.get(g);
  if (!a) {
    const st = structure(g);
    judgedCache.set(g, (a = { st, c: candidates(g, st), byPlan: new WeakMap() }));
  }
  let judged = a.byPlan.get(plan);
  if (!judged) a.byPlan.set(plan, (judged = new Map()));
  const { st, c } = a;
  const judge = (k: number): Judged => {
    let j = judged.get(k);
    if (!j) {
      const r = applyRemat(g, new Set(c.order.slice(0, k)), st);
      j = { ...r, plan: plan(r.graph) };
      judged.set(k, j);
    }
    return j;
  };
  return { st, c, judge };
}

/** The search stops when the bracket's two prefixes differ by less than this share of the step's FLOPs. */
export const SEARCH_TOLERANCE = 0.001;

const savedAtBackward = (p: MemoryPlan) => p.timeline[p.backwardStart]?.saved ?? 0;
const GB = fmtDecimalBytes;

/**
 * The cheapest recomputation (in candidate order) whose plan fits the budget. Without need (the
 * plain plan fits) the graph is returned as is, with no report. Throws a LorafaError naming the
 * smallest budget this planner can meet when even the most aggressive choice does not fit.
 */
export function rematerialize(g: Graph, o: RematOptions): { graph: Graph; plan: MemoryPlan; report?: RematReport; minPeak: number } {
  const plain = o.plain ?? o.plan(g);
  if (plain.peak <= o.budget) return { graph: g, plan: plain, minPeak: plain.peak };
  const { st, c, judge } = analysis(g, o.plan);
  const top = c.aggressive > 0 ? judge(c.aggressive) : undefined;
  const minPeak = Math.min(plain.peak, top?.plan.peak ?? Infinity);
  if (!top || top.plan.peak > o.budget) {
    throw new LorafaError(
      o.what ?? g.file ?? g.name,
      `the step needs ${fmtBytes(plain.peak)} (${GB(plain.peak)}) without recomputation, over the budget ${fmtBytes(o.budget)} (${GB(o.budget)}); the smallest budget this step fits is ${fmtBytes(minPeak)} (${GB(minPeak)})`,
      `raise --budget to at least ${fmtBytes(minPeak)} (${minPeak} bytes), or lower --batch/--seq${plain.dtype === 'f32' ? ', or use --dtype bf16' : ''}`,
    );
  }
  // Search over prefixes, lo not fitting and hi fitting: regula falsi on peak − budget against the
  // saved bytes each prefix drops (peak falls about linearly in them), Illinois-style (an end kept
  // twice in a row has its excess halved, so the guesses do not creep from one side), with a
  // halving every third turn so it stays within a small factor of bisection when the line is off.
  let lo = 0;
  let hi = c.aggressive;
  let fLo = plain.peak - o.budget;
  let fHi = top.plan.peak - o.budget;
  let kept = 0;
  const dropped = [0];
  for (const r of c.order) dropped.push(dropped[dropped.length - 1] + st.saved.get(r)!);
  // Close enough: the prefixes between lo and hi differ by less than SEARCH_TOLERANCE of the
  // step's FLOPs (recomputation counted without planning), so hi is as cheap as any.
  const stepFlops = graphFlops(g);
  const costs = new Map<number, number>();
  const costOf = (k: number) => {
    let f = costs.get(k);
    if (f === undefined) costs.set(k, (f = applyRemat(g, new Set(c.order.slice(0, k)), st).flops));
    return f;
  };
  for (let turn = 1; hi - lo > 1 && costOf(hi) - costOf(lo) > SEARCH_TOLERANCE * stepFlops; turn++) {
    let next = (lo + hi) >> 1;
    if (turn % 3 !== 0 && fLo > fHi) {
      const target = dropped[lo] + ((dropped[hi] - dropped[lo]) * fLo) / (fLo - fHi);
      next = lo + 1;
      while (next < hi - 1 && dropped[next] < target) next++;
    }
    next = Math.min(hi - 1, Math.max(lo + 1, next));
    const f = judge(next).plan.peak - o.budget;
    if (f <= 0) {
      [hi, fHi] = [next, f];
      if (kept < 0) fLo /= 2;
      kept = kept < 0 ? kept - 1 : -1;
    } else {
      [lo, fLo] = [next, f];
      if (kept > 0) fHi /= 2;
      kept = kept > 0 ? kept + 1 : 1;
    }
  }
  const best = judge(hi);
  return {
    graph: best.graph,
    plan: best.plan,
    minPeak,
    report: {
      dropped: c.order.slice(0, hi).map((r) => st.producer.get(r)!.out.name),
      recomputeNodes: best.nodes,
      extraFlops: best.flops,
      stepFlops,
      savedBefore: savedAtBackward(plain),
      savedAfter: savedAtBackward(best.plan),
      budget: o.budget,
      plainPeak: plain.peak,
      minPeak,
    },
  };
}

/** The peak of the most aggressive recomputation alone (Infinity when there is nothing to drop). */
export function aggressivePeak(g: Graph, plan: (g: Graph) => MemoryPlan): number {
  const { c, judge } = analysis(g, plan);
  return c.aggressive ? judge(c.aggressive).plan.peak : Infinity;
}

/**
 * The smallest peak this planner reaches for the step (its most aggressive recomputation, or none
 * when that is not smaller): the least budget `rematerialize` accepts.
 */
export function minimumPeak(g: Graph, plan: (g: Graph) => MemoryPlan, plain: MemoryPlan = plan(g)): number {
  return Math.min(plain.peak, aggressivePeak(g, plan));
}
