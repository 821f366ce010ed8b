// Data files as tables of rows: what every reader gives the training loop, whatever the format.
//
// A RowSource is opened once (which validates and indexes the file in one streaming pass: every
// row's position, the column names, the row count) and then read by row index, so a batch costs
// only its own rows and a file larger than memory trains. Sampling (which rows make the batch of
// step t) is not the reader's business: src/data/batches.ts decides it from (seed, step) alone.
// The readers live in src/data/formats/, one per format; openRows picks one.
//
// Formats (by extension unless `format` is given):
//   jsonl / ndjson   one JSON object per line; columns are the keys seen, in first-seen order (a
//                    row may lack some); blank lines are skipped; a field holding a JSON object
//                    is an error (a Cell holds scalars and arrays)
//   csv / tsv        RFC 4180 through csv-parse; the first record names the columns (unique,
//                    non-empty); every record has as many fields; cells are strings; blank lines
//                    are skipped (write "" for an empty single-column value); in TSV a quote
//                    inside an unquoted field is a plain character
//   parquet          Hugging Face datasets' format, through hyparquet (+ hyparquet-compressors);
//                    columns are the top-level schema columns; INT64 → number (an error beyond
//                    ±2^53−1), lists → arrays, dates → ISO strings, structs are an error
//   text (.txt)      one row per line, blank lines included, column "text" (joining the rows
//                    with '\n' gives the file back, without a final newline; CRLF reads as LF)
//   idx              MNIST's format, u8 only, rows = the first dimension; [N, ...] → column "x",
//                    values scaled to [0, 1] (÷255, as torchvision's ToTensor), flattened; a 1-D
//                    file → scalar column "x", unscaled; a `labels` IDX file (default: the
//                    <stem>-labels-idx1-ubyte[.gz] beside <stem>-images-idx3-ubyte[.gz]) gives
//                    the "label" column; .gz files are gunzipped into memory
//   npy              NumPy arrays (little-endian f2 f4 f8 i1 i2 i4 i8 u1 u2 u4 u8 b1, C order);
//                    1-D → a scalar column, 2-D+ → a vector column (rows × n, trailing dims
//                    flattened; Float32Array for f2/f4, else Float64Array; bools as 0/1); named
//                    "x"; a `labels` .npy (or IDX) 1-D file gives the "label" column
//   safetensors      every tensor is a column, by its key (sorted), and must have the row count
//                    as its first dimension (the first tensor's, in sorted key order); 1-D →
//                    scalars, else vectors as for npy (F16/BF16/F32 → Float32Array)
// Gzipped files are read only for idx: the other formats are read by row at random positions.
import { LorafaError } from '../ir/errors.ts';

/** One field of a row: JSON scalars, or a vector (numeric arrays, JSON arrays, Parquet lists). */
export type Cell = string | number | boolean | null | Float32Array | Float64Array | readonly Cell[];
export type Row = Readonly<Record<string, Cell>>;

export const DATA_FORMATS = ['jsonl', 'csv', 'tsv', 'parquet', 'text', 'idx', 'npy', 'safetensors'] as const;
export type DataFormat = (typeof DATA_FORMATS)[number];

export interface RowSource {
  /** The file, as the user named it (messages say this). */
  readonly file: string;
  readonly format: DataFormat;
  /** Number of rows (records; blank JSONL lines are not rows; every line of a text file is one). */
  readonly count: number;
  /** Column names in file order. */
  readonly columns: readonly string[];
  /** The rows at `indices` (0-based; any order, repeats allowed), in that order. */
  read(indices: readonly number[]): Promise<Row[]>;
  /** Every row in file order, `chunk` rows at a time (default 1024); `first` is the index of rows[0]. */
  scan(onRows: (rows: readonly Row[], first: number) => void | Promise<void>, chunk?: number): Promise<void>;
  /** Where row i is, for messages: `data.csv:18` (its first line), `data.parquet row 17`, `x.npy row 17`. */
  where(i: number): string;
  /** Releases file handles; the source is unusable afterwards. */
  close(): void;
}

