// lorafa's public API: `import { … } from 'lorafa'`. The one door of the package: model files,
// generated trainers, scripts and lorafa's own command line (src/cli) import from here, never from
// paths inside src/.
//
//   the DSL            defineModel, Builder, the IR types
//   models             loadModel, traceModel, trace
//   compile            compileTraining (lora → lora-fa → autodiff → simplify → dce → optimizer),
//                      printGraph, verify
//   plan               planMemory, planStep, and the plan's tables, JSON and SVG
//   reference          runReference, referenceStep: the float64 interpreter
//   train              finetune (compile + data + the training loop, in one call), runTraining,
//                      compileProgram / emitTrainer / readProgram (trainer folders), runTrainer,
//                      trainerCli, presets
//   data               openRows (jsonl, csv, tsv, parquet, text, idx, npy, safetensors),
//                      openDataset, memoryRows, CharTokenizer, the built-in data sets
//   weights            safetensors, PyTorch-layout state dicts, PEFT adapters, merged weights
//   device             probeAdapter, acquireGpu, StepRunner, StepProfiler / profileSteps (a step,
//                      kernel by kernel)
//   errors             LorafaError (where, problem, fix) and asCommand

// The DSL and the IR.
export { Builder, type AttentionImpl, type BuilderOptions, type LinearOptions, type ParamOptions } from './ir/builder.ts';
export { defineModel, isModelDef, resolveConfig, traceModel, type ModelConfig, type ModelDef, type TraceOptions } from './model/define.ts';
export type { DType, Graph, Init, Input, LinearModule, LoraAdapter, Node, Param, ParamRole, TensorType, Value } from './ir/types.ts';
export { fmtType, numel } from './ir/types.ts';
export { fmtBytes, fmtCount } from './ir/format.ts';
export { printGraph, type PrintOptions } from './ir/print.ts';
export { verify } from './ir/verify.ts';
export { IGNORE_INDEX, OPS, opDef } from './ir/ops.ts';
export { asCommand, LorafaError, ModelError, ShapeError, VerifyError } from './ir/errors.ts';

// Model files.
export { loadModel, registerLoaders, trace, type LoadedModel } from './model/load.ts';

// Compile and plan.
export { compileTraining, isMode, MODES, type CompileOptions, type Compiled, type Mode, type Stage } from './passes/compile.ts';
export { applyLora, checkModulesToSave, inModulesToSave, type LoraOptions, type LoraReport } from './passes/lora.ts';
export { OPTIMIZERS, optimizerFeeds, accumFeeds, type OptimizerOptions } from './passes/optimizer.ts';
export { INV_LOSS_SCALE_INPUT, LOSS_SCALE_INPUT, lossScaleFeeds, OVERFLOW_OUTPUT, type LossScaleReport } from './passes/loss-scale.ts';
export { planStep, type StepSetup } from './passes/plan-step.ts';
export { applyRemat, flopsOf, graphFlops, minimumPeak, rematerialize, type RematOptions, type RematReport } from './passes/remat.ts';
export { fitBatches, type FitResult } from './passes/fit.ts';
export {
  CATEGORIES,
  CATEGORY_LABELS,
  LIMIT_PRESETS,
  planMemory,
  STORAGE_DTYPES,
  type Category,
  type Limits,
  type MemoryPlan,
  type PlanOptions,
  type StorageDType,
} from './passes/memory-plan.ts';
export { byteUnit, compareTable, fitJson, fitTable, planJson, planSvgText, planTable, topTable, type PlanContext, type PlannedMode } from './report/plan.ts';
export { summarize, type SummaryContext } from './report/summary.ts';
export { buildKernelPlan, type KernelPlan } from './codegen/kernel-plan.ts';

// The float64 reference interpreter.
export { referenceStep, runReference, type ReferenceOptions, type ReferenceResult } from './runtime/reference.ts';
export { initParams, streamFor } from './runtime/init.ts';

