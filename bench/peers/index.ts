// `npm run bench:peers [-- --n 512 --d 768 --r 8 --layers 4 --rounds 3 --systems …]`
//
// W1 (bench/peers/w1-data.ts) in every system people would use instead, side by side in one run,
// in alternation (this machine is shared and noisy: only ratios measured together are stable):
//   lorafa (Dawn), TF.js webgpu (same Dawn adapter) and wasm, jax-js webgpu and wasm,
//   PyTorch CPU (Debian python3-torch) at 1 and 2 threads; and the CPU's sgemm as the physical limit.
// Every system starts from the same data file, runs K steps reading each loss back, and must agree
// with lorafa's losses (stated tolerance below), or its figures are marked as not comparable.
// Each runner is its own process (its own device, its own memory) printing one JSON line; a runner
// that is missing or fails is skipped with the reason. Writes bench/results/peers.md and peers.json;
// exits 1 when any system's losses disagree with lorafa's.
import { writeFileAtomic } from '../../src/io/output.ts';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { cpus } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';
import { fmtBytes } from '../../src/ir/format.ts';
import { agreement, DROP_RTOL, LOSS_RTOL, median, physicalLimit, targets, w1Flops, type Row, type SgemmRun } from './report.ts';
import { w1Data, W1_HYPER, type W1Shape } from './w1-data.ts';

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(HERE, '..', '..');
const PY = '/usr/bin/python3';
const list = (v: string) => v.split(',').map((s) => s.trim()).filter(Boolean);

const flags = new Command('bench:peers')
  .option('--n <n>', 'tokens', Number, 512)
  .option('--d <d>', 'width', Number, 768)
  .option('--r <r>', 'LoRA rank', Number, 8)
  .option('--layers <l>', 'layers', Number, 4)
  .option('--rounds <k>', 'runs of every system (each figure is the median over them)', Number, 3)
  .option('--steps <k>', 'steps per run (losses compared after them)', Number, 12)
  .option('--warmup <w>', 'steps per run not timed', Number, 2)
  .option('--systems <list>', 'systems to run', list, ['lorafa', 'tfjs-webgpu', 'tfjs-wasm', 'jaxjs-webgpu', 'jaxjs-wasm', 'torch-1', 'torch-2'])
  .option('--variants <list>', 'lora, lora-fa', list, ['lora-fa', 'lora'])
  .option('--optimizers <list>', 'sgd, adamw', list, ['sgd', 'adamw'])
  .option('--timeout <s>', 'seconds one runner may take', Number, 300)
  .parse()
  .opts<{ n: number; d: number; r: number; layers: number; rounds: number; steps: number; warmup: number; systems: string[]; variants: string[]; optimizers: string[]; timeout: number }>();

const shape: W1Shape = { n: flags.n, d: flags.d, r: flags.r, layers: flags.layers };

interface RunJson {
  system: string;
  backend?: string;
  threads?: number;
  variant: string;
  optimizer: string;
  losses: number[];
  ms: number[];
  memory?: { kind: string; peak: number | null; [k: string]: unknown };
  versions?: Record<string, string>;
  adapter?: string;
  notes?: string[];
}

/** How each system is started; undefined when it cannot run here (with the reason). */
function command(system: string): { cmd: string; args: string[] } | string {
  const tsx = join(ROOT, 'node_modules', '.bin', 'tsx');
  const ts = (file: string, extra: string[]) => (existsSync(join(HERE, file)) ? { cmd: tsx, args: [join(HERE, file), ...extra] } : `runner bench/peers/${file} missing`);
  if (system === 'lorafa') return ts('lorafa.ts', []);
  const m = /^(tfjs|jaxjs)-(webgpu|wasm)$/.exec(system);
  if (m) return ts(`${m[1]}.ts`, ['--backend', m[2]]);
  const t = /^torch-(\d+)$/.exec(system);
  if (t) {
    if (!existsSync(PY)) return `${PY} not found (install Debian's python3)`;
    const probe = spawnSync(PY, ['-c', 'import torch'], { encoding: 'utf8' });
    if (probe.status !== 0) return "Debian's python3-torch is not installed (apt-get install python3-torch libopenblas0-pthread)";
    return {
      cmd: PY,
      args: [join(HERE, 'torch_w1.py'), '--threads', t[1], '--sgd-lr', String(W1_HYPER.sgd.lr), '--adamw-lr', String(W1_HYPER.adamw.lr), '--weight-decay', String(W1_HYPER.adamw.weightDecay)],
    };
  }
  return `unknown system "${system}"`;
}

