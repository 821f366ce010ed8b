// safetensors: an 8-byte little-endian header length, a JSON header, raw tensor bytes. Small
// enough to own; no maintained npm package covers it with the dtypes and checks lorafa needs.
//
// Opening reads and checks the header only: every entry well formed, a known dtype, bytes =
// shape × dtype width, and the data_offsets tiling the body exactly as the format requires —
// sorted by offset they start at 0, each where the previous ends, the last at the end of the file
// (no overlap, where one tensor would silently read another's bytes; no gap, no trailing bytes).
// Tensors are then read one at a time with positioned reads, so a checkpoint larger than memory
// (a 7B model in BF16) loads tensor by tensor. Reading a float tensor checks it holds no NaN or
// ±Infinity: an error names the tensor, the first bad element and how many there are.
import { bf16Value, f16Value } from '../ir/half.ts';
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { LorafaError } from '../ir/errors.ts';
import { writeFileAtomic } from './output.ts';

export type SafeDType = 'F64' | 'F32' | 'F16' | 'BF16' | 'I64' | 'I32';

export interface SafeTensor {
  readonly dtype: SafeDType;
  readonly shape: readonly number[];
  /** Values widened to float64. */
  readonly data: Float64Array;
}

export const WIDTH: Record<SafeDType, number> = { F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4 };
const FLOATS: ReadonlySet<string> = new Set(['F64', 'F32', 'F16', 'BF16']);


export interface TensorEntry {
  readonly key: string;
  readonly dtype: SafeDType;
  readonly shape: readonly number[];
  /** Byte range within the body. */
  readonly start: number;
  readonly end: number;
}

/** An open safetensors file: the header, checked; tensors read on demand. */
export interface SafetensorsFile {
  readonly path: string;
  readonly entries: ReadonlyMap<string, TensorEntry>;
  readonly metadata: Readonly<Record<string, string>>;
  /** The tensor `key`, widened to float64; a float tensor with a NaN or ±Infinity is an error. */
  read(key: string): SafeTensor;
  close(): void;
}

/** Where the first non-finite element is: `index 1234 ([3, 210] of [256, 784])`. */
function fmtIndex(flat: number, shape: readonly number[]): string {
  if (shape.length < 2) return `index ${flat}`;
  const idx: number[] = [];
  let r = flat;
  for (let d = shape.length - 1; d >= 0; d--) {
    idx.unshift(r % shape[d]);
    r = Math.floor(r / shape[d]);
  }
  return `index ${flat} ([${idx.join(', ')}] of [${shape.join(', ')}])`;
}

/** NaN or ±Infinity in `data` is an error naming the tensor, the first bad element and the count. */
export function checkFinite(where: string, key: string, shape: readonly number[], data: ArrayLike<number>, fix = 'the weights are damaged (a diverged training run, a bad conversion): use another copy, or fix the tensor at its source'): void {
  let first = -1;
  let count = 0;
  for (let i = 0; i < data.length; i++) {
    if (!Number.isFinite(data[i])) {
      if (first < 0) first = i;
      count++;
    }
  }
  if (first < 0) return;
  throw new LorafaError(where, `tensor "${key}" holds ${Number.isNaN(data[first]) ? 'NaN' : data[first]} at ${fmtIndex(first, shape)}: ${count} non-finite value${count > 1 ? 's' : ''} in all`, fix);
}

/** Opens a safetensors file and checks its header (see the top of this file). */
export function openSafetensors(path: string): SafetensorsFile {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (e) {
    throw new LorafaError(path, `cannot read safetensors file: ${(e as Error).message}`, 'check the path');
  }
  try {
    return open(path, fd);
  } catch (e) {
    closeSync(fd);
    throw e;
  }
}

function readAt(fd: number, buf: Buffer, pos: number): void {
  for (let done = 0; done < buf.length; ) {
    const n = readSync(fd, buf, done, buf.length - done, pos + done);
    if (n === 0) throw new Error('unexpected end of file');
    done += n;
  }
}

