// Parquet (Hugging Face datasets' format) through hyparquet and hyparquet-compressors. Opening
// reads only the footer (row count, top-level columns, row groups); read() decodes just the row
// groups its rows are in and keeps the most recently used ones decoded, as many as fit
// `cacheBytes` of their uncompressed size (at least two): a file up to that size is decoded once,
// however randomly the batches draw from it; a larger one decodes a group per batch it touches. Values become Cells: INT64 → number when
// exact, lists → arrays, dates → ISO strings; a struct, map or binary value is an error naming
// the column and row.
import { parquetMetadataAsync, parquetReadObjects, parquetSchema, type AsyncBuffer, type FileMetaData } from 'hyparquet';
import { compressors } from 'hyparquet-compressors';
import { LorafaError } from '../../ir/errors.ts';
import type { Cell, Row, RowSource } from '../rows.ts';
import { closeQuietly, noRows, readAt, readUpTo, refuseGzip, rowSource, showBytes, type OpenFile } from './common.ts';

const MAGIC = Buffer.from('PAR1');
const AGAIN = 'the file is damaged or cut short (an interrupted download or copy?): fetch or write it again';
/** Uncompressed bytes of decoded row groups kept by default. */
export const PARQUET_CACHE_BYTES = 256 * 1024 * 1024;

export async function openParquet(file: string, opened: OpenFile, cacheBytes = PARQUET_CACHE_BYTES): Promise<RowSource> {
  try {
    return await open(file, opened, cacheBytes);
  } catch (e) {
    closeQuietly(opened.fd);
    throw e;
  }
}

async function open(file: string, { fd, size }: OpenFile, cacheBytes: number): Promise<RowSource> {
  if (size === 0) throw noRows(file, 'the file is empty', 'write the table with pandas.DataFrame.to_parquet or datasets.Dataset.to_parquet');
  refuseGzip(file, fd, 'parquet');
  const head = readUpTo(fd, 0, 4);
  if (!head.equals(MAGIC)) {
    throw new LorafaError(
      file,
      `not a Parquet file: it starts with ${showBytes(head)}, not the magic bytes "PAR1"`,
      `check the file (a download error page saved under this name?); if it holds another format, name it with that format's extension`,
    );
  }
  if (size < 12) {
    throw new LorafaError(file, `truncated Parquet file: ${size} bytes, too short for the footer (magic, footer length, magic)`, AGAIN);
  }
  const tail = readAt(fd, file, size - 8, 8);
  if (!tail.subarray(4).equals(MAGIC)) {
    throw new LorafaError(file, `truncated Parquet file: it does not end with the magic bytes "PAR1" (it ends with ${showBytes(tail.subarray(4))}), so its footer is missing`, AGAIN);
  }
  const footer = tail.readUInt32LE(0);
  if (footer > size - 12) {
    throw new LorafaError(file, `truncated Parquet file: its footer claims ${footer} bytes, but the file holds only ${size} bytes`, AGAIN);
  }
  const buffer: AsyncBuffer = {
    byteLength: size,
    slice(start: number, end = size) {
      return readAt(fd, file, start, end - start).buffer as ArrayBuffer; // a fresh, whole ArrayBuffer
    },
  };
  let metadata: FileMetaData;
  try {
    metadata = await parquetMetadataAsync(buffer);
  } catch (e) {
    throw new LorafaError(file, `corrupt Parquet footer: ${(e as Error).message}`, AGAIN);
  }
  const count = Number(metadata.num_rows);
  let columns: string[];
  try {
    columns = parquetSchema(metadata).children.map((c) => c.element.name);
  } catch (e) {
    throw new LorafaError(file, `corrupt Parquet schema: ${(e as Error).message}`, AGAIN);
  }
  if (count === 0) throw noRows(file, `it has the columns ${columns.join(', ')} but 0 rows`, 'write the rows into the file, or point to the file that holds them');
  // Row group g holds rows [groupStart[g], groupStart[g + 1]).
  const groupStart = [0];
  for (const g of metadata.row_groups) groupStart.push(groupStart[groupStart.length - 1] + Number(g.num_rows));
  if (groupStart[groupStart.length - 1] !== count) {
    throw new LorafaError(file, `corrupt Parquet footer: the row groups hold ${groupStart[groupStart.length - 1]} rows, but the file says ${count}`, AGAIN);
  }
  const groupOf = (i: number) => {
    let lo = 0;
    let hi = groupStart.length - 2;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (groupStart[mid] <= i) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  };
  const groupBytes = (g: number) => Number(metadata.row_groups[g].total_byte_size);
  const cache = new Map<number, Promise<Record<string, unknown>[]>>(); // most recent last
  const group = (g: number): Promise<Record<string, unknown>[]> => {
    let rows = cache.get(g);
    if (rows) cache.delete(g);
    else {
      rows = parquetReadObjects({ file: buffer, metadata, compressors, rowStart: groupStart[g], rowEnd: groupStart[g + 1] }).catch((e: unknown) => {
        cache.delete(g);
        if (e instanceof LorafaError) throw e;
        throw new LorafaError(`${file} row ${groupStart[g]}`, `cannot decode row group ${g} (rows ${groupStart[g]} to ${groupStart[g + 1] - 1}): ${(e as Error).message}`, AGAIN);
      });
    }
    cache.set(g, rows);
    let bytes = 0;
    for (const k of cache.keys()) bytes += groupBytes(k);
    while (cache.size > 2 && bytes > cacheBytes) {
      const lru = cache.keys().next().value!;
      bytes -= groupBytes(lru);
      cache.delete(lru);
    }
    return rows;
  };
  return rowSource({
    file,
    format: 'parquet',
    count,
    columns,
    where: (i) => `${file} row ${i}`,
    async rows(indices) {
      const out: Row[] = new Array(indices.length);
      // Groups in first-needed order; each decoded once per call.
      const byGroup = new Map<number, number[]>();
      indices.forEach((i, k) => {
        const g = groupOf(i);
        const list = byGroup.get(g);
        if (list) list.push(k);
        else byGroup.set(g, [k]);
      });
      for (const [g, ks] of byGroup) {
        const rows = await group(g);
        for (const k of ks) {
          const i = indices[k];
          const raw = rows[i - groupStart[g]];
          const row: Record<string, Cell> = {};
          for (const c of columns) row[c] = cell(raw[c], file, c, i);
          out[k] = row;
        }
      }
      return out;
    },
    close() {
      cache.clear();
      closeQuietly(fd);
    },
  });
}

