// The public API that model files import.
export { Builder } from './ir/builder.ts';
export { defineModel, type ModelConfig, type ModelDef } from './model.ts';
export type { Value, Graph, Init, DType } from './ir/types.ts';
// Weights in and out: PyTorch-layout state dicts, PEFT LoRA adapters, merged weights.
export { loadStateDict, saveStateDict, stateDict, mergedStateDict, saveMerged } from './io/weights.ts';
export { exportPeftAdapter, importPeftAdapter } from './io/peft.ts';
