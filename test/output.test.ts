// The output layer (src/io/output.ts): every write's failure explained, whole folders replaced
// all-or-nothing, stale temporaries cleaned up, and the space check before a run. Disk-full and
// read-only cases run on small tmpfs mounts where this machine allows mounting (root in a container
// usually does); elsewhere they are skipped with a note.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, describe, expect, test } from 'vitest';
import { LorafaError } from '../src/ir/errors.ts';
import { checkOutputPath, checkWritable, cleanStale, ensureDir, outputError, replaceDir, writeFileAtomic } from '../src/io/output.ts';
import { readCheckpoint } from '../src/train/checkpoint.ts';
import { ROOT, thrown } from './helpers.ts';

const W = mkdtempSync(join(tmpdir(), 'lorafa-output-'));
const mounts: string[] = [];
afterAll(() => {
  for (const m of mounts) spawnSync('umount', ['-l', m]);
  rmSync(W, { recursive: true, force: true });
});


/** A tmpfs of `size` at a fresh folder, or undefined where mounting is not allowed. */
function tmpfs(size: string, ro = false): string | undefined {
  const dir = mkdtempSync(join(W, 'mnt-'));
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${size}${ro ? ',ro' : ''}`, 'tmpfs', dir]);
  if (r.status !== 0) {
    console.log(`output.test: skipped: cannot mount a tmpfs here (${String(r.stderr).trim()})`);
    return undefined;
  }
  mounts.push(dir);
  return dir;
}
const canMount = (() => {
  const d = tmpfs('64k');
  return d !== undefined;
})();

/** A pid that is certainly not running. */
function deadPid(): number {
  const r = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
  return Number(r.stdout);
}

describe('writeFileAtomic', () => {
  test('creates missing parent folders, and replaces a file whole', () => {
    const f = join(W, 'a', 'b', 'c.txt');
    writeFileAtomic(f, Buffer.from('one'));
    writeFileAtomic(f, Buffer.from('two'));
    expect(readFileSync(f, 'utf8')).toBe('two');
    expect(readdirSync(join(W, 'a', 'b'))).toEqual(['c.txt']);
  });

  test('a folder in the way, a file on the way: named, with a fix, nothing written', () => {
    mkdirSync(join(W, 'dir.svg'));
    const e = thrown(() => writeFileAtomic(join(W, 'dir.svg'), Buffer.from('x')));
    expect(e.message).toMatch(/dir\.svg: is a folder, and a file was expected here\n {2}fix: give a file name/);
    writeFileSync(join(W, 'plain'), 'keep');
    const e2 = thrown(() => writeFileAtomic(join(W, 'plain', 'x', 'y.json'), Buffer.from('x')));
    expect(e2.message).toMatch(/plain\/x: cannot create the folder: \S*plain is a file, not a folder\n {2}fix: move \S*plain away/);
    expect(readFileSync(join(W, 'plain'), 'utf8')).toBe('keep');
  });

  test('errno causes: each has its own words and fix', () => {
    const cases: [string, RegExp, RegExp][] = [
      ['EACCES', /permission denied/, /make \S+ writable \(ls -ld/],
      ['EPERM', /permission denied/, /writable/],
      ['EROFS', /read-only/, /writable file system/],
      ['ENOSPC', /no space left on the device \(disk full\)/, /df -h/],
      ['EDQUOT', /disk full or over quota/, /df -h/],
      ['EEXIST', /already exists/, /another path/],
      ['ENAMETOOLONG', /name is too long/, /shorter/],
    ];
    for (const [code, problem, fix] of cases) {
      const e = outputError('/x/y', Object.assign(new Error('raw'), { code }));
      expect(e.problem).toMatch(problem);
      expect(e.fix).toMatch(fix);
      expect(e.where).toBe('/x/y');
    }
  });

  test.skipIf(!canMount)('a full disk: the error says so, and the old file is intact', () => {
    const d = tmpfs('64k')!;
    const f = join(d, 'weights.bin');
    writeFileAtomic(f, Buffer.alloc(20_000, 1));
    const e = thrown(() => writeFileAtomic(f, Buffer.alloc(60_000, 2)));
    expect(e.message).toMatch(/weights\.bin: cannot write: no space left on the device \(disk full\)\n {2}fix: free space where \S+ lives \(df -h/);
    expect(readFileSync(f).equals(Buffer.alloc(20_000, 1))).toBe(true);
    expect(readdirSync(d)).toEqual(['weights.bin']);
  });

  test.skipIf(!canMount)('a read-only file system', () => {
    const d = tmpfs('64k', true)!;
    const e = thrown(() => writeFileAtomic(join(d, 'x.json'), Buffer.from('{}')));
    expect(e.message).toMatch(/x\.json: cannot write: the file system is read-only/);
  });
});

describe('ensureDir and checkOutputPath', () => {
  test('a file where a folder goes', () => {
    writeFileSync(join(W, 'f'), 'x');
    expect(thrown(() => ensureDir(join(W, 'f'), '--out')).message).toMatch(/f: is a file, not a folder\n {2}fix: pass --out a folder/);
    expect(thrown(() => checkOutputPath(join(W, 'f'), 'folder', '-o')).message).toMatch(/f: is a file, not a folder\n {2}fix: pass -o a folder/);
    expect(thrown(() => checkOutputPath(join(W, 'f', 'deep', 'out'), 'folder', '-o')).message).toMatch(/out: cannot be created: \S+\/f is a file, not a folder/);
    mkdirSync(join(W, 'svgdir'));
    expect(thrown(() => checkOutputPath(join(W, 'svgdir'), 'file', '--svg')).message).toMatch(/svgdir: is a folder, and a file was expected here\n {2}fix: pass --svg a file name/);
    // Nothing is created by the check.
    expect(existsSync(join(W, 'never', 'here'))).toBe(false);
    checkOutputPath(join(W, 'never', 'here'), 'folder', '-o');
    expect(existsSync(join(W, 'never'))).toBe(false);
  });
});

describe('replaceDir: a whole folder, all or nothing', () => {
  const fill = (d: string, files: Record<string, string>) => {
    for (const [f, t] of Object.entries(files)) writeFileAtomic(join(d, f), Buffer.from(t));
  };

  test("the new folder replaces the old; kept entries are carried as hard links; the rest goes", () => {
    const d = join(W, 'out1');
    fill(d, { 'report.md': 'old report', 'checkpoints/step-000001.safetensors': 'ckpt', 'notes.txt': 'mine' });
    const inode = statSync(join(d, 'checkpoints/step-000001.safetensors')).ino;
    replaceDir(d, (tmp) => fill(tmp, { 'report.md': 'new report' }), { keep: (f) => f !== 'report.md' });
    expect(readFileSync(join(d, 'report.md'), 'utf8')).toBe('new report');
    expect(readFileSync(join(d, 'notes.txt'), 'utf8')).toBe('mine');
    expect(statSync(join(d, 'checkpoints/step-000001.safetensors')).ino).toBe(inode);
    expect(readdirSync(W).filter((f) => f.includes('lorafa-'))).toEqual([]);
  });

  test('a build that fails leaves the old folder byte for byte, and no temporary folder', () => {
    const d = join(W, 'out2');
    fill(d, { 'a.txt': 'A', 'b/c.txt': 'C' });
    expect(() =>
      replaceDir(d, (tmp) => {
        fill(tmp, { 'a.txt': 'half-written' });
        throw new LorafaError('x', 'failed midway');
      }),
    ).toThrow(/failed midway/);
    expect(readFileSync(join(d, 'a.txt'), 'utf8')).toBe('A');
    expect(readFileSync(join(d, 'b/c.txt'), 'utf8')).toBe('C');
    expect(readdirSync(W).filter((f) => f.includes('out2.lorafa-'))).toEqual([]);
  });

  test('what a killed run left is removed and reported; a run killed between the two renames is restored', () => {
    const d = join(W, 'out3');
    fill(d, { 'x.txt': 'current' });
    const pid = deadPid();
    mkdirSync(join(W, `.out3.lorafa-new-${pid}-abc123`));
    writeFileSync(join(W, `.out3.lorafa-new-${pid}-abc123`, 'half'), 'h');
    // Another process still running (this one's parent) is left alone.
    const live = join(W, `.out3.lorafa-new-${process.ppid}-zzz999`);
    mkdirSync(live);
    const notes: string[] = [];
    replaceDir(d, (tmp) => fill(tmp, { 'x.txt': 'next' }), { log: (l) => notes.push(l) });
    expect(notes).toEqual([expect.stringMatching(new RegExp(`removed \\S*\\.out3\\.lorafa-new-${pid}-abc123 \\(left by a killed run, pid ${pid}\\)`))]);
    expect(existsSync(live)).toBe(true);
    rmSync(live, { recursive: true });

    // Killed after renaming the old folder aside and before renaming the new one in.
    const e = join(W, 'out4');
    mkdirSync(join(W, `.out4.lorafa-old-${pid}-def456`));
    writeFileSync(join(W, `.out4.lorafa-old-${pid}-def456`, 'adapter.bin'), 'the previous output');
    mkdirSync(join(W, `.out4.lorafa-new-${pid}-def457`));
    const lines = cleanStale(e);
    expect(lines).toEqual([expect.stringMatching(/restored \S*out4 from \.out4\.lorafa-old-\d+-def456 \(a run was killed while replacing it\)/), expect.stringMatching(/removed \S*\.out4\.lorafa-new-\d+-def457/)]);
    expect(readFileSync(join(e, 'adapter.bin'), 'utf8')).toBe('the previous output');
  });

  test('a process whose working folder is the one replaced follows it to the new one', () => {
    const d = join(W, 'out5');
    fill(d, { 'a.txt': 'old' });
    const r = spawnSync(
      process.execPath,
      ['--import', pathToFileURL(join(ROOT, 'node_modules', 'tsx', 'dist', 'loader.mjs')).href, '-e', `import('${join(ROOT, 'src/io/output.ts')}').then((m) => { m.replaceDir('.', (t) => m.writeFileAtomic(t + '/a.txt', Buffer.from('new'))); process.stdout.write(require('node:fs').readFileSync('a.txt', 'utf8')); })`],
      { cwd: d, encoding: 'utf8' },
    );
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe('new');
  });
});

describe('checkWritable: before a long run', () => {
  test.skipIf(!canMount)('too little free space is refused with both sizes', () => {
    const d = tmpfs('64k')!;
    expect(thrown(() => checkWritable(join(d, 'out'), 10 << 20, '--out')).message).toMatch(/out: needs about 10\.0 MiB for checkpoints and outputs, and only \d+(\.\d)? KiB is free there\n {2}fix: free space \(df -h/);
    checkWritable(join(d, 'out'), 1000, '--out');
  });

  test.skipIf(!canMount)('a disk that fills up during training: the checkpoint error names the step, the newest complete checkpoint stays, --resume continues', async () => {
    const d = tmpfs('4m')!;
    const csv = ['x0,x1,x2,x3,x4,x5,x6,x7,x8,x9,x10,x11,label', ...Array.from({ length: 40 }, (_, i) => `${Array.from({ length: 12 }, (_, j) => ((i * 7 + j * 3) % 11) / 10 - 0.5).join(',')},${i % 3}`)].join('\n') + '\n';
    writeFileSync(join(W, 'fill.csv'), csv);
    const out = join(d, 'run');
    const args = [join(ROOT, 'bin', 'lorafa.mjs'), 'finetune', join(ROOT, 'models', 'mlp.ts'), '--data', join(W, 'fill.csv'), '--steps', '40', '--checkpoint-every', '1', '--lr-schedule', 'constant', '--out', out, '--progress', 'none'];
    const child = spawn(process.execPath, args, { env: { ...process.env, LORAFA_STEP_DELAY_MS: '150' } });
    let stderr = '';
    child.stderr.on('data', (b) => (stderr += b));
    // Once two checkpoints exist, fill the disk.
    await new Promise<void>((res) => {
      const t = setInterval(() => {
        const dir = join(out, 'checkpoints');
        if (existsSync(dir) && readdirSync(dir).filter((f) => f.endsWith('.safetensors')).length >= 2) {
          clearInterval(t);
          let n = 0;
          try {
            for (;;) writeFileSync(join(d, `filler-${n++}`), Buffer.alloc(16 << 10));
          } catch {
            // full
          }
          res();
        }
      }, 20);
    });
    const code = await new Promise<number | null>((res) => child.on('close', res));
    expect(code, stderr).toBe(1);
    expect(stderr).toMatch(/step-0000\d\d\.safetensors: cannot write: no space left on the device \(disk full\) \(writing the checkpoint of step \d+\)\n {2}fix: free space where .* --resume \(the newest complete checkpoint is step \d+\)/);
    expect(stderr).not.toMatch(/^\s+at /m);
    const newest = Number(/the newest complete checkpoint is step (\d+)/.exec(stderr)![1]);
    expect(readCheckpoint(join(out, 'checkpoints', `step-${String(newest).padStart(6, '0')}.safetensors`)).step).toBe(newest);
    // Free the space; the run continues from there.
    for (const f of readdirSync(d)) if (f.startsWith('filler-')) rmSync(join(d, f));
    const r = spawnSync(process.execPath, [...args, '--resume'], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`resuming from \\S+step-${String(newest).padStart(6, '0')}\\.safetensors \\(step ${newest}\\)`));
  }, 120_000);
});
