#!/usr/bin/env node
// lorafa's command line. Installed from the package it runs the compiled JavaScript in dist/; in a
// checkout (src/ beside bin/) the TypeScript sources, so there is no build step while developing.
// Either way tsx is registered first, for model files (plain TypeScript in the user's folder), and
// the CLI registers lorafa's module hooks before it imports one (src/model/hooks.mjs).
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { register } from 'tsx/esm/api';

register();
globalThis[Symbol.for('lorafa.tsx')] = true;
const fromSource = existsSync(new URL('../src/cli/main.ts', import.meta.url));
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
