// Learning-rate schedules: a linear warm-up from 0 to the peak lr over `warmup` steps, then
//   cosine    half a cosine from lr down to lr·minRatio at the last step;
//   linear    a straight line from lr down to lr·minRatio at the last step;
//   constant  lr until the end.
// Step t counts optimizer steps from 1. minRatio defaults to 0.1 (lorafa's presets; transformers'
// get_cosine_schedule_with_warmup decays to 0: pass minRatio 0 for that).
import { LorafaError } from '../ir/errors.ts';

export const LR_SCHEDULES = ['cosine', 'linear', 'constant'] as const;
export type LrScheduleName = (typeof LR_SCHEDULES)[number];

export interface LrSchedule {
  readonly kind: LrScheduleName;
  /** Peak learning rate. */
  readonly lr: number;
  readonly warmup: number;
  readonly steps: number;
  readonly minRatio: number;
}

/** The default warm-up: a tenth of the run, at most `cap` steps (a preset's own warm-up, or 100). */
export function defaultWarmup(steps: number, cap = 100): number {
  return Math.min(cap, Math.floor(steps / 10));
}

export function checkSchedule(s: LrSchedule): LrSchedule {
  if (!(LR_SCHEDULES as readonly string[]).includes(s.kind)) throw new LorafaError('--lr-schedule', `unknown schedule "${s.kind}"`, `use one of: ${LR_SCHEDULES.join(', ')}`);
  if (!(Number.isFinite(s.lr) && s.lr >= 0)) throw new LorafaError('--lr', `must be a finite number ≥ 0, got ${s.lr}`, 'e.g. --lr 1e-3');
  if (!(Number.isInteger(s.warmup) && s.warmup >= 0)) throw new LorafaError('--warmup', `must be a whole number of steps ≥ 0, got ${s.warmup}`, 'e.g. --warmup 20');
  if (!(Number.isFinite(s.minRatio) && s.minRatio >= 0 && s.minRatio <= 1)) throw new LorafaError('--min-lr-ratio', `must be in [0, 1], got ${s.minRatio}`, 'e.g. --min-lr-ratio 0.1');
  return s;
}

/** The learning rate of optimizer step t (1-based). */
export function lrAt(s: LrSchedule, t: number): number {
  const { lr, warmup, steps, minRatio } = s;
  if (t <= warmup) return (lr * t) / Math.max(1, warmup);
  if (s.kind === 'constant') return lr;
  const p = Math.min(1, (t - warmup) / Math.max(1, steps - warmup));
  // Written as the presets were trained (the factors in this order), so their runs stay bit for bit.
  if (s.kind === 'cosine') return lr * (minRatio + (1 - minRatio) * 0.5 * (1 + Math.cos(Math.PI * p)));
  return lr * (minRatio + (1 - minRatio) * (1 - p));
}

export function describeSchedule(s: LrSchedule): string {
  const tail = s.kind === 'constant' ? 'then constant' : `then ${s.kind} to ${s.minRatio === 0 ? '0' : `lr × ${s.minRatio}`}`;
  return `lr ${s.lr}, warm-up ${s.warmup} steps, ${tail}`;
}
