// Tiny Hugging Face checkpoints written by the tests: config.json, the weights of a lorafa model
// file's seeded init as a torch state dict split into two safetensors shards with
// model.safetensors.index.json, and a tokenizer.json (+ tokenizer_config.json) over a small word
// vocabulary. What a user's save_pretrained folder holds, small enough to train in seconds.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeSafetensors, type TensorToWrite } from '../src/io/safetensors.ts';
import { stateDict } from '../src/io/weights.ts';
import { loadModel, trace } from '../src/model/load.ts';
import { initParams } from '../src/runtime/init.ts';
import { resolveConfig } from '../src/model/define.ts';
import { ROOT } from './helpers.ts';

/** The words of the tests' texts; ids: specials first, then these. */
export const WORDS = ['the', 'cat', 'dog', 'sat', 'ran', 'on', 'mat', 'log', 'good', 'bad', 'very', 'not', 'a', 'film', 'day', 'fun', 'dull'];

function special(id: number, content: string) {
  return { id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true };
}

export type TokenizerStyle = 'llama' | 'gpt2' | 'bert' | 'roberta';

/**
 * A word-level tokenizer (Whitespace pre-tokenizer, WordLevel model: every word one id) with the style's special tokens: LLaMA `<s>` before the text; GPT-2 none (`<|endoftext|>`
 * is EOS and pad); BERT `[CLS] … [SEP]`; RoBERTa `<s> … </s>` (pad 1).
 */
export function tokenizerFiles(style: TokenizerStyle): { json: unknown; config: Record<string, unknown>; specials: string[]; vocabSize: number } {
  const specials =
    style === 'llama' ? ['<unk>', '<s>', '</s>', '<pad>'] : style === 'gpt2' ? ['<|endoftext|>'] : style === 'bert' ? ['[PAD]', '[UNK]', '[CLS]', '[SEP]'] : ['<s>', '<pad>', '</s>', '<unk>'];
  const vocab = Object.fromEntries([...specials, ...WORDS].map((t, i) => [t, i]));
  const sp = (t: string) => ({ SpecialToken: { id: t, type_id: 0 } });
  const seqA = { Sequence: { id: 'A', type_id: 0 } };
  const template = (single: unknown[], toks: string[]) => ({
    type: 'TemplateProcessing',
    single,
    pair: single,
    special_tokens: Object.fromEntries(toks.map((t) => [t, { id: t, ids: [vocab[t]], tokens: [t] }])),
  });
  const post =
    style === 'llama' ? template([sp('<s>'), seqA], ['<s>']) : style === 'bert' ? template([sp('[CLS]'), seqA, sp('[SEP]')], ['[CLS]', '[SEP]']) : style === 'roberta' ? template([sp('<s>'), seqA, sp('</s>')], ['<s>', '</s>']) : null;
  const unk = style === 'gpt2' ? null : style === 'bert' ? '[UNK]' : '<unk>';
  const json = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: specials.map((t) => special(vocab[t], t)),
    normalizer: null,
    pre_tokenizer: { type: 'Whitespace' },
    post_processor: post,
    decoder: null,
    model: { type: 'WordLevel', vocab, unk_token: unk ?? '<|endoftext|>' },
  };
  const config: Record<string, unknown> =
    style === 'llama'
      ? { bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>', pad_token: '<pad>', padding_side: 'right' }
      : style === 'gpt2'
        ? { eos_token: '<|endoftext|>', bos_token: '<|endoftext|>', pad_token: '<|endoftext|>' }
        : style === 'bert'
          ? { cls_token: '[CLS]', sep_token: '[SEP]', pad_token: '[PAD]', unk_token: '[UNK]' }
          : { bos_token: '<s>', eos_token: '</s>', pad_token: '<pad>', unk_token: '<unk>' };
  return { json, config, specials, vocabSize: specials.length + WORDS.length };
}

export interface CheckpointSpec {
  /** The shipped model file (models/<name>.ts). */
  readonly model: 'llama' | 'gpt2' | 'bert';
  readonly config: Record<string, unknown>;
  readonly tokenizer: TokenizerStyle;
  readonly seed?: number;
  /** Shards to split the weights into (1: a single model.safetensors). */
  readonly shards?: number;
}

