#!/usr/bin/env python3
"""Reference blocks for llm-npu's GGUF dequantizers: tests/fixtures/quant/<TYPE>.bin holds random
blocks of one ggml type, <TYPE>.npy what the gguf package (0.19.0, pinned in requirements.txt)
dequantizes them to. And tests/fixtures/quant/mixed.gguf: a two-layer llama (hidden 256) whose
weights use every type, one per tensor, for the model-level tests. Legacy types come from gguf's own quantizer applied to random floats; the
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
    mixed_model(rng)


def k_blocks(rng, t, n_blocks, d_range):
    """Random K-quant blocks with f16 scales drawn from d_range (and one zero)."""
    _, type_size = GGML_QUANT_SIZES[t]
    raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for off in K_F16[t]:
        d = rng.uniform(*d_range, size=n_blocks).astype(np.float16)
        raw[:, off : off + 2] = d.view(np.uint8).reshape(n_blocks, 2)
    return raw


def mixed_model(rng):
    """A llama with every weight type: (name, ggml type, [rows, cols]) per tensor."""
    from gguf import GGUFWriter

    hidden, ffn, heads, kv_heads, vocab = 256, 256, 4, 2, 256
    kv = hidden // heads * kv_heads
    layers = [
        {"attn_q": T.Q2_K, "attn_k": T.Q3_K, "attn_v": T.Q4_K, "attn_output": T.Q5_K, "ffn_gate": T.Q4_0, "ffn_up": T.Q5_1, "ffn_down": T.Q8_0},
        {"attn_q": T.Q4_1, "attn_k": T.Q5_0, "attn_v": T.F16, "attn_output": T.BF16, "ffn_gate": T.Q6_K, "ffn_up": T.Q4_K, "ffn_down": T.Q5_K},
    ]
    shapes = {"attn_q": (hidden, hidden), "attn_k": (kv, hidden), "attn_v": (kv, hidden), "attn_output": (hidden, hidden), "ffn_gate": (ffn, hidden), "ffn_up": (ffn, hidden), "ffn_down": (hidden, ffn)}
    w = GGUFWriter(str(OUT / "mixed.gguf"), "llama")
    w.add_context_length(512)
    w.add_embedding_length(hidden)
    w.add_block_count(len(layers))
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)

    def weight(name, t, rows, cols):
        if t in K_F16:
            raw = k_blocks(rng, t, rows * cols // 256, (0.0002, 0.002)).reshape(rows, -1)
            w.add_tensor(name, raw, raw_dtype=t)
        elif t in (T.F16, T.BF16):
            x = rng.normal(0.0, 0.06, size=(rows, cols)).astype(np.float32)
            w.add_tensor(name, quants.quantize(x, t), raw_dtype=t)
        else:
            x = rng.normal(0.0, 0.06, size=(rows, cols)).astype(np.float32)
            w.add_tensor(name, quants.quantize(x, t), raw_dtype=t)

    weight("token_embd.weight", T.Q6_K, vocab, hidden)  # tied: no output.weight
    for i, types in enumerate(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", (1.0 + 0.1 * rng.normal(size=hidden)).astype(np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", (1.0 + 0.1 * rng.normal(size=hidden)).astype(np.float32))
        for part, t in types.items():
            weight(f"blk.{i}.{part}.weight", t, *shapes[part])
    w.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"mixed.gguf: {(OUT / 'mixed.gguf').stat().st_size} bytes")


def write(t, blocks):
    blocks = np.ascontiguousarray(blocks, dtype=np.uint8)
    values = quants.dequantize(blocks, t).astype(np.float32).reshape(-1)
    assert values.size == VALUES and np.isfinite(values).all(), t.name
    (OUT / f"{t.name}.bin").write_bytes(blocks.tobytes())
    np.save(OUT / f"{t.name}.npy", values)
    print(f"{t.name}: {blocks.size} bytes -> {values.size} values")


if __name__ == "__main__":
    main()
