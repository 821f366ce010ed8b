// maskedMean and maskedMax (src/ir/builder.ts): the spam classifier's poolings, the mean and the
// largest value of each row's real tokens. Forward against a plain mean / max over the real
// positions, and the gradient against float64 finite differences, with fast-check choosing shapes,
// values and masks (empty rows included).
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { Builder } from '../src/ir/builder.ts';
import { verify } from '../src/ir/verify.ts';
import { autodiff, gradName } from '../src/passes/autodiff.ts';
import { runReference } from '../src/runtime/reference.ts';
import { property } from './helpers.ts';

const caseArb = fc
  .record({ b: fc.integer({ min: 1, max: 3 }), s: fc.integer({ min: 1, max: 6 }), d: fc.integer({ min: 1, max: 4 }) })
  .chain((sh) =>
    fc.record({
      ...Object.fromEntries(Object.entries(sh).map(([k, v]) => [k, fc.constant(v)])),
      // Distinct values at least 1e-3 apart: max pooling's gradient is a finite difference's only away from ties.
      h: fc.uniqueArray(fc.integer({ min: -2000, max: 2000 }), { minLength: sh.b * sh.s * sh.d, maxLength: sh.b * sh.s * sh.d }).map((v) => v.map((x) => x / 1000)),
      c: fc.array(fc.double({ min: -2, max: 2, noNaN: true }), { minLength: sh.b * sh.d, maxLength: sh.b * sh.d }),
      mask: fc.array(fc.constantFrom(0, 1), { minLength: sh.b * sh.s, maxLength: sh.b * sh.s }),
    }),
  ) as fc.Arbitrary<{ b: number; s: number; d: number; h: number[]; c: number[]; mask: number[] }>;

type Pool = 'mean' | 'max';

/** loss = Σ pool(h, mask)·c; the pooled rows and ∂loss/∂h. */
function run(t: { b: number; s: number; d: number }, feeds: Record<string, Float64Array>, pool: Pool) {
  const b = new Builder({ name: `masked-${pool}` });
  const h = b.input('h', [t.b, t.s, t.d]);
  const mask = b.input('mask', [t.b, t.s]);
  const pooled = pool === 'mean' ? b.maskedMean(h, mask) : b.maskedMax(h, mask);
  b.output('pooled', pooled);
  b.loss(b.sum(b.mul(pooled, b.input('c', [t.b, t.d]))));
  const { graph } = autodiff(verify(b.build()), { wrt: [h] });
  const out = runReference(verify(graph), { feeds }).outputs;
  return { pooled: out.pooled.data, dh: out[gradName('h')].data, loss: out.loss.data[0] };
}

describe.each(['mean', 'max'] as const)('masked %s pooling', (pool) => {
  it('pools the real tokens (0 for a row without any), and its gradient matches finite differences', () => {
    property(`masked-${pool}`, caseArb, (t) => {
      const feeds = { h: Float64Array.from(t.h), c: Float64Array.from(t.c), mask: Float64Array.from(t.mask) };
      const r = run(t, feeds, pool);
      for (let i = 0; i < t.b; i++) {
        const real = [...Array(t.s).keys()].filter((j) => t.mask[i * t.s + j] === 1);
        for (let k = 0; k < t.d; k++) {
          const vals = real.map((j) => t.h[(i * t.s + j) * t.d + k]);
          const want = !vals.length ? 0 : pool === 'mean' ? vals.reduce((a, v) => a + v, 0) / vals.length : Math.max(...vals);
          expect(r.pooled[i * t.d + k]).toBeCloseTo(want, 12);
        }
      }
      // Central differences of the loss in each element of h: padding positions get exactly 0.
      const eps = 1e-6;
      for (let e = 0; e < t.h.length; e++) {
        const at = (x: number) => run(t, { ...feeds, h: Float64Array.from(t.h, (v, j) => (j === e ? v + x : v)) }, pool).loss;
        const fd = (at(eps) - at(-eps)) / (2 * eps);
        expect(Math.abs(r.dh[e] - fd)).toBeLessThan(1e-7);
        if (t.mask[Math.floor(e / t.d)] === 0) expect(Math.abs(r.dh[e])).toBe(0);
      }
    }, { numRuns: 40 });
  });
});