export interface OpenRowsOptions {
  /** Default: from the file name (see the table above). */
  readonly format?: DataFormat;
  /** A second file with one label per row (IDX labels, .npy): the "label" column. */
  readonly labels?: string;
  /** Parquet: uncompressed bytes of decoded row groups kept in memory (default 256 MiB, at least two groups). */
  readonly cacheBytes?: number;
}

/** The format a file name implies, or undefined. */
export function formatOf(file: string): DataFormat | undefined {
  const f = file.toLowerCase().replace(/\.gz$/, '');
  if (/\.(jsonl|ndjson)$/.test(f)) return 'jsonl';
  if (f.endsWith('.csv')) return 'csv';
  if (f.endsWith('.tsv')) return 'tsv';
  if (f.endsWith('.parquet')) return 'parquet';
  if (/\.(txt|text)$/.test(f)) return 'text';
  if (f.endsWith('.npy')) return 'npy';
  if (f.endsWith('.safetensors')) return 'safetensors';
  if (/\.idx$|-idx\d-ubyte$|\.idx\d-ubyte$/.test(f)) return 'idx';
  return undefined;
}

export function unknownFormat(file: string): LorafaError {
  return new LorafaError(
    file,
    'cannot tell the data format from the file name',
    `name it with one of the extensions .jsonl, .csv, .tsv, .parquet, .txt, .idx (or *-idx3-ubyte), .npy, .safetensors, or pass --format ${DATA_FORMATS.join('|')}`,
  );
}

/**
 * Opens a data file as rows: the format is `opts.format`, else the one the name implies, else an
 * error. Validates and indexes the whole file (one streaming pass; Parquet: its footer), and
 * fails with a LorafaError naming the file (and line or row) on any defect.
 */
export async function openRows(file: string, opts: OpenRowsOptions = {}): Promise<RowSource> {
  const format = opts.format ?? formatOf(file);
  if (format === undefined) throw unknownFormat(file);
  if (!(DATA_FORMATS as readonly string[]).includes(format)) {
    throw new LorafaError(file, `unknown data format ${JSON.stringify(format)}`, `pass one of ${DATA_FORMATS.join(', ')}`);
  }
  if (opts.labels !== undefined && format !== 'idx' && format !== 'npy') {
    throw new LorafaError(
      file,
      `a labels file (${opts.labels}) goes only with IDX or .npy data; a ${format} file holds its label column itself`,
      'drop the labels option and name the label column of the file instead',
    );
  }
  if (format === 'idx') return (await import('./formats/idx.ts')).openIdx(file, opts.labels);
  // The reader's module first (a reader loads only its own dependencies), then the file.
  const open = await readerOf(format, opts.cacheBytes);
  const { openFile } = await import('./formats/common.ts');
  return open(file, openFile(file), opts.labels);
}

type Opener = (file: string, opened: import('./formats/common.ts').OpenFile, labels?: string) => RowSource | Promise<RowSource>;

async function readerOf(format: Exclude<DataFormat, 'idx'>, cacheBytes?: number): Promise<Opener> {
  switch (format) {
    case 'jsonl': {
      const { openJsonl } = await import('./formats/jsonl.ts');
      return (file, opened) => openJsonl(file, opened);
    }
    case 'csv':
    case 'tsv': {
      const { openCsv } = await import('./formats/csv.ts');
      return (file, opened) => openCsv(file, opened, format);
    }
    case 'text': {
      const { openText } = await import('./formats/text.ts');
      return (file, opened) => openText(file, opened);
    }
    case 'parquet': {
      const { openParquet } = await import('./formats/parquet.ts');
      return (file, opened) => openParquet(file, opened, cacheBytes);
    }
    case 'npy':
      return (await import('./formats/npy.ts')).openNpy;
    case 'safetensors':
      return (await import('./formats/safetensors.ts')).openSafetensors;
  }
}
