// `npx tsx bench/paper.ts`: the plans docs/memory.md sets beside the LoRA-FA paper's (and PEFT's)
// published figures. Same pipeline as `lorafa plan --compare` (AdamW, limits none), for the
// settings the document assumes; prints one Markdown table. Each setting has two rows: "fused"
// (attention, cross-entropy — with a frozen LM head, one linear_cross_entropy op — the norms and
// SwiGLU as the ops lorafa traces today) and "composed" (the same model traced with those as
// compositions of primitive ops, as lorafa planned them before and as an eager PyTorch step runs
// them: the old figures). Each setting is also one CLI command (add --composed for the second
// row), printed under the table.
import { loadModel, trace } from '../src/model/load.ts';
import { fmtBytes } from '../src/ir/format.ts';
import { compileTraining, type Mode } from '../src/passes/compile.ts';
import { LIMIT_PRESETS, planMemory, type MemoryPlan, type StorageDType } from '../src/passes/memory-plan.ts';

interface Setting {
  readonly label: string;
  readonly file: string;
  readonly config: string;
  readonly batch: number;
  readonly seq: number;
  readonly rank: number;
  readonly targets: string;
  readonly targetsRegex?: string;
  readonly dtype: StorageDType;
}

const ROBERTA_ALL = 'layers\\.\\d+\\.(attention\\.(query|key|value|dense)|mlp\\.(intermediate|output))';
const T5_ALL = '(encoder|decoder)\\.block\\.\\d+\\..*\\.(q|k|v|o|wi|wo)';
const LLAMA_ALL = 'q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj';

const settings: Setting[] = [];
for (const batch of [32, 128]) {
  for (const dtype of ['f32', 'f16'] as const) {
    settings.push({ label: 'RoBERTa-large', file: 'models/encoder.ts', config: 'roberta-large', batch, seq: 128, rank: 8, targets: 'query,value', dtype });
    settings.push({ label: 'RoBERTa-large', file: 'models/encoder.ts', config: 'roberta-large', batch, seq: 128, rank: 8, targets: 'all linears', targetsRegex: ROBERTA_ALL, dtype });
  }
}
for (const batch of [32, 128]) {
  for (const dtype of ['f32', 'f16'] as const) {
    settings.push({ label: 'T5-base', file: 'models/t5.ts', config: 't5-base', batch, seq: 128, rank: 8, targets: 'q,v', dtype });
    settings.push({ label: 'T5-base', file: 'models/t5.ts', config: 't5-base', batch, seq: 128, rank: 8, targets: 'all linears', targetsRegex: T5_ALL, dtype });
  }
}
settings.push({ label: 'GPT-2 (124M)', file: 'models/gpt2.ts', config: 'gpt2', batch: 8, seq: 1024, rank: 8, targets: 'c_attn', dtype: 'f32' });
settings.push({ label: 'RoBERTa-base', file: 'models/bert.ts', config: 'roberta-base', batch: 32, seq: 128, rank: 8, targets: 'query,value', dtype: 'f32' });
for (const dtype of ['bf16', 'f32'] as const) {
  settings.push({ label: 'LLaMA-2-7B', file: 'models/llama.ts', config: '7b', batch: 8, seq: 1024, rank: 16, targets: 'q_proj,v_proj', dtype });
  settings.push({ label: 'LLaMA-2-7B', file: 'models/llama.ts', config: '7b', batch: 8, seq: 1024, rank: 16, targets: LLAMA_ALL, dtype });
}

function command(s: Setting): string {
  const t = s.targetsRegex ? `--targets-regex '${s.targetsRegex}'` : `--targets ${s.targets}`;
  return `npx lorafa plan ${s.file} --config ${s.config} --batch ${s.batch} --seq ${s.seq} --rank ${s.rank} ${t} --dtype ${s.dtype} --limits none --compare`;
}

/** Saved activations are all live when backward starts. */
const savedAtBackward = (p: MemoryPlan) => p.timeline[p.backwardStart]?.saved ?? 0;
const gb = (n: number) => `${(n / 1e9).toFixed(1)} GB`;

const rows: string[] = [
  '| model | batch × seq | targets | storage | ops | LoRA peak | LoRA-FA peak | peak ratio | LoRA saved | LoRA-FA saved | saved ratio | LoRA − LoRA-FA saved |',
  '|---|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|',
];
for (const s of settings) {
  const m = await loadModel(s.file);
  const targets = s.targetsRegex ? new RegExp(s.targetsRegex) : s.targets.split(',');
  for (const composed of [false, true]) {
    const graph = trace(m, s.config, { batch: s.batch, seq: s.seq }, { composed });
    const plan = (mode: Mode) => {
      const c = compileTraining(graph, { mode, lora: { rank: s.rank, alpha: 2 * s.rank, targets, modulesToSave: m.def.modulesToSave }, optimizer: { kind: 'adamw' } });
      return planMemory(c.step!, { limits: LIMIT_PRESETS.none, dtype: s.dtype, gradients: c.gradients });
    };
    const lora = plan('lora');
    const fa = plan('lora-fa');
    const [ls, fs] = [savedAtBackward(lora), savedAtBackward(fa)];
    rows.push(
      `| ${s.label} | ${s.batch} × ${s.seq} | ${s.targets} (r=${s.rank}) | ${s.dtype} | ${composed ? 'composed (old)' : '**fused**'} | ${fmtBytes(lora.peak)} (${gb(lora.peak)}) | ${fmtBytes(fa.peak)} (${gb(fa.peak)}) | ${(lora.peak / fa.peak).toFixed(2)}× | ${fmtBytes(ls)} | ${fmtBytes(fs)} | ${(ls / fs).toFixed(2)}× | ${fmtBytes(ls - fs)} |`,
    );
    process.stderr.write(`  ${s.label} ${s.batch}×${s.seq} ${s.targets} ${s.dtype} ${composed ? 'composed' : 'fused'}\n`);
  }
}
console.log(rows.join('\n'));
console.log('\nThe same plans, one CLI command each (add --composed for the "composed (old)" row):\n');
console.log(settings.map((s) => '    ' + command(s)).join('\n'));
