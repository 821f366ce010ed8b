// Tuning by measurement: each matmul variant that fits a shape key (codegen/matmul.ts) timed on
// this device, one kernel at a time on buffers of the key's sizes and storage.
//
// 1. Rebuild the node from its key (matmulNodeFromKey) and list the variants this device takes
//    (matmulCandidates: they fit its limits and features; portable ones only under --kernels
//    portable).
// 2. Compile each and run it WARMUPS times (the first dispatch of a pipeline pays for the
//    driver's compilation); then RUNS rounds, one timed run of every variant per round (so drift on
//    a shared machine falls on all of them alike), and keep each variant's median. A run is a submit and its
//    onSubmittedWorkDone, awaited through quietly() (Dawn's busy poll would take a core from a CPU
//    adapter's kernel: DESIGN.md §6). Where one dispatch takes under a millisecond (a GPU), a run
//    encodes several back to back in one pass and counts their mean, so the submit's own latency does
//    not decide. A variant whose first timed run is CUTOFF times the best first run stops there
//    (its time is that run): on lavapipe the tiled kernels take seconds where the others take a
//    fraction, and five more runs would not change the choice.
// 3. The fastest is the choice, unless the heuristic's variant is within MARGIN of it: a swap for a
//    few per cent is as likely noise as a gain (±20% between runs on a busy 2-core lavapipe), and
//    the heuristic's kernel is the one every test and benchmark runs. Nothing here writes files:
//    src/train/tuning.ts keeps the results.
import type { EmitContext, KernelChoice } from '../codegen/kernel.ts';
import { heuristicMatmulVariant, matmulCandidates, matmulDims, matmulNodeFromKey } from '../codegen/matmul.ts';
import { emitOptions } from '../codegen/kernel-plan.ts';
import { toDevice } from '../ir/half.ts';
import { LorafaError } from '../ir/errors.ts';
import { numel, type DType } from '../ir/types.ts';
import { checked, PipelineCache, quietly, type Gpu } from './gpu.ts';
import { rng } from './init.ts';
import { kernelOptionsFor } from './session.ts';

export interface VariantTiming {
  readonly variant: string;
  /** Median milliseconds of one dispatch. */
  readonly ms: number;
  /** Timed runs (fewer than TuneOptions.runs when the variant was cut off). */
  readonly runs: number;
}

export interface ShapeTuning {
  readonly key: string;
  /** 2·m·n·k·batch. */
  readonly flops: number;
  readonly timings: readonly VariantTiming[];
  /** The fastest variant (the heuristic's when within MARGIN of the fastest). */
  readonly choice: string;
  /** What the heuristic picks without tuning. */
  readonly heuristic: string;
}

export interface TuneOptions {
  readonly kernels?: KernelChoice;
  /** Untimed dispatches first (default 2). */
  readonly warmups?: number;
  /** Timed runs per variant, the median kept (default 5). */
  readonly runs?: number;
  /** Stop timing a variant whose first run is this many times the best first run (default 3). */
  readonly cutoff?: number;
  /** Only these variants (tests). */
  readonly only?: readonly string[];
}

/** Another variant replaces the heuristic's only when it takes at most (1 − MARGIN) of its time. */
export const MARGIN = 0.1;

/** Milliseconds a run should last at least: shorter dispatches are repeated within one run. */
const RUN_MS = 2;
const MAX_REPEAT = 64;

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const h = s.length >> 1;
  return s.length % 2 ? s[h] : (s[h - 1] + s[h]) / 2;
}

