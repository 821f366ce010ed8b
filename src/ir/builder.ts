// The Builder: the DSL that model files use, and the same API through which VJP rules and passes
// emit IR. Every op goes through `emit`, which runs the op's shape rule and records the user's
// source line, so a shape error anywhere (even inside a composition) points at the model file.
import { ModelError, ShapeError, ShapeProblem } from './errors.ts';
import { OPS, type OpAttrs, type OpName } from './ops.ts';
import { normAxes } from './shape.ts';
import type {
  DType,
  Graph,
  Init,
  Input,
  LinearModule,
  Node,
  Param,
  ParamRole,
  Phase,
  SourceLoc,
  Value,
} from './types.ts';
import { fmtLoc, fmtType, numel, sameShape } from './types.ts';

export interface BuilderOptions {
  readonly name?: string;
  /** Absolute path of the model file: stack frames in it become source locations. */
  readonly file?: string;
  /** How the file is shown in messages (relative to the working directory). */
  readonly displayFile?: string;
  readonly phase?: Phase;
  /**
   * Trace attention, cross-entropy, the norms and SwiGLU as compositions of primitive ops, as lorafa did
   * before they were fused ops: their plans keep the intermediates (bench/paper.ts sets the two
   * side by side). Default false.
   */
  readonly composed?: boolean;
  /**
   * How b.attention lowers (like PyTorch's scaled_dot_product_attention picking a backend):
   * 'fused' — the `attention` op, which keeps no [b, h, sq, sk] tensor; 'composed' — the
   * composition (b.attentionComposed), which keeps two; 'auto' (default) — the fused op when one
   * [b, h, sq, sk] f32 tensor would take AUTO_FUSED_ATTENTION_BYTES or more, the composition below
   * (on lavapipe the composition's matmuls run about twice as fast at s = 128: bench/results/gpu.md).
   */
  readonly attention?: AttentionImpl;
}

export type AttentionImpl = 'auto' | 'fused' | 'composed';

/** 'auto' attention: the fused op from this size of one [b, h, sq, sk] f32 tensor (8 MiB) up. */
export const AUTO_FUSED_ATTENTION_BYTES = 8 * 1024 * 1024;

/** maskedMax's padding offset: far below any hidden state, within f16's range (65504). */
export const MASKED_MAX_SINK = 3e4;

export interface ParamOptions {
  readonly init: Init;
  readonly trainable?: boolean;
  readonly role?: ParamRole;
  readonly dtype?: DType;
}

export interface LinearOptions {
  readonly bias?: boolean;
  readonly trainable?: boolean;
  /**
   * How PyTorch stores the weight: 'out_in' (nn.Linear, the default) or 'in_out' (GPT-2's Conv1D).
   * Only the checkpoint layout changes; the layer computes the same x·W.
   */
  readonly torchLayout?: 'out_in' | 'in_out';
}

export class Builder {
  readonly name: string;
  private nextId: number;
  private readonly nodes: Node[] = [];
  private readonly inputs: Input[] = [];
  private readonly params: Param[] = [];
  private readonly linears: LinearModule[] = [];
  private readonly outputs: Record<string, Value> = {};
  private readonly scopes: string[] = [];
  private readonly names = new Map<string, SourceLoc | undefined>();
  private readonly scalars = new Map<number, Value>();
  private readonly buffers = new Map<string, Value>();
  private readonly file?: string;
  /** BuilderOptions.composed: the fused ops' compositions instead of the ops. */
  readonly composed: boolean;
  /** BuilderOptions.attention. */
  readonly attentionImpl: AttentionImpl;
  private readonly displayFile?: string;
  /** Set while a pass or VJP rule emits nodes on behalf of one forward node. */
  private fixedSrc?: SourceLoc;
  phase: Phase;

  constructor(opts: BuilderOptions = {}) {
    this.name = opts.name ?? 'model';
    this.file = opts.file;
    this.displayFile = opts.displayFile ?? opts.file;
    this.phase = opts.phase ?? 'forward';
    this.composed = opts.composed ?? false;
    this.attentionImpl = opts.composed ? 'composed' : (opts.attention ?? 'auto');
    this.nextId = 0;
  }

  /** A builder that appends to an existing graph (for passes): ids continue, names stay unique. */
  static extending(g: Graph, phase: Phase): Builder {
    const b = new Builder({ name: g.name, displayFile: g.file, phase });
    b.nextId = g.nextId;
    for (const p of g.params) b.names.set(p.value.name, p.src);
    for (const i of g.inputs) b.names.set(i.value.name, i.src);
    return b;
  }

  // -------------------------------------------------------------------------------------------
  // declarations

