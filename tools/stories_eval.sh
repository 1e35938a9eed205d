#!/usr/bin/env bash
# Accuracy of the npu backend on the real trained stories260K model, against its own f32 path.
# The model writes its own texts (f32, temperature 1): one to calibrate on, a different one to
# evaluate on (2,000+ tokens). Usage: tools/stories_eval.sh [extra npu flags, e.g. --no-shadow or --per-tensor-weights]
set -euo pipefail
cd "$(dirname "$0")/.."
B=target/release/llm-npu
M=../shared/models/stories260K-gguf/tinyllamas-stories-260k-f32.gguf
W=${TMPDIR:-/tmp}/llm-npu-stories-eval
mkdir -p "$W"
cargo build --release -q
sample() { # $1: file, $2: first seed; stories until the file holds about 2,400 tokens (~10 KB)
  : > "$1"
  local seed=$2
  while [ "$(wc -c < "$1")" -lt 10000 ]; do
    "$B" run -m "$M" -p "" -n 500 --temp 1 --top-p 1 --top-k 0 --seed "$seed" 2>/dev/null >> "$1"
    seed=$((seed + 1))
  done
}
[ -s "$W/calibration.txt" ] || sample "$W/calibration.txt" 1000
[ -s "$W/eval.txt" ] || sample "$W/eval.txt" 2000
"$B" calibrate -m "$M" --text "$W/calibration.txt" --out "$W/calibration.json" 2>/dev/null
"$B" eval -m "$M" --text "$W/eval.txt" --backend npu --calibration "$W/calibration.json" --json "$@" 2>/dev/null
