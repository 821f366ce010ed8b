// lorafa's W1 runner for `npm run bench:peers`: the same command line and JSON line as every peer
// runner. Compiles models/w1.ts in the variant's mode with the optimizer, plans it for this
// adapter, loads W, A, B, x and target from the shared data file, and runs K steps, each read back
// (StepRunner.step returns the loss from the GPU). GPU bytes: the peers' meter (gpu-meter.ts:
// GPUDevice/GPUBuffer prototypes patched before any device exists, peak over the whole run), so
// every WebGPU system is counted by the same code; the runtime's own BufferMeter must agree.
// Before the timed run the step's matmuls are tuned on this adapter as `lorafa tune` tunes a
// trainer (src/runtime/tune.ts; --no-tune keeps the heuristic's kernels), and the meters' peaks are
// reset after it, so the tuning's scratch buffers are not counted.
//   npx tsx bench/peers/lorafa.ts --variant lora-fa --optimizer sgd --data FILE --steps 12 --warmup 2
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Command } from 'commander';
import { loadModel, trace } from '../../src/model/load.ts';
import { readSafetensors } from '../../src/io/safetensors.ts';
import { optimizerFeeds, type OptimizerOptions } from '../../src/passes/optimizer.ts';
import { StepRunner } from '../../src/runtime/executor.ts';
import { acquireGpu } from '../../src/runtime/gpu.ts';
import { kernelOptionsFor, planStepForGpu } from '../../src/runtime/session.ts';
import { tuneMatmuls } from '../../src/runtime/tune.ts';
import { applyMatmulChoices, matmulKeys } from '../../src/codegen/kernel-plan.ts';
import { PACKAGE_ROOT as ROOT } from '../../src/train/presets.ts';
import { installNodeWebGPU } from './gpu-meter.ts';
import { packageVersion, W1_HYPER } from './w1-data.ts';

const flags = new Command('lorafa-w1')
  .requiredOption('--variant <v>', 'lora | lora-fa')
  .requiredOption('--optimizer <o>', 'sgd | adamw')
  .requiredOption('--data <file>', 'the W1 data file (bench/peers/w1-data.ts)')
  .option('--steps <k>', 'steps in all', Number, 12)
  .option('--warmup <w>', 'steps not timed', Number, 2)
  .option('--no-tune', "run the heuristic's matmul kernels untuned")
  .parse()
  .opts<{ variant: 'lora' | 'lora-fa'; optimizer: 'sgd' | 'adamw'; data: string; steps: number; warmup: number; tune: boolean }>();

const data = readSafetensors(flags.data);
const [n, d] = data.get('x')!.shape;
const r = data.get('layers.0.fc.lora_A')!.shape[1];
let layers = 0;
while (data.has(`layers.${layers}.fc.weight`)) layers++;

const m = await loadModel(join(ROOT, 'models', 'w1.ts'));
const graph = trace(m, 'w1', { batch: n, d, layers });
const optimizer: OptimizerOptions =
  flags.optimizer === 'sgd'
    ? { kind: 'sgd' }
    : { kind: 'adamw', beta1: W1_HYPER.adamw.beta1, beta2: W1_HYPER.adamw.beta2, eps: W1_HYPER.adamw.eps, weightDecay: W1_HYPER.adamw.weightDecay };
const lr = flags.optimizer === 'sgd' ? W1_HYPER.sgd.lr : W1_HYPER.adamw.lr;
const node = await installNodeWebGPU();
const gpu = await acquireGpu();
const planned = planStepForGpu(graph, { mode: flags.variant, lora: { rank: r, alpha: W1_HYPER.alpha, targets: ['fc'] }, optimizer }, gpu);
let kernels = planned.kernels;
let tuned = 'untuned (--no-tune)';
if (flags.tune) {
  const keys = matmulKeys(kernels);
  const tunings = await tuneMatmuls(gpu, keys);
  const choices = new Map(tunings.map((t) => [t.key, t.choice]));
  kernels = applyMatmulChoices(kernels, choices, kernelOptionsFor(gpu)).plan;
  tuned = `tuned here: ${tunings.map((t) => `${t.key} → ${t.choice}`).join('; ')}`;
}
node.meter.resetPeak();
const before = gpu.memory.live;
gpu.memory.resetPeak();
const runner = await StepRunner.create(kernels, gpu);
const values = new Map<string, { data: Float32Array }>();
for (const p of kernels.params) {
  const t = data.get(p.name);
  // Optimizer state starts at zero; everything else comes from the shared file.
  values.set(p.name, { data: t ? Float32Array.from(t.data) : new Float32Array(p.shape.reduce((a, b) => a * b, 1)) });
}
runner.writeParams(values);
const feeds = { x: Float32Array.from(data.get('x')!.data), target: Float32Array.from(data.get('target')!.data) };
const losses: number[] = [];
const ms: number[] = [];
for (let t = 1; t <= flags.steps; t++) {
  const t0 = performance.now();
  const loss = await runner.step({ ...feeds, ...optimizerFeeds(optimizer, lr, t) });
  const dt = performance.now() - t0;
  losses.push(loss);
  if (t > flags.warmup) ms.push(dt);
}
const peak = node.meter.peak();
const own = gpu.memory.peak - before;
if (own !== peak) throw new Error(`GPU bytes: the peers' meter counted ${peak}, lorafa's BufferMeter ${own}`);
runner.destroy();
console.log(
  JSON.stringify({
    system: 'lorafa',
    backend: 'webgpu',
    variant: flags.variant,
    optimizer: flags.optimizer,
    steps: flags.steps,
    losses,
    ms,
    memory: { kind: 'gpu-buffer-bytes', peak, planned: kernels.bytes, bufferMeter: own },
    adapter: gpu.description,
    versions: { lorafa: JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).version, webgpu: packageVersion('webgpu') },
    notes: [`${kernels.dispatches.length} dispatches per step, ${kernels.kernels.length} kernels; subgroup matmul: ${gpu.subgroupSize ? 'yes' : 'no'}; GPU waits through quietly() (no busy poll); matmul kernels ${tuned}`],
  }),
);
process.exit(0);
