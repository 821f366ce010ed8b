// LoRA adapters in PEFT's format, as PeftModel.save_pretrained writes them, so an adapter trained
// here loads with PeftModel.from_pretrained(base, dir) and one trained with PEFT loads here.
//
// What PEFT writes (huggingface/peft: src/peft/peft_model.py save_pretrained,
// src/peft/utils/save_and_load.py get_peft_model_state_dict, src/peft/config.py,
// docs/source/developer_guides/checkpoint.md):
//   adapter_model.safetensors  safe_save_file(state_dict, metadata={"format": "pt"}). Keys are the
//     PeftModel's state-dict keys with the adapter name (".default") removed:
//       base_model.model.<module>.lora_A.weight   [r, in]   (nn.Linear(in, r).weight = our Aᵀ)
//       base_model.model.<module>.lora_B.weight   [out, r]  (nn.Linear(r, out).weight = our Bᵀ)
//     and for modules_to_save (ModulesToSaveWrapper.adapter_state_dict strips
//     `modules_to_save.<adapter>.`) the copy's own state dict under the module's key:
//       base_model.model.<module>.weight [out, in], base_model.model.<module>.bias [out]
//   adapter_config.json  json.dumps(config, indent=2, sort_keys=True): peft_type "LORA", r,
//     lora_alpha, target_modules (names matched as `name == t or name.endswith("." + t)`),
//     modules_to_save, use_rslora (scale alpha/√r instead of alpha/r), …
//
// The config holds only fields LoraConfig knows: PEFT before its forward-compatibility shim
// (config.py `_check_and_remove_unused_kwargs`) raises TypeError on an unknown key, and later
// versions drop it with a warning. lorafa's extras (the training mode, model file, config) go in
// the safetensors metadata, which PEFT never reads.
//
// Writing the pair: the adapter folder is replaced whole (src/io/output.ts replaceDir): both files
// are written and fsync'd in a temporary sibling folder, which also gets hard links of whatever else
// the old folder held (a README, say), and is then renamed into place. A failed or killed export
// leaves the old folder byte-identical and complete; the next export removes the temporary folder
// and says so. The weights' metadata also carries the config fields they were written with
// (`lorafa.peft_config`), and importPeftAdapter refuses a pair whose two files disagree (one copied
// by hand from another export, say).
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { LorafaError } from '../ir/errors.ts';
import type { Graph, LoraAdapter, Param } from '../ir/types.ts';
import { moduleOf, peftMatches, savedBy } from '../ir/modules.ts';
import { replaceDir } from './output.ts';
import { readSafetensorsWithMetadata, type SafeTensor } from './safetensors.ts';
import {
  checkShape,
  encodeStateDict,
  floatData,
  listSome,
  stateDictLayout,
  transpose,
  valueOf,
  writeFileAtomic,
  type KeyFor,
  type KeyOptions,
  type KeyedParam,
  type ParamValues,
  type StateDict,
} from './weights.ts';

export const PEFT_CONFIG_FILE = 'adapter_config.json';
export const PEFT_WEIGHTS_FILE = 'adapter_model.safetensors';
/** PeftModel wraps LoraModel wraps the base model: every key starts with this. */
export const PEFT_KEY_PREFIX = 'base_model.model.';
/** PEFT's TaskType values (src/peft/utils/peft_types.py). */
export const PEFT_TASK_TYPES = ['SEQ_CLS', 'SEQ_2_SEQ_LM', 'CAUSAL_LM', 'TOKEN_CLS', 'QUESTION_ANS', 'FEATURE_EXTRACTION'] as const;
export type PeftTaskType = (typeof PEFT_TASK_TYPES)[number];
/** Metadata key of the config fields the weights were written with (detects a mixed pair). */
export const PAIR_METADATA_KEY = 'lorafa.peft_config';

/** adapter_config.json of a LoRA adapter: the fields lorafa writes and reads (PEFT's may hold more). */
export interface PeftLoraConfig {
  readonly peft_type: 'LORA';
  readonly r: number;
  readonly lora_alpha: number;
  /** A list of module names (or suffixes), or a regex string PEFT full-matches. */
  readonly target_modules: readonly string[] | string;
  readonly modules_to_save: readonly string[] | null;
  readonly task_type: PeftTaskType | null;
  readonly base_model_name_or_path: string | null;
  readonly revision: string | null;
  readonly use_rslora: boolean;
  readonly lora_dropout: number;
  readonly bias: 'none' | 'all' | 'lora_only';
  readonly fan_in_fan_out: boolean;
  readonly inference_mode: boolean;
  readonly init_lora_weights: boolean | string;
  readonly [field: string]: unknown;
}

