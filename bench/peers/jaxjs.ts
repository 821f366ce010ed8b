// jax-js's W1 runner for `npm run bench:peers`: same command line and JSON line as every peer runner.
// The model, loss and optimizer are written in jax-js (numpy API + valueAndGrad), the whole training
// step (forward, backward, SGD/AdamW update) is one jit-compiled function; each step's loss is read
// back (await loss.data()), so every step truly completes on the device.
//   npx tsx bench/peers/jaxjs.ts --backend webgpu|wasm --variant lora|lora-fa --optimizer sgd|adamw \
//     --data FILE --steps 12 --warmup 2
// GPU bytes (webgpu): GPUBuffers alive, counted by bench/peers/gpu-meter.ts (createBuffer/destroy
// wrapped before jax-js requests its device); peak over the whole run, setup included.
import { Command } from 'commander';
import { readSafetensors } from '../../src/io/safetensors.ts';
import { median } from './report.ts';
import { packageVersion, W1_HYPER } from './w1-data.ts';

const flags = new Command('jaxjs-w1')
  .requiredOption('--backend <b>', 'webgpu | wasm')
  .requiredOption('--variant <v>', 'lora | lora-fa')
  .requiredOption('--optimizer <o>', 'sgd | adamw')
  .requiredOption('--data <file>', 'the W1 data file (bench/peers/w1-data.ts)')
  .option('--steps <k>', 'steps in all', Number, 12)
  .option('--warmup <w>', 'steps not timed', Number, 2)
  .option('--no-jit', 'run the step eagerly (no jit)')
  .parse()
  .opts<{ backend: 'webgpu' | 'wasm'; variant: 'lora' | 'lora-fa'; optimizer: 'sgd' | 'adamw'; data: string; steps: number; warmup: number; jit: boolean }>();

if (!['webgpu', 'wasm'].includes(flags.backend)) throw new Error(`--backend: webgpu | wasm, not ${flags.backend}`);
if (!['lora', 'lora-fa'].includes(flags.variant)) throw new Error(`--variant: lora | lora-fa, not ${flags.variant}`);
if (!['sgd', 'adamw'].includes(flags.optimizer)) throw new Error(`--optimizer: sgd | adamw, not ${flags.optimizer}`);

const log = (s: string) => process.stderr.write(s + '\n');
const notes: string[] = [];

// WebGPU must be on globalThis (and metered) before jax-js requests its device.
const meter = flags.backend === 'webgpu' ? await import('./gpu-meter.ts').then((m) => m.installNodeWebGPU()) : undefined;

const jax = await import('@jax-js/jax');
const { numpy: np, init, defaultDevice, valueAndGrad, jit, tree } = jax;
type Arr = InstanceType<typeof jax.Array>;

const available = await init(flags.backend);
if (!available.includes(flags.backend)) throw new Error(`jax-js: backend ${flags.backend} is not available here (init → ${JSON.stringify(available)})`);
defaultDevice(flags.backend);

let adapterInfo: Record<string, string> | undefined;
if (flags.backend === 'webgpu') {
  try {
    const info = (jax.getWebGPUDevice() as any).adapterInfo ?? {};
    adapterInfo = { vendor: info.vendor, architecture: info.architecture, device: info.device, description: info.description };
  } catch {}
}

// ---- data
const data = readSafetensors(flags.data);
const [n, d] = data.get('x')!.shape;
const r = data.get('layers.0.fc.lora_A')!.shape[1];
let L = 0;
while (data.has(`layers.${L}.fc.weight`)) L++;
const s = W1_HYPER.alpha / r;
const load = (key: string): Arr => {
  const t = data.get(key);
  if (!t) throw new Error(`data file: no ${key}`);
  return np.array(Float32Array.from(t.data)).reshape([...t.shape]);
};
log(`jax-js ${flags.backend} ${flags.variant} ${flags.optimizer}: n=${n} d=${d} r=${r} layers=${L} s=${s}`);

type Train = { A: Arr[]; B: Arr[] };
type Consts = { x: Arr; target: Arr; W: Arr[]; A: Arr[] };
const fa = flags.variant === 'lora-fa';
let params: Train = { A: fa ? [] : [], B: [] };
const consts: Consts = { x: load('x'), target: load('target'), W: [], A: [] };
for (let i = 0; i < L; i++) {
  consts.W.push(load(`layers.${i}.fc.weight`));
  (fa ? consts.A : params.A).push(load(`layers.${i}.fc.lora_A`));
  params.B.push(load(`layers.${i}.fc.lora_B`));
}

// ---- model (every argument is owned: each use consumes one reference)
const C = Math.sqrt(2 / Math.PI);
function geluTanh(x: Arr): Arr {
  // 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
  const inner = x.ref.add(x.ref.mul(x.ref).mul(x.ref).mul(0.044715)).mul(C);
  return x.mul(np.tanh(inner).add(1)).mul(0.5);
}
function lossFn(p: Train, c: Consts): Arr {
  let h = c.x;
  for (let i = 0; i < L; i++) {
    const A = fa ? c.A[i] : p.A[i];
    const y = np.matmul(h.ref, c.W[i]).add(np.matmul(np.matmul(h, A), p.B[i]).mul(s));
    h = i < L - 1 ? geluTanh(y) : y;
  }
  // Two-stage mean (rows, then the row means): jax-js's wasm backend accumulates a full reduction
  // sequentially in f32 (step-1 loss off by ~6e-5 relative over n·d = 393k elements); per-row first
  // brings it to the f64 value. Mathematically the same mean over all n·d elements.
  return np.square(h.sub(c.target)).mean(1).mean();
}
const lossAndGrad = valueAndGrad(lossFn); // gradient w.r.t. argument 0 (the trainable tree) only

