// The command-line options of the training loop, shared by `lorafa finetune`, `lorafa train` and a
// generated trainer's own command line (`npx tsx trainer.ts`), so every entry point takes the same
// flags with the same checks. Numbers are checked where they are parsed: NaN, ±Infinity and values
// past the safe range are refused with the flag's name (a usage error, exit code 2).
import { STORAGE_DTYPES } from '../passes/memory-plan.ts';
import { KERNEL_CHOICES } from '../codegen/kernel.ts';
import { InvalidArgumentError, Option, type Command } from 'commander';
import { DATA_FORMATS } from '../data/rows.ts';
import { PROGRESS_MODES, type ProgressMode } from './progress.ts';
import { LR_SCHEDULES, type LrScheduleName } from './schedule.ts';
import { LorafaError } from '../ir/errors.ts';
import { parseLossScale, type LossScaleSetting } from './loss-scale.ts';

/** A value a flag could take, for the fix line of its error. */
const EXAMPLES: Readonly<Record<string, string>> = {
  '--lr': '3e-4',
  '--alpha': '16',
  '--rank': '8',
  '--steps': '100',
  '--batch': '32',
  '--eval-batch': '64',
  '--seq': '128',
  '--grad-accum': '4',
  '--seed': '0',
  '--warmup': '10',
  '--min-lr-ratio': '0.1',
  '--eval-every': '50',
  '--checkpoint-every': '100',
  '--log-every': '10',
  '--profile': '3',
  '--eval-split': '0.1',
  '--weight-decay': '0.01',
  '--momentum': '0.9',
  '--top': '10',
  '--alignment': '256',
};

/** The largest magnitude a float32 holds: numbers that reach the GPU must fit it. */
const F32_MAX = 3.4028234663852886e38;

function bad(flag: string, problem: string, fallback: string): never {
  throw new InvalidArgumentError(`${flag} ${problem}\n  fix: pass a value like ${flag} ${EXAMPLES[flag] ?? fallback}`);
}

function num(flag: string, v: string, fallback: string): number {
  const t = v.trim();
  const n = Number(t);
  if (t === '' || !Number.isFinite(n)) bad(flag, `must be a finite number, got "${v}"`, fallback);
  if (Math.abs(n) > F32_MAX) bad(flag, `is ${v}, past the largest float32 (${F32_MAX.toPrecision(3)}): it would overflow on the GPU`, fallback);
  return n;
}

function whole(flag: string, v: string, min: number): number {
  const n = num(flag, v, String(min));
  if (!Number.isInteger(n) || n < min) bad(flag, `must be a whole number ≥ ${min}, got "${v}"`, String(Math.max(min, 1)));
  if (!Number.isSafeInteger(n)) bad(flag, `is ${v}, past the largest exact integer (${Number.MAX_SAFE_INTEGER})`, String(Math.max(min, 1)));
  return n;
}

/**
 * How commander's usage errors are shown: `lorafa: <what>` and a fix line (the flag's own, or where
 * the options are listed), instead of commander's "error: …" and the whole help. `help` is the
 * command that lists the options, e.g. "lorafa finetune --help".
 */
export function usageOutput(help: string) {
  return {
    outputError: (str: string, write: (s: string) => void) => {
      const text = str.replace(/^error: /, '').trimEnd().replace(/\n\(Did you mean (.*)\)$/, ' (did you mean $1?)').replace(/\?\?\)$/, '?)');
      write(`lorafa: ${text}${/\n\s*fix: /.test(text) ? '' : `\n  fix: see ${help} for the options and the values they take`}\n`);
    },
  };
}

/** A regular expression flag: checked where it is parsed (a usage error naming the flag). */
export function regexFlag(flag: string) {
  return (v: string) => {
    try {
      new RegExp(v);
    } catch (e) {
      throw new InvalidArgumentError(`${flag} is not a valid regular expression: ${(e as Error).message.replace(/^Invalid regular expression: /, '')}\n  fix: pass a regular expression that matches whole layer names, e.g. ${flag} "layers\\.\\d+\\.self_attn\\.(q|v)_proj"`);
    }
    return v;
  };
}

