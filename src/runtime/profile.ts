// Where a training step's time goes, kernel by kernel: `lorafa train … --profile`, the W1 table of
// `npm run bench`, and the API (StepProfiler, profileSteps).
//
// 1. A profiled step is a training step. It runs through the runner's own beginStep,
//    encodeDispatch (every dispatch of the plan, in the plan's order, on the same bindings),
//    encodeReadback and readResult; only the grouping differs: each dispatch gets a compute pass of
//    its own. Passes of one encoder, like submissions to one queue, run in order and see each
//    other's writes, so a profiled step computes what StepRunner.runStep computes, bit for bit on a
//    deterministic device (test/profile.test.ts trains both ways and compares).
// 2. The clock. With 'timestamp-query', each pass writes a timestamp as it begins and ends into a
//    query set (two per dispatch; WebGPU allows 4096 queries a set, so a plan past 2048 dispatches
//    takes several), resolved into one buffer and read back once per step. Without it,
//    each dispatch is submitted alone and waited for (onSubmittedWorkDone through quietly()): wall
//    time, which also holds a submission and the wait (a tenth of a millisecond and more on
//    lavapipe), so small kernels read long. The profile says which clock it used.
// 3. Per kernel (the plan's kernel label: the op or fused ops, input→output shapes): its
//    dispatches' times summed within a step (an optimizer step: with gradient accumulation, its
//    micro-steps together), then the median over the profiled steps; share = that ÷ the sum over
//    kernels. Work: bytes = the slices a dispatch binds, each operand read and each output written
//    once at its storage's element size (the least traffic the kernel can have) → GB/s; FLOPs for
//    the kernels whose work is arithmetic (matmul 2·m·n·k; attention and the fused linear
//    cross-entropy as flopsOf counts them) → GFLOP/s. The shapes come from the kernel label, because
//    a trainer folder carries its kernel plan and not the graph; the test holds the label's FLOPs
//    to the graph's matmul nodes.
// 4. The step: the wall time of an unprofiled step (the caller measures it: profiling adds a pass
//    per dispatch, and the fallback clock a wait per dispatch), the summed kernel time, and the
//    step's matmul FLOPs against the wall time.
import type { KernelPlan } from '../codegen/kernel-plan.ts';
import { LorafaError } from '../ir/errors.ts';
import type { Node } from '../ir/types.ts';
import { flopsOf } from '../passes/remat.ts';
import type { StepResult, StepRunner } from './executor.ts';
import { quietly, type Gpu } from './gpu.ts';

/** How dispatches are timed: timestamp queries, or each dispatch alone by the wall clock. */
export type ProfileClock = 'timestamps' | 'wall';

export const CLOCK_DESCRIPTIONS: Readonly<Record<ProfileClock, string>> = {
  timestamps: 'timestamp queries, each dispatch in its own compute pass',
  wall: "wall clock, each dispatch submitted alone and waited for (no 'timestamp-query' here: a dispatch's time includes its submission and the wait)",
};

export interface ProfileRow {
  /** The kernel's label: `op [in][in]→[out]` or `fused(op,op) …`. */
  readonly kernel: string;
  /** Dispatches of this kernel in one (optimizer) step. */
  readonly dispatches: number;
  /** Its dispatches' time in one step: the median over the profiled steps. */
  readonly ms: number;
  /** ms ÷ the kernels' summed time (the shares of all rows add up to 1). */
  readonly share: number;
  /** FLOPs of its dispatches in one step, for matmul, attention and the fused linear cross-entropy. */
  readonly flops?: number;
  /** Bytes its dispatches bind in one step (operands read and outputs written once each). */
  readonly bytes: number;
  readonly gflops?: number;
  readonly gbps: number;
  /** A matmul kernel: its FLOPs count in the step's matmul FLOPs. */
  readonly matmul: boolean;
}

export interface StepProfile {
  readonly clock: ProfileClock;
  /** Optimizer steps profiled (each row's ms is the median over them). */
  readonly steps: number;
  /** Which steps they were, in words (e.g. "steps 2–4"), when the caller said. */
  readonly which?: string;
  /** Per kernel, by time, longest first. */
  readonly rows: readonly ProfileRow[];
  /** Dispatches of one step (the rows' dispatches summed). */
  readonly dispatches: number;
  /** The rows' ms summed. */
  readonly kernelMs: number;
  /** Wall time of one step. */
  readonly wallMs: number;
  /** What wallMs measured. */
  readonly wallOf: string;
  /** 2·m·n·k over the step's matmul dispatches. */
  readonly matmulFlops: number;
  /** matmulFlops ÷ wallMs. */
  readonly gflops: number;
}

