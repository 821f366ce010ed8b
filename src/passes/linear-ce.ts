// Frozen LM head + cross-entropy → one linear_cross_entropy node (src/ir/linear-ce.ts).
//
// Under LoRA and LoRA-FA the LM head is frozen: nothing needs its [tokens, vocab] logits but the
// cross-entropy, whose backward would keep them (500 MiB at Llama-2-7B, 8 × 1024, bf16). Where a
// cross_entropy reads a matmul h·w (or h·wᵀ, a head tied to an embedding) whose w is a frozen
// parameter and whose logits nothing else reads, the pair becomes one linear_cross_entropy node:
// its forward never writes the logits, its backward recomputes them a chunk of tokens at a time.
// A trainable head (full fine-tuning, modules_to_save, a LoRA-adapted head) is left alone: its dW
// needs every row's logit gradient anyway. The matmul is left in place for any graph output that
// names it (logits), and DCE removes it where nothing does (the training step).
import { LINEAR_CE_CHUNK_BYTES, linearCeChunk } from '../ir/linear-ce.ts';
import type { Graph, Node } from '../ir/types.ts';

export interface LinearCeReport {
  /** The heads fused (their logits' names, e.g. `lm_head.xW`). */
  readonly fused: readonly string[];
}

/** `chunkBytes`: the backward recomputes [chunk, vocab] f32 logits of at most this size at a time. */
export function fuseLinearCrossEntropy(g: Graph, chunkBytes = LINEAR_CE_CHUNK_BYTES): { graph: Graph; report: LinearCeReport } {
  const frozen = new Set(g.params.filter((p) => !p.trainable).map((p) => p.value.id));
  const producer = new Map<number, Node>();
  const readers = new Map<number, number>();
  for (const n of g.nodes) {
    producer.set(n.out.id, n);
    for (const x of n.inputs) readers.set(x.id, (readers.get(x.id) ?? 0) + 1);
  }
  const fused: string[] = [];
  const nodes = g.nodes.map((n) => {
    if (n.op !== 'cross_entropy') return n;
    const [logits, labels] = n.inputs;
    const z = producer.get(logits.id);
    if (!z || z.op !== 'matmul' || (z.attrs as { transA: boolean }).transA) return n;
    const [h, w] = z.inputs;
    if (h.type.shape.length !== 2 || w.type.shape.length !== 2 || labels.type.shape.length !== 1) return n;
    if (!frozen.has(w.id) || readers.get(logits.id) !== 1) return n;
    fused.push(logits.name);
    const [rows, vocab] = logits.type.shape;
    const attrs = { transB: (z.attrs as { transB: boolean }).transB, chunk: linearCeChunk(rows, vocab, chunkBytes) };
    return { ...n, op: 'linear_cross_entropy', inputs: [h, w, labels], attrs };
  });
  return { graph: fused.length ? { ...g, nodes } : g, report: { fused } };
}