/** Writes a checkpoint folder; returns the torch state dict written (keys → shapes). */
export async function writeCheckpoint(dir: string, spec: CheckpointSpec): Promise<Map<string, readonly number[]>> {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'config.json'), JSON.stringify(spec.config, null, 2));
  const tok = tokenizerFiles(spec.tokenizer);
  writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(tok.json));
  writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify(tok.config));
  const m = await loadModel(join(ROOT, 'models', `${spec.model}.ts`));
  const configFile = join(dir, 'config.json');
  const cfg = resolveConfig(m.def, { config: configFile });
  const graph = trace(m, configFile);
  const values = initParams(graph, { seed: spec.seed ?? 7 });
  const sd = stateDict(graph, values, { keyFor: m.def.stateDictKey ? (n) => m.def.stateDictKey!(n, cfg) : undefined });
  const keys = [...sd.keys()].sort();
  const shards = spec.shards ?? 2;
  const per = Math.ceil(keys.length / shards);
  const weightMap: Record<string, string> = {};
  for (let s = 0; s < shards; s++) {
    const name = shards === 1 ? 'model.safetensors' : `model-${String(s + 1).padStart(5, '0')}-of-${String(shards).padStart(5, '0')}.safetensors`;
    const part = new Map<string, TensorToWrite>(keys.slice(s * per, (s + 1) * per).map((k) => [k, { dtype: 'F32', shape: sd.get(k)!.shape, data: sd.get(k)!.data }]));
    writeSafetensors(join(dir, name), part, { format: 'pt' });
    for (const k of part.keys()) weightMap[k] = name;
  }
  if (shards > 1) writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: 0 }, weight_map: weightMap }, null, 2));
  return new Map([...sd].map(([k, t]) => [k, t.shape]));
}

/** Texts of the tests: `positive` ones mention good/fun, the others bad/dull. */
export function reviews(n: number, seed = 1): { text: string; label: string }[] {
  let s = seed;
  const u = () => ((s = (s * 1103515245 + 12345) % 2147483648), s / 2147483648);
  const pick = (xs: string[]) => xs[Math.floor(u() * xs.length)];
  return Array.from({ length: n }, () => {
    const pos = u() < 0.5;
    const words = [pick(['the', 'a']), pick(['cat', 'dog', 'film', 'day']), pick(['sat', 'ran', 'on']), 'very', pos ? pick(['good', 'fun']) : pick(['bad', 'dull']), pick(['the', 'a']), pick(['mat', 'log'])];
    return { text: words.join(' '), label: pos ? 'pos' : 'neg' };
  });
}

export const LLAMA_CONFIG = (arch: 'LlamaForCausalLM' | 'LlamaForSequenceClassification', extra: Record<string, unknown> = {}) => ({
  architectures: [arch],
  model_type: 'llama',
  vocab_size: 4 + WORDS.length,
  hidden_size: 32,
  intermediate_size: 48,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  num_hidden_layers: 2,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
  max_position_embeddings: 64,
  tie_word_embeddings: false,
  pad_token_id: 3,
  ...(arch === 'LlamaForSequenceClassification' ? { num_labels: 2, id2label: { 0: 'neg', 1: 'pos' } } : {}),
  ...extra,
});

export const GPT2_CONFIG = (arch: 'GPT2LMHeadModel' | 'GPT2ForSequenceClassification', extra: Record<string, unknown> = {}) => ({
  architectures: [arch],
  model_type: 'gpt2',
  vocab_size: 1 + WORDS.length,
  n_embd: 32,
  n_head: 4,
  n_layer: 2,
  n_positions: 32,
  layer_norm_epsilon: 1e-5,
  activation_function: 'gelu_new',
  pad_token_id: 0,
  ...(arch === 'GPT2ForSequenceClassification' ? { num_labels: 2 } : {}),
  ...extra,
});

export const ROBERTA_CONFIG = (extra: Record<string, unknown> = {}) => ({
  architectures: ['RobertaForSequenceClassification'],
  model_type: 'roberta',
  vocab_size: 4 + WORDS.length,
  hidden_size: 32,
  num_attention_heads: 4,
  num_hidden_layers: 2,
  intermediate_size: 64,
  hidden_act: 'gelu',
  max_position_embeddings: 40,
  type_vocab_size: 1,
  layer_norm_eps: 1e-5,
  pad_token_id: 1,
  num_labels: 2,
  ...extra,
});
