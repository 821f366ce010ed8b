// BERT and RoBERTa sequence classifiers as Hugging Face's BertForSequenceClassification and
// RobertaForSequenceClassification: word + position + token-type embeddings and LayerNorm, post-LN
// encoder blocks with exact (erf) GELU, attention that ignores padding (attention_mask), and the
// head on the first token — BERT's pooler (dense, tanh) then `classifier`; RoBERTa's `classifier`
// (dense, tanh, out_proj). RoBERTa's positions start after its padding index (padding_idx + 1), with
// padding on the right as its tokenizer does. Keys are transformers' (bert.encoder.layer.0.…,
// roberta.…), so a checkpoint folder loads as is; PEFT's defaults target query and value.
import { defineModel } from 'lorafa';

interface BertConfig {
  readonly batch: number;
  readonly seq: number;
  readonly flavor: 'bert' | 'roberta';
  readonly vocab: number;
  readonly d: number;
  readonly heads: number;
  readonly layers: number;
  readonly ffn: number;
  /** max_position_embeddings */
  readonly positions: number;
  /** type_vocab_size */
  readonly types: number;
  readonly eps: number;
  readonly classes: number;
  /** RoBERTa's padding_idx (pad_token_id); its positions start at padding_idx + 1. */
  readonly padId: number;
  readonly [key: string]: number | string | boolean | undefined;
}

export default defineModel<BertConfig>({
  name: 'bert',
  description: 'BERT / RoBERTa encoder with a sequence-classification head (post-LN, erf GELU, padding mask)',
  configs: {
    toy: { batch: 2, seq: 8, flavor: 'bert', vocab: 64, d: 32, heads: 4, layers: 2, ffn: 64, positions: 16, types: 2, eps: 1e-12, classes: 3, padId: 0 },
    'roberta-toy': { batch: 2, seq: 8, flavor: 'roberta', vocab: 64, d: 32, heads: 4, layers: 2, ffn: 64, positions: 18, types: 1, eps: 1e-5, classes: 3, padId: 1 },
    'roberta-base': { batch: 32, seq: 128, flavor: 'roberta', vocab: 50265, d: 768, heads: 12, layers: 12, ffn: 3072, positions: 514, types: 1, eps: 1e-5, classes: 2, padId: 1 },
  },
  defaultConfig: 'toy',
  defaultTargets: ['query', 'value'],
  modulesToSave: ['classifier'],
  stateDictKey: (name, cfg) => (name === 'classifier' || name.startsWith('classifier.') ? name : `${cfg?.flavor ?? 'bert'}.${name}`),
  huggingFace: {
    architectures: ['BertForSequenceClassification', 'RobertaForSequenceClassification'],
    config: (hf, arch) => {
      const num = (k: string, fallback?: number): number => {
        const v = hf[k] ?? fallback;
        if (typeof v !== 'number' || !Number.isFinite(v)) throw new Error(`"${k}" is ${JSON.stringify(hf[k])}, expected a number`);
        return v;
      };
      const act = hf.hidden_act ?? 'gelu';
      if (act !== 'gelu') throw new Error(`hidden_act "${String(act)}" is not the exact GELU ("gelu") this model implements`);
      const roberta = arch === 'RobertaForSequenceClassification';
      const labels = hf.id2label && typeof hf.id2label === 'object' ? Object.keys(hf.id2label).length : undefined;
      const positions = num('max_position_embeddings');
      const padId = num('pad_token_id', roberta ? 1 : 0);
      return {
        flavor: roberta ? ('roberta' as const) : ('bert' as const),
        vocab: num('vocab_size'),
        d: num('hidden_size'),
        heads: num('num_attention_heads'),
        layers: num('num_hidden_layers'),
        ffn: num('intermediate_size'),
        positions,
        types: num('type_vocab_size', 2),
        eps: num('layer_norm_eps', 1e-12),
        classes: num('num_labels', labels ?? 2),
        padId,
        maxSeq: roberta ? positions - padId - 1 : positions,
      };
    },
  },
  build(b, cfg) {
    const { batch, seq, d, heads } = cfg;
    const offset = cfg.flavor === 'roberta' ? cfg.padId + 1 : 0;
    if (offset + seq > cfg.positions) throw new Error(`seq ${seq} needs positions up to ${offset + seq}, the model has ${cfg.positions} (max_position_embeddings)`);
    const ids = b.input('input_ids', [batch, seq], 'i32');
    const mask = b.input('attention_mask', [batch, seq]);
    const labels = b.input('labels', [batch], 'i32');
    let h = b.scope('embeddings', () => {
      const table = (name: string, rows: number) => b.scope(name, () => b.param('weight', [rows, d], { init: { kind: 'normal', std: 0.02 } }));
      const words = b.gather(table('word_embeddings', cfg.vocab), ids); // [b, s, d]
      const positions = b.gather(table('position_embeddings', cfg.positions), b.positionIds(seq, offset)); // [s, d]
      const type0 = b.sliceAxis(table('token_type_embeddings', cfg.types), 0, 0, 1); // [1, d]: every token is type 0
      return b.layerNorm(b.reshape(b.add(b.add(words, positions), type0), [batch * seq, d]), 'LayerNorm', { eps: cfg.eps });
    });
    for (let i = 0; i < cfg.layers; i++) {
      h = b.scope(`encoder.layer.${i}`, () => {
        const attn = b.scope('attention', () => {
          const ctx = b.scope('self', () => {
            const proj = (name: string) => b.splitHeads(b.linear(h, name, d), batch, seq, heads);
            return b.mergeHeads(b.attention(proj('query'), proj('key'), proj('value'), { causal: false, keyMask: mask }));
          });
          return b.scope('output', () => b.layerNorm(b.add(b.linear(ctx, 'dense', d), h), 'LayerNorm', { eps: cfg.eps }));
        });
        const inter = b.scope('intermediate', () => b.geluErf(b.linear(attn, 'dense', cfg.ffn)));
        return b.scope('output', () => b.layerNorm(b.add(b.linear(inter, 'dense', d), attn), 'LayerNorm', { eps: cfg.eps }));
      });
    }
    const first = b.reshape(b.sliceAxis(b.reshape(h, [batch, seq, d]), 1, 0, 1), [batch, d]);
    const logits =
      cfg.flavor === 'roberta'
        ? b.scope('classifier', () => b.linear(b.tanh(b.linear(first, 'dense', d)), 'out_proj', cfg.classes))
        : b.linear(b.scope('pooler', () => b.tanh(b.linear(first, 'dense', d))), 'classifier', cfg.classes);
    b.output('logits', logits);
    b.loss(b.crossEntropy(logits, labels));
  },
});
