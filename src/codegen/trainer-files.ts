// The files a compiled trainer is made of, and reading them back:
//
//   <out>/trainer.ts          the module you run (emit-trainer.ts writes it with ts-morph)
//   <out>/plan.json           the kernel plan (kernels by file), parameter inits, the memory
//                             plan's summary, the spec, the data task
//   <out>/kernels/NNN.wgsl    each distinct kernel, numbered as the plan's `kernels`
//   <out>/package.json        {"type": "module"}: trainer.ts is an ES module wherever out/ is
//
// The plan hash (sha256 of the kernel plan, WGSL text included, and the inits, as canonical JSON)
// ties them together: trainer.ts carries it, the loader recomputes it from the files on disk,
// and every checkpoint records it, so a checkpoint is only ever resumed by the plan that wrote it.
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { LorafaError } from '../ir/errors.ts';
import type { Init } from '../ir/types.ts';
import type { Mode } from '../passes/compile.ts';
import type { Category, Limits } from '../passes/memory-plan.ts';
import type { OptimizerOptions } from '../passes/optimizer.ts';
import type { KernelPlan, KernelText } from './kernel-plan.ts';

export const PLAN_FORMAT = 'lorafa-plan/1';

/** What a trainer trains: embedded in trainer.ts, copied into plan.json and every checkpoint. */
export interface TrainerSpec {
  /** The model's name (defineModel's `name`). */
  readonly model: string;
  /** The model file, absolute, as compiled (for the record: the trainer never re-reads it). */
  readonly modelFile: string;
  readonly config: string;
  readonly sizes: Readonly<Record<string, number | string | boolean>>;
  readonly mode: Mode;
  readonly lora?: {
    readonly rank: number;
    readonly alpha: number;
    readonly targets: readonly string[];
    readonly targetsRegex?: string;
    readonly rslora: boolean;
  };
  readonly optimizer: OptimizerOptions;
  /** Default seed of the parameter init and the synthetic data (`--seed` overrides it). */
  readonly seed: number;
  readonly data: 'synthetic';
  /** sha256 of the kernel plan and inits (see planHash). */
  readonly planHash: string;
  /** The command that compiled this trainer: re-run it rather than edit the files. */
  readonly command: string;
}

export interface MemorySummary {
  readonly peak: number;
  readonly lowerBound: number;
  readonly fragmentation: number;
  readonly peakStep: number;
  readonly schedule: string;
  readonly limits: Limits & { readonly preset: string };
  /** Live bytes per category at the peak step. */
  readonly atPeak: Readonly<Record<Category, number>>;
}

export interface PlanFile {
  readonly format: typeof PLAN_FORMAT;
  readonly spec: TrainerSpec;
  readonly data: { readonly kind: 'synthetic'; readonly task: string };
  readonly memory: MemorySummary;
  /** The KernelPlan with each kernel's text replaced by its file under kernels/. */
  readonly kernelPlan: Omit<KernelPlan, 'kernels'> & { readonly kernels: readonly (Omit<KernelText, 'wgsl'> & { readonly file: string })[] };
  /** How each parameter and optimizer state tensor starts (file inits hold absolute paths). */
  readonly inits: Readonly<Record<string, Init>>;
}

/** JSON with object keys sorted, so equal data hashes equally however it was built. */
export function canonicalJson(x: unknown): string {
  if (Array.isArray(x)) return `[${x.map(canonicalJson).join(',')}]`;
  if (x && typeof x === 'object') {
    const o = x as Record<string, unknown>;
    return `{${Object.keys(o)
      .filter((k) => o[k] !== undefined)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonicalJson(o[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(x);
}

export function planHash(plan: KernelPlan, inits: Readonly<Record<string, Init>>): string {
  return 'sha256:' + createHash('sha256').update(canonicalJson({ plan, inits })).digest('hex');
}

export function kernelFile(index: number): string {
  return `kernels/${String(index).padStart(3, '0')}.wgsl`;
}

/** Writes plan.json, kernels/ (replacing any old kernels) and package.json. */
export function writePlanFiles(outDir: string, plan: KernelPlan, rest: Omit<PlanFile, 'format' | 'kernelPlan'>): void {
  mkdirSync(outDir, { recursive: true });
  rmSync(join(outDir, 'kernels'), { recursive: true, force: true });
  mkdirSync(join(outDir, 'kernels'));
  plan.kernels.forEach((k, i) => writeFileSync(join(outDir, kernelFile(i)), k.wgsl));
  const doc: PlanFile = {
    format: PLAN_FORMAT,
    ...rest,
    kernelPlan: { ...plan, kernels: plan.kernels.map((k, i) => ({ file: kernelFile(i), bindings: k.bindings, label: k.label })) },
  };
  writeFileSync(join(outDir, 'plan.json'), JSON.stringify(doc, null, 1) + '\n');
  writeFileSync(join(outDir, 'package.json'), JSON.stringify({ private: true, type: 'module', description: 'a lorafa trainer' }, null, 2) + '\n');
}

export interface LoadedPlan {
  readonly file: PlanFile;
  readonly plan: KernelPlan;
  readonly inits: Readonly<Record<string, Init>>;
  readonly hash: string;
}

/** Reads plan.json and the kernels back into a KernelPlan, and checks it is the one `spec` was compiled with. */
export function readPlanFiles(outDir: string, spec?: TrainerSpec): LoadedPlan {
  const path = join(outDir, 'plan.json');
  const fix = spec ? `re-run: ${spec.command}` : 'run `lorafa compile <model.ts> -o <dir>` again';
  if (!existsSync(path)) throw new LorafaError(path, 'no plan.json: this directory holds no compiled trainer', fix);
  let file: PlanFile;
  try {
    file = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new LorafaError(path, `not valid JSON: ${(e as Error).message}`, fix);
  }
  if (file.format !== PLAN_FORMAT) throw new LorafaError(path, `format "${file.format}" is not "${PLAN_FORMAT}"`, fix);
  const kernels = file.kernelPlan.kernels.map((k) => {
    const p = join(outDir, k.file);
    if (!existsSync(p)) throw new LorafaError(p, 'kernel file missing', fix);
    return { wgsl: readFileSync(p, 'utf8'), bindings: k.bindings, label: k.label };
  });
  const plan: KernelPlan = { ...file.kernelPlan, kernels };
  const hash = planHash(plan, file.inits);
  if (spec && hash !== spec.planHash) {
    throw new LorafaError(
      outDir,
      `plan.json or kernels/ changed after trainer.ts was generated (plan hash ${hash.slice(0, 19)}… ≠ ${spec.planHash.slice(0, 19)}…)`,
      fix,
    );
  }
  return { file, plan, inits: file.inits, hash };
}