export interface PeftExportOptions extends KeyOptions {
  /** target_modules as the user gave them (PEFT semantics: a name or a `.`-suffix of the module name). */
  readonly targets: readonly string[];
  /** modules_to_save (PEFT semantics, matched like targets): modules trained in full and saved whole. */
  readonly modulesToSave?: readonly string[];
  /** Must agree with the adapters' scale when given; inferred from it otherwise. */
  readonly rslora?: boolean;
  readonly taskType?: PeftTaskType | null;
  readonly baseModel?: string | null;
  /** Extra safetensors metadata, e.g. {"lorafa.mode": "lora-fa", "lorafa.model": "models/mlp.ts"}. */
  readonly extraMetadata?: Readonly<Record<string, string>>;
  /** Lines about stale temporary folders a killed export left, removed before this one. */
  readonly log?: (line: string) => void;
}

export interface PeftAdapter {
  readonly config: PeftLoraConfig;
  /** Torch layout, PEFT keys. */
  readonly tensors: StateDict;
  readonly metadata: Record<string, string>;
}

export interface PeftImport {
  readonly config: PeftLoraConfig;
  /** Every adapter's A [in, r] and B [r, out] and every modules_to_save parameter, lorafa layout. */
  readonly values: Map<string, Float32Array>;
  readonly metadata: Readonly<Record<string, string>>;
}

const identity: KeyFor = (n) => n;

/** The rank, alpha and rsLoRA flag all of the graph's adapters share. */
export function adapterSettings(g: Graph): { r: number; alpha: number; rslora: boolean; adapters: readonly LoraAdapter[] } {
  const where = g.file ?? g.name;
  const adapters = g.adapters;
  if (!adapters.length) {
    throw new LorafaError(where, 'the graph has no LoRA adapters', 'pass the graph compiled with mode lora or lora-fa (its `forward`)');
  }
  const { rank: r, alpha } = adapters[0];
  const odd = adapters.filter((a) => a.rank !== r || a.alpha !== alpha);
  if (odd.length) {
    throw new LorafaError(
      where,
      `PEFT's format holds one r and lora_alpha, but the adapters differ: "${adapters[0].module}" has r=${r} alpha=${alpha}, "${odd[0].module}" has r=${odd[0].rank} alpha=${odd[0].alpha}`,
      'compile every adapter with the same --rank and --alpha',
    );
  }
  const close = (x: number, y: number) => Math.abs(x - y) <= 1e-12 * Math.abs(y);
  const plain = adapters.every((a) => close(a.scale, alpha / r));
  const rs = adapters.every((a) => close(a.scale, alpha / Math.sqrt(r)));
  if (!plain && !rs) {
    throw new LorafaError(where, `adapter scale ${adapters[0].scale} is neither alpha/r = ${alpha / r} nor alpha/√r = ${alpha / Math.sqrt(r)}`, 'compile the adapters with the lora pass, which sets the scale');
  }
  return { r, alpha, rslora: !plain, adapters };
}

function sortKeys(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v && typeof v === 'object') return Object.fromEntries(Object.keys(v).sort().map((k) => [k, sortKeys((v as Record<string, unknown>)[k])]));
  return v;
}

/** adapter_config.json as PEFT writes it: json.dumps(indent=2, sort_keys=True). */
export function formatPeftConfig(config: PeftLoraConfig): string {
  return JSON.stringify(sortKeys(config), null, 2);
}

/** The fields that decide how the weights are read; stored beside the weights to detect a mixed pair. */
function pairFields(c: Partial<PeftLoraConfig>): string {
  const list = (x: unknown) => (Array.isArray(x) ? [...x].sort() : (x ?? null));
  return JSON.stringify({
    r: c.r ?? null,
    lora_alpha: c.lora_alpha ?? null,
    use_rslora: c.use_rslora ?? false,
    target_modules: list(c.target_modules),
    modules_to_save: list(c.modules_to_save),
  });
}

