// The IR's data types. Everything here is plain, immutable data: no WebGPU, no passes.

export type DType = 'f32' | 'f16' | 'bf16' | 'i32';

export interface TensorType {
  readonly dtype: DType;
  readonly shape: readonly number[];
}

/** Where a value or node came from in the user's model file. */
export interface SourceLoc {
  readonly file: string;
  readonly line: number;
  readonly column?: number;
}

/**
 * Which part of a training step produced a node. The memory planner reads this boundary.
 * 'accumulate': gradient accumulation (grad-accum.ts) adding a micro-batch's gradient into its
 * accumulator; it runs on every micro-step, 'update' only on the last one of an optimizer step.
 */
export type Phase = 'forward' | 'backward' | 'accumulate' | 'update';

/** A value written back into a persistent tensor (a parameter or optimizer state) at the end of a step. */
export interface Update {
  readonly target: string;
  readonly value: Value;
}

export interface Value {
  readonly id: number;
  readonly type: TensorType;
  /** Hierarchical user-facing name, e.g. `layers.3.attn.q` or `d.layers.3.attn.q` for a cotangent. */
  readonly name: string;
}

export interface Node {
  readonly op: string;
  readonly inputs: readonly Value[];
  readonly attrs: Readonly<Record<string, unknown>>;
  readonly out: Value;
  readonly phase: Phase;
  readonly src?: SourceLoc;
  /** A forward node's clone that backward recomputes (remat.ts); schedulers keep it late. */
  readonly recompute?: boolean;
}

export type Init =
  | { readonly kind: 'zeros' }
  | { readonly kind: 'ones' }
  | { readonly kind: 'constant'; readonly value: number }
  | { readonly kind: 'normal'; readonly std: number; readonly mean?: number }
  | { readonly kind: 'uniform'; readonly low: number; readonly high: number }
  /** PyTorch's kaiming_uniform_(a): bound = sqrt(6 / ((1 + a²)·fanIn)). */
  | { readonly kind: 'kaiming_uniform'; readonly a: number; readonly fanIn: number }
  /** Tensor `key` (default: the parameter's name) of a safetensors file. */
  | { readonly kind: 'file'; readonly path: string; readonly key?: string }
  /** Rotary-embedding table of shape [seq, dim/2]: cos or sin of pos·base^(-2i/dim). */
  | { readonly kind: 'rope'; readonly part: 'cos' | 'sin'; readonly base: number; readonly dim: number }
  /** Lower-triangular ones of shape [n, n]: the causal mask. */
  | { readonly kind: 'tril' }
  /** start, start+1, … along the last axis, repeated along the others: position ids. */
  | { readonly kind: 'arange'; readonly start: number }
  /**
   * scale·(AᵀA)⁻¹ of the frozen parameter `of` (A: [d, r] → [r, r]), computed in float64 from
   * A's values once they are known (LoRA-FA's gradient correction).
   */
  | { readonly kind: 'gram_inverse'; readonly of: string; readonly scale: number };

/**
 * What a parameter is for; the LoRA passes and the memory planner read it. 'grad_accumulator':
 * the running sum of a parameter's micro-batch gradients (grad-accum.ts), planned as gradients.
 */
export type ParamRole = 'weight' | 'bias' | 'lora_A' | 'lora_B' | 'buffer' | 'optimizer_state' | 'grad_accumulator';

export interface Param {
  readonly value: Value;
  readonly trainable: boolean;
  readonly init: Init;
  readonly role: ParamRole;
  readonly src?: SourceLoc;
}

export interface Input {
  readonly value: Value;
  readonly src?: SourceLoc;
}

/**
 * A linear layer as the user declared it: y = x·W (+ bias). The LoRA pass finds its targets here,
 * by name, the way PEFT's `target_modules` matches module names.
 */
export interface LinearModule {
  readonly name: string;
  readonly weight: string;
  readonly bias?: string;
  /** Id of the matmul node's output (x·W, before the bias). */
  readonly matmulOut: number;
  readonly inFeatures: number;
  readonly outFeatures: number;
  /**
   * How the weight is stored in a PyTorch checkpoint: 'out_in' as nn.Linear ([out, in], the
   * default), 'in_out' as GPT-2's Conv1D ([in, out]). lorafa's own W is [in, out] either way.
   */
  readonly torchLayout?: 'out_in' | 'in_out';
  /**
   * The weight is another module's table used transposed (a language-model head tied to the token
   * embedding: y = x·Eᵀ): it is saved and loaded as that table, once.
   */
  readonly tiedTo?: string;
  readonly src?: SourceLoc;
}

/** An adapter the LoRA pass added: y = x·W + s·(x·A)·B. */
export interface LoraAdapter {
  readonly module: string;
  readonly A: string;
  readonly B: string;
  readonly rank: number;
  readonly alpha: number;
  readonly scale: number;
  /** Id of the adapted layer's full-rank input x. */
  readonly input: number;
  /** Id of the r-wide s·(x·A) that backward reads for dB. */
  readonly projected: number;
}

export interface Graph {
  readonly name: string;
  readonly inputs: readonly Input[];
  readonly params: readonly Param[];
  readonly nodes: readonly Node[];
  readonly outputs: Readonly<Record<string, Value>>;
  readonly linears: readonly LinearModule[];
  readonly adapters: readonly LoraAdapter[];
  /** Write-backs of the optimizer step: each target's new value (in place on a GPU). */
  readonly updates: readonly Update[];
  /** The next free value id; passes that add nodes start numbering here. */
  readonly nextId: number;
  /** The model file the graph was traced from, for error messages. */
  readonly file?: string;
}

export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

export function bytesPerElement(dtype: DType): number {
  return dtype === 'f16' || dtype === 'bf16' ? 2 : 4;
}

export function byteSize(t: TensorType): number {
  return numel(t.shape) * bytesPerElement(t.dtype);
}

export function fmtType(t: TensorType): string {
  return `${t.dtype}[${t.shape.join(',')}]`;
}

export function fmtLoc(src: SourceLoc | undefined): string {
  if (!src) return '';
  if (!src.line) return src.file;
  return src.column !== undefined ? `${src.file}:${src.line}:${src.column}` : `${src.file}:${src.line}`;
}

export function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}
