// Whether dist/ was compiled from the sources as they are now. In a checkout bin/lorafa.mjs runs
// dist/ (plain JavaScript: no TypeScript loader to start, a few tenths of a second less per
// command) only when it is fresh, and the TypeScript sources through tsx otherwise, so an edit
// never runs stale code.
//
// Fresh means: dist/.src-sha256, written by `npm run build` (scripts/build.mjs), holds the hash of
// what the build read: every file under src/ (paths and bytes) and the files that steer tsc. A hash
// of contents, not times: a file restored with an old mtime (cp -p, tar, rsync -a) or a deleted
// one counts as a change; a touch does not. Hashing the ~100 files takes a few milliseconds.
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';

/** The stamp, relative to the package root. */
export const STAMP = join('dist', '.src-sha256');

/** Besides src/, what the build depends on. */
const BUILD_INPUTS = ['package.json', 'tsconfig.json', 'tsconfig.build.json'];

/** The hash of the build's inputs under `root` (a checkout). */
export function sourceHash(root) {
  const h = createHash('sha256');
  const files = readdirSync(join(root, 'src'), { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => relative(root, join(e.parentPath ?? e.path, e.name)))
    .sort();
  for (const f of [...BUILD_INPUTS.filter((f) => existsSync(join(root, f))), ...files]) {
    const bytes = readFileSync(join(root, f));
    h.update(`${f}\0${bytes.length}\0`).update(bytes);
  }
  return h.digest('hex');
}

/** Whether `root`'s dist/ was built from its sources as they are now. */
export function distIsFresh(root) {
  const stamp = join(root, STAMP);
  return existsSync(stamp) && readFileSync(stamp, 'utf8').trim() === sourceHash(root);
}
