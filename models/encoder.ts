// A pre-LN transformer encoder with a RoBERTa-style classification head (dense → tanh → out_proj
// on the first token). Sizes cover a toy model, RoBERTa-base and RoBERTa-large.
import { defineModel } from 'lorafa';

export default defineModel({
  name: 'encoder',
  description: 'pre-LN transformer encoder + classification head (RoBERTa sizes)',
  configs: {
    toy: { batch: 2, seq: 8, vocab: 50, d: 16, heads: 2, layers: 2, ffn: 32, classes: 3 },
    'roberta-base': { batch: 32, seq: 128, vocab: 50265, d: 768, heads: 12, layers: 12, ffn: 3072, classes: 2 },
    'roberta-large': { batch: 32, seq: 128, vocab: 50265, d: 1024, heads: 16, layers: 24, ffn: 4096, classes: 2 },
  },
  defaultConfig: 'toy',
  // PEFT's defaults for RoBERTa; the classification head trains fully (modules_to_save).
  defaultTargets: ['query', 'value'],
  modulesToSave: ['classifier'],
  build(b, cfg) {
    const { batch, seq, d, heads } = cfg as typeof cfg & { seq: number };
    const ids = b.input('input_ids', [batch, seq], 'i32');
    const labels = b.input('labels', [batch], 'i32');
    const tokens = b.embedding(ids, 'embeddings.word', cfg.vocab, d);
    const positions = b.param('embeddings.position.weight', [seq, d], { init: { kind: 'normal', std: 0.02 } });
    let h = b.reshape(b.add(tokens, positions), [batch * seq, d]);
    for (let i = 0; i < cfg.layers; i++) {
      h = b.scope(`layers.${i}`, () => {
        const a = b.layerNorm(h, 'ln1');
        const attn = b.scope('attention', () => {
          const q = b.splitHeads(b.linear(a, 'query', d), batch, seq, heads);
          const k = b.splitHeads(b.linear(a, 'key', d), batch, seq, heads);
          const v = b.splitHeads(b.linear(a, 'value', d), batch, seq, heads);
          return b.linear(b.mergeHeads(b.attention(q, k, v, { causal: false })), 'dense', d);
        });
        const r = b.add(h, attn);
        const m = b.layerNorm(r, 'ln2');
        const ff = b.scope('mlp', () => b.linear(b.gelu(b.linear(m, 'intermediate', cfg.ffn)), 'output', d));
        return b.add(r, ff);
      });
    }
    h = b.layerNorm(h, 'ln_f');
    const first = b.reshape(b.sliceAxis(b.reshape(h, [batch, seq, d]), 1, 0, 1), [batch, d]);
    const logits = b.scope('classifier', () => b.linear(b.tanh(b.linear(first, 'dense', d)), 'out_proj', cfg.classes));
    b.output('logits', logits);
    b.loss(b.crossEntropy(logits, labels));
  },
});
