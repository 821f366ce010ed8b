// `npm run bench`: planning figures, not timed tests. Nothing here fails a build.
//
// 1. For every model file in models/ and every config it declares, in modes full, LoRA and LoRA-FA
//    (rank 8, alpha 16, the model's default targets, AdamW, f32 storage, limits 'discrete'):
//    the time to compile and plan, the peak, the lower bound and the fragmentation. A
//    fragmentation above 1.10 is flagged.
// 2. LLaMA-7B `--compare` end to end: once through the library (trace + three compile-and-plans)
//    and as the real CLI command in a child process, the median of 3 runs against 2 s. The CLI
//    runs dist/ (built first when it is stale: scripts/dist-stamp.mjs), as an installed lorafa
//    does; `lorafa --version`, the median of 3 too, is its start-up without a model.
// 3. LLaMA-7B `--fit 80GB` (bf16, seq 1024, q/v) as the CLI command: the median of 3, against 10 s.
// 4. Prints a Markdown table and writes it, with date and machine, to bench/results/plan.md.
// 5. Then the GPU figures of bench/gpu.ts (step times, matmul GFLOP/s, a W1 step profile) to
//    bench/results/gpu.md; without a WebGPU adapter that section is a one-line note. `npm run
//    bench -- --plan-only` stops before it.
import { writeFileAtomic } from '../src/io/output.ts';
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { availableParallelism, cpus, totalmem } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadModel, trace } from '../src/model/load.ts';
import { LorafaError } from '../src/ir/errors.ts';
import { fmtBytes } from '../src/ir/format.ts';
import { compileTraining, MODES, type Mode } from '../src/passes/compile.ts';
import { LIMIT_PRESETS, planMemory, type MemoryPlan } from '../src/passes/memory-plan.ts';
import { runGpuBench } from './gpu.ts';
import { distIsFresh } from '../scripts/dist-stamp.mjs';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const RANK = 8;
const ALPHA = 16;
const LIMITS = LIMIT_PRESETS.discrete;
const FRAGMENTATION_FLAG = 1.1;
/** Issue 16: `plan --config 7b --compare` under 2 s, `--fit 80GB` under 10 s (medians of 3 CLI runs). */
const COMPARE_BUDGET_MS = 2_000;
const FIT_BUDGET_MS = 10_000;
const CLI_RUNS = 3;

interface Row {
  readonly model: string;
  readonly config: string;
  readonly mode: Mode;
  readonly traceMs: number;
  readonly planMs: number;
  readonly plan?: MemoryPlan;
  readonly error?: string;
}

function ms(t0: number): number {
  return performance.now() - t0;
}

function modelPaths(): string[] {
  return readdirSync(join(ROOT, 'models'))
    .filter((f) => f.endsWith('.ts') && !f.endsWith('.d.ts'))
    .sort()
    .map((f) => join(ROOT, 'models', f));
}

async function planOne(path: string, config: string, mode: Mode): Promise<Row> {
  const m = await loadModel(path);
  const model = relative(ROOT, path);
  let t0 = performance.now();
  let traceMs = 0;
  try {
    const graph = trace(m, config);
    traceMs = ms(t0);
    t0 = performance.now();
    const compiled = compileTraining(graph, {
      mode,
      lora: { rank: RANK, alpha: ALPHA, targets: m.def.defaultTargets ?? [], modulesToSave: m.def.modulesToSave },
      optimizer: { kind: 'adamw' },
    });
    const plan = planMemory(compiled.step!, { limits: LIMITS, dtype: 'f32', gradients: compiled.gradients });
    return { model, config, mode, traceMs, planMs: ms(t0), plan };
  } catch (e) {
    if (!(e instanceof LorafaError)) throw e;
    return { model, config, mode, traceMs, planMs: ms(t0), error: e.message };
  }
}

