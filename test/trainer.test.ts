// The generated trainer (lorafa compile -o): its files, its type check, and its training on the
// GPU (Dawn on lavapipe here) through the one training loop, against the float64 reference, step
// by step.
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Project, ts } from 'ts-morph';
import { afterAll, beforeAll, describe, expect, test, vi } from 'vitest';
import { main } from '../src/cli/main.ts';
import { buildKernelPlan } from '../src/codegen/kernel-plan.ts';
import { readProgram, type PlanFile } from '../src/train/trainer-files.ts';
import type { ProgramSpec } from '../src/train/program.ts';
import type { Tensor } from '../src/ir/shape.ts';
import { compileTraining, type Mode } from '../src/passes/compile.ts';
import { planMemory, type Limits, type PlanOptions } from '../src/passes/memory-plan.ts';
import { optimizerFeeds } from '../src/passes/optimizer.ts';
import { acquireGpu } from '../src/runtime/gpu.ts';
import { referenceStep } from '../src/runtime/reference.ts';
import { syntheticDataset } from '../src/data/synthetic.ts';
import { runTraining, type TrainResult } from '../src/train/loop.ts';
import { ROOT, toyModel } from './helpers.ts';

// out/ inside the checkout and in the OS temp dir: the trainer is the same either way.
const inRepo = join(ROOT, 'out');
const dirs: string[] = [];
function outDir(where: 'repo' | 'tmp', name: string): string {
  const parent = where === 'repo' ? (mkdirSync(inRepo, { recursive: true }), mkdtempSync(join(inRepo, 'vitest-'))) : mkdtempSync(join(tmpdir(), 'lorafa-trainer-'));
  dirs.push(parent);
  return join(parent, name);
}

const RANK = 4;
let project: Project | undefined;
const LR = 1e-2;

async function compileTo(dir: string, model: string, mode: Mode, ...extra: string[]): Promise<void> {
  const log = vi.spyOn(console, 'log').mockImplementation(() => {});
  const err = vi.spyOn(console, 'error').mockImplementation(() => {});
  try {
    const code = await main(['compile', `models/${model}.ts`, '--mode', mode, '--rank', String(RANK), '-o', dir, ...extra]);
    expect(code, err.mock.calls.flat().join('\n')).toBe(0);
  } finally {
    log.mockRestore();
    err.mockRestore();
  }
}

async function importSpec(dir: string): Promise<ProgramSpec> {
  return ((await import(pathToFileURL(join(dir, 'trainer.ts')).href)) as { spec: ProgramSpec }).spec;
}

/** The trainer's program, trained through runTraining on the synthetic task at a constant lr. */
async function trainDir(dir: string, steps: number, lr: number, extra: Partial<Parameters<typeof runTraining>[1]> = {}) {
  const spec = await importSpec(dir);
  const p = readProgram(dir, spec); // also checks the plan hash trainer.ts carries
  const data = syntheticDataset(p.inputs, spec.sizes, spec.seed);
  const result = await runTraining(p, { steps, lr, schedule: 'constant', warmup: 0, data, progress: 'none', readFrozen: true, log: () => {}, ...extra });
  return { p, spec, data, result };
}

/** The same step graph the CLI compiled, built here independently. */
async function stepGraph(model: string, mode: Mode) {
  const { model: m, graph } = await toyModel(model);
  const lora = { rank: RANK, alpha: 2 * RANK, targets: m.def.defaultTargets ?? [], modulesToSave: m.def.modulesToSave };
  return compileTraining(graph, { mode, lora, optimizer: { kind: 'adamw' } });
}

/** The step's memory plan as `lorafa plan` makes it (LoRA-FA also tried in LoRA's layout). */
async function memoryPlan(model: string, mode: Mode, limits: Limits) {
  const c = await stepGraph(model, mode);
  const plan = (x: typeof c, dominating?: PlanOptions['dominating']) => planMemory(x.step!, { limits, dtype: 'f32', gradients: x.gradients, dominating });
  let dominating: PlanOptions['dominating'];
  if (mode === 'lora-fa') {
    const l = await stepGraph(model, 'lora');
    dominating = { graph: l.step!, plan: plan(l) };
  }
  return { c, plan: plan(c, dominating) };
}

afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
  if (existsSync(inRepo) && readdirSync(inRepo).length === 0) rmSync(inRepo, { recursive: true });
});

const CASES = [
  { model: 'mlp', mode: 'lora-fa', where: 'repo' },
  { model: 'mlp', mode: 'lora', where: 'tmp' },
  { model: 'llama', mode: 'lora-fa', where: 'tmp' },
  { model: 'llama', mode: 'lora', where: 'repo' },
] as const;

