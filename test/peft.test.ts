// Weights in and out in the formats PyTorch, Hugging Face and PEFT users have: torch state dicts
// (safetensors, [out, in] linear weights), merged models, and PEFT LoRA adapter directories.
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadModel, trace, type LoadedModel } from '../src/model/load.ts';
import { LorafaError } from '../src/ir/errors.ts';
import type { Tensor } from '../src/ir/shape.ts';
import { numel, type Graph } from '../src/ir/types.ts';
import { exportPeftAdapter, importPeftAdapter, PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE } from '../src/io/peft.ts';
import { encodeSafetensors, readSafetensorsWithMetadata } from '../src/io/safetensors.ts';
import { loadStateDict, mergedStateDict, saveMerged, saveStateDict, stateDict, type KeyFor, type StateTensor } from '../src/io/weights.ts';
import { compileTraining } from '../src/passes/compile.ts';
import type { LoraOptions } from '../src/passes/lora.ts';
import { streamFor } from '../src/runtime/init.ts';
import { runReference } from '../src/runtime/reference.ts';
import { feedsFor, intBoundsFor, ROOT, thrown } from './helpers.ts';

// ---------------------------------------------------------------------------------------------
// setup

const models = new Map<string, LoadedModel>();
async function model(name: 'mlp' | 'llama'): Promise<LoadedModel> {
  if (!models.has(name)) models.set(name, await loadModel(resolve(ROOT, 'models', `${name}.ts`)));
  return models.get(name)!;
}

async function traced(name: 'mlp' | 'llama', overrides?: Record<string, number>): Promise<Graph> {
  return trace(await model(name), 'toy', overrides);
}

const MLP_LORA: LoraOptions = { rank: 2, alpha: 4, targets: ['fc1', 'fc2'], modulesToSave: ['fc3'] };
const LLAMA_LORA: LoraOptions = { rank: 2, alpha: 4, targets: ['q_proj', 'v_proj'] };
/** Hugging Face LlamaForCausalLM: everything under `model.` except the head. */
const llamaKeys: KeyFor = (n) => (n === 'lm_head' || n === 'score' ? n : `model.${n}`);

async function adapted(name: 'mlp' | 'llama', lora: LoraOptions = name === 'mlp' ? MLP_LORA : LLAMA_LORA, overrides?: Record<string, number>): Promise<Graph> {
  return compileTraining(await traced(name, overrides), { mode: 'lora-fa', lora }).forward;
}

/**
 * Seeded float32 values for every parameter of `g` (lora_B too: its zero init would hide bugs),
 * except buffers (rotary tables, causal mask), which are computed, not trained.
 */
function fill(g: Graph, seed: number, scale = 0.5): Map<string, Float32Array> {
  const out = new Map<string, Float32Array>();
  for (const p of g.params) {
    if (p.role === 'buffer') continue;
    const u = streamFor(seed, p.value.name);
    out.set(p.value.name, Float32Array.from({ length: numel(p.value.type.shape) }, () => scale * (2 * u() - 1)));
  }
  return out;
}

const dirs: string[] = [];
function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), 'lorafa-peft-'));
  dirs.push(d);
  return d;
}
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

/** Every file under `dir` with its size, mtime and sha256: equal snapshots mean nothing was touched. */
function snapshot(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (d: string, rel: string) => {
    for (const f of readdirSync(d).sort()) {
      const p = join(d, f);
      const st = statSync(p);
      if (st.isDirectory()) walk(p, `${rel}${f}/`);
      else out[rel + f] = `${st.size} ${st.mtimeMs} ${createHash('sha256').update(readFileSync(p)).digest('hex')}`;
    }
  };
  walk(dir, '');
  return out;
}

function bytes(a: Float32Array): Buffer {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength);
}

/** Element (i, j) of a row-major [rows, cols] matrix. */
const at = (data: ArrayLike<number>, cols: number, i: number, j: number) => data[i * cols + j];


/** A safetensors file with any float dtype (encodeSafetensors writes F32/F64/I32 only). */
function encodeRaw(tensors: { key: string; dtype: 'F16' | 'BF16' | 'F32' | 'F64'; shape: number[]; values: ArrayLike<number> }[], metadata?: Record<string, string>): Buffer {
  const width = { F16: 2, BF16: 2, F32: 4, F64: 8 };
  const header: Record<string, unknown> = metadata ? { __metadata__: metadata } : {};
  const chunks: Buffer[] = [];
  let offset = 0;
  for (const t of tensors) {
    const b = Buffer.alloc(t.values.length * width[t.dtype]);
    for (let i = 0; i < t.values.length; i++) {
      const v = t.values[i];
      if (t.dtype === 'F16') b.writeUInt16LE(f16Bits(v), 2 * i);
      else if (t.dtype === 'BF16') b.writeUInt16LE(new Uint32Array(new Float32Array([v]).buffer)[0] >>> 16, 2 * i);
      else if (t.dtype === 'F32') b.writeFloatLE(v, 4 * i);
      else b.writeDoubleLE(v, 8 * i);
    }
    header[t.key] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + b.length] };
    offset += b.length;
    chunks.push(b);
  }
  const json = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([len, json, ...chunks]);
}

