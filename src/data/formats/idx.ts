// IDX (MNIST's format) as a RowSource: a big-endian header (magic 0x0000TTNN: TT the element
// type, 08 = unsigned bytes, the only one read; NN the number of dimensions; then one u32 per
// dimension), then the bytes. Rows are the first dimension. A raw file is checked from its
// header and size, then read by positioned reads; a gzipped one (.gz, as Debian ships
// Fashion-MNIST) is gunzipped into memory once. The header checks mirror src/data/idx.ts.
import { existsSync, readFileSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import { LorafaError } from '../../ir/errors.ts';
import type { RowSource } from '../rows.ts';
import { arrayColumn, arraySource, DTYPES, fileBytes, labelColumn, memoryBytes, shapeText, type ArrayColumn, type DiskArray, type DType } from './arrays.ts';
import { closeQuietly, noRows, openFile, readUpTo } from './common.ts';

const TYPES: Record<number, string> = {
  0x08: 'unsigned bytes',
  0x09: 'signed bytes',
  0x0b: '16-bit integers',
  0x0c: '32-bit integers',
  0x0d: '32-bit floats',
  0x0e: '64-bit floats',
};
const hex = (n: number, digits: number) => '0x' + (n >>> 0).toString(16).padStart(digits, '0');
const AGAIN = 'the file is damaged (an interrupted download or copy?): fetch it again';

/** Pixels (u8) as floats in [0, 1], as torchvision's ToTensor. */
const PIXELS: DType = { ...DTYPES.u1, name: 'u8', out: 'f32', divide: 255 };
const BYTES: DType = { ...DTYPES.u1, name: 'u8' };

interface IdxArray {
  readonly dims: number[];
  readonly headerBytes: number;
  /** Raw: the open descriptor; gzipped: the gunzipped bytes. */
  readonly fd?: number;
  readonly data?: Buffer;
}

function openIdxArray(file: string, what: string): IdxArray {
  const { fd, size } = openFile(file, what);
  try {
    const head = readUpTo(fd, 0, 4);
    const gzipped = file.toLowerCase().endsWith('.gz') || (head[0] === 0x1f && head[1] === 0x8b);
    if (!gzipped) {
      const ndim = head.length === 4 ? head[3] : 0;
      const dims = checkHeader(file, readUpTo(fd, 0, 4 + 4 * ndim), size, false);
      return { dims, headerBytes: 4 + 4 * dims.length, fd };
    }
  } catch (e) {
    closeQuietly(fd);
    throw e;
  }
  // Gzipped: gunzipped into memory once; the descriptor is not kept.
  let data: Buffer;
  try {
    data = gunzipSync(readFileSync(fd));
  } catch (e) {
    throw new LorafaError(file, `corrupt gzip data (${size} bytes): ${(e as Error).message}`, AGAIN);
  } finally {
    closeQuietly(fd);
  }
  const dims = checkHeader(file, data, data.length, true);
  return { dims, headerBytes: 4 + 4 * dims.length, data };
}

/** Validates the header at the start of `head` against the total size `bytes`; the dimensions. */
function checkHeader(file: string, head: Buffer, bytes: number, unpacked: boolean): number[] {
  const size = unpacked ? `gunzips to ${bytes} bytes` : `is ${bytes} bytes`;
  if (bytes === 0) throw noRows(file, unpacked ? 'it gunzips to nothing' : 'the file is empty', AGAIN);
  if (bytes < 4) throw new LorafaError(file, `truncated IDX file: ${size}, shorter than the 4-byte magic number`, AGAIN);
  const magic = head.readUInt32BE(0);
  if (head[0] !== 0 || head[1] !== 0) {
    throw new LorafaError(
      file,
      `bad IDX magic number ${hex(magic, 8)}: an IDX file starts with two zero bytes, then its element type (0x08 for unsigned bytes) and its number of dimensions`,
      'check that this is an IDX file (such as MNIST\'s train-images-idx3-ubyte), gunzipped or named .gz',
    );
  }
  const type = head[2];
  const ndim = head[3];
  if (type !== 0x08) {
    throw new LorafaError(
      file,
      `IDX element type ${hex(type, 2)} (${TYPES[type] ?? 'unknown'}) is not supported; only unsigned bytes (0x08) are`,
      'convert the data to unsigned bytes, or save it as a .npy file (numpy.save) and use that',
    );
  }
  if (ndim === 0) throw new LorafaError(file, `the IDX header (magic ${hex(magic, 8)}) declares 0 dimensions`, AGAIN);
  const headerBytes = 4 + 4 * ndim;
  if (bytes < headerBytes) {
    throw new LorafaError(file, `truncated IDX file: ${size}, shorter than the ${headerBytes}-byte header of a ${ndim}-dimensional IDX file`, AGAIN);
  }
  const dims = Array.from({ length: ndim }, (_, i) => head.readUInt32BE(4 + 4 * i));
  const expected = headerBytes + dims.reduce((a, b) => a * b, 1);
  if (bytes !== expected) {
    const why = bytes < expected ? 'truncated IDX file' : `${bytes - expected} extra bytes after the data`;
    throw new LorafaError(file, `${why}: ${size}, expected ${expected} (${headerBytes}-byte header + ${dims.join('×')} bytes)`, AGAIN);
  }
  if (dims[0] === 0) throw noRows(file, `its dimensions ${shapeText(dims)} have 0 rows`, 'use an IDX file with at least one row');
  if (dims.some((d) => d === 0)) throw new LorafaError(file, `IDX dimensions ${shapeText(dims)} include a zero`, AGAIN);
  return dims;
}

function diskArray(file: string, a: IdxArray, name: string, type: DType): DiskArray {
  const rowElems = a.dims.slice(1).reduce((x, y) => x * y, 1);
  return {
    file,
    name,
    dtype: type,
    count: a.dims[0],
    rowElems,
    vector: a.dims.length > 1,
    where: (i) => `${file} row ${i}`,
    bytes: a.data ? memoryBytes(a.data, a.headerBytes, rowElems) : fileBytes(a.fd!, file, a.headerBytes, rowElems),
  };
}

/** A 1-D IDX labels file as the "label" column (its bytes as numbers). */
export function idxLabels(file: string): { array: DiskArray; fd?: number } {
  const a = openIdxArray(file, 'labels file');
  if (a.dims.length !== 1) {
    if (a.fd !== undefined) closeQuietly(a.fd);
    throw new LorafaError(
      file,
      `a labels file must be 1-D (one label per row), but this IDX file has dimensions ${shapeText(a.dims)}`,
      'name the *-labels-idx1-ubyte file (magic 0x00000801)',
    );
  }
  return { array: diskArray(file, a, 'label', BYTES), fd: a.fd };
}

/** `<stem>-labels-idx1-ubyte[.gz]` beside `<stem>-images-idx3-ubyte[.gz]`, if it exists. */
export function labelsBeside(file: string): string | undefined {
  const m = /^(.*)-images([-.])idx3-ubyte(\.gz)?$/.exec(file);
  if (!m) return undefined;
  const base = `${m[1]}-labels${m[2]}idx1-ubyte`;
  for (const candidate of m[3] ? [base + m[3], base] : [base, base + '.gz']) if (existsSync(candidate)) return candidate;
  return undefined;
}

/**
 * An IDX file as rows: [N, ...] → column "x" (Float32Array of value/255, flattened); a 1-D file
 * → scalar column "x" holding the bytes as they are (a 1-D IDX file is labels, not pixels);
 * `labels` (or the labels file beside MNIST-style images) → column "label".
 */
export async function openIdx(file: string, labels?: string): Promise<RowSource> {
  const a = openIdxArray(file, 'data file');
  const fds = a.fd === undefined ? [] : [a.fd];
  const closeAll = () => fds.forEach(closeQuietly);
  try {
    const x = diskArray(file, a, 'x', a.dims.length > 1 ? PIXELS : BYTES);
    const columns: ArrayColumn[] = [arrayColumn(x)];
    const labelFile = labels ?? labelsBeside(file);
    if (labelFile !== undefined) {
      const l = await labelColumn(labelFile, file, x.count);
      fds.push(...l.fds);
      columns.push(l.column);
    }
    return arraySource(file, 'idx', columns, x.where, closeAll);
  } catch (e) {
    closeAll();
    throw e;
  }
}
