// Hugging Face checkpoint folders as lorafa takes them: config.json picks the model file (shipped in
// the package: models/llama.ts, gpt2.ts, bert.ts) and its sizes; the weights are the folder's
// safetensors (single or sharded: src/io/checkpoint-dir.ts); the tokenizer its tokenizer.json.
//
//   lorafa finetune ./my-llama --data train.jsonl          the folder alone
//   lorafa finetune models/llama.ts --base ./my-llama …    a model file; the sizes from its config.json
//   lorafa plan models/llama.ts --config ./my-llama/config.json
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { LorafaError } from '../ir/errors.ts';
import { readHuggingFaceConfig } from '../model/define.ts';
import { loadModel, type LoadedModel } from '../model/load.ts';
import { PACKAGE_ROOT } from './presets.ts';

/** The architectures lorafa implements, and the shipped model file of each. */
export const HF_ARCHITECTURES: Readonly<Record<string, string>> = {
  LlamaForCausalLM: 'models/llama.ts',
  LlamaForSequenceClassification: 'models/llama.ts',
  GPT2LMHeadModel: 'models/gpt2.ts',
  GPT2ForSequenceClassification: 'models/gpt2.ts',
  BertForSequenceClassification: 'models/bert.ts',
  RobertaForSequenceClassification: 'models/bert.ts',
};

export interface HfCheckpoint {
  readonly dir: string;
  readonly configFile: string;
  readonly architecture: string;
  /** The shipped model file implementing it, absolute. */
  readonly modelFile: string;
  /** tokenizer.json, when the folder has one. */
  readonly tokenizer?: string;
}

/** Whether `path` is a folder with a config.json (a Hugging Face checkpoint, or meant as one). */
export function isHfCheckpointDir(path: string): boolean {
  return existsSync(path) && statSync(path).isDirectory() && existsSync(join(path, 'config.json'));
}

export function openHfCheckpoint(dir: string): HfCheckpoint {
  const configFile = join(dir, 'config.json');
  if (!existsSync(configFile)) {
    throw new LorafaError(dir, 'holds no config.json: not a Hugging Face checkpoint folder', 'pass the folder save_pretrained wrote (config.json, model.safetensors or its shards, tokenizer.json), or a model file with --base');
  }
  const { architecture } = readHuggingFaceConfig(configFile);
  const file = HF_ARCHITECTURES[architecture];
  if (!file) {
    throw new LorafaError(
      configFile,
      `architecture ${architecture} is not one lorafa implements`,
      `lorafa reads ${Object.keys(HF_ARCHITECTURES).join(', ')}; for another, write a model file with a huggingFace mapping and pass it with --base ${dir}`,
    );
  }
  const tokenizer = join(dir, 'tokenizer.json');
  return { dir, configFile, architecture, modelFile: join(PACKAGE_ROOT, file), tokenizer: existsSync(tokenizer) ? tokenizer : undefined };
}

export interface ModelChoice {
  readonly model: LoadedModel;
  /** A config name of the model file, or a config.json path. */
  readonly config?: string;
  /** Base weights: the checkpoint folder, unless --base says otherwise. */
  readonly base?: string | null;
  readonly checkpoint?: HfCheckpoint;
}

/**
 * The model a command's <model> argument and --config / --base name: a model file, or a checkpoint
 * folder (config.json picks the shipped model file, the sizes and the default base weights). With a
 * model file and a checkpoint folder as --base, the folder's config.json gives the sizes unless
 * --config names others.
 */
export async function chooseModel(arg: string, o: { config?: string; base?: string | null } = {}): Promise<ModelChoice> {
  if (isHfCheckpointDir(arg)) {
    const checkpoint = openHfCheckpoint(arg);
    const model = await loadModel(checkpoint.modelFile);
    return { model, checkpoint, config: o.config ?? checkpoint.configFile, base: o.base === undefined ? checkpoint.dir : o.base };
  }
  const model = await loadModel(arg);
  const baseConfig = !o.config && typeof o.base === 'string' && model.def.huggingFace && isHfCheckpointDir(o.base) ? join(o.base, 'config.json') : undefined;
  return { model, config: o.config ?? baseConfig, base: o.base };
}
