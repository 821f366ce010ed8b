// dist/ in a checkout: bin/lorafa.mjs runs it only when it was built from the sources as they are
// now (scripts/dist-stamp.mjs), and `npm run build` (scripts/build.mjs) records that. Checked on a
// small fake checkout in a temporary folder: the real bin and scripts beside stub sources.
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, unlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import { distIsFresh, sourceHash, STAMP } from '../scripts/dist-stamp.mjs';
import { ROOT } from './helpers.ts';

const W = mkdtempSync(join(tmpdir(), 'lorafa-build-'));
afterAll(() => rmSync(W, { recursive: true, force: true }));

function write(root: string, path: string, text: string): void {
  mkdirSync(dirname(join(root, path)), { recursive: true });
  writeFileSync(join(root, path), text);
}

/** A checkout of the real bin and scripts with stub sources whose main says which tree ran. */
function fakeCheckout(name: string): string {
  const root = join(W, name);
  for (const f of ['bin/lorafa.mjs', 'scripts/dist-stamp.mjs', 'scripts/build.mjs']) {
    mkdirSync(dirname(join(root, f)), { recursive: true });
    copyFileSync(join(ROOT, f), join(root, f));
  }
  symlinkSync(join(ROOT, 'node_modules'), join(root, 'node_modules'));
  write(root, 'package.json', '{ "type": "module" }\n');
  write(root, 'tsconfig.build.json', JSON.stringify({ compilerOptions: { target: 'ES2022', module: 'NodeNext', strict: true, rootDir: 'src', outDir: 'dist', allowImportingTsExtensions: true, rewriteRelativeImportExtensions: true, skipLibCheck: true, types: [] }, include: ['src'] }));
  write(root, 'src/cli/main.ts', "export async function main(args: readonly string[]): Promise<number> {\n  console.log(`${import.meta.url.endsWith('.ts') ? 'src' : 'dist'} ${args.join(' ')}`);\n  return 0;\n}\n");
  write(root, 'src/runtime/quiet-dawn.ts', 'export async function runWithFilteredStderr(): Promise<number | undefined> {\n  return undefined;\n}\n');
  write(root, 'src/model/hooks.mjs', 'export {};\n');
  return root;
}

const bin = (root: string, env: Record<string, string> = {}) => {
  const r = spawnSync(process.execPath, [join(root, 'bin', 'lorafa.mjs'), 'plan', 'x'], { encoding: 'utf8', env: { ...process.env, LORAFA_FROM_SOURCE: '', ...env } });
  expect(r.status, r.stderr).toBe(0);
  return r.stdout.trim();
};

const build = (root: string) => spawnSync(process.execPath, [join(root, 'scripts', 'build.mjs')], { cwd: root, encoding: 'utf8' });

describe('dist/ runs only when built from the sources as they are', () => {
  test('the hash follows contents, paths and files added or removed, not times', () => {
    const root = fakeCheckout('hash');
    const h = sourceHash(root);
    expect(distIsFresh(root), 'no stamp').toBe(false);
    write(root, STAMP, h + '\n');
    expect(distIsFresh(root)).toBe(true);
    const main = join(root, 'src/cli/main.ts');
    const text = readFileSync(main, 'utf8');
    utimesSync(main, new Date(), new Date(Date.now() + 60_000));
    expect(sourceHash(root), 'a touch').toBe(h);
    // An edit restored with its old mtime (cp -p, tar, rsync -a) still counts.
    const { atime, mtime } = statSync(main);
    writeFileSync(main, text.replace('return 0', 'return 1'));
    utimesSync(main, atime, mtime);
    expect(distIsFresh(root), 'an edit, old mtime').toBe(false);
    writeFileSync(main, text);
    expect(distIsFresh(root)).toBe(true);
    write(root, 'src/extra.ts', 'export {};\n');
    expect(distIsFresh(root), 'a file added').toBe(false);
    unlinkSync(join(root, 'src/extra.ts'));
    expect(distIsFresh(root)).toBe(true);
    write(root, 'tsconfig.build.json', '{}');
    expect(distIsFresh(root), 'the build settings').toBe(false);
  });

  test('npm run build stamps dist/; the bin runs it while fresh and the sources otherwise', () => {
    const root = fakeCheckout('bin');
    expect(bin(root), 'never built').toBe('src plan x');
    const r = build(root);
    expect(r.status, r.stdout + r.stderr).toBe(0);
    expect(readFileSync(join(root, STAMP), 'utf8').trim()).toBe(sourceHash(root));
    expect(bin(root)).toBe('dist plan x');
    expect(bin(root, { LORAFA_FROM_SOURCE: '1' })).toBe('src plan x');
    write(root, 'src/cli/other.ts', 'export const x = 1;\n');
    expect(bin(root), 'a source added since the build').toBe('src plan x');
    unlinkSync(join(root, 'src/cli/other.ts'));
    expect(bin(root)).toBe('dist plan x');
    // A build that fails leaves no stamp, whatever it emitted.
    write(root, 'src/cli/broken.ts', 'export const x: number = "no";\n');
    expect(build(root).status).not.toBe(0);
    expect(distIsFresh(root)).toBe(false);
    expect(bin(root)).toBe('src plan x');
  });
});
