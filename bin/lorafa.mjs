#!/usr/bin/env node
// Runs the TypeScript sources directly (tsx), so model files need no build step either.
import { register } from 'tsx/esm/api';

register();
const { main } = await import('../src/cli/main.ts');
process.exitCode = await main(process.argv.slice(2));
