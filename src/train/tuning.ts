// Tuned matmul kernels of a trainer folder: `lorafa tune <dir>` (and `compile -o <dir> --tune`)
// times every variant that fits each distinct matmul of the trainer's plans on this adapter
// (src/runtime/tune.ts) and writes <dir>/tuning.json; the training loop reads it at start and runs
// the fastest variant of each shape instead of the heuristic's.
//
//   {
//     "format": "lorafa-tuning/1",
//     "adapters": {
//       "<vendor> | <architecture> | <device> | <description>": {
//         "adapter": { "vendor": …, "architecture": …, "device": …, "description": … },
//         "kernels": "auto" | "portable",   the variants it was allowed to time
//         "tuned": "<ISO date>",
//         "shapes": { "<matmul shape key>": { "variant": "row-lanes", "heuristic": "row-lanes", "ms": { "<variant>": 1.2, … } } }
//       }
//     }
//   }
//
// One folder may be tuned on several machines: each adapter has its entry, and a run uses only its
// own (an entry for another adapter is ignored, and the run says so once). The kernels a trainer
// runs are then not the ones plan.json holds, but the plan's bytes, bindings and results are the
// same up to the order of f32 additions; the plan hash (what a checkpoint is tied to) is the
// compiled plan's.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { applyMatmulChoices, matmulKeys } from '../codegen/kernel-plan.ts';
import { MATMUL_VARIANTS, matmulNodeFromKey } from '../codegen/matmul.ts';
import { KERNEL_CHOICES, type KernelChoice } from '../codegen/kernel.ts';
import { LorafaError } from '../ir/errors.ts';
import { writeFileAtomic } from '../io/output.ts';
import { acquireGpu, type AdapterIdentity, type Gpu } from '../runtime/gpu.ts';
import { kernelOptionsFor } from '../runtime/session.ts';
import { MARGIN, tuneMatmuls, type ShapeTuning, type TuneOptions } from '../runtime/tune.ts';
import type { TrainingProgram } from './program.ts';
import { readProgram } from './trainer-files.ts';

export const TUNING_FILE = 'tuning.json';
export const TUNING_FORMAT = 'lorafa-tuning/1';

export interface ShapeChoice {
  readonly variant: string;
  /** What the heuristic picks for this shape on this adapter. */
  readonly heuristic: string;
  /** Median milliseconds of one dispatch, by variant. */
  readonly ms: Readonly<Record<string, number>>;
}

export interface AdapterTuning {
  readonly adapter: AdapterIdentity;
  readonly kernels: KernelChoice;
  readonly tuned: string;
  readonly shapes: Readonly<Record<string, ShapeChoice>>;
}

export interface TuningFile {
  readonly format: typeof TUNING_FORMAT;
  readonly adapters: Readonly<Record<string, AdapterTuning>>;
}

/** The key of an adapter's entry. */
export function adapterKey(a: AdapterIdentity): string {
  return [a.vendor, a.architecture, a.device, a.description].join(' | ');
}

const isObject = (x: unknown): x is Record<string, unknown> => !!x && typeof x === 'object' && !Array.isArray(x);

/** Checks a parsed tuning.json; the problem, or undefined when it is well formed. */
function problemOf(doc: unknown): string | undefined {
  if (!isObject(doc)) return 'not a JSON object';
  if (doc.format !== TUNING_FORMAT) return `format ${JSON.stringify(doc.format)} is not "${TUNING_FORMAT}"`;
  if (!isObject(doc.adapters)) return '"adapters" is not an object';
  const names = new Set(MATMUL_VARIANTS.map((v) => v.name));
  for (const [id, e] of Object.entries(doc.adapters)) {
    const at = `adapters[${JSON.stringify(id)}]`;
    if (!isObject(e) || !isObject(e.adapter) || !isObject(e.shapes)) return `${at} needs "adapter" and "shapes" objects`;
    const a = e.adapter;
    if (!['vendor', 'architecture', 'device', 'description'].every((k) => typeof a[k] === 'string')) return `${at}.adapter needs string vendor, architecture, device and description`;
    if (adapterKey(a as unknown as AdapterIdentity) !== id) return `${at} is keyed differently from its adapter (${JSON.stringify(adapterKey(a as unknown as AdapterIdentity))})`;
    if (!(KERNEL_CHOICES as readonly string[]).includes(e.kernels as string)) return `${at}.kernels is ${JSON.stringify(e.kernels)}, not one of ${KERNEL_CHOICES.join(', ')}`;
    for (const [key, c] of Object.entries(e.shapes)) {
      if (!matmulNodeFromKey(key)) return `${at}.shapes has ${JSON.stringify(key)}, which is not a matmul shape key`;
      if (!isObject(c) || typeof c.variant !== 'string') return `${at}.shapes[${JSON.stringify(key)}] has no "variant"`;
      if (!names.has(c.variant)) return `${at}.shapes[${JSON.stringify(key)}] names variant "${c.variant}", which this lorafa does not have (it has ${[...names].join(', ')})`;
    }
  }
  return undefined;
}

