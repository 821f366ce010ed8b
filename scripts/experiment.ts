// `npm run experiment [-- --tasks fashion-mnist,spam] [--seeds 1,2,3] [--ranks 8,32,128] [--steps N]
//                      [--precision f16,bf16] [--reuse docs/results.json]`
//
// The small-scale reproduction of LoRA-FA's claim (same accuracy as LoRA, less memory): every
// fine-tuning task in full / LoRA / LoRA-FA / LoRA-FA with the gradient correction, each from the
// same shipped base model, the same data order and the same budget (steps, batch, schedule).
//
// 1. Tune: each variant's peak learning rate is chosen from a small grid on a validation split
//    (every 10th training sample held out; seed 0), never on the test set — the methods move W at
//    different speeds for the same lr (LoRA grows A as well as B), so one shared lr would compare
//    one method's best against another's off-best.
// 2. Measure: each variant at its chosen lr, for each seed, trained on the whole training split and
//    scored on the test split; for Fashion-MNIST also LoRA vs LoRA-FA across ranks.
// 3. Precision: LoRA-FA at its chosen lr again with --dtype f16 and bf16 (half-precision storage of
//    frozen weights and activations; f16 with dynamic loss scaling), each seed; and W1 (the speed
//    workload, synthetic data) in f32, f16 and bf16, whose losses are compared step by step.
// With --reuse, a run an earlier results.json already holds (same task, variant, seed, steps, lr,
// evaluation split, base model file and preset settings) is taken from it rather than run again, and
// the report says so; a new base model (npm run pretrain) or preset default reruns its task.
// Writes docs/results.md (the tables, the checks, the grid, the exact command and seeds) and
// docs/results.json (every run).
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Command } from 'commander';
import { asCommand, finetune, fmtBytes, LorafaError, presetByName, writeFileAtomic, type Metrics, type Mode } from '../src/index.ts';
import { PACKAGE_ROOT as ROOT, PRETRAINED_DIR } from '../src/train/presets.ts';
import { BASELINE_PRESETS, presetBaselines, type BaselineResult } from '../src/train/baselines.ts';
import type { DataPreset } from '../src/data/presets.ts';

const list = (v: string) => v.split(',').map((s) => s.trim()).filter(Boolean);
const cmd = new Command('experiment')
  .option('--tasks <list>', 'fine-tuning tasks', list, ['fashion-mnist', 'spam'])
  .option('--seeds <list>', 'seeds (init, adapters, data order)', (v) => list(v).map(Number), [1, 2, 3])
  .option('--ranks <list>', 'ranks of the Fashion-MNIST rank sweep (empty: none)', (v) => list(v).map(Number), [8, 32, 128])
  .option('--steps <n>', "override every task's steps (quick checks; the recorded table uses the defaults)", Number)
  .option('--lr-grid <list>', 'peak learning rates tried for LoRA, LoRA-FA and LoRA-FA + correction', (v) => list(v).map(Number), [3e-3, 1e-2, 3e-2])
  .option('--full-lr-grid <list>', 'peak learning rates tried for full fine-tuning', (v) => list(v).map(Number), [3e-4, 1e-3])
  .option('--no-tune', "skip tuning: every variant at the task's default learning rate")
  .option('--chosen-lr <results.json>', "skip tuning: every variant at the learning rate an earlier run's tuning chose (its results.json)")
  .option('--no-alternatives', "skip the comparisons with one preset setting changed (spam: pooling the last real token, as Hugging Face pools, instead of the mean; the token embedding frozen instead of trained)")
  .option('--precision <list>', 'storage dtypes LoRA-FA and W1 are also trained in (empty: none)', list, ['f16', 'bf16'])
  .option('--skip <list>', 'task/variant runs left out (e.g. spam/full: the table then has no such row)', list, [])
  .option('--precision-tasks <list>', 'the tasks whose LoRA-FA runs are repeated in those dtypes (default: every task)', list)
  .option('--w1-steps <n>', 'steps of the W1 precision runs', Number, 200)
  .option('--reuse <results.json>', 'take the runs an earlier results.json holds (same task, variant, seed, steps, lr, evaluation split, base model weights and preset settings) instead of running them again')
  .option('--out <file>', 'the Markdown report', join(ROOT, 'docs', 'results.md'))
  .parse();
const flags = cmd.opts<{ tasks: string[]; seeds: number[]; ranks: number[]; steps?: number; out: string; lrGrid: number[]; fullLrGrid: number[]; tune: boolean; chosenLr?: string; alternatives: boolean; precision: string[]; precisionTasks?: string[]; skip: string[]; w1Steps: number; reuse?: string }>();
const TUNING_SEED = 0;
/**
 * One preset setting changed, everything else equal: the same variants, learning rates, seeds, data
 * order and steps, to show what the setting is worth (and whether the preset could drop it).
 */
