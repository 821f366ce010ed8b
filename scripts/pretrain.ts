// `npm run pretrain [-- --task mnist|brown|all] [--seed N] [--steps N] [--out DIR]`
//
// Pretrains the shipped base models with lorafa itself (full training, AdamW, on this machine's
// GPU), reproducibly from a seed:
//   mnist → models/pretrained/mlp-mnist     the MLP on MNIST digits
//   brown → models/pretrained/llama-brown   the LLaMA-style decoder on the Brown corpus, by
//                                            character (its tokenizer.json is built first, from
//                                            the training files)
// Each directory gets model.safetensors (a PyTorch-layout state dict with Hugging Face key names,
// written atomically) and metrics.json (command, seed, steps, final metrics, time); the table in
// models/README.md is regenerated from the metrics files.
import { mkdirSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { Command, Option } from 'commander';
import { brownCorpus, CharTokenizer } from '../src/data/index.ts';
import { saveStateDict } from '../src/io/weights.ts';
import { writeFileAtomic } from '../src/io/weights.ts';
import { asCommand } from '../src/ir/errors.ts';
import { stepProgress } from '../src/finetune/progress.ts';
import { fmtMetrics, openTask, runTask } from '../src/finetune/run.ts';
import { PRETRAINED_DIR, ROOT, TASKS, type Task } from '../src/finetune/tasks.ts';
import { writeModelsReadme } from '../src/finetune/models-readme.ts';

const cmd = new Command('pretrain')
  .description('pretrain the shipped base models (full training from a seed)')
  .addOption(new Option('--task <name>', 'which base model').choices(['mnist', 'brown', 'all']).default('all'))
  .option('--seed <n>', 'seed of the init and the data order', (v) => Number(v), 0)
  .option('--steps <n>', "training steps (default: the task's)", (v) => Number(v))
  .option('--out <dir>', 'where the model directories go', PRETRAINED_DIR)
  .option('--lines', 'plain progress lines even on a terminal')
  .parse();
const flags = cmd.opts<{ task: string; seed: number; steps?: number; out: string; lines?: boolean }>();

async function pretrain(task: Task): Promise<void> {
  const dir = resolve(flags.out, task.produces!);
  mkdirSync(dir, { recursive: true });
  const started = Date.now();
  if (task.name === 'brown') {
    // The character vocabulary of the training files (every character seen), shipped with the model.
    const tok = CharTokenizer.fromText(brownCorpus().train.text, { minCount: 1 });
    writeFileAtomic(join(dir, 'tokenizer.json'), Buffer.from(JSON.stringify(tok.toJSON(), null, 1) + '\n'));
    console.log(`tokenizer: ${tok.vocabSize} symbols → ${relative(ROOT, join(dir, 'tokenizer.json'))}`);
  }
  const ctx = await openTask(task, flags.seed, { base: null, tokenizerDir: dir });
  console.log(`${task.name}: ${task.description}\ndata: ${ctx.data.description}`);
  const progress = stepProgress(task.name, { lines: flags.lines });
  const r = await runTask(ctx, {
    mode: 'full', steps: flags.steps, base: null, skipBefore: true, log: (s) => console.log(s), onStep: progress.step,
  });
  progress.end();
  console.log(`${task.name}: ${fmtMetrics(r.after)}; ${r.msPerStep.toFixed(1)} ms/step`);
  const command = `npm run pretrain -- --task ${task.name} --seed ${flags.seed}${flags.steps ? ` --steps ${flags.steps}` : ''}`;
  const meta = {
    model: task.model,
    config: task.config,
    task: task.name,
    seed: String(flags.seed),
    steps: String(r.steps),
    command,
  };
  saveStateDict(join(dir, 'model.safetensors'), r.forward, r.values, { keyFor: r.model.def.stateDictKey, metadata: meta });
  const metrics = {
    ...meta,
    seed: flags.seed,
    steps: r.steps,
    lr: r.lr,
    optimizer: task.defaults.optimizer,
    batch: r.model.def.configs[task.config].batch,
    data: r.data,
    final: r.after,
    firstLoss: r.losses[0].loss,
    lastLoss: r.losses[r.losses.length - 1].loss,
    msPerStep: Number(r.msPerStep.toFixed(2)),
    seconds: Math.round((Date.now() - started) / 1000),
    device: r.device,
    date: new Date().toISOString().slice(0, 10),
  };
  writeFileAtomic(join(dir, 'metrics.json'), Buffer.from(JSON.stringify(metrics, null, 2) + '\n'));
  console.log(`wrote ${relative(ROOT, join(dir, 'model.safetensors'))} and metrics.json`);
}

process.exit(
  await asCommand(async () => {
    const which = flags.task === 'all' ? [TASKS.mnist, TASKS.brown] : [TASKS[flags.task as 'mnist' | 'brown']];
    for (const t of which) await pretrain(t);
    if (resolve(flags.out) === PRETRAINED_DIR) writeModelsReadme();
  }),
);
