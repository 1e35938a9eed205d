#!/usr/bin/env python3
"""Tiny random models of the families added after the first fixtures (tests/fixtures/families/):
each as a Hugging Face folder with transformers' logits for a 40- and a 300-token input and a
24-token greedy continuation, and the same weights as GGUF (llama.cpp's tensor names and
metadata for the architecture, written with the gguf package). Same pinned versions and the same
weight re-initialization as gen_fixtures.py (which this reuses; it leaves the older fixtures
alone). Vocabulary 128 keeps the files small.

    pip install -r tools/oracle/requirements.txt && python tools/oracle/gen_family_fixtures.py
"""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import gguf
from transformers import (Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig, GemmaConfig, GemmaForCausalLM, MistralConfig, MistralForCausalLM, Phi3Config, Phi3ForCausalLM,
                          Qwen3Config, Qwen3ForCausalLM)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gen_fixtures as base  # noqa: E402
import hf_to_family_gguf  # noqa: E402

OUT = base.REPO / "tests" / "fixtures" / "families"
VOCAB = 128
SEEDS = {"qwen3-qknorm": 2001, "gemma-geglu-mqa": 2002, "mistral-window16": 2003, "phi3-fused-longrope": 2004, "gemma2-softcap-window": 2005, "gemma3-local-global": 2006}


def make(name):
    kw = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=512, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    if name == "qwen3-qknorm":
        # head_dim 16 != hidden / heads: q/k norms act per head of 16
        cfg = Qwen3Config(**kw, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6, tie_word_embeddings=False,
                          rope_theta=1000000.0, attention_bias=False, use_sliding_window=False, hidden_act="silu")
        cls = Qwen3ForCausalLM
    elif name == "gemma-geglu-mqa":
        cfg = GemmaConfig(**kw, num_key_value_heads=1, head_dim=16, rms_norm_eps=1e-6, rope_theta=10000.0,
                          hidden_act="gelu_pytorch_tanh", hidden_activation="gelu_pytorch_tanh")
        cls = GemmaForCausalLM
    elif name == "mistral-window16":
        # A 16-token sliding window: the 300-token input spans it 19 times.
        cfg = MistralConfig(**kw, num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=10000.0, sliding_window=16,
                            tie_word_embeddings=False, hidden_act="silu")
        cls = MistralForCausalLM
    elif name == "phi3-fused-longrope":
        # Fused qkv_proj / gate_up_proj; LongRoPE with an original context of 64, so the 40-token
        # input uses the short factors and the 300-token one the long factors.
        half = 4  # head_dim 8
        kw["max_position_embeddings"] = 512
        cfg = Phi3Config(**kw, num_key_value_heads=2, rms_norm_eps=1e-5, tie_word_embeddings=False,
                         original_max_position_embeddings=64, hidden_act="silu",
                         rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                                          "short_factor": [1.0 + 0.1 * i for i in range(half)],
                                          "long_factor": [1.0 + 2.0 * i for i in range(half)]})
        cls = Phi3ForCausalLM
    elif name == "gemma2-softcap-window":
        # Soft-capping low enough to bend this model's scores and logits; query scaling from
        # query_pre_attn_scalar != head_dim; layers alternate a 16-token window and global.
        cfg = Gemma2Config(**kw, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6, rope_theta=10000.0,
                           hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=24, sliding_window=16,
                           attn_logit_softcapping=2.0, final_logit_softcapping=3.0,
                           layer_types=["sliding_attention", "full_attention"])
        cls = Gemma2ForCausalLM
    elif name == "gemma3-local-global":
        # Two local layers (16-token window, RoPE base 1e4) then a global one (base 1e6, linear
        # scaling 4); q/k norms; query scaling from query_pre_attn_scalar.
        # (Smaller than the others: three layers, two heads, to keep the fixtures under 5 MB.)
        kw.update(num_hidden_layers=3, num_attention_heads=2, intermediate_size=32)
        cfg = Gemma3TextConfig(**kw, num_key_value_heads=1, head_dim=16, rms_norm_eps=1e-6, hidden_activation="gelu_pytorch_tanh",
                               query_pre_attn_scalar=24, sliding_window=16,
                               layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                               rope_parameters={"full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1000000.0},
                                                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})
        cls = Gemma3ForCausalLM
    else:
        raise ValueError(name)
    seed = SEEDS[name]
    torch.manual_seed(seed)
    cfg._attn_implementation = "eager"
    model = cls(cfg).to(torch.float32).eval()
    g = torch.Generator().manual_seed(seed + 50_000)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("norm.weight") or pname.endswith("layernorm.weight"):
                # Gemma applies norms as (1 + w): small w around 0 keeps the same scale.
                p.copy_((0.0 if name.startswith("gemma") else 1.0) + 0.1 * torch.randn(p.shape, generator=g))
            elif pname.endswith(".weight"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            else:
                raise RuntimeError(f"unexpected parameter {pname}")
    return model, cfg


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    g_in = torch.Generator().manual_seed(base.INPUT_SEED + 7)
    short_ids = torch.randint(0, VOCAB, (base.N_SHORT,), generator=g_in).tolist()
    long_ids = torch.randint(0, VOCAB, (base.N_LONG,), generator=g_in).tolist()
    for name, arch in [("qwen3-qknorm", "qwen3"), ("gemma-geglu-mqa", "gemma"), ("mistral-window16", None), ("phi3-fused-longrope", None), ("gemma2-softcap-window", None), ("gemma3-local-global", None)]:
        model, cfg = make(name)
        d = OUT / name
        for k in ("eos_token_id", "pad_token_id", "bos_token_id"):
            setattr(model.generation_config, k, None)
        model.save_pretrained(d, safe_serialization=True)
        ls, ll = base.all_logits(model, short_ids), base.all_logits(model, long_ids)
        base.save_npy(d / "ref_logits_short.npy", ls)
        base.save_npy(d / "ref_logits_long.npy", ll)
        greedy = base.greedy(model, short_ids[:8])
        assert greedy == base.greedy_manual(model, short_ids[:8])
        base.write_json(d / "ref.json", {"model": name, "short_ids": short_ids, "long_ids": long_ids,
                                          "greedy_prompt": short_ids[:8], "greedy_new_tokens": greedy})
        if arch:  # (llama.cpp's GGUF has no sliding window for Mistral-style llama files)
            hf_to_family_gguf.convert(d, OUT / f"{name}.gguf")
        print(name, "logit std", float(ls.std()), float(ll.std()), "files", sorted(p.name for p in d.iterdir()))
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print("wrote", OUT, total, "bytes")


if __name__ == "__main__":
    main()