interface Alternative {
  /** Suffix of the runs' keys (`lora-fa@last`). */
  readonly key: string;
  /** What differs, and how the preset and the alternative set it. */
  readonly what: string;
  readonly preset: string;
  readonly label: string;
  readonly config?: string;
  readonly modulesToSave?: readonly string[];
}
const ALTERNATIVES: Readonly<Record<string, readonly Alternative[]>> = {
  spam: [
    { key: 'last', what: "the classifier's pooling", preset: 'the mean of the real tokens', label: "the last real token (Hugging Face's pooling)", config: 'spam-last' },
    { key: 'frozen-embed', what: 'the token embedding', preset: 'trained in full (modules_to_save: score, embed_tokens)', label: 'frozen (modules_to_save: score only)', modulesToSave: ['score'] },
  ],
};
const argv = process.argv.slice(2);
const command = `npm run experiment${argv.length ? ' -- ' + argv.join(' ') : ''}`;

interface Variant {
  readonly key: string;
  readonly label: string;
  readonly mode: Mode;
  readonly gc?: boolean;
  readonly rank?: number;
}
const VARIANTS: readonly Variant[] = [
  { key: 'full', label: 'full fine-tuning', mode: 'full' },
  { key: 'lora', label: 'LoRA', mode: 'lora' },
  { key: 'lora-fa', label: 'LoRA-FA', mode: 'lora-fa' },
  { key: 'lora-fa-gc', label: 'LoRA-FA + gradient correction', mode: 'lora-fa', gc: true },
];

interface Row {
  readonly key: string;
  readonly task: string;
  readonly mode: Mode;
  readonly gradCorrection: boolean;
  readonly seed: number;
  readonly steps: number;
  readonly lr: number;
  readonly lora?: { rank: number; alpha: number; targets: readonly string[]; modulesToSave: readonly string[] };
  readonly data: string;
  readonly before: Metrics;
  readonly after: Metrics;
  readonly msPerStep: number;
  readonly firstStepMs: number;
  readonly gpu: { readonly measured: number; readonly planned: number };
  readonly trainable: number;
  readonly device: string;
  readonly lossesEvery10: number[];
  /** Storage of frozen weights and activations (absent: f32). */
  readonly dtype?: string;
  /** The dynamic loss scaler at the end (f16), with its skipped steps. */
  readonly lossScale?: { readonly scale: number; readonly skipped: number };
  /** Taken from an earlier results.json (--reuse), of that run's commit. */
  readonly reused?: string;
  /** What the run started from: see taskFingerprint. */
  readonly fingerprint?: string;
}

interface Earlier {
  readonly tuning?: readonly (Row & { chosen?: boolean })[];
  readonly runs: readonly Row[];
  readonly rankSweep: readonly Row[];
  /** The alternatives' runs (`pooling` in results written before the token-embedding comparison). */
  readonly alternatives?: readonly Row[];
  readonly pooling?: readonly Row[];
  readonly precision?: readonly Row[];
  readonly w1?: readonly W1Row[];
  readonly commit?: string;
}
const earlierRuns: Earlier | undefined = flags.reuse ? JSON.parse(readFileSync(flags.reuse, 'utf8')) : undefined;
const earlierCommit = earlierRuns?.commit ?? (flags.reuse ? /commit (\w+)/.exec(readFileSync(flags.reuse.replace(/\.json$/, '.md'), 'utf8'))?.[1] : undefined) ?? 'unknown';
/** Runs taken from earlier results, by the commit that ran them. */
const reusedFrom = new Map<string, number>();
const countReused = (commit: string) => reusedFrom.set(commit, (reusedFrom.get(commit) ?? 0) + 1);

const fingerprints = new Map<string, string>();
/**
 * What a task's runs start from besides their own flags: the sha256 of the base model's weights and
 * the preset's defaults (targets, rank, optimizer, schedule…). A run is reused only under the same.
 */
function taskFingerprint(task: string): string {
  let f = fingerprints.get(task);
  if (!f) {
    const p = presetByName(task);
    const h = createHash('sha256');
    if (p.base) h.update(readFileSync(join(PRETRAINED_DIR, p.base, 'model.safetensors')));
    h.update(JSON.stringify({ model: p.model, config: p.config, base: p.base, defaults: p.defaults }));
    fingerprints.set(task, (f = h.digest('hex').slice(0, 16)));
  }
  return f;
}

/** The earlier run of this very configuration (--reuse), if there is one. */
function reuse(task: string, seed: number, key: string, lr: number | undefined, steps: number | undefined, evalOn: 'test' | 'validation' = 'test'): Row | undefined {
  if (!earlierRuns || lr === undefined) return undefined;
  // Learning-rate tuning scores the validation split; every other run the test split.
  const all = evalOn === 'validation' ? (earlierRuns.tuning ?? []) : [...earlierRuns.runs, ...earlierRuns.rankSweep, ...(earlierRuns.alternatives ?? earlierRuns.pooling ?? []), ...(earlierRuns.precision ?? [])];
  const r = all.find((x) => x.task === task && x.seed === seed && x.key === key && x.lr === lr && (steps === undefined || x.steps === steps) && x.fingerprint === taskFingerprint(task));
  if (!r) return undefined;
  countReused(r.reused ?? earlierCommit);
  return { ...r, reused: r.reused ?? earlierCommit };
}

