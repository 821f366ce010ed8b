// Model weights in the layout PyTorch and Hugging Face use: state dicts saved as safetensors.
//
// lorafa stores a linear layer's weight as W [in, out] (y = x·W); nn.Linear stores it as
// [out, in] (y = x·Wᵀ). Every function here converts at the boundary: a state dict (in memory or
// in a file) is always in torch layout, a parameter map is always in lorafa layout.
//
// Names: `keyFor` maps a lorafa module name to the prefix the Hugging Face checkpoint uses
// (`layers.0.self_attn.q_proj` → `model.layers.0.self_attn.q_proj`); a parameter's key is
// keyFor(its name minus the last `.segment`) + that segment (`….weight`, `….bias`).
//
// Writes are atomic (temp file in the same directory, fsync, rename, fsync of the directory), so
// a crash leaves either the old file or the new one, never a torn one. Loads never write.
import { LorafaError } from '../ir/errors.ts';
import { numel, sameShape, type Graph, type LinearModule, type LoraAdapter, type Param } from '../ir/types.ts';
import { openWeights, type WeightSource } from './checkpoint-dir.ts';
import { encodeSafetensors, type SafeTensor, type TensorToWrite } from './safetensors.ts';
import { writeFileAtomic } from './output.ts';

export { writeFileAtomic, fsyncDir } from './output.ts';

/** Maps a lorafa module (or parameter) name to the prefix the checkpoint's keys use. */
export type KeyFor = (name: string) => string;

export interface KeyOptions {
  /** lorafa module name → Hugging Face module name; identity when not given. */
  readonly keyFor?: KeyFor;
}

/** Parameter values by lorafa name, in lorafa layout: flat arrays, or tensors with a `data` array. */
export type ParamValues = ReadonlyMap<string, ArrayLike<number> | { readonly data: ArrayLike<number> }>;

/** One tensor of a state dict: torch layout, float32. */
export interface StateTensor {
  readonly shape: readonly number[];
  readonly data: Float32Array;
}

export type StateDict = Map<string, StateTensor>;

export interface SaveOptions extends KeyOptions {
  /** Extra string metadata; `format` is always "pt", as Hugging Face writes it. */
  readonly metadata?: Readonly<Record<string, string>>;
}

export interface LoadOptions extends KeyOptions {
  /** Every parameter's key present and no other key (torch's load_state_dict(strict=True)). Default true. */
  readonly strict?: boolean;
  /**
   * With strict false: a parameter missing from the file is an error unless this accepts it (a new
   * classifier head, or everything under --init-missing); keys that are no parameter are reported.
   */
  readonly mayBeMissing?: (name: string) => boolean;
  /** The fix line when parameters are missing. */
  readonly missingFix?: string;
  /** Load only the parameters this accepts (by lorafa name); the others are neither expected nor returned. */
  readonly only?: (name: string) => boolean;
  /** Told the expected keys the file lacks and the keys it has that are no parameter (non-strict loads report them). */
  readonly onKeys?: (keys: { readonly missing: readonly string[]; readonly unexpected: readonly string[] }) => void;
}

const identity: KeyFor = (n) => n;

/** The dtypes a weight may be stored in; all are widened to float32 on load. */
export const FLOAT_DTYPES: readonly string[] = ['F32', 'F16', 'BF16', 'F64'];

/** A parameter's state-dict key: keyFor(module) + `.` + last segment. */
export function paramKey(name: string, keyFor: KeyFor = identity): string {
  const dot = name.lastIndexOf('.');
  return dot < 0 ? keyFor(name) : `${keyFor(name.slice(0, dot))}${name.slice(dot)}`;
}

/** The model's own parameters: weights and biases (not adapters, buffers or optimizer state). */
export function modelParams(g: Graph): Param[] {
  return g.params.filter((p) => p.role === 'weight' || p.role === 'bias');
}

/** How each model parameter appears in a torch state dict. */
export interface KeyedParam {
  readonly key: string;
  readonly param: Param;
  /** lorafa shape (W [in, out] for a linear weight). */
  readonly shape: readonly number[];
  /** torch shape ([out, in] for a linear weight). */
  readonly torchShape: readonly number[];
  readonly transposed: boolean;
}