/** IEEE half bits of a value that is exactly representable as a normal half (or zero). */
function f16Bits(x: number): number {
  if (x === 0) return 0;
  const s = x < 0 ? 0x8000 : 0;
  const a = Math.abs(x);
  const e = Math.floor(Math.log2(a));
  const m = (a / 2 ** e - 1) * 1024;
  if (!Number.isInteger(m) || e < -14 || e > 15) throw new Error(`${x} is not an exact normal half`);
  return s | ((e + 15) << 10) | m;
}

/** Rounds to bfloat16 by truncation, so the stored bits are exactly these values. */
const toBf16 = (v: number) => new Float32Array(new Uint32Array([new Uint32Array(new Float32Array([v]).buffer)[0] & 0xffff0000]).buffer)[0];

const MLP_KEYS = ['fc1.weight', 'fc1.bias', 'fc2.weight', 'fc2.bias', 'fc3.weight', 'fc3.bias'];

function llamaStateKeys(): string[] {
  const keys = ['model.embed_tokens.weight'];
  for (let i = 0; i < 2; i++) {
    const l = `model.layers.${i}`;
    keys.push(`${l}.input_layernorm.weight`, `${l}.post_attention_layernorm.weight`);
    for (const p of ['q_proj', 'k_proj', 'v_proj', 'o_proj']) keys.push(`${l}.self_attn.${p}.weight`);
    for (const p of ['gate_proj', 'up_proj', 'down_proj']) keys.push(`${l}.mlp.${p}.weight`);
  }
  keys.push('model.norm.weight', 'lm_head.weight');
  return keys;
}

// ---------------------------------------------------------------------------------------------
describe('torch state dicts', () => {
  it('are in torch layout: every linear weight [out, in] (the transpose of W), other parameters as they are', async () => {
    const g = await traced('mlp');
    const values = fill(g, 1);
    const sd = stateDict(g, values);
    expect([...sd.keys()].sort()).toEqual([...MLP_KEYS].sort());
    expect(sd.get('fc1.weight')!.shape).toEqual([16, 12]);
    expect(sd.get('fc2.weight')!.shape).toEqual([16, 16]);
    expect(sd.get('fc3.weight')!.shape).toEqual([3, 16]);
    expect(sd.get('fc3.bias')!.shape).toEqual([3]);
    for (const [name, inF, outF] of [['fc1', 12, 16], ['fc2', 16, 16], ['fc3', 16, 3]] as const) {
      const W = values.get(`${name}.weight`)!;
      const T = sd.get(`${name}.weight`)!.data;
      for (let i = 0; i < inF; i++) for (let o = 0; o < outF; o++) expect(at(T, inF, o, i)).toBe(at(W, outF, i, o));
      expect(bytes(sd.get(`${name}.bias`)!.data).equals(bytes(values.get(`${name}.bias`)!))).toBe(true);
    }
  });

  it("name llama's parameters as Hugging Face's LlamaForCausalLM does (keyFor), without buffers", async () => {
    const g = await traced('llama');
    const sd = stateDict(g, fill(g, 2), { keyFor: llamaKeys });
    expect([...sd.keys()].sort()).toEqual(llamaStateKeys().sort());
    expect(sd.get('model.embed_tokens.weight')!.shape).toEqual([64, 32]);
    expect(sd.get('lm_head.weight')!.shape).toEqual([64, 32]);
    expect(sd.get('model.layers.1.mlp.gate_proj.weight')!.shape).toEqual([48, 32]);
    expect(sd.get('model.layers.1.mlp.down_proj.weight')!.shape).toEqual([32, 48]);
    expect(sd.get('model.norm.weight')!.shape).toEqual([32]);
  });

  it.each(['mlp', 'llama'] as const)('%s: save → load is bit for bit, through both transposes; the file is F32 with format "pt"', async (name) => {
    const g = await traced(name);
    const keyFor = name === 'llama' ? llamaKeys : undefined;
    const values = fill(g, 3);
    const file = join(tmp(), 'model.safetensors');
    saveStateDict(file, g, values, { keyFor, metadata: { note: 'x', format: 'overridden?' } });
    const raw = readSafetensorsWithMetadata(file);
    expect(raw.metadata).toEqual({ note: 'x', format: 'pt' });
    expect([...raw.tensors.values()].every((t) => t.dtype === 'F32')).toBe(true);
    const loaded = loadStateDict(file, g, { keyFor });
    const own = g.params.filter((p) => p.role === 'weight' || p.role === 'bias').map((p) => p.value.name);
    expect([...loaded.keys()].sort()).toEqual(own.sort());
    for (const n of own) expect(bytes(loaded.get(n)!).equals(bytes(values.get(n)!)), n).toBe(true);
  });

  it('load F16, BF16 and F64 tensors, widened to float32 exactly', async () => {
    const g = await traced('mlp');
    const sd = stateDict(g, fill(g, 4));
    const dtypes = { 'fc1.weight': 'F16', 'fc1.bias': 'BF16', 'fc2.weight': 'BF16', 'fc2.bias': 'F64', 'fc3.weight': 'F16', 'fc3.bias': 'F32' } as const;
    const expected = new Map<string, Float32Array>();
    const tensors = [...sd].map(([key, t]) => {
      const dtype = dtypes[key as keyof typeof dtypes];
      const values =
        dtype === 'F16' ? Float64Array.from(t.data, (v) => Math.round(v * 256) / 256 || 1 / 256)
        : dtype === 'BF16' ? Float64Array.from(t.data, toBf16)
        : dtype === 'F64' ? Float64Array.from(t.data, (v) => v + 1e-12)
        : Float64Array.from(t.data);
      expected.set(key, Float32Array.from(values));
      return { key, dtype, shape: [...t.shape], values };
    });
    const file = join(tmp(), 'mixed.safetensors');
    writeFileSync(file, encodeRaw(tensors, { format: 'pt' }));
    expect([...readSafetensorsWithMetadata(file).tensors.values()].map((t) => t.dtype).sort()).toEqual(['BF16', 'BF16', 'F16', 'F16', 'F32', 'F64']);
    const loaded = loadStateDict(file, g);
    for (const [key, want] of expected) {
      const got = loaded.get(key)!;
      const torch = key.endsWith('weight') ? sd.get(key)!.shape : [want.length];
      const back = key.endsWith('weight') ? Float32Array.from({ length: want.length }, (_, k) => at(want, torch[1], k % torch[0], Math.floor(k / torch[0]))) : want;
      expect(bytes(got).equals(bytes(back)), key).toBe(true);
    }
  });

  it('refuse an integer tensor as a weight', async () => {
    const g = await traced('mlp');
    const sd = stateDict(g, fill(g, 5));
    const file = join(tmp(), 'int.safetensors');
    const tensors = new Map([...sd].map(([k, t]) => [k, { dtype: (k === 'fc2.bias' ? 'I32' : 'F32') as 'I32' | 'F32', shape: t.shape, data: t.data }]));
    writeFileSync(file, encodeSafetensors(tensors));
    const e = thrown(() => loadStateDict(file, g));
    expect(e.message).toContain(file);
    expect(e.message).toContain('"fc2.bias" has dtype I32');
  });
});

