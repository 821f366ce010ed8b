// Pictures of memory plans. planSvg: one plan's bytes live along the schedule, stacked by category,
// with the peak and the start of backward marked. planCompareSvg: several plans (full, LoRA,
// LoRA-FA) as one live-bytes curve each on shared axes, each peak labelled. Both take an optional
// budget, drawn as a labelled dashed horizontal line. Plain SVG text, no dependencies.
import { fmtBytes } from '../ir/format.ts';
import { CATEGORIES, CATEGORY_LABELS, type MemoryPlan } from '../passes/memory-plan.ts';
import { CATEGORY_COLORS, esc, plotArea } from './svg.ts';

const COLORS = CATEGORY_COLORS;

export interface PlanSvgOptions {
  /** Bytes the step must fit in: a labelled dashed horizontal line (the y axis extends to it). */
  readonly budget?: number;
}

/** For each of `cols` columns over steps [0, span), the busiest step of `totals` in it (-1: past its end). */
function busiestSteps(totals: readonly number[], span: number, cols: number): number[] {
  const picks: number[] = [];
  for (let c = 0; c < cols; c++) {
    const from = Math.floor((c * span) / cols);
    const to = Math.min(totals.length, Math.max(from + 1, Math.floor(((c + 1) * span) / cols)));
    let best = from < totals.length ? from : -1;
    for (let s = from; s < to; s++) if (totals[s] > totals[best]) best = s;
    picks.push(best);
  }
  return picks;
}

function yTicks(left: number, y: (b: number) => number, ymax: number): string[] {
  return [0, 0.25, 0.5, 0.75, 1].map(
    (f) => `<line x1="${left - 4}" x2="${left}" y1="${y(f * ymax)}" y2="${y(f * ymax)}" stroke="#333"/><text x="${left - 8}" y="${y(f * ymax) + 4}" text-anchor="end">${esc(fmtBytes(Math.round(f * ymax)))}</text>`,
  );
}

function budgetLine(budget: number | undefined, left: number, plotW: number, y: (b: number) => number): string {
  if (budget === undefined) return '';
  const by = y(budget).toFixed(1);
  return `<line x1="${left}" y1="${by}" x2="${left + plotW}" y2="${by}" stroke="#d50000" stroke-width="1.5" stroke-dasharray="10 4"/>
<text x="${left + 4}" y="${Number(by) - 4}" fill="#d50000">budget ${esc(fmtBytes(budget))}</text>
`;
}