// ---- optimizer state
const zerosLike = (t: Train): Train => tree.map((a: Arr) => np.zeros(a.shape), tree.ref(t)) as Train;
let m: Train | undefined;
let v: Train | undefined;
const H = W1_HYPER.adamw;
if (flags.optimizer === 'adamw') {
  m = zerosLike(params);
  v = zerosLike(params);
}

// One step: consumes p, c (refs passed in), opt state; returns [loss, p', m', v'].
function sgdStep(p: Train, c: Consts): [Arr, Train] {
  const [loss, g] = lossAndGrad(tree.ref(p), c) as [Arr, Train];
  const lr = W1_HYPER.sgd.lr;
  const np2 = tree.map((pi: Arr, gi: Arr) => pi.sub(gi.mul(lr)), p, g) as Train;
  return [loss, np2];
}
// bc1 = 1/(1−β1^t), bc2 = 1/(1−β2^t) come in as scalar arrays so one compiled step serves all t.
function adamwStep(p: Train, mm: Train, vv: Train, c: Consts, bc1: Arr, bc2: Arr): [Arr, Train, Train, Train] {
  const [loss, g] = lossAndGrad(tree.ref(p), c) as [Arr, Train];
  const gl = tree.leaves(g) as Arr[];
  const pl = tree.leaves(p) as Arr[];
  const ml = tree.leaves(mm) as Arr[];
  const vl = tree.leaves(vv) as Arr[];
  const P: Arr[] = [], M: Arr[] = [], V: Arr[] = [];
  for (let k = 0; k < pl.length; k++) {
    const gk = gl[k];
    const mk = ml[k].mul(H.beta1).add(gk.ref.mul(1 - H.beta1));
    const vk = vl[k].mul(H.beta2).add(gk.ref.mul(gk).mul(1 - H.beta2));
    const mhat = mk.ref.mul(bc1.ref);
    const vhat = vk.ref.mul(bc2.ref);
    const decayed = pl[k].mul(1 - H.lr * H.weightDecay);
    P.push(decayed.sub(mhat.div(np.sqrt(vhat).add(H.eps)).mul(H.lr)));
    M.push(mk);
    V.push(vk);
  }
  bc1.dispose();
  bc2.dispose();
  const def = tree.structure(p);
  return [loss, tree.unflatten(def, P) as Train, tree.unflatten(def, M) as Train, tree.unflatten(def, V) as Train];
}

const useJit = flags.jit;
const sgd = useJit ? jit(sgdStep) : sgdStep;
const adamw = useJit ? jit(adamwStep) : adamwStep;
notes.push(useJit ? 'whole step (valueAndGrad + optimizer update) in one jax-js jit' : 'eager (no jit)');
notes.push('jax-js arrays are reference-counted: frozen W, x, target (and A for lora-fa) are passed into each step with .ref; params and optimizer state are replaced by the step outputs');

const losses: number[] = [];
const ms: number[] = [];
const t0 = performance.now();
for (let t = 1; t <= flags.steps; t++) {
  const start = performance.now();
  const c = tree.ref(consts) as Consts;
  let loss: Arr;
  if (flags.optimizer === 'sgd') {
    [loss, params] = (sgd as typeof sgdStep)(params, c);
  } else {
    const bc1 = np.array(1 / (1 - H.beta1 ** t));
    const bc2 = np.array(1 / (1 - H.beta2 ** t));
    [loss, params, m, v] = (adamw as typeof adamwStep)(params, m!, v!, c, bc1, bc2);
  }
  const value = (await loss.data())[0];
  const dt = performance.now() - start;
  losses.push(value);
  if (t > flags.warmup) ms.push(dt);
  log(`step ${t}: loss ${value.toPrecision(7)}  ${dt.toFixed(1)} ms${t > flags.warmup ? '' : ' (warm-up)'}`);
  if (!Number.isFinite(value)) throw new Error(`step ${t}: loss ${value}`);
}
const total = performance.now() - t0;

let memory: { kind: string; peak: number | null };
if (meter) {
  memory = { kind: 'gpu-buffer-bytes', peak: meter.meter.peak() };
  notes.push(`GPU bytes: peak bytes of GPUBuffers alive (createBuffer − destroy/GC), whole run incl. data upload; ${meter.meter.buffers()} buffers alive at the end`);
} else {
  memory = { kind: 'wasm', peak: null };
  notes.push('wasm: jax-js exposes no allocator statistics; memory null');
}
if (flags.backend === 'wasm') notes.push('wasm backend runs single-threaded in Node (no SharedArrayBuffer workers)');
if (adapterInfo) notes.push(`adapter: ${[adapterInfo.vendor, adapterInfo.architecture, adapterInfo.device, adapterInfo.description].filter(Boolean).join(' / ')}`);

log(`loss ${losses[0].toPrecision(6)} → ${losses.at(-1)!.toPrecision(6)}; median ${median(ms).toFixed(1)} ms/step; ${(total / 1000).toFixed(1)} s for ${flags.steps} steps`);

const versions: Record<string, string | null> = { '@jax-js/jax': packageVersion('@jax-js/jax'), node: process.version };
if (meter) versions.webgpu = meter.version;

process.stdout.write(
  JSON.stringify({ system: 'jax-js', backend: flags.backend, variant: flags.variant, optimizer: flags.optimizer, steps: flags.steps, losses, ms, memory, versions, notes }) + '\n',
);
process.exit(0);