  /** A data input with a static shape (a batch of features, token ids, labels…). */
  input(name: string, shape: readonly number[], dtype: DType = 'f32'): Value {
    const src = this.loc();
    this.claimName(name, src, 'input');
    checkShape(shape, `input "${name}"`, src);
    const value = this.newValue({ dtype, shape: [...shape] }, name);
    this.inputs.push({ value, src });
    return value;
  }

  /** A named parameter; the current scope prefixes the name (`layers.3.attn.q.weight`). */
  param(name: string, shape: readonly number[], opts: ParamOptions): Value {
    const full = this.qualify(name);
    const src = this.loc();
    this.claimName(full, src, 'parameter');
    checkShape(shape, `parameter "${full}"`, src);
    const value = this.newValue({ dtype: opts.dtype ?? 'f32', shape: [...shape] }, full);
    this.params.push({ value, trainable: opts.trainable ?? true, init: opts.init, role: opts.role ?? 'weight', src });
    return value;
  }

  /** Runs `fn` with `name` appended to the hierarchical name prefix. */
  scope<T>(name: string | number, fn: () => T): T {
    this.scopes.push(String(name));
    try {
      return fn();
    } finally {
      this.scopes.pop();
    }
  }

  /** Declares the scalar training loss. */
  loss(v: Value): Value {
    if (v.type.shape.length !== 0) {
      throw new ModelError(
        fmtLoc(this.loc()) || this.displayFile || this.name,
        `the loss must be a scalar, got ${fmtType(v.type)} ("${v.name}")`,
        'reduce it first, e.g. b.mean(x) or b.sum(x)',
      );
    }
    return this.output('loss', v);
  }

  output(name: string, v: Value): Value {
    if (this.outputs[name]) throw new ModelError(fmtLoc(this.loc()), `output "${name}" is declared twice`);
    this.outputs[name] = v;
    return v;
  }

  build(): Graph {
    return {
      name: this.name,
      inputs: [...this.inputs],
      params: [...this.params],
      nodes: [...this.nodes],
      outputs: { ...this.outputs },
      linears: [...this.linears],
      adapters: [],
      updates: [],
      nextId: this.nextId,
      file: this.displayFile,
    };
  }

  /** What a pass built on top of a graph: new nodes, params and the next free id. */
  takeAdditions(): { nodes: Node[]; params: Param[]; nextId: number } {
    const out = { nodes: this.nodes.splice(0), params: this.params.splice(0), nextId: this.nextId };
    this.scalars.clear();
    return out;
  }

  /** Emits on behalf of a node: its nodes carry that node's source line and this name prefix. */
  on<T>(src: SourceLoc | undefined, prefix: string, fn: () => T): T {
    const saved = [this.fixedSrc, this.scopes.splice(0)] as const;
    this.fixedSrc = src;
    this.scopes.push(prefix);
    try {
      return fn();
    } finally {
      this.fixedSrc = saved[0];
      this.scopes.splice(0, this.scopes.length, ...saved[1]);
    }
  }

  // -------------------------------------------------------------------------------------------
  // primitive ops

  /** The one place nodes are made: shape rule, source line, naming. */
  emit<K extends OpName>(op: K, inputs: readonly Value[], attrs: OpAttrs[K], label?: string): Value {
    const def = OPS[op];
    const src = this.loc();
    if (def.arity !== 'variadic' && def.arity !== inputs.length) {
      throw new ShapeError(op, inputs, `takes ${def.arity} inputs, got ${inputs.length}`, src);
    }
    let type;
    try {
      type = def.infer(
        inputs.map((v) => v.type),
        attrs,
      );
    } catch (e) {
      if (e instanceof ShapeProblem) throw new ShapeError(op, inputs, e.message, src, e.fix);
      throw e;
    }
    const out = this.newValue(type, this.qualify(label ?? op));
    this.nodes.push({ op, inputs: [...inputs], attrs, out, phase: this.phase, src });
    return out;
  }