/** One run of a preset, through the same finetune() as `lorafa finetune`, no files written. */
async function runTask(task: string, seed: number, key: string, o: { config?: string; modulesToSave?: readonly string[]; evalOn?: 'test' | 'validation'; mode: Mode; gradCorrection?: boolean; steps?: number; lr?: number; rank?: number; alpha?: number; dtype?: string }): Promise<Row> {
  const earlier = reuse(task, seed, key, o.lr, o.steps, o.evalOn);
  if (earlier) return { ...earlier, chosen: undefined } as Row;
  const r = await finetune({ model: task, seed, compare: false, progress: 'none', log: () => {}, ...o });
  return {
    fingerprint: taskFingerprint(task),
    key,
    task,
    mode: o.mode,
    gradCorrection: !!o.gradCorrection,
    seed,
    steps: r.endStep,
    lr: r.lr,
    lora: r.program.spec.lora,
    data: r.data,
    before: r.before!,
    after: r.after!,
    msPerStep: r.msPerStep,
    firstStepMs: r.firstStepMs,
    gpu: { measured: r.measuredBytes, planned: r.program.step.bytes },
    trainable: r.trainable,
    device: r.device,
    lossesEvery10: r.losses.filter((l) => l.step % 10 === 0).map((l) => Number(l.loss.toFixed(5))),
    ...(o.dtype && o.dtype !== 'f32' ? { dtype: o.dtype } : {}),
    ...(r.lossScale?.state ? { lossScale: { scale: r.lossScale.state.scale, skipped: r.lossScale.skippedSteps.length } } : {}),
  };
}

interface W1Row {
  readonly dtype: string;
  readonly losses: number[];
  readonly measured: number;
  readonly planned: number;
  readonly msPerStep: number;
  readonly lossScale?: { readonly scale: number; readonly skipped: number };
  readonly reused?: string;
}

/** W1 (models/w1.ts, LoRA-FA, synthetic data, seed 1) for `steps` steps with `dtype` storage. */
async function runW1(dtype: string, steps: number): Promise<W1Row> {
  const earlier = earlierRuns?.w1?.find((r) => r.dtype === dtype && r.losses.length === steps);
  if (earlier) {
    countReused(earlier.reused ?? earlierCommit);
    return { ...earlier, reused: earlier.reused ?? earlierCommit };
  }
  const r = await finetune({ model: join(ROOT, 'models', 'w1.ts'), data: 'synthetic', mode: 'lora-fa', rank: 8, alpha: 16, seed: 1, steps, lr: 1e-2, dtype, compare: false, progress: 'none', log: () => {}, exportWeights: false, reports: false, evalBefore: false });
  return {
    dtype,
    losses: r.losses.map((l) => l.loss),
    measured: r.measuredBytes,
    planned: r.program.step.bytes,
    msPerStep: r.msPerStep,
    ...(r.lossScale?.state ? { lossScale: { scale: r.lossScale.state.scale, skipped: r.lossScale.skippedSteps.length } } : {}),
  };
}

