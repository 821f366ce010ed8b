// A token sequence built by appending (a corpus tokenised row by row) and read by range. Up to
// `memoryTokens` tokens it is an Int32Array in memory; past that it spills to a temporary file
// (4 bytes a token) and ranges are read back by positioned reads, so a corpus larger than memory
// still trains. The file is removed by close() and, failing that, at process exit.
import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TokenSource } from './batches.ts';

/** 64 Mi tokens (256 MiB) in memory before spilling to disk. */
export const MEMORY_TOKENS = 64 * 1024 * 1024;

export interface TokenStore extends TokenSource {
  /** Whether the tokens live in a temporary file. */
  readonly onDisk: boolean;
  close(): void;
}

export class TokenWriter {
  private chunks: Int32Array[] = [];
  private inMemory = 0;
  private fd: number | undefined;
  private dir: string | undefined;
  private written = 0;

  constructor(private readonly memoryTokens = MEMORY_TOKENS) {}

  get length(): number {
    return this.written + this.inMemory;
  }

  append(tokens: Int32Array): void {
    if (tokens.length === 0) return;
    this.chunks.push(tokens.slice());
    this.inMemory += tokens.length;
    if (this.inMemory > this.memoryTokens) this.spill();
  }

  private spill(): void {
    if (this.fd === undefined) {
      this.dir = mkdtempSync(join(tmpdir(), 'lorafa-tokens-'));
      this.fd = openSync(join(this.dir, 'tokens.i32'), 'w+');
      const dir = this.dir;
      process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
    }
    for (const c of this.chunks) {
      const bytes = new Uint8Array(c.buffer, c.byteOffset, c.byteLength);
      for (let done = 0; done < bytes.length; ) done += writeSync(this.fd, bytes, done, bytes.length - done, this.written * 4 + done);
      this.written += c.length;
    }
    this.chunks = [];
    this.inMemory = 0;
  }

  /** The store; the writer is spent. */
  finish(): TokenStore {
    if (this.fd === undefined) {
      const all = new Int32Array(this.inMemory);
      let at = 0;
      for (const c of this.chunks) {
        all.set(c, at);
        at += c.length;
      }
      this.chunks = [];
      return { length: all.length, onDisk: false, subarray: (s, e) => all.subarray(s, e), close() {} };
    }
    this.spill();
    const fd = this.fd;
    const dir = this.dir!;
    const length = this.written;
    return {
      length,
      onDisk: true,
      subarray(start, end) {
        const s = Math.max(0, Math.min(start, length));
        const n = Math.max(0, Math.min(end, length) - s);
        const out = new Int32Array(n);
        const bytes = new Uint8Array(out.buffer);
        for (let done = 0; done < bytes.length; ) {
          const r = readSync(fd, bytes, done, bytes.length - done, s * 4 + done);
          if (r === 0) break;
          done += r;
        }
        return out;
      },
      close() {
        closeSync(fd);
        rmSync(dir, { recursive: true, force: true });
      },
    };
  }
}
