// The pipeline: a traced model graph → one joint training graph (forward, scalar loss, gradients
// of exactly the trainable parameters), in mode full, lora or lora-fa.
import { LorafaError } from '../ir/errors.ts';
import { verify } from '../ir/verify.ts';
import type { Graph } from '../ir/types.ts';
import { autodiff, type AutodiffReport } from './autodiff.ts';
import { dce, type DceReport } from './dce.ts';
import { fuseLinearCrossEntropy, type LinearCeReport } from './linear-ce.ts';
import { simplify, type SimplifyReport } from './simplify.ts';
import { applyLora, type LoraOptions, type LoraReport } from './lora.ts';
import { applyLoraFa, explainLoraFa, type LoraFaExplanation, type LoraFaReport } from './lora-fa.ts';
import { applyGradCorrection, type GradCorrectionReport } from './grad-correction.ts';
import { applyGradAccum, type GradAccumReport } from './grad-accum.ts';
import { applyOptimizer, type OptimizerOptions, type OptimizerReport } from './optimizer.ts';
import { gateUpdates, LOSS_SCALE_INPUT, OVERFLOW_OUTPUT, unscaleGradients, type LossScaleReport } from './loss-scale.ts';

export const MODES = ['full', 'lora', 'lora-fa'] as const;
export type Mode = (typeof MODES)[number];

export interface CompileOptions {
  readonly mode: Mode;
  /** Required for lora and lora-fa. */
  readonly lora?: LoraOptions;
  /** Run the verifier after every pass (tests always do; cheap even for LLaMA-7B). */
  readonly verify?: boolean;
  /** Append the optimizer step (the `step` graph, which the memory plan and trainer use). */
  readonly optimizer?: OptimizerOptions;
  /** lora-fa only: correct each B gradient to (1/s²)·(AᵀA)⁻¹·gB (grad-correction.ts). */
  readonly gradCorrection?: boolean;
  /**
   * Gradient accumulation (grad-accum.ts; needs `optimizer`): the step adds each micro-batch's
   * gradient into a persistent accumulator on every run, and the optimizer updates from their
   * mean only on runs with `update` (StepRunner.step, referenceStep). Feeds: accumFeeds(j, K).
   */
  readonly gradAccum?: boolean;
  /**
   * A frozen LM head fused with its cross-entropy (linear-ce.ts) recomputes its logits in
   * backward [chunk, vocab] at a time, chunks of at most this many f32 bytes (default 32 MiB,
   * LINEAR_CE_CHUNK_BYTES): smaller saves memory, larger launches fewer kernels.
   */
  readonly linearCeChunkBytes?: number;
  /**
   * Loss scaling (loss-scale.ts; needs `optimizer`): the backward seed is the fed scalar
   * `optim.loss_scale` S, each gradient is unscaled by the fed `optim.inv_loss_scale` (with
   * gradAccum: by grad_scale = 1/(K·S)), the output `overflow` counts the non-finite gradient
   * elements, and every parameter and optimizer-state write-back is skipped when it is > 0.
   * Feeds: lossScaleFeeds(S, gradAccum).
   */
  readonly lossScaling?: boolean;
  /**
   * lora-fa: also compile the same model as LoRA to say what freezing A pruned (`reports.pruned`,
   * which `compile` prints). Default true; a search that only plans (plan --fit) skips it.
   */
  readonly explain?: boolean;
}

export interface Stage {
  readonly pass: string;
  readonly graph: Graph;
}

export interface Compiled {
  readonly mode: Mode;
  /** The forward graph the gradients are taken of (after lora / lora-fa). */
  readonly forward: Graph;
  /** Forward + backward, simplified (simplify.ts), dead code removed. */
  readonly joint: Graph;
  /** With an optimizer: forward + backward + update, the whole training step. */
  readonly step?: Graph;
  /**
   * Ids (in `step`) of each trainable parameter's final gradient; with gradAccum also of the
   * mean ĝ = acc′·scale the optimizer reads.
   */
  readonly gradients: ReadonlySet<number>;
  /** The graph after each pass, in order, for golden tests and --emit. */
  readonly stages: readonly Stage[];
  readonly reports: {
    readonly lora?: LoraReport;
    readonly loraFa?: LoraFaReport;
    /** Frozen heads whose linear + cross-entropy became one linear_cross_entropy node. */
    readonly linearCe: LinearCeReport;
    readonly autodiff: AutodiffReport;
    readonly simplify: SimplifyReport;
    readonly dce: DceReport;
    readonly optimizer?: OptimizerReport;
    readonly gradCorrection?: GradCorrectionReport;
    readonly gradAccum?: GradAccumReport;
    readonly lossScale?: LossScaleReport;
    /** Lora-fa only: what freezing A removed, against the same model compiled as LoRA. */
    readonly pruned?: LoraFaExplanation;
  };
}

export function isMode(s: string): s is Mode {
  return (MODES as readonly string[]).includes(s);
}

function train(model: Graph, check: (g: Graph, pass: string) => Graph, chunkBytes?: number, lossScaling?: boolean) {
  const wrt = model.params.filter((p) => p.trainable).map((p) => p.value);
  if (!wrt.length) {
    throw new LorafaError(model.file ?? model.name, 'nothing to train: every parameter is frozen', 'mark some parameters trainable, or use mode lora / lora-fa');
  }
  // A frozen head's logits are never kept: linear + cross-entropy become one op (linear-ce.ts).
  const lce = fuseLinearCrossEntropy(model, chunkBytes);
  const g = check(lce.graph, 'linear-ce');
  const ad = autodiff(g, { wrt, seed: lossScaling ? LOSS_SCALE_INPUT : undefined });
  const withGrads = check(ad.graph, 'autodiff');
  const simple = simplify(withGrads);
  const simplified = check(simple.graph, 'simplify');
  const d = dce(simplified);
  return { lce, fused: g, ad, withGrads, simple, simplified, d, joint: check(d.graph, 'dce') };
}