/** The adapter's tensors, config and metadata, checked, without writing anything. */
export function peftAdapter(g: Graph, values: ParamValues, opts: PeftExportOptions): PeftAdapter {
  const where = g.file ?? g.name;
  const keyFor = opts.keyFor ?? identity;
  const { r, alpha, rslora, adapters } = adapterSettings(g);
  if (opts.rslora !== undefined && opts.rslora !== rslora && r !== 1) {
    throw new LorafaError(where, `rslora: ${opts.rslora} was asked for, but the adapters were compiled ${rslora ? 'with' : 'without'} rsLoRA (scale ${adapters[0].scale})`, `export with rslora: ${rslora}, or compile ${opts.rslora ? 'with' : 'without'} --rslora`);
  }
  const useRslora = opts.rslora ?? rslora;

  // target_modules must select, PEFT's way over the Hugging Face names, exactly the adapted layers.
  const targets = opts.targets;
  if (!Array.isArray(targets) || !targets.length || targets.some((t) => typeof t !== 'string' || !t)) {
    throw new LorafaError(where, 'exporting a PEFT adapter needs its target_modules', 'pass targets: the LoRA targets the model was compiled with, e.g. ["q_proj", "v_proj"]');
  }
  const adapted = new Set(adapters.map((a) => a.module));
  const selected = g.linears.filter((l) => peftMatches(keyFor(l.name), targets));
  const extra = selected.filter((l) => !adapted.has(l.name)).map((l) => l.name);
  const unselected = [...adapted].filter((m) => !selected.some((l) => l.name === m));
  const idle = targets.filter((t) => !g.linears.some((l) => peftMatches(keyFor(l.name), [t])));
  if (extra.length || unselected.length || idle.length) {
    const why = [
      extra.length ? `they select ${listSome(extra)}, which ${extra.length > 1 ? 'have' : 'has'} no adapter` : '',
      unselected.length ? `they miss the adapted ${listSome(unselected)}` : '',
      idle.length ? `${idle.map((t) => `"${t}"`).join(', ')} select${idle.length > 1 ? '' : 's'} no linear layer` : '',
    ].filter(Boolean);
    throw new LorafaError(
      where,
      `target_modules ${JSON.stringify(targets)} do not select exactly the adapted layers, so PEFT would build other adapters than the file holds: ${why.join('; ')}`,
      `pass the targets the graph was compiled with (adapted: ${listSome([...adapted])})`,
    );
  }

  // modules_to_save: whole modules, by PEFT's matching of their Hugging Face names.
  const layout = stateDictLayout(g, opts);
  const mts = opts.modulesToSave ?? [];
  const saved: KeyedParam[] = [];
  for (const m of mts) {
    const hits = layout.filter((k) => savedBy(keyFor(moduleOf(k.param.value.name)), [m]));
    if (!hits.length) {
      throw new LorafaError(where, `modules_to_save entry "${m}" matches no module with weights`, `name modules of the model: ${listSome([...new Set(layout.map((k) => moduleOf(k.param.value.name)))])}`);
    }
    const both = hits.map((k) => moduleOf(k.param.value.name)).filter((n) => adapted.has(n));
    if (both.length) {
      throw new LorafaError(where, `"${both[0]}" is both a LoRA target and in modules_to_save`, 'a module is either adapted or trained in full: drop it from one list');
    }
    for (const h of hits) if (!saved.includes(h)) saved.push(h);
  }
  const lost = layout.filter((k) => k.param.trainable && !saved.includes(k)).map((k) => k.param.value.name);
  if (lost.length) {
    throw new LorafaError(
      where,
      `${listSome(lost)} ${lost.length > 1 ? 'are' : 'is'} trained in full (modules_to_save) but not saved: the adapter would lose ${lost.length > 1 ? 'them' : 'it'}`,
      `pass modulesToSave with their modules (e.g. ${JSON.stringify([...new Set(lost.map(moduleOf))])})`,
    );
  }
  if (opts.taskType != null && !(PEFT_TASK_TYPES as readonly string[]).includes(opts.taskType)) {
    throw new LorafaError(where, `unknown PEFT task_type "${opts.taskType}"`, `use one of ${PEFT_TASK_TYPES.join(', ')}, or null`);
  }

  const params = new Map(g.params.map((p) => [p.value.name, p]));
  const tensors: StateDict = new Map();
  for (const a of adapters) {
    const l = g.linears.find((x) => x.name === a.module)!;
    const base = PEFT_KEY_PREFIX + keyFor(a.module);
    const A = valueOf(g, values, params.get(a.A)!, 'adapter');
    const B = valueOf(g, values, params.get(a.B)!, 'adapter');
    tensors.set(`${base}.lora_A.weight`, { shape: [r, l.inFeatures], data: transpose(A, l.inFeatures, r) });
    tensors.set(`${base}.lora_B.weight`, { shape: [l.outFeatures, r], data: transpose(B, r, l.outFeatures) });
  }
  for (const k of saved) {
    const v = valueOf(g, values, k.param);
    tensors.set(PEFT_KEY_PREFIX + k.key, { shape: [...k.torchShape], data: k.transposed ? transpose(v, k.shape[0], k.shape[1]) : Float32Array.from(v) });
  }
  // PEFT has one fan_in_fan_out for the whole adapter: True when the adapted layers store their
  // weights [in, out] (GPT-2's Conv1D), which only matters when PEFT merges.
  const layouts = new Set(adapters.map((a) => g.linears.find((x) => x.name === a.module)!.torchLayout ?? 'out_in'));
  if (layouts.size > 1) {
    throw new LorafaError(where, 'the adapted layers mix nn.Linear ([out, in]) and Conv1D ([in, out]) weights, and PEFT\'s adapter_config.json has one fan_in_fan_out for all', 'target layers of one kind');
  }
  const config: PeftLoraConfig = {
    base_model_name_or_path: opts.baseModel ?? null,
    bias: 'none',
    fan_in_fan_out: layouts.has('in_out'),
    inference_mode: true,
    init_lora_weights: true,
    lora_alpha: alpha,
    lora_dropout: 0.0,
    modules_to_save: mts.length ? [...mts] : null,
    peft_type: 'LORA',
    r,
    revision: null,
    target_modules: [...targets],
    task_type: opts.taskType ?? null,
    use_rslora: useRslora,
  };
  const metadata = { ...opts.extraMetadata, [PAIR_METADATA_KEY]: pairFields(config), format: 'pt' };
  return { config, tensors, metadata };
}