// ---------------------------------------------------------------------------------------------
describe('merged weights', () => {
  it.each([false, true])('W′ = W + s·A·B (rslora %s), checked against float64 to within float32 rounding; no adapter keys', async (rslora) => {
    const g = await adapted('mlp', { ...MLP_LORA, rslora });
    const values = fill(g, 6);
    const merged = mergedStateDict(g, values);
    expect([...merged.keys()].sort()).toEqual([...MLP_KEYS].sort());
    const s = rslora ? 4 / Math.sqrt(2) : 4 / 2;
    for (const [name, inF, outF] of [['fc1', 12, 16], ['fc2', 16, 16]] as const) {
      const W = values.get(`${name}.weight`)!;
      const A = values.get(`${name}.lora_A`)!;
      const B = values.get(`${name}.lora_B`)!;
      const M = merged.get(`${name}.weight`)!;
      expect(M.shape).toEqual([outF, inF]);
      let changed = 0;
      for (let i = 0; i < inF; i++) {
        for (let o = 0; o < outF; o++) {
          const want = at(W, outF, i, o) + s * (at(A, 2, i, 0) * at(B, outF, 0, o) + at(A, 2, i, 1) * at(B, outF, 1, o));
          const got = at(M.data, inF, o, i);
          expect(Math.abs(got - want), `${name}[${i},${o}]`).toBeLessThanOrEqual(2 ** -23 * Math.abs(want) + 1e-30);
          if (Math.abs(got - at(W, outF, i, o)) > 1e-3) changed++;
        }
      }
      expect(changed).toBeGreaterThan((inF * outF) / 2);
    }
    // modules_to_save and biases: the trained values, untouched.
    for (const k of ['fc1.bias', 'fc2.bias', 'fc3.bias']) expect(bytes(merged.get(k)!.data).equals(bytes(values.get(k)!))).toBe(true);
    expect(merged.get('fc3.weight')!.data).toEqual(stateDict(g, values).get('fc3.weight')!.data);
  });

  it.each(['mlp', 'llama'] as const)('%s: the merged base model computes what the adapted model does (reference interpreter)', async (name) => {
    const base = await traced(name);
    const lora = await adapted(name);
    const keyFor = name === 'llama' ? llamaKeys : undefined;
    const values = fill(lora, 7, 0.3);
    const file = join(tmp(), 'merged.safetensors');
    saveMerged(file, lora, values, { keyFor });
    const mergedValues = loadStateDict(file, base, { keyFor });
    const asTensors = (g: Graph, v: ReadonlyMap<string, ArrayLike<number>>) =>
      new Map<string, Tensor>(g.params.filter((p) => v.has(p.value.name)).map((p) => [p.value.name, { shape: p.value.type.shape, data: Float64Array.from(v.get(p.value.name)!) }]));
    const cfg = (await model(name)).def.configs.toy;
    const feeds = feedsFor(base, 11, intBoundsFor(cfg));
    const want = runReference(lora, { feeds, params: asTensors(lora, values) }).outputs.logits.data;
    // Buffers (rope tables, causal mask) are in neither map: the interpreter computes them from their init.
    const got = runReference(base, { feeds, params: asTensors(base, mergedValues) }).outputs.logits.data;
    const unmerged = runReference(base, { feeds, params: asTensors(base, values) }).outputs.logits.data;
    const scale = Math.max(...Array.from(want, Math.abs));
    let worst = 0;
    let adapterEffect = 0;
    for (let i = 0; i < want.length; i++) {
      worst = Math.max(worst, Math.abs(got[i] - want[i]) / scale);
      adapterEffect = Math.max(adapterEffect, Math.abs(unmerged[i] - want[i]) / scale);
    }
    expect(worst).toBeLessThan(1e-5);
    // Not vacuous: without the adapters the logits are far off.
    expect(adapterEffect).toBeGreaterThan(1e-2);
  });

  it('needs a graph with adapters', async () => {
    const g = await traced('mlp');
    expect(thrown(() => mergedStateDict(g, fill(g, 1))).message).toMatch(/no LoRA adapters to merge/);
  });
});

