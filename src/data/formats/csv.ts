// CSV and TSV through csv-parse: one streaming pass validates every record and records where it
// starts (a byte offset) and on which line; read() re-parses just the requested records' bytes
// with csv-parse's sync API.
//
// Byte offsets come from csv-parse's live `parser.info.bytes`, read at the moment each record is
// produced. Checked empirically (test/data-formats.test.ts): it counts bytes, not characters (é,
// emoji and a UTF-8 BOM do not shift it), and when a record is produced it is the offset just
// past the record's delimiter (or the end of the file for a last record without one) — which is
// where the next record starts, leading blank lines included. Its `info.lines` is not used: it
// counts a CRLF inside a quoted field as two lines. Line numbers are counted here instead, from
// the '\n' bytes before each record's start plus the blank lines csv-parse skipped
// (`info.empty_lines`).
//
// The records are taken from the parser's `push` (overridden on the instance) rather than via
// `on_record`/`info: true`, which build two objects per record and make indexing 2× slower.
import { parse as parseStream, type Parser } from 'csv-parse';
import { parse as parseSync } from 'csv-parse/sync';
import { LorafaError } from '../../ir/errors.ts';
import type { Row, RowSource } from '../rows.ts';
import { closeQuietly, NumberList, noRows, plural, readRuns, readUpTo, refuseGzip, rowSource, type OpenFile } from './common.ts';

const CHUNK = 1 << 18;

interface CsvErrorLike extends Error {
  code?: string;
  empty_lines?: number;
}

/** `chunk`: bytes per read of the indexing pass (tests make it small to cross chunk boundaries). */
export async function openCsv(file: string, { fd, size }: OpenFile, format: 'csv' | 'tsv', chunk = CHUNK): Promise<RowSource> {
  try {
    refuseGzip(file, fd, format);
    return await index(file, fd, size, format, Math.max(8, chunk));
  } catch (e) {
    closeQuietly(fd);
    throw e;
  }
}

function parserOptions(format: 'csv' | 'tsv') {
  return {
    delimiter: format === 'tsv' ? '\t' : ',',
    bom: true,
    relax_column_count: true, // counted here, to name the line and both counts
    skip_empty_lines: true,
    // TSV writers rarely quote: a quote inside an unquoted TSV field is kept as a character.
    relax_quotes: format === 'tsv',
  } as const;
}

const quoteFix = (format: 'csv' | 'tsv') =>
  `enclose a field that contains ${format === 'tsv' ? 'tabs' : 'commas'}, quotes or line breaks in double quotes, and write a quote inside it twice ("")`;