// Training.
export { finetune, compileRegex, type FinetuneOptions, type FinetuneResult } from './train/finetune.ts';
export { runTraining, type ExportOptions, type TrainOptions, type TrainResult } from './train/loop.ts';
export { fmtMetrics, type Metrics } from './train/metrics.ts';
export { compileProgram, type CompileProgramOptions, type MemorySummary, type ProgramSpec, type TrainingProgram, type WeightLayout } from './train/program.ts';
export { emitTrainer, type EmittedTrainer } from './train/emit-trainer.ts';
export { readProgram } from './train/trainer-files.ts';
export { applyTuning, readTuning, tuneTrainer, tuningFor, writeTuning, TUNING_FILE, TUNING_FORMAT, type AdapterTuning, type LoadedTuning, type TuningFile } from './train/tuning.ts';
export { tuneMatmul, tuneMatmuls, type ShapeTuning, type TuneOptions, type VariantTiming } from './runtime/tune.ts';
export { KERNEL_CHOICES, type KernelChoice } from './codegen/kernel.ts';
export { MATMUL_VARIANTS, matmulShapeKey, type MatmulVariant } from './codegen/matmul.ts';
export { addTrainOptions, isMain, runTrainer, trainerCli, type TrainFlags } from './train/trainer.ts';
export { addCompiledOptions, addDataOptions, addRunOptions, DEFAULT_PROFILE_STEPS, KERNELS_HELP, LOSS_SCALE_HELP, lossScaleFlag, byteSize, nonNegativeInt, nonNegativeNumber, positiveInt, positiveNumber, usageOutput, regexFlag } from './train/flags.ts';
export { DEFAULT_LOSS_SCALE, defaultLossScale, describeLossScale, LossScaler, parseLossScale, type LossScaleSetting, type LossScalerOptions, type LossScalerState } from './train/loss-scale.ts';
export { openTrainingData, type DataFlags } from './train/data.ts';
export { lrAt, LR_SCHEDULES, type LrSchedule, type LrScheduleName } from './train/schedule.ts';
export { PRESETS, PRESET_NAMES, presetByName, type Preset } from './train/presets.ts';
export {
  BASELINE_PRESETS,
  charNgrams,
  fitLogistic,
  fitNaiveBayes,
  logisticLossAndGradient,
  naiveBayesScores,
  predictLogistic,
  predictNaiveBayes,
  presetBaselines,
  spamBaselinesOn,
  spamTexts,
  wordTokens,
  type BaselineResult,
  type LabelledTexts,
  type Logistic,
  type LogisticOptions,
  type NaiveBayes,
  type PresetBaselineOptions,
} from './train/baselines.ts';
export { chooseModel, HF_ARCHITECTURES, openHfCheckpoint, type HfCheckpoint, type ModelChoice } from './train/hf.ts';
export { listCheckpoints, readCheckpoint, type Checkpoint } from './train/checkpoint.ts';

// Data.
export { openRows, DATA_FORMATS, formatOf, type Cell, type DataFormat, type Row, type RowSource } from './data/rows.ts';
export { openDataset, inferTask, readView, splitRows, type Dataset, type EvalBatch, type Feeds, type InputSpec, type OpenDatasetOptions, type RowView } from './data/dataset.ts';
export { memoryRows } from './data/memory.ts';
export { CharTokenizer } from './data/tokenizer.ts';
export { buildWordPiece, WORDPIECE_SPECIALS, type WordPieceFiles, type WordPieceOptions } from './data/wordpiece.ts';
export { brownCorpus, firstChars, spamAssassin } from './data/text.ts';
export { DATA_PRESETS, presetData, type DataPreset } from './data/presets.ts';

// Weights: safetensors, state dicts, PEFT adapters.
export { readSafetensors, readSafetensorsWithMetadata, encodeSafetensors, writeSafetensors, type SafeTensor } from './io/safetensors.ts';
export { loadStateDict, saveStateDict, stateDict, mergedStateDict, saveMerged } from './io/weights.ts';
export { checkOutputPath, checkWritable, cleanStale, ensureDir, outputError, replaceDir, writeFileAtomic } from './io/output.ts';
export { exportPeftAdapter, importPeftAdapter, peftAdapter, type PeftAdapter, type PeftImport, type PeftLoraConfig } from './io/peft.ts';

// The device.
export { probeAdapter, formatAdapterReport, type AdapterReport } from './runtime/device.ts';
export { acquireGpu, type Gpu } from './runtime/gpu.ts';
export { StepRunner, type StepResult } from './runtime/executor.ts';
export {
  kernelFlops,
  profileMarkdown,
  profileSteps,
  profileTable,
  StepProfiler,
  type ProfileClock,
  type ProfilerOptions,
  type ProfileRow,
  type StepProfile,
} from './runtime/profile.ts';
export { gpuLimits, kernelOptionsFor } from './runtime/session.ts';
