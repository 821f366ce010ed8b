// W1 in TF.js (a peer for `npm run bench:peers`): the same data file, model, loss and optimizer
// as lorafa, run through TF.js 4.x on its WebGPU backend (Dawn via the npm `webgpu` package) or
// its WASM backend (single-threaded in Node).
//
//   npx tsx bench/peers/tfjs.ts --backend webgpu|wasm --variant lora|lora-fa \
//     --optimizer sgd|adamw --data <file.safetensors> --steps 12 --warmup 2
//
// Model per step: h = x; per layer y = h·W + s·((h·A)·B), h = gelu_tanh(y) between layers (not
// after the last); loss = mean((h − target)²). W frozen; LoRA trains A and B, LoRA-FA only B.
// --steps is the total step count; the first --warmup of them are untimed (their losses are still
// reported). Each step ends with the loss read back (await loss.data()), so it truly completed.
// Human lines go to stderr; the last stdout line is one JSON object.
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { readSafetensors } from '../../src/io/safetensors.ts';
import { median } from './report.ts';
import { packageVersion, W1_HYPER } from './w1-data.ts';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const log = (...a: unknown[]) => console.error(...a);

const { values: args } = parseArgs({
  options: {
    backend: { type: 'string', default: 'webgpu' },
    variant: { type: 'string', default: 'lora-fa' },
    optimizer: { type: 'string', default: 'sgd' },
    data: { type: 'string' },
    steps: { type: 'string', default: '12' },
    warmup: { type: 'string', default: '2' },
  },
});
const backend = args.backend!;
const variant = args.variant!;
const optimizer = args.optimizer!;
const steps = Number(args.steps);
const warmup = Number(args.warmup);
if (!['webgpu', 'wasm'].includes(backend)) throw new Error(`--backend must be webgpu or wasm, not ${backend}`);
if (!['lora', 'lora-fa'].includes(variant)) throw new Error(`--variant must be lora or lora-fa, not ${variant}`);
if (!['sgd', 'adamw'].includes(optimizer)) throw new Error(`--optimizer must be sgd or adamw, not ${optimizer}`);
if (!args.data) throw new Error('--data <file.safetensors> is required');
if (!(Number.isInteger(steps) && steps > 0 && Number.isInteger(warmup) && warmup >= 0 && warmup < steps)) {
  throw new Error('--steps must be a positive integer and --warmup an integer in [0, steps)');
}

const notes: string[] = [];
const versions: Record<string, string | null> = { node: process.version };

// WebGPU setup (before TF.js creates its device): bench/peers/gpu-meter.ts puts the Dawn globals
// and navigator.gpu in place and counts bytes of GPUBuffers alive (createBuffer / destroy wrapped).
let meter: import('./gpu-meter.ts').GpuMeter | undefined;

async function setupWebgpu(): Promise<void> {
  const node = await (await import('./gpu-meter.ts')).installNodeWebGPU();
  meter = node.meter;
  versions.webgpu = node.version;
}