async function index(file: string, fd: number, size: number, format: 'csv' | 'tsv', chunkBytes: number): Promise<RowSource> {
  const options = parserOptions(format);
  const sep = format === 'tsv' ? 'tab' : 'comma';
  const starts = new NumberList(); // starts[k] = byte where data record k starts; one more at the end
  const lines = new NumberList(); // first line of data record k
  let columns: string[] | undefined;
  let failure: Error | undefined;

  // Newline counting: `cursorNl` '\n' bytes before byte `cursorOff`. Only the last two chunks are
  // kept; a record ends at most a few bytes before the chunk being parsed, so never before them.
  const kept: { off: number; buf: Buffer }[] = [];
  let cursorOff = 0;
  let cursorNl = 0;
  const advance = (to: number) => {
    for (const { off, buf } of kept) {
      const end = off + buf.length;
      if (cursorOff >= end || cursorOff >= to) continue;
      const stop = Math.min(to, end) - off;
      let p = cursorOff - off;
      for (;;) {
        const q = buf.indexOf(10, p);
        if (q < 0 || q >= stop) break;
        cursorNl++;
        p = q + 1;
      }
      cursorOff = off + stop;
    }
    if (cursorOff !== to) throw new Error(`csv index: newline cursor at ${cursorOff}, record boundary at ${to}`);
  };

  let startNl = 0; // newlines before the start of the next record
  let startOff = 0; // where the next record starts
  let emptyBefore = 0; // info.empty_lines when the previous record ended
  const firstLine = (empty: number) => 1 + startNl + (empty - emptyBefore);

  const parser: Parser = parseStream(options);
  const push = parser.push.bind(parser);
  parser.push = (record: unknown) => {
    if (record === null) return push(null);
    if (failure) return true;
    const fields = record as string[];
    const { bytes, empty_lines } = parser.info;
    const line = firstLine(empty_lines);
    if (columns === undefined) {
      const seen = new Map<string, number>();
      fields.forEach((name, j) => {
        if (failure) return;
        if (name === '') {
          failure = new LorafaError(
            `${file}:${line}`,
            `column ${j + 1} of the header has an empty name (the first record names the columns: ${fields.map((f) => JSON.stringify(f)).join(sep === 'tab' ? '\t' : ', ')})`,
            'give every column a name in the first line; a file without a header line needs one added',
          );
        } else if (seen.has(name)) {
          failure = new LorafaError(
            `${file}:${line}`,
            `column name ${JSON.stringify(name)} appears twice in the header (columns ${seen.get(name)! + 1} and ${j + 1})`,
            'rename one of the two columns so that every column name is unique',
          );
        }
        seen.set(name, j);
      });
      columns = fields;
    } else {
      if (fields.length !== columns.length) {
        failure = new LorafaError(
          `${file}:${line}`,
          `this row has ${plural(fields.length, 'field')}, but the header (line 1) names ${plural(columns.length, 'column')}`,
          `give every row ${columns.length} ${sep}-separated fields; ${quoteFix(format)}`,
        );
        return true;
      }
      starts.push(startOff);
      lines.push(line);
    }
    advance(bytes);
    startNl = cursorNl;
    startOff = bytes;
    emptyBefore = empty_lines;
    return true;
  };
  parser.on('error', (e: Error) => {
    failure ??= e;
  });
  parser.resume();
  const ended = new Promise<void>((resolve) => {
    parser.on('end', resolve);
    parser.on('error', () => resolve());
    parser.on('close', resolve);
  });

  for (let pos = 0; pos < size && !failure; ) {
    const chunk = readUpTo(fd, pos, Math.min(chunkBytes, size - pos));
    if (chunk.length === 0) break;
    if (kept.length === 2) {
      const old = kept[0];
      if (cursorOff < old.off + old.buf.length) advance(old.off + old.buf.length);
      kept.shift();
    }
    kept.push({ off: pos, buf: chunk });
    pos += chunk.length;
    parser.write(chunk);
    // Lets a parse error (emitted on the next tick) arrive before the next chunk.
    await new Promise<void>((r) => setImmediate(r));
  }
  if (!failure) {
    parser.end();
    await ended;
  } else {
    parser.destroy();
  }
  if (failure) throw translate(file, failure, format, firstLine((failure as CsvErrorLike).empty_lines ?? emptyBefore));
  if (columns === undefined) {
    throw noRows(
      file,
      size === 0 ? 'the file is empty' : 'it holds only blank lines',
      `write a header line naming the columns, then one row per line`,
    );
  }
  const count = lines.length;
  if (count === 0) {
    throw noRows(
      file,
      `it has only the header line (columns: ${columns.join(', ')})`,
      'add data rows below the header line, or point to the file that holds them',
    );
  }
  starts.push(startOff);
  const at = starts.finish();
  // Rows are re-parsed with the record delimiter the whole file was parsed with (csv-parse
  // detects it from the first line: \r\n, \n or \r).
  const readOptions = { ...options, bom: false, record_delimiter: parser.options.record_delimiter as Buffer[] };
  const lineOf = lines.finish();
  const cols = columns;
  return rowSource({
    file,
    format,
    count,
    columns: cols,
    where: (i) => `${file}:${lineOf[i]}`,
    rows(indices) {
      // All requested records in one parse: each run's bytes end with a record delimiter (the
      // file's last record may lack one, so it gets one), and their concatenation is parsed once.
      const runs = readRuns(fd, file, at, indices);
      const delimiter = readOptions.record_delimiter[0];
      const parts = runs.map((r) => (r.first + r.n === count && !endsWith(r.buf, delimiter) ? Buffer.concat([r.buf, delimiter]) : r.buf));
      const records = parseSync(parts.length === 1 ? parts[0] : Buffer.concat(parts), readOptions) as string[][];
      if (records.length !== indices.length || records.some((r) => r.length !== cols.length)) {
        throw new LorafaError(
          `${file}:${lineOf[indices[0]]}`,
          'the file changed after it was opened: its rows are no longer where they were',
          'do not modify a data file while lorafa reads it; run again',
        );
      }
      const out: Row[] = new Array(indices.length);
      let p = 0;
      for (const r of runs) {
        for (let j = 0; j < r.n; j++) {
          const fields = records[p++];
          const row: Record<string, string> = {};
          for (let c = 0; c < cols.length; c++) row[cols[c]] = fields[c];
          out[r.k + j] = row;
        }
      }
      return out;
    },
    close: () => closeQuietly(fd),
  });
}

/** csv-parse's errors (and ours) as LorafaErrors naming the line where the bad record starts. */
function translate(file: string, e: Error, format: 'csv' | 'tsv', line: number): Error {
  if (e instanceof LorafaError) return e;
  const code = (e as CsvErrorLike).code;
  if (code === 'CSV_QUOTE_NOT_CLOSED') {
    return new LorafaError(
      `${file}:${line}`,
      'a quoted field in the record starting on this line is never closed: the file ends inside the quotes',
      `close the field with a double quote; ${quoteFix(format)}`,
    );
  }
  if (typeof code === 'string' && code.startsWith('CSV_')) {
    return new LorafaError(`${file}:${line}`, `not valid ${format.toUpperCase()} (in the record starting on this line): ${e.message}`, quoteFix(format));
  }
  return e;
}

function endsWith(buf: Buffer, tail: Buffer): boolean {
  return buf.length >= tail.length && buf.subarray(buf.length - tail.length).equals(tail);
}