function open(path: string, fd: number): SafetensorsFile {
  const bad = (why: string): never => {
    throw new LorafaError(path, `not a valid safetensors file: ${why}`, 'regenerate or re-download the file');
  };
  const size = fstatSync(fd).size;
  if (size < 8) bad(`${size} bytes is shorter than the 8-byte header length`);
  const lenBuf = Buffer.alloc(8);
  readAt(fd, lenBuf, 0);
  const headerLen = Number(lenBuf.readBigUInt64LE(0));
  if (headerLen > size - 8) bad(`header length ${headerLen} exceeds the file (${size} bytes)`);
  if (headerLen > 100_000_000) bad(`header length ${headerLen} is over 100 MB`);
  const headerBuf = Buffer.alloc(headerLen);
  readAt(fd, headerBuf, 8);
  let header: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  try {
    header = JSON.parse(headerBuf.toString('utf8'));
  } catch (e) {
    return bad(`header is not JSON (${(e as Error).message})`);
  }
  if (!header || typeof header !== 'object' || Array.isArray(header)) bad('header is not a JSON object');
  const bodyStart = 8 + headerLen;
  const bodyLen = size - bodyStart;
  const entries = new Map<string, TensorEntry>();
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
    if (end - start !== n * WIDTH[dtype] || end > bodyLen) {
      bad(`tensor "${key}" [${meta.shape.join(',')}] ${dtype} needs ${n * WIDTH[dtype]} bytes at ${start}..${end}, file body has ${bodyLen}`);
    }
    entries.set(key, { key, dtype, shape: meta.shape, start, end });
  }
  // The tensors must tile the body: sorted by offset, each starts where the previous ends.
  const sorted = [...entries.values()].filter((e) => e.end > e.start).sort((a, b) => a.start - b.start);
  let at = 0;
  let prev: TensorEntry | undefined;
  for (const e of sorted) {
    if (e.start < at) bad(`tensors "${prev!.key}" (bytes ${prev!.start}..${prev!.end}) and "${e.key}" (bytes ${e.start}..${e.end}) overlap: one would read the other's bytes`);
    if (e.start > at) bad(`${e.start - at} bytes between ${prev ? `"${prev.key}" (ending at ${at})` : 'the header'} and "${e.key}" (starting at ${e.start}) belong to no tensor`);
    at = e.end;
    prev = e;
  }
  if (at !== bodyLen) bad(`${bodyLen - at} bytes after the last tensor${prev ? ` ("${prev.key}")` : ''} belong to no tensor`);
  let closed = false;
  return {
    path,
    entries,
    metadata,
    read(key) {
      if (closed) throw new LorafaError(path, `read "${key}" after close`, 'this is a lorafa bug: report it');
      const e = entries.get(key);
      if (!e) throw new LorafaError(path, `has no tensor "${key}"`, `it holds: ${[...entries.keys()].slice(0, 12).join(', ')}`);
      const buf = Buffer.alloc(e.end - e.start);
      readAt(fd, buf, bodyStart + e.start);
      const data = decode(buf, e.dtype, (e.end - e.start) / WIDTH[e.dtype]);
      if (FLOATS.has(e.dtype)) checkFinite(path, key, e.shape, data);
      return { dtype: e.dtype, shape: e.shape, data };
    },
    close() {
      if (!closed) closeSync(fd);
      closed = true;
    },
  };
}

function decode(buf: Buffer, dtype: SafeDType, n: number): Float64Array {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const data = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    switch (dtype) {
      case 'F64': data[i] = view.getFloat64(i * 8, true); break;
      case 'F32': data[i] = view.getFloat32(i * 4, true); break;
      case 'F16': data[i] = f16Value(view.getUint16(i * 2, true)); break;
      case 'BF16': data[i] = bf16Value(view.getUint16(i * 2, true)); break;
      case 'I64': data[i] = Number(view.getBigInt64(i * 8, true)); break;
      case 'I32': data[i] = view.getInt32(i * 4, true); break;
    }
  }
  return data;
}

export function readSafetensors(path: string): Map<string, SafeTensor> {
  return readSafetensorsWithMetadata(path).tensors;
}

/** Every tensor and the `__metadata__` string map (empty when the file has none). */
export function readSafetensorsWithMetadata(path: string): { tensors: Map<string, SafeTensor>; metadata: Record<string, string> } {
  const f = openSafetensors(path);
  try {
    const tensors = new Map<string, SafeTensor>();
    for (const key of f.entries.keys()) tensors.set(key, f.read(key));
    return { tensors, metadata: { ...f.metadata } };
  } finally {
    f.close();
  }
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

/** Writes atomically (the output layer's writeFileAtomic: temp file, fsync, rename). */
export function writeSafetensors(path: string, tensors: ReadonlyMap<string, TensorToWrite>, metadata?: Record<string, string>): void {
  writeFileAtomic(path, encodeSafetensors(tensors, metadata));
}