/** Byte sizes: a plain number, or with a unit (KiB, MiB, GiB, KB, MB, GB). */
export function byteSize(name: string) {
  return (v: string) => {
    const m = /^(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|KB|MB|GB)?$/i.exec(v.trim());
    if (!m) throw new InvalidArgumentError(`${name} must be a byte count, got "${v}"\n  fix: pass a value like ${name} 134217728 or ${name} 128MiB`);
    const unit = (m[2] ?? 'B').toLowerCase();
    const mult: Record<string, number> = { b: 1, kib: 1024, mib: 1024 ** 2, gib: 1024 ** 3, kb: 1e3, mb: 1e6, gb: 1e9 };
    const n = Math.floor(Number(m[1]) * mult[unit]);
    if (!(n >= 1 && Number.isSafeInteger(n))) throw new InvalidArgumentError(`${name} must be a positive byte count below 2^53, got "${v}"\n  fix: pass a value like ${name} 128MiB`);
    return n;
  };
}

export function positiveInt(flag: string) {
  return (v: string) => whole(flag, v, 1);
}

export function nonNegativeInt(flag: string) {
  return (v: string) => whole(flag, v, 0);
}

export function positiveNumber(flag: string) {
  return (v: string) => {
    const n = num(flag, v, '1');
    if (!(n > 0)) bad(flag, `must be a number > 0, got "${v}"`, '1');
    return n;
  };
}

export function nonNegativeNumber(flag: string) {
  return (v: string) => {
    const n = num(flag, v, '0');
    if (!(n >= 0)) bad(flag, `must be a number ≥ 0, got "${v}"`, '0');
    return n;
  };
}

/** --loss-scale: dynamic, none or a number (a usage error naming the flag otherwise). */
export function lossScaleFlag(v: string): LossScaleSetting {
  try {
    return parseLossScale(v);
  } catch (e) {
    if (!(e instanceof LorafaError)) throw e;
    throw new InvalidArgumentError(`${e.where} ${e.problem}\n  fix: ${e.fix}`);
  }
}

export const LOSS_SCALE_HELP = 'dynamic (GradScaler: from 65536, halved when gradients overflow, doubled after 2000 clean steps), none, or a fixed scale; default: dynamic for f16 storage, else none';

export function fraction(flag: string) {
  return (v: string) => {
    const n = num(flag, v, '0.1');
    if (!(n > 0 && n < 1)) bad(flag, `must be a fraction strictly between 0 and 1, got "${v}"`, '0.1');
    return n;
  };
}

/** What the data options parse to (see src/train/data.ts). */
export interface DataFlagValues {
  data?: string;
  evalData?: string;
  evalSplit?: number;
  format?: string;
  labels?: string;
  evalLabels?: string;
  textField?: string;
  labelField?: string;
  featureFields?: string;
  tokenizer?: string;
}

/** What the run options parse to. */
export interface RunFlagValues {
  steps?: number;
  lr?: number;
  lrSchedule?: LrScheduleName;
  warmup?: number;
  minLrRatio?: number;
  gradAccum?: number;
  lossScale?: LossScaleSetting;
  seed?: number;
  evalEvery?: number;
  checkpointEvery?: number;
  resume?: boolean;
  resumeFrom?: string;
  out?: string;
  base?: string;
  initAdapter?: string;
  initMissing?: boolean;
  merged?: boolean;
  progress: ProgressMode;
  logEvery?: number;
  /** --profile [steps]: profile this many steps after the first (DEFAULT_PROFILE_STEPS when no number is given). */
  profile?: number;
}

/** Steps `--profile` times when it is given without a number. */
export const DEFAULT_PROFILE_STEPS = 3;

export function addDataOptions(c: Command): Command {
  return c
    .option('--data <file|preset>', 'training data: a file (.jsonl .csv .tsv .parquet .txt .idx .npy .safetensors), a built-in set (mnist, fashion-mnist, brown, email, spam), or synthetic')
    .option('--eval-data <file>', 'evaluation data (same format and fields as --data)')
    .option('--eval-split <fraction>', 'hold out this fraction of --data for evaluation (evenly spaced rows)', fraction('--eval-split'))
    .addOption(new Option('--format <format>', 'the data format, when the file name does not say it').choices([...DATA_FORMATS]))
    .option('--labels <file>', 'a labels file beside array data (IDX, .npy): one label per row')
    .option('--eval-labels <file>', 'the labels file of --eval-data')
    .option('--text-field <name>', 'the text column (default "text")')
    .option('--label-field <name>', 'the label column (default "label"; regression: comma-separated target columns)')
    .option('--feature-fields <names>', 'comma-separated numeric feature columns (default: every column but the label)')
    .option('--tokenizer <file>', "a tokenizer.json (default: the --base folder's, else the shipped character tokenizer)");
}

