// Hugging Face checkpoints in, PEFT adapters out. Tiny checkpoints written by the test
// (config.json, two safetensors shards with model.safetensors.index.json, a tokenizer.json) for
// LLaMA (causal LM, and a classifier with grouped-query attention), GPT-2 (LM head tied to the
// embedding, Conv1D weights; and its classifier) and RoBERTa; each fine-tuned with LoRA-FA from the
// folder alone, the loss falling and the exported adapter re-imported bit for bit. Then: config.json
// in every entry point, strict loading, NaN, broken indexes, an unknown architecture, a tokenizer
// too big for the model, Conv1D orientation with square weights, last-token pooling.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { LorafaError } from '../src/ir/errors.ts';
import { readSafetensors, readSafetensorsWithMetadata, writeSafetensors, type TensorToWrite } from '../src/io/safetensors.ts';
import { importPeftAdapter } from '../src/io/peft.ts';
import { loadStateDict } from '../src/io/weights.ts';
import { loadModel, trace } from '../src/model/load.ts';
import { runReference } from '../src/runtime/reference.ts';
import { initParams } from '../src/runtime/init.ts';
import { finetune, type FinetuneOptions } from '../src/train/finetune.ts';
import { keyForLayout, layoutGraph } from '../src/train/program.ts';
import { GPT2_CONFIG, LLAMA_CONFIG, reviews, ROBERTA_CONFIG, writeCheckpoint, WORDS, type CheckpointSpec } from './hf-fixtures.ts';
import { ROOT } from './helpers.ts';

