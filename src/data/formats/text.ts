// Plain text: every line is a row of one column, "text" (blank lines included); a final newline
// ends the last line rather than starting an empty one; CRLF reads as LF; a UTF-8 BOM is skipped.
import type { Row, RowSource } from '../rows.ts';
import { closeQuietly, NumberList, noRows, readSpans, readUpTo, refuseGzip, rowSource, type OpenFile } from './common.ts';

const CHUNK = 1 << 20;

/** `chunk`: bytes per read of the indexing pass (tests make it small to cross chunk boundaries). */
export function openText(file: string, { fd, size }: OpenFile, chunk = CHUNK): RowSource {
  try {
    refuseGzip(file, fd, 'text');
    return index(file, fd, size, Math.max(8, chunk));
  } catch (e) {
    closeQuietly(fd);
    throw e;
  }
}

function index(file: string, fd: number, size: number, chunkBytes: number): RowSource {
  const starts = new NumberList();
  let atLineStart = true; // the next byte starts a line
  for (let pos = 0; pos < size; ) {
    const chunk = readUpTo(fd, pos, Math.min(chunkBytes, size - pos));
    if (chunk.length === 0) break;
    let p = 0;
    if (pos === 0 && chunk.length >= 3 && chunk[0] === 0xef && chunk[1] === 0xbb && chunk[2] === 0xbf) p = 3;
    while (p < chunk.length) {
      if (atLineStart) starts.push(pos + p);
      const q = chunk.indexOf(10, p);
      if (q < 0) {
        atLineStart = false;
        break;
      }
      atLineStart = true;
      p = q + 1;
    }
    pos += chunk.length;
  }
  const count = starts.length;
  if (count === 0) {
    throw noRows(file, size === 0 ? 'the file is empty' : 'it holds only a byte-order mark', 'write one example per line');
  }
  starts.push(size);
  const at = starts.finish();
  return rowSource({
    file,
    format: 'text',
    count,
    columns: ['text'],
    where: (i) => `${file}:${i + 1}`,
    rows(indices) {
      return readSpans(fd, file, at, indices, (buf, offsets) => {
        const rows: Row[] = [];
        for (let j = 0; j + 1 < offsets.length; j++) {
          let end = offsets[j + 1];
          if (end > offsets[j] && buf[end - 1] === 10) end--;
          if (end > offsets[j] && buf[end - 1] === 13) end--;
          rows.push({ text: buf.toString('utf8', offsets[j], end) });
        }
        return rows;
      });
    },
    close: () => closeQuietly(fd),
  });
}
