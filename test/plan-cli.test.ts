// `lorafa plan`, in process: the table, --compare, --top, --json (golden for the toy MLP in each
// mode), --svg, and bad input. Every number printed is checked against planMemory's own plan of the
// same step, so the report cannot drift from the planner.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, afterEach, beforeEach, describe, expect, test, vi } from 'vitest';
import { loadModel, trace } from '../src/model/load.ts';
import { main } from '../src/cli/main.ts';
import { fmtBytes } from '../src/ir/format.ts';
import { compileTraining, MODES, type Mode } from '../src/passes/compile.ts';
import { alignUp, CATEGORIES, CATEGORY_LABELS, LIMIT_PRESETS, planMemory, type Limits, type MemoryPlan, type StorageDType } from '../src/passes/memory-plan.ts';
import type { OptimizerOptions } from '../src/passes/optimizer.ts';
import { planSvg } from '../src/report/plan-svg.ts';
import { ROOT } from './helpers.ts';

let out: string[];
let err: string[];
class Exit extends Error {
  constructor(readonly code: number | undefined) {
    super(`process.exit(${code})`);
  }
}
beforeEach(() => {
  out = [];
  err = [];
  vi.spyOn(console, 'log').mockImplementation((...a) => void out.push(a.join(' ')));
  vi.spyOn(console, 'error').mockImplementation((...a) => void err.push(a.join(' ')));
  vi.spyOn(process.stdout, 'write').mockImplementation((s) => (out.push(String(s)), true));
  vi.spyOn(process.stderr, 'write').mockImplementation((s) => (err.push(String(s)), true));
  // commander exits on a rejected option value: record the code instead.
  vi.spyOn(process, 'exit').mockImplementation((code) => {
    throw new Exit(typeof code === 'number' ? code : undefined);
  });
});
afterEach(() => {
  vi.restoreAllMocks();
  process.exitCode = undefined;
});

/** Runs `lorafa plan …` in process: the exit code main returns, or the one commander exits with. */
async function plan(...args: string[]): Promise<number> {
  try {
    return await main(['plan', ...args]);
  } catch (e) {
    if (e instanceof Exit) return e.code ?? 0;
    throw e;
  }
}
const stdout = () => out.join('\n');
const stderr = () => err.join('');

/** planMemory of the same step the CLI plans (its defaults: rank 8, alpha 2·rank, the model's targets). */
async function expectedPlan(
  model: string,
  mode: Mode,
  o: { config?: string; rank?: number; optimizer?: OptimizerOptions; dtype?: StorageDType; limits?: Limits; overrides?: Record<string, number>; composed?: boolean; attention?: 'fused' | 'composed' } = {},
): Promise<MemoryPlan> {
  const m = await loadModel(resolve(ROOT, 'models', `${model}.ts`));
  const graph = trace(m, o.config, o.overrides, { composed: o.composed, attention: o.attention });
  const rank = o.rank ?? 8;
  const c = compileTraining(graph, {
    mode,
    lora: { rank, alpha: 2 * rank, targets: m.def.defaultTargets ?? [], modulesToSave: m.def.modulesToSave },
    optimizer: o.optimizer ?? { kind: 'adamw' },
    // The step an f16 run trains: with dynamic loss scaling, as `plan --dtype f16` plans it.
    lossScaling: o.dtype === 'f16',
  });
  return planMemory(c.step!, { limits: o.limits ?? LIMIT_PRESETS.discrete, dtype: o.dtype ?? 'f32', gradients: c.gradients });
}

/** The three plans `--compare` makes, as the CLI makes them (LoRA-FA seeded with LoRA's layout). */
async function comparePlans(model: string, o: { rank?: number } = {}): Promise<Record<Mode, MemoryPlan>> {
  const m = await loadModel(resolve(ROOT, 'models', `${model}.ts`));
  const graph = trace(m, undefined, undefined);
  const rank = o.rank ?? 8;
  const lora = { rank, alpha: 2 * rank, targets: m.def.defaultTargets ?? [], modulesToSave: m.def.modulesToSave };
  const plans = {} as Record<Mode, MemoryPlan>;
  let loraStep: Parameters<typeof planMemory>[0] | undefined;
  for (const mode of MODES) {
    const c = compileTraining(graph, { mode, lora, optimizer: { kind: 'adamw' } });
    const dominating = mode === 'lora-fa' && loraStep ? { graph: loraStep, plan: plans.lora } : undefined;
    plans[mode] = planMemory(c.step!, { limits: LIMIT_PRESETS.discrete, dtype: 'f32', gradients: c.gradients, dominating });
    if (mode === 'lora') loraStep = c.step!;
  }
  return plans;
}