  neg = (x: Value) => this.emit('neg', [x], {});
  exp = (x: Value) => this.emit('exp', [x], {});
  log = (x: Value) => this.emit('log', [x], {});
  sqrt = (x: Value) => this.emit('sqrt', [x], {});
  rsqrt = (x: Value) => this.emit('rsqrt', [x], {});
  tanh = (x: Value) => this.emit('tanh', [x], {});
  sigmoid = (x: Value) => this.emit('sigmoid', [x], {});
  relu = (x: Value) => this.emit('relu', [x], {});
  /** GELU, tanh approximation (PyTorch's approximate='tanh'). */
  gelu = (x: Value) => this.emit('gelu', [x], {});
  /** ct · gelu'(x): GELU's backward, one elementwise node. */
  geluGrad = (x: Value, ct: Value) => this.emit('gelu_grad', [x, ct], {});
  /** GELU with the exact normal CDF, x·Φ(x) (PyTorch's default; BERT's and RoBERTa's "gelu"). */
  geluErf = (x: Value) => this.emit('gelu_erf', [x], {});
  /** ct · gelu_erf'(x): its backward, one elementwise node. */
  geluErfGrad = (x: Value, ct: Value) => this.emit('gelu_erf_grad', [x, ct], {});
  silu = (x: Value) => this.emit('silu', [x], {});
  /**
   * silu(gate) · up, the SwiGLU product: one op whose backward recomputes silu(gate) instead of
   * saving it (BuilderOptions.composed: silu then mul, which keeps silu(gate) too).
   */
  swiglu = (gate: Value, up: Value) => (this.composed ? this.mul(this.silu(gate), up) : this.emit('swiglu', [gate, up], {}));
  step = (x: Value) => this.emit('step', [x], {});
  stopGradient = (x: Value) => this.emit('stop_gradient', [x], {});
  powc = (x: Value, p: number) => this.emit('powc', [x], { p });
  add = (a: Value, b: Value) => this.emit('add', [a, b], {});
  sub = (a: Value, b: Value) => this.emit('sub', [a, b], {});
  mul = (a: Value, b: Value) => this.emit('mul', [a, b], {});
  div = (a: Value, b: Value) => this.emit('div', [a, b], {});
  eq = (a: Value, b: Value) => this.emit('eq', [a, b], {});
  /** cond != 0 ? a : b, broadcasting all three. */
  where = (cond: Value, a: Value, b: Value) => this.emit('where', [cond, a, b], {});

  /** A constant tensor; a scalar (the default shape) broadcasts against anything. */
  fill(value: number, shape: readonly number[] = [], dtype: DType = 'f32'): Value {
    if (shape.length === 0 && dtype === 'f32') {
      const hit = this.scalars.get(value);
      if (hit) return hit;
      const v = this.emit('fill', [], { value, shape: [], dtype }, 'const');
      this.scalars.set(value, v);
      return v;
    }
    return this.emit('fill', [], { value, shape: [...shape], dtype }, 'const');
  }

  scalar = (value: number) => this.fill(value);

  sum = (x: Value, axes?: readonly number[], keepdims = false) =>
    this.emit('sum', [x], { axes: this.axes(x, axes, 'sum'), keepdims });
  max = (x: Value, axes?: readonly number[], keepdims = false) =>
    this.emit('max', [x], { axes: this.axes(x, axes, 'max'), keepdims });

  mean(x: Value, axes?: readonly number[], keepdims = false): Value {
    const ax = this.axes(x, axes, 'mean');
    const n = ax.reduce((acc, a) => acc * x.type.shape[a], 1);
    return this.mul(this.sum(x, ax, keepdims), this.scalar(1 / n));
  }

  reshape(x: Value, shape: readonly number[]): Value {
    const resolved = resolveShape(shape, numel(x.type.shape));
    // A reshape to the same shape is the value itself (VJP rules ask for these freely).
    if (sameShape(resolved, x.type.shape)) return x;
    return this.emit('reshape', [x], { shape: resolved });
  }

  transpose(x: Value, perm?: readonly number[]): Value {
    const r = x.type.shape.length;
    const p = perm ?? [...Array.from({ length: r - 2 }, (_, i) => i), r - 1, r - 2];
    return this.emit('transpose', [x], { perm: p.map((a) => (a < 0 ? a + r : a)) });
  }

  broadcast = (x: Value, shape: readonly number[]) =>
    sameShape(x.type.shape, shape) ? x : this.emit('broadcast', [x], { shape: [...shape] });

  /** Elements [starts[i], ends[i]) along every axis. */
  slice = (x: Value, starts: readonly number[], ends: readonly number[]) =>
    this.emit('slice', [x], { starts: [...starts], ends: [...ends] });

  /** [start, end) along one axis, everything along the others. */
  sliceAxis(x: Value, axis: number, start: number, end: number): Value {
    const r = x.type.shape.length;
    const a = axis < 0 ? axis + r : axis;
    return this.slice(
      x,
      x.type.shape.map((_, i) => (i === a ? start : 0)),
      x.type.shape.map((d, i) => (i === a ? end : d)),
    );
  }

  pad = (x: Value, before: readonly number[], after: readonly number[]) =>
    this.emit('pad', [x], { before: [...before], after: [...after] });

