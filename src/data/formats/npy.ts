// NumPy .npy files, read by a parser written here (npyjs reads whole files into memory): the
// preamble (magic "\x93NUMPY", version 1.0/2.0/3.0, header length), the header (a Python dict
// literal with 'descr', 'fortran_order' and 'shape'), then the rows by positioned reads.
import { LorafaError } from '../../ir/errors.ts';
import type { RowSource } from '../rows.ts';
import { arrayColumn, arraySource, dtype, fileBytes, labelColumn, shapeText, type ArrayColumn, type DiskArray, type DKind } from './arrays.ts';
import { closeQuietly, noRows, openFile, readAt, readUpTo, refuseGzip, showBytes, type OpenFile } from './common.ts';

const MAGIC = Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]); // \x93NUMPY
const SAVE = 'save the array with numpy.save(path, a)';

type Py = string | number | boolean | null | Py[] | { [k: string]: Py };

/** Parses the Python literal of a .npy header: dicts, tuples/lists, strings, ints, True/False/None. */
function parsePy(src: string): Py {
  let p = 0;
  const ws = () => {
    while (p < src.length && /\s/.test(src[p])) p++;
  };
  const fail = (what: string): never => {
    throw new Error(`${what} at character ${p} of ${JSON.stringify(src.trim())}`);
  };
  const value = (): Py => {
    ws();
    const c = src[p];
    if (c === '{') {
      p++;
      const obj: { [k: string]: Py } = {};
      for (;;) {
        ws();
        if (src[p] === '}') {
          p++;
          return obj;
        }
        const k = value();
        if (typeof k !== 'string') fail('a dict key that is not a string');
        ws();
        if (src[p++] !== ':') fail("expected ':'");
        obj[k as string] = value();
        ws();
        if (src[p] === ',') p++;
        else if (src[p] !== '}') fail("expected ',' or '}'");
      }
    }
    if (c === '(' || c === '[') {
      const close = c === '(' ? ')' : ']';
      p++;
      const arr: Py[] = [];
      for (;;) {
        ws();
        if (src[p] === close) {
          p++;
          return arr;
        }
        arr.push(value());
        ws();
        if (src[p] === ',') p++;
        else if (src[p] !== close) fail(`expected ',' or '${close}'`);
      }
    }
    if (c === "'" || c === '"') {
      const end = src.indexOf(c, p + 1);
      if (end < 0) fail('an unterminated string');
      const s = src.slice(p + 1, end);
      p = end + 1;
      return s;
    }
    const m = /^(-?\d+)L?|^(True|False|None)\b/.exec(src.slice(p));
    if (!m) return fail('an unexpected character');
    p += m[0].length;
    if (m[1] !== undefined) return Number(m[1]);
    return m[2] === 'True' ? true : m[2] === 'False' ? false : null;
  };
  const v = value();
  ws();
  if (p !== src.length) fail('trailing characters');
  return v;
}

interface NpyHeader {
  readonly kind: DKind;
  readonly descr: string;
  readonly shape: number[];
  readonly dataOffset: number;
}

