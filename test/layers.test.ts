// The layers of src/ import downward only (docs/architecture.md): ir at the bottom, the command
// line at the top, and the command line only through the package door (src/index.ts). A new import
// that points up (say src/train importing src/cli, or src/runtime importing src/train) fails here,
// naming the file, the line and both layers.
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { expect, test } from 'vitest';
import { ROOT } from './helpers.ts';

const SRC = join(ROOT, 'src');
/** Lower rank = lower layer. A module may import from its own rank and below. */
const RANK: Record<string, number> = {
  ir: 0,
  io: 1,
  model: 1,
  passes: 2,
  codegen: 3,
  report: 3,
  runtime: 4,
  data: 5,
  train: 6,
  'index.ts': 7,
  cli: 8,
};

function files(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? files(join(dir, e.name)) : /\.(ts|mjs)$/.test(e.name) ? [join(dir, e.name)] : []));
}

const layerOf = (file: string) => relative(SRC, file).split(/[\\/]/)[0];

interface Edge {
  readonly from: string;
  readonly line: number;
  readonly to: string;
}

function imports(file: string): Edge[] {
  const out: Edge[] = [];
  readFileSync(file, 'utf8')
    .split('\n')
    .forEach((text, i) => {
      for (const m of text.matchAll(/(?:from\s+|import\s*\(\s*|import\s+)'(\.{1,2}\/[^']+)'/g)) out.push({ from: file, line: i + 1, to: resolve(dirname(file), m[1]) });
    });
  return out;
}

test('every layer of src/ is known, and every relative import stays inside src/', () => {
  const all = files(SRC);
  expect(all.length).toBeGreaterThan(50);
  for (const f of all) expect(RANK[layerOf(f)], relative(ROOT, f)).toBeDefined();
  for (const e of all.flatMap(imports)) expect(e.to.startsWith(SRC + '/'), `${relative(ROOT, e.from)}:${e.line} imports ${relative(ROOT, e.to)}`).toBe(true);
});

test('no module imports from a layer above its own', () => {
  const up = files(SRC)
    .flatMap(imports)
    .filter((e) => RANK[layerOf(e.to)] > RANK[layerOf(e.from)])
    .map((e) => `${relative(ROOT, e.from)}:${e.line} (${layerOf(e.from)}) imports ${relative(ROOT, e.to)} (${layerOf(e.to)})`);
  expect(up).toEqual([]);
});

test('the command line goes through the package door only', () => {
  const cli = files(join(SRC, 'cli'));
  expect(cli.length).toBeGreaterThan(0);
  const around = cli.flatMap(imports).filter((e) => !(e.to === join(SRC, 'index.ts') || layerOf(e.to) === 'cli'));
  expect(around.map((e) => `${relative(ROOT, e.from)}:${e.line} imports ${relative(ROOT, e.to)}`)).toEqual([]);
});

test('the check sees an upward import when there is one', () => {
  // The rule itself, on a made-up edge: train (6) importing cli (8) is upward; cli importing train is not.
  const edge = (from: string, to: string) => RANK[layerOf(join(SRC, to))] > RANK[layerOf(join(SRC, from))];
  expect(edge('train/loop.ts', 'cli/main.ts')).toBe(true);
  expect(edge('runtime/gpu.ts', 'train/loop.ts')).toBe(true);
  expect(edge('cli/main.ts', 'train/loop.ts')).toBe(false);
  expect(edge('data/dataset.ts', 'runtime/init.ts')).toBe(false);
});
