// The bad-input corpus: every kind of bad input a user can give the command line — flags, model
// files, weights, adapters, checkpoints, data, tokenizers, trainer folders, output paths — each
// run through `lorafa` in process (the same main() the bin runs), asserting:
//   - the exit code: 2 for a usage error (unknown flag, a value that does not parse), 1 otherwise;
//   - the message names the flag, file or tensor (and the problem);
//   - there is a fix line;
//   - no stack trace;
//   - the sha256 of every file that existed before is unchanged, and nothing new is left behind.
// A handful also run through the real bin as separate processes (stderr as the user sees it: no
// Dawn driver warnings, no stack trace).
import { spawnSync } from 'node:child_process';
import { copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test, vi } from 'vitest';
import { main } from '../src/cli/main.ts';
import { encodeSafetensors, readSafetensorsWithMetadata } from '../src/io/safetensors.ts';
import { fileDigests, ROOT } from './helpers.ts';

const W = mkdtempSync(join(tmpdir(), 'lorafa-bad-'));
afterAll(() => rmSync(W, { recursive: true, force: true }));
const MLP = join(ROOT, 'models', 'mlp.ts');
const LLAMA = join(ROOT, 'models', 'llama.ts');
const bin = join(ROOT, 'bin', 'lorafa.mjs');
const p = (...parts: string[]) => join(W, ...parts);

interface Run {
  code: number | 'threw';
  out: string;
  err: string;
}

/** main(args) in process, stdout and stderr captured. */
async function cli(args: string[]): Promise<Run> {
  const out: string[] = [];
  const err: string[] = [];
  const spies = [
    vi.spyOn(console, 'log').mockImplementation((...a) => void out.push(a.join(' ') + '\n')),
    vi.spyOn(console, 'error').mockImplementation((...a) => void err.push(a.join(' ') + '\n')),
    vi.spyOn(console, 'warn').mockImplementation((...a) => void err.push(a.join(' ') + '\n')),
    vi.spyOn(process.stdout, 'write').mockImplementation((s) => (out.push(String(s)), true)),
    vi.spyOn(process.stderr, 'write').mockImplementation((s) => (err.push(String(s)), true)),
  ];
  try {
    const code = await main(args);
    return { code, out: out.join(''), err: err.join('') };
  } catch (e) {
    return { code: 'threw', out: out.join(''), err: err.join('') + String((e as Error)?.stack ?? e) };
  } finally {
    for (const s of spies) s.mockRestore();
    process.exitCode = undefined;
  }
}

const digest = (dir: string) => fileDigests(dir, W);

// The toy MLP's data: 12 features → 3 classes.
let seed = 7;
const u = () => ((seed = (seed * 1103515245 + 12345) % 2147483648), seed / 2147483648);
const HEADER = [...Array.from({ length: 12 }, (_, i) => `x${i}`), 'label'];
const ROWS = Array.from({ length: 96 }, () => {
  const x = Array.from({ length: 12 }, () => Number((2 * u() - 1).toFixed(4)));
  const s = [x[0] - x[1], x[2] + x[3], x[4] - x[5]];
  return [...x, s.indexOf(Math.max(...s))];
});
const csv = (rows: (number | string)[][] = ROWS, header = HEADER) => [header.join(','), ...rows.map((r) => r.join(','))].join('\n') + '\n';
const write = (name: string, text: string | Uint8Array) => {
  const f = p(name);
  mkdirSync(join(f, '..'), { recursive: true });
  writeFileSync(f, text);
  return f;
};

/** A safetensors file from raw parts: a header object and a body (offsets as given, unchecked). */
function rawSafetensors(header: Record<string, unknown>, body: Uint8Array): Buffer {
  const h = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(h.length));
  return Buffer.concat([len, h, body]);
}

/** A copy of safetensors file `from` with `edit` applied to its tensors (f32 written back). */
function editedSafetensors(from: string, edit: (t: Map<string, { shape: number[]; data: Float64Array }>) => void): Buffer {
  const { tensors, metadata } = readSafetensorsWithMetadata(from);
  const m = new Map([...tensors].map(([k, t]) => [k, { shape: [...t.shape], data: Float64Array.from(t.data) }]));
  edit(m);
  return encodeSafetensors(new Map([...m].map(([k, t]) => [k, { dtype: 'F32' as const, shape: t.shape, data: t.data }])), metadata);
}

const QUIET = ['--progress', 'none'];
const TRAIN = ['--data', '', '--steps', '2', ...QUIET];
let trainCsv = '';
const train = (extra: string[] = []) => TRAIN.map((a, i) => (i === 1 ? trainCsv : a)).concat(extra);

beforeAll(async () => {
  trainCsv = write('data/train.csv', csv());
  // A finished LoRA-FA run (adapter, checkpoints, reports), a full one (the base weights), and a
  // trained trainer folder: the good files the bad ones are made from, and outputs to protect.
  for (const [args, what] of [
    [['finetune', MLP, ...train(['--steps', '3', '--out', p('run')])], 'lora-fa run'],
    [['finetune', MLP, '--mode', 'full', ...train(['--out', p('full')])], 'full run'],
    [['compile', MLP, '-o', p('trainer')], 'compile -o'],
    [['train', p('trainer'), ...train()], 'trainer run'],
  ] as const) {
    const r = await cli([...args]);
    expect(r.code, `${what}: ${r.err}`).toBe(0);
  }
  copyFileSync(p('full', 'model.safetensors'), write('base/model.safetensors', ''));
}, 300_000);