describe.each(CASES)('$model $mode (out/ in $where)', ({ model, mode, where }) => {
  let dir: string;
  beforeAll(async () => {
    dir = outDir(where, 'out');
    await compileTo(dir, model, mode);
  });

  test('writes trainer.ts, plan.json and one kernels/NNN.wgsl per distinct kernel; they agree with buildKernelPlan', async () => {
    expect(existsSync(join(dir, 'trainer.ts'))).toBe(true);
    const doc = JSON.parse(readFileSync(join(dir, 'plan.json'), 'utf8')) as PlanFile;
    expect(doc.format).toBe('lorafa-plan/2');
    expect(doc.memory.peak).toBe(doc.step.bytes);
    // The forward graph's weights travel with the trainer (for --base and the adapter export).
    expect(doc.weights.adapters.length).toBeGreaterThan(0);
    expect(doc.weights.params.some((p) => p.role === 'lora_A')).toBe(true);
    expect(Object.keys(doc.memory.atPeak).sort()).toEqual(['frozen', 'gradients', 'inputs', 'optimizer', 'saved', 'trainable', 'workspace']);

    const spec = await importSpec(dir);
    const loaded = readProgram(dir, spec); // also checks the plan hash trainer.ts carries
    const { preset: _, ...limits } = doc.memory.limits;
    expect(doc.memory.limits.preset).toBe('adapter');
    const { c, plan } = await memoryPlan(model, mode, limits);
    const gpu = await acquireGpu();
    const expected = buildKernelPlan(c.step!, plan, { maxWorkgroupsPerDimension: gpu.limits.maxComputeWorkgroupsPerDimension, subgroupSize: gpu.subgroupSize });
    expect(loaded.step).toEqual(expected);
    expect(doc.memory.peak).toBe(plan.peak);
    // …which is the peak `lorafa plan --limits adapter` reports.
    const out: string[] = [];
    const write = vi.spyOn(process.stdout, 'write').mockImplementation((s) => (out.push(String(s)), true));
    try {
      expect(await main(['plan', `models/${model}.ts`, '--mode', mode, '--rank', String(RANK), '--limits', 'adapter', '--json'])).toBe(0);
    } finally {
      write.mockRestore();
    }
    expect(JSON.parse(out.join('')).peak).toBe(doc.memory.peak);
    // One file per distinct kernel text of the step and the evaluation plan together.
    const files = readdirSync(join(dir, 'kernels')).sort();
    const distinct = new Set([...loaded.step.kernels, ...loaded.eval.kernels].map((k) => k.wgsl));
    expect(files).toEqual([...distinct].map((_, i) => `${String(i).padStart(3, '0')}.wgsl`));
    expect(new Set(files.map((f) => readFileSync(join(dir, 'kernels', f), 'utf8'))).size).toBe(files.length);
  });

  test('trainer.ts imports lorafa by name, never a path, and type-checks against the package\'s API', () => {
    const text = readFileSync(join(dir, 'trainer.ts'), 'utf8');
    const imports = [...text.matchAll(/from '([^']+)'/g)].map((m) => m[1]);
    expect(imports).toEqual(['lorafa']);
    // ESNext + Bundler as emitTrainer checks it (ts-morph does not infer module formats); `lorafa`
    // maps to the package door, as it resolves for a project with the package installed.
    project ??= new Project({
      tsConfigFilePath: join(ROOT, 'tsconfig.json'),
      skipAddingFilesFromTsConfig: true,
      compilerOptions: { module: ts.ModuleKind.ESNext, moduleResolution: ts.ModuleResolutionKind.Bundler, paths: { lorafa: [join(ROOT, 'src', 'index.ts')] } },
    });
    const file = project.addSourceFileAtPath(join(dir, 'trainer.ts'));
    const diagnostics = project.getPreEmitDiagnostics().filter((d) => d.getSourceFile()?.getFilePath() === file.getFilePath());
    expect(project.formatDiagnosticsWithColorAndContext(diagnostics)).toBe('');
    // And it really resolved lorafa's door and the WebGPU types.
    const paths = project.getProgram().compilerObject.getSourceFiles().map((f) => f.fileName);
    expect(paths).toContain(resolve(ROOT, 'src/index.ts'));
    expect(paths.some((p) => p.includes('@webgpu/types'))).toBe(true);
  });

  test('5 AdamW steps on the GPU match the float64 reference: losses, parameters and optimizer state', async () => {
    const { p: t, spec, data, result } = await trainDir(dir, 5, LR);
    expect(result.losses.map((l) => l.step)).toEqual([1, 2, 3, 4, 5]);

    // The reference: the same step graph, the same f32-rounded initial values, the same batches.
    const c = await stepGraph(model, mode);
    const plan = t.step;
    let params = new Map<string, Tensor>(
      plan.params.map((p) => [p.name, { shape: p.shape, data: Float64Array.from(result.initial.get(p.name)!) }]),
    );
    const refLoss: number[] = [];
    for (let step = 1; step <= 5; step++) {
      const r = referenceStep(c.step!, { feeds: { ...(await data.batch(step, spec.batch)), ...optimizerFeeds({ kind: 'adamw' }, LR, step) }, params });
      refLoss.push(r.outputs.loss.data[0]);
      params = r.params;
    }
    // Tolerances (float32 GPU against float64): loss within 1e-5 relative; each tensor within
    // 1e-4 of its largest magnitude (+1e-7). Measured on lavapipe: loss ≤ 1.4e-7 relative, tensors
    // ≤ 2.6e-6 of their largest magnitude (LORAFA_REPORT=1 prints every tensor's).
    if (process.env.LORAFA_REPORT) console.log(model, mode, 'loss rel err', result.losses.map((l, i) => (Math.abs(l.loss - refLoss[i]) / refLoss[i]).toExponential(1)).join(' '));
    result.losses.forEach((l, i) => expect(Math.abs(l.loss - refLoss[i]), `loss at step ${i + 1}`).toBeLessThanOrEqual(1e-5 * Math.abs(refLoss[i])));
    let checked = 0;
    for (const p of plan.params) {
      const got = result.params.get(p.name)!;
      const want = params.get(p.name)!.data;
      const scale = want.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
      let worst = 0;
      for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i] - want[i]));
      expect(worst, `${p.name} (max |ref| ${scale})`).toBeLessThanOrEqual(1e-4 * scale + 1e-7);
      if (process.env.LORAFA_REPORT) console.log(`${model} ${mode} ${p.name}: worst ${worst.toExponential(2)} of ${scale.toExponential(2)} = ${(worst / (scale || 1)).toExponential(2)}`);
      checked++;
    }
    expect(checked).toBe(plan.params.length);

    // Allocated GPU bytes are exactly the memory plan's peak.
    const doc = JSON.parse(readFileSync(join(dir, 'plan.json'), 'utf8')) as PlanFile;
    expect(result.allocatedBytes).toBe(doc.memory.peak);
    expect(result.allocatedBytes).toBe(plan.bytes);

    if (mode === 'lora-fa') assertFrozenUnchanged(result, plan.params);
  });
});

