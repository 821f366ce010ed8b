// Evaluation: the forward plan over the evaluation set. Classifiers are scored on their logits
// (read back; accuracy and mean cross-entropy over the real rows of each batch), language models
// on the plan's own loss (mean cross-entropy per token; perplexity = exp of it).
import type { Dataset, EvalBatch } from '../data/dataset.ts';
import type { StepRunner } from '../runtime/executor.ts';

export interface Metrics {
  /** Mean cross-entropy (or the model's loss) over the evaluation set: per sample, or per token. */
  readonly loss: number;
  /** Classification: fraction correct. */
  readonly accuracy?: number;
  /** Language modelling: exp(loss). */
  readonly perplexity?: number;
  readonly count: number;
}

function argmaxAccuracy(logits: ArrayLike<number>, labels: Int32Array, valid: number, classes: number): { correct: number; loss: number } {
  let correct = 0;
  let loss = 0;
  for (let r = 0; r < valid; r++) {
    let best = 0;
    let max = -Infinity;
    for (let c = 0; c < classes; c++) {
      const v = logits[r * classes + c];
      if (v > max) {
        max = v;
        best = c;
      }
    }
    let z = 0;
    for (let c = 0; c < classes; c++) z += Math.exp(logits[r * classes + c] - max);
    loss += Math.log(z) + max - logits[r * classes + labels[r]];
    if (best === labels[r]) correct++;
  }
  return { correct, loss };
}

export async function evaluate(runner: StepRunner, batches: AsyncIterable<EvalBatch>, kind: Dataset['kind'], classes: number | undefined): Promise<Metrics | undefined> {
  let count = 0;
  let lossSum = 0;
  let correct = 0;
  for await (const b of batches) {
    const loss = await runner.step(b.feeds);
    if (kind === 'classify' && b.labels && classes) {
      const logits = await runner.readOutput('logits');
      const r = argmaxAccuracy(logits, b.labels, b.valid, classes);
      correct += r.correct;
      lossSum += r.loss;
    } else {
      lossSum += loss * b.valid;
    }
    count += b.valid;
  }
  if (!count) return undefined;
  const loss = lossSum / count;
  if (kind === 'classify' && classes) return { loss, accuracy: correct / count, count };
  if (kind === 'lm') return { loss, perplexity: Math.exp(loss), count };
  return { loss, count };
}

export function fmtMetrics(m: Metrics, unit = 'samples'): string {
  if (m.accuracy !== undefined) return `accuracy ${(100 * m.accuracy).toFixed(2)}% (${m.count} ${unit}), loss ${m.loss.toFixed(4)}`;
  if (m.perplexity !== undefined) return `loss ${m.loss.toFixed(4)} nats/token = ${(m.loss / Math.LN2).toFixed(3)} bits/token, perplexity ${m.perplexity.toFixed(2)} (${m.count} tokens)`;
  return `loss ${m.loss.toFixed(4)} (${m.count} ${unit})`;
}