/**
 * Writes `adapter_config.json` and `adapter_model.safetensors` into `dir` (created if needed),
 * replacing an existing pair; see the top of this file for the crash guarantees.
 */
export function exportPeftAdapter(dir: string, g: Graph, values: ParamValues, opts: PeftExportOptions): PeftAdapter & { files: { config: string; weights: string } } {
  // Everything that can fail on the input fails here, before the first byte is written.
  const adapter = peftAdapter(g, values, opts);
  const weightsBytes = encodeStateDict(adapter.tensors, adapter.metadata);
  const configBytes = Buffer.from(formatPeftConfig(adapter.config), 'utf8');
  const files = { config: join(dir, PEFT_CONFIG_FILE), weights: join(dir, PEFT_WEIGHTS_FILE) };
  if (existsSync(dir) && !statSync(dir).isDirectory()) {
    throw new LorafaError(dir, 'is a file; a PEFT adapter is a folder', 'pass a folder path (it is created if missing), or move the file away');
  }
  for (const f of [files.weights, files.config]) {
    if (existsSync(f) && !statSync(f).isFile()) throw new LorafaError(f, 'exists and is not a regular file, so the adapter cannot replace it', 'move it out of the way');
  }
  replaceDir(
    dir,
    (tmp) => {
      writeFileAtomic(join(tmp, PEFT_WEIGHTS_FILE), weightsBytes);
      writeFileAtomic(join(tmp, PEFT_CONFIG_FILE), configBytes);
    },
    { keep: (f) => f !== PEFT_WEIGHTS_FILE && f !== PEFT_CONFIG_FILE && !f.startsWith('.lorafa-export-'), log: opts.log },
  );
  return { ...adapter, files };
}

function readConfig(file: string): PeftLoraConfig {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new LorafaError(file, `cannot read the adapter config: ${(e as Error).message}`, 'check the path');
  }
  let c: unknown;
  try {
    c = JSON.parse(text);
  } catch (e) {
    throw new LorafaError(file, `not valid JSON: ${(e as Error).message}`, 'export the adapter again (or repair the file)');
  }
  if (!c || typeof c !== 'object' || Array.isArray(c)) throw new LorafaError(file, 'is not a JSON object', 'export the adapter again');
  return c as PeftLoraConfig;
}

