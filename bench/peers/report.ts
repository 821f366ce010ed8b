// The pure parts of `npm run bench:peers` (bench/peers/index.ts), tested in test/peers-report.test.ts:
// the W1 step's FLOP count, whether a peer computed the same thing as lorafa, the CPU's sgemm
// limit from the measured rounds, and the targets.
import type { W1Shape } from './w1-data.ts';

export const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  if (!s.length) return NaN;
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

/**
 * Matmul FLOPs (2·m·n·k each) of one W1 training step: what the algorithm needs, the same for
 * every system. Per layer: x·W, x·A, (x·A)·B and dB = (x·A)ᵀ·dy; LoRA adds dA = xᵀ·(dy·Bᵀ) and
 * needs dy·Bᵀ at every layer; every layer but the first passes dx = dy·Wᵀ + ((dy·Bᵀ)·Aᵀ) down
 * (LoRA-FA computes dy·Bᵀ only there). Frozen W: no dW.
 */
export function w1Flops(s: W1Shape, variant: string): number {
  const { n, d, r, layers } = s;
  const fwd = 2 * n * d * d + 2 * n * d * r + 2 * n * r * d;
  const dB = 2 * n * r * d;
  const dyBt = 2 * n * d * r;
  const dA = variant === 'lora' ? 2 * n * d * r : 0;
  const dx = 2 * n * d * d + 2 * n * r * d;
  return layers * (fwd + dB + dA) + (layers - 1) * dx + (variant === 'lora' ? layers : layers - 1) * dyBt;
}

/** Losses agree when the last is within LOSS_RTOL relative of lorafa's and the drop within DROP_RTOL. */
export const LOSS_RTOL = 1e-4;
export const DROP_RTOL = 0.05;

export interface Agreement {
  readonly ok: boolean;
  /** Why not, in words (empty when ok). */
  readonly why: string;
}

/** Whether a system's per-step losses show it computed what lorafa did (`ref`: lorafa's). */
export function agreement(ref: readonly number[], got: readonly number[]): Agreement {
  if (got.length !== ref.length) return { ok: false, why: `${got.length} losses, lorafa has ${ref.length}` };
  if (!got.every(Number.isFinite)) return { ok: false, why: 'a loss is not finite' };
  const lk = ref[ref.length - 1];
  const last = got[got.length - 1];
  const refDrop = ref[0] - lk;
  const drop = got[0] - last;
  const okLoss = Math.abs(last - lk) <= LOSS_RTOL * Math.abs(lk);
  const okDrop = Math.abs(drop - refDrop) <= DROP_RTOL * Math.abs(refDrop);
  if (okLoss && okDrop) return { ok: true, why: '' };
  const parts: string[] = [];
  if (!okLoss) parts.push(`loss after ${last.toPrecision(8)} vs ${lk.toPrecision(8)}`);
  if (!okDrop) parts.push(`drop ${drop.toExponential(3)} vs ${refDrop.toExponential(3)}`);
  return { ok: false, why: parts.join('; ') };
}

export interface SgemmRun {
  readonly threads: number;
  readonly numpy_gflops: number;
  readonly torch_gflops: number;
}

/** The CPU's matmul limit: the better of numpy and torch at the better thread count, each a median over rounds. */
export function physicalLimit(runs: readonly SgemmRun[]): number {
  const threads = [...new Set(runs.map((s) => s.threads))];
  return Math.max(0, ...threads.flatMap((t) => {
    const g = runs.filter((s) => s.threads === t);
    return [median(g.map((s) => s.numpy_gflops)), median(g.map((s) => s.torch_gflops))].filter(Number.isFinite);
  }));
}

export interface Row {
  readonly system: string;
  readonly variant: string;
  readonly optimizer: string;
  readonly medianMs: number;
  readonly memory?: { readonly kind: string; readonly peak: number | null };
  readonly agree: boolean | 'reference';
}

/** The targets: lorafa's W1 LoRA-FA SGD step ≥ 4× faster and ≤ ¼ of the GPU bytes of each WebGPU peer. */
export function targets(rows: readonly Row[]): { readonly peer: string; readonly speedup: number; readonly bytesRatio: number; readonly met: boolean; readonly why: string }[] {
  const pick = (system: string) => rows.find((r) => r.system === system && r.variant === 'lora-fa' && r.optimizer === 'sgd');
  const base = pick('lorafa');
  if (!base) return [];
  return ['tfjs-webgpu', 'jaxjs-webgpu'].flatMap((peer) => {
    const p = pick(peer);
    if (!p) return [];
    const speedup = p.medianMs / base.medianMs;
    const bytesRatio = p.memory?.peak != null && base.memory?.peak ? p.memory.peak / base.memory.peak : NaN;
    const why = [
      p.agree === true ? '' : 'its losses do not agree',
      speedup >= 4 ? '' : 'under 4× faster',
      bytesRatio >= 4 ? '' : Number.isFinite(bytesRatio) ? 'over ¼ of its bytes' : 'bytes not measured',
    ].filter(Boolean);
    return [{ peer, speedup, bytesRatio, met: !why.length, why: why.join('; ') }];
  });
}