function readHeader(file: string, fd: number, size: number): NpyHeader {
  refuseGzip(file, fd, 'npy');
  const pre = readUpTo(fd, 0, 12);
  const magicSeen = pre.subarray(0, Math.min(6, pre.length));
  if (!MAGIC.subarray(0, magicSeen.length).equals(magicSeen) || pre.length === 0) {
    if (pre.length === 0) throw noRows(file, 'the file is empty', SAVE);
    const zip = pre[0] === 0x50 && pre[1] === 0x4b;
    throw new LorafaError(
      file,
      `not a .npy file: it starts with ${showBytes(pre.subarray(0, 8))}, not the magic bytes "\\x93NUMPY"${zip ? ' (it is a zip archive: an .npz?)' : ''}`,
      zip ? 'load the archive with numpy.load and numpy.save the array you want to its own .npy file' : SAVE,
    );
  }
  if (pre.length < 10) {
    throw new LorafaError(file, `truncated .npy file: ${size} bytes, shorter than the 10-byte preamble`, `the file was cut short (an interrupted copy or download?): ${SAVE} again`);
  }
  const major = pre[6];
  const minor = pre[7];
  if (major < 1 || major > 3 || minor !== 0) {
    throw new LorafaError(file, `.npy format version ${major}.${minor} is not supported (1.0, 2.0 and 3.0 are)`, SAVE);
  }
  if (major > 1 && pre.length < 12) {
    throw new LorafaError(file, `truncated .npy file: ${size} bytes, shorter than the 12-byte preamble of version ${major}.0`, `the file was cut short: ${SAVE} again`);
  }
  const headerLen = major === 1 ? pre.readUInt16LE(8) : pre.readUInt32LE(8);
  const headerStart = major === 1 ? 10 : 12;
  const dataOffset = headerStart + headerLen;
  if (dataOffset > size) {
    throw new LorafaError(file, `truncated .npy file: ${size} bytes, but its header alone needs ${dataOffset}`, `the file was cut short (an interrupted copy or download?): ${SAVE} again`);
  }
  const text = readAt(fd, file, headerStart, headerLen).toString(major === 3 ? 'utf8' : 'latin1');
  let dict: Py;
  try {
    dict = parsePy(text);
  } catch (e) {
    throw new LorafaError(file, `the .npy header is not a valid Python dict literal: ${(e as Error).message}`, SAVE);
  }
  if (dict === null || typeof dict !== 'object' || Array.isArray(dict) || !('descr' in dict) || !('shape' in dict)) {
    throw new LorafaError(file, `the .npy header ${JSON.stringify(text.trim())} lacks 'descr' or 'shape'`, SAVE);
  }
  const { descr, shape, fortran_order: fortran } = dict;
  if (typeof descr !== 'string') {
    throw new LorafaError(
      file,
      `the array has a structured dtype (fields ${JSON.stringify(descr)}); rows must be plain numbers`,
      "save each field as its own array (np.save('x.npy', a['x'])), or convert with numpy.lib.recfunctions.structured_to_unstructured(a)",
    );
  }
  if (!Array.isArray(shape) || !shape.every((d) => typeof d === 'number' && Number.isSafeInteger(d) && d >= 0)) {
    throw new LorafaError(file, `the .npy header's shape ${JSON.stringify(shape)} is not a tuple of sizes`, SAVE);
  }
  const dims = shape as number[];
  const m = /^([<>|=])?([a-zA-Z])(\d+)$/.exec(descr);
  if (descr.replace(/^[<>|=]/, '') === 'O') {
    throw new LorafaError(
      file,
      "the array holds Python objects (dtype 'O'), not numbers",
      "convert it to a numeric array before saving, e.g. np.save(path, np.stack(a).astype('<f4'))",
    );
  }
  const kind = (m ? `${m[2] === 'b' ? 'b' : m[2]}${m[3]}` : '') as DKind;
  const supported: readonly string[] = ['f2', 'f4', 'f8', 'i1', 'i2', 'i4', 'i8', 'u1', 'u2', 'u4', 'u8', 'b1'];
  if (!m || !supported.includes(kind)) {
    throw new LorafaError(
      file,
      `dtype ${JSON.stringify(descr)} is not supported: rows must be numbers of dtype f4, f8, f2, i1, i2, i4, i8, u1, u2, u4, u8 or b1 (bool)`,
      "convert the array before saving, e.g. np.save(path, a.astype('<f4'))",
    );
  }
  if (m[1] === '>' && Number(m[3]) > 1) {
    throw new LorafaError(
      file,
      `the array is big-endian (dtype '${descr}'); only little-endian data is read`,
      `convert it before saving: np.save(path, a.astype('<${kind}'))`,
    );
  }
  if (fortran === true && dims.length > 1) {
    throw new LorafaError(
      file,
      `the array is stored in Fortran (column-major) order (fortran_order: True, shape ${shapeText(dims)}); rows must be contiguous`,
      'save a C-ordered copy: np.save(path, np.ascontiguousarray(a))',
    );
  }
  if (dims.length === 0) {
    throw noRows(file, 'it holds a 0-d array (one scalar); rows are the first dimension', 'save an array of shape (rows,) or (rows, n)');
  }
  const width = Number(m[3]);
  const expected = dataOffset + dims.reduce((a, b) => a * b, 1) * width;
  if (size !== expected) {
    const why = size < expected ? 'truncated .npy file' : `${size - expected} extra bytes after the data of the .npy file`;
    throw new LorafaError(
      file,
      `${why}: ${size} bytes, expected ${expected} (${dataOffset}-byte header + shape ${shapeText(dims)} × ${width}-byte '${descr}')`,
      `the file is damaged (an interrupted copy or download?): ${SAVE} again`,
    );
  }
  if (dims[0] === 0) throw noRows(file, `its shape ${shapeText(dims)} has 0 rows`, 'save a non-empty array');
  return { kind, descr, shape: dims, dataOffset };
}

/** A .npy file as a DiskArray named `name` (1-D: scalars; more: a flattened vector per row). */
export function npyArray(file: string, { fd, size }: OpenFile, name: string): DiskArray & { readonly shape: number[] } {
  const h = readHeader(file, fd, size);
  const rowElems = h.shape.slice(1).reduce((a, b) => a * b, 1);
  const type = dtype(h.kind, h.descr);
  return {
    file,
    name,
    shape: h.shape,
    dtype: type,
    count: h.shape[0],
    rowElems,
    vector: h.shape.length > 1,
    where: (i) => `${file} row ${i}`,
    bytes: fileBytes(fd, file, h.dataOffset, rowElems * type.width),
  };
}

export async function openNpy(file: string, opened: OpenFile, labels?: string): Promise<RowSource> {
  const fds = [opened.fd];
  const closeAll = () => fds.forEach(closeQuietly);
  try {
    const x = npyArray(file, opened, 'x');
    const columns: ArrayColumn[] = [arrayColumn(x)];
    if (labels !== undefined) {
      const l = await labelColumn(labels, file, x.count);
      fds.push(...l.fds);
      columns.push(l.column);
    }
    return arraySource(file, 'npy', columns, x.where, closeAll);
  } catch (e) {
    closeAll();
    throw e;
  }
}

/** A 1-D .npy labels file as the "label" column. */
export function npyLabels(file: string): { array: DiskArray; fd: number } {
  const opened = openFile(file, 'labels file');
  try {
    const a = npyArray(file, opened, 'label');
    if (a.shape.length !== 1) {
      throw new LorafaError(file, `a labels file must be 1-D (one label per row), but this array has shape ${shapeText(a.shape)}`, 'save the labels as a 1-D array: np.save(path, y.reshape(-1))');
    }
    return { array: a, fd: opened.fd };
  } catch (e) {
    closeQuietly(opened.fd);
    throw e;
  }
}
