// Fixed-width arrays whose first dimension is the row (IDX, .npy, .safetensors): element types,
// decoding, and columns read by positioned reads (one read per run of consecutive rows), so a
// batch costs only its own rows. A source of such columns zips them by row.
import { endianness } from 'node:os';
import { LorafaError } from '../../ir/errors.ts';
import { formatOf, type Cell, type DataFormat, type Row, type RowSource } from '../rows.ts';
import { closeQuietly, readAt, rowSource } from './common.ts';

/** An element type: its width in bytes and how a row's elements decode. */
export interface DType {
  /** As the file names it (`<f4`, `BF16`, `u8`), for messages. */
  readonly name: string;
  readonly width: number;
  /** Float32Array for 32-bit-or-narrower floats, Float64Array otherwise. */
  readonly out: 'f32' | 'f64';
  /** Reads element k (little-endian) at byte `at`; a 64-bit integer comes back as a bigint. */
  get(view: DataView, at: number): number | bigint;
  /** A divisor applied after reading (IDX bytes: 255, as torchvision's ToTensor). */
  readonly divide?: number;
}

function f16(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}
const bf16View = new DataView(new ArrayBuffer(4));
function bf16(h: number): number {
  bf16View.setUint32(0, h << 16);
  return bf16View.getFloat32(0);
}

/** The element types by kind: f (float), i (signed), u (unsigned), b (bool); and width. */
export const DTYPES = {
  f2: { width: 2, out: 'f32', get: (v, a) => f16(v.getUint16(a, true)) },
  bf2: { width: 2, out: 'f32', get: (v, a) => bf16(v.getUint16(a, true)) },
  f4: { width: 4, out: 'f32', get: (v, a) => v.getFloat32(a, true) },
  f8: { width: 8, out: 'f64', get: (v, a) => v.getFloat64(a, true) },
  i1: { width: 1, out: 'f64', get: (v, a) => v.getInt8(a) },
  i2: { width: 2, out: 'f64', get: (v, a) => v.getInt16(a, true) },
  i4: { width: 4, out: 'f64', get: (v, a) => v.getInt32(a, true) },
  i8: { width: 8, out: 'f64', get: (v, a) => v.getBigInt64(a, true) },
  u1: { width: 1, out: 'f64', get: (v, a) => v.getUint8(a) },
  u2: { width: 2, out: 'f64', get: (v, a) => v.getUint16(a, true) },
  u4: { width: 4, out: 'f64', get: (v, a) => v.getUint32(a, true) },
  u8: { width: 8, out: 'f64', get: (v, a) => v.getBigUint64(a, true) },
  b1: { width: 1, out: 'f64', get: (v, a) => (v.getUint8(a) ? 1 : 0) },
} satisfies Record<string, Omit<DType, 'name'>>;
export type DKind = keyof typeof DTYPES;

export function dtype(kind: DKind, name: string): DType {
  return { ...DTYPES[kind], name };
}

const littleHost = endianness() === 'LE';

/** An array on disk: rows of `rowElems` elements at `base + i * rowElems * width`. */
export interface ArrayColumn {
  readonly name: string;
  readonly count: number;
  /** 1-D arrays give scalars; others a flattened vector per row. */
  readonly vector: boolean;
  read(indices: readonly number[]): Cell[];
}

export interface DiskArray {
  readonly file: string;
  /** The column name (messages name it as a tensor/column). */
  readonly name: string;
  readonly dtype: DType;
  readonly count: number;
  readonly rowElems: number;
  readonly vector: boolean;
  /** Where row i is, for messages. */
  where(i: number): string;
  /** The bytes of rows [first, first+n). */
  bytes(first: number, n: number): Buffer;
}

const RUN_BYTES = 8 << 20;