/** A decoded Parquet value as a Cell, or a LorafaError naming the column and row. */
function cell(v: unknown, file: string, column: string, i: number): Cell {
  if (v === null || v === undefined) return null;
  switch (typeof v) {
    case 'string':
    case 'number':
    case 'boolean':
      return v;
    case 'bigint': {
      const n = Number(v);
      if (!Number.isSafeInteger(n)) {
        throw new LorafaError(
          `${file} row ${i}`,
          `column ${JSON.stringify(column)} holds the 64-bit integer ${v}, beyond what a JavaScript number holds exactly (±2^53−1 = ±9007199254740991)`,
          'store the column as float64 or as strings, or keep its values within ±2^53−1',
        );
      }
      return n;
    }
  }
  if (v instanceof Date) return Number.isNaN(v.getTime()) ? null : v.toISOString();
  if (v instanceof Uint8Array) {
    throw new LorafaError(
      `${file} row ${i}`,
      `column ${JSON.stringify(column)} holds binary data (${v.length} bytes); rows hold strings, numbers, booleans, null and lists`,
      'store the column as strings (UTF-8) or numbers, or drop it from the file',
    );
  }
  if (Array.isArray(v) || ArrayBuffer.isView(v)) return Array.from(v as ArrayLike<unknown>, (x) => cell(x, file, column, i));
  const keys = Object.keys(v as object);
  throw new LorafaError(
    `${file} row ${i}`,
    `column ${JSON.stringify(column)} holds a struct or map (an object with keys ${keys.slice(0, 5).join(', ')}${keys.length > 5 ? ', …' : ''}); rows hold strings, numbers, booleans, null and lists`,
    'flatten the struct into top-level columns before saving (e.g. pyarrow.Table.flatten() or datasets.Dataset.flatten()), or drop the column',
  );
}
