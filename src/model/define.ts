// What a model file exports, and how it is traced into a graph.
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { Builder, type AttentionImpl } from '../ir/builder.ts';
import { LorafaError, ModelError } from '../ir/errors.ts';
import type { Graph } from '../ir/types.ts';

/** Sizes of one configuration. batch (and seq, for sequence models) are always present. */
export interface ModelConfig {
  readonly batch: number;
  readonly seq?: number;
  readonly [key: string]: number | string | boolean | undefined;
}

export interface ModelDef<C extends ModelConfig = ModelConfig> {
  readonly name: string;
  readonly description?: string;
  /** Named configurations; `defaultConfig` is used when the user names none. */
  readonly configs: Readonly<Record<string, C>>;
  readonly defaultConfig: string;
  /** LoRA targets when the user gives none (PEFT's defaults for this architecture). */
  readonly defaultTargets?: readonly string[];
  /** Parameters that stay trainable under LoRA (PEFT's modules_to_save, e.g. a classifier head). */
  readonly modulesToSave?: readonly string[];
  /**
   * The PyTorch / Hugging Face state-dict key of a lorafa module or parameter name (without the
   * `.weight` / `.bias` suffix), e.g. `layers.0.self_attn.q_proj` → `model.layers.0.self_attn.q_proj`:
   * how base weights, merged weights and PEFT adapters are named on disk. Default: the name itself.
   */
  readonly stateDictKey?: (name: string, cfg?: C) => string;
  /**
   * The Hugging Face architectures this model file implements, and how a checkpoint's config.json
   * becomes one of its configs: then `--config path/to/config.json`, a checkpoint folder as
   * `--base`, or the folder alone (`lorafa finetune DIR`) picks the sizes.
   */
  readonly huggingFace?: HuggingFaceMapping<C>;
  /** Declares inputs, parameters and ops, and the scalar loss with b.loss(…). */
  build(b: Builder, cfg: C): void;
}

export interface HuggingFaceMapping<C extends ModelConfig = ModelConfig> {
  /** e.g. ['LlamaForCausalLM', 'LlamaForSequenceClassification'] */
  readonly architectures: readonly string[];
  /**
   * The sizes of a checkpoint's config.json for one of `architectures`. `batch` is the run's
   * (default 8); `seq` may be left out (default: 128, at most the model's maximum positions).
   */
  config(hf: Readonly<Record<string, unknown>>, architecture: string): Omit<C, 'batch' | 'seq'> & { readonly seq?: number; readonly maxSeq?: number };
}

/** A config.json path, or a folder holding one: the Hugging Face config a `config` option may name. */
export function huggingFaceConfigFile(config: string): string | undefined {
  if (!/[\\/.]/.test(config) || !existsSync(config)) return undefined;
  const file = statSync(config).isDirectory() ? join(config, 'config.json') : config;
  return existsSync(file) && file.endsWith('.json') ? file : undefined;
}

/** Reads a Hugging Face config.json (its `architectures[0]` and fields). */
export function readHuggingFaceConfig(file: string): { architecture: string; hf: Record<string, unknown> } {
  let hf: unknown;
  try {
    hf = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new LorafaError(file, `not valid JSON: ${(e as Error).message}`, 'restore the checkpoint\'s config.json (save_pretrained writes it)');
  }
  if (!hf || typeof hf !== 'object' || Array.isArray(hf)) throw new LorafaError(file, 'is not a JSON object', 'restore the checkpoint\'s config.json');
  const arch = (hf as { architectures?: unknown }).architectures;
  if (!Array.isArray(arch) || typeof arch[0] !== 'string') {
    throw new LorafaError(file, 'has no "architectures" list naming the model class', 'save the model with transformers (save_pretrained records it), or add e.g. "architectures": ["LlamaForCausalLM"]');
  }
  return { architecture: arch[0], hf: hf as Record<string, unknown> };
}

/** The config a Hugging Face config.json gives `def`. */
export function configFromHuggingFace(def: ModelDef, file: string, where: string): ModelConfig {
  const { architecture, hf } = readHuggingFaceConfig(file);
  const m = def.huggingFace;
  if (!m) {
    throw new LorafaError(where, `model "${def.name}" declares no Hugging Face mapping, so it cannot take its sizes from ${file}`, `name one of its configs (${Object.keys(def.configs).join(', ')}), or add huggingFace: { architectures, config(hf) } to the model file`);
  }
  if (!m.architectures.includes(architecture)) {
    throw new LorafaError(file, `architecture ${architecture} is not one model "${def.name}" implements (${m.architectures.join(', ')})`, 'use the model file for that architecture, or the checkpoint folder alone: lorafa finetune DIR picks it');
  }
  let mapped: ReturnType<HuggingFaceMapping['config']>;
  try {
    mapped = m.config(hf, architecture);
  } catch (e) {
    if (e instanceof LorafaError) throw e;
    throw new LorafaError(file, `cannot read the ${architecture} sizes: ${(e as Error).message}`, 'check the config.json against the architecture');
  }
  const { maxSeq, seq: given, ...sizes } = mapped;
  const seq = given ?? Math.min(128, typeof maxSeq === 'number' ? maxSeq : 128);
  return { batch: 8, seq, ...sizes } as ModelConfig;
}