// ---------------------------------------------------------------------------------------------
describe('PEFT adapters', () => {
  it("write PEFT's keys and layouts: lora_A.weight [r, in] = Aᵀ, lora_B.weight [out, r] = Bᵀ, modules_to_save under the module's key", async () => {
    const g = await adapted('mlp');
    const values = fill(g, 8);
    const dir = join(tmp(), 'adapter');
    exportPeftAdapter(dir, g, values, { targets: ['fc1', 'fc2'], modulesToSave: ['fc3'], extraMetadata: { 'lorafa.mode': 'lora-fa' } });
    expect(readdirSync(dir).sort()).toEqual([PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE]);
    const { tensors, metadata } = readSafetensorsWithMetadata(join(dir, PEFT_WEIGHTS_FILE));
    expect(metadata.format).toBe('pt');
    expect(metadata['lorafa.mode']).toBe('lora-fa');
    const shapes = Object.fromEntries([...tensors].map(([k, t]) => [k, t.shape]));
    expect(shapes).toEqual({
      'base_model.model.fc1.lora_A.weight': [2, 12],
      'base_model.model.fc1.lora_B.weight': [16, 2],
      'base_model.model.fc2.lora_A.weight': [2, 16],
      'base_model.model.fc2.lora_B.weight': [16, 2],
      'base_model.model.fc3.weight': [3, 16],
      'base_model.model.fc3.bias': [3],
    });
    expect([...tensors.values()].every((t) => t.dtype === 'F32')).toBe(true);
    for (const [name, inF, outF] of [['fc1', 12, 16], ['fc2', 16, 16]] as const) {
      const A = values.get(`${name}.lora_A`)!;
      const B = values.get(`${name}.lora_B`)!;
      const fa = tensors.get(`base_model.model.${name}.lora_A.weight`)!.data;
      const fb = tensors.get(`base_model.model.${name}.lora_B.weight`)!.data;
      for (let i = 0; i < inF; i++) for (let k = 0; k < 2; k++) expect(at(fa, inF, k, i)).toBe(at(A, 2, i, k));
      for (let k = 0; k < 2; k++) for (let o = 0; o < outF; o++) expect(at(fb, 2, o, k)).toBe(at(B, outF, k, o));
    }
    const W3 = values.get('fc3.weight')!;
    const f3 = tensors.get('base_model.model.fc3.weight')!.data;
    for (let i = 0; i < 16; i++) for (let o = 0; o < 3; o++) expect(at(f3, 16, o, i)).toBe(at(W3, 3, i, o));
  });

  it('write adapter_config.json as LoraConfig.save_pretrained does: sorted keys, indent 2, PEFT field types, no unknown fields', async () => {
    const g = await adapted('mlp');
    const dir = join(tmp(), 'adapter');
    exportPeftAdapter(dir, g, fill(g, 9), { targets: ['fc1', 'fc2'], modulesToSave: ['fc3'], taskType: 'SEQ_CLS', baseModel: 'toy/mlp' });
    const text = readFileSync(join(dir, PEFT_CONFIG_FILE), 'utf8');
    const c = JSON.parse(text);
    expect(c).toEqual({
      base_model_name_or_path: 'toy/mlp',
      bias: 'none',
      fan_in_fan_out: false,
      inference_mode: true,
      init_lora_weights: true,
      lora_alpha: 4,
      lora_dropout: 0,
      modules_to_save: ['fc3'],
      peft_type: 'LORA',
      r: 2,
      revision: null,
      target_modules: ['fc1', 'fc2'],
      task_type: 'SEQ_CLS',
      use_rslora: false,
    });
    expect(Object.keys(c)).toEqual(Object.keys(c).sort());
    expect(text).toBe(JSON.stringify(c, null, 2));
    expect(typeof c.r).toBe('number');
    expect(typeof c.lora_alpha).toBe('number');
    // Every field is one LoraConfig accepts (PEFT before its forward-compat shim raises on others).
    const loraConfigFields = new Set(['base_model_name_or_path', 'bias', 'fan_in_fan_out', 'inference_mode', 'init_lora_weights', 'lora_alpha', 'lora_dropout', 'modules_to_save', 'peft_type', 'r', 'revision', 'target_modules', 'task_type', 'use_rslora', 'layers_to_transform', 'layers_pattern', 'rank_pattern', 'alpha_pattern', 'auto_mapping', 'use_dora']);
    for (const k of Object.keys(c)) expect(loraConfigFields.has(k), k).toBe(true);
  });

  it('write llama adapters under Hugging Face names (keyFor): base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight', async () => {
    const g = await adapted('llama');
    const dir = join(tmp(), 'adapter');
    exportPeftAdapter(dir, g, fill(g, 10), { targets: ['q_proj', 'v_proj'], keyFor: llamaKeys, taskType: 'CAUSAL_LM' });
    const { tensors } = readSafetensorsWithMetadata(join(dir, PEFT_WEIGHTS_FILE));
    const want: Record<string, number[]> = {};
    for (let i = 0; i < 2; i++) {
      for (const p of ['q_proj', 'v_proj']) {
        want[`base_model.model.model.layers.${i}.self_attn.${p}.lora_A.weight`] = [2, 32];
        want[`base_model.model.model.layers.${i}.self_attn.${p}.lora_B.weight`] = [32, 2];
      }
    }
    expect(Object.fromEntries([...tensors].map(([k, t]) => [k, t.shape]))).toEqual(want);
    const c = JSON.parse(readFileSync(join(dir, PEFT_CONFIG_FILE), 'utf8'));
    expect(c).toMatchObject({ r: 2, lora_alpha: 4, target_modules: ['q_proj', 'v_proj'], modules_to_save: null, task_type: 'CAUSAL_LM', base_model_name_or_path: null });
  });

  it.each(['mlp', 'llama'] as const)('%s: export → import is bit for bit', async (name) => {
    const g = await adapted(name);
    const values = fill(g, 12);
    const dir = join(tmp(), 'adapter');
    const targets = name === 'mlp' ? ['fc1', 'fc2'] : ['q_proj', 'v_proj'];
    const keyFor = name === 'llama' ? llamaKeys : undefined;
    exportPeftAdapter(dir, g, values, { targets, modulesToSave: name === 'mlp' ? ['fc3'] : undefined, keyFor });
    const imported = importPeftAdapter(dir, g, { keyFor });
    const want = [...g.adapters.flatMap((a) => [a.A, a.B]), ...(name === 'mlp' ? ['fc3.weight', 'fc3.bias'] : [])];
    expect([...imported.values.keys()].sort()).toEqual(want.sort());
    for (const n of want) expect(bytes(imported.values.get(n)!).equals(bytes(values.get(n)!)), n).toBe(true);
    expect(imported.config.r).toBe(2);
  });

  it('import an adapter as PEFT saves it: its full config, bf16 tensors, no lorafa metadata', async () => {
    const g = await adapted('mlp');
    const values = fill(g, 13);
    const dir = join(tmp(), 'from-peft');
    mkdirSync(dir);
    copyFileSync(resolve(ROOT, 'test/fixtures/peft/mlp-lora-config.json'), join(dir, PEFT_CONFIG_FILE));
    // The tensors PEFT would hold for these values, in bf16 as a bf16 model saves them.
    const sd = stateDict(g, values);
    const T = (v: Float32Array, rows: number, cols: number) => Float64Array.from({ length: v.length }, (_, k) => toBf16(at(v, cols, k % rows, Math.floor(k / rows))));
    const tensors = [
      ...(['fc1', 'fc2'] as const).flatMap((m) => {
        const inF = m === 'fc1' ? 12 : 16;
        return [
          { key: `base_model.model.${m}.lora_A.weight`, dtype: 'BF16' as const, shape: [2, inF], values: T(values.get(`${m}.lora_A`)!, inF, 2) },
          { key: `base_model.model.${m}.lora_B.weight`, dtype: 'BF16' as const, shape: [16, 2], values: T(values.get(`${m}.lora_B`)!, 2, 16) },
        ];
      }),
      { key: 'base_model.model.fc3.weight', dtype: 'BF16' as const, shape: [3, 16], values: Float64Array.from(sd.get('fc3.weight')!.data, toBf16) },
      { key: 'base_model.model.fc3.bias', dtype: 'BF16' as const, shape: [3], values: Float64Array.from(sd.get('fc3.bias')!.data, toBf16) },
    ];
    writeFileSync(join(dir, PEFT_WEIGHTS_FILE), encodeRaw(tensors, { format: 'pt' }));
    const imported = importPeftAdapter(dir, g);
    expect(imported.config.task_type).toBe('SEQ_CLS');
    for (const n of ['fc1.lora_A', 'fc1.lora_B', 'fc2.lora_A', 'fc2.lora_B', 'fc3.weight', 'fc3.bias']) {
      expect(Array.from(imported.values.get(n)!), n).toEqual(Array.from(values.get(n)!, toBf16));
    }
  });
});

