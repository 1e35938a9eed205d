#!/usr/bin/env python3
"""PyTorch fake-quant (W8A8) reference of llm-npu's `npu` backend.

Run from anywhere:  /root/.venvs/oracle/bin/python tools/oracle/fake_quant.py
Needs tests/fixtures/<model>/llm-npu-calibration.json, written by
    llm-npu calibrate -m tests/fixtures/<model> --random-tokens 300 --seed 0
Writes tests/fixtures/<model>/ref_fakequant_short.npy (float32 [40, 256]).

Scheme (src/quant.rs, src/npu/mod.rs, src/accel/cpu.rs):
* q/k/v/o/gate/up/down weights of every decoder layer: per-tensor symmetric int8,
  s_w = max|W| / 127 (float32, 1 if the max is 0), W_q = clamp(round(W * (1/s_w)), -127, 127).
* Their inputs: static per-tensor scale from calibration, s = max_abs / 127 (float32, 1 if
  max_abs is 0 or not finite), x_q = clamp(round(x * (1/s)), -127, 127). Rounding is ties to even.
* Output: the exact integer product acc = x_q @ W_q^T, then acc * (s * s_w) + bias in float32.
* Embeddings, RMSNorms, RoPE, attention, SwiGLU and biases stay float32.
* The LM head is int8 with per-channel weight scales and a dynamic per-row activation scale
  (max |x| / 127 of each row), as the engine computes it on the CPU.

The input quantization is a forward pre-hook on each nn.Linear (one quantizer per point, shared
by q/k/v and by gate/up); it hands the dequantized input x_q * s to the float layer, whose weight
is replaced by W_q * s_w. A forward hook then replaces the float product by the exact integer
one (the two differ by float rounding only; the script prints how much).

Deterministic and offline (one CPU thread, no randomness, HF_HUB_OFFLINE=1).
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"

import hashlib
import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

import transformers
from transformers import LlamaForCausalLM, Qwen2ForCausalLM

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
MODELS = ["llama-gqa", "llama-mha-tied-llama3rope", "qwen2-bias-tied"]
OUT_NAME = "ref_fakequant_short.npy"
CAL_NAME = "llm-npu-calibration.json"
POINTS = ["attn_in", "o_in", "ffn_in", "down_in"]
QMAX = np.float32(127.0)

# (module path inside a decoder layer, calibration point of its input)
LINEARS = [
    ("self_attn.q_proj", "attn_in"),
    ("self_attn.k_proj", "attn_in"),
    ("self_attn.v_proj", "attn_in"),
    ("self_attn.o_proj", "o_in"),
    ("mlp.gate_proj", "ffn_in"),
    ("mlp.up_proj", "ffn_in"),
    ("mlp.down_proj", "down_in"),
]


def log(*a):
    print(*a, flush=True)


def scale_for(max_abs):
    """quant::scale_for: max_abs / 127 in float32, 1 if max_abs is 0 or not finite."""
    m = np.float32(max_abs)
    if m > 0 and np.isfinite(m):
        return np.float32(m / QMAX)
    return np.float32(1.0)


def quantize(x, scale):
    """quant::quantize: clamp(round_ties_even(x * (1/scale)), -127, 127), as float32 codes."""
    inv = np.float32(np.float32(1.0) / np.float32(scale))
    q = torch.round(x.to(torch.float32) * torch.tensor(inv, dtype=torch.float32))
    return q.clamp_(-127.0, 127.0)


def load_calibration(d, n_layers):
    cal = json.loads((d / CAL_NAME).read_text())
    if cal.get("version") != 1:
        raise SystemExit(f"{d / CAL_NAME}: version {cal.get('version')}, expected 1")
    scales = {}
    for p in cal["points"]:
        key = (int(p["layer"]), p["point"])
        if key in scales:
            raise SystemExit(f"{d / CAL_NAME}: duplicate entry {key}")
        mx = p["max_abs"]
        scales[key] = scale_for(float("nan") if mx is None else float(mx))
    for layer in range(n_layers):
        for pt in POINTS:
            if (layer, pt) not in scales:
                raise SystemExit(f"{d / CAL_NAME}: no entry for layer {layer} {pt}")
    return scales


class InputQuantizer:
    """One static-scale quantizer per (layer, point); q/k/v (and gate/up) share it."""

    def __init__(self, scale):
        self.scale = np.float32(scale)
        self.last_in = None
        self.codes = None
        self.calls = 0
        self.clipped = 0
        self.total = 0
        self.margin = float("inf")  # closest |x/s - (k + 1/2)| over unclipped inputs, in code units

    def __call__(self, x):
        if x is not self.last_in:  # a new input: quantize it once for all the linears it feeds
            self.last_in = x
            self.codes = quantize(x, self.scale)
            v = x * torch.tensor(np.float32(1.0) / self.scale)
            self.clipped += int((torch.round(v).abs() > 127).sum())
            v = v.to(torch.float64)
            dist = (v - torch.floor(v) - 0.5).abs()[v.abs() < 127.5]
            if dist.numel():
                self.margin = min(self.margin, float(dist.min()))
            self.total += x.numel()
        self.calls += 1
        return self.codes


class QuantLinear:
    """Hooks that turn an nn.Linear into the engine's W8A8 linear."""

    def __init__(self, lin, quantizer, stats):
        w = lin.weight.detach().to(torch.float32)
        self.s_w = scale_for(float(w.abs().max()))
        self.w_codes = quantize(w, self.s_w)  # [n, k], integers in -127..127
        self.quantizer = quantizer
        self.stats = stats
        self.bias = None if lin.bias is None else lin.bias.detach().to(torch.float32).clone()
        with torch.no_grad():  # the float layer sees the effective weight W_q * s_w
            lin.weight.copy_(self.w_codes * torch.tensor(self.s_w))
        self.out_scale = torch.tensor(np.float32(self.quantizer.scale * self.s_w))
        lin.register_forward_pre_hook(self.pre_hook)
        lin.register_forward_hook(self.hook)

    def pre_hook(self, module, args):
        (x,) = args
        codes = self.quantizer(x)
        return (codes * torch.tensor(self.quantizer.scale),)

    def hook(self, module, args, out):
        codes = self.quantizer.codes
        # Exact integer product: |acc| <= 127 * 127 * k < 2^53, so float64 is exact.
        acc = torch.matmul(codes.to(torch.float64), self.w_codes.to(torch.float64).T)
        assert torch.equal(acc, torch.round(acc)) and float(acc.abs().max()) < 2**31
        y = acc.to(torch.int32).to(torch.float32) * self.out_scale  # i32 -> f32 as in the engine
        if self.bias is not None:
            y = y + self.bias
        self.stats["float_vs_int_max"] = max(self.stats["float_vs_int_max"], float((y - out).abs().max()))
        return y


