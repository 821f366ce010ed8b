// The pure parts of `npm run bench:peers` (bench/peers/report.ts): the FLOP count every GFLOP/s
// figure divides by is checked against the matmuls of the W1 step lorafa actually compiles, and
// the loss-agreement and target checks against cases that must pass and must fail.
import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadModel, trace } from '../src/model/load.ts';
import { compileTraining } from '../src/passes/compile.ts';
import { agreement, DROP_RTOL, LOSS_RTOL, median, physicalLimit, targets, w1Flops, type Row } from '../bench/peers/report.ts';
import { ROOT } from './helpers.ts';

describe('bench:peers report', () => {
  it("w1Flops equals 2·m·n·k summed over the matmuls of lorafa's compiled W1 step, LoRA and LoRA-FA", async () => {
    const m = await loadModel(resolve(ROOT, 'models', 'w1.ts'));
    for (const [n, d, r, layers] of [
      [16, 24, 4, 3],
      [8, 12, 2, 1],
      [512, 768, 8, 4],
    ]) {
      for (const variant of ['lora', 'lora-fa'] as const) {
        const c = compileTraining(trace(m, 'w1', { batch: n, d, layers }), { mode: variant, lora: { rank: r, alpha: 2 * r, targets: ['fc'] }, optimizer: { kind: 'sgd' } });
        let flops = 0;
        for (const node of c.step!.nodes) {
          if (node.op !== 'matmul') continue;
          const [a] = node.inputs;
          const out = node.out.type.shape;
          const k = (node.attrs as { transA: boolean }).transA ? a.type.shape.at(-2)! : a.type.shape.at(-1)!;
          flops += 2 * out.at(-2)! * out.at(-1)! * k;
        }
        expect(w1Flops({ n, d, r, layers }, variant), `${variant} n${n} d${d} r${r} L${layers}`).toBe(flops);
      }
    }
  });

  it('agreement: equal losses agree; a last loss or a drop off by more than the tolerance does not', () => {
    const ref = [1, 0.9, 0.8, 0.7];
    expect(agreement(ref, ref).ok).toBe(true);
    expect(agreement(ref, ref.map((x) => x * (1 + 0.5 * LOSS_RTOL))).ok).toBe(true);
    // the last loss off by 2 × the tolerance
    expect(agreement(ref, [1, 0.9, 0.8, 0.7 * (1 + 2 * LOSS_RTOL)]).ok).toBe(false);
    // the same last loss from another start: the drop is 10% off
    const other = agreement(ref, [1.03, 0.9, 0.8, 0.7]);
    expect(other.ok).toBe(false);
    expect(other.why).toMatch(/drop/);
    expect(0.03 / 0.3).toBeGreaterThan(DROP_RTOL);
    expect(agreement(ref, [1, 0.9, NaN, 0.7]).ok).toBe(false);
    expect(agreement(ref, [1, 0.7]).ok).toBe(false);
  });

  it('physicalLimit: the best median over rounds, per library and thread count', () => {
    const runs = [
      { threads: 1, numpy_gflops: 100, torch_gflops: 90 },
      { threads: 1, numpy_gflops: 140, torch_gflops: 95 },
      { threads: 1, numpy_gflops: 120, torch_gflops: 80 },
      { threads: 2, numpy_gflops: 250, torch_gflops: 500 },
      { threads: 2, numpy_gflops: 255, torch_gflops: 240 },
      { threads: 2, numpy_gflops: 245, torch_gflops: 245 },
    ];
    // a single 500 outlier does not make the limit: medians are 120, 90, 250, 245
    expect(physicalLimit(runs)).toBe(250);
    expect(physicalLimit([])).toBe(0);
    expect(median([3, 1, 2, 10])).toBe(2.5);
  });

  it('targets: met only at ≥ 4× the speed and ≤ ¼ of the bytes, with agreeing losses', () => {
    const row = (system: string, medianMs: number, peak: number, agree: Row['agree'] = true): Row => ({ system, variant: 'lora-fa', optimizer: 'sgd', medianMs, memory: { kind: 'gpu-buffer-bytes', peak }, agree });
    const base = row('lorafa', 100, 20, 'reference');
    expect(targets([base, row('jaxjs-webgpu', 400, 80)])[0].met).toBe(true);
    expect(targets([base, row('jaxjs-webgpu', 399, 80)])[0]).toMatchObject({ met: false, why: 'under 4× faster' });
    expect(targets([base, row('tfjs-webgpu', 800, 79)])[0]).toMatchObject({ met: false, why: 'over ¼ of its bytes' });
    expect(targets([base, row('tfjs-webgpu', 800, 200, false)])[0].why).toMatch(/do not agree/);
    // other variants and optimizers are not the target's
    expect(targets([base, { ...row('tfjs-webgpu', 50, 10), optimizer: 'adamw' }])).toEqual([]);
  });
});
