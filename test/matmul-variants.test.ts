// Every matmul variant of the registry (src/codegen/matmul.ts, MATMUL_VARIANTS), forced, against the
// float64 matmul; `--kernels portable`; and tuning (src/runtime/tune.ts, src/train/tuning.ts):
// tuning.json read, checked and applied per adapter, and `lorafa tune` writing it.
//
// The property iterates over MATMUL_VARIANTS, so a variant added there is checked here without a
// new row: on ragged shapes (m, k, n from 1 to 70, and multiples of 4 that take the vec4 loads),
// both transposes, batch dims broadcast from either side ([2,1,…]·[3,…] too), one operand read
// twice (x·xᵀ), and f16 / packed f16 / bf16 storage, each case drawn until the variant fits it
// (variant.fits on this device). The output is followed by a guard region (runKernelOnGpu), so a
// store past C fails too.
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it, test, vi } from 'vitest';
import { main } from '../src/cli/main.ts';
import type { EmitContext } from '../src/codegen/kernel.ts';
import { emitOptions, matmulKeys } from '../src/codegen/kernel-plan.ts';
import { chooseMatmulVariant, emitMatmul, heuristicMatmulVariant, MATMUL_VARIANTS, matmulNodeFromKey, matmulShapeKey, type MatmulVariant } from '../src/codegen/matmul.ts';
import type { ElemKind } from '../src/codegen/storage.ts';
import { Builder } from '../src/ir/builder.ts';
import { LorafaError } from '../src/ir/errors.ts';
import { OPS } from '../src/ir/ops.ts';
import type { Tensor } from '../src/ir/shape.ts';
import { numel, type Node } from '../src/ir/types.ts';
import { acquireGpu, type Gpu } from '../src/runtime/gpu.ts';
import { kernelOptionsFor } from '../src/runtime/session.ts';
import { runKernelOnGpu } from '../src/runtime/single.ts';
import { readProgram } from '../src/train/trainer-files.ts';
import { runTrainer, type TrainFlags } from '../src/train/trainer.ts';
import { adapterKey, applyTuning, readTuning, tuningEntry, TUNING_FILE, writeTuning, type TuningFile } from '../src/train/tuning.ts';
import { deviceValues, propertyAsync, sample } from './helpers.ts';
import { FC_RUNS } from './setup.ts';

