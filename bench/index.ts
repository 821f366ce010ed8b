// `npm run bench`: planning figures, not timed tests. Nothing here fails a build.
//
// 1. For every model file in models/ and every config it declares, in modes full, LoRA and LoRA-FA
//    (rank 8, alpha 16, the model's default targets, AdamW, f32 storage, limits 'discrete'):
//    the time to compile and plan, the peak, the lower bound and the fragmentation. A
//    fragmentation above 1.10 is flagged.
// 2. LLaMA-7B `--compare` end to end: once through the library (trace + three compile-and-plans)
//    and once as the real CLI command in a child process, with a line saying whether it is under
//    10 s.
// 3. LLaMA-7B `--fit 80GB` (bf16, seq 1024, q/v) as the CLI command: its wall time, against 10 s.
// 4. Prints a Markdown table and writes it, with date and machine, to bench/results/plan.md.
// 5. Then the GPU figures of bench/gpu.ts (step times, matmul GFLOP/s, a W1 step profile) to
//    bench/results/gpu.md; without a WebGPU adapter that section is a one-line note.
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

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const RANK = 8;
const ALPHA = 16;
const LIMITS = LIMIT_PRESETS.discrete;
const FRAGMENTATION_FLAG = 1.1;
const COMPARE_BUDGET_MS = 10_000;

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

function compareThroughCli(): { wallMs: number; ok: boolean; detail: string } {
  const args = [join(ROOT, 'bin/lorafa.mjs'), 'plan', 'models/llama.ts', '--config', '7b', '--compare'];
  const t0 = performance.now();
  const r = spawnSync(process.execPath, args, { cwd: ROOT, encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 });
  const wallMs = ms(t0);
  const ok = r.status === 0;
  const detail = ok ? (r.stdout.match(/^planning time.*$/m)?.[0] ?? '') : `exit ${r.status}: ${(r.stderr || r.stdout).trim().split('\n').slice(-3).join(' / ')}`;
  return { wallMs, ok, detail };
}

function fitThroughCli(): { wallMs: number; ok: boolean; detail: string } {
  const args = [join(ROOT, 'bin/lorafa.mjs'), 'plan', 'models/llama.ts', '--config', '7b', '--seq', '1024', '--dtype', 'bf16', '--targets', 'q_proj,v_proj', '--fit', '80GB'];
  const t0 = performance.now();
  const r = spawnSync(process.execPath, args, { cwd: ROOT, encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 });
  const wallMs = ms(t0);
  const ok = r.status === 0;
  const detail = ok ? (r.stdout.match(/^lora-fa .*$/m)?.[0] ?? '') : `exit ${r.status}: ${(r.stderr || r.stdout).trim().split('\n').slice(-3).join(' / ')}`;
  return { wallMs, ok, detail };
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
  const cli = compareThroughCli();
  const fit = fitThroughCli();
  const flagged = rows.filter((r) => r.plan && r.plan.fragmentation > FRAGMENTATION_FLAG);
  const failed = rows.filter((r) => r.error);
  const under = (t: number) => (t < COMPARE_BUDGET_MS ? 'UNDER 10 s' : 'OVER 10 s');

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
    `- library (loadModel + trace + 3 × compileTraining/planMemory): **${lib.totalMs.toFixed(0)} ms** (${lib.parts}) — ${under(lib.totalMs)}`,
    `- CLI \`lorafa plan models/llama.ts --config 7b --compare\` as a child process, wall clock including Node and tsx start-up: **${cli.wallMs.toFixed(0)} ms**${cli.ok ? '' : ' (FAILED)'} — ${cli.ok ? under(cli.wallMs) : 'no result'}`,
    ...(cli.detail ? [`  (CLI's own line: \`${cli.detail.trim()}\`)`] : []),
    '',
    '## LLaMA-7B `--fit 80GB` (bf16, seq 1024, q/v): largest batch per mode, without and with remat',
    '',
    `- CLI \`lorafa plan models/llama.ts --config 7b --seq 1024 --dtype bf16 --targets q_proj,v_proj --fit 80GB\`, wall clock: **${fit.wallMs.toFixed(0)} ms**${fit.ok ? '' : ' (FAILED)'} — ${fit.ok ? under(fit.wallMs) : 'no result'}`,
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
console.log('');
await runGpuBench();
// Dawn may hold the event loop open once a device exists.
process.exit(0);
