// GPU figures (`npm run bench` appends them after the planning figures; `npx tsx bench/gpu.ts`
// runs them alone). Figures, not timed tests: nothing here fails a build, and no adapter is a note.
//
// 1. Whole training steps through the real pipeline (trace → compileTraining with the optimizer →
//    planMemory with this adapter's limits → buildKernelPlan → StepRunner): the MLP and the LLaMA
//    decoder at toy size in modes full / LoRA / LoRA-FA (AdamW), and W1 (models/w1.ts: 512
//    tokens, d 768, rank 8, 4 layers, SGD) in LoRA and LoRA-FA, plus W1 LoRA-FA with elementwise
//    fusion off and with the portable matmul (no subgroups), to show what each buys; and W1 and the
//    toy LLaMA (LoRA-FA) with f16 and bf16 storage (--dtype), to show what half storage costs.
//    Step time = StepRunner.step() including the 4-byte loss readback: 2 warm-up steps, then the
//    median (min–max) of the timed ones. GFLOP/s counts matmul FLOPs only: 2·m·n·k per matmul
//    node of the step graph (batch included); elementwise work is listed as elements, not FLOPs.
//    GPU bytes = what the runner allocated, next to the plan's peak (they must be equal).
// 2. The matmul kernel alone on 512×768 · 768×768 (x·W, dy·Wᵀ, xᵀ·dy shapes of W1): median of 7
//    dispatches after 2 warm-ups, each waited for with queue.onSubmittedWorkDone() (through quietly(): no busy poll).
// 3. Where a W1 LoRA-FA step goes: every dispatch in its own compute pass with timestamp queries
//    (when the adapter has 'timestamp-query'), summed per kernel.
// 4. Attention alone, fused op against the composition (b.attentionComposed): one training step
//    (forward + backward + SGD update of q, k, v as parameters; loss ⟨attention(q, k, v), c⟩) for
//    s = 128, 256, 512 (1 × 8 heads × 64, causal): median ms, the plan's peak and saved bytes.
// 5. Prints a Markdown table and writes bench/results/gpu.md with date, adapter and Node version.
import { writeFileAtomic } from '../src/io/output.ts';
import { cpus } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { loadModel, trace } from '../src/model/load.ts';
import { buildKernelPlan, type KernelPlan } from '../src/codegen/kernel-plan.ts';
import { acquireGpu } from '../src/runtime/gpu.ts';
import { emitMatmul, MATMUL_SUBGROUP_TILING, MATMUL_TILING, ROW_LANES } from '../src/codegen/matmul.ts';
import { Builder } from '../src/ir/builder.ts';
import { fmtBytes } from '../src/ir/format.ts';
import { numel, type Graph } from '../src/ir/types.ts';
import { resolveConfig } from '../src/model/define.ts';
import { compileTraining, type Mode } from '../src/passes/compile.ts';
import { planMemory, type StorageDType } from '../src/passes/memory-plan.ts';
import { flopsOf } from '../src/passes/remat.ts';
import { optimizerFeeds, type OptimizerOptions } from '../src/passes/optimizer.ts';
import { StepRunner } from '../src/runtime/executor.ts';
import { PipelineCache, quietly, type Gpu } from '../src/runtime/gpu.ts';
import { initParams, rng } from '../src/runtime/init.ts';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const RANK = 8;
const ALPHA = 16;

// ---------------------------------------------------------------------------------------------
// The device: acquireGpu's limits, plus 'subgroups' (the lavapipe matmul shares A loads across a
// subgroup) and 'timestamp-query' (the profile) when the adapter has them.

interface BenchGpu extends Gpu {
  /** Fixed subgroup size when the device has subgroups (lavapipe: 8). */
  readonly subgroupSize?: number;
  readonly timestamps: boolean;
}

/** The runtime's own device (subgroups and timestamp queries requested when offered). */
export async function benchGpu(): Promise<BenchGpu | string> {
  try {
    const gpu = await acquireGpu();
    return { ...gpu, timestamps: gpu.device.features.has('timestamp-query') };
  } catch (e) {
    return (e as Error).message;
  }
}

// ---------------------------------------------------------------------------------------------

interface StepCase {
  readonly model: string;
  readonly config: string;
  readonly mode: Mode;
  readonly optimizer: OptimizerOptions;
  readonly steps: number;
  /** What differs from the default pipeline. */
  readonly variant?: 'no fusion' | 'portable matmul' | 'f16 storage' | 'bf16 storage';
  readonly profile?: boolean;
}