/**
 * Reads a PEFT LoRA adapter directory into lorafa values for `g`'s adapters (A, B) and its
 * modules_to_save parameters, after checking it fits the graph. Reads only; never writes.
 */
export function importPeftAdapter(dir: string, g: Graph, opts: KeyOptions = {}): PeftImport {
  const keyFor = opts.keyFor ?? identity;
  const configFile = join(dir, PEFT_CONFIG_FILE);
  const weightsFile = join(dir, PEFT_WEIGHTS_FILE);
  if (!existsSync(dir)) throw new LorafaError(dir, 'adapter directory not found', `pass a directory holding ${PEFT_CONFIG_FILE} and ${PEFT_WEIGHTS_FILE} (what PEFT's save_pretrained writes)`);
  if (!existsSync(configFile)) {
    throw new LorafaError(configFile, `missing: a PEFT adapter directory holds ${PEFT_CONFIG_FILE} beside ${PEFT_WEIGHTS_FILE}`, 'copy the whole directory save_pretrained wrote, or export the adapter again');
  }
  if (!existsSync(weightsFile)) {
    const bin = existsSync(join(dir, 'adapter_model.bin'));
    throw new LorafaError(
      weightsFile,
      bin ? 'missing; the directory has adapter_model.bin (pickle), which lorafa does not read' : `missing: a PEFT adapter directory holds ${PEFT_WEIGHTS_FILE} beside ${PEFT_CONFIG_FILE}`,
      bin ? 'save the adapter with save_pretrained(dir, safe_serialization=True)' : 'copy the whole directory save_pretrained wrote, or export the adapter again',
    );
  }
  const config = readConfig(configFile);
  if (config.peft_type !== 'LORA') {
    throw new LorafaError(configFile, `peft_type is ${JSON.stringify(config.peft_type)}, not "LORA": lorafa reads LoRA adapters only`, 'pass a LoRA adapter (LoraConfig)');
  }
  const unsupported: string[] = [];
  if (config.use_dora) unsupported.push('use_dora: true (DoRA)');
  for (const f of ['rank_pattern', 'alpha_pattern'] as const) {
    const v = config[f];
    if (v && typeof v === 'object' && Object.keys(v).length) unsupported.push(`${f} ${JSON.stringify(v)} (per-module ranks)`);
  }
  if (config.bias !== undefined && config.bias !== 'none') unsupported.push(`bias: "${config.bias}" (trained biases)`);
  if (unsupported.length) {
    throw new LorafaError(configFile, `the adapter uses what lorafa does not support: ${unsupported.join(', ')}`, 'train the adapter as plain LoRA (one r and lora_alpha, bias "none")');
  }

  const { tensors, metadata } = readSafetensorsWithMetadata(weightsFile);
  const pair = metadata[PAIR_METADATA_KEY];
  if (pair !== undefined && pair !== pairFields(config)) {
    throw new LorafaError(
      dir,
      `${PEFT_WEIGHTS_FILE} and ${PEFT_CONFIG_FILE} come from different exports: the weights were written with ${pair}, the config says ${pairFields(config)}`,
      'export the adapter again (an export interrupted between its two renames, or files copied from two places, leave such a pair)',
    );
  }

  const { r, alpha, rslora, adapters } = adapterSettings(g);
  const fileR = config.r ?? 8; // LoraConfig's defaults
  const fileAlpha = config.lora_alpha ?? 8;
  const fileRs = config.use_rslora ?? false;
  const diffs = [
    fileR !== r ? `r ${fileR} in the file, ${r} in the graph` : '',
    fileAlpha !== alpha ? `lora_alpha ${fileAlpha} in the file, ${alpha} in the graph` : '',
    fileRs !== rslora && r !== 1 ? `use_rslora ${fileRs} in the file, ${rslora} in the graph` : '',
  ].filter(Boolean);
  if (diffs.length) {
    throw new LorafaError(
      configFile,
      `the adapter was trained with other LoRA settings than the graph has: ${diffs.join('; ')}`,
      `compile with --rank ${fileR} --alpha ${fileAlpha}${fileRs ? ' --rslora' : ''} to match the adapter`,
    );
  }

  // Sort the file's keys: adapter pairs by module, modules_to_save by parameter.
  const byModule = new Map(adapters.map((a) => [keyFor(a.module), a]));
  const layout = stateDictLayout(g, opts);
  const byParamKey = new Map(layout.map((k) => [PEFT_KEY_PREFIX + k.key, k]));
  const fileModules = new Map<string, { A?: [string, SafeTensor]; B?: [string, SafeTensor] }>();
  const savedFound = new Map<KeyedParam, [string, SafeTensor]>();
  const unexpected: string[] = [];
  for (const [key, t] of tensors) {
    const m = /^base_model\.model\.(.+)\.lora_([AB])\.weight$/.exec(key);
    if (m) {
      const entry = fileModules.get(m[1]) ?? {};
      entry[m[2] as 'A' | 'B'] = [key, t];
      fileModules.set(m[1], entry);
      continue;
    }
    const k = byParamKey.get(key);
    if (k) savedFound.set(k, [key, t]);
    else unexpected.push(key);
  }
  const notAdapted = [...fileModules.keys()].filter((m) => !byModule.has(m));
  const notInFile = [...byModule.keys()].filter((m) => !fileModules.has(m));
  if (notAdapted.length || notInFile.length) {
    const why = [
      notAdapted.length ? `the file adapts ${listSome(notAdapted)}, which the graph does not` : '',
      notInFile.length ? `the graph adapts ${listSome(notInFile)}, which the file does not` : '',
    ].filter(Boolean);
    throw new LorafaError(
      weightsFile,
      `the adapter's target modules differ from the graph's: ${why.join('; ')}`,
      `compile with the adapter's targets (target_modules ${JSON.stringify(config.target_modules)})${keyFor === identity ? ', and pass keyFor if the file uses Hugging Face names' : ''}`,
    );
  }
  const half = [...fileModules].filter(([, e]) => !e.A || !e.B).map(([m, e]) => `${PEFT_KEY_PREFIX}${m}.lora_${e.A ? 'B' : 'A'}.weight`);
  if (unexpected.length || half.length) {
    const why = [
      half.length ? `missing ${listSome(half)}` : '',
      unexpected.length ? `unexpected ${listSome(unexpected)} (neither a LoRA pair nor a parameter of the model)` : '',
    ].filter(Boolean);
    throw new LorafaError(weightsFile, `the adapter's keys do not fit the graph: ${why.join('; ')}`, 'export the adapter again from the same model; lorafa reads LoRA on linear layers and modules_to_save');
  }
  const mts = Array.isArray(config.modules_to_save) ? config.modules_to_save : [];
  const needed = layout.filter((k) => k.param.trainable || savedBy(keyFor(moduleOf(k.param.value.name)), mts));
  const absent = needed.filter((k) => !savedFound.has(k));
  if (absent.length) {
    throw new LorafaError(
      weightsFile,
      `modules_to_save parameters missing from the file: ${listSome(absent.map((k) => `${PEFT_KEY_PREFIX}${k.key} (${k.param.value.name})`))}; they would keep their untrained values`,
      `export the adapter with modules_to_save covering them, or compile without them in modulesToSave (the file's modules_to_save: ${JSON.stringify(config.modules_to_save ?? null)})`,
    );
  }

  const values = new Map<string, Float32Array>();
  const params = new Map<string, Param>(g.params.map((p) => [p.value.name, p]));
  const shapeFix = 'the adapter was trained on a model with other sizes: trace the config it was trained with';
  for (const a of adapters) {
    const l = g.linears.find((x) => x.name === a.module)!;
    const e = fileModules.get(keyFor(a.module))!;
    const [keyA, tA] = e.A!;
    const [keyB, tB] = e.B!;
    checkShape(weightsFile, keyA, tA.shape, [r, l.inFeatures], a.A, params.get(a.A)!.value.type.shape, shapeFix);
    checkShape(weightsFile, keyB, tB.shape, [l.outFeatures, r], a.B, params.get(a.B)!.value.type.shape, shapeFix);
    values.set(a.A, transpose(floatData(weightsFile, keyA, tA), r, l.inFeatures));
    values.set(a.B, transpose(floatData(weightsFile, keyB, tB), l.outFeatures, r));
  }
  for (const [k, [key, t]] of savedFound) {
    checkShape(weightsFile, key, t.shape, k.torchShape, k.param.value.name, k.shape, shapeFix);
    const data = floatData(weightsFile, key, t);
    values.set(k.param.value.name, k.transposed ? transpose(data, k.torchShape[0], k.torchShape[1]) : data);
  }
  return { config, values, metadata };
}
