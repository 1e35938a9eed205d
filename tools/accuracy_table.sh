#!/usr/bin/env bash
# The npu accuracy table in README.md: each npu configuration against the f32 path of the same
# engine on the same tokens (llm-npu eval --json), for the trained stories260K model (calibrated
# and evaluated on two different texts it sampled itself, see tools/stories_eval.sh) and for the
# synthetic TinyLlama-1.1B shape with planted outliers (`llm-npu demo` builds and calibrates it;
# evaluated on 512 random tokens). Prints markdown rows.
set -euo pipefail
cd "$(dirname "$0")/.."
B=target/release/llm-npu
SYNTH=${SYNTH:-$HOME/.cache/llm-npu/synth/tinyllama-1.1b-f32-outliers-paper-seed0-recipe2}
cargo build --release -q
row() { # $1: model label, $2: configuration label, stdin: eval JSON
  python3 -c 'import json,sys; d=json.load(sys.stdin); print("| %s | %s | %.4f | %.5f | %.4f |" % (sys.argv[1], sys.argv[2], d["top1_agreement"], d["mean_kld"], d["ppl_ratio"]))' "$1" "$2"
}
configs=(
  "npu without shadow (--no-shadow)|--no-shadow"
  "npu, shadow in all layers (default)|"
  "npu, shadow in the 15% most important layers (--shadow-keep 0.15, the paper's pruning)|--shadow-keep 0.15"
  "npu, shadow for hot channels only (--shadow-hot-only)|--shadow-hot-only"
  "paper's scheme: per-tensor weights, no shadow|--per-tensor-weights --no-shadow"
  "paper's scheme: per-tensor weights + shadow|--per-tensor-weights"
)
echo "| model | configuration | top-1 agreement | mean KL | perplexity ratio |"
echo "| --- | --- | ---: | ---: | ---: |"
for c in "${configs[@]}"; do
  tools/stories_eval.sh ${c#*|} | row "stories260K" "${c%%|*}"
done
if [ -d "$SYNTH" ]; then
  for c in "${configs[@]}"; do
    "$B" eval -m "$SYNTH" --random-tokens 512 --backend npu --json ${c#*|} 2>/dev/null | row "synth tinyllama-1.1b --outliers paper" "${c%%|*}"
  done
else
  echo "(no synthetic model at $SYNTH: run llm-npu demo first)" >&2
fi