/**
 * Key and torch shape of every model parameter, in graph order; two parameters on one key is an
 * error. A linear weight is stored [out, in] (nn.Linear) unless its layer says 'in_out' (GPT-2's
 * Conv1D), never guessed from the shape; a head tied to an embedding table is the table, saved once.
 */
export function stateDictLayout(g: Graph, opts: KeyOptions = {}): KeyedParam[] {
  const keyFor = opts.keyFor ?? identity;
  const linearOf = new Map(g.linears.filter((l) => !l.tiedTo).map((l) => [l.weight, l]));
  const byKey = new Map<string, string>();
  return modelParams(g).map((param) => {
    const name = param.value.name;
    const key = paramKey(name, keyFor);
    const other = byKey.get(key);
    if (other !== undefined) {
      throw new LorafaError(g.file ?? g.name, `parameters "${other}" and "${name}" both map to state-dict key "${key}"`, 'make keyFor map distinct modules to distinct names');
    }
    byKey.set(key, name);
    const shape = param.value.type.shape;
    const linear = linearOf.get(name);
    if (linear && shape.length !== 2) {
      throw new LorafaError(g.file ?? g.name, `linear weight "${name}" has shape [${shape.join(',')}], expected [in, out]`);
    }
    const transposed = !!linear && linear.torchLayout !== 'in_out';
    return { key, param, shape, torchShape: transposed ? [shape[1], shape[0]] : shape, transposed };
  });
}

/** Transposes a row-major [rows, cols] matrix into a new Float32Array [cols, rows]. */
export function transpose(data: ArrayLike<number>, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = data[r * cols + c];
  return out;
}

/** A parameter's value from `values`, checked against its shape. */
export function valueOf(g: Graph, values: ParamValues, p: Param, what = 'parameter'): ArrayLike<number> {
  const name = p.value.name;
  const v = values.get(name);
  if (v === undefined) {
    throw new LorafaError(g.file ?? g.name, `no value for ${what} "${name}" [${p.value.type.shape.join(',')}]`, 'pass a value for every parameter (e.g. the trained parameters of this graph)');
  }
  const data = typeof (v as ArrayLike<number>).length === 'number' ? (v as ArrayLike<number>) : (v as { data: ArrayLike<number> }).data;
  const n = numel(p.value.type.shape);
  if (!data || data.length !== n) {
    throw new LorafaError(g.file ?? g.name, `value of ${what} "${name}" has ${data?.length} elements, [${p.value.type.shape.join(',')}] needs ${n}`, 'pass the values of this graph, traced with the same config');
  }
  return data;
}

function torchTensor(k: KeyedParam, data: ArrayLike<number>): StateTensor {
  return { shape: [...k.torchShape], data: k.transposed ? transpose(data, k.shape[0], k.shape[1]) : Float32Array.from(data) };
}

/** The model's weights and biases as a torch state dict (linear weights transposed to [out, in]). */
export function stateDict(g: Graph, values: ParamValues, opts: KeyOptions = {}): StateDict {
  const out: StateDict = new Map();
  for (const k of stateDictLayout(g, opts)) out.set(k.key, torchTensor(k, valueOf(g, values, k.param)));
  return out;
}

/**
 * The full model with every adapter merged in: W' = W + s·A·B (float64, stored float32), no
 * adapter keys. modules_to_save parameters are weights like any other: their trained values go in.
 */
