// safetensors reading: an 8-byte little-endian header length, a JSON header, raw tensor bytes.
// Small enough to own; no maintained npm package covers it with the dtypes lorafa needs.
import { closeSync, fsyncSync, openSync, readFileSync, renameSync, writeSync } from 'node:fs';
import { LorafaError } from '../ir/errors.ts';

export type SafeDType = 'F64' | 'F32' | 'F16' | 'BF16' | 'I64' | 'I32';

export interface SafeTensor {
  readonly dtype: SafeDType;
  readonly shape: readonly number[];
  /** Values widened to float64. */
  readonly data: Float64Array;
}

const WIDTH: Record<SafeDType, number> = { F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4 };

function f16ToNumber(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const f = h & 0x3ff;
  if (e === 0) return s * 2 ** -14 * (f / 1024);
  if (e === 31) return f ? NaN : s * Infinity;
  return s * 2 ** (e - 15) * (1 + f / 1024);
}

export function readSafetensors(path: string): Map<string, SafeTensor> {
  return readSafetensorsWithMetadata(path).tensors;
}

/** The tensors and the `__metadata__` string map (empty when the file has none). */
export function readSafetensorsWithMetadata(path: string): { tensors: Map<string, SafeTensor>; metadata: Record<string, string> } {
  let buf: Buffer;
  try {
    buf = readFileSync(path);
  } catch (e) {
    throw new LorafaError(path, `cannot read safetensors file: ${(e as Error).message}`, 'check the path');
  }
  const bad = (why: string): never => {
    throw new LorafaError(path, `not a valid safetensors file: ${why}`, 'regenerate or re-download the file');
  };
  if (buf.length < 8) bad(`${buf.length} bytes is shorter than the 8-byte header length`);
  const headerLen = Number(buf.readBigUInt64LE(0));
  if (headerLen > buf.length - 8) bad(`header length ${headerLen} exceeds the file (${buf.length} bytes)`);
  let header: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  try {
    header = JSON.parse(buf.subarray(8, 8 + headerLen).toString('utf8'));
  } catch (e) {
    return bad(`header is not JSON (${(e as Error).message})`);
  }
  if (!header || typeof header !== 'object' || Array.isArray(header)) bad('header is not a JSON object');
  const body = buf.subarray(8 + headerLen);
  const out = new Map<string, SafeTensor>();
  const metadata: Record<string, string> = {};
  for (const [key, meta] of Object.entries(header)) {
    if (key === '__metadata__') {
      const m = meta as unknown;
      if (!m || typeof m !== 'object' || Array.isArray(m) || Object.values(m).some((v) => typeof v !== 'string')) {
        bad('__metadata__ is not a map of strings');
      }
      Object.assign(metadata, m);
      continue;
    }
    const okMeta =
      meta && typeof meta === 'object' && Array.isArray(meta.shape) && meta.shape.every((d) => Number.isInteger(d) && d >= 0) &&
      Array.isArray(meta.data_offsets) && meta.data_offsets.length === 2 && meta.data_offsets.every((o) => Number.isInteger(o) && o >= 0);
    if (!okMeta) bad(`tensor "${key}" has a malformed entry ${JSON.stringify(meta).slice(0, 120)}`);
    const dtype = meta.dtype as SafeDType;
    if (!(dtype in WIDTH)) bad(`tensor "${key}" has unsupported dtype ${meta.dtype}`);
    const [start, end] = meta.data_offsets;
    const n = meta.shape.reduce((a, d) => a * d, 1);
    if (end - start !== n * WIDTH[dtype] || end > body.length) {
      bad(`tensor "${key}" [${meta.shape.join(',')}] ${dtype} needs ${n * WIDTH[dtype]} bytes at ${start}..${end}, file body has ${body.length}`);
    }
    const view = new DataView(body.buffer, body.byteOffset + start, end - start);
    const data = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      switch (dtype) {
        case 'F64': data[i] = view.getFloat64(i * 8, true); break;
        case 'F32': data[i] = view.getFloat32(i * 4, true); break;
        case 'F16': data[i] = f16ToNumber(view.getUint16(i * 2, true)); break;
        case 'BF16': data[i] = new Float32Array(new Uint32Array([view.getUint16(i * 2, true) << 16]).buffer)[0]; break;
        case 'I64': data[i] = Number(view.getBigInt64(i * 8, true)); break;
        case 'I32': data[i] = view.getInt32(i * 4, true); break;
      }
    }
    out.set(key, { dtype, shape: meta.shape, data });
  }
  return { tensors: out, metadata };
}

export interface TensorToWrite {
  readonly dtype: 'F32' | 'F64' | 'I32';
  readonly shape: readonly number[];
  readonly data: ArrayLike<number>;
}

/** Serialises tensors (sorted by name, 8-byte aligned header) to safetensors bytes. */
export function encodeSafetensors(tensors: ReadonlyMap<string, TensorToWrite>, metadata?: Record<string, string>): Buffer {
  const names = [...tensors.keys()].sort();
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let offset = 0;
  for (const name of names) {
    const t = tensors.get(name)!;
    const bytes = t.data.length * WIDTH[t.dtype];
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const head = Buffer.from(json, 'utf8');
  const out = Buffer.alloc(8 + head.length + offset);
  out.writeBigUInt64LE(BigInt(head.length), 0);
  head.copy(out, 8);
  let at = 8 + head.length;
  for (const name of names) {
    const t = tensors.get(name)!;
    for (let i = 0; i < t.data.length; i++, at += WIDTH[t.dtype]) {
      if (t.dtype === 'F32') out.writeFloatLE(t.data[i], at);
      else if (t.dtype === 'F64') out.writeDoubleLE(t.data[i], at);
      else out.writeInt32LE(t.data[i], at);
    }
  }
  return out;
}

/** Writes atomically: a temp file in the same directory, fsync'd, then renamed over the target. */
export function writeSafetensors(path: string, tensors: ReadonlyMap<string, TensorToWrite>, metadata?: Record<string, string>): void {
  const tmp = `${path}.tmp-${process.pid}-${Date.now()}`;
  const fd = openSync(tmp, 'w');
  try {
    const bytes = encodeSafetensors(tensors, metadata);
    for (let done = 0; done < bytes.length; ) done += writeSync(fd, bytes, done);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
}
