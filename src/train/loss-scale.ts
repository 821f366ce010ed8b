// The loss scale of a run, as torch.cuda.amp.GradScaler keeps it: the step graph (compiled with
// lossScaling, src/passes/loss-scale.ts) takes S as its backward seed, unscales the gradients and
// skips its own update on the GPU when they overflowed; this holds S between steps.
//
// - dynamic: start at 2¹⁶; after an overflow (the step's `overflow` output > 0) halve S and count
//   the step skipped; after 2000 consecutive clean steps double S. PyTorch's defaults, and
//   configurable (LossScalerOptions).
// - static (a number): S never changes; a step that overflows is still skipped.
//
// A skipped step leaves the parameters and the optimizer state as they were, so the optimizer's
// own step count (AdamW's bias corrections) does not advance: the loop feeds t − skipped. The lr
// schedule, the data order and the step numbering still advance, as in PyTorch, where
// scheduler.step() runs after a skipped optimizer.step(): a run of --steps N consumes N batches.
// The state is saved in every checkpoint (`state()`, `restore()`), so a resume is exact.
import { LorafaError } from '../ir/errors.ts';
import { lossScaleFeeds } from '../passes/loss-scale.ts';

/** What --loss-scale takes: dynamic, none, or a fixed (static) scale. */
export type LossScaleSetting = 'dynamic' | 'none' | number;

export interface LossScalerOptions {
  /** The first scale (default 2¹⁶). */
  readonly init?: number;
  /** Factor after `growthInterval` clean steps in a row (default 2). */
  readonly growthFactor?: number;
  /** Factor after an overflow (default 0.5). */
  readonly backoffFactor?: number;
  /** Clean steps in a row before the scale grows (default 2000). */
  readonly growthInterval?: number;
  /** Growth stops at this scale (default MAX_LOSS_SCALE, 2⁶⁴); it never lowers a larger one. */
  readonly maxScale?: number;
}

export const DEFAULT_LOSS_SCALE = 2 ** 16;
/**
 * Growth stops here by default (PyTorch has no cap): a run whose gradients never overflow (f32
 * storage) would otherwise double its scale every 2000 steps until 1/S, and 1/(K·S) under
 * gradient accumulation, became f32 subnormals, which a GPU may flush to zero.
 */
export const MAX_LOSS_SCALE = 2 ** 64;

export interface LossScalerState {
  readonly kind: 'dynamic' | 'static';
  readonly scale: number;
  /** Clean steps since the scale last changed (or the last overflow). */
  readonly cleanSteps: number;
  /** Steps skipped because their gradients overflowed. */
  readonly skipped: number;
  /** Times the scale grew. */
  readonly growths: number;
  /** Times the scale was cut after an overflow (0 when static). */
  readonly backoffs: number;
}

/** The default --loss-scale for a storage dtype: dynamic for f16 (its range needs it), else none. */
export function defaultLossScale(dtype: string | undefined): LossScaleSetting {
  return dtype === 'f16' ? 'dynamic' : 'none';
}

/** Parses --loss-scale: dynamic, none, or a number > 0 that f32 holds. */
export function parseLossScale(v: string): LossScaleSetting {
  const t = v.trim();
  if (t === 'dynamic' || t === 'none') return t;
  const n = Number(t);
  if (t === '' || !Number.isFinite(n) || !(n > 0) || n > 3.4028234663852886e38) {
    throw new LorafaError('--loss-scale', `must be dynamic, none, or a number > 0 that float32 holds, got "${v}"`, 'e.g. --loss-scale dynamic, or --loss-scale 1024 for a fixed scale');
  }
  return n;
}

export function describeLossScale(s: LossScaleSetting): string {
  return s === 'none' ? 'no loss scaling' : s === 'dynamic' ? 'dynamic loss scaling' : `static loss scale ${s}`;
}

export class LossScaler {
  private scaleNow: number;
  private clean = 0;
  private skippedSteps = 0;
  private growthCount = 0;
  private backoffCount = 0;
  readonly kind: 'dynamic' | 'static';
  readonly growthFactor: number;
  readonly backoffFactor: number;
  readonly growthInterval: number;
  readonly maxScale: number;