export function mergedStateDict(g: Graph, values: ParamValues, opts: KeyOptions = {}): StateDict {
  if (!g.adapters.length) {
    throw new LorafaError(g.file ?? g.name, 'the graph has no LoRA adapters to merge', 'pass the graph compiled with lora / lora-fa (its `forward`), or save the weights with saveStateDict');
  }
  const adapterOf = new Map<string, { adapter: LoraAdapter; linear: LinearModule }>();
  for (const a of g.adapters) {
    const linear = g.linears.find((l) => l.name === a.module);
    if (!linear) throw new LorafaError(g.file ?? g.name, `adapter "${a.module}" wraps no linear layer of the graph`, 'pass the graph the adapters were compiled into');
    if (linear.tiedTo) {
      throw new LorafaError(
        g.file ?? g.name,
        `"${a.module}" is tied to the embedding table "${linear.tiedTo}", so its adapter cannot be folded into one weight without untying the two`,
        `export the adapter instead (it loads on top of the tied base), or leave "${a.module}" out of the LoRA targets`,
      );
    }
    adapterOf.set(linear.weight, { adapter: a, linear });
  }
  const params = new Map(g.params.map((p) => [p.value.name, p]));
  const out: StateDict = new Map();
  for (const k of stateDictLayout(g, opts)) {
    const W = valueOf(g, values, k.param);
    const hit = adapterOf.get(k.param.value.name);
    if (!hit) {
      out.set(k.key, torchTensor(k, W));
      continue;
    }
    const { adapter: a, linear: l } = hit;
    const A = valueOf(g, values, params.get(a.A)!, 'adapter');
    const B = valueOf(g, values, params.get(a.B)!, 'adapter');
    const [n, m, r] = [l.inFeatures, l.outFeatures, a.rank];
    const merged = new Float32Array(n * m);
    // Written straight into the checkpoint's layout: [o, i] for nn.Linear, [i, o] for Conv1D;
    // merged = W[i, o] + s·Σ_k A[i, k]·B[k, o].
    for (let i = 0; i < n; i++) {
      for (let o = 0; o < m; o++) {
        let d = 0;
        for (let j = 0; j < r; j++) d += A[i * r + j] * B[j * m + o];
        merged[k.transposed ? o * n + i : i * m + o] = W[i * m + o] + a.scale * d;
      }
    }
    out.set(k.key, { shape: [...k.torchShape], data: merged });
  }
  return out;
}

/** A state dict as safetensors bytes (F32, sorted keys), with metadata `format: pt` as Hugging Face writes it. */
export function encodeStateDict(sd: ReadonlyMap<string, StateTensor>, metadata?: Readonly<Record<string, string>>): Buffer {
  const tensors = new Map<string, TensorToWrite>([...sd].map(([k, t]) => [k, { dtype: 'F32', shape: t.shape, data: t.data }]));
  return encodeSafetensors(tensors, { ...metadata, format: 'pt' });
}

export function saveStateDict(file: string, g: Graph, values: ParamValues, opts: SaveOptions = {}): void {
  writeFileAtomic(file, encodeStateDict(stateDict(g, values, opts), opts.metadata));
}

export function saveMerged(file: string, g: Graph, values: ParamValues, opts: SaveOptions = {}): void {
  writeFileAtomic(file, encodeStateDict(mergedStateDict(g, values, opts), opts.metadata));
}

/** `[a,b]` */
export function fmtShape(s: readonly number[]): string {
  return `[${s.join(',')}]`;
}

/** The first `n` items, then how many more. */
export function listSome(items: readonly string[], n = 10): string {
  return items.slice(0, n).join(', ') + (items.length > n ? ` … (+${items.length - n} more)` : '');
}

/** A file tensor's values as float32, after checking it holds floats. */
export function floatData(file: string, key: string, t: SafeTensor): Float32Array {
  if (!FLOAT_DTYPES.includes(t.dtype)) {
    throw new LorafaError(file, `tensor "${key}" has dtype ${t.dtype}; a weight must be a float tensor (${FLOAT_DTYPES.join(', ')})`, 'save the weights as floats (e.g. model.float() or .half() before saving)');
  }
  return Float32Array.from(t.data);
}

