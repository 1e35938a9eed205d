#!/usr/bin/env python3
"""Reference blocks for llm-npu's GGUF dequantizers: tests/fixtures/quant/<TYPE>.bin holds random
blocks of one ggml type, <TYPE>.npy what the gguf package (0.19.0, pinned in requirements.txt)
dequantizes them to. Legacy types come from gguf's own quantizer applied to random floats; the
K-quants (gguf has no quantizer for them) are random bytes with sane f16 scales, which exercise
every bit of the layout. Deterministic: run again, get the same bytes.

    pip install numpy==2.4.6 gguf==0.19.0 && python tools/oracle/gen_quant_blocks.py
"""
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T, quants

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "quant"
VALUES = 4096  # per type: 128 legacy blocks or 16 K-quant blocks

LEGACY = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]
# Byte offsets of the f16 fields in each K-quant block (ggml-common.h).
K_F16 = {T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208]}


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261130)
    for t in LEGACY:
        x = rng.normal(0.0, 1.0, size=(VALUES // 256, 256)).astype(np.float32)
        x[0, :7] = [0.0, 1e-8, -3.5, 7.25, -0.001, 100.0, -100.0]
        blocks = quants.quantize(x, t)
        write(t, blocks)
    for t, f16_offsets in K_F16.items():
        block_size, type_size = GGML_QUANT_SIZES[t]
        n = VALUES // block_size
        raw = rng.integers(0, 256, size=(n, type_size), dtype=np.uint8)
        for off in f16_offsets:
            d = rng.uniform(0.001, 0.1, size=n).astype(np.float16)
            d[0] = 0.0
            raw[:, off : off + 2] = d.view(np.uint8).reshape(n, 2)
        write(t, raw)


def write(t, blocks):
    blocks = np.ascontiguousarray(blocks, dtype=np.uint8)
    values = quants.dequantize(blocks, t).astype(np.float32).reshape(-1)
    assert values.size == VALUES and np.isfinite(values).all(), t.name
    (OUT / f"{t.name}.bin").write_bytes(blocks.tobytes())
    np.save(OUT / f"{t.name}.npy", values)
    print(f"{t.name}: {blocks.size} bytes -> {values.size} values")


if __name__ == "__main__":
    main()
