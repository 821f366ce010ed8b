// JSON Lines: one JSON object per line; blank lines (only spaces, tabs, CR) are skipped. The
// indexing pass parses every line once (to validate it and collect the keys in first-seen order)
// and keeps only where each row starts and its line number.
import { LorafaError } from '../../ir/errors.ts';
import type { Cell, Row, RowSource } from '../rows.ts';
import { closeQuietly, NumberList, noRows, readSpans, readUpTo, refuseGzip, rowSource, type OpenFile } from './common.ts';

const CHUNK = 1 << 20;
const ONE_LINE = 'write each row as one JSON object on its own line, e.g. {"text": "…", "label": 1} (jq -c \'.[]\' rows.json > rows.jsonl converts a JSON array)';

/** `chunk`: bytes per read of the indexing pass (tests make it small to cross chunk boundaries). */
export function openJsonl(file: string, { fd, size }: OpenFile, chunk = CHUNK): RowSource {
  try {
    refuseGzip(file, fd, 'jsonl');
    return index(file, fd, size, Math.max(8, chunk));
  } catch (e) {
    closeQuietly(fd);
    throw e;
  }
}

/** Only JSON whitespace other than '\n' (which ends the line). */
function isBlank(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c !== 0x20 && c !== 0x09 && c !== 0x0d) return false;
  }
  return true;
}

function kindOf(v: unknown): string {
  if (v === null) return 'JSON null';
  if (Array.isArray(v)) return 'a JSON array';
  if (typeof v === 'string') return 'a JSON string';
  if (typeof v === 'number') return 'a JSON number';
  if (typeof v === 'boolean') return 'a JSON boolean';
  return 'a JSON object';
}

/** Whether `v` is, or an array holds (at any depth), a JSON object: a Cell cannot hold one. */
function nestedObject(v: unknown): boolean {
  if (v === null || typeof v !== 'object') return false;
  if (!Array.isArray(v)) return true;
  for (const x of v) if (nestedObject(x)) return true;
  return false;
}

function parseLine(file: string, line: number, text: string): Record<string, Cell> {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    let msg = (e as Error).message;
    if (msg.length > 200) msg = msg.slice(0, 200) + '…';
    throw new LorafaError(`${file}:${line}`, `not valid JSON: ${msg}`, `${ONE_LINE}; a pretty-printed object spanning several lines must be put on one line`);
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v)) {
    throw new LorafaError(`${file}:${line}`, `${kindOf(v)}, expected an object (one row per line, its fields as keys)`, ONE_LINE);
  }
  return v as Record<string, Cell>;
}

function index(file: string, fd: number, size: number, chunkBytes: number): RowSource {
  const starts = new NumberList();
  const lines = new NumberList();
  const keys = new Set<string>();
  let line = 0;
  let pending: Buffer | undefined; // the start of a line that continues into the next chunk
  let pendingOff = 0;

  const onLine = (buf: Buffer, a: number, b: number, off: number) => {
    line++;
    const text = buf.toString('utf8', a, b);
    if (isBlank(text)) return;
    const obj = parseLine(file, line, text);
    for (const k in obj) {
      if (!keys.has(k)) keys.add(k);
      if (nestedObject(obj[k])) {
        throw new LorafaError(
          `${file}:${line}`,
          `field ${JSON.stringify(k)} holds ${Array.isArray(obj[k]) ? 'an array containing a JSON object' : 'a JSON object'}; a row's fields must be strings, numbers, booleans, null or arrays of these`,
          'flatten the object into top-level keys (e.g. "meta_source" instead of {"meta": {"source": …}}), or store it as a JSON string',
        );
      }
    }
    starts.push(off);
    lines.push(line);
  };

  let pos = 0;
  while (pos < size) {
    const chunk = readUpTo(fd, pos, Math.min(chunkBytes, size - pos));
    if (chunk.length === 0) break;
    const chunkOff = pos;
    pos += chunk.length;
    let p = 0;
    if (chunkOff === 0 && chunk.length >= 3 && chunk[0] === 0xef && chunk[1] === 0xbb && chunk[2] === 0xbf) p = 3; // BOM
    for (;;) {
      const q = chunk.indexOf(10, p);
      if (q < 0) break;
      if (pending) {
        const whole = Buffer.concat([pending, chunk.subarray(0, q)]);
        onLine(whole, 0, whole.length, pendingOff);
        pending = undefined;
      } else onLine(chunk, p, q, chunkOff + p);
      p = q + 1;
    }
    if (p < chunk.length) {
      if (pending) pending = Buffer.concat([pending, chunk.subarray(p)]);
      else {
        pending = Buffer.from(chunk.subarray(p));
        pendingOff = chunkOff + p;
      }
    }
  }
  if (pending) onLine(pending, 0, pending.length, pendingOff);
  const count = lines.length;
  if (count === 0) {
    throw noRows(file, size === 0 ? 'the file is empty' : 'it holds only blank lines', `${ONE_LINE}`);
  }
  starts.push(size);
  const at = starts.finish();
  const lineOf = lines.finish();
  return rowSource({
    file,
    format: 'jsonl',
    count,
    columns: [...keys],
    where: (i) => `${file}:${lineOf[i]}`,
    rows(indices) {
      return readSpans(fd, file, at, indices, (buf, offsets, first) => {
        const rows: Row[] = [];
        for (let j = 0; j + 1 < offsets.length; j++) {
          // The span runs to the next row: this row's line, then any blank lines (JSON whitespace).
          rows.push(parseLine(file, lineOf[first + j], buf.toString('utf8', offsets[j], offsets[j + 1])));
        }
        return rows;
      });
    },
    close: () => closeQuietly(fd),
  });
}
