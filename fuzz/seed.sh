#!/usr/bin/env bash
# Seed corpora for the fuzz targets from the repository's fixtures and ../shared/models (not
# committed: run this before `cargo +nightly fuzz run TARGET`).
set -euo pipefail
cd "$(dirname "$0")"
F=../tests/fixtures
S=../../shared/models
c() { mkdir -p "corpus/$1"; shift_target=$1; shift; for f in "$@"; do [ -f "$f" ] && cp "$f" "corpus/$shift_target/$(basename "$(dirname "$f")")-$(basename "$f")"; done; true; }
c gguf $F/gguf/*.gguf $F/families/*.gguf $S/stories260K-gguf/*.gguf
c safetensors $F/llama-gqa/model.safetensors
c config_json $F/*/config.json $F/*/config.legacy.json $F/families/*/config.json
# (The real tokenizer.json files are megabytes: a small byte-level BPE one seeds this target.)
mkdir -p corpus/tokenizer_json
cat > corpus/tokenizer_json/small-bpe.json <<'JSON'
{"version": "1.0", "truncation": null, "padding": null,
 "added_tokens": [{"id": 0, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
                  {"id": 1, "content": "<|im_start|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
 "normalizer": null,
 "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
 "post_processor": null, "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
 "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null,
           "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
           "vocab": {"<s>": 0, "<|im_start|>": 1, "H": 2, "e": 3, "l": 4, "o": 5, "He": 6, "ll": 7, "Hell": 8, "Ġ": 9, "w": 10},
           "merges": ["H e", "l l", "He ll"]}}
JSON
c calibration $F/*/llm-npu-calibration.json
mkdir -p corpus/llama2c corpus/chat_template corpus/server_request
[ -f $S/stories260K/stories260K.reconstructed.bin ] && { printf '\x00' | cat - $S/stories260K/stories260K.reconstructed.bin > corpus/llama2c/checkpoint; printf '\x01' | cat - $S/stories260K/t260.bin > corpus/llama2c/tokenizer; }
for t in $S/chat-templates/*.jinja; do cp "$t" corpus/chat_template/; done
echo '{"model": "m", "prompt": "hi", "max_tokens": 5, "temperature": 0.5, "stop": ["a", "b"], "stream": true}' > corpus/server_request/completion.json
echo '{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 9, "n": 1, "seed": 3}' > corpus/server_request/chat.json
# A small stack of the llama-gqa fixture (made by the release binary, when it is built).
mkdir -p corpus/bitstack_file
[ -x ../target/release/llm-npu ] && ../target/release/llm-npu bitstack -m $F/llama-gqa --random-tokens 64 --iterations 2 --score-tokens 8 --out corpus/bitstack_file/gqa.bitstack > /dev/null 2>&1
du -sh corpus/*
