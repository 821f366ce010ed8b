// IDX reader (the MNIST file format): a big-endian header (magic 0x000008NN, where 08 = unsigned
// bytes and NN = the number of dimensions, then one u32 per dimension), then the raw bytes.
// Raw files are validated from their header and size, then read by random access (one positioned
// read per run of consecutive rows), so a batch costs only its own rows. Gzipped files (.gz, as
// Debian ships Fashion-MNIST) are gunzipped once and served from memory. Every defect (missing,
// truncated, extra bytes, bad magic, corrupt gzip, a label out of range) is a LorafaError naming
// the exact file, what was expected and what was found.
import { closeSync, existsSync, fstatSync, openSync, readFileSync, readSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { LorafaError } from '../ir/errors.ts';

export interface IdxImages {
  readonly path: string;
  readonly count: number;
  readonly rows: number;
  readonly cols: number;
  /** Copies the pixels of images `indices` (in order) into `out`, row-major [n, rows*cols]. */
  readRows(indices: ArrayLike<number>, out: Uint8Array): void;
}

export interface IdxLabels {
  readonly path: string;
  readonly count: number;
  readonly labels: Uint8Array;
}

const IMAGES = { magic: 0x00000803, what: 'images: unsigned bytes, 3 dimensions' } as const;
const LABELS = { magic: 0x00000801, what: 'labels: unsigned bytes, 1 dimension' } as const;

/** `dir/base` if present, else `dir/base.gz`; neither: a LorafaError naming both. */
export function idxPath(dir: string, base: string, fix: string): string {
  const raw = join(dir, base);
  if (existsSync(raw)) return raw;
  if (existsSync(raw + '.gz')) return raw + '.gz';
  throw new LorafaError(raw, `missing IDX file: neither ${raw} nor ${raw}.gz exists`, fix);
}

const hex = (n: number) => '0x' + (n >>> 0).toString(16).padStart(8, '0');

/**
 * Validates the header in `head` (the file's first bytes) against `kind` and the total size
 * `bytes`; returns the dimensions. `unpacked` says whether sizes are of the gunzipped data.
 */
function checkHeader(path: string, head: Buffer, bytes: number, kind: typeof IMAGES | typeof LABELS, fix: string, unpacked: boolean): number[] {
  const ndim = kind.magic & 0xff;
  const headerBytes = 4 + 4 * ndim;
  const size = unpacked ? `gunzips to ${bytes} bytes` : `is ${bytes} bytes`;
  if (bytes < headerBytes) {
    throw new LorafaError(path, `truncated IDX file: ${size}, shorter than the ${headerBytes}-byte header of IDX ${kind.what}`, fix);
  }
  const magic = head.readUInt32BE(0);
  if (magic !== kind.magic) {
    throw new LorafaError(path, `bad IDX magic number ${hex(magic)}, expected ${hex(kind.magic)} (${kind.what})`, fix);
  }
  const dims = Array.from({ length: ndim }, (_, i) => head.readUInt32BE(4 + 4 * i));
  if (dims.some((d) => d === 0)) throw new LorafaError(path, `IDX dimensions [${dims.join(', ')}] include a zero`, fix);
  const expected = headerBytes + dims.reduce((a, b) => a * b, 1);
  if (bytes !== expected) {
    const shape = dims.join('×');
    const why = bytes < expected ? 'truncated' : `${bytes - expected} extra bytes after the data`;
    throw new LorafaError(path, `${why}: ${size}, expected ${expected} (${headerBytes}-byte header + ${shape} bytes)`, fix);
  }
  return dims;
}

function gunzip(path: string, fix: string): Buffer {
  let packed: Buffer;
  try {
    packed = readFileSync(path);
  } catch (e) {
    throw new LorafaError(path, `cannot read IDX file: ${(e as Error).message}`, fix);
  }
  try {
    return gunzipSync(packed);
  } catch (e) {
    throw new LorafaError(path, `corrupt gzip data (${packed.length} bytes): ${(e as Error).message}`, fix);
  }
}

export function openIdxImages(path: string, fix: string): IdxImages {
  if (path.endsWith('.gz')) {
    const buf = gunzip(path, fix);
    const [count, rows, cols] = checkHeader(path, buf, buf.length, IMAGES, fix, true);
    const row = rows * cols;
    return {
      path, count, rows, cols,
      readRows(indices, out) {
        for (let k = 0; k < indices.length; k++) {
          const start = 16 + checkIndex(path, indices[k], count) * row;
          out.set(buf.subarray(start, start + row), k * row);
        }
      },
    };
  }
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (e) {
    throw new LorafaError(path, `cannot open IDX file: ${(e as Error).message}`, fix);
  }
  let dims: number[];
  try {
    const size = fstatSync(fd).size;
    const head = Buffer.alloc(16);
    readSync(fd, head, 0, Math.min(16, size), 0);
    dims = checkHeader(path, head, size, IMAGES, fix, false);
  } finally {
    closeSync(fd);
  }
  const [count, rows, cols] = dims;
  const row = rows * cols;
  return {
    path, count, rows, cols,
    readRows(indices, out) {
      const fd = openSync(path, 'r');
      try {
        // One positioned read per run of consecutive indices (a whole eval batch is one read).
        for (let k = 0; k < indices.length; ) {
          const first = checkIndex(path, indices[k], count);
          let n = 1;
          while (k + n < indices.length && indices[k + n] === first + n) n++;
          const got = readSync(fd, out, k * row, n * row, 16 + first * row);
          if (got !== n * row) {
            throw new LorafaError(path, `file shrank after it was opened: read ${got} of ${n * row} bytes at image ${first}`, fix);
          }
          k += n;
        }
      } finally {
        closeSync(fd);
      }
    },
  };
}

/** Reads a whole label file (small) and checks every label is below `classes`. */
export function openIdxLabels(path: string, fix: string, classes = 10): IdxLabels {
  let buf: Buffer;
  if (path.endsWith('.gz')) buf = gunzip(path, fix);
  else {
    try {
      buf = readFileSync(path);
    } catch (e) {
      throw new LorafaError(path, `cannot read IDX file: ${(e as Error).message}`, fix);
    }
  }
  const [count] = checkHeader(path, buf, buf.length, LABELS, fix, path.endsWith('.gz'));
  const labels = new Uint8Array(buf.buffer, buf.byteOffset + 8, count);
  for (let i = 0; i < count; i++) {
    if (labels[i] >= classes) {
      throw new LorafaError(path, `label ${labels[i]} at index ${i} is not below ${classes} (the number of classes)`, fix);
    }
  }
  return { path, count, labels };
}

function checkIndex(path: string, i: number, count: number): number {
  if (!Number.isInteger(i) || i < 0 || i >= count) {
    throw new LorafaError(path, `image index ${i} is out of range [0, ${count})`, 'pass sample indices below the dataset count');
  }
  return i;
}
