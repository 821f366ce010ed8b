// A LLaMA-style decoder: RMSNorm, rotary position embedding, causal (grouped-query) attention and a
// SwiGLU MLP, next-token cross-entropy; or, with `classes`, a sequence classifier over the last
// real token, as Hugging Face's LlamaForSequenceClassification. Names follow Hugging Face's
// LlamaForCausalLM, so PEFT's target_modules (q_proj, v_proj, …) mean the same layers, and a
// checkpoint's config.json gives the sizes (`huggingFace` below).
import { defineModel } from 'lorafa';

interface LlamaConfig {
  readonly batch: number;
  readonly seq: number;
  readonly vocab: number;
  readonly d: number;
  readonly heads: number;
  /** Key/value heads (grouped-query attention); default: heads. */
  readonly kvHeads?: number;
  readonly layers: number;
  readonly ffn: number;
  readonly ropeBase: number;
  /** RMSNorm epsilon (rms_norm_eps); default 1e-6. */
  readonly eps?: number;
  /** The LM head is the token embedding, transposed (tie_word_embeddings). */
  readonly tie?: boolean;
  /** A sequence classifier with this many classes. */
  readonly classes?: number;
  /**
   * How a classifier pools the final hidden states: the last real token (Hugging Face's), the mean
   * over the real tokens (padding left out by the attention mask), that mean beside the max over
   * the real tokens ([b, 2d]), or the mean over all positions.
   */
  readonly pool?: 'last' | 'mean' | 'mean-max' | 'mean-all';
  readonly [key: string]: number | string | boolean | undefined;
}

