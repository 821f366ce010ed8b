// `npm run pretrain [-- --task mnist|brown|email|all] [--seed N] [--steps N] [--out DIR]`
//
// Pretrains the shipped base models with lorafa itself (full training, AdamW, on this machine's
// GPU), reproducibly from a seed, through the same finetune() and training loop as every other run:
//   mnist → models/pretrained/mlp-mnist     the MLP on MNIST digits
//   brown → models/pretrained/llama-brown   the LLaMA-style decoder on the Brown corpus, by
//                                            character (its tokenizer.json is built first, from
//                                            the training files)
//   email → models/pretrained/llama-email   the same decoder on WordPiece tokens, from scratch, on
//                                            the SpamAssassin training messages as unlabelled text
//                                            (labels and the test split never read); its
//                                            tokenizer.json (8192 words and pieces) is learnt
//                                            first, from that text
// Each directory gets model.safetensors (a PyTorch-layout state dict with Hugging Face key names,
// written atomically) and metrics.json (command, seed, steps, final metrics, time); the table in
// models/README.md is regenerated from the metrics files. The run itself (checkpoints, report,
// loss curve) is in out/pretrain-<task>/.
import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { Command, Option } from 'commander';
import { asCommand, brownCorpus, buildWordPiece, CharTokenizer, finetune, fmtMetrics, loadModel, presetData, readView, writeFileAtomic } from '../src/index.ts';
import { PACKAGE_ROOT as ROOT, PRESETS, PRETRAINED_DIR, type Preset } from '../src/train/presets.ts';
import { writeModelsReadme } from './models-readme.ts';

const cmd = new Command('pretrain')
  .description('pretrain the shipped base models (full training from a seed)')
  .addOption(new Option('--task <name>', 'which base model').choices(['mnist', 'brown', 'email', 'all']).default('all'))
  .option('--seed <n>', 'seed of the init and the data order', (v) => Number(v), 0)
  .option('--steps <n>', "training steps (default: the task's)", (v) => Number(v))
  .option('--out <dir>', 'where the model directories go', PRETRAINED_DIR)
  .option('--lines', 'plain progress lines even on a terminal')
  .parse();
const flags = cmd.opts<{ task: string; seed: number; steps?: number; out: string; lines?: boolean }>();

async function pretrain(task: Preset): Promise<void> {
  const dir = resolve(flags.out, task.produces!);
  mkdirSync(dir, { recursive: true });
  const started = Date.now();
  let tokenizer: string | undefined;
  if (task.name === 'brown') {
    // The character vocabulary of the training files (every character seen), shipped with the model.
    const tok = CharTokenizer.fromText(brownCorpus().train.text, { minCount: 1 });
    tokenizer = join(dir, 'tokenizer.json');
    writeFileAtomic(tokenizer, Buffer.from(JSON.stringify(tok.toJSON(), null, 1) + '\n'));
    console.log(`tokenizer: ${tok.vocabSize} symbols → ${relative(ROOT, tokenizer)}`);
  } else if (task.name === 'email') {
    // A WordPiece vocabulary of the very text the model is pretrained on, as large as its embedding.
    const vocab = (await loadModel(join(ROOT, task.model))).def.configs[task.config].vocab as number;
    const wp = buildWordPiece((await readView(presetData('email').train)).map((r) => r.text as string), { vocabSize: vocab });
    tokenizer = join(dir, 'tokenizer.json');
    writeFileAtomic(tokenizer, Buffer.from(JSON.stringify(wp.tokenizer) + '\n'));
    writeFileAtomic(join(dir, 'tokenizer_config.json'), Buffer.from(JSON.stringify(wp.config, null, 2) + '\n'));
    console.log(`tokenizer: WordPiece, ${wp.vocab.length} words and pieces → ${relative(ROOT, tokenizer)} (+ tokenizer_config.json)`);
  }
  const command = `npm run pretrain -- --task ${task.name} --seed ${flags.seed}${flags.steps ? ` --steps ${flags.steps}` : ''}`;
  const meta = { model: task.model, config: task.config, task: task.name, seed: String(flags.seed), command };
  // The run's own folder (checkpoints, report, loss curve), started afresh each time.
  const work = join(ROOT, 'out', `pretrain-${task.name}`);
  rmSync(work, { recursive: true, force: true });
  const r = await finetune({
    model: task.name,
    mode: 'full',
    base: null,
    seed: flags.seed,
    steps: flags.steps,
    tokenizer,
    compare: false,
    out: work,
    command,
    progress: flags.lines ? 'lines' : 'auto',
    evalBefore: false,
  });
  const after = r.after!;
  console.log(`${task.name}: ${fmtMetrics(after)}; ${r.msPerStep.toFixed(1)} ms/step`);
  // The weights the run exported, with the metadata of the shipped files.
  writeFileAtomic(join(dir, 'model.safetensors'), readFileSync(join(work, 'model.safetensors')));
  const metrics = {
    ...meta,
    steps: r.endStep,
    seed: flags.seed,
    lr: r.lr,
    optimizer: r.program.spec.optimizer,
    batch: r.program.spec.batch,
    data: r.data,
    final: after,
    firstLoss: r.losses[0].loss,
    lastLoss: r.losses[r.losses.length - 1].loss,
    msPerStep: Number(r.msPerStep.toFixed(2)),
    seconds: Math.round((Date.now() - started) / 1000),
    device: r.device,
    date: new Date().toISOString().slice(0, 10),
  };
  writeFileAtomic(join(dir, 'metrics.json'), Buffer.from(JSON.stringify(metrics, null, 2) + '\n'));
  console.log(`wrote ${relative(ROOT, join(dir, 'model.safetensors'))} and metrics.json (the run: ${relative(ROOT, work)}/)`);
}

process.exit(
  await asCommand(async () => {
    const which = flags.task === 'all' ? [PRESETS.mnist, PRESETS.brown, PRESETS.email] : [PRESETS[flags.task as 'mnist' | 'brown' | 'email']];
    for (const t of which) await pretrain(t);
    if (resolve(flags.out) === PRETRAINED_DIR) writeModelsReadme();
  }),
);
