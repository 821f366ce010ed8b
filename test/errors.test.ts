// Bad input, end to end: model files in test/fixtures/ go through the same loadModel → trace →
// compileTraining path the CLI uses. Every message must say where (file:line where there is one),
// what is wrong, and how to fix it.
import { readFileSync } from 'node:fs';
import { relative, resolve } from 'node:path';
import { describe, expect, test } from 'vitest';
import { loadModel, trace } from '../src/model/load.ts';
import { LorafaError, ModelError, ShapeError } from '../src/ir/errors.ts';
import { compileTraining } from '../src/passes/compile.ts';
import { ROOT } from './helpers.ts';

const FIXTURES = resolve(ROOT, 'test', 'fixtures');
const fixturePath = (name: string) => resolve(FIXTURES, `${name}.ts`);
/** How messages show the file: relative to the working directory, as the CLI does. */
const shown = (name: string) => relative(process.cwd(), fixturePath(name));

/** 1-based line of the fixture line tagged `// MARKER`. */
function lineOf(name: string, marker: string): number {
  const lines = readFileSync(fixturePath(name), 'utf8').split('\n');
  const hits = lines.flatMap((l, i) => (l.includes(`// ${marker}`) ? [i + 1] : []));
  if (hits.length !== 1) throw new Error(`fixture ${name}: marker ${marker} found ${hits.length} times`);
  return hits[0];
}

async function failure(fn: () => unknown): Promise<LorafaError> {
  try {
    await fn();
  } catch (e) {
    expect(e, String(e)).toBeInstanceOf(LorafaError);
    return e as LorafaError;
  }
  throw new Error('expected an error, none was thrown');
}

const traceFixture = async (name: string) => trace(await loadModel(fixturePath(name)));

/** Every message ends with a concrete fix. */
function expectFix(e: LorafaError) {
  expect(e.fix, e.message).toBeTruthy();
  expect(e.message).toMatch(/\n {2}fix: \S.{5,}/);
}

describe('shape errors in a model file', () => {
  test('name the op, the operand shapes and the exact source line', async () => {
    const e = await failure(() => traceFixture('shape-mismatch'));
    expect(e).toBeInstanceOf(ShapeError);
    const line = lineOf('shape-mismatch', 'MISMATCH');
    expect(e.message.startsWith(`${shown('shape-mismatch')}:${line}:`), e.message).toBe(true);
    expect(e.message).toContain(`test/fixtures/shape-mismatch.ts:${line}`);
    expect((e as ShapeError).op).toBe('matmul');
    expect((e as ShapeError).src?.line).toBe(line);
    expect(e.message).toContain('matmul: inner dimensions differ: 3 (a) vs 4 (b)');
    expect(e.message).toContain('"x": f32[2,3]');
    expect(e.message).toContain('"w": f32[4,5]');
    expectFix(e);
  });

  test('the shapes follow the config overrides', async () => {
    const m = await loadModel(fixturePath('shape-mismatch'));
    const e = await failure(() => trace(m, undefined, { batch: 7 }));
    expect(e.message).toContain('"x": f32[7,3]');
  });

  test('inside a composition (mse), the error points at the model line that called it', async () => {
    const e = await failure(() => traceFixture('composite-mismatch'));
    expect(e).toBeInstanceOf(ShapeError);
    const line = lineOf('composite-mismatch', 'MISMATCH');
    expect(e.message.startsWith(`${shown('composite-mismatch')}:${line}:`), e.message).toBe(true);
    expect(e.message).toContain('sub: shapes [2,4] and [2,5] do not broadcast');
    expect(e.message).toContain('"head.out": f32[2,4]');
    expect(e.message).toContain('"target": f32[2,5]');
    expectFix(e);
  });
});

describe('LoRA targets', () => {
  test('an unknown target lists the linear layers that exist', async () => {
    const m = await loadModel(resolve(ROOT, 'models/mlp.ts'));
    const graph = trace(m);
    for (const mode of ['lora', 'lora-fa'] as const) {
      const e = await failure(() => compileTraining(graph, { mode, lora: { rank: 2, alpha: 4, targets: ['fc1', 'fc9'] } }));
      expect(e.message).toContain('unknown LoRA target "fc9"');
      expect(e.message).toContain(relative(process.cwd(), m.file));
      for (const l of graph.linears) expect(e.message).toContain(`${l.name} (${l.inFeatures}→${l.outFeatures})`);
      expectFix(e);
      expect(e.fix).toContain('fc1 (12→16), fc2 (16→16), fc3 (16→3), or all-linear');
    }
  });

  test('in a deep model the hint is short: the layer names grouped and counted, not every layer', async () => {
    const m = await loadModel(resolve(ROOT, 'models/llama.ts'));
    const graph = trace(m);
    const e = await failure(() => compileTraining(graph, { mode: 'lora-fa', lora: { rank: 2, alpha: 4, targets: ['qproj'] } }));
    expect(e.fix).toBe('target one of the linear layers: q_proj ×2, k_proj ×2, v_proj ×2, o_proj ×2, gate_proj ×2, up_proj ×2, down_proj ×2, lm_head (32→64), or all-linear');
    // LLaMA-7B's 225 layers: the same eight names, counted.
    const big = trace(m, '7b');
    const e7 = await failure(() => compileTraining(big, { mode: 'lora-fa', lora: { rank: 2, alpha: 4, targets: ['qproj'] } }));
    expect(e7.fix).toContain('q_proj ×32, k_proj ×32');
    expect(e7.message.length).toBeLessThan(400);
    expect(e7.message).not.toContain('layers.0.');
  });
});

