// Loading a model file: plain TypeScript, imported directly (the CLI runs under tsx), with every
// failure turned into a message that names the file and the fix.
import { existsSync } from 'node:fs';
import { relative, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { LorafaError, ModelError } from '../ir/errors.ts';
import type { Graph } from '../ir/types.ts';
import { findLine, isModelDef, traceModel, type ModelDef } from '../model.ts';

export interface LoadedModel {
  readonly def: ModelDef;
  readonly file: string;
  readonly displayFile: string;
}

export async function loadModel(path: string): Promise<LoadedModel> {
  const file = resolve(path);
  const displayFile = relative(process.cwd(), file) || path;
  if (!existsSync(file)) {
    throw new LorafaError(displayFile, 'model file not found', 'pass the path of a model file, e.g. models/mlp.ts');
  }
  let mod: Record<string, unknown>;
  try {
    mod = await import(pathToFileURL(file).href);
  } catch (e) {
    const err = e as Error;
    const line = findLine(err, file);
    throw new ModelError(
      `${displayFile}${line ? `:${line}` : ''}`,
      `the model file failed to load: ${err?.message ?? String(e)}`,
      'fix the error at that line; a model file must run without side effects',
    );
  }
  const def = mod.default ?? mod.model;
  if (!isModelDef(def)) {
    const names = Object.keys(mod);
    throw new ModelError(
      displayFile,
      `exports no model${names.length ? ` (it exports: ${names.join(', ')})` : ''}`,
      "add `export default defineModel({ name, configs, defaultConfig, build(b, cfg) { … } })` (import defineModel from 'lorafa')",
    );
  }
  return { def, file, displayFile };
}

export function trace(m: LoadedModel, config?: string, overrides?: Record<string, number>): Graph {
  return traceModel(m.def, { config, overrides, file: m.file, displayFile: m.displayFile });
}