  concat(xs: readonly Value[], axis: number): Value {
    const r = xs[0]?.type.shape.length ?? 0;
    return this.emit('concat', xs, { axis: axis < 0 ? axis + r : axis });
  }

  /** Rows of `table` at integer `idx` (an embedding lookup). */
  gather = (table: Value, idx: Value) => this.emit('gather', [table, idx], {});
  scatterAdd = (idx: Value, src: Value, rows: number) => this.emit('scatter_add', [idx, src], { rows });
  oneHot = (idx: Value, classes: number) => this.emit('one_hot', [idx], { classes });

  matmul = (a: Value, b: Value, t: { transA?: boolean; transB?: boolean } = {}) =>
    this.emit('matmul', [a, b], { transA: t.transA ?? false, transB: t.transB ?? false });

  // -------------------------------------------------------------------------------------------
  // compositions (layers)

  /**
   * y = x·W + bias, W of shape [in, out] with PyTorch nn.Linear's init (kaiming-uniform a=√5,
   * bias uniform ±1/√in). Recorded as a linear module so LoRA can target it by name.
   */
  linear(x: Value, name: string, outFeatures: number, opts: LinearOptions = {}): Value {
    const inFeatures = x.type.shape[x.type.shape.length - 1];
    return this.scope(name, () => {
      const trainable = opts.trainable ?? true;
      const w = this.param('weight', [inFeatures, outFeatures], {
        init: { kind: 'kaiming_uniform', a: Math.sqrt(5), fanIn: inFeatures },
        trainable,
      });
      const xw = this.emit('matmul', [x, w], { transA: false, transB: false }, 'xW');
      let bias: Value | undefined;
      let y = xw;
      if (opts.bias ?? true) {
        const bound = 1 / Math.sqrt(inFeatures);
        bias = this.param('bias', [outFeatures], { init: { kind: 'uniform', low: -bound, high: bound }, role: 'bias', trainable });
        y = this.emit('add', [xw, bias], {}, 'out');
      }
      this.linears.push({
        name: this.qualify(''),
        weight: w.name,
        bias: bias?.name,
        matmulOut: xw.id,
        inFeatures,
        outFeatures,
        ...(opts.torchLayout === 'in_out' ? { torchLayout: 'in_out' as const } : {}),
        src: this.loc(),
      });
      return y;
    });
  }

  /**
   * A linear layer whose weight is an embedding table [vocab, d] used transposed, y = x·Eᵀ: the
   * language-model head tied to the token embedding (tie_word_embeddings). It is a linear module
   * like any other (LoRA can target it by name); its weight is saved and loaded once, as the table.
   */
  tiedLinear(x: Value, name: string, table: Value): Value {
    const inFeatures = x.type.shape[x.type.shape.length - 1];
    const [vocab, d] = table.type.shape;
    if (table.type.shape.length !== 2 || d !== inFeatures) {
      throw new ShapeError('tied_linear', [x, table], `the table must be [vocab, ${inFeatures}] to be used as this layer's weight transposed`, this.loc());
    }
    return this.scope(name, () => {
      const y = this.emit('matmul', [x, table], { transA: false, transB: true }, 'xW');
      this.linears.push({ name: this.qualify(''), weight: table.name, matmulOut: y.id, inFeatures, outFeatures: vocab, tiedTo: table.name, src: this.loc() });
      return y;
    });
  }

  /** Pieces of `sizes` along `axis` (a fused projection such as GPT-2's c_attn into q, k, v). */
  split(x: Value, axis: number, sizes: readonly number[]): Value[] {
    const r = x.type.shape.length;
    const a = axis < 0 ? axis + r : axis;
    const total = sizes.reduce((s, n) => s + n, 0);
    if (total !== x.type.shape[a]) {
      throw new ShapeError('split', [x], `sizes [${sizes.join(',')}] add up to ${total}, axis ${a} has ${x.type.shape[a]}`, this.loc(), 'give sizes that add up to the axis length');
    }
    let at = 0;
    return sizes.map((n) => {
      const piece = this.sliceAxis(x, a, at, at + n);
      at += n;
      return piece;
    });
  }

  /** Position ids offset, offset+1, … offset+seq−1 as an i32 [seq] constant (for learned position embeddings). */
  positionIds(seq: number, offset = 0): Value {
    return this.buffer(`position_ids.${offset}`, [seq], { kind: 'arange', start: offset }, 'i32');
  }

