// Long property runs: the same suites as `vitest run`, with 10,000 cases per property.
//
//   tsx scripts/fuzz.ts                     random seed, default files
//   tsx scripts/fuzz.ts --seed 123          replay a seed (or LORAFA_SEED=123)
//   tsx scripts/fuzz.ts --runs 500          fewer cases (or LORAFA_RUNS=500)
//   tsx scripts/fuzz.ts test/models.test.ts run these property files too, instead of the default extras
//   tsx scripts/fuzz.ts -- -t matmul        pass what follows `--` to vitest
//
// 1. Print the seed first, so any failure can be replayed with --seed.
// 2. Spawn vitest on test/grad.test.ts, test/ops.test.ts and the extra files, with LORAFA_RUNS,
//    LORAFA_SEED and LORAFA_FUZZ_LOG set; the `property` helper (test/helpers.ts) appends one
//    JSON line per property to the log: how many cases it ran and whether it failed.
// 3. Print the cases per property and the totals, and exit with vitest's status.
//
// Default extras: every other test/*.test.ts that calls `property(` from test/helpers.ts.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

interface LogLine {
  readonly property: string;
  readonly runs: number;
  readonly failed: boolean;
  readonly seed: number;
}

const ROOT = resolve(import.meta.dirname, '..');
const CORE = ['test/grad.test.ts', 'test/ops.test.ts'];

function parseArgs(argv: readonly string[]) {
  let seed: number | undefined;
  let runs: number | undefined;
  const files: string[] = [];
  const dashes = argv.indexOf('--');
  const passThrough = dashes >= 0 ? argv.slice(dashes + 1) : [];
  if (dashes >= 0) argv = argv.slice(0, dashes);
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      const v = a.includes('=') ? a.slice(a.indexOf('=') + 1) : argv[++i];
      const n = Number(v);
      if (v === undefined || !Number.isInteger(n)) throw new Error(`fuzz: ${a} needs an integer, got ${String(v)}`);
      return n;
    };
    if (a === '--seed' || a.startsWith('--seed=')) seed = value();
    else if (a === '--runs' || a.startsWith('--runs=')) runs = value();
    else if (a === '-h' || a === '--help') {
      console.log('usage: tsx scripts/fuzz.ts [--seed N] [--runs N] [test files…] [-- vitest options…]');
      process.exit(0);
    } else if (a.startsWith('-')) throw new Error(`fuzz: unknown option ${a} (vitest options go after --)`);
    else files.push(a);
  }
  return { seed, runs, files, passThrough };
}

/** Other test files that run their properties through the logging helper. */
function discoverPropertyFiles(): string[] {
  const dir = join(ROOT, 'test');
  return readdirSync(dir)
    .filter((f) => f.endsWith('.test.ts'))
    .map((f) => `test/${f}`)
    .filter((f) => !CORE.includes(f))
    .filter((f) => {
      const text = readFileSync(join(ROOT, f), 'utf8');
      return /from '\.\/helpers(\.ts)?'/.test(text) && /\bproperty(Async)?\(/.test(text);
    })
    .sort();
}

function readLog(file: string): LogLine[] {
  if (!existsSync(file)) return [];
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l) as LogLine);
}

function main(): number {
  const args = parseArgs(process.argv.slice(2));
  const envSeed = process.env.LORAFA_SEED ? Number(process.env.LORAFA_SEED) : undefined;
  const seed = args.seed ?? envSeed ?? Math.floor(Math.random() * 0x7fffffff);
  const runs = args.runs ?? (process.env.LORAFA_RUNS ? Number(process.env.LORAFA_RUNS) : 10_000);
  const extras = args.files.length ? args.files : discoverPropertyFiles();
  const files = [...new Set([...CORE, ...extras])];
  console.log(`lorafa fuzz: seed ${seed}, ${runs} cases per property (replay: tsx scripts/fuzz.ts --seed ${seed})`);
  console.log(`files: ${files.join(' ')}\n`);

  const dir = mkdtempSync(join(tmpdir(), 'lorafa-fuzz-'));
  const log = join(dir, 'runs.jsonl');
  const started = Date.now();
  const vitest = spawnSync('npx', ['vitest', 'run', ...files, '--testTimeout=0', ...args.passThrough], {
    cwd: ROOT,
    stdio: 'inherit',
    env: { ...process.env, LORAFA_SEED: String(seed), LORAFA_RUNS: String(runs), LORAFA_FUZZ_LOG: log },
  });
  const seconds = (Date.now() - started) / 1000;
  const lines = readLog(log);
  rmSync(dir, { recursive: true, force: true });

  // A property may run more than once (vitest retries); sum its cases.
  const byName = new Map<string, { runs: number; failed: boolean }>();
  for (const l of lines) {
    const prev = byName.get(l.property) ?? { runs: 0, failed: false };
    byName.set(l.property, { runs: prev.runs + l.runs, failed: prev.failed || l.failed });
  }
  const width = Math.max(8, ...[...byName.keys()].map((k) => k.length));
  console.log(`\n${'property'.padEnd(width)}  ${'cases'.padStart(7)}`);
  for (const [name, r] of [...byName].sort(([a], [b]) => a.localeCompare(b))) {
    console.log(`${name.padEnd(width)}  ${String(r.runs).padStart(7)}${r.failed ? '  FAILED' : ''}`);
  }
  const total = [...byName.values()].reduce((s, r) => s + r.runs, 0);
  const failed = [...byName].filter(([, r]) => r.failed).map(([n]) => n);
  const short = [...byName].filter(([, r]) => !r.failed && r.runs < runs).map(([n]) => n);
  console.log(`\n${byName.size} properties, ${total} cases in ${seconds.toFixed(1)} s, seed ${seed}`);
  if (short.length) console.log(`ran fewer than ${runs} cases (own numRuns or skips): ${short.join(', ')}`);
  if (failed.length) console.log(`FAILED: ${failed.join(', ')}  (replay: tsx scripts/fuzz.ts --seed ${seed})`);
  if (vitest.error) console.error(`fuzz: could not start vitest: ${vitest.error.message}`);
  if (byName.size === 0) {
    console.error('fuzz: no property reported its runs (is LORAFA_FUZZ_LOG honoured by test/helpers.ts?)');
    return 1;
  }
  return vitest.status ?? 1;
}

process.exit(main());
