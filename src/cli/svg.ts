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

/** The opening of a W×H picture: the svg element, a white background and a bold title at `left`. */
export function svgOpen(W: number, H: number, title: string, left: number): string[] {
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${left}" y="24" font-size="15" font-weight="bold">${esc(title)}</text>`,
  ];
}