  /**
   * [b, kv, s, hd] → [b, kv·groups, s, hd], each key/value head repeated for `groups` query heads
   * in a row (grouped-query attention; Hugging Face's repeat_kv).
   */
  repeatKv(x: Value, groups: number): Value {
    if (groups === 1) return x;
    const [batch, kv, seq, hd] = x.type.shape;
    const wide = this.broadcast(this.reshape(x, [batch, kv, 1, seq, hd]), [batch, kv, groups, seq, hd]);
    return this.reshape(wide, [batch, kv * groups, seq, hd]);
  }

  /**
   * The hidden state of each row's last real token: h [b, s, d], mask [b, s] (1 real, 0 padding, on
   * either side) → [b, d]; what Hugging Face's sequence classifiers pool.
   */
  lastToken(h: Value, mask: Value): Value {
    const [batch, seq] = h.type.shape;
    return this.scope('last_token', () => {
      const pos = this.buffer('positions.f32', [1, seq], { kind: 'arange', start: 0 });
      const last = this.max(this.stopGradient(this.mul(pos, mask)), [1], true); // [b, 1]: the last position whose mask is 1
      const pick = this.reshape(this.eq(pos, last), [batch, seq, 1]); // [b, s, 1]: 1 at the last real token
      return this.emit('sum', [this.mul(h, pick)], { axes: [1], keepdims: false }, 'out');
    });
  }

  /**
   * The mean of each row's real tokens: h [b, s, d], mask [b, s] (1 real, 0 padding) → [b, d]. A row
   * with no real token gives 0 rather than 0/0.
   */
  maskedMean(h: Value, mask: Value): Value {
    const [batch, seq] = h.type.shape;
    return this.scope('masked_mean', () => {
      const m = this.stopGradient(mask);
      const summed = this.emit('sum', [this.mul(h, this.reshape(m, [batch, seq, 1]))], { axes: [1], keepdims: false }, 'sum'); // [b, d]
      const count = this.sum(m, [1], true); // [b, 1]
      return this.div(summed, this.add(count, this.eq(count, this.scalar(0)))); // an empty row divides by 1
    });
  }

  /**
   * The largest value of each channel over each row's real tokens: h [b, s, d], mask [b, s] (1 real,
   * 0 padding) → [b, d]; max pooling. The gradient goes to the token that holds each maximum
   * (shared evenly among exact ties). A row with no real token gives 0. Padding is pushed down by
   * MASKED_MAX_SINK, which f16 storage can hold.
   */
  maskedMax(h: Value, mask: Value): Value {
    const [batch, seq] = h.type.shape;
    return this.scope('masked_max', () => {
      const m = this.reshape(this.stopGradient(mask), [batch, seq, 1]);
      const sunk = this.stopGradient(this.add(h, this.mul(this.sub(m, this.scalar(1)), this.scalar(MASKED_MAX_SINK))));
      const top = this.max(sunk, [1], true); // [b, 1, d]
      const pick = this.mul(this.eq(sunk, top), m); // [b, s, d]: 1 where a real token holds the maximum
      const count = this.sum(pick, [1], false); // [b, d]
      const picked = this.emit('sum', [this.mul(h, pick)], { axes: [1], keepdims: false }, 'sum');
      return this.div(picked, this.add(count, this.eq(count, this.scalar(0))));
    });
  }

  /** Embedding table [vocab, dim], normal(0, 0.02) as in GPT-2/LLaMA. */
  embedding(idx: Value, name: string, vocab: number, dim: number, opts: { trainable?: boolean } = {}): Value {
    return this.scope(name, () => {
      const table = this.param('weight', [vocab, dim], { init: { kind: 'normal', std: 0.02 }, trainable: opts.trainable ?? true });
      return this.emit('gather', [table, idx], {}, 'lookup');
    });
  }

  softmax(x: Value, axis = -1): Value {
    return this.scope('softmax', () => {
      const a = this.axes(x, [axis], 'softmax');
      const shifted = this.sub(x, this.stopGradient(this.max(x, a, true)));
      const e = this.exp(shifted);
      return this.emit('div', [e, this.sum(e, a, true)], {}, 'out');
    });
  }

  logSoftmax(x: Value, axis = -1): Value {
    return this.scope('log_softmax', () => {
      const a = this.axes(x, [axis], 'log_softmax');
      const shifted = this.sub(x, this.stopGradient(this.max(x, a, true)));
      return this.emit('sub', [shifted, this.log(this.sum(this.exp(shifted), a, true))], {}, 'out');
    });
  }