/** Checks a file tensor's shape against the expected torch shape; names both and the lorafa parameter. */
export function checkShape(
  file: string,
  key: string,
  got: readonly number[],
  want: readonly number[],
  param: string,
  lorafaShape: readonly number[],
  fix = 'the file was saved from a model with other sizes: trace the config it was trained with, or skip this parameter with `only`',
): void {
  if (sameShape(got, want)) return;
  const flipped = want.length === 2 && sameShape(got, [want[1], want[0]]);
  throw new LorafaError(
    file,
    `tensor "${key}" has shape ${fmtShape(got)} in the file, but parameter "${param}" (lorafa ${fmtShape(lorafaShape)}) expects ${fmtShape(want)} in torch layout` +
      (flipped ? '; the tensor is transposed: the file may store [in, out] where torch stores [out, in]' : ''),
    flipped
      ? 'store tensors as torch does: a linear weight [out, in], lora_A [r, in], lora_B [out, r] (saveStateDict and exportPeftAdapter do)'
      : fix,
  );
}

/**
 * Reads a torch state dict (a safetensors file, a folder with model.safetensors or sharded
 * safetensors: openWeights) into lorafa parameter values (linear weights transposed back to
 * [in, out] unless the layer stores [in, out]). Checks keys (strict: none missing, none unexpected;
 * or only missing ones `mayBeMissing` does not accept), shapes, dtypes and finiteness.
 */
export function loadStateDict(source: string | WeightSource, g: Graph, opts: LoadOptions = {}): Map<string, Float32Array> {
  const src = typeof source === 'string' ? openWeights(source) : source;
  try {
    return load(src, g, opts);
  } finally {
    if (typeof source === 'string') src.close();
  }
}

function load(src: WeightSource, g: Graph, opts: LoadOptions): Map<string, Float32Array> {
  const file = src.where;
  const layout = stateDictLayout(g, opts);
  const wanted = layout.filter((k) => !opts.only || opts.only(k.param.value.name));
  const known = new Set(layout.map((k) => k.key));
  const has = new Set(src.keys);
  const model = `model "${g.name}"${g.file ? ` (${g.file})` : ''}`;
  if (!layout.some((k) => has.has(k.key))) {
    throw new LorafaError(
      file,
      `the file does not hold this model's weights: none of its ${src.keys.length} tensors is a parameter of ${model}; ` +
        `it holds ${listSome(src.keys, 5) || 'no tensors'}, and the model expects ${listSome(layout.map((k) => k.key), 5)}`,
      "load the file into the model it was saved from, or pass a keyFor that maps lorafa's names to the file's (e.g. n => 'model.' + n)",
    );
  }
  const missingParams = wanted.filter((k) => !has.has(k.key));
  const missing = missingParams.map((k) => k.key);
  const unexpected = src.keys.filter((k) => !known.has(k));
  opts.onKeys?.({ missing, unexpected });
  if (opts.strict ?? true) {
    if (missing.length || unexpected.length) {
      const parts = [];
      if (missing.length) parts.push(`missing ${missing.length} key(s) of ${model}: ${listSome(missing)}`);
      if (unexpected.length) parts.push(`unexpected ${unexpected.length} key(s) that are no parameter of it: ${listSome(unexpected)}`);
      throw new LorafaError(
        file,
        `the state dict does not match the model (strict): ${parts.join('; ')}`,
        'save the state dict from the same model and config (and keyFor), or load with strict: false (missing parameters then keep their own values)',
      );
    }
  } else if (opts.mayBeMissing) {
    const refused = missingParams.filter((k) => !opts.mayBeMissing!(k.param.value.name));
    if (refused.length) {
      throw new LorafaError(
        file,
        `the checkpoint lacks ${refused.length} weight${refused.length > 1 ? 's' : ''} of ${model}: ${listSome(refused.map((k) => `${k.key} ${fmtShape(k.torchShape)}`))}; ${refused.length > 1 ? 'they' : 'it'} would start from a random init`,
        opts.missingFix ?? 'load the checkpoint the model was saved from, or pass --init-missing to initialise what the checkpoint lacks',
      );
    }
  }
  const out = new Map<string, Float32Array>();
  for (const k of wanted) {
    const e = src.entry(k.key);
    if (!e) continue;
    const where = src.fileOf(k.key);
    checkShape(where, k.key, e.shape, k.torchShape, k.param.value.name, k.shape);
    const data = floatData(where, k.key, src.read(k.key));
    out.set(k.param.value.name, k.transposed ? transpose(data, k.torchShape[0], k.torchShape[1]) : data);
  }
  return out;
}
