// The files a compiled trainer is made of, and reading them back into a TrainingProgram:
//
//   <out>/trainer.ts          the module you run (emit-trainer.ts writes it with ts-morph); it
//                             imports `lorafa` by name, never by path, so the folder travels
//   <out>/plan.json           the program: spec, the step's and the evaluation's kernel plans
//                             (kernels by file), every parameter's init, the forward graph's
//                             weights and state-dict keys, the data inputs, the memory summary
//   <out>/kernels/NNN.wgsl    each distinct kernel of both plans
//   <out>/package.json        {"type": "module"}: trainer.ts is an ES module wherever out/ is
//
// The plan hash (programHash: both kernel plans, WGSL included, and the inits) ties them together:
// trainer.ts carries it, the loader recomputes it from the files on disk, and every checkpoint
// records it, so a checkpoint is only ever resumed by the plan that wrote it.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { KernelPlan, KernelText } from '../codegen/kernel-plan.ts';
import { LorafaError } from '../ir/errors.ts';
import type { Init } from '../ir/types.ts';
import type { InputSpec } from '../data/dataset.ts';
import { programHash, type MemorySummary, type ProgramSpec, type TrainingProgram, type WeightLayout } from './program.ts';

export const PLAN_FORMAT = 'lorafa-plan/2';

type FilePlan = Omit<KernelPlan, 'kernels'> & { readonly kernels: readonly (Omit<KernelText, 'wgsl'> & { readonly file: string })[] };

export interface PlanFile {
  readonly format: typeof PLAN_FORMAT;
  readonly spec: ProgramSpec;
  readonly memory: MemorySummary;
  readonly step: FilePlan;
  readonly eval: FilePlan;
  readonly inits: Readonly<Record<string, Init>>;
  readonly weights: WeightLayout;
  readonly inputs: readonly InputSpec[];
  readonly classes?: number;
  readonly vocab?: number;
}

export function kernelFile(index: number): string {
  return `kernels/${String(index).padStart(3, '0')}.wgsl`;
}

/** The files of a program: plan.json's text and each kernel file's text (kernels shared by both plans once). */
export function planFiles(p: TrainingProgram): { plan: string; kernels: Map<string, string> } {
  const kernels = new Map<string, string>();
  const fileOf = new Map<string, string>();
  const toFile = (plan: KernelPlan): FilePlan => ({
    ...plan,
    kernels: plan.kernels.map((k) => {
      let f = fileOf.get(k.wgsl);
      if (!f) {
        f = kernelFile(fileOf.size);
        fileOf.set(k.wgsl, f);
        kernels.set(f, k.wgsl);
      }
      return { file: f, bindings: k.bindings, label: k.label };
    }),
  });
  const doc: PlanFile = {
    format: PLAN_FORMAT,
    spec: p.spec,
    memory: p.memory,
    step: toFile(p.step),
    eval: toFile(p.eval),
    inits: p.inits,
    weights: p.weights,
    inputs: p.inputs,
    ...(p.classes !== undefined ? { classes: p.classes } : {}),
    ...(p.vocab !== undefined ? { vocab: p.vocab } : {}),
  };
  return { plan: JSON.stringify(doc, null, 1) + '\n', kernels };
}

export const TRAINER_PACKAGE_JSON = JSON.stringify({ private: true, type: 'module', description: 'a lorafa trainer (lorafa compile … -o)' }, null, 2) + '\n';

/** Reads plan.json and the kernels back into the program, and checks it is the one `spec` was compiled with. */
export function readProgram(outDir: string, spec?: ProgramSpec): TrainingProgram {
  const path = join(outDir, 'plan.json');
  const fix = spec ? `re-run: ${spec.command}` : 'run `lorafa compile <model.ts> -o <dir>` again';
  if (!existsSync(path)) throw new LorafaError(path, 'no plan.json: this directory holds no compiled trainer', fix);
  let file: PlanFile;
  try {
    file = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new LorafaError(path, `not valid JSON: ${(e as Error).message}`, fix);
  }
  if (!file || file.format !== PLAN_FORMAT) {
    throw new LorafaError(path, `format "${file?.format}" is not "${PLAN_FORMAT}" (a trainer compiled by another lorafa version)`, fix);
  }
  const texts = new Map<string, string>();
  const fromFile = (plan: FilePlan): KernelPlan => ({
    ...plan,
    kernels: plan.kernels.map((k) => {
      let wgsl = texts.get(k.file);
      if (wgsl === undefined) {
        const p = join(outDir, k.file);
        if (!existsSync(p)) throw new LorafaError(p, 'kernel file missing', fix);
        wgsl = readFileSync(p, 'utf8');
        texts.set(k.file, wgsl);
      }
      return { wgsl, bindings: k.bindings, label: k.label };
    }),
  });
  const step = fromFile(file.step);
  const evalPlan = fromFile(file.eval);
  const hash = programHash(step, evalPlan, file.inits);
  const want = spec?.planHash ?? file.spec.planHash;
  if (hash !== want) {
    throw new LorafaError(
      outDir,
      `plan.json or kernels/ changed after ${spec ? 'trainer.ts' : 'plan.json'} was generated (plan hash ${hash.slice(0, 19)}… ≠ ${want.slice(0, 19)}…)`,
      fix,
    );
  }
  return {
    spec: spec ?? file.spec,
    step,
    eval: evalPlan,
    inits: file.inits,
    weights: file.weights,
    inputs: file.inputs,
    classes: file.classes,
    vocab: file.vocab,
    memory: file.memory,
  };
}
