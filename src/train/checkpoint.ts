// Training checkpoints: `<out>/checkpoints/step-NNNNNN.safetensors`, each holding every trainable
// parameter and optimizer state tensor (f32) and string metadata (step, model, config, mode,
// optimizer, lr, seed, data, the plan hash). Writes are atomic (temp file, fsync, rename), so a
// kill at any moment leaves either the old set of files or the new one. A sha256 over the
// metadata and the tensor bytes catches what atomic writes cannot: a file damaged afterwards.
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, rmSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { LorafaError } from '../ir/errors.ts';
import { ensureDir } from '../io/output.ts';
import { readSafetensorsWithMetadata, writeSafetensors, type TensorToWrite } from '../io/safetensors.ts';

export const CHECKPOINT_FORMAT = 'lorafa-checkpoint/1';
const NAME = /^step-(\d{6,})\.safetensors$/;
const TEMP = /^step-\d{6,}\.safetensors\.tmp-/;

export interface CheckpointTensor {
  readonly shape: readonly number[];
  readonly data: Float32Array;
}

export interface Checkpoint {
  readonly file: string;
  readonly step: number;
  /** The metadata as written (strings), checksum excluded. */
  readonly meta: Readonly<Record<string, string>>;
  readonly tensors: ReadonlyMap<string, CheckpointTensor>;
}

export function checkpointFile(dir: string, step: number): string {
  return join(dir, `step-${String(step).padStart(6, '0')}.safetensors`);
}

/** Checkpoint files in `dir`, newest (highest step) first. */
export function listCheckpoints(dir: string): { file: string; step: number }[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .map((f) => ({ f, m: NAME.exec(f) }))
    .filter((x) => x.m)
    .map((x) => ({ file: join(dir, x.f), step: Number(x.m![1]) }))
    .sort((a, b) => b.step - a.step);
}

/** Temp files a killed writer left behind (never a complete checkpoint: the rename did not happen). */
export function removeStaleTemps(dir: string): void {
  if (!existsSync(dir)) return;
  for (const f of readdirSync(dir)) if (TEMP.test(f)) rmSync(join(dir, f), { force: true });
}

function checksum(meta: Readonly<Record<string, string>>, tensors: ReadonlyMap<string, CheckpointTensor>): string {
  const h = createHash('sha256');
  for (const k of Object.keys(meta).sort()) h.update(`${k}=${meta[k]}\n`);
  for (const name of [...tensors.keys()].sort()) {
    const t = tensors.get(name)!;
    h.update(`${name}[${t.shape.join(',')}]\n`);
    h.update(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
  }
  return h.digest('hex');
}

/** Writes step `step` atomically, then deletes all but the newest `keep` checkpoints up to `step`. */
export function writeCheckpoint(
  dir: string,
  step: number,
  tensors: ReadonlyMap<string, CheckpointTensor>,
  meta: Readonly<Record<string, string>>,
  keep = 2,
): string {
  ensureDir(dir);
  const full = { ...meta, format: CHECKPOINT_FORMAT, step: String(step) };
  const file = checkpointFile(dir, step);
  const out = new Map<string, TensorToWrite>([...tensors].map(([k, t]) => [k, { dtype: 'F32', shape: t.shape, data: t.data }]));
  writeSafetensors(file, out, { ...full, checksum: checksum(full, tensors) });
  for (const old of listCheckpoints(dir).filter((c) => c.step <= step).slice(keep)) {
    try {
      rmSync(old.file, { force: true });
    } catch {
      // an older checkpoint that cannot be removed is only disk space; the new one is written
    }
  }
  return file;
}

/**
 * Reads and checks one checkpoint: a valid safetensors file, lorafa's format, f32 tensors, the
 * step its name says, and an intact checksum. Any failure is a LorafaError naming the file.
 */
export function readCheckpoint(file: string): Checkpoint {
  const bad = (problem: string): never => {
    throw new LorafaError(file, `unusable checkpoint: ${problem}`, `resume from another checkpoint (--resume-from ${join(dirname(file), 'step-NNNNNN.safetensors')}), or move it away and train from scratch`);
  };
  if (!existsSync(file)) throw new LorafaError(file, 'no such checkpoint file', `pass an existing one: ${existsSync(dirname(file)) ? `the folder holds ${listCheckpoints(dirname(file)).map((c) => basename(c.file)).join(', ') || 'none'}` : 'its folder does not exist either'}`);
  let read: ReturnType<typeof readSafetensorsWithMetadata>;
  try {
    read = readSafetensorsWithMetadata(file);
  } catch (e) {
    // "not a valid safetensors file: header length … exceeds the file": a truncated or damaged file.
    return bad(e instanceof LorafaError ? e.problem : (e as Error).message);
  }
  const { checksum: sum, ...meta } = read.metadata;
  if (meta.format !== CHECKPOINT_FORMAT) bad(`metadata format is ${meta.format ? `"${meta.format}"` : 'missing'}, expected "${CHECKPOINT_FORMAT}" (not a lorafa checkpoint)`);
  const step = Number(meta.step);
  if (!Number.isInteger(step) || step < 0) bad(`metadata step "${meta.step}" is not a step number`);
  const m = NAME.exec(file.split(/[\\/]/).pop()!);
  if (m && Number(m[1]) !== step) bad(`its name says step ${Number(m[1])} but its metadata says step ${step}`);
  const tensors = new Map<string, CheckpointTensor>();
  for (const [name, t] of read.tensors) {
    if (t.dtype !== 'F32') bad(`tensor "${name}" is ${t.dtype}, lorafa checkpoints hold F32`);
    tensors.set(name, { shape: t.shape, data: Float32Array.from(t.data) });
  }
  if (!sum) bad('no checksum in its metadata');
  if (checksum(meta, tensors) !== sum) bad('checksum mismatch: the file was damaged after it was written');
  return { file, step, meta, tensors };
}
