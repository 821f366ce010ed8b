#!/usr/bin/env node
// lorafa's command line. It runs the compiled JavaScript in dist/: always when installed from the
// package, and in a checkout (src/ beside bin/) when dist/ is fresh, built from the sources as they
// are now (scripts/dist-stamp.mjs checks a hash that `npm run build` records). Otherwise, or with
// LORAFA_FROM_SOURCE=1, it runs the TypeScript sources through tsx, so an edit never runs stale
// code and there is no build step while developing, only a start a few tenths of a second slower.
// From dist/, tsx is registered only when a model file or a trainer is imported (src/model/load.ts
// registers it and lorafa's module hooks, src/model/hooks.mjs, first).
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const checkout = existsSync(new URL('../src/cli/main.ts', import.meta.url));
const fromSource = checkout && (process.env.LORAFA_FROM_SOURCE === '1' || !(await import('../scripts/dist-stamp.mjs')).distIsFresh(root));
if (fromSource) {
  const { register } = await import('tsx/esm/api');
  register();
  globalThis[Symbol.for('lorafa.tsx')] = true;
}
const module = (path) => new URL(fromSource ? `../src/${path}.ts` : `../dist/${path}.js`, import.meta.url).href;
const args = process.argv.slice(2);

// A command that may touch the GPU, with stderr a socket (Node's child_process), runs as a child
// whose stderr drops Dawn's driver warnings (src/runtime/quiet-dawn.ts says why and how).
const gpuCommand = ['finetune', 'train', 'tune', 'doctor'].includes(args[0]) || (args[0] === 'compile' && args.some((a) => a === '-o' || a.startsWith('--out'))) || (args[0] === 'plan' && args.includes('adapter'));
const { runWithFilteredStderr } = await import(module('runtime/quiet-dawn'));
const filtered = gpuCommand ? await runWithFilteredStderr(fileURLToPath(import.meta.url), args) : undefined;
if (filtered !== undefined) {
  process.exitCode = filtered;
} else {
  const { main } = await import(module('cli/main'));
  process.exitCode = await main(args);
}
