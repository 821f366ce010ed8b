// What a fine-tune leaves behind besides the weights: the loss curve and the memory picture as
// SVG (plain text, no dependencies), and the numbers as Markdown and JSON.
import { fmtBytes } from '../ir/format.ts';
import { CATEGORIES, CATEGORY_LABELS, type Category } from '../passes/memory-plan.ts';
import { CATEGORY_COLORS, esc, plotArea, svgOpen } from './svg.ts';

export interface Series {
  readonly label: string;
  readonly points: readonly { readonly x: number; readonly y: number }[];
  readonly color: string;
  /** Draw markers rather than a line (evaluations). */
  readonly markers?: boolean;
}

/** Exponential moving average, for a readable training-loss line beside the raw one. */
export function smooth(points: readonly { x: number; y: number }[], beta = 0.9): { x: number; y: number }[] {
  let m = 0;
  return points.map((p, i) => {
    m = beta * m + (1 - beta) * p.y;
    return { x: p.x, y: m / (1 - beta ** (i + 1)) };
  });
}

function niceTicks(lo: number, hi: number, n = 5): number[] {
  const span = hi - lo || 1;
  const step0 = span / n;
  const mag = 10 ** Math.floor(Math.log10(step0));
  const step = [1, 2, 5, 10].map((k) => k * mag).find((s) => s >= step0)!;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

/** A line chart: x = step, y = loss; several series, a legend, axes with ticks. */
export function lineChartSvg(title: string, series: readonly Series[], axes: { x: string; y: string }): string {
  const { W, H, left, top, pw, ph } = plotArea(900, 420, { left: 70, right: 220, top: 40, bottom: 50 });
  const all = series.flatMap((s) => s.points);
  const xmax = Math.max(1, ...all.map((p) => p.x));
  const xmin = Math.min(0, ...all.map((p) => p.x));
  const ys = all.map((p) => p.y).filter(Number.isFinite);
  const ymin = Math.min(0, ...ys);
  const ymax = Math.max(...ys, ymin + 1e-9) * 1.05;
  const X = (x: number) => left + ((x - xmin) / (xmax - xmin || 1)) * pw;
  const Y = (y: number) => top + ph - ((y - ymin) / (ymax - ymin)) * ph;
  const out: string[] = svgOpen(W, H, title, left);
  for (const t of niceTicks(ymin, ymax)) {
    out.push(`<line x1="${left}" x2="${left + pw}" y1="${Y(t).toFixed(1)}" y2="${Y(t).toFixed(1)}" stroke="#eee"/>`);
    out.push(`<text x="${left - 6}" y="${(Y(t) + 4).toFixed(1)}" text-anchor="end">${t}</text>`);
  }
  for (const t of niceTicks(xmin, xmax)) {
    out.push(`<line x1="${X(t).toFixed(1)}" x2="${X(t).toFixed(1)}" y1="${top + ph}" y2="${top + ph + 4}" stroke="#333"/>`);
    out.push(`<text x="${X(t).toFixed(1)}" y="${top + ph + 18}" text-anchor="middle">${t}</text>`);
  }
  out.push(`<rect x="${left}" y="${top}" width="${pw}" height="${ph}" fill="none" stroke="#333"/>`);
  out.push(`<text x="${left + pw / 2}" y="${H - 10}" text-anchor="middle">${esc(axes.x)}</text>`);
  out.push(`<text x="16" y="${top + ph / 2}" text-anchor="middle" transform="rotate(-90 16 ${top + ph / 2})">${esc(axes.y)}</text>`);
  series.forEach((s, i) => {
    const pts = s.points.filter((p) => Number.isFinite(p.y));
    if (s.markers) {
      for (const p of pts) out.push(`<circle cx="${X(p.x).toFixed(1)}" cy="${Y(p.y).toFixed(1)}" r="4" fill="${s.color}"/>`);
    } else if (pts.length) {
      // At most one vertex per pixel column keeps long runs small.
      const stride = Math.max(1, Math.floor(pts.length / pw));
      const d = pts.filter((_, k) => k % stride === 0 || k === pts.length - 1).map((p, k) => `${k ? 'L' : 'M'}${X(p.x).toFixed(1)},${Y(p.y).toFixed(1)}`).join('');
      out.push(`<path d="${d}" fill="none" stroke="${s.color}" stroke-width="1.5"/>`);
    }
    const ly = top + 10 + i * 20;
    out.push(s.markers ? `<circle cx="${left + pw + 22}" cy="${ly}" r="4" fill="${s.color}"/>` : `<line x1="${left + pw + 14}" x2="${left + pw + 30}" y1="${ly}" y2="${ly}" stroke="${s.color}" stroke-width="2"/>`);
    out.push(`<text x="${left + pw + 36}" y="${ly + 4}">${esc(s.label)}</text>`);
  });
  out.push('</svg>');
  return out.join('\n') + '\n';
}

export interface MemoryBar {
  readonly label: string;
  readonly atPeak: Readonly<Record<Category, number>>;
  readonly peak: number;
  /** Bytes counted at createBuffer for this mode's run, when it ran. */
  readonly measured?: number;
}

/** Stacked bars, one per mode, of the bytes live at each plan's peak by category. */
export function memoryBarsSvg(title: string, bars: readonly MemoryBar[]): string {
  const { W, H, left, top, pw, ph } = plotArea(900, 420, { left: 90, right: 230, top: 40, bottom: 60 });
  const ymax = Math.max(1, ...bars.map((b) => Math.max(b.peak, b.measured ?? 0))) * 1.08;
  const Y = (v: number) => top + ph - (v / ymax) * ph;
  const slot = pw / bars.length;
  const bw = Math.min(120, slot * 0.6);
  const out: string[] = svgOpen(W, H, title, left);
  // Ticks at round numbers of KiB / MiB / GiB, not of bytes.
  const unit = 1024 ** Math.max(0, Math.floor(Math.log(ymax) / Math.log(1024)));
  for (const t of niceTicks(0, ymax / unit).map((v) => v * unit)) {
    out.push(`<line x1="${left}" x2="${left + pw}" y1="${Y(t).toFixed(1)}" y2="${Y(t).toFixed(1)}" stroke="#eee"/>`);
    out.push(`<text x="${left - 6}" y="${(Y(t) + 4).toFixed(1)}" text-anchor="end">${esc(fmtBytes(t))}</text>`);
  }
  bars.forEach((b, i) => {
    const x = left + slot * i + (slot - bw) / 2;
    let acc = 0;
    for (const c of CATEGORIES) {
      const v = b.atPeak[c];
      if (!v) continue;
      out.push(`<rect x="${x.toFixed(1)}" y="${Y(acc + v).toFixed(1)}" width="${bw.toFixed(1)}" height="${(Y(acc) - Y(acc + v)).toFixed(1)}" fill="${CATEGORY_COLORS[c]}"><title>${esc(`${CATEGORY_LABELS[c]}: ${fmtBytes(v)}`)}</title></rect>`);
      acc += v;
    }
    out.push(`<text x="${(x + bw / 2).toFixed(1)}" y="${(Y(b.peak) - 6).toFixed(1)}" text-anchor="middle">${esc(fmtBytes(b.peak))}</text>`);
    if (b.measured !== undefined) {
      out.push(`<line x1="${(x - 8).toFixed(1)}" x2="${(x + bw + 8).toFixed(1)}" y1="${Y(b.measured).toFixed(1)}" y2="${Y(b.measured).toFixed(1)}" stroke="black" stroke-width="2" stroke-dasharray="5,3"/>`);
    }
    out.push(`<text x="${(x + bw / 2).toFixed(1)}" y="${top + ph + 18}" text-anchor="middle" font-weight="bold">${esc(b.label)}</text>`);
  });
  out.push(`<rect x="${left}" y="${top}" width="${pw}" height="${ph}" fill="none" stroke="#333"/>`);
  CATEGORIES.forEach((c, i) => {
    const ly = top + 10 + i * 20;
    out.push(`<rect x="${left + pw + 14}" y="${ly - 8}" width="14" height="12" fill="${CATEGORY_COLORS[c]}"/>`);
    out.push(`<text x="${left + pw + 34}" y="${ly + 2}">${esc(CATEGORY_LABELS[c])}</text>`);
  });
  const ly = top + 10 + CATEGORIES.length * 20 + 10;
  out.push(`<line x1="${left + pw + 12}" x2="${left + pw + 30}" y1="${ly}" y2="${ly}" stroke="black" stroke-width="2" stroke-dasharray="5,3"/>`);
  out.push(`<text x="${left + pw + 34}" y="${ly + 4}">measured (createBuffer)</text>`);
  out.push(`<text x="${left}" y="${H - 12}">bytes live at each plan's peak, by category</text>`);
  out.push('</svg>');
  return out.join('\n') + '\n';
}