export default defineModel<LlamaConfig>({
  name: 'llama',
  description: 'LLaMA-style decoder (RMSNorm, RoPE, SwiGLU, causal grouped-query attention)',
  configs: {
    toy: { batch: 2, seq: 8, vocab: 64, d: 32, heads: 4, layers: 2, ffn: 48, ropeBase: 10000 },
    '7b': { batch: 8, seq: 1024, vocab: 32000, d: 4096, heads: 32, layers: 32, ffn: 11008, ropeBase: 10000 },
    // The toy as a sequence classifier (the spam config's head and pooling), for tests.
    'toy-cls': { batch: 2, seq: 8, vocab: 64, d: 32, heads: 4, layers: 2, ffn: 48, ropeBase: 10000, classes: 2, pool: 'mean' },
    // A character-level decoder pretrained on the Brown corpus (`npm run pretrain -- --task brown`,
    // models/pretrained/llama-brown).
    brown: { batch: 8, seq: 128, vocab: 128, d: 96, heads: 4, layers: 3, ffn: 256, ropeBase: 10000 },
    // The shipped base model of the spam task (models/pretrained/llama-email): the same decoder on
    // WordPiece tokens (8192: the words and word pieces of the SpamAssassin training messages),
    // pretrained from scratch on those messages as unlabelled text (`npm run pretrain -- --task email`).
    email: { batch: 8, seq: 64, vocab: 8192, d: 96, heads: 4, layers: 3, ffn: 256, ropeBase: 10000 },
    // That decoder as a sequence classifier (SpamAssassin spam/ham): the mean of the final hidden
    // states over each message's real tokens → `score` (as Hugging Face's
    // LlamaForSequenceClassification names its head). 64 tokens hold the 128 characters the spam
    // preset reads for all but a few messages.
    spam: { batch: 8, seq: 64, vocab: 8192, d: 96, heads: 4, layers: 3, ffn: 256, ropeBase: 10000, classes: 2, pool: 'mean' },
    // The same classifier pooling the final hidden state of each message's last real token, as
    // Hugging Face's sequence classifiers do (right padding, with an attention_mask); docs/results.md
    // compares the two, and configs read from a config.json pool the last token.
    'spam-last': { batch: 8, seq: 64, vocab: 8192, d: 96, heads: 4, layers: 3, ffn: 256, ropeBase: 10000, classes: 2, pool: 'last' },
    // Mean and max pooling side by side (d·2 → score), a measured alternative (docs/finetune.md).
    'spam-meanmax': { batch: 8, seq: 64, vocab: 8192, d: 96, heads: 4, layers: 3, ffn: 256, ropeBase: 10000, classes: 2, pool: 'mean-max' },
  },
  defaultConfig: 'toy',
  defaultTargets: ['q_proj', 'v_proj'],
  // The classifier head trains fully under LoRA (PEFT's modules_to_save for SEQ_CLS).
  modulesToSave: ['score'],
  // Hugging Face's LlamaForCausalLM / LlamaForSequenceClassification state-dict keys.
  stateDictKey: (name) => (name === 'lm_head' || name === 'score' || name.startsWith('lm_head.') || name.startsWith('score.') ? name : `model.${name}`),
  huggingFace: {
    architectures: ['LlamaForCausalLM', 'LlamaForSequenceClassification'],
    config: (hf, arch) => {
      const num = (k: string, fallback?: number): number => {
        const v = hf[k] ?? fallback;
        if (typeof v !== 'number' || !Number.isFinite(v)) throw new Error(`"${k}" is ${JSON.stringify(hf[k])}, expected a number`);
        return v;
      };
      const classifier = arch === 'LlamaForSequenceClassification';
      const labels = hf.id2label && typeof hf.id2label === 'object' ? Object.keys(hf.id2label).length : undefined;
      return {
        vocab: num('vocab_size'),
        d: num('hidden_size'),
        heads: num('num_attention_heads'),
        kvHeads: num('num_key_value_heads', num('num_attention_heads')),
        layers: num('num_hidden_layers'),
        ffn: num('intermediate_size'),
        ropeBase: num('rope_theta', 10000),
        eps: num('rms_norm_eps', 1e-6),
        tie: hf.tie_word_embeddings === true,
        maxSeq: num('max_position_embeddings', 2048),
        ...(classifier ? { classes: num('num_labels', labels ?? 2), pool: 'last' as const } : {}),
      };
    },
  },
  build(b, cfg) {
    const { batch, seq, d, heads } = cfg;
    const kvHeads = cfg.kvHeads ?? heads;
    if (heads % kvHeads !== 0) throw new Error(`${heads} attention heads cannot share ${kvHeads} key/value heads evenly`);
    const hd = d / heads;
    const ids = b.input('input_ids', [batch, seq], 'i32');
    const pooled = cfg.classes !== undefined && cfg.pool !== 'mean-all';
    // Which tokens are real (1) or padding (0): the classifier pools its real tokens, and no token
    // attends to padding, as in Hugging Face (with right or left padding alike).
    const mask = pooled ? b.input('attention_mask', [batch, seq]) : undefined;
    const embed = b.scope('embed_tokens', () => b.param('weight', [cfg.vocab, d], { init: { kind: 'normal', std: 0.02 } }));
    let h = b.reshape(b.scope('embed_tokens', () => b.emit('gather', [embed, ids], {}, 'lookup')), [batch * seq, d]);
    for (let i = 0; i < cfg.layers; i++) {
      h = b.scope(`layers.${i}`, () => {
        const a = b.rmsNorm(h, 'input_layernorm', { eps: cfg.eps });
        const attn = b.scope('self_attn', () => {
          const proj = (name: string, n: number) => b.splitHeads(b.linear(a, name, n * hd, { bias: false }), batch, seq, n);
          const q = b.rope(proj('q_proj', heads), { base: cfg.ropeBase });
          // k and v keep their kvHeads: the fused attention shares each among heads/kvHeads query heads.
          const k = b.rope(proj('k_proj', kvHeads), { base: cfg.ropeBase });
          const v = proj('v_proj', kvHeads);
          return b.linear(b.mergeHeads(b.attention(q, k, v, { causal: true, keyMask: mask })), 'o_proj', d, { bias: false });
        });
        const r = b.add(h, attn);
        const m = b.rmsNorm(r, 'post_attention_layernorm', { eps: cfg.eps });
        const mlp = b.scope('mlp', () => {
          const gate = b.linear(m, 'gate_proj', cfg.ffn, { bias: false });
          const up = b.linear(m, 'up_proj', cfg.ffn, { bias: false });
          return b.linear(b.swiglu(gate, up), 'down_proj', d, { bias: false });
        });
        return b.add(r, mlp);
      });
    }
    const final = b.rmsNorm(h, 'norm', { eps: cfg.eps });
    if (cfg.classes !== undefined) {
      // Sequence classification: one label per sequence, from the last real token's hidden state,
      // the mean over the real tokens (the spam preset's pooling), that mean beside the max, or the
      // mean over all positions.
      const labels = b.input('labels', [batch], 'i32');
      const states = b.reshape(final, [batch, seq, d]);
      const pooledState = !mask
        ? b.mean(states, [1])
        : cfg.pool === 'mean'
          ? b.maskedMean(states, mask)
          : cfg.pool === 'mean-max'
            ? b.concat([b.maskedMean(states, mask), b.maskedMax(states, mask)], 1)
            : b.lastToken(states, mask);
      const logits = b.linear(pooledState, 'score', cfg.classes, { bias: false });
      b.output('logits', logits);
      b.loss(b.crossEntropy(logits, labels));
      return;
    }
    const targets = b.input('labels', [batch * seq], 'i32');
    const logits = cfg.tie ? b.tiedLinear(final, 'lm_head', embed) : b.linear(final, 'lm_head', cfg.vocab, { bias: false });
    b.output('logits', logits);
    b.loss(b.crossEntropy(logits, targets));
  },
});
