// `lorafa train <dir>` as real processes, through the one training loop: checkpoints, a run killed
// with SIGKILL and resumed, damaged and foreign checkpoints, settings a resume must keep.
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test, vi } from 'vitest';
import { main } from '../src/cli/main.ts';
import { LorafaError } from '../src/ir/errors.ts';
import { checkpointFile, listCheckpoints, readCheckpoint } from '../src/train/checkpoint.ts';
import { runTrainer, type TrainFlags } from '../src/train/trainer.ts';
import type { PlanFile } from '../src/train/trainer-files.ts';
import { ROOT } from './helpers.ts';

const bin = join(ROOT, 'bin', 'lorafa.mjs');
const tmp = mkdtempSync(join(tmpdir(), 'lorafa-train-cli-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

async function compileTo(dir: string, model: string, extra: string[] = []): Promise<void> {
  const log = vi.spyOn(console, 'log').mockImplementation(() => {});
  const err = vi.spyOn(console, 'error').mockImplementation(() => {});
  try {
    expect(await main(['compile', `models/${model}.ts`, '--mode', 'lora-fa', '--rank', '4', '-o', dir, ...extra]), err.mock.calls.flat().join('\n')).toBe(0);
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

// The synthetic task at a constant lr: a run may be extended past its first --steps.
const RUN = ['--data', 'synthetic', '--lr-schedule', 'constant', '--progress', 'lines'];

function lorafa(args: string[], env: Record<string, string> = {}) {
  return spawnSync(process.execPath, [bin, ...args], { cwd: ROOT, encoding: 'utf8', env: { ...process.env, ...env } });
}

const ckpt = (dir: string, step: number) => checkpointFile(join(dir, 'checkpoints'), step);
const steps = (dir: string) => listCheckpoints(join(dir, 'checkpoints')).map((c) => c.step).sort((a, b) => a - b);
const planFile = (dir: string) => JSON.parse(readFileSync(join(dir, 'plan.json'), 'utf8')) as PlanFile;
const quiet = { progress: 'none', data: 'synthetic', lrSchedule: 'constant' } as const;
const flags = (f: Partial<TrainFlags>): TrainFlags => ({ ...quiet, ...f }) as TrainFlags;

/** Bit-for-bit equality of two checkpoints, tensor by tensor (a readable failure), then byte by byte. */
function expectSameCheckpoint(a: string, b: string) {
  const x = readCheckpoint(a);
  const y = readCheckpoint(b);
  expect([...y.tensors.keys()]).toEqual([...x.tensors.keys()]);
  for (const [name, t] of x.tensors) expect(new Uint32Array(y.tensors.get(name)!.data.buffer), name).toEqual(new Uint32Array(t.data.buffer));
  const { command: _c, ...ym } = y.meta;
  const { command: _d, ...xm } = x.meta;
  expect(ym).toEqual(xm);
}

let uninterrupted: string;
let firstRun: ReturnType<typeof lorafa>;

beforeAll(async () => {
  await compileTo(compiled, 'mlp');
  // The uninterrupted run every resumed run must end exactly like.
  uninterrupted = fresh('uninterrupted');
  firstRun = lorafa(['train', uninterrupted, '--steps', '40', '--checkpoint-every', '5', '--lr', '1e-2', ...RUN]);
  expect(firstRun.status, firstRun.stderr).toBe(0);
});

describe('lorafa train', () => {
  test('prints plain progress lines when not a TTY, and keeps the newest two checkpoints with full metadata', () => {
    const a = uninterrupted;
    expect(firstRun.stdout).toMatch(/^data: synthetic classification: .* \[synthetic\]$/m);
    expect(firstRun.stdout).toMatch(/^step 40\/40 {2}loss \d\.\d{4} {2}[\d.]+ ms\/step {2}[\d,]+ samples\/s {2}ETA \d+s {2}GPU [\d.]+ KiB$/m);
    expect(firstRun.stdout).toMatch(/lr 0\.01, warm-up 4 steps, then constant/);
    expect(steps(a)).toEqual([35, 40]);
    const c = readCheckpoint(ckpt(a, 40));
    const s = planFile(a).spec;
    expect(c.meta).toMatchObject({ step: '40', model: 'mlp', config: 'toy', mode: 'lora-fa', lr: '0.01', seed: '0', grad_accum: '1', plan_hash: s.planHash });
    expect(JSON.parse(c.meta.optimizer)).toEqual({ kind: 'adamw' });
    expect(JSON.parse(c.meta.schedule)).toEqual({ kind: 'constant', warmup: 4, minRatio: 0.1, steps: null });
    expect(c.meta.data).toMatch(/^synthetic:synthetic classification/);
    // Every trainable parameter, optimizer state tensor and adapter (A too: the adapter exports
    // and resumes from the checkpoint alone); no frozen base weight.
    const plan = planFile(a).step;
    const want = plan.params.filter((p) => p.trainable || p.role === 'optimizer_state' || p.role === 'lora_A' || p.role === 'lora_B').map((p) => p.name).sort();
    expect([...c.tensors.keys()].sort()).toEqual(want);
    expect(want.some((n) => n.startsWith('optim.m.')) && want.some((n) => n.startsWith('optim.v.'))).toBe(true);
    expect(want.some((n) => n.endsWith('lora_A'))).toBe(true);
    expect(want.some((n) => n.endsWith('.weight') && !n.startsWith('optim.') && !n.startsWith('fc3'))).toBe(false);
    // And the run's outputs beside the trainer: the PEFT adapter (A and B), the report, the loss curve.
    for (const f of ['adapter/adapter_config.json', 'adapter/adapter_model.safetensors', 'report.json', 'report.md', 'loss.svg', 'memory.svg']) expect(existsSync(join(a, f)), f).toBe(true);
  });

  test('a run killed with SIGKILL mid-run, then resumed, ends bit for bit as the uninterrupted run', async () => {
    const b = fresh('killed');
    // A step delay stretches the run so the kill lands mid-run (the toy steps take ~3 ms).
    const child = spawn(process.execPath, [bin, 'train', b, '--steps', '40', '--checkpoint-every', '5', '--lr', '1e-2', ...RUN], {
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

    // --lr is left out: a resumed run takes the checkpoint's.
    const r = lorafa(['train', b, '--steps', '40', '--checkpoint-every', '5', '--resume', '--data', 'synthetic', '--progress', 'lines']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`resuming from .*step-0000${String(at).padStart(2, '0')}\\.safetensors \\(step ${at}\\)`));
    expect(r.stdout).toMatch(/lr 0\.01, warm-up 4 steps, then constant/); // the checkpoint's settings, not the defaults
    expectSameCheckpoint(ckpt(uninterrupted, 40), ckpt(b, 40));
    // The exported adapters are the same bytes too.
    expect(readFileSync(join(b, 'adapter', 'adapter_model.safetensors')).equals(readFileSync(join(uninterrupted, 'adapter', 'adapter_model.safetensors')))).toBe(true);

    // A truncated newest checkpoint is refused, naming it and the previous one…
    truncateSync(ckpt(b, 40), readFileSync(ckpt(b, 40)).length - 100);
    const refused = lorafa(['train', b, '--steps', '40', '--resume', '--data', 'synthetic']);
    expect(refused.status).toBe(1);
    expect(refused.stderr).toMatch(/lorafa: \S*step-000040\.safetensors: newest checkpoint: unusable checkpoint: not a valid safetensors file: .*file body has/);
    expect(refused.stderr).toMatch(/fix: continue from the previous checkpoint \(step 35\): --resume-from \S*step-000035\.safetensors/);
    // …which still resumes, to the same end.
    const again = lorafa(['train', b, '--steps', '40', '--resume-from', ckpt(b, 35), '--data', 'synthetic']);
    expect(again.status, again.stderr).toBe(0);
    expectSameCheckpoint(ckpt(uninterrupted, 40), ckpt(b, 40));
  });

  test('a checkpoint damaged after writing fails its checksum; a different --lr, --seed or schedule is refused', async () => {
    const d = fresh('damaged');
    mkdirSync(join(d, 'checkpoints'));
    copyFileSync(ckpt(uninterrupted, 35), ckpt(d, 35));
    const bytes = readFileSync(ckpt(uninterrupted, 40));
    bytes[bytes.length - 3] ^= 0x40; // one bit of the last tensor's data
    writeFileSync(ckpt(d, 40), bytes);
    const spec = planFile(d).spec;
    await expect(runTrainer(d, spec, flags({ steps: 45, resume: true }))).rejects.toThrow(
      /step-000040\.safetensors: newest checkpoint: unusable checkpoint: checksum mismatch: the file was damaged after it was written\n\s+fix: continue from the previous checkpoint \(step 35\): --resume-from \S+step-000035\.safetensors/,
    );
    await expect(runTrainer(d, spec, flags({ steps: 45, resumeFrom: ckpt(d, 35), lr: 0.1 }))).rejects.toThrow(
      /step-000035\.safetensors: cannot resume: this checkpoint was trained with a different --lr: 0\.01 there, 0\.1 now\n\s+fix: resume with the run's own settings \(--lr 0\.01\)/,
    );
    await expect(runTrainer(d, spec, flags({ steps: 45, resumeFrom: ckpt(d, 35), seed: 7 }))).rejects.toThrow(/trained with a different --seed: 0 there, 7 now/);
    // A decaying schedule depends on --steps: extending a cosine run would change every step's lr.
    await expect(runTrainer(d, spec, flags({ steps: 45, resumeFrom: ckpt(d, 35), lrSchedule: 'cosine' }))).rejects.toThrow(/trained with a different learning-rate schedule/);
    await expect(runTrainer(d, spec, flags({ steps: 45, resumeFrom: ckpt(d, 35), lr: 0.01, seed: 0 }))).resolves.toMatchObject({ startStep: 35, endStep: 45 });
    // The run removed the damaged step 40 (a timeline it replaced) and kept the newest two.
    expect(steps(d)).toEqual([35, 45]);
    // A fresh run (no --resume) never discards an earlier run's checkpoints.
    await expect(runTrainer(d, spec, flags({ steps: 3 }))).rejects.toThrow(/checkpoints: holds checkpoints of an earlier run \(newest: step 45\)\n\s+fix: continue it with --resume, or delete \S+checkpoints/);
  });

  test("another model's checkpoint is refused, naming the file, what differs and the fix", async () => {
    const e = join(tmp, 'llama');
    await compileTo(e, 'llama');
    mkdirSync(join(e, 'checkpoints'));
    copyFileSync(ckpt(uninterrupted, 40), ckpt(e, 40));
    const r = lorafa(['train', e, '--steps', '45', '--resume', '--data', 'synthetic']);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/lorafa: \S*step-000040\.safetensors: newest checkpoint: cannot resume: this checkpoint was written by a different program: model mlp ≠ llama \(this trainer\); sizes /);
    expect(r.stderr).toMatch(/plan_hash sha256:\w+ ≠ sha256:\w+ \(this trainer\)/);
    expect(r.stderr).toMatch(/fix: resume it with the trainer compiled for mlp \(lora-fa\), or move the checkpoints away and start from scratch \(drop --resume\)/);
    expect(existsSync(ckpt(e, 45))).toBe(false);
    // --resume-from names it the same way; the error is a LorafaError in-process too.
    await expect(runTrainer(e, planFile(e).spec, flags({ steps: 45, resumeFrom: ckpt(e, 40) }))).rejects.toBeInstanceOf(LorafaError);
    expect(basename(ckpt(e, 40))).toBe('step-000040.safetensors');
  });

  test('flags compiled into the trainer are refused with the recompile command; --data is required', () => {
    const dir = fresh('flags');
    const batch = lorafa(['train', dir, '--steps', '2', '--data', 'synthetic', '--batch', '8']);
    expect(batch.status).toBe(1);
    expect(batch.stderr).toMatch(/lorafa: --batch: this trainer was compiled with --batch 4; 8 needs another step\n\s+fix: drop --batch, or recompile the trainer with it: lorafa compile models\/mlp\.ts .*--batch 8 -o <dir>/);
    const accum = lorafa(['train', dir, '--steps', '2', '--data', 'synthetic', '--grad-accum', '4']);
    expect(accum.status).toBe(1);
    expect(accum.stderr).toMatch(/--grad-accum: this program was compiled without gradient accumulators.*\n\s+fix: recompile it with --grad-accum 4/);
    const nodata = lorafa(['train', dir, '--steps', '2']);
    expect(nodata.status).toBe(1);
    expect(nodata.stderr).toMatch(/lorafa: --data: no training data given\n\s+fix: pass --data FILE/);
    expect(existsSync(join(dir, 'checkpoints'))).toBe(false);
  });

  test('a trainer compiled with --dtype bf16 trains in bf16 storage (GPU bytes = its plan); another --dtype is refused', async () => {
    const dir = join(tmp, 'bf16');
    await compileTo(dir, 'mlp', ['--dtype', 'bf16']);
    const plan = planFile(dir);
    expect(plan.spec.dtype).toBe('bf16');
    expect(plan.step.params.some((p) => p.dtype === 'bf16')).toBe(true);
    const r = lorafa(['train', dir, '--steps', '3', ...RUN]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/bf16 storage/);
    expect(r.stdout).toMatch(/step 3\/3\s+loss \d/);
    const [, gpu, planned] = r.stdout.match(/GPU buffers (\S+ [KMG]?i?B) \(plan peak (\S+ [KMG]?i?B), bf16 storage/) ?? [];
    expect(gpu).toMatch(/^[\d.]+ [KMG]?i?B$/);
    expect(gpu).toBe(planned);
    const other = lorafa(['train', dir, '--steps', '2', '--data', 'synthetic', '--dtype', 'f32']);
    expect(other.status).toBe(1);
    expect(other.stderr).toMatch(/lorafa: --dtype: this trainer was compiled with --dtype bf16; f32 needs another step\n\s+fix: drop --dtype, or recompile the trainer with it: lorafa compile models\/mlp\.ts .*--dtype f32 -o <dir>/);
  });

  test('a trainer compiled with --budget recomputes to fit it: GPU bytes = its plan ≤ the budget; another --budget is refused', async () => {
    // The toy LLaMA's LoRA-FA step needs 150 KiB without recomputation, 125 KiB at the least.
    const dir = join(tmp, 'budget');
    await compileTo(dir, 'llama', ['--budget', '140KiB', '--limits', 'adapter']);
    const plan = planFile(dir);
    expect(plan.spec.budget?.bytes).toBe(140 * 1024);
    expect(plan.spec.budget?.recomputed).toBeGreaterThan(0);
    expect(plan.memory.peak).toBeLessThanOrEqual(140 * 1024);
    const r = lorafa(['train', dir, '--steps', '2', ...RUN]);
    expect(r.status, r.stderr).toBe(0);
    const [, gpu, planned] = r.stdout.match(/GPU buffers (\S+ [KMG]?i?B) \(plan peak (\S+ [KMG]?i?B), budget 140 KiB: backward recomputes \d+ forward values, \+[\d.]+% FLOPs\)/) ?? [];
    expect(gpu).toMatch(/^[\d.]+ KiB$/);
    expect(gpu).toBe(planned);
    const other = lorafa(['train', dir, '--steps', '2', '--data', 'synthetic', '--budget', '1MiB']);
    expect(other.status).toBe(1);
    expect(other.stderr).toMatch(/lorafa: --budget: this trainer was compiled with --budget 143360; 1048576 needs another step/);
  });

  test('lorafa train on a directory with no trainer says how to make one', () => {
    const r = lorafa(['train', join(tmp, 'nothing-here'), '--steps', '2']);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/no compiled trainer here \(trainer\.ts and plan\.json\)\n\s+fix: compile one first: lorafa compile model\.ts --mode lora-fa -o /);
  });
});