export function defineModel<C extends ModelConfig>(def: ModelDef<C>): ModelDef<C> {
  return def;
}

export function isModelDef(x: unknown): x is ModelDef {
  const d = x as ModelDef | undefined;
  return !!d && typeof d === 'object' && typeof d.build === 'function' && typeof d.configs === 'object';
}

export interface TraceOptions {
  readonly config?: string;
  /** Overrides of config fields (batch, seq, sizes). */
  readonly overrides?: Readonly<Record<string, number>>;
  /** Absolute path of the model file, to map stack frames to its lines. */
  readonly file?: string;
  readonly displayFile?: string;
  /** Trace attention, cross-entropy and the norms as compositions (BuilderOptions.composed). */
  readonly composed?: boolean;
  /** How b.attention lowers (BuilderOptions.attention; default 'auto'). */
  readonly attention?: AttentionImpl;
}

export function resolveConfig(def: ModelDef, opts: TraceOptions): ModelConfig {
  const where = opts.displayFile ?? def.name;
  const name = opts.config ?? def.defaultConfig;
  const hfFile = def.configs[name] ? undefined : huggingFaceConfigFile(name);
  const base = def.configs[name] ?? (hfFile ? configFromHuggingFace(def, hfFile, where) : undefined);
  if (!base) {
    throw new LorafaError(where, `unknown config "${name}"`, `choose one of: ${Object.keys(def.configs).join(', ')}${def.huggingFace ? ', or a Hugging Face config.json' : ''}`);
  }
  const cfg: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(opts.overrides ?? {})) {
    if (v === undefined) continue;
    if (!(k in cfg)) throw new LorafaError(where, `config "${name}" has no field "${k}"`, `fields: ${Object.keys(base).join(', ')}`);
    // Sizes are whole numbers: an integer field only takes a positive integer.
    const integral = k === 'batch' || k === 'seq' || Number.isInteger(base[k]);
    if (typeof v !== 'number' || (integral && !(Number.isInteger(v) && v > 0))) {
      throw new LorafaError(where, `${k} must be a positive integer, got ${v}`, `use a whole number ≥ 1, e.g. ${k}=${String(base[k])} as in config "${name}"`);
    }
    cfg[k] = v;
  }
  return cfg as ModelConfig;
}

/** Runs the model's build function on a fresh Builder and returns the traced graph. */
export function traceModel(def: ModelDef, opts: TraceOptions = {}): Graph {
  const cfg = resolveConfig(def, opts);
  const b = new Builder({ name: def.name, file: opts.file, displayFile: opts.displayFile, composed: opts.composed, attention: opts.attention });
  let returned: unknown;
  try {
    returned = def.build(b, cfg);
  } catch (e) {
    if (e instanceof LorafaError) throw e;
    const err = e as Error;
    const line = opts.file ? findLine(err, opts.file) : undefined;
    throw new ModelError(
      `${opts.displayFile ?? def.name}${line ? `:${line}` : ''}`,
      `the model's build() threw: ${err?.message ?? String(e)}`,
      'fix the model file at that line',
    );
  }
  const where = opts.displayFile ?? def.name;
  if (returned && typeof (returned as { then?: unknown }).then === 'function') {
    // An async build() would record part of the graph before its first await and the rest never.
    (returned as Promise<unknown>).then(undefined, () => undefined);
    const line = opts.file ? buildLine(opts.file) : undefined;
    throw new ModelError(`${where}${line ? `:${line}` : ''}`, 'build() returned a Promise: build must be synchronous (it records operations; nothing in it waits)', 'remove `async` (and any `await`) from build; read files before defineModel, or give a parameter Init.file');
  }
  const g = b.build();
  if (!g.params.length) {
    const line = opts.file ? buildLine(opts.file) : undefined;
    throw new ModelError(`${where}${line ? `:${line}` : ''}`, 'build() traced no parameters: there is nothing to train', 'create weights in build with b.linear(…), b.embedding(…) or b.param(…)');
  }
  return g;
}

/** The line of a model file's build function, for messages about build as a whole. */
function buildLine(file: string): string | undefined {
  try {
    const lines = readFileSync(file, 'utf8').split('\n');
    const i = lines.findIndex((l) => /\bbuild\s*(\(|:)|async\s+build\b/.test(l));
    return i >= 0 ? String(i + 1) : undefined;
  } catch {
    return undefined;
  }
}

export function findLine(err: Error, file: string): string | undefined {
  for (const l of (err?.stack ?? '').split('\n')) {
    const at = l.lastIndexOf(file);
    if (at < 0) continue;
    const m = /:(\d+):(\d+)\)?\s*$/.exec(l.slice(at + file.length));
    if (m) return `${m[1]}:${m[2]}`;
  }
  return undefined;
}
