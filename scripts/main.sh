#!/usr/bin/env bash
# The main job on the built-in default (npm start): a LoRA-FA fine-tune of a shipped base model on
# real data, on this machine's GPU (Dawn; Mesa lavapipe on a CPU-only machine).
#
#   lorafa finetune spam --mode lora-fa --steps 500
#     - the LLaMA-style decoder pretrained on the SpamAssassin training messages as unlabelled text
#       (models/pretrained/llama-email, WordPiece tokens), fine-tuned to tell spam from ham on
#       SpamAssassin (first 128 characters of subject + body) for 500 steps: the preset trains 900
#       (what docs/results.md measures), 500 keep this first run under 3 minutes here from a fresh
#       clone;
#     - prints the memory plan of one training step in full / LoRA / LoRA-FA, the accuracy of the
#       frozen base and after training beside two classical baselines (naive Bayes on words and
#       on character 3–4-grams, same split and text), and the GPU bytes measured at createBuffer;
#     - writes out/main/: report.md, report.json, loss.svg, memory.svg and the trained adapter in
#       PEFT's format (adapter/adapter_config.json, adapter/adapter_model.safetensors).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
rm -rf out/main   # this job's own output: a fresh report every run
printf '=== lorafa finetune spam --mode lora-fa --steps 500 --out out/main\n'
node bin/lorafa.mjs finetune spam --mode lora-fa --steps 500 --out out/main --progress lines "$@"