/** Options of the loop itself. `defaults`: a preset's or the trainer's, shown in --help. */
export function addRunOptions(c: Command, what: { outHelp: string }): Command {
  return c
    .option('--steps <n>', 'train until optimizer step n (a resumed run keeps its numbering)', positiveInt('--steps'))
    .option('--lr <x>', 'peak learning rate (AdamW / SGD)', nonNegativeNumber('--lr'))
    .addOption(new Option('--lr-schedule <kind>', 'after the warm-up: cosine or linear decay to lr × --min-lr-ratio, or constant (default cosine)').choices([...LR_SCHEDULES]))
    .option('--warmup <n>', 'linear warm-up steps (default: a tenth of the run, at most 100)', nonNegativeInt('--warmup'))
    .option('--min-lr-ratio <r>', 'where cosine/linear decay ends, as a fraction of lr (default 0.1)', nonNegativeNumber('--min-lr-ratio'))
    .option('--grad-accum <k>', 'micro-batches per optimizer step: the update of one k-times-larger batch, with one batch of activations', positiveInt('--grad-accum'))
    .option('--loss-scale <how>', `loss scaling: ${LOSS_SCALE_HELP} (a trainer: as compiled, which may switch dynamic and fixed)`, lossScaleFlag)
    .option('--seed <n>', 'seed of the init, the adapters and the data order', nonNegativeInt('--seed'))
    .option('--eval-every <n>', 'also evaluate every n steps (loss, and accuracy or perplexity; plotted in loss.svg)', nonNegativeInt('--eval-every'))
    .option('--checkpoint-every <n>', 'checkpoint every n steps (the last step always is; the newest two are kept)', positiveInt('--checkpoint-every'))
    .option('--resume', 'continue from the newest checkpoint in <out>/checkpoints (from scratch if there is none)')
    .option('--resume-from <file>', 'continue from this checkpoint')
    .option('-o, --out <dir>', what.outHelp)
    .option('--base <path>', 'base weights: a safetensors file, or a folder holding model.safetensors (Hugging Face key names)')
    .option('--init-adapter <dir>', 'start the adapters from a PEFT adapter folder')
    .option('--merged', 'also write merged.safetensors (the adapters folded into the base weights)')
    .addOption(new Option('--progress <how>', 'a progress bar (on a terminal), plain lines, or nothing').choices([...PROGRESS_MODES]).default('auto'))
    .option('--log-every <n>', 'with plain lines: one every n steps', positiveInt('--log-every'))
    .addOption(
      // commander shows the preset ("preset: 3") after the text: the count without a number.
      new Option('--profile [steps]', 'time every kernel in this many steps after the first (they train as usual) and print where a step goes: per kernel time, share, GFLOP/s or GB/s; also in report.md and report.json')
        .preset(String(DEFAULT_PROFILE_STEPS))
        .argParser(positiveInt('--profile')),
    );
}

/** Options that are compiled into the step (a trainer takes them only as they were compiled). */
export interface CompiledFlagValues {
  batch?: number;
  optimizer?: string;
  weightDecay?: number;
  momentum?: number;
  evalBatch?: number;
  dtype?: string;
  budget?: number;
  kernels?: string;
}

export const KERNELS_HELP = 'which kernels: auto (what this adapter offers: subgroup matmuls on lavapipe, workgroup-memory tiles on a GPU) or portable (none that need an optional feature such as subgroups: the trainer runs on any adapter); default auto';

export function addCompiledOptions(c: Command): Command {
  return c
    .option('--budget <size>', 'the most GPU memory the step may use (e.g. 24GB, 22GiB, bytes): backward recomputes forward values until its plan fits', byteSize('--budget'))
    .addOption(new Option('--dtype <d>', 'storage of frozen weights and activations on the GPU: f32, f16 or bf16 (trainable parameters, gradients and optimizer state stay f32; default f32)').choices([...STORAGE_DTYPES]))
    .option('--batch <n>', "rows per (micro-)batch (default: the model config's)", positiveInt('--batch'))
    .addOption(new Option('--optimizer <name>', 'adamw (default) or sgd').choices(['adamw', 'sgd']))
    .option('--weight-decay <w>', 'weight decay (AdamW: decoupled, default 0.01; SGD: L2, default 0)', nonNegativeNumber('--weight-decay'))
    .option('--momentum <m>', 'SGD momentum', nonNegativeNumber('--momentum'))
    .option('--eval-batch <n>', 'rows per evaluation batch (default: the training batch)', positiveInt('--eval-batch'))
    .addOption(new Option('--kernels <which>', KERNELS_HELP).choices([...KERNEL_CHOICES]));
}