const tmp = mkdtempSync(join(tmpdir(), 'lorafa-hf-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
const bits = (a: ArrayLike<number>) => new Uint32Array(Float32Array.from(a).buffer);

const cls = join(tmp, 'reviews.jsonl');
const lm = join(tmp, 'lm.jsonl');
beforeAll(() => {
  writeFileSync(cls, reviews(160).map((r) => JSON.stringify(r)).join('\n') + '\n');
  writeFileSync(lm, reviews(160, 9).map((r) => JSON.stringify({ text: r.text })).join('\n') + '\n');
});

const quiet = { progress: 'none', log: () => {}, compare: false } as const;

interface Case {
  readonly name: string;
  readonly spec: CheckpointSpec;
  readonly data: () => string;
  readonly taskType: string;
  readonly targets: string[];
  readonly modulesToSave: string[] | null;
  readonly fanInFanOut: boolean;
}

const CASES: Case[] = [
  { name: 'LlamaForCausalLM', spec: { model: 'llama', config: LLAMA_CONFIG('LlamaForCausalLM'), tokenizer: 'llama' }, data: () => lm, taskType: 'CAUSAL_LM', targets: ['q_proj', 'v_proj'], modulesToSave: null, fanInFanOut: false },
  { name: 'LlamaForSequenceClassification (GQA)', spec: { model: 'llama', config: LLAMA_CONFIG('LlamaForSequenceClassification'), tokenizer: 'llama' }, data: () => cls, taskType: 'SEQ_CLS', targets: ['q_proj', 'v_proj'], modulesToSave: ['score'], fanInFanOut: false },
  { name: 'GPT2LMHeadModel (tied head)', spec: { model: 'gpt2', config: GPT2_CONFIG('GPT2LMHeadModel'), tokenizer: 'gpt2' }, data: () => lm, taskType: 'CAUSAL_LM', targets: ['c_attn'], modulesToSave: null, fanInFanOut: true },
  { name: 'GPT2ForSequenceClassification', spec: { model: 'gpt2', config: GPT2_CONFIG('GPT2ForSequenceClassification'), tokenizer: 'gpt2' }, data: () => cls, taskType: 'SEQ_CLS', targets: ['c_attn'], modulesToSave: ['score'], fanInFanOut: true },
  { name: 'RobertaForSequenceClassification', spec: { model: 'bert', config: ROBERTA_CONFIG(), tokenizer: 'roberta' }, data: () => cls, taskType: 'SEQ_CLS', targets: ['query', 'value'], modulesToSave: ['classifier'], fanInFanOut: false },
];

describe.each(CASES)('$name: lorafa finetune DIR --data …', (c) => {
  const dir = join(tmp, c.name.replace(/\W+/g, '-'));
  const out = `${dir}-out`;
  let r: Awaited<ReturnType<typeof finetune>>;
  beforeAll(async () => {
    await writeCheckpoint(dir, c.spec);
    r = await finetune({ model: dir, data: c.data(), evalSplit: 0.2, steps: 40, lr: 1e-2, seq: 16, out, ...quiet });
  });

  test('config.json picked the shipped model and its sizes; the shards loaded', () => {
    const cfg = c.spec.config as Record<string, number>;
    expect(r.program.spec.modelFile).toBe(join(ROOT, 'models', `${c.spec.model}.ts`));
    expect(r.program.spec.config).toBe(join(dir, 'config.json'));
    expect(r.program.spec.sizes.vocab).toBe(cfg.vocab_size);
    expect(r.program.spec.sizes.layers).toBe(cfg.num_hidden_layers ?? cfg.n_layer);
    expect(r.program.spec.sizes.seq).toBe(16);
  });

  test('the loss falls', () => {
    const mean = (xs: { loss: number }[]) => xs.reduce((a, l) => a + l.loss, 0) / xs.length;
    expect(mean(r.losses.slice(-8)), r.losses.map((l) => l.loss.toFixed(3)).join(' ')).toBeLessThan(0.97 * mean(r.losses.slice(0, 8)));
    expect(r.after!.loss).toBeLessThan(r.before!.loss);
  });

  test('the adapter: PEFT keys and config, and it re-imports bit for bit', () => {
    const config = JSON.parse(readFileSync(join(out, 'adapter', 'adapter_config.json'), 'utf8'));
    expect(config).toMatchObject({ peft_type: 'LORA', base_model_name_or_path: dir, task_type: c.taskType, target_modules: c.targets, r: 8, lora_alpha: 16, modules_to_save: c.modulesToSave, fan_in_fan_out: c.fanInFanOut });
    const keys = [...readSafetensors(join(out, 'adapter', 'adapter_model.safetensors')).keys()];
    const prefix = c.spec.model === 'llama' ? 'model.layers' : c.spec.model === 'gpt2' ? 'transformer.h' : 'roberta.encoder.layer';
    expect(keys.some((k) => k.startsWith(`base_model.model.${prefix}.0.`) && k.endsWith('.lora_A.weight'))).toBe(true);
    expect(keys.some((k) => k.endsWith('.lora_B.weight'))).toBe(true);
    const graph = layoutGraph(r.program.weights);
    const back = importPeftAdapter(join(out, 'adapter'), graph, { keyFor: keyForLayout(r.program.weights) });
    expect(back.values.size).toBeGreaterThan(0);
    for (const [name, v] of back.values) expect(bits(v), name).toEqual(bits(r.forwardValues.get(name)!));
  });
});

describe('--targets all-linear', () => {
  test('adapts every linear but the output layer; the adapter names them for PEFT and re-imports', async () => {
    const dir = join(tmp, 'all-linear');
    await writeCheckpoint(dir, { model: 'llama', config: LLAMA_CONFIG('LlamaForSequenceClassification'), tokenizer: 'llama' });
    const out = join(tmp, 'all-linear-out');
    const r = await finetune({ model: dir, data: cls, steps: 3, seq: 16, targets: ['all-linear'], out, ...quiet });
    expect(r.program.weights.adapters.map((a) => a.module.split('.').pop())).toEqual(Array(2).fill(['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']).flat());
    const config = JSON.parse(readFileSync(join(out, 'adapter', 'adapter_config.json'), 'utf8'));
    expect(config.target_modules).toEqual(['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']);
    expect(config.modules_to_save).toEqual(['score']);
    const back = importPeftAdapter(join(out, 'adapter'), layoutGraph(r.program.weights), { keyFor: keyForLayout(r.program.weights) });
    expect(back.values.size).toBe(2 * 7 * 2 + 1);
  });
});

describe('config.json in every entry point', () => {
  const dir = join(tmp, 'llama-cls-entry');
  const bin = join(ROOT, 'bin', 'lorafa.mjs');
  const run = (args: string[]) => spawnSync(process.execPath, [bin, ...args], { cwd: tmp, encoding: 'utf8', timeout: 300_000 });
  beforeAll(() => writeCheckpoint(dir, { model: 'llama', config: LLAMA_CONFIG('LlamaForSequenceClassification'), tokenizer: 'llama' }));

  test('plan and compile take the folder, or a model file with --config config.json', () => {
    const a = run(['plan', dir, '--seq', '16']);
    expect(a.status, a.stderr).toBe(0);
    expect(a.stdout).toMatch(/config \S*config\.json: batch=8 seq=16 vocab=21 d=32 heads=4 kvHeads=2 layers=2 ffn=48/);
    const b = run(['plan', join(ROOT, 'models', 'llama.ts'), '--config', join(dir, 'config.json'), '--seq', '16', '--json']);
    expect(b.status, b.stderr).toBe(0);
    expect(JSON.parse(a.stdout.length ? run(['plan', dir, '--seq', '16', '--json']).stdout : '{}').peak).toBe(JSON.parse(b.stdout).peak);
    const c = run(['compile', dir, '--seq', '16', '-o', join(tmp, 'trainer-from-folder')]);
    expect(c.status, c.stderr).toBe(0);
    // The trainer trains on the folder's weights and tokenizer.
    const t = run(['train', join(tmp, 'trainer-from-folder'), '--base', dir, '--data', cls, '--steps', '3', '--progress', 'none']);
    expect(t.status, t.stderr).toBe(0);
    expect(t.stdout).toMatch(/base: 21 tensors from \S+ \(2 shards listed by model\.safetensors\.index\.json\)/);
  });

  test('finetune MODEL.ts --base DIR: the sizes from the folder\'s config.json', async () => {
    const r = await finetune({ model: join(ROOT, 'models', 'llama.ts'), base: dir, data: cls, steps: 2, seq: 16, ...quiet });
    expect(r.program.spec.config).toBe(join(dir, 'config.json'));
    expect(r.program.spec.sizes.kvHeads).toBe(2);
  });
});

describe('bad checkpoints: the file, the tensor, the fix; nothing written is touched', () => {
  const out = join(tmp, 'bad-out');
  let good: Map<string, Buffer>;
  const snapshot = () => {
    const m = new Map<string, Buffer>();
    const walk = (d: string) => {
      for (const e of readdirSync(d, { withFileTypes: true })) {
        const p = join(d, e.name);
        if (e.isDirectory()) walk(p);
        else m.set(relative(out, p), readFileSync(p));
      }
    };
    walk(out);
    return m;
  };
  beforeAll(async () => {
    const dir = join(tmp, 'good');
    await writeCheckpoint(dir, { model: 'llama', config: LLAMA_CONFIG('LlamaForSequenceClassification'), tokenizer: 'llama' });
    await finetune({ model: dir, data: cls, steps: 2, seq: 16, out, ...quiet });
    good = snapshot();
  });

  async function fails(dir: string, o: Partial<FinetuneOptions> = {}): Promise<LorafaError> {
    let err: unknown;
    try {
      await finetune({ model: dir, data: cls, steps: 2, seq: 16, out, ...quiet, ...o });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(LorafaError);
    const now = snapshot();
    expect([...now.keys()].sort()).toEqual([...good.keys()].sort());
    for (const [k, v] of good) expect(now.get(k)!.equals(v), `${k} unchanged`).toBe(true);
    return err as LorafaError;
  }

  /** A checkpoint, then `edit` on its shards (key → tensor). */
  async function broken(name: string, edit: (shard: Map<string, TensorToWrite>, file: string) => void, spec?: CheckpointSpec): Promise<string> {
    const dir = join(tmp, name);
    await writeCheckpoint(dir, spec ?? { model: 'llama', config: LLAMA_CONFIG('LlamaForSequenceClassification'), tokenizer: 'llama' });
    for (const f of readdirSync(dir).filter((x) => x.endsWith('.safetensors'))) {
      const { tensors, metadata } = readSafetensorsWithMetadata(join(dir, f));
      const shard = new Map<string, TensorToWrite>([...tensors].map(([k, t]) => [k, { dtype: 'F32', shape: t.shape, data: Float32Array.from(t.data) }]));
      edit(shard, f);
      writeSafetensors(join(dir, f), shard, metadata);
    }
    return dir;
  }

  test('a missing frozen weight is an error (not a random init); --init-missing allows it; a new head is initialised and said so', async () => {
    const dir = await broken('missing', (shard, f) => {
      shard.delete('model.layers.1.mlp.up_proj.weight');
      shard.delete('score.weight');
      const index = JSON.parse(readFileSync(join(tmp, 'missing', 'model.safetensors.index.json'), 'utf8'));
      delete index.weight_map['model.layers.1.mlp.up_proj.weight'];
      delete index.weight_map['score.weight'];
      writeFileSync(join(tmp, 'missing', 'model.safetensors.index.json'), JSON.stringify(index));
      void f;
    });
    const e = await fails(dir);
    expect(e.problem).toBe('the checkpoint lacks 1 weight of model "llama" (models/llama.ts): model.layers.1.mlp.up_proj.weight [48,32]; it would start from a random init');
    expect(e.fix).toMatch(/pass --init-missing to initialise what it lacks .* \(a new head, score, is initialised without it\)/);
    const lines: string[] = [];
    await finetune({ model: dir, data: cls, steps: 1, seq: 16, initMissing: true, ...quiet, log: (l) => lines.push(l) });
    expect(lines.join('\n')).toMatch(/new \(initialised here\): model\.layers\.1\.mlp\.up_proj\.weight, score\.weight/);
  });

  test('NaN or Infinity in a tensor names it, the first bad element and the count', async () => {
    const dir = await broken('nan', (shard) => {
      const t = shard.get('model.layers.0.self_attn.o_proj.weight');
      if (!t) return;
      const data = Float32Array.from(t.data);
      data[37] = NaN;
      data[40] = Infinity;
      shard.set('model.layers.0.self_attn.o_proj.weight', { ...t, data });
    });
    const e = await fails(dir);
    expect(e.where).toMatch(/model-0000\d-of-00002\.safetensors$/);
    expect(e.problem).toBe('tensor "model.layers.0.self_attn.o_proj.weight" holds NaN at index 37 ([1, 5] of [32, 32]): 2 non-finite values in all');
  });

  test('a broken index: not JSON, a missing shard, a tensor the shard does not hold', async () => {
    const dir = join(tmp, 'index');
    await writeCheckpoint(dir, { model: 'llama', config: LLAMA_CONFIG('LlamaForSequenceClassification'), tokenizer: 'llama' });
    const index = join(dir, 'model.safetensors.index.json');
    const text = readFileSync(index, 'utf8');
    writeFileSync(index, text.slice(0, 40));
    expect((await fails(dir)).problem).toMatch(/^not valid JSON: /);
    const doc = JSON.parse(text);
    writeFileSync(index, JSON.stringify({ ...doc, weight_map: { ...doc.weight_map, 'score.weight': 'model-00003-of-00002.safetensors' } }));
    const e = await fails(dir);
    expect(e.where).toBe(index);
    expect(e.problem).toBe(`lists 1 tensor (score.weight, …) in model-00003-of-00002.safetensors, which is missing from ${dir}`);
    writeFileSync(index, JSON.stringify({ ...doc, weight_map: { ...doc.weight_map, 'score.weight': doc.weight_map['model.norm.weight'] === doc.weight_map['score.weight'] ? 'model-00001-of-00002.safetensors' : doc.weight_map['model.norm.weight'] } }));
    const e2 = await fails(dir);
    expect(e2.problem).toBe('has no tensor "score.weight", which model.safetensors.index.json says it holds');
  });

  test('an architecture lorafa does not implement names it and lists the supported ones', async () => {
    const dir = join(tmp, 'mistral');
    await writeCheckpoint(dir, { model: 'llama', config: LLAMA_CONFIG('LlamaForCausalLM'), tokenizer: 'llama' });
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...LLAMA_CONFIG('LlamaForCausalLM'), architectures: ['MistralForCausalLM'] }));
    const e = await fails(dir);
    expect(e.problem).toBe('architecture MistralForCausalLM is not one lorafa implements');
    expect(e.fix).toMatch(/^lorafa reads LlamaForCausalLM, LlamaForSequenceClassification, GPT2LMHeadModel, GPT2ForSequenceClassification, BertForSequenceClassification, RobertaForSequenceClassification; /);
  });

  test('a tokenizer whose vocabulary does not fit the model names both sizes', async () => {
    const dir = join(tmp, 'small-vocab');
    await writeCheckpoint(dir, { model: 'llama', config: LLAMA_CONFIG('LlamaForSequenceClassification', { vocab_size: 12 }), tokenizer: 'llama' });
    const e = await fails(dir);
    expect(e.problem).toBe(`the tokenizer has ${4 + WORDS.length} symbols, the model's embedding has 12 rows (config vocab)`);
  });
});