const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
/** A table row: the label, then these cells separated by runs of spaces. */
const row = (label: string, ...cells: string[]) => new RegExp(`^${esc(label)}\\s+${cells.map(esc).join('\\s+')}(\\s|$)`, 'm');

// ---------------------------------------------------------------------------------------------

describe('the table', () => {
  test('every category, the lower bound, the peak and fragmentation, as planMemory computes them', async () => {
    expect(await plan('models/llama.ts', '--rank', '4', '--dtype', 'f16', '--limits', 'webgpu')).toBe(0);
    const text = stdout();
    const p = await expectedPlan('llama', 'lora-fa', { rank: 4, dtype: 'f16', limits: LIMIT_PRESETS.webgpu });
    expect(text).toMatch(/^model\s+models\/llama\.ts, config toy: batch=2 seq=8 /m);
    expect(text).toMatch(/^step\s+lora-fa rank=4 alpha=8, 4 adapted layers; optimizer AdamW weight_decay=0\.01; storage f16 \(trainable parameters, gradients and optimizer state in f32\)/m);
    expect(text).toMatch(/limits webgpu: alignment 256 B, max binding 128 MiB, max buffer 256 MiB/);
    expect(text).toMatch(new RegExp(`schedule ${p.scheduleName}: ${p.schedule.length} kernels, backward from step ${p.backwardStart};`));
    expectTable(text, p);
  });

  test.each([
    ['full mode (fragmentation > 1)', ['--mode', 'full'], { rank: 8 }, 'full'],
    ['limits that split every region', ['--max-buffer-size', '9KiB', '--max-binding-size', '8KiB', '--alignment', '64'], { limits: { alignment: 64, maxBindingSize: 8192, maxBufferSize: 9216 } }, 'lora-fa'],
  ] as const)('%s: the numbers are planMemory\'s', async (_, args, o, mode) => {
    expect(await plan('models/llama.ts', ...args)).toBe(0);
    const p = await expectedPlan('llama', mode, o);
    if (mode === 'full') expect(p.peak, 'the case has fragmentation').toBeGreaterThan(p.lowerBound);
    else expect(p.buffers.filter((b) => b.region === 'arena').length, 'the case splits the arena').toBeGreaterThan(1);
    expectTable(stdout(), p);
  });
});

describe('--composed and --attention', () => {
  test.each([
    ['--composed', { composed: true }],
    ['--attention composed', { attention: 'composed' }],
    ['--attention fused', { attention: 'fused' }],
  ] as const)('%s: the plan of the model traced that way, and --composed keeps more than the fused ops', async (flag, o) => {
    expect(await plan('models/llama.ts', ...flag.split(' '), '--limits', 'none')).toBe(0);
    const p = await expectedPlan('llama', 'lora-fa', { ...o, limits: LIMIT_PRESETS.none });
    expectTable(stdout(), p);
    const fused = await expectedPlan('llama', 'lora-fa', { attention: 'fused', limits: LIMIT_PRESETS.none });
    if (flag === '--composed') expect(p.atPeak.saved + p.atPeak.workspace).toBeGreaterThan(fused.atPeak.saved + fused.atPeak.workspace);
    if (flag === '--attention composed') expect(p.lowerBound).toBeGreaterThan(fused.lowerBound);
  });

  test('an unknown --attention is a usage error naming the choices', async () => {
    expect(await plan('models/llama.ts', '--attention', 'flash')).toBe(2);
    expect(stderr()).toMatch(/--attention <impl>.*Allowed choices are auto, fused, composed/s);
  });
});

