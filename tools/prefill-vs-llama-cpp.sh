#!/usr/bin/env bash
# Prefill side by side with llama.cpp (issue 16), alternating in one run so both see the same
# machine: this machine's limits, then for each round llm-npu npu (f32 attention, then
# --bf16-attention, then --int8-attention) and f32, llama.cpp BF16 and Q8_0 (and F32 at 512,
# beside our f32, when GGUF_PREFIX-f32.gguf exists).
#   tools/prefill-vs-llama-cpp.sh HF_DIR GGUF_PREFIX [ROUNDS] [PROMPTS]
# HF_DIR: the synth TinyLlama (llm-npu demo makes it; its config's max_position_embeddings must
# cover the longest prompt); GGUF_PREFIX: ../shared/tools/llama-cpp-peer.sh gguf HF_DIR PREFIX bf16 q8_0.
# LLM_NPU (default target/release/llm-npu) and LLAMA_BENCH (default the peer's) choose the binaries.
set -euo pipefail
hf=$1; gguf=$2; rounds=${3:-2}; prompts=${4:-512,2048,4096}
ours=${LLM_NPU:-target/release/llm-npu}
peer=${LLAMA_BENCH:-${PEER:-$HOME/.cache/llm-npu-peer}/llama.cpp/build/bin/llama-bench}
threads=$(nproc)
"$ours" limits -t "$threads"
for r in $(seq "$rounds"); do
  echo "== round $r"
  "$ours" bench -m "$hf" -p "$prompts" -n 0 -r 1 -t "$threads" --backend npu
  "$ours" bench -m "$hf" -p "$prompts" -n 0 -r 1 -t "$threads" --backend npu --bf16-attention
  "$ours" bench -m "$hf" -p "$prompts" -n 0 -r 1 -t "$threads" --backend npu --int8-attention
  "$ours" bench -m "$hf" -p 512 -n 0 -r 1 -t "$threads"
  for t in bf16 q8_0; do
    # llama.cpp's AMX kernels (its Q8_0 repacking) die with SIGILL on some AMX machines: retry
    # without repacking, and say so.
    { "$peer" -m "$gguf-$t.gguf" -p "$prompts" -n 0 -r 1 -t "$threads" 2>/dev/null ||
      { echo "(llama-bench $t failed; again with --repack 0)"; "$peer" -m "$gguf-$t.gguf" -p "$prompts" -n 0 -r 1 -t "$threads" --repack 0 2>/dev/null; }; } | grep -E "^\||^\("
  done
  if [ -f "$gguf-f32.gguf" ]; then
    "$peer" -m "$gguf-f32.gguf" -p 512 -n 0 -r 1 -t "$threads" 2>/dev/null | grep -E "^\|"
  fi
done