interface StepRow extends StepCase {
  readonly median: number;
  readonly min: number;
  readonly max: number;
  readonly matmulFlops: number;
  readonly elementwise: number;
  readonly dispatches: number;
  readonly kernels: number;
  readonly allocated: number;
  readonly peak: number;
  readonly timeline?: readonly ProfileRow[];
}

interface ProfileRow {
  readonly kernel: string;
  readonly dispatches: number;
  readonly ms: number;
}

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/** 2·m·n·k per matmul node (batch included), and the elements elementwise nodes write. */
function work(g: Graph): { matmulFlops: number; elementwise: number } {
  let matmulFlops = 0;
  let elementwise = 0;
  for (const n of g.nodes) {
    if (n.op === 'matmul') {
      matmulFlops += flopsOf(n);
    } else if (['add', 'sub', 'mul', 'div', 'neg', 'exp', 'log', 'sqrt', 'rsqrt', 'tanh', 'sigmoid', 'relu', 'gelu', 'silu', 'powc', 'where', 'eq', 'step'].includes(n.op)) {
      elementwise += numel(n.out.type.shape);
    }
  }
  return { matmulFlops, elementwise };
}

/** Seeded data for every input: floats in [-1, 1), integers below the config's classes / vocab. */
function feedsFor(g: Graph, cfg: Readonly<Record<string, unknown>>, seed: number): Record<string, Float64Array> {
  const u = rng(seed);
  const bound = (name: string) => {
    const v = /label/.test(name) ? (cfg.classes ?? cfg.vocab) : (cfg.vocab ?? cfg.classes);
    return typeof v === 'number' ? v : 2;
  };
  const feeds: Record<string, Float64Array> = {};
  for (const i of g.inputs) {
    if (i.value.name.startsWith('optim.')) continue;
    const n = numel(i.value.type.shape);
    const b = bound(i.value.name);
    feeds[i.value.name] = i.value.type.dtype === 'i32' ? new Float64Array(n).map(() => Math.floor(u() * b)) : new Float64Array(n).map(() => 2 * u() - 1);
  }
  return feeds;
}

/**
 * Plans a compiled step with this adapter's limits, lowers it, and runs 2 warm-up steps then
 * `steps` timed ones (parameters seeded, inputs from feedsFor, the optimizer's scalars).
 */
async function timeSteps(
  gpu: BenchGpu,
  compiled: ReturnType<typeof compileTraining>,
  o: { readonly optimizer: OptimizerOptions; readonly cfg: Readonly<Record<string, unknown>>; readonly steps: number; readonly fuse: boolean; readonly subgroupSize?: number; readonly dtype?: StorageDType },
) {
  const step = compiled.step!;
  const l = gpu.limits;
  const plan = planMemory(step, {
    limits: { alignment: l.minStorageBufferOffsetAlignment, maxBindingSize: l.maxStorageBufferBindingSize, maxBufferSize: l.maxBufferSize },
    gradients: compiled.gradients,
    dtype: o.dtype,
  });
  const kp = buildKernelPlan(step, plan, { maxWorkgroupsPerDimension: l.maxComputeWorkgroupsPerDimension, fuse: o.fuse, subgroupSize: o.subgroupSize, shaderF16: gpu.shaderF16 });
  const runner = await StepRunner.create(kp, gpu);
  const params = initParams(step, { seed: 1 });
  runner.writeParams(params);
  runner.writeInputs({ ...feedsFor(step, o.cfg, 2), ...optimizerFeeds(o.optimizer, 1e-3, 1) });
  const times: number[] = [];
  for (let i = 0; i < 2 + o.steps; i++) {
    const t0 = performance.now();
    await runner.step();
    if (i >= 2) times.push(performance.now() - t0);
  }
  const allocated = runner.allocatedBytes;
  runner.destroy();
  return { step, plan, kp, params, allocated, median: median(times), min: Math.min(...times), max: Math.max(...times) };
}