// ---------------------------------------------------------------------------------------------
describe('bad input', () => {
  async function mlpFile(edit: (t: Map<string, StateTensor>) => void): Promise<{ g: Graph; file: string }> {
    const g = await traced('mlp');
    const sd = stateDict(g, fill(g, 20));
    edit(sd);
    const file = join(tmp(), 'edited.safetensors');
    writeFileSync(file, encodeSafetensors(new Map([...sd].map(([k, t]) => [k, { dtype: 'F32' as const, shape: t.shape, data: t.data }])), { format: 'pt' }));
    return { g, file };
  }

  it('a wrong-shape tensor: names the file, the key, both shapes and the parameter; says when it is transposed', async () => {
    const { g, file } = await mlpFile((sd) => sd.set('fc1.weight', { shape: [12, 16], data: sd.get('fc1.weight')!.data }));
    const e = thrown(() => loadStateDict(file, g));
    expect(e.message).toContain(file);
    expect(e.message).toContain('"fc1.weight" has shape [12,16] in the file');
    expect(e.message).toContain('expects [16,12] in torch layout');
    expect(e.message).toContain('transposed');
    const other = await mlpFile((sd) => sd.set('fc2.weight', { shape: [16, 15], data: sd.get('fc2.weight')!.data.slice(0, 240) }));
    const e2 = thrown(() => loadStateDict(other.file, other.g));
    expect(e2.message).toContain('"fc2.weight" has shape [16,15] in the file');
    expect(e2.message).toContain('expects [16,16]');
    expect(e2.message).not.toContain('transposed');
  });

  it("another model's state dict: says the file does not hold this model's weights and what it holds", async () => {
    const { file } = await mlpFile(() => {});
    const llama = await traced('llama');
    const e = thrown(() => loadStateDict(file, llama, { keyFor: llamaKeys }));
    expect(e.message).toContain(file);
    expect(e.message).toMatch(/does not hold this model's weights/);
    expect(e.message).toContain('fc1.bias');
    expect(e.message).toContain('model.embed_tokens.weight');
  });

  it('a missing key fails strict loading (listing it) and is skipped with strict: false; so is an unexpected key', async () => {
    const { g, file } = await mlpFile((sd) => sd.delete('fc2.bias'));
    const e = thrown(() => loadStateDict(file, g));
    expect(e.message).toContain(file);
    expect(e.message).toMatch(/missing 1 key\(s\).*fc2\.bias/);
    const loose = loadStateDict(file, g, { strict: false });
    expect([...loose.keys()].sort()).toEqual(MLP_KEYS.filter((k) => k !== 'fc2.bias').sort());
    const only = loadStateDict(file, g, { only: (n) => n.startsWith('fc1.') });
    expect([...only.keys()].sort()).toEqual(['fc1.bias', 'fc1.weight']);

    const extra = await mlpFile((sd) => sd.set('classifier.weight', { shape: [2], data: new Float32Array(2) }));
    expect(thrown(() => loadStateDict(extra.file, extra.g)).message).toMatch(/unexpected 1 key\(s\).*classifier\.weight/);
    expect(loadStateDict(extra.file, extra.g, { strict: false }).size).toBe(6);
  });

  async function goodAdapter(lora: LoraOptions = MLP_LORA, overrides?: Record<string, number>): Promise<{ g: Graph; dir: string; values: Map<string, Float32Array> }> {
    const g = await adapted('mlp', lora, overrides);
    const values = fill(g, 21);
    const dir = join(tmp(), 'adapter');
    exportPeftAdapter(dir, g, values, { targets: lora.targets as string[], modulesToSave: lora.modulesToSave });
    return { g, dir, values };
  }

  it('a corrupt (truncated) adapter file or config: names the file', async () => {
    const { g, dir } = await goodAdapter();
    const weights = join(dir, PEFT_WEIGHTS_FILE);
    truncateSync(weights, Math.floor(statSync(weights).size / 2));
    const e = thrown(() => importPeftAdapter(dir, g));
    expect(e.message).toContain(weights);
    expect(e.message).toMatch(/not a valid safetensors file/);

    const other = await goodAdapter();
    writeFileSync(join(other.dir, PEFT_CONFIG_FILE), '{"r": 2,');
    expect(thrown(() => importPeftAdapter(other.dir, g)).message).toMatch(new RegExp(`${PEFT_CONFIG_FILE}: not valid JSON`));
  });

  it('missing files, another peft_type, unsupported LoRA variants', async () => {
    const { g, dir } = await goodAdapter();
    const snap = snapshot(dir);
    rmSync(join(dir, PEFT_CONFIG_FILE));
    expect(thrown(() => importPeftAdapter(dir, g)).message).toContain(`${join(dir, PEFT_CONFIG_FILE)}: missing`);
    const b = await goodAdapter();
    rmSync(join(b.dir, PEFT_WEIGHTS_FILE));
    expect(thrown(() => importPeftAdapter(b.dir, g)).message).toContain(`${join(b.dir, PEFT_WEIGHTS_FILE)}: missing`);
    const c = await goodAdapter();
    const cfg = JSON.parse(readFileSync(join(c.dir, PEFT_CONFIG_FILE), 'utf8'));
    writeFileSync(join(c.dir, PEFT_CONFIG_FILE), JSON.stringify({ ...cfg, peft_type: 'IA3' }));
    expect(thrown(() => importPeftAdapter(c.dir, g)).message).toMatch(/peft_type is "IA3", not "LORA"/);
    writeFileSync(join(c.dir, PEFT_CONFIG_FILE), JSON.stringify({ ...cfg, use_dora: true }));
    expect(thrown(() => importPeftAdapter(c.dir, g)).message).toMatch(/use_dora/);
    expect(snap).not.toEqual({});
  });

  it('an adapter of another rank or alpha: names both values and the compile flags that match', async () => {
    const { dir } = await goodAdapter({ ...MLP_LORA, rank: 4, alpha: 8 });
    const g = await adapted('mlp');
    const e = thrown(() => importPeftAdapter(dir, g));
    expect(e.message).toContain('r 4 in the file, 2 in the graph');
    expect(e.message).toContain('lora_alpha 8 in the file, 4 in the graph');
    expect(e.message).toContain('--rank 4 --alpha 8');
    const rs = await adapted('mlp', { ...MLP_LORA, rslora: true });
    const plain = await goodAdapter();
    expect(thrown(() => importPeftAdapter(plain.dir, rs)).message).toContain('use_rslora false in the file, true in the graph');
  });

  it('other target modules, or other layer sizes: lists the modules; names the key and both shapes', async () => {
    const { dir } = await goodAdapter({ ...MLP_LORA, targets: ['fc1'] });
    const g = await adapted('mlp');
    const e = thrown(() => importPeftAdapter(dir, g));
    expect(e.message).toMatch(/the graph adapts fc2, which the file does not/);
    const wide = await goodAdapter(MLP_LORA, { hidden: 8 });
    const e2 = thrown(() => importPeftAdapter(wide.dir, g));
    expect(e2.message).toContain(join(wide.dir, PEFT_WEIGHTS_FILE));
    expect(e2.message).toContain('"base_model.model.fc1.lora_B.weight" has shape [8,2] in the file');
    expect(e2.message).toContain('expects [16,2]');
    // An adapter without the head the graph trains would leave that head untrained.
    const noHead = await goodAdapter({ ...MLP_LORA, modulesToSave: undefined });
    expect(thrown(() => importPeftAdapter(noHead.dir, g)).message).toMatch(/modules_to_save parameters missing.*fc3\.weight/);
  });

  it('a config and weights from two different exports are refused', async () => {
    const a = await goodAdapter();
    const b = await goodAdapter({ ...MLP_LORA, modulesToSave: ['fc3'], targets: ['fc1', 'fc2'], alpha: 8 });
    copyFileSync(join(b.dir, PEFT_CONFIG_FILE), join(a.dir, PEFT_CONFIG_FILE));
    expect(thrown(() => importPeftAdapter(a.dir, a.g)).message).toMatch(/come from different exports/);
  });

  it('export refuses targets that do not select exactly the adapted layers, and a trained head left out', async () => {
    const g = await adapted('mlp');
    const values = fill(g, 22);
    const dir = join(tmp(), 'never');
    expect(thrown(() => exportPeftAdapter(dir, g, values, { targets: ['fc1'], modulesToSave: ['fc3'] })).message).toMatch(/miss the adapted fc2/);
    expect(thrown(() => exportPeftAdapter(dir, g, values, { targets: ['fc1', 'fc2', 'fc3'], modulesToSave: ['fc3'] })).message).toMatch(/select fc3, which has no adapter/);
    expect(thrown(() => exportPeftAdapter(dir, g, values, { targets: ['fc1', 'fc2'] })).message).toMatch(/fc3\.weight, fc3\.bias are trained in full.*not saved/);
    expect(existsSync(dir)).toBe(false);
  });

  it('nothing already written is damaged: a failing export or save leaves the old files byte-identical, no temp files', async () => {
    const { g, dir, values } = await goodAdapter();
    const before = snapshot(dir);
    const noB = new Map(values);
    noB.delete('fc2.lora_B');
    expect(thrown(() => exportPeftAdapter(dir, g, noB, { targets: ['fc1', 'fc2'], modulesToSave: ['fc3'] })).message).toMatch(/no value for adapter "fc2\.lora_B"/);
    expect(snapshot(dir)).toEqual(before);
    const short = new Map(values).set('fc1.lora_A', new Float32Array(3));
    expect(thrown(() => exportPeftAdapter(dir, g, short, { targets: ['fc1', 'fc2'], modulesToSave: ['fc3'] })).message).toMatch(/"fc1\.lora_A" has 3 elements/);
    expect(snapshot(dir)).toEqual(before);
    // A target file that cannot be replaced: refused before anything is renamed, temp directory removed.
    const blocked = join(tmp(), 'blocked');
    exportPeftAdapter(blocked, g, values, { targets: ['fc1', 'fc2'], modulesToSave: ['fc3'] });
    rmSync(join(blocked, PEFT_CONFIG_FILE));
    mkdirSync(join(blocked, PEFT_CONFIG_FILE));
    const blockedBefore = snapshot(blocked);
    expect(thrown(() => exportPeftAdapter(blocked, g, fill(g, 23), { targets: ['fc1', 'fc2'], modulesToSave: ['fc3'] })).message).toMatch(/not a regular file/);
    expect(snapshot(blocked)).toEqual(blockedBefore);
    expect(readdirSync(blocked).sort()).toEqual([PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE]);
    // A successful re-export replaces both files.
    const again = fill(g, 24);
    exportPeftAdapter(dir, g, again, { targets: ['fc1', 'fc2'], modulesToSave: ['fc3'] });
    expect(readdirSync(dir).sort()).toEqual([PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE]);
    expect(bytes(importPeftAdapter(dir, g).values.get('fc2.lora_B')!).equals(bytes(again.get('fc2.lora_B')!))).toBe(true);

    // State dicts: a failing save leaves the old file.
    const base = await traced('mlp');
    const sdDir = tmp();
    const file = join(sdDir, 'model.safetensors');
    const v = fill(base, 25);
    saveStateDict(file, base, v);
    const sdBefore = snapshot(sdDir);
    const partial = new Map(v);
    partial.delete('fc3.bias');
    expect(thrown(() => saveStateDict(file, base, partial)).message).toMatch(/no value for parameter "fc3\.bias"/);
    expect(thrown(() => saveMerged(file, g, partial)).message).toMatch(/no value/);
    expect(snapshot(sdDir)).toEqual(sdBefore);
    // A save under a file (not a folder) is refused, naming the file in the way; nothing is written.
    expect(thrown(() => saveStateDict(join(file, 'sub', 'model.safetensors'), base, v)).message).toMatch(/cannot create the folder: \S*model\.safetensors is a file, not a folder/);
    expect(snapshot(sdDir)).toEqual(sdBefore);
  });

  it('a failed load or import writes nothing', async () => {
    const root = tmp();
    const g4 = await adapted('mlp', { ...MLP_LORA, rank: 4, alpha: 8 });
    const g2 = await adapted('mlp');
    const dir = join(root, 'adapter');
    exportPeftAdapter(dir, g4, fill(g4, 26), { targets: ['fc1', 'fc2'], modulesToSave: ['fc3'] });
    const base = await traced('mlp');
    const sd = stateDict(base, fill(base, 27));
    sd.delete('fc1.bias');
    const file = join(root, 'model.safetensors');
    writeFileSync(file, encodeSafetensors(new Map([...sd].map(([k, t]) => [k, { dtype: 'F32' as const, shape: t.shape, data: t.data }]))));
    const before = snapshot(root);
    thrown(() => importPeftAdapter(dir, g2));
    thrown(() => loadStateDict(file, base));
    thrown(() => loadStateDict(file, g2, { keyFor: (n) => `model.${n}` }));
    expect(snapshot(root)).toEqual(before);
    truncateSync(join(dir, PEFT_WEIGHTS_FILE), 100);
    const truncated = snapshot(root);
    thrown(() => importPeftAdapter(dir, g4));
    expect(snapshot(root)).toEqual(truncated);
    expect(Object.keys(truncated)).toEqual(Object.keys(before));
  });
});
