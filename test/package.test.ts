// lorafa as a user gets it: `npm pack`, the tarball installed into empty projects outside the
// checkout, a model file of the user's own importing `lorafa`, trained on the user's CSV and JSONL
// files with `npx lorafa finetune`, and a trainer folder compiled in one project that trains and
// resumes in another.
//
// The installs reuse npm's cache (the checkout's `npm ci` filled it); they need the npm registry
// only for what the cache lacks.
import { execFileSync, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { readSafetensors } from '../src/io/safetensors.ts';
import { ROOT } from './helpers.ts';

const tmp = mkdtempSync(join(tmpdir(), 'lorafa-package-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const npm = (args: string[], cwd: string) => execFileSync('npm', args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 300_000 });

/** A fresh project with the tarball installed, as `npm init -y && npm i ./lorafa-*.tgz` makes it. */
function project(name: string, tarball: string): string {
  const dir = join(tmp, name);
  mkdirSync(dir);
  npm(['init', '-y'], dir);
  npm(['install', '--prefer-offline', '--no-audit', '--no-fund', tarball], dir);
  return dir;
}

/** `npx lorafa …` in `cwd` (the installed bin, not the checkout's). */
function lorafa(cwd: string, args: string[], env: Record<string, string> = {}) {
  const r = spawnSync(join(cwd, 'node_modules', '.bin', 'lorafa'), args, { cwd, encoding: 'utf8', timeout: 300_000, env: { ...process.env, ...env } });
  return { status: r.status, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
}

// A 3-class classifier over 12 numeric features; its labels are names, and the truth is linear.
const MODEL = `import { defineModel } from 'lorafa';

export default defineModel({
  name: 'tiny',
  configs: { base: { batch: 8, inputs: 12, hidden: 16, classes: 3 } },
  defaultConfig: 'base',
  defaultTargets: ['fc1', 'fc2'],
  modulesToSave: ['head'],
  build(b, cfg) {
    const x = b.input('x', [cfg.batch, cfg.inputs]);
    const labels = b.input('labels', [cfg.batch], 'i32');
    const h = b.relu(b.linear(x, 'fc1', cfg.hidden));
    const g = b.relu(b.linear(h, 'fc2', cfg.hidden));
    const logits = b.linear(g, 'head', cfg.classes);
    b.output('logits', logits);
    b.loss(b.crossEntropy(logits, labels));
  },
});
`;

function writeData(dir: string): void {
  let s = 12345;
  const u = () => ((s = (s * 1103515245 + 12345) % 2147483648), s / 2147483648);
  const names = ['cat', 'dog', 'fox'];
  let csv = Array.from({ length: 12 }, (_, i) => `f${i + 1}`).join(',') + ',label\n';
  let jsonl = '';
  for (let i = 0; i < 800; i++) {
    const x = Array.from({ length: 12 }, () => Number((2 * u() - 1).toFixed(4)));
    const score = [x[0] + x[1], x[2] - x[3], 2 * x[4] - x[5]];
    const label = names[score.indexOf(Math.max(...score))];
    csv += `${x.join(',')},${label}\n`;
    jsonl += JSON.stringify({ features: x, label }) + '\n';
  }
  writeFileSync(join(dir, 'train.csv'), csv);
  writeFileSync(join(dir, 'train.jsonl'), jsonl);
}

interface Report {
  before: { loss: number; accuracy: number };
  after: { loss: number; accuracy: number };
  losses: { step: number; loss: number }[];
  classes: string[];
}
const report = (dir: string) => JSON.parse(readFileSync(join(dir, 'report.json'), 'utf8')) as Report;

let tarball: string;
let user: string;

beforeAll(() => {
  // npm pack builds dist/ first (prepack), so the tarball holds the compiled package.
  const packs = join(tmp, 'packs');
  mkdirSync(packs);
  const name = npm(['pack', '--silent', '--pack-destination', packs], ROOT).trim().split('\n').pop()!;
  tarball = join(packs, name);
  user = project('user', tarball);
  writeFileSync(join(user, 'tiny.ts'), MODEL);
  writeData(user);
}, 600_000);

describe('the packed package, installed into an empty project', () => {
  test('the tarball holds the compiled package and its models, not the sources or tests', () => {
    const files = execFileSync('tar', ['tzf', tarball], { encoding: 'utf8' }).split('\n');
    expect(files).toContain('package/dist/index.js');
    expect(files).toContain('package/dist/index.d.ts');
    expect(files).toContain('package/dist/model/hooks.mjs');
    expect(files).toContain('package/bin/lorafa.mjs');
    expect(files).toContain('package/models/llama.ts');
    expect(files).toContain('package/models/pretrained/llama-brown/tokenizer.json');
    expect(files.filter((f) => f.startsWith('package/src/') || f.startsWith('package/test/'))).toEqual([]);
    const installed = JSON.parse(readFileSync(join(user, 'node_modules', 'lorafa', 'package.json'), 'utf8'));
    expect(installed.exports['.'].default).toBe('./dist/index.js');
  });

  test('a model in the user folder (package.json of npm init: CommonJS) compiles and plans with npx lorafa', () => {
    const c = lorafa(user, ['compile', 'tiny.ts']);
    expect(c.status, c.stderr).toBe(0);
    expect(c.stdout).toMatch(/^model {4}tiny\.ts \(tiny\), config base/m);
    const p = lorafa(user, ['plan', 'tiny.ts', '--compare']);
    expect(p.status, p.stderr).toBe(0);
    expect(p.stdout).toMatch(/LoRA ÷ LoRA-FA/);
  });

  test('a model in a folder with no package.json at all loads too, and its errors still name file:line', () => {
    const bare = join(tmp, 'bare');
    mkdirSync(bare);
    writeFileSync(join(bare, 'tiny.ts'), MODEL);
    writeFileSync(join(bare, 'broken.ts'), MODEL.replace("b.linear(x, 'fc1'", "b.linear(labels, 'fc1'"));
    const ok = lorafa(user, ['compile', join(bare, 'tiny.ts')]);
    expect(ok.status, ok.stderr).toBe(0);
    const bad = lorafa(user, ['compile', join(bare, 'broken.ts')]);
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/broken\.ts:12:\d+: matmul: the left operand must be a float tensor, got i32/);
  });

  test('fine-tuned with LoRA-FA on a CSV file and on a JSONL file: the loss falls, the adapter holds A and B', () => {
    for (const data of ['train.csv', 'train.jsonl']) {
      const out = join(user, `out-${data}`);
      const r = lorafa(user, ['finetune', 'tiny.ts', '--data', data, '--eval-split', '0.2', '--steps', '80', '--lr', '3e-2', '--out', out, '--progress', 'none']);
      expect(r.status, r.stderr).toBe(0);
      const rep = report(out);
      expect(rep.classes).toEqual(['cat', 'dog', 'fox']);
      const first = rep.losses.slice(0, 10).reduce((a, l) => a + l.loss, 0);
      const last = rep.losses.slice(-10).reduce((a, l) => a + l.loss, 0);
      expect(last, `${data}: ${rep.losses.map((l) => l.loss.toFixed(2)).join(' ')}`).toBeLessThan(0.85 * first);
      expect(rep.after.loss).toBeLessThan(rep.before.loss);
      expect(rep.after.accuracy).toBeGreaterThan(rep.before.accuracy);
      const adapter = readSafetensors(join(out, 'adapter', 'adapter_model.safetensors'));
      for (const m of ['fc1', 'fc2']) {
        expect(adapter.get(`base_model.model.${m}.lora_A.weight`)!.shape).toEqual([8, m === 'fc1' ? 12 : 16]);
        expect(adapter.get(`base_model.model.${m}.lora_B.weight`)!.shape).toEqual([16, 8]);
      }
      expect(adapter.has('base_model.model.head.weight')).toBe(true);
      const config = JSON.parse(readFileSync(join(out, 'adapter', 'adapter_config.json'), 'utf8'));
      expect(config).toMatchObject({ peft_type: 'LORA', r: 8, lora_alpha: 16, target_modules: ['fc1', 'fc2'], modules_to_save: ['head'] });
    }
    // The two files hold the same rows: the same run, bit for bit (the metadata names the command, which differs).
    const tensors = (d: string) => [...readSafetensors(join(user, d, 'adapter', 'adapter_model.safetensors'))].map(([k, t]) => [k, [...Float32Array.from(t.data)]]);
    expect(tensors('out-train.jsonl')).toEqual(tensors('out-train.csv'));
    expect(report(join(user, 'out-train.jsonl')).losses).toEqual(report(join(user, 'out-train.csv')).losses);
  });

  test('a trainer folder compiled here trains and resumes in another project, importing lorafa by name', () => {
    const c = lorafa(user, ['compile', 'tiny.ts', '-o', 'trainer']);
    expect(c.status, c.stderr).toBe(0);
    const text = readFileSync(join(user, 'trainer', 'trainer.ts'), 'utf8');
    expect([...text.matchAll(/from '([^']+)'/g)].map((m) => m[1])).toEqual(['lorafa']);
    const other = project('other', tarball);
    cpSync(join(user, 'trainer'), join(other, 'moved'), { recursive: true });
    cpSync(join(user, 'train.csv'), join(other, 'data.csv'));
    rmSync(join(user, 'trainer'), { recursive: true });
    const tsx = join(other, 'node_modules', '.bin', 'tsx');
    const run = (steps: number, ...more: string[]) =>
      spawnSync(tsx, ['moved/trainer.ts', '--data', 'data.csv', '--steps', String(steps), '--lr', '3e-2', '--lr-schedule', 'constant', '--checkpoint-every', '10', '--progress', 'none', ...more], { cwd: other, encoding: 'utf8', timeout: 300_000 });
    const a = run(20);
    expect(a.status, a.stderr).toBe(0);
    expect(readdirSync(join(other, 'moved', 'checkpoints')).sort()).toEqual(['step-000010.safetensors', 'step-000020.safetensors']);
    const b = run(30, '--resume');
    expect(b.status, b.stderr).toBe(0);
    expect(b.stdout).toMatch(/resuming from .*step-000020\.safetensors \(step 20\)/);
    expect(existsSync(join(other, 'moved', 'adapter', 'adapter_model.safetensors'))).toBe(true);
    expect(report(join(other, 'moved')).losses.map((l) => l.step)).toEqual(Array.from({ length: 10 }, (_, i) => 21 + i));
  });
});
