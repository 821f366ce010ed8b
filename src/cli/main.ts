// The lorafa command line.
import { Command, InvalidArgumentError, Option } from 'commander';
import { LorafaError } from '../ir/errors.ts';
import { printGraph } from '../ir/print.ts';
import { compileTraining, isMode, MODES, type Mode } from '../passes/compile.ts';
import { resolveConfig } from '../model.ts';
import { formatAdapterReport, probeAdapter } from '../runtime/device.ts';
import { loadModel, trace } from './load.ts';
import { summarize } from './summary.ts';

function positiveInt(name: string) {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`${name} must be a positive integer, got "${v}"`);
    return n;
  };
}

function positiveNumber(name: string) {
  return (v: string) => {
    const n = Number(v);
    if (!(n > 0)) throw new InvalidArgumentError(`${name} must be a positive number, got "${v}"`);
    return n;
  };
}

interface CompileFlags {
  mode: string;
  rank: number;
  alpha?: number;
  targets?: string;
  targetsRegex?: string;
  rslora?: boolean;
  config?: string;
  batch?: number;
  seq?: number;
  emit: 'ir' | 'summary';
  stage?: string;
  verify?: boolean;
  locations?: boolean;
}

async function compileCommand(modelPath: string, flags: CompileFlags): Promise<void> {
  if (!isMode(flags.mode)) throw new LorafaError('--mode', `unknown mode "${flags.mode}"`, `use one of: ${MODES.join(', ')}`);
  const mode: Mode = flags.mode;
  const m = await loadModel(modelPath);
  const overrides: Record<string, number> = {};
  if (flags.batch !== undefined) overrides.batch = flags.batch;
  if (flags.seq !== undefined) overrides.seq = flags.seq;
  const graph = trace(m, flags.config, overrides);
  const targets = flags.targetsRegex
    ? new RegExp(flags.targetsRegex)
    : flags.targets
      ? flags.targets.split(',').map((s) => s.trim()).filter(Boolean)
      : m.def.defaultTargets ?? [];
  const compiled = compileTraining(graph, {
    mode,
    verify: flags.verify,
    lora: {
      rank: flags.rank,
      alpha: flags.alpha ?? 2 * flags.rank,
      targets,
      rslora: flags.rslora,
      modulesToSave: m.def.modulesToSave,
    },
  });
  if (flags.emit === 'ir') {
    const stage = flags.stage ?? 'dce';
    const s = compiled.stages.find((x) => x.pass === stage);
    if (!s) {
      throw new LorafaError('--stage', `no stage "${stage}" in mode ${mode}`, `stages: ${compiled.stages.map((x) => x.pass).join(', ')}`);
    }
    process.stdout.write(printGraph(s.graph, { locations: flags.locations }));
    return;
  }
  const config = flags.config ?? m.def.defaultConfig;
  console.log(summarize(compiled, { file: m.displayFile, config, cfg: resolveConfig(m.def, { config, overrides }) }));
}

export function program(): Command {
  const p = new Command('lorafa')
    .description('compile neural-network training to WGSL for WebGPU, built around LoRA-FA')
    .showHelpAfterError();
  p.command('compile')
    .description('trace a model file and compile its training step (forward, loss, gradients)')
    .argument('<model>', 'model file, e.g. models/llama.ts')
    .addOption(new Option('--mode <mode>', 'what trains').choices([...MODES]).default('lora-fa'))
    .option('--rank <r>', 'LoRA rank', positiveInt('--rank'), 8)
    .option('--alpha <a>', 'LoRA alpha (scale = alpha/rank); default 2·rank', positiveNumber('--alpha'))
    .option('--targets <names>', "comma-separated linear layer names or suffixes (PEFT target_modules); default: the model's")
    .option('--targets-regex <re>', 'a regular expression that must match the whole linear layer name')
    .option('--rslora', 'rank-stabilised scale alpha/√rank')
    .option('--config <name>', "a named size from the model file (default: the model's default)")
    .option('--batch <n>', 'override the batch size', positiveInt('--batch'))
    .option('--seq <n>', 'override the sequence length', positiveInt('--seq'))
    .addOption(new Option('--emit <what>', 'output').choices(['summary', 'ir']).default('summary'))
    .option('--stage <pass>', 'with --emit ir: the graph after this pass (trace, lora, lora-fa, autodiff, dce)')
    .option('--locations', 'with --emit ir: annotate nodes with model file:line')
    .option('--verify', 'run the IR verifier after every pass')
    .action(compileCommand);
  p.command('doctor')
    .description('report the WebGPU adapter Dawn finds, and its limits, or why there is none')
    .action(async () => {
      const r = await probeAdapter();
      console.log(formatAdapterReport(r));
      if (!r.ok) process.exitCode = 1;
    });
  return p;
}

export async function main(argv: readonly string[]): Promise<number> {
  try {
    await program().parseAsync([...argv], { from: 'user' });
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (e) {
    if (e instanceof LorafaError) {
      console.error(`lorafa: ${e.message}`);
      return 1;
    }
    throw e;
  }
}