function table(rows: readonly Row[]): string[] {
  const out = [
    '| model | config | mode | trace (ms) | compile + plan (ms) | peak | lower bound | fragmentation | |',
    '|---|---|---|--:|--:|--:|--:|--:|---|',
  ];
  for (const r of rows) {
    const p = r.plan;
    const flag = r.error ? `**ERROR**: ${r.error.replace(/\|/g, '\\|')}` : p!.fragmentation > FRAGMENTATION_FLAG ? `**⚠ fragmentation > ${FRAGMENTATION_FLAG.toFixed(2)}**` : '';
    out.push(
      `| ${r.model} | ${r.config} | ${r.mode} | ${r.traceMs.toFixed(0)} | ${r.planMs.toFixed(0)} | ${p ? fmtBytes(p.peak) : '–'} | ${p ? fmtBytes(p.lowerBound) : '–'} | ${p ? p.fragmentation.toFixed(3) : '–'} | ${flag} |`,
    );
  }
  return out;
}

async function compareThroughLibrary(): Promise<{ totalMs: number; parts: string }> {
  const t0 = performance.now();
  const m = await loadModel(join(ROOT, 'models/llama.ts'));
  const graph = trace(m, '7b');
  const parts: string[] = [`trace ${ms(t0).toFixed(0)} ms`];
  for (const mode of MODES) {
    const t1 = performance.now();
    const compiled = compileTraining(graph, {
      mode,
      lora: { rank: RANK, alpha: ALPHA, targets: m.def.defaultTargets ?? [], modulesToSave: m.def.modulesToSave },
      optimizer: { kind: 'adamw' },
    });
    planMemory(compiled.step!, { limits: LIMITS, dtype: 'f32', gradients: compiled.gradients });
    parts.push(`${mode} ${ms(t1).toFixed(0)} ms`);
  }
  return { totalMs: ms(t0), parts: parts.join(', ') };
}

interface CliTiming {
  /** Median wall clock of the runs, Node's start included. */
  readonly wallMs: number;
  readonly runsMs: readonly number[];
  readonly ok: boolean;
  readonly detail: string;
}

/** `lorafa ARGS` as a child process, CLI_RUNS times: the median wall clock and a line of its output. */
function cliTiming(args: readonly string[], detailLine: RegExp): CliTiming {
  const runsMs: number[] = [];
  let detail = '';
  for (let i = 0; i < CLI_RUNS; i++) {
    const t0 = performance.now();
    const r = spawnSync(process.execPath, [join(ROOT, 'bin/lorafa.mjs'), ...args], { cwd: ROOT, encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 });
    runsMs.push(ms(t0));
    if (r.status !== 0) return { wallMs: Infinity, runsMs, ok: false, detail: `exit ${r.status}: ${(r.stderr || r.stdout).trim().split('\n').slice(-3).join(' / ')}` };
    detail = r.stdout.match(detailLine)?.[0] ?? '';
  }
  return { wallMs: [...runsMs].sort((a, b) => a - b)[runsMs.length >> 1], runsMs, ok: true, detail };
}

const COMPARE_ARGS = ['plan', 'models/llama.ts', '--config', '7b', '--compare'];
const FIT_ARGS = ['plan', 'models/llama.ts', '--config', '7b', '--seq', '1024', '--dtype', 'bf16', '--targets', 'q_proj,v_proj', '--fit', '80GB'];

/** The CLI's timings are of dist/, as installed: built first if the sources changed since. */
function freshDist(): string {
  if (distIsFresh(ROOT)) return 'dist/ (fresh)';
  process.stderr.write('  dist/ is stale: npm run build\n');
  const r = spawnSync(process.execPath, [join(ROOT, 'scripts/build.mjs')], { cwd: ROOT, stdio: 'inherit' });
  return r.status === 0 ? 'dist/ (built now)' : 'the TypeScript sources (npm run build failed)';
}

function machine(): string {
  const nproc = spawnSync('nproc', { encoding: 'utf8' }).stdout?.trim() || String(availableParallelism());
  const cpu = cpus()[0]?.model?.trim() ?? 'unknown CPU';
  return `nproc ${nproc} (${cpu}), ${fmtBytes(totalmem())} RAM, node ${process.version}, ${process.platform}/${process.arch}`;
}

