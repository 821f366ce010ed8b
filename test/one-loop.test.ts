// One training loop behind every door (src/train/loop.ts), on the GPU:
// - `lorafa finetune model.ts --data …` and the generated trainer (`compile -o` + `train --data …`)
//   give bit-identical losses and adapters for the same model, data, seed and steps;
// - a finetune killed with SIGKILL, then resumed with --resume, ends bit for bit as an
//   uninterrupted run;
// - --grad-accum 4 at batch 8 trains like batch 32 (within f32; the float64 equality of the
//   accumulated step is test/grad-accum.test.ts), with the plan of batch 8 plus the accumulators;
// - --eval-every evaluates during training and plots the evaluations in loss.svg.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test, vi } from 'vitest';
import { main } from '../src/cli/main.ts';
import { readSafetensors } from '../src/io/safetensors.ts';
import { listCheckpoints, readCheckpoint } from '../src/train/checkpoint.ts';
import { finetune, type FinetuneOptions } from '../src/train/finetune.ts';
import type { TrainResult } from '../src/train/loop.ts';
import { runTrainer } from '../src/train/trainer.ts';
import type { PlanFile } from '../src/train/trainer-files.ts';
import { ROOT } from './helpers.ts';

const tmp = mkdtempSync(join(tmpdir(), 'lorafa-one-loop-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
const MLP = join(ROOT, 'models', 'mlp.ts');
const bits = (a: Float32Array | Float64Array) => new Uint32Array(Float32Array.from(a).buffer);

/** models/mlp.ts (toy: 12 features, 3 classes): a CSV of 300 rows whose label is a linear function's argmax. */
const csv = join(tmp, 'train.csv');
beforeAll(() => {
  let s = 99;
  const u = () => ((s = (s * 1103515245 + 12345) % 2147483648), s / 2147483648);
  let text = Array.from({ length: 12 }, (_, i) => `x${i}`).join(',') + ',label\n';
  for (let r = 0; r < 300; r++) {
    const x = Array.from({ length: 12 }, () => Number((2 * u() - 1).toFixed(5)));
    const sc = [x[0] + x[1] - x[2], x[3] - x[4] + x[5], x[6] + x[7] + x[8]];
    text += `${x.join(',')},${sc.indexOf(Math.max(...sc))}\n`;
  }
  writeFileSync(csv, text);
});

const quiet = { progress: 'none', log: () => {}, compare: false } as const;
const run = (o: Partial<FinetuneOptions>) => finetune({ model: MLP, data: csv, seed: 3, steps: 12, lr: 1e-2, ...quiet, ...o });

function adapterTensors(dir: string): Map<string, Float32Array> {
  return new Map([...readSafetensors(join(dir, 'adapter', 'adapter_model.safetensors'))].map(([k, t]) => [k, Float32Array.from(t.data)]));
}

describe('the same run through two doors', () => {
  let a: TrainResult;
  let b: TrainResult;
  const viaFinetune = join(tmp, 'finetune');
  const viaTrainer = join(tmp, 'trainer');
  beforeAll(async () => {
    a = await run({ out: viaFinetune, evalSplit: 0.2 });
    const log = vi.spyOn(console, 'log').mockImplementation(() => {});
    try {
      expect(await main(['compile', MLP, '--seed', '3', '-o', viaTrainer])).toBe(0);
    } finally {
      log.mockRestore();
    }
    const spec = (JSON.parse(readFileSync(join(viaTrainer, 'plan.json'), 'utf8')) as PlanFile).spec;
    b = await runTrainer(viaTrainer, spec, { data: csv, evalSplit: 0.2, steps: 12, lr: 1e-2, progress: 'none' });
  });

  test('finetune and compile -o + train: the same losses, evaluations and adapter, bit for bit', () => {
    expect(a.losses.length).toBe(12);
    expect(b.losses.map((l) => l.loss)).toEqual(a.losses.map((l) => l.loss));
    expect(b.before).toEqual(a.before);
    expect(b.after).toEqual(a.after);
    const x = adapterTensors(viaFinetune);
    const y = adapterTensors(viaTrainer);
    expect([...y.keys()].sort()).toEqual([...x.keys()].sort());
    expect([...x.keys()].some((k) => k.endsWith('lora_A.weight'))).toBe(true);
    for (const [k, v] of x) expect(bits(y.get(k)!), k).toEqual(bits(v));
  });
});

describe('a finetune killed with SIGKILL, then resumed', () => {
  const bin = join(ROOT, 'bin', 'lorafa.mjs');
  const args = (out: string) => ['finetune', MLP, '--data', csv, '--seed', '3', '--steps', '40', '--lr', '1e-2', '--checkpoint-every', '5', '--out', out, '--progress', 'none'];
  const steps = (out: string) => listCheckpoints(join(out, 'checkpoints')).map((c) => c.step);

  test('ends bit for bit as the uninterrupted run: checkpoint, adapter and losses', async () => {
    const straight = join(tmp, 'straight');
    const killed = join(tmp, 'killed');
    const s = spawnSync(process.execPath, [bin, ...args(straight)], { cwd: ROOT, encoding: 'utf8' });
    expect(s.status, s.stderr).toBe(0);
    const child = spawn(process.execPath, [bin, ...args(killed)], { cwd: ROOT, env: { ...process.env, LORAFA_STEP_DELAY_MS: '30' }, stdio: 'ignore' });
    const exited = new Promise<NodeJS.Signals | null>((res) => child.on('exit', (_c, signal) => res(signal)));
    const t0 = Date.now();
    while (!steps(killed).some((x) => x >= 15)) {
      if (Date.now() - t0 > 90_000) throw new Error('no checkpoint after 90 s');
      await new Promise((r) => setTimeout(r, 10));
    }
    await new Promise((r) => setTimeout(r, 50));
    child.kill('SIGKILL');
    expect(await exited).toBe('SIGKILL');
    const at = Math.max(...steps(killed));
    expect(at).toBeLessThan(40);
    expect(existsSync(join(killed, 'adapter'))).toBe(false); // killed before the export
    const r = spawnSync(process.execPath, [bin, ...args(killed), '--resume'], { cwd: ROOT, encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`resuming from .*step-0000${String(at).padStart(2, '0')}\\.safetensors \\(step ${at}\\)`));
    const x = readCheckpoint(join(straight, 'checkpoints', 'step-000040.safetensors'));
    const y = readCheckpoint(join(killed, 'checkpoints', 'step-000040.safetensors'));
    for (const [k, t] of x.tensors) expect(bits(y.tensors.get(k)!.data), k).toEqual(bits(t.data));
    const ax = adapterTensors(straight);
    const ay = adapterTensors(killed);
    for (const [k, v] of ax) expect(bits(ay.get(k)!), k).toEqual(bits(v));
    // The resumed run's losses are the uninterrupted run's from the resume on.
    const rx = JSON.parse(readFileSync(join(straight, 'report.json'), 'utf8')) as { losses: { step: number; loss: number }[] };
    const ry = JSON.parse(readFileSync(join(killed, 'report.json'), 'utf8')) as { losses: { step: number; loss: number }[] };
    expect(ry.losses).toEqual(rx.losses.filter((l) => l.step > at));
  });
});

describe('--grad-accum', () => {
  test('4 micro-batches of 8 train like one batch of 32 (f32 on the GPU): losses and every trained tensor', async () => {
    const opts = { optimizer: 'adamw', steps: 6, lr: 1e-2, readFrozen: true } as const;
    const big = await run({ ...opts, batch: 32 });
    const acc = await run({ ...opts, batch: 8, gradAccum: 4 });
    expect(acc.program.spec.accumulate).toBe(true);
    expect(acc.program.spec.batch).toBe(8);
    for (const [i, l] of big.losses.entries()) expect(Math.abs(acc.losses[i].loss - l.loss), `loss at step ${l.step}`).toBeLessThanOrEqual(1e-5 * l.loss);
    let checked = 0;
    for (const [name, want] of big.params) {
      if (name.startsWith('optim.grad_acc.')) continue;
      const got = acc.params.get(name)!;
      const scale = want.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
      let worst = 0;
      for (let k = 0; k < want.length; k++) worst = Math.max(worst, Math.abs(got[k] - want[k]));
      expect(worst, `${name} (max |x| ${scale})`).toBeLessThanOrEqual(1e-5 * scale + 1e-7);
      checked++;
    }
    expect(checked).toBeGreaterThan(5);
    // The step's activations are batch 8's: its plan is smaller than batch 32's, and what the
    // runner allocated is its plan.
    expect(acc.program.step.bytes).toBeLessThan(big.program.step.bytes);
    expect(acc.allocatedBytes).toBe(acc.program.step.bytes);
    // And micro-batches without the update are real: K = 1 on the accumulating program is batch 8.
    const one = await run({ ...opts, batch: 8 });
    expect(one.losses[0].loss).not.toBe(acc.losses[0].loss);
  });
});

describe('--eval-every', () => {
  test('evaluates at steps 4 and 8 as well as before and after, and loss.svg plots them', async () => {
    const out = join(tmp, 'eval-every');
    const r = await run({ out, evalSplit: 0.25, evalEvery: 4 });
    expect(r.evals.map((e) => e.step)).toEqual([0, 4, 8, 12]);
    for (const e of r.evals) expect(e.metrics.count).toBe(75);
    const svg = readFileSync(join(out, 'loss.svg'), 'utf8');
    expect(svg.match(/<circle [^>]*fill="#e65100"/g)?.length).toBe(4 + 1); // four points and the legend's marker
  });
});