async function runStepCase(gpu: BenchGpu, c: StepCase): Promise<StepRow> {
  const m = await loadModel(join(ROOT, 'models', `${c.model}.ts`));
  const graph = trace(m, c.config);
  const cfg = resolveConfig(m.def, { config: c.config });
  const compiled = compileTraining(graph, {
    mode: c.mode,
    lora: { rank: RANK, alpha: ALPHA, targets: m.def.defaultTargets ?? [], modulesToSave: m.def.modulesToSave },
    optimizer: c.optimizer,
  });
  const { step, kp, params, allocated, median: med, min, max } = await timeSteps(gpu, compiled, {
    optimizer: c.optimizer,
    cfg,
    steps: c.steps,
    fuse: c.variant !== 'no fusion',
    subgroupSize: c.variant === 'portable matmul' ? undefined : gpu.subgroupSize,
    dtype: c.variant === 'f16 storage' ? 'f16' : c.variant === 'bf16 storage' ? 'bf16' : 'f32',
  });
  const timeline = c.profile && gpu.timestamps ? await profileSteps(gpu, kp, params) : undefined;
  return {
    ...c,
    median: med,
    min,
    max,
    ...work(step),
    dispatches: kp.dispatches.length,
    kernels: kp.kernels.length,
    allocated,
    peak: kp.bytes,
    timeline,
  };
}

/**
 * Every dispatch of one step in its own compute pass, bracketed by timestamp writes; the median
 * of 3 such steps per dispatch, summed per kernel. Buffers as the plan says, parameters written.
 */