/** The runner's readback buffer: the loss, and with loss scaling the overflow count. */
const readback = (r: { readonly lossScale?: unknown }) => (r.lossScale ? 8 : 4);
const mean = (xs: readonly number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
const std = (xs: readonly number[]) => (xs.length < 2 ? 0 : Math.sqrt(xs.reduce((a, b) => a + (b - mean(xs)) ** 2, 0) / (xs.length - 1)));
const median = (xs: readonly number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const pct = (x: number) => (100 * x).toFixed(2);

async function runAll(): Promise<void> {
  const started = Date.now();
  const rows: Row[] = [];
  const sweep: Row[] = [];
  const alternatives: Row[] = [];
  const grid: (Row & { chosen?: boolean })[] = [];
  const precision: Row[] = [];
  const w1: W1Row[] = [];
  const chosen = new Map<string, number>();
  let device = '';
  const earlier = flags.chosenLr ? (JSON.parse(readFileSync(flags.chosenLr, 'utf8')) as { chosenLr: Record<string, number> }).chosenLr : undefined;
  // The grid that chose those rates, when the same earlier run is reused: the report keeps it.
  if (earlier && earlierRuns?.tuning && flags.reuse === flags.chosenLr) grid.push(...earlierRuns.tuning.filter((g) => flags.tasks.includes(g.task)).map((g) => ({ ...g, reused: g.reused ?? earlierCommit })));
  for (const name of flags.tasks) {
    const task = presetByName(name);
    if (task.role !== 'finetune') throw new LorafaError(name, 'is a pretraining task', 'use fashion-mnist or spam');
    const variants = VARIANTS.filter((v) => !flags.skip.includes(`${name}/${v.key}`));
    for (const v of variants) {
      const key = `${name}/${v.key}`;
      if (earlier) {
        const lr = earlier[key];
        if (typeof lr !== 'number') throw new LorafaError(flags.chosenLr!, `has no chosen learning rate for ${key}`, 'pass the results.json of a run that tuned this task');
        chosen.set(key, lr);
        continue;
      }
      if (!flags.tune) {
        chosen.set(key, task.defaults.lr[v.mode]);
        continue;
      }
      const tried: (Row & { chosen?: boolean })[] = [];
      for (const lr of v.mode === 'full' ? flags.fullLrGrid : flags.lrGrid) {
        const r = await runTask(name, TUNING_SEED, v.key, { evalOn: 'validation', mode: v.mode, gradCorrection: v.gc, steps: flags.steps, lr });
        tried.push(r);
        console.log(`tune ${name} ${v.key.padEnd(11)} lr ${lr}: validation accuracy ${pct(r.after.accuracy!)}%, loss ${r.after.loss.toFixed(4)}`);
      }
      const best = tried.reduce((a, b) => (b.after.accuracy! > a.after.accuracy! || (b.after.accuracy === a.after.accuracy && b.after.loss < a.after.loss) ? b : a));
      best.chosen = true;
      chosen.set(key, best.lr);
      grid.push(...tried);
    }
    // 2. Every seed, each variant at its chosen learning rate, scored on the test split.
    for (const seed of flags.seeds) {
      for (const v of variants) {
        const t0 = Date.now();
        const r = await runTask(name, seed, v.key, { mode: v.mode, gradCorrection: v.gc, steps: flags.steps, lr: chosen.get(`${name}/${v.key}`) });
        device = r.device;
        rows.push(r);
        console.log(
          `${name} seed ${seed} ${v.key.padEnd(11)} accuracy ${pct(r.before!.accuracy!)}% → ${pct(r.after.accuracy!)}%  ` +
            `GPU ${r.gpu.measured} B measured / ${r.gpu.planned} B planned  ${r.msPerStep.toFixed(1)} ms/step  (${((Date.now() - t0) / 1000).toFixed(0)} s)`,
        );
      }
      for (const alt of flags.alternatives ? (ALTERNATIVES[name] ?? []) : []) {
        // The same runs (lr, seed, data order, steps) with one preset setting changed.
        for (const v of variants) {
          const r = await runTask(name, seed, `${v.key}@${alt.key}`, { config: alt.config, modulesToSave: alt.modulesToSave, mode: v.mode, gradCorrection: v.gc, steps: flags.steps, lr: chosen.get(`${name}/${v.key}`) });
          alternatives.push(r);
          console.log(`${name} seed ${seed} ${v.key.padEnd(11)} ${alt.what}: ${alt.label}: accuracy ${pct(r.before!.accuracy!)}% → ${pct(r.after.accuracy!)}%  GPU ${r.gpu.measured} B`);
        }
      }
      for (const dtype of flags.precisionTasks && !flags.precisionTasks.includes(name) ? [] : flags.precision) {
        const r = await runTask(name, seed, `lora-fa@${dtype}`, { mode: 'lora-fa', steps: flags.steps, lr: chosen.get(`${name}/lora-fa`), dtype });
        precision.push(r);
        console.log(`${name} seed ${seed} lora-fa ${dtype}: accuracy ${pct(r.before!.accuracy!)}% → ${pct(r.after.accuracy!)}%  GPU ${r.gpu.measured} B  ${r.msPerStep.toFixed(1)} ms/step${r.lossScale ? `  loss scale ${r.lossScale.scale}, ${r.lossScale.skipped} skipped` : ''}`);
      }
      if (name === 'fashion-mnist') {
        for (const rank of flags.ranks) {
          for (const mode of ['lora', 'lora-fa'] as const) {
            // The task's own rank and alpha = 2r is the run just made (runs are deterministic): reused.
            const same = rank === task.defaults.rank && task.defaults.alpha === 2 * rank;
            const prior = same ? rows.find((r) => r.task === name && r.seed === seed && r.key === mode) : undefined;
            const row = prior ? { ...prior, key: `${mode}@${rank}` } : await runTask(name, seed, `${mode}@${rank}`, { mode, rank, alpha: 2 * rank, steps: flags.steps, lr: chosen.get(`${name}/${mode}`) });
            sweep.push(row);
            console.log(`${name} seed ${seed} ${mode} r=${rank}: accuracy ${pct(row.after.accuracy!)}%  GPU ${row.gpu.measured} B${prior ? ' (the run above)' : ''}`);
          }
        }
      }
    }
  }
  if (flags.precision.length) {
    for (const dtype of ['f32', ...flags.precision]) {
      const r = await runW1(dtype, flags.w1Steps);
      w1.push(r);
      console.log(`W1 ${dtype}: loss ${r.losses[0].toFixed(4)} → ${r.losses.at(-1)!.toFixed(4)}  GPU ${r.measured} B  ${r.msPerStep.toFixed(1)} ms/step`);
    }
  }
  const minutes = (Date.now() - started) / 60000;
  // The classical baselines: CPU only, seconds, recomputed every time (never reused), so they
  // always come from this commit's code on the same split and input as the runs.
  const baselines: Record<string, BaselineResult[]> = {};
  for (const name of flags.tasks) if ((BASELINE_PRESETS as readonly string[]).includes(name)) baselines[name] = await presetBaselines(name as DataPreset);
  const jsonFile = flags.out.replace(/\.md$/, '') + '.json';
  writeFileAtomic(jsonFile, Buffer.from(JSON.stringify({ command, commit: commitOf(), seeds: flags.seeds, tuningSeed: TUNING_SEED, device, minutes, chosenLr: Object.fromEntries(chosen), tuning: grid, runs: rows, rankSweep: sweep, alternatives, precision, w1, baselines }, null, 1) + '\n'));
  const md = report(rows, sweep, alternatives, grid, device, minutes, precision, w1, baselines);
  writeFileAtomic(flags.out, Buffer.from(md));
  console.log('\n' + md);
  console.log(`wrote ${flags.out} and ${jsonFile} (${minutes.toFixed(1)} min)`);
}

function commitOf(): string {
  try {
    return execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT }).toString().trim();
  } catch {
    return 'unknown';
  }
}

