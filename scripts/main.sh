#!/usr/bin/env bash
# The main job on the built-in default (npm start): the toy LLaMA-style decoder in LoRA-FA mode.
#   1. what LoRA-FA prunes (compile summary);
#   2. the memory plan of a training step, full vs LoRA vs LoRA-FA;
#   3. a generated trainer, trained on the GPU (Dawn; lavapipe on a CPU-only machine) on a
#      SYNTHETIC learnable task (next token = token + 1 mod vocab) until real data sets arrive.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
lorafa() { node bin/lorafa.mjs "$@"; }
step() { printf '\n=== %s\n' "$*"; }

step "lorafa compile models/llama.ts --mode lora-fa"
lorafa compile models/llama.ts --mode lora-fa

step "lorafa plan models/llama.ts --compare"
lorafa plan models/llama.ts --compare

out=out/main
rm -rf "$out"   # this job's own output: a fresh trainer every run
step "lorafa compile models/llama.ts --mode lora-fa -o $out"
lorafa compile models/llama.ts --mode lora-fa -o "$out"

step "lorafa train $out --steps 200 --lr 1e-2 (synthetic task)"
lorafa train "$out" --steps 200 --lr 1e-2 --checkpoint-every 100 --progress lines
