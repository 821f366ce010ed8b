// `lorafa train <dir>` and `npx tsx <dir>/trainer.ts` as real processes: checkpoints, a run
// killed with SIGKILL and resumed, damaged and foreign checkpoints.
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test, vi } from 'vitest';
import { main } from '../src/cli/main.ts';
import type { PlanFile } from '../src/codegen/trainer-files.ts';
import { LorafaError } from '../src/ir/errors.ts';
import { checkpointFile, listCheckpoints, readCheckpoint } from '../src/runtime/checkpoint.ts';
import { loadTrainer, train } from '../src/runtime/train.ts';
import { ROOT } from './helpers.ts';

const bin = join(ROOT, 'bin', 'lorafa.mjs');
const tmp = mkdtempSync(join(tmpdir(), 'lorafa-train-cli-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

async function compileTo(dir: string, model: string): Promise<void> {
  const log = vi.spyOn(console, 'log').mockImplementation(() => {});
  const err = vi.spyOn(console, 'error').mockImplementation(() => {});
  try {
    expect(await main(['compile', `models/${model}.ts`, '--mode', 'lora-fa', '--rank', '4', '-o', dir]), err.mock.calls.flat().join('\n')).toBe(0);
  } finally {
    log.mockRestore();
    err.mockRestore();
  }
}

const compiled = join(tmp, 'compiled');
/** A fresh copy of the compiled mlp trainer (no checkpoints). */
function fresh(name: string): string {
  const dir = join(tmp, name);
  cpSync(compiled, dir, { recursive: true });
  return dir;
}

function lorafa(args: string[], env: Record<string, string> = {}) {
  return spawnSync(process.execPath, [bin, ...args], { cwd: ROOT, encoding: 'utf8', env: { ...process.env, ...env } });
}

const ckpt = (dir: string, step: number) => checkpointFile(join(dir, 'checkpoints'), step);
const steps = (dir: string) => listCheckpoints(join(dir, 'checkpoints')).map((c) => c.step).sort((a, b) => a - b);
const spec = () => (JSON.parse(readFileSync(join(compiled, 'plan.json'), 'utf8')) as PlanFile).spec;

/** Bit-for-bit equality of two checkpoints, tensor by tensor (a readable failure), then byte by byte. */
function expectSameCheckpoint(a: string, b: string) {
  const x = readCheckpoint(a);
  const y = readCheckpoint(b);
  expect([...y.tensors.keys()]).toEqual([...x.tensors.keys()]);
  for (const [name, t] of x.tensors) expect(new Uint32Array(y.tensors.get(name)!.data.buffer), name).toEqual(new Uint32Array(t.data.buffer));
  expect(y.meta).toEqual(x.meta);
  expect(readFileSync(b).equals(readFileSync(a))).toBe(true);
}

let uninterrupted: string;

beforeAll(async () => {
  await compileTo(compiled, 'mlp');
  // The uninterrupted run every resumed run must end exactly like.
  uninterrupted = fresh('uninterrupted');
  const r = lorafa(['train', uninterrupted, '--steps', '40', '--checkpoint-every', '5', '--lr', '1e-2']);
  expect(r.status, r.stderr).toBe(0);
});

describe('lorafa train', () => {
  test('prints plain progress lines when not a TTY, and keeps the newest two checkpoints with full metadata', () => {
    const a = uninterrupted;
    expect(steps(a)).toEqual([35, 40]);
    const c = readCheckpoint(ckpt(a, 40));
    const s = spec();
    expect(c.meta).toMatchObject({ step: '40', model: 'mlp', config: 'toy', mode: 'lora-fa', lr: '0.01', seed: '0', data: 'synthetic', plan_hash: s.planHash });
    expect(JSON.parse(c.meta.optimizer)).toEqual({ kind: 'adamw' });
    expect(c.meta.data_task).toMatch(/^synthetic classification/);
    // Every trainable parameter and optimizer state tensor, nothing frozen.
    const plan = (JSON.parse(readFileSync(join(a, 'plan.json'), 'utf8')) as PlanFile).kernelPlan;
    const want = plan.params.filter((p) => p.trainable || p.role === 'optimizer_state').map((p) => p.name).sort();
    expect([...c.tensors.keys()].sort()).toEqual(want);
    expect(want.some((n) => n.startsWith('optim.m.')) && want.some((n) => n.startsWith('optim.v.'))).toBe(true);
    expect(want.some((n) => n.endsWith('lora_A'))).toBe(false);
  });

  test('runs directly with tsx from another directory (absolute runtime import), and says what it trains on', () => {
    const dir = fresh('direct');
    const r = spawnSync(process.execPath, [join(ROOT, 'node_modules/tsx/dist/cli.mjs'), join(dir, 'trainer.ts'), '--steps', '3', '--lr', '1e-2'], {
      cwd: tmpdir(),
      encoding: 'utf8',
    });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^lorafa train: mlp \(config toy\), lora-fa, AdamW lr=0\.01/m);
    expect(r.stdout).toMatch(/^data: synthetic classification: .* \[synthetic\]$/m);
    expect(r.stdout).toMatch(/^step 3\/3 {2}loss \d\.\d{4} {2}[\d.]+ ms\/step {2}\d+ samples\/s {2}GPU [\d.]+ KiB {2}data synthetic$/m);
    // Same seed, same data, same steps: the first three steps of the uninterrupted run's trainer.
    expect(steps(dir)).toEqual([3]);
  });

  test('a run killed with SIGKILL mid-run, then resumed, ends bit for bit as the uninterrupted run', async () => {
    const b = fresh('killed');
    // A step delay stretches the run so the kill lands mid-run (the toy steps take ~3 ms).
    const child = spawn(process.execPath, [bin, 'train', b, '--steps', '40', '--checkpoint-every', '5', '--lr', '1e-2'], {
      cwd: ROOT,
      env: { ...process.env, LORAFA_STEP_DELAY_MS: '25' },
      stdio: 'ignore',
    });
    const exited = new Promise<NodeJS.Signals | null>((res) => child.on('exit', (_code, signal) => res(signal)));
    const t0 = Date.now();
    while (!steps(b).some((s) => s >= 10)) {
      if (Date.now() - t0 > 60_000) throw new Error('no checkpoint after 60 s');
      await new Promise((r) => setTimeout(r, 10));
    }
    await new Promise((r) => setTimeout(r, 60)); // between checkpoints: mid-step, mid-sleep or mid-write
    child.kill('SIGKILL');
    expect(await exited).toBe('SIGKILL');
    const at = Math.max(...steps(b));
    expect(at).toBeLessThan(40);

    const r = lorafa(['train', b, '--steps', '40', '--checkpoint-every', '5', '--resume']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`resuming from .*step-0000${String(at).padStart(2, '0')}\\.safetensors \\(step ${at}\\)`));
    expect(r.stdout).toMatch(/AdamW lr=0\.01/); // the checkpoint's lr, not the default
    expectSameCheckpoint(ckpt(uninterrupted, 40), ckpt(b, 40));

    // A truncated newest checkpoint is refused, naming it and the previous one…
    truncateSync(ckpt(b, 40), readFileSync(ckpt(b, 40)).length - 100);
    const refused = lorafa(['train', b, '--steps', '40', '--resume']);
    expect(refused.status).toBe(1);
    expect(refused.stderr).toMatch(/lorafa: \S*step-000040\.safetensors: newest checkpoint: unusable checkpoint: not a valid safetensors file: .*file body has/);
    expect(refused.stderr).toMatch(/fix: continue from the previous checkpoint \(step 35\): --resume-from \S*step-000035\.safetensors/);
    // …which still resumes, to the same end.
    const again = lorafa(['train', b, '--steps', '40', '--resume-from', ckpt(b, 35)]);
    expect(again.status, again.stderr).toBe(0);
    expectSameCheckpoint(ckpt(uninterrupted, 40), ckpt(b, 40));
  });

  test('a checkpoint damaged after writing fails its checksum; a different --lr or --seed is refused', async () => {
    const d = fresh('damaged');
    mkdirSync(join(d, 'checkpoints'));
    copyFileSync(ckpt(uninterrupted, 35), ckpt(d, 35));
    const bytes = readFileSync(ckpt(uninterrupted, 40));
    bytes[bytes.length - 3] ^= 0x40; // one bit of the last tensor's data
    writeFileSync(ckpt(d, 40), bytes);
    const t = loadTrainer(d, spec());
    const quiet = { progress: 'none' as const, log: () => {} };
    await expect(train(t, { steps: 45, resume: true, ...quiet })).rejects.toThrow(
      /step-000040\.safetensors: newest checkpoint: unusable checkpoint: checksum mismatch: the file was damaged after it was written\n\s+fix: continue from the previous checkpoint \(step 35\): --resume-from \S+step-000035\.safetensors/,
    );
    await expect(train(t, { steps: 45, resumeFrom: ckpt(d, 35), lr: 0.1, ...quiet })).rejects.toThrow(
      /step-000035\.safetensors: cannot resume: this checkpoint was trained with --lr 0\.01, this run asks for --lr 0\.1\n\s+fix: drop --lr \(the checkpoint's is used\) or pass --lr 0\.01/,
    );
    await expect(train(t, { steps: 45, resumeFrom: ckpt(d, 35), seed: 7, ...quiet })).rejects.toThrow(/was trained with --seed 0, this run asks for --seed 7/);
    await expect(train(t, { steps: 45, resumeFrom: ckpt(d, 35), lr: 0.01, seed: 0, ...quiet })).resolves.toMatchObject({ startStep: 35, endStep: 45 });
    // The run removed the damaged step 40 (a timeline it replaced) and kept the newest two.
    expect(steps(d)).toEqual([35, 45]);
    // A fresh run (no --resume) never discards an earlier run's checkpoints.
    await expect(train(t, { steps: 3, ...quiet })).rejects.toThrow(/checkpoints: holds checkpoints of an earlier run \(newest: step 45\)\n\s+fix: continue it with --resume, or delete \S+checkpoints to start over/);
  });

  test("another model's checkpoint is refused, naming the file, what differs and the fix", async () => {
    const e = join(tmp, 'llama');
    await compileTo(e, 'llama');
    mkdirSync(join(e, 'checkpoints'));
    copyFileSync(ckpt(uninterrupted, 40), ckpt(e, 40));
    const r = lorafa(['train', e, '--steps', '45', '--resume']);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(
      /lorafa: \S*step-000040\.safetensors: newest checkpoint: cannot resume: this checkpoint was written by a different trainer: model mlp ≠ llama \(this trainer\); sizes /,
    );
    expect(r.stderr).toMatch(/plan_hash sha256:\w+ ≠ sha256:\w+ \(this trainer\)/);
    expect(r.stderr).toMatch(/fix: resume it with the trainer compiled for mlp \(lora-fa\), or move it out of \S*checkpoints and train this model from scratch \(drop --resume\)/);
    expect(existsSync(ckpt(e, 45))).toBe(false);
    // --resume-from names it the same way; the error is a LorafaError in-process too.
    const t = loadTrainer(e, (JSON.parse(readFileSync(join(e, 'plan.json'), 'utf8')) as PlanFile).spec);
    await expect(train(t, { steps: 45, resumeFrom: ckpt(e, 40), progress: 'none', log: () => {} })).rejects.toBeInstanceOf(LorafaError);
    expect(basename(ckpt(e, 40))).toBe('step-000040.safetensors');
  });

  test('lorafa train on a directory with no trainer says how to make one', () => {
    const r = lorafa(['train', join(tmp, 'nothing-here'), '--steps', '2']);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/no compiled trainer here \(trainer\.ts and plan\.json\)\n\s+fix: compile one first: lorafa compile models\/mlp\.ts --mode lora-fa -o /);
  });
});
