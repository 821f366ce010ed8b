// A T5-style encoder-decoder (the original T5 v1.0 shapes): RMS layer norm without bias
// (T5LayerNorm), bias-free linears, ReLU feed-forward, a causal decoder with cross-attention over
// the encoder's output, and the embedding table shared by both stacks and the LM head (logits =
// d^-½·h·Eᵀ). Names follow Hugging Face's T5ForConditionalGeneration, so PEFT's T5 defaults
// (target_modules q, v) adapt the same layers: self-attention q/v in both stacks and the
// decoder's cross-attention q/v.
//
// Simplifications, none of which changes what a training step keeps in memory by more than a
// few small tensors: no relative position bias (T5 adds one shared [heads, s, s] bias per stack to
// the scores); attention scores are scaled by 1/√d_kv (T5 folds that into its init instead); no
// dropout. `seq` is the encoder length, `targetSeq` the decoder length.
import { defineModel } from 'lorafa';

export default defineModel({
  name: 't5',
  description: 'T5-style encoder-decoder (shared embedding, RMS norm, ReLU FFN, cross-attention)',
  configs: {
    toy: { batch: 2, seq: 6, targetSeq: 4, vocab: 40, d: 16, heads: 2, layers: 2, ffn: 24 },
    't5-base': { batch: 32, seq: 128, targetSeq: 16, vocab: 32128, d: 768, heads: 12, layers: 12, ffn: 3072 },
  },
  defaultConfig: 'toy',
  // PEFT's default target_modules for T5.
  defaultTargets: ['q', 'v'],
  build(b, cfg) {
    const { batch, d, heads, vocab } = cfg;
    const seq = cfg.seq as number;
    const tseq = cfg.targetSeq as number;
    const ids = b.input('input_ids', [batch, seq], 'i32');
    const decIds = b.input('decoder_input_ids', [batch, tseq], 'i32');
    const labels = b.input('labels', [batch * tseq], 'i32');
    const shared = b.param('shared.weight', [vocab, d], { init: { kind: 'normal', std: 1 } });
    const embed = (x: typeof ids) => b.scope('shared', () => b.emit('gather', [shared, x], {}, 'lookup'));

    // Multi-head attention; q reads xq (length sq), k and v read xkv (length skv).
    const attend = (xq: typeof ids, xkv: typeof ids, sq: number, skv: number, causal: boolean) => {
      const q = b.splitHeads(b.linear(xq, 'q', d, { bias: false }), batch, sq, heads);
      const k = b.splitHeads(b.linear(xkv, 'k', d, { bias: false }), batch, skv, heads);
      const v = b.splitHeads(b.linear(xkv, 'v', d, { bias: false }), batch, skv, heads);
      return b.linear(b.mergeHeads(b.attention(q, k, v, { causal })), 'o', d, { bias: false });
    };
    const feedForward = (x: typeof ids) =>
      b.scope('DenseReluDense', () => b.linear(b.relu(b.linear(x, 'wi', cfg.ffn as number, { bias: false })), 'wo', d, { bias: false }));

    // Encoder: pre-norm self-attention and feed-forward blocks, then a final norm.
    let h = b.reshape(embed(ids), [batch * seq, d]);
    for (let i = 0; i < cfg.layers; i++) {
      h = b.scope(`encoder.block.${i}`, () => {
        const a = b.scope('layer.0', () => {
          const n = b.rmsNorm(h, 'layer_norm');
          return b.add(h, b.scope('SelfAttention', () => attend(n, n, seq, seq, false)));
        });
        return b.scope('layer.1', () => b.add(a, feedForward(b.rmsNorm(a, 'layer_norm'))));
      });
    }
    const encoded = b.rmsNorm(h, 'encoder.final_layer_norm');

    // Decoder: causal self-attention, cross-attention over the encoder's output, feed-forward.
    let g = b.reshape(embed(decIds), [batch * tseq, d]);
    for (let i = 0; i < cfg.layers; i++) {
      g = b.scope(`decoder.block.${i}`, () => {
        const s = b.scope('layer.0', () => {
          const n = b.rmsNorm(g, 'layer_norm');
          return b.add(g, b.scope('SelfAttention', () => attend(n, n, tseq, tseq, true)));
        });
        const c = b.scope('layer.1', () => {
          const n = b.rmsNorm(s, 'layer_norm');
          return b.add(s, b.scope('EncDecAttention', () => attend(n, encoded, tseq, seq, false)));
        });
        return b.scope('layer.2', () => b.add(c, feedForward(b.rmsNorm(c, 'layer_norm'))));
      });
    }
    const out = b.rmsNorm(g, 'decoder.final_layer_norm');
    // Tied LM head: T5 rescales by d^-½ before projecting onto the shared embedding.
    const logits = b.scope('lm_head', () => b.matmul(b.mul(out, b.scalar(d ** -0.5)), shared, { transB: true }));
    b.output('logits', logits);
    b.loss(b.crossEntropy(logits, labels));
  },
});
