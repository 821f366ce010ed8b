// `npm run baselines [-- spam fashion-mnist] [--eval-on validation]`: the classical baselines of the
// built-in classification tasks (src/train/baselines.ts) as a table, on the CPU, with no GPU and no
// model: what docs/results.md shows beside the frozen base and the fine-tuned variants.
import { Command, Option } from 'commander';
import { asCommand, BASELINE_PRESETS, presetBaselines } from '../src/index.ts';
import type { DataPreset } from '../src/data/presets.ts';

const cmd = new Command('baselines')
  .argument('[tasks...]', `which tasks (default: ${BASELINE_PRESETS.join(' ')})`)
  .addOption(new Option('--eval-on <split>', 'score on the test split, or on every 10th training row held out').choices(['test', 'validation']).default('test'))
  .parse();
const tasks = (cmd.args.length ? cmd.args : BASELINE_PRESETS) as DataPreset[];
const { evalOn } = cmd.opts<{ evalOn: 'test' | 'validation' }>();

process.exitCode = await asCommand(async () => {
  console.log('| task | baseline | accuracy | training rows | evaluation rows | seconds |');
  console.log('|---|---|---|---|---|---|');
  for (const t of tasks) {
    for (const b of await presetBaselines(t, { evalOn })) {
      console.log(`| ${t} | ${b.name} | ${(100 * b.accuracy).toFixed(2)}% | ${b.trainRows} | ${b.evalRows} | ${(b.ms / 1000).toFixed(1)} |`);
    }
  }
});