function run(system: string, args: string[]): RunJson | string {
  const c = command(system);
  if (typeof c === 'string') return c;
  const r = spawnSync(c.cmd, [...c.args, ...args], { encoding: 'utf8', timeout: flags.timeout * 1000, env: { ...process.env, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR || '/tmp' }, maxBuffer: 64 << 20 });
  if (r.error) return `failed to run: ${r.error.message}`;
  const last = r.stdout.trim().split('\n').pop() ?? '';
  try {
    return JSON.parse(last) as RunJson;
  } catch {
    return `exit ${r.status}${r.signal ? ` (${r.signal})` : ''}: ${(r.stderr || r.stdout).trim().split('\n').filter((l) => !/Warning: max/.test(l)).slice(-3).join(' | ')}`;
  }
}

const file = w1Data(shape, 0);
const t0 = Date.now();
const runs: (RunJson & { round: number; key: string; id: string })[] = [];
const skipped = new Map<string, string>();
const sgemm: SgemmRun[] = [];
for (let round = 1; round <= flags.rounds; round++) {
  for (const variant of flags.variants) {
    for (const optimizer of flags.optimizers) {
      // Alternate the order each round so no system always runs right after the same neighbour.
      const order = round % 2 ? flags.systems : [...flags.systems].reverse();
      for (const system of order) {
        const key = `${system} ${variant} ${optimizer}`;
        if (skipped.has(system)) continue;
        const r = run(system, ['--variant', variant, '--optimizer', optimizer, '--data', file, '--steps', String(flags.steps), '--warmup', String(flags.warmup)]);
        if (typeof r === 'string') {
          skipped.set(system, r);
          console.error(`skip ${system}: ${r}`);
          continue;
        }
        runs.push({ ...r, round, key, id: system });
        console.error(`round ${round} ${key}: loss ${r.losses[r.losses.length - 1]?.toFixed(7)} median ${median(r.ms).toFixed(1)} ms`);
      }
    }
  }
  if (!skipped.has('torch-1') && flags.systems.some((s) => s.startsWith('torch'))) {
    for (const threads of [1, 2]) {
      const r = spawnSync(PY, [join(HERE, 'torch_w1.py'), '--sgemm', '--threads', String(threads), '--n', String(shape.n), '--d', String(shape.d)], { encoding: 'utf8', timeout: 120_000 });
      try {
        sgemm.push(JSON.parse(r.stdout.trim().split('\n').pop()!));
      } catch {
        /* reported as missing below */
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The table.
const rows: string[] = [];
const out: (Row & Record<string, unknown>)[] = [];
const ref = (variant: string, optimizer: string) => runs.filter((r) => r.id === 'lorafa' && r.variant === variant && r.optimizer === optimizer);
const physical = physicalLimit(sgemm);
for (const variant of flags.variants) {
  for (const optimizer of flags.optimizers) {
    const base = ref(variant, optimizer);
    const baseMs = base.length ? median(base.map((r) => median(r.ms))) : NaN;
    const baseMem = base[0]?.memory?.peak ?? NaN;
    const baseLoss = base[0]?.losses;
    for (const system of flags.systems) {
      const rs = runs.filter((r) => r.id === system && r.variant === variant && r.optimizer === optimizer);
      if (!rs.length) continue;
      const med = median(rs.map((r) => median(r.ms)));
      const all = rs.flatMap((r) => r.ms);
      const gflops = w1Flops(shape, variant) / (med * 1e6);
      const last = rs[0].losses[rs[0].losses.length - 1];
      const a = system === 'lorafa' || !baseLoss ? undefined : agreement(baseLoss, rs[0].losses);
      const agree = a ? (a.ok ? 'yes' : `**no** (${a.why})`) : 'reference';
      const mem = rs[0].memory;
      rows.push(
        `| ${system} | ${variant} | ${optimizer} | ${med.toFixed(1)} (${Math.min(...all).toFixed(1)}–${Math.max(...all).toFixed(1)}) | ${gflops.toFixed(2)} | ${mem?.peak != null ? `${fmtBytes(mem.peak)} (${mem.kind})` : `— (${mem?.kind ?? 'none'})`} | ${system === 'lorafa' ? '1.00' : (med / baseMs).toFixed(2)} | ${system === 'lorafa' ? '1.00' : mem?.peak != null && mem.kind === 'gpu-buffer-bytes' ? (mem.peak / baseMem).toFixed(2) : '—'} | ${last.toPrecision(8)} | ${agree} |`,
      );
      out.push({ system, variant, optimizer, medianMs: med, minMs: Math.min(...all), maxMs: Math.max(...all), gflops, memory: mem, lossAfter: last, agree: a ? a.ok : 'reference', runs: rs.length, versions: rs[0].versions, adapter: rs[0].adapter, notes: rs[0].notes });
    }
  }
}
const lorafaBest = Math.max(0, ...out.filter((o) => o.system === 'lorafa').map((o) => o.gflops as number));
const goals = targets(out);
const versions = new Map<string, string>();
for (const r of runs) for (const [k, v] of Object.entries(r.versions ?? {})) versions.set(k, v);
const adapter = runs.find((r) => r.adapter)?.adapter;
const md = [
  `# W1 side by side: lorafa and its peers`,
  '',
  `\`npm run bench:peers${process.argv.length > 2 ? ' -- ' + process.argv.slice(2).join(' ') : ''}\` — ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC, ${cpus().length} × ${cpus()[0]?.model ?? '?'}, Node ${process.versions.node}; ${((Date.now() - t0) / 60000).toFixed(1)} min.`,
  '',
  `W1: n ${shape.n} tokens, d ${shape.d}, r ${shape.r}, ${shape.layers} layers of y = x·W + s·(x·A)·B (s = ${W1_HYPER.alpha}/${shape.r}) with GELU (tanh) between, W frozen, MSE. SGD lr ${W1_HYPER.sgd.lr}; AdamW lr ${W1_HYPER.adamw.lr}, weight decay ${W1_HYPER.adamw.weightDecay}. Every system starts from the same file (${file.replace(ROOT + '/', '')}), runs ${flags.steps} steps reading each loss back, the first ${flags.warmup} untimed; each figure is the median over ${flags.rounds} runs (min–max over all timed steps). GFLOP/s counts the step's matmul FLOPs (${(w1Flops(shape, 'lora-fa') / 1e9).toFixed(2)} GFLOP LoRA-FA, ${(w1Flops(shape, 'lora') / 1e9).toFixed(2)} LoRA). Losses agree when the loss after ${flags.steps} steps is within ${LOSS_RTOL} relative of lorafa's and the loss drop within ${100 * DROP_RTOL}% of lorafa's.`,
  '',
  `Adapter (every WebGPU system): ${adapter ?? 'not reported'}. Versions: ${[...versions].map(([k, v]) => `${k} ${v}`).join(', ')}.`,
  '',
  '| system | variant | optimizer | ms/step median (min–max) | GFLOP/s | memory | time ÷ lorafa | GPU bytes ÷ lorafa | loss after | agrees |',
  '|---|---|---|---|---|---|---|---|---|---|',
  ...rows,
  '',
  physical
    ? `Physical limit: this CPU's float32 sgemm of [${shape.n},${shape.d}]·[${shape.d},${shape.d}] reaches ${physical.toFixed(1)} GFLOP/s (median over ${flags.rounds} rounds: ${[1, 2]
        .map((t) => sgemm.filter((s) => s.threads === t))
        .filter((g) => g.length)
        .map((g) => `${g[0].threads} thread${g[0].threads > 1 ? 's' : ''}: numpy ${median(g.map((s) => s.numpy_gflops)).toFixed(1)}, torch ${median(g.map((s) => s.torch_gflops)).toFixed(1)}`)
        .join('; ')}); lorafa's best W1 step reaches ${lorafaBest.toFixed(2)} GFLOP/s, ${((100 * lorafaBest) / physical).toFixed(0)}% of it.`
    : 'Physical limit: not measured (PyTorch absent).',
  '',
  ...goals.map((g) => `Target against ${g.peer} (W1 LoRA-FA SGD: ≥ 4× faster, ≤ ¼ of the GPU bytes): ${g.met ? 'met' : '**not met**'} — ${g.speedup.toFixed(2)}× faster, ${g.bytesRatio.toFixed(2)}× fewer bytes${g.met ? '' : ` (${g.why})`}.`),
  '',
  ...[...skipped].map(([s, why]) => `- skipped ${s}: ${why}`),
  '',
].join('\n');
console.log(md);
mkdirSync(join(ROOT, 'bench', 'results'), { recursive: true });
writeFileAtomic(join(ROOT, 'bench', 'results', 'peers.md'), Buffer.from(md));
writeFileAtomic(join(ROOT, 'bench', 'results', 'peers.json'), Buffer.from(JSON.stringify({ shape, flags, adapter, versions: Object.fromEntries(versions), sgemm, physical, targets: goals, results: out, skipped: Object.fromEntries(skipped), runs }, null, 1) + '\n'));

// A system that computed something else makes the run a failure (its figures are not comparable);
// missed targets do not (they are figures, not tests).
const disagree = out.filter((o) => o.agree === false);
if (disagree.length) {
  console.error(`bench:peers: ${disagree.length} row(s) computed something else than lorafa: ${disagree.map((o) => `${o.system} ${o.variant} ${o.optimizer}`).join(', ')}`);
  process.exitCode = 1;
}