describe('model definition errors', () => {
  test('a parameter name used twice names both places', async () => {
    const e = await failure(() => traceFixture('dup-param'));
    expect(e).toBeInstanceOf(ModelError);
    const first = lineOf('dup-param', 'FIRST');
    const second = lineOf('dup-param', 'SECOND');
    expect(e.message.startsWith(`${shown('dup-param')}:${second}:`), e.message).toBe(true);
    expect(e.message).toContain('parameter name "w" is already used');
    expect(e.message).toContain(`first declared at ${shown('dup-param')}:${first}:`);
    expectFix(e);
  });

  test('two layers with one name: the collision names the parameter and both layer lines', async () => {
    const e = await failure(() => traceFixture('dup-linear'));
    const first = lineOf('dup-linear', 'FIRST');
    const second = lineOf('dup-linear', 'SECOND');
    expect(e.message.startsWith(`${shown('dup-linear')}:${second}:`), e.message).toBe(true);
    expect(e.message).toContain('"proj.weight" is already used');
    expect(e.message).toContain(`first declared at ${shown('dup-linear')}:${first}:`);
    expect(e.fix).toContain('b.scope');
  });

  test('a non-scalar loss, declared with b.loss: at the line, with the shape', async () => {
    const e = await failure(() => traceFixture('nonscalar-loss'));
    expect(e.message.startsWith(`${shown('nonscalar-loss')}:${lineOf('nonscalar-loss', 'NONSCALAR')}:`), e.message).toBe(true);
    expect(e.message).toContain('the loss must be a scalar, got f32[2]');
    expectFix(e);
    expect(e.fix).toContain('b.mean');
  });

  test('a non-scalar loss declared as a plain output is caught by compileTraining', async () => {
    const graph = await traceFixture('output-loss-vector');
    const e = await failure(() => compileTraining(graph, { mode: 'full' }));
    expect(e.message).toContain(shown('output-loss-vector'));
    expect(e.message).toContain('the loss must be a scalar, got f32[2]');
    expectFix(e);
  });

  test('no loss at all', async () => {
    const graph = await traceFixture('no-loss');
    const e = await failure(() => compileTraining(graph, { mode: 'full' }));
    expect(e.message).toContain(shown('no-loss'));
    expect(e.message).toContain('declares no "loss" output');
    expectFix(e);
    expect(e.fix).toContain('b.loss');
  });
});

describe('loading model files', () => {
  test('a module that throws at load: file and line of the throw', async () => {
    const e = await failure(() => loadModel(fixturePath('throws-at-load')));
    expect(e).toBeInstanceOf(ModelError);
    expect(e.message.startsWith(`${shown('throws-at-load')}:${lineOf('throws-at-load', 'LOAD-THROW')}:`), e.message).toBe(true);
    expect(e.message).toContain('the model file failed to load: hidden size missing from sizes');
    expectFix(e);
  });

  test('a build() that throws: file, line and the original message', async () => {
    const m = await loadModel(fixturePath('build-throws'));
    const e = await failure(() => trace(m));
    expect(e).toBeInstanceOf(ModelError);
    expect(e.message.startsWith(`${shown('build-throws')}:${lineOf('build-throws', 'BUILD-THROW')}:`), e.message).toBe(true);
    expect(e.message).toContain("the model's build() threw: this model supports at most 2 layers, got 3");
    expectFix(e);
    // With an override that avoids the throw, the same file traces fine.
    expect(trace(m, undefined, { layers: 2 }).inputs).toHaveLength(1);
  });

  test('a module that exports something, but not a model, says what it exports', async () => {
    const e = await failure(() => loadModel(fixturePath('no-export')));
    expect(e.message.startsWith(`${shown('no-export')}: `), e.message).toBe(true);
    expect(e.message).toContain('exports no model (it exports: sizes, build)');
    expectFix(e);
    expect(e.fix).toContain('export default defineModel(');
  });

  test('a module that exports nothing', async () => {
    const e = await failure(() => loadModel(fixturePath('empty-module')));
    expect(e.message).toContain(`${shown('empty-module')}: exports no model`);
    expect(e.message).not.toContain('it exports');
    expectFix(e);
  });

  test('a missing file', async () => {
    const e = await failure(() => loadModel(fixturePath('no-such-model')));
    expect(e.message).toContain(`${shown('no-such-model')}: model file not found`);
    expectFix(e);
  });
});

describe('configs and overrides', () => {
  test('an unknown config name lists the configs', async () => {
    const m = await loadModel(resolve(ROOT, 'models/mlp.ts'));
    const e = await failure(() => trace(m, 'huge'));
    expect(e.message).toContain('unknown config "huge"');
    expect(e.message).toContain(relative(process.cwd(), m.file));
    expectFix(e);
    expect(e.fix).toBe(`choose one of: ${Object.keys(m.def.configs).join(', ')}`);
    expect(e.fix).toContain('toy, mnist');
  });

  test.each([
    ['mlp', 'batch', 0],
    ['mlp', 'batch', -3],
    ['mlp', 'batch', 2.5],
    ['llama', 'seq', 0],
  ])('%s: %s=%s is rejected', async (model, field, value) => {
    const m = await loadModel(resolve(ROOT, `models/${model}.ts`));
    const e = await failure(() => trace(m, undefined, { [field]: value }));
    expect(e.message).toContain(`${field} must be a positive integer, got ${value}`);
    expect(e.message).toContain(relative(process.cwd(), m.file));
    expectFix(e);
  });

  test('an override of a field the config lacks lists the fields', async () => {
    const m = await loadModel(resolve(ROOT, 'models/mlp.ts'));
    const e = await failure(() => trace(m, undefined, { width: 8 }));
    expect(e.message).toContain('config "toy" has no field "width"');
    expectFix(e);
    expect(e.fix).toContain('batch, inputs, hidden, depth, classes');
  });
});
