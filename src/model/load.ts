// Loading a model file: plain TypeScript in the user's own folder, imported directly (through
// tsx), with every failure turned into a message that names the file and the fix.
//
// Before the first model (or generated trainer) is imported, lorafa's module hooks are registered
// (hooks.mjs): `import … from 'lorafa'` then means this lorafa, and a .ts file is an ES module
// whatever its folder's package.json says. tsx itself is registered by bin/lorafa.mjs; a script
// that uses the API from plain Node gets it registered here.
import { existsSync, statSync } from 'node:fs';
import { register } from 'node:module';
import { extname, relative, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { LorafaError, ModelError } from '../ir/errors.ts';
import type { Graph } from '../ir/types.ts';
import type { AttentionImpl } from '../ir/builder.ts';
import { findLine, isModelDef, traceModel, type ModelDef } from './define.ts';

/** Set by bin/lorafa.mjs (and by registerLoaders) once tsx's ESM hooks are in place. */
const TSX_KEY = Symbol.for('lorafa.tsx');
let hooked = false;

/**
 * Makes `import 'lorafa'` in user files resolve to this lorafa and .ts files load as ES modules.
 * Idempotent. Skipped inside vitest, which resolves and transforms modules itself (its config
 * aliases `lorafa` to src/index.ts).
 */
export async function registerLoaders(): Promise<void> {
  if (hooked || (globalThis as Record<string, unknown>).__vitest_worker__) return;
  hooked = true;
  const g = globalThis as Record<symbol, unknown>;
  if (!g[TSX_KEY]) {
    const tsx = await import('tsx/esm/api');
    tsx.register();
    g[TSX_KEY] = true;
  }
  // This module is src/model/load.ts in a checkout and dist/model/load.js when installed: the
  // package door beside it has the same extension.
  const index = new URL(`../index${extname(new URL(import.meta.url).pathname)}`, import.meta.url).href;
  register('./hooks.mjs', { parentURL: import.meta.url, data: { index } });
}

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
  if (statSync(file).isDirectory()) {
    throw new LorafaError(displayFile, 'is a folder, not a model file (nor a Hugging Face checkpoint: it has no config.json)', 'pass a .ts model file (one that does `export default defineModel({...})`), e.g. models/mlp.ts, or a checkpoint folder holding config.json');
  }
  await registerLoaders();
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

export function trace(m: LoadedModel, config?: string, overrides?: Record<string, number>, opts: { composed?: boolean; attention?: AttentionImpl } = {}): Graph {
  return traceModel(m.def, { config, overrides, file: m.file, displayFile: m.displayFile, composed: opts.composed, attention: opts.attention });
}