describe('weight layout comes from the model, never from a shape', () => {
  test('square weights: GPT-2 Conv1D c_proj loads as stored ([in, out]); LLaMA o_proj (nn.Linear) transposed', async () => {
    for (const [model, spec, key, name] of [
      ['gpt2', { model: 'gpt2', config: GPT2_CONFIG('GPT2LMHeadModel'), tokenizer: 'gpt2' }, 'transformer.h.0.attn.c_proj.weight', 'h.0.attn.c_proj.weight'],
      ['llama', { model: 'llama', config: LLAMA_CONFIG('LlamaForCausalLM'), tokenizer: 'llama' }, 'model.layers.0.self_attn.o_proj.weight', 'layers.0.self_attn.o_proj.weight'],
    ] as const) {
      const dir = join(tmp, `square-${model}`);
      await writeCheckpoint(dir, spec as CheckpointSpec, ).then(() => {});
      const m = await loadModel(join(ROOT, 'models', `${model}.ts`));
      const g = trace(m, join(dir, 'config.json'));
      const values = loadStateDict(dir, g, { keyFor: (n) => m.def.stateDictKey!(n), strict: false });
      const file = [...readdirSync(dir)].filter((f) => f.endsWith('.safetensors')).map((f) => readSafetensors(join(dir, f))).find((t) => t.has(key))!.get(key)!;
      const [rows, cols] = file.shape;
      expect(rows).toBe(cols); // square: a shape-based guess could not tell
      const w = values.get(name)!;
      let asStored = true;
      let transposed = true;
      for (let i = 0; i < rows; i++) {
        for (let j = 0; j < cols; j++) {
          if (w[i * cols + j] !== Math.fround(file.data[i * cols + j])) asStored = false;
          if (w[i * cols + j] !== Math.fround(file.data[j * cols + i])) transposed = false;
        }
      }
      expect({ model, asStored, transposed }).toEqual({ model, asStored: model === 'gpt2', transposed: model === 'llama' });
    }
  });
});