  /**
   * LayerNorm over the last axis with affine weight (ones) and bias (zeros): one layer_norm node,
   * whose backward keeps only x and the weight (mean and rstd are recomputed).
   */
  layerNorm(x: Value, name: string, opts: { eps?: number; trainable?: boolean } = {}): Value {
    if (this.composed) return this.layerNormComposed(x, name, opts);
    const d = x.type.shape[x.type.shape.length - 1];
    return this.scope(name, () => {
      const gamma = this.param('weight', [d], { init: { kind: 'ones' }, trainable: opts.trainable ?? true });
      const beta = this.param('bias', [d], { init: { kind: 'zeros' }, role: 'bias', trainable: opts.trainable ?? true });
      return this.emit('layer_norm', [x, gamma, beta], { eps: opts.eps ?? 1e-5 }, 'out');
    });
  }

  /** LayerNorm as elementwise ops and reductions (what layerNorm was before layer_norm; for tests). */
  layerNormComposed(x: Value, name: string, opts: { eps?: number; trainable?: boolean } = {}): Value {
    const d = x.type.shape[x.type.shape.length - 1];
    return this.scope(name, () => {
      const gamma = this.param('weight', [d], { init: { kind: 'ones' }, trainable: opts.trainable ?? true });
      const beta = this.param('bias', [d], { init: { kind: 'zeros' }, role: 'bias', trainable: opts.trainable ?? true });
      const mu = this.mean(x, [-1], true);
      const centered = this.sub(x, mu);
      const variance = this.mean(this.mul(centered, centered), [-1], true);
      const normed = this.mul(centered, this.rsqrt(this.add(variance, this.scalar(opts.eps ?? 1e-5))));
      return this.emit('add', [this.mul(normed, gamma), beta], {}, 'out');
    });
  }

  /** RMSNorm over the last axis (LLaMA): x · rsqrt(mean(x²) + eps) · weight, one rms_norm node. */
  rmsNorm(x: Value, name: string, opts: { eps?: number; trainable?: boolean } = {}): Value {
    if (this.composed) return this.rmsNormComposed(x, name, opts);
    const d = x.type.shape[x.type.shape.length - 1];
    return this.scope(name, () => {
      const w = this.param('weight', [d], { init: { kind: 'ones' }, trainable: opts.trainable ?? true });
      return this.emit('rms_norm', [x, w], { eps: opts.eps ?? 1e-6 }, 'out');
    });
  }

  /** RMSNorm as elementwise ops and a reduction (what rmsNorm was before rms_norm; for tests). */
  rmsNormComposed(x: Value, name: string, opts: { eps?: number; trainable?: boolean } = {}): Value {
    const d = x.type.shape[x.type.shape.length - 1];
    return this.scope(name, () => {
      const w = this.param('weight', [d], { init: { kind: 'ones' }, trainable: opts.trainable ?? true });
      const ms = this.mean(this.mul(x, x), [-1], true);
      return this.emit('mul', [this.mul(x, this.rsqrt(this.add(ms, this.scalar(opts.eps ?? 1e-6)))), w], {}, 'out');
    });
  }

  /**
   * Mean cross-entropy of logits [..., C] against integer labels [...], one cross_entropy node.
   * Labels of −100 (IGNORE_INDEX) are ignored: the mean is over the other rows, the count made in
   * the graph from the op's weight column (PyTorch's reduction='mean'). With every row ignored the
   * loss is 0 and so are the gradients (PyTorch gives NaN): the count is taken as at least 1.
   */
  crossEntropy(logits: Value, labels: Value): Value {
    if (this.composed) return this.crossEntropyComposed(logits, labels);
    return this.scope('cross_entropy', () => {
      const stats = this.emit('cross_entropy', [logits, labels], {}, 'stats'); // [..., 3]: loss, L, weight
      const total = this.sum(this.sliceAxis(stats, -1, 0, 1));
      // The count carries no gradient (the weights are piecewise constant).
      const count = this.stopGradient(this.sum(this.sliceAxis(stats, -1, 2, 3)));
      return this.emit('div', [total, this.where(count, count, this.scalar(1))], {}, 'mean');
    });
  }

  /**
   * Mean cross-entropy as log_softmax · one_hot (what crossEntropy was before cross_entropy; for
   * tests). No ignore index: every label must be in [0, C).
   */
  crossEntropyComposed(logits: Value, labels: Value): Value {
    return this.scope('cross_entropy', () => {
      const classes = logits.type.shape[logits.type.shape.length - 1];
      const logp = this.logSoftmax(logits);
      const picked = this.sum(this.mul(logp, this.oneHot(labels, classes)), [-1]);
      return this.neg(this.mean(picked));
    });
  }

  /** Mean squared error. */
  mse(pred: Value, target: Value): Value {
    return this.scope('mse', () => {
      const diff = this.sub(pred, target);
      return this.mean(this.mul(diff, diff));
    });
  }

