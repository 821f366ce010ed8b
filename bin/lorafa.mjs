#!/usr/bin/env node
// lorafa's command line. Installed from the package it runs the compiled JavaScript in dist/; in a
// checkout (src/ beside bin/) the TypeScript sources, so there is no build step while developing.
// Either way tsx is registered first, for model files (plain TypeScript in the user's folder), and
// the CLI registers lorafa's module hooks before it imports one (src/model/hooks.mjs).
import { existsSync } from 'node:fs';
import { register } from 'tsx/esm/api';

register();
globalThis[Symbol.for('lorafa.tsx')] = true;
const source = new URL('../src/cli/main.ts', import.meta.url);
const entry = existsSync(source) ? source : new URL('../dist/cli/main.js', import.meta.url);
const { main } = await import(entry.href);
process.exitCode = await main(process.argv.slice(2));