export interface ProfilerOptions {
  /** 'auto' (default): timestamps where the device has 'timestamp-query', else the wall clock. */
  readonly clock?: ProfileClock | 'auto';
  /** Queries per query set: a multiple of 32 (resolve offsets are multiples of 256 B), default and most MAX_QUERIES; the tests make it small. */
  readonly querySetSize?: number;
}

/** WebGPU's largest query set: a plan of more than half as many dispatches takes several. */
export const MAX_QUERIES = 4096;

type Feeds = Readonly<Record<string, ArrayLike<number>>>;

/** One step's record: per dispatch, its time and how often it ran. */
interface StepRecord {
  readonly ms: Float64Array;
  readonly runs: Uint32Array;
  wall: number;
}

/**
 * Runs training steps in profiled mode (runStep in place of the runner's) and keeps their
 * kernel times; result() summarises them. Its query set and buffers (32 bytes per dispatch) are its
 * own: made at construction, before the caller measures the step's GPU bytes.
 */
export class StepProfiler {
  readonly clock: ProfileClock;
  /** Dispatch i writes its begin and end at 2·(i mod perSet), +1 of query set ⌊i / perSet⌋. */
  private readonly querySets: GPUQuerySet[] = [];
  private readonly perSet: number = 0;
  private readonly resolved?: GPUBuffer;
  private readonly readback?: GPUBuffer;
  private readonly steps: StepRecord[] = [];
  private current?: StepRecord;

