// What every reader shares: opening a file with clear errors, positioned reads, index checks, the
// row-offset index of the line/record formats, and the RowSource wrapper (read, scan, close).
import { closeSync, fstatSync, openSync, readdirSync, readSync, statSync } from 'node:fs';
import { LorafaError } from '../../ir/errors.ts';
import { formatOf, type DataFormat, type Row, type RowSource } from '../rows.ts';

/** An open file: its descriptor and size (bytes). */
export interface OpenFile {
  readonly fd: number;
  readonly size: number;
}

/** Opens `file` for reading, or a LorafaError naming it: missing, a directory, unreadable. */
export function openFile(file: string, what = 'data file'): OpenFile {
  let isDir = false;
  try {
    isDir = statSync(file).isDirectory();
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') {
      throw new LorafaError(file, `no such ${what}`, `check the path (a relative path is resolved from ${process.cwd()})`);
    }
    throw new LorafaError(file, `cannot read the ${what}: ${(e as Error).message}`, 'check the path and its permissions');
  }
  if (isDir) {
    let inside: string[] = [];
    try {
      inside = readdirSync(file).filter((f) => formatOf(f) !== undefined).sort();
    } catch {
      /* an unreadable directory: no hint */
    }
    const hint = inside.length
      ? ` (it holds ${inside.slice(0, 5).join(', ')}${inside.length > 5 ? `, and ${inside.length - 5} more data files` : ''})`
      : '';
    throw new LorafaError(file, `is a directory, not a ${what}`, `name one file inside it${hint}`);
  }
  let fd: number;
  try {
    fd = openSync(file, 'r');
  } catch (e) {
    throw new LorafaError(file, `cannot open the ${what}: ${(e as Error).message}`, 'check the path and its permissions');
  }
  return { fd, size: fstatSync(fd).size };
}

export function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    /* already closed */
  }
}

/** Exactly `length` bytes at `position`, into a fresh (8-byte aligned) buffer. */
export function readAt(fd: number, file: string, position: number, length: number): Buffer {
  const out = Buffer.from(new ArrayBuffer(length));
  let done = 0;
  while (done < length) {
    const got = readSync(fd, out, done, length - done, position + done);
    if (got === 0) {
      throw new LorafaError(
        file,
        `the file shrank after it was opened: read ${done} of ${length} bytes at byte ${position}`,
        'do not modify a data file while lorafa reads it; run again',
      );
    }
    done += got;
  }
  return out;
}

/** Up to `length` bytes at `position` (fewer at the end of the file). */
export function readUpTo(fd: number, position: number, length: number): Buffer {
  const out = Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    const got = readSync(fd, out, done, length - done, position + done);
    if (got === 0) break;
    done += got;
  }
  return out.subarray(0, done);
}

/** Gzipped input can only be streamed, not read by row: the readers that need random access say so. */
export function refuseGzip(file: string, fd: number, format: DataFormat): void {
  const head = readUpTo(fd, 0, 2);
  if (head.length === 2 && head[0] === 0x1f && head[1] === 0x8b) {
    const plain = file.replace(/\.gz$/i, '');
    throw new LorafaError(
      file,
      `is gzip-compressed; ${format} data is read by row at random positions, which a compressed file cannot give`,
      `decompress it first (gunzip -k ${file}${plain !== file && formatOf(plain) === format ? `, then use ${plain}` : `, then name the result with its .${format} extension`})`,
    );
  }
}

export function noRows(file: string, detail: string, fix: string): LorafaError {
  return new LorafaError(file, `holds no rows: ${detail}`, fix);
}

/** Checks a row index (a caller's bug when wrong, not the data's). */
export function checkIndex(file: string, i: number, count: number): void {
  if (!Number.isInteger(i) || i < 0 || i >= count) {
    throw new LorafaError(
      file,
      `row index ${i} is out of range: the file holds ${count} rows (indices 0 to ${count - 1})`,
      'this is a bug in the caller, not in the data: ask only for indices below RowSource.count',
    );
  }
}