class QuantLMHead:
    """The engine's int8 LM head: per-channel weight scales, each row's activation scale taken
    from the row itself (max |x| / 127), exact integer product, then acc * (s_row * s_w[j])."""

    def __init__(self, lin):
        w = lin.weight.detach().to(torch.float32)
        self.s_w = np.array([scale_for(float(m)) for m in w.abs().max(dim=1).values], dtype=np.float32)
        inv = torch.tensor(np.float32(1.0) / self.s_w, dtype=torch.float32)
        self.w_codes = torch.round(w * inv[:, None]).clamp_(-127.0, 127.0)
        lin.register_forward_hook(self.hook)  # the weight itself is untouched (it may be tied)

    def hook(self, module, args, out):
        (x,) = args
        rows = x.reshape(-1, x.shape[-1]).to(torch.float32)
        s_row = np.array([scale_for(float(m)) for m in rows.abs().max(dim=1).values], dtype=np.float32)
        inv = torch.tensor(np.float32(1.0) / s_row, dtype=torch.float32)
        codes = torch.round(rows * inv[:, None]).clamp_(-127.0, 127.0)
        acc = torch.matmul(codes.to(torch.float64), self.w_codes.to(torch.float64).T)
        scale = torch.tensor(s_row[:, None] * self.s_w[None, :], dtype=torch.float32)
        y = acc.to(torch.int32).to(torch.float32) * scale
        return y.reshape(*out.shape)


def model_class(cfg_json):
    return Qwen2ForCausalLM if cfg_json["model_type"] == "qwen2" else LlamaForCausalLM


def load_model(d):
    cfg_json = json.loads((d / "config.json").read_text())
    return model_class(cfg_json).from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()