async function profileSteps(gpu: BenchGpu, kp: KernelPlan, params: ReadonlyMap<string, { data: ArrayLike<number> }>): Promise<ProfileRow[]> {
  const device = gpu.device;
  const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
  const buffers = kp.buffers.map((b) => device.createBuffer({ size: b.bytes, usage }));
  for (const p of kp.params) {
    const v = params.get(p.name);
    if (v) device.queue.writeBuffer(buffers[p.slice.buffer], p.slice.offset, Float32Array.from(v.data));
  }
  const cache = new PipelineCache(device);
  const compiled = await Promise.all(kp.kernels.map((k) => cache.get(k.wgsl, k.bindings, k.label)));
  const binds = kp.dispatches.map((d) =>
    device.createBindGroup({
      layout: compiled[d.kernel].layout,
      entries: d.bindings.map((s, i) => ({ binding: i, resource: { buffer: buffers[s.buffer], offset: s.offset, size: s.size } })),
    }),
  );
  const n = kp.dispatches.length;
  const querySet = device.createQuerySet({ type: 'timestamp', count: 2 * n });
  const resolved = device.createBuffer({ size: 16 * n, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC });
  const readback = device.createBuffer({ size: 16 * n, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const perDispatch: number[][] = kp.dispatches.map(() => []);
  for (let rep = 0; rep < 4; rep++) {
    const enc = device.createCommandEncoder();
    kp.dispatches.forEach((d, i) => {
      const pass = enc.beginComputePass({ timestampWrites: { querySet, beginningOfPassWriteIndex: 2 * i, endOfPassWriteIndex: 2 * i + 1 } });
      pass.setPipeline(compiled[d.kernel].pipeline);
      pass.setBindGroup(0, binds[i]);
      pass.dispatchWorkgroups(d.workgroups[0], d.workgroups[1], d.workgroups[2]);
      pass.end();
    });
    enc.resolveQuerySet(querySet, 0, 2 * n, resolved, 0);
    enc.copyBufferToBuffer(resolved, 0, readback, 0, 16 * n);
    device.queue.submit([enc.finish()]);
    await quietly(() => readback.mapAsync(GPUMapMode.READ));
    const t = new BigUint64Array(readback.getMappedRange().slice(0));
    readback.unmap();
    if (rep === 0) continue; // warm-up: the first use of a pipeline compiles it on lavapipe
    for (let i = 0; i < n; i++) perDispatch[i].push(Number(t[2 * i + 1] - t[2 * i]) / 1e6);
  }
  const rows = new Map<string, { dispatches: number; ms: number }>();
  kp.dispatches.forEach((d, i) => {
    const label = kp.kernels[d.kernel].label;
    const r = rows.get(label) ?? { dispatches: 0, ms: 0 };
    r.dispatches++;
    r.ms += median(perDispatch[i]);
    rows.set(label, r);
  });
  for (const b of [...buffers, resolved, readback]) b.destroy();
  querySet.destroy();
  return [...rows].map(([kernel, r]) => ({ kernel, ...r })).sort((a, b) => b.ms - a.ms);
}

// ---------------------------------------------------------------------------------------------

interface MatmulRow {
  readonly what: string;
  readonly variant: string;
  readonly median: number;
  readonly min: number;
  readonly max: number;
  readonly gflops: number;
}

/** portable: no subgroups; column lanes: that variant forced; default: what the compiler picks. */
type MatmulVariant = 'portable' | 'column lanes' | 'default';

async function benchMatmul(gpu: BenchGpu, what: string, m: number, k: number, n: number, transA: boolean, transB: boolean, variant: MatmulVariant): Promise<MatmulRow> {
  const device = gpu.device;
  const b = new Builder();
  const a = b.input('a', transA ? [k, m] : [m, k]);
  const w = b.input('w', transB ? [n, k] : [k, n]);
  b.matmul(a, w, { transA, transB });
  const node = b.build().nodes.at(-1)!;
  const ks = emitMatmul(
    node,
    {
      constants: new Map(),
      maxWorkgroupsPerDimension: gpu.limits.maxComputeWorkgroupsPerDimension,
      subgroupSize: variant === 'portable' ? undefined : gpu.subgroupSize,
    },
    variant === 'column lanes' ? MATMUL_SUBGROUP_TILING : undefined,
  );
  const u = rng(5);
  const make = (count: number) => {
    const buf = device.createBuffer({ size: count * 4, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST });
    device.queue.writeBuffer(buf, 0, new Float32Array(count).map(() => u() - 0.5));
    return buf;
  };
  const bufs = [make(m * k), make(k * n), make(m * n)];
  const { pipeline, layout } = await new PipelineCache(device).get(ks.wgsl, 3, `matmul ${what}`);
  const bind = device.createBindGroup({ layout, entries: bufs.map((buffer, i) => ({ binding: i, resource: { buffer } })) });
  const once = async () => {
    const t0 = performance.now();
    const enc = device.createCommandEncoder();
    const pass = enc.beginComputePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, bind);
    pass.dispatchWorkgroups(...ks.workgroups);
    pass.end();
    device.queue.submit([enc.finish()]);
    await quietly(() => device.queue.onSubmittedWorkDone());
    return performance.now() - t0;
  };
  await once();
  await once();
  const times: number[] = [];
  for (let i = 0; i < 7; i++) times.push(await once());
  for (const x of bufs) x.destroy();
  const med = median(times);
  const ran = ks.wgsl.startsWith('// lorafa matmul: row lanes') ? 'row lanes' : ks.wgsl.includes('subgroupBroadcast') ? 'column lanes' : 'portable';
  const t = ran === 'portable' ? MATMUL_TILING : MATMUL_SUBGROUP_TILING;
  const block = ran === 'row lanes' ? `${ROW_LANES.tm}×${ROW_LANES.tn}/lane, ${8 * ROW_LANES.tm}×${ROW_LANES.tn}/subgroup` : `${t.tm}×${t.tn}/invocation`;
  return {
    what,
    variant: `${variant === 'default' ? 'default: ' : ''}${ran} ${block}`,
    median: med,
    min: Math.min(...times),
    max: Math.max(...times),
    gflops: (2 * m * n * k) / med / 1e6,
  };
}

// ---------------------------------------------------------------------------------------------

const ADAMW: OptimizerOptions = { kind: 'adamw' };
const SGD: OptimizerOptions = { kind: 'sgd' };

const CASES: readonly StepCase[] = [
  ...(['full', 'lora', 'lora-fa'] as const).map((mode) => ({ model: 'mlp', config: 'toy', mode, optimizer: ADAMW, steps: 15 })),
  ...(['full', 'lora', 'lora-fa'] as const).map((mode) => ({ model: 'llama', config: 'toy', mode, optimizer: ADAMW, steps: 15 })),
  { model: 'w1', config: 'w1', mode: 'lora', optimizer: SGD, steps: 7 },
  { model: 'w1', config: 'w1', mode: 'lora-fa', optimizer: SGD, steps: 7, profile: true },
  { model: 'w1', config: 'w1', mode: 'lora-fa', optimizer: SGD, steps: 7, variant: 'no fusion' },
  { model: 'w1', config: 'w1', mode: 'lora-fa', optimizer: SGD, steps: 7, variant: 'portable matmul' },
  // Half storage (--dtype): frozen weights and activations in 2 bytes, f32 arithmetic.
  ...(['f16 storage', 'bf16 storage'] as const).map((variant) => ({ model: 'w1', config: 'w1', mode: 'lora-fa' as const, optimizer: SGD, steps: 7, variant })),
  ...(['f16 storage', 'bf16 storage'] as const).map((variant) => ({ model: 'llama', config: 'toy', mode: 'lora-fa' as const, optimizer: ADAMW, steps: 15, variant })),
];

const f1 = (x: number) => x.toFixed(1);

/** Runs everything, prints the Markdown and writes bench/results/gpu.md; returns the text. */
interface AttentionRow {
  readonly seq: number;
  readonly fused: boolean;
  readonly median: number;
  readonly min: number;
  readonly max: number;
  readonly peak: number;
  readonly saved: number;
  readonly allocated: number;
  readonly dispatches: number;
}

const ATTENTION = { batch: 1, heads: 8, headDim: 64, seqs: [128, 256, 512], steps: 5 } as const;

/** One SGD step of q, k, v through attention (fused op or composition), planned and run. */
export async function benchAttention(gpu: BenchGpu, seq: number, fused: boolean, shape0: { batch: number; heads: number; headDim: number } = ATTENTION): Promise<AttentionRow> {
  const { batch, heads, headDim } = shape0;
  const b = new Builder({ name: `attention_${fused ? 'fused' : 'composed'}_${seq}` });
  const shape = [batch, heads, seq, headDim];
  const [q, k, v] = ['q', 'k', 'v'].map((n) => b.param(n, shape, { init: { kind: 'normal', std: 1 } }));
  const o = fused ? b.attention(q, k, v, { causal: true, impl: 'fused' }) : b.attentionComposed(q, k, v, { causal: true });
  b.loss(b.sum(b.mul(o, b.input('c', shape))));
  const optimizer: OptimizerOptions = { kind: 'sgd' };
  const r = await timeSteps(gpu, compileTraining(b.build(), { mode: 'full', optimizer }), { optimizer, cfg: {}, steps: ATTENTION.steps, fuse: true, subgroupSize: gpu.subgroupSize });
  const saved = r.plan.timeline[r.plan.backwardStart]?.saved ?? 0;
  return { seq, fused, median: r.median, min: r.min, max: r.max, peak: r.kp.bytes, saved, allocated: r.allocated, dispatches: r.kp.dispatches.length };
}

export async function runGpuBench(): Promise<string> {
  const started = new Date();
  const gpu = await benchGpu();
  const head = [`# lorafa on the GPU: step times and kernel throughput`, ''];
  if (typeof gpu === 'string') {
    const text = [...head, `${started.toISOString()}: skipped, ${gpu}.`, ''].join('\n');
    console.log(text);
    return text;
  }
  const rows: StepRow[] = [];
  for (const c of CASES) {
    const r = await runStepCase(gpu, c);
    rows.push(r);
    process.stderr.write(`  ${c.model} ${c.config} ${c.mode}${c.variant ? ` (${c.variant})` : ''}: ${f1(r.median)} ms\n`);
  }
  const mm: MatmulRow[] = [];
  const shapes = [
    ['x·W (512×768 · 768×768)', 512, 768, 768, false, false],
    ['dy·Wᵀ (512×768 · (768×768)ᵀ)', 512, 768, 768, false, true],
    ['xᵀ·dy ((512×768)ᵀ · 512×768)', 768, 512, 768, true, false],
  ] as const;
  for (const variant of (gpu.subgroupSize ? ['portable', 'column lanes', 'default'] : ['portable']) as MatmulVariant[]) {
    for (const [what, m, k, n, ta, tb] of shapes) mm.push(await benchMatmul(gpu, what, m, k, n, ta, tb, variant));
  }

  const attn: AttentionRow[] = [];
  for (const seq of ATTENTION.seqs) {
    for (const fused of [true, false]) {
      const r = await benchAttention(gpu, seq, fused);
      attn.push(r);
      process.stderr.write(`  attention s=${seq} ${fused ? 'fused' : 'composed'}: ${f1(r.median)} ms\n`);
    }
  }

  const cpu = cpus()[0]?.model?.trim() ?? 'unknown CPU';
  const lines = [
    ...head,
    `${started.toISOString()}; adapter: ${gpu.description}${gpu.subgroupSize ? ` (subgroups of ${gpu.subgroupSize})` : ''}; ${cpus().length} × ${cpu}; Node ${process.version}.`,
    '',
    `Whole training steps: trace → compile (rank ${RANK}, alpha ${ALPHA}, default targets) → plan (this adapter's limits) → kernel plan → StepRunner.`,
    'Step = one StepRunner.step() with its 4-byte loss readback; 2 warm-up steps, then median (min–max) of the rest.',
    'GFLOP/s = matmul FLOPs (2·m·n·k per matmul node of the step graph) ÷ median step time; elementwise nodes are counted as elements, not FLOPs.',
    '',
    '| model | config | mode | optimizer | variant | step ms (min–max) | matmul GFLOP | GFLOP/s | elementwise Melem | dispatches | kernels | GPU bytes | plan peak |',
    '|---|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|',
    ...rows.map(
      (r) =>
        `| ${r.model} | ${r.config} | ${r.mode} | ${r.optimizer.kind} | ${r.variant ?? 'default'} | ${f1(r.median)} (${f1(r.min)}–${f1(r.max)}) | ${(r.matmulFlops / 1e9).toFixed(3)} | ${(r.matmulFlops / r.median / 1e6).toFixed(2)} | ${(r.elementwise / 1e6).toFixed(2)} | ${r.dispatches} | ${r.kernels} | ${fmtBytes(r.allocated)} | ${fmtBytes(r.peak)}${r.allocated === r.peak ? '' : ' **≠**'} |`,
    ),
    '',
    '"default" = elementwise fusion on, and the subgroup matmul where the device has fixed-size subgroups;',
    '"no fusion" = every node its own kernel; "portable matmul" = the kernel every adapter gets;',
    `"f16 storage" / "bf16 storage" = --dtype: frozen weights and activations stored in 2 bytes (f16 ${gpu.shaderF16 ? 'as array<f16> (shader-f16)' : 'packed in u32 (no shader-f16)'}, bf16 packed in u32), f32 arithmetic and trainable state.`,
    '',
    '## The matmul kernel alone',
    '',
    'One dispatch, median (min–max) of 7 after 2 warm-ups, each waited for with onSubmittedWorkDone() through quietly() (no busy poll). "default" = the variant the compiler picks for that product.',
    '',
    '| product | kernel | ms (min–max) | GFLOP/s |',
    '|---|---|--:|--:|',
    ...mm.map((r) => `| ${r.what} | ${r.variant} | ${f1(r.median)} (${f1(r.min)}–${f1(r.max)}) | ${r.gflops.toFixed(2)} |`),
    '',
  ];
  lines.push(
    '## Attention: the fused op against the composition',
    '',
    `One training step of q, k, v [${ATTENTION.batch}, ${ATTENTION.heads}, s, ${ATTENTION.headDim}] as parameters through causal attention (loss ⟨attention(q, k, v), c⟩, SGD): forward + backward + update, median (min–max) of ${ATTENTION.steps} after 2 warm-ups. Saved = the plan's bytes live when backward starts that forward made; peak = the arena.`,
    '',
    '| s | attention | step ms (min–max) | time ÷ fused | saved | saved ÷ fused | peak | peak ÷ fused | GPU bytes | dispatches |',
    '|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|',
    ...attn.map((r) => {
      const f = attn.find((x) => x.seq === r.seq && x.fused)!;
      return `| ${r.seq} | ${r.fused ? 'fused op' : 'composition'} | ${f1(r.median)} (${f1(r.min)}–${f1(r.max)}) | ${(r.median / f.median).toFixed(2)} | ${fmtBytes(r.saved)} | ${(r.saved / f.saved).toFixed(2)} | ${fmtBytes(r.peak)} | ${(r.peak / f.peak).toFixed(2)} | ${fmtBytes(r.allocated)}${r.allocated === r.peak ? '' : ' **≠**'} | ${r.dispatches} |`;
    }),
    '',
  );
  const prof = rows.find((r) => r.timeline);
  if (prof?.timeline) {
    const total = prof.timeline.reduce((s, r) => s + r.ms, 0);
    lines.push(
      `## Where a ${prof.model} ${prof.mode} step goes`,
      '',
      `Each dispatch in its own compute pass between timestamp queries (median of 3 steps after one warm-up), summed per kernel: ${f1(total)} ms of kernel time in all.`,
      '',
      '| kernel | dispatches | ms | share |',
      '|---|--:|--:|--:|',
      ...prof.timeline.map((r) => `| ${r.kernel.replace(/\|/g, '\\|')} | ${r.dispatches} | ${r.ms.toFixed(2)} | ${((100 * r.ms) / total).toFixed(1)}% |`),
      '',
    );
  }
  const text = lines.join('\n');
  console.log(text);
  const out = join(ROOT, 'bench/results/gpu.md');
  writeFileAtomic(out, Buffer.from(text));
  console.log(`wrote ${relative(ROOT, out)}`);
  gpu.device.destroy();
  return text;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  await runGpuBench();
  process.exit(0);
}