function expectTable(text: string, p: MemoryPlan) {
  for (const c of CATEGORIES) {
    expect(text, c).toMatch(row(CATEGORY_LABELS[c], fmtBytes(p.atPeak[c]), `${((100 * p.atPeak[c]) / p.lowerBound).toFixed(1)}%`));
  }
  const persistent = p.buffers.filter((b) => b.region === 'persistent');
  const arena = p.buffers.filter((b) => b.region === 'arena');
  const sum = (bs: typeof p.buffers) => fmtBytes(bs.reduce((s, b) => s + b.bytes, 0));
  expect(text).toMatch(row('lower bound', fmtBytes(p.lowerBound), `live bytes at step ${p.peakStep}`));
  expect(text).toMatch(row('peak', fmtBytes(p.peak), `${p.buffers.length} buffers: ${persistent.length} persistent (${sum(persistent)}), ${arena.length} arena (${sum(arena)})`));
  expect(text).toMatch(row('fragmentation', p.fragmentation.toFixed(3), 'peak ÷ lower bound'));
  // The rows add up: the categories at the peak step are the lower bound.
  expect(CATEGORIES.reduce((s, c) => s + p.atPeak[c], 0)).toBe(p.lowerBound);
}

describe('--compare', () => {
  test('full, lora and lora-fa side by side with ratios; every number is planMemory\'s', async () => {
    expect(await plan('models/llama.ts', '--compare', '--rank', '4', '--optimizer', 'sgd', '--momentum', '0.9')).toBe(0);
    const text = stdout();
    const opt: OptimizerOptions = { kind: 'sgd', momentum: 0.9 };
    const plans = Object.fromEntries(await Promise.all(MODES.map(async (m) => [m, await expectedPlan('llama', m, { rank: 4, optimizer: opt })] as const))) as Record<Mode, MemoryPlan>;
    expect(text).toMatch(/^category\s+full\s+lora\s+lora-fa$/m);
    expect(text).toMatch(/optimizer SGD momentum=0\.9; storage f32; limits discrete/);
    for (const c of CATEGORIES) expect(text, c).toMatch(row(CATEGORY_LABELS[c], ...MODES.map((m) => fmtBytes(plans[m].atPeak[c]))));
    expect(text).toMatch(row('lower bound', ...MODES.map((m) => fmtBytes(plans[m].lowerBound))));
    expect(text).toMatch(row('peak', ...MODES.map((m) => fmtBytes(plans[m].peak))));
    expect(text).toMatch(row('fragmentation', ...MODES.map((m) => plans[m].fragmentation.toFixed(3))));
    expect(text).toMatch(/^planning time\s+\d+ ms\s+\d+ ms\s+\d+ ms$/m);
    const r = (a: Mode, b: Mode, f: (p: MemoryPlan) => number) => `${(f(plans[a]) / f(plans[b])).toFixed(2)}×`;
    const peak = (p: MemoryPlan) => p.peak;
    expect(text).toContain(`LoRA ÷ LoRA-FA = ${r('lora', 'lora-fa', peak)}   full ÷ LoRA-FA = ${r('full', 'lora-fa', peak)}   full ÷ LoRA = ${r('full', 'lora', peak)}`);
    // Saved activations: every one is live when backward starts, whatever the peak step (in
    // aligned bytes, as every row of the table).
    const saved = (p: MemoryPlan) => p.tensors.filter((t) => t.category === 'saved').reduce((s, t) => s + alignUp(t.bytes, p.limits.alignment), 0);
    expect(text).toContain(`saved activations when backward starts: ${MODES.map((m) => `${m} ${fmtBytes(saved(plans[m]))}`).join(', ')}`);
    expect(text).toContain(`LoRA ÷ LoRA-FA = ${r('lora', 'lora-fa', saved)}   LoRA − LoRA-FA = ${fmtBytes(saved(plans.lora) - saved(plans['lora-fa']))}`);
    // q_proj and v_proj share one [b·s, d] = [16, 32] f32 input per layer, 2 layers: 4 KiB.
    expect(saved(plans.lora) - saved(plans['lora-fa'])).toBe(2 * 16 * 32 * 4);
  });

  test('llama 7b plans in all three modes; LoRA-FA saves 32 × [8·1024, 4096] f32 = 4 GiB of activations', async () => {
    expect(await plan('models/llama.ts', '--config', '7b', '--compare')).toBe(0);
    const text = stdout();
    expect(text).toMatch(/^model\s+models\/llama\.ts, config 7b: batch=8 seq=1024 /m);
    expect(text).toMatch(/^peak\s+\d+(\.\d+)? GiB\s+\d+(\.\d+)? GiB\s+\d+(\.\d+)? GiB$/m);
    expect(text).toMatch(/LoRA − LoRA-FA = 4\.00 GiB$/m);
    expect(err).toEqual([]);
  });
});

