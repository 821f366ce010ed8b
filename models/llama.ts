// A LLaMA-style decoder: RMSNorm, rotary position embedding, causal multi-head attention and a
// SwiGLU MLP, next-token cross-entropy. Names follow Hugging Face's LlamaForCausalLM, so PEFT's
// target_modules (q_proj, v_proj, …) mean the same layers.
import { defineModel } from 'lorafa';

export default defineModel({
  name: 'llama',
  description: 'LLaMA-style decoder (RMSNorm, RoPE, SwiGLU, causal attention)',
  configs: {
    toy: { batch: 2, seq: 8, vocab: 64, d: 32, heads: 4, layers: 2, ffn: 48, ropeBase: 10000 },
    '7b': { batch: 8, seq: 1024, vocab: 32000, d: 4096, heads: 32, layers: 32, ffn: 11008, ropeBase: 10000 },
    // The shipped base model (models/pretrained/llama-brown): a character-level decoder pretrained
    // on the Brown corpus (`npm run pretrain`).
    brown: { batch: 8, seq: 128, vocab: 128, d: 96, heads: 4, layers: 3, ffn: 256, ropeBase: 10000 },
    // The same decoder as a sequence classifier (SpamAssassin spam/ham): mean-pooled final hidden
    // states → `score` (as Hugging Face's LlamaForSequenceClassification names its head).
    spam: { batch: 8, seq: 128, vocab: 128, d: 96, heads: 4, layers: 3, ffn: 256, ropeBase: 10000, classes: 2 },
  },
  defaultConfig: 'toy',
  defaultTargets: ['q_proj', 'v_proj'],
  // The classifier head trains fully under LoRA (PEFT's modules_to_save for SEQ_CLS).
  modulesToSave: ['score'],
  // Hugging Face's LlamaForCausalLM / LlamaForSequenceClassification state-dict keys.
  stateDictKey: (name) => (name === 'lm_head' || name === 'score' || name.startsWith('lm_head.') || name.startsWith('score.') ? name : `model.${name}`),
  build(b, cfg) {
    const { batch, seq, d, heads } = cfg as typeof cfg & { seq: number };
    const ids = b.input('input_ids', [batch, seq], 'i32');
    let h = b.reshape(b.embedding(ids, 'embed_tokens', cfg.vocab, d), [batch * seq, d]);
    for (let i = 0; i < cfg.layers; i++) {
      h = b.scope(`layers.${i}`, () => {
        const a = b.rmsNorm(h, 'input_layernorm');
        const attn = b.scope('self_attn', () => {
          const proj = (name: string) => b.splitHeads(b.linear(a, name, d, { bias: false }), batch, seq, heads);
          const q = b.rope(proj('q_proj'), { base: cfg.ropeBase });
          const k = b.rope(proj('k_proj'), { base: cfg.ropeBase });
          const v = proj('v_proj');
          return b.linear(b.mergeHeads(b.attention(q, k, v, { causal: true })), 'o_proj', d, { bias: false });
        });
        const r = b.add(h, attn);
        const m = b.rmsNorm(r, 'post_attention_layernorm');
        const mlp = b.scope('mlp', () => {
          const gate = b.silu(b.linear(m, 'gate_proj', cfg.ffn, { bias: false }));
          const up = b.linear(m, 'up_proj', cfg.ffn, { bias: false });
          return b.linear(b.mul(gate, up), 'down_proj', d, { bias: false });
        });
        return b.add(r, mlp);
      });
    }
    const final = b.rmsNorm(h, 'norm');
    if (cfg.classes !== undefined) {
      // Sequence classification: one label per sequence, the mean of its final hidden states.
      const labels = b.input('labels', [batch], 'i32');
      const pooled = b.mean(b.reshape(final, [batch, seq, d]), [1]);
      const logits = b.linear(pooled, 'score', cfg.classes as number, { bias: false });
      b.output('logits', logits);
      b.loss(b.crossEntropy(logits, labels));
      return;
    }
    const targets = b.input('labels', [batch * seq], 'i32');
    const logits = b.linear(final, 'lm_head', cfg.vocab, { bias: false });
    b.output('logits', logits);
    b.loss(b.crossEntropy(logits, targets));
  },
});
