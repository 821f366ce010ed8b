// Step progress: a cli-progress bar on a terminal, plain lines otherwise (CI logs, pipes). Both
// show the step, the loss, ms per step, throughput (tokens/s or samples/s), the time left and the
// GPU bytes, and what the step adds (the loss scaler's scale and counters). The first step of a process includes the driver's shader compilation, so the rate
// and the ETA are taken from the steps after it.
import cliProgress from 'cli-progress';

export type ProgressMode = 'auto' | 'bar' | 'lines' | 'none';
export const PROGRESS_MODES: readonly ProgressMode[] = ['auto', 'bar', 'lines', 'none'];

export interface Progress {
  /** `detail`: shown after the loss (the loss scaler's state: "scale 65536, 2 skipped"). */
  step(t: number, loss: number, ms: number, detail?: string): void;
  /** A line printed above the bar (checkpoints, evaluations). */
  note(line: string): void;
  end(): void;
}

export interface ProgressOptions {
  readonly mode: ProgressMode;
  /** The step the run starts after, and the last step. */
  readonly first: number;
  readonly total: number;
  /** Throughput unit and units per optimizer step (batch × grad-accum rows × tokens per row). */
  readonly unit: 'tokens' | 'samples';
  readonly perStep: number;
  /** Extra text at the end of each line, e.g. "GPU 1.2 MiB". */
  readonly suffix?: string;
  /** Plain lines every N steps (default: about ten lines per run). */
  readonly every?: number;
  readonly log: (line: string) => void;
}

export function fmtDuration(s: number): string {
  if (!Number.isFinite(s)) return '?';
  s = Math.max(0, Math.round(s));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  return h ? `${h}h${String(m).padStart(2, '0')}m` : m ? `${m}m${String(sec).padStart(2, '0')}s` : `${sec}s`;
}

export function progress(o: ProgressOptions): Progress {
  if (o.mode === 'none') return { step() {}, note() {}, end() {} };
  const times: number[] = [];
  const steadyMs = () => {
    const xs = times.length > 1 ? times.slice(1) : times;
    return xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
  };
  const rate = (ms: number) => `${Math.round((o.perStep * 1000) / Math.max(ms, 1e-3)).toLocaleString('en-US')} ${o.unit}/s`;
  const eta = (t: number) => fmtDuration(((o.total - t) * steadyMs()) / 1000);
  const suffix = o.suffix ? ` | ${o.suffix}` : '';
  if (o.mode === 'bar' || (o.mode === 'auto' && process.stderr.isTTY)) {
    const bar = new cliProgress.SingleBar(
      { format: `step {value}/{total} {bar} loss {loss}{detail} | {ms} ms/step | {rate} | ETA {left}${suffix}`, hideCursor: true, stream: process.stderr },
      cliProgress.Presets.shades_classic,
    );
    bar.start(o.total, o.first, { loss: '-', detail: '', ms: '-', rate: '-', left: '-' });
    return {
      step(t, loss, ms, detail) {
        times.push(ms);
        const m = steadyMs();
        bar.update(t, { loss: loss.toFixed(4), detail: detail ? ` (loss ${detail})` : '', ms: m.toFixed(1), rate: rate(m), left: eta(t) });
      },
      note(line) {
        process.stderr.write('\r\x1b[2K');
        o.log(line);
      },
      end: () => bar.stop(),
    };
  }
  const every = o.every ?? Math.max(1, Math.round((o.total - o.first) / 10));
  let sum = 0;
  let n = 0;
  return {
    step(t, loss, ms, detail) {
      times.push(ms);
      sum += ms;
      n++;
      if (t === o.first + 1 || t === o.total || t % every === 0) {
        // The mean since the previous line (the first line: the first step alone).
        const mean = sum / n;
        o.log(`step ${t}/${o.total}  loss ${loss.toFixed(4)}${detail ? `  (loss ${detail})` : ''}  ${mean.toFixed(1)} ms/step  ${rate(mean)}  ETA ${eta(t)}${o.suffix ? `  ${o.suffix}` : ''}`);
        sum = 0;
        n = 0;
      }
    },
    note: o.log,
    end() {},
  };
}