  constructor(setting: 'dynamic' | number, opts: LossScalerOptions = {}) {
    this.kind = setting === 'dynamic' ? 'dynamic' : 'static';
    this.growthFactor = opts.growthFactor ?? 2;
    this.backoffFactor = opts.backoffFactor ?? 0.5;
    this.growthInterval = opts.growthInterval ?? 2000;
    this.maxScale = opts.maxScale ?? MAX_LOSS_SCALE;
    this.scaleNow = setting === 'dynamic' ? (opts.init ?? DEFAULT_LOSS_SCALE) : setting;
    const bad = (what: string, fix: string) => {
      throw new LorafaError('--loss-scale', what, fix);
    };
    if (!(Number.isFinite(this.scaleNow) && this.scaleNow > 0)) bad(`the scale must be a finite number > 0, got ${this.scaleNow}`, 'e.g. 65536');
    if (!(this.growthFactor > 1 && Number.isFinite(this.growthFactor))) bad(`the growth factor must be > 1, got ${this.growthFactor}`, 'use 2 (PyTorch\'s default)');
    if (!(this.backoffFactor > 0 && this.backoffFactor < 1)) bad(`the backoff factor must be in (0, 1), got ${this.backoffFactor}`, 'use 0.5 (PyTorch\'s default)');
    if (!(Number.isFinite(this.maxScale) && this.maxScale > 0)) bad(`the largest scale must be a finite number > 0, got ${this.maxScale}`, 'leave it out (2^64)');
    if (!(Number.isInteger(this.growthInterval) && this.growthInterval >= 1)) bad(`the growth interval must be a whole number ≥ 1, got ${this.growthInterval}`, 'use 2000 (PyTorch\'s default)');
  }

  get scale(): number {
    return this.scaleNow;
  }

  get skipped(): number {
    return this.skippedSteps;
  }

  /**
   * The optimizer's own step count (AdamW's bias corrections) at loop step t: t minus the steps
   * skipped before it, since a skipped step left the optimizer state as it was.
   */
  optimizerStep(t: number): number {
    return t - this.skippedSteps;
  }

  /** The step's loss-scaling feeds (with gradient accumulation also pass `scale` to accumFeeds). */
  feeds(accumulate = false): Record<string, number[]> {
    return lossScaleFeeds(this.scaleNow, accumulate);
  }

  /**
   * After an optimizer step, with its `overflow` output (the count of non-finite gradient
   * elements). Returns true when the step was skipped (its update was not applied).
   */
  update(overflow: number): boolean {
    if (overflow !== 0) {
      // NaN as a count cannot come from the kernel; treat it as an overflow all the same.
      this.skippedSteps++;
      this.clean = 0;
      if (this.kind === 'dynamic') {
        this.scaleNow *= this.backoffFactor;
        this.backoffCount++;
      }
      return true;
    }
    this.clean++;
    if (this.kind === 'dynamic' && this.clean >= this.growthInterval) {
      this.clean = 0;
      const next = Math.min(this.scaleNow * this.growthFactor, this.maxScale);
      if (next > this.scaleNow) {
        this.scaleNow = next;
        this.growthCount++;
      }
    }
    return false;
  }

  state(): LossScalerState {
    return { kind: this.kind, scale: this.scaleNow, cleanSteps: this.clean, skipped: this.skippedSteps, growths: this.growthCount, backoffs: this.backoffCount };
  }

  /** Continues from a saved state (a checkpoint's); a state of the other kind is refused. */
  restore(s: LossScalerState): void {
    const ok =
      (s.kind === 'dynamic' || s.kind === 'static') &&
      Number.isFinite(s.scale) && s.scale > 0 &&
      [s.cleanSteps, s.skipped, s.growths, s.backoffs].every((n) => Number.isInteger(n) && n >= 0);
    if (!ok) throw new LorafaError('loss scaler state', `is not a valid state: ${JSON.stringify(s)}`, 'resume from a checkpoint lorafa wrote');
    if (s.kind !== this.kind) throw new LorafaError('loss scaler state', `was saved by a ${s.kind} loss scaler; this run's is ${this.kind}`, 'resume with the run\'s own --loss-scale');
    this.scaleNow = s.scale;
    this.clean = s.cleanSteps;
    this.skippedSteps = s.skipped;
    this.growthCount = s.growths;
    this.backoffCount = s.backoffs;
  }

  /** For the progress line: `scale 65536, 2 skipped, 1 growth`. */
  describe(): string {
    return describeScaler(this.state());
  }
}

/** A scaler's state in words: `scale 65536, 2 skipped, 1 growth`. */
export function describeScaler(s: LossScalerState): string {
  const parts = [`scale ${fmtScale(s.scale)}`];
  if (s.skipped) parts.push(`${s.skipped} skipped`);
  if (s.growths) parts.push(`${s.growths} growth${s.growths === 1 ? '' : 's'}`);
  return parts.join(', ');
}

/** 65536, 2^20, 0.5: powers of two past 2²⁰ as powers. */
function fmtScale(s: number): string {
  const e = Math.log2(s);
  return Number.isInteger(e) && Math.abs(e) > 20 ? `2^${e}` : String(s);
}