/** A DiskArray as a column: one read per run of consecutive rows, decoded per row. */
export function arrayColumn(a: DiskArray): ArrayColumn {
  const rowBytes = a.rowElems * a.dtype.width;
  const runRows = Math.max(1, Math.floor(RUN_BYTES / Math.max(1, rowBytes)));
  const { dtype } = a;
  const fast = littleHost && dtype.divide === undefined && (dtype.get === DTYPES.f4.get || dtype.get === DTYPES.f8.get);
  const decode = (buf: Buffer, at: number, i: number): Cell => {
    if (fast) {
      const arr = dtype.get === DTYPES.f4.get ? new Float32Array(buf.buffer, buf.byteOffset + at, a.rowElems) : new Float64Array(buf.buffer, buf.byteOffset + at, a.rowElems);
      return a.vector ? arr.slice() : arr[0];
    }
    const view = new DataView(buf.buffer, buf.byteOffset + at, rowBytes);
    const out = a.vector ? (dtype.out === 'f32' ? new Float32Array(a.rowElems) : new Float64Array(a.rowElems)) : undefined;
    let scalar = 0;
    for (let k = 0; k < a.rowElems; k++) {
      let v = dtype.get(view, k * dtype.width);
      if (typeof v === 'bigint') {
        const n = Number(v);
        if (!Number.isSafeInteger(n)) {
          throw new LorafaError(
            a.where(i),
            `column ${JSON.stringify(a.name)} holds the 64-bit integer ${v}${a.vector ? ` (element ${k})` : ''}, beyond what a float64 number holds exactly (±2^53−1 = ±9007199254740991)`,
            'store the values as float64 (astype(np.float64)) or keep them within ±2^53−1',
          );
        }
        v = n;
      }
      if (dtype.divide !== undefined) v /= dtype.divide;
      if (out) out[k] = v;
      else scalar = v;
    }
    return out ?? scalar;
  };
  return {
    name: a.name,
    count: a.count,
    vector: a.vector,
    read(indices) {
      const cells: Cell[] = new Array(indices.length);
      for (let k = 0; k < indices.length; ) {
        const first = indices[k];
        let n = 1;
        while (n < runRows && k + n < indices.length && indices[k + n] === first + n) n++;
        // Aligned for the typed-array views: every row starts at a multiple of the element width.
        const buf = a.bytes(first, n);
        for (let j = 0; j < n; j++) cells[k + j] = decode(buf, j * rowBytes, first + j);
        k += n;
      }
      return cells;
    },
  };
}

/** `bytes` for an array in an open file at byte `base`. */
export function fileBytes(fd: number, file: string, base: number, rowBytes: number): (first: number, n: number) => Buffer {
  return (first, n) => readAt(fd, file, base + first * rowBytes, n * rowBytes);
}

/** `bytes` for an array held in memory (a gunzipped file) at byte `base`. */
export function memoryBytes(data: Buffer, base: number, rowBytes: number): (first: number, n: number) => Buffer {
  return (first, n) => {
    // A copy into a fresh buffer keeps typed-array views aligned.
    const out = Buffer.from(new ArrayBuffer(n * rowBytes));
    data.copy(out, 0, base + first * rowBytes, base + (first + n) * rowBytes);
    return out;
  };
}

/** A RowSource whose columns are arrays of one row count (checked by the caller). */
export function arraySource(file: string, format: DataFormat, columns: ArrayColumn[], where: (i: number) => string, close: () => void): RowSource {
  const count = columns[0].count;
  return rowSource({
    file,
    format,
    count,
    columns: columns.map((c) => c.name),
    where,
    rows(indices) {
      const cols = columns.map((c) => c.read(indices));
      const rows: Row[] = new Array(indices.length);
      for (let k = 0; k < indices.length; k++) {
        const row: Record<string, Cell> = {};
        for (let c = 0; c < columns.length; c++) row[columns[c].name] = cols[c][k];
        rows[k] = row;
      }
      return rows;
    },
    close,
  });
}

export const shapeText = (shape: readonly number[]) => `[${shape.join(', ')}]`;

/**
 * The "label" column from a labels file (IDX or .npy, 1-D, one label per row of `dataFile`,
 * which holds `count` rows), and the descriptors it holds open.
 */
export async function labelColumn(labels: string, dataFile: string, count: number): Promise<{ column: ArrayColumn; fds: number[] }> {
  const format = formatOf(labels);
  let opened: { array: DiskArray; fd?: number };
  if (format === 'idx') opened = (await import('./idx.ts')).idxLabels(labels);
  else if (format === 'npy') opened = (await import('./npy.ts')).npyLabels(labels);
  else {
    throw new LorafaError(labels, 'a labels file must be an IDX file (*-idx1-ubyte, .idx) or a .npy file', 'name the 1-D IDX or .npy file that holds one label per row');
  }
  const fds = opened.fd === undefined ? [] : [opened.fd];
  if (opened.array.count !== count) {
    fds.forEach(closeQuietly);
    throw new LorafaError(
      dataFile,
      `holds ${count} rows, but its labels file ${labels} holds ${opened.array.count} labels`,
      'pair the data with its own labels file: both must have one entry per row, in the same order',
    );
  }
  return { column: arrayColumn(opened.array), fds };
}
