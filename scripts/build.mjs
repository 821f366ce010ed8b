#!/usr/bin/env node
// `npm run build`: src/ → dist/ (tsc -p tsconfig.build.json: JavaScript, declarations, source maps),
// the module hooks copied beside them, and dist/.src-sha256, the hash of the sources it was built
// from (scripts/dist-stamp.mjs): what lets bin/lorafa.mjs run dist/ in a checkout. The hash is
// taken before tsc starts and written only after it succeeded and only if the sources did not
// change meanwhile, so a failed or raced build leaves dist/ counted stale.
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { sourceHash, STAMP } from './dist-stamp.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const before = sourceHash(root);
rmSync(join(root, STAMP), { force: true });
const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
const r = spawnSync(process.execPath, [tsc, '-p', 'tsconfig.build.json'], { cwd: root, stdio: 'inherit' });
if (r.status !== 0) process.exit(r.status ?? 1);
mkdirSync(join(root, 'dist', 'model'), { recursive: true });
copyFileSync(join(root, 'src', 'model', 'hooks.mjs'), join(root, 'dist', 'model', 'hooks.mjs'));
if (sourceHash(root) !== before) {
  console.error('build: src/ changed while tsc ran; dist/ is left stale (bin/lorafa.mjs runs the sources). Run npm run build again.');
  process.exit(1);
}
writeFileSync(join(root, STAMP), before + '\n');
