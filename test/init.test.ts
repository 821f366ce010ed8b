// Seeded parameter init, safetensors I/O and file-loaded parameters.
import { mkdtempSync, readFileSync, writeFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import { Builder } from '../src/ir/builder.ts';
import { LorafaError } from '../src/ir/errors.ts';
import { encodeSafetensors, readSafetensors, writeSafetensors } from '../src/io/safetensors.ts';
import { initParams } from '../src/runtime/init.ts';
import { runReference } from '../src/runtime/reference.ts';

const dir = mkdtempSync(join(tmpdir(), 'lorafa-init-'));

function twoLayer(order: 'ab' | 'ba') {
  const b = new Builder({ name: 't' });
  const x = b.input('x', [2, 8]);
  const shapes = { a: [8, 64], c: [64, 3] } as const;
  const names = order === 'ab' ? (['a', 'c'] as const) : (['c', 'a'] as const);
  const p: Record<string, ReturnType<Builder['param']>> = {};
  for (const n of names) p[n] = b.param(n, shapes[n], { init: { kind: 'kaiming_uniform', a: Math.sqrt(5), fanIn: shapes[n][0] } });
  b.loss(b.mean(b.matmul(b.matmul(x, p.a), p.c)));
  return b.build();
}

describe('seeded init', () => {
  test('same seed, same values; another seed, other values', () => {
    const g = twoLayer('ab');
    const a = initParams(g, { seed: 7 }).get('a')!.data;
    expect(initParams(g, { seed: 7 }).get('a')!.data).toEqual(a);
    expect(initParams(g, { seed: 8 }).get('a')!.data).not.toEqual(a);
  });

  test("a parameter's values do not depend on declaration order (streams are keyed by name)", () => {
    const ab = initParams(twoLayer('ab'), { seed: 3 });
    const ba = initParams(twoLayer('ba'), { seed: 3 });
    expect(ba.get('a')!.data).toEqual(ab.get('a')!.data);
    expect(ba.get('c')!.data).toEqual(ab.get('c')!.data);
  });

  test('kaiming-uniform(a=√5) stays inside ±1/√fan_in and fills it (PyTorch nn.Linear)', () => {
    const a = initParams(twoLayer('ab'), { seed: 1 }).get('a')!.data;
    const bound = 1 / Math.sqrt(8);
    expect(Math.max(...a.map(Math.abs))).toBeLessThanOrEqual(bound);
    expect(Math.max(...a.map(Math.abs))).toBeGreaterThan(0.95 * bound);
    const mean = a.reduce((s, v) => s + v, 0) / a.length;
    expect(Math.abs(mean)).toBeLessThan(0.05 * bound * 4);
  });

  test('normal(std) has about that std; tril and rope buffers are exact', () => {
    const b = new Builder();
    const n = b.param('n', [4000], { init: { kind: 'normal', std: 0.5 } });
    const t = b.param('t', [3, 3], { init: { kind: 'tril' } });
    const c = b.param('c', [4, 2], { init: { kind: 'rope', part: 'cos', base: 10000, dim: 4 } });
    b.loss(b.add(b.add(b.sum(n), b.sum(t)), b.sum(c)));
    const p = initParams(b.build(), { seed: 0 });
    const v = p.get('n')!.data;
    const std = Math.sqrt(v.reduce((s, x) => s + x * x, 0) / v.length);
    expect(std).toBeGreaterThan(0.47);
    expect(std).toBeLessThan(0.53);
    expect([...p.get('t')!.data]).toEqual([1, 0, 0, 1, 1, 0, 1, 1, 1]);
    // pos 3, i 1: cos(3 · 10000^(-2/4)) = cos(0.03)
    expect(p.get('c')!.data[3 * 2 + 1]).toBeCloseTo(Math.cos(0.03), 15);
  });
});

describe('safetensors', () => {
  test('round trip F32/F64/I32 bit for bit, header 8-byte aligned, atomic write leaves no temp file', () => {
    const f32 = Float32Array.from([1.5, -2.25, 3.1415927, 1e-30]);
    const tensors = new Map([
      ['w', { dtype: 'F32' as const, shape: [2, 2], data: f32 }],
      ['d', { dtype: 'F64' as const, shape: [3], data: [Math.PI, -0, 1e300] }],
      ['i', { dtype: 'I32' as const, shape: [2], data: [7, -3] }],
    ]);
    const path = join(dir, 'rt.safetensors');
    writeSafetensors(path, tensors, { format: 'pt' });
    const buf = readFileSync(path);
    expect(Number(buf.readBigUInt64LE(0)) % 8).toBe(0);
    expect(readdirSync(dir).filter((f) => f.includes('.tmp-'))).toEqual([]);
    const back = readSafetensors(path);
    expect([...back.get('w')!.data]).toEqual([...f32]);
    expect(back.get('w')!.shape).toEqual([2, 2]);
    expect([...back.get('d')!.data]).toEqual([Math.PI, -0, 1e300]);
    expect([...back.get('i')!.data]).toEqual([7, -3]);
  });

  test('truncated, garbage and inconsistent files are refused with the path and the reason', () => {
    const good = encodeSafetensors(new Map([['w', { dtype: 'F32' as const, shape: [4], data: [1, 2, 3, 4] }]]));
    const cases: [string, Buffer, RegExp][] = [
      ['short', good.subarray(0, 5), /shorter than the 8-byte header length/],
      ['truncated', good.subarray(0, good.length - 4), /needs 16 bytes/],
      ['huge-header', Buffer.concat([Buffer.from([0xff, 0xff, 0, 0, 0, 0, 0, 0]), good.subarray(8)]), /header length .* exceeds/],
      ['not-json', Buffer.concat([good.subarray(0, 8), Buffer.alloc(good.length - 8, 0x41)]), /header is not JSON/],
    ];
    for (const [name, bytes, why] of cases) {
      const path = join(dir, `${name}.safetensors`);
      writeFileSync(path, bytes);
      expect(() => readSafetensors(path), name).toThrow(LorafaError);
      expect(() => readSafetensors(path), name).toThrow(why);
      expect(() => readSafetensors(path), name).toThrow(path);
    }
  });
});

describe("init { kind: 'file' }", () => {
  const path = join(dir, 'weights.safetensors');
  writeSafetensors(path, new Map([['proj.weight', { dtype: 'F32' as const, shape: [3, 2], data: [1, 2, 3, 4, 5, 6] }]]));

  function model(key?: string, shape: readonly number[] = [3, 2]) {
    const b = new Builder({ name: 'f' });
    const x = b.input('x', [1, shape[0]]);
    const w = b.param('proj.weight', shape, { init: { kind: 'file', path, key } });
    b.loss(b.sum(b.matmul(x, w)));
    return b.build();
  }

  test('loads the tensor named like the parameter, and the reference uses it', () => {
    const r = runReference(model(), { feeds: { x: [1, 0, -1] } });
    expect([...r.params.get('proj.weight')!.data]).toEqual([1, 2, 3, 4, 5, 6]);
    // x·W = [1-5, 2-6] → sum = -8
    expect(r.outputs.loss.data[0]).toBe(-8);
  });

  test('a missing key lists what the file holds; a wrong shape names both shapes', () => {
    expect(() => initParams(model('nope'), { seed: 0 })).toThrow(/"nope" is not in .*\n\s+fix: the file holds: proj.weight/);
    expect(() => initParams(model(undefined, [2, 3]), { seed: 0 })).toThrow(/has shape \[3,2\], parameter "proj.weight" expects \[2,3\]/);
  });
});