  /** [b·s, h·hd] → [b, h, s, hd] */
  splitHeads(x: Value, batch: number, seq: number, heads: number): Value {
    const d = x.type.shape[x.type.shape.length - 1];
    if (d % heads !== 0) {
      throw new ShapeError('split_heads', [x], `width ${d} is not divisible by ${heads} heads`, this.loc(), 'choose a head count that divides the model width');
    }
    return this.transpose(this.reshape(x, [batch, seq, heads, d / heads]), [0, 2, 1, 3]);
  }

  /** [b, h, s, hd] → [b·s, h·hd] */
  mergeHeads(x: Value): Value {
    const [batch, heads, seq, hd] = x.type.shape;
    return this.reshape(this.transpose(x, [0, 2, 1, 3]), [batch * seq, heads * hd]);
  }

  /**
   * softmax(q·kᵀ/√hd [+ causal mask] [+ key padding mask])·v over [b, h, s, hd] tensors, as one
   * fused `attention` node (src/ir/attention.ts): k and v may have fewer heads than q (grouped-query
   * attention, each shared by h/hkv query heads in a row, as Hugging Face's repeat_kv), and only the
   * output and one log-sum-exp per row are kept for backward. `keyMask` [b, s] is 1 for a real key
   * and 0 for padding, which no query attends to (BERT's attention_mask). A query row whose every
   * allowed key is padding averages those keys' values (j ≤ i only, when causal). Small
   * attentions lower to the composition instead (BuilderOptions.attention, `impl`: 'auto').
   */
  attention(q: Value, k: Value, v: Value, opts: { causal: boolean; keyMask?: Value; scale?: number; impl?: AttentionImpl }): Value {
    const impl = this.composed ? 'composed' : (opts.impl ?? this.attentionImpl);
    const scores = 4 * q.type.shape[0] * q.type.shape[1] * q.type.shape[2] * k.type.shape[2];
    if (impl === 'composed' || (impl === 'auto' && scores < AUTO_FUSED_ATTENTION_BYTES)) return this.attentionComposed(q, k, v, opts);
    return this.scope('sdpa', () => {
      const [batch, heads, seq] = q.type.shape;
      const dk = q.type.shape[q.type.shape.length - 1];
      const dv = v.type.shape[v.type.shape.length - 1];
      const attrs = { causal: opts.causal, scale: opts.scale ?? 1 / Math.sqrt(dk), masked: opts.keyMask !== undefined };
      const packed = this.emit('attention', opts.keyMask ? [q, k, v, opts.keyMask] : [q, k, v], attrs, 'packed');
      return this.emit('slice', [packed], { starts: [0, 0, 0, 0], ends: [batch, heads, seq, dv] }, 'out');
    });
  }

  /**
   * The same attention as a composition of primitives (matmul, scale, where-masks, softmax,
   * matmul), which keeps the [b, h, s, s] probabilities: for tests, and for models that need them.
   * Causally excluded keys get the score −1e9 here (b.attention excludes them outright), which
   * differs only in a row whose every allowed key is padding.
   */
  attentionComposed(q: Value, k: Value, v: Value, opts: { causal: boolean; keyMask?: Value; scale?: number }): Value {
    return this.scope('sdpa', () => {
      const hd = q.type.shape[q.type.shape.length - 1];
      const seq = q.type.shape[q.type.shape.length - 2];
      const groups = q.type.shape[1] / k.type.shape[1];
      const kk = this.repeatKv(k, groups);
      const vv = this.repeatKv(v, groups);
      let scores = this.mul(this.matmul(q, kk, { transB: true }), this.scalar(opts.scale ?? 1 / Math.sqrt(hd)));
      if (opts.causal) {
        const mask = this.buffer('causal_mask', [seq, seq], { kind: 'tril' });
        scores = this.where(mask, scores, this.scalar(-1e9));
      }
      if (opts.keyMask) {
        const [batch, s] = opts.keyMask.type.shape;
        scores = this.where(this.reshape(opts.keyMask, [batch, 1, 1, s]), scores, this.scalar(-1e9));
      }
      return this.emit('matmul', [this.softmax(scores), vv], { transA: false, transB: false }, 'out');
    });
  }

