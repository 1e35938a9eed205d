#!/usr/bin/env bash
# The crate on aarch64 Linux (the phones and Snapdragon laptops whose NPUs we target), checked on
# this x86-64 machine: built with Debian's rustc and its arm64 standard library, the library's
# tests run under qemu-user, and, where ../shared/models is, stories260K's logits on aarch64
# (portable kernels) compared with the x86-64 build's (SIMD kernels).
#
#   tools/aarch64.sh [--install] [--skip-unavailable]
#
# --install             apt-get what it needs (root; Debian 12): rustc-web, cargo-web, the arm64
#                       std (libstd-rust-web-dev:arm64), gcc-aarch64-linux-gnu (the linker), qemu-user.
# --skip-unavailable    say SKIPPED and exit 0 when the tools cannot be had (CI on a machine
#                       without apt); a failing build or test still fails.
# x86-64's release build (target/release/llm-npu) must exist for the logits comparison.
set -euo pipefail
cd "$(dirname "$0")/.."

install=0 skip_unavailable=0
for arg in "$@"; do
  case "$arg" in
    --install) install=1 ;;
    --skip-unavailable) skip_unavailable=1 ;;
    *) echo "usage: tools/aarch64.sh [--install] [--skip-unavailable]" >&2; exit 2 ;;
  esac
done

unavailable() {
  if [ "$skip_unavailable" = 1 ]; then
    echo "SKIPPED: the aarch64 check: $1" >&2
    exit 0
  fi
  echo "error: $1" >&2
  exit 1
}

if [ "$install" = 1 ]; then
  command -v apt-get >/dev/null && [ "$(id -u)" = 0 ] || unavailable "--install needs apt-get as root"
  {
    dpkg --add-architecture arm64 &&
      apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rustc-web cargo-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu qemu-user
  } >/tmp/llm-npu-aarch64-apt.log 2>&1 || unavailable "apt-get could not install the tools (log: /tmp/llm-npu-aarch64-apt.log)"
fi

# Debian's compiler, not rustup's: its arm64 std is the one installed beside it.
RUSTC=/usr/bin/rustc
[ -x "$RUSTC" ] && [ -d /usr/lib/rustlib/aarch64-unknown-linux-gnu ] || unavailable "no Debian rustc with the arm64 std (run with --install)"
command -v aarch64-linux-gnu-gcc >/dev/null && command -v qemu-aarch64 >/dev/null || unavailable "no aarch64-linux-gnu-gcc or qemu-aarch64 (run with --install)"
"$RUSTC" --version

export RUSTC CARGO_TARGET_DIR=${CARGO_TARGET_DIR_AARCH64:-target/aarch64}
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
# qemu's -L /: the arm64 glibc of Debian's multiarch. (The cross toolchain's copy in
# /usr/aarch64-linux-gnu hangs in pthread_create under Debian 12's qemu 7.2.)
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /"
cargo="/usr/bin/cargo"
target=aarch64-unknown-linux-gnu

echo "== aarch64: the library's tests under qemu"
"$cargo" test --release --target $target --lib
echo "== aarch64: the command and the examples"
"$cargo" build --release --target $target --bins --examples

model=../shared/models/stories260K
if [ ! -d "$model" ]; then
  echo "SKIPPED: aarch64 logits against x86-64: $model is absent" >&2
  exit 0
fi
[ -x target/release/llm-npu ] || { echo "error: build x86-64's target/release/llm-npu first" >&2; exit 1; }
echo "== aarch64 logits against x86-64's (stories260K, 200 tokens, f32 and npu backends)"
ids=$(seq 1 200 | awk '{ printf "%s%d", (NR > 1 ? "," : ""), ($1 * 7919) % 511 + 1 }')
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for backend in f32 npu; do
  for arch in x86 arm; do
    bin=target/release/llm-npu
    [ $arch = arm ] && bin="qemu-aarch64 -L / $CARGO_TARGET_DIR/$target/release/llm-npu"
    # Each in a cache of its own: the npu backend's calibration on random tokens (there is no
    # calibration file beside this model) made on each architecture, not shared.
    LLM_NPU_CACHE="$tmp/cache-$arch" $bin logits -m $model/stories260K.reconstructed.bin --token-ids "$ids" --all-positions \
      --backend $backend --out "$tmp/$arch-$backend.npy" 2>"$tmp/err" || { cat "$tmp/err" >&2; exit 1; }
  done
  python3 - "$tmp/x86-$backend.npy" "$tmp/arm-$backend.npy" "$backend" <<'PY'
import array, sys
def load(path):  # a little-endian f32 .npy as written by `llm-npu logits`
    data = open(path, "rb").read()
    header = 10 + int.from_bytes(data[8:10], "little")
    assert b"'<f4'" in data[:header], path
    values = array.array("f")
    values.frombytes(data[header:])
    return values
x86, arm = load(sys.argv[1]), load(sys.argv[2])
assert len(x86) == len(arm) > 0
diff = max(abs(a - b) for a, b in zip(x86, arm))
top = max(abs(a) for a in x86)
print(f"aarch64 {sys.argv[3]}: logits within {diff:.2e} of x86-64's (largest {top:.1f}; {len(x86)} values)")
sys.exit(0 if diff <= 1e-4 * max(1.0, top) else 1)
PY
done