describe('--top', () => {
  test('the N largest saved activations with names and shapes, and each adapted layer\'s input', async () => {
    expect(await plan('models/mlp.ts', '--compare', '--top', '3', '--rank', '4')).toBe(0);
    const text = stdout();
    for (const mode of MODES) {
      const p = await expectedPlan('mlp', mode, { rank: 4 });
      const saved = p.tensors.filter((t) => t.category === 'saved').sort((a, b) => b.bytes - a.bytes || a.start - b.start);
      const section = text.slice(text.indexOf(`[${mode}] `)).split(/\n\[/)[0];
      const atBackward = saved.reduce((s, t) => s + alignUp(t.bytes, p.limits.alignment), 0);
      expect(section, mode).toMatch(new RegExp(`^\\[${esc(mode)}\\] largest saved activations \\(${saved.length} in all, ${esc(fmtBytes(atBackward))} when backward starts\\):$`, 'm'));
      const listed = [...section.matchAll(/^ {2}(\S+)\s+(\w+\[[\d,]*\])\s+(\d+(?:\.\d+)? \w+)\s+steps (\d+)–(\d+)$/gm)];
      expect(listed.map((m) => [m[1], m[2], m[3], Number(m[4]), Number(m[5])]), mode).toEqual(
        saved.slice(0, 3).map((t) => [t.name, `${t.dtype}[${t.shape.join(',')}]`, fmtBytes(t.bytes), t.start, t.end]),
      );
    }
    const sections = Object.fromEntries(MODES.map((m) => [m, text.slice(text.indexOf(`[${m}] `)).split(/\n\[/)[0]]));
    expect(sections.full).not.toMatch(/adapted layers/);
    // 2 adapted layers, under --top 3: the list is whole, with no "… more" line.
    expect(text).not.toMatch(/more adapted layers/);
    // fc1 reads the data input x; fc2 reads fc1's output, which only LoRA's dA keeps.
    expect(sections.lora).toMatch(/^ {2}fc1\s+x f32\[4,12\]\s+data input \(persistent\)$/m);
    expect(sections.lora).toMatch(/^ {2}fc2\s+fc1\.relu f32\[4,16\]\s+SAVED \(256 B\): read by backward of "fc2\.lora\.xA"/m);
    expect(sections['lora-fa']).toMatch(/^ {2}fc1\s+x f32\[4,12\]\s+data input \(persistent\)$/m);
    expect(sections['lora-fa']).toMatch(/^ {2}fc2\s+fc1\.relu f32\[4,16\]\s+not saved: its lifetime ends in the forward pass$/m);
  });

  test('--top N limits the adapted-layer list too: llama 7b --top 5 lists 5 of its 64 and says how many more', async () => {
    expect(await plan('models/llama.ts', '--config', '7b', '--top', '5')).toBe(0);
    const text = stdout();
    const list = text.slice(text.indexOf('adapted layers, full-rank input x:')).split('\n').slice(1);
    const rows = list.filter((l) => /^ {2}layers\.\d+\.self_attn\.[qv]_proj\s/.test(l));
    // The first five, in model order: q and v of layers 0 and 1, q of layer 2.
    expect(rows.map((l) => l.trim().split(/\s+/)[0])).toEqual([
      'layers.0.self_attn.q_proj',
      'layers.0.self_attn.v_proj',
      'layers.1.self_attn.q_proj',
      'layers.1.self_attn.v_proj',
      'layers.2.self_attn.q_proj',
    ]);
    // 32 layers × (q_proj, v_proj) = 64 adapted layers: 59 not listed.
    expect(list[5]).toBe('  … and 59 more adapted layers (--top 64 to list all)');
    // The saved-activation list stays limited as before.
    expect(text.match(/^ {2}\S+\s+\w+\[[\d,]*\]\s+\S+ \w+\s+steps \d+–\d+$/gm)).toHaveLength(5);
  });

  test('an adapted layer whose input another op needs says which op', async () => {
    // --top 3: all three adapted layers (two query, the classifier's out_proj) are listed.
    expect(await plan('models/encoder.ts', '--targets', 'query,out_proj', '--rank', '2', '--top', '3')).toBe(0);
    const text = stdout();
    expect(text).toMatch(/^\[lora-fa\] largest saved activations \(\d+ in all/m);
    expect(text.match(/^ {2}\S+\s+\w+\[[\d,]*\]\s+\S+ \w+\s+steps \d+–\d+$/gm)).toHaveLength(3);
    expect(text).not.toMatch(/more adapted layers/);
    expect(text).toMatch(/^ {2}classifier\.out_proj\s+classifier\.tanh f32\[2,16\]\s+SAVED \(128 B\): read by backward of "classifier\.out_proj\.xW" .*backward of "classifier\.tanh"/m);
    expect(text).toMatch(/^ {2}layers\.0\.attention\.query\s+layers\.0\.ln1\.out f32\[16,16\]\s+not saved/m);
  });
});

describe('--json', () => {
  test.each(MODES)('%s: the whole plan, equal to planMemory\'s, golden for the toy MLP', async (mode) => {
    expect(await plan('models/mlp.ts', '--mode', mode, '--rank', '4', '--json')).toBe(0);
    const text = out.join('');
    const doc = JSON.parse(text);
    const p = await expectedPlan('mlp', mode, { rank: 4 });
    expect(doc).toMatchObject({ model: 'models/mlp.ts', config: 'toy', mode, dtype: 'f32', peak: p.peak, lowerBound: p.lowerBound, peakStep: p.peakStep, atPeak: p.atPeak });
    expect(doc.schedule).toEqual({ order: p.scheduleName, steps: p.schedule.length, backwardStart: p.backwardStart });
    expect(doc.tensors).toEqual(p.tensors.map((t) => ({ name: t.name, shape: t.shape, dtype: t.dtype, bytes: t.bytes, category: t.category, buffer: t.buffer, offset: t.offset, start: t.start, end: t.end })));
    expect(doc.buffers).toEqual(p.buffers);
    // Sanity of what the golden file pins down.
    const saved = new Set(doc.tensors.filter((t: { category: string }) => t.category === 'saved').map((t: { name: string }) => t.name));
    if (mode === 'lora-fa') {
      expect(saved.has('fc1.relu'), 'fc2\'s input is not saved under lora-fa').toBe(false);
      expect(doc.adapters).toEqual([
        { module: 'fc1', input: 'x', inputSaved: false, dataInput: true, reasons: [] },
        { module: 'fc2', input: 'fc1.relu', inputSaved: false, dataInput: false, reasons: [] },
      ]);
      expect(doc.tensors.filter((t: { name: string }) => /lora_A/.test(t.name)).map((t: { category: string }) => t.category)).toEqual(['frozen', 'frozen']);
    } else {
      expect(saved.has('fc1.relu'), `fc2's input is saved under ${mode} (dA or dW reads it)`).toBe(true);
    }
    if (mode === 'full') expect(doc.adapters).toEqual([]);
    expect(doc.tensors.some((t: { name: string }) => t.name.startsWith('grad.'))).toBe(false);
    await expect(text).toMatchFileSnapshot(`__golden__/mlp.${mode}.plan.json`);
  });
});

describe('--svg', () => {
  const dir = mkdtempSync(join(tmpdir(), 'lorafa-plan-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  test('writes an SVG with the peak label and the start of backward', async () => {
    const file = join(dir, 'plan.svg');
    expect(await plan('models/llama.ts', '--rank', '4', '--svg', file)).toBe(0);
    expect(stdout()).toContain(`wrote ${file}`);
    const svg = readFileSync(file, 'utf8');
    const p = await expectedPlan('llama', 'lora-fa', { rank: 4 });
    expect(svg).toMatch(/^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
    expect(svg.trimEnd().endsWith('</svg>')).toBe(true);
    expect(svg).toContain(`peak (arena) ${fmtBytes(p.peak)}, lower bound ${fmtBytes(p.lowerBound)}`);
    expect(svg).toContain(`backward starts (step ${p.backwardStart})`);
    expect(svg).toContain('models/llama.ts (toy), lora-fa, AdamW weight_decay=0.01, f32');
    // One filled area per category with bytes in it, each with its label.
    for (const c of CATEGORIES) if (p.timeline.some((r) => r[c] > 0)) expect(svg).toContain(`<title>${CATEGORY_LABELS[c]}</title>`);
  });

  test('with --compare: one curve per mode on shared axes, each labelled with its peak as planMemory computes it', async () => {
    const file = join(dir, 'compare.svg');
    expect(await plan('models/llama.ts', '--compare', '--svg', file)).toBe(0);
    const svg = readFileSync(file, 'utf8');
    const plans = await comparePlans('llama');
    expect(svg).toContain('models/llama.ts (toy), full vs lora vs lora-fa, AdamW weight_decay=0.01, f32');
    // Not the one-mode picture: no category areas.
    expect(svg).not.toContain('<polygon');
    const curves = [...svg.matchAll(/<polyline points="([^"]+)" fill="none" stroke="(#[0-9a-f]{6})"[^>]*><title>([\w-]+): live bytes<\/title>/g)];
    expect(curves.map((c) => c[3])).toEqual([...MODES]);
    expect(new Set(curves.map((c) => c[2])).size, 'three distinct colours').toBe(3);
    for (const m of MODES) {
      expect(svg, m).toContain(`>${m}: peak ${fmtBytes(plans[m].peak)}</text>`);
      expect(svg, m).toContain(`>${m} peak ${fmtBytes(plans[m].peak)}</text>`);
      expect(svg, m).toContain(`lower bound ${fmtBytes(plans[m].lowerBound)} (step ${plans[m].peakStep})`);
    }
    // Same axes: the y axis runs to the largest peak, and each curve's highest point (its live
    // bytes at its peak step, the lower bound) sits at that height on it.
    const top = Math.max(...MODES.map((m) => plans[m].peak));
    const tick = (label: string) => Number(new RegExp(`y1="([\\d.]+)" y2="\\1" stroke="#333"/><text [^>]*>${esc(label)}</text>`).exec(svg)?.[1]);
    const y0 = tick('0 B');
    const y1 = tick(fmtBytes(top));
    MODES.forEach((m, i) => {
      const highest = Math.min(...curves[i][1].split(' ').map((pt) => Number(pt.split(',')[1])));
      expect(highest, m).toBeCloseTo(y0 - ((y0 - y1) * plans[m].lowerBound) / top, 0);
    });
  });

  test('a budget, when given to the drawing, is a labelled dashed line; none by default', async () => {
    const p = await expectedPlan('mlp', 'lora-fa');
    expect(planSvg(p, 'mlp')).not.toContain('budget');
    const svg = planSvg(p, 'mlp', { budget: 2 * p.peak });
    expect(svg).toMatch(new RegExp(`<line [^>]*stroke-dasharray="10 4"/>\\s*<text [^>]*>budget ${esc(fmtBytes(2 * p.peak))}</text>`));
    // The y axis reaches the budget.
    expect(svg).toContain(`>${fmtBytes(2 * p.peak)}</text>`);
  });

  test('--svg with --json keeps stdout pure JSON', async () => {
    const file = join(dir, 'json.svg');
    expect(await plan('models/mlp.ts', '--json', '--svg', file)).toBe(0);
    expect(() => JSON.parse(out.join(''))).not.toThrow();
    expect(readFileSync(file, 'utf8')).toContain('backward starts');
  });
});

// ---------------------------------------------------------------------------------------------

describe('bad input: exit 1 (2 for a usage error) with the problem and the fix', () => {
  test.each([
    [['--rank', '0'], /option '--rank <r>' argument '0' is invalid\. --rank must be a whole number ≥ 1, got "0"/],
    [['--batch', '0'], /option '--batch <n>' argument '0' is invalid\. --batch must be a whole number ≥ 1, got "0"/],
    [['--seq', '0'], /option '--seq <n>' argument '0' is invalid\. --seq must be a whole number ≥ 1, got "0"/],
    [['--rank', 'Infinity'], /option '--rank <r>' argument 'Infinity' is invalid\. --rank must be a finite number, got "Infinity"/],
    [['--alpha', 'NaN'], /option '--alpha <a>' argument 'NaN' is invalid\. --alpha must be a finite number, got "NaN"\n\s+fix: pass a value like --alpha 16/],
    [['--optimizer', 'adam'], /^lorafa: option '--optimizer <name>' argument 'adam' is invalid\. Allowed choices are sgd, adamw\.\n\s+fix: see lorafa plan --help/],
    [['--dtype', 'f8'], /^lorafa: option '--dtype <d>' argument 'f8' is invalid\. Allowed choices are f32, f16, bf16\.\n\s+fix: /],
    [['--limits', 'huge'], /^lorafa: option '--limits <preset>' argument 'huge' is invalid\. Allowed choices are webgpu, discrete, none, adapter\.\n\s+fix: /],
  ])('commander rejects %j: a usage error, exit 2', async (args, message) => {
    expect(await plan('models/llama.ts', ...args)).toBe(2);
    expect(stderr()).toMatch(message);
    expect(out).toEqual([]);
  });

  test.each([
    [['models/mlp.ts', '--targets', 'fc3', '--rank', '8'], /^lorafa: models\/mlp\.ts: LoRA rank 8 exceeds layer "fc3" \(16→3\).*\n\s+fix: use a rank ≤ 3, or leave "fc3" out of the targets/],
    [['models/llama.ts', '--config', '70b'], /^lorafa: models\/llama\.ts: unknown config "70b"\n\s+fix: choose one of: toy, 7b/],
    [['models/mlp.ts', '--alignment', '48'], /^lorafa: limits: the offset alignment must be a power of two ≥ 4, got 48\n\s+fix: /],
    [['models/mlp.ts', '--max-binding-size', '512'], /^lorafa: fc1\.weight: tensor f32\[12,16\] needs 768 B, over the binding limit maxStorageBufferBindingSize = 512 B\n\s+fix: /],
    [['models/mlp.ts', '--max-buffer-size', '0.5KiB'], /^lorafa: fc1\.weight: tensor f32\[12,16\] needs 768 B \(768 B aligned\), over the buffer limit maxBufferSize = 512 B\n\s+fix: raise --max-buffer-size/],
  ])('%j', async (args, message) => {
    expect(await plan(...args)).toBe(1);
    expect(err.join('\n')).toMatch(message);
  });

  test('llama 7b under the WebGPU default limits: the 500 MiB embedding table is over the 128 MiB binding limit', async () => {
    expect(await plan('models/llama.ts', '--config', '7b', '--limits', 'webgpu')).toBe(1);
    expect(err.join('\n')).toMatch(
      /^lorafa: embed_tokens\.weight: tensor f32\[32000,4096\] needs 500 MiB, over the binding limit maxStorageBufferBindingSize = 128 MiB\n\s+fix: plan for an adapter with larger limits \(--limits discrete.*\).* or use --dtype f16\/bf16/,
    );
  });

  test('the installed bin exits 2 on a rejected option value (a usage error)', () => {
    const r = spawnSync(process.execPath, [join(ROOT, 'bin', 'lorafa.mjs'), 'plan', 'models/mlp.ts', '--batch', '0'], { cwd: ROOT, encoding: 'utf8' });
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/--batch must be a whole number ≥ 1, got "0"/);
    expect(r.stdout).toBe('');
  });
});
