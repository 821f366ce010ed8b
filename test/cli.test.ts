// The command line, in process (main) and once through the real bin (tsx loader, exit codes).
import { execFileSync, spawnSync } from 'node:child_process';
import { totalmem } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, test, vi } from 'vitest';
import { main } from '../src/cli/main.ts';
import { formatAdapterReport, readMemoryHeaps, type AdapterReport } from '../src/runtime/device.ts';
import { ROOT } from './helpers.ts';

let out: string[];
let err: string[];
beforeEach(() => {
  out = [];
  err = [];
  vi.spyOn(console, 'log').mockImplementation((...a) => void out.push(a.join(' ')));
  vi.spyOn(console, 'error').mockImplementation((...a) => void err.push(a.join(' ')));
  vi.spyOn(process.stdout, 'write').mockImplementation((s) => (out.push(String(s)), true));
});
afterEach(() => {
  vi.restoreAllMocks();
  process.exitCode = undefined;
});

const run = (...args: string[]) => main(args);

describe('lorafa compile --emit summary', () => {
  test('llama toy in lora-fa: parameters, ops, and exactly what LoRA-FA pruned', async () => {
    expect(await run('compile', 'models/llama.ts', '--rank', '4')).toBe(0);
    const text = out.join('\n');
    expect(text).toMatch(/^mode\s+lora-fa\s+rank=4 alpha=8 scale=2\s+4 adapted linear layers: layers\.0\.self_attn\.q_proj, layers\.0\.self_attn\.v_proj,/m);
    // 4 B matrices of [4, 32] are the only trainable tensors
    expect(text).toMatch(/trainable\s+4\s+512\s+2\.00 KiB/);
    expect(text).toMatch(/gradients 4 \(one per trainable parameter\)/);
    // q and v share their input, one [b·s, d] = [16, 32] f32 per layer: 2 tensors, 2 KiB each
    expect(text).toMatch(/activations backward no longer reads: 2, 4\.00 KiB per step/);
    expect(text).toMatch(/layers\.0\.input_layernorm\.out\s+f32\[16,32\]\s+2\.00 KiB/);
    expect(text).toMatch(/of which dA products \(xᵀ·…\): .*d\.layers\.0\.self_attn\.q_proj\.lora\.xA\.matmul f32\[32,4\]/);
    expect(text.match(/not saved/g)).toHaveLength(4);
  });

  test('full mode has no LoRA section and trains every parameter', async () => {
    expect(await run('compile', 'models/mlp.ts', '--mode', 'full')).toBe(0);
    const text = out.join('\n');
    expect(text).not.toMatch(/LoRA-FA pruned/);
    expect(text).toMatch(/trainable\s+6\s+/);
    expect(text).toMatch(/frozen\s+0\s+0\s+0 B/);
  });

  test('the encoder keeps its classifier head trainable and reports an adapted input it must keep', async () => {
    expect(await run('compile', 'models/encoder.ts', '--targets', 'query,out_proj', '--rank', '2')).toBe(0);
    const text = out.join('\n');
    expect(text).toMatch(/classifier\.out_proj\s+x = .*SAVED: read by backward of "classifier\.out_proj\.xW"/);
    expect(text).toMatch(/layers\.0\.attention\.query\s+x = layers\.0\.ln1\.out f32\[16,16\]\s+not saved/);
  });

  test('--config, --batch and --seq resize the model', async () => {
    expect(await run('compile', 'models/llama.ts', '--batch', '3', '--seq', '4')).toBe(0);
    expect(out.join('\n')).toMatch(/config toy: batch=3 seq=4 /);
    expect(out.join('\n')).toMatch(/layers\.0\.input_layernorm\.out\s+f32\[12,32\]/);
  });
});