/** A growable list of non-negative integers below 2^53 (byte offsets, line numbers). */
export class NumberList {
  private data = new Float64Array(1024);
  length = 0;
  push(v: number): void {
    if (this.length === this.data.length) {
      const bigger = new Float64Array(this.data.length * 2);
      bigger.set(this.data);
      this.data = bigger;
    }
    this.data[this.length++] = v;
  }
  /** The values, trimmed to length (the list is not used afterwards). */
  finish(): Float64Array {
    return this.data.length === this.length ? this.data : this.data.slice(0, this.length);
  }
}

/** The most bytes one positioned read may cover when consecutive rows are read together. */
const RUN_BYTES = 8 << 20;

/** Consecutive rows read together: rows [first, first + n), wanted at out[k .. k + n). */
export interface Run {
  readonly k: number;
  readonly first: number;
  readonly n: number;
  /** The rows' bytes; row first + j is buf[offsets[j], offsets[j + 1]). */
  readonly buf: Buffer;
  readonly offsets: number[];
}

/**
 * Reads rows of a line/record format, where row i is the bytes [starts[i], starts[i+1]):
 * consecutive ascending indices share one positioned read (a scan chunk is one read).
 */
export function readRuns(fd: number, file: string, starts: Float64Array, indices: readonly number[]): Run[] {
  const runs: Run[] = [];
  for (let k = 0; k < indices.length; ) {
    const first = indices[k];
    let n = 1;
    while (k + n < indices.length && indices[k + n] === first + n && starts[first + n + 1] - starts[first] <= RUN_BYTES) n++;
    const base = starts[first];
    const buf = readAt(fd, file, base, starts[first + n] - base);
    const offsets: number[] = new Array(n + 1);
    for (let j = 0; j <= n; j++) offsets[j] = starts[first + j] - base;
    runs.push({ k, first, n, buf, offsets });
    k += n;
  }
  return runs;
}

/** readRuns, each run decoded by `decode` into its rows, in the order of `indices`. */
export function readSpans(
  fd: number,
  file: string,
  starts: Float64Array,
  indices: readonly number[],
  decode: (buf: Buffer, offsets: number[], first: number) => Row[],
): Row[] {
  const out: Row[] = new Array(indices.length);
  for (const r of readRuns(fd, file, starts, indices)) {
    const rows = decode(r.buf, r.offsets, r.first);
    for (let j = 0; j < r.n; j++) out[r.k + j] = rows[j];
  }
  return out;
}

/** The parts a reader supplies; `rows` gets indices already checked. */
export interface SourceParts {
  readonly file: string;
  readonly format: DataFormat;
  readonly count: number;
  readonly columns: readonly string[];
  rows(indices: readonly number[]): Row[] | Promise<Row[]>;
  where(i: number): string;
  close(): void;
}

/** Wraps a reader's parts into a RowSource: index checks, scan in chunks, close once. */
export function rowSource(p: SourceParts): RowSource {
  let closed = false;
  const live = () => {
    if (closed) {
      throw new LorafaError(p.file, 'this data source was closed', 'this is a bug in the caller: do not read a RowSource after close()');
    }
  };
  const read = async (indices: readonly number[]): Promise<Row[]> => {
    live();
    for (const i of indices) checkIndex(p.file, i, p.count);
    return indices.length === 0 ? [] : p.rows(indices);
  };
  return {
    file: p.file,
    format: p.format,
    count: p.count,
    columns: p.columns,
    read,
    async scan(onRows, chunk = 1024) {
      if (!Number.isInteger(chunk) || chunk < 1) {
        throw new LorafaError(p.file, `scan chunk size ${chunk} is not a positive integer`, 'this is a bug in the caller: pass a chunk size of 1 or more');
      }
      for (let first = 0; first < p.count; first += chunk) {
        const n = Math.min(chunk, p.count - first);
        const rows = await read(Array.from({ length: n }, (_, j) => first + j));
        await onRows(rows, first);
      }
    },
    where: (i) => p.where(i),
    close() {
      if (!closed) {
        closed = true;
        p.close();
      }
    },
  };
}

/** A byte sequence as text for messages: printable ASCII as is, other bytes as \xNN. */
export function showBytes(b: Uint8Array): string {
  let s = '';
  for (const c of b) s += c >= 0x20 && c < 0x7f && c !== 0x5c ? String.fromCharCode(c) : '\\x' + c.toString(16).padStart(2, '0');
  return `"${s}"`;
}

export const plural = (n: number, one: string, many = one + 's') => `${n} ${n === 1 ? one : many}`;
