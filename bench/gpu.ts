// GPU figures (`npm run bench` appends them after the planning figures; `npx tsx bench/gpu.ts`
// runs them alone). Figures, not timed tests: nothing here fails a build, and no adapter is a note.
//
// 1. Whole training steps through the real pipeline (trace → compileTraining with the optimizer →
//    planMemory with this adapter's limits → buildKernelPlan → StepRunner): the MLP and the LLaMA
//    decoder at toy size in modes full / LoRA / LoRA-FA (AdamW), the shipped email decoder's
//    pretraining step (full) and spam classifier step (LoRA-FA), and W1 (models/w1.ts: 512
//    tokens, d 768, rank 8, 4 layers, SGD) in LoRA and LoRA-FA, plus W1 LoRA-FA with elementwise
//    fusion off and with the portable matmul (no subgroups), to show what each buys; and W1 and the
//    toy LLaMA (LoRA-FA) with f16 and bf16 storage (--dtype), to show what half storage costs.
//    Step time = StepRunner.step() including the 4-byte loss readback: 2 warm-up steps, then the
//    median (min–max) of the timed ones. GFLOP/s counts matmul FLOPs only: 2·m·n·k per matmul
//    node of the step graph (batch included); elementwise work is listed as elements, not FLOPs.
//    GPU bytes = what the runner allocated, next to the plan's peak (they must be equal).
// 2. The matmul kernels shape by shape: every distinct matmul of the W1 LoRA-FA step and of the
//    attention composition (s 256), every variant that fits this adapter timed as `lorafa tune`
//    times it (interleaved rounds, medians), with [512,768]·[768,768] against its 80 GFLOP/s target
//    and the fastest portable variant beside it.
// 3. Where a W1 LoRA-FA step goes: src/runtime/profile.ts (`lorafa train --profile`'s profiler) on
//    3 steps after the timed ones: per kernel time, share, GFLOP/s (matmul) and GB/s; timestamp
//    queries where the adapter has them, else the wall clock per dispatch (the table says which).
// 4. Attention alone, fused op against the composition (b.attentionComposed): one training step
//    (forward + backward + SGD update of q, k, v as parameters; loss ⟨attention(q, k, v), c⟩) for
//    s = 128, 256, 512 (1 × 8 heads × 64, causal): median ms, the plan's peak and saved bytes.
// 5. Prints a Markdown table and writes bench/results/gpu.md with date, adapter and Node version.
import { writeFileAtomic } from '../src/io/output.ts';
import { cpus } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { loadModel, trace } from '../src/model/load.ts';
import { PRESETS } from '../src/train/presets.ts';
import { buildKernelPlan, matmulKeys } from '../src/codegen/kernel-plan.ts';
import { acquireGpu } from '../src/runtime/gpu.ts';
import { MATMUL_VARIANTS, matmulVariant } from '../src/codegen/matmul.ts';
import { Builder } from '../src/ir/builder.ts';
import { fmtBytes } from '../src/ir/format.ts';
import { numel, type Graph } from '../src/ir/types.ts';
import { resolveConfig } from '../src/model/define.ts';
import { compileTraining, type Mode } from '../src/passes/compile.ts';
import { planMemory, type StorageDType } from '../src/passes/memory-plan.ts';
import { flopsOf } from '../src/passes/remat.ts';
import { optimizerFeeds, type OptimizerOptions } from '../src/passes/optimizer.ts';
import { StepRunner } from '../src/runtime/executor.ts';
import { type Gpu } from '../src/runtime/gpu.ts';
import { initParams, rng } from '../src/runtime/init.ts';
import { tuneMatmul, type ShapeTuning, type VariantTiming } from '../src/runtime/tune.ts';
import { median, profileMarkdown, profileSteps, type StepProfile } from '../src/runtime/profile.ts';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const RANK = 8;
const ALPHA = 16;

// ---------------------------------------------------------------------------------------------
// The device: acquireGpu's limits, plus 'subgroups' (the lavapipe matmul shares A loads across a
// subgroup) and 'timestamp-query' (the profile) when the adapter has them.