  /** Rotary position embedding (rotate-half convention of HF LLaMA) on [b, h, s, hd]. */
  rope(x: Value, opts: { base?: number } = {}): Value {
    const shape = x.type.shape;
    const hd = shape[shape.length - 1];
    const seq = shape[shape.length - 2];
    if (hd % 2 !== 0) throw new ShapeError('rope', [x], `head dim ${hd} must be even`, this.loc());
    const base = opts.base ?? 10000;
    const cos = this.buffer(`rope.cos`, [seq, hd / 2], { kind: 'rope', part: 'cos', base, dim: hd });
    const sin = this.buffer(`rope.sin`, [seq, hd / 2], { kind: 'rope', part: 'sin', base, dim: hd });
    return this.scope('rope', () => {
      const x1 = this.sliceAxis(x, -1, 0, hd / 2);
      const x2 = this.sliceAxis(x, -1, hd / 2, hd);
      const r1 = this.sub(this.mul(x1, cos), this.mul(x2, sin));
      const r2 = this.add(this.mul(x2, cos), this.mul(x1, sin));
      return this.emit('concat', [r1, r2], { axis: shape.length - 1 }, 'out');
    });
  }

  /** A frozen, computed tensor shared by the whole model (causal mask, rotary tables). */
  buffer(name: string, shape: readonly number[], init: Init, dtype: DType = 'f32'): Value {
    const key = `${name}[${shape.join(',')}]`;
    const hit = this.buffers.get(key);
    if (hit) return hit;
    const saved = this.scopes.splice(0);
    try {
      const v = this.param(this.names.has(name) ? `${name}.${shape.join('x')}` : name, shape, {
        init,
        trainable: false,
        role: 'buffer',
        dtype,
      });
      this.buffers.set(key, v);
      return v;
    } finally {
      this.scopes.push(...saved);
    }
  }

  // -------------------------------------------------------------------------------------------
  // internals

  private newValue(type: Value['type'], name: string): Value {
    return { id: this.nextId++, type, name };
  }

  private qualify(name: string): string {
    return [...this.scopes, name].filter((s) => s !== '').join('.');
  }

  private claimName(name: string, src: SourceLoc | undefined, what: string): void {
    if (this.names.has(name)) {
      const first = this.names.get(name);
      throw new ModelError(
        fmtLoc(src) || this.displayFile || this.name,
        `${what} name "${name}" is already used${first ? ` (first declared at ${fmtLoc(first)})` : ''}`,
        'give each parameter and input a unique name, e.g. wrap repeated layers in b.scope(i, …)',
      );
    }
    this.names.set(name, src);
  }

  private axes(x: Value, axes: readonly number[] | undefined, op: string): number[] {
    const r = x.type.shape.length;
    try {
      return normAxes(axes ?? Array.from({ length: r }, (_, i) => i), r);
    } catch (e) {
      if (e instanceof ShapeProblem) throw new ShapeError(op, [x], e.message, this.loc(), e.fix);
      throw e;
    }
  }

  /** The first stack frame in the model file, as file:line:column. */
  private loc(): SourceLoc | undefined {
    if (this.fixedSrc) return this.fixedSrc;
    if (!this.file) return undefined;
    // Capturing a stack is cheap; formatting it (source-mapped under tsx) is what made tracing
    // LLaMA-7B slow, thousands of times over. So the frames are captured now and read only when
    // the location is (an error, --locations).
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 64;
    const captured = new Error();
    Error.stackTraceLimit = limit;
    return lazyLoc(captured, this.file, this.displayFile ?? this.file);
  }
}

/**
 * A SourceLoc whose line and column come from `captured`'s first frame in `file`, found when
 * first read (line 0 when no frame is in the file: fmtLoc then gives the file alone).
 */
function lazyLoc(captured: Error, file: string, display: string): SourceLoc {
  let found: { line: number; column?: number } | undefined;
  const frame = () => {
    if (found) return found;
    for (const line of (captured.stack ?? '').split('\n')) {
      const at = line.lastIndexOf(file);
      if (at < 0) continue;
      const m = /:(\d+):(\d+)\)?\s*$/.exec(line.slice(at + file.length));
      if (m) return (found = { line: Number(m[1]), column: Number(m[2]) });
    }
    return (found = { line: 0 });
  };
  return Object.defineProperties({ file: display } as SourceLoc, {
    line: { get: () => frame().line, enumerable: true },
    column: { get: () => frame().column, enumerable: true },
  });
}

function checkShape(shape: readonly number[], what: string, src: SourceLoc | undefined): void {
  if (!Array.isArray(shape) || shape.some((d) => !Number.isInteger(d) || d < 1)) {
    throw new ModelError(fmtLoc(src), `${what} has shape [${String(shape)}]: every dimension must be a positive integer`);
  }
}

/** Resolves one -1 in a reshape target. */
function resolveShape(shape: readonly number[], total: number): number[] {
  const known = shape.filter((d) => d !== -1).reduce((a, d) => a * d, 1);
  return shape.map((d) => (d === -1 ? total / known : d));
}