export function planSvg(p: MemoryPlan, title: string, o: PlanSvgOptions = {}): string {
  // right: room for the legend's longest line ("trainable parameters 1023 KiB") at font-size 11.
  const { W, H, left, right, top, pw: plotW, ph: plotH } = plotArea(960, 420, { left: 80, right: 250, top: 40, bottom: 50 });
  const steps = p.timeline.length;
  // One column per pixel at most: each column shows the step with the most live bytes in it.
  const cols = Math.min(steps, plotW);
  const picks = busiestSteps(p.timeline.map((r) => CATEGORIES.reduce((a, c) => a + r[c], 0)), steps, cols);
  const ymax = Math.max(p.peak, o.budget ?? 0, 1);
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
  const ticks = yTicks(left, y, ymax);
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="11">
<rect width="100%" height="100%" fill="white"/>
<text x="${left}" y="20" font-size="13" font-weight="bold">${esc(title)}</text>
${parts.join('\n')}
<line x1="${left}" y1="${y(p.peak)}" x2="${left + plotW}" y2="${y(p.peak)}" stroke="#000" stroke-dasharray="4 3"/>
<text x="${left + plotW}" y="${y(p.peak) - 4}" text-anchor="end">peak (arena) ${esc(fmtBytes(p.peak))}, lower bound ${esc(fmtBytes(p.lowerBound))}</text>
<line x1="${px}" y1="${top}" x2="${px}" y2="${top + plotH}" stroke="#000" stroke-width="0.8"/>
<line x1="${bx}" y1="${top}" x2="${bx}" y2="${top + plotH}" stroke="#c62828" stroke-dasharray="6 3"/>
<text x="${bx}" y="${top + plotH + 14}" fill="#c62828" text-anchor="middle">backward starts (step ${p.backwardStart})</text>
${budgetLine(o.budget, left, plotW, y)}<line x1="${left}" y1="${top + plotH}" x2="${left + plotW}" y2="${top + plotH}" stroke="#333"/>
<line x1="${left}" y1="${top}" x2="${left}" y2="${top + plotH}" stroke="#333"/>
${ticks.join('\n')}
<text x="${left + plotW / 2}" y="${H - 15}" text-anchor="middle">schedule step (${p.schedule.length} kernels; each column shows its busiest step)</text>
${legendTitle}
${legend.join('\n')}
</svg>
`;
}

/** One curve's colour per mode, the same in every comparison picture. */
export const MODE_COLORS: Readonly<Record<string, string>> = { full: '#e53935', lora: '#1e88e5', 'lora-fa': '#2e7d32' };

/**
 * Several plans on shared axes: x is the schedule step (up to the longest schedule), y the bytes
 * live at that step (all categories). Each plan gets one curve in its colour, a dot at its busiest
 * step, and a dashed line at its peak (the arena, what the runtime allocates) labelled with it;
 * the legend names each plan with its peak and lower bound.
 */
export function planCompareSvg(plans: readonly { readonly label: string; readonly plan: MemoryPlan }[], title: string, o: PlanSvgOptions = {}): string {
  const { W, H, left, right, top, pw: plotW, ph: plotH } = plotArea(960, 420, { left: 80, right: 250, top: 40, bottom: 50 });
  const span = Math.max(1, ...plans.map(({ plan }) => plan.timeline.length));
  const cols = Math.min(span, plotW);
  const ymax = Math.max(1, o.budget ?? 0, ...plans.map(({ plan }) => plan.peak));
  const x = (c: number) => left + (c / Math.max(cols - 1, 1)) * plotW;
  const y = (bytes: number) => top + plotH - (bytes / ymax) * plotH;
  const colorOf = (label: string, i: number) => MODE_COLORS[label] ?? ['#6d4c41', '#8e24aa', '#fb8c00'][i % 3];
  const curves: string[] = [];
  const peakLines: string[] = [];
  // Peak labels sit at the right end of their dashed line, pushed apart when two peaks are close.
  const labelYs = new Array<number>(plans.length).fill(0);
  let last = -Infinity;
  for (const i of plans.map((_, k) => k).sort((a, b) => plans[b].plan.peak - plans[a].plan.peak)) {
    labelYs[i] = last = Math.max(y(plans[i].plan.peak) - 4, last + 13);
  }
  plans.forEach(({ label, plan }, i) => {
    const color = colorOf(label, i);
    const totals = plan.timeline.map((r) => CATEGORIES.reduce((a, c) => a + r[c], 0));
    const picks = busiestSteps(totals, span, cols);
    const pts = picks.flatMap((s, c) => (s < 0 ? [] : [`${x(c).toFixed(1)},${y(totals[s]).toFixed(1)}`]));
    curves.push(`<polyline points="${pts.join(' ')}" fill="none" stroke="${color}" stroke-width="1.8"><title>${esc(label)}: live bytes</title></polyline>`);
    const pc = Math.min(cols - 1, Math.floor((plan.peakStep * cols) / span));
    curves.push(`<circle cx="${x(pc).toFixed(1)}" cy="${y(plan.lowerBound).toFixed(1)}" r="3" fill="${color}"/>`);
    const py = y(plan.peak).toFixed(1);
    peakLines.push(`<line x1="${left}" y1="${py}" x2="${left + plotW}" y2="${py}" stroke="${color}" stroke-dasharray="4 3"/>`);
    peakLines.push(`<text x="${left + plotW}" y="${labelYs[i].toFixed(1)}" text-anchor="end" fill="${color}">${esc(label)} peak ${esc(fmtBytes(plan.peak))}</text>`);
  });
  const legend = plans.map(({ label, plan }, i) => {
    const ly = top + i * 40;
    return `<rect x="${W - right + 15}" y="${ly + 5}" width="14" height="4" fill="${colorOf(label, i)}"/><text x="${W - right + 35}" y="${ly + 12}" font-weight="bold">${esc(label)}: peak ${esc(fmtBytes(plan.peak))}</text><text x="${W - right + 35}" y="${ly + 27}">lower bound ${esc(fmtBytes(plan.lowerBound))} (step ${plan.peakStep})</text>`;
  });
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="11">
<rect width="100%" height="100%" fill="white"/>
<text x="${left}" y="20" font-size="13" font-weight="bold">${esc(title)}</text>
${peakLines.join('\n')}
${curves.join('\n')}
${budgetLine(o.budget, left, plotW, y)}<line x1="${left}" y1="${top + plotH}" x2="${left + plotW}" y2="${top + plotH}" stroke="#333"/>
<line x1="${left}" y1="${top}" x2="${left}" y2="${top + plotH}" stroke="#333"/>
${yTicks(left, y, ymax).join('\n')}
<text x="${left + plotW / 2}" y="${H - 15}" text-anchor="middle">schedule step (${plans.map(({ label, plan }) => `${label} ${plan.schedule.length}`).join(', ')} kernels; each column shows its busiest step)</text>
<text x="${W - right + 15}" y="${top - 8}" font-weight="bold">live bytes per mode (dashed: peak)</text>
${legend.join('\n')}
</svg>
`;
}
