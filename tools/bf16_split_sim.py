#!/usr/bin/env python3
"""How close attention in bf16 tile products can get to f32 (numpy, f64 sums; no llm-npu code).

One head: 64 queries x 1,024 keys, head_dim 64, q and k ~ N(0, 4) (peaked softmax, as trained
models' heads often are), v ~ N(0, 1), scale 1/8. Max |error| against f64 of: f32; plain bf16
(what --bf16-attention does); bf16x3 (each operand split into bf16 hi + lo, three products); and
bf16x6 (three parts, the six products down to 2^-24). Usage: python3 tools/bf16_split_sim.py
"""
import numpy as np


def bf16(x):
    b = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    b = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) << 16
    return b.astype(np.uint32).view(np.float32)


def parts(x, n):
    out, r = [], x.astype(np.float32)
    for _ in range(n):
        p = bf16(r)
        out.append(p.astype(np.float64))
        r = (r - p).astype(np.float32)
    return out


def attention(scores, weighted):
    s = scores / 8.0
    p = np.exp(s - s.max(1, keepdims=True))
    return weighted(p) / p.sum(1, keepdims=True)


def split_product(a, b, n, pairs):
    pa, pb = parts(a, n), parts(b, n)
    return sum(pa[i] @ pb[j] for i, j in pairs)


PAIRS = {1: [(0, 0)], 2: [(0, 0), (0, 1), (1, 0)], 3: [(0, 0), (0, 1), (1, 0), (0, 2), (2, 0), (1, 1)]}
rng = np.random.default_rng(0)
for trial in range(3):
    q = rng.standard_normal((64, 64)).astype(np.float32) * 2
    k = rng.standard_normal((1024, 64)).astype(np.float32) * 2
    v = rng.standard_normal((1024, 64)).astype(np.float32)
    exact = attention(q.astype(np.float64) @ k.T.astype(np.float64), lambda p: p @ v.astype(np.float64))
    f32 = attention((q @ k.T).astype(np.float64), lambda p: (p.astype(np.float32) @ v).astype(np.float64))
    row = [f"f32 {np.abs(f32 - exact).max():.1e}"]
    for n, name in [(1, "bf16"), (2, "bf16x3"), (3, "bf16x6")]:
        got = attention(split_product(q, k.T, n, PAIRS[n]), lambda p: split_product(p, v, n, PAIRS[n]))
        row.append(f"{name} {np.abs(got - exact).max():.1e}")
    print("  ".join(row), f"(largest |output| {np.abs(exact).max():.2f})")