interface Case {
  /** What is wrong. */
  readonly name: string;
  /** The command line; built after beforeAll (paths of the good files). */
  readonly args: () => string[];
  readonly exit: 1 | 2;
  /** Each must match stderr: the flag, file or tensor, and the problem. */
  readonly says: readonly RegExp[];
  /** Makes the bad input (runs before the snapshot). */
  readonly setup?: () => void;
}

const usage = (name: string, args: string[], ...says: RegExp[]): Case => ({ name, args: () => args, exit: 2, says });

const CASES: Case[] = [
  // --- Flags: usage errors (exit 2) -------------------------------------------------------------
  usage('an unknown command', ['frobnicate'], /unknown command 'frobnicate'/),
  usage('an unknown option', ['finetune', MLP, '--lerning-rate', '1'], /unknown option '--lerning-rate'/),
  usage('a misspelt option', ['plan', MLP, '--rnak', '4'], /unknown option '--rnak'.*did you mean --rank\?/),
  usage('a missing model argument', ['compile'], /missing required argument 'model'/),
  usage('a missing option value', ['finetune', MLP, '--lr'], /option '--lr <x>' argument missing/),
  usage('--lr Infinity', ['finetune', MLP, '--lr', 'Infinity'], /--lr must be a finite number, got "Infinity"/),
  usage('--lr NaN', ['finetune', MLP, '--lr', 'NaN'], /--lr must be a finite number, got "NaN"/),
  usage('--lr -Infinity', ['finetune', MLP, '--lr', '-Infinity'], /--lr must be a finite number/),
  usage('--lr past float32', ['finetune', MLP, '--lr', '1e39'], /--lr is 1e39, past the largest float32/),
  usage('--lr not a number', ['finetune', MLP, '--lr', 'fast'], /--lr must be a finite number, got "fast"/),
  usage('--lr negative', ['finetune', MLP, '--lr', '-0.1'], /--lr must be a number ≥ 0/),
  usage('--alpha Infinity', ['plan', MLP, '--alpha', 'Infinity'], /--alpha must be a finite number, got "Infinity"/),
  usage('--alpha 0', ['finetune', MLP, '--alpha', '0'], /--alpha must be a number > 0/),
  usage('--alpha past float32', ['compile', MLP, '--alpha', '1e300'], /--alpha is 1e300, past the largest float32/),
  usage('--rank 0', ['plan', MLP, '--rank', '0'], /--rank must be a whole number ≥ 1, got "0"/),
  usage('--rank fractional', ['plan', MLP, '--rank', '2.5'], /--rank must be a whole number ≥ 1, got "2\.5"/),
  usage('--rank past 2^53', ['plan', MLP, '--rank', '1e20'], /--rank is 1e20, past the largest exact integer/),
  usage('--steps 0', ['finetune', MLP, '--steps', '0'], /--steps must be a whole number ≥ 1/),
  usage('--steps Infinity', ['finetune', MLP, '--steps', 'Infinity'], /--steps must be a finite number/),
  usage('--batch -1', ['finetune', MLP, '--batch', '-1'], /--batch must be a whole number ≥ 1/),
  usage('--seq 0', ['compile', LLAMA, '--seq', '0'], /--seq must be a whole number ≥ 1/),
  usage('--seed -1', ['finetune', MLP, '--seed', '-1'], /--seed must be a whole number ≥ 0/),
  usage('--warmup not a number', ['finetune', MLP, '--warmup', 'ten'], /--warmup must be a finite number, got "ten"/),
  usage('--min-lr-ratio negative', ['finetune', MLP, '--min-lr-ratio', '-0.5'], /--min-lr-ratio must be a number ≥ 0/),
  usage('--eval-split 1', ['finetune', MLP, '--eval-split', '1'], /--eval-split must be a fraction strictly between 0 and 1/),
  usage('--eval-split NaN', ['finetune', MLP, '--eval-split', 'NaN'], /--eval-split must be a finite number/),
  usage('--grad-accum 0', ['finetune', MLP, '--grad-accum', '0'], /--grad-accum must be a whole number ≥ 1/),
  usage('--eval-every -3', ['finetune', MLP, '--eval-every', '-3'], /--eval-every must be a whole number ≥ 0/),
  usage('--checkpoint-every 0', ['finetune', MLP, '--checkpoint-every', '0'], /--checkpoint-every must be a whole number ≥ 1/),
  usage('--log-every 0', ['finetune', MLP, '--log-every', '0'], /--log-every must be a whole number ≥ 1/),
  usage('--weight-decay -1', ['finetune', MLP, '--weight-decay', '-1'], /--weight-decay must be a number ≥ 0/),
  usage('--momentum Infinity', ['compile', MLP, '--momentum', 'Infinity'], /--momentum must be a finite number/),
  usage('--top 0', ['plan', MLP, '--top', '0'], /--top must be a whole number ≥ 1/),
  usage('--max-binding-size with a bad unit', ['plan', MLP, '--max-binding-size', '12XB'], /--max-binding-size must be a byte count, got "12XB"/),
  usage('--max-buffer-size 0', ['plan', MLP, '--max-buffer-size', '0'], /--max-buffer-size must be a positive byte count/),
  usage('--targets-regex that does not compile', ['finetune', MLP, '--targets-regex', '('], /--targets-regex is not a valid regular expression: .*Unterminated group/),
  usage('--targets-regex [ in plan', ['plan', MLP, '--targets-regex', 'fc[1'], /--targets-regex is not a valid regular expression/),
  usage('--mode unknown', ['finetune', MLP, '--mode', 'qlora'], /argument 'qlora' is invalid\. Allowed choices are full, lora, lora-fa/),
  usage('--optimizer unknown', ['compile', MLP, '--optimizer', 'adam'], /argument 'adam' is invalid\. Allowed choices are sgd, adamw/),
  usage('--dtype unknown', ['plan', MLP, '--dtype', 'fp8'], /argument 'fp8' is invalid\. Allowed choices are/),
  usage('--limits unknown', ['plan', MLP, '--limits', 'h100'], /argument 'h100' is invalid\. Allowed choices are webgpu, discrete, none, adapter/),
  usage('--format unknown', ['finetune', MLP, '--format', 'xlsx'], /argument 'xlsx' is invalid\. Allowed choices are/),
  usage('--lr-schedule unknown', ['finetune', MLP, '--lr-schedule', 'step'], /argument 'step' is invalid\. Allowed choices are cosine, linear, constant/),
  usage('--progress unknown', ['finetune', MLP, '--progress', 'fancy'], /argument 'fancy' is invalid\. Allowed choices are/),
  usage('train: an unknown option', ['train', 'trainer-folder', '--bogus'], /unknown option '--bogus'/),
  usage('too many arguments', ['compile', MLP, 'extra.ts'], /too many arguments/),

  // --- Model files (exit 1) --------------------------------------------------------------------
  { name: 'a model file that does not exist', args: () => ['compile', p('nope.ts')], exit: 1, says: [/nope\.ts: model file not found/] },
  { name: 'a folder as the model', setup: () => mkdirSync(p('a-folder'), { recursive: true }), args: () => ['compile', p('a-folder')], exit: 1, says: [/a-folder: is a folder, not a model file/, /pass a \.ts model file/] },
  {
    name: 'an async build()',
    setup: () => void write('models/async.ts', `import { defineModel } from 'lorafa';\nexport default defineModel({\n  name: 'a',\n  configs: { t: { batch: 2 } },\n  defaultConfig: 't',\n  async build(b) {\n    const x = b.input('x', [2, 4]);\n    b.loss(b.mean(b.linear(x, 'fc', 3), [0, 1]));\n  },\n});\n`),
    args: () => ['compile', p('models/async.ts')],
    exit: 1,
    says: [/async\.ts:6: build\(\) returned a Promise: build must be synchronous/],
  },
  {
    name: 'a build() that traces no parameters',
    setup: () => void write('models/noparams.ts', `import { defineModel } from 'lorafa';\nexport default defineModel({\n  name: 'a',\n  configs: { t: { batch: 2 } },\n  defaultConfig: 't',\n  build(b) {\n    const x = b.input('x', [2, 4]);\n    b.loss(b.mean(x, [0, 1]));\n  },\n});\n`),
    args: () => ['compile', p('models/noparams.ts')],
    exit: 1,
    says: [/noparams\.ts:6: build\(\) traced no parameters: there is nothing to train/],
  },
  {
    name: 'a syntax error in the model file',
    setup: () => void write('models/syntax.ts', `import { defineModel } from 'lorafa';\nexport default defineModel({\n  name: 'a',\n  build(b) {\n    const x = b.input('x', [2, 4]\n  },\n});\n`),
    args: () => ['compile', p('models/syntax.ts')],
    exit: 1,
    says: [/syntax\.ts/],
  },
  {
    name: 'a build() that throws',
    setup: () => void write('models/throws.ts', `import { defineModel } from 'lorafa';\nexport default defineModel({\n  name: 'a',\n  configs: { t: { batch: 2 } },\n  defaultConfig: 't',\n  build(b) {\n    const x = b.input('x', [2, 4]);\n    throw new Error('not ready');\n  },\n});\n`),
    args: () => ['compile', p('models/throws.ts')],
    exit: 1,
    says: [/throws\.ts:8:\d+: the model's build\(\) threw: not ready/],
  },
  {
    name: 'a shape mismatch in a matmul',
    setup: () => void write('models/shapes.ts', `import { defineModel } from 'lorafa';\nexport default defineModel({\n  name: 'a',\n  configs: { t: { batch: 2, classes: 3 } },\n  defaultConfig: 't',\n  build(b) {\n    const x = b.input('x', [2, 4]);\n    const w = b.param('w', [5, 3], { init: { kind: 'zeros' } });\n    b.loss(b.mean(b.matmul(x, w), [0, 1]));\n  },\n});\n`),
    args: () => ['compile', p('models/shapes.ts'), '--mode', 'full'],
    exit: 1,
    says: [/shapes\.ts:9:\d+: matmul/, /\[2,4\]/, /\[5,3\]/],
  },
  {
    name: 'a file with no default export',
    setup: () => void write('models/noexport.ts', `export const x = 1;\n`),
    args: () => ['compile', p('models/noexport.ts')],
    exit: 1,
    says: [/noexport\.ts/, /default/],
  },
  {
    name: 'a default export that is not a model',
    setup: () => void write('models/notmodel.ts', `export default 42;\n`),
    args: () => ['compile', p('models/notmodel.ts')],
    exit: 1,
    says: [/notmodel\.ts/],
  },
  {
    name: 'a NaN in a file-initialised weight',
    setup: () => {
      write('models/w-nan.safetensors', encodeSafetensors(new Map([['w', { dtype: 'F32' as const, shape: [4, 3], data: Float64Array.from({ length: 12 }, (_, i) => (i === 7 ? NaN : i / 10)) }]])));
      write('models/fromfile.ts', `import { defineModel } from 'lorafa';\nexport default defineModel({\n  name: 'a',\n  configs: { t: { batch: 2, classes: 3 } },\n  defaultConfig: 't',\n  build(b) {\n    const x = b.input('x', [2, 4]);\n    const w = b.param('w', [4, 3], { init: { kind: 'file', path: 'w-nan.safetensors' } });\n    b.loss(b.crossEntropy(b.matmul(x, w), b.input('labels', [2], 'i32')));\n  },\n});\n`);
    },
    args: () => ['finetune', p('models/fromfile.ts'), '--mode', 'full', '--data', 'synthetic', '--steps', '1', '--out', p('o-fromfile'), ...QUIET],
    exit: 1,
    says: [/fromfile\.ts:8:\d+: parameter "w" is initialised from \S*w-nan\.safetensors: tensor "w" holds NaN at index 7/],
  },
  { name: 'an unknown config', args: () => ['compile', MLP, '--config', 'huge'], exit: 1, says: [/unknown config "huge"/, /toy, mnist/] },
  { name: 'a config.json that does not exist', args: () => ['compile', LLAMA, '--config', p('missing/config.json')], exit: 1, says: [/config\.json/] },
  {
    name: 'a config.json of an unsupported architecture',
    setup: () => void write('hf-unknown/config.json', JSON.stringify({ architectures: ['MambaForCausalLM'], model_type: 'mamba' })),
    args: () => ['compile', p('hf-unknown')],
    exit: 1,
    says: [/MambaForCausalLM/, /LlamaForCausalLM/],
  },
  {
    name: 'a config.json that is not JSON',
    setup: () => void write('hf-broken/config.json', '{"architectures": ["LlamaForCausalLM"'),
    args: () => ['compile', p('hf-broken')],
    exit: 1,
    says: [/config\.json/, /JSON/],
  },
  { name: 'an unknown LoRA target', args: () => ['compile', MLP, '--targets', 'q_proj'], exit: 1, says: [/q_proj/, /fc1/] },
  { name: 'a LoRA target pattern that matches nothing', args: () => ['compile', MLP, '--targets-regex', 'layers\\..*'], exit: 1, says: [/matches no linear layer/, /fc1/] },
  { name: '--modules-to-save naming no module', args: () => ['plan', LLAMA, '--modules-to-save', 'embed'], exit: 1, says: [/--modules-to-save: modules_to_save entry "embed" names no module with weights/, /embed_tokens/, /layers\.N\.self_attn\.q_proj/] },
  { name: '--modules-to-save on a preset, one entry unknown', args: () => ['finetune', 'spam', '--modules-to-save', 'score,rope', '--steps', '1'], exit: 1, says: [/modules_to_save entry "rope"/] },
  { name: 'all-linear listed with other targets', args: () => ['compile', MLP, '--targets', 'all-linear,fc1'], exit: 1, says: [/"all-linear" already takes every linear layer/] },
  { name: 'a plan over the device limits', args: () => ['plan', LLAMA, '--config', '7b', '--max-buffer-size', '64MiB', '--max-binding-size', '64MiB'], exit: 1, says: [/64(\.0)? MiB|67108864/] },

  // --- Base weights ----------------------------------------------------------------------------
  { name: '--base that does not exist', args: () => ['finetune', MLP, ...train(['--base', p('nowhere.safetensors'), '--out', p('o-base-missing')])], exit: 1, says: [/nowhere\.safetensors/] },
  {
    name: '--base that is not safetensors',
    setup: () => void write('bad/garbage.safetensors', 'this is not a safetensors file at all'),
    args: () => ['finetune', MLP, ...train(['--base', p('bad/garbage.safetensors'), '--out', p('o-garbage')])],
    exit: 1,
    says: [/garbage\.safetensors: not a valid safetensors file/],
  },
  {
    name: '--base truncated',
    setup: () => void write('bad/truncated.safetensors', readFileSync(p('base/model.safetensors')).subarray(0, 300)),
    args: () => ['finetune', MLP, ...train(['--base', p('bad/truncated.safetensors'), '--out', p('o-trunc')])],
    exit: 1,
    says: [/truncated\.safetensors: not a valid safetensors file/],
  },
  {
    name: '--base with a NaN',
    setup: () => void write('bad/nan.safetensors', editedSafetensors(p('base/model.safetensors'), (m) => (m.get('fc2.weight')!.data[17] = NaN))),
    args: () => ['finetune', MLP, ...train(['--base', p('bad/nan.safetensors'), '--out', p('o-nan')])],
    exit: 1,
    says: [/nan\.safetensors: tensor "fc2\.weight" holds NaN at index 17 \(\[1, 1\] of \[16, 16\]\): 1 non-finite value in all/],
  },
  {
    name: '--base with Infinity',
    setup: () =>
      void write('bad/inf.safetensors', editedSafetensors(p('base/model.safetensors'), (m) => {
        const d = m.get('fc1.bias')!.data;
        d[3] = Infinity;
        d[5] = -Infinity;
      })),
    args: () => ['finetune', MLP, ...train(['--base', p('bad/inf.safetensors'), '--out', p('o-inf')])],
    exit: 1,
    says: [/inf\.safetensors: tensor "fc1\.bias" holds Infinity at index 3\b.*: 2 non-finite values in all/],
  },
  {
    name: '--base with overlapping data_offsets',
    setup: () => void write('bad/overlap.safetensors', rawSafetensors({ 'a': { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, 'b': { dtype: 'F32', shape: [2], data_offsets: [4, 12] } }, new Uint8Array(12))),
    args: () => ['finetune', MLP, ...train(['--base', p('bad/overlap.safetensors'), '--out', p('o-overlap')])],
    exit: 1,
    says: [/overlap\.safetensors: not a valid safetensors file: tensors "a" .* and "b" .* overlap/],
  },
  {
    name: '--base with a gap between tensors',
    setup: () => void write('bad/gap.safetensors', rawSafetensors({ 'a': { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, 'b': { dtype: 'F32', shape: [1], data_offsets: [12, 16] } }, new Uint8Array(16))),
    args: () => ['finetune', MLP, ...train(['--base', p('bad/gap.safetensors'), '--out', p('o-gap')])],
    exit: 1,
    says: [/gap\.safetensors: not a valid safetensors file: 4 bytes between "a" .* and "b" .* belong to no tensor/],
  },
  {
    name: '--base with out-of-order offsets past the body',
    setup: () => void write('bad/past.safetensors', rawSafetensors({ 'a': { dtype: 'F32', shape: [4], data_offsets: [8, 24] } }, new Uint8Array(16))),
    args: () => ['finetune', MLP, ...train(['--base', p('bad/past.safetensors'), '--out', p('o-past')])],
    exit: 1,
    says: [/past\.safetensors: not a valid safetensors file: tensor "a"/],
  },
  {
    name: '--base with a tensor of the wrong shape',
    setup: () => void write('bad/shape.safetensors', editedSafetensors(p('base/model.safetensors'), (m) => m.set('fc1.weight', { shape: [16, 11], data: new Float64Array(176) }))),
    args: () => ['finetune', MLP, ...train(['--base', p('bad/shape.safetensors'), '--out', p('o-shape')])],
    exit: 1,
    says: [/fc1\.weight/, /\[16, ?11\]/, /\[16, ?12\]/],
  },
  {
    name: '--base missing a frozen weight',
    setup: () => void write('bad/missing.safetensors', editedSafetensors(p('base/model.safetensors'), (m) => m.delete('fc2.weight'))),
    args: () => ['finetune', MLP, ...train(['--base', p('bad/missing.safetensors'), '--out', p('o-missing')])],
    exit: 1,
    says: [/missing\.safetensors/, /fc2\.weight/, /--init-missing/],
  },
  {
    name: '--base folder with a broken index',
    setup: () => void write('bad/sharded/model.safetensors.index.json', '{"weight_map": {"fc1.weight": "model-00001-of-00002.safetensors"'),
    args: () => ['finetune', MLP, ...train(['--base', p('bad/sharded'), '--out', p('o-index')])],
    exit: 1,
    says: [/model\.safetensors\.index\.json/],
  },
  {
    name: '--base folder whose index names a missing shard',
    setup: () => void write('bad/sharded2/model.safetensors.index.json', JSON.stringify({ weight_map: { 'fc1.weight': 'model-00001-of-00002.safetensors' } })),
    args: () => ['finetune', MLP, ...train(['--base', p('bad/sharded2'), '--out', p('o-shard')])],
    exit: 1,
    says: [/model-00001-of-00002\.safetensors/],
  },
  { name: '--base an empty folder', setup: () => mkdirSync(p('bad/empty'), { recursive: true }), args: () => ['finetune', MLP, ...train(['--base', p('bad/empty'), '--out', p('o-empty')])], exit: 1, says: [/empty/, /model\.safetensors/] },
  { name: '--from-scratch with --base', args: () => ['finetune', MLP, ...train(['--from-scratch', '--base', p('base/model.safetensors')])], exit: 1, says: [/--from-scratch/, /--base/] },

  // --- Adapters --------------------------------------------------------------------------------
  { name: '--init-adapter that does not exist', args: () => ['finetune', MLP, ...train(['--init-adapter', p('no-adapter'), '--out', p('o-a0')])], exit: 1, says: [/no-adapter/] },
  {
    name: '--init-adapter with a NaN in lora_B',
    setup: () => {
      cpSync(p('run', 'adapter'), p('bad-adapter/nan'), { recursive: true });
      const f = p('bad-adapter/nan/adapter_model.safetensors');
      writeFileSync(f, editedSafetensors(f, (m) => (m.get('base_model.model.fc2.lora_B.weight')!.data[5] = NaN)));
    },
    args: () => ['finetune', MLP, ...train(['--init-adapter', p('bad-adapter/nan'), '--out', p('o-a1')])],
    exit: 1,
    says: [/adapter_model\.safetensors: tensor "base_model\.model\.fc2\.lora_B\.weight" holds NaN at index 5/],
  },
  {
    name: '--init-adapter whose config is not JSON',
    setup: () => {
      cpSync(p('run', 'adapter'), p('bad-adapter/json'), { recursive: true });
      writeFileSync(p('bad-adapter/json/adapter_config.json'), '{"r": 8,');
    },
    args: () => ['finetune', MLP, ...train(['--init-adapter', p('bad-adapter/json'), '--out', p('o-a2')])],
    exit: 1,
    says: [/adapter_config\.json/],
  },
  { name: '--init-adapter of another rank', args: () => ['finetune', MLP, ...train(['--rank', '4', '--init-adapter', p('run', 'adapter'), '--out', p('o-a3')])], exit: 1, says: [/adapter/, /\b8\b/, /\b4\b/] },
  { name: '--init-adapter with --mode full', args: () => ['finetune', MLP, ...train(['--mode', 'full', '--init-adapter', p('run', 'adapter'), '--out', p('o-a4')])], exit: 1, says: [/--init-adapter/, /full fine-tuning has no adapters/] },

  // --- Checkpoints -----------------------------------------------------------------------------
  {
    name: '--resume with a damaged newest checkpoint',
    setup: () => {
      cpSync(p('run'), p('resume-bad'), { recursive: true });
      const [f] = readdirSync(p('resume-bad/checkpoints'));
      const b = readFileSync(p('resume-bad/checkpoints', f));
      b[b.length - 3] ^= 0xff;
      writeFileSync(p('resume-bad/checkpoints', f), b);
    },
    args: () => ['finetune', MLP, ...train(['--steps', '5', '--resume', '--out', p('resume-bad')])],
    exit: 1,
    says: [/step-000003\.safetensors: newest checkpoint: unusable checkpoint: checksum mismatch/],
  },
  {
    name: '--resume-from a checkpoint with a NaN',
    setup: () => {
      const [f] = readdirSync(p('run/checkpoints'));
      const src = p('run/checkpoints', f);
      const { metadata } = readSafetensorsWithMetadata(src);
      write('ckpt/step-000003.safetensors', editedSafetensors(src, (m) => (m.values().next().value!.data[0] = NaN)));
      void metadata;
    },
    args: () => ['finetune', MLP, ...train(['--steps', '5', '--resume-from', p('ckpt/step-000003.safetensors'), '--out', p('o-c1')])],
    exit: 1,
    says: [/step-000003\.safetensors: unusable checkpoint: tensor ".*" holds NaN at index 0/],
  },
  { name: '--resume-from a file that does not exist', args: () => ['finetune', MLP, ...train(['--steps', '5', '--resume-from', p('ckpt/none.safetensors'), '--out', p('o-c2')])], exit: 1, says: [/none\.safetensors/] },
  { name: 'a new run into a folder holding an earlier run', args: () => ['finetune', MLP, ...train(['--out', p('run')])], exit: 1, says: [/checkpoints: holds checkpoints of an earlier run \(newest: step 3\)/, /--resume/] },
  { name: '--resume with a different --lr', args: () => ['finetune', MLP, ...train(['--steps', '5', '--resume', '--lr', '0.5', '--out', p('run')])], exit: 1, says: [/lr/] },
  { name: '--resume with other --steps under a decaying schedule', args: () => ['finetune', MLP, ...train(['--steps', '2', '--resume', '--out', p('run')])], exit: 1, says: [/step-000003\.safetensors: .*cannot resume: this checkpoint was trained with a different learning-rate schedule/, /resume with --steps 3/] },
  { name: '--resume past --steps', args: () => ['finetune', MLP, ...train(['--steps', '2', '--lr-schedule', 'constant', '--warmup', '0', '--resume-from', p('run', 'checkpoints', 'step-000003.safetensors'), '--out', p('o-past-steps')])], exit: 1, says: [/step-000003\.safetensors/] },

  // --- Data ------------------------------------------------------------------------------------
  { name: '--data that does not exist', args: () => ['finetune', MLP, '--data', p('data/none.csv'), '--out', p('o-d0')], exit: 1, says: [/none\.csv/] },
  { name: 'no --data for a model file', args: () => ['finetune', MLP, '--out', p('o-d1'), ...QUIET], exit: 1, says: [/--data/] },
  { name: 'a CSV without the label column', setup: () => void write('data/nolabel.csv', csv(ROWS.map((r) => r.slice(0, 12)), HEADER.slice(0, 12))), args: () => ['finetune', MLP, '--data', p('data/nolabel.csv'), '--out', p('o-d2')], exit: 1, says: [/nolabel\.csv/, /label/] },
  { name: 'a CSV with a word where a number goes', setup: () => void write('data/word.csv', csv([...ROWS.slice(0, 5), ['oops', ...ROWS[5].slice(1)]])), args: () => ['finetune', MLP, '--data', p('data/word.csv'), '--out', p('o-d3')], exit: 1, says: [/word\.csv:7/, /oops/] },
  { name: 'a CSV row with too few cells', setup: () => void write('data/short.csv', csv().replace(/\n([^\n]*)\n$/, '\n1,2,3\n')), args: () => ['finetune', MLP, '--data', p('data/short.csv'), '--out', p('o-d4')], exit: 1, says: [/short\.csv:\d+/] },
  { name: 'an empty data file', setup: () => void write('data/empty.csv', ''), args: () => ['finetune', MLP, '--data', p('data/empty.csv'), '--out', p('o-d5')], exit: 1, says: [/empty\.csv/] },
  { name: 'a header-only CSV', setup: () => void write('data/header.csv', HEADER.join(',') + '\n'), args: () => ['finetune', MLP, '--data', p('data/header.csv'), '--out', p('o-d6')], exit: 1, says: [/header\.csv/, /no rows|0 rows|empty/] },
  { name: 'a JSONL line that is not JSON', setup: () => void write('data/bad.jsonl', '{"x": [1,2,3,4,5,6,7,8,9,10,11,12], "label": 0}\n{"x": [1, "label": 1}\n'), args: () => ['finetune', MLP, '--data', p('data/bad.jsonl'), '--out', p('o-d7')], exit: 1, says: [/bad\.jsonl:2: not valid JSON/] },
  { name: 'a feature with Infinity', setup: () => void write('data/inf.csv', csv([...ROWS.slice(0, 3), [Infinity, ...ROWS[3].slice(1)]])), args: () => ['finetune', MLP, '--data', p('data/inf.csv'), '--out', p('o-d8')], exit: 1, says: [/inf\.csv:5/, /Infinity/] },
  { name: 'a label out of range', setup: () => void write('data/label.csv', csv([...ROWS.slice(0, 3), [...ROWS[3].slice(0, 12), 7]])), args: () => ['finetune', MLP, '--data', p('data/label.csv'), '--out', p('o-d9')], exit: 1, says: [/label\.csv:5/, /7/] },
  { name: 'a corrupt Parquet file', setup: () => void write('data/bad.parquet', Buffer.from('PAR1 not really parquet PAR1')), args: () => ['finetune', MLP, '--data', p('data/bad.parquet'), '--out', p('o-d10')], exit: 1, says: [/bad\.parquet/] },
  { name: '--eval-data with other columns', setup: () => void write('data/eval-other.csv', csv(ROWS.map((r) => r.slice(0, 11).concat(r[12])), [...HEADER.slice(0, 11), 'label'])), args: () => ['finetune', MLP, ...train(['--eval-data', p('data/eval-other.csv'), '--out', p('o-d11')])], exit: 1, says: [/eval-other\.csv/, /x11/] },
  { name: '--text-field missing from the rows', setup: () => void write('data/text.jsonl', '{"body": "hello", "label": "ham"}\n{"body": "buy", "label": "spam"}\n'), args: () => ['finetune', 'spam', '--data', p('data/text.jsonl'), '--out', p('o-d12'), ...QUIET], exit: 1, says: [/text\.jsonl: has no column "text"/, /--text-field/] },
  { name: '--tokenizer that is not a tokenizer', setup: () => void write('tok/tokenizer.json', '{"model": {"type": "Nope"}}'), args: () => ['finetune', 'spam', '--data', p('data/text.jsonl'), '--text-field', 'body', '--tokenizer', p('tok/tokenizer.json'), '--out', p('o-d13'), ...QUIET], exit: 1, says: [/tokenizer\.json/] },
  { name: 'an unknown preset-like name', args: () => ['finetune', 'spamm', '--data', trainCsv], exit: 1, says: [/spamm/] },

  // --- Trainer folders -------------------------------------------------------------------------
  { name: 'train a folder that is not a trainer', setup: () => mkdirSync(p('not-trainer'), { recursive: true }), args: () => ['train', p('not-trainer'), '--data', trainCsv], exit: 1, says: [/not-trainer: no compiled trainer here/, /lorafa compile/] },
  {
    name: 'a trainer whose plan.json is damaged',
    setup: () => {
      cpSync(p('trainer'), p('trainer-badplan'), { recursive: true });
      writeFileSync(p('trainer-badplan/plan.json'), readFileSync(p('trainer-badplan/plan.json'), 'utf8').slice(0, 200));
    },
    args: () => ['train', p('trainer-badplan'), ...train(['--out', p('o-t1')])],
    exit: 1,
    says: [/plan\.json/],
  },
  {
    name: 'a trainer whose kernel was edited',
    setup: () => {
      cpSync(p('trainer'), p('trainer-edited'), { recursive: true });
      const k = readdirSync(p('trainer-edited/kernels'))[0];
      writeFileSync(p('trainer-edited/kernels', k), readFileSync(p('trainer-edited/kernels', k), 'utf8') + '\n// edited\n');
    },
    args: () => ['train', p('trainer-edited'), ...train(['--out', p('o-t2')])],
    exit: 1,
    says: [/plan hash|hash/i, /lorafa compile/],
  },
  { name: 'a trainer given another compiled --batch', args: () => ['train', p('trainer'), ...train(['--batch', '8', '--out', p('o-t3')])], exit: 1, says: [/--batch: this trainer was compiled with --batch 4/, /recompile/] },
  { name: '--grad-accum on a trainer compiled without accumulators', args: () => ['train', p('trainer'), ...train(['--grad-accum', '2', '--out', p('o-t4')])], exit: 1, says: [/--grad-accum: this program was compiled without gradient accumulators/] },
  { name: 'train with --resume and nothing to resume from elsewhere', args: () => ['train', p('trainer'), ...train(['--resume-from', p('trainer/checkpoints/step-999999.safetensors')])], exit: 1, says: [/step-999999\.safetensors/] },

  // --- Output paths ----------------------------------------------------------------------------
  { name: 'compile -o onto an existing file', setup: () => void write('files/a-file', 'keep me'), args: () => ['compile', MLP, '-o', p('files/a-file')], exit: 1, says: [/a-file: is a file, not a folder/, /-o/] },
  { name: 'compile -o under a file', args: () => ['compile', MLP, '-o', p('files/a-file/trainer')], exit: 1, says: [/a-file\/trainer: cannot be created: \S*a-file is a file, not a folder/] },
  { name: 'plan --svg onto a folder', setup: () => mkdirSync(p('files/svg-folder'), { recursive: true }), args: () => ['plan', MLP, '--svg', p('files/svg-folder')], exit: 1, says: [/svg-folder: is a folder, and a file was expected here/, /--svg/] },
  { name: 'plan --svg under a file', args: () => ['plan', MLP, '--svg', p('files/a-file/plan.svg')], exit: 1, says: [/a-file is a file, not a folder/] },
  { name: 'finetune --out onto a file', args: () => ['finetune', MLP, ...train(['--out', p('files/a-file')])], exit: 1, says: [/a-file: is a file, not a folder/, /--out/] },
  { name: 'finetune --out under a file', args: () => ['finetune', MLP, ...train(['--out', p('files/a-file/out')])], exit: 1, says: [/a-file is a file, not a folder/] },
  {
    name: 'finetune --out whose checkpoints is a file',
    setup: () => void write('o-ckfile/checkpoints', 'not a folder'),
    args: () => ['finetune', MLP, ...train(['--out', p('o-ckfile')])],
    exit: 1,
    says: [/o-ckfile\/checkpoints: is a file, not a folder/, /--out/],
  },
  { name: 'finetune --out on a file system that refuses it', args: () => ['finetune', MLP, ...train(['--out', '/sys/lorafa-out'])], exit: 1, says: [/^lorafa: \/sys\/lorafa-out: cannot be written: \/sys refuses new files \((permission denied|the file system is read-only)\)/m] },
  { name: 'train --out onto a file', args: () => ['train', p('trainer'), ...train(['--out', p('files/a-file')])], exit: 1, says: [/a-file: is a file, not a folder/] },
];

describe('the bad-input corpus', () => {
  test('has at least 80 cases, each with a distinct name', () => {
    expect(CASES.length).toBeGreaterThanOrEqual(80);
    expect(new Set(CASES.map((c) => c.name)).size).toBe(CASES.length);
  });

  test.each(CASES.map((c) => [c.name, c] as const))('%s', async (_, c) => {
    c.setup?.();
    const before = digest(W);
    const args = c.args().map((a) => (a === 'trainer-folder' ? p('trainer') : a));
    const r = await cli(args);
    expect(r.code, r.err).toBe(c.exit);
    for (const re of c.says) expect(r.err).toMatch(re);
    expect(r.err).toMatch(/^lorafa: \S/m);
    expect(r.err, 'a fix line').toMatch(/^\s+fix: \S/m);
    expect(r.err, 'no stack trace').not.toMatch(/^\s+at .+(:\d+:\d+\)?|\(native\))$/m);
    const after = digest(W);
    for (const [f, h] of before) expect(after.get(f), `${f} changed or went missing`).toBe(h);
    const added = [...after.keys()].filter((f) => !before.has(f));
    expect(added, 'files left behind').toEqual([]);
  });
});

describe('what used to crash now works', () => {
  test('plan --svg into a missing folder creates it', async () => {
    const svg = p('new', 'deep', 'plan.svg');
    const r = await cli(['plan', MLP, '--svg', svg]);
    expect(r.code, r.err).toBe(0);
    expect(readFileSync(svg, 'utf8')).toMatch(/^<svg /);
  });

  test("an export's leftover temporary folder from an older lorafa is removed by the next export", async () => {
    cpSync(p('run'), p('run-leftover'), { recursive: true });
    mkdirSync(p('run-leftover', 'adapter', '.lorafa-export-abc123'));
    writeFileSync(p('run-leftover', 'adapter', '.lorafa-export-abc123', 'adapter_model.safetensors'), 'half');
    writeFileSync(p('run-leftover', 'adapter', 'README.md'), 'my notes');
    const r = await cli(['finetune', MLP, ...train(['--steps', '3', '--resume', '--out', p('run-leftover')])]);
    expect(r.code, r.err).toBe(0);
    expect(readdirSync(p('run-leftover', 'adapter')).sort()).toEqual(['README.md', 'adapter_config.json', 'adapter_model.safetensors']);
    expect(readFileSync(p('run-leftover', 'adapter', 'README.md'), 'utf8')).toBe('my notes');
  });
});

describe('through the real bin, as a user sees it', () => {
  const lorafa = (args: string[]) => spawnSync(process.execPath, [bin, ...args], { cwd: W, encoding: 'utf8', timeout: 300_000 });

  test.each([
    [['finetune', MLP, '--lr', 'Infinity'], 2, /--lr must be a finite number/],
    [['frobnicate'], 2, /unknown command 'frobnicate'/],
    [['compile', '/nonexistent/model.ts'], 1, /model file not found/],
  ] as const)('%j exits %i with one message, a fix and no stack', (args, code, re) => {
    const r = lorafa([...args]);
    expect(r.status, r.stderr).toBe(code);
    expect(r.stderr).toMatch(re);
    expect(r.stderr).toMatch(/^\s+fix: /m);
    expect(r.stderr).not.toMatch(/^\s+at /m);
    expect(r.stderr.trim().split('\n').length).toBeLessThanOrEqual(4);
  });

  test("a GPU command's stderr holds lorafa's lines only: no Dawn driver warnings", () => {
    const r = lorafa(['finetune', MLP, ...train(['--lr', '1e-2', '--out', p('o-quiet'), '--init-adapter', p('run', 'adapter'), '--rank', '4'])]);
    expect(r.status).toBe(1);
    expect(r.stderr).not.toMatch(/artificially reduced|^Warning: /m);
    expect(r.stderr).toMatch(/^lorafa: /m);
    const ok = lorafa(['doctor']);
    expect(ok.status, ok.stderr).toBe(0);
    expect(ok.stderr).toBe('');
    // Asked for, they show.
    const shown = spawnSync(process.execPath, [bin, 'doctor'], { cwd: W, encoding: 'utf8', env: { ...process.env, LORAFA_DAWN_WARNINGS: '1' } });
    expect(shown.stderr).toMatch(/artificially reduced/);
  });

  test('--version prints the package version', () => {
    const r = lorafa(['--version']);
    expect(r.status).toBe(0);
    expect(r.stdout.trim()).toBe(JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).version);
  });
});

void statSync;
void existsSync;