describe('sequence classifiers pool the last real token, as transformers does', () => {
  test('right or left padding: the pooled state is the hidden state at the last real token (float64)', async () => {
    const m = await loadModel(join(ROOT, 'models', 'gpt2.ts'));
    const g = trace(m, 'toy-cls');
    const params = initParams(g, { seed: 3 });
    const ids = Float64Array.from({ length: 16 }, (_, i) => 1 + (i * 7) % 60);
    const run = (mask: number[]) => runReference(g, { feeds: { input_ids: ids, attention_mask: Float64Array.from(mask), labels: Float64Array.from([0, 1]) }, params });
    // Row 0 has 5 real tokens; row 1 all 8.
    const right = run([1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1]);
    const pool = g.nodes.find((n) => n.out.name === 'last_token.out')!;
    const states = g.nodes.find((n) => n.out.name === 'reshape' && n.inputs[0].name.startsWith('ln_f'))!;
    const h = right.values.get(states.out.id)!.data;
    const pooled = right.values.get(pool.out.id)!.data;
    const d = 32;
    expect([...pooled.subarray(0, d)]).toEqual([...h.subarray(4 * d, 5 * d)]);
    expect([...pooled.subarray(d, 2 * d)]).toEqual([...h.subarray((8 + 7) * d, (8 + 8) * d)]);
    // Padding never changes a real token's state: row 1's logits are the same whatever row 0 holds.
    const other = run([1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1]);
    expect([...other.outputs.logits.data.subarray(3, 6)]).toEqual([...right.outputs.logits.data.subarray(3, 6)]);
    // Left padding: row 0's real tokens are its last 3; the pooled state is position 7's.
    const left = run([0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]);
    const hl = left.values.get(states.out.id)!.data;
    expect([...left.values.get(pool.out.id)!.data.subarray(0, d)]).toEqual([...hl.subarray(7 * d, 8 * d)]);
  });
});