async function main(): Promise<void> {
  const started = new Date();
  // One untimed warm-up so the first row does not carry the JIT's start-up.
  await planOne(join(ROOT, 'models/mlp.ts'), 'toy', 'lora-fa');

  const rows: Row[] = [];
  for (const path of modelPaths()) {
    const m = await loadModel(path);
    for (const config of Object.keys(m.def.configs)) {
      for (const mode of MODES) {
        const row = await planOne(path, config, mode);
        rows.push(row);
        process.stderr.write(`  ${row.model} ${config} ${mode}: ${row.planMs.toFixed(0)} ms\n`);
      }
    }
  }

  const lib = await compareThroughLibrary();
  const ran = freshDist();
  const start = cliTiming(['--version'], /^.*$/m);
  const cli = cliTiming(COMPARE_ARGS, /^planning time.*$/m);
  const fit = cliTiming(FIT_ARGS, /^lora-fa .*$/m);
  const flagged = rows.filter((r) => r.plan && r.plan.fragmentation > FRAGMENTATION_FLAG);
  const failed = rows.filter((r) => r.error);
  const under = (t: number, budget = COMPARE_BUDGET_MS) => (t < budget ? `UNDER ${budget / 1000} s` : `OVER ${budget / 1000} s`);
  const runs = (t: CliTiming) => `runs ${t.runsMs.map((x) => x.toFixed(0)).join(', ')} ms`;

  const lines = [
    `# lorafa plan: planning figures`,
    '',
    `${started.toISOString()}; ${machine()}.`,
    '',
    `Every model in models/, every config, rank ${RANK}, alpha ${ALPHA}, the model's default targets, AdamW, f32 storage, limits discrete`,
    `(alignment ${LIMITS.alignment} B, max binding ${fmtBytes(LIMITS.maxBindingSize)}, max buffer ${fmtBytes(LIMITS.maxBufferSize)}).`,
    `"compile + plan" is what \`lorafa plan\` reports as planning time (compileTraining with the optimizer, then planMemory);`,
    `tracing the model is timed apart. Peak = all buffers; lower bound = most aligned bytes live at one step; fragmentation = peak ÷ lower bound.`,
    '',
    ...table(rows),
    '',
    flagged.length
      ? `**${flagged.length} plan(s) with fragmentation > ${FRAGMENTATION_FLAG.toFixed(2)}:** ${flagged.map((r) => `${r.model} ${r.config} ${r.mode} (${r.plan!.fragmentation.toFixed(3)})`).join('; ')}.`
      : `No plan has fragmentation above ${FRAGMENTATION_FLAG.toFixed(2)}.`,
    ...(failed.length ? ['', `**${failed.length} config(s) could not be planned** (see the table).`] : []),
    '',
    '## LLaMA-7B `--compare` end to end (full, LoRA and LoRA-FA plans)',
    '',
    `- library (loadModel + trace + 3 × compileTraining/planMemory, in this process): **${lib.totalMs.toFixed(0)} ms** (${lib.parts})`,
    `- CLI \`lorafa ${COMPARE_ARGS.join(' ')}\` as a child process running ${ran}, wall clock including Node's start-up and tsx for the model file, median of ${CLI_RUNS}: **${cli.wallMs.toFixed(0)} ms**${cli.ok ? '' : ' (FAILED)'} (${runs(cli)}) — ${cli.ok ? under(cli.wallMs) : 'no result'}`,
    ...(cli.detail ? [`  (CLI's own line: \`${cli.detail.trim()}\`)`] : []),
    `- start-up alone, \`lorafa --version\` (Node, the bin, the package loaded; no model), median of ${CLI_RUNS}: **${start.wallMs.toFixed(0)} ms** (${runs(start)})`,
    '',
    '## LLaMA-7B `--fit 80GB` (bf16, seq 1024, q/v): largest batch per mode, without and with remat',
    '',
    `- CLI \`lorafa ${FIT_ARGS.join(' ')}\`, wall clock, median of ${CLI_RUNS}: **${fit.wallMs.toFixed(0)} ms**${fit.ok ? '' : ' (FAILED)'} (${runs(fit)}) — ${fit.ok ? under(fit.wallMs, FIT_BUDGET_MS) : 'no result'}`,
    ...(fit.detail ? [`  (LoRA-FA row: \`${fit.detail.trim()}\`)`] : []),
    '',
  ];
  const text = lines.join('\n');
  console.log(text);
  const out = join(ROOT, 'bench/results/plan.md');
  writeFileAtomic(out, Buffer.from(text));
  console.log(`wrote ${relative(ROOT, out)}`);
}

await main();
if (!process.argv.includes('--plan-only')) {
  console.log('');
  await runGpuBench();
}
// Dawn may hold the event loop open once a device exists.
process.exit(0);
