// LoRA-FA's gradient correction (the 2025 LoRA-FA optimizer): with A frozen, the update of B that
// best matches full fine-tuning's update of W = W₀ + s·A·B is the projected gradient
//
//   gB ← (1/s²)·(AᵀA)⁻¹·gB          (s = alpha/r, so 1/s² = (r/alpha)²; alpha/√r under rsLoRA)
//
// (AᵀA)⁻¹ is r×r and A never changes, so it is computed once (float64, on the host) into a frozen
// buffer `<layer>.lora_gc` (init `gram_inverse`), and each step pays one r×r·r×o matmul per
// adapter. The pass rewrites each `grad.<layer>.lora_B` output of the joint graph; the optimizer
// then sees the corrected gradient, for SGD and AdamW alike.
import { Builder } from '../ir/builder.ts';
import { LorafaError } from '../ir/errors.ts';
import type { Graph, Node, Param, Value } from '../ir/types.ts';

export interface GradCorrectionReport {
  /** Per adapter: the B it corrects and the buffer holding (1/s²)·(AᵀA)⁻¹. */
  readonly corrected: readonly { readonly module: string; readonly B: string; readonly buffer: string; readonly factor: number }[];
}

export function applyGradCorrection(g: Graph): { graph: Graph; report: GradCorrectionReport } {
  if (!g.adapters.length) throw new LorafaError(g.file ?? g.name, 'the gradient correction needs LoRA adapters', 'use it with --mode lora-fa');
  const trainableA = g.params.find((p) => p.role === 'lora_A' && p.trainable);
  if (trainableA) {
    throw new LorafaError(trainableA.value.name, 'the gradient correction assumes A is frozen (LoRA-FA); this A is trained', 'use it with --mode lora-fa');
  }
  const b = Builder.extending(g, 'backward');
  const outputs: Record<string, Value> = { ...g.outputs };
  const nodes: Node[] = [...g.nodes];
  const params: Param[] = [...g.params];
  const corrected: { module: string; B: string; buffer: string; factor: number }[] = [];
  for (const a of g.adapters) {
    const key = `grad.${a.B}`;
    const grad = outputs[key];
    if (!grad) throw new LorafaError(a.B, `has no gradient output "${key}"`, 'this is a lorafa bug: report it');
    const factor = 1 / (a.scale * a.scale);
    const B = g.params.find((p) => p.value.name === a.B)!;
    const src = B.src;
    const out = b.on(src, a.module, () => {
      const gc = b.param('lora_gc', [a.rank, a.rank], { init: { kind: 'gram_inverse', of: a.A, scale: factor }, role: 'buffer', trainable: false });
      return b.emit('matmul', [gc, grad], { transA: false, transB: false }, 'lora.grad_corrected');
    });
    const added = b.takeAdditions();
    nodes.push(...added.nodes);
    params.push(...added.params);
    outputs[key] = out;
    corrected.push({ module: a.module, B: a.B, buffer: added.params[0].value.name, factor });
  }
  return { graph: { ...g, nodes, params, outputs, nextId: b.takeAdditions().nextId }, report: { corrected } };
}