/** Times every variant this device takes for one shape key. */
export async function tuneMatmul(gpu: Gpu, key: string, o: TuneOptions = {}, cache = new PipelineCache(gpu.device)): Promise<ShapeTuning> {
  const rebuilt = matmulNodeFromKey(key);
  if (!rebuilt) throw new LorafaError(key, 'not a matmul shape key', 'tune a trainer folder that `lorafa compile -o` wrote');
  const { node, elem } = rebuilt;
  const ctx: EmitContext = { ...emitOptions(kernelOptionsFor(gpu, o.kernels)), constants: new Map(), elem };
  const candidates = matmulCandidates(node, ctx).filter((v) => !o.only || o.only.includes(v.name));
  const device = gpu.device;
  const u = rng(17);
  const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST;
  const dtypeOf = (kind: string): DType => (kind === 'f16p' ? 'f16' : (kind as DType));
  const make = (v: (typeof node.inputs)[number]) => {
    const kind = elem(v);
    const host = toDevice(dtypeOf(kind), Float64Array.from({ length: numel(v.type.shape) }, () => u() - 0.5));
    const buf = device.createBuffer({ size: Math.max(16, Math.ceil(host.byteLength / 16) * 16), usage });
    device.queue.writeBuffer(buf, 0, host);
    return buf;
  };
  const [a, b] = node.inputs;
  const shared = a === b;
  const inputs = shared ? [make(a)] : [make(a), make(b)];
  const out = make(node.out);
  const { m, n, k, nb } = matmulDims(node);
  const timings: VariantTiming[] = [];
  try {
    // Compile and warm every variant first, then time them in rounds, one run of each variant per
    // round: drift on a shared machine (another process, a frequency change) then falls on every
    // variant alike instead of on whichever ran during it.
    const runners: { name: string; run: (repeat: number) => Promise<number>; repeat: number; times: number[] }[] = [];
    for (const v of candidates) {
      const ks = v.emit(node, ctx);
      const { pipeline, layout } = await cache.get(ks.wgsl, ks.bound.length + 1, `matmul ${key} (${v.name})`);
      const bind = device.createBindGroup({ layout, entries: [...inputs.slice(0, ks.bound.length), out].map((buffer, i) => ({ binding: i, resource: { buffer } })) });
      const run = async (repeat: number) => {
        const t0 = performance.now();
        const enc = device.createCommandEncoder();
        const pass = enc.beginComputePass();
        pass.setPipeline(pipeline);
        pass.setBindGroup(0, bind);
        for (let r = 0; r < repeat; r++) pass.dispatchWorkgroups(...ks.workgroups);
        pass.end();
        device.queue.submit([enc.finish()]);
        await quietly(() => device.queue.onSubmittedWorkDone());
        return (performance.now() - t0) / repeat;
      };
      // The first dispatch inside error scopes: a kernel the device refuses is named.
      let last = await (await checked(device, `matmul ${key} (${v.name})`, () => run(1)));
      for (let w = 1; w < (o.warmups ?? 2); w++) last = await run(1);
      runners.push({ name: v.name, run, repeat: Math.max(1, Math.min(MAX_REPEAT, Math.ceil(RUN_MS / Math.max(last, 1e-3)))), times: [] });
    }
    for (let round = 0; round < (o.runs ?? 5); round++) {
      for (const r of runners) {
        // A variant whose first run was `cutoff` times the best first run stops after it.
        if (round > 0 && r.times[0] > (o.cutoff ?? 3) * Math.min(...runners.map((x) => x.times[0]))) continue;
        r.times.push(await r.run(r.repeat));
      }
    }
    for (const r of runners) timings.push({ variant: r.name, ms: median(r.times), runs: r.times.length });
  } finally {
    for (const buf of [...inputs, out]) buf.destroy();
  }
  if (!timings.length) throw new LorafaError(key, 'no matmul variant fits this device', 'this is a lorafa bug: report it with the adapter (`lorafa doctor`)');
  const heuristic = heuristicMatmulVariant(node, ctx).name;
  const fastest = timings.reduce((x, y) => (y.ms < x.ms ? y : x));
  const h = timings.find((t) => t.variant === heuristic);
  const choice = h && fastest.ms > (1 - MARGIN) * h.ms ? heuristic : fastest.variant;
  return { key, flops: 2 * m * n * k * Math.max(1, nb), timings, choice, heuristic };
}

/** Tunes every key in turn; `onShape` sees each result as it is measured. */
export async function tuneMatmuls(gpu: Gpu, keys: readonly string[], o: TuneOptions = {}, onShape?: (t: ShapeTuning) => void): Promise<ShapeTuning[]> {
  const cache = new PipelineCache(gpu.device);
  const out: ShapeTuning[] = [];
  for (const key of keys) {
    const t = await tuneMatmul(gpu, key, o, cache);
    onShape?.(t);
    out.push(t);
  }
  return out;
}