/** The runtime's own device (subgroups and timestamp queries requested when offered). */
export async function benchGpu(): Promise<Gpu | string> {
  try {
    return await acquireGpu();
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
  /** LoRA as this preset sets it (rank, alpha, targets, modules_to_save), not the model's defaults. */
  readonly preset?: 'spam';
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
  readonly timeline?: StepProfile;
  /** The step's distinct matmul shape keys (kernel-plan.ts matmulKeys). */
  readonly matmulKeys: readonly string[];
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
 * `steps` timed ones (parameters seeded, inputs from feedsFor, the optimizer's scalars); with
 * `profile`, then 3 profiled steps, against the timed steps' median.
 */
async function timeSteps(
  gpu: Gpu,
  compiled: ReturnType<typeof compileTraining>,
  o: { readonly optimizer: OptimizerOptions; readonly cfg: Readonly<Record<string, unknown>>; readonly steps: number; readonly fuse: boolean; readonly subgroupSize?: number; readonly dtype?: StorageDType; readonly profile?: boolean },
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
  const profile = o.profile ? await profileSteps(runner, { steps: 3, warmup: 0, wall: { ms: median(times), of: `the median of ${times.length} timed steps` } }) : undefined;
  runner.destroy();
  return { step, plan, kp, allocated, profile, median: median(times), min: Math.min(...times), max: Math.max(...times) };
}

/** The model's default targets at RANK / ALPHA, or the preset's LoRA settings. */
function loraOf(c: StepCase, def: { readonly defaultTargets?: readonly string[]; readonly modulesToSave?: readonly string[] }) {
  if (!c.preset) return { rank: RANK, alpha: ALPHA, targets: def.defaultTargets ?? [], modulesToSave: def.modulesToSave };
  const d = PRESETS[c.preset].defaults;
  return { rank: d.rank, alpha: d.alpha, targets: d.targets ?? def.defaultTargets ?? [], modulesToSave: d.modulesToSave ?? def.modulesToSave };
}

async function runStepCase(gpu: Gpu, c: StepCase): Promise<StepRow> {
  const m = await loadModel(join(ROOT, 'models', `${c.model}.ts`));
  const graph = trace(m, c.config);
  const cfg = resolveConfig(m.def, { config: c.config });
  const compiled = compileTraining(graph, {
    mode: c.mode,
    lora: loraOf(c, m.def),
    optimizer: c.optimizer,
  });
  const { step, kp, allocated, profile, median: med, min, max } = await timeSteps(gpu, compiled, {
    optimizer: c.optimizer,
    cfg,
    steps: c.steps,
    fuse: c.variant !== 'no fusion',
    subgroupSize: c.variant === 'portable matmul' ? undefined : gpu.subgroupSize,
    dtype: c.variant === 'f16 storage' ? 'f16' : c.variant === 'bf16 storage' ? 'bf16' : 'f32',
    profile: c.profile,
  });
  return {
    ...c,
    median: med,
    min,
    max,
    ...work(step),
    dispatches: kp.dispatches.length,
    kernels: kp.kernels.length,
    matmulKeys: matmulKeys(kp),
    allocated,
    peak: kp.bytes,
    timeline: profile,
  };
}

// ---------------------------------------------------------------------------------------------

/** Where a matmul shape comes from, and every variant's time on it (src/runtime/tune.ts). */
interface MatmulShapeRow {
  readonly from: string;
  readonly tuning: ShapeTuning;
}

/** The product the issue's target names: x·W of W1. */
const HEADLINE_KEY = '[512,768]·[768,768] f32,f32→f32';
const HEADLINE_TARGET = 80;

/**
 * Every distinct matmul of the W1 LoRA-FA step and of the attention composition at s = 256, each
 * variant that fits this adapter timed as `lorafa tune` times it: 7 rounds, one dispatch of each
 * variant per round, medians (a variant 3× slower than the best on its first run stops there).
 */
async function benchMatmulShapes(gpu: Gpu, sources: readonly { from: string; keys: readonly string[] }[]): Promise<MatmulShapeRow[]> {
  const rows: MatmulShapeRow[] = [];
  const seen = new Set<string>();
  for (const { from, keys } of sources) {
    for (const key of keys) {
      if (seen.has(key)) continue;
      seen.add(key);
      rows.push({ from, tuning: await tuneMatmul(gpu, key, { runs: 7 }) });
      process.stderr.write(`  matmul ${key}: ${rows.at(-1)!.tuning.timings.map((t) => `${t.variant} ${f1(t.ms)} ms`).join(', ')}\n`);
    }
  }
  return rows;
}

// ---------------------------------------------------------------------------------------------

const ADAMW: OptimizerOptions = { kind: 'adamw' };
const SGD: OptimizerOptions = { kind: 'sgd' };

const CASES: readonly StepCase[] = [
  ...(['full', 'lora', 'lora-fa'] as const).map((mode) => ({ model: 'mlp', config: 'toy', mode, optimizer: ADAMW, steps: 15 })),
  ...(['full', 'lora', 'lora-fa'] as const).map((mode) => ({ model: 'llama', config: 'toy', mode, optimizer: ADAMW, steps: 15 })),
  // The shipped email decoder: its pretraining step (full: the embedding's gradient is a
  // scatter_add over an 8192-row table) and the main job's spam classifier step (LoRA-FA as the
  // preset sets it: every linear layer adapted, the embedding trained, so it runs scatter_add too).
  { model: 'llama', config: 'email', mode: 'full', optimizer: ADAMW, steps: 7 },
  { model: 'llama', config: 'spam', mode: 'lora-fa', optimizer: ADAMW, steps: 7, preset: 'spam' },
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
  readonly matmulKeys: readonly string[];
}

const ATTENTION = { batch: 1, heads: 8, headDim: 64, seqs: [128, 256, 512], steps: 5 } as const;

/** One SGD step of q, k, v through attention (fused op or composition), planned and run. */
export async function benchAttention(gpu: Gpu, seq: number, fused: boolean, shape0: { batch: number; heads: number; headDim: number } = ATTENTION): Promise<AttentionRow> {
  const { batch, heads, headDim } = shape0;
  const b = new Builder({ name: `attention_${fused ? 'fused' : 'composed'}_${seq}` });
  const shape = [batch, heads, seq, headDim];
  const [q, k, v] = ['q', 'k', 'v'].map((n) => b.param(n, shape, { init: { kind: 'normal', std: 1 } }));
  const o = fused ? b.attention(q, k, v, { causal: true, impl: 'fused' }) : b.attentionComposed(q, k, v, { causal: true });
  b.loss(b.sum(b.mul(o, b.input('c', shape))));
  const optimizer: OptimizerOptions = { kind: 'sgd' };
  const r = await timeSteps(gpu, compileTraining(b.build(), { mode: 'full', optimizer }), { optimizer, cfg: {}, steps: ATTENTION.steps, fuse: true, subgroupSize: gpu.subgroupSize });
  const saved = r.plan.timeline[r.plan.backwardStart]?.saved ?? 0;
  return { seq, fused, median: r.median, min: r.min, max: r.max, peak: r.kp.bytes, saved, allocated: r.allocated, dispatches: r.kp.dispatches.length, matmulKeys: matmulKeys(r.kp) };
}

/** The per-shape matmul table: every variant's GFLOP/s, the heuristic's choice and the fastest. */
function matmulSection(mm: readonly MatmulShapeRow[]): string[] {
  const names = MATMUL_VARIANTS.map((v) => v.name).filter((name) => mm.some((r) => r.tuning.timings.some((t) => t.variant === name)));
  const gf = (r: MatmulShapeRow, t: VariantTiming) => r.tuning.flops / t.ms / 1e6;
  const cell = (r: MatmulShapeRow, name: string) => {
    const t = r.tuning.timings.find((x) => x.variant === name);
    if (!t) return '—';
    const fastest = r.tuning.timings.reduce((x, y) => (y.ms < x.ms ? y : x));
    const text = `${gf(r, t).toFixed(1)}${t.runs < 7 ? '*' : ''}`;
    return t === fastest ? `**${text}**` : text;
  };
  const lines = [
    '## The matmul kernels, shape by shape',
    '',
    "Every distinct matmul of the W1 LoRA-FA step and of the attention composition (s 256), each variant that fits this adapter timed as `lorafa tune` times it (src/runtime/tune.ts): 2 warm-ups, then 7 rounds of one dispatch of every variant, the median per variant, waits through quietly(). GFLOP/s = 2·m·n·k·batch ÷ median; **bold** = the fastest; * = stopped after one run at 3× the best; — = does not fit. \"heuristic\" = what the compiler runs untuned.",
    '',
  ];
  const head = mm.find((r) => r.tuning.key === HEADLINE_KEY);
  if (head) {
    const best = head.tuning.timings.reduce((x, y) => (y.ms < x.ms ? y : x));
    const portable = head.tuning.timings.filter((t) => matmulVariant(t.variant)?.portable).reduce((x, y) => (y.ms < x.ms ? y : x));
    lines.push(
      `[512,768]·[768,768] (x·W): the fastest variant, ${best.variant}, ${gf(head, best).toFixed(1)} GFLOP/s against the target of ${HEADLINE_TARGET} (${gf(head, best) >= HEADLINE_TARGET ? 'met' : 'not met'}); the fastest portable one, ${portable.variant}, ${gf(head, portable).toFixed(1)} GFLOP/s.`,
      '',
    );
  }
  lines.push(
    `| product | from | heuristic | ${names.join(' | ')} |`,
    `|---|---|---|${names.map(() => '--:').join('|')}|`,
    ...mm.map((r) => `| ${r.tuning.key} | ${r.from} | ${r.tuning.heuristic} | ${names.map((n) => cell(r, n)).join(' | ')} |`),
    '',
  );
  return lines;
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
  const attn: AttentionRow[] = [];
  for (const seq of ATTENTION.seqs) {
    for (const fused of [true, false]) {
      const r = await benchAttention(gpu, seq, fused);
      attn.push(r);
      process.stderr.write(`  attention s=${seq} ${fused ? 'fused' : 'composed'}: ${f1(r.median)} ms\n`);
    }
  }
  const w1 = rows.find((r) => r.model === 'w1' && r.mode === 'lora-fa' && !r.variant)!;
  const att = attn.find((r) => r.seq === 256 && !r.fused)!;
  const mm = await benchMatmulShapes(gpu, [
    { from: 'W1 LoRA-FA', keys: w1.matmulKeys },
    { from: 'attention (composition, s 256)', keys: att.matmulKeys },
  ]);

  const cpu = cpus()[0]?.model?.trim() ?? 'unknown CPU';
  const lines = [
    ...head,
    `${started.toISOString()}; adapter: ${gpu.description}${gpu.subgroupSize ? ` (subgroups of ${gpu.subgroupSize})` : ''}; ${cpus().length} × ${cpu}; Node ${process.version}.`,
    '',
    `Whole training steps: trace → compile (rank ${RANK}, alpha ${ALPHA}, the model's default targets; a row whose variant names a preset: that preset's rank, alpha, targets and modules_to_save) → plan (this adapter's limits) → kernel plan → StepRunner.`,
    'Step = one StepRunner.step() with its 4-byte loss readback; 2 warm-up steps, then median (min–max) of the rest.',
    'GFLOP/s = matmul FLOPs (2·m·n·k per matmul node of the step graph) ÷ median step time; elementwise nodes are counted as elements, not FLOPs.',
    '',
    '| model | config | mode | optimizer | variant | step ms (min–max) | matmul GFLOP | GFLOP/s | elementwise Melem | dispatches | kernels | GPU bytes | plan peak |',
    '|---|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|',
    ...rows.map(
      (r) =>
        `| ${r.model} | ${r.config} | ${r.mode} | ${r.optimizer.kind} | ${r.variant ?? (r.preset ? `preset ${r.preset}` : 'default')} | ${f1(r.median)} (${f1(r.min)}–${f1(r.max)}) | ${(r.matmulFlops / 1e9).toFixed(3)} | ${(r.matmulFlops / r.median / 1e6).toFixed(2)} | ${(r.elementwise / 1e6).toFixed(2)} | ${r.dispatches} | ${r.kernels} | ${fmtBytes(r.allocated)} | ${fmtBytes(r.peak)}${r.allocated === r.peak ? '' : ' **≠**'} |`,
    ),
    '',
    '"default" = elementwise fusion on, and the subgroup matmul where the device has fixed-size subgroups;',
    '"no fusion" = every node its own kernel; "portable matmul" = the kernel every adapter gets;',
    `"f16 storage" / "bf16 storage" = --dtype: frozen weights and activations stored in 2 bytes (f16 ${gpu.shaderF16 ? 'as array<f16> (shader-f16)' : 'packed in u32 (no shader-f16)'}, bf16 packed in u32), f32 arithmetic and trainable state.`,
    '',
    ...matmulSection(mm),
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
    lines.push(
      `## Where a ${prof.model} ${prof.mode} step goes`,
      '',
      'src/runtime/profile.ts, as `lorafa train --profile` runs it, on 3 steps after the timed ones: per kernel, its dispatches summed within a step and the median over the steps; share = of the summed kernel time. GB/s = the bytes a kernel binds (operands read, outputs written once each) ÷ its time; GFLOP/s for matmul (2·m·n·k) and attention.',
      '',
      profileMarkdown(prof.timeline),
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
