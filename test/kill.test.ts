// Kill -9 at the worst moment, through the real bin: whole outputs are replaced all-or-nothing.
//   - during `compile -o` over a trained trainer folder: the old trainer stays complete and resumes;
//   - during a finetune export into an existing --out: the old outputs stay byte for byte;
//   - (during finetune training, then --resume, bit for bit: test/one-loop.test.ts.)
// LORAFA_OUTPUT_DELAY_MS holds the new folder, fully built beside the old one, for that long before
// the swap, and says so on stderr: the kill lands there.
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { alive } from '../src/io/output.ts';
import { fileDigests, ROOT } from './helpers.ts';

const W = mkdtempSync(join(tmpdir(), 'lorafa-kill-'));
afterAll(() => rmSync(W, { recursive: true, force: true }));
const bin = join(ROOT, 'bin', 'lorafa.mjs');
const MLP = join(ROOT, 'models', 'mlp.ts');
const csv = join(W, 'train.csv');

const lorafa = (args: string[]) => spawnSync(process.execPath, [bin, ...args, ...(args[0] === 'compile' ? [] : ['--progress', 'none'])], { cwd: W, encoding: 'utf8', timeout: 300_000 });

/** Runs `lorafa args` with the output delay and SIGKILLs it once the new folder waits to be swapped in. */
async function killDuringSwap(args: string[]): Promise<{ signal: string | null; stderr: string }> {
  const child = spawn(process.execPath, [bin, ...args], { cwd: W, env: { ...process.env, LORAFA_OUTPUT_DELAY_MS: '30000' } });
  let stderr = '';
  child.stdout.resume();
  child.stderr.on('data', (b) => {
    stderr += b;
    if (/\(LORAFA_OUTPUT_DELAY_MS\) .* built in .*; swapping in/.test(stderr)) child.kill('SIGKILL');
  });
  const signal = await new Promise<string | null>((res) => child.on('close', (_, s) => res(s)));
  return { signal, stderr };
}

/** Resolves once process `pid` has exited (a zombie counts), or fails after 10 s. */
async function exited(pid: number): Promise<void> {
  for (let t = 0; t < 200; t++) {
    if (!alive(pid)) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`process ${pid} still runs 10 s after its parent was killed`);
}

const digest = (dir: string) => Object.fromEntries(fileDigests(dir));

const stale = (name: string) => readdirSync(W).filter((f) => f.startsWith(`.${name}.lorafa-`));

beforeAll(() => {
  const rows = Array.from({ length: 64 }, (_, i) => [...Array.from({ length: 12 }, (_, j) => (((i * 5 + j * 7) % 13) / 6 - 1).toFixed(3)), i % 3].join(','));
  writeFileSync(csv, ['x0,x1,x2,x3,x4,x5,x6,x7,x8,x9,x10,x11,label', ...rows].join('\n') + '\n');
});

describe('kill -9 while an output is being replaced', () => {
  test('during compile -o over a trained trainer: the old trainer is untouched and still resumes', async () => {
    const T = join(W, 'trainer');
    expect(lorafa(['compile', MLP, '-o', T]).status).toBe(0);
    const trained = lorafa(['train', T, '--data', csv, '--steps', '2', '--lr-schedule', 'constant']);
    expect(trained.status, trained.stderr).toBe(0);
    const before = digest(T);
    expect(Object.keys(before)).toEqual(expect.arrayContaining(['trainer.ts', 'plan.json', 'checkpoints/step-000002.safetensors', 'adapter/adapter_model.safetensors', 'report.json']));

    // A different program (rank 4), killed with its folder built and waiting to be swapped in.
    const k = await killDuringSwap(['compile', MLP, '--rank', '4', '-o', T]);
    expect(k.signal).toBe('SIGKILL');
    expect(digest(T)).toEqual(before);
    expect(stale('trainer')).toHaveLength(1);
    // The folder is named after the process that built it (the bin's worker, which dies with the
    // bin): wait until it has exited, so the next run sees a dead pid.
    await exited(Number(stale('trainer')[0].match(/-(\d+)-\w+$/)![1]));

    // The old trainer resumes its run; the next run removes the leftover and says so.
    const r = lorafa(['train', T, '--data', csv, '--steps', '4', '--resume']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^removed \S*\.trainer\.lorafa-new-\d+-\w+ \(left by a killed run, pid \d+\)$/m);
    expect(r.stdout).toMatch(/resuming from \S*step-000002\.safetensors \(step 2\)/);
    expect(stale('trainer')).toEqual([]);

    // Uninterrupted, the recompile replaces the trainer and carries the checkpoints over.
    expect(lorafa(['compile', MLP, '--rank', '4', '-o', T]).status).toBe(0);
    const after = digest(T);
    expect(after['plan.json']).not.toBe(before['plan.json']);
    expect(after['checkpoints/step-000004.safetensors']).toBeDefined();
  }, 300_000);

  test('during a finetune export into an existing --out: the earlier outputs stay complete, byte for byte', async () => {
    const O = join(W, 'run');
    const base = ['finetune', MLP, '--data', csv, '--lr-schedule', 'constant', '--out', O, '--progress', 'none'];
    const first = lorafa([...base, '--steps', '3']);
    expect(first.status, first.stderr).toBe(0);
    const outputs = (d: Record<string, string>) => Object.fromEntries(Object.entries(d).filter(([f]) => !f.startsWith('checkpoints/')));
    const before = outputs(digest(O));
    expect(Object.keys(before).sort()).toEqual(['adapter/adapter_config.json', 'adapter/adapter_model.safetensors', 'loss.svg', 'memory.svg', 'report.json', 'report.md']);

    // Continue to step 6; killed after training, with the new outputs built and not yet swapped in.
    const k = await killDuringSwap([...base, '--steps', '6', '--resume']);
    expect(k.signal).toBe('SIGKILL');
    expect(outputs(digest(O))).toEqual(before);
    expect(JSON.parse(readFileSync(join(O, 'report.json'), 'utf8')).steps).toBe(3);
    expect(stale('run')).toHaveLength(1);
    await exited(Number(stale('run')[0].match(/-(\d+)-\w+$/)![1]));

    // The checkpoint of step 6 was written before the export: resuming finds the run finished,
    // removes the leftover folder, and writes the outputs.
    const r = lorafa([...base, '--steps', '6', '--resume']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^removed \S*\.run\.lorafa-new-\d+-\w+ \(left by a killed run, pid \d+\)$/m);
    expect(r.stdout).toMatch(/already at step 6: nothing to do/);
    expect(JSON.parse(readFileSync(join(O, 'report.json'), 'utf8')).steps).toBe(6);
    expect(stale('run')).toEqual([]);
  }, 300_000);
});
