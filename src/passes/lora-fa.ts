// LoRA-FA: freeze every A. That is the whole pass: A leaves the gradient targets, so autodiff
// never builds dA, and DCE removes what only dA needed. The full-rank input x of each adapted
// layer then has no backward reader left (unless another gradient needs it) and its lifetime
// ends in the forward pass. `explainLoraFa` reports exactly what that removed.
import type { Graph, Node, Value } from '../ir/types.ts';
import { byteSize, fmtType } from '../ir/types.ts';
import { LorafaError } from '../ir/errors.ts';

export interface LoraFaReport {
  readonly frozenA: readonly string[];
}

export function applyLoraFa(g: Graph): { graph: Graph; report: LoraFaReport } {
  if (!g.adapters.length) {
    throw new LorafaError(g.file ?? g.name, 'LoRA-FA needs LoRA adapters, and the graph has none', 'run the lora pass first (mode lora-fa does)');
  }
  const isA = new Set(g.adapters.map((a) => a.A));
  const params = g.params.map((p) => (isA.has(p.value.name) ? { ...p, trainable: false } : p));
  return { graph: { ...g, params }, report: { frozenA: [...isA] } };
}

/** Forward values that backward nodes read (the saved activations), with their readers. */
export function savedActivations(g: Graph): Map<number, { value: Value; readers: Node[] }> {
  const forward = new Map<number, Value>();
  // Constants (fill) are not activations: codegen folds them into the kernels that read them.
  for (const n of g.nodes) if (n.phase === 'forward' && n.op !== 'fill') forward.set(n.out.id, n.out);
  const saved = new Map<number, { value: Value; readers: Node[] }>();
  for (const n of g.nodes) {
    if (n.phase === 'forward') continue;
    for (const x of n.inputs) {
      const v = forward.get(x.id);
      if (!v) continue;
      const entry = saved.get(x.id) ?? { value: v, readers: [] };
      if (!entry.readers.includes(n)) entry.readers.push(n);
      saved.set(x.id, entry);
    }
  }
  return saved;
}

export interface AdapterInputStatus {
  readonly module: string;
  readonly input: Value;
  readonly saved: boolean;
  /** x is a data input of the step: resident for the whole step whatever backward reads. */
  readonly dataInput: boolean;
  /** Why backward still reads x: the forward nodes whose gradient rules read it. */
  readonly reasons: readonly string[];
}

export interface LoraFaExplanation {
  /** Backward nodes that LoRA builds and LoRA-FA does not (dA and what only it needed). */
  readonly prunedNodes: readonly Node[];
  /** Forward values LoRA's backward reads and LoRA-FA's does not. */
  readonly prunedActivations: readonly Value[];
  readonly prunedBytes: number;
  readonly inputs: readonly AdapterInputStatus[];
}

/** The forward node a backward node works for: its name is `d.<forward value name>.…`. */
function backwardOwner(n: Node): string {
  return n.out.name.replace(/^d\./, '').replace(/\.[^.]+$/, '');
}

function signature(n: Node): string {
  return `${n.op} ${n.out.name} ${fmtType(n.out.type)} ${JSON.stringify(n.attrs)}`;
}

/** Why each adapted layer's input is (not) saved under a joint training graph. */
export function adapterInputs(g: Graph): AdapterInputStatus[] {
  const saved = savedActivations(g);
  const dataInputs = new Set(g.inputs.map((i) => i.value.id));
  // The backward readers of each adapted input (only those: a scalar such as the learning rate
  // has thousands of readers).
  const readers = new Map<number, Node[]>(g.adapters.map((a) => [a.input, []]));
  for (const n of g.nodes) {
    if (n.phase === 'forward') continue;
    for (const x of n.inputs) readers.get(x.id)?.push(n);
  }
  return g.adapters.map((a) => ({
    module: a.module,
    input: findValue(g, a.input),
    saved: saved.has(a.input),
    dataInput: dataInputs.has(a.input),
    reasons: [...new Set((readers.get(a.input) ?? []).map((r) => `backward of "${backwardOwner(r)}" (${r.op} ${r.out.name})`))],
  }));
}

function findValue(g: Graph, id: number): Value {
  for (const i of g.inputs) if (i.value.id === id) return i.value;
  for (const n of g.nodes) if (n.out.id === id) return n.out;
  throw new Error(`value %${id} not in graph`);
}

/**
 * Compares the joint graphs of LoRA and LoRA-FA built from the same LoRA graph (so forward value
 * ids agree): what LoRA-FA pruned.
 */
export function explainLoraFa(lora: Graph, fa: Graph): LoraFaExplanation {
  const faSigs = new Map<string, number>();
  for (const n of fa.nodes) if (n.phase !== 'forward') faSigs.set(signature(n), (faSigs.get(signature(n)) ?? 0) + 1);
  const prunedNodes: Node[] = [];
  for (const n of lora.nodes) {
    if (n.phase === 'forward') continue;
    const k = signature(n);
    const left = faSigs.get(k) ?? 0;
    if (left > 0) faSigs.set(k, left - 1);
    else prunedNodes.push(n);
  }
  const faSaved = savedActivations(fa);
  const prunedActivations = [...savedActivations(lora).values()].filter((s) => !faSaved.has(s.value.id)).map((s) => s.value);
  return {
    prunedNodes,
    prunedActivations,
    prunedBytes: prunedActivations.reduce((acc, v) => acc + byteSize(v.type), 0),
    inputs: adapterInputs(fa),
  };
}
