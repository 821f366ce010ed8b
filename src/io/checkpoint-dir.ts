// Model weights as Hugging Face ships them: one safetensors file, a folder holding
// model.safetensors, or a folder of shards listed by model.safetensors.index.json
// ({"metadata": {...}, "weight_map": {"<key>": "model-00001-of-00002.safetensors", …}}). Every shard's
// header is opened and checked up front; tensors are read one at a time.
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { LorafaError } from '../ir/errors.ts';
import { openSafetensors, type SafeTensor, type SafetensorsFile, type TensorEntry } from './safetensors.ts';

export const WEIGHTS_FILE = 'model.safetensors';
export const WEIGHTS_INDEX = 'model.safetensors.index.json';

export interface WeightSource {
  /** What messages call it: the file, or the folder and its shard count. */
  readonly where: string;
  /** The files read (one, or the shards). */
  readonly files: readonly string[];
  readonly keys: readonly string[];
  entry(key: string): TensorEntry | undefined;
  /** The file holding `key`. */
  fileOf(key: string): string;
  read(key: string): SafeTensor;
  close(): void;
}

function fromFiles(where: string, files: readonly SafetensorsFile[], owner: ReadonlyMap<string, SafetensorsFile>): WeightSource {
  return {
    where,
    files: files.map((f) => f.path),
    keys: [...owner.keys()],
    entry: (k) => owner.get(k)?.entries.get(k),
    fileOf: (k) => owner.get(k)?.path ?? where,
    read(k) {
      const f = owner.get(k);
      if (!f) throw new LorafaError(where, `has no tensor "${k}"`, 'this is a lorafa bug: ask only for keys it lists');
      return f.read(k);
    },
    close() {
      for (const f of files) f.close();
    },
  };
}

/** A safetensors file, or a folder with model.safetensors or a sharded model.safetensors.index.json. */
export function openWeights(path: string, fix = 'pass a safetensors file, or a folder holding model.safetensors (or model.safetensors.index.json and its shards)'): WeightSource {
  if (!existsSync(path)) throw new LorafaError(path, 'no such file or folder', fix);
  if (!statSync(path).isDirectory()) {
    const f = openSafetensors(path);
    return fromFiles(path, [f], new Map([...f.entries.keys()].map((k) => [k, f])));
  }
  const index = join(path, WEIGHTS_INDEX);
  if (existsSync(index)) return openSharded(path, index);
  const single = join(path, WEIGHTS_FILE);
  if (existsSync(single)) return openWeights(single, fix);
  const pytorch = ['pytorch_model.bin', 'pytorch_model.bin.index.json'].find((f) => existsSync(join(path, f)));
  throw new LorafaError(
    path,
    pytorch ? `holds ${pytorch} (PyTorch pickle), which lorafa does not read, and no ${WEIGHTS_FILE}` : `holds neither ${WEIGHTS_FILE} nor ${WEIGHTS_INDEX}`,
    pytorch ? 'convert it to safetensors (model.save_pretrained(dir, safe_serialization=True) in transformers)' : fix,
  );
}

function openSharded(dir: string, index: string): WeightSource {
  const fix = 'the checkpoint is incomplete or its index is damaged: download or save it again (save_pretrained writes the index and every shard together)';
  let doc: unknown;
  try {
    doc = JSON.parse(readFileSync(index, 'utf8'));
  } catch (e) {
    throw new LorafaError(index, `not valid JSON: ${(e as Error).message}`, fix);
  }
  const map = (doc as { weight_map?: unknown } | null)?.weight_map;
  if (!map || typeof map !== 'object' || Array.isArray(map) || Object.values(map).some((v) => typeof v !== 'string')) {
    throw new LorafaError(index, 'has no "weight_map" object of tensor name → shard file', fix);
  }
  const wanted = new Map<string, string[]>();
  for (const [key, file] of Object.entries(map as Record<string, string>)) {
    if (file.includes('/') || file.includes('\\')) throw new LorafaError(index, `tensor "${key}" is mapped to "${file}", outside the checkpoint folder`, fix);
    wanted.set(file, [...(wanted.get(file) ?? []), key]);
  }
  if (!wanted.size) throw new LorafaError(index, 'lists no tensors', fix);
  const files: SafetensorsFile[] = [];
  const owner = new Map<string, SafetensorsFile>();
  try {
    for (const [file, keys] of wanted) {
      const path = join(dir, file);
      if (!existsSync(path)) throw new LorafaError(index, `lists ${keys.length} tensor${keys.length > 1 ? 's' : ''} (${keys[0]}, …) in ${file}, which is missing from ${dir}`, fix);
      const f = openSafetensors(path);
      files.push(f);
      for (const k of keys) {
        if (!f.entries.has(k)) throw new LorafaError(path, `has no tensor "${k}", which ${WEIGHTS_INDEX} says it holds`, fix);
        owner.set(k, f);
      }
    }
  } catch (e) {
    for (const f of files) f.close();
    throw e;
  }
  const shown = relative(process.cwd(), dir) || dir;
  return fromFiles(`${shown} (${files.length} shard${files.length > 1 ? 's' : ''} listed by ${WEIGHTS_INDEX})`, files, owner);
}
