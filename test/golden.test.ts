// Golden IR text for the toy MLP after every pass, in each mode. The snapshots under __golden__/
// are the documentation of what each pass does: review their diffs like code.
// Regenerate with `npx vitest run test/golden.test.ts -u`, then read them.
import { describe, expect, test } from 'vitest';
import { printGraph } from '../src/ir/print.ts';
import { compileTraining, MODES } from '../src/passes/compile.ts';
import { toyModel } from './helpers.ts';

const PASSES = {
  full: ['trace', 'autodiff', 'simplify', 'dce'],
  lora: ['trace', 'lora', 'autodiff', 'simplify', 'dce'],
  'lora-fa': ['trace', 'lora', 'lora-fa', 'autodiff', 'simplify', 'dce'],
} as const;

describe.each(MODES)('mlp, %s', async (mode) => {
  const { model, graph } = await toyModel('mlp', 'toy');
  const compiled = compileTraining(graph, {
    mode,
    lora: { rank: 2, alpha: 4, targets: model.def.defaultTargets ?? [], modulesToSave: model.def.modulesToSave },
    verify: true,
  });

  test('runs exactly the expected passes, in order', () => {
    expect(compiled.stages.map((s) => s.pass)).toEqual(PASSES[mode]);
  });

  test.each(PASSES[mode].map((pass, i) => [pass, i] as const))('after %s', async (pass, i) => {
    const text = printGraph(compiled.stages[i].graph, { locations: false });
    expect(text).not.toMatch(/\.ts:\d+/); // no paths or lines: goldens must not depend on the checkout
    await expect(text).toMatchFileSnapshot(`__golden__/mlp.${mode}.${pass}.ir`);
  });
});
