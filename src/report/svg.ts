// Shared pieces of lorafa's SVG pictures (plan timelines, loss curves, memory bars).
import type { Category } from '../passes/memory-plan.ts';

export const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

/** One color per memory category, the same in every picture. */
export const CATEGORY_COLORS: Record<Category, string> = {
  frozen: '#9e9e9e',
  trainable: '#1e88e5',
  optimizer: '#8e24aa',
  inputs: '#6d4c41',
  gradients: '#e53935',
  saved: '#fb8c00',
  workspace: '#43a047',
};

/** A W×H picture's margins and the plot area (pw × ph) they leave. */
export interface PlotArea {
  readonly W: number;
  readonly H: number;
  readonly left: number;
  readonly right: number;
  readonly top: number;
  readonly bottom: number;
  readonly pw: number;
  readonly ph: number;
}

export function plotArea(W: number, H: number, m: { left: number; right: number; top: number; bottom: number }): PlotArea {
  return { W, H, ...m, pw: W - m.left - m.right, ph: H - m.top - m.bottom };
}

/** The opening of a W×H picture: the svg element, a white background and a bold title at `left`. */
export function svgOpen(W: number, H: number, title: string, left: number): string[] {
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${left}" y="24" font-size="15" font-weight="bold">${esc(title)}</text>`,
  ];
}