function fixFor(dir: string): string {
  return `re-run \`lorafa tune ${dir}\` (it rewrites the file), or delete ${join(dir, TUNING_FILE)} to run the heuristic's kernels`;
}

/** <dir>/tuning.json, checked; undefined when there is none. A malformed file is an error naming it and the fix. */
export function readTuning(dir: string): TuningFile | undefined {
  const path = join(dir, TUNING_FILE);
  if (!existsSync(path)) return undefined;
  let doc: unknown;
  try {
    doc = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new LorafaError(path, `not valid JSON: ${(e as Error).message}`, fixFor(dir));
  }
  const problem = problemOf(doc);
  if (problem) throw new LorafaError(path, `malformed tuning file: ${problem}`, fixFor(dir));
  return doc as TuningFile;
}

/** This adapter's entry, or the other adapters the file has entries for. */
export function tuningFor(t: TuningFile, a: AdapterIdentity): { entry?: AdapterTuning; others: string[] } {
  const id = adapterKey(a);
  return { entry: t.adapters[id], others: Object.keys(t.adapters).filter((k) => k !== id) };
}

/** A tuning file loaded for a run: where it came from, and what it holds. */
export interface LoadedTuning {
  readonly path: string;
  readonly file: TuningFile;
}

/**
 * The program with this adapter's tuned matmuls, and one line saying what was applied or why
 * nothing was (no entry for this adapter; choices that do not fit here).
 */
export function applyTuning(p: TrainingProgram, t: LoadedTuning, gpu: Gpu): { program: TrainingProgram; note: string } {
  const { entry, others } = tuningFor(t.file, gpu.identity);
  if (!entry) {
    return {
      program: p,
      note: `${t.path}: no entry for this adapter (${adapterKey(gpu.identity)}), only for ${others.map((o) => `"${o}"`).join(', ') || 'none'}: running the heuristic's kernels (tune here: lorafa tune <dir>)`,
    };
  }
  const choices = new Map(Object.entries(entry.shapes).map(([k, c]) => [k, c.variant]));
  const opts = kernelOptionsFor(gpu, p.spec.kernels);
  const step = applyMatmulChoices(p.step, choices, opts);
  const evalPlan = applyMatmulChoices(p.eval, choices, opts);
  const keys = new Set([...matmulKeys(p.step), ...matmulKeys(p.eval)]);
  const applied = new Map([...step.applied, ...evalPlan.applied]);
  const refused = new Map([...step.refused, ...evalPlan.refused]);
  const changed = [...applied].filter(([k, v]) => entry.shapes[k].heuristic !== v).length;
  const note =
    `${t.path}: tuned kernels for ${applied.size} of ${keys.size} matmul shapes (${changed} differ from the heuristic's)` +
    (refused.size ? `; ${refused.size} not usable here (${[...refused].map(([k, v]) => `${v} for ${k}`).join(', ')}): heuristic` : '') +
    (others.length ? `; entries for ${others.length} other adapter${others.length > 1 ? 's' : ''} ignored` : '');
  return { program: { ...p, step: step.plan, eval: evalPlan.plan }, note };
}

/** Every distinct matmul shape key of a program's step and evaluation plans. */
export function programMatmulKeys(p: Pick<TrainingProgram, 'step' | 'eval'>): string[] {
  return [...new Set([...matmulKeys(p.step), ...matmulKeys(p.eval)])];
}

