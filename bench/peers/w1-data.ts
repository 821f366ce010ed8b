// The W1 workload's starting point, shared by every system in `npm run bench:peers`: generated once
// from a seed and written to bench/.cache/ as safetensors (F32), so lorafa, TF.js, jax-js and
// PyTorch all start from the same bytes.
//
// W1: n tokens of width d through `layers` layers y = x·W + s·(x·A)·B (W frozen, s = alpha/r),
// GELU (tanh approximation) between layers (not after the last), MSE = mean((h − target)²).
//
// Keys (lorafa layout: y = x·W, so W is [in, out] = [d, d]; A is [d, r]; B is [r, d]):
//   x [n, d]                     uniform in [−1, 1)
//   target [n, d]                sin(2·x)
//   layers.<i>.fc.weight [d, d]  kaiming-uniform (bound 1/√d, as nn.Linear)
//   layers.<i>.fc.lora_A [d, r]  kaiming-uniform a=√5 (bound 1/√d, as PEFT)
//   layers.<i>.fc.lora_B [r, d]  zeros (as PEFT)
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { writeSafetensors } from '../../src/io/safetensors.ts';
import { streamFor } from '../../src/runtime/init.ts';

export interface W1Shape {
  readonly n: number;
  readonly d: number;
  readonly r: number;
  readonly layers: number;
}

/** Hyperparameters every system uses (the loss after k steps must agree). */
export const W1_HYPER = {
  alpha: 16,
  sgd: { lr: 50 },
  adamw: { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01 },
} as const;

/** The version of an installed npm package (its package.json under the checkout's node_modules), or null. */
export function packageVersion(name: string): string | null {
  const f = join(resolve(dirname(fileURLToPath(import.meta.url)), '..', '..'), 'node_modules', name, 'package.json');
  return existsSync(f) ? (JSON.parse(readFileSync(f, 'utf8')) as { version: string }).version : null;
}

export const CACHE = resolve(dirname(fileURLToPath(import.meta.url)), '..', '.cache');

export function w1DataFile(s: W1Shape, seed: number): string {
  return join(CACHE, `w1-n${s.n}-d${s.d}-r${s.r}-L${s.layers}-seed${seed}.safetensors`);
}

/** Writes the data file once (atomically) and returns its path. */
export function w1Data(s: W1Shape, seed = 0): string {
  const file = w1DataFile(s, seed);
  if (existsSync(file)) return file;
  mkdirSync(CACHE, { recursive: true });
  const uniform = (name: string, count: number, bound: number) => {
    const u = streamFor(seed, name);
    return Float32Array.from({ length: count }, () => (2 * u() - 1) * bound);
  };
  const tensors = new Map<string, { dtype: 'F32'; shape: number[]; data: Float32Array }>();
  const x = uniform('x', s.n * s.d, 1);
  tensors.set('x', { dtype: 'F32', shape: [s.n, s.d], data: x });
  tensors.set('target', { dtype: 'F32', shape: [s.n, s.d], data: x.map((v) => Math.sin(2 * v)) });
  for (let i = 0; i < s.layers; i++) {
    tensors.set(`layers.${i}.fc.weight`, { dtype: 'F32', shape: [s.d, s.d], data: uniform(`layers.${i}.fc.weight`, s.d * s.d, 1 / Math.sqrt(s.d)) });
    tensors.set(`layers.${i}.fc.lora_A`, { dtype: 'F32', shape: [s.d, s.r], data: uniform(`layers.${i}.fc.lora_A`, s.d * s.r, 1 / Math.sqrt(s.d)) });
    tensors.set(`layers.${i}.fc.lora_B`, { dtype: 'F32', shape: [s.r, s.d], data: new Float32Array(s.r * s.d) });
  }
  writeSafetensors(file, tensors, { workload: 'W1', seed: String(seed), ...Object.fromEntries(Object.entries(s).map(([k, v]) => [k, String(v)])) });
  return file;
}