@torch.no_grad()
def fake_quant_logits(d, ids):
    """Returns (logits [len(ids), vocab] float32, info dict)."""
    model = load_model(d)
    layers = model.model.layers
    scales = load_calibration(d, len(layers))
    stats = {"float_vs_int_max": 0.0}
    quantizers = {}
    w_scales = {}
    for i, layer in enumerate(layers):
        for path, pt in LINEARS:
            qz = quantizers.setdefault((i, pt), InputQuantizer(scales[(i, pt)]))
            lin = layer.get_submodule(path)
            assert isinstance(lin, torch.nn.Linear), (i, path)
            w_scales[(i, path)] = QuantLinear(lin, qz, stats).s_w
    QuantLMHead(model.lm_head)
    x = torch.tensor([ids], dtype=torch.long)
    logits = model(input_ids=x, use_cache=False).logits[0].to(torch.float32).numpy()
    for (i, pt), qz in quantizers.items():
        want = {"attn_in": 3, "o_in": 1, "ffn_in": 2, "down_in": 1}[pt]  # linears fed per forward
        assert qz.calls == want and qz.total == len(ids) * layers[i].get_submodule(
            next(p for p, q in LINEARS if q == pt)).in_features, (i, pt, qz.calls, qz.total)
    info = {
        "float_vs_int_max": stats["float_vs_int_max"],
        "clipped": {f"{i}.{pt}": qz.clipped for (i, pt), qz in quantizers.items()},
        "margins": {f"{i}.{pt}": qz.margin for (i, pt), qz in quantizers.items()},
        "act_scales": {f"{i}.{pt}": float(qz.scale) for (i, pt), qz in quantizers.items()},
        "w_scales": {f"{i}.{p}": float(s) for (i, p), s in w_scales.items()},
    }
    return np.ascontiguousarray(logits, dtype=np.float32), info


def npy_bytes(arr):
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def mean_cosine(a, b):
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return float(cos.mean()), float(cos.min())


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    log("versions:", json.dumps({"torch": torch.__version__, "transformers": transformers.__version__,
                                 "numpy": np.__version__}))
    ok = True
    for name in MODELS:
        d = FIXTURES / name
        log(f"\n=== {name} ===")
        if not (d / CAL_NAME).exists():
            log(f"missing {d / CAL_NAME}: run `llm-npu calibrate -m tests/fixtures/{name} "
                f"--random-tokens 300 --seed 0` first")
            ok = False
            continue
        ref = json.loads((d / "ref.json").read_text())
        ids = ref["short_ids"]
        ref_f = np.load(d / "ref_logits_short.npy")

        lq, info = fake_quant_logits(d, ids)
        lq2, _ = fake_quant_logits(d, ids)  # fresh model load: must give identical bytes
        b1, b2 = npy_bytes(lq), npy_bytes(lq2)
        same = b1 == b2

        # sanity: without the hooks the model reproduces the stored float logits exactly
        plain = load_model(d)
        with torch.no_grad():
            lf = plain(input_ids=torch.tensor([ids]), use_cache=False).logits[0].numpy()
        float_exact = np.array_equal(lf, ref_f)

        out = d / OUT_NAME
        old = out.read_bytes() if out.exists() else None
        out.write_bytes(b1)

        assert lq.shape == ref_f.shape == (len(ids), ref_f.shape[1]), lq.shape
        diff = float(np.abs(lq - ref_f).max())
        mcos, mincos = mean_cosine(lq, ref_f)
        agree = float((lq.argmax(-1) == ref_f.argmax(-1)).mean())
        log("activation scales:", ", ".join(f"{k}={v:.6g}" for k, v in info["act_scales"].items()))
        log("weight scales:", ", ".join(f"{k}={v:.6g}" for k, v in info["w_scales"].items()))
        log("clipped activations (|x/s| > 127):", info["clipped"])
        tight = min(info["margins"], key=info["margins"].get)
        log(f"closest activation to a rounding boundary: {tight}, {info['margins'][tight]:.2e} code units "
            "(a float difference this large upstream flips one int8 code)")
        log(f"exact int product vs float matmul of dequantized tensors: max|d| = {info['float_vs_int_max']:.3e}")
        log(f"hf float model reproduces ref_logits_short.npy exactly: {float_exact}")
        log(f"fake-quant vs float logits: max|d| = {diff:.6f}, mean cosine = {mcos:.8f} "
            f"(min {mincos:.8f}), argmax agreement {agree:.3f}")
        log(f"re-run gives identical bytes: {same}; sha256 {hashlib.sha256(b1).hexdigest()[:16]}; "
            f"{'same as' if old == b1 else ('differs from' if old is not None else 'no')} previous file")
        log(f"wrote {out.relative_to(REPO)} ({len(b1)} bytes)")
        ok &= same and float_exact and len(b1) == 41088 and math.isfinite(diff)
    log("\nALL CHECKS OK" if ok else "\nSOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