let gpu: Gpu;
beforeAll(async () => {
  gpu = await acquireGpu();
});
const tmp = mkdtempSync(join(tmpdir(), 'lorafa-matmul-variants-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** The context buildKernelPlan gives a kernel on this device, with this storage. */
const ctxFor = (elem: ElemKind): EmitContext => ({ ...emitOptions(kernelOptionsFor(gpu)), constants: new Map(), elem: () => elem });

const DIM = fc.oneof(fc.integer({ min: 1, max: 70 }), fc.integer({ min: 1, max: 17 }).map((x) => 4 * x));
/** Batch dims of A and of B: none, equal, on one side, and broadcast against each other. */
const BATCHES: readonly (readonly [number[], number[]])[] = [
  [[], []],
  [[2], [2]],
  [[3], []],
  [[], [2]],
  [[2, 1], [3]],
  [[1], [2, 2]],
];
const KINDS: readonly ElemKind[] = ['f32', 'f32', 'f32', 'f16', 'f16p', 'bf16'];
/** One rounding of the stored output (as gpu-ops.test.ts's half storage). */
const HALF: Record<string, { u: number; atol: number }> = { f16: { u: 2 ** -11, atol: 2 ** -24 }, f16p: { u: 2 ** -11, atol: 2 ** -24 }, bf16: { u: 2 ** -8, atol: 0 } };

interface Case {
  readonly node: Node;
  readonly kind: ElemKind;
  readonly seed: number;
  readonly shared: boolean;
  toString(): string;
}

const caseArb = fc
  .record({ m: DIM, k: DIM, n: DIM, transA: fc.boolean(), transB: fc.boolean(), batch: fc.constantFrom(...BATCHES), kind: fc.constantFrom(...KINDS), shared: fc.integer({ min: 0, max: 5 }), seed: fc.integer({ min: 1, max: 1e6 }) })
  .map((r): Case => {
    const b = new Builder();
    // One in six: one tensor as both operands, op(B) = op(A)ᵀ (x·xᵀ: bound once).
    const shared = r.shared === 0;
    const a = b.input('a', [...r.batch[0], ...(r.transA ? [r.k, r.m] : [r.m, r.k])]);
    if (shared) b.matmul(a, a, { transA: r.transA, transB: !r.transA });
    else b.matmul(a, b.input('b', [...r.batch[1], ...(r.transB ? [r.n, r.k] : [r.k, r.n])]), { transA: r.transA, transB: r.transB });
    const node = b.build().nodes.at(-1)!;
    const kind = r.kind === 'f16' && !gpu.shaderF16 ? 'f16p' : r.kind;
    return { node, kind, seed: r.seed, shared, toString: () => `${matmulShapeKey(node, ctxFor(kind))} seed ${r.seed}` };
  });

const dtypeOf = (kind: ElemKind) => (kind === 'bf16' ? 'bf16' : kind === 'f32' ? 'f32' : 'f16');

/** Runs kernel `wgsl` (or the variant's own) for case `c`; the first element past its bound, or undefined. */
async function mismatch(c: Case, v: MatmulVariant, edit: (wgsl: string) => string = (w) => w): Promise<string | undefined> {
  const ctx = ctxFor(c.kind);
  const k = v.emit(c.node, ctx);
  const inputs = c.shared ? [c.node.inputs[0]] : c.node.inputs;
  const tensors: Tensor[] = inputs.map((x, i) => ({ shape: x.type.shape, data: deviceValues(sample(numel(x.type.shape), { kind: 'real' }, c.seed + i), dtypeOf(c.kind)) }));
  const got = await runKernelOnGpu(c.node, { ...k, wgsl: edit(k.wgsl) }, new Map(inputs.map((x, i) => [x.id, tensors[i]])), { elem: () => c.kind });
  const operands = c.shared ? [tensors[0], tensors[0]] : tensors;
  const want = OPS.matmul.ref(operands, c.node.attrs as never, c.node.out.type);
  const abs = OPS.matmul.ref(operands.map((t) => ({ ...t, data: t.data.map(Math.abs) })), c.node.attrs as never, c.node.out.type);
  const { transA } = c.node.attrs as { transA: boolean };
  const a = c.node.inputs[0].type.shape;
  const kk = transA ? a[a.length - 2] : a[a.length - 1];
  const half = HALF[c.kind];
  for (let i = 0; i < want.length; i++) {
    // An f32 dot product of k terms: each step rounds by ≤ 2⁻²⁴ of a partial sum ≤ Σ|terms| (gpu-ops.test.ts's 'accumulate').
    const f32 = (kk + 1) * 2 ** -23 * abs[i];
    const bound = half ? f32 * (1 + half.u) + half.u * Math.abs(want[i]) + half.atol : f32;
    if (!(Math.abs(got[i] - want[i]) <= bound)) return `element ${i} of ${want.length}: gpu ${got[i]}, ref ${want[i]}, bound ${bound}`;
  }
  return undefined;
}

describe('every matmul variant, forced, against the float64 reference', () => {
  for (const v of MATMUL_VARIANTS) {
    it(`${v.name}${v.portable ? '' : ' (needs subgroups)'}: ragged m, k, n, transposes, broadcast batches, x·xᵀ, half storage`, async (t) => {
      const fitting = (c: Case) => v.fits(c.node, ctxFor(c.kind));
      // A variant this device cannot run (subgroup variants without 8-wide subgroups) is skipped, and says so.
      if (!fc.sample(caseArb, { numRuns: 300, seed: 1 }).some(fitting)) return t.skip(`${v.name} fits none of 300 cases on ${gpu.description}`);
      await propertyAsync(
        `gpu/matmul-variant/${v.name}`,
        caseArb.filter(fitting),
        async (c) => {
          const bad = await mismatch(c, v);
          if (bad) expect.fail(`${v.name} ${c}: ${bad}`);
        },
        { numRuns: Math.max(6, Math.round(FC_RUNS / 8)) },
      );
    }, 300_000);
  }

  test('teeth: a tiled kernel whose guarded loads fill the ragged tiles with 1 instead of 0 fails', async () => {
    // k = 21: the second 16-deep tile holds 5 steps of k and 11 of padding.
    const b = new Builder();
    b.matmul(b.input('a', [37, 21]), b.input('w', [21, 19]));
    const node = b.build().nodes.at(-1)!;
    const c: Case = { node, kind: 'f32', seed: 5, shared: false, toString: () => 'teeth' };
    const tiled = MATMUL_VARIANTS.find((v) => v.name === 'tiled')!;
    expect(await mismatch(c, tiled)).toBeUndefined();
    const edit = (w: string) => w.replaceAll('var v = 0.0;', 'var v = 1.0;');
    const wgsl = tiled.emit(node, ctxFor('f32')).wgsl;
    expect(edit(wgsl)).not.toBe(wgsl);
    expect(await mismatch(c, tiled, edit)).toMatch(/^element/);
  });
});

describe('choosing a variant', () => {
  const node = (m: number, k: number, n: number, transA = false) => {
    const b = new Builder();
    b.matmul(b.input('a', transA ? [k, m] : [m, k]), b.input('w', [k, n]), { transA });
    return b.build().nodes.at(-1)!;
  };
  const ctx0: EmitContext = { constants: new Map(), maxWorkgroupsPerDimension: 65535 };

  test('a choice in ctx.matmulChoice forces each variant where it fits; one that does not fit, or is not portable under --kernels portable, gives the heuristic', () => {
    const x = node(64, 64, 64);
    const lavapipe: EmitContext = { ...ctx0, subgroupSize: 8, cpuAdapter: true };
    const key = matmulShapeKey(x, lavapipe);
    for (const v of MATMUL_VARIANTS) {
      expect(v.fits(x, lavapipe), v.name).toBe(true);
      expect(emitMatmul(x, { ...lavapipe, matmulChoice: new Map([[key, v.name]]) }).wgsl, v.name).toBe(v.emit(x, lavapipe).wgsl);
      const portable = { ...lavapipe, kernels: 'portable' as const, matmulChoice: new Map([[key, v.name]]) };
      expect(chooseMatmulVariant(x, portable).name, v.name).toBe(v.portable ? v.name : 'register');
    }
    // Another key's choice, or a variant that does not fit (no subgroups), leaves the heuristic's.
    expect(chooseMatmulVariant(x, { ...lavapipe, matmulChoice: new Map([['[1,1]·[1,1] f32,f32→f32', 'tiled']]) }).name).toBe('row-lanes');
    expect(chooseMatmulVariant(x, { ...ctx0, matmulChoice: new Map([[key, 'row-lanes']]) }).name).toBe('register');
  });

  test('the heuristic: subgroup variants on lavapipe, register-blocked on a CPU without them, tiles on a GPU, within its limits', () => {
    const lavapipe: EmitContext = { ...ctx0, subgroupSize: 8, cpuAdapter: true };
    expect(heuristicMatmulVariant(node(512, 768, 768), lavapipe).name).toBe('row-lanes');
    expect(heuristicMatmulVariant(node(8, 512, 768, true), lavapipe).name).toBe('column-lanes');
    expect(heuristicMatmulVariant(node(512, 768, 768), { ...lavapipe, kernels: 'portable' }).name).toBe('register');
    expect(heuristicMatmulVariant(node(512, 768, 768), ctx0).name).toBe('register');
    const gpuCtx: EmitContext = { ...ctx0, subgroupSize: 32, cpuAdapter: false };
    expect(heuristicMatmulVariant(node(2048, 768, 768), gpuCtx).name).toBe('tiled');
    expect(heuristicMatmulVariant(node(512, 768, 8), gpuCtx).name).toBe('tiled-small');
    expect(heuristicMatmulVariant(node(8, 512, 768, true), gpuCtx).name).toBe('tiled-small');
    // An adapter that offers less than WebGPU's defaults: the tiles that do not fit are not chosen.
    expect(heuristicMatmulVariant(node(2048, 768, 768), { ...gpuCtx, maxInvocationsPerWorkgroup: 128 }).name).toBe('tiled-small');
    expect(heuristicMatmulVariant(node(2048, 768, 768), { ...gpuCtx, maxWorkgroupStorageSize: 4096 }).name).toBe('tiled-small');
    expect(heuristicMatmulVariant(node(2048, 768, 768), { ...gpuCtx, maxWorkgroupStorageSize: 2048 }).name).toBe('register');
  });

  test('shape keys round-trip: the rebuilt node has the same key', () => {
    const b = new Builder();
    const a = b.input('a', [2, 1, 37, 70]);
    b.matmul(a, b.input('w', [3, 33, 70]), { transB: true });
    b.matmul(a, a, { transB: true });
    for (const n of b.build().nodes) {
      for (const elem of ['f32', 'bf16'] as const) {
        const key = matmulShapeKey(n, { elem: () => elem });
        const back = matmulNodeFromKey(key)!;
        expect(matmulShapeKey(back.node, { elem: back.elem }), key).toBe(key);
        expect(back.node.out.type.shape).toEqual(n.out.type.shape);
      }
    }
    for (const bad of ['', '[4,4]·[4,4]', '[4,5]·[4,4] f32,f32→f32', '[4,4]·[4,4] f64,f32→f32', '[4]·[4,4] f32,f32→f32', '[4,4]·[4,5] f32,f32→f32 shared']) expect(matmulNodeFromKey(bad), bad).toBeUndefined();
  });
});

// ---------------------------------------------------------------------------------------------
// Trainer folders: --kernels portable, tuning.json, lorafa tune.

async function run(args: string[]): Promise<{ code: number; out: string; err: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const log = vi.spyOn(console, 'log').mockImplementation((...a) => void out.push(a.join(' ')));
  const error = vi.spyOn(console, 'error').mockImplementation((...a) => void err.push(a.join(' ')));
  const write = vi.spyOn(process.stdout, 'write').mockImplementation((s) => (out.push(String(s)), true));
  try {
    return { code: await main(args), out: out.join('\n'), err: err.join('\n') };
  } finally {
    log.mockRestore();
    error.mockRestore();
    write.mockRestore();
  }
}

/** At batch 32 the MLP's products have m = 32: lavapipe's auto plan takes the subgroup variants. */
const COMPILE = ['compile', 'models/mlp.ts', '--mode', 'lora-fa', '--rank', '4', '--batch', '32'];
const auto = join(tmp, 'auto');
const portable = join(tmp, 'portable');
const wgslOf = (dir: string) => readdirSync(join(dir, 'kernels')).map((f) => readFileSync(join(dir, 'kernels', f), 'utf8'));
const trainFlags = (out: string): TrainFlags => ({ data: 'synthetic', steps: 3, lrSchedule: 'constant', progress: 'none', out }) as TrainFlags;

describe('trainer folders', () => {
  beforeAll(async () => {
    for (const [dir, extra] of [[auto, []], [portable, ['--kernels', 'portable']]] as const) {
      const r = await run([...COMPILE, '-o', dir, ...extra]);
      expect(r.code, r.err).toBe(0);
    }
  }, 120_000);

  test('--kernels portable: no kernel of the trainer enables subgroups, the spec records it, and train takes only what was compiled', async () => {
    const spec = readProgram(portable).spec;
    expect(spec.kernels).toBe('portable');
    expect(readProgram(auto).spec.kernels).toBeUndefined();
    expect(wgslOf(portable).filter((w) => /enable subgroups/.test(w))).toEqual([]);
    // Teeth: on an adapter with 8-wide subgroups the same trainer compiled auto does use them.
    if (gpu.subgroupSize === 8) expect(wgslOf(auto).filter((w) => /enable subgroups/.test(w)).length).toBeGreaterThan(0);
    const r = await run(['train', portable, '--kernels', 'auto', '--data', 'synthetic', '--steps', '1']);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/--kernels: this trainer was compiled with --kernels portable/);
    const ok = await runTrainer(portable, spec, { ...trainFlags(join(tmp, 'portable-out')), kernels: 'portable' });
    expect(ok.losses.every((l) => Number.isFinite(l.loss))).toBe(true);
  }, 120_000);

  test("this adapter's tuning.json entry changes the kernels a run uses (and the losses only by rounding); another adapter's does not", async () => {
    const program = readProgram(auto);
    const keys = [...new Set([...matmulKeys(program.step), ...matmulKeys(program.eval)])];
    expect(keys.length).toBeGreaterThan(3);
    // Every shape tuned to a tiled variant, which the heuristic never picks on lavapipe.
    const results = keys.map((key) => ({ key, flops: 0, timings: [{ variant: 'tiled-small', ms: 1, runs: 5 }], choice: 'tiled-small', heuristic: 'register' }));
    const mine = tuningEntry(gpu, 'auto', results);
    const other = { ...mine, adapter: { ...mine.adapter, device: 'some other GPU' } };
    const file = (...entries: (typeof mine)[]): TuningFile => ({ format: 'lorafa-tuning/1', adapters: Object.fromEntries(entries.map((e) => [adapterKey(e.adapter), e])) });

    // A key holds all a kernel depends on: re-emitting every matmul from its key with the variant
    // the compiled plan chose gives the compiled kernels, text for text.
    const same = new Map(keys.map((key) => [key, chooseMatmulVariant(matmulNodeFromKey(key)!.node, { ...ctxFor('f32'), elem: matmulNodeFromKey(key)!.elem }).name]));
    const again = applyTuning(program, { path: 'tuning.json', file: file(tuningEntry(gpu, 'auto', keys.map((key) => ({ key, flops: 0, timings: [], choice: same.get(key)!, heuristic: same.get(key)! })))) }, gpu).program;
    for (const [plan, compiled] of [[again.step, program.step], [again.eval, program.eval]]) {
      expect(plan.dispatches.map((d) => plan.kernels[d.kernel].wgsl)).toEqual(compiled.dispatches.map((d) => compiled.kernels[d.kernel].wgsl));
    }

    const foreign = applyTuning(program, { path: 'tuning.json', file: file(other) }, gpu);
    expect(foreign.program).toBe(program);
    expect(foreign.note).toMatch(/no entry for this adapter \(.*\), only for ".*some other GPU.*": running the heuristic's kernels/);

    const tuned = applyTuning(program, { path: 'tuning.json', file: file(mine, other) }, gpu).program;
    for (const plan of [tuned.step, tuned.eval]) {
      for (const d of plan.dispatches.filter((x) => x.matmul)) expect(plan.kernels[d.kernel].wgsl, d.label).toMatch(/^\/\/ lorafa matmul: tiled-small/);
      // Kernels no dispatch uses are gone (the runner compiles every kernel of a plan).
      expect(new Set(plan.dispatches.map((d) => d.kernel)).size).toBe(plan.kernels.length);
    }
    expect(tuned.step.dispatches.map((d) => d.bindings)).toEqual(program.step.dispatches.map((d) => d.bindings));

    // Through the trainer: the file beside it is read and applied, and says so once.
    const base = await runTrainer(auto, program.spec, trainFlags(join(tmp, 'untuned')));
    writeFileSync(join(auto, TUNING_FILE), JSON.stringify(file(mine, other)));
    const lines: string[] = [];
    const write = vi.spyOn(process.stdout, 'write').mockImplementation((s) => (lines.push(String(s)), true));
    let withTuning;
    try {
      withTuning = await runTrainer(auto, program.spec, { ...trainFlags(join(tmp, 'tuned')), progress: 'lines' });
    } finally {
      write.mockRestore();
    }
    const notes = lines.join('').split('\n').filter((l) => l.includes(TUNING_FILE));
    expect(notes).toHaveLength(1);
    expect(notes[0]).toMatch(new RegExp(`tuned kernels for ${keys.length} of ${keys.length} matmul shapes \\(${keys.length} differ from the heuristic's\\); entries for 1 other adapter ignored`));
    for (const [i, l] of withTuning.losses.entries()) expect(Math.abs(l.loss - base.losses[i].loss)).toBeLessThan(1e-5 * Math.abs(base.losses[i].loss));
    rmSync(join(auto, TUNING_FILE));
  }, 180_000);

  test('a malformed tuning.json is refused, naming the file and the fix', async () => {
    const path = join(auto, TUNING_FILE);
    const valid = tuningEntry(gpu, 'auto', [{ key: '[4,4]·[4,4] f32,f32→f32', flops: 0, timings: [], choice: 'register', heuristic: 'register' }]);
    const cases: [string, RegExp][] = [
      ['{"format": "lorafa-tuning/1", "adapters": {', /not valid JSON/],
      [JSON.stringify({ format: 'lorafa-tuning/9', adapters: {} }), /format "lorafa-tuning\/9"/],
      [JSON.stringify({ format: 'lorafa-tuning/1', adapters: [] }), /"adapters" is not an object/],
      [JSON.stringify({ format: 'lorafa-tuning/1', adapters: { [adapterKey(valid.adapter)]: { ...valid, shapes: { '[4,4]·[4,4] f32,f32→f32': { variant: 'warp-speed' } } } } }), /names variant "warp-speed"/],
      [JSON.stringify({ format: 'lorafa-tuning/1', adapters: { [adapterKey(valid.adapter)]: { ...valid, shapes: { '4x4': { variant: 'register' } } } } }), /not a matmul shape key/],
      [JSON.stringify({ format: 'lorafa-tuning/1', adapters: { elsewhere: valid } }), /keyed differently/],
    ];
    try {
      for (const [text, problem] of cases) {
        writeFileSync(path, text);
        let e: unknown;
        try {
          readTuning(auto);
        } catch (x) {
          e = x;
        }
        expect(e, text).toBeInstanceOf(LorafaError);
        expect((e as LorafaError).where).toBe(path);
        expect((e as LorafaError).problem).toMatch(problem);
        expect((e as LorafaError).fix).toMatch(/lorafa tune .*or delete .*tuning\.json/);
      }
      // The trainer refuses it before training, with the same message.
      const r = await run(['train', auto, '--data', 'synthetic', '--steps', '1', '--out', join(tmp, 'refused')]);
      expect(r.code).toBe(1);
      expect(r.err).toContain(path);
      expect(r.err).toMatch(/fix: re-run `lorafa tune/);
      // A well-formed file round-trips.
      writeFileSync(path, '{}');
      writeTuning(auto, valid, () => {});
      expect(readTuning(auto)!.adapters[adapterKey(valid.adapter)]).toEqual(valid);
    } finally {
      rmSync(path, { force: true });
    }
  });

  test('lorafa tune writes tuning.json: every matmul shape of the trainer, each variant timed, the fastest (or the heuristic within 10%) chosen', async () => {
    const r = await run(['tune', auto]);
    expect(r.code, r.err).toBe(0);
    const t = readTuning(auto)!;
    const entry = t.adapters[adapterKey(gpu.identity)];
    const keys = new Set([...matmulKeys(readProgram(auto).step), ...matmulKeys(readProgram(auto).eval)]);
    expect(new Set(Object.keys(entry.shapes))).toEqual(keys);
    expect(r.out).toMatch(new RegExp(`^shape +${MATMUL_VARIANTS.map((v) => v.name).join(' +')} +choice$`, 'm'));
    for (const [key, c] of Object.entries(entry.shapes)) {
      const ms = Object.values(c.ms);
      expect(ms.length, key).toBeGreaterThan(1);
      expect(c.ms[c.variant], key).toBeLessThanOrEqual(c.variant === c.heuristic ? (1.001 * Math.min(...ms)) / 0.9 : Math.min(...ms));
      expect(r.out, key).toContain(key);
    }
    expect(r.out).toMatch(/wrote .*tuning\.json: \d+ of \d+ shapes/);
    // Not a trainer folder: refused before any GPU work.
    const none = await run(['tune', tmp]);
    expect(none.code).toBe(1);
    expect(none.err).toMatch(/no compiled trainer here/);
  }, 300_000);
});
