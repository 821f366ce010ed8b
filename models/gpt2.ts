// GPT-2 as Hugging Face's GPT2LMHeadModel and GPT2ForSequenceClassification: learned token and
// position embeddings, pre-LN blocks (LayerNorm with bias), one fused Conv1D projection to q, k and
// v (c_attn, its weight stored [in, out]), the tanh GELU ("gelu_new"), and a language-model head
// tied to the token embedding; the classifier pools the last real token into `score`. State-dict
// keys are transformers' (transformer.h.0.attn.c_attn.weight, …), so a checkpoint folder loads as
// is and PEFT's target_modules (c_attn, c_proj, c_fc) name the same layers.
import { defineModel } from 'lorafa';

interface Gpt2Config {
  readonly batch: number;
  readonly seq: number;
  readonly vocab: number;
  readonly d: number;
  readonly heads: number;
  readonly layers: number;
  /** Learned positions (n_positions): seq may not exceed it. */
  readonly positions: number;
  readonly eps?: number;
  readonly classes?: number;
  readonly [key: string]: number | string | boolean | undefined;
}

export default defineModel<Gpt2Config>({
  name: 'gpt2',
  description: 'GPT-2 (learned positions, pre-LN, fused Conv1D attention, tanh GELU, tied LM head)',
  configs: {
    toy: { batch: 2, seq: 8, vocab: 64, d: 32, heads: 4, layers: 2, positions: 16 },
    'toy-cls': { batch: 2, seq: 8, vocab: 64, d: 32, heads: 4, layers: 2, positions: 16, classes: 3 },
    gpt2: { batch: 8, seq: 128, vocab: 50257, d: 768, heads: 12, layers: 12, positions: 1024 },
  },
  defaultConfig: 'toy',
  // PEFT's default target for GPT-2: the fused attention projection.
  defaultTargets: ['c_attn'],
  modulesToSave: ['score'],
  stateDictKey: (name) => (name === 'lm_head' || name === 'score' || name.startsWith('score.') ? name : `transformer.${name}`),
  huggingFace: {
    architectures: ['GPT2LMHeadModel', 'GPT2ForSequenceClassification'],
    config: (hf, arch) => {
      const num = (k: string, fallback?: number): number => {
        const v = hf[k] ?? fallback;
        if (typeof v !== 'number' || !Number.isFinite(v)) throw new Error(`"${k}" is ${JSON.stringify(hf[k])}, expected a number`);
        return v;
      };
      const act = hf.activation_function ?? 'gelu_new';
      if (act !== 'gelu_new') throw new Error(`activation_function "${String(act)}" is not the tanh GELU (gelu_new) this model implements`);
      if (hf.n_inner !== undefined && hf.n_inner !== null && hf.n_inner !== 4 * num('n_embd')) throw new Error(`n_inner ${String(hf.n_inner)} is not 4 × n_embd`);
      const labels = hf.id2label && typeof hf.id2label === 'object' ? Object.keys(hf.id2label).length : undefined;
      return {
        vocab: num('vocab_size'),
        d: num('n_embd'),
        heads: num('n_head'),
        layers: num('n_layer'),
        positions: num('n_positions'),
        eps: num('layer_norm_epsilon', 1e-5),
        maxSeq: num('n_positions'),
        ...(arch === 'GPT2ForSequenceClassification' ? { classes: num('num_labels', labels ?? 2) } : {}),
      };
    },
  },
  build(b, cfg) {
    const { batch, seq, d, heads } = cfg;
    if (seq > cfg.positions) throw new Error(`seq ${seq} is longer than the ${cfg.positions} learned positions (n_positions)`);
    const ids = b.input('input_ids', [batch, seq], 'i32');
    const mask = cfg.classes !== undefined ? b.input('attention_mask', [batch, seq]) : undefined;
    const wte = b.scope('wte', () => b.param('weight', [cfg.vocab, d], { init: { kind: 'normal', std: 0.02 } }));
    const wpe = b.scope('wpe', () => b.param('weight', [cfg.positions, d], { init: { kind: 'normal', std: 0.01 } }));
    const tokens = b.gather(wte, ids); // [b, s, d]
    const positions = b.gather(wpe, b.positionIds(seq)); // [s, d]
    let h = b.reshape(b.add(tokens, positions), [batch * seq, d]);
    const eps = cfg.eps ?? 1e-5;
    for (let i = 0; i < cfg.layers; i++) {
      h = b.scope(`h.${i}`, () => {
        const a = b.layerNorm(h, 'ln_1', { eps });
        const attn = b.scope('attn', () => {
          const qkv = b.linear(a, 'c_attn', 3 * d, { torchLayout: 'in_out' });
          const [q, k, v] = b.split(qkv, -1, [d, d, d]).map((x) => b.splitHeads(x, batch, seq, heads));
          return b.linear(b.mergeHeads(b.attention(q, k, v, { causal: true, keyMask: mask })), 'c_proj', d, { torchLayout: 'in_out' });
        });
        const r = b.add(h, attn);
        const m = b.layerNorm(r, 'ln_2', { eps });
        const mlp = b.scope('mlp', () => b.linear(b.gelu(b.linear(m, 'c_fc', 4 * d, { torchLayout: 'in_out' })), 'c_proj', d, { torchLayout: 'in_out' }));
        return b.add(r, mlp);
      });
    }
    const final = b.layerNorm(h, 'ln_f', { eps });
    if (cfg.classes !== undefined) {
      const labels = b.input('labels', [batch], 'i32');
      const logits = b.linear(b.lastToken(b.reshape(final, [batch, seq, d]), mask!), 'score', cfg.classes, { bias: false });
      b.output('logits', logits);
      b.loss(b.crossEntropy(logits, labels));
      return;
    }
    const targets = b.input('labels', [batch * seq], 'i32');
    const logits = b.tiedLinear(final, 'lm_head', wte);
    b.output('logits', logits);
    b.loss(b.crossEntropy(logits, targets));
  },
});