/** LoRA-FA never changes an A or a W: read back from the GPU, bit for bit the uploaded values. */
function assertFrozenUnchanged(result: TrainResult, params: readonly { name: string; role: string; trainable: boolean }[]) {
  const frozen = params.filter((p) => !p.trainable && p.role !== 'optimizer_state');
  expect(frozen.filter((p) => p.role === 'lora_A').length).toBeGreaterThan(0);
  expect(frozen.filter((p) => p.role === 'weight').length).toBeGreaterThan(0);
  for (const p of frozen) {
    const before = new Uint32Array(result.initial.get(p.name)!.buffer);
    const after = new Uint32Array(result.params.get(p.name)!.slice().buffer);
    expect(after, p.name).toEqual(before);
  }
  // …while every B did move.
  for (const p of params.filter((q) => q.role === 'lora_B')) {
    expect(result.params.get(p.name)!.some((x, i) => x !== result.initial.get(p.name)![i]), p.name).toBe(true);
  }
}

test('the loss falls on the synthetic task: 30 steps of mlp lora-fa end below 0.8 × the first', async () => {
  const dir = outDir('tmp', 'out');
  // batch 64 keeps one batch's loss close to the expected loss; lr 3e-2 ends near 0.5 × the start.
  await compileTo(dir, 'mlp', 'lora-fa', '--batch', '64');
  const lines: string[] = [];
  const { result: r } = await trainDir(dir, 30, 3e-2, { progress: 'lines', logEvery: 10, log: (s) => lines.push(s) });
  const first = r.losses[0].loss;
  const last = r.losses[r.losses.length - 1].loss;
  expect(last, r.losses.map((l) => l.loss.toFixed(3)).join(' ')).toBeLessThan(0.8 * first);
  // Plain progress lines (not a TTY): loss, step time, throughput, time left, GPU bytes; the data's label.
  expect(lines.join('\n')).toMatch(/^step 10\/30 {2}loss \d\.\d{4} {2}[\d.]+ ms\/step {2}[\d,]+ samples\/s {2}ETA \d+s {2}GPU [\d.]+ (?:B|KiB|MiB)$/m);
  expect(lines.join('\n')).toMatch(/^data: synthetic classification: .*\[synthetic\]$/m);
});