/** This adapter's entry from tuning results. */
export function tuningEntry(gpu: Gpu, kernels: KernelChoice, results: readonly ShapeTuning[], now = new Date()): AdapterTuning {
  return {
    adapter: gpu.identity,
    kernels,
    tuned: now.toISOString(),
    shapes: Object.fromEntries(
      results.map((r) => [r.key, { variant: r.choice, heuristic: r.heuristic, ms: Object.fromEntries(r.timings.map((x) => [x.variant, Number(x.ms.toPrecision(4))])) }]),
    ),
  };
}

/** Writes `entry` into <dir>/tuning.json (atomically), keeping other adapters' entries. */
export function writeTuning(dir: string, entry: AdapterTuning, log?: (line: string) => void): string {
  const path = join(dir, TUNING_FILE);
  let adapters: Record<string, AdapterTuning> = {};
  try {
    adapters = { ...(readTuning(dir)?.adapters ?? {}) };
  } catch (e) {
    if (!(e instanceof LorafaError)) throw e;
    log?.(`${path} was malformed (${e.problem}): replacing it`);
  }
  adapters[adapterKey(entry.adapter)] = entry;
  const doc: TuningFile = { format: TUNING_FORMAT, adapters };
  writeFileAtomic(path, Buffer.from(JSON.stringify(doc, null, 1) + '\n'));
  return path;
}

/** One table row per shape: each variant's median and the choice. */
export function tuningRow(r: ShapeTuning, variants: readonly string[], keyWidth: number): string {
  const cells = variants.map((v) => {
    const t = r.timings.find((x) => x.variant === v);
    return (t ? `${t.ms < 10 ? t.ms.toFixed(3) : t.ms.toFixed(1)} ms${t.runs < 5 ? '*' : ''}` : '—').padStart(12);
  });
  return `${r.key.padEnd(keyWidth)} ${cells.join(' ')}  ${r.choice}${r.choice !== r.heuristic ? ` (heuristic: ${r.heuristic})` : ''}`;
}

export interface TuneTrainerOptions extends Pick<TuneOptions, 'warmups' | 'runs' | 'cutoff'> {
  readonly gpu?: Gpu;
  readonly log?: (line: string) => void;
}

/**
 * `lorafa tune <dir>`: times every variant of each distinct matmul shape of the trainer in `dir`
 * on this adapter, prints a table, and writes this adapter's entry of <dir>/tuning.json.
 */
export async function tuneTrainer(dir: string, o: TuneTrainerOptions = {}): Promise<{ path: string; entry: AdapterTuning; results: ShapeTuning[] }> {
  const log = o.log ?? ((line: string) => void process.stdout.write(line + '\n'));
  const program = readProgram(dir);
  const keys = programMatmulKeys(program);
  if (!keys.length && program.step.dispatches.length) {
    const compiledBefore = program.step.kernels.some((k) => k.label.startsWith('matmul '));
    if (compiledBefore) throw new LorafaError(join(dir, 'plan.json'), 'its matmul dispatches carry no shape keys (compiled by an earlier lorafa)', `recompile it: ${program.spec.command}`);
  }
  const gpu = o.gpu ?? (await acquireGpu());
  const kernels: KernelChoice = program.spec.kernels ?? 'auto';
  const variants = MATMUL_VARIANTS.filter((v) => kernels !== 'portable' || v.portable).map((v) => v.name);
  const width = Math.max(5, ...keys.map((k) => k.length));
  log(`tuning ${keys.length} matmul shape${keys.length === 1 ? '' : 's'} on ${gpu.description}${kernels === 'portable' ? ' (portable kernels only)' : ''}: median ms per dispatch (* cut short: over 3× the best after one run; another variant replaces the heuristic's when ${Math.round(MARGIN * 100)}% faster)`);
  log(`${'shape'.padEnd(width)} ${variants.map((v) => v.padStart(12)).join(' ')}  choice`);
  const results = await tuneMatmuls(gpu, keys, { kernels, warmups: o.warmups, runs: o.runs, cutoff: o.cutoff }, (r) => log(tuningRow(r, variants, width)));
  const entry = tuningEntry(gpu, kernels, results);
  const path = writeTuning(dir, entry, log);
  const changed = results.filter((r) => r.choice !== r.heuristic).length;
  log(`wrote ${path}: ${changed} of ${results.length} shapes run another variant than the heuristic's on this adapter`);
  return { path, entry, results };
}

