// .safetensors as rows: an 8-byte little-endian header length, a JSON header (tensor key →
// dtype, shape, data_offsets relative to the end of the header), then the data. Only the header
// is read at open; rows are read by positioned reads. Every tensor is a column (in sorted key
// order) and must have the row count as its first dimension.
import { LorafaError } from '../../ir/errors.ts';
import type { RowSource } from '../rows.ts';
import { arrayColumn, arraySource, dtype, fileBytes, shapeText, type DKind } from './arrays.ts';
import { closeQuietly, noRows, readAt, refuseGzip, type OpenFile } from './common.ts';

const KINDS: Record<string, DKind> = {
  F32: 'f4',
  F64: 'f8',
  F16: 'f2',
  BF16: 'bf2',
  I32: 'i4',
  I64: 'i8',
  U8: 'u1',
  I8: 'i1',
  I16: 'i2',
  BOOL: 'b1',
};
const SAVE = 'write the file again with safetensors (safetensors.torch.save_file / safetensors.numpy.save_file)';
const AGAIN = `the file is damaged (an interrupted copy or download?): ${SAVE}`;

interface Entry {
  readonly key: string;
  readonly kind: DKind;
  readonly dtype: string;
  readonly shape: number[];
  readonly begin: number;
}

export function openSafetensors(file: string, { fd, size }: OpenFile): RowSource {
  try {
    return open(file, fd, size);
  } catch (e) {
    closeQuietly(fd);
    throw e;
  }
}

function open(file: string, fd: number, size: number): RowSource {
  if (size === 0) throw noRows(file, 'the file is empty', SAVE);
  refuseGzip(file, fd, 'safetensors');
  if (size < 8) throw new LorafaError(file, `truncated .safetensors file: ${size} bytes, shorter than the 8-byte header length`, AGAIN);
  const n = readAt(fd, file, 0, 8).readBigUInt64LE(0);
  if (n > 100_000_000n) {
    throw new LorafaError(file, `the header length field says ${n} bytes, over the 100 MB a .safetensors header may hold: this is not a .safetensors file`, `check the file; ${SAVE}`);
  }
  if (n > BigInt(size - 8)) {
    throw new LorafaError(file, `truncated .safetensors file: ${size} bytes, but the header length field says the JSON header alone is ${n} bytes`, AGAIN);
  }
  const headerLen = Number(n);
  let header: unknown;
  try {
    header = JSON.parse(readAt(fd, file, 8, headerLen).toString('utf8'));
  } catch (e) {
    throw new LorafaError(file, `the .safetensors header is not valid JSON: ${(e as Error).message.slice(0, 200)}`, `check that this is a .safetensors file; ${SAVE}`);
  }
  if (header === null || typeof header !== 'object' || Array.isArray(header)) {
    throw new LorafaError(file, 'the .safetensors header is not a JSON object of tensors', SAVE);
  }
  const dataStart = 8 + headerLen;
  const dataBytes = size - dataStart;
  const entries: Entry[] = [];
  for (const key of Object.keys(header).sort()) {
    if (key === '__metadata__') continue;
    const t = (header as Record<string, unknown>)[key] as { dtype?: unknown; shape?: unknown; data_offsets?: unknown } | null;
    const bad = (problem: string, fix = SAVE) => new LorafaError(file, `tensor ${JSON.stringify(key)}: ${problem}`, fix);
    if (t === null || typeof t !== 'object') throw bad('its header entry is not an object with dtype, shape and data_offsets');
    const { dtype: dt, shape, data_offsets: offs } = t;
    if (typeof dt !== 'string' || !(dt in KINDS)) {
      throw bad(
        `dtype ${JSON.stringify(dt)} is not supported (${Object.keys(KINDS).join(', ')} are)`,
        'convert the tensor before saving, e.g. t.to(torch.float32)',
      );
    }
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) throw bad(`shape ${JSON.stringify(shape)} is not a list of sizes`);
    if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((d) => Number.isSafeInteger(d) && d >= 0) || offs[0] > offs[1]) {
      throw bad(`data_offsets ${JSON.stringify(offs)} is not a [begin, end] pair of byte offsets`);
    }
    const kind = KINDS[dt];
    const width = dtype(kind, dt).width;
    const need = (shape as number[]).reduce((a, b) => a * b, 1) * width;
    const [begin, end] = offs as number[];
    if (end > dataBytes) {
      throw bad(
        `data_offsets [${begin}, ${end}] run past the end of the data (${dataBytes} bytes after the ${dataStart}-byte header): the file is truncated`,
        AGAIN,
      );
    }
    if (end - begin !== need) {
      throw bad(`data_offsets [${begin}, ${end}] span ${end - begin} bytes, but shape ${shapeText(shape as number[])} of ${dt} needs ${need}`);
    }
    entries.push({ key, kind, dtype: dt, shape: shape as number[], begin: dataStart + begin });
  }
  if (entries.length === 0) throw noRows(file, 'it holds no tensors', 'save the per-row tensors (first dimension = rows) in the file');
  for (const e of entries) {
    if (e.shape.length === 0) {
      throw new LorafaError(
        file,
        `tensor ${JSON.stringify(e.key)} is a scalar (shape []): it has no first dimension to be the row count`,
        'keep only per-row tensors (first dimension = rows) in a data file; store scalars elsewhere',
      );
    }
  }
  const [first] = entries;
  const count = first.shape[0];
  for (const e of entries) {
    if (e.shape[0] !== count) {
      throw new LorafaError(
        file,
        `tensor ${JSON.stringify(e.key)} has ${e.shape[0]} rows (shape ${shapeText(e.shape)}), but tensor ${JSON.stringify(first.key)} has ${count} (shape ${shapeText(first.shape)}): every tensor is a column and must have one entry per row`,
        'save only per-row tensors in the data file (first dimension = rows), and put the others in a separate file',
      );
    }
  }
  if (count === 0) throw noRows(file, `its tensors have 0 rows (tensor ${JSON.stringify(first.key)} has shape ${shapeText(first.shape)})`, 'save non-empty tensors');
  const where = (i: number) => `${file} row ${i}`;
  const columns = entries.map((e) => {
    const rowElems = e.shape.slice(1).reduce((a, b) => a * b, 1);
    const type = dtype(e.kind, e.dtype);
    return arrayColumn({
      file,
      name: e.key,
      dtype: type,
      count,
      rowElems,
      vector: e.shape.length > 1,
      where,
      bytes: fileBytes(fd, file, e.begin, rowElems * type.width),
    });
  });
  return arraySource(file, 'safetensors', columns, where, () => closeQuietly(fd));
}
