// Where the datasets live. Every dataset ships with an installed package (npm or Debian), so
// nothing is ever downloaded at run time; an environment variable points a loader at another copy
// (tests use this to feed corrupted files). Missing data is a LorafaError that says how to reinstall.
import { existsSync, readFileSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { LorafaError } from '../ir/errors.ts';

export const REINSTALL_NPM = 'reinstall the npm packages with `npm ci` (or `bash scripts/setup.sh`)';

/** The directory of an installed npm package: its package.json via Node's resolver, else a node_modules walk. */
export function npmPackageDir(pkg: string): string {
  try {
    return dirname(createRequire(import.meta.url).resolve(`${pkg}/package.json`));
  } catch {
    // A package whose "exports" hide package.json: look for node_modules/<pkg> upwards.
    for (let d = import.meta.dirname; ; d = dirname(d)) {
      const cand = join(d, 'node_modules', pkg);
      if (existsSync(join(cand, 'package.json'))) return cand;
      if (dirname(d) === d) break;
    }
  }
  // lorafa's built-in data sets are optional peer dependencies of the package (devDependencies of a checkout).
  let version = '';
  try {
    const own = JSON.parse(readFileSync(join(import.meta.dirname, '..', '..', 'package.json'), 'utf8')) as { peerDependencies?: Record<string, string> };
    version = own.peerDependencies?.[pkg] ? `@${own.peerDependencies[pkg]}` : '';
  } catch {
    /* the plain fix below */
  }
  throw new LorafaError(
    `npm package ${pkg}`,
    'is not installed (cannot resolve its package.json); lorafa\'s built-in data sets come as optional packages',
    `install it beside lorafa: npm install ${pkg}${version}; in a lorafa checkout, ${REINSTALL_NPM}`,
  );
}

/** `$env` when set (resolved against the cwd), else `fallback()`; the directory must exist. */
export function dataDir(env: string, fallback: () => string, fix: string): string {
  const fromEnv = process.env[env];
  const dir = fromEnv ? resolve(fromEnv) : fallback();
  let isDir = false;
  try {
    isDir = statSync(dir).isDirectory();
  } catch {
    /* reported below */
  }
  if (!isDir) {
    throw new LorafaError(dir, `dataset directory does not exist${fromEnv ? ` (from $${env})` : ''}`, fromEnv ? `point $${env} at an existing directory, or unset it` : fix);
  }
  return dir;
}
