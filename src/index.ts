// The public API that model files import.
export { Builder } from './ir/builder.ts';
export { defineModel, type ModelConfig, type ModelDef } from './model.ts';
export type { Value, Graph, Init, DType } from './ir/types.ts';