describe('lorafa compile --emit ir', () => {
  test('prints the joint graph with gradients of exactly the trainable parameters', async () => {
    expect(await run('compile', 'models/mlp.ts', '--emit', 'ir', '--rank', '2', '--verify')).toBe(0);
    const text = out.join('');
    expect(text.startsWith('graph mlp {\n')).toBe(true);
    const grads = [...text.matchAll(/output (grad\.\S+) =/g)].map((m) => m[1]).sort();
    expect(grads).toEqual(['grad.fc1.lora_B', 'grad.fc2.lora_B', 'grad.fc3.bias', 'grad.fc3.weight']);
    expect(text).toMatch(/-- backward/);
  });

  test('--stage lora shows the adapters before autodiff; --locations adds file:line', async () => {
    expect(await run('compile', 'models/mlp.ts', '--emit', 'ir', '--stage', 'lora', '--locations', '--rank', '2')).toBe(0);
    const text = out.join('');
    expect(text).not.toMatch(/-- backward/);
    expect(text).toMatch(/= matmul %\d+ %\d+  # fc1\.lora\.xA  models\/mlp\.ts:\d+:\d+/);
  });

  test('an unknown stage lists the stages', async () => {
    expect(await run('compile', 'models/mlp.ts', '--emit', 'ir', '--stage', 'nope')).toBe(1);
    expect(err.join('\n')).toMatch(/no stage "nope" in mode lora-fa\n\s+fix: stages: trace, lora, lora-fa, autodiff, simplify, dce/);
  });
});

describe('errors exit 1 with the place and the fix', () => {
  test('unknown target', async () => {
    expect(await run('compile', 'models/mlp.ts', '--targets', 'fc9')).toBe(1);
    expect(err.join('\n')).toMatch(/^lorafa: models\/mlp\.ts: unknown LoRA target "fc9".*\n\s+fix: target one of the linear layers: fc1 \(12→16\), fc2 \(16→16\), fc3 \(16→3\), or all-linear/);
  });

  test('rank larger than a targeted layer', async () => {
    expect(await run('compile', 'models/mlp.ts', '--targets', 'fc3', '--rank', '8')).toBe(1);
    expect(err.join('\n')).toMatch(/LoRA rank 8 exceeds layer "fc3" \(16→3\).*\n\s+fix: use a rank ≤ 3/);
  });

  test('unknown config', async () => {
    expect(await run('compile', 'models/llama.ts', '--config', '70b')).toBe(1);
    expect(err.join('\n')).toMatch(/unknown config "70b"\n\s+fix: choose one of: toy, 7b/);
  });
});

describe('lorafa doctor: memory', () => {
  const hostGiB = `${(totalmem() / 2 ** 30).toFixed(1)} GiB`;

  test('in process: a GPU memory line (a figure in GiB, host RAM for a CPU adapter, or plainly not reported) and host RAM in GiB', async () => {
    const code = await run('doctor');
    const text = out.join('\n');
    expect(text).toMatch(/^ {2}memory:$/m);
    expect(text).toMatch(new RegExp(`^ {4}host RAM:\\s+${hostGiB.replace('.', '\\.')} \\(os\\.totalmem\\)$`, 'm'));
    const gpu = /^ {4}GPU memory:\s+(.*)$/m.exec(text)?.[1];
    if (code === 0) {
      expect(gpu).toMatch(/^(\d+\.\d GiB( device-local)?, as Dawn's memory heaps report it|host RAM \(\d+\.\d GiB\): \S+ is a CPU adapter|not reported: WebGPU has no memory query)/);
      // A CPU adapter (lavapipe here) says its memory is host RAM.
      if (/\bsoftware\b|llvmpipe|lavapipe|swiftshader/i.test(text)) expect(gpu).toContain(`host RAM (${hostGiB})`);
      expect(text).toMatch(/^ {4}largest buffer:\s+\d+\.\d GiB \(maxBufferSize: one buffer, not the total\)$/m);
    } else {
      expect(gpu).toBe('no adapter');
    }
  });

  const adapter = (o: Partial<Extract<AdapterReport, { ok: true }>>): AdapterReport => ({
    ok: true,
    info: { vendor: 'nvidia', architecture: 'hopper', device: '', description: 'NVIDIA H200' },
    features: [],
    limits: { maxBufferSize: 2 ** 32 },
    hostMemory: 128 * 2 ** 30,
    ...o,
  });
  const gpuLine = (r: AdapterReport) => /^ {4}GPU memory:\s+(.*)$/m.exec(formatAdapterReport(r))?.[1];

  test.each([
    ['no heaps: plainly not reported, and why', { memory: { heapsFeature: false, cpuAdapter: false } }, /^not reported: WebGPU has no memory query, and this Dawn binding exposes no memory heaps \(no 'adapter-properties-memory-heaps' feature\)/],
    ['the feature, but no heaps in the binding', { memory: { heapsFeature: true, cpuAdapter: false } }, /^not reported: .*exposes no GPUAdapterInfo\.memoryHeaps although the adapter has 'adapter-properties-memory-heaps'/],
    ['heaps: the device-local total, then each heap', { memory: { heapsFeature: true, cpuAdapter: false, heaps: [{ size: 141 * 2 ** 30, properties: 1 }, { size: 64 * 2 ** 30, properties: 2 | 4 }] } }, /^141\.0 GiB device-local, as Dawn's memory heaps report it \(141\.0 GiB device-local; 64\.0 GiB host-visible, host-coherent\)$/],
    ['a CPU adapter: host RAM', { info: { vendor: 'mesa', architecture: 'software', device: 'llvmpipe', description: 'llvmpipe: Mesa 25' }, memory: { heapsFeature: false, cpuAdapter: true } }, /^host RAM \(128\.0 GiB\): llvmpipe is a CPU adapter, its buffers live in host RAM; WebGPU reports no memory size$/],
    ['no memory field at all (an older probe): not reported, no crash', { memory: undefined, hostMemory: undefined, limits: {} }, /^not reported: WebGPU has no memory query/],
  ] as const)('%s', (_, o, line) => {
    const r = adapter(o as Partial<Extract<AdapterReport, { ok: true }>>);
    expect(gpuLine(r)).toMatch(line);
    const text = formatAdapterReport(r);
    expect(text).toMatch(r.hostMemory ? /^ {4}host RAM:\s+128\.0 GiB \(os\.totalmem\)$/m : /^ {4}host RAM:\s+not reported$/m);
  });

  test('no adapter: still the host RAM, and "no adapter" for the GPU', () => {
    const text = formatAdapterReport({ ok: false, reason: 'no Vulkan driver', fix: 'bash scripts/setup.sh', hostMemory: 8 * 2 ** 30 });
    expect(text).toMatch(/^ {4}GPU memory:\s+no adapter$/m);
    expect(text).toMatch(/^ {4}host RAM:\s+8\.0 GiB \(os\.totalmem\)$/m);
  });

  test('memoryHeaps is read only where a binding has it, never throwing', () => {
    expect(readMemoryHeaps(undefined)).toBeUndefined();
    expect(readMemoryHeaps({ vendor: 'x' })).toBeUndefined();
    expect(readMemoryHeaps({ memoryHeaps: 'no' })).toBeUndefined();
    expect(readMemoryHeaps({ memoryHeaps: [] })).toBeUndefined();
    expect(readMemoryHeaps({ get memoryHeaps(): never { throw new Error('boom'); } })).toBeUndefined();
    expect(readMemoryHeaps({ memoryHeaps: [{ size: 10n * 2n ** 30n, properties: 1 }, { size: 0 }, null, { size: 5 }] })).toEqual([
      { size: 10 * 2 ** 30, properties: 1 },
      { size: 5, properties: 0 },
    ]);
  });
});

describe('the installed bin', () => {
  const bin = join(ROOT, 'bin', 'lorafa.mjs');

  test('compiles a model file directly (no build step) and exits 0', () => {
    const text = execFileSync(process.execPath, [bin, 'compile', 'models/mlp.ts', '--rank', '2'], { cwd: ROOT, encoding: 'utf8' });
    expect(text).toMatch(/^model\s+models\/mlp\.ts \(mlp\), config toy/);
  });

  test('exits 1 on bad input, message on stderr', () => {
    const r = spawnSync(process.execPath, [bin, 'compile', 'models/missing.ts'], { cwd: ROOT, encoding: 'utf8' });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/lorafa: models\/missing\.ts: model file not found/);
  });

  test('doctor reports an adapter with its limits, or why there is none and the fix', () => {
    const r = spawnSync(process.execPath, [bin, 'doctor'], { cwd: ROOT, encoding: 'utf8' });
    if (r.status === 0) {
      expect(r.stdout).toMatch(/^WebGPU adapter: /);
      expect(r.stdout).toMatch(/maxStorageBufferBindingSize\s+[\d,]+/);
      expect(r.stdout).toMatch(/minStorageBufferOffsetAlignment\s+\d+/);
    } else {
      expect(r.status).toBe(1);
      expect(r.stdout).toMatch(/bash scripts\/setup\.sh/);
    }
  });
});