// ---------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  if (backend === 'webgpu') await setupWebgpu();
  const tf = await import('@tensorflow/tfjs');
  versions.tfjs = tf.version.tfjs;
  if (backend === 'webgpu') {
    await import('@tensorflow/tfjs-backend-webgpu');
    versions['tfjs-backend-webgpu'] = packageVersion('@tensorflow/tfjs-backend-webgpu');
  } else {
    const wasm = await import('@tensorflow/tfjs-backend-wasm');
    versions['tfjs-backend-wasm'] = packageVersion('@tensorflow/tfjs-backend-wasm');
    const setWasmPaths = (wasm as any).setWasmPaths ?? (wasm as any).default?.setWasmPaths;
    setWasmPaths(join(ROOT, 'node_modules', '@tensorflow', 'tfjs-backend-wasm', 'dist') + '/');
  }
  if (!(await tf.setBackend(backend))) throw new Error(`TF.js could not initialise the ${backend} backend`);
  await tf.ready();
  log(`tfjs ${tf.version.tfjs} backend ${tf.getBackend()}`);
  if (backend === 'webgpu') {
    const b = tf.backend() as any;
    const info = b.adapterInfo ?? {};
    const desc = [info.vendor, info.architecture, info.description].filter(Boolean).join(' ');
    if (desc) notes.push(`WebGPU adapter: ${desc}`);
  } else {
    const wasmFlags = { simd: tf.env().getBool('WASM_HAS_SIMD_SUPPORT'), threads: tf.env().getBool('WASM_HAS_MULTITHREAD_SUPPORT') };
    notes.push(`wasm backend: SIMD ${wasmFlags.simd}, multithread support ${wasmFlags.threads} (Node: runs single-threaded)`);
  }

  // Data.
  const file = readSafetensors(args.data!);
  const get = (name: string) => {
    const t = file.get(name);
    if (!t) throw new Error(`${args.data}: no tensor '${name}'`);
    return t;
  };
  const f32 = (name: string) => {
    const t = get(name);
    return tf.tensor(Float32Array.from(t.data), t.shape as number[], 'float32');
  };
  const [n, d] = get('x').shape;
  let layers = 0;
  while (file.has(`layers.${layers}.fc.weight`)) layers++;
  const r = get('layers.0.fc.lora_A').shape[1];
  const s = W1_HYPER.alpha / r;
  log(`W1: n ${n}, d ${d}, r ${r}, layers ${layers}, s ${s}; ${variant}, ${optimizer}, ${steps} steps (${warmup} warm-up)`);

  const x = f32('x');
  const target = f32('target');
  const W = Array.from({ length: layers }, (_, i) => f32(`layers.${i}.fc.weight`));
  const trainA = variant === 'lora';
  const variable = (name: string, trainable: boolean, varName: string) => {
    const init = f32(name);
    const out = tf.variable(init, trainable, varName);
    init.dispose();
    return out;
  };
  const A = Array.from({ length: layers }, (_, i) => variable(`layers.${i}.fc.lora_A`, trainA, `A${i}`));
  const B = Array.from({ length: layers }, (_, i) => variable(`layers.${i}.fc.lora_B`, true, `B${i}`));
  const trainables: import('@tensorflow/tfjs').Variable[] = [...(trainA ? A : []), ...B];

  const c = Math.sqrt(2 / Math.PI);
  const geluTanh = (v: import('@tensorflow/tfjs').Tensor) =>
    tf.mul(tf.mul(v, 0.5), tf.add(1, tf.tanh(tf.mul(c, tf.add(v, tf.mul(0.044715, tf.mul(tf.mul(v, v), v)))))));
  const lossFn = () => {
    let h: import('@tensorflow/tfjs').Tensor = x;
    for (let i = 0; i < layers; i++) {
      const y = tf.add(tf.matMul(h, W[i]), tf.mul(s, tf.matMul(tf.matMul(h, A[i]), B[i])));
      h = i < layers - 1 ? geluTanh(y) : y;
    }
    // mean over all n·d elements, taken as the mean of the n row means (the same value and the
    // same gradient): the wasm backend's reductions sum in float32 one element at a time, which
    // over n·d = 393 216 elements is off by ~1e-5 relative; two levels keep it at f32 rounding.
    return tf.mean(tf.mean(tf.square(tf.sub(h, target)), 1)) as import('@tensorflow/tfjs').Scalar;
  };

  // Optimizers. AdamW exactly as torch.optim.AdamW (decoupled weight decay first).
  const { lr: sgdLr } = W1_HYPER.sgd;
  const { lr, beta1, beta2, eps, weightDecay } = W1_HYPER.adamw;
  const m = optimizer === 'adamw' ? trainables.map((p) => tf.tidy(() => tf.variable(tf.zerosLike(p), false))) : [];
  const v = optimizer === 'adamw' ? trainables.map((p) => tf.tidy(() => tf.variable(tf.zerosLike(p), false))) : [];
  const update = (t: number, grads: Record<string, import('@tensorflow/tfjs').Tensor>) => {
    tf.tidy(() => {
      trainables.forEach((p, k) => {
        const g = grads[p.name];
        if (optimizer === 'sgd') {
          p.assign(tf.sub(p, tf.mul(sgdLr, g)));
          return;
        }
        const bc1 = 1 - beta1 ** t;
        const bc2 = 1 - beta2 ** t;
        const decayed = tf.mul(p, 1 - lr * weightDecay);
        const mk = tf.add(tf.mul(beta1, m[k]), tf.mul(1 - beta1, g));
        const vk = tf.add(tf.mul(beta2, v[k]), tf.mul(1 - beta2, tf.square(g)));
        m[k].assign(mk);
        v[k].assign(vk);
        const denom = tf.add(tf.sqrt(tf.div(vk, bc2)), eps);
        p.assign(tf.sub(decayed, tf.mul(lr, tf.div(tf.div(mk, bc1), denom))));
      });
    });
  };

  const losses: number[] = [];
  const ms: number[] = [];
  let tfPeak = 0;
  const t0 = performance.now();
  for (let t = 1; t <= steps; t++) {
    const start = performance.now();
    const { value, grads } = tf.variableGrads(lossFn, trainables);
    update(t, grads);
    const loss = (await value.data())[0];
    const elapsed = performance.now() - start;
    // Sampled at the end of the step, while the step's loss and gradients are still alive.
    tfPeak = Math.max(tfPeak, tf.memory().numBytes);
    value.dispose();
    tf.dispose(grads);
    losses.push(loss);
    if (t > warmup) ms.push(elapsed);
    log(`step ${t}: loss ${loss.toPrecision(8)}  ${elapsed.toFixed(1)} ms${t <= warmup ? ' (warm-up)' : ''}`);
  }
  const total = performance.now() - t0;
  log(`median ${median(ms).toFixed(1)} ms/step over ${ms.length} timed steps; ${(total / 1000).toFixed(1)} s for all ${steps} steps`);

  if (!losses.every(Number.isFinite)) notes.push('non-finite loss');
  notes.push(`steps = total steps; the first ${warmup} are warm-up (untimed), ms has ${ms.length} entries`);
  notes.push('loss = mean of the n row means of (h − target)² (= mean over n·d; two-level so wasm float32 reductions stay accurate)');
  notes.push('wall ms per step = variableGrads + optimizer update + await loss.data()');
  notes.push(`tf.memory().numBytes peak (end of step, grads alive) ${tfPeak}`);
  let memory: { kind: string; peak: number };
  if (backend === 'webgpu' && meter) {
    memory = { kind: 'gpu-buffer-bytes', peak: meter.peak() };
    notes.push(`GPU buffers (bench/peers/gpu-meter.ts): ${meter.buffers()} alive at the end, ${meter.alive()} bytes (TF.js pools freed buffers, so pooled ones count as alive)`);
  } else {
    memory = { kind: 'tf.memory().numBytes peak', peak: tfPeak };
  }
  const out = { system: 'tfjs', backend, variant, optimizer, steps, losses, ms, memory, versions, notes };
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().then(
  () => process.exit(0),
  (e) => {
    log(`tfjs runner failed: ${(e as Error).stack ?? e}`);
    process.exit(1);
  },
);