export function compileTraining(model: Graph, opts: CompileOptions): Compiled {
  const check = (g: Graph, pass: string) => (opts.verify ? verify(g, pass) : g);
  if (opts.lossScaling && !opts.optimizer) {
    throw new LorafaError(model.file ?? model.name, 'loss scaling needs an optimizer: it skips the update of a step whose gradients overflowed', 'pass an optimizer (e.g. --optimizer adamw), or drop --loss-scale');
  }
  if (opts.gradAccum && !opts.optimizer) {
    throw new LorafaError(model.file ?? model.name, 'gradient accumulation needs an optimizer: it accumulates gradients for the update', 'pass an optimizer (e.g. --optimizer adamw), or drop --grad-accum');
  }
  const stages: Stage[] = [{ pass: 'trace', graph: check(model, 'trace') }];
  let forward = model;
  let loraReport: LoraReport | undefined;
  let loraFaReport: LoraFaReport | undefined;
  let pruned: LoraFaExplanation | undefined;
  if (opts.mode !== 'full') {
    if (!opts.lora) throw new LorafaError(model.file ?? model.name, `mode ${opts.mode} needs LoRA options (rank, alpha, targets)`);
    const l = applyLora(model, opts.lora);
    forward = check(l.graph, 'lora');
    loraReport = l.report;
    stages.push({ pass: 'lora', graph: forward });
  }
  // Lora-fa: the same LoRA graph, to train with A trainable as the baseline LoRA-FA's pruning is
  // measured against.
  let loraForward: Graph | undefined;
  if (opts.mode === 'lora-fa') {
    loraForward = forward;
    const fa = applyLoraFa(forward);
    forward = check(fa.graph, 'lora-fa');
    loraFaReport = fa.report;
    stages.push({ pass: 'lora-fa', graph: forward });
  }
  const t = train(forward, check, opts.linearCeChunkBytes, opts.lossScaling);
  if (loraForward && opts.explain !== false) pruned = explainLoraFa(train(loraForward, check, opts.linearCeChunkBytes, opts.lossScaling).joint, t.joint);
  if (t.lce.report.fused.length) stages.push({ pass: 'linear-ce', graph: t.fused });
  stages.push({ pass: 'autodiff', graph: t.withGrads }, { pass: 'simplify', graph: t.simplified }, { pass: 'dce', graph: t.joint });
  let joint = t.joint;
  let gradCorrection: GradCorrectionReport | undefined;
  if (opts.gradCorrection) {
    if (opts.mode !== 'lora-fa') {
      throw new LorafaError(model.file ?? model.name, `the gradient correction is for LoRA-FA (A frozen); mode is ${opts.mode}`, 'use --mode lora-fa, or drop --grad-correction');
    }
    const c = applyGradCorrection(joint);
    joint = check(c.graph, 'grad-correction');
    gradCorrection = c.report;
    stages.push({ pass: 'grad-correction', graph: joint });
  }
  const gradIds = (g: Graph) => Object.entries(g.outputs).filter(([k]) => k.startsWith('grad.')).map(([, v]) => v.id);
  const gradients = new Set(gradIds(joint));
  let step: Graph | undefined;
  let optimizerReport: OptimizerReport | undefined;
  let gradAccum: GradAccumReport | undefined;
  let lossScale: LossScaleReport | undefined;
  if (opts.optimizer) {
    let trained = joint;
    if (opts.gradAccum) {
      const a = applyGradAccum(joint);
      trained = check(a.graph, 'grad-accum');
      gradAccum = a.report;
      stages.push({ pass: 'grad-accum', graph: trained });
      for (const id of gradIds(trained)) gradients.add(id);
    }
    let unscaled: readonly string[] = [];
    if (opts.lossScaling) {
      const u = unscaleGradients(trained, { accumulated: !!opts.gradAccum });
      trained = check(u.graph, 'loss-scale');
      unscaled = u.params;
      stages.push({ pass: 'loss-scale', graph: trained });
      for (const id of gradIds(trained)) gradients.add(id);
    }
    const o = applyOptimizer(trained, opts.optimizer);
    optimizerReport = o.report;
    let updated = o.graph;
    if (opts.lossScaling) {
      const gu = gateUpdates(check(updated, 'optimizer'));
      updated = gu.graph;
      lossScale = { params: unscaled, gated: gu.gated, foldedIntoAccumulation: !!opts.gradAccum };
    }
    // Forward outputs other than the loss (logits…) are not read back during training.
    const trimmed = { ...updated, outputs: { loss: updated.outputs.loss, ...(opts.lossScaling ? { [OVERFLOW_OUTPUT]: updated.outputs[OVERFLOW_OUTPUT] } : {}) } };
    step = check(dce(check(trimmed, 'optimizer')).graph, 'dce');
    stages.push({ pass: 'optimizer', graph: step });
  }
  return {
    mode: opts.mode,
    forward,
    joint,
    step,
    gradients,
    stages,
    reports: { lora: loraReport, loraFa: loraFaReport, linearCe: t.lce.report, autodiff: t.ad.report, simplify: t.simple.report, dce: t.d.report, optimizer: optimizerReport, pruned, gradCorrection, gradAccum, lossScale },
  };
}
