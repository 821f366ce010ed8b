// Step progress for long runs: a cli-progress bar on a terminal, otherwise a plain line every
// `every` steps (CI logs, pipes).
import cliProgress from 'cli-progress';

export interface StepProgress {
  step(t: number, steps: number, loss: number, ms: number): void;
  end(): void;
}

export function stepProgress(label: string, opts: { lines?: boolean; every?: number; log?: (s: string) => void } = {}): StepProgress {
  const log = opts.log ?? ((s: string) => void process.stdout.write(s + '\n'));
  if (!opts.lines && process.stderr.isTTY) {
    const bar = new cliProgress.SingleBar(
      { format: `${label} {bar} step {value}/{total} loss {loss} | {ms} ms/step`, hideCursor: true, stream: process.stderr },
      cliProgress.Presets.shades_classic,
    );
    let started = false;
    return {
      step(t, steps, loss, ms) {
        if (!started) {
          bar.start(steps, 0, { loss: '-', ms: '-' });
          started = true;
        }
        bar.update(t, { loss: loss.toFixed(4), ms: ms.toFixed(1) });
      },
      end: () => started && bar.stop(),
    };
  }
  let sum = 0;
  let n = 0;
  return {
    step(t, steps, loss, ms) {
      sum += ms;
      n++;
      const every = opts.every ?? Math.max(1, Math.round(steps / 10));
      if (t === 1 || t === steps || t % every === 0) {
        log(`${label} step ${t}/${steps}  loss ${loss.toFixed(4)}  ${(sum / n).toFixed(1)} ms/step`);
        sum = 0;
        n = 0;
      }
    },
    end() {},
  };
}