  constructor(
    private readonly gpu: Gpu,
    readonly plan: KernelPlan,
    o: ProfilerOptions = {},
  ) {
    const has = gpu.device.features.has('timestamp-query');
    const want = o.clock ?? 'auto';
    if (want === 'timestamps' && !has) {
      throw new LorafaError('profile', "timestamp queries were asked for, and this device has no 'timestamp-query' feature", "profile with the wall clock (clock: 'wall' or 'auto')");
    }
    this.clock = want === 'auto' ? (has ? 'timestamps' : 'wall') : want;
    if (this.clock === 'timestamps') {
      const n = plan.dispatches.length;
      const device = gpu.device;
      const size = Math.min(o.querySetSize ?? MAX_QUERIES, MAX_QUERIES);
      if (!(Number.isInteger(size) && size >= 32 && size % 32 === 0)) throw new LorafaError('profile', `querySetSize must be a multiple of 32 up to ${MAX_QUERIES}, got ${o.querySetSize}`);
      this.perSet = size >> 1;
      for (let first = 0; first < n; first += this.perSet) {
        this.querySets.push(device.createQuerySet({ label: `lorafa profile ${first}`, type: 'timestamp', count: 2 * Math.min(this.perSet, n - first) }));
      }
      this.resolved = device.createBuffer({ label: 'lorafa profile resolve', size: 16 * n, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC });
      this.readback = device.createBuffer({ label: 'lorafa profile readback', size: 16 * n, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    }
  }

  /** Optimizer steps recorded so far (an update ends one). */
  get profiledSteps(): number {
    return this.steps.length;
  }

  /**
   * runner.runStep(feeds, opts), profiled: the same arithmetic, each dispatch timed. A step with
   * its update ends an optimizer step; micro-steps without it add to the one in progress.
   */
  async runStep(runner: StepRunner, feeds?: Feeds, opts: { readonly update?: boolean } = {}): Promise<StepResult> {
    if (runner.plan !== this.plan) throw new LorafaError('profile', 'this profiler was made for another kernel plan', 'make a StepProfiler for the runner it profiles');
    const t0 = performance.now();
    const update = runner.beginStep(feeds, opts);
    const n = this.plan.dispatches.length;
    const rec = (this.current ??= { ms: new Float64Array(n), runs: new Uint32Array(n), wall: 0 });
    const ran = this.plan.dispatches.map((_, i) => runner.runs(i, update));
    const device = this.gpu.device;
    let result: StepResult;
    if (this.clock === 'timestamps') {
      const per = this.perSet;
      await scoped(device, 'a profiled training step', async () => {
        const enc = device.createCommandEncoder({ label: 'lorafa profiled step' });
        for (let i = 0; i < n; i++) {
          if (!ran[i]) continue;
          const at = 2 * (i % per);
          const pass = enc.beginComputePass({ timestampWrites: { querySet: this.querySets[Math.floor(i / per)], beginningOfPassWriteIndex: at, endOfPassWriteIndex: at + 1 } });
          runner.encodeDispatch(pass, i);
          pass.end();
        }
        runner.encodeReadback(enc, update);
        // Set k resolves to byte 16·per·k, which keeps the index of dispatch i at 2i.
        this.querySets.forEach((q, k) => enc.resolveQuerySet(q, 0, q.count, this.resolved!, 16 * per * k));
        enc.copyBufferToBuffer(this.resolved!, 0, this.readback!, 0, 16 * n);
        device.queue.submit([enc.finish()]);
      });
      result = await runner.readResult(update);
      await quietly(() => this.readback!.mapAsync(GPUMapMode.READ));
      const t = new BigUint64Array(this.readback!.getMappedRange().slice(0));
      this.readback!.unmap();
      // Only the passes that ran wrote their queries this step.
      for (let i = 0; i < n; i++) if (ran[i]) add(rec, i, Math.max(0, Number(t[2 * i + 1] - t[2 * i])) / 1e6);
    } else {
      await scoped(device, 'a profiled training step', async () => {
        for (let i = 0; i < n; i++) {
          if (!ran[i]) continue;
          const enc = device.createCommandEncoder({ label: `lorafa profiled dispatch ${i}` });
          const pass = enc.beginComputePass();
          runner.encodeDispatch(pass, i);
          pass.end();
          const s = performance.now();
          device.queue.submit([enc.finish()]);
          await quietly(() => device.queue.onSubmittedWorkDone());
          add(rec, i, performance.now() - s);
        }
        const enc = device.createCommandEncoder({ label: 'lorafa profiled readback' });
        runner.encodeReadback(enc, update);
        device.queue.submit([enc.finish()]);
      });
      result = await runner.readResult(update);
    }
    rec.wall += performance.now() - t0;
    if (update) {
      this.steps.push(rec);
      this.current = undefined;
    }
    return result;
  }

  /**
   * The profile of the steps recorded. `wall`: one unprofiled step's time and what it is (say, "the
   * median of 16 unprofiled steps"); without it, the profiled steps' own wall time, profiling
   * included. `which`: the steps profiled, in words, for the heading.
   */
  result(o: { readonly wall?: { readonly ms: number; readonly of: string }; readonly which?: string } = {}): StepProfile {
    if (!this.steps.length) throw new LorafaError('profile', 'no step was profiled', 'run at least one step with its update through the profiler');
    const wall = o.wall ?? { ms: median(this.steps.map((s) => s.wall)), of: `the profiled steps' median, profiling included` };
    return { ...summarise(this.plan, this.steps, this.clock, wall), ...(o.which ? { which: o.which } : {}) };
  }

  destroy(): void {
    for (const q of this.querySets) q.destroy();
    this.resolved?.destroy();
    this.readback?.destroy();
  }
}

function add(rec: StepRecord, i: number, ms: number): void {
  rec.ms[i] += ms;
  rec.runs[i]++;
}

/**
 * Runs `fn` inside validation and out-of-memory scopes, awaiting it before the scopes close (checked()
 * in gpu.ts closes them when a synchronous fn returns: the wall clock's submissions come later).
 */
async function scoped(device: GPUDevice, what: string, fn: () => Promise<void>): Promise<void> {
  device.pushErrorScope('out-of-memory');
  device.pushErrorScope('validation');
  let failure: unknown;
  try {
    await fn();
  } catch (e) {
    failure = e;
  }
  const validation = await quietly(() => device.popErrorScope());
  const oom = await quietly(() => device.popErrorScope());
  if (failure) throw failure;
  if (oom) throw new LorafaError(what, `the GPU is out of memory: ${oom.message}`, 'plan a smaller step (--batch, --seq, --dtype) and compare with `lorafa plan`');
  if (validation) throw new LorafaError(what, `WebGPU validation error: ${validation.message}`, 'this is a lorafa bug: report it with the model and command; a step without --profile names the failing kernel');
}

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/** Ops whose kernels' work is arithmetic (GFLOP/s); the rest move bytes (GB/s). */
const FLOP_OPS: ReadonlySet<string> = new Set(['matmul', 'attention', 'attention_dq', 'attention_dkv', 'linear_cross_entropy']);

/**
 * FLOPs of one dispatch of a kernel, from its label (`op [in][in]…→[out]`, buildKernelPlan's), for
 * the ops in FLOP_OPS; undefined for the others and for a label of another form. A matmul's label
 * does not carry transA, nor does it need to: the left operand is [m, k] or [k, m], and the output's
 * m says which of its two last axes is k.
 */
export function kernelFlops(label: string): number | undefined {
  const m = /^([a-z_0-9]+) ((?:\[[0-9,]*\])+)→\[([0-9,]*)\]$/.exec(label);
  if (!m || !FLOP_OPS.has(m[1])) return undefined;
  const dims = (s: string) => (s ? s.split(',').map(Number) : []);
  const inputs = [...m[2].matchAll(/\[([0-9,]*)\]/g)].map((x) => dims(x[1]));
  const out = dims(m[3]);
  const value = (shape: readonly number[]) => ({ id: 0, name: '', type: { dtype: 'f32' as const, shape } });
  let attrs: unknown = {};
  if (m[1] === 'matmul') {
    const a = inputs[0];
    if (!a || a.length < 2 || out.length < 2) return undefined;
    attrs = { transA: a[a.length - 1] === out[out.length - 2], transB: false };
  }
  const node = { op: m[1], inputs: inputs.map(value), out: value(out), attrs } as unknown as Node;
  return flopsOf(node);
}

function summarise(plan: KernelPlan, steps: readonly StepRecord[], clock: ProfileClock, wall: { readonly ms: number; readonly of: string }): StepProfile {
  // Kernels that differ only in what the label does not show (a constant, a fused scalar) share a
  // row: a reader could not tell their rows apart.
  const byLabel = new Map<string, number[]>();
  plan.dispatches.forEach((d, i) => {
    const label = plan.kernels[d.kernel].label;
    byLabel.set(label, [...(byLabel.get(label) ?? []), i]);
  });
  const rows: Omit<ProfileRow, 'share'>[] = [];
  for (const [label, ids] of byLabel) {
    // Dispatches per step: what the last step ran (every optimizer step runs the same ones).
    const last = steps[steps.length - 1];
    const dispatches = ids.reduce((s, i) => s + last.runs[i], 0);
    if (!dispatches) continue;
    const ms = median(steps.map((s) => ids.reduce((t, i) => t + s.ms[i], 0)));
    const bytes = ids.reduce((s, i) => s + last.runs[i] * plan.dispatches[i].bindings.reduce((b, x) => b + x.size, 0), 0);
    const one = kernelFlops(label);
    const flops = one === undefined ? undefined : one * dispatches;
    rows.push({
      kernel: label,
      dispatches,
      ms,
      ...(flops !== undefined ? { flops, gflops: flops / ms / 1e6 } : {}),
      bytes,
      gbps: bytes / ms / 1e6,
      matmul: label.startsWith('matmul '),
    });
  }
  const kernelMs = rows.reduce((s, r) => s + r.ms, 0);
  const matmulFlops = rows.reduce((s, r) => s + (r.matmul ? (r.flops ?? 0) : 0), 0);
  return {
    clock,
    steps: steps.length,
    rows: rows.map((r) => ({ ...r, share: kernelMs > 0 ? r.ms / kernelMs : 0 })).sort((a, b) => b.ms - a.ms),
    dispatches: rows.reduce((s, r) => s + r.dispatches, 0),
    kernelMs,
    wallMs: wall.ms,
    wallOf: wall.of,
    matmulFlops,
    gflops: matmulFlops / wall.ms / 1e6,
  };
}

/**
 * Profiles `steps` steps (default 3) of a runner whose inputs are written (or `feeds`): `warmup`
 * plain steps first (default 1: a pipeline's first use compiles it on some drivers), then, unless
 * the caller gives the `wall` time of a step, `steps` plain steps to measure it, then `steps`
 * profiled ones. Every one of them is a training step: the parameters move.
 */
export async function profileSteps(
  runner: StepRunner,
  o: ProfilerOptions & { readonly feeds?: Feeds; readonly steps?: number; readonly warmup?: number; readonly wall?: { readonly ms: number; readonly of: string } } = {},
): Promise<StepProfile> {
  const steps = o.steps ?? 3;
  for (let i = 0; i < (o.warmup ?? 1); i++) await runner.runStep(o.feeds);
  let wall = o.wall;
  if (!wall) {
    const times: number[] = [];
    for (let i = 0; i < steps; i++) {
      const t0 = performance.now();
      await runner.runStep(o.feeds);
      times.push(performance.now() - t0);
    }
    wall = { ms: median(times), of: `the median of ${steps} unprofiled steps` };
  }
  const profiler = new StepProfiler(runner.gpu, runner.plan, o);
  try {
    for (let i = 0; i < steps; i++) await profiler.runStep(runner, o.feeds);
    return profiler.result({ wall });
  } finally {
    profiler.destroy();
  }
}

const fms = (ms: number) => (ms >= 100 ? ms.toFixed(1) : ms >= 1 ? ms.toFixed(2) : ms.toFixed(3));
/** Three significant figures (no exponent): the toy models' rates are thousandths. */
const sig = (x: number) => (x >= 100 || x === 0 ? x.toFixed(0) : x.toPrecision(3).replace(/(\.\d*?)0+$/, '$1').replace(/\.$/, ''));
const frate = (x: number | undefined) => (x === undefined || !Number.isFinite(x) ? '—' : sig(x));
const fpct = (x: number) => `${(100 * x).toFixed(1)}%`;

/** The rows shown: the `top` longest, then one line for the rest. */
function shownRows(p: StepProfile, top: number): { rows: ProfileRow[]; other?: ProfileRow & { kernels: number } } {
  if (p.rows.length <= top + 1) return { rows: [...p.rows] };
  const rest = p.rows.slice(top);
  const sum = (f: (r: ProfileRow) => number) => rest.reduce((s, r) => s + f(r), 0);
  const ms = sum((r) => r.ms);
  const flops = sum((r) => r.flops ?? 0);
  const bytes = sum((r) => r.bytes);
  return {
    rows: p.rows.slice(0, top),
    other: {
      kernel: `other (${rest.length} kernels)`,
      kernels: rest.length,
      dispatches: sum((r) => r.dispatches),
      ms,
      share: sum((r) => r.share),
      ...(flops ? { flops, gflops: flops / ms / 1e6 } : {}),
      bytes,
      gbps: bytes / ms / 1e6,
      matmul: false,
    },
  };
}

/** The profile's header line: what was measured, and how. */
export function profileHeading(p: StepProfile): string {
  return `profile of ${p.which ?? `${p.steps} step${p.steps === 1 ? '' : 's'}`} (each kernel's median; ${p.dispatches} dispatches a step; ${CLOCK_DESCRIPTIONS[p.clock]})`;
}

/** The totals line: "step X ms wall, Y ms in kernels; matmuls Z GFLOP → W GFLOP/s". */
export function profileTotals(p: StepProfile): string {
  return `step ${fms(p.wallMs)} ms wall (${p.wallOf}), ${fms(p.kernelMs)} ms in kernels; matmuls ${frate(p.matmulFlops / 1e9)} GFLOP → ${frate(p.gflops)} GFLOP/s`;
}

/** A plain-text table for a terminal: the `top` kernels by time (default 15), an "other" line, the totals. */
export function profileTable(p: StepProfile, o: { readonly top?: number; readonly width?: number } = {}): string {
  const { rows, other } = shownRows(p, o.top ?? 15);
  const width = o.width ?? 64;
  const clip = (s: string) => (s.length > width ? s.slice(0, width - 1) + '…' : s);
  const cells = [
    ['kernel', 'dispatches', 'ms', 'share', 'GFLOP/s', 'GB/s'],
    ...[...rows, ...(other ? [other] : [])].map((r) => [clip(r.kernel), String(r.dispatches), fms(r.ms), fpct(r.share), frate(r.gflops), frate(r.gbps)]),
  ];
  const w = cells[0].map((_, i) => Math.max(...cells.map((c) => c[i].length)));
  return [profileHeading(p), ...cells.map((c) => c.map((x, i) => (i ? x.padStart(w[i]) : x.padEnd(w[i]))).join('  ').trimEnd()), profileTotals(p)].join('\n');
}

/** The same as a Markdown table (every kernel unless `top`), for report.md and the benchmark. */
export function profileMarkdown(p: StepProfile, o: { readonly top?: number } = {}): string {
  const { rows, other } = shownRows(p, o.top ?? Infinity);
  return [
    `${profileHeading(p)}.`,
    '',
    '| kernel | dispatches | ms | share | GFLOP/s | GB/s |',
    '|---|--:|--:|--:|--:|--:|',
    ...[...rows, ...(other ? [other] : [])].map((r) => `| ${r.kernel.replace(/\|/g, '\\|')} | ${r.dispatches} | ${fms(r.ms)} | ${fpct(r.share)} | ${frate(r.gflops)} | ${frate(r.gbps)} |`),
    '',
    `${profileTotals(p)[0].toUpperCase()}${profileTotals(p).slice(1)}.`,
  ].join('\n');
}
