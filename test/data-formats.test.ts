// The data-file readers behind openRows (src/data/rows.ts, src/data/formats/): every format's
// count, columns, read() in any order, scan() in chunks and where(); random tables written as
// CSV, TSV, JSONL and Parquet read back equal; every defect a reader must report, by its exact
// message parts; and a 40 MB CSV/JSONL indexed in a child process with a 24 MB heap.
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { gzipSync } from 'node:zlib';
import fc from 'fast-check';
import * as hyparquet from 'hyparquet';
import { parquetWriteFile, type ColumnSource } from 'hyparquet-writer';
import { afterAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { LorafaError } from '../src/ir/errors.ts';
import { openRows, type Cell, type Row, type RowSource } from '../src/data/rows.ts';
import { openFile } from '../src/data/formats/common.ts';
import { openCsv } from '../src/data/formats/csv.ts';
import { openJsonl } from '../src/data/formats/jsonl.ts';
import { openText } from '../src/data/formats/text.ts';

// Counts row-group decodes (the reader must decode only the groups its rows are in).
vi.mock('hyparquet', async (importOriginal) => {
  const m = await importOriginal<typeof import('hyparquet')>();
  return { ...m, parquetReadObjects: vi.fn(m.parquetReadObjects) };
});

const ROOT = resolve(import.meta.dirname, '..');
const TMP = mkdtempSync(join(tmpdir(), 'lorafa-formats-'));
afterAll(() => rmSync(TMP, { recursive: true, force: true }));

let files = 0;
/** A fresh path in the temp dir whose name ends with `name`. */
const fresh = (name: string) => join(TMP, `${files++}-${name}`);
/** Writes `content` to a fresh path ending with `name`. */
function put(name: string, content: string | Uint8Array): string {
  const p = fresh(name);
  writeFileSync(p, content);
  return p;
}
const range = (n: number, from = 0) => Array.from({ length: n }, (_, i) => from + i);

/** The LorafaError `f` rejects with (fails the test when it resolves or throws something else). */
async function lorafaError(f: () => unknown): Promise<LorafaError> {
  try {
    await f();
  } catch (e) {
    expect(e).toBeInstanceOf(LorafaError);
    return e as LorafaError;
  }
  throw new Error('expected a LorafaError, nothing was thrown');
}

/** Asserts the error's where (exactly), that its problem has every part, and its fix has `fix`. */
async function expectError(f: () => unknown, where: string, problem: (string | RegExp)[], fix: string | RegExp): Promise<LorafaError> {
  const e = await lorafaError(f);
  expect(e.where).toBe(where);
  for (const part of problem) {
    if (typeof part === 'string') expect(e.problem).toContain(part);
    else expect(e.problem).toMatch(part);
  }
  expect(e.fix).toBeTruthy();
  if (typeof fix === 'string') expect(e.fix).toContain(fix);
  else expect(e.fix).toMatch(fix);
  expect(e.message).toBe(`${where}: ${e.problem}\n  fix: ${e.fix}`);
  return e;
}

/** Every row through scan(chunk), checking `first` and that chunks are full but the last. */
async function scanAll(src: RowSource, chunk?: number): Promise<Row[]> {
  const seen: Row[] = [];
  const size = chunk ?? 1024;
  await src.scan((rows, first) => {
    expect(first).toBe(seen.length);
    expect(rows.length).toBe(Math.min(size, src.count - first));
    seen.push(...rows);
  }, chunk);
  return seen;
}

/**
 * The checks every format gets: count, columns, read() out of order with repeats, scan() in
 * chunks of 1, 2, 3 and the default, where(), out-of-range reads, and read() after close().
 */
async function checkSource(src: RowSource, file: string, columns: readonly string[], expected: readonly Row[], where: (i: number) => string): Promise<void> {
  const n = expected.length;
  expect(src.file).toBe(file);
  expect(src.count).toBe(n);
  expect(src.columns).toEqual(columns);
  const order = [n - 1, 0, n >> 1, 0, n - 1, n - 1, ...range(n).reverse()];
  expect(await src.read(order)).toEqual(order.map((i) => expected[i]));
  expect(await src.read([])).toEqual([]);
  for (const chunk of [1, 2, 3, undefined]) expect(await scanAll(src, chunk)).toEqual(expected);
  for (let i = 0; i < n; i++) expect(src.where(i)).toBe(where(i));
  for (const bad of [n, -1, 0.5]) {
    await expectError(() => src.read([0, bad]), file, [`row index ${bad} is out of range: the file holds ${n} rows (indices 0 to ${n - 1})`], 'bug in the caller');
  }
  src.close();
  await expectError(() => src.read([0]), file, ['this data source was closed'], 'bug in the caller');
  src.close(); // twice is harmless
}

// ---------------------------------------------------------------------------------------------
// Writers for the random-table properties.

const UNITS = ['a', 'b', 'Z', ' ', ',', '"', '\t', '\n', '\r\n', '\r', 'é', '😀', '1', '.', '-'];
const text = fc.string({ unit: fc.constantFrom(...UNITS), maxLength: 8 });
const number = fc.oneof(fc.integer({ min: -1e6, max: 1e6 }), fc.double({ noNaN: true, noDefaultInfinity: true, min: -1e12, max: 1e12 })).map((x) => (Object.is(x, -0) ? 0 : x));

interface Table {
  readonly names: string[];
  /** 's' (string) or 'n' (number) per column. */
  readonly kinds: ('s' | 'n')[];
  readonly rows: (string | number | null)[][];
}

/** Random tables: 1–4 uniquely named columns, 1–12 rows; `nulls` allows null cells. */
function tables(names: fc.Arbitrary<string>, nulls: boolean): fc.Arbitrary<Table> {
  return fc
    .uniqueArray(names, { minLength: 1, maxLength: 4 })
    .chain((ns) =>
      fc.tuple(fc.constant(ns), fc.array(fc.constantFrom<'s' | 'n'>('s', 'n'), { minLength: ns.length, maxLength: ns.length })),
    )
    .chain(([ns, kinds]) => {
      const cell = (k: 's' | 'n') => {
        const v: fc.Arbitrary<string | number | null> = k === 's' ? text : number;
        return nulls ? fc.option(v, { nil: null, freq: 5 }) : v;
      };
      return fc.record({
        names: fc.constant(ns),
        kinds: fc.constant(kinds),
        rows: fc.array(fc.tuple(...kinds.map(cell)), { minLength: 1, maxLength: 12 }),
      });
    });
}

interface Layout {
  readonly crlf: boolean;
  readonly bom: boolean;
  readonly finalNewline: boolean;
  /** Blank lines before each data row (cycled). */
  readonly blanks: number[];
}
const layouts = fc.record({
  crlf: fc.boolean(),
  bom: fc.boolean(),
  finalNewline: fc.boolean(),
  blanks: fc.array(fc.nat(2), { minLength: 1, maxLength: 5 }),
});

/**
 * Lays out records (already serialised) as a file: returns the text and each data record's first
 * line (1-based), counting every '\n' before it.
 */
function layOut(header: string | undefined, records: string[], l: Layout): { text: string; lines: number[] } {
  const nl = l.crlf ? '\r\n' : '\n';
  let out = l.bom ? '\uFEFF' : '';
  const lines: number[] = [];
  const lineNow = () => 1 + (out.match(/\n/g)?.length ?? 0);
  if (header !== undefined) out += header + nl;
  records.forEach((r, k) => {
    out += nl.repeat(l.blanks[k % l.blanks.length]);
    lines.push(lineNow());
    out += r + (k < records.length - 1 || l.finalNewline ? nl : '');
  });
  return { text: out, lines };
}

/** A CSV/TSV field, quoted when it must be (RFC 4180: quotes inside doubled). */
function field(v: string | number, sep: string): string {
  const s = String(v);
  return s === '' || s.includes(sep) || /["\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

// ---------------------------------------------------------------------------------------------
describe('openRows: formats and options', () => {
  it('picks the format from opts.format, else the name, else fails with unknownFormat', async () => {
    const file = put('rows.data', '{"a": 1}\n');
    await expectError(() => openRows(file), file, ['cannot tell the data format from the file name'], '--format');
    const src = await openRows(file, { format: 'jsonl' });
    expect(src.format).toBe('jsonl');
    expect(await src.read([0])).toEqual([{ a: 1 }]);
    src.close();
    const asText = await openRows(file, { format: 'text' });
    expect(await asText.read([0])).toEqual([{ text: '{"a": 1}' }]);
    asText.close();
  });

  it('a missing file, a directory, and a labels option on a format without one', async () => {
    const missing = join(TMP, 'no-such-file.csv');
    await expectError(() => openRows(missing), missing, ['no such data file'], 'check the path');
    const missingIdx = join(TMP, 'no-such-images-idx3-ubyte');
    await expectError(() => openRows(missingIdx), missingIdx, ['no such data file'], 'check the path');
    const dir = fresh('dataset.csv');
    mkdirSync(dir);
    writeFileSync(join(dir, 'train.csv'), 'a\n1\n');
    writeFileSync(join(dir, 'notes.md'), '');
    await expectError(() => openRows(dir), dir, ['is a directory, not a data file'], 'name one file inside it (it holds train.csv)');
    const csv = put('t.csv', 'a\n1\n');
    const labels = put('y.npy', '');
    const gz = put('data.gz', gzipSync('a\n1\n'));
    await expectError(() => openRows(gz, { format: 'csv' }), gz, ['is gzip-compressed'], `gunzip -k ${gz}, then name the result with its .csv extension`);
    await expectError(() => openRows(csv, { labels }), csv, [`a labels file (${labels}) goes only with IDX or .npy data`], 'drop the labels option');
  });

  it('a gzipped CSV/JSONL/text/npy is refused with the gunzip fix', async () => {
    for (const [name, format] of [['t.csv.gz', 'csv'], ['t.jsonl.gz', 'jsonl'], ['t.txt.gz', 'text'], ['x.npy.gz', 'npy'], ['t.safetensors.gz', 'safetensors']] as const) {
      const file = put(name, gzipSync('a\n1\n'));
      await expectError(() => openRows(file), file, [`is gzip-compressed; ${format} data is read by row`], `gunzip -k ${file}`);
    }
  });
});

// ---------------------------------------------------------------------------------------------
describe('CSV and TSV', () => {
  it('csv: quoted commas, quotes and line breaks, a BOM, CRLF, blank lines, é and emoji', async () => {
    const content =
      '\uFEFFname,text,n\r\n' +
      'a,"hello, world",1\r\n' +
      'b,"she said ""hi""",2\r\n' +
      '\r\n' +
      'c,"two\nlines é😀",3\r\n' +
      'é😀,,\r\n' +
      'd,"x\r\ny",4';
    const file = put('t.csv', content);
    const expected = [
      { name: 'a', text: 'hello, world', n: '1' },
      { name: 'b', text: 'she said "hi"', n: '2' },
      { name: 'c', text: 'two\nlines é😀', n: '3' },
      { name: 'é😀', text: '', n: '' },
      { name: 'd', text: 'x\r\ny', n: '4' },
    ];
    const lines = [2, 3, 5, 7, 8];
    await checkSource(await openRows(file), file, ['name', 'text', 'n'], expected, (i) => `${file}:${lines[i]}`);
  });

  it('tsv: tabs inside quotes; a quote inside an unquoted field is a character', async () => {
    const file = put('t.tsv', 'a\tb\n1\t"x\ty"\n2\tsay "hi"\n3\t""\n');
    const expected = [
      { a: '1', b: 'x\ty' },
      { a: '2', b: 'say "hi"' },
      { a: '3', b: '' },
    ];
    const src = await openRows(file);
    expect(src.format).toBe('tsv');
    await checkSource(src, file, ['a', 'b'], expected, (i) => `${file}:${i + 2}`);
  });

  it('a single-column CSV: "" is an empty value, a blank line is skipped', async () => {
    const file = put('one.csv', 'x\n""\n\nb\n');
    await checkSource(await openRows(file), file, ['x'], [{ x: '' }, { x: 'b' }], (i) => `${file}:${[2, 4][i]}`);
  });

  it('property: random tables written as CSV and TSV read back equal (read and scan), with their lines', async () => {
    await fc.assert(
      fc.asyncProperty(tables(fc.string({ unit: fc.constantFrom(...UNITS), minLength: 1, maxLength: 5 }), false), layouts, fc.constantFrom('csv', 'tsv'), fc.integer({ min: 8, max: 64 }), async (t, l, format, chunk) => {
        const sep = format === 'tsv' ? '\t' : ',';
        const { text: content, lines } = layOut(
          t.names.map((n) => field(n, sep)).join(sep),
          t.rows.map((r) => r.map((v) => field(v!, sep)).join(sep)),
          l,
        );
        const file = put(`t.${format}`, content);
        const expected = t.rows.map((r) => Object.fromEntries(t.names.map((n, j) => [n, String(r[j])])));
        // Through openRows (one chunk), and with small chunks so records cross chunk boundaries.
        for (const src of [await openRows(file), await openCsv(file, openFile(file), format, chunk)]) {
          expect(src.count).toBe(expected.length);
          expect(src.columns).toEqual(t.names);
          const order = range(expected.length).reverse();
          expect(await src.read(order)).toEqual(order.map((i) => expected[i]));
          expect(await scanAll(src, 5)).toEqual(expected);
          expect(range(expected.length).map((i) => src.where(i))).toEqual(lines.map((n) => `${file}:${n}`));
          src.close();
        }
      }),
    );
  });

  it('errors: wrong field count, unterminated quote, bad quote, duplicate/empty names, no rows', async () => {
    let file = put('count.csv', 'a,b\n1,2\n"x\ny",2\n3,4,5\n');
    await expectError(() => openRows(file), `${file}:5`, ['this row has 3 fields, but the header (line 1) names 2 columns'], 'give every row 2 comma-separated fields');
    file = put('count.tsv', 'a\tb\tc\n1\t2\n');
    await expectError(() => openRows(file), `${file}:2`, ['this row has 2 fields, but the header (line 1) names 3 columns'], 'give every row 3 tab-separated fields');
    file = put('quote.csv', 'a,b\n1,2\n\n3,"never closed\n4,5\n');
    await expectError(() => openRows(file), `${file}:4`, ['a quoted field in the record starting on this line is never closed'], 'close the field with a double quote');
    file = put('badquote.csv', 'a,b\n1,2\n3,"x"y\n');
    await expectError(() => openRows(file), `${file}:3`, ['not valid CSV (in the record starting on this line): Invalid Closing Quote'], 'write a quote inside it twice');
    file = put('dup.csv', 'a,b,a\n1,2,3\n');
    await expectError(() => openRows(file), `${file}:1`, ['column name "a" appears twice in the header (columns 1 and 3)'], 'rename one of the two columns');
    file = put('emptyname.csv', 'a,,c\n1,2,3\n');
    await expectError(() => openRows(file), `${file}:1`, ['column 2 of the header has an empty name'], 'give every column a name');
    file = put('header.csv', 'a,b\n\n');
    await expectError(() => openRows(file), file, ['holds no rows: it has only the header line (columns: a, b)'], 'add data rows below the header line');
    file = put('empty.csv', '');
    await expectError(() => openRows(file), file, ['holds no rows: the file is empty'], 'write a header line');
    file = put('blank.csv', '\n\n');
    await expectError(() => openRows(file), file, ['holds no rows: it holds only blank lines'], 'write a header line');
  });
});

// ---------------------------------------------------------------------------------------------
describe('JSONL', () => {
  it('keys in first-seen order over the whole file, missing keys, blank lines, a BOM, CRLF, arrays', async () => {
    const file = put('t.jsonl', '\uFEFF{"b": 1, "a": "x"}\r\n\r\n  \n{"a": null, "c": [1, "é😀", [true]]}\r\n{"d": "line\\nbreak", "b": 2.5}');
    const expected: Row[] = [
      { b: 1, a: 'x' },
      { a: null, c: [1, 'é😀', [true]] },
      { d: 'line\nbreak', b: 2.5 },
    ];
    const src = await openRows(file);
    expect(src.format).toBe('jsonl');
    await checkSource(src, file, ['b', 'a', 'c', 'd'], expected, (i) => `${file}:${[1, 4, 5][i]}`);
    const nd = put('t.ndjson', '{"z": 0}\n');
    const s2 = await openRows(nd);
    expect(await s2.read([0])).toEqual([{ z: 0 }]);
    s2.close();
  });

  it('property: random tables written as JSONL read back equal (read and scan), with their lines', async () => {
    await fc.assert(
      fc.asyncProperty(tables(fc.string({ unit: fc.constantFrom(...UNITS), minLength: 1, maxLength: 5 }), true), layouts, fc.integer({ min: 8, max: 64 }), fc.infiniteStream(fc.boolean()), async (t, l, chunk, keep) => {
        const coin = keep[Symbol.iterator]();
        // Rows may lack keys: each cell is dropped at random.
        const objects = t.rows.map((r) => {
          const o: Record<string, Cell> = {};
          t.names.forEach((n, j) => {
            if (coin.next().value) o[n] = r[j];
          });
          return o;
        });
        const { text: content, lines } = layOut(undefined, objects.map((o) => JSON.stringify(o)), l);
        const file = put('t.jsonl', content);
        const columns: string[] = [];
        for (const o of objects) for (const k of Object.keys(o)) if (!columns.includes(k)) columns.push(k);
        for (const src of [await openRows(file), openJsonl(file, openFile(file), chunk)]) {
          expect(src.count).toBe(objects.length);
          expect(src.columns).toEqual(columns);
          const order = range(objects.length).reverse();
          expect(await src.read(order)).toEqual(order.map((i) => objects[i]));
          expect(await scanAll(src, 4)).toEqual(objects);
          expect(range(objects.length).map((i) => src.where(i))).toEqual(lines.map((n) => `${file}:${n}`));
          src.close();
        }
      }),
    );
  });

  it('errors: invalid JSON, a line that is not an object, a nested object, no rows', async () => {
    let file = put('bad.jsonl', '{"a": 1}\n\n{"a": }\n');
    await expectError(() => openRows(file), `${file}:3`, [/^not valid JSON: .*(Unexpected token|Unexpected)/], 'one JSON object on its own line');
    for (const [line, kind] of [
      ['[1, 2]', 'a JSON array'],
      ['"text"', 'a JSON string'],
      ['3', 'a JSON number'],
      ['null', 'JSON null'],
      ['true', 'a JSON boolean'],
    ]) {
      file = put('kind.jsonl', `{"a": 1}\n${line}\n`);
      await expectError(() => openRows(file), `${file}:2`, [`${kind}, expected an object`], 'write each row as one JSON object on its own line');
    }
    file = put('pretty.jsonl', '{\n  "a": 1\n}\n');
    await expectError(() => openRows(file), `${file}:1`, ['not valid JSON'], 'must be put on one line');
    file = put('nested.jsonl', '{"a": 1}\n{"a": 2, "m": [{"role": "user"}]}\n');
    await expectError(() => openRows(file), `${file}:2`, ['field "m" holds an array containing a JSON object'], 'flatten the object into top-level keys');
    file = put('nested2.jsonl', '{"meta": {"x": 1}}\n');
    await expectError(() => openRows(file), `${file}:1`, ['field "meta" holds a JSON object'], 'store it as a JSON string');
    file = put('empty.jsonl', '');
    await expectError(() => openRows(file), file, ['holds no rows: the file is empty'], 'one JSON object on its own line');
    file = put('blank.jsonl', '\n \r\n\t\n');
    await expectError(() => openRows(file), file, ['holds no rows: it holds only blank lines'], 'one JSON object on its own line');
  });
});

// ---------------------------------------------------------------------------------------------
describe('text', () => {
  it('every line is a row (blank lines included), CRLF reads as LF, no row after a final newline', async () => {
    const file = put('t.txt', '\uFEFFfirst\r\n\nthird é😀\r\n\r\nlast\n');
    const expected = ['first', '', 'third é😀', '', 'last'].map((text) => ({ text }));
    const src = await openRows(file);
    expect(src.format).toBe('text');
    await checkSource(src, file, ['text'], expected, (i) => `${file}:${i + 1}`);
    for (const [content, rows] of [
      ['a', ['a']],
      ['a\n', ['a']],
      ['a\n\n', ['a', '']],
      ['\n', ['']],
      ['\n\nb', ['', '', 'b']],
    ] as const) {
      const s = await openRows(put('t.txt', content));
      expect(await s.read(range(s.count))).toEqual(rows.map((text) => ({ text })));
      s.close();
    }
  });

  it('property: lines joined with LF or CRLF read back as the lines', async () => {
    const line = fc.string({ unit: fc.constantFrom('a', ' ', ',', '"', '\t', 'é', '😀', '\r'), maxLength: 6 }).filter((s) => !s.endsWith('\r'));
    await fc.assert(
      fc.asyncProperty(fc.array(line, { minLength: 1, maxLength: 15 }), fc.boolean(), fc.boolean(), fc.integer({ min: 8, max: 40 }), async (rows, crlf, final, chunk) => {
        const content = rows.join(crlf ? '\r\n' : '\n') + (final || rows[rows.length - 1] === '' ? (crlf ? '\r\n' : '\n') : '');
        const file = put('p.txt', content);
        const expected = rows.map((text) => ({ text }));
        for (const src of [await openRows(file), openText(file, openFile(file), chunk)]) {
          expect(src.count).toBe(rows.length);
          expect(await scanAll(src, 3)).toEqual(expected);
          const order = range(rows.length).reverse();
          expect(await src.read(order)).toEqual(order.map((i) => expected[i]));
          src.close();
        }
      }),
    );
  });

  it('an empty text file holds no rows', async () => {
    const file = put('empty.txt', '');
    await expectError(() => openRows(file), file, ['holds no rows: the file is empty'], 'one example per line');
  });
});

// ---------------------------------------------------------------------------------------------
describe('Parquet', () => {
  const readObjects = vi.mocked(hyparquet.parquetReadObjects);
  beforeEach(() => {
    readObjects.mockClear();
  });

  const columnData = (): ColumnSource[] => [
    { name: 's', data: ['a', null, 'é😀', 'x,"y"\nz', '', 'f', 'g', 'h'], type: 'STRING' },
    { name: 'n', data: [1.5, 2, null, -3, 4, 5e-7, 6, 7], type: 'DOUBLE' },
    { name: 'i', data: [1n, -2n, 3n, 2n ** 53n - 1n, 5n, 6n, 7n, 8n], type: 'INT64' },
    { name: 'b', data: [true, false, null, true, false, true, true, false], type: 'BOOLEAN' },
    { name: 'l', data: [[1, 2], [], null, [3], [4, 5, 6], [7], [8], [9]] },
  ];
  const expected: Row[] = [
    { s: 'a', n: 1.5, i: 1, b: true, l: [1, 2] },
    { s: null, n: 2, i: -2, b: false, l: [] },
    { s: 'é😀', n: null, i: 3, b: null, l: null },
    { s: 'x,"y"\nz', n: -3, i: 2 ** 53 - 1, b: true, l: [3] },
    { s: '', n: 4, i: 5, b: false, l: [4, 5, 6] },
    { s: 'f', n: 5e-7, i: 6, b: true, l: [7] },
    { s: 'g', n: 6, i: 7, b: true, l: [8] },
    { s: 'h', n: 7, i: 8, b: false, l: [9] },
  ];

  it('count, columns, values (INT64 → number, lists → arrays, nulls), rows across row groups', async () => {
    const file = fresh('t.parquet');
    parquetWriteFile({ filename: file, columnData: columnData(), rowGroupSize: 3 });
    const src = await openRows(file);
    expect(src.format).toBe('parquet');
    await checkSource(src, file, ['s', 'n', 'i', 'b', 'l'], expected, (i) => `${file} row ${i}`);
  });

  it('decodes only the row groups its rows are in, and keeps the last two decoded (past the byte budget)', async () => {
    const file = fresh('groups.parquet');
    parquetWriteFile({ filename: file, columnData: columnData(), rowGroupSize: 3 }); // groups [0,3) [3,6) [6,8)
    const src = await openRows(file, { cacheBytes: 1 });
    const decoded = () => readObjects.mock.calls.map(([o]) => [o.rowStart, o.rowEnd]);
    expect(await src.read([7])).toEqual([expected[7]]);
    expect(decoded()).toEqual([[6, 8]]);
    expect(await src.read([0, 7, 1])).toEqual([expected[0], expected[7], expected[1]]);
    expect(decoded()).toEqual([[6, 8], [0, 3]]);
    expect(await src.read([6, 2, 7, 0])).toEqual([expected[6], expected[2], expected[7], expected[0]]); // both cached
    expect(decoded()).toHaveLength(2);
    // Used last: [6, 8), then [0, 3); a third group evicts the least recently used, [6, 8).
    expect(await src.read([4])).toEqual([expected[4]]);
    expect(decoded()).toEqual([[6, 8], [0, 3], [3, 6]]);
    expect(await src.read([5, 0])).toEqual([expected[5], expected[0]]); // both still decoded; [0, 3) used last
    expect(decoded()).toHaveLength(3);
    expect(await src.read([7])).toEqual([expected[7]]); // evicted: decoded again, evicting [3, 6)
    expect(decoded()).toEqual([[6, 8], [0, 3], [3, 6], [6, 8]]);
    expect(await src.read([3])).toEqual([expected[3]]);
    expect(decoded()).toEqual([[6, 8], [0, 3], [3, 6], [6, 8], [3, 6]]);
    src.close();
  });

  it('within the byte budget (the default 256 MiB), every row group is decoded once however the reads jump', async () => {
    const file = fresh('groups-all.parquet');
    parquetWriteFile({ filename: file, columnData: columnData(), rowGroupSize: 3 });
    const src = await openRows(file);
    const before = readObjects.mock.calls.length;
    for (const idx of [[7], [0, 7, 1], [4], [5, 0], [7], [3], [2, 6]]) expect(await src.read(idx)).toEqual(idx.map((i) => expected[i]));
    expect(readObjects.mock.calls.length - before).toBe(3);
    src.close();
  });

  it('property: random tables written with hyparquet-writer read back equal (read and scan)', async () => {
    const name = fc.string({ unit: fc.constantFrom('a', 'b', 'c', '_', 'é'), minLength: 1, maxLength: 4 });
    await fc.assert(
      fc.asyncProperty(tables(name, true), fc.integer({ min: 1, max: 7 }), async (t, rowGroupSize) => {
        const file = fresh('p.parquet');
        parquetWriteFile({
          filename: file,
          rowGroupSize,
          columnData: t.names.map((n, j) => ({ name: n, data: t.rows.map((r) => r[j]), type: t.kinds[j] === 's' ? 'STRING' : 'DOUBLE' })),
        });
        const expected = t.rows.map((r) => Object.fromEntries(t.names.map((n, j) => [n, r[j]])));
        const src = await openRows(file);
        expect(src.count).toBe(expected.length);
        expect(src.columns).toEqual(t.names);
        const order = range(expected.length).reverse();
        expect(await src.read(order)).toEqual(order.map((i) => expected[i]));
        expect(await scanAll(src, 4)).toEqual(expected);
        src.close();
      }),
    );
  });

  it('errors: not Parquet, truncated, a bad footer, an unsafe INT64, a struct value', async () => {
    let file = put('csv.parquet', 'a,b\n1,2\n');
    await expectError(() => openRows(file), file, ['not a Parquet file: it starts with "a,b\\x0a", not the magic bytes "PAR1"'], 'a download error page');
    file = put('short.parquet', 'PAR1PAR1');
    await expectError(() => openRows(file), file, ['truncated Parquet file: 8 bytes, too short for the footer'], 'fetch or write it again');
    const good = fresh('good.parquet');
    parquetWriteFile({ filename: good, columnData: columnData() });
    const bytes = new Uint8Array(readFileSync(good));
    file = put('cut.parquet', bytes.subarray(0, bytes.length - 40));
    await expectError(() => openRows(file), file, [/^truncated Parquet file: it does not end with the magic bytes "PAR1" \(it ends with ".*"\), so its footer is missing$/], 'cut short');
    const claims = bytes.slice();
    new DataView(claims.buffer).setUint32(claims.length - 8, claims.length, true);
    file = put('claims.parquet', claims);
    await expectError(() => openRows(file), file, [`truncated Parquet file: its footer claims ${claims.length} bytes, but the file holds only ${claims.length} bytes`], 'fetch or write it again');
    const garbled = bytes.slice();
    const footer = new DataView(garbled.buffer).getUint32(garbled.length - 8, true);
    garbled.fill(0xff, garbled.length - 8 - footer, garbled.length - 8);
    file = put('garbled.parquet', garbled);
    await expectError(() => openRows(file), file, [/^corrupt Parquet (footer|schema): /], 'fetch or write it again');
    file = put('empty.parquet', '');
    await expectError(() => openRows(file), file, ['holds no rows: the file is empty'], 'to_parquet');

    file = fresh('big.parquet');
    parquetWriteFile({ filename: file, columnData: [{ name: 'id', data: [1n, 2n ** 60n, -(2n ** 53n)], type: 'INT64' }] });
    const src = await openRows(file);
    expect(await src.read([0])).toEqual([{ id: 1 }]);
    await expectError(() => src.read([1]), `${file} row 1`, [`column "id" holds the 64-bit integer ${2n ** 60n}, beyond what a JavaScript number holds exactly`], 'store the column as float64');
    await expectError(() => src.read([0, 2]), `${file} row 2`, [`column "id" holds the 64-bit integer ${-(2n ** 53n)}`], 'within ±2^53−1');
    src.close();

    file = fresh('json.parquet');
    parquetWriteFile({ filename: file, columnData: [{ name: 'meta', data: [{ source: 'web', n: 1 }], type: 'JSON' }] });
    const js = await openRows(file);
    await expectError(() => js.read([0]), `${file} row 0`, ['column "meta" holds a struct or map (an object with keys source, n)'], 'flatten the struct into top-level columns');
    js.close();
  });
});

// ---------------------------------------------------------------------------------------------
// IDX

function idx(dims: number[], data: Uint8Array, type = 0x08): Buffer {
  const head = Buffer.alloc(4 + 4 * dims.length);
  head[2] = type;
  head[3] = dims.length;
  dims.forEach((d, i) => head.writeUInt32BE(d, 4 + 4 * i));
  return Buffer.concat([head, data]);
}
const bytesOf = (n: number, seed: number) => Uint8Array.from({ length: n }, (_, i) => (i * 37 + seed * 101 + 11) % 256);
const pixels = (b: Uint8Array) => Float32Array.from(b, (v) => v / 255);

describe('IDX', () => {
  const N = 5;
  const images = bytesOf(N * 2 * 3, 1);
  const labels = Uint8Array.from([3, 0, 9, 1, 7]);
  const expected = range(N).map((i) => ({ x: pixels(images.subarray(i * 6, i * 6 + 6)), label: labels[i] }));

  it('images [N, 2, 3] → "x" (Float32Array, value/255, flattened); the labels file beside them → "label"', async () => {
    const file = fresh('train-images-idx3-ubyte');
    writeFileSync(file, idx([N, 2, 3], images));
    writeFileSync(file.replace('-images-idx3-', '-labels-idx1-'), idx([N], labels));
    const src = await openRows(file);
    expect(src.format).toBe('idx');
    const rows = await src.read([4]);
    expect(rows[0].x).toBeInstanceOf(Float32Array);
    expect(rows[0].x).toEqual(pixels(images.subarray(24, 30)));
    await checkSource(src, file, ['x', 'label'], expected, (i) => `${file} row ${i}`);
  });

  it('gzipped images and labels (.gz, as Debian ships Fashion-MNIST); an explicit labels option', async () => {
    const file = fresh('t10k-images-idx3-ubyte.gz');
    writeFileSync(file, gzipSync(idx([N, 2, 3], images)));
    writeFileSync(file.replace('-images-idx3-', '-labels-idx1-'), gzipSync(idx([N], labels)));
    await checkSource(await openRows(file), file, ['x', 'label'], expected, (i) => `${file} row ${i}`);
    // Explicit labels win (here a raw file named otherwise); no labels beside → no "label" column.
    const plain = put('digits.idx', idx([N, 2, 3], images));
    await checkSource(await openRows(plain), plain, ['x'], expected.map(({ x }) => ({ x })), (i) => `${plain} row ${i}`);
    const other = put('y.idx', idx([N], labels.map((v) => 9 - v)));
    await checkSource(await openRows(plain, { labels: other }), plain, ['x', 'label'], expected.map(({ x }, i) => ({ x, label: 9 - labels[i] })), (i) => `${plain} row ${i}`);
  });

  it('a 1-D IDX file alone → scalar "x" (its bytes, unscaled); 2-D → vectors', async () => {
    const file = put('labels.idx', idx([N], labels));
    await checkSource(await openRows(file), file, ['x'], range(N).map((i) => ({ x: labels[i] })), (i) => `${file} row ${i}`);
    const two = put('two.idx', idx([3, 4], bytesOf(12, 2)));
    await checkSource(await openRows(two), two, ['x'], range(3).map((i) => ({ x: pixels(bytesOf(12, 2).subarray(i * 4, i * 4 + 4)) })), (i) => `${two} row ${i}`);
  });

  it('errors: count mismatch, truncated, extra bytes, bad magic, other dtypes, non-1-D labels, corrupt gzip, empty', async () => {
    const file = fresh('m-images-idx3-ubyte');
    writeFileSync(file, idx([N, 2, 3], images));
    const lab = file.replace('-images-idx3-', '-labels-idx1-');
    writeFileSync(lab, idx([4], labels.subarray(0, 4)));
    await expectError(() => openRows(file), file, [`holds ${N} rows, but its labels file ${lab} holds 4 labels`], 'pair the data with its own labels file');
    let bad = put('cut-images-idx3-ubyte', idx([N, 2, 3], images).subarray(0, 40));
    await expectError(() => openRows(bad), bad, ['truncated IDX file: is 40 bytes, expected 46 (16-byte header + 5×2×3 bytes)'], 'fetch it again');
    bad = put('cutgz-images-idx3-ubyte.gz', gzipSync(idx([N, 2, 3], images).subarray(0, 40)));
    await expectError(() => openRows(bad), bad, ['truncated IDX file: gunzips to 40 bytes, expected 46'], 'fetch it again');
    bad = put('head.idx', idx([N, 2, 3], images).subarray(0, 10));
    await expectError(() => openRows(bad), bad, ['truncated IDX file: is 10 bytes, shorter than the 16-byte header of a 3-dimensional IDX file'], 'fetch it again');
    bad = put('extra.idx', Buffer.concat([idx([N], labels), Buffer.from([1, 2])]));
    await expectError(() => openRows(bad), bad, ['2 extra bytes after the data: is 15 bytes, expected 13'], 'fetch it again');
    bad = put('magic.idx', Buffer.from('PK\x03\x04 not idx'));
    await expectError(() => openRows(bad), bad, ['bad IDX magic number 0x504b0304: an IDX file starts with two zero bytes'], 'IDX file');
    bad = put('float.idx', idx([2], new Uint8Array(8), 0x0d));
    await expectError(() => openRows(bad), bad, ['IDX element type 0x0d (32-bit floats) is not supported; only unsigned bytes (0x08) are'], '.npy');
    const lab3 = put('lab3.idx', idx([N, 1, 1], labels));
    await expectError(() => openRows(put('x.idx', idx([N], labels)), { labels: lab3 }), lab3, ['a labels file must be 1-D (one label per row), but this IDX file has dimensions [5, 1, 1]'], 'labels-idx1-ubyte');
    bad = put('corrupt-images-idx3-ubyte.gz', Buffer.from([0x1f, 0x8b, 1, 2, 3, 4, 5]));
    await expectError(() => openRows(bad), bad, [/^corrupt gzip data \(7 bytes\): /], 'fetch it again');
    bad = put('empty.idx', '');
    await expectError(() => openRows(bad), bad, ['holds no rows: the file is empty'], 'fetch it again');
    bad = put('zero.idx', idx([0, 2], new Uint8Array(0)));
    await expectError(() => openRows(bad), bad, ['holds no rows: its dimensions [0, 2] have 0 rows'], 'at least one row');
    const missing = join(TMP, 'nolabels.idx');
    await expectError(() => openRows(put('y2.idx', idx([N], labels)), { labels: missing }), missing, ['no such labels file'], 'check the path');
  });
});

// ---------------------------------------------------------------------------------------------
// .npy

/** A .npy file: the preamble for `version`, the header dict padded to 64 bytes, then `data`. */
function npy(descr: string, shape: number[], data: Uint8Array, opts: { version?: 1 | 2 | 3; fortran?: boolean; rawDescr?: boolean } = {}): Buffer {
  const version = opts.version ?? 1;
  const shapeText = shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(', ')})`;
  const d = opts.rawDescr ? descr : `'${descr}'`;
  let header = `{'descr': ${d}, 'fortran_order': ${opts.fortran ? 'True' : 'False'}, 'shape': ${shapeText}, }`;
  const pre = version === 1 ? 10 : 12;
  header += ' '.repeat(63 - ((pre + Buffer.byteLength(header) + 1 + 63) % 64)) + '\n';
  const h = Buffer.from(header, version === 3 ? 'utf8' : 'latin1');
  const p = Buffer.alloc(pre);
  Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, version, 0]).copy(p);
  if (version === 1) p.writeUInt16LE(h.length, 8);
  else p.writeUInt32LE(h.length, 8);
  return Buffer.concat([p, h, data]);
}
const le = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

describe('.npy', () => {
  it('2-D f4 → Float32Array rows; 3-D f8 → flattened Float64Array; versions 1.0, 2.0 and 3.0', async () => {
    const x = Float32Array.from(range(12), (i) => i * 0.5 - 2);
    for (const version of [1, 2, 3] as const) {
      const file = put('x.npy', npy('<f4', [3, 4], le(x), { version }));
      const src = await openRows(file);
      expect(src.format).toBe('npy');
      await checkSource(src, file, ['x'], range(3).map((i) => ({ x: x.slice(i * 4, i * 4 + 4) })), (i) => `${file} row ${i}`);
    }
    const y = Float64Array.from(range(12), (i) => i / 3);
    const file = put('y.npy', npy('<f8', [3, 2, 2], le(y)));
    await checkSource(await openRows(file), file, ['x'], range(3).map((i) => ({ x: y.slice(i * 4, i * 4 + 4) })), (i) => `${file} row ${i}`);
  });

  it('1-D arrays of every integer dtype and bool → scalar numbers; integer vectors → Float64Array', async () => {
    const cases: [string, ArrayBufferView, number[]][] = [
      ['|i1', Int8Array.from([-128, 0, 127]), [-128, 0, 127]],
      ['<i2', Int16Array.from([-32768, 1, 32767]), [-32768, 1, 32767]],
      ['<i4', Int32Array.from([-(2 ** 31), 2, 2 ** 31 - 1]), [-(2 ** 31), 2, 2 ** 31 - 1]],
      ['<i8', BigInt64Array.from([-(2n ** 53n) + 1n, 3n, 2n ** 53n - 1n]), [-(2 ** 53) + 1, 3, 2 ** 53 - 1]],
      ['|u1', Uint8Array.from([0, 128, 255]), [0, 128, 255]],
      ['<u2', Uint16Array.from([0, 1, 65535]), [0, 1, 65535]],
      ['<u4', Uint32Array.from([0, 1, 2 ** 32 - 1]), [0, 1, 2 ** 32 - 1]],
      ['|b1', Uint8Array.from([1, 0, 1]), [1, 0, 1]],
      ['<f8', Float64Array.from([0.1, -2, 1e300]), [0.1, -2, 1e300]],
    ];
    for (const [descr, data, values] of cases) {
      const file = put('s.npy', npy(descr, [3], le(data)));
      await checkSource(await openRows(file), file, ['x'], values.map((x) => ({ x })), (i) => `${file} row ${i}`);
    }
    const v = Int16Array.from([1, -2, 3, -4]);
    const file = put('v.npy', npy('<i2', [2, 2], le(v)));
    await checkSource(await openRows(file), file, ['x'], [{ x: Float64Array.from([1, -2]) }, { x: Float64Array.from([3, -4]) }], (i) => `${file} row ${i}`);
  });

  it('a labels .npy (or IDX) → "label"; count mismatch names both files and counts', async () => {
    const x = Float32Array.from(range(6));
    const file = put('x.npy', npy('<f4', [3, 2], le(x)));
    const labels = put('y.npy', npy('<i8', [3], le(BigInt64Array.from([2n, 0n, 1n]))));
    const expected = [0, 1, 2].map((i) => ({ x: x.slice(i * 2, i * 2 + 2), label: [2, 0, 1][i] }));
    await checkSource(await openRows(file, { labels }), file, ['x', 'label'], expected, (i) => `${file} row ${i}`);
    const idxLabels = put('y.idx', idx([3], Uint8Array.from([2, 0, 1])));
    await checkSource(await openRows(file, { labels: idxLabels }), file, ['x', 'label'], expected, (i) => `${file} row ${i}`);
    const four = put('y4.npy', npy('<i8', [4], le(BigInt64Array.from([2n, 0n, 1n, 1n]))));
    await expectError(() => openRows(file, { labels: four }), file, [`holds 3 rows, but its labels file ${four} holds 4 labels`], 'pair the data with its own labels file');
    const twoD = put('y2.npy', npy('<f4', [3, 1], le(Float32Array.from([1, 2, 3]))));
    await expectError(() => openRows(file, { labels: twoD }), twoD, ['a labels file must be 1-D (one label per row), but this array has shape [3, 1]'], 'reshape(-1)');
    const csvLabels = put('y.csv', 'a\n1\n');
    await expectError(() => openRows(file, { labels: csvLabels }), csvLabels, ['a labels file must be an IDX file'], '1-D IDX or .npy');
  });

  it('errors: big-endian, objects, structured, Fortran order, unsupported dtype, truncated, bad magic, .npz, unsafe i8, no rows', async () => {
    const f4 = le(Float32Array.from([1, 2, 3, 4]));
    let file = put('be.npy', npy('>f4', [2, 2], f4));
    await expectError(() => openRows(file), file, ["the array is big-endian (dtype '>f4'); only little-endian data is read"], "a.astype('<f4')");
    file = put('obj.npy', npy('|O', [2], new Uint8Array(16)));
    await expectError(() => openRows(file), file, ["the array holds Python objects (dtype 'O'), not numbers"], 'np.stack');
    file = put('rec.npy', npy("[('a', '<f4'), ('b', '<i4')]", [2], new Uint8Array(16), { rawDescr: true }));
    await expectError(() => openRows(file), file, ['the array has a structured dtype (fields [["a","<f4"],["b","<i4"]])'], 'structured_to_unstructured');
    file = put('fortran.npy', npy('<f4', [2, 2], f4, { fortran: true }));
    await expectError(() => openRows(file), file, ['the array is stored in Fortran (column-major) order (fortran_order: True, shape [2, 2])'], 'np.ascontiguousarray(a)');
    file = put('fortran1d.npy', npy('<f4', [4], f4, { fortran: true })); // 1-D: the same bytes either way
    const ok = await openRows(file);
    expect(await ok.read([3])).toEqual([{ x: 4 }]);
    ok.close();
    file = put('complex.npy', npy('<c8', [2], new Uint8Array(16)));
    await expectError(() => openRows(file), file, ['dtype "<c8" is not supported'], "a.astype('<f4')");
    file = put('cut.npy', npy('<f4', [2, 2], f4).subarray(0, 128 + 10));
    await expectError(() => openRows(file), file, ["truncated .npy file: 138 bytes, expected 144 (128-byte header + shape [2, 2] × 4-byte '<f4')"], 'numpy.save');
    file = put('cuthead.npy', npy('<f4', [2, 2], f4).subarray(0, 50));
    await expectError(() => openRows(file), file, ['truncated .npy file: 50 bytes, but its header alone needs 128'], 'numpy.save');
    file = put('tiny.npy', Buffer.from([0x93, 0x4e, 0x55]));
    await expectError(() => openRows(file), file, ['truncated .npy file: 3 bytes, shorter than the 10-byte preamble'], 'numpy.save');
    file = put('extra.npy', Buffer.concat([npy('<f4', [2, 2], f4), Buffer.from([0])]));
    await expectError(() => openRows(file), file, ['1 extra bytes after the data of the .npy file: 145 bytes, expected 144'], 'numpy.save');
    file = put('text.npy', 'x,y\n1,2\n');
    await expectError(() => openRows(file), file, ['not a .npy file: it starts with "x,y\\x0a1,2\\x0a", not the magic bytes "\\x93NUMPY"'], 'numpy.save');
    file = put('arch.npy', Buffer.from('PK\x03\x04rest of a zip'));
    await expectError(() => openRows(file), file, ['(it is a zip archive: an .npz?)'], 'numpy.load');
    file = put('big.npy', npy('<i8', [3], le(BigInt64Array.from([1n, 2n ** 53n, 3n]))));
    const src = await openRows(file);
    expect(await src.read([2, 0])).toEqual([{ x: 3 }, { x: 1 }]);
    await expectError(() => src.read([1]), `${file} row 1`, ['column "x" holds the 64-bit integer 9007199254740992, beyond what a float64 number holds exactly'], 'astype(np.float64)');
    src.close();
    file = put('scalar.npy', npy('<f4', [], le(Float32Array.from([1]))));
    await expectError(() => openRows(file), file, ['holds no rows: it holds a 0-d array (one scalar)'], 'shape (rows,)');
    file = put('zero.npy', npy('<f4', [0, 3], new Uint8Array(0)));
    await expectError(() => openRows(file), file, ['holds no rows: its shape [0, 3] has 0 rows'], 'non-empty array');
    file = put('empty.npy', '');
    await expectError(() => openRows(file), file, ['holds no rows: the file is empty'], 'numpy.save');
  });
});

// ---------------------------------------------------------------------------------------------
// .safetensors

interface StTensor {
  dtype: string;
  shape: number[];
  data: Uint8Array;
  offsets?: [number, number];
}
/** A .safetensors file: the tensors laid out in the given order; `offsets` overrides an entry's. */
function safetensors(tensors: Record<string, StTensor>, metadata = true): Buffer {
  const header: Record<string, unknown> = metadata ? { __metadata__: { format: 'pt' } } : {};
  const parts: Uint8Array[] = [];
  let at = 0;
  for (const [k, t] of Object.entries(tensors)) {
    header[k] = { dtype: t.dtype, shape: t.shape, data_offsets: t.offsets ?? [at, at + t.data.length] };
    parts.push(t.data);
    at += t.data.length;
  }
  const h = Buffer.from(JSON.stringify(header));
  const n = Buffer.alloc(8);
  n.writeBigUInt64LE(BigInt(h.length));
  return Buffer.concat([n, h, ...parts]);
}
const u16 = (...v: number[]) => le(Uint16Array.from(v));

describe('.safetensors', () => {
  it('every tensor a column (sorted keys); scalars and vectors of every dtype', async () => {
    const f32 = Float32Array.from([1, 2, 3, 4, 5, 6]);
    const file = put(
      't.safetensors',
      safetensors({
        z_f32: { dtype: 'F32', shape: [3, 2], data: le(f32) },
        a_i64: { dtype: 'I64', shape: [3], data: le(BigInt64Array.from([-5n, 0n, 2n ** 40n])) },
        f16: { dtype: 'F16', shape: [3], data: u16(0x3e00, 0xc000, 0x3400) }, // 1.5, -2, 0.25
        bf16: { dtype: 'BF16', shape: [3, 1], data: u16(0x3fc0, 0xc000, 0x3e80) }, // 1.5, -2, 0.25
        f64: { dtype: 'F64', shape: [3, 1, 2], data: le(Float64Array.from([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])) },
        i32: { dtype: 'I32', shape: [3], data: le(Int32Array.from([-1, 2, -3])) },
        u8: { dtype: 'U8', shape: [3], data: Uint8Array.from([0, 255, 7]) },
        i8: { dtype: 'I8', shape: [3], data: le(Int8Array.from([-128, 5, 127])) },
        i16: { dtype: 'I16', shape: [3, 2], data: le(Int16Array.from([1, -1, 2, -2, 3, -3])) },
        bool: { dtype: 'BOOL', shape: [3], data: Uint8Array.from([1, 0, 1]) },
      }),
    );
    const expected = range(3).map((i) => ({
      z_f32: f32.slice(i * 2, i * 2 + 2),
      a_i64: [-5, 0, 2 ** 40][i],
      f16: [1.5, -2, 0.25][i],
      bf16: Float32Array.from([[1.5, -2, 0.25][i]]),
      f64: Float64Array.from([0.1, 0.2, 0.3, 0.4, 0.5, 0.6].slice(i * 2, i * 2 + 2)),
      i32: [-1, 2, -3][i],
      u8: [0, 255, 7][i],
      i8: [-128, 5, 127][i],
      i16: Float64Array.from([1, -1, 2, -2, 3, -3].slice(i * 2, i * 2 + 2)),
      bool: [1, 0, 1][i],
    }));
    const src = await openRows(file);
    expect(src.format).toBe('safetensors');
    await checkSource(src, file, ['a_i64', 'bf16', 'bool', 'f16', 'f64', 'i16', 'i32', 'i8', 'u8', 'z_f32'], expected, (i) => `${file} row ${i}`);
  });

  it('errors: first dimensions differ, offsets past the end, sizes that disagree, truncated header, unsafe I64, scalars, no tensors', async () => {
    const four = le(Float32Array.from([1, 2, 3, 4]));
    let file = put('mismatch.safetensors', safetensors({ a: { dtype: 'F32', shape: [2, 2], data: four }, b: { dtype: 'F32', shape: [4], data: four } }));
    await expectError(() => openRows(file), file, ['tensor "b" has 4 rows (shape [4]), but tensor "a" has 2 (shape [2, 2]): every tensor is a column and must have one entry per row'], 'put the others in a separate file');
    const whole = safetensors({ a: { dtype: 'F32', shape: [4], data: four } });
    file = put('cut.safetensors', whole.subarray(0, whole.length - 3));
    await expectError(() => openRows(file), file, [/^tensor "a": data_offsets \[0, 16\] run past the end of the data \(13 bytes after the \d+-byte header\): the file is truncated$/], 'interrupted copy');
    file = put('size.safetensors', safetensors({ a: { dtype: 'F32', shape: [3], data: four } }));
    await expectError(() => openRows(file), file, ['tensor "a": data_offsets [0, 16] span 16 bytes, but shape [3] of F32 needs 12'], 'save_file');
    file = put('offs.safetensors', safetensors({ a: { dtype: 'F32', shape: [4], data: four, offsets: [8, 4] } }));
    await expectError(() => openRows(file), file, ['tensor "a": data_offsets [8,4] is not a [begin, end] pair of byte offsets'], 'save_file');
    file = put('head.safetensors', whole.subarray(0, 20));
    await expectError(() => openRows(file), file, [/^truncated \.safetensors file: 20 bytes, but the header length field says the JSON header alone is \d+ bytes$/], 'interrupted copy');
    file = put('binary.safetensors', Buffer.from('PK\x03\x04 and then some zip bytes'));
    await expectError(() => openRows(file), file, [/^the header length field says \d+ bytes, over the 100 MB a \.safetensors header may hold: this is not a \.safetensors file$/], 'check the file');
    file = put('tiny.safetensors', whole.subarray(0, 5));
    await expectError(() => openRows(file), file, ['truncated .safetensors file: 5 bytes, shorter than the 8-byte header length'], 'interrupted copy');
    file = put('notjson.safetensors', Buffer.concat([Buffer.from([4, 0, 0, 0, 0, 0, 0, 0]), Buffer.from('nope')]));
    await expectError(() => openRows(file), file, [/^the \.safetensors header is not valid JSON: /], 'save_file');
    file = put('dtype.safetensors', safetensors({ a: { dtype: 'F8_E4M3', shape: [4], data: new Uint8Array(4) } }));
    await expectError(() => openRows(file), file, ['tensor "a": dtype "F8_E4M3" is not supported (F32, F64, F16, BF16, I32, I64, U8, I8, I16, BOOL are)'], 'torch.float32');
    file = put('scalar.safetensors', safetensors({ a: { dtype: 'F32', shape: [], data: four.subarray(0, 4) } }));
    await expectError(() => openRows(file), file, ['tensor "a" is a scalar (shape []): it has no first dimension to be the row count'], 'per-row tensors');
    file = put('none.safetensors', safetensors({}));
    await expectError(() => openRows(file), file, ['holds no rows: it holds no tensors'], 'per-row tensors');
    file = put('empty.safetensors', '');
    await expectError(() => openRows(file), file, ['holds no rows: the file is empty'], 'save_file');
    file = put('i64.safetensors', safetensors({ id: { dtype: 'I64', shape: [2, 2], data: le(BigInt64Array.from([1n, 2n, 3n, -(2n ** 62n)])) } }));
    const src = await openRows(file);
    expect(await src.read([0])).toEqual([{ id: Float64Array.from([1, 2]) }]);
    await expectError(() => src.read([1]), `${file} row 1`, [`column "id" holds the 64-bit integer ${-(2n ** 62n)} (element 1), beyond what a float64 number holds exactly`], '±2^53−1');
    src.close();
  });
});

// ---------------------------------------------------------------------------------------------
describe('large files are indexed by streaming, never loaded whole', () => {
  interface ChildRun {
    count: number;
    /** Indexing, and read() of 64 scattered rows. */
    ms: number;
    readMs: number;
    rows: Row[];
    where: string;
    /** The largest single readSync, all bytes read while opening, the largest Buffer made. */
    maxRead: number;
    openRead: number;
    maxBuffer: number;
    maxRssMb: number;
  }
  /**
   * Runs `node --max-old-space-size=24 --import tsx` on a script that opens `file` and reads rows;
   * with a 24 MB heap a 40 MB file cannot be held as a string, and the script watches every read
   * and every Buffer made (readFileSync throws), so a whole-file Buffer shows too.
   */
  function child(file: string): ChildRun {
    const script = join(TMP, 'child.mts');
    writeFileSync(
      script,
      `import fs from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';
let maxRead = 0, totalRead = 0, maxBuffer = 0;
const readSync = fs.readSync;
fs.readSync = (fd, buf, ...rest) => {
  const n = readSync(fd, buf, ...rest);
  maxRead = Math.max(maxRead, n);
  totalRead += n;
  return n;
};
fs.readFileSync = () => { throw new Error('readFileSync called'); };
fs.promises.readFile = async () => { throw new Error('readFile called'); };
syncBuiltinESMExports();
for (const name of ['concat', 'alloc', 'allocUnsafe', 'allocUnsafeSlow', 'from']) {
  const f = Buffer[name];
  Buffer[name] = function (...args) {
    const b = f.apply(this, args);
    maxBuffer = Math.max(maxBuffer, b.length);
    return b;
  };
}
const { openRows } = await import(${JSON.stringify(join(ROOT, 'src/data/rows.ts'))});
const t0 = performance.now();
const src = await openRows(process.argv[2]);
const ms = performance.now() - t0;
const openRead = totalRead;
const rows = await src.read([0, src.count - 1, src.count >> 1]);
const random = Array.from({ length: 64 }, (_, k) => Math.floor(((k * 7919) % 997) / 997 * src.count));
const t1 = performance.now();
const sample = await src.read(random);
const readMs = performance.now() - t1;
if (sample.length !== 64) throw new Error('read 64 rows, got ' + sample.length);
console.log(JSON.stringify({ count: src.count, ms, readMs, rows, where: src.where(src.count - 1), maxRead, openRead, maxBuffer, maxRssMb: process.resourceUsage().maxRSS / 1024 }));
`,
    );
    const r = spawnSync(process.execPath, ['--max-old-space-size=24', '--import', 'tsx', script, file], { cwd: ROOT, encoding: 'utf8', timeout: 60_000 });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    return JSON.parse(r.stdout);
  }

  it('a ~40 MB CSV and a ~40 MB JSONL', async () => {
    const pad = 'x'.repeat(300);
    const n = 120_000;
    const csvLines = ['id,text,label'];
    const jsonLines: string[] = [];
    const text = (i: number) => `row ${i}, "é😀" ${pad}`;
    for (let i = 0; i < n; i++) {
      csvLines.push(`${i},"${text(i).replace(/"/g, '""')}",${i % 10}`);
      jsonLines.push(JSON.stringify({ id: i, text: text(i), label: i % 10 }));
    }
    const csvText = csvLines.join('\n') + '\n';
    const jsonText = jsonLines.join('\n') + '\n';
    const csv = put('big.csv', csvText);
    const jsonl = put('big.jsonl', jsonText);
    const sizes = [Buffer.byteLength(csvText), Buffer.byteLength(jsonText)];
    expect(Math.min(...sizes)).toBeGreaterThan(38e6);
    const csvRun = child(csv);
    const jsonRun = child(jsonl);
    console.log(
      `indexing ~40 MB (heap limit 24 MB): csv ${(sizes[0] / 1e6).toFixed(1)} MB in ${csvRun.ms.toFixed(0)} ms, jsonl ${(sizes[1] / 1e6).toFixed(1)} MB in ${jsonRun.ms.toFixed(0)} ms; ` +
        `64 scattered rows read in ${csvRun.readMs.toFixed(1)}/${jsonRun.readMs.toFixed(1)} ms; ` +
        `largest read ${csvRun.maxRead}/${jsonRun.maxRead} bytes, largest Buffer ${csvRun.maxBuffer}/${jsonRun.maxBuffer} bytes, peak RSS ${csvRun.maxRssMb.toFixed(0)}/${jsonRun.maxRssMb.toFixed(0)} MB`,
    );
    expect(csvRun.count).toBe(n);
    expect(csvRun.rows).toEqual([0, n - 1, n >> 1].map((i) => ({ id: String(i), text: text(i), label: String(i % 10) })));
    expect(csvRun.where).toBe(`${csv}:${n + 1}`);
    expect(jsonRun.count).toBe(n);
    expect(jsonRun.rows).toEqual([0, n - 1, n >> 1].map((i) => ({ id: i, text: text(i), label: i % 10 })));
    expect(jsonRun.where).toBe(`${jsonl}:${n}`);
    [csvRun, jsonRun].forEach((run, k) => {
      expect(run.openRead).toBeGreaterThanOrEqual(sizes[k]); // one pass over the file (and a
      expect(run.openRead).toBeLessThanOrEqual(sizes[k] + 16); // sniff of its first bytes)
      expect(run.maxRead).toBeLessThanOrEqual(1 << 20); // in chunks of at most 1 MB
      expect(run.maxBuffer).toBeLessThanOrEqual(2 << 20); // never gathered into one Buffer
      // Loose bounds (the machine is shared): seconds to index, milliseconds to read a batch.
      expect(run.ms).toBeLessThan(15_000);
      expect(run.readMs).toBeLessThan(250);
    });
  }, 60_000);
});