function versions(): string {
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'));
  return `lorafa ${pkg.version} (commit ${commitOf()}), Node ${process.versions.node}, webgpu ${pkg.dependencies.webgpu}`;
}

function report(rows: readonly Row[], sweep: readonly Row[], alternatives: readonly Row[], grid: readonly (Row & { chosen?: boolean })[], device: string, minutes: number, precision: readonly Row[], w1: readonly W1Row[], baselines: Readonly<Record<string, readonly BaselineResult[]>>): string {
  const out: string[] = [
    '# Results: LoRA-FA against LoRA and full fine-tuning, at small scale',
    '',
    'Generated by `scripts/experiment.ts`; do not edit by hand. Reproduce with:',
    '',
    '```sh',
    command,
    '```',
    '',
    `Seeds ${flags.seeds.join(', ')} (each seed sets the init of new parameters and adapters and the data order); ${device}; ${versions()}; ${new Date().toISOString().slice(0, 10)}; ${minutes.toFixed(1)} min${reusedFrom.size ? ' for the runs made by this invocation (reused ones not counted)' : ' in all'}.`,
    '',
    'Every run of a task starts from the same shipped base model (`models/pretrained`), sees the same',
    'batches for a given seed and has the same budget: the task\'s steps, batch and learning-rate schedule',
    '(linear warm-up, cosine decay to a tenth; AdamW). LoRA and LoRA-FA share rank, alpha and targets.',
    flags.chosenLr
      ? `Each variant trains at the peak learning rate an earlier run's tuning chose (\`--chosen-lr ${flags.chosenLr}\`: the best of a grid on a validation split, never the test set). Accuracy is on the fixed`
      : flags.tune
      ? `Each variant's peak learning rate is the best of a grid on a validation split (every 10th training sample held out, seed ${TUNING_SEED}; the grid is at the end), never chosen on the test set. Accuracy is on the fixed`
      : "Every variant trains at the task's default learning rate (no tuning). Accuracy is on the fixed",
    "test set; GPU bytes are counted at the device's createBuffer while the training step runs (the",
    "runner allocates the memory plan's buffers plus a 4-byte loss readback, 8 bytes with loss scaling); step time is the median over",
    'seeds of each run\'s mean step time, first step (shader compilation) excluded.',
    'The classical baseline rows are lorafa\'s own code (src/train/baselines.ts, on the CPU), fitted on the',
    'training split only and scored on the same test set, reading the same input as the model (spam: the',
    'first 128 characters of subject + body; Fashion-MNIST: the 784 pixels ÷ 255): multinomial naive Bayes',
    '(Laplace smoothing) over lowercased words or character 3–4-grams; multinomial logistic regression, 5',
    'epochs of mini-batch SGD (batch 100, lr 0.1, seed 0). `npm run baselines` prints them alone.',
    ...(reusedFrom.size
      ? [
          '',
          `${[...reusedFrom.values()].reduce((a, b) => a + b, 0)} runs were not repeated: \`--reuse ${flags.reuse}\` took them from earlier runs of this script (${[...reusedFrom].map(([c, n]) => `${n} at commit ${c}`).join(', ')}), with the same task, variant, seed, steps, learning rate, base model weights (sha256) and preset settings; runs are deterministic on one device, and what they train has not changed since.`,
        ]
      : []),
    '',
  ];
  for (const name of flags.tasks) {
    const task = presetByName(name);
    const of = (k: string) => rows.filter((r) => r.task === name && r.key === k);
    const any = of('lora-fa')[0] ?? rows.find((r) => r.task === name)!;
    const d = task.defaults;
    out.push(`## ${name}: ${task.description}`, '');
    out.push(`Data: ${any.data}. ${any.steps} steps; LoRA r=${any.lora?.rank ?? d.rank}, alpha=${any.lora?.alpha ?? d.alpha}, targets ${[...((any.lora?.targets as readonly string[]) ?? [])].join(', ')}${any.lora?.modulesToSave?.length ? ` (+ ${any.lora.modulesToSave.join(', ')} trained fully)` : ''}.`, '');
    out.push('| variant | peak lr | accuracy, mean ± std | per seed | eval loss | GPU bytes measured | planned | trainable params | ms/step |', '|---|---|---|---|---|---|---|---|---|');
    const base = of('lora-fa').map((r) => r.before!.accuracy!);
    out.push(`| frozen base (before training) | — | ${pct(mean(base))}% | ${base.map(pct).join(' / ')} | ${mean(of('lora-fa').map((r) => r.before!.loss)).toFixed(4)} | — | — | 0 | — |`);
    for (const b of baselines[name] ?? []) out.push(`| classical baseline: ${b.name} (CPU, ${(b.ms / 1000).toFixed(1)} s) | — | ${pct(b.accuracy)}% | — | — | — | — | — | — |`);
    for (const v of VARIANTS) {
      const rs = of(v.key);
      if (!rs.length) continue;
      const acc = rs.map((r) => r.after.accuracy!);
      const measured = [...new Set(rs.map((r) => r.gpu.measured))];
      out.push(
        `| ${v.label} | ${rs[0].lr} | ${pct(mean(acc))}% ± ${pct(std(acc))} | ${acc.map(pct).join(' / ')} | ${mean(rs.map((r) => r.after.loss)).toFixed(4)} | ${measured.map((b) => `${b.toLocaleString('en-US')} (${fmtBytes(b)})`).join(', ')} | ${rs[0].gpu.planned.toLocaleString('en-US')} | ${rs[0].trainable.toLocaleString('en-US')} | ${median(rs.map((r) => r.msPerStep)).toFixed(1)} |`,
      );
    }
    out.push('');
    // The issue's checks, computed, not asserted by hand.
    const lora = of('lora');
    const fa = of('lora-fa');
    if (lora.length && fa.length) {
      const faMean = mean(fa.map((r) => r.after.accuracy!));
      const gap = 100 * (faMean - mean(lora.map((r) => r.after.accuracy!)));
      const measuredDiff = lora[0].gpu.measured - fa[0].gpu.measured;
      const plannedDiff = lora[0].gpu.planned - fa[0].gpu.planned;
      const beats = [...lora, ...fa, ...of('full'), ...of('lora-fa-gc')].every((r) => r.after.accuracy! > r.before!.accuracy!);
      out.push('Checks:', '');
      out.push(`- LoRA-FA − LoRA accuracy (mean over ${fa.length} seeds): ${gap >= 0 ? '+' : ''}${gap.toFixed(2)} points — ${Math.abs(gap) <= 1 || gap > 0 ? 'within 1 point (or better): **pass**' : 'more than 1 point below: **fail**'}`);
      out.push(`- every fine-tuned run beats the frozen base: ${beats ? '**pass**' : '**fail**'}`);
      for (const b of baselines[name] ?? []) {
        out.push(`- LoRA-FA (mean ${pct(faMean)}%) against the classical baseline ${b.name} (${pct(b.accuracy)}%): ${faMean > b.accuracy ? '**beats it**' : `**below it** by ${pct(b.accuracy - faMean)} points`}`);
      }
      out.push(`- GPU bytes, LoRA − LoRA-FA: measured ${measuredDiff.toLocaleString('en-US')} B, planned ${plannedDiff.toLocaleString('en-US')} B — ${measuredDiff === plannedDiff && measuredDiff > 0 ? '**equal, and LoRA-FA lower: pass**' : '**fail**'}`);
      if (fa.some((r) => r.reused)) out.push(`- (the ${VARIANTS.filter((v) => of(v.key).some((r) => r.reused)).map((v) => v.label).join(', ')} runs of this table are reused from commit ${[...new Set(VARIANTS.flatMap((v) => of(v.key).map((r) => r.reused).filter((c): c is string => !!c)))].join(', ')})`);
      out.push('');
    }
    const half = precision.filter((r) => r.task === name);
    if (half.length && fa.length) {
      out.push(`### ${name}: LoRA-FA in half precision`, '');
      out.push(
        "The LoRA-FA runs above again, at the same learning rate, seeds and data, with `--dtype f16` or `bf16`: frozen weights and activations stored in 2 bytes on the GPU, f32 arithmetic, f32 trainable parameters, gradients and AdamW state; f16 with dynamic loss scaling (from 2¹⁶). The runs see the same batches as f32's, but rounding moves the weights a little, and a small batch's loss is noisy: the training losses (logged every 10th step) are compared as means over 50-step windows, the worst window's |Δ| as a share of the f32 run's first loss (the scale of the curve), seed by seed; the eval loss (the whole test set) relative to f32's.",
        '',
      );
      out.push('| storage | accuracy, mean ± std | per seed | − f32 (points) | eval loss | eval loss − f32, relative | training loss: worst 50-step window, \\|Δ\\| ÷ first loss | GPU bytes measured | planned | ÷ f32 | ms/step | loss scale (skipped steps) |', '|---|---|---|---|---|---|---|---|---|---|---|---|');
      const f32acc = mean(fa.map((r) => r.after.accuracy!));
      const f32loss = mean(fa.map((r) => r.after.loss));
      const rowOf = (label: string, rs: readonly Row[], dev: string, ls: string) => {
        const acc = rs.map((r) => r.after.accuracy!);
        const evalLoss = mean(rs.map((r) => r.after.loss));
        return `| ${label} | ${pct(mean(acc))}% ± ${pct(std(acc))} | ${acc.map(pct).join(' / ')} | ${label === 'f32' ? '—' : `${(100 * (mean(acc) - f32acc)) >= 0 ? '+' : ''}${(100 * (mean(acc) - f32acc)).toFixed(2)}`} | ${evalLoss.toFixed(4)} | ${label === 'f32' ? '—' : `${(100 * (evalLoss - f32loss) / f32loss).toFixed(2)}%`} | ${dev} | ${rs[0].gpu.measured.toLocaleString('en-US')} | ${rs[0].gpu.planned.toLocaleString('en-US')} | ${(rs[0].gpu.measured / fa[0].gpu.measured).toFixed(3)} | ${median(rs.map((r) => r.msPerStep)).toFixed(1)} | ${ls} |`;
      };
      out.push(rowOf('f32', fa, '—', '—'));
      const checks: string[] = [];
      for (const dtype of flags.precision) {
        const rs = half.filter((r) => r.dtype === dtype);
        if (!rs.length) continue;
        const W = 5; // logged points per window: 50 steps
        const devs = rs.map((r) => {
          const ref = fa.find((x) => x.seed === r.seed)!.lossesEvery10;
          const n = Math.min(ref.length, r.lossesEvery10.length);
          let worst = 0;
          for (let i = 0; i + W <= n; i += W) worst = Math.max(worst, Math.abs(mean(r.lossesEvery10.slice(i, i + W)) - mean(ref.slice(i, i + W))));
          return worst / Math.abs(ref[0]);
        });
        const ls = rs.some((r) => r.lossScale) ? rs.map((r) => `${r.lossScale?.scale ?? '—'} (${r.lossScale?.skipped ?? 0})`).join(' / ') : 'none';
        out.push(rowOf(dtype, rs, devs.map((d) => `${(100 * d).toFixed(1)}%`).join(' / '), ls));
        const gap = 100 * (mean(rs.map((r) => r.after.accuracy!)) - f32acc);
        const evalGap = (mean(rs.map((r) => r.after.loss)) - f32loss) / f32loss;
        checks.push(`- ${dtype}: accuracy within 1 point of f32 (${gap >= 0 ? '+' : ''}${gap.toFixed(2)}) — ${Math.abs(gap) <= 1 || gap > 0 ? '**pass**' : '**fail**'}; eval loss within 10% of f32's (${(100 * evalGap).toFixed(2)}%) — ${Math.abs(evalGap) <= 0.1 ? '**pass**' : '**fail**'}; GPU bytes measured = planned + the readback buffer — ${rs.every((r) => r.gpu.measured - r.gpu.planned === readback(r)) ? '**pass**' : '**fail**'}`);
      }
      out.push('', 'Checks (the tolerance: 1 point of accuracy, 10% of eval loss):', '', ...checks, '');
    }
  }
  if (w1.length) {
    const ref = w1.find((r) => r.dtype === 'f32')!;
    out.push('## W1 in half precision (the speed workload: 512 × 768, 4 layers, LoRA-FA r=8, synthetic data)', '');
    out.push(
      `\`lorafa finetune models/w1.ts --data synthetic --mode lora-fa --rank 8 --seed 1 --lr 0.01 --steps ${flags.w1Steps} --dtype DTYPE\`, once per storage dtype. The losses are compared step by step with f32's (same data, same init).`,
      '',
    );
    out.push('| storage | loss at step 1 → last | max \\|Δloss\\| / loss over the steps | mean | GPU bytes measured | planned | ÷ f32 | ms/step | loss scale (skipped) |', '|---|---|---|---|---|---|---|---|---|');
    const checks: string[] = [];
    for (const r of w1) {
      const rel = r.losses.map((l, i) => Math.abs(l - ref.losses[i]) / Math.abs(ref.losses[i]));
      out.push(
        `| ${r.dtype} | ${r.losses[0].toFixed(5)} → ${r.losses.at(-1)!.toFixed(5)} | ${r === ref ? '—' : Math.max(...rel).toExponential(2)} | ${r === ref ? '—' : mean(rel).toExponential(2)} | ${r.measured.toLocaleString('en-US')} | ${r.planned.toLocaleString('en-US')} | ${(r.measured / ref.measured).toFixed(3)} | ${r.msPerStep.toFixed(1)} | ${r.lossScale ? `${r.lossScale.scale} (${r.lossScale.skipped})` : 'none'} |`,
      );
      if (r !== ref) checks.push(`- ${r.dtype}: every step's loss within 1% of f32's (worst ${(100 * Math.max(...rel)).toFixed(3)}%) — ${Math.max(...rel) <= 0.01 ? '**pass**' : '**fail**'}; GPU bytes ≤ 60% of f32's (${(100 * r.measured / ref.measured).toFixed(1)}%) — ${r.measured <= 0.6 * ref.measured ? '**pass**' : '**fail**'}`);
    }
    out.push('', 'Checks:', '', ...checks, '');
  }
  if (sweep.length) {
    const ranks = [...new Set(sweep.map((r) => r.lora!.rank))].sort((a, b) => a - b);
    out.push('## Fashion-MNIST: LoRA vs LoRA-FA across ranks (alpha = 2r, same steps and learning rate)', '');
    out.push('| rank | LoRA accuracy | LoRA-FA accuracy | LoRA-FA − LoRA (points) | LoRA GPU bytes | LoRA-FA GPU bytes | trainable LoRA / LoRA-FA |', '|---|---|---|---|---|---|---|');
    for (const rank of ranks) {
      const l = sweep.filter((r) => r.key === `lora@${rank}`);
      const f = sweep.filter((r) => r.key === `lora-fa@${rank}`);
      const la = l.map((r) => r.after.accuracy!);
      const fa = f.map((r) => r.after.accuracy!);
      out.push(
        `| ${rank} | ${pct(mean(la))}% ± ${pct(std(la))} | ${pct(mean(fa))}% ± ${pct(std(fa))} | ${(100 * (mean(fa) - mean(la))).toFixed(2)} | ${l[0].gpu.measured.toLocaleString('en-US')} | ${f[0].gpu.measured.toLocaleString('en-US')} | ${l[0].trainable.toLocaleString('en-US')} / ${f[0].trainable.toLocaleString('en-US')} |`,
      );
    }
    out.push('');
  }
  for (const name of flags.tasks) {
    for (const alt of ALTERNATIVES[name] ?? []) {
      const theirs = alternatives.filter((r) => r.task === name && r.key.endsWith(`@${alt.key}`));
      if (!theirs.length) continue;
      out.push(`## ${name}: ${alt.what}, ${alt.preset} (the preset) against ${alt.label}`, '');
      out.push(`Same learning rates, seeds, data order and steps as the table above; only ${alt.what} differs.`, '');
      out.push(`| variant | preset: accuracy, mean ± std | ${alt.key}: accuracy, mean ± std | ${alt.key} − preset (points) | per seed, preset / ${alt.key} | trainable params, preset / ${alt.key} | GPU bytes measured, preset / ${alt.key} |`, '|---|---|---|---|---|---|---|');
      const gaps: number[] = [];
      for (const v of VARIANTS) {
        const mine = rows.filter((r) => r.task === name && r.key === v.key);
        const alt1 = theirs.filter((r) => r.key === `${v.key}@${alt.key}`);
        if (!mine.length || !alt1.length) continue;
        const ma = mine.map((r) => r.after.accuracy!);
        const aa = alt1.map((r) => r.after.accuracy!);
        const gap = 100 * (mean(aa) - mean(ma));
        gaps.push(gap);
        out.push(
          `| ${v.label} | ${pct(mean(ma))}% ± ${pct(std(ma))} | ${pct(mean(aa))}% ± ${pct(std(aa))} | ${gap >= 0 ? '+' : ''}${gap.toFixed(2)} | ${ma.map((a, i) => `${pct(a)} / ${pct(aa[i])}`).join(', ')} | ${mine[0].trainable.toLocaleString('en-US')} / ${alt1[0].trainable.toLocaleString('en-US')} | ${mine[0].gpu.measured.toLocaleString('en-US')} / ${alt1[0].gpu.measured.toLocaleString('en-US')} |`,
        );
      }
      out.push('');
      const holds = gaps.every((g) => g >= -1);
      out.push(
        `Check: ${alt.what} → ${alt.label}: no variant more than 1 point below the preset — ${holds ? '**pass**, the preset could move to it' : `**fail**, the preset keeps ${alt.what}: ${alt.preset}`}.`,
        '',
      );
    }
  }
  if (grid.length) {
    out.push(`## Learning-rate grid (validation split, seed ${TUNING_SEED}; **bold** = chosen)`, '');
    out.push('| task | variant | peak lr | validation accuracy | validation loss |', '|---|---|---|---|---|');
    for (const g of grid) {
      const b = (s: string) => (g.chosen ? `**${s}**` : s);
      out.push(`| ${g.task} | ${g.key} | ${b(String(g.lr))} | ${b(pct(g.after.accuracy!) + '%')} | ${g.after.loss.toFixed(4)} |`);
    }
    out.push('');
  }
  return out.join('\n') + '\n';
}

process.exit(await asCommand(runAll));
