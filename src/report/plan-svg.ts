// A picture of a memory plan: bytes live along the schedule, stacked by category, with the peak and
// the start of backward marked. Plain SVG text, no dependencies.
import { fmtBytes } from '../ir/format.ts';
import { CATEGORIES, CATEGORY_LABELS, type MemoryPlan } from '../passes/memory-plan.ts';
import { CATEGORY_COLORS, esc, plotArea } from './svg.ts';

const COLORS = CATEGORY_COLORS;

export function planSvg(p: MemoryPlan, title: string): string {
  // right: room for the legend's longest line ("trainable parameters 1023 KiB") at font-size 11.
  const { W, H, left, right, top, pw: plotW, ph: plotH } = plotArea(960, 420, { left: 80, right: 250, top: 40, bottom: 50 });
  const steps = p.timeline.length;
  // One column per pixel at most: each column shows the step with the most live bytes in it.
  const cols = Math.min(steps, plotW);
  const total = (s: number) => CATEGORIES.reduce((a, c) => a + p.timeline[s][c], 0);
  const picks: number[] = [];
  for (let c = 0; c < cols; c++) {
    const from = Math.floor((c * steps) / cols);
    const to = Math.max(from + 1, Math.floor(((c + 1) * steps) / cols));
    let best = from;
    for (let s = from; s < to; s++) if (total(s) > total(best)) best = s;
    picks.push(best);
  }
  const ymax = Math.max(p.peak, 1);
  const x = (c: number) => left + (c / Math.max(cols - 1, 1)) * plotW;
  const y = (bytes: number) => top + plotH - (bytes / ymax) * plotH;
  const parts: string[] = [];
  const base = new Array<number>(cols).fill(0);
  for (const cat of CATEGORIES) {
    const upper = picks.map((s, c) => base[c] + p.timeline[s][cat]);
    if (upper.every((u, c) => u === base[c])) continue;
    const pts = [...upper.map((u, c) => `${x(c).toFixed(1)},${y(u).toFixed(1)}`), ...base.map((b, c) => `${x(c).toFixed(1)},${y(b).toFixed(1)}`).reverse()];
    parts.push(`<polygon points="${pts.join(' ')}" fill="${COLORS[cat]}" fill-opacity="0.85"><title>${esc(CATEGORY_LABELS[cat])}</title></polygon>`);
    upper.forEach((u, c) => (base[c] = u));
  }
  const colOf = (step: number) => Math.min(cols - 1, Math.floor((step * cols) / steps));
  const bx = x(colOf(p.backwardStart));
  const px = x(colOf(p.peakStep));
  const legendTitle = `<text x="${W - right + 15}" y="${top - 8}" font-weight="bold">at peak (step ${p.peakStep}, solid line)</text>`;
  const legend = CATEGORIES.map((c, i) => {
    const ly = top + i * 22;
    return `<rect x="${W - right + 15}" y="${ly}" width="14" height="14" fill="${COLORS[c]}"/><text x="${W - right + 35}" y="${ly + 12}">${esc(CATEGORY_LABELS[c])} ${esc(fmtBytes(p.atPeak[c]))}</text>`;
  });
  const ticks = [0, 0.25, 0.5, 0.75, 1].map(
    (f) => `<line x1="${left - 4}" x2="${left}" y1="${y(f * ymax)}" y2="${y(f * ymax)}" stroke="#333"/><text x="${left - 8}" y="${y(f * ymax) + 4}" text-anchor="end">${esc(fmtBytes(Math.round(f * ymax)))}</text>`,
  );
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="11">
<rect width="100%" height="100%" fill="white"/>
<text x="${left}" y="20" font-size="13" font-weight="bold">${esc(title)}</text>
${parts.join('\n')}
<line x1="${left}" y1="${y(p.peak)}" x2="${left + plotW}" y2="${y(p.peak)}" stroke="#000" stroke-dasharray="4 3"/>
<text x="${left + plotW}" y="${y(p.peak) - 4}" text-anchor="end">peak (arena) ${esc(fmtBytes(p.peak))}, lower bound ${esc(fmtBytes(p.lowerBound))}</text>
<line x1="${px}" y1="${top}" x2="${px}" y2="${top + plotH}" stroke="#000" stroke-width="0.8"/>
<line x1="${bx}" y1="${top}" x2="${bx}" y2="${top + plotH}" stroke="#c62828" stroke-dasharray="6 3"/>
<text x="${bx}" y="${top + plotH + 14}" fill="#c62828" text-anchor="middle">backward starts (step ${p.backwardStart})</text>
<line x1="${left}" y1="${top + plotH}" x2="${left + plotW}" y2="${top + plotH}" stroke="#333"/>
<line x1="${left}" y1="${top}" x2="${left}" y2="${top + plotH}" stroke="#333"/>
${ticks.join('\n')}
<text x="${left + plotW / 2}" y="${H - 15}" text-anchor="middle">schedule step (${p.schedule.length} kernels; each column shows its busiest step)</text>
${legendTitle}
${legend.join('\n')}
</svg>
`;
}
