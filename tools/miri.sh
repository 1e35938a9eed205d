#!/usr/bin/env bash
# Miri (Rust's undefined-behaviour interpreter) over the chosen set: the portable kernels (their
# property tests, two small cases each: Miri runs ~1000x slower), quantization and weight decoding,
# the tokenizers, and the file readers on files cut short. Under Miri no SIMD feature is detected,
# so every kernel runs its portable twin; files are read into memory instead of mapped
# (format::FileBytes). Needs the nightly toolchain with the miri component:
#   rustup +nightly component add miri rust-src
# Usage: tools/miri.sh [more test filters]
set -euo pipefail
cd "$(dirname "$0")/.."
# Isolation off: the reader test writes its cut files to the temp folder. Tree Borrows: rayon's
# crossbeam-epoch breaks the older Stacked Borrows rules but not these (crossbeam's own Miri CI
# runs with them: crossbeam-rs/crossbeam#996); permissive provenance for its integer-to-pointer casts.
export MIRIFLAGS="${MIRIFLAGS:--Zmiri-disable-isolation -Zmiri-tree-borrows -Zmiri-permissive-provenance}"
export LLM_NPU_PROPERTY_CASES="${LLM_NPU_PROPERTY_CASES:-2}"
# One rayon worker and one test at a time: Miri interprets idle threads' spinning too, which made
# a test of a few milliseconds take many minutes.
export RAYON_NUM_THREADS=1
filters=("$@")
[ ${#filters[@]} -gt 0 ] || filters=(format:: kernels::properties kernels::quantize tensor::dtype tokenizer::)
exec cargo +nightly miri test --lib -- --test-threads=1 "${filters[@]}"
